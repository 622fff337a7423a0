"""Switch profiles: what a PoE switch family answers where, as data (``hardware/switches/*.toml``).

RFC 3621 (POWER-ETHERNET-MIB) gives the port switch (pethPsePortAdminEnable), the port state
(pethPsePortDetectionStatus) and the PSE totals (pethMainPsePower/ConsumptionPower) but no
per-port watts; each vendor adds those in its own MIB, unit and index. A profile says, for one
family: the OIDs (RFC 3621 defaults), how an inventory port number becomes an OID index, the
units, and the quirks. Values are normalised to watts here, so the back end never guesses.

Loading fails with ``ConfigError(path, key, detail)`` naming the file and the dotted key.
docs/switches.md says how to add a profile.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec

from ..errors import ConfigError
from ..inventory import dotted

__all__ = [
    "DEFAULT_DIR",
    "UNIT_SCALE",
    "Oid",
    "PethOids",
    "PortPower",
    "Profile",
    "load_profile",
    "load_profiles",
    "loads_profile",
    "parse_oid",
    "to_watts",
]

# hardware/switches/ of the source tree (the package is installed editable, beside it).
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "hardware" / "switches"

Unit = Literal["W", "mW", "0.1W"]
UNIT_SCALE: dict[str, float] = {"W": 1.0, "mW": 0.001, "0.1W": 0.1}
Oid = Annotated[str, msgspec.Meta(pattern=r"^\.?1(\.(0|[1-9][0-9]{0,9}))+\Z")]
IndexKind = Literal["group.port", "port"]
Offset = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}\Z")]

PETH = "1.3.6.1.2.1.105.1"


def parse_oid(oid: str) -> tuple[int, ...]:
    """``"1.3.6.1"`` or ``".1.3.6.1"`` -> ``(1, 3, 6, 1)``."""
    return tuple(int(part) for part in oid.lstrip(".").split("."))


def to_watts(raw: int, unit: str) -> float:
    """A reading in ``unit`` as watts (mW and 0.1 W readings are integers on the wire)."""
    return raw * UNIT_SCALE[unit]


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class PethOids(_Table, frozen=True, kw_only=True):
    """POWER-ETHERNET-MIB columns; the defaults are RFC 3621's."""

    admin_enable: Oid = f"{PETH}.1.1.3"  # pethPsePortAdminEnable, .group.port; 1 on, 2 off
    detection_status: Oid = f"{PETH}.1.1.6"  # pethPsePortDetectionStatus, .group.port
    main_power: Oid = f"{PETH}.3.1.1.2"  # pethMainPsePower (W), .group
    main_consumption: Oid = f"{PETH}.3.1.1.4"  # pethMainPseConsumptionPower (W), .group
    # Quirk: firmwares that report pethMainPseConsumptionPower in mW (or 0.1 W) though the MIB says W.
    main_consumption_unit: Unit = "W"
    # Quirk: pethPsePortIndex = inventory port + offset (switches that number PSE ports by ifIndex).
    port_offset: Offset = 0

    def port_index(self, group: int, port: int) -> tuple[int, ...]:
        return (group, port + self.port_offset)


class PortPower(_Table, frozen=True, kw_only=True):
    """The vendor's per-port power column, read for watts."""

    oid: Oid
    unit: Unit
    index: IndexKind = "group.port"  # group.port: like pethPsePortTable; port: one index
    port_offset: Offset = 0  # OID index = inventory port + offset (ifIndex-numbered tables)

    def port_index(self, group: int, port: int) -> tuple[int, ...]:
        p = port + self.port_offset
        return (group, p) if self.index == "group.port" else (p,)


class Profile(_Table, frozen=True, kw_only=True):
    name: Name
    description: str
    sources: tuple[str, ...] = ()  # where the OIDs and units come from (MIB names, documents)
    max_port: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    peth: PethOids = PethOids()
    port_power: PortPower | None = None  # None: the family has no per-port watts

    def check_port(self, port: int) -> str | None:
        """Why ``port`` cannot be addressed under this profile, or None if it can."""
        if port < 1:
            return f"port {port} is not a port number"
        if self.max_port is not None and port > self.max_port:
            return f"port {port} is beyond profile {self.name!r} (ports 1-{self.max_port})"
        if port + self.peth.port_offset < 1:
            return f"port {port} maps to no pethPsePortIndex (offset {self.peth.port_offset})"
        if self.port_power is not None and port + self.port_power.port_offset < 1:
            return f"port {port} maps to no index of {self.port_power.oid}"
        return None


_AT_RE = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_CHOICES = {"unit": get_args(Unit), "main_consumption_unit": get_args(Unit), "index": get_args(IndexKind)}


def _explain(message: str) -> tuple[str, str]:
    """msgspec's message -> (dotted key, words a TOML author knows)."""
    m = _AT_RE.match(message)
    msg, path = (m.group("msg"), m.group("path")) if m else (message, "")
    segments: list[str | int] = [int(i) if i else k for k, i in re.findall(r"\.(\w+)|\[(\d+)\]", path)]
    if found := re.match(r"^Object contains unknown field `(.*)`$", msg):
        return dotted([*segments, found.group(1)]), "unknown key"
    if found := re.match(r"^Object missing required field `(.*)`$", msg):
        return dotted([*segments, found.group(1)]), "required key is missing"
    last = segments[-1] if segments else ""
    if msg.startswith("Invalid enum value") and isinstance(last, str) and last in _CHOICES:
        return dotted(segments), f"{msg}; must be one of " + ", ".join(repr(c) for c in _CHOICES[last])
    if msg.startswith("Expected `str` matching regex") and last in ("oid", *PethOids.__struct_fields__):
        return dotted(segments), "must be a numeric OID such as 1.3.6.1.2.1.105.1.1.1.3"
    return dotted(segments), msg


def loads_profile(text: str, path: str | Path) -> Profile:
    """Validate TOML ``text`` as the profile file ``path``; its name must match the file name."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"TOML syntax error: {exc}") from exc
    try:
        profile = msgspec.convert(data, type=Profile)
    except msgspec.ValidationError as exc:
        key, detail = _explain(str(exc))
        raise ConfigError(str(path), key, detail) from exc
    if profile.name != path.stem:
        raise ConfigError(str(path), "name", f"is {profile.name!r}, but the file is {path.name!r}")
    return profile


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {exc.start})") from exc
    return loads_profile(text, path)


def load_profiles(directory: str | Path = DEFAULT_DIR) -> dict[str, Profile]:
    """Every ``*.toml`` profile in ``directory``, by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(str(directory), "", "no such profile directory")
    return {p.stem: load_profile(p) for p in sorted(directory.glob("*.toml"))}
