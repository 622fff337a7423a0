"""The agent's job executor: runs the attempts the coordinator sends, in the configured runtime.

Functional core: ``admit`` (may this node take this attempt now?) and ``finished_status`` (how a
runtime's result reads on the wire). The shell, ``JobExecutor``, obeys the ``run``, ``cancel`` and
``resend_log`` commands (the agent hands them over from its cmd topic), and per attempt runs three
tasks: the runtime, a sender that publishes ``started``, then every log chunk in order and, once
the output is over and the artifacts are uploaded, ``finished``; and a heartbeat that renews the
lease every ``lease_s / 3``.

Nothing is lost to a broker outage: output is spooled to the attempt's directory (LogSpool), the
sender retries a chunk until the broker acknowledged it (QoS 1) and then goes on with the next, and
the spool is kept ``keep_s`` after the end so a ``resend_log`` is answered even then. The job goes
on meanwhile; only heartbeats are skipped (a lease longer than the outage keeps the attempt).

A run with ``hil`` is checked on the HIL bench after its command exited 0 (``hil.py``; the bench's
exit code is the job's, its JUnit report an artifact, a bench fault a fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from ...protocol.mqtt import (
    CancelJob,
    Capacity,
    Command,
    HilRun,
    JobStatus,
    JobSummary,
    Kind,
    PayloadError,
    Reply,
    ResendLog,
    RunJob,
    command_args,
    encode,
    job_topic,
)
from ..runtime.base import JobEnd, JobResult, JobRun, OutputSink, Runtime, RuntimeFault, Stream
from . import artifacts, hil
from .spool import LogSpool

if TYPE_CHECKING:
    import httpx

__all__ = ["ImageSource", "JobExecutor", "Link", "LinkDown", "PulledImage", "admit", "finished_status"]

log = logging.getLogger("scalerunner.nodeagent.jobs")

WINDOW = 8  # log chunks in flight per attempt (paho holds 32 per connection for all of them)
RETRY_S = 0.2  # between attempts to publish while the link is up but a publish failed
PUBLISH_TIMEOUT_S = 5.0
KEEP_S = 3600.0  # how long a finished attempt's log spool answers resend_log
MAX_KEPT = 32  # finished attempts kept at most, oldest dropped first
UPLOAD_TIMEOUT_S = 300.0
TIMEOUT_EXIT = 124  # like the runtimes' (timeout(1)'s)
ATTEMPT_DIR = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?-[0-9]+\Z")  # {job}-{attempt}


class LinkDown(Exception):
    """The broker connection is down (or a publish on it failed): try again once it is back."""


class Link(Protocol):
    """The agent's MQTT connection as the executor sees it."""

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1); LinkDown if it cannot."""
        ...

    async def wait_online(self) -> None: ...

    @property
    def online(self) -> bool: ...


class PulledImage(Protocol):
    @property
    def rootfs(self) -> Path: ...

    @property
    def env(self) -> tuple[str, ...]:
        """The image's own environment, "KEY=value"; the job's env overrides it."""
        ...


class ImageSource(Protocol):
    """Where images come from (nodeagent/images.py's ImageStore: skopeo and umoci, cached)."""

    async def pull(self, reference: str) -> PulledImage:
        """The image, unpacked; an exception naming the image if it cannot be had."""
        ...


# -- functional core ------------------------------------------------------------------------------


def admit(
    node: str,
    run: RunJob,
    running: Sequence[RunJob],
    capacity: Capacity | None,
    *,
    draining: bool,
) -> str | None:
    """Why ``node`` refuses ``run`` now (one line naming node and job), or None to take it."""
    who = f"node {node}"
    job = f"job {run.job} attempt {run.attempt}"
    if draining:
        return f"{who} is draining, cannot accept {job}"
    if capacity is None:
        return f"{who} does not know its capacity (memory size unreadable), cannot accept {job}"
    if capacity.slots == 0:
        return f"{who} has no job slots (capacity.slots = 0), cannot accept {job}"
    if len(running) >= capacity.slots:
        return f"{who} has all {capacity.slots} job slots busy, cannot accept {job}"
    cpus = sum(r.cpus for r in running) + run.cpus
    if cpus > capacity.cpus + 1e-9:
        return f"{who} has {capacity.cpus} cpus, {cpus:g} would be in use with {job}"
    memory = sum(r.memory_mb for r in running) + run.memory_mb
    if memory > capacity.memory_mb:
        return f"{who} has {capacity.memory_mb} MB, {memory} MB would be in use with {job}"
    return None


def finished_status(
    node: str,
    run: RunJob,
    result: JobResult | None,
    *,
    ts: float,
    log_chunks: int,
    cancelled: str | None = None,
    fault: str | None = None,
    uploaded: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> JobStatus:
    """The ``finished`` status: a cancel or a fault wins over whatever the runtime returned."""
    status = JobStatus(
        node=node,
        job=run.job,
        attempt=run.attempt,
        phase="finished",
        ts=ts,
        log_chunks=log_chunks,
        end="fault",
    )
    if fault is not None:  # a bench fault still brings its JUnit report
        return msgspec.structs.replace(status, detail=fault, artifacts=list(uploaded))
    if cancelled is not None or result is None:
        return msgspec.structs.replace(
            status, end="cancelled", detail=f"cancelled: {cancelled}" if cancelled else "cancelled"
        )
    return msgspec.structs.replace(
        status,
        end=result.end.value,
        exit_code=min(max(result.exit_code, 0), 255),
        detail="; ".join(d for d in (result.detail, *notes) if d),
        artifacts=list(uploaded),
    )


# -- the shell ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Attempt:
    run: RunJob
    dir: Path
    spool: LogSpool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0  # chunks 0..sent-1 are acknowledged by the broker
    running: bool = True  # the runtime has not returned yet
    cancel_reason: str | None = None
    runtime_task: asyncio.Task[JobResult] | None = None
    done_at: float | None = None  # when ``finished`` was acknowledged
    final: bytes | None = None  # the encoded ``finished`` status, said again to a restarted coordinator

    @property
    def key(self) -> tuple[str, int]:
        return (self.run.job, self.run.attempt)


class JobExecutor:
    """``await start()``; ``handle(command)`` for every job command; ``await stop()`` kills all."""

    def __init__(
        self,
        *,
        cluster: str,
        node: str,
        runtime: Runtime,
        work_dir: Path,
        capacity: Capacity | None,
        link: Link,
        draining: Callable[[], bool],
        images: ImageSource | None = None,
        clock: Callable[[], float] = time.time,
        keep_s: float = KEEP_S,
        bench_backend: str = "gpiod",
        bench_boards: Path | None = None,
    ) -> None:
        self.cluster, self.node = cluster, node
        self.runtime = runtime
        self.work_dir = work_dir
        self.capacity = capacity
        self._link = link
        self._draining = draining
        self._images = images
        self._clock = clock
        self._keep_s = keep_s
        self._bench_backend = bench_backend  # the pin back end of HIL jobs' bench checks
        self._bench_boards = bench_boards  # None: the boards shipped in hardware/boards
        self._attempts: dict[tuple[str, int], Attempt] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._http: httpx.AsyncClient | None = None

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"node": self.node, **fields}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # Attempts of an earlier agent run are gone with it (the coordinator's lease fails them).
        # Only directories named like an attempt go: a jobs.dir set to a shared directory by
        # mistake loses nothing else.
        if self.work_dir.exists():
            for stale in self.work_dir.iterdir():
                if stale.is_dir() and not stale.is_symlink() and ATTEMPT_DIR.match(stale.name):
                    log.info("removing a stale attempt", extra=self._extra(path=str(stale)))
                    shutil.rmtree(stale, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._runner = asyncio.create_task(self._run(), name=f"jobs-{self.node}")
        await self._started.wait()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._started.set()
            tg.create_task(self._prune_loop(), name="jobs-prune")

    async def stop(self) -> None:
        """Kill every running attempt (the runtime removes its processes and scratch)."""
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._tg = None
        for att in list(self._attempts.values()):
            att.spool.release()
        self._attempts.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- what the agent and its telemetry ask ------------------------------------------------

    def running(self) -> list[JobSummary]:
        """The attempts not finished yet (their ``finished`` status not acknowledged)."""
        return [JobSummary(job=a.run.job, attempt=a.run.attempt) for a in self._active()]

    def _active(self) -> list[Attempt]:
        return [a for a in self._attempts.values() if a.done_at is None]

    def handle(self, command: Command) -> Reply:
        """Carry out a run, cancel or resend_log command; the reply says what happened."""
        try:
            if command.cmd == "run":
                return self._on_run(command_args(command, RunJob))
            if command.cmd == "cancel":
                return self._on_cancel(command_args(command, CancelJob))
            if command.cmd == "resend_log":
                return self._on_resend(command_args(command, ResendLog))
        except PayloadError as exc:
            return Reply(ok=False, error=str(exc))
        return Reply(ok=False, error=f"{command.cmd} is not a job command")

    def coordinator_online(self) -> int:
        """A coordinator announced itself (a restart, or the retained state after a reconnect): say
        again how the kept attempts ended. The broker acknowledged those ``finished`` statuses, but
        a coordinator that was down (or whose broker restarted with it) never got them, and would
        otherwise wait out the lease and run the job a second time. A coordinator ignores the end
        of an attempt it already closed. Returns how many are said again."""
        kept = [a for a in self._attempts.values() if a.done_at is not None and a.final is not None]
        if self._tg is None:
            return 0
        for att in kept:
            assert att.final is not None
            self._tg.create_task(
                self._deliver(self._topic(att, Kind.JOB_STATUS), att.final), name=f"job-{att.run.job}-final"
            )
        if kept:
            log.info("finished statuses said again to the coordinator", extra=self._extra(attempts=len(kept)))
        return len(kept)

    # -- commands ----------------------------------------------------------------------------

    def _on_run(self, run: RunJob) -> Reply:
        known = self._attempts.get((run.job, run.attempt))
        if known is not None:  # a repeated command (QoS 1 may deliver twice): same answer
            return Reply(ok=True, result={"accepted": True, "duplicate": True})
        busy = [a.run for a in self._attempts.values() if a.running]
        why = admit(self.node, run, busy, self.capacity, draining=self._draining())
        if why is None and self._tg is None:
            why = f"node {self.node}: the job executor is not running"
        if why is not None:
            log.warning("run refused: %s", why, extra=self._extra(job=run.job, attempt=run.attempt))
            return Reply(ok=False, error=why)
        adir = self.work_dir / f"{run.job}-{run.attempt}"
        try:
            shutil.rmtree(adir, ignore_errors=True)
            (adir / "work").mkdir(parents=True)
            spool = LogSpool(
                adir / "log.spool", node=self.node, job=run.job, attempt=run.attempt, clock=self._clock
            )
        except OSError as exc:  # a full or read-only disk: refuse, the coordinator places it elsewhere
            why = f"node {self.node} cannot make {adir}: {exc.strerror or exc}"
            log.error("run refused: %s", why, extra=self._extra(job=run.job, attempt=run.attempt))
            return Reply(ok=False, error=why)
        att = Attempt(run=run, dir=adir, spool=spool)
        self._attempts[att.key] = att
        assert self._tg is not None
        self._tg.create_task(self._attempt(att), name=f"job-{run.job}-{run.attempt}")
        log.info(
            "run accepted",
            extra=self._extra(job=run.job, attempt=run.attempt, runtime=self.runtime.name),
        )
        return Reply(ok=True, result={"accepted": True, "runtime": self.runtime.name})

    def _on_cancel(self, cancel: CancelJob) -> Reply:
        att = self._attempts.get((cancel.job, cancel.attempt))
        if att is None or not att.running:
            return Reply(ok=True, result={"running": False})
        att.cancel_reason = cancel.reason or "cancelled by the coordinator"
        if att.runtime_task is not None:
            att.runtime_task.cancel()
        log.info("cancel", extra=self._extra(job=cancel.job, attempt=cancel.attempt, reason=cancel.reason))
        return Reply(ok=True, result={"running": True, "cancelling": True})

    def _on_resend(self, req: ResendLog) -> Reply:
        att = self._attempts.get((req.job, req.attempt))
        if att is None:
            return Reply(ok=True, result={"missing": sorted(set(req.seqs))})
        have: list[bytes] = []
        missing: list[int] = []
        for seq in sorted(set(req.seqs)):
            data = att.spool.chunk(seq)
            if data is not None:
                have.append(data)
            elif not att.running or att.spool.closed:
                missing.append(seq)  # a running attempt's future chunks come anyway
        if have and self._tg is not None:
            topic = self._topic(att, Kind.JOB_LOG)
            self._tg.create_task(self._resend(topic, have), name=f"job-{req.job}-resend")
        return Reply(ok=True, result={"missing": missing, "resending": len(have)})

    async def _resend(self, topic: str, chunks: list[bytes]) -> None:
        for data in chunks:
            await self._deliver(topic, data)

    # -- one attempt ---------------------------------------------------------------------------

    def _topic(self, att: Attempt, kind: Kind) -> str:
        return job_topic(self.cluster, self.node, att.run.job, kind)

    def _status(self, att: Attempt, phase: str) -> bytes:
        return encode(
            JobStatus(
                node=self.node,
                job=att.run.job,
                attempt=att.run.attempt,
                phase=phase,  # type: ignore[arg-type]
                ts=round(self._clock(), 3),
                log_chunks=att.sent,
            )
        )

    async def _attempt(self, att: Attempt) -> None:
        run = att.run
        ids = {"job": run.job, "attempt": run.attempt}
        sender = asyncio.create_task(self._send_log(att), name=f"job-{run.job}-log")
        beat = asyncio.create_task(self._heartbeat(att), name=f"job-{run.job}-heartbeat")
        result: JobResult | None = None
        fault: str | None = None
        uploaded: list[str] = []
        notes: list[str] = []
        try:
            att.runtime_task = asyncio.create_task(self._execute(att), name=f"job-{run.job}-run")
            if att.cancel_reason is not None:  # cancelled before this task got to run
                att.runtime_task.cancel()
            try:
                result = await att.runtime_task
            except hil.BenchRunFault as exc:  # retried elsewhere, but the JUnit report comes back
                fault = str(exc)
                log.error("bench fault: %s", exc, extra=self._extra(**ids))
                with contextlib.suppress(Exception):
                    uploaded, notes = await self._collect(att)
            except RuntimeFault as exc:
                fault = str(exc)
                log.error("runtime fault: %s", exc, extra=self._extra(**ids))
            except Exception as exc:  # a bug in a runtime fails this attempt, not the agent
                fault = f"runtime {self.runtime.name} failed: {exc!r}"
                log.exception("runtime failed", extra=self._extra(**ids))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the executor stops: everything goes
                # only the runtime was cancelled (the cancel command): report it
            att.running = False
            att.spool.close()
            att.wake.set()
            if result is not None and att.cancel_reason is None:
                try:
                    uploaded, notes = await self._collect(att)
                except Exception as exc:  # unreadable files and the like: said, not fatal
                    notes = [f"artifacts not collected: {exc}"]
                    log.exception("artifacts failed", extra=self._extra(**ids))
            await sender  # every chunk acknowledged: log_chunks in finished is final
            beat.cancel()
            status = finished_status(
                self.node,
                run,
                result,
                ts=round(self._clock(), 3),
                log_chunks=att.sent,
                cancelled=att.cancel_reason,
                fault=fault,
                uploaded=uploaded,
                notes=notes,
            )
            att.final = encode(status)
            await self._deliver(self._topic(att, Kind.JOB_STATUS), att.final)
            att.done_at = self._clock()
            log.info(
                "finished",
                extra=self._extra(**ids, end=status.end, exit_code=status.exit_code, chunks=att.sent),
            )
        finally:
            sender.cancel()
            beat.cancel()
            shutil.rmtree(att.dir / "work", ignore_errors=True)

    async def _execute(self, att: Attempt) -> JobResult:
        """Pull the image (if any) and run the job: the task a cancel command cancels."""
        run = att.run
        rootfs: Path | None = None
        env: dict[str, str] = {}
        if run.image:
            if self._images is None:
                raise RuntimeFault(
                    run.job, f"node {self.node} has no image store, cannot run image {run.image}"
                )
            try:
                image = await self._images.pull(run.image)
            except Exception as exc:  # the store's own error names the image and the cause
                raise RuntimeFault(run.job, str(exc)) from exc
            rootfs = image.rootfs
            env = dict(e.split("=", 1) for e in image.env if "=" in e)
        job = JobRun(
            job=run.job,
            attempt=run.attempt,
            argv=run.command(),
            env={**env, **run.env},
            cpus=run.cpus,
            memory_mb=run.memory_mb,
            timeout_s=run.timeout_s,
            rootfs=rootfs,
            workdir=att.dir / "work",
            network=run.network,
        )

        def sink(stream: Stream, data: bytes) -> None:
            att.spool.feed(stream, data)
            att.wake.set()

        started = time.monotonic()
        result = await self.runtime.run(job, sink)
        if run.hil is None or result.end is not JobEnd.EXITED or result.exit_code != 0:
            return result  # the command failed: no bitstream to check
        return await self._bench(att, run.hil, sink, run.timeout_s - (time.monotonic() - started))

    async def _bench(self, att: Attempt, spec: HilRun, sink: OutputSink, left_s: float) -> JobResult:
        """The bench check after a HIL job's command: its exit code is the job's (hil.py)."""
        run = att.run
        try:
            async with asyncio.timeout(max(left_s, 0.0)):
                return await hil.run_bench(
                    run.job,
                    spec,
                    att.dir / "work",
                    sink,
                    backend=self._bench_backend,
                    boards_dir=self._bench_boards,
                )
        except hil.HilError as exc:  # the job's own fault (a bitstream it did not make): no retry
            sink("stderr", f"error: {exc}\n".encode())
            return JobResult(JobEnd.EXITED, 1, str(exc))
        except TimeoutError:
            why = f"timeout of {run.timeout_s:g} s reached in the bench check"
            return JobResult(JobEnd.TIMEOUT, TIMEOUT_EXIT, why)

    async def _collect(self, att: Attempt) -> tuple[list[str], list[str]]:
        run = att.run
        # a HIL job's report, when the bench ran (not after a failed command: no "matched nothing")
        report = [hil.JUNIT_FILE] if run.hil and (att.dir / "work" / hil.JUNIT_FILE).is_file() else []
        if not run.artifacts and not report:
            return [], []
        sel = artifacts.select(att.dir / "work", [*run.artifacts, *report])
        notes = list(sel.problems)
        uploaded: list[str] = []
        if sel.artifacts and not run.upload_url:
            return [], [*notes, "no upload_url given: artifacts not uploaded"]
        if self._http is None:
            import httpx  # not at module level: ~10 MB the agent carries only once a job has artifacts

            self._http = httpx.AsyncClient(timeout=UPLOAD_TIMEOUT_S)
        for art in sel.artifacts:
            try:
                await artifacts.upload(self._http, run.upload_url, run.upload_token, art)
                uploaded.append(art.name)
            except artifacts.UploadError as exc:
                notes.append(str(exc))
                log.warning("%s", exc, extra=self._extra(job=run.job, attempt=run.attempt))
        return uploaded, notes

    async def _send_log(self, att: Attempt) -> None:
        await self._deliver(self._topic(att, Kind.JOB_STATUS), self._status(att, "started"))
        topic = self._topic(att, Kind.JOB_LOG)
        while True:
            att.wake.clear()
            while att.sent < att.spool.count:
                await self._send_window(att, topic)
            if att.spool.closed and att.sent == att.spool.count:
                return
            await att.wake.wait()

    async def _send_window(self, att: Attempt, topic: str) -> None:
        """Publish up to WINDOW chunks from ``att.sent`` at once, then advance over those acknowledged
        in a row. MQTT keeps one connection's QoS 1 messages in order, so they arrive in order; after a
        failure the next window starts at the first chunk not acknowledged (a repeat is harmless: the
        coordinator keys chunks by number)."""
        await self._link.wait_online()
        first = att.sent
        seqs = range(first, min(att.spool.count, first + WINDOW))
        sends = []
        for seq in seqs:
            data = att.spool.chunk(seq)
            assert data is not None
            sends.append(asyncio.wait_for(self._link.publish(topic, data, qos=1), PUBLISH_TIMEOUT_S))
        results = await asyncio.gather(*sends, return_exceptions=True)
        for r in results:
            if isinstance(r, LinkDown | TimeoutError):
                await asyncio.sleep(RETRY_S)
                return
            if isinstance(r, BaseException):
                raise r
            att.sent += 1

    async def _heartbeat(self, att: Attempt) -> None:
        period = att.run.lease_s / 3
        topic = self._topic(att, Kind.JOB_STATUS)
        while True:
            await asyncio.sleep(period)
            if not self._link.online:
                continue  # skipped, not queued: a later one renews the lease
            with contextlib.suppress(LinkDown, TimeoutError):
                await asyncio.wait_for(
                    self._link.publish(topic, self._status(att, "heartbeat"), qos=1), period
                )

    async def _deliver(self, topic: str, payload: bytes) -> None:
        """Publish until the broker has acknowledged it, across reconnects."""
        while True:
            await self._link.wait_online()
            try:
                await asyncio.wait_for(self._link.publish(topic, payload, qos=1), PUBLISH_TIMEOUT_S)
                return
            except (LinkDown, TimeoutError):
                await asyncio.sleep(RETRY_S)

    # -- retention -----------------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, max(1.0, self._keep_s / 4)))  # keep_logs = 0 must not spin
            self.prune()

    def prune(self) -> None:
        """Forget finished attempts older than keep_s, and the oldest beyond MAX_KEPT."""
        now = self._clock()
        done = sorted(
            (a for a in self._attempts.values() if a.done_at is not None),
            key=lambda a: a.done_at or 0.0,
        )
        for i, att in enumerate(done):
            if now - (att.done_at or now) >= self._keep_s or len(done) - i > MAX_KEPT:
                att.spool.release()
                shutil.rmtree(att.dir, ignore_errors=True)
                del self._attempts[att.key]
