"""The dashboard's live feed: what changed since the last look, pushed to every open stream.

Pure core: ``node_entry`` (a node's view as the page draws it, with its LED and watts),
``changed`` (which entries differ from the last ones sent) and ``PowerHistory`` (a bounded
series of the rack's total power and energy, one point per power sample round).

Shell: ``Feed``, a part with ``start()``/``stop()``. While at least one stream is open its
task looks at the nodes every ``interval`` (an in-memory read: the node views, the power
manager's last watts) and, on every change of the jobs, at the job list. Each stream has a
bounded queue; a client that falls ``queue_size`` events behind is dropped (its stream ends and
the page reconnects for a fresh snapshot), so a slow browser never holds up the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..api.models import NodeView
from .ledview import led_of

log = logging.getLogger("scalerunner.coordinator.dashboard")

Entry = dict[str, Any]


# -- functional core ------------------------------------------------------------------------


def node_entry(view: NodeView, cpus: int | None, watts: float | None) -> Entry:
    """The page's record of one node. ``telemetry.age_s`` is left out: it moves on every look
    and would make every node 'changed' all the time."""
    entry = view.model_dump(mode="json")
    tele = entry.get("telemetry")
    if tele is not None:
        tele.pop("age_s", None)
    connected = view.state in ("online", "idle", "busy", "draining")
    led = None
    if view.telemetry is not None and connected:  # else no agent drives it: the page draws it dark
        led = led_of(view.name, view.telemetry.load1, view.telemetry.temp_c, cpus or 1)
    entry["led"] = (
        {"pixels": list(led.pixels), "colour": led.colour, "load_pct": led.load_pct}
        if led is not None
        else None
    )
    entry["watts"] = watts
    return entry


def changed(before: Mapping[str, Entry], now: Mapping[str, Entry]) -> list[Entry]:
    """The entries of ``now`` that are new or differ from ``before``, in ``now``'s order."""
    return [e for name, e in now.items() if before.get(name) != e]


@dataclass
class PowerHistory:
    """The rack's total watts and energy over time, one point per sample round, bounded."""

    limit: int = 720
    points: deque[tuple[float, float, float]] = field(default_factory=deque)
    last_at: float = 0.0

    def add(self, watts: Mapping[str, tuple[float, float]], energy_wh: Mapping[str, float]) -> Entry | None:
        """A point if the power manager has sampled since the last one, else None."""
        if not watts:
            return None
        at = max(at for at, _ in watts.values())
        if at <= self.last_at:
            return None
        self.last_at = at
        point = (at, round(sum(w for _, w in watts.values()), 2), round(sum(energy_wh.values()), 4))
        self.points.append(point)
        while len(self.points) > self.limit:
            self.points.popleft()
        return {"at": point[0], "watts": point[1], "energy_wh": point[2]}

    def series(self) -> list[Entry]:
        return [{"at": at, "watts": w, "energy_wh": e} for at, w, e in self.points]


# -- the shell ------------------------------------------------------------------------------


class Nodes(Protocol):
    def views(self) -> list[NodeView]: ...


class Power(Protocol):
    watts: dict[str, tuple[float, float]]
    energy_wh: dict[str, float]


class Jobs(Protocol):
    async def wait_changed(self, timeout: float) -> None: ...


JobLister = Callable[[], Any]  # async () -> list of job dicts, newest first


@dataclass(eq=False)
class Client:
    queue: asyncio.Queue[tuple[str, Any]]
    dropped: bool = False


class Feed:
    def __init__(
        self,
        nodes: Nodes,
        cpus: Mapping[str, int | None],
        *,
        power: Power | None = None,
        jobs: Jobs | None = None,
        list_jobs: JobLister | None = None,
        interval: float = 0.25,
        queue_size: int = 256,
    ) -> None:
        self.nodes = nodes
        self.cpus = dict(cpus)
        self.power = power
        self.jobs = jobs
        self.list_jobs = list_jobs
        self.interval = interval
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        self.dropped = 0  # clients dropped for falling behind, since start
        self.entries: dict[str, Entry] = {}
        self.history = PowerHistory()
        self.job_list: list[Entry] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add_node(self, name: str, cpus: int | None) -> None:
        """A node joined at runtime (an enrolled machine); its entry appears on the next look."""
        self.cpus[name] = cpus

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch_nodes(), name="dashboard-nodes")]
        if self.jobs is not None and self.list_jobs is not None:
            self._tasks.append(asyncio.create_task(self._watch_jobs(), name="dashboard-jobs"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for client in list(self.clients):
            self._drop(client)

    # -- streams --

    async def subscribe(self) -> tuple[Client, Entry]:
        """A new stream's queue and the snapshot it starts from, taken as it subscribes (no gap)."""
        self.look()  # the others get what changed; this one gets all of it in its snapshot
        client = Client(asyncio.Queue(self.queue_size))
        self.clients.add(client)  # no await since the look: nothing can fall between the two
        self._wake.set()
        if self.list_jobs is not None:
            self.job_list = await self.list_jobs()
        snapshot = {
            "nodes": list(self.entries.values()),
            "power": self.history.series(),
            "jobs": self.job_list if self.list_jobs is not None else None,
        }
        return client, snapshot

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, kind: str, data: Any) -> None:
        for client in list(self.clients):
            try:
                client.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("dashboard stream dropped: %d events behind", self.queue_size)
                self._drop(client)

    def _drop(self, client: Client) -> None:
        client.dropped = True
        self.clients.discard(client)
        with contextlib.suppress(asyncio.QueueFull):  # wake a stream waiting on an empty queue
            client.queue.put_nowait(("", None))

    # -- what changed --

    def look(self) -> None:
        """Compare the nodes and power with the last look; publish what changed."""
        watts = self.power.watts if self.power is not None else {}
        now = {
            v.name: node_entry(v, self.cpus.get(v.name), _watts(watts, v.name)) for v in self.nodes.views()
        }
        for entry in changed(self.entries, now):
            self.publish("node", entry)
        self.entries = now
        if self.power is not None:
            point = self.history.add(self.power.watts, self.power.energy_wh)
            if point is not None:
                self.publish("power", point)

    async def _watch_nodes(self) -> None:
        while True:
            if not self.clients:
                self._wake.clear()
                await self._wake.wait()
            try:
                self.look()
            except Exception:  # a bad look must not end the feed
                log.exception("dashboard: reading the nodes failed")
            await asyncio.sleep(self.interval)

    async def _watch_jobs(self) -> None:
        assert self.jobs is not None and self.list_jobs is not None
        while True:
            await self.jobs.wait_changed(5.0)
            if not self.clients:
                continue
            try:
                jobs = await self.list_jobs()
            except Exception:
                log.exception("dashboard: listing the jobs failed")
                await asyncio.sleep(1.0)
                continue
            if jobs != self.job_list:
                self.job_list = jobs
                self.publish("jobs", jobs)
            await asyncio.sleep(self.interval)  # log chunks wake this often: list at most this often


def _watts(watts: Mapping[str, tuple[float, float]], node: str) -> float | None:
    got = watts.get(node)
    return got[1] if got is not None else None
