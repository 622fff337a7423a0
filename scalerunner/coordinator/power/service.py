"""Power as the API and the lifecycle see it: operator actions, status, energy.

An operator's on/off/cycle goes through the node lifecycle first (it decides and records: a
failed node cannot be powered on, a power-off cancels a pending recovery), then to the outlet.
The lifecycle's ``SwitchPower``/``PowerCycle`` actions are carried out here as tasks of the
power manager, so a lifecycle step never waits out a power-cycle; the API waits for the task
of the node it asked for and reports per node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import lifecycle as lc
from ..errors import NodeStateError, UnknownNode
from ..nodes import NodeManager
from ..store import Store
from .base import OutletStatus, PowerError
from .energy import Energy
from .manager import PowerManager
from .outlets import unique
from .results import NodeResult, shape
from .sequence import Op

__all__ = ["EnergyRow", "PowerService"]

_EVENTS: dict[Op, type[lc.PowerOn] | type[lc.PowerOff] | type[lc.Reboot]] = {
    Op.ON: lc.PowerOn,
    Op.OFF: lc.PowerOff,
    Op.CYCLE: lc.Reboot,
}


@dataclass(frozen=True, slots=True)
class EnergyRow:
    node: str
    since: float
    until: float
    energy: Energy
    job: str = ""
    attempt: int = 0


class PowerService:
    def __init__(
        self, nodes: NodeManager, power: PowerManager, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.nodes = nodes
        self.power = power
        self.clock = clock

    def attach(self) -> None:
        """Carry out the lifecycle's power actions from now on."""
        self.nodes.handle(lc.SwitchPower, self._switch)
        self.nodes.handle(lc.PowerCycle, self._cycle)

    async def _switch(self, action: lc.SwitchPower) -> None:
        self.power.submit(action.node, Op.ON if action.on else Op.OFF, automated=False, reason=action.reason)

    async def _cycle(self, action: lc.PowerCycle) -> None:
        # attempt 0 is an operator's reboot; 1.. are the lifecycle's recovery power-cycles
        self.power.submit(action.node, Op.CYCLE, automated=action.attempt > 0, reason=action.reason)

    async def act(self, names: Sequence[str], op: Op, reason: str = "operator request") -> list[NodeResult]:
        """``op`` on every node in parallel; one result per node, in the order asked."""
        names = unique(names)
        got = await asyncio.gather(*(self._one(n, op, reason) for n in names))
        return shape(names, dict(zip(names, got, strict=True)), self.power.outlet_names(names))

    async def _one(self, name: str, op: Op, reason: str) -> OutletStatus | BaseException:
        before = self.power.pending(name)
        try:
            self.power.outlet(name)  # a node nothing can switch keeps its lifecycle as it is
            await self.nodes.apply_event(name, _EVENTS[op](at=self.clock(), reason=reason))
        except UnknownNode as exc:
            return PowerError(name, "unknown-node", str(exc))
        except NodeStateError as exc:
            return PowerError(name, "refused", str(exc))
        except PowerError as exc:
            return exc
        task = self.power.pending(name)
        if task is None or task is before:
            # The lifecycle had nothing to switch (already on, already off): the operator still
            # gets the outlet in the state asked for.
            task = self.power.submit(name, op, automated=False, reason=reason)
            assert task is not None  # an operator's action is always started
        await asyncio.wait([task])
        if task.cancelled():
            return PowerError(name, "cancelled", f"{op.value} superseded by another operator action")
        return task.exception() or task.result()

    async def status(self, names: Sequence[str] | None = None) -> list[NodeResult]:
        return await self.power.status(names or None)

    async def energy(
        self, names: Sequence[str] | None, since: float | None, until: float | None
    ) -> list[EnergyRow]:
        """Energy per node over [since, until] (default: the last hour up to now)."""
        until = self.clock() if until is None else until
        since = until - 3600 if since is None else since
        if names:
            for n in names:
                self.power.inventory.node(n)  # UnknownNode before any work
            chosen = unique(names)
        else:
            chosen = sorted(self.power.outlets.by_node)
        return [EnergyRow(n, since, until, await self.power.energy(n, since, until)) for n in chosen]

    async def job_energy(self, job_id: str) -> list[EnergyRow]:
        """Energy of each attempt of job ``job_id`` on its node, over the attempt's run; an
        attempt still running counts up to now. LookupError if the store has no such job."""
        store: Store | None = self.power.store
        record = None if store is None else await store.get_job(job_id)
        if record is None:
            raise LookupError(f"no job {job_id!r}")
        rows = []
        for attempt in _attempts(record.data):
            node = attempt.get("node")
            start = attempt.get("started_at") or attempt.get("dispatched_at")
            if not isinstance(node, str) or not isinstance(start, int | float):
                continue
            end = attempt.get("ended_at")
            end = self.clock() if not isinstance(end, int | float) else end
            if node not in self.power.outlets.by_node:
                continue
            energy = await self.power.energy(node, float(start), float(end))
            rows.append(
                EnergyRow(node, float(start), float(end), energy, job_id, int(attempt.get("number", 0)))
            )
        return rows


def _attempts(data: Any) -> list[dict[str, Any]]:
    attempts = data.get("attempts", []) if isinstance(data, dict) else []
    return [a for a in attempts if isinstance(a, dict)]
