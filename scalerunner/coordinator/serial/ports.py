"""Which serial port is a node's BMC or LED indicator: its ``bmc_port``/``led_port`` in the inventory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import CoordinatorError
from ..inventory import Inventory

PortKey = Literal["bmc_port", "led_port"]


class NodePortError(CoordinatorError):
    """No port for ``node`` in the inventory ``path``: the node is unknown (``key`` None) or lacks ``key``."""

    def __init__(self, path: str, node: str, key: PortKey | None, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.node = node
        self.key = key


@dataclass(frozen=True)
class NodePort:
    """A node's device port and where it came from, for error messages."""

    node: str
    key: PortKey
    port: str
    source: str  # the inventory file

    def describe(self) -> str:
        return f"node {self.node} ({self.key} {self.port} in {self.source})"


def node_port(inventory: Inventory, node: str, key: PortKey, source: str) -> NodePort:
    """The port ``key`` of the node called ``node`` in ``inventory`` (read from the file ``source``)."""
    for i, n in enumerate(inventory.nodes):
        if n.name == node:
            port: str | None = getattr(n, key)
            if port is None:
                raise NodePortError(source, node, key, f"nodes[{i}] ({node}) has no {key}")
            return NodePort(node, key, port, source)
    known = ", ".join(n.name for n in inventory.nodes) or "none"
    raise NodePortError(source, node, None, f"no node named {node!r} (nodes: {known})")


__all__ = ["NodePort", "NodePortError", "PortKey", "node_port"]
