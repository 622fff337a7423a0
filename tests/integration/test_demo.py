"""`scalerunner proto demo` (what `make demo` runs) works end to end against real MicroPython."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCALERUNNER = Path(sys.executable).with_name("scalerunner")


@pytest.mark.slow
@pytest.mark.micropython
def test_demo_exchanges_every_step_with_the_micropython_peer_and_exits_zero() -> None:
    proc = subprocess.run([str(SCALERUNNER), "proto", "demo"], capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "HELLO kind=LED" in out
    assert "PONG token=12648430" in out
    assert "echo intact: True" in out
    assert "device reports: drops cobs=1" in out  # the garbage was seen, counted and reported
    assert "STATUS power_state=" in out
