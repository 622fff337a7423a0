"""The simulated PoE switch's behaviour, without any I/O: ports, their powered devices, the PSE
budget, and the MIB view that the SNMP agent (``poe_switch.py``) serves.

Budget rule (what class-based PSEs do): walking ports in number order (port 1 has the highest
priority), every enabled port with a device reserves its class power (``max_w``); a port whose
reservation no longer fits the budget is denied power and reports ``otherFault``. Reserving the
class power rather than the momentary draw keeps a port from flapping as its load changes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "MAIN_PSE",
    "PETH_PORT",
    "SIM_PORT_POWER_MW",
    "Detection",
    "MibValue",
    "PoeSwitchModel",
    "SimPort",
]

OID = tuple[int, ...]

# POWER-ETHERNET-MIB (RFC 3621): pethPsePortEntry and pethMainPseEntry columns.
PETH_PORT: OID = (1, 3, 6, 1, 2, 1, 105, 1, 1, 1)  # .column.group.port
MAIN_PSE: OID = (1, 3, 6, 1, 2, 1, 105, 1, 3, 1, 1)  # .column.group
COL_ADMIN_ENABLE = 3
COL_PAIRS_CONTROL = 4
COL_POWER_PAIRS = 5
COL_DETECTION = 6
COL_PRIORITY = 7
COL_CLASSIFICATION = 11
MAIN_POWER, MAIN_OPER_STATUS, MAIN_CONSUMPTION, MAIN_THRESHOLD = 2, 3, 4, 5
# The simulated switch's own per-port power table, in mW, indexed group.port, under the
# enterprise number RFC 5612 reserves for documentation (no vendor's MIB is imitated).
SIM_PORT_POWER_MW: OID = (1, 3, 6, 1, 4, 1, 32473, 105, 1, 1, 2)
SYSTEM: OID = (1, 3, 6, 1, 2, 1, 1)
SIM_SYS_OBJECT_ID: OID = (1, 3, 6, 1, 4, 1, 32473, 105)


class Detection(enum.IntEnum):
    """pethPsePortDetectionStatus."""

    DISABLED = 1
    SEARCHING = 2
    DELIVERING_POWER = 3
    FAULT = 4
    TEST = 5
    OTHER_FAULT = 6


@dataclass(frozen=True, slots=True)
class MibValue:
    """One value in the MIB view: ``kind`` is the SMI type the agent encodes it as."""

    kind: str  # "int", "gauge", "str", "oid", "ticks"
    value: int | str | OID


@dataclass(slots=True)
class SimPort:
    admin_on: bool = True
    device: bool = True  # a powered device is plugged in
    idle_w: float = 2.5  # drawn at load 0
    max_w: float = 7.5  # drawn at load 1; what the budget reserves for the port
    load: float = 0.0
    draw: Callable[[], float] | None = None  # replaces the idle/load model when set
    fault: bool = False  # an injected hardware fault (short, overload): detection "fault"
    detection: Detection = Detection.SEARCHING


@dataclass
class PoeSwitchModel:
    """``ports`` ports on PSE group ``group`` with a budget of ``budget_w`` watts.

    ``consumption_in_mw`` reproduces a known firmware quirk: pethMainPseConsumptionPower in mW
    although the MIB says W.
    """

    ports: int
    budget_w: int = 370
    group: int = 1
    idle_w: float = 2.5
    max_w: float = 7.5
    consumption_in_mw: bool = False
    name: str = "sim-switch"
    # Ports whose pethPsePortAdminEnable the switch refuses to change (wrongValue), as a switch
    # does for a port its own configuration pins.
    locked: set[int] = field(default_factory=set)
    port_state: dict[int, SimPort] = field(init=False)
    _started: float = field(init=False, default_factory=time.monotonic)
    _oids: list[OID] = field(init=False)
    _columns: set[OID] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.ports <= 4096:
            raise ValueError(f"ports must be 1-4096, not {self.ports}")
        self.port_state = {p: SimPort(idle_w=self.idle_w, max_w=self.max_w) for p in range(1, self.ports + 1)}
        self._oids = sorted(self._all_oids())
        index_len = {PETH_PORT: 2, MAIN_PSE: 1, SIM_PORT_POWER_MW: 2, SYSTEM: 1}
        self._columns = {
            o[: -index_len[prefix]] for o in self._oids for prefix in index_len if o[: len(prefix)] == prefix
        }
        self.settle()

    # ---------------------------------------------------------------- behaviour

    def port(self, port: int) -> SimPort:
        try:
            return self.port_state[port]
        except KeyError:
            raise KeyError(f"{self.name} has no port {port} (1-{self.ports})") from None

    def settle(self) -> list[tuple[int, bool]]:
        """Recompute every port's detection status; returns the ports whose power went on or off."""
        changes: list[tuple[int, bool]] = []
        reserved = 0.0
        for number, p in self.port_state.items():
            was_on = p.detection is Detection.DELIVERING_POWER
            if not p.admin_on:
                p.detection = Detection.DISABLED
            elif not p.device:
                p.detection = Detection.SEARCHING
            elif p.fault:
                p.detection = Detection.FAULT
            elif reserved + p.max_w > self.budget_w:
                p.detection = Detection.OTHER_FAULT
            else:
                reserved += p.max_w
                p.detection = Detection.DELIVERING_POWER
            is_on = p.detection is Detection.DELIVERING_POWER
            if is_on != was_on:
                changes.append((number, is_on))
        return changes

    def set_admin(self, port: int, on: bool) -> list[tuple[int, bool]]:
        self.port(port).admin_on = on
        return self.settle()

    def set_device(self, port: int, present: bool) -> list[tuple[int, bool]]:
        self.port(port).device = present
        return self.settle()

    def set_fault(self, port: int, fault: bool) -> list[tuple[int, bool]]:
        self.port(port).fault = fault
        return self.settle()

    def set_budget(self, budget_w: int) -> list[tuple[int, bool]]:
        self.budget_w = budget_w
        return self.settle()

    def set_load(self, port: int, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"load of port {port} must be within 0..1, not {fraction}")
        self.port(port).load = fraction

    def set_draw(self, port: int, draw: Callable[[], float] | None) -> None:
        """Let whatever is attached to ``port`` say what it draws (watts), instead of the load model."""
        self.port(port).draw = draw

    def watts(self, port: int) -> float:
        p = self.port(port)
        if p.detection is not Detection.DELIVERING_POWER:
            return 0.0
        if p.draw is not None:
            return max(0.0, min(float(p.draw()), p.max_w))
        return p.idle_w + p.load * (p.max_w - p.idle_w)

    def consumption_w(self) -> float:
        return sum(self.watts(n) for n in self.port_state)

    # ---------------------------------------------------------------- MIB view

    def _all_oids(self) -> list[OID]:
        g = self.group
        oids: list[OID] = [(*SYSTEM, c, 0) for c in (1, 2, 3, 5)]
        for col in (COL_ADMIN_ENABLE, COL_PAIRS_CONTROL, COL_POWER_PAIRS, COL_DETECTION, COL_PRIORITY):
            oids += [(*PETH_PORT, col, g, p) for p in self.port_state]
        oids += [(*PETH_PORT, COL_CLASSIFICATION, g, p) for p in self.port_state]
        oids += [
            (*MAIN_PSE, col, g) for col in (MAIN_POWER, MAIN_OPER_STATUS, MAIN_CONSUMPTION, MAIN_THRESHOLD)
        ]
        oids += [(*SIM_PORT_POWER_MW, g, p) for p in self.port_state]
        return oids

    def oids(self) -> list[OID]:
        """Every OID the agent serves, in lexicographic order (fixed for the switch's life)."""
        return self._oids

    def known_column(self, oid: OID) -> bool:
        """Whether ``oid`` lies under an object this switch implements (noSuchInstance rather
        than noSuchObject when the instance is missing)."""
        return any(oid[:k] in self._columns for k in range(len(oid) + 1))

    def value(self, oid: OID) -> MibValue | None:
        """The value at ``oid`` now, or None where there is no such instance."""
        n = len(PETH_PORT)
        if oid[:n] == PETH_PORT and len(oid) == n + 3 and oid[n + 1] == self.group:
            p = self.port_state.get(oid[n + 2])
            col = oid[n]
            if p is None:
                return None
            if col == COL_ADMIN_ENABLE:
                return MibValue("int", 1 if p.admin_on else 2)
            if col == COL_PAIRS_CONTROL:
                return MibValue("int", 2)  # false: the pairs cannot be changed
            if col == COL_POWER_PAIRS:
                return MibValue("int", 1)  # signal
            if col == COL_DETECTION:
                return MibValue("int", int(p.detection))
            if col == COL_PRIORITY:
                return MibValue("int", 3)  # low
            if col == COL_CLASSIFICATION:
                return MibValue("int", 1 + (3 if p.device and p.admin_on else 0))  # class3 or class0
            return None
        n = len(MAIN_PSE)
        if oid[:n] == MAIN_PSE and len(oid) == n + 2 and oid[n + 1] == self.group:
            col = oid[n]
            if col == MAIN_POWER:
                return MibValue("gauge", self.budget_w)
            if col == MAIN_OPER_STATUS:
                return MibValue("int", 1)  # on
            if col == MAIN_CONSUMPTION:
                w = self.consumption_w()
                return MibValue("gauge", round(w * 1000) if self.consumption_in_mw else round(w))
            if col == MAIN_THRESHOLD:
                return MibValue("int", 80)
            return None
        n = len(SIM_PORT_POWER_MW)
        if oid[:n] == SIM_PORT_POWER_MW and len(oid) == n + 2 and oid[n] == self.group:
            if oid[n + 1] not in self.port_state:
                return None
            return MibValue("gauge", round(self.watts(oid[n + 1]) * 1000))
        if oid[: len(SYSTEM)] == SYSTEM and len(oid) == len(SYSTEM) + 2 and oid[-1] == 0:
            col = oid[len(SYSTEM)]
            if col == 1:
                return MibValue("str", f"Scalerunner simulated PoE switch, {self.ports} ports")
            if col == 2:
                return MibValue("oid", SIM_SYS_OBJECT_ID)
            if col == 3:
                return MibValue("ticks", int((time.monotonic() - self._started) * 100) & 0xFFFFFFFF)
            if col == 5:
                return MibValue("str", self.name)
        return None

    def admin_write(self, oid: OID) -> int | None:
        """The port whose pethPsePortAdminEnable ``oid`` names, or None if it names none."""
        n = len(PETH_PORT)
        if (
            oid[:n] == PETH_PORT
            and len(oid) == n + 3
            and oid[n] == COL_ADMIN_ENABLE
            and oid[n + 1] == self.group
            and oid[n + 2] in self.port_state
        ):
            return oid[n + 2]
        return None
