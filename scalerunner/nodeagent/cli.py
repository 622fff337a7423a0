"""`scalerunner-agent`: the node agent's entry point.

``scalerunner-agent --config /etc/scalerunner/agent.toml`` connects to the coordinator's broker,
publishes the node's state and telemetry and obeys its commands until SIGTERM or SIGINT, when it
publishes its offline state and exits 0. A bad configuration is one line on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from .. import __version__
from .agent import Agent
from .config import DEFAULT_CMDLINE, ConfigError, load_config
from .telemetry import ProcReader

EXIT_CONFIG = 2
EXIT_FAILED = 1

# Attributes every LogRecord has; anything else was passed in ``extra`` and is printed as key=value.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class _FieldsFormatter(logging.Formatter):
    """``time level logger message key=value ...``: structured fields stay greppable."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and v is not None)
        return f"{line} {fields}" if fields else line


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)


async def _serve(agent: Agent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    stopper = asyncio.create_task(stop.wait(), name="agent-signal")
    runner = asyncio.create_task(agent.wait(), name="agent-wait")
    await asyncio.wait({stopper, runner}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    crashed = runner.done() and not runner.cancelled() and runner.exception() is not None
    if crashed:
        logging.getLogger("scalerunner.nodeagent").error(
            "agent failed", exc_info=runner.exception(), extra={"node": agent.config.node}
        )
    else:
        runner.cancel()
    await agent.stop()
    return EXIT_FAILED if crashed else 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalerunner-agent")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent's TOML configuration (docs/agent.md).",
)
@click.option(
    "--cmdline",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CMDLINE,
    show_default=True,
    help="Kernel command line to read scalerunner.url/node/token from.",
)
@click.option(
    "--proc-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Directory under which proc/ and sys/ are read for telemetry.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def cli(config_path: Path, cmdline: Path, proc_root: Path, log_level: str) -> None:
    """The Scalerunner node agent: publishes this node's state and telemetry to the
    coordinator's MQTT broker and obeys its commands (drain, undrain, identify, reboot)."""
    try:
        config = load_config(config_path, cmdline=cmdline)
    except ConfigError as exc:
        click.echo(f"scalerunner-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    _setup_logging(log_level)
    agent = Agent(config, reader=ProcReader(proc_root, config.state_dir))
    sys.exit(asyncio.run(_serve(agent)))


def main() -> None:
    cli()
