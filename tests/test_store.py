"""The SQLite store: round trips, one transaction per change, listing order, telemetry summaries,
the versioned schema, and its errors (StoreError naming the file)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scalerunner.coordinator.store import (
    SCHEMA_VERSION,
    Event,
    NodeRecord,
    SqliteStore,
    StoreError,
    open_store,
)
from scalerunner.coordinator.store import sqlite as sqlite_backend

T = TypeVar("T")


def asynctest(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop, bounded in time."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(fn(*args, **kwargs), 20)

        asyncio.run(bounded())

    return wrapper


def node(name: str = "rack1-01", **fields: Any) -> NodeRecord:
    values: dict[str, Any] = {"state": "off", "health": "unknown", **fields}
    return NodeRecord(name=name, **values)


def event(node_name: str = "rack1-01", at: float = 1000.0, **fields: Any) -> Event:
    values: dict[str, Any] = {"axis": "state", "old": "off", "new": "booting", "reason": "power on", **fields}
    return Event(node=node_name, at=at, **values)


@contextlib.asynccontextmanager
async def opened(path: Path, flush_interval: float | None = None) -> Any:
    store = SqliteStore(path, flush_interval=flush_interval)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "scalerunner.db"


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Nodes and events


@asynctest
async def test_a_node_record_round_trips_with_every_field(db: Path) -> None:
    record = node(
        state="busy",
        health="good",
        health_reason="check passed",
        conn_seq=7,
        state_since=1234.5,
        last_telemetry=1240.25,
        recovery_attempts=2,
        data={"jobs": ["j1"], "energy_wh": 1.5, "nested": {"a": None}},
    )
    async with opened(db) as store:
        assert await store.get_node("rack1-01") is None
        await store.apply(record)
        assert await store.get_node("rack1-01") == record
    async with opened(db) as store:  # and after a restart
        assert await store.get_node("rack1-01") == record


@asynctest
async def test_apply_replaces_the_whole_node_record(db: Path) -> None:
    async with opened(db) as store:
        await store.apply(node(state="booting", last_telemetry=5.0, data={"a": 1}))
        await store.apply(node(state="online"))
        assert await store.get_node("rack1-01") == node(state="online")


@asynctest
async def test_nodes_are_listed_by_name(db: Path) -> None:
    async with opened(db) as store:
        for name in ("rack2-01", "rack1-10", "rack1-02"):
            await store.apply(node(name))
        assert [n.name for n in await store.list_nodes()] == ["rack1-02", "rack1-10", "rack2-01"]


@asynctest
async def test_events_round_trip_and_get_growing_ids(db: Path) -> None:
    async with opened(db) as store:
        first = await store.apply(node(state="booting"), [event(data={"port": 3})])
        more = await store.apply(
            node(state="online"),
            [event(old="booting", new="online", at=1001.0), event(axis="health", old="unknown", new="good")],
        )
        assert len(first) == 1 and len(more) == 2 and first[0] < more[0] < more[1]
        (recorded,) = await store.list_events(limit=1, after_id=None, node=None)
        assert recorded.id == more[1] and recorded.axis == "health"
        (e,) = await store.list_events(after_id=first[0] - 1, limit=1)
        assert (e.id, e.node, e.axis, e.old, e.new, e.reason, e.at, e.data) == (
            first[0],
            "rack1-01",
            "state",
            "off",
            "booting",
            "power on",
            1000.0,
            {"port": 3},
        )


@asynctest
async def test_events_may_be_recorded_without_a_node_change(db: Path) -> None:
    async with opened(db) as store:
        ids = await store.apply(None, [event(axis="command", old="", new="identify")])
        assert [e.id for e in await store.list_events()] == ids
        assert await store.list_nodes() == []


@asynctest
async def test_a_node_change_and_its_events_are_one_transaction(db: Path) -> None:
    async with opened(db) as store:
        await store.apply(node(state="off"), [event()])
        # The second event breaks a NOT NULL constraint after the node row and the first event
        # were written inside the transaction: all of it must be rolled back.
        broken = event(old=None)
        with pytest.raises(StoreError) as info:
            await store.apply(node(state="booting"), [event(), broken])
        assert info.value.where == str(db)
        assert (await store.get_node("rack1-01")) == node(state="off")
        assert len(await store.list_events()) == 1


@asynctest
async def test_data_that_is_not_json_is_refused_before_anything_is_written(db: Path) -> None:
    async with opened(db) as store:
        with pytest.raises(StoreError, match="not JSON"):
            await store.apply(node(data={"when": object()}), [event()])
        assert await store.list_nodes() == [] and await store.list_events() == []


@asynctest
async def test_list_events_pages_forward_tails_the_latest_and_filters_by_node(db: Path) -> None:
    async with opened(db) as store:
        ids = []
        for i in range(10):
            name = f"rack1-0{i % 2}"
            ids += await store.apply(node(name), [event(name, at=float(i), reason=f"step {i}")])
        everything = await store.list_events(limit=1000)
        assert [e.id for e in everything] == ids  # oldest first
        assert [e.id for e in await store.list_events(limit=3)] == ids[-3:]  # the latest, oldest first
        assert [e.id for e in await store.list_events(after_id=ids[2], limit=3)] == ids[3:6]
        assert [e.id for e in await store.list_events(after_id=ids[-1])] == []
        odd = await store.list_events(node="rack1-01", limit=1000)
        assert [e.reason for e in odd] == ["step 1", "step 3", "step 5", "step 7", "step 9"]
        assert [e.id for e in await store.list_events(node="rack1-01", after_id=ids[4], limit=2)] == [
            ids[5],
            ids[7],
        ]
        with pytest.raises(StoreError, match="limit"):
            await store.list_events(limit=0)


# ---------------------------------------------------------------------------------------------
# Telemetry


@asynctest
async def test_telemetry_is_summarised_per_node_per_minute(db: Path) -> None:
    async with opened(db) as store:
        store.add_telemetry("rack1-01", 600.0, load1=1.0, cpu_pct=10.0, mem_used_mb=100, temp_c=None)
        store.add_telemetry("rack1-01", 630.0, load1=2.0, cpu_pct=30.0, mem_used_mb=300, temp_c=55.0)
        store.add_telemetry("rack1-01", 659.9, load1=3.0, cpu_pct=50.0, mem_used_mb=200, temp_c=50.0)
        store.add_telemetry("rack1-01", 660.0, load1=4.0, cpu_pct=70.0, mem_used_mb=10)
        store.add_telemetry("rack1-02", 600.0, load1=9.0, cpu_pct=90.0, mem_used_mb=900, temp_c=70.0)
        assert await store.flush_telemetry() == 3
        first, second = await store.telemetry("rack1-01", since=0)
        assert (first.minute, first.samples, first.avg_load1, first.avg_cpu_pct) == (600, 3, 2.0, 30.0)
        assert (first.max_temp_c, first.max_mem_used_mb) == (55.0, 300)
        assert (second.minute, second.samples, second.max_temp_c, second.max_mem_used_mb) == (
            660,
            1,
            None,
            10,
        )
        (other,) = await store.telemetry("rack1-02", since=0)
        assert other.max_temp_c == 70.0 and other.samples == 1


@asynctest
async def test_flushes_of_one_minute_add_up(db: Path) -> None:
    async with opened(db) as store:
        store.add_telemetry("rack1-01", 600.0, load1=1.0, cpu_pct=10.0, mem_used_mb=100)
        await store.flush_telemetry()
        store.add_telemetry("rack1-01", 610.0, load1=3.0, cpu_pct=30.0, mem_used_mb=50, temp_c=40.0)
        await store.flush_telemetry()
        store.add_telemetry("rack1-01", 620.0, load1=5.0, cpu_pct=50.0, mem_used_mb=70)
        await store.flush_telemetry()
        (m,) = await store.telemetry("rack1-01", since=600)
        assert (m.samples, m.avg_load1, m.avg_cpu_pct, m.max_temp_c, m.max_mem_used_mb) == (
            3,
            3.0,
            30.0,
            40.0,
            100,
        )


@asynctest
async def test_telemetry_reads_include_samples_not_yet_flushed(db: Path) -> None:
    async with opened(db) as store:
        store.add_telemetry("rack1-01", 600.0, load1=1.0, cpu_pct=10.0, mem_used_mb=100)
        await store.flush_telemetry()
        store.add_telemetry("rack1-01", 601.0, load1=3.0, cpu_pct=30.0, mem_used_mb=300)
        store.add_telemetry("rack1-01", 700.0, load1=1.0, cpu_pct=1.0, mem_used_mb=1)
        minutes = await store.telemetry("rack1-01", since=0)
        assert [(m.minute, m.samples, m.avg_load1) for m in minutes] == [(600, 2, 2.0), (660, 1, 1.0)]
        assert await store.flush_telemetry() == 2
        assert await store.telemetry("rack1-01", since=0) == minutes


@asynctest
async def test_telemetry_since_keeps_the_minute_that_contains_it(db: Path) -> None:
    async with opened(db) as store:
        for ts in (0.0, 60.0, 120.0, 180.0):
            store.add_telemetry("n", ts, load1=0.0, cpu_pct=0.0, mem_used_mb=0)
        await store.flush_telemetry()
        assert [m.minute for m in await store.telemetry("n", since=90.0)] == [60, 120, 180]
        assert [m.minute for m in await store.telemetry("n", since=120.0)] == [120, 180]
        assert await store.prune_telemetry(before=120.0) == 2
        assert [m.minute for m in await store.telemetry("n", since=0.0)] == [120, 180]


@asynctest
async def test_a_thousand_nodes_flush_in_one_transaction(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transactions = []
    real = sqlite_backend._transaction

    @contextlib.contextmanager
    def counting(conn: sqlite3.Connection) -> Iterator[None]:
        transactions.append(1)
        with real(conn):
            yield

    async with opened(db) as store:
        monkeypatch.setattr(sqlite_backend, "_transaction", counting)
        for second in range(5):
            for n in range(1000):
                store.add_telemetry(f"n{n}", 6000.0 + second, load1=1.0, cpu_pct=5.0, mem_used_mb=10)
        assert await store.flush_telemetry() == 1000
        assert len(transactions) == 1
        (m,) = await store.telemetry("n999", since=0)
        assert m.samples == 5


@asynctest
async def test_a_failed_flush_keeps_its_samples_for_the_next(db: Path) -> None:
    async with opened(db) as store:
        store.add_telemetry("n", 600.0, load1=1.0, cpu_pct=1.0, mem_used_mb=1)
        real_run = store._run

        async def failing(what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
            raise StoreError(store.where, f"{what}: disk I/O error")

        store._run = failing
        with pytest.raises(StoreError):
            await store.flush_telemetry()
        store._run = real_run
        store.add_telemetry("n", 601.0, load1=3.0, cpu_pct=1.0, mem_used_mb=1)
        assert await store.flush_telemetry() == 1
        (m,) = await store.telemetry("n", since=0)
        assert (m.samples, m.avg_load1) == (2, 2.0)


@asynctest
async def test_telemetry_is_flushed_periodically_and_at_stop(db: Path) -> None:
    async with opened(db, flush_interval=0.05) as store:
        store.add_telemetry("n", 600.0, load1=1.0, cpu_pct=1.0, mem_used_mb=1)
        for _ in range(100):
            await asyncio.sleep(0.02)
            with raw(db) as conn:
                if conn.execute("SELECT count(*) FROM telemetry_minutes").fetchone()[0]:
                    break
        else:
            pytest.fail("the periodic flush never wrote")
        store.add_telemetry("n", 700.0, load1=1.0, cpu_pct=1.0, mem_used_mb=1)
    async with opened(db) as store:
        assert [m.minute for m in await store.telemetry("n", since=0)] == [600, 660]


@pytest.mark.parametrize(
    "sample",
    [
        {"ts": float("nan"), "load1": 1.0, "cpu_pct": 1.0, "mem_used_mb": 1},
        {"ts": 1.0, "load1": float("inf"), "cpu_pct": 1.0, "mem_used_mb": 1},
        {"ts": 1e300, "load1": 1.0, "cpu_pct": 1.0, "mem_used_mb": 1},
        {"ts": 1.0, "load1": 1.0, "cpu_pct": 1.0, "mem_used_mb": 2**64},
    ],
)
def test_telemetry_that_sqlite_cannot_hold_is_refused_when_counted(db: Path, sample: dict[str, Any]) -> None:
    store = SqliteStore(db)
    with pytest.raises(ValueError):
        store.add_telemetry("n", **sample)


# ---------------------------------------------------------------------------------------------
# The file, the schema, the thread


@asynctest
async def test_the_database_directory_is_created_and_the_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "sr.db"
    async with opened(path):
        pass
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


@asynctest
async def test_the_connection_is_full_sync_and_lives_on_the_worker_thread(db: Path) -> None:
    async with opened(db) as store:

        def probe(conn: sqlite3.Connection) -> tuple[int, str]:
            return conn.execute("PRAGMA synchronous").fetchone()[0], threading.current_thread().name

        synchronous, thread = await store._run("probe", probe)
        assert synchronous == 2  # FULL
        assert thread.startswith("store-sqlite") and thread != threading.current_thread().name


@asynctest
async def test_reopening_keeps_the_schema_version_and_the_data(db: Path) -> None:
    async with opened(db) as store:
        await store.apply(node(), [event()])
    async with opened(db) as store:
        assert await store.get_node("rack1-01") is not None
    with raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


@asynctest
async def test_an_older_schema_is_migrated_on_open(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(db) as store:
        await store.apply(node(), [event()])
    step = ("CREATE TABLE energy (node TEXT NOT NULL, wh REAL NOT NULL)",)
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", (*sqlite_backend.MIGRATIONS, step))
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    async with opened(db) as store:
        assert await store.get_node("rack1-01") is not None
    with raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION + 1,)]
        assert conn.execute("SELECT count(*) FROM energy").fetchone() == (0,)


@asynctest
async def test_a_newer_schema_is_refused_naming_the_file(db: Path) -> None:
    async with opened(db):
        pass
    with raw(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        conn.commit()
    store = SqliteStore(db)
    with pytest.raises(StoreError, match="newer") as info:
        await store.start()
    assert info.value.where == str(db)
    await store.stop()  # not started: nothing to do


@asynctest
async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "sr.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError) as info:
        await SqliteStore(path).start()
    assert info.value.where == str(path)


@asynctest
async def test_a_second_store_on_the_same_file_is_refused_while_the_first_is_open(db: Path) -> None:
    async with opened(db):
        with pytest.raises(StoreError, match="in use"):
            await SqliteStore(db).start()
    async with opened(db):  # free again once the first has stopped
        pass


@asynctest
async def test_a_store_is_used_between_start_and_stop_only(db: Path) -> None:
    store = SqliteStore(db)
    with pytest.raises(StoreError, match="not started"):
        await store.list_nodes()
    await store.start()
    with pytest.raises(StoreError, match="already started"):
        await store.start()
    await store.stop()
    await store.stop()
    with pytest.raises(StoreError, match="not started"):
        await store.apply(node())


# ---------------------------------------------------------------------------------------------
# URLs


def test_open_store_picks_sqlite_from_the_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(store, SqliteStore) and store.where == str(tmp_path / "x.db")


def test_postgresql_is_not_supported_yet_and_the_password_stays_out_of_the_error() -> None:
    with pytest.raises(StoreError, match="not supported yet") as info:
        open_store("postgresql://sr:hunter22@db.lab:5432/scalerunner")
    assert "hunter22" not in str(info.value)
    assert info.value.where == "postgresql://sr:***@db.lab:5432/scalerunner"


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite://x.db", "sqlite:///", "x.db", "sqlite:///:memory:"])
def test_other_urls_are_store_errors(url: str) -> None:
    with pytest.raises(StoreError):
        open_store(url)
