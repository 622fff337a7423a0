"""The job spec: what a user asks to run (docs/jobs.md is its reference).

A spec is a YAML or JSON object. ``parse_spec`` turns one into a ``JobSpec`` or raises
``JobSpecError`` naming the file and the key at fault; nothing else escapes it. Sizes and
durations are accepted in the forms people write (``memory: 2G``, ``timeout: 30m``) and kept
canonical (MB, seconds). Artifact paths are relative and never climb out of the job's work
directory, so a node can collect them without being tricked into reading its own files.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import msgspec
import yaml

__all__ = ["HilSpec", "JobSpec", "JobSpecError", "load_spec", "parse_spec", "spec_from_mapping"]

Label = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9_.:=/-]{1,64}\Z")]
EnvName = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")]
Project = Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")]
# An OCI reference: [registry[:port]/]path[:tag][@digest], lower-case path components; "" is
# no image (the host's filesystem: the process runtime only).
_IMAGE_RE = (
    r"\A(?:(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?)?\Z"
)
Image = Annotated[str, msgspec.Meta(pattern=_IMAGE_RE)]
MAX_MEMORY_MB = 2**40
MAX_TIMEOUT_S = 7 * 24 * 3600.0


class JobSpecError(ValueError):
    """A spec that cannot be used: ``source`` is the file (or "request"), ``key`` the dotted key."""

    def __init__(self, source: str, key: str, detail: str) -> None:
        where = f"{source}: key {key!r}" if key else source
        super().__init__(f"{where}: {detail}")
        self.source = source
        self.key = key
        self.detail = detail


class HilSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hardware in the loop: kept as given for the HIL bench (issue 6 runs it)."""

    board: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    bitstream: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    checks: list[dict[str, Any]] = []
    sim: dict[str, Any] | None = None  # the checks file's [sim] table, for a node with the sim bench


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A validated job spec. ``memory`` is in MB, ``timeout`` in seconds; exactly one of
    ``command`` (an argv) and ``script`` (run by /bin/sh -c)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "job"
    image: Image = ""
    command: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    script: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    arch: Literal["amd64", "arm64", "riscv64"] | None = None
    labels: list[Label] = []
    cpus: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 1.0
    memory: Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMORY_MB)] = 256
    timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] = 3600.0
    env: dict[EnvName, str] = {}
    artifacts: list[Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]] = []
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    priority: Annotated[int, msgspec.Meta(ge=-100, le=100)] = 0
    project: Project = "default"
    hil: HilSpec | None = None
    network: bool = False  # a NIC in the vm runtime's guest (docs/jobs.md); off unless asked for

    def argv(self) -> tuple[str, ...]:
        if self.command is not None:
            return tuple(self.command)
        return ("/bin/sh", "-c", self.script or "")


_SIZE_RE = re.compile(r"\A\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*\Z", re.I)
_SIZE_MB = {"": 1.0, "B": 1 / 2**20, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}
_DURATION_RE = re.compile(r"\A\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*\Z")
_DURATION_S = {"ms": 0.001, "": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _memory_mb(value: Any) -> Any:
    """``512`` (MB), ``"512M"``, ``"2G"``, ``"2GiB"``; anything else is left for the type check."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size: write MB as a number, or e.g. 512M, 2G")
        unit = (m.group(2) or "").upper()
        unit = unit if unit == "B" else unit[:1]  # K, KB, KiB all mean 1024 bytes here
        mb = float(m.group(1)) * _SIZE_MB[unit]
        if mb < 1:
            raise ValueError(f"{value!r} is less than 1 MB")
        return round(mb)
    return value


def _seconds(value: Any) -> Any:
    """``90`` (seconds), ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration: write seconds, or e.g. 90s, 30m, 2h")
        return float(m.group(1)) * _DURATION_S[m.group(2) or ""]
    return value


def _check_artifact(path: str) -> str | None:
    """Why ``path`` may not be an artifact path, or None."""
    if "\x00" in path or "\\" in path:
        return "must not hold NUL or backslash"
    p = PurePosixPath(path)
    if p.is_absolute():
        return "must be relative to the job's work directory"
    if ".." in p.parts:
        return "must not contain '..'"
    return None


def spec_from_mapping(data: Any, source: str = "request") -> JobSpec:
    """Validate one decoded spec object; JobSpecError names ``source`` and the key."""
    if not isinstance(data, Mapping):
        raise JobSpecError(source, "", f"a job spec is an object of keys, not {type(data).__name__}")
    raw = dict(data)
    for key, normalise in (("memory", _memory_mb), ("timeout", _seconds)):
        if key in raw:
            try:
                raw[key] = normalise(raw[key])
            except ValueError as exc:
                raise JobSpecError(source, key, str(exc)) from None
    if isinstance(raw.get("command"), str):
        try:
            raw["command"] = shlex.split(raw["command"])
        except ValueError as exc:
            raise JobSpecError(source, "command", f"cannot split into words: {exc}") from None
    try:
        spec = msgspec.convert(raw, type=JobSpec, str_keys=True)
    except msgspec.ValidationError as exc:
        raise JobSpecError(source, *_explain(str(exc))) from None
    if (spec.command is None) == (spec.script is None):
        raise JobSpecError(source, "command", "give exactly one of command and script")
    for i, path in enumerate(spec.artifacts):
        problem = _check_artifact(path)
        if problem:
            raise JobSpecError(source, f"artifacts[{i}]", f"{path!r} {problem}")
    if spec.hil is not None and (problem := _check_artifact(spec.hil.bitstream)):
        raise JobSpecError(source, "hil.bitstream", f"{spec.hil.bitstream!r} {problem}")
    return spec


def parse_spec(text: str | bytes, source: str) -> JobSpec:
    """Parse a spec file's text: JSON if ``source`` ends in .json, else YAML (a superset)."""
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if source.endswith(".json") else "YAML"
        raise JobSpecError(source, "", f"not valid {kind}: {exc}") from None
    return spec_from_mapping(data, source)


def load_spec(path: str | Path) -> JobSpec:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise JobSpecError(str(p), "", f"cannot read: {exc.strerror or exc}") from None
    return parse_spec(text, str(p))


_PATH_RE = re.compile(r"at `(?:key` in `)?\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\])*)`")
_UNKNOWN_RE = re.compile(r"Object contains unknown field `([^`]*)`")


def _explain(message: str) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.cpus`" as (key, detail)."""
    m = _PATH_RE.search(message)
    path = m.group(1).lstrip(".") if m else ""
    detail = _PATH_RE.sub("", message).rstrip(" -")
    if m and m.group(0).startswith("at `key`"):
        detail = f"a name in it: {detail}"
    unknown = _UNKNOWN_RE.search(message)
    if unknown:
        key = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        return key, f"unknown key (known: {', '.join(_known(path))})"
    return path, detail


def _known(path: str) -> list[str]:
    struct: type[msgspec.Struct] = HilSpec if path.startswith("hil") else JobSpec
    return list(struct.__struct_fields__)
