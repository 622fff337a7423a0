"""`scalerunner-agent`: the node agent's entry point."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalerunner-agent")
def cli() -> None:
    """The Scalerunner node agent. It publishes telemetry and runs jobs once the
    coordinator core lands; today it offers only --version."""


def main() -> None:
    cli()
