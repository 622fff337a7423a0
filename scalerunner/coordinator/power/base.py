"""The power interface: what every back end (PoE over SNMP, the BMC over serial) offers.

A back end switches *outlets*: a switch port, or a BMC's rail. The coordinator's power part maps
nodes to outlets through the inventory and never hands a back end an outlet the inventory does
not assign to a node (an uplink or an unassigned port is never switched). Every failure is a
``PowerError`` naming the outlet, so a bulk action can report per node what went wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ["OutletStatus", "PowerBackend", "PowerError", "PowerState"]


class PowerState(enum.Enum):
    """What an outlet is doing, as far as the back end can tell."""

    ON = "on"  # delivering power (PoE: deliveringPower; BMC: rail up)
    OFF = "off"  # admin-disabled or rail down
    SEARCHING = "searching"  # enabled, no powered device detected yet (PoE)
    FAULT = "fault"  # enabled but the device is not powered: overload, short, budget (PoE)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class OutletStatus:
    outlet: str  # "sw1:7" or "bmc:/dev/ttyACM0": names the thing at fault in errors
    admin_on: bool  # what the coordinator asked for
    state: PowerState
    watts: float | None  # drawn now, None where the back end cannot measure it
    detail: str = ""  # the raw status ("deliveringPower", "otherFault", ...)


class PowerError(Exception):
    """An outlet could not be read or switched. ``outlet`` names it; ``cause`` says why in a word
    a script can match ("timeout", "auth", "no-such-object", "wrong-value", "not-in-profile",
    "not-assigned", "fault", "unreachable")."""

    def __init__(self, outlet: str, cause: str, message: str) -> None:
        super().__init__(f"{outlet}: {message}")
        self.outlet = outlet
        self.cause = cause


class PowerBackend(Protocol):
    """One device that switches outlets: a PoE switch or one node's BMC. ``port`` is the outlet
    number on that device (a switch port; always 1 for a BMC)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_power(self, port: int, on: bool) -> None:
        """Ask for on or off; returns once the device accepted the request (not once it is done)."""
        ...

    async def status(self, ports: list[int]) -> dict[int, OutletStatus]:
        """The status of each port, read in as few requests as the device allows."""
        ...
