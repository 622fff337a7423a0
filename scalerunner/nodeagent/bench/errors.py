"""The bench's exception types: a bad file, or a bench that cannot do its job.

A failing check is not an exception: it is a result (``runner.CheckResult``). These two are
what the CLI turns into exit code 2, so CI can tell a broken design from a broken bench.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

__all__ = ["BenchConfigError", "BenchError", "BenchFault", "decode_toml"]


class BenchError(Exception):
    """Base of the bench's errors."""


class BenchConfigError(BenchError):
    """A hardware, board or checks file is invalid: ``path`` the file, ``key`` the dotted key."""

    def __init__(self, path: str | Path, key: str, detail: str) -> None:
        where = f"{path}: {key}" if key else str(path)
        super().__init__(f"{where}: {detail}")
        self.path = str(path)
        self.key = key
        self.detail = detail


class BenchFault(BenchError):
    """The bench could not observe the design: ``cause`` is a short word (``no_cable``,
    ``board_missing``, ``no_observation``...), ``board`` the board at fault."""

    def __init__(self, board: str, cause: str, detail: str) -> None:
        super().__init__(f"board {board}: {cause}: {detail}")
        self.board = board
        self.cause = cause
        self.detail = detail


_AT_RE = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)
T = TypeVar("T")


def _dotted(path: str, extra: str = "") -> str:
    out = ""
    for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        out += f"[{index}]" if index else (f".{key}" if out else key)
    if extra:
        out += f".{extra}" if out else extra
    return out


def decode_toml(path: Path, kind: type[T]) -> T:
    """Read ``path`` as TOML (or JSON, for a ``.json`` file: what a job writes from its spec's
    ``hil.checks``) into the msgspec type ``kind``; every error names the file and key."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchConfigError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchConfigError(path, "", f"not valid TOML: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BenchConfigError(path, "", f"not valid JSON: {exc}") from exc
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        m = _AT_RE.match(str(exc))
        msg, where = (m.group("msg"), m.group("path")) if m else (str(exc), "")
        if found := re.match(r"^Object contains unknown field `(.*)`$", msg):
            raise BenchConfigError(path, _dotted(where, found.group(1)), "unknown key") from exc
        if found := re.match(r"^Object missing required field `(.*)`$", msg):
            key = _dotted(where, found.group(1))
            raise BenchConfigError(path, key, "required key is missing") from exc
        raise BenchConfigError(path, _dotted(where), msg) from exc
