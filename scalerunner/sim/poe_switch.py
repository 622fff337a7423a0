"""A simulated managed PoE switch that is a real SNMP agent: a pysnmp command responder on UDP
(loopback), SNMP v2c and v3 (USM), serving the POWER-ETHERNET-MIB port and PSE tables and the
per-port power table of the ``scalerunner-sim`` profile from a ``PoeSwitchModel``.

Whatever is plugged into a port (the simulated rack: node agents, firmware) registers with
``on_port_change(callback)`` and is called with ``(port, on)`` when the port's power really goes
on or off (a SET of pethPsePortAdminEnable, a budget change, ...). A callback may return an
awaitable; it then runs as a task of the switch, awaited or cancelled at ``stop()``. What a
device draws comes from ``set_load(port, fraction)`` or ``set_draw(port, fn)``.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error
from pysnmp.smi.instrum import AbstractMibInstrumController

from ..coordinator.inventory import SnmpV3
from ..coordinator.power.snmp_auth import usm_protocols
from .poe_model import MibValue, PoeSwitchModel

__all__ = ["PortCallback", "SimPoeSwitch"]

log = logging.getLogger("scalerunner.sim.switch")

PortCallback = Callable[[int, bool], Awaitable[None] | None]


def _encode(v: MibValue) -> Any:
    if v.kind == "int":
        return rfc1902.Integer32(v.value)
    if v.kind == "gauge":
        return rfc1902.Gauge32(v.value)
    if v.kind == "str":
        return rfc1902.OctetString(str(v.value))
    if v.kind == "ticks":
        return rfc1902.TimeTicks(v.value)
    if v.kind == "oid":
        return rfc1902.ObjectIdentifier(v.value)
    raise AssertionError(v.kind)


class _Instrumentation(AbstractMibInstrumController):  # type: ignore[misc]
    """pysnmp's MIB hook: GET, GETNEXT (GETBULK is built on it) and SET over the model."""

    def __init__(self, switch: SimPoeSwitch) -> None:
        self.switch = switch

    def _check_size(self, var_binds: tuple[Any, ...]) -> None:
        limit = self.switch.max_varbinds
        if limit is not None and len(var_binds) > limit:
            raise smi_error.TooBigError(idx=0)

    def read_variables(self, *var_binds: Any, **_ctx: Any) -> list[tuple[Any, Any]]:
        self._check_size(var_binds)
        model = self.switch.model
        out = []
        for name, _ in var_binds:
            oid = tuple(name)
            v = model.value(oid)
            if v is not None:
                out.append((name, _encode(v)))
            else:
                out.append(
                    (name, rfc1905.noSuchInstance if model.known_column(oid) else rfc1905.noSuchObject)
                )
        return out

    def read_next_variables(self, *var_binds: Any, **_ctx: Any) -> list[tuple[Any, Any]]:
        model = self.switch.model
        oids = model.oids()
        out = []
        for name, _ in var_binds:
            i = bisect.bisect_right(oids, tuple(name))
            while i < len(oids):
                v = model.value(oids[i])
                if v is not None:
                    out.append((rfc1902.ObjectName(oids[i]), _encode(v)))
                    break
                i += 1
            else:
                out.append((name, rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        # Check every binding before changing anything: a SET is all or nothing.
        model = self.switch.model
        wanted: list[tuple[int, bool]] = []
        request = ctx["snmpEngine"].observer.get_execution_context("rfc3412.receiveMessage:request")
        read_only = str(request["securityName"]).startswith("sim-ro-")  # see SimPoeSwitch.start()
        for idx, (name, value) in enumerate(var_binds):
            if read_only:
                raise smi_error.NoAccessError(name=name, idx=idx)
            oid = tuple(name)
            port = model.admin_write(oid)
            if port is None:
                if model.value(oid) is not None:
                    raise smi_error.NotWritableError(name=name, idx=idx)
                raise smi_error.NoCreationError(name=name, idx=idx)
            if not isinstance(value, univ.Integer):
                raise smi_error.WrongTypeError(name=name, idx=idx)
            if int(value) not in (1, 2) or port in model.locked:
                raise smi_error.WrongValueError(name=name, idx=idx)
            wanted.append((port, int(value) == 1))
        for port, on in wanted:
            self.switch.set_admin(port, on)
        return [(name, value) for name, value in var_binds]


class SimPoeSwitch:
    """The agent: ``await start()`` binds ``host:port`` (0 picks a free port, see ``.port``)."""

    def __init__(
        self,
        model: PoeSwitchModel,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        communities: Iterable[str] = ("public",),
        read_only_communities: Iterable[str] = (),
        v3_users: Iterable[SnmpV3] = (),
        max_varbinds: int | None = None,
    ) -> None:
        self.model = model
        # Like switches that answer tooBig to a GET of more than this many objects.
        self.max_varbinds = max_varbinds
        self.host = host
        self.port = port
        self.communities = tuple(communities)
        self.read_only_communities = tuple(read_only_communities)
        self.v3_users = tuple(v3_users)
        self._callbacks: list[PortCallback] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._engine: engine.SnmpEngine | None = None
        self._sock: socket.socket | None = None

    # ---------------------------------------------------------------- what is attached

    def on_port_change(self, callback: PortCallback) -> None:
        """Call ``callback(port, on)`` whenever a port's power goes on or off."""
        self._callbacks.append(callback)

    def set_load(self, port: int, fraction: float) -> None:
        self.model.set_load(port, fraction)

    def set_draw(self, port: int, draw: Callable[[], float] | None) -> None:
        self.model.set_draw(port, draw)

    def set_admin(self, port: int, on: bool) -> None:
        """What a SET of pethPsePortAdminEnable does (also the switch's front panel)."""
        self._notify(self.model.set_admin(port, on))

    def set_device(self, port: int, present: bool) -> None:
        self._notify(self.model.set_device(port, present))

    def set_fault(self, port: int, fault: bool) -> None:
        self._notify(self.model.set_fault(port, fault))

    def set_budget(self, budget_w: int) -> None:
        self._notify(self.model.set_budget(budget_w))

    def _notify(self, changes: list[tuple[int, bool]]) -> None:
        for port, on in changes:
            log.info("port power", extra={"switch": self.model.name, "port": port, "on": on})
            for cb in self._callbacks:
                result = cb(port, on)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "port callback failed",
                exc_info=task.exception(),
                extra={"switch": self.model.name},
            )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"sim switch {self.model.name}: cannot bind {self.host}:{self.port}"
            ) from exc
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        eng = engine.SnmpEngine()
        config.add_transport(eng, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_server_mode(sock=sock))
        everything = (1, 3, 6)
        for i, community in enumerate(self.communities):
            config.add_v1_system(eng, f"sim-rw-{i}", community)
            config.add_vacm_user(eng, 2, f"sim-rw-{i}", "noAuthNoPriv", everything, everything)
        for i, community in enumerate(self.read_only_communities):
            config.add_v1_system(eng, f"sim-ro-{i}", community)
            config.add_vacm_user(eng, 2, f"sim-ro-{i}", "noAuthNoPriv", everything)
        for user in self.v3_users:
            auth, priv = usm_protocols(user)
            config.add_v3_user(eng, user.user, auth, user.auth_key, priv, user.priv_key)
            config.add_vacm_user(eng, 3, user.user, "authPriv", everything, everything)
        ctx = context.SnmpContext(eng)
        ctx.unregister_context_name(b"")
        ctx.register_context_name(b"", _Instrumentation(self))
        for responder in (
            cmdrsp.GetCommandResponder,
            cmdrsp.NextCommandResponder,
            cmdrsp.BulkCommandResponder,
            cmdrsp.SetCommandResponder,
        ):
            responder(eng, ctx)
        self._engine = eng
        log.info(
            "sim switch listening",
            extra={
                "switch": self.model.name,
                "address": f"{self.host}:{self.port}",
                "ports": self.model.ports,
            },
        )

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> SimPoeSwitch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
