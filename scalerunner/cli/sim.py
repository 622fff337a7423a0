"""`scalerunner sim ...`: the software twin's devices, run standalone (docs/switches.md)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

import click
import msgspec

from . import exits

if TYPE_CHECKING:
    from ..sim import SimPoeSwitch


@click.group()
def sim() -> None:
    """Simulated devices that speak the real protocols (a PoE switch over SNMP, ...)."""


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
