"""Broker credentials for a network-booted node: the one-time token traded once (docs/agent.md).

A node booted by the coordinator has no password in its configuration; its kernel command line
carries ``scalerunner.url=`` and a one-time ``scalerunner.token=``. Before its first connection
the agent POSTs ``{node, token}`` to ``URL/boot/v1/credentials`` and gets its broker user,
password and the broker's address. The answer is kept in the state directory (0600), so an agent
restart on the same boot connects without the token, which is spent.

Network errors and 5xx answers are retried with capped, jittered back-off; a 4xx answer (a used,
expired or wrong token) is final: ``BootstrapError`` says what to do (reboot the node for a new
token). The HTTP client is the standard library's, run in a thread: the agent's memory budget
has no room for another client library.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from .config import AgentConfig

__all__ = ["CREDENTIALS_FILE", "BootstrapError", "Credentials", "ensure_credentials", "trade_token"]

CREDENTIALS_FILE = "broker-credentials.json"
TRADE_PATH = "/boot/v1/credentials"

log = logging.getLogger("scalerunner.nodeagent.bootstrap")


class BootstrapError(Exception):
    """The token cannot be traded (refused, or no token at all); retrying will not help."""


class _Retry(Exception):
    """A failure worth another try (the coordinator unreachable or briefly unwell)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    node: str
    username: str
    password: str
    broker_host: str
    broker_port: int
    cluster: str

    @classmethod
    def parse(cls, node: str, doc: Any, where: str) -> Credentials:
        try:
            c = cls(
                node=node,
                username=str(doc["username"]),
                password=str(doc["password"]),
                broker_host=str(doc["broker_host"]),
                broker_port=int(doc["broker_port"]),
                cluster=str(doc["cluster"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BootstrapError(f"{where}: not a credentials answer ({exc!r})") from exc
        if not (c.username and c.password and c.broker_host and 1 <= c.broker_port <= 65535):
            raise BootstrapError(f"{where}: incomplete credentials")
        return c

    def apply(self, config: AgentConfig) -> AgentConfig:
        return dataclasses.replace(
            config,
            username=self.username,
            password=self.password,
            broker_host=self.broker_host,
            broker_port=self.broker_port,
        )


def _post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(65536)
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(65536)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise _Retry(str(getattr(exc, "reason", exc))) from exc


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("error", body[:200].decode(errors="replace")))
    except ValueError:
        return body[:200].decode(errors="replace")


async def trade_token(
    url: str,
    node: str,
    token: str,
    *,
    timeout: float = 10.0,
    initial: float = 0.5,
    cap: float = 30.0,
    attempts: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> Credentials:
    """Trade ``token`` at the coordinator ``url``; retried on network errors and 5xx (``attempts``
    None: until it works), BootstrapError on a refusal."""
    endpoint = url.rstrip("/") + TRADE_PATH
    body = json.dumps({"node": node, "token": token}).encode()
    n = 0
    while True:
        n += 1
        try:
            status, answer = await asyncio.to_thread(_post, endpoint, body, timeout)
            if status == 200:
                try:
                    doc = json.loads(answer)
                except ValueError as exc:
                    raise BootstrapError(f"{endpoint}: the answer is not JSON") from exc
                return Credentials.parse(node, doc, endpoint)
            if 400 <= status < 500:
                raise BootstrapError(
                    f"{endpoint} refused the boot token of node {node}"
                    f" (HTTP {status}: {_error_text(answer)}); a token is good for one trade and"
                    " expires: reboot the node to get a new one"
                )
            raise _Retry(f"HTTP {status}: {_error_text(answer)}")
        except _Retry as exc:
            if attempts is not None and n >= attempts:
                raise BootstrapError(f"{endpoint}: no answer after {n} attempts: {exc}") from exc
            delay = min(cap, initial * 2.0 ** min(n - 1, 16)) * (0.5 + 0.5 * rand())
            log.warning(
                "cannot trade the boot token yet: %s; retrying in %.1f s",
                exc,
                delay,
                extra={"node": node, "url": endpoint, "attempt": n},
            )
            await sleep(delay)


def load_saved(path: Path, node: str) -> Credentials | None:
    """Credentials kept by an earlier run for ``node``; None if none (or unreadable, or another
    node's: the token on the command line is then the only way)."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring saved credentials %s: %s", path, exc, extra={"node": node})
        return None
    if not isinstance(doc, dict) or doc.get("node") != node:
        return None
    try:
        return Credentials.parse(node, doc, str(path))
    except BootstrapError as exc:
        log.warning("ignoring saved credentials: %s", exc, extra={"node": node})
        return None


def save(path: Path, creds: Credentials) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(dataclasses.asdict(creds), indent=2) + "\n").encode(), 0o600)


async def ensure_credentials(config: AgentConfig, **trade: Any) -> AgentConfig:
    """``config`` with a broker password: as configured, else as saved by an earlier run, else
    traded for the boot token (and saved). BootstrapError if none of these can be had."""
    if config.password is not None:
        return config
    path = config.state_dir / CREDENTIALS_FILE
    saved = await asyncio.to_thread(load_saved, path, config.node)
    if saved is not None:
        log.info("using the broker credentials kept from this boot", extra={"node": config.node})
        return saved.apply(config)
    if config.bootstrap_token is None or config.coordinator_url is None:
        raise BootstrapError(
            f"{config.source}: no broker password, no saved credentials in {path}, and no"
            " scalerunner.url= and scalerunner.token= on the kernel command line to trade"
        )
    creds = await trade_token(config.coordinator_url, config.node, config.bootstrap_token, **trade)
    if creds.cluster != config.cluster:
        raise BootstrapError(
            f"{config.coordinator_url} serves cluster {creds.cluster!r},"
            f" but {config.source} says {config.cluster!r}"
        )
    await asyncio.to_thread(save, path, creds)
    log.info("boot token traded for broker credentials", extra={"node": config.node, "user": creds.username})
    return creds.apply(config)
