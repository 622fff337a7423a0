"""`scalerunner up`: run the coordinator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from ..coordinator.errors import BrokerError, ConfigError, StoreError
from . import exits
from .client import write_endpoint


async def _run(config: Path, state_dir: Path | None, api_port: int | None) -> int:
    from ..coordinator.app import Coordinator
    from ..coordinator.inventory import load_inventory

    inventory = load_inventory(config)
    coordinator = Coordinator(
        inventory, state_dir or config.parent / "state", api_port=api_port, source=str(config)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await coordinator.start()
    try:
        where = write_endpoint(coordinator.api_url, coordinator.token)
        click.echo(
            f"coordinator for cluster {inventory.cluster.name} up: API {coordinator.api_url} "
            f"(recorded in {where}), {len(coordinator.inventory.nodes)} nodes",
            err=True,
        )
        click.echo(coordinator.api_url)
        await stop.wait()
    finally:
        await coordinator.stop()
    return exits.OK


@click.command()
@click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("scalerunner.toml"),
    show_default=True,
    help="the inventory",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="broker files, credentials, API token [default: state/ beside the inventory]",
)
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="override [api] listen's port (0: pick a free one)",
)
def up(config: Path, state_dir: Path | None, api_port: int | None) -> None:
    """Start the coordinator (and, unless the broker is external, its mosquitto).

    Records the API's address and token in ./.scalerunner/api.json ($SCALERUNNER_HOME), so every
    other command finds it without flags.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        code = asyncio.run(_run(config, state_dir, api_port))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        code = exits.USAGE
    except BrokerError as exc:
        click.echo(f"error: {exc}", err=True)
        code = exits.UNREACHABLE
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        code = exits.FAILED
    sys.exit(code)
