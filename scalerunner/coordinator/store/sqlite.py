"""The SQLite store: one file in WAL mode, written so that an acknowledged write survives
``kill -9`` and power loss (``synchronous=FULL``: every commit fsyncs the WAL).

SQLite connections are not shared across threads, and a commit waits for an fsync, so all the
SQLite work runs in one dedicated worker thread with one connection; the event loop only awaits
it. The schema is versioned in the ``schema_version`` table and created or migrated on open; a
lock file keeps a second coordinator from writing the same database.

Telemetry is summarised per node per minute. Samples are counted in memory
(``add_telemetry``) and written in batches (``flush_telemetry``, every ``flush_interval``
seconds and at stop), one transaction each, so a rack of 1000 nodes at 1 Hz costs one fsync per
batch rather than 1000 a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ...atomic import fsync_dir
from ..errors import StoreError
from .base import (
    ArtifactRecord,
    Event,
    EventRecord,
    ImageFileRecord,
    ImageRecord,
    JobRecord,
    LogChunkRecord,
    NodeRecord,
    OverrideRecord,
    PowerSample,
    PromotionRecord,
    TelemetryMinute,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

log = logging.getLogger("scalerunner.coordinator.store")

T = TypeVar("T")

# Each entry moves the schema from version i to i + 1; never edit one that has shipped, append.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            health TEXT NOT NULL,
            health_reason TEXT NOT NULL DEFAULT '',
            conn_seq INTEGER NOT NULL DEFAULT 0,
            state_since REAL NOT NULL DEFAULT 0,
            last_telemetry REAL,
            recovery_attempts INTEGER NOT NULL DEFAULT 0,
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            node TEXT NOT NULL,
            axis TEXT NOT NULL,
            old TEXT NOT NULL,
            new TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX events_by_node ON events (node, id)",
        """CREATE TABLE telemetry_minutes (
            node TEXT NOT NULL,
            minute INTEGER NOT NULL,
            samples INTEGER NOT NULL,
            load1_sum REAL NOT NULL,
            cpu_pct_sum REAL NOT NULL,
            temp_c_max REAL,
            mem_used_mb_max INTEGER NOT NULL,
            PRIMARY KEY (node, minute)
        ) WITHOUT ROWID""",
        "CREATE INDEX telemetry_by_minute ON telemetry_minutes (minute)",
    ),
    (
        """CREATE TABLE power_samples (
            node TEXT NOT NULL,
            at REAL NOT NULL,
            watts REAL NOT NULL,
            PRIMARY KEY (node, at)
        ) WITHOUT ROWID""",
    ),
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            project TEXT NOT NULL DEFAULT '',
            submitted_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX jobs_by_submit ON jobs (submitted_at)",
        "CREATE INDEX jobs_by_state ON jobs (state)",
        """CREATE TABLE job_log (
            job TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            stream TEXT NOT NULL,
            data TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (job, attempt, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE job_artifacts (
            job TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (job, attempt, name)
        ) WITHOUT ROWID""",
    ),
    (
        # One-time boot tokens: only the token's sha256 is kept, never the token.
        """CREATE TABLE boot_tokens (
            digest TEXT PRIMARY KEY,
            node TEXT NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX boot_tokens_by_expiry ON boot_tokens (expires_at)",
        # The image registry: versions per (name, arch), their files (bytes content-addressed
        # on disk), each (group, arch)'s promotion history, per-node overrides.
        """CREATE TABLE image_versions (
            name TEXT NOT NULL,
            arch TEXT NOT NULL,
            version TEXT NOT NULL,
            cmdline TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            PRIMARY KEY (name, arch, version)
        ) WITHOUT ROWID""",
        """CREATE TABLE image_files (
            image TEXT NOT NULL,
            arch TEXT NOT NULL,
            version TEXT NOT NULL,
            position INTEGER NOT NULL,
            file TEXT NOT NULL,
            role TEXT NOT NULL,
            digest TEXT NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (image, arch, version, file),
            FOREIGN KEY (image, arch, version) REFERENCES image_versions (name, arch, version)
                ON DELETE CASCADE
        ) WITHOUT ROWID""",
        "CREATE INDEX image_files_by_digest ON image_files (digest)",
        """CREATE TABLE image_promotions (
            grp TEXT NOT NULL,
            arch TEXT NOT NULL,
            seq INTEGER NOT NULL,
            image TEXT NOT NULL,
            version TEXT NOT NULL,
            at REAL NOT NULL,
            rolled_back_at REAL,
            PRIMARY KEY (grp, arch, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE image_overrides (
            node TEXT PRIMARY KEY,
            image TEXT NOT NULL,
            version TEXT NOT NULL,
            at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_NODE_COLUMNS = (
    "name, state, health, health_reason, conn_seq, state_since, last_telemetry, recovery_attempts, data"
)
_EVENT_COLUMNS = "id, node, axis, old, new, reason, at, data"
_JOB_COLUMNS = "id, state, name, project, submitted_at, updated_at, data"

_MAX_TS = 1e11  # Unix time, the year 5138
_MAX_INT = 2**53

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclasses.dataclass(slots=True)
class _Minute:
    """The running sums of one node's minute, before they are written."""

    samples: int = 0
    load1_sum: float = 0.0
    cpu_pct_sum: float = 0.0
    temp_c_max: float | None = None
    mem_used_mb_max: int = 0

    def add(self, load1: float, cpu_pct: float, mem_used_mb: int, temp_c: float | None) -> None:
        self.samples += 1
        self.load1_sum += load1
        self.cpu_pct_sum += cpu_pct
        self.mem_used_mb_max = max(self.mem_used_mb_max, mem_used_mb)
        if temp_c is not None:
            self.temp_c_max = temp_c if self.temp_c_max is None else max(self.temp_c_max, temp_c)

    def merge(self, other: _Minute) -> None:
        self.samples += other.samples
        self.load1_sum += other.load1_sum
        self.cpu_pct_sum += other.cpu_pct_sum
        self.mem_used_mb_max = max(self.mem_used_mb_max, other.mem_used_mb_max)
        if other.temp_c_max is not None:
            self.add_temp(other.temp_c_max)

    def add_temp(self, temp_c: float) -> None:
        self.temp_c_max = temp_c if self.temp_c_max is None else max(self.temp_c_max, temp_c)

    def record(self, node: str, minute: int) -> TelemetryMinute:
        return TelemetryMinute(
            node=node,
            minute=minute,
            samples=self.samples,
            avg_load1=self.load1_sum / self.samples,
            avg_cpu_pct=self.cpu_pct_sum / self.samples,
            max_temp_c=self.temp_c_max,
            max_mem_used_mb=self.mem_used_mb_max,
        )


Pending = dict[str, dict[int, _Minute]]


class SqliteStore:
    """``Store`` on one SQLite file. ``flush_interval``: seconds between telemetry batches
    (None: only when ``flush_telemetry`` is called, and at stop)."""

    def __init__(self, path: str | Path, *, flush_interval: float | None = 5.0) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._flush_interval = flush_interval
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only by the worker thread
        self._lock_fd: int | None = None
        self._pending: Pending = {}
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            raise StoreError(self.where, "already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        try:
            await self._submit("open", self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._stopping.clear()
        if self._flush_interval is not None:
            self._flusher = asyncio.create_task(self._flush_every(self._flush_interval), name="store.flush")

    async def stop(self) -> None:
        if self._executor is None:
            return
        self._stopping.set()
        if self._flusher is not None:
            await self._flusher  # it finishes the batch in hand, never cut off mid-write
            self._flusher = None
        try:
            await self.flush_telemetry()
        finally:
            try:
                await self._submit("close", self._close)
            finally:
                self._executor.shutdown(wait=False)
                self._executor = None

    async def __aenter__(self) -> SqliteStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- nodes and events ---------------------------------------------------------------------

    async def get_node(self, name: str) -> NodeRecord | None:
        def get(conn: sqlite3.Connection) -> NodeRecord | None:
            row = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,)).fetchone()
            return None if row is None else _node(row)

        return await self._run(f"get node {name}", get)

    async def list_nodes(self) -> list[NodeRecord]:
        def list_(conn: sqlite3.Connection) -> list[NodeRecord]:
            return [_node(r) for r in conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")]

        return await self._run("list nodes", list_)

    async def apply(self, node: NodeRecord | None, events: Sequence[Event] = ()) -> list[int]:
        # Encode here, on the caller's side: a record that cannot be stored fails before any I/O.
        node_row = None if node is None else self._node_row(node)
        event_rows = [self._event_row(e) for e in events]

        def write(conn: sqlite3.Connection) -> list[int]:
            ids: list[int] = []
            with _transaction(conn):
                if node_row is not None:
                    conn.execute(
                        f"INSERT OR REPLACE INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        node_row,
                    )
                for row in event_rows:
                    cur = conn.execute(
                        "INSERT INTO events (at, node, axis, old, new, reason, data)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    assert cur.lastrowid is not None
                    ids.append(cur.lastrowid)
            return ids

        what = f"apply node {node.name}" if node is not None else "append events"
        return await self._run(what, write)

    async def list_events(
        self, node: str | None = None, after_id: int | None = None, limit: int = 100
    ) -> list[EventRecord]:
        if limit < 1:
            raise StoreError(self.where, f"list events: limit {limit} is not >= 1")
        where: list[str] = ["1"]
        args: list[Any] = []
        if node is not None:
            where.append("node = ?")
            args.append(node)
        if after_id is not None:
            where.append("id > ?")
            args.append(after_id)
            sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        else:
            sql = (
                f"SELECT * FROM (SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
                " ORDER BY id DESC LIMIT ?) ORDER BY id"
            )
        args.append(limit)

        def list_(conn: sqlite3.Connection) -> list[EventRecord]:
            return [_event(r) for r in conn.execute(sql, args)]

        return await self._run("list events", list_)

    # -- telemetry ----------------------------------------------------------------------------

    def add_telemetry(
        self,
        node: str,
        ts: float,
        load1: float,
        cpu_pct: float,
        mem_used_mb: int,
        temp_c: float | None = None,
    ) -> None:
        if not all(math.isfinite(v) for v in (ts, load1, cpu_pct)):
            raise ValueError("telemetry values are finite numbers")
        # What SQLite cannot hold would fail every later flush of its batch: refuse it here.
        if not 0 <= ts <= _MAX_TS or not 0 <= mem_used_mb <= _MAX_INT:
            raise ValueError(f"telemetry out of range: ts {ts}, mem_used_mb {mem_used_mb}")
        if temp_c is not None and not math.isfinite(temp_c):
            temp_c = None
        minute = int(ts // 60) * 60
        per_node = self._pending.setdefault(node, {})
        acc = per_node.get(minute)
        if acc is None:
            acc = per_node[minute] = _Minute()
        acc.add(load1, cpu_pct, mem_used_mb, temp_c)

    async def flush_telemetry(self) -> int:
        batch, self._pending = self._pending, {}
        rows = [
            (node, minute, m.samples, m.load1_sum, m.cpu_pct_sum, m.temp_c_max, m.mem_used_mb_max)
            for node, minutes in batch.items()
            for minute, m in minutes.items()
        ]
        if not rows:
            return 0

        def write(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                conn.executemany(
                    """INSERT INTO telemetry_minutes
                        (node, minute, samples, load1_sum, cpu_pct_sum, temp_c_max, mem_used_mb_max)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (node, minute) DO UPDATE SET
                        samples = samples + excluded.samples,
                        load1_sum = load1_sum + excluded.load1_sum,
                        cpu_pct_sum = cpu_pct_sum + excluded.cpu_pct_sum,
                        temp_c_max = max(coalesce(temp_c_max, excluded.temp_c_max),
                                         coalesce(excluded.temp_c_max, temp_c_max)),
                        mem_used_mb_max = max(mem_used_mb_max, excluded.mem_used_mb_max)""",
                    rows,
                )
            return len(rows)

        # Shielded: a flush that was handed over is finished even if its caller is cancelled
        # (else the batch could be both written and counted again). One that failed is counted
        # again, so the next flush carries it.
        task = asyncio.ensure_future(self._run("flush telemetry", write))
        task.add_done_callback(lambda t: self._requeue(batch) if t.cancelled() or t.exception() else None)
        return await asyncio.shield(task)

    def _requeue(self, batch: Pending) -> None:
        for node, minutes in batch.items():
            per_node = self._pending.setdefault(node, {})
            for minute, m in minutes.items():
                per_node.setdefault(minute, _Minute()).merge(m)

    async def telemetry(self, node: str, since: float) -> list[TelemetryMinute]:
        # Copy what is not yet flushed now: the read below is queued behind every batch already
        # handed to the worker, and ahead of any batch handed over later, so nothing counts twice.
        unflushed = {
            minute: dataclasses.replace(m)
            for minute, m in self._pending.get(node, {}).items()
            if minute + 60 > since
        }

        def read(conn: sqlite3.Connection) -> dict[int, _Minute]:
            rows = conn.execute(
                """SELECT minute, samples, load1_sum, cpu_pct_sum, temp_c_max, mem_used_mb_max
                FROM telemetry_minutes WHERE node = ? AND minute > ? ORDER BY minute""",
                (node, since - 60),
            )
            return {r[0]: _Minute(*r[1:]) for r in rows}

        minutes = await self._run(f"telemetry of {node}", read)
        for minute, m in unflushed.items():
            minutes.setdefault(minute, _Minute()).merge(m)
        return [minutes[minute].record(node, minute) for minute in sorted(minutes)]

    async def prune_telemetry(self, before: float) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                return conn.execute(
                    "DELETE FROM telemetry_minutes WHERE minute + 60 <= ?", (before,)
                ).rowcount

        return await self._run("prune telemetry", prune)

    # -- power samples ------------------------------------------------------------------------

    async def add_power_samples(self, samples: Sequence[PowerSample]) -> None:
        rows = [(p.node, p.at, p.watts) for p in samples]
        for p in samples:
            if not (math.isfinite(p.at) and math.isfinite(p.watts) and 0 <= p.at <= _MAX_TS):
                raise ValueError(f"power sample of {p.node} out of range: at {p.at}, watts {p.watts}")
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO power_samples (node, at, watts) VALUES (?, ?, ?)", rows
                )

        await self._run("add power samples", write)

    async def power_samples(self, node: str, since: float, until: float) -> list[PowerSample]:
        def read(conn: sqlite3.Connection) -> list[PowerSample]:
            rows = conn.execute(
                """SELECT at, watts FROM (
                    SELECT at, watts FROM (SELECT at, watts FROM power_samples
                        WHERE node = ? AND at < ? ORDER BY at DESC LIMIT 1)
                    UNION ALL SELECT at, watts FROM power_samples WHERE node = ? AND at >= ? AND at <= ?
                    UNION ALL SELECT at, watts FROM (SELECT at, watts FROM power_samples
                        WHERE node = ? AND at > ? ORDER BY at LIMIT 1)
                ) ORDER BY at""",
                (node, since, node, since, until, node, until),
            )
            return [PowerSample(node=node, at=at, watts=watts) for at, watts in rows]

        return await self._run(f"power samples of {node}", read)

    async def prune_power_samples(self, before: float) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                return conn.execute("DELETE FROM power_samples WHERE at < ?", (before,)).rowcount

        return await self._run("prune power samples", prune)

    # -- jobs, their logs and artifacts ---------------------------------------------------------

    async def put_jobs(self, jobs: Sequence[JobRecord]) -> None:
        rows = [
            (
                j.id,
                j.state,
                j.name,
                j.project,
                j.submitted_at,
                j.updated_at,
                self._json(f"job {j.id}", j.data),
            )
            for j in jobs
        ]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    f"INSERT OR REPLACE INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )

        await self._run(f"put {len(rows)} jobs", write)

    async def get_job(self, job_id: str) -> JobRecord | None:
        def get(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self._run(f"get job {job_id}", get)

    async def list_jobs(self, states: Sequence[str] | None = None, limit: int = 100) -> list[JobRecord]:
        if limit < 1:
            raise StoreError(self.where, f"list jobs: limit {limit} is not >= 1")
        where, args = "1", []
        if states is not None:
            where = f"state IN ({', '.join('?' * len(states))})" if states else "0"
            args = list(states)

        def list_(conn: sqlite3.Connection) -> list[JobRecord]:
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY submitted_at DESC, id DESC LIMIT ?"
            return [_job(r) for r in conn.execute(sql, [*args, limit])]

        return await self._run("list jobs", list_)

    async def add_log_chunks(self, chunks: Sequence[LogChunkRecord]) -> int:
        rows = [(c.job, c.attempt, c.seq, c.stream, c.data, c.at) for c in chunks]
        if not rows:
            return 0

        def write(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO job_log (job, attempt, seq, stream, data, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                return conn.total_changes - before

        return await self._run("add log chunks", write)

    async def log_chunks(
        self, job: str, attempt: int | None = None, after: tuple[int, int] = (0, -1), limit: int = 1000
    ) -> list[LogChunkRecord]:
        sql = (
            "SELECT job, attempt, seq, stream, data, at FROM job_log"
            " WHERE job = ? AND (attempt, seq) > (?, ?)"
            + (" AND attempt = ?" if attempt is not None else "")
            + " ORDER BY attempt, seq LIMIT ?"
        )
        args: list[Any] = [job, after[0], after[1], *([attempt] if attempt is not None else []), limit]

        def read(conn: sqlite3.Connection) -> list[LogChunkRecord]:
            return [
                LogChunkRecord(job=r[0], attempt=r[1], seq=r[2], stream=r[3], data=r[4], at=r[5])
                for r in conn.execute(sql, args)
            ]

        return await self._run(f"log of job {job}", read)

    async def log_seqs(self, job: str, attempt: int) -> list[int]:
        def read(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT seq FROM job_log WHERE job = ? AND attempt = ? ORDER BY seq", (job, attempt)
            )
            return [r[0] for r in rows]

        return await self._run(f"log chunk numbers of job {job}", read)

    async def add_artifact(self, artifact: ArtifactRecord) -> None:
        a = artifact
        row = (a.job, a.attempt, a.name, a.sha256, a.size, a.at)

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO job_artifacts (job, attempt, name, sha256, size, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )

        await self._run(f"add artifact {a.name} of job {a.job}", write)

    async def list_artifacts(self, job: str) -> list[ArtifactRecord]:
        def read(conn: sqlite3.Connection) -> list[ArtifactRecord]:
            rows = conn.execute(
                "SELECT job, attempt, name, sha256, size, at FROM job_artifacts WHERE job = ?"
                " ORDER BY attempt, name",
                (job,),
            )
            return [
                ArtifactRecord(job=r[0], attempt=r[1], name=r[2], sha256=r[3], size=r[4], at=r[5])
                for r in rows
            ]

        return await self._run(f"artifacts of job {job}", read)

    # -- boot tokens ----------------------------------------------------------------------------

    async def put_boot_token(self, digest: str, node: str, expires_at: float) -> None:
        if not (math.isfinite(expires_at) and 0 <= expires_at <= _MAX_TS):
            raise ValueError(f"boot token of {node}: expires_at {expires_at} out of range")

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO boot_tokens (digest, node, expires_at) VALUES (?, ?, ?)",
                    (digest, node, expires_at),
                )

        await self._run(f"put boot token of {node}", write)

    async def take_boot_token(self, digest: str, now: float) -> str | None:
        def take(conn: sqlite3.Connection) -> str | None:
            # One statement: the token is found and gone at once, so two takers never both win.
            with _transaction(conn):
                rows = conn.execute(
                    "DELETE FROM boot_tokens WHERE digest = ? AND expires_at > ? RETURNING node",
                    (digest, now),
                ).fetchall()
            return str(rows[0][0]) if rows else None

        return await self._run("take boot token", take)

    async def prune_boot_tokens(self, now: float) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                return conn.execute("DELETE FROM boot_tokens WHERE expires_at <= ?", (now,)).rowcount

        return await self._run("prune boot tokens", prune)

    # -- the image registry ---------------------------------------------------------------------

    async def add_image(self, image: ImageRecord) -> bool:
        i = image
        if not (math.isfinite(i.created_at) and 0 <= i.created_at <= _MAX_TS):
            raise ValueError(f"image {i.name} {i.version}: created_at {i.created_at} out of range")
        files = [
            (i.name, i.arch, i.version, pos, f.name, f.role, f.digest, f.size)
            for pos, f in enumerate(i.files)
        ]

        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cur = conn.execute(
                    "INSERT OR IGNORE INTO image_versions (name, arch, version, cmdline, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (i.name, i.arch, i.version, i.cmdline, i.created_at),
                )
                if cur.rowcount == 0:
                    return False
                conn.executemany(
                    "INSERT INTO image_files (image, arch, version, position, file, role, digest, size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    files,
                )
            return True

        return await self._run(f"add image {i.name} {i.version} ({i.arch})", write)

    async def list_images(self, name: str | None = None) -> list[ImageRecord]:
        where, args = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        fwhere = "WHERE image = ?" if name is not None else ""

        def read(conn: sqlite3.Connection) -> list[ImageRecord]:
            files: dict[tuple[str, str, str], list[ImageFileRecord]] = {}
            for image, arch, version, file, role, digest, size in conn.execute(
                "SELECT image, arch, version, file, role, digest, size FROM image_files"
                f" {fwhere} ORDER BY image, arch, version, position",
                args,
            ):
                files.setdefault((image, arch, version), []).append(
                    ImageFileRecord(name=file, role=role, digest=digest, size=size)
                )
            return [
                ImageRecord(
                    name=n,
                    arch=a,
                    version=v,
                    cmdline=c,
                    created_at=at,
                    files=tuple(files.get((n, a, v), ())),
                )
                for n, a, v, c, at in conn.execute(
                    "SELECT name, arch, version, cmdline, created_at FROM image_versions"
                    f" {where} ORDER BY name, arch, created_at, version",
                    args,
                )
            ]

        return await self._run("list images", read)

    async def delete_images(self, keys: Sequence[tuple[str, str, str]]) -> int:
        rows = [tuple(k) for k in keys]

        def write(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                # image_files go with their version (ON DELETE CASCADE)
                return sum(
                    conn.execute(
                        "DELETE FROM image_versions WHERE name = ? AND arch = ? AND version = ?", row
                    ).rowcount
                    for row in rows
                )

        return await self._run(f"delete {len(rows)} image versions", write)

    async def list_promotions(self) -> list[PromotionRecord]:
        def read(conn: sqlite3.Connection) -> list[PromotionRecord]:
            return [
                PromotionRecord(group=g, arch=a, seq=seq, image=i, version=v, at=at, rolled_back_at=rb)
                for g, a, seq, i, v, at, rb in conn.execute(
                    "SELECT grp, arch, seq, image, version, at, rolled_back_at FROM image_promotions"
                    " ORDER BY grp, arch, seq"
                )
            ]

        return await self._run("list promotions", read)

    async def put_promotions(self, promotions: Sequence[PromotionRecord]) -> None:
        rows = [(p.group, p.arch, p.seq, p.image, p.version, p.at, p.rolled_back_at) for p in promotions]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO image_promotions"
                    " (grp, arch, seq, image, version, at, rolled_back_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

        await self._run(f"put {len(rows)} promotions", write)

    async def list_overrides(self) -> list[OverrideRecord]:
        def read(conn: sqlite3.Connection) -> list[OverrideRecord]:
            return [
                OverrideRecord(node=n, image=i, version=v, at=at)
                for n, i, v, at in conn.execute(
                    "SELECT node, image, version, at FROM image_overrides ORDER BY node"
                )
            ]

        return await self._run("list overrides", read)

    async def put_override(self, override: OverrideRecord) -> None:
        o = override

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO image_overrides (node, image, version, at) VALUES (?, ?, ?, ?)",
                    (o.node, o.image, o.version, o.at),
                )

        await self._run(f"put override of {o.node}", write)

    async def delete_override(self, node: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                return conn.execute("DELETE FROM image_overrides WHERE node = ?", (node,)).rowcount > 0

        return await self._run(f"delete override of {node}", write)

    # -- the worker thread --------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the worker thread."""

        def with_connection() -> T:
            if self._conn is None:
                raise StoreError(self.where, f"{what}: the database is not open")
            return fn(self._conn)

        return await self._submit(what, with_connection)

    async def _submit(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the worker thread; any SQLite or OS failure becomes a StoreError."""
        if self._executor is None:
            raise StoreError(self.where, f"{what}: the store is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, what, fn)

    def _guarded(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (sqlite3.Error, OSError, OverflowError, msgspec.DecodeError) as exc:
            raise StoreError(self.where, f"{what}: {exc}") from exc

    def _open(self) -> None:
        created = _make_dirs(self.path.parent)
        self._lock_fd = _lock(self.where, self.path.with_name(self.path.name + ".lock"))
        try:
            existed = self.path.exists()
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(self.where, f"cannot use WAL mode (journal_mode is {mode})")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA busy_timeout = 5000")
                _migrate(self.where, conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise
        if not existed:
            # The new file's directory entry (and any directory made for it) must reach the disk too.
            for directory in [self.path.parent, *created]:
                fsync_dir(directory)
        self._conn = conn
        log.info("store open", extra={"store": self.where, "schema": SCHEMA_VERSION})

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- rows ---------------------------------------------------------------------------------

    def _json(self, what: str, data: Any) -> str:
        try:
            return _json_encode(dict(data)).decode()
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise StoreError(self.where, f"{what}: data is not JSON: {exc}") from exc

    def _node_row(self, n: NodeRecord) -> tuple[Any, ...]:
        return (
            n.name,
            n.state,
            n.health,
            n.health_reason,
            n.conn_seq,
            n.state_since,
            n.last_telemetry,
            n.recovery_attempts,
            self._json(f"node {n.name}", n.data),
        )

    def _event_row(self, e: Event) -> tuple[Any, ...]:
        return (e.at, e.node, e.axis, e.old, e.new, e.reason, self._json(f"event of {e.node}", e.data))

    async def _flush_every(self, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
                return  # stop() flushes the rest
            try:
                await self.flush_telemetry()
            except StoreError as exc:
                log.error(
                    "telemetry flush failed, will retry", extra={"store": self.where, "error": str(exc)}
                )


def _node(row: Sequence[Any]) -> NodeRecord:
    *fields, data = row
    return NodeRecord(
        name=fields[0],
        state=fields[1],
        health=fields[2],
        health_reason=fields[3],
        conn_seq=fields[4],
        state_since=fields[5],
        last_telemetry=fields[6],
        recovery_attempts=fields[7],
        data=_json_decode(data),
    )


def _job(row: Sequence[Any]) -> JobRecord:
    id_, state, name, project, submitted_at, updated_at, data = row
    return JobRecord(
        id=id_,
        state=state,
        name=name,
        project=project,
        submitted_at=submitted_at,
        updated_at=updated_at,
        data=_json_decode(data),
    )


def _event(row: Sequence[Any]) -> EventRecord:
    id_, node, axis, old, new, reason, at, data = row
    return EventRecord(
        id=id_, node=node, axis=axis, old=old, new=new, reason=reason, at=at, data=_json_decode(data)
    )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (the connection is in autocommit mode); ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(where: str, conn: sqlite3.Connection) -> None:
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                where,
                f"schema version {version} is newer than this Scalerunner's ({SCHEMA_VERSION}); "
                "upgrade Scalerunner",
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    if version != SCHEMA_VERSION:
        log.info("store schema migrated", extra={"store": where, "from": version, "to": SCHEMA_VERSION})


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; returns the parents of what was made
    (whose entries must be synced), deepest first."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return [m.parent for m in missing]


def _lock(where: str, lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(where, f"in use by another process (lock {lock_path} is held)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd
