"""The store's jobs, log chunks and artifacts (SQLite): round trips, order, duplicates kept once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from scalerunner.coordinator.store import ArtifactRecord, JobRecord, LogChunkRecord, SqliteStore, StoreError


def job(i: int, state: str = "queued") -> JobRecord:
    return JobRecord(
        id=f"j-{i}",
        state=state,
        name=f"job {i}",
        project="p",
        submitted_at=float(i),
        updated_at=float(i),
        data={"attempts": [{"number": 1}], "i": i},
    )


def chunk(seq: int, attempt: int = 1, data: str = "x") -> LogChunkRecord:
    return LogChunkRecord(job="j-1", attempt=attempt, seq=seq, stream="stdout", data=data, at=1.0)


def test_jobs_round_trip_and_list_newest_first_by_state(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            await store.put_jobs([job(i) for i in range(5)])
            await store.put_jobs([job(3, "running")])
            assert await store.get_job("j-3") == job(3, "running")
            assert await store.get_job("nope") is None
            assert [j.id for j in await store.list_jobs(limit=3)] == ["j-4", "j-3", "j-2"]
            assert [j.id for j in await store.list_jobs(["running"])] == ["j-3"]
            assert await store.list_jobs([]) == []
            with pytest.raises(StoreError, match="limit 0"):
                await store.list_jobs(limit=0)
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:  # survives a reopen
            assert (await store.get_job("j-3")) == job(3, "running")

    asyncio.run(main())


def test_log_chunks_are_kept_once_and_read_in_order_after_a_cursor(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            assert await store.add_log_chunks([chunk(2), chunk(0), chunk(1, attempt=2)]) == 3
            assert await store.add_log_chunks([chunk(2, data="again"), chunk(1)]) == 1  # a resend
            assert await store.log_seqs("j-1", 1) == [0, 1, 2]
            got = await store.log_chunks("j-1")
            assert [(c.attempt, c.seq, c.data) for c in got] == [
                (1, 0, "x"),
                (1, 1, "x"),
                (1, 2, "x"),
                (2, 1, "x"),
            ]
            after = await store.log_chunks("j-1", after=(1, 1))
            assert [(c.attempt, c.seq) for c in after] == [(1, 2), (2, 1)]
            assert [c.seq for c in await store.log_chunks("j-1", attempt=2)] == [1]

    asyncio.run(main())


def test_artifacts_are_listed_by_attempt_and_name(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            for attempt, name in ((2, "b"), (1, "z"), (2, "a")):
                await store.add_artifact(
                    ArtifactRecord(job="j-1", attempt=attempt, name=name, sha256="0" * 64, size=3, at=1.0)
                )
            assert [(a.attempt, a.name) for a in await store.list_artifacts("j-1")] == [
                (1, "z"),
                (2, "a"),
                (2, "b"),
            ]
            assert await store.list_artifacts("j-2") == []

    asyncio.run(main())
