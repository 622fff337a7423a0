"""What a benchmark reports, and the coordinator process the control-plane benchmarks run."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    name: str  # what was measured, e.g. "console goodput 115200 8N1 clean"
    measured: str  # the raw figure with its unit, e.g. "10 450 B/s"
    against: str  # the peer or limit it is compared with, e.g. "line rate 11 520 B/s"
    ratio: float  # measured / against
    target: float | None = None  # the ratio we promise, if any


# -- a coordinator as a benchmark runs it: `scalerunner up` in a subprocess ----------------------

SCALERUNNER = Path(sys.executable).with_name("scalerunner")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def raise_nofile() -> None:
    """Children (the coordinator, its mosquitto, the load) inherit this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_orphan_broker(state: Path) -> None:
    """If the coordinator died without stopping its mosquitto, stop it here (by its pid file,
    and only if that pid is the mosquitto started with this run's config)."""
    pid_file = state / "broker" / "mosquitto.pid"
    conf = str(state / "broker" / "mosquitto.conf")
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if conf.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)


@dataclass(frozen=True)
class RunningCoordinator:
    proc: subprocess.Popen[bytes]
    api: str  # the API's base URL, as `scalerunner up` printed it
    state: Path  # its state directory: api-token, broker-credentials.json, broker/


@contextlib.contextmanager
def coordinator(root: Path, inventory: str, broker_port: int) -> Iterator[RunningCoordinator]:
    """`scalerunner up` with ``inventory`` (written to ``root``), yielded once its API URL is out and
    its broker takes connections; stopped on the way out, with a mosquitto it may have left behind."""
    root.mkdir()
    (root / "scalerunner.toml").write_text(inventory)
    state = root / "state"
    env = dict(os.environ, SCALERUNNER_HOME=str(root / "home"))
    with (root / "coordinator.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(SCALERUNNER), "up", "--config", str(root / "scalerunner.toml"), "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        try:
            assert proc.stdout is not None
            api = proc.stdout.readline().decode().strip()
            if not api.startswith("http://"):
                proc.wait(10)
                raise RuntimeError(f"scalerunner up failed: see {root / 'coordinator.log'}")
            wait_port(broker_port, 10)
            yield RunningCoordinator(proc, api, state)
        finally:
            stop(proc, grace=15)
            kill_orphan_broker(state)
