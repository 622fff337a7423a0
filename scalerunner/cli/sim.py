"""`scalerunner sim ...`: the software twin: a simulated PoE switch run standalone (docs/switches.md) and
a whole simulated rack, `sim up/down/status` (docs/sim.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import exits

if TYPE_CHECKING:
    from ..sim import SimPoeSwitch


@click.group()
def sim() -> None:
    """Simulated devices that speak the real protocols: a PoE switch over SNMP, a whole rack."""


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--listen")
    return host, int(port)


@sim.command("switch")
@click.option(
    "--ports", type=click.IntRange(1, 4096), default=42, show_default=True, help="number of PoE ports"
)
@click.option(
    "--listen", default="127.0.0.1:1161", show_default=True, help="UDP HOST:PORT of the agent (port 0: any)"
)
@click.option("--community", multiple=True, help="read-write SNMP v2c community (repeatable; default public)")
@click.option("--v3-user", help="an SNMPv3 authPriv user")
@click.option(
    "--auth-protocol",
    type=click.Choice(["md5", "sha", "sha224", "sha256", "sha384", "sha512"]),
    default="sha",
)
@click.option("--auth-key", help="the v3 user's authentication pass phrase (8+ characters)")
@click.option(
    "--priv-protocol", type=click.Choice(["des", "3des", "aes", "aes128", "aes192", "aes256"]), default="aes"
)
@click.option("--priv-key", help="the v3 user's privacy pass phrase (8+ characters)")
@click.option(
    "--budget", type=click.IntRange(1, 100000), default=370, show_default=True, help="PSE budget, W"
)
@click.option(
    "--load", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="load of every port"
)
@click.option("--group", type=click.IntRange(1, 64), default=1, show_default=True, help="PSE group index")
@click.option("--name", default="sim-switch", show_default=True, help="sysName")
def sim_switch(
    ports: int,
    listen: str,
    community: tuple[str, ...],
    v3_user: str | None,
    auth_protocol: str,
    auth_key: str | None,
    priv_protocol: str,
    priv_key: str | None,
    budget: int,
    load: float,
    group: int,
    name: str,
) -> None:
    """Run a simulated managed PoE switch (a real SNMP agent) until Ctrl-C.

    Prints udp:HOST:PORT on stdout once it listens. Use the inventory profile scalerunner-sim.
    """
    from ..coordinator.inventory import SnmpV3
    from ..sim import PoeSwitchModel, SimPoeSwitch

    host, port = _listen(listen)
    users = []
    if v3_user:
        try:
            users.append(
                msgspec.convert(
                    {
                        "version": "3",
                        "user": v3_user,
                        "auth_protocol": auth_protocol,
                        "auth_key": auth_key,
                        "priv_protocol": priv_protocol,
                        "priv_key": priv_key,
                    },
                    SnmpV3,
                )
            )
        except msgspec.ValidationError as exc:
            raise click.UsageError(f"--v3-user {v3_user}: {exc} (keys need 8+ characters)") from exc
    model = PoeSwitchModel(ports=ports, budget_w=budget, group=group, name=name)
    for p in range(1, ports + 1):
        model.set_load(p, load)
    switch = SimPoeSwitch(model, host=host, port=port, communities=community or ("public",), v3_users=users)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(switch))
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exits.FAILED)


async def _serve(switch: SimPoeSwitch) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await switch.start()
    try:
        click.echo(
            f"sim switch {switch.model.name}: {switch.model.ports} ports, budget {switch.model.budget_w} W, "
            f"SNMP on udp:{switch.host}:{switch.port}",
            err=True,
        )
        click.echo(f"udp:{switch.host}:{switch.port}")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await switch.stop()


# ---------------------------------------------------------------------- the whole rack: sim up/down/status

DEFAULT_DIR = Path(".scalerunner-sim")
_dir_option = click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_DIR,
    show_default=True,
    help="the rack's directory: inventory, state, logs, pid file",
)


class _Bars:
    """The rack coming up, drawn from its status (in-process, or status.json of a supervisor)."""

    def __init__(self, console: Console, n: int) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.phase = self.progress.add_task("starting", total=None)
        self.powered = self.progress.add_task("nodes powered (PoE)", total=n)
        self.online = self.progress.add_task("nodes online", total=n)

    def update(self, s: dict[str, Any] | None) -> None:
        if not s:
            return
        phase = str(s.get("phase", ""))
        where = {"switch": "simulated PoE switch", "coordinator": "coordinator, mosquitto, API"}
        self.progress.update(self.phase, description=where.get(phase, phase))
        self.progress.update(self.powered, completed=s.get("powered", 0))
        self.progress.update(self.online, completed=s.get("online", 0))


def _dashboard(s: dict[str, Any], root: Path) -> str:
    """The dashboard's address with the API token after ``#`` (it never leaves the browser, which
    keeps it for the tab: docs/dashboard.md). The rack listens on loopback only."""
    try:
        token = json.loads((root / "api.json").read_text())["token"]
    except (OSError, ValueError, KeyError):
        return f"{s['api']}/"
    return f"{s['api']}/#token={token}"


def _down_cmd(root: Path) -> str:
    default = root.resolve() == DEFAULT_DIR.resolve()
    return "scalerunner sim down" if default else f"scalerunner sim down --dir {root}"


def _summary(console: Console, s: dict[str, Any], root: Path, detached: bool) -> None:
    table = Table(title=f"simulated rack in {root}")
    for col in ("node", "row/pos", "switch port", "state", "W", "BMC pty", "LED pty"):
        table.add_column(col)
    for name, v in sorted(s["nodes"].items()):
        table.add_row(
            name,
            f"{v['row']}/{v['position']}",
            str(v["port"]),
            v["state"],
            f"{v['watts']:.1f}",
            v["bmc_port"],
            v["led_port"],
        )
    console.print(table)
    console.print(f"switch (SNMP): {s['switch']}   inventory: {s['inventory']}")
    console.print(f"[bold]dashboard: {_dashboard(s, root)}[/bold]   API: {s['api']}", soft_wrap=True)
    console.print(
        f"the CLI finds it through {root / 'api.json'} and ./.scalerunner/api.json "
        f"(e.g. `scalerunner nodes ls`)"
    )
    if detached:
        console.print(f"stop it with: [bold]{_down_cmd(root)}[/bold]")
    else:
        console.print("Ctrl-C stops it")


async def _foreground(console: Console, root: Path, n: int, timeout: float) -> int:
    from ..coordinator.errors import BrokerError, ConfigError, StoreError
    from ..sim.rack import RackError, SimRack
    from ..sim.supervisor import serve

    rack = SimRack(root, n)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bars = _Bars(console, n)
    started = asyncio.Event()
    server = asyncio.create_task(serve(rack, stop, started.set))
    try:
        with bars.progress:
            deadline = time.monotonic() + timeout
            while not server.done() and not stop.is_set():
                snap = rack.snapshot()
                bars.update(snap)
                if started.is_set() and snap["online"] == n:
                    break
                if time.monotonic() > deadline:
                    console.print(
                        f"[yellow]{snap['online']} of {n} nodes online after {timeout:.0f} s[/yellow]"
                    )
                    break
                await asyncio.sleep(0.3)
        if server.done():
            await server  # raises why it could not come up
            return exits.FAILED
        if not stop.is_set():
            _summary(console, rack.snapshot(), rack.root, detached=False)
            _record_endpoint(rack.root)
        await stop.wait()
        await server
        _forget_endpoint(rack.root)
        console.print(f"simulated rack in {root} stopped")
    except (RackError, ConfigError, BrokerError, StoreError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return exits.FAILED
    finally:
        if not server.done():
            stop.set()
            with contextlib.suppress(Exception):
                await server
    return exits.OK


def _record_endpoint(root: Path) -> None:
    """Let every other command find this rack's coordinator without flags, as `scalerunner up` does."""
    from .client import write_endpoint

    saved = json.loads((root / "api.json").read_text())
    write_endpoint(saved["url"], saved["token"])


def _detached(console: Console, root: Path, n: int, timeout: float) -> int:
    from ..sim.supervisor import alive, read_status

    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (root / "status.json").unlink()
    log_path = root / "sim.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("scalerunner")),
                "sim",
                "up",
                "--nodes",
                str(n),
                "--dir",
                str(root.resolve()),  # absolute: `sim down` also finds it by its arguments
                "--supervise",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own session: `sim down` stops all of it, the shell's Ctrl-C none
        )
    bars = _Bars(console, n)
    ok = False
    with bars.progress:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None or not alive(proc.pid):
                break
            snap = read_status(root)
            bars.update(snap)
            if snap and snap.get("online") == n and snap.get("pid") == proc.pid:
                ok = True
                break
            time.sleep(0.3)
    snap = read_status(root)
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        console.print(f"[red]error:[/red] the rack's supervisor exited ({proc.returncode}); {log_path}:")
        console.print("\n".join(tail), markup=False, highlight=False)
        return exits.FAILED
    if not ok:
        console.print(
            f"[yellow]{(snap or {}).get('online', 0)} of {n} nodes online after {timeout:.0f} s; "
            f"the rack keeps running (pid {proc.pid}), see {log_path}[/yellow]"
        )
    if snap:
        _summary(console, snap, root.resolve(), detached=True)
        _record_endpoint(root)
    return exits.OK if ok else exits.FAILED


def _supervise(root: Path, n: int) -> int:
    from ..coordinator.errors import BrokerError, ConfigError, StoreError
    from ..sim.rack import RackError, SimRack
    from ..sim.supervisor import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(SimRack(root, n), stop)

    try:
        asyncio.run(main())
    except (RackError, ConfigError, BrokerError, StoreError) as exc:
        # the last line of sim.log, which `sim up --detach` shows: the part that failed and why
        logging.getLogger("scalerunner.sim").error("rack failed: %s", exc)
        return exits.FAILED
    return exits.OK


@sim.command("up")
@click.option("--nodes", "n", type=click.IntRange(1, 140), default=14, show_default=True, help="Scalenodes")
@click.option("--detach", is_flag=True, help="leave it running in the background; `sim down` stops it")
@_dir_option
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=240,
    show_default=True,
    help="seconds to wait for every node to come online",
)
@click.option("--supervise", is_flag=True, hidden=True)  # what --detach runs in the background
def sim_up(n: int, detach: bool, root: Path, timeout: float, supervise: bool) -> None:
    """Bring a simulated rack up on this machine (docs/sim.md).

    A simulated PoE switch (SNMP), the coordinator with its mosquitto and API, and N Scalenodes on
    the switch's ports: each its LED and BMC firmware under real MicroPython on ptys and a real node
    agent, running only while its port delivers power. The nodes are powered on through the
    coordinator.
    """
    from ..sim.supervisor import running

    if supervise:
        sys.exit(_supervise(root, n))
    found = running(root)
    if found is not None:
        click.echo(
            f"error: a rack already runs in {root} (pid {found[0]}); "
            f"stop it with `scalerunner sim down --dir {root}`",
            err=True,
        )
        sys.exit(exits.USAGE)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if detach:
        sys.exit(_detached(console, root, n, timeout))
    sys.exit(asyncio.run(_foreground(console, root, n, timeout)))


@sim.command("down")
@_dir_option
def sim_down(root: Path) -> None:
    """Stop the rack `sim up` started in DIR and every process it ran."""
    from ..sim.supervisor import running, stop

    found = running(root)
    console = Console(stderr=True)
    with console.status("stopping the simulated rack"):
        killed = stop(root)
    if found is None and not killed:
        console.print(f"no rack runs in {root}")
        return
    if killed:
        console.print(f"[yellow]killed {len(killed)} process(es) left behind: {killed}[/yellow]")
    _forget_endpoint(root)
    console.print(f"simulated rack in {root} stopped")


def _forget_endpoint(root: Path) -> None:
    """Remove ./.scalerunner/api.json if it points at this rack's (now stopped) coordinator."""
    from .client import home

    try:
        ours = json.loads((root / "api.json").read_text())["url"]
        theirs = json.loads((home() / "api.json").read_text())["url"]
    except (OSError, ValueError, KeyError):
        return
    if ours == theirs:
        (home() / "api.json").unlink(missing_ok=True)


@sim.command("status")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="print status.json as the supervisor wrote it")
@click.option("--brief", is_flag=True, help="one line each: counts, the dashboard, how to stop it")
def sim_status(root: Path, as_json: bool, brief: bool) -> None:
    """Whether a rack runs in DIR, and its nodes (exit 1 if none runs)."""
    from ..sim.supervisor import read_status, running

    found = running(root)
    snap = read_status(root)
    if found is None or snap is None:
        click.echo(f"no rack runs in {root}", err=True)
        sys.exit(exits.FAILED)
    if as_json:
        click.echo(json.dumps(snap, indent=1))
        return
    console = Console()
    console.print(
        f"rack in {root}: supervisor pid {found[0]}, {snap['online']}/{snap['total']} online, "
        f"{snap['powered']} powered, phase {snap['phase']}"
    )
    if brief:
        console.print(f"[bold]dashboard: {_dashboard(snap, root)}[/bold]", soft_wrap=True)
        console.print(f"stop it with: [bold]{_down_cmd(root)}[/bold]")
        return
    _summary(console, snap, root.resolve(), detached=True)
