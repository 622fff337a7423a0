"""How the CLI finds and talks to the coordinator's REST API.

`scalerunner up` records where the API listens and its token in
``./.scalerunner/api.json`` (or ``$SCALERUNNER_HOME/api.json``). Every other
command reads it, unless ``--url``/``--token`` or ``SCALERUNNER_URL``/
``SCALERUNNER_TOKEN`` say otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from ..atomic import atomic_write
from . import exits


def home() -> Path:
    return Path(os.environ.get("SCALERUNNER_HOME", ".scalerunner"))


def write_endpoint(url: str, token: str, where: Path | None = None) -> Path:
    """Record the API endpoint atomically, readable by its owner only."""
    where = where or home()
    where.mkdir(parents=True, exist_ok=True)
    path = where / "api.json"
    atomic_write(path, json.dumps({"url": url, "token": token}).encode())
    return path


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@dataclass
class Api:
    url: str
    token: str

    @classmethod
    def resolve(cls, url: str | None, token: str | None) -> Api:
        url = url or os.environ.get("SCALERUNNER_URL")
        token = token or os.environ.get("SCALERUNNER_TOKEN")
        if not (url and token):
            path = home() / "api.json"
            try:
                saved = json.loads(path.read_text())
            except FileNotFoundError:
                hint = "run `scalerunner up` or give --url and --token"
                fail(f"no coordinator known: {path} does not exist; {hint}", exits.UNREACHABLE)
            except (OSError, ValueError) as exc:
                fail(f"{path}: {exc}", exits.USAGE)
            url = url or saved.get("url")
            token = token or saved.get("token")
        if not (url and token):
            fail("the coordinator's URL or token is missing", exits.USAGE)
        return cls(url.rstrip("/"), token)

    def call(self, method: str, path: str, *, timeout: float = 30, **kwargs: Any) -> Any:
        """``timeout``: seconds for the whole answer (a power-cycle of many nodes takes longer)."""
        try:
            resp = httpx.request(
                method,
                self.url + path,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=timeout,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            fail(f"coordinator at {self.url} could not be reached: {exc}", exits.UNREACHABLE)
        if resp.status_code >= 400:
            try:
                message = resp.json().get("error") or resp.text
            except ValueError:
                message = resp.text
            if resp.status_code == 401:
                fail(f"coordinator at {self.url} refused the token: {message}", exits.USAGE)
            if resp.status_code == 504:
                fail(str(message), exits.UNREACHABLE)
            if resp.status_code == 422:
                fail(f"bad request: {message}", exits.USAGE)
            fail(str(message), exits.FAILED)
        return resp.json()


url_option = click.option("--url", envvar="SCALERUNNER_URL", help="coordinator API URL")
token_option = click.option("--token", envvar="SCALERUNNER_TOKEN", help="API token")
