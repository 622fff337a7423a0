"""The systemd units run the commands the docs describe, with options the programs accept."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from click.testing import CliRunner

from scalerunner.cli import cli
from scalerunner.nodeagent.cli import cli as agent_cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _exec(unit: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(DEPLOY / unit)
    return shlex.split(parser["Service"]["ExecStart"])


def test_coordinator_unit_runs_scalerunner_up_with_options_it_accepts() -> None:
    argv = _exec("scalerunner-coordinator.service")
    assert argv[0].endswith("/scalerunner") and argv[1] == "up"
    help_text = CliRunner().invoke(cli, ["up", "--help"]).output
    for opt in (a for a in argv[2:] if a.startswith("--")):
        assert opt in help_text, opt


def test_agent_unit_runs_the_agent_with_options_it_accepts() -> None:
    argv = _exec("scalerunner-agent.service")
    assert argv[0].endswith("/scalerunner-agent")
    help_text = CliRunner().invoke(agent_cli, ["--help"]).output
    for opt in (a for a in argv[1:] if a.startswith("--")):
        assert opt in help_text, opt
