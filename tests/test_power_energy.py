"""Energy from stored power samples through the power service: per node over a window, and per
job over each attempt's run on its node (the job as the jobs part stores it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.errors import UnknownNode
from scalerunner.coordinator.inventory import inventory_from_dict
from scalerunner.coordinator.nodes import NodeManager
from scalerunner.coordinator.power.manager import PowerManager
from scalerunner.coordinator.power.service import PowerService
from scalerunner.coordinator.store import JobRecord, PowerSample, SqliteStore

INV = inventory_from_dict(
    {
        "cluster": {"name": "lab"},
        "nodes": [
            {"name": "n1", "mac": "02:00:00:00:00:01", "arch": "arm64", "bmc_port": "/dev/ttyA"},
            {"name": "n2", "mac": "02:00:00:00:00:02", "arch": "arm64", "bmc_port": "/dev/ttyB"},
        ],
    },
    "/tmp/scalerunner.toml",
)


def test_energy_per_node_and_per_job_attempt(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            # n1 draws 10 W from t=1000 to 1100, n2 20 W; samples every 10 s
            await store.add_power_samples(
                [PowerSample(node="n1", at=1000.0 + t, watts=10.0) for t in range(0, 101, 10)]
                + [PowerSample(node="n2", at=1000.0 + t, watts=20.0) for t in range(0, 101, 10)]
            )
            attempts = [
                {
                    "number": 1,
                    "node": "n1",
                    "dispatched_at": 1005.0,
                    "started_at": 1010.0,
                    "ended_at": 1046.0,
                },
                {"number": 2, "node": "n2", "dispatched_at": 1050.0, "started_at": None, "ended_at": 1068.0},
            ]
            job = JobRecord(
                id="j1",
                state="succeeded",
                submitted_at=1000.0,
                updated_at=1068.0,
                data={"attempts": attempts},
            )
            await store.put_jobs([job])
            pm = PowerManager(INV, {}, store, sample_interval=10.0)
            service = PowerService(
                NodeManager(INV, store, config=lc.LifecycleConfig()), pm, clock=lambda: 1100.0
            )

            rows = await service.energy(["n2", "n1"], 1000.0, 1036.0)
            assert [(r.node, r.energy.wh) for r in rows] == [
                ("n2", pytest.approx(0.2)),
                ("n1", pytest.approx(0.1)),
            ]
            everyone = await service.energy(None, None, None)  # the last hour up to now (1100)
            assert [(r.node, r.since, r.until) for r in everyone] == [
                ("n1", -2500.0, 1100.0),
                ("n2", -2500.0, 1100.0),
            ]
            assert everyone[0].energy.covered_s == 100.0

            per_attempt = await service.job_energy("j1")
            assert [(r.job, r.attempt, r.node, r.since, r.until) for r in per_attempt] == [
                ("j1", 1, "n1", 1010.0, 1046.0),
                ("j1", 2, "n2", 1050.0, 1068.0),  # never reported started: from its dispatch
            ]
            assert [r.energy.wh for r in per_attempt] == [pytest.approx(0.1), pytest.approx(0.1)]
            with pytest.raises(LookupError, match="no job 'nope'"):
                await service.job_energy("nope")
            with pytest.raises(UnknownNode):
                await service.energy(["n9"], None, None)

    asyncio.run(main())
