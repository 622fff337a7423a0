"""Power samples in the SQLite store: the window with its edge neighbours, replace, prune."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from scalerunner.coordinator.store import PowerSample, SqliteStore


def test_power_samples_come_back_with_one_neighbour_each_side(tmp_path: Path) -> None:
    asyncio.run(_window(tmp_path))


async def _window(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
        await store.add_power_samples([PowerSample(node="n1", at=float(t), watts=t * 1.5) for t in range(10)])
        await store.add_power_samples([PowerSample(node="n2", at=5.0, watts=99.0)])
        got = await store.power_samples("n1", 3.5, 6.0)
        assert [(p.at, p.watts) for p in got] == [(3.0, 4.5), (4.0, 6.0), (5.0, 7.5), (6.0, 9.0), (7.0, 10.5)]
        await store.add_power_samples([PowerSample(node="n1", at=4.0, watts=1.0)])  # replaces
        assert [p.watts for p in await store.power_samples("n1", 4.0, 4.0)] == [4.5, 1.0, 7.5]
        assert await store.prune_power_samples(5.0) == 5
        assert [p.at for p in await store.power_samples("n1", 0.0, 100.0)] == [5.0, 6.0, 7.0, 8.0, 9.0]
        assert [p.node for p in await store.power_samples("n2", 0.0, 100.0)] == ["n2"]


def test_a_sample_sqlite_cannot_hold_is_refused_naming_the_node(tmp_path: Path) -> None:
    asyncio.run(_refused(tmp_path))


async def _refused(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
        with pytest.raises(ValueError, match="power sample of n7"):
            await store.add_power_samples([PowerSample(node="n7", at=1.0, watts=float("nan"))])
