"""Telemetry ingest: what the coordinator processes against what its broker delivers.

``scalerunner up`` runs in a subprocess with its managed mosquitto and a throwaway inventory of
N nodes. One load process (``benchmarks._ingest_load``) holds N MQTT connections, each logging
in as its own node user with its own password (the broker's ACL lets node X publish only under
nodes/X/), publishes each node's online state, then valid ``Telemetry`` at 1 Hz per node spread
evenly over the second, for a fixed window. Side by side a raw ``mosquitto_sub`` logged in as
the coordinator's user subscribes to every node's telemetry; the lines it prints are counted.

The figure is the coordinator's telemetry rate (``scalerunner_messages_ingested_total
{kind="telemetry"}`` on GET /metrics, read when the window opens and when it closes) over
mosquitto_sub's rate over the same window, for N = 100 and N = 1000. Both consumers see the same
stream, so the ratio holds even when the load generator (or the shared machine) cannot offer the
full N msg/s: the figure text says what was offered. After the window, both are read again once
they stop rising, to tell "slower" (caught up later) from "lost".

The window measures the steady state: it opens ``WARMUP_S`` after the load's first telemetry.
Before that each node changes state twice (its online state: off -> online, with a health check
asked for; its first telemetry: online -> idle), and each change is an event committed with an
fsync, so the first seconds cost the coordinator several times what ingest alone does (measured:
0.6-0.7 of a core for 2-3 s, then 0.2-0.25, at N = 1000), and on a busy disk the telemetry queues
up behind them (one run counted 100 of 1000 msg/s in the window). A window that opened with the
first telemetry put that start-up into the figure (the 61% of issue 4; 31-32% against 18-21% for
the steady state, three runs each on one machine). In the steady state py-spy finds about half of
the coordinator's busy samples in paho/aiomqtt's receive path (packet parsing, MQTT 5 properties,
topic matching) and a fifth in its own dispatch, decode and lifecycle step; a sample that changes
no state writes nothing to the store (tests/test_telemetry_steady_writes.py). The figure text says how
many nodes were idle when the window opened: fewer than N means the warm-up was too short. The
coordinator's CPU share is read over the window only, without the /metrics scrapes (a scrape of
1000 nodes' gauges costs it a few hundred ms).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

from benchmarks.common import Figure, RunningCoordinator, coordinator, free_port, raise_nofile, stop
from scalerunner.protocol.mqtt import Kind, node_filter

SIZES = (100, 1000)
WINDOW_S = 10.0
WARMUP_S = 8.0  # load before the window: every node's first transitions are over (see above)
TAIL_S = 2.0  # load after it, so the window ends inside the stream although the scrapes take time
CLUSTER = "bench"
PREFIX = "ing"
TARGET = 0.95
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
_METRIC_RE = re.compile(rb'^scalerunner_messages_ingested_total\{kind="telemetry"\} (\S+)$', re.M)
_REJECTED_RE = re.compile(rb"^scalerunner_messages_rejected_total\{[^}]*\} (\S+)$", re.M)
_IDLE_RE = re.compile(rb'^scalerunner_node_state\{[^}]*state="idle"[^}]*\} 1\.0$', re.M)
_TICKS = os.sysconf("SC_CLK_TCK")


def _inventory(n: int, broker_port: int, api_port: int) -> str:
    nodes = "".join(
        f'\n[[nodes]]\nname = "{PREFIX}-{i:04d}"\nmac = "02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"\n'
        f'arch = "amd64"\nlabels = ["bench"]\nrack = {{ row = {1 + i // 100}, position = {1 + i % 100} }}\n'
        for i in range(1, n + 1)
    )
    return (
        f'[cluster]\nname = "{CLUSTER}"\n'
        f'[broker]\nmode = "managed"\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n'
        "[timeouts]\nboot_timeout = 300\ntelemetry_timeout = 30\n" + nodes
    )


class _LineCounter:
    """Counts the lines a process writes on stdout, in a thread."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.count = 0
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="mosquitto_sub-lines", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        read = getattr(self._stream, "read1", self._stream.read)
        while chunk := read(65536):
            self.count += chunk.count(b"\n")


def _scrape(api: str) -> tuple[float, float, int]:
    """The coordinator's telemetry messages ingested, its messages rejected (any reason), and how
    many of its nodes are idle."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=30) as resp:
        body: bytes = resp.read()
    m = _METRIC_RE.search(body)
    rejected = sum(float(v) for v in _REJECTED_RE.findall(body))
    return (float(m.group(1)) if m else 0.0), rejected, len(_IDLE_RE.findall(body))


def _read_both(api: str, lines: _LineCounter) -> tuple[float, float, float, int]:
    """When (monotonic, the scrape's midpoint), the coordinator's count, mosquitto_sub's count
    (read either side of the scrape, averaged) and the idle nodes."""
    sub_before, t_before = lines.count, time.monotonic()
    coord, _, idle = _scrape(api)
    return (t_before + time.monotonic()) / 2, coord, (sub_before + lines.count) / 2, idle


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _measure(n: int, root: Path) -> dict[str, float | int | str]:
    broker_port, api_port = free_port(), free_port()
    with coordinator(root, _inventory(n, broker_port, api_port), broker_port) as coord:
        return _measure_on(n, coord, broker_port)


def _measure_on(n: int, coord: RunningCoordinator, broker_port: int) -> dict[str, float | int | str]:
    state, api = coord.state, coord.api
    sub: subprocess.Popen[bytes] | None = None
    load: subprocess.Popen[bytes] | None = None
    try:
        users: dict[str, str] = json.loads((state / "broker-credentials.json").read_text())["users"]
        sub = subprocess.Popen(
            [
                MOSQUITTO_SUB,
                *("-h", "127.0.0.1", "-p", str(broker_port), "-u", "coordinator", "-P", users["coordinator"]),
                *("-i", "bench-ingest-sub", "-t", node_filter(CLUSTER, Kind.TELEMETRY)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert sub.stdout is not None
        lines = _LineCounter(sub.stdout)
        load = subprocess.Popen(
            [
                sys.executable,
                *("-m", "benchmarks._ingest_load", "127.0.0.1", str(broker_port), CLUSTER),
                *(str(state / "broker-credentials.json"), PREFIX, str(n), str(WARMUP_S + WINDOW_S + TAIL_S)),
            ],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert load.stdout is not None
        started = json.loads(load.stdout.readline() or b"{}")
        if started.get("event") != "start":
            load.wait(10)
            raise RuntimeError(f"the load generator did not start (exit {load.returncode})")
        t0 = float(started["t0"])
        broker_pid = int((state / "broker" / "mosquitto.pid").read_text().strip())
        time.sleep(max(0.0, t0 + WARMUP_S - time.monotonic()))
        # the window opens after the warm-up and closes WINDOW_S later; CPU is read between the scrapes
        t_open, coord_open, sub_open, idle = _read_both(api, lines)
        cpu0, t_cpu0 = (_cpu_s(coord.proc.pid), _cpu_s(broker_pid)), time.monotonic()
        time.sleep(max(0.0, t_open + WINDOW_S - time.monotonic()))
        cpu1, t_cpu1 = (_cpu_s(coord.proc.pid), _cpu_s(broker_pid)), time.monotonic()
        t_scrape = time.monotonic()
        t_close, coord_close, sub_close, _ = _read_both(api, lines)
        scrape_s = time.monotonic() - t_scrape
        done = json.loads(load.stdout.readline() or b"{}")
        if done.get("event") != "done":
            load.wait(10)
            raise RuntimeError(f"the load generator failed (exit {load.returncode})")
        load.wait(10)
        # then let both drain: totals once neither has moved for 1 s (at most 15 s)
        last: tuple[float, float, int] = (-1.0, -1.0, -1)
        settle_until = time.monotonic() + 15
        while True:
            coord_total, rejected, _ = _scrape(api)
            now = (coord_total, rejected, lines.count)
            if now == last or time.monotonic() > settle_until:
                break
            last = now
            time.sleep(1.0)
        return {
            "offered": int(done["sent"]),
            "due": int(done["due"]),
            "max_late_s": float(done["max_late_s"]),
            "load_cpu": float(done["cpu_s"]) / (WARMUP_S + WINDOW_S + TAIL_S),
            "coord_cpu": (cpu1[0] - cpu0[0]) / (t_cpu1 - t_cpu0),
            "broker_cpu": (cpu1[1] - cpu0[1]) / (t_cpu1 - t_cpu0),
            "window_s": t_close - t_open,
            "coord_window": coord_close - coord_open,
            "sub_window": sub_close - sub_open,
            "idle": idle,
            "scrape_s": scrape_s,
            "coord_total": now[0],
            "rejected": now[1],
            "sub_total": now[2],
        }
    finally:
        stop(load, signal.SIGKILL, 5)
        stop(sub)


def _figure(n: int, r: dict[str, float | int | str]) -> Figure:
    window_s = float(r["window_s"])
    coord_rate = float(r["coord_window"]) / window_s
    sub_rate = float(r["sub_window"]) / window_s
    offered, due = int(r["offered"]), int(r["due"])
    idle = int(r["idle"])
    warm = f"{idle} of {n} nodes idle at the start" + ("" if idle == n else ": warm-up too short")
    if offered < due:
        offer = f"load offered {offered / (due / n):.0f} of {n} msg/s (its limit on this machine)"
    else:
        offer = f"load offered the full {n} msg/s (late by ≤ {float(r['max_late_s']) * 1000:.0f} ms)"
    return Figure(
        name=(
            f"telemetry ingest, {n} node connections, {WINDOW_S:.0f} s after {WARMUP_S:.0f} s of warm-up: "
            "coordinator / mosquitto_sub"
        ),
        measured=(
            f"{coord_rate:.0f} msg/s ({offer}; {warm}; after draining {r['coord_total']:.0f} of "
            f"{r['sub_total']} delivered, {r['rejected']:.0f} rejected; CPU of one core: coordinator "
            f"{float(r['coord_cpu']):.0%}, mosquitto {float(r['broker_cpu']):.0%}, load "
            f"{float(r['load_cpu']):.0%}; /metrics took {float(r['scrape_s']) * 1000:.0f} ms)"
        ),
        against=f"mosquitto_sub {sub_rate:.0f} msg/s",
        ratio=coord_rate / sub_rate if sub_rate else 0.0,
        target=TARGET,
    )


def run() -> list[Figure]:
    raise_nofile()
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for n in SIZES:
            figures.append(_figure(n, _measure(n, Path(tmp) / f"n{n}")))
    return figures


if __name__ == "__main__":
    for f in run():
        print(f)
