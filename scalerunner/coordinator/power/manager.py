"""The coordinator's power part: nodes to outlets, sequenced actions, sampling for energy.

``PowerManager`` carries out on, off and cycle for nodes through their back ends (the steps are
decided by sequence.py; this shell only switches, reads and sleeps). It never switches an outlet
the inventory does not assign to a node; one lock per outlet keeps two actions on one port from
interleaving; an operator's action cancels an automated one (a recovery cycle) on the same node.
Every finished action is recorded as a ``power`` event naming the node and outlet.

A sampler reads every outlet's power every ``sample_interval`` seconds into the store; energy
per node is integrated from those samples (energy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import UnknownNode
from ..inventory import Inventory
from ..store import Event, PowerSample, Store
from . import sequence as sq
from .base import OutletStatus, PowerBackend, PowerError
from .batch import StatusBatcher
from .energy import Energy, integrate
from .outlets import Outlet, OutletMap, outlet_map, unique
from .results import NodeResult, shape

__all__ = ["PowerManager"]

log = logging.getLogger("scalerunner.coordinator.power")


@dataclass
class _Running:
    task: asyncio.Task[OutletStatus]
    op: sq.Op
    automated: bool


class PowerManager:
    def __init__(
        self,
        inventory: Inventory,
        backends: Mapping[str, PowerBackend],
        store: Store | None = None,
        *,
        config: sq.SequenceConfig | None = None,
        sample_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inventory = inventory
        self.outlets: OutletMap = outlet_map(inventory)
        self.backends = dict(backends)
        self.store = store
        p = inventory.power
        self.config = config or sq.SequenceConfig(
            min_off=p.min_off, off_timeout=p.off_timeout, on_timeout=p.on_timeout
        )
        self.sample_interval = p.sample_interval if sample_interval is None else sample_interval
        self.retention_days = p.retention_days
        self.max_gap = 3 * self.sample_interval  # a longer silence is a gap, not a trapezoid
        self.clock = clock
        self._locks: dict[Outlet, asyncio.Lock] = {}
        self._batchers: dict[str, StatusBatcher] = {}  # per device: concurrent polls in one request
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Task[OutletStatus]] = set()
        self._sampler: asyncio.Task[None] | None = None
        self._records: set[asyncio.Future[list[int]]] = set()  # power events being written
        self._started: list[PowerBackend] = []
        # for /metrics: actions by op, failures by cause, the last watts and the energy counted
        self.actions: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.watts: dict[str, tuple[float, float]] = {}  # node -> (at, watts)
        self.energy_wh: dict[str, float] = {}

    # -- start/stop -------------------------------------------------------------------------

    async def start(self) -> None:
        for name in self.outlets.devices():
            backend = self.backends.get(name)
            if backend is None:
                continue  # reported per node when it is used
            await backend.start()
            self._started.append(backend)
        if self.store is not None:
            self._sampler = asyncio.create_task(self._sample_every(), name="power-sampler")

    async def stop(self) -> None:
        tasks: list[asyncio.Task[object]] = [*self._tasks]
        if self._sampler is not None:
            tasks.append(self._sampler)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._records:  # the events of the actions just ended, before the store stops
            await asyncio.wait(list(self._records), timeout=5)
        while self._started:
            backend = self._started.pop()
            try:
                await backend.stop()
            except Exception:
                log.exception("stopping power back end %s failed", backend.name)

    def add_node(self, inventory: Inventory) -> None:
        """A node joined at runtime (an enrolled machine: no switch port, so no outlet of its own);
        power and energy requests for it are answered from now on."""
        self.inventory = inventory
        self.outlets = outlet_map(inventory)

    # -- actions ----------------------------------------------------------------------------

    def outlet(self, node: str) -> Outlet:
        """``node``'s outlet: UnknownNode if the inventory has no such node, PowerError
        "not-assigned" if it gives the node no switch port or BMC."""
        self.inventory.node(node)
        return self.outlets.outlet(node)

    async def run(self, node: str, op: sq.Op) -> OutletStatus:
        """Carry out ``op`` on ``node`` now (after any action on the same outlet); the outlet's
        status afterwards, or PowerError naming the outlet and what state it was left in."""
        return await self.run_outlet(self.outlet(node), op)

    async def run_outlet(self, outlet: Outlet, op: sq.Op) -> OutletStatus:
        """``op`` on ``outlet``: PowerError "not-assigned" unless the inventory assigns it to a
        node (an uplink or a free port is never switched, whoever asks)."""
        self.outlets.check(outlet)
        node = self.outlets.node_of(outlet)
        backend = self.backends.get(outlet.device)
        if backend is None:
            raise PowerError(outlet.name, "unreachable", f"no power back end for {outlet.device}")
        self.actions[op.value] += 1
        lock = self._locks.setdefault(outlet, asyncio.Lock())
        async with lock:
            seq, cmd = sq.begin(outlet.name, op, self.clock(), self.config)
            last: OutletStatus | None = None
            try:
                while not isinstance(cmd, sq.Finish):
                    obs, status = await self._carry_out(backend, outlet, cmd)
                    last = status or last
                    seq, cmd = sq.advance(seq, obs, self.clock())
            except asyncio.CancelledError:
                log.warning(
                    "%s: %s on %s cancelled in phase %s",
                    node,
                    op.value,
                    outlet.name,
                    seq.phase.value,
                    extra={"node": node, "outlet": outlet.name, "phase": seq.phase.value},
                )
                raise
        if not cmd.ok:
            self.failures[cmd.cause] += 1
            raise PowerError(outlet.name, cmd.cause, cmd.message)
        assert last is not None  # a sequence finishes ok only on a status read
        return last

    async def _carry_out(
        self, backend: PowerBackend, outlet: Outlet, cmd: sq.Command
    ) -> tuple[sq.Observation, OutletStatus | None]:
        try:
            match cmd:
                case sq.SetPower(on=on):
                    self.outlets.check(outlet)  # before every request, whoever asks
                    await backend.set_power(outlet.port, on)
                    return sq.Accepted(), None
                case sq.Poll():
                    status = await self._batcher(backend).read(outlet.port)
                    return sq.Observed(status.state, status.detail), status
                case sq.Wait(until=until):
                    await asyncio.sleep(max(0.0, until - self.clock()))
                    return sq.Woke(), None
        except PowerError as exc:
            return sq.Failed(exc.cause, str(exc).removeprefix(f"{exc.outlet}: ")), None
        except (OSError, KeyError, TimeoutError) as exc:
            return sq.Failed("unreachable", f"{type(exc).__name__}: {exc}"), None
        raise AssertionError(f"not a command to carry out: {cmd!r}")

    def _batcher(self, backend: PowerBackend) -> StatusBatcher:
        batcher = self._batchers.get(backend.name)
        if batcher is None:
            batcher = self._batchers[backend.name] = StatusBatcher(backend)
        return batcher

    def submit(
        self, node: str, op: sq.Op, *, automated: bool, reason: str = ""
    ) -> asyncio.Task[OutletStatus] | None:
        """Start ``op`` on ``node`` in a task of its own (a cycle takes seconds; the lifecycle
        step that asked must not wait). An operator's action cancels an automated one on the
        node; an automated one is not started while an operator's runs (None)."""
        held = self._running.get(node)
        if held is not None and not held.task.done():
            if automated and not held.automated:
                log.info(
                    "%s: automated %s skipped: an operator's %s is in progress", node, op.value, held.op.value
                )
                return None
            if not automated and held.automated:
                held.task.cancel()
                log.info("%s: operator %s cancels the automated %s", node, op.value, held.op.value)
        task = asyncio.create_task(self.run(node, op), name=f"power-{op.value}-{node}")
        self._running[node] = _Running(task, op, automated)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(node, op, automated, reason, t))
        return task

    def pending(self, node: str) -> asyncio.Task[OutletStatus] | None:
        held = self._running.get(node)
        return held.task if held is not None and not held.task.done() else None

    def _done(
        self, node: str, op: sq.Op, automated: bool, reason: str, task: asyncio.Task[OutletStatus]
    ) -> None:
        self._tasks.discard(task)
        held = self._running.get(node)
        if held is not None and held.task is task:
            del self._running[node]
        who = "automatic" if automated else "operator"
        if task.cancelled():
            outcome, detail = "cancelled", "superseded by an operator's action or the coordinator stopping"
        elif (exc := task.exception()) is not None:
            outcome, detail = "failed", str(exc)
            log.warning("%s: %s %s failed: %s", node, who, op.value, exc, extra={"node": node})
        else:
            outcome, detail = "ok", _describe(task.result())
        event = Event(
            node=node,
            axis="power",
            old="",
            new=f"{op.value} {outcome}",
            reason=f"{who}{': ' + reason if reason else ''}; {detail}",
            at=self.clock(),
        )
        if self.store is not None:
            record = asyncio.ensure_future(self.store.apply(None, [event]))
            self._records.add(record)
            record.add_done_callback(self._records.discard)
            record.add_done_callback(_log_failure)

    async def bulk(self, nodes: Sequence[str], op: sq.Op) -> list[NodeResult]:
        """``op`` on every node in parallel, one result per node (ok or its error)."""
        names = unique(nodes)
        got = await asyncio.gather(*(self.run(n, op) for n in names), return_exceptions=True)
        return shape(names, dict(zip(names, got, strict=True)), self.outlet_names(names))

    # -- status and energy ------------------------------------------------------------------

    async def status(self, nodes: Sequence[str] | None = None) -> list[NodeResult]:
        """Every asked node's outlet status, one request per device, devices in parallel."""
        names = unique(nodes) if nodes is not None else [n.name for n in self.inventory.nodes]
        outcomes: dict[str, OutletStatus | BaseException] = {}
        per_device: dict[str, list[tuple[str, Outlet]]] = {}
        for name in names:
            try:
                outlet = self.outlet(name)
            except (UnknownNode, PowerError) as exc:
                outcomes[name] = (
                    exc if isinstance(exc, PowerError) else PowerError(name, "unknown-node", str(exc))
                )
                continue
            per_device.setdefault(outlet.device, []).append((name, outlet))

        async def read(device: str, members: list[tuple[str, Outlet]]) -> None:
            backend = self.backends.get(device)
            try:
                if backend is None:
                    raise PowerError(device, "unreachable", f"no power back end for {device}")
                got = await backend.status(sorted({o.port for _, o in members}))
            except PowerError as exc:
                for name, _ in members:
                    outcomes[name] = exc
                return
            for name, outlet in members:
                outcomes[name] = got.get(outlet.port) or PowerError(
                    outlet.name, "no-such-object", "no status read"
                )

        await asyncio.gather(*(read(d, m) for d, m in per_device.items()))
        return shape(names, outcomes, self.outlet_names(names))

    async def sample(self) -> int:
        """Read every outlet's power once into the store; how many samples were written."""
        now = self.clock()
        samples = []
        powered = list(self.outlets.by_node)
        for r in await self.status(powered) if powered else []:
            if r.ok and r.watts is not None:
                samples.append(PowerSample(node=r.node, at=now, watts=r.watts))
                prev = self.watts.get(r.node)
                if prev is not None and 0 < now - prev[0] <= self.max_gap:
                    joules = (prev[1] + r.watts) / 2 * (now - prev[0])
                    self.energy_wh[r.node] = self.energy_wh.get(r.node, 0.0) + joules / 3600
                self.watts[r.node] = (now, r.watts)
        if self.store is not None and samples:
            await self.store.add_power_samples(samples)
        return len(samples)

    async def energy(self, node: str, since: float, until: float) -> Energy:
        """``node``'s energy within [since, until] from the stored samples."""
        self.inventory.node(node)
        if self.store is None:
            raise PowerError(node, "unreachable", "no store: power is not sampled")
        samples = await self.store.power_samples(node, since, until)
        return integrate([(s.at, s.watts) for s in samples], since, until, self.max_gap)

    async def _sample_every(self) -> None:
        pruned_at = 0.0
        while True:
            try:
                await self.sample()
                now = self.clock()
                if self.store is not None and now - pruned_at >= 3600:
                    await self.store.prune_power_samples(now - self.retention_days * 86400)
                    pruned_at = now
            except Exception as exc:  # one failed round must not end sampling
                log.warning("power sampling failed: %s", exc)
            await asyncio.sleep(self.sample_interval)

    def outlet_names(self, names: Sequence[str]) -> dict[str, str]:
        return {n: self.outlets.by_node[n].name for n in names if n in self.outlets.by_node}


def _describe(status: OutletStatus) -> str:
    watts = f", {status.watts:.1f} W" if status.watts is not None else ""
    return f"{status.outlet} {status.state.value} ({status.detail or status.state.value}{watts})"


def _log_failure(task: asyncio.Future[list[int]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cannot record a power event: %s", task.exception())
