"""The nodes part of the coordinator: the lifecycle core wired to the store, MQTT and the clock.

Every change goes through ``lifecycle.step`` (the decisions) and is written through the store
(the truth) together with its transitions, in one transaction, before anyone is told. Telemetry
is the exception that keeps the store quiet: a sample that changes no state only updates memory
and the store's per-minute summary, so 1000 nodes at 1 Hz do not cost 1000 fsyncs a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..protocol.mqtt import Command, NodeState
from ..protocol.mqtt import Telemetry as TelemetryPayload
from . import lifecycle as lc
from .api.models import EventView, HealthName, NodeView, RackPosition, TelemetryView
from .errors import NodeStateError, UnknownNode
from .health import Health
from .inventory import Inventory, Node
from .store import Event, NodeRecord, Store

log = logging.getLogger("scalerunner.coordinator.nodes")

CommandSender = Callable[[str, Command], Any]  # async (node, command) -> Reply
# Carries out one kind of lifecycle action (power, the job queue, health checks): async (action) -> None.
# It raises to say the action failed; the failure is recorded as an event naming the node.
ActionHandler = Callable[[Any], Awaitable[None]]


def to_store(rec: lc.NodeRecord) -> NodeRecord:
    data = {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(rec).items()}
    data["jobs"] = list(rec.jobs)
    return NodeRecord(
        name=rec.name,
        state=rec.state.value,
        health=rec.health.value,
        health_reason=rec.health_reason,
        conn_seq=rec.conn_seq or 0,
        state_since=rec.since,
        last_telemetry=rec.last_telemetry_at,
        recovery_attempts=rec.recoveries,
        data=data,
    )


def from_store(row: NodeRecord) -> lc.NodeRecord:
    known = {f.name for f in dataclasses.fields(lc.NodeRecord)}
    data = {k: v for k, v in row.data.items() if k in known}
    data["name"] = row.name
    data["state"] = lc.NodeLifecycle(row.state)
    data["health"] = Health(row.health)
    data["jobs"] = tuple(data.get("jobs", ()))
    return lc.NodeRecord(**data)


def _events(transitions: list[lc.Transition]) -> list[Event]:
    return [
        Event(node=t.node, axis=t.axis, old=t.old, new=t.new, reason=t.reason, at=t.at) for t in transitions
    ]


class NodeManager:
    """Holds every node's lifecycle record; implements the API's ``NodeService``."""

    def __init__(
        self,
        inventory: Inventory,
        store: Store,
        *,
        config: lc.LifecycleConfig,
        send_command: CommandSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.config = config
        self.send_command = send_command
        self.clock = clock
        self.records: dict[str, lc.NodeRecord] = {}
        self.telemetry: dict[str, tuple[TelemetryPayload, float]] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._next_wake: float | None = None  # when the ticker will look again
        self._task: asyncio.Task[None] | None = None
        self._names = {n.name for n in inventory.nodes}
        self._commanding: set[str] = set()  # nodes with an operator's drain/undrain in flight
        self._syncs: set[asyncio.Task[None]] = set()
        self._handlers: dict[type, ActionHandler] = {}

    def handle(self, kind: type, handler: ActionHandler) -> None:
        """Let ``handler`` carry out lifecycle actions of type ``kind`` (``lc.SwitchPower``,
        ``lc.PowerCycle``, ``lc.RequeueJobs``, ``lc.RunHealthCheck``). Each part registers its own
        when the coordinator is composed; an action nobody handles is recorded as not carried out.
        The handler is awaited inside the lifecycle step that asked for it (the ticker too), so one
        that takes seconds (a power-cycle's off time) starts its own task and returns."""
        self._handlers[kind] = handler

    def known(self, name: str) -> bool:
        return name in self._names

    async def start(self) -> None:
        stored = {row.name: row for row in await self.store.list_nodes()}
        now = self.clock()
        for node in self.inventory.nodes:
            await self._admit(node, stored.get(node.name), now)
        self._task = asyncio.create_task(self._ticker(), name="nodes-ticker")

    async def add_node(self, node: Node, inventory: Inventory) -> None:
        """A node joined at runtime (an enrolled machine): it gets its record (off, health
        unknown) as an inventory node does at start, and MQTT messages from it are taken."""
        async with self._lock:
            self.inventory = inventory
            await self._admit(node, await self.store.get_node(node.name), self.clock())
            self._names.add(node.name)
        self._wake.set()

    async def _admit(self, node: Node, row: NodeRecord | None, now: float) -> None:
        # The inventory, not the store, says whether anything can switch the node's power.
        control = (node.switch is not None and node.port is not None) or node.bmc_port is not None
        if row is not None:
            # The link starts up: LinkDown/LinkUp come from this run's MQTT link.
            rec = dataclasses.replace(
                from_store(row), link_down=False, link_up_at=None, power_control=control
            )
            if rec.state in lc.CONNECTED:
                # Nothing was heard while the coordinator was down: count a connected node's
                # silence from this start, or a restart would declare every node lost (and
                # re-queue and power-cycle the busy ones).
                rec = dataclasses.replace(rec, online_at=max(rec.online_at or 0.0, now))
            self.records[node.name] = rec
            return
        rec = dataclasses.replace(lc.new_node(node.name, now), power_control=control)
        self.records[node.name] = rec
        await self.store.apply(
            to_store(rec),
            [
                Event(
                    node=node.name, axis="state", old="", new=rec.state.value, reason=rec.state_reason, at=now
                )
            ],
        )

    async def stop(self) -> None:
        for task in [self._task, *self._syncs]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # keep the newest telemetry times for the next start
        async with self._lock:
            for rec in self.records.values():
                await self.store.apply(to_store(rec))

    # -- the decisions, applied --

    async def _step(self, name: str, event: lc.Event) -> lc.NodeRecord:
        async with self._lock:
            old = self.records[name]
            new, transitions, actions = lc.step(old, event, self.config)  # may raise: nothing changed
            quiet = isinstance(event, lc.Telemetry | lc.Tick | lc.LinkDown | lc.LinkUp) and not transitions
            if new != old and not (quiet and _only_telemetry_moved(old, new)):
                await self.store.apply(to_store(new), _events(transitions))
            self.records[name] = new
        for t in transitions:
            log.info(
                "%s %s: %s -> %s (%s)",
                name,
                t.axis,
                t.old,
                t.new,
                t.reason,
                extra={"node": name, "axis": t.axis, "old": t.old, "new": t.new},
            )
        for action in actions:
            await self._act(action)
        # Wake the ticker only when this node now needs a tick before the ticker's next wake-up.
        # Telemetry only pushes deadlines later, so at 1000 nodes x 1 Hz the ticker stays asleep
        # instead of scanning every node on every message.
        deadline = lc.next_deadline(new, self.config)
        if deadline is not None and (self._next_wake is None or deadline < self._next_wake):
            self._wake.set()
        return new

    async def _act(self, action: lc.Action) -> None:
        now = self.clock()
        what = type(action).__name__
        detail = getattr(action, "reason", "")
        handler = self._handlers.get(type(action))
        if handler is None:
            # The need is recorded where an operator sees it.
            await self._record_action(
                action.node, what, f"{detail} (not carried out: no back end for it is configured)", now
            )
            log.warning(
                "%s needs %s; no back end is configured", action.node, what, extra={"node": action.node}
            )
            return
        try:
            await handler(action)
        except Exception as exc:  # a failed action is an event, never a crashed lifecycle step
            await self._record_action(action.node, what, f"{detail} (failed: {exc})", self.clock())
            log.warning("%s: %s failed: %s", action.node, what, exc, extra={"node": action.node})

    async def _record_action(self, node: str, what: str, reason: str, at: float) -> None:
        await self.store.apply(
            None, [Event(node=node, axis="action", old="", new=what, reason=reason, at=at)]
        )

    async def _ticker(self) -> None:
        while True:
            now = self.clock()
            due = [(lc.next_deadline(r, self.config), n) for n, r in self.records.items()]
            fired = False
            for deadline, name in due:
                if deadline is not None and deadline <= now:
                    await self._step(name, lc.Tick(at=now))
                    fired = True
            if fired:  # a Tick sets new deadlines (a recovery's back-off): look at them, not the old ones
                due = [(lc.next_deadline(r, self.config), n) for n, r in self.records.items()]
            pending = [d for d, _ in due if d is not None and d > now]
            wait = max(min(pending) - now if pending else 60.0, 0.05)
            self._next_wake = now + wait
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def apply_event(self, name: str, event: lc.Event) -> lc.NodeRecord:
        """Step ``name``'s lifecycle with an event another part brings (an operator's PowerOn,
        PowerOff or Reboot from the power part); UnknownNode/NodeStateError change nothing."""
        self._record(name)
        return await self._step(name, event)

    # -- MQTT ingest --

    async def on_state(self, state: NodeState) -> None:
        held = self.records[state.node].conn_seq
        rec = await self._step(state.node, lc.AgentState.from_payload(state, self.clock()))
        if state.status == "online" and state.conn_seq != held and rec.conn_seq == state.conn_seq:
            self._sync_drain(rec, state.draining)

    def _sync_drain(self, rec: lc.NodeRecord, agent_draining: bool) -> None:
        """A new connection whose draining flag is not the drain the coordinator holds (the agent
        restarted and forgot it, or was undrained while away): tell it again. In a task: the
        reply comes through the MQTT loop that is calling us."""
        held = rec.drain_reason is not None
        if held == agent_draining or rec.name in self._commanding or self.send_command is None:
            return
        cmd = Command(cmd="drain" if held else "undrain", args={"reason": rec.drain_reason or "not drained"})
        task = asyncio.create_task(self._resend(rec.name, cmd), name=f"sync-drain-{rec.name}")
        self._syncs.add(task)
        task.add_done_callback(self._syncs.discard)

    async def _resend(self, name: str, cmd: Command) -> None:
        try:
            await self._command(name, cmd)
        except Exception as exc:  # a task of its own: nobody else would see the failure
            log.warning("cannot tell %s to %s again: %s", name, cmd.cmd, exc, extra={"node": name})
        else:
            log.info("%s told to %s again after reconnecting", name, cmd.cmd, extra={"node": name})

    async def on_link(self, up: bool) -> None:
        """The coordinator's own MQTT connection went down or came back (``lc.LinkDown``/``LinkUp``):
        while it is down no node is judged by its silence; after it, each has a grace to be heard."""
        now = self.clock()
        event: lc.Event = lc.LinkUp(at=now) if up else lc.LinkDown(at=now)
        for name in list(self.records):
            await self._step(name, event)
        self._wake.set()
        log.info(
            "MQTT link %s: %s", "up" if up else "down", "grace for every node" if up else "silence not judged"
        )

    async def on_telemetry(self, tele: TelemetryPayload) -> None:
        now = self.clock()
        self.store.add_telemetry(tele.node, now, tele.load1, tele.cpu_pct, tele.mem_used_mb, tele.temp_c)
        self.telemetry[tele.node] = (tele, now)
        await self._step(tele.node, lc.Telemetry.from_payload(tele, now))

    # -- NodeService --

    def _record(self, name: str) -> lc.NodeRecord:
        rec = self.records.get(name)
        if rec is None:
            raise UnknownNode(name)
        return rec

    def view(self, name: str) -> NodeView:
        rec = self._record(name)
        inv = self.inventory.node(name)
        tele_view = None
        if name in self.telemetry:
            t, at = self.telemetry[name]
            tele_view = TelemetryView(
                ts=t.ts,
                load1=t.load1,
                cpu_pct=t.cpu_pct,
                mem_used_mb=t.mem_used_mb,
                mem_total_mb=t.mem_total_mb,
                temp_c=t.temp_c,
                age_s=max(self.clock() - at, 0.0),
            )
        return NodeView(
            name=name,
            state=rec.state.value,
            health=rec.health.value,
            health_reason=rec.health_reason,
            arch=inv.arch,
            labels=list(inv.labels),
            mac=inv.mac,
            switch=inv.switch,
            port=inv.port,
            rack=RackPosition(row=inv.rack.row, position=inv.rack.position) if inv.rack else None,
            state_since=rec.since,
            conn_seq=rec.conn_seq or 0,
            telemetry=tele_view,
        )

    def views(self) -> list[NodeView]:
        return [self.view(n.name) for n in self.inventory.nodes]

    async def list_nodes(self) -> list[NodeView]:
        return self.views()

    async def get_node(self, name: str) -> NodeView:
        return self.view(name)

    async def _command(self, name: str, cmd: Command) -> str:
        if self.send_command is None:
            return "no MQTT link"
        reply = await self.send_command(name, cmd)
        return str(getattr(reply, "error", "") or "")

    async def drain(self, name: str, reason: str) -> str:
        rec = self._record(name)
        lc.step(rec, lc.Drain(at=self.clock(), reason=reason), self.config)  # refuse before telling the agent
        self._commanding.add(name)
        try:
            detail = await self._command(name, Command(cmd="drain", args={"reason": reason}))
            await self._step(name, lc.Drain(at=self.clock(), reason=reason))
        finally:
            self._commanding.discard(name)
        return detail

    async def undrain(self, name: str, reason: str) -> str:
        rec = self._record(name)
        lc.step(rec, lc.Undrain(at=self.clock(), reason=reason), self.config)
        self._commanding.add(name)
        try:
            # An agent that is away is told when it reconnects (_sync_drain); the held drain is
            # cleared now, as docs/lifecycle.md says, not after a command that cannot arrive.
            detail = ""
            if rec.state in lc.CONNECTED:
                detail = await self._command(name, Command(cmd="undrain", args={"reason": reason}))
            elif rec.drain_reason is not None:
                detail = "its agent is not connected: it is told when it reconnects"
            await self._step(name, lc.Undrain(at=self.clock(), reason=reason))
        finally:
            self._commanding.discard(name)
        return detail

    async def identify(self, name: str) -> str:
        return await self._operator_command(name, Command(cmd="identify"), "operator request")

    async def reboot(self, name: str, reason: str) -> str:
        """Ask the agent to reboot its node (its reboot_command); the node then goes offline
        through its Will and comes back online by itself."""
        return await self._operator_command(name, Command(cmd="reboot", args={"reason": reason}), reason)

    async def _operator_command(self, name: str, cmd: Command, reason: str) -> str:
        rec = self._record(name)
        if not rec.conn_online:
            # refuse at once rather than wait out the command timeout
            raise NodeStateError(name, rec.state.value, f"cannot {cmd.cmd}: its agent is not connected")
        detail = await self._command(name, cmd)
        event = Event(node=name, axis="command", old="", new=cmd.cmd, reason=reason, at=self.clock())
        await self.store.apply(None, [event])
        return detail

    async def set_health(self, name: str, health: HealthName, reason: str) -> NodeView:
        self._record(name)
        await self._step(name, lc.SetHealth(at=self.clock(), health=Health(health), reason=reason))
        return self.view(name)

    async def check_result(self, name: str, passed: bool, log_ref: str) -> None:
        """A health check job ended (the jobs part reports it): pass -> good, fail -> bad."""
        self._record(name)
        await self._step(name, lc.HealthCheckResult(at=self.clock(), passed=passed, log_ref=log_ref))

    async def events(self, node: str | None, after_id: int | None, limit: int) -> list[EventView]:
        if node is not None:
            self._record(node)
        rows = await self.store.list_events(node=node, after_id=after_id, limit=limit)
        return [
            EventView(id=r.id, at=r.at, node=r.node, axis=r.axis, old=r.old, new=r.new, reason=r.reason)
            for r in rows
        ]


def _only_telemetry_moved(old: lc.NodeRecord, new: lc.NodeRecord) -> bool:
    """Nothing an operator or a restart needs changed: telemetry times, or the link flags."""
    unchanged = dataclasses.replace(
        new,
        last_telemetry_at=old.last_telemetry_at,
        reported=old.reported,
        link_down=old.link_down,
        link_up_at=old.link_up_at,
    )
    return unchanged == old
