"""Hardware as data: the Scalenode expansion connector and the FPGA boards wired to it.

``hardware/connectors/scalenode-expansion.toml`` says what each of the connector's pins is
(power, ground or a node GPIO line, its voltage, which directions a board signal may take on
it). ``hardware/boards/*.toml`` says, per FPGA dev kit, how openFPGALoader reaches it (board
name, cable, USB serial number, USB port) and which of its signals are wired to which
connector pin. Directions are the FPGA's: ``out`` the design drives it and the node reads it,
``in`` the node drives it.

A board directory is one node's bench: at most three boards, each on its own USB port, no
connector pin used twice. Every error names the file and the dotted key. No I/O but reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from .errors import BenchConfigError, decode_toml

__all__ = [
    "DEFAULT_BOARDS_DIR",
    "DEFAULT_CONNECTOR",
    "MAX_BOARDS",
    "Bench",
    "Board",
    "Connector",
    "ConnectorPin",
    "ResolvedSignal",
    "Signal",
    "load_bench",
    "load_board",
    "load_connector",
]

_HARDWARE = Path(__file__).resolve().parents[3] / "hardware"
DEFAULT_CONNECTOR = _HARDWARE / "connectors" / "scalenode-expansion.toml"
DEFAULT_BOARDS_DIR = _HARDWARE / "boards"
MAX_BOARDS = 3  # a node has three USB ports free for dev kits

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}\Z")]
BoardName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}\Z")]
PinNumber = Annotated[int, msgspec.Meta(ge=1, le=200)]
Direction = Literal["in", "out"]


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ConnectorPin(_Table, frozen=True, kw_only=True):
    number: PinNumber
    name: str
    kind: Literal["gpio", "power", "ground"]
    voltage: Annotated[float, msgspec.Meta(ge=0, le=12)] = 0.0
    chip: str = ""  # gpio: the node's gpiochip ("gpiochip0")
    line: Annotated[int, msgspec.Meta(ge=0, le=1023)] | None = None  # gpio: line offset on the chip
    allow: tuple[Direction, ...] = ()  # directions a board signal may take here; () = reserved
    note: str = ""


class Connector(_Table, frozen=True, kw_only=True):
    name: str
    description: str = ""
    pins: tuple[ConnectorPin, ...]

    def pin(self, number: int) -> ConnectorPin | None:
        return next((p for p in self.pins if p.number == number), None)


class Signal(_Table, frozen=True, kw_only=True):
    name: Name
    pin: PinNumber  # connector pin
    direction: Direction
    line: int | None = None  # optional: the node GPIO line, checked against the connector
    note: str = ""


class Program(_Table, frozen=True, kw_only=True):
    board: Annotated[str, msgspec.Meta(min_length=1)]  # openFPGALoader -b
    cable: Annotated[str, msgspec.Meta(min_length=1)]  # openFPGALoader's cable of the board
    usb_serial: Annotated[str, msgspec.Meta(min_length=1)]
    usb_port: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+-[0-9]+(\.[0-9]+)*\Z")]  # sysfs: 1-1.2
    suffixes: tuple[str, ...]  # bitstream file suffixes the FPGA takes (".bit")
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0


class Clock(_Table, frozen=True, kw_only=True):
    port: Name = "clk"  # the design's clock input
    hz: Annotated[float, msgspec.Meta(gt=0, le=1e9)]


class Board(_Table, frozen=True, kw_only=True):
    name: BoardName
    description: str = ""
    fpga: str = ""
    program: Program
    clock: Clock
    signals: tuple[Signal, ...]

    def signal(self, name: str) -> Signal | None:
        return next((s for s in self.signals if s.name == name), None)


@dataclass(frozen=True)
class ResolvedSignal:
    """A board signal with the node GPIO it lands on."""

    name: str
    direction: Direction
    pin: int
    chip: str
    line: int


@dataclass(frozen=True)
class Bench:
    """One node's bench: the connector and the boards on it."""

    connector: Connector
    boards: dict[str, Board]

    def board(self, name: str) -> Board | None:
        return self.boards.get(name)

    def resolve(self, board: Board) -> dict[str, ResolvedSignal]:
        out: dict[str, ResolvedSignal] = {}
        for s in board.signals:
            p = self.connector.pin(s.pin)
            assert p is not None and p.line is not None  # checked on load
            out[s.name] = ResolvedSignal(s.name, s.direction, s.pin, p.chip, p.line)
        return out


def load_connector(path: Path = DEFAULT_CONNECTOR) -> Connector:
    conn = decode_toml(path, Connector)
    seen: dict[int, int] = {}
    lines: dict[tuple[str, int], int] = {}
    for i, p in enumerate(conn.pins):
        key = f"pins[{i}]"
        if p.number in seen:
            raise BenchConfigError(path, f"{key}.number", f"pin {p.number} is also pins[{seen[p.number]}]")
        seen[p.number] = i
        if p.kind == "gpio":
            if not p.chip or p.line is None:
                raise BenchConfigError(path, key, f"gpio pin {p.number} needs chip and line")
            if (p.chip, p.line) in lines:
                other = lines[(p.chip, p.line)]
                raise BenchConfigError(path, f"{key}.line", f"{p.chip} line {p.line} is also pins[{other}]")
            lines[(p.chip, p.line)] = i
        elif p.allow:
            raise BenchConfigError(path, f"{key}.allow", f"a {p.kind} pin carries no signal")
    return conn


def load_board(path: Path, connector: Connector) -> Board:
    board = decode_toml(path, Board)
    if board.name != path.stem:
        raise BenchConfigError(path, "name", f"{board.name!r} must match the file name {path.stem!r}")
    for i, suffix in enumerate(board.program.suffixes):
        if not suffix.startswith(".") or len(suffix) < 2:
            raise BenchConfigError(path, f"program.suffixes[{i}]", f"{suffix!r} is not a suffix like '.bit'")
    names: dict[str, int] = {}
    pins: dict[int, int] = {}
    for i, s in enumerate(board.signals):
        key = f"signals[{i}]"
        if s.name in names or s.name == board.clock.port:
            raise BenchConfigError(path, f"{key}.name", f"signal {s.name!r} is named twice")
        names[s.name] = i
        if s.pin in pins:
            raise BenchConfigError(path, f"{key}.pin", f"pin {s.pin} is also used by signals[{pins[s.pin]}]")
        pins[s.pin] = i
        p = connector.pin(s.pin)
        if p is None:
            raise BenchConfigError(path, f"{key}.pin", f"connector {connector.name} has no pin {s.pin}")
        if p.kind != "gpio":
            raise BenchConfigError(path, f"{key}.pin", f"pin {s.pin} ({p.name}) is {p.kind}, not a GPIO")
        if s.direction not in p.allow:
            allowed = ", ".join(p.allow) or "none: reserved"
            raise BenchConfigError(
                path, f"{key}.direction", f"pin {s.pin} ({p.name}) allows {allowed}, not {s.direction!r}"
            )
        if s.line is not None and s.line != p.line:
            raise BenchConfigError(
                path, f"{key}.line", f"pin {s.pin} is {p.chip} line {p.line}, not line {s.line}"
            )
    return board


def load_bench(boards_dir: Path = DEFAULT_BOARDS_DIR, connector_path: Path = DEFAULT_CONNECTOR) -> Bench:
    """All boards of ``boards_dir`` as one node's bench, cross-checked against each other."""
    connector = load_connector(connector_path)
    files = sorted(boards_dir.glob("*.toml"))
    if len(files) > MAX_BOARDS:
        raise BenchConfigError(boards_dir, "", f"{len(files)} boards; a node takes at most {MAX_BOARDS}")
    boards: dict[str, Board] = {}
    pin_owner: dict[int, str] = {}
    usb: dict[tuple[str, str], str] = {}
    for f in files:
        b = load_board(f, connector)
        for i, s in enumerate(b.signals):
            if s.pin in pin_owner:
                raise BenchConfigError(f, f"signals[{i}].pin", f"pin {s.pin} is also {pin_owner[s.pin]}'s")
            pin_owner[s.pin] = b.name
        for key, value in (("usb_port", b.program.usb_port), ("usb_serial", b.program.usb_serial)):
            if (key, value) in usb:
                raise BenchConfigError(f, f"program.{key}", f"{value} is also {usb[key, value]}'s")
            usb[key, value] = b.name
        boards[b.name] = b
    return Bench(connector, boards)
