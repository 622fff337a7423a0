"""Which outlet powers which node, from the inventory (pure data, no I/O).

A node on a switch port is powered by that switch's PoE back end; a node with a ``bmc_port``
and no switch port by its BMC. Only these outlets may ever be switched: ``assigned`` is the
allow-list the manager checks before every request, so an uplink or an unassigned port is never
touched, whatever asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..inventory import Inventory
from .base import PowerError

__all__ = ["Outlet", "OutletMap", "bmc_device", "outlet_map"]


def bmc_device(bmc_port: str) -> str:
    """The back end name of the BMC on serial port ``bmc_port``."""
    return f"bmc:{bmc_port}"


@dataclass(frozen=True, slots=True, order=True)
class Outlet:
    device: str  # the back end: a switch's name, or "bmc:/dev/ttyACM0"
    port: int  # the switch port; 1 for a BMC

    @property
    def name(self) -> str:
        return self.device if self.device.startswith("bmc:") else f"{self.device}:{self.port}"


@dataclass(frozen=True, slots=True)
class OutletMap:
    by_node: dict[str, Outlet]
    uplinks: frozenset[tuple[str, int]]

    def outlet(self, node: str) -> Outlet:
        """The node's outlet; PowerError "not-assigned" if the inventory gives it none."""
        found = self.by_node.get(node)
        if found is None:
            raise PowerError(node, "not-assigned", "the inventory gives this node no switch port or BMC")
        return found

    def check(self, outlet: Outlet) -> None:
        """PowerError "not-assigned" unless ``outlet`` powers a node of the inventory."""
        if (outlet.device, outlet.port) in self.uplinks:
            raise PowerError(outlet.name, "not-assigned", "is an uplink port: never switched")
        if outlet not in self.assigned:
            raise PowerError(outlet.name, "not-assigned", "powers no node of the inventory: never switched")

    def node_of(self, outlet: Outlet) -> str:
        return next((n for n, o in self.by_node.items() if o == outlet), "")

    @property
    def assigned(self) -> frozenset[Outlet]:
        return frozenset(self.by_node.values())

    def nodes_on(self, device: str) -> list[tuple[str, Outlet]]:
        return sorted((n, o) for n, o in self.by_node.items() if o.device == device)

    def devices(self) -> list[str]:
        return sorted({o.device for o in self.by_node.values()})


def outlet_map(inventory: Inventory) -> OutletMap:
    by_node: dict[str, Outlet] = {}
    for node in inventory.nodes:
        if node.switch is not None and node.port is not None:
            by_node[node.name] = Outlet(node.switch, node.port)
        elif node.bmc_port is not None:
            by_node[node.name] = Outlet(bmc_device(node.bmc_port), 1)
    uplinks = frozenset((sw.name, p) for sw in inventory.switches for p in sw.uplink_ports)
    return OutletMap(by_node, uplinks)


def unique(nodes: Iterable[str]) -> list[str]:
    """``nodes`` in the order given, each once (a bulk action touches a node once)."""
    return list(dict.fromkeys(nodes))
