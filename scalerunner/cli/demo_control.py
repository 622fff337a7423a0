"""`scalerunner demo control-plane`: a coordinator and N real agents on this machine.

A throwaway inventory in a temporary directory; the coordinator in this process with
its own mosquitto; one `scalerunner-agent` process per node, each logging in with its
own broker credentials. Then what an operator does: watch the nodes come up, mark them
good, drain one, lose one, and read the events. Everything it started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from . import exits
from .nodes import _nodes_table

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64"}


def _inventory(n: int, arch: str) -> str:
    nodes = "".join(
        f'\n[[nodes]]\nname = "demo-{i:02d}"\nmac = "02:00:00:00:00:{i:02x}"\narch = "{arch}"\n'
        f'labels = ["demo"]\nrack = {{ row = 1, position = {i} }}\n'
        for i in range(1, n + 1)
    )
    return (
        '[cluster]\nname = "demo"\n[api]\nlisten = "127.0.0.1:0"\n'
        "[timeouts]\nboot_timeout = 60\ntelemetry_timeout = 4\n" + nodes
    )


def _agent_config(node: str, port: int, password: str, state: Path) -> str:
    return (
        f'cluster = "demo"\nnode = "{node}"\nlabels = ["demo"]\nstate_dir = "{state}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\npassword = "{password}"\nkeepalive = 2\n'
        "[telemetry]\ninterval = 1.0\n"
    )


async def run(console: Console, n: int) -> int:
    from ..coordinator.app import Coordinator
    from ..coordinator.inventory import load_inventory

    arch = _ARCH.get(platform.machine(), "amd64")
    agent_bin = str(Path(sys.executable).with_name("scalerunner-agent"))
    with tempfile.TemporaryDirectory(prefix="scalerunner-demo-") as tmp:
        root = Path(tmp)
        (root / "scalerunner.toml").write_text(_inventory(n, arch))
        coordinator = Coordinator(load_inventory(root / "scalerunner.toml"), root / "state", api_port=0)
        agents: dict[str, asyncio.subprocess.Process] = {}
        await coordinator.start()
        try:
            console.print(
                f"coordinator up: API {coordinator.api_url}, broker {coordinator.broker.access().endpoint}"
            )
            port = coordinator.broker.access().port
            for node in coordinator.inventory.nodes:
                cfg = root / f"{node.name}.toml"
                cfg.write_text(
                    _agent_config(node.name, port, coordinator.broker.node_password(node.name), root)
                )
                agents[node.name] = await asyncio.create_subprocess_exec(
                    agent_bin,
                    "--config",
                    str(cfg),
                    "--log-level",
                    "warning",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            mgr = coordinator.nodes
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("agents coming online", total=n)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    up = sum(r.state.value in ("idle", "busy") for r in mgr.records.values())
                    progress.update(task, completed=up)
                    if up == n:
                        break
                    await asyncio.sleep(0.2)
            console.print(_nodes_table([v.model_dump() for v in mgr.views()]))
            console.print(
                "\n[bold]An operator marks every node good, drains demo-02 and loses demo-03[/bold]"
            )
            for node in coordinator.inventory.nodes:
                await mgr.set_health(node.name, "good", "demo: checked by hand")
            if n >= 2:
                await mgr.drain("demo-02", "demo: firmware update")
            if n >= 3:
                agents["demo-03"].send_signal(signal.SIGKILL)
                await agents["demo-03"].wait()
                for _ in range(60):
                    if mgr.records["demo-03"].state.value == "offline":
                        break
                    await asyncio.sleep(0.2)
            console.print(_nodes_table([v.model_dump() for v in mgr.views()]))
            table = Table(title="events")
            for col in ("id", "node", "axis", "change", "reason"):
                table.add_column(col)
            for e in await mgr.events(None, None, 200):
                table.add_row(str(e.id), e.node, e.axis, f"{e.old} → {e.new}", e.reason)
            console.print(table)
            ok = all(r.state.value in ("idle", "busy", "draining", "offline") for r in mgr.records.values())
            return exits.OK if ok else exits.FAILED
        finally:
            for proc in agents.values():
                if proc.returncode is None:
                    proc.terminate()
            for proc in agents.values():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await coordinator.stop()


@click.command("control-plane")
@click.option("--nodes", "n", type=click.IntRange(1, 50), default=4, show_default=True)
def control_plane(n: int) -> None:
    """A coordinator with its own mosquitto and N real node agents, driven as an operator would."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(run(Console(), n)))
