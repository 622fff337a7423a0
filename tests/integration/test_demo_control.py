"""`scalerunner demo control-plane` (the second half of `make demo`) runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCALERUNNER = Path(sys.executable).with_name("scalerunner")


@pytest.mark.slow
def test_control_plane_demo_brings_agents_online_drains_one_and_sees_one_lost() -> None:
    proc = subprocess.run(
        [str(SCALERUNNER), "demo", "control-plane", "--nodes", "3"],
        capture_output=True,
        text=True,
        timeout=90,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "idle → draining" in out
    assert "idle → offline" in out  # demo-03's agent was killed: its Will arrived
    assert out.count("online → idle") == 3
    leftover = subprocess.run(["pgrep", "-f", "scalerunner-demo-"], capture_output=True, text=True)
    assert leftover.stdout == "", "the demo left a process behind"
