"""The SQLite store survives ``kill -9``: a child process applies transitions and prints each
one's ids once ``apply`` has returned; the test kills it at a random moment, reopens the file,
and finds every acknowledged transition there, each node record matching its latest events
(node and events are one transaction), and a database that passes SQLite's integrity check.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalerunner.coordinator.store import SqliteStore

pytestmark = pytest.mark.slow

CHILD = r"""
import asyncio, sys
from scalerunner.coordinator.store import Event, NodeRecord, SqliteStore

async def main(path: str, first: int) -> None:
    store = SqliteStore(path, flush_interval=None)
    await store.start()
    print("ready", flush=True)
    samples = 0
    for i in range(first, first + 100_000):
        name = f"node-{i % 7}"
        ids = await store.apply(
            NodeRecord(name=name, state=f"s{i}", health="good", conn_seq=i, data={"i": i}),
            [
                Event(node=name, axis="state", old="", new=f"s{i}", at=float(i), data={"i": i}),
                Event(node=name, axis="health", old="", new="good", at=float(i), data={"i": i}),
            ],
        )
        print(f"A {i} {ids[0]} {ids[1]}", flush=True)
        store.add_telemetry(name, 60.0 * i, load1=1.0, cpu_pct=1.0, mem_used_mb=1)
        samples += 1
        if i % 10 == 0:
            await store.flush_telemetry()
            print(f"T {samples}", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    remaining = deadline - time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
    if not ready:
        raise AssertionError("the child stopped answering")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"the child ended early: {proc.wait()}")
    return line


def _run_and_kill(path: Path, first: int, rng: random.Random) -> tuple[dict[int, tuple[int, int]], int]:
    """Start a child at transition ``first``; SIGKILL it after a random number of acknowledgements
    and a random pause. Returns the acknowledged transitions and telemetry samples."""
    acked: dict[int, tuple[int, int]] = {}
    samples = 0
    stop_after = rng.choice([0, rng.randint(1, 40), rng.randint(40, 200)])
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(first)],
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        deadline = time.monotonic() + 20
        if stop_after == 0:
            time.sleep(rng.uniform(0, 0.5))  # maybe still opening, maybe writing
        else:
            while len(acked) < stop_after:
                kind, *fields = _read_line(proc, deadline).split()
                if kind == "A":
                    i, state_id, health_id = map(int, fields)
                    acked[i] = (state_id, health_id)
                elif kind == "T":
                    samples = int(fields[0])
            time.sleep(rng.uniform(0, 0.003))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # Whatever was printed before the kill was acknowledged too.
        assert proc.stdout is not None
        for line in proc.stdout.read().splitlines():
            kind, *fields = line.split()
            if kind == "A":
                acked[int(fields[0])] = (int(fields[1]), int(fields[2]))
            elif kind == "T":
                samples = int(fields[0])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return acked, samples


async def _check(path: Path, acked: dict[int, tuple[int, int]], samples: int, seed: int) -> int:
    """Everything acknowledged is there and consistent; returns the last transition recorded."""
    store = SqliteStore(path, flush_interval=None)
    await store.start()
    try:
        events = await store.list_events(limit=1_000_000)
        by_id = {e.id: e for e in events}
        for i, (state_id, health_id) in acked.items():
            assert state_id in by_id and by_id[state_id].data == {"i": i}, (seed, i)
            assert health_id in by_id and by_id[health_id].axis == "health", (seed, i)
        # Both events of a transition, or neither; and each node record is its latest transition.
        per_i: dict[int, list[str]] = {}
        for e in events:
            per_i.setdefault(e.data["i"], []).append(e.axis)
        assert all(sorted(axes) == ["health", "state"] for axes in per_i.values()), seed
        latest: dict[str, int] = {}
        for e in events:
            latest[e.node] = max(latest.get(e.node, -1), e.data["i"])
        nodes = {n.name: n for n in await store.list_nodes()}
        assert set(nodes) == set(latest), seed
        for name, i in latest.items():
            assert nodes[name].data == {"i": i} and nodes[name].state == f"s{i}", (seed, name)
        stored = 0
        for k in range(7):
            stored += sum(m.samples for m in await store.telemetry(f"node-{k}", since=0))
        assert stored >= samples, seed
        return max(per_i, default=-1)
    finally:
        await store.stop()


def test_every_acknowledged_transition_survives_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "state" / "scalerunner.db"
    all_acked: dict[int, tuple[int, int]] = {}
    samples = 0
    first = 0
    for _ in range(4):
        acked, round_samples = _run_and_kill(path, first, rng)
        all_acked.update(acked)
        samples += round_samples
        last = asyncio.run(_check(path, all_acked, samples, seed))
        first = last + 1
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], seed
        finally:
            conn.close()
    assert all_acked, f"seed {seed}: no transition was acknowledged in any round"
