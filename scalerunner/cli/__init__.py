"""The `scalerunner` command line.

Conventions (README.md, "Running a coordinator and agents"): what a command creates is
printed alone on stdout, chatter goes to stderr; exit codes are 0 success, 1 the thing
failed, 2 usage or config error (a wrong API token is one), 3 the coordinator or a device
could not be reached.
"""

from __future__ import annotations

import click

from .. import __version__
from .demo import demo as serial_demo
from .demo_control import control_plane
from .fw import fw
from .images import images
from .jobs import jobs
from .nodes import drain, events, identify, nodes, reboot, undrain
from .power import energy, power
from .proto import proto
from .serial_cmds import bmc, console, led
from .sim import sim
from .up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalerunner")
def cli() -> None:
    """Scalerunner: run a rack of network-booted compute nodes for parallel CI."""


cli.add_command(proto)
cli.add_command(bmc)
cli.add_command(led)
cli.add_command(console)
cli.add_command(fw)
cli.add_command(jobs)
cli.add_command(images)
cli.add_command(sim)
for _cmd in (up, nodes, drain, undrain, identify, reboot, events, power, energy):
    cli.add_command(_cmd)


@cli.group()
def demo() -> None:
    """Demonstrations that run on this machine alone (what `make demo` shows)."""


demo.add_command(serial_demo, "serial")
demo.add_command(control_plane)


def main() -> None:
    cli()
