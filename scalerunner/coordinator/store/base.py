"""The store's interface: a small Protocol and the records that cross it.

A back end (SQLite now, PostgreSQL later) is one module implementing ``Store``. Records are plain
frozen data; the store never decides anything, it keeps what the deciding code (the lifecycle,
the scheduler) gives it. Every method fails with ``StoreError`` naming the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
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
    "Store",
    "TelemetryMinute",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """What the coordinator knows of a node, beyond the inventory. ``data`` holds the rest
    (anything JSON can say); a new field starts its life there before it earns a column."""

    name: str
    state: str  # lifecycle state: off, booting, online, idle, busy, draining, offline, failed
    health: str  # good, unknown, bad, maintenance, retired
    health_reason: str = ""
    conn_seq: int = 0  # the agent connection the state belongs to (NodeState.conn_seq)
    state_since: float = 0.0  # Unix time of the last lifecycle transition
    last_telemetry: float | None = None  # Unix time
    recovery_attempts: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a node record needs a name")
        if self.conn_seq < 0 or self.recovery_attempts < 0:
            raise ValueError("conn_seq and recovery_attempts are >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A change to record: on ``axis`` ("state", "health", "command", ...) ``old`` became ``new``
    at ``at`` (Unix time, from the caller's clock) because of ``reason``."""

    node: str
    axis: str
    old: str
    new: str
    reason: str = ""
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.node or not self.axis:
            raise ValueError("an event needs a node and an axis")
        if not math.isfinite(self.at):
            raise ValueError("an event's time is a finite number")


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """A recorded event; ``id`` grows with every event, so ``after_id`` pages through them."""

    id: int
    node: str
    axis: str
    old: str
    new: str
    reason: str
    at: float
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryMinute:
    """One node's telemetry over one minute, starting at ``minute`` (Unix time, a multiple of 60)."""

    node: str
    minute: int
    samples: int
    avg_load1: float
    avg_cpu_pct: float
    max_temp_c: float | None  # None: no sample carried a temperature
    max_mem_used_mb: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerSample:
    """The power a node drew at ``at`` (Unix time), read from its outlet."""

    node: str
    at: float
    watts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A job as the scheduler left it: the listing columns, and ``data`` (the whole job: its
    spec, attempts and history, as JSON) that the jobs part reads back."""

    id: str
    state: str
    name: str = ""
    project: str = ""
    submitted_at: float
    updated_at: float
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogChunkRecord:
    """One numbered piece of a job attempt's output (``seq`` from 0 per attempt)."""

    job: str
    attempt: int
    seq: int
    stream: str  # stdout, stderr, or "gap" for chunks the node no longer had
    data: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactRecord:
    """A file a job attempt uploaded; its bytes live content-addressed under ``sha256``."""

    job: str
    attempt: int
    name: str
    sha256: str
    size: int
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageFileRecord:
    """One file of a boot image: its name as nodes ask for it, its role (kernel, initrd, dtb,
    firmware) and its content; the bytes live content-addressed under ``digest`` (sha256 hex)."""

    name: str
    role: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    """One version of one boot image for one arch; ``files`` in the order they were given."""

    name: str
    arch: str
    version: str
    cmdline: str
    created_at: float
    files: tuple[ImageFileRecord, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionRecord:
    """Entry ``seq`` of the promotion history of (``group``, ``arch``): ``image`` ``version``
    promoted at ``at``; ``rolled_back_at`` set once a rollback undid it."""

    group: str
    arch: str
    seq: int
    image: str
    version: str
    at: float
    rolled_back_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideRecord:
    """``node`` boots ``image`` ``version`` whatever its group's promotion says."""

    node: str
    image: str
    version: str
    at: float


class Store(Protocol):
    """The coordinator's durable state. ``where`` names the database in errors and logs.

    A write is durable when its coroutine returns (it survives ``kill -9`` and power loss);
    a write whose caller was cancelled may or may not have happened.
    """

    where: str

    async def start(self) -> None:
        """Open (creating or migrating the schema); StoreError if that cannot be done."""

    async def stop(self) -> None:
        """Flush pending telemetry and close. The store may not be used afterwards."""

    async def get_node(self, name: str) -> NodeRecord | None: ...

    async def list_nodes(self) -> list[NodeRecord]:
        """Every node record, by name."""
        ...

    async def apply(self, node: NodeRecord | None, events: Sequence[Event] = ()) -> list[int]:
        """Write ``node`` (insert or replace it whole) and append ``events`` in ONE transaction:
        either all of it is recorded or none. Returns the events' ids, in order."""
        ...

    async def list_events(
        self, node: str | None = None, after_id: int | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Events oldest first. With ``after_id``: the first ``limit`` events after it (to page
        or follow). Without: the latest ``limit``. ``node`` narrows to one node."""
        ...

    def add_telemetry(
        self,
        node: str,
        ts: float,
        load1: float,
        cpu_pct: float,
        mem_used_mb: int,
        temp_c: float | None = None,
    ) -> None:
        """Count one sample into its node's minute, in memory (no I/O): cheap at 1000 nodes x 1 Hz."""

    async def flush_telemetry(self) -> int:
        """Write the samples counted so far in one transaction; returns how many minutes it wrote."""
        ...

    async def telemetry(self, node: str, since: float) -> list[TelemetryMinute]:
        """``node``'s minutes that end after ``since``, oldest first, including samples not yet
        flushed."""
        ...

    async def prune_telemetry(self, before: float) -> int:
        """Forget the minutes that ended by ``before``; returns how many."""
        ...

    async def add_power_samples(self, samples: Sequence[PowerSample]) -> None:
        """Record power samples in one transaction (a repeat of a node's time replaces it)."""
        ...

    async def power_samples(self, node: str, since: float, until: float) -> list[PowerSample]:
        """``node``'s samples within [since, until] plus the nearest one on each side (so
        energy can be interpolated at the window's edges), oldest first."""
        ...

    async def prune_power_samples(self, before: float) -> int:
        """Forget the samples taken before ``before``; returns how many."""
        ...

    async def put_jobs(self, jobs: Sequence[JobRecord]) -> None:
        """Insert or replace these jobs whole, in ONE transaction."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(self, states: Sequence[str] | None = None, limit: int = 100) -> list[JobRecord]:
        """The latest ``limit`` jobs submitted (in ``states`` if given), newest first."""
        ...

    async def add_log_chunks(self, chunks: Sequence[LogChunkRecord]) -> int:
        """Record chunks in one transaction; one already held (same job, attempt, seq) is kept as
        it was. Returns how many were new."""
        ...

    async def log_chunks(
        self, job: str, attempt: int | None = None, after: tuple[int, int] = (0, -1), limit: int = 1000
    ) -> list[LogChunkRecord]:
        """A job's chunks ordered by (attempt, seq), after the ``(attempt, seq)`` cursor;
        ``attempt`` narrows to one attempt."""
        ...

    async def log_seqs(self, job: str, attempt: int) -> list[int]:
        """The chunk numbers held for one attempt, ascending."""
        ...

    async def add_artifact(self, artifact: ArtifactRecord) -> None:
        """Record an uploaded artifact (a repeat of the same name replaces it)."""
        ...

    async def list_artifacts(self, job: str) -> list[ArtifactRecord]:
        """A job's artifacts by attempt and name."""
        ...

    async def put_boot_token(self, digest: str, node: str, expires_at: float) -> None:
        """Record a one-time boot token for ``node`` by its ``digest`` (sha256 hex of the token;
        the token itself is never stored), valid until ``expires_at`` (Unix time)."""
        ...

    async def take_boot_token(self, digest: str, now: float) -> str | None:
        """Consume the token atomically: its node if it exists and has not expired at ``now``,
        and it is gone from then on (a second take is None); None otherwise."""
        ...

    async def prune_boot_tokens(self, now: float) -> int:
        """Forget the tokens expired at ``now``; returns how many."""
        ...

    async def add_image(self, image: ImageRecord) -> bool:
        """Record an image version with its files in one transaction; False (and nothing
        written) if (name, arch, version) is already held."""
        ...

    async def list_images(self, name: str | None = None) -> list[ImageRecord]:
        """Every image version (of ``name`` if given) with its files, by name, arch, creation."""
        ...

    async def delete_images(self, keys: Sequence[tuple[str, str, str]]) -> int:
        """Forget these (name, arch, version) image versions and their files in ONE transaction;
        returns how many were held."""
        ...

    async def list_promotions(self) -> list[PromotionRecord]:
        """The whole promotion history, by group, arch and seq."""
        ...

    async def put_promotions(self, promotions: Sequence[PromotionRecord]) -> None:
        """Insert or replace these history entries (keyed by group, arch, seq) in ONE transaction."""
        ...

    async def list_overrides(self) -> list[OverrideRecord]:
        """Every per-node override, by node."""
        ...

    async def put_override(self, override: OverrideRecord) -> None:
        """Set (insert or replace) a node's override."""
        ...

    async def delete_override(self, node: str) -> bool:
        """Clear a node's override; False if it had none."""
        ...
