"""`scalerunner fw build|deploy`: the LED and BMC firmware onto an RP2040."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import click

from ..firmware import (
    FIRMWARES,
    LEDS_HELP,
    SIZE_BUDGET,
    FirmwareError,
    build,
    deploy_command,
    find_tool,
    ledboard_source,
)
from . import exits


def _leds(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ledboard_source(value)
    except FirmwareError:
        raise click.BadParameter(f"expected {LEDS_HELP}", ctx, param) from None
    return value


def _only_ledfw(firmware: str, leds: str | None) -> None:
    if leds is not None and firmware != "ledfw":
        raise click.UsageError(f"--leds: only the LED firmware (ledfw) has LEDs, not {firmware}")


leds_option = click.option(
    "--leds", callback=_leds, help=f"ledfw only: the LEDs, {LEDS_HELP} [default: strip]"
)


@click.group()
def fw() -> None:
    """Build and install the MicroPython firmware of the LED indicator (ledfw) and the BMC (bmc)."""


@fw.command("build")
@click.argument("firmware", type=click.Choice(FIRMWARES))
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="build directory"
)
@leds_option
def fw_build(firmware: str, out: Path, leds: str | None) -> None:
    """Compile FIRMWARE for the RP2040 into OUT and check its size budget."""
    _only_ledfw(firmware, leds)
    try:
        built = build(firmware, out, leds)
    except FirmwareError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exits.FAILED)
    click.echo(f"{firmware}: {len(built.files)} files, {built.size} bytes (budget {SIZE_BUDGET})", err=True)
    if built.size > SIZE_BUDGET:
        click.echo(f"error: {firmware} is over its size budget", err=True)
        sys.exit(exits.FAILED)
    click.echo(str(out))


@fw.command("deploy")
@click.argument("firmware", type=click.Choice(FIRMWARES))
@click.option("--port", required=True, help="the board's USB serial port, e.g. /dev/ttyACM0")
@click.option("--dry-run", is_flag=True, help="print the mpremote commands instead of running them")
@leds_option
def fw_deploy(firmware: str, port: str, dry_run: bool, leds: str | None) -> None:
    """Install FIRMWARE onto the RP2040 on PORT with mpremote, then reset the board."""
    _only_ledfw(firmware, leds)
    mpremote = find_tool("mpremote")
    with tempfile.TemporaryDirectory(prefix=f"scalerunner-{firmware}-") as tmp:
        try:
            built = build(firmware, Path(tmp), leds)
        except FirmwareError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exits.FAILED)
        if built.size > SIZE_BUDGET:
            click.echo(f"error: {firmware} is {built.size} bytes, over its budget of {SIZE_BUDGET}", err=True)
            sys.exit(exits.FAILED)
        cmd = deploy_command(built, port, mpremote or "mpremote")
        if dry_run:
            click.echo(" ".join(cmd))
            return
        if mpremote is None:
            click.echo("error: mpremote is not installed (make setup installs it)", err=True)
            sys.exit(exits.USAGE)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            click.echo(f"error: {port}: mpremote did not finish within 120 s", err=True)
            sys.exit(exits.UNREACHABLE)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            click.echo(f"error: {port}: mpremote failed: {detail[0]}", err=True)
            sys.exit(exits.UNREACHABLE)
        click.echo(f"{firmware} installed on {port} ({built.size} bytes); the board was reset", err=True)
