"""`scalerunner-bench`: program bitstreams onto the node's FPGA boards and run checks on them.

Exit codes: 0 every check passed, 1 a check failed (the design is wrong), 2 a bench fault or a
bad file (board missing, programming failed, nothing observed; the bench is wrong). Results go
to stdout; progress and errors to stderr. docs/bench.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ... import __version__
from .checks import check_against, load_checks
from .errors import BenchConfigError, BenchError, BenchFault
from .hardware import DEFAULT_BOARDS_DIR, DEFAULT_CONNECTOR, Bench, Board, load_bench
from .junit import junit_xml
from .pins import BACKENDS, BackendSetup
from .program import program as program_board
from .runner import CheckResult, run_checks

EXIT_PASS, EXIT_FAIL, EXIT_FAULT = 0, 1, 2

_err = Console(stderr=True, highlight=False)


def _default_stage_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scalerunner" / "bench"


_boards_opt = click.option(
    "--boards-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_BOARDS_DIR,
    show_default=True,
    help="This node's boards (at most three TOML files).",
)
_connector_opt = click.option(
    "--connector",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONNECTOR,
    show_default=True,
    help="The expansion connector's pinout.",
)
_stage_opt = click.option(
    "--stage-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where bitstreams are staged before programming [default: $XDG_CACHE_HOME/scalerunner/bench].",
)


def _fail(exc: BenchError) -> None:
    _err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
    sys.exit(EXIT_FAULT)


def _load(boards_dir: Path, connector: Path, name: str) -> tuple[Bench, Board]:
    bench = load_bench(boards_dir, connector)
    board = bench.board(name)
    if board is None:
        known = ", ".join(bench.boards) or "none"
        raise BenchFault(name, "board_missing", f"no board {name!r} in {boards_dir} (boards: {known})")
    return bench, board


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalerunner-bench")
def cli() -> None:
    """The Scalerunner HIL bench: program FPGA bitstreams and check what the design does on the
    node's expansion connector. Exit 0 pass, 1 a check failed, 2 a bench fault or a bad file."""


@cli.command()
@_boards_opt
@_connector_opt
def boards(boards_dir: Path, connector: Path) -> None:
    """List this node's boards and the GPIO line of each signal (validates the files)."""
    try:
        bench = load_bench(boards_dir, connector)
    except BenchError as exc:
        _fail(exc)
    table = Table(
        "board", "openFPGALoader (cable)", "USB serial @ port", "clock", "signal", "pin", "GPIO", "dir"
    )
    for b in bench.boards.values():
        head = [
            b.name,
            f"{b.program.board} ({b.program.cable})",
            f"{b.program.usb_serial} @ {b.program.usb_port}",
            f"{b.clock.hz / 1e6:g} MHz",
        ]
        for i, s in enumerate(bench.resolve(b).values()):
            table.add_row(
                *(head if i == 0 else [""] * 4), s.name, str(s.pin), f"{s.chip}:{s.line}", s.direction
            )
    Console(width=160).print(table)


@cli.command()
@click.option("--board", "board_name", required=True, help="Board name (a file in --boards-dir).")
@click.argument("bitstream", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds openFPGALoader may take [default: the board's program.timeout].",
)
@_boards_opt
@_connector_opt
@_stage_opt
def program(
    board_name: str,
    bitstream: Path,
    timeout: float | None,
    boards_dir: Path,
    connector: Path,
    stage_dir: Path | None,
) -> None:
    """Stage BITSTREAM and program it onto the board with openFPGALoader (pinned to the
    board's USB serial number). Prints the staged file; exit 2 with the cause on failure."""
    try:
        _, board = _load(boards_dir, connector, board_name)
        with _err.status(f"programming {board.name} with {bitstream.name}"):
            staged = program_board(
                board, bitstream, (stage_dir or _default_stage_dir()) / board.name, timeout
            )
    except BenchError as exc:
        _fail(exc)
    _err.print(f"programmed {board.name} from {bitstream}")
    click.echo(str(staged))


def _table(board: str, results: list[CheckResult]) -> Table:
    table = Table("check", "kind", "result", "seconds", "detail", title=f"bench checks on {board}")
    for r in results:
        verdict = "[green]pass[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(r.name, r.kind, verdict, f"{r.seconds:.2f}", r.message)
    return table


@cli.command()
@click.option("--board", "board_name", required=True, help="Board name (a file in --boards-dir).")
@click.option(
    "--bitstream",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The bitstream; with --backend sim, the design's top Verilog file.",
)
@click.option(
    "--checks",
    "checks_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The checks TOML file.",
)
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the results as JUnit XML here (also on a bench fault).",
)
@click.option(
    "--backend",
    type=click.Choice(sorted(BACKENDS)),
    default="gpiod",
    show_default=True,
    help="gpiod: the real board on this node; sim: the design's Verilog in Icarus Verilog.",
)
@_boards_opt
@_connector_opt
@_stage_opt
def check(
    board_name: str,
    bitstream: Path,
    checks_path: Path,
    junit: Path | None,
    backend: str,
    boards_dir: Path,
    connector: Path,
    stage_dir: Path | None,
) -> None:
    """Program the board (gpiod) or build the simulation (sim), then run every check."""
    results: list[CheckResult] = []
    fault: BenchError | None = None
    try:
        bench, board = _load(boards_dir, connector, board_name)
        cf = load_checks(checks_path)
        check_against(cf, board)
        pins = BACKENDS[backend](BackendSetup(board, bench.resolve(board), bitstream, cf))
        if pins.needs_programming:
            with _err.status(f"programming {board.name}"):
                program_board(board, bitstream, (stage_dir or _default_stage_dir()) / board.name)
        pins.start()
        try:
            with _err.status("checking") as status:
                results = run_checks(pins, cf, lambda c: status.update(f"{board.name}: {c.name}"))
        finally:
            pins.stop()
    except BenchError as exc:
        fault = exc
    if junit is not None:
        as_fault = (
            fault
            if isinstance(fault, BenchFault) or fault is None
            else BenchFault(board_name, "config", str(fault))
        )
        junit.write_bytes(junit_xml(board_name, results, as_fault))
    if fault is not None:
        _fail(fault)
    Console(width=200).print(_table(board_name, results))
    failed = [r for r in results if not r.passed]
    for r in failed:
        _err.print(f"FAIL {board_name}: {r.name}: {r.message}", soft_wrap=True)
    sys.exit(EXIT_FAIL if failed else EXIT_PASS)


def main() -> None:
    cli()


__all__ = ["BenchConfigError", "cli", "main"]
