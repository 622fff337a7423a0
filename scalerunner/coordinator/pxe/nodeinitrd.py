"""Each node's own settings as a small initrd, apart from the OS image (docs/netboot.md).

The image is one set of files for every node of a group; what differs per node travels in a
second initrd that the kernel unpacks over the first: ``/etc/scalerunner/agent.toml`` with the
cluster, the node's name, the broker as nodes reach it, labels and capacity. It carries no
secret: the agent gets its broker password by trading the one-time token on its kernel command
line. A node's settings change without rebuilding the image, and the image changes without
touching any node's settings.

``agent_toml`` and ``settings_archive`` are pure and deterministic (the same settings give the
same bytes); ``SettingsCache`` keeps the archives by content.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections import OrderedDict
from dataclasses import dataclass

from ...cpio import CpioEntry, newc_archive
from ..inventory import Node

__all__ = ["AGENT_TOML", "NodeSettings", "SettingsCache", "agent_toml", "settings_archive"]

AGENT_TOML = "etc/scalerunner/agent.toml"


@dataclass(frozen=True, slots=True)
class NodeSettings:
    cluster: str
    node: str
    broker_host: str  # as nodes reach it (the boot server's advertised address)
    broker_port: int
    labels: tuple[str, ...] = ()
    cpus: int | None = None
    memory_mb: int | None = None

    @classmethod
    def of(cls, node: Node, *, cluster: str, broker_host: str, broker_port: int) -> NodeSettings:
        return cls(
            cluster=cluster,
            node=node.name,
            broker_host=broker_host,
            broker_port=broker_port,
            labels=tuple(node.labels),
            cpus=node.cpus,
            memory_mb=node.memory_mb,
        )


def _s(text: str) -> str:
    # A JSON string is a TOML basic string (json.dumps escapes what TOML needs escaped).
    return json.dumps(text)


def agent_toml(s: NodeSettings) -> str:
    """The agent's configuration file (docs/agent.md) for this node, without any credential."""
    lines = [
        "# Written by the Scalerunner coordinator for this node's network boot. No secrets here:",
        "# the broker password comes from trading scalerunner.token= (kernel command line).",
        f"cluster = {_s(s.cluster)}",
        f"node = {_s(s.node)}",
        f"labels = [{', '.join(_s(label) for label in s.labels)}]",
        # The node image's init is busybox's: its reboot stops the agent (SIGTERM, so it says
        # offline) and restarts the machine, which boots from the network again.
        'reboot_command = ["/bin/busybox", "reboot"]',
        "",
        "[broker]",
        f"host = {_s(s.broker_host)}",
        f"port = {s.broker_port}",
    ]
    capacity = [f"cpus = {s.cpus}"] if s.cpus is not None else []
    capacity += [f"memory_mb = {s.memory_mb}"] if s.memory_mb is not None else []
    if capacity:
        lines += ["", "[capacity]", *capacity]
    return "\n".join(lines) + "\n"


def settings_archive(s: NodeSettings) -> bytes:
    """The settings initrd: a newc cpio archive holding ``/etc/scalerunner/agent.toml``."""
    d = stat.S_IFDIR | 0o755
    return newc_archive(
        [
            CpioEntry("etc", d),
            CpioEntry("etc/scalerunner", d),
            CpioEntry(AGENT_TOML, stat.S_IFREG | 0o644, agent_toml(s).encode()),
        ]
    )


class SettingsCache:
    """Settings archives by content (a node whose settings did not change gets the same bytes
    without re-encoding them); bounded, the least recently used dropped first."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._cache: OrderedDict[NodeSettings, tuple[bytes, str]] = OrderedDict()

    def get(self, s: NodeSettings) -> tuple[bytes, str]:
        """The archive and its sha256 (hex, an ETag)."""
        hit = self._cache.get(s)
        if hit is not None:
            self._cache.move_to_end(s)
            return hit
        data = settings_archive(s)
        entry = (data, hashlib.sha256(data).hexdigest())
        self._cache[s] = entry
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return entry
