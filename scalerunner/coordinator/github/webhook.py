"""GitHub's webhook deliveries: the signature check, the ``workflow_job`` fields we use, and the
memory of delivery ids already handled (a replayed delivery is ignored).

The signature is HMAC-SHA256 of the raw body under the webhook's secret, sent as
``X-Hub-Signature-256: sha256=HEX``; it is compared in constant time. Only a delivery that
passed the check and parsed is remembered, so an operator can redeliver one that failed.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

__all__ = [
    "Deliveries",
    "WebhookError",
    "WorkflowJob",
    "WorkflowJobEvent",
    "open_db",
    "parse_workflow_job",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"
KEEP_DELIVERIES_S = 8 * 86400.0  # longer than GitHub keeps deliveries one can redeliver


class WebhookError(Exception):
    """A delivery that is refused: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """WebhookError(401) unless ``header`` is the signature of ``body`` under ``secret``."""
    if not header:
        raise WebhookError(401, f"missing {SIGNATURE_HEADER} header")
    if not hmac.compare_digest(sign(secret, body).encode(), header.strip().encode()):
        raise WebhookError(401, "signature does not match the webhook secret")


class Repository(msgspec.Struct, kw_only=True):
    full_name: str


class WorkflowJob(msgspec.Struct, kw_only=True):
    id: int
    run_id: int = 0
    name: str = ""
    status: str = ""
    conclusion: str | None = None
    labels: list[str] = []
    runner_id: int | None = None
    runner_name: str | None = None


class WorkflowJobEvent(msgspec.Struct, kw_only=True):
    action: Literal["queued", "waiting", "in_progress", "completed"]
    workflow_job: WorkflowJob
    repository: Repository


_decoder = msgspec.json.Decoder(WorkflowJobEvent)


def parse_workflow_job(body: bytes) -> WorkflowJobEvent:
    """The fields we use of a ``workflow_job`` delivery; WebhookError(400) names what is wrong."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise WebhookError(400, f"not a workflow_job payload: {exc}") from None


class Deliveries:
    """Delivery ids already handled, in a small SQLite table (``STATE_DIR/github.db``) so a
    replay after a coordinator restart is still recognised. Kept ``KEEP_DELIVERIES_S``."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock
        with lock, db:
            db.execute("CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, at REAL NOT NULL)")

    def remember(self, delivery: str, at: float | None = None) -> bool:
        """Record ``delivery``; False if it was handled before (a replay)."""
        now = time.time() if at is None else at
        with self._lock, self._db:
            cur = self._db.execute("INSERT OR IGNORE INTO deliveries (id, at) VALUES (?, ?)", (delivery, now))
            fresh = cur.rowcount == 1
            if fresh and hash(delivery) % 64 == 0:  # now and then, not on every delivery
                self._db.execute("DELETE FROM deliveries WHERE at < ?", (now - KEEP_DELIVERIES_S,))
        return fresh


def open_db(path: Path) -> sqlite3.Connection:
    """The GitHub part's own SQLite file (WAL, synchronous=FULL), made 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False)  # used under a lock, from worker threads
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name) or headers.get(name.title())
