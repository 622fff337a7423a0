"""`scalerunner bmc ...`, `scalerunner led ...` and `scalerunner console`: a node's BMC or LED firmware
over its serial port, found by node name in the inventory (``--config``) or given with ``--port``.

Exit codes: 0 ok, 1 the device answered ERROR or the node is unknown, 2 usage or a node without that port,
3 the device did not answer or its port cannot be opened (the port is named, and the node and file).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import termios
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from ..coordinator.errors import ConfigError
from ..coordinator.serial import (
    BMC_BAUD,
    LED_BAUD,
    BmcClient,
    BmcStatus,
    DeviceError,
    LedClient,
    LedState,
)
from ..coordinator.serial.ports import NodePortError, PortKey, node_port
from ..protocol.enums import BootMode, LedMode, PowerAction
from ..protocol.errors import EncodeError, LinkError
from ..protocol.link import FdStream
from . import exits
from .client import fail

T = TypeVar("T")
C = TypeVar("C", BmcClient, LedClient)


DEFAULT_CONFIG = Path("scalerunner.toml")


def _target_options(port_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """NODE (looked up in --config) or --port: where the device is."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.argument("node", required=False)(fn)
        fn = click.option("--port", help=f"{port_help}, instead of NODE: no inventory needed.")(fn)
        fn = click.option(
            "--config",
            "-c",
            type=click.Path(path_type=Path, dir_okay=False),
            default=DEFAULT_CONFIG,
            show_default=True,
            help="The inventory in which NODE is looked up.",
        )(fn)
        return fn

    return apply


def _port_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=5.0,
        show_default=True,
        help="Seconds to wait for the device's answer.",
    )(fn)
    return fn


def _baud(default: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--baud", type=int, default=default, show_default=True, help="The line's rate (the firmware's)."
    )


def _bmc_target(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = _baud(BMC_BAUD)(fn)
    return _target_options("The BMC's serial port (e.g. /dev/ttyUSB1)")(fn)


def _led_target(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = _baud(LED_BAUD)(fn)
    return _target_options("The LED indicator's serial port (e.g. /dev/ttyUSB0)")(fn)


def _resolve(node: str | None, port: str | None, config: Path, key: PortKey) -> tuple[str, str]:
    """The port to open and how to name it in errors: ``--port`` as given, or NODE's ``key`` in ``config``."""
    if (node is None) == (port is None):
        fail("give a NODE (looked up in --config) or --port PORT, not both", exits.USAGE)
    if port is not None:
        return port, port
    assert node is not None
    from ..coordinator.inventory import load_inventory

    try:
        found = node_port(load_inventory(config), node, key, str(config))
    except ConfigError as exc:
        fail(str(exc), exits.USAGE)
    except NodePortError as exc:
        fail(str(exc), exits.FAILED if exc.key is None else exits.USAGE)
    return found.port, found.describe()


def _run(client: C, action: Callable[[C], Awaitable[T]], where: str) -> T:
    async def go() -> T:
        async with client:
            return await action(client)

    try:
        return asyncio.run(go())
    except DeviceError as exc:
        fail(_named(str(exc), where), exits.FAILED)
    except LinkError as exc:
        fail(f"device not reachable: {_named(str(exc), where)}", exits.UNREACHABLE)
    except EncodeError as exc:
        fail(str(exc), exits.USAGE)


def _named(message: str, where: str) -> str:
    """``message`` (which names the port) prefixed with the node and inventory file, if there are any."""
    return message if message.startswith(where) else f"{where}: {message}"


def _choices(enum_cls: type[PowerAction] | type[BootMode] | type[LedMode]) -> click.Choice[str]:
    return click.Choice([m.name.lower().replace("_", "-") for m in enum_cls], case_sensitive=False)


def _show_status(st: BmcStatus, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(st.as_dict()))
    else:
        click.echo(
            f"power {st.power_state.name}  rail {st.rail_v:.2f} V  {st.current_a:.2f} A  "
            f"{st.power_w:.2f} W  {st.temp_c:.1f} °C"
        )


def _show_led(st: LedState, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(st.as_dict()))
    else:
        click.echo(f"mode {st.mode}  lost {st.lost}  pixels {st.pixels.hex() or '-'}")


# --- bmc -----------------------------------------------------------------------------------------


@click.group()
def bmc() -> None:
    """A node's BMC over its serial port: power, boot mode, status, event log."""


@bmc.command("status")
@_port_options
@_bmc_target
def bmc_status(
    node: str | None, port: str | None, config: Path, baud: int, timeout: float, as_json: bool
) -> None:
    """Power state, rail voltage, current, power and temperature of NODE's BMC."""
    path, where = _resolve(node, port, config, "bmc_port")
    st = _run(BmcClient(path, baud=baud, timeout=timeout), lambda c: c.status(), where)
    _show_status(st, as_json)


@bmc.command("power")
@click.argument("action", type=_choices(PowerAction))
@_port_options
@_bmc_target
def bmc_power(
    action: str, node: str | None, port: str | None, config: Path, baud: int, timeout: float, as_json: bool
) -> None:
    """Power ACTION on NODE: on, off, cycle, reset, button, button-long. Prints the status afterwards."""
    path, where = _resolve(node, port, config, "bmc_port")
    st = _run(BmcClient(path, baud=baud, timeout=timeout), lambda c: c.power(action), where)
    _show_status(st, as_json)


@bmc.command("boot-mode")
@click.argument("mode", type=_choices(BootMode))
@_port_options
@_bmc_target
def bmc_boot_mode(
    mode: str, node: str | None, port: str | None, config: Path, baud: int, timeout: float, as_json: bool
) -> None:
    """Select NODE's boot MODE for the next power-on: normal, network, usb, recovery."""
    path, where = _resolve(node, port, config, "bmc_port")
    st = _run(BmcClient(path, baud=baud, timeout=timeout), lambda c: c.boot_mode(mode), where)
    _show_status(st, as_json)


@bmc.command("events")
@click.option("--since", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@_port_options
@_bmc_target
def bmc_events(
    since: int, node: str | None, port: str | None, config: Path, baud: int, timeout: float, as_json: bool
) -> None:
    """NODE's BMC event log: the events with index >= --since, oldest first."""
    path, where = _resolve(node, port, config, "bmc_port")
    entries = _run(BmcClient(path, baud=baud, timeout=timeout), lambda c: c.events(since), where)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries]))
        return
    for e in entries:
        level = e.as_dict()["level"]
        click.echo(f"{e.index:5d} {e.time_ms:>10d} ms {level!s:<7} 0x{e.code:04x} {e.text}")


# --- led -----------------------------------------------------------------------------------------


def _rgb(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise click.BadParameter("expected R,G,B with each 0..255", ctx, param)
    return parts[0], parts[1], parts[2]


@click.group()
def led() -> None:
    """A node's LED indicator over its serial port."""


@led.command("set")
@click.argument("mode", type=_choices(LedMode))
@click.option("--rgb", callback=_rgb, default="255,255,255", show_default=True, help="Colour R,G,B.")
@click.option("--brightness", type=click.IntRange(0, 255), default=255, show_default=True)
@click.option(
    "--period-ms", type=click.IntRange(0, 0xFFFF), default=0, help="Blink/breathe period (0: default)."
)
@_port_options
@_led_target
def led_set(
    mode: str,
    rgb: tuple[int, int, int],
    brightness: int,
    period_ms: int,
    node: str | None,
    port: str | None,
    config: Path,
    baud: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Show MODE on NODE's LEDs: off, solid, blink, breathe, gauge, identify, alert. Prints the state."""
    path, where = _resolve(node, port, config, "led_port")
    client = LedClient(path, baud=baud, timeout=timeout)
    st = _run(client, lambda c: c.set_mode(mode, rgb=rgb, brightness=brightness, period_ms=period_ms), where)
    _show_led(st, as_json)


@led.command("gauge")
@click.argument("load", type=click.IntRange(0, 100))
@click.argument("temp", type=float)
@_port_options
@_led_target
def led_gauge(
    load: int,
    temp: float,
    node: str | None,
    port: str | None,
    config: Path,
    baud: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Feed NODE's gauge: LOAD in percent, TEMP in °C (shown in mode gauge)."""
    path, where = _resolve(node, port, config, "led_port")
    st = _run(LedClient(path, baud=baud, timeout=timeout), lambda c: c.gauge(load, temp), where)
    _show_led(st, as_json)


@led.command("state")
@_port_options
@_led_target
def led_state(
    node: str | None, port: str | None, config: Path, baud: int, timeout: float, as_json: bool
) -> None:
    """What NODE's LEDs show: the mode, how often the host was lost, and the pixel bytes."""
    path, where = _resolve(node, port, config, "led_port")
    st = _run(LedClient(path, baud=baud, timeout=timeout), lambda c: c.state(), where)
    _show_led(st, as_json)


# --- console -------------------------------------------------------------------------------------

ESCAPE = 0x1D  # Ctrl-]
NODE_BAUD = 115_200  # the node's console UART behind the BMC (bmc/hal_rp2.py)


PACE_CHUNK = 256  # piped input goes to the BMC in pieces this big, at the node UART's rate


async def _console_session(
    bmc_client: BmcClient,
    stdin_fd: int,
    interactive: bool,
    linger: float,
    log: BinaryIO | None,
    node_baud: int = 0,
) -> None:
    loop = asyncio.get_running_loop()
    out = sys.stdout.buffer
    stdin_done = asyncio.Event()
    due = loop.time()

    async def paced(data: bytes) -> None:
        # The BMC holds 4 KiB for a node UART slower than its host line and drops (counting) the rest:
        # piped input, unlike typing, could outrun it. Never faster than the UART, never in bursts.
        nonlocal due
        for off in range(0, len(data), PACE_CHUNK):
            piece = data[off : off + PACE_CHUNK]
            await asyncio.sleep(max(0.0, due - loop.time()))
            await bmc_client.console.write(piece)
            due = max(due, loop.time()) + len(piece) * 10 / node_baud

    async def node_to_user() -> None:
        while True:
            data = await bmc_client.console.read()
            out.write(data)
            out.flush()
            if log is not None:
                log.write(data)
                log.flush()

    async def user_to_node() -> None:
        stream = FdStream(os.dup(stdin_fd), "stdin", raw=False)
        try:
            while True:
                data = await stream.read()
                if not data:
                    return
                if interactive and ESCAPE in data:
                    data = data[: data.index(ESCAPE)]
                    if data:
                        await bmc_client.console.write(data)
                    return
                if not interactive and node_baud:
                    await paced(data)
                else:
                    await bmc_client.console.write(data)
        finally:
            await stream.close()
            os.set_blocking(stdin_fd, True)
            stdin_done.set()

    async with bmc_client:
        reader = loop.create_task(node_to_user())
        writer = loop.create_task(user_to_node())
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done():
                writer.result()  # a console write that failed raises here
                if not interactive:
                    await asyncio.wait({reader}, timeout=linger)
            if reader.done():
                reader.result()
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)


@click.command("console")
@_bmc_target
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option(
    "--log", "log_path", type=click.Path(dir_okay=False), help="Also append the node's output here."
)
@click.option(
    "--linger",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="With piped input: seconds to keep showing output after its end.",
)
@click.option(
    "--node-baud",
    type=click.IntRange(min=0),
    default=NODE_BAUD,
    show_default=True,
    help="With piped input: send it no faster than the node's UART at this rate (0: as fast as the line).",
)
def console(
    node: str | None,
    port: str | None,
    config: Path,
    baud: int,
    timeout: float,
    log_path: str | None,
    linger: float,
    node_baud: int,
) -> None:
    """NODE's serial console through its BMC. On a terminal: raw mode, Ctrl-] leaves. Piped input
    is sent to the node, then output is shown for --linger seconds."""
    path, where = _resolve(node, port, config, "bmc_port")
    stdin_fd = sys.stdin.fileno()
    interactive = os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if interactive else None
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
    try:
        if interactive:
            tty.setraw(stdin_fd, termios.TCSANOW)  # keep what was typed ahead
            click.echo(f"console of {where}; Ctrl-] leaves\r", err=True)  # raw: no newline translation
        client = BmcClient(path, baud=baud, timeout=timeout)
        try:
            asyncio.run(_console_session(client, stdin_fd, interactive, linger, log, node_baud))
        except LinkError as exc:
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
                saved = None
            fail(f"device not reachable: {_named(str(exc), where)}", exits.UNREACHABLE)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        if log is not None:
            log.close()
