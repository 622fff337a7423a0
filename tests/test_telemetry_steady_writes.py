"""Telemetry in the steady state costs no store write: what bench_ingest measures (issue 4).

A node's first telemetry after it comes online is a transition (online -> idle), committed with
an fsync like every transition; the samples after it that change no state update memory and
the in-memory per-minute summary only. A write per sample would put an fsync on every message
(1000 msg/s at 1000 nodes). Real SqliteStore; its ``apply`` is wrapped to count the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.inventory import inventory_from_dict
from scalerunner.coordinator.nodes import NodeManager
from scalerunner.coordinator.store import Event, NodeRecord, SqliteStore
from scalerunner.protocol.mqtt.payloads import JobSummary, NodeState, Telemetry

INV = inventory_from_dict(
    {"cluster": {"name": "lab"}, "nodes": [{"name": "n1", "mac": "02:00:00:00:00:01", "arch": "amd64"}]},
    "/tmp/scalerunner.toml",
)


def sample(at: float, jobs: Sequence[str] = ()) -> Telemetry:
    return Telemetry(
        node="n1",
        ts=at,
        load1=0.5,
        cpu_pct=12.0,
        mem_used_mb=512,
        mem_total_mb=4096,
        jobs=[JobSummary(job=j) for j in jobs],
    )


def state_of(nodes: NodeManager) -> lc.NodeLifecycle:
    return nodes.records["n1"].state


def test_samples_that_change_no_state_write_nothing_and_a_state_change_writes_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            writes: list[tuple[NodeRecord | None, list[Event]]] = []
            real_apply = store.apply

            async def apply(node: NodeRecord | None, events: Sequence[Event] = ()) -> list[int]:
                writes.append((node, list(events)))
                return await real_apply(node, events)

            store.apply = apply  # type: ignore[method-assign]
            now = [1000.0]
            nodes = NodeManager(INV, store, config=lc.LifecycleConfig(), clock=lambda: now[0])
            await nodes.start()
            try:
                await nodes.on_state(NodeState(node="n1", status="online", conn_seq=1, ts=now[0]))
                await nodes.on_telemetry(sample(now[0]))
                assert state_of(nodes) is lc.NodeLifecycle.IDLE
                idle = [e for _, evs in writes for e in evs if e.axis == "state" and e.new == "idle"]
                assert len(idle) == 1 and "first telemetry" in idle[0].reason
                before = len(writes)
                for _ in range(50):
                    now[0] += 1.0
                    await nodes.on_telemetry(sample(now[0]))
                assert len(writes) == before  # 50 samples, no write
                assert nodes.records["n1"].last_telemetry_at == now[0]  # memory is current
                assert nodes.telemetry["n1"][1] == now[0]
                now[0] += 1.0
                await nodes.on_telemetry(sample(now[0], jobs=["j-1"]))  # a job started: busy
                assert state_of(nodes) is lc.NodeLifecycle.BUSY
                assert [e.new for _, evs in writes[before:] for e in evs] == ["busy"]
            finally:
                await nodes.stop()
            # the per-minute summary holds every sample, flushed at stop
            assert sum(m.samples for m in await store.telemetry("n1", since=0)) == 52

    asyncio.run(main())
