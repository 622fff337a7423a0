"""The coordinator's store: the truth about nodes, their events and their telemetry.

``open_store(url)`` picks the back end from the URL's scheme, from an explicit table; each back
end is one module implementing the ``Store`` Protocol of ``base``.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from ..errors import StoreError
from ..inventory import sqlite_path
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
    Store,
    TelemetryMinute,
)
from .sqlite import SCHEMA_VERSION, SqliteStore

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactRecord",
    "Event",
    "EventRecord",
    "ImageFileRecord",
    "ImageRecord",
    "JobRecord",
    "LogChunkRecord",
    "NodeRecord",
    "OverrideRecord",
    "PowerSample",
    "PromotionRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "TelemetryMinute",
    "open_store",
]


def _sqlite(url: str, flush_interval: float | None) -> Store:
    path = sqlite_path(url)
    assert path is not None
    if path in ("", ":memory:"):
        raise StoreError(url, "needs a database file: sqlite:///path/to/file.db")
    return SqliteStore(path, flush_interval=flush_interval)


def _postgresql(url: str, flush_interval: float | None) -> Store:
    raise StoreError(redact(url), "PostgreSQL is not supported yet; use sqlite:///path/to/file.db")


_BACK_ENDS: dict[str, Callable[[str, float | None], Store]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


def open_store(url: str, *, flush_interval: float | None = 5.0) -> Store:
    """The store for ``url`` (not started yet: ``await store.start()``).

    ``sqlite:///relative.db`` (against the current directory; the inventory has already made it
    absolute), ``sqlite:////absolute.db``; ``postgresql://`` is a StoreError, "not supported yet".
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    back_end = _BACK_ENDS.get(scheme)
    if back_end is None or (scheme == "sqlite" and sqlite_path(url) is None):
        raise StoreError(redact(url), "unknown store URL; expected sqlite:///path or postgresql://...")
    return back_end(url, flush_interval)


def redact(url: str) -> str:
    """``url`` without a password, fit for errors and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url.split("://", 1)[0] + "://..."
