"""The store's one-time boot tokens (SQLite): kept by digest only, taken once, expiring, pruned,
and the schema-4 migration from a schema-3 database."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from scalerunner.coordinator.store import SCHEMA_VERSION, JobRecord, SqliteStore
from scalerunner.coordinator.store import sqlite as sqlite_backend


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_token_is_taken_once_and_names_its_node(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            await store.put_boot_token(digest("t1"), "rack1-01", expires_at=1000.0)
            await store.put_boot_token(digest("t2"), "rack1-02", expires_at=1000.0)
            assert await store.take_boot_token(digest("nope"), now=10.0) is None
            assert await store.take_boot_token(digest("t1"), now=10.0) == "rack1-01"
            assert await store.take_boot_token(digest("t1"), now=10.0) is None  # single use
            assert await store.take_boot_token(digest("t2"), now=10.0) == "rack1-02"

    asyncio.run(main())


def test_the_token_itself_is_never_stored(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            await store.put_boot_token(digest("secret-token-xyz"), "rack1-01", expires_at=1000.0)

    asyncio.run(main())
    for f in tmp_path.iterdir():
        assert b"secret-token-xyz" not in f.read_bytes(), f


def test_an_expired_token_is_refused_and_pruned(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            await store.put_boot_token(digest("old"), "n1", expires_at=100.0)
            await store.put_boot_token(digest("new"), "n2", expires_at=200.0)
            assert await store.take_boot_token(digest("old"), now=100.0) is None  # expires AT 100
            assert await store.prune_boot_tokens(now=150.0) == 1
            assert await store.prune_boot_tokens(now=150.0) == 0
            assert await store.take_boot_token(digest("new"), now=150.0) == "n2"
            assert await store.prune_boot_tokens(now=1e9) == 0  # taken tokens are already gone

    asyncio.run(main())


def test_a_token_survives_a_restart_until_taken(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            await store.put_boot_token(digest("t"), "n1", expires_at=1000.0)
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            assert await store.take_boot_token(digest("t"), now=1.0) == "n1"
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            assert await store.take_boot_token(digest("t"), now=1.0) is None

    asyncio.run(main())


def test_concurrent_takers_of_one_token_have_exactly_one_winner(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            for i in range(20):
                await store.put_boot_token(digest(f"t{i}"), f"n{i}", expires_at=1000.0)
            for i in range(20):
                got = await asyncio.gather(*(store.take_boot_token(digest(f"t{i}"), 1.0) for _ in range(8)))
                assert sorted(got, key=lambda g: g is None) == [f"n{i}"] + [None] * 7

    asyncio.run(main())


def test_a_schema_3_database_is_migrated_to_4_keeping_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "s.db"
    assert SCHEMA_VERSION >= 4
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", sqlite_backend.MIGRATIONS[:3])
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", 3)

    async def old() -> None:
        async with SqliteStore(db, flush_interval=None) as store:
            await store.put_jobs([JobRecord(id="j-1", state="queued", submitted_at=1.0, updated_at=1.0)])

    asyncio.run(old())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "boot_tokens" not in tables
    monkeypatch.undo()

    async def new() -> None:
        async with SqliteStore(db, flush_interval=None) as store:
            assert (await store.get_job("j-1")) is not None
            await store.put_boot_token(digest("t"), "n1", expires_at=10.0)
            assert await store.take_boot_token(digest("t"), now=1.0) == "n1"

    asyncio.run(new())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
