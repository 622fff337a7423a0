"""The ``snmp-poe`` back end: a PoE switch's ports switched and read over SNMP (pysnmp 7, asyncio).

Control is RFC 3621's pethPsePortAdminEnable (1 on, 2 off), state its pethPsePortDetectionStatus,
per-port watts the profile's vendor column (``profiles.py``), all normalised to watts. SNMP v2c
or v3 authPriv, address, UDP port and PSE group come from the inventory's ``Switch``.

``status()`` reads every asked-for port in one GET (split only if the switch answers tooBig),
built on pysnmp's command generator with raw OIDs, so no MIB is loaded or looked up. A GETBULK
down the columns was tried and measured slower: agents cap a bulk answer (pysnmp's and snmpsim's
at 64 objects), so 42 ports took two round trips instead of one.

Every failure is a ``PowerError`` naming the switch and port, with a cause a script can match:
``timeout`` (no answer; in v2c a wrong community is also silence), ``auth`` (a v3 report:
unknown user, wrong digest, undecryptable), ``no-such-object`` (the switch lacks the OID or
the port), ``wrong-value`` (a SET refused), ``not-in-profile`` (the port cannot be addressed
under the profile), ``unreachable`` (the address cannot be resolved or used) and
``device-error`` (genErr and the like).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.hlapi.v3arch.asyncio import CommunityData, UdpTransportTarget, UsmUserData
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.proto import errind, rfc1902, rfc1905

from ..inventory import SnmpV2c, Switch
from .base import OutletStatus, PowerError, PowerState
from .profiles import Profile, parse_oid, to_watts
from .snmp_auth import usm_protocols

__all__ = ["DETECTION", "PseStatus", "SnmpPoeBackend"]

log = logging.getLogger("scalerunner.power.snmp")

OID = tuple[int, ...]

# pethPsePortDetectionStatus -> what the power part acts on.
DETECTION: dict[int, tuple[PowerState, str]] = {
    1: (PowerState.OFF, "disabled"),
    2: (PowerState.SEARCHING, "searching"),
    3: (PowerState.ON, "deliveringPower"),
    4: (PowerState.FAULT, "fault"),
    5: (PowerState.UNKNOWN, "test"),
    6: (PowerState.FAULT, "otherFault"),
}

_NO_SUCH = {"noSuchName", "notWritable", "noCreation", "inconsistentName"}
_WRONG_VALUE = {"wrongValue", "wrongType", "wrongLength", "wrongEncoding", "badValue", "inconsistentValue"}
_AUTH_STATUS = {"noAccess", "authorizationError", "readOnly"}
_AUTH_INDICATIONS = (
    errind.UnknownUserName,
    errind.WrongDigest,
    errind.DecryptionError,
    errind.UnknownSecurityName,
    errind.UnsupportedSecurityLevel,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.NotInTimeWindow,
    errind.UnknownEngineID,
)


@dataclass(frozen=True, slots=True)
class PseStatus:
    """The PSE (power sourcing equipment) of one group: its budget and what it delivers now."""

    budget_w: float
    consumption_w: float


class _Answer:
    """What one request came back with."""

    __slots__ = ("error", "index", "status", "var_binds")

    def __init__(self, error: Any, status: str, index: int, var_binds: Sequence[tuple[Any, Any]]) -> None:
        self.error = error
        self.status = status
        self.index = index
        self.var_binds = var_binds


class SnmpPoeBackend:
    """One managed PoE switch. ``timeout`` is per try; a request is tried ``retries + 1`` times."""

    def __init__(
        self,
        switch: Switch,
        profile: Profile,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        max_varbinds: int = 128,
    ) -> None:
        self.switch = switch
        self.profile = profile
        self.name = switch.name
        self.timeout = timeout
        self.retries = retries
        self.max_varbinds = max_varbinds
        self._engine: SnmpEngine | None = None
        self._target = ""
        g = switch.pse_group
        peth = profile.peth
        self._admin = parse_oid(peth.admin_enable)
        self._detection = parse_oid(peth.detection_status)
        self._main_power = (*parse_oid(peth.main_power), g)
        self._main_consumption = (*parse_oid(peth.main_consumption), g)
        self._watts = parse_oid(profile.port_power.oid) if profile.port_power else None

    def outlet(self, port: int) -> str:
        return f"{self.switch.name}:{port}"

    @property
    def where(self) -> str:
        return f"{self.switch.address}:{self.switch.port}"

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        engine = SnmpEngine()
        snmp = self.switch.snmp
        auth: CommunityData | UsmUserData
        if isinstance(snmp, SnmpV2c):
            auth = CommunityData(snmp.community, mpModel=1)
        else:
            auth_proto, priv_proto = usm_protocols(snmp)
            auth = UsmUserData(
                snmp.user, snmp.auth_key, snmp.priv_key, authProtocol=auth_proto, privProtocol=priv_proto
            )
        try:
            target = await UdpTransportTarget.create(
                (self.switch.address, self.switch.port), timeout=self.timeout, retries=self.retries
            )
        except Exception as exc:
            engine.close_dispatcher()
            raise PowerError(self.switch.name, "unreachable", f"cannot use {self.where}: {exc}") from exc
        self._target, _ = CommandGeneratorLcdConfigurator().configure(engine, auth, target, b"")
        self._engine = engine

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    # ---------------------------------------------------------------- the interface

    async def set_power(self, port: int, on: bool) -> None:
        index = self._port_index(port)
        oid = (*self._admin, *index)
        answer = await self._request("set", [(oid, rfc1902.Integer32(1 if on else 2))])
        self._check(answer, [port], "set pethPsePortAdminEnable")
        value = answer.var_binds[0][1] if answer.var_binds else None
        if value is not None and _is_absent(value):
            raise PowerError(
                self.outlet(port), "no-such-object", f"no pethPsePortAdminEnable.{_dotted(index)}"
            )
        log.info("port power set", extra={"switch": self.name, "port": port, "on": on})

    async def status(self, ports: list[int]) -> dict[int, OutletStatus]:
        if not ports:
            return {}
        oids: list[OID] = []
        columns = 3 if self._watts else 2
        for port in ports:
            index = self._port_index(port)
            oids += [(*self._admin, *index), (*self._detection, *index)]
            if self._watts is not None:
                oids.append((*self._watts, *self._watts_index(port)))
        values = await self._get_many(oids, ports, columns)
        out: dict[int, OutletStatus] = {}
        missing: list[tuple[int, OID]] = []
        for i, port in enumerate(ports):
            row = values[i * columns : (i + 1) * columns]
            for oid, value in zip(oids[i * columns : (i + 1) * columns], row, strict=True):
                if _is_absent(value):
                    missing.append((port, oid))
            if any(p == port for p, _ in missing):
                continue
            admin, detection = int(row[0]), int(row[1])
            state, detail = DETECTION.get(detection, (PowerState.UNKNOWN, f"status {detection}"))
            watts = None
            if self.profile.port_power is not None:
                watts = to_watts(int(row[2]), self.profile.port_power.unit)
            out[port] = OutletStatus(self.outlet(port), admin == 1, state, watts, detail)
        if missing:
            port, oid = missing[0]
            others = sorted({p for p, _ in missing} - {port})
            also = f" (also ports {', '.join(map(str, others))})" if others else ""
            raise PowerError(
                self.outlet(port),
                "no-such-object",
                f"{self.where} has no {_dotted(oid)} (profile {self.profile.name!r}){also}",
            )
        return out

    async def pse(self) -> PseStatus:
        """The PSE's budget and present consumption, in watts (the profile's unit quirk applied)."""
        oids = [self._main_power, self._main_consumption]
        values = await self._get_many(oids, [], 2)
        for oid, value in zip(oids, values, strict=True):
            if _is_absent(value):
                raise PowerError(self.name, "no-such-object", f"{self.where} has no {_dotted(oid)}")
        return PseStatus(
            float(int(values[0])), to_watts(int(values[1]), self.profile.peth.main_consumption_unit)
        )

    # ---------------------------------------------------------------- SNMP

    def _port_index(self, port: int) -> OID:
        why = self.profile.check_port(port)
        if why is not None:
            raise PowerError(self.outlet(port), "not-in-profile", why)
        return self.profile.peth.port_index(self.switch.pse_group, port)

    def _watts_index(self, port: int) -> OID:
        assert self.profile.port_power is not None
        return self.profile.port_power.port_index(self.switch.pse_group, port)

    async def _get_many(self, oids: list[OID], ports: list[int], columns: int) -> list[Any]:
        """GET ``oids`` in as few requests as the switch allows: all at once, in parallel chunks
        of ``max_varbinds``, halved when the switch answers tooBig."""
        size = max(columns, self.max_varbinds - self.max_varbinds % columns)
        while True:
            chunks = [oids[i : i + size] for i in range(0, len(oids), size)]
            answers = await asyncio.gather(
                *(self._request("get", [(o, rfc1902.Null()) for o in chunk]) for chunk in chunks)
            )
            if any(a.status == "tooBig" for a in answers) and size > columns:
                size = max(columns, (size // 2) - (size // 2) % columns)
                continue
            values: list[Any] = []
            for chunk_no, (chunk, answer) in enumerate(zip(chunks, answers, strict=True)):
                first = chunk_no * size
                chunk_ports = ports[first // columns : (first + len(chunk)) // columns] if ports else []
                self._check(answer, chunk_ports, "get", columns)
                if len(answer.var_binds) != len(chunk):
                    raise PowerError(
                        self.name,
                        "device-error",
                        f"{self.where} answered {len(answer.var_binds)} of {len(chunk)}",
                    )
                values += [value for _, value in answer.var_binds]
            return values

    def _check(self, answer: _Answer, ports: list[int], what: str, columns: int = 1) -> None:
        """Raise the PowerError that ``answer`` means, naming the port it is about."""
        if answer.error is None and not answer.status:
            return
        port = None
        if ports:
            port = ports[min(len(ports) - 1, max(0, answer.index - 1) // columns)]
        outlet = self.outlet(port) if port is not None else self.name
        if answer.error is not None:
            err = answer.error
            if isinstance(err, errind.RequestTimedOut):
                hint = (
                    " (in SNMP v2c, a wrong community is silence too)"
                    if isinstance(self.switch.snmp, SnmpV2c)
                    else ""
                )
                raise PowerError(
                    outlet,
                    "timeout",
                    f"{what}: no answer from {self.where} in {self.retries + 1} x {self.timeout:g} s{hint}",
                )
            if isinstance(err, _AUTH_INDICATIONS):
                raise PowerError(
                    outlet, "auth", f"{what}: {self.where} refused the SNMPv3 credentials: {err}"
                )
            raise PowerError(outlet, "unreachable", f"{what}: {self.where}: {err}")
        status = answer.status
        if status in _NO_SUCH:
            cause = "no-such-object"
        elif status in _WRONG_VALUE:
            cause = "wrong-value"
        elif status in _AUTH_STATUS:
            cause = "auth"
        else:
            cause = "device-error"
        raise PowerError(outlet, cause, f"{what}: {self.where} answered {status} (index {answer.index})")

    async def _request(self, kind: str, var_binds: list[tuple[OID, Any]]) -> _Answer:
        engine = self._engine
        if engine is None:
            raise PowerError(self.name, "unreachable", "the SNMP back end is not started")
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()

        def done(
            _engine: Any, _handle: Any, error: Any, status: Any, index: Any, vbs: Any, _ctx: Any
        ) -> None:
            if not future.done():
                name = status.prettyPrint() if status else ""
                future.set_result(_Answer(error, name, int(index or 0), list(vbs or ())))

        generator = cmdgen.SetCommandGenerator() if kind == "set" else cmdgen.GetCommandGenerator()
        raw = [(rfc1902.ObjectName(oid), value) for oid, value in var_binds]
        generator.send_varbinds(engine, self._target, None, b"", raw, done)
        return await future


def _is_absent(value: Any) -> bool:
    return isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance | rfc1905.EndOfMibView)


def _dotted(oid: OID) -> str:
    return ".".join(map(str, oid))
