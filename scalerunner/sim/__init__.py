"""The software twin of the rack: devices that cannot exist on this machine, built as real
network agents (a managed PoE switch speaking SNMP over UDP, ...), so the coordinator talks to
them exactly as it talks to the hardware."""

from __future__ import annotations

from .poe_model import Detection, PoeSwitchModel
from .poe_switch import SimPoeSwitch

__all__ = ["Detection", "PoeSwitchModel", "SimPoeSwitch"]
