"""The GitHub Actions part of the coordinator: webhook in, runner jobs out (docs/github.md).

``GitHubService`` (start/stop) holds the pure ``Runners`` core under one lock. The webhook is
verified, its delivery id remembered, the event applied to the core and the answer sent at
once (202): the slow work - the JIT request, the job submit, a cancel - runs in tasks of its
own, so GitHub's 10-second delivery timeout is never at risk. A watcher follows the runner
jobs (running, over) and the clock (retries, idle runners); a reconciler lists the queued
jobs of every pool's scope, for the webhooks that never came.

The JIT config is a secret: it never enters the job spec, the store, a log or the API. The
job carries a single-use claim URL and token instead (env), and its script fetches the config
from ``GET /api/v1/github/jitconfig`` just before it starts the runner with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import ConfigError
from ..inventory import GitHubConfig, GitHubPool
from ..jobs.core import TERMINAL as JOB_TERMINAL
from ..jobs.core import JobState, JobStateError, UnknownJob
from ..jobs.manager import JobManager
from ..jobs.spec import JobSpec
from .api import AppCredentials, GitHubApi, GitHubApiError
from .runners import Action, CancelRunner, CheckIdle, RequestRunner, Runner, Runners, RunnerState
from .webhook import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Deliveries,
    WebhookError,
    open_db,
    parse_workflow_job,
    verify_signature,
)

__all__ = ["GitHubService", "match_pool", "runner_script"]

log = logging.getLogger("scalerunner.coordinator.github")

WATCH_INTERVAL = 0.5  # s between looks at the runner jobs and the clock
KEEP_RECORDS_S = 7 * 86400.0  # finished runner records are kept this long (for `why`)
CLAIM_PATH = "/api/v1/github/jitconfig"
_RUNNERS_TABLE = "CREATE TABLE IF NOT EXISTS runners (gh_job INTEGER PRIMARY KEY, data BLOB NOT NULL)"
_PUT_RUNNER = "INSERT OR REPLACE INTO runners (gh_job, data) VALUES (?, ?)"


def match_pool(pools: tuple[GitHubPool, ...], repo: str, labels: Sequence[str]) -> GitHubPool | None:
    """The first pool whose scope holds ``repo`` and whose labels the job carries (any case);
    an organisation pool with ``repositories`` holds only those."""
    have = {label.lower() for label in labels}
    owner, _, name = repo.lower().partition("/")
    for pool in pools:
        scope = pool.scope.lower()
        if "/" in scope:
            holds = scope == repo.lower()
        else:
            holds = scope == owner and (
                not pool.repositories or name in {r.lower() for r in pool.repositories}
            )
        if holds and {label.lower() for label in pool.labels} <= have:
            return pool
    return None


def runner_script(command: tuple[str, ...]) -> str:
    """The job's script: fetch the JIT config with the claim token, then exec the runner with
    ``{jitconfig}`` replaced by it (quoted; the config never appears in the spec)."""
    argv = " ".join(
        '"$cfg"'.join(shlex.quote(part) if part else "" for part in arg.split("{jitconfig}")) or "''"
        for arg in command
    )
    auth = "Authorization: Bearer $SCALERUNNER_JIT_TOKEN"
    return (
        "set -eu\n"
        'if command -v curl >/dev/null 2>&1; then cfg=$(curl -fsS -H "' + auth + '" "$SCALERUNNER_JIT_URL")\n'
        'else cfg=$(wget -q -O - --header "' + auth + '" "$SCALERUNNER_JIT_URL"); fi\n'
        "unset SCALERUNNER_JIT_TOKEN\n"
        f"exec {argv}\n"
    )


@dataclass
class _Claim:
    jitconfig: str
    gh_job: int
    name: str


class GitHubService:
    """The webhook, the runner jobs and the reconciler. ``api_url`` says where nodes reach the
    coordinator's API (for the claim URL)."""

    def __init__(
        self,
        config: GitHubConfig,
        cluster: str,
        jobs: JobManager,
        state_dir: Path,
        api_url: Callable[[], str],
        *,
        api: GitHubApi | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.state_dir = state_dir
        self.api_url = api_url
        self.clock = clock
        app = (
            AppCredentials(
                app_id=config.app_id,
                installation_id=config.installation_id,
                private_key_file=Path(config.private_key_file),
            )
            if config.app_id is not None and config.installation_id is not None and config.private_key_file
            else None
        )
        token_file = Path(config.token_file) if config.token_file is not None else None
        self.api = api or GitHubApi(config.api_url, None if app else token_file, app=app)
        self.core = Runners(cluster, config.idle_timeout)
        self.pools = {p.name: p for p in config.pools}
        self.started = False
        self.counters: dict[str, int] = {"deliveries": 0, "replayed": 0, "bad_signature": 0, "api_errors": 0}
        self._secret = b""
        self._lock = asyncio.Lock()
        self._db_lock = threading.Lock()
        self._db: Any = None
        self._deliveries: Deliveries | None = None
        self._claims: dict[str, _Claim] = {}  # sha256 of the claim token -> the JIT config
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        secret_file = Path(self.config.webhook_secret_file)
        try:
            self._secret = (await asyncio.to_thread(secret_file.read_bytes)).strip()
        except OSError as exc:
            raise ConfigError(
                str(secret_file), "", f"cannot read the webhook secret: {exc.strerror or exc}"
            ) from exc
        if not self._secret:
            raise ConfigError(str(secret_file), "", "the webhook secret file is empty")
        self._db = await asyncio.to_thread(open_db, self.state_dir / "github.db")
        self._deliveries = Deliveries(self._db, self._db_lock)
        await asyncio.to_thread(self._db_exec, _RUNNERS_TABLE)
        now = self.clock()
        for (data,) in await asyncio.to_thread(self._db_query, "SELECT data FROM runners"):
            self.core.restore(msgspec.json.decode(data, type=Runner), now)
        await self.api.start()
        self._loops = [
            asyncio.create_task(self._watch_loop(), name="github-watch"),
            asyncio.create_task(self._reconcile_loop(), name="github-reconcile"),
        ]
        self.started = True
        log.info("github runners up", extra={"pools": list(self.pools), "api": self.config.api_url})

    async def stop(self) -> None:
        self.started = False
        for task in [*self._loops, *self._tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []
        await self.api.stop()
        if self._db is not None:
            self._db.close()
            self._db = None

    def collector(self) -> Collector:
        return _GitHubCollector(self)

    # -- the webhook -------------------------------------------------------------------------

    async def webhook(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """One delivery: (HTTP status, JSON body). Only the signature check, the replay check
        and the core's decision happen before the answer."""
        if not self.started:
            raise WebhookError(503, "the GitHub part is not running yet")
        try:
            verify_signature(self._secret, body, headers.get(SIGNATURE_HEADER))
        except WebhookError:
            self.counters["bad_signature"] += 1
            log.warning("webhook refused: bad signature", extra={"delivery": headers.get(DELIVERY_HEADER)})
            raise
        event = headers.get(EVENT_HEADER, "")
        if event == "ping":
            return 200, {"status": "pong"}
        if event != "workflow_job":
            return 202, {"status": f"event {event!r} ignored"}
        delivery = headers.get(DELIVERY_HEADER, "")
        if not delivery:
            raise WebhookError(400, f"missing {DELIVERY_HEADER} header")
        payload = parse_workflow_job(body)
        assert self._deliveries is not None
        if not await asyncio.to_thread(self._deliveries.remember, delivery):
            self.counters["replayed"] += 1
            log.info("replayed delivery ignored", extra={"delivery": delivery})
            return 200, {"status": "replayed delivery ignored"}
        self.counters["deliveries"] += 1
        wj = payload.workflow_job
        repo = payload.repository.full_name
        now = self.clock()
        async with self._lock:
            if payload.action == "queued":
                pool = match_pool(self.config.pools, repo, wj.labels)
                if pool is None:
                    return 202, {"status": "no pool takes these labels", "labels": wj.labels}
                actions = self.core.queued(wj.id, repo, pool.name, wj.labels, now, "webhook")
            elif payload.action == "in_progress":
                actions = self.core.in_progress(wj.id, wj.runner_name or "", now)
            elif payload.action == "completed":
                actions = self.core.completed(wj.id, wj.conclusion or "", wj.runner_name or "", now)
            else:
                actions = []
            await self._persist()
        self._carry_out(actions)
        log.info(
            "workflow_job %s", payload.action, extra={"gh_job": wj.id, "repo": repo, "delivery": delivery}
        )
        return 202, {"status": "accepted", "workflow_job": wj.id}

    def claim(self, token: str) -> str | None:
        """The JIT config for a claim token, once; None for an unknown or used token."""
        found = self._claims.pop(hashlib.sha256(token.encode()).hexdigest(), None)
        if found is None:
            return None
        log.info("runner fetched its JIT config", extra={"gh_job": found.gh_job, "runner": found.name})
        return found.jitconfig

    # -- carrying out the core's actions -----------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, RequestRunner):
                self._spawn(self._request(a), f"github-request-{a.gh_job}")
            elif isinstance(a, CancelRunner):
                self._spawn(self._cancel(a), f"github-cancel-{a.gh_job}")
            elif isinstance(a, CheckIdle):
                self._spawn(self._check_idle(a), f"github-idle-{a.gh_job}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, a: RequestRunner) -> None:
        pool = self.pools[a.pool]
        scope = pool.scope
        extra = {"gh_job": a.gh_job, "repo": a.repo, "pool": a.pool, "runner": a.name}
        try:
            jit = await self.api.generate_jitconfig(scope, a.name, pool.runner_group_id, list(a.labels))
        except GitHubApiError as exc:
            self.counters["api_errors"] += 1
            log.error("cannot make runner %s: %s", a.name, exc, extra={**extra, "endpoint": exc.endpoint})
            why, wait = str(exc), exc.retry_after or 0.0
            await self._apply(lambda now: self.core.request_failed(a.gh_job, why, now, wait))
            return
        token = secrets.token_urlsafe(32)
        key = hashlib.sha256(token.encode()).hexdigest()
        self._claims[key] = _Claim(jit.encoded, a.gh_job, a.name)
        spec = JobSpec(
            name=f"github runner {a.name} ({a.repo} job {a.gh_job})",
            image=pool.image,
            script=runner_script(pool.command),
            arch=pool.arch,
            labels=list(pool.node_labels),
            cpus=pool.cpus,
            memory=pool.memory_mb,
            timeout=pool.timeout,
            env={
                "SCALERUNNER_JIT_URL": f"{self.api_url()}{CLAIM_PATH}",
                "SCALERUNNER_JIT_TOKEN": token,
                "SCALERUNNER_RUNNER_NAME": a.name,
            },
            retries=0,  # a lost runner gets a fresh JIT config instead (the core's retry)
            network=True,  # the runner talks to GitHub and fetches its config from us
            priority=pool.priority,
            project="github",
        )
        try:
            job = await self.jobs.submit(spec)
        except Exception as exc:
            self._claims.pop(key, None)
            log.exception("cannot submit the job of runner %s", a.name, extra=extra)
            why = f"submit failed: {exc}"
            with contextlib.suppress(GitHubApiError):
                await self.api.delete_runner(scope, jit.runner_id)
            await self._apply(lambda now: self.core.request_failed(a.gh_job, why, now))
            return
        log.info(
            "runner %s is job %s", a.name, job.id, extra={**extra, "job": job.id, "runner_id": jit.runner_id}
        )
        await self._apply(lambda now: self.core.submitted(a.gh_job, a.name, jit.runner_id, job.id, now))

    async def _cancel(self, a: CancelRunner) -> None:
        extra = {"gh_job": a.gh_job, "repo": a.repo, "job": a.job}
        pool = self.pools.get(a.pool)
        if a.runner_id is not None and pool is not None:
            try:  # first, so GitHub hands the runner nothing more
                await self.api.delete_runner(pool.scope, a.runner_id)
            except GitHubApiError as exc:
                self.counters["api_errors"] += 1
                log.warning("cannot remove runner %s: %s", a.runner_id, exc, extra=extra)
        for key, claim in list(self._claims.items()):
            if claim.gh_job == a.gh_job:
                del self._claims[key]
        if a.job is not None:
            with contextlib.suppress(JobStateError, UnknownJob):
                await self.jobs.cancel(a.job, a.reason)
            log.info("runner job %s cancelled: %s", a.job, a.reason, extra=extra)

    async def _check_idle(self, a: CheckIdle) -> None:
        busy: bool | None
        try:
            info = await self.api.get_runner(self.pools[a.pool].scope, a.runner_id)
            busy = info is not None and info.busy
        except GitHubApiError as exc:
            self.counters["api_errors"] += 1
            log.warning(
                "cannot ask whether runner %s is busy: %s", a.runner_id, exc, extra={"gh_job": a.gh_job}
            )
            busy = None
        await self._apply(lambda now: self.core.idle_checked(a.gh_job, busy, now))

    async def _apply(self, event: Callable[[float], list[Action]]) -> None:
        async with self._lock:
            actions = event(self.clock())
            await self._persist()
        self._carry_out(actions)

    async def _persist(self) -> None:
        changed = self.core.changed()
        for r in changed:
            log.info(
                "github job %s: %s (%s)",
                r.gh_job,
                r.state.value,
                r.reason,
                extra={"gh_job": r.gh_job, "state": r.state.value, "runner": r.name, "job": r.job},
            )
        if changed:
            rows = [(r.gh_job, msgspec.json.encode(r)) for r in changed]
            await asyncio.to_thread(self._db_many, _PUT_RUNNER, rows)

    # -- the loops ---------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        pruned_at = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                await self._watch()
                now = self.clock()
                if now - pruned_at > 3600:
                    pruned_at = now
                    async with self._lock:
                        gone = self.core.prune(now - KEEP_RECORDS_S)
                    if gone:
                        await asyncio.to_thread(
                            self._db_many, "DELETE FROM runners WHERE gh_job = ?", [(g,) for g in gone]
                        )
            except Exception:  # a loop of its own: log, and look again
                log.exception("github watch failed")

    async def _watch(self) -> None:
        for r in self.core.in_flight():
            assert r.job is not None
            try:
                job_state = (await self.jobs.get(r.job)).state
            except UnknownJob:
                await self._apply(functools.partial(self._ended, r.gh_job, "unknown"))
                continue
            if job_state in JOB_TERMINAL:
                await self._apply(functools.partial(self._ended, r.gh_job, job_state.value))
            elif job_state is JobState.RUNNING:
                await self._apply(functools.partial(self._running, r.gh_job))
        await self._apply(self.core.tick)

    def _ended(self, gh_job: int, job_state: str, now: float) -> list[Action]:
        return self.core.ended(gh_job, job_state, now)

    def _running(self, gh_job: int, now: float) -> list[Action]:
        return self.core.running(gh_job, now)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("github reconcile failed")
            await asyncio.sleep(self.config.reconcile_interval)

    async def reconcile(self) -> int:
        """List the queued jobs of every pool's scope; a runner for each that has none.
        Returns how many runners it asked for."""
        repos: dict[str, None] = {}
        for pool in self.config.pools:
            if "/" in pool.scope:
                repos[pool.scope] = None
            elif pool.repositories:
                repos.update((f"{pool.scope}/{r}", None) for r in pool.repositories)
            else:
                try:
                    repos.update((r, None) for r in await self.api.org_repositories(pool.scope))
                except GitHubApiError as exc:
                    self.counters["api_errors"] += 1
                    log.error("reconcile: cannot list the repositories of %s: %s", pool.scope, exc)
        asked = 0
        for repo in repos:
            try:
                queued = await self.api.queued_jobs(repo)
            except GitHubApiError as exc:
                self.counters["api_errors"] += 1
                log.error("reconcile: cannot list the queued jobs of %s: %s", repo, exc, extra={"repo": repo})
                if exc.retry_after is not None:
                    break  # rate limited: the rest of this pass would be refused too
                continue
            for q in queued:
                taker = match_pool(self.config.pools, q.repo, q.labels)
                if taker is None:
                    continue
                async with self._lock:
                    actions = self.core.queued(q.id, q.repo, taker.name, q.labels, self.clock(), "reconciler")
                    await self._persist()
                if actions:
                    asked += 1
                    log.info(
                        "reconcile: queued job %s had no runner", q.id, extra={"gh_job": q.id, "repo": q.repo}
                    )
                self._carry_out(actions)
        return asked

    # -- the database ------------------------------------------------------------------------

    def _db_exec(self, sql: str) -> None:
        with self._db_lock, self._db:
            self._db.execute(sql)

    def _db_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._db_lock, self._db:
            self._db.executemany(sql, rows)

    def _db_query(self, sql: str) -> list[tuple[Any, ...]]:
        with self._db_lock:
            return list(self._db.execute(sql).fetchall())


class _GitHubCollector(Collector):
    """Prometheus: runner records by state and what the webhook and the API did."""

    def __init__(self, service: GitHubService) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        states = Counter(r.state.value for r in self._service.core.records.values())
        runners = GaugeMetricFamily(
            "scalerunner_github_runners", "workflow jobs known, by runner state", labels=["state"]
        )
        for state in RunnerState:
            runners.add_metric([state.value], float(states[state.value]))
        yield runners
        c = self._service.counters
        for name, text in (
            ("deliveries", "workflow_job deliveries accepted"),
            ("replayed", "deliveries ignored as replays"),
            ("bad_signature", "deliveries refused for their signature"),
            ("api_errors", "GitHub REST calls that failed"),
        ):
            yield CounterMetricFamily(f"scalerunner_github_{name}", text, value=float(c[name]))
