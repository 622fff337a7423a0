"""`scalerunner-bench`: the HIL bench's entry point."""

from __future__ import annotations

import click

from ... import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalerunner-bench")
def cli() -> None:
    """The Scalerunner HIL bench: program bitstreams and run checks. The
    `program` and `check` commands arrive with the bench; today it offers only --version."""


def main() -> None:
    cli()
