"""MQTT payloads: JSON, schema-versioned, validated by msgspec (not by hand).

Every payload carries ``schema`` (the version of this file's layouts). A decoder
refuses a payload that is not JSON, has another schema, misses a field, has a
field of the wrong type or out of range, or is larger than ``MAX_PAYLOAD``: ``PayloadError`` says
which topic kind and what was wrong, and the receiver changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

SCHEMA = 1
MAX_PAYLOAD = 64 * 1024  # a log chunk is the largest payload; anything bigger is refused unread

Name = Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")]
Label = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9_.:=/-]{1,64}\Z")]
# Integers stop at 2**53: every JSON reader holds them exactly, and so does the store (SQLite's
# INTEGER is 64-bit). A bigger one is a bad payload, not a number to carry around.
MAX_INT = 2**53
NonNeg = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]


class PayloadError(ValueError):
    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"bad {what} payload: {detail}")
        self.what = what
        self.detail = detail


class _Base(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    schema: Literal[1] = 1  # == SCHEMA


class Capacity(msgspec.Struct, kw_only=True):
    cpus: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    slots: NonNeg = 1


class NodeState(_Base):
    """Retained on nodes/{node}/state. ``conn_seq`` orders states across reconnects
    (like Sparkplug's bdSeq): the agent's online state and its Will share the seq of
    one connection, and a receiver ignores a state older than the one it holds."""

    node: Name
    status: Literal["online", "offline"]
    conn_seq: NonNeg
    agent_version: str = ""
    arch: str = ""
    labels: list[Label] = []
    capacity: Capacity | None = None
    ts: float = 0.0
    # The node takes no new jobs (set by the drain command, cleared by undrain). Added after
    # schema 1 was first written: a default, so older decoders and payloads still agree.
    draining: bool = False


class JobSummary(msgspec.Struct, kw_only=True):
    job: Name
    attempt: NonNeg = 1


class Telemetry(_Base):
    node: Name
    ts: float
    load1: Annotated[float, msgspec.Meta(ge=0)]
    cpu_pct: Percent
    mem_used_mb: NonNeg
    mem_total_mb: NonNeg
    temp_c: float | None = None
    disk_free_mb: NonNeg | None = None
    jobs: list[JobSummary] = []


class Command(_Base):
    """coordinator -> node on nodes/{node}/cmd (MQTT 5 response topic + correlation data)."""

    cmd: Literal["drain", "undrain", "identify", "reboot", "run", "cancel", "resend_log"]
    args: dict[str, Any] = {}  # for run, cancel and resend_log: a RunJob, CancelJob or ResendLog


class Reply(_Base):
    ok: bool
    error: str = ""
    result: dict[str, Any] = {}


# -- jobs ---------------------------------------------------------------------------------------
# A job attempt's conversation: the coordinator sends ``run`` (args: RunJob) on the node's cmd
# topic; the node replies (accepted or not), then publishes JobStatus (started, heartbeats that
# renew the lease, finished) on nodes/{node}/jobs/{job}/status and its output as numbered
# LogChunks on nodes/{node}/jobs/{job}/log. The coordinator asks for missing chunks with
# ``resend_log`` (args: ResendLog) and stops an attempt with ``cancel`` (args: CancelJob).

Attempt = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
ExitCode = Annotated[int, msgspec.Meta(ge=0, le=255)]
LOG_CHUNK_CHARS = 8192  # text per chunk: even fully JSON-escaped it stays under MAX_PAYLOAD
MAX_RESEND = 1024  # chunk numbers per resend_log request
EnvName = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")]


class HilRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """A run's hardware-in-the-loop part, as the job spec keeps it: after the job's command the node
    runs ``scalerunner-bench check`` on ``board`` with ``bitstream`` (relative to the job's work
    directory) and ``checks`` (the checks file's ``[[checks]]`` tables; ``sim`` its ``[sim]`` table)."""

    board: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    bitstream: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    checks: list[dict[str, Any]] = []
    sim: dict[str, Any] | None = None


class RunJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """args of the ``run`` command: one attempt of one job. Exactly one of ``argv``/``script``.

    ``image`` is an OCI reference ("" runs on the host's filesystem: process runtime only).
    ``lease_s``: the node sends a heartbeat at least every ``lease_s / 3`` seconds; an attempt
    not heard from for ``lease_s`` is failed by the coordinator. Artifacts matching ``artifacts``
    (globs relative to the job's work directory) are PUT to ``{upload_url}/{name}`` with
    ``Authorization: Bearer {upload_token}`` before the finished status is sent.
    """

    job: Name
    attempt: Attempt
    argv: list[str] | None = None
    script: str | None = None
    image: str = ""
    env: dict[EnvName, str] = {}
    cpus: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 1.0
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 256
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    artifacts: list[str] = []
    lease_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    upload_url: str = ""
    upload_token: str = ""
    hil: HilRun | None = None  # a bench check after the command (docs/bench.md)
    network: bool = False  # the job's VM gets a NIC (vm runtime, docs/runtime-vm.md)

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError naming the payload
        if (self.argv is None) == (self.script is None):
            raise ValueError("exactly one of argv and script must be given")
        if self.argv is not None and not self.argv:
            raise ValueError("argv must not be empty")

    def command(self) -> tuple[str, ...]:
        """What to execute: the argv, or the script under /bin/sh -c."""
        if self.argv is not None:
            return tuple(self.argv)
        return ("/bin/sh", "-c", self.script or "")


class CancelJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """args of the ``cancel`` command: stop this attempt (kill everything it started)."""

    job: Name
    attempt: Attempt
    reason: str = ""


class ResendLog(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """args of the ``resend_log`` command: publish these chunks of the attempt again. The
    reply's result is ``{"missing": [seq, ...]}``, the chunks the node no longer holds."""

    job: Name
    attempt: Attempt
    seqs: Annotated[list[NonNeg], msgspec.Meta(min_length=1, max_length=MAX_RESEND)]


class JobStatus(_Base):
    """node -> coordinator on nodes/{node}/jobs/{job}/status (QoS 1).

    ``phase``: ``started`` (the command is running), ``heartbeat`` (still running: renews the
    lease), ``finished`` (with ``end``, ``exit_code`` and ``detail``). ``log_chunks`` is how many
    chunks the attempt has published so far (numbered 0..log_chunks-1), so the coordinator can
    see a gap at the tail too. ``end`` is ``exited``/``timeout``/``killed`` as the runtime saw
    it, ``cancelled`` when a cancel command stopped it, ``fault`` when the node could not run
    it at all (no image, runtime broken: not the job's fault). ``artifacts``: names uploaded.
    """

    node: Name
    job: Name
    attempt: Attempt
    phase: Literal["started", "heartbeat", "finished"]
    ts: float = 0.0
    log_chunks: NonNeg = 0
    end: Literal["exited", "timeout", "killed", "cancelled", "fault"] | None = None
    exit_code: ExitCode | None = None
    detail: str = ""
    artifacts: list[str] = []

    def __post_init__(self) -> None:
        if (self.phase == "finished") != (self.end is not None):
            raise ValueError("end is given exactly when phase is finished")
        if self.end == "exited" and self.exit_code is None:
            raise ValueError("an exited job needs its exit_code")


class LogChunk(_Base):
    """node -> coordinator on nodes/{node}/jobs/{job}/log (QoS 1): output numbered per attempt
    from 0, in the order produced across both streams. Text is UTF-8 (invalid bytes replaced,
    a character split across reads is kept whole for the next chunk)."""

    node: Name
    job: Name
    attempt: Attempt
    seq: NonNeg
    stream: Literal["stdout", "stderr"]
    data: Annotated[str, msgspec.Meta(max_length=LOG_CHUNK_CHARS)]
    ts: float = 0.0


A = TypeVar("A", RunJob, CancelJob, ResendLog)


def command_args(command: Command, kind: type[A]) -> A:
    """The typed args of a run, cancel or resend_log command; PayloadError names what is wrong."""
    try:
        return msgspec.convert(command.args, type=kind)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{command.cmd} args ({kind.__name__})", str(exc)) from exc


def job_command(cmd: Literal["run", "cancel", "resend_log"], args: RunJob | CancelJob | ResendLog) -> Command:
    """The Command that carries ``args``."""
    return Command(cmd=cmd, args=msgspec.to_builtins(args))


class CoordinatorState(_Base):
    status: Literal["online", "offline"]
    version: str = ""
    ts: float = 0.0


_encoder = msgspec.json.Encoder()
T = TypeVar("T", bound=_Base)


def encode(payload: _Base) -> bytes:
    return _encoder.encode(payload)


def decode(data: bytes, kind: type[T]) -> T:
    """Validate ``data`` as a ``kind`` payload; PayloadError names what is wrong."""
    what = kind.__name__
    if len(data) > MAX_PAYLOAD:
        raise PayloadError(what, f"{len(data)} bytes, at most {MAX_PAYLOAD}")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise PayloadError(what, str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise PayloadError(what, f"not JSON: {exc}") from exc
