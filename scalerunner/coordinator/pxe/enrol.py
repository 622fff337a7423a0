"""Enrolment of machines that network-boot with a MAC no node has (docs/netboot.md, "Enrolment").

The core, without I/O: ``node_arch`` maps what iPXE says of itself (``${buildarch}``) to a node
arch, ``enrolled_name`` picks a free name from a prefix and the MAC, ``merge`` adds enrolled
nodes to the inventory (the inventory wins any clash). The shell: ``EnrolledNodes`` keeps them in
``state/enrolled-nodes.toml`` (``[[nodes]]`` entries, written atomically, 0600), and ``Enroller``
turns an unknown MAC into a node through the coordinator's ``add_node``.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import tomli_w

from ...atomic import atomic_write
from ..errors import ConfigError
from ..inventory import Arch, BootConfig, Inventory, Node, inventory_from_dict, normalise_mac

__all__ = [
    "ENROLLED_FILE",
    "EnrolOutcome",
    "EnrolledNodes",
    "Enroller",
    "enrolled_name",
    "merge",
    "node_arch",
]

log = logging.getLogger("scalerunner.coordinator.pxe.enrol")

ENROLLED_FILE = "enrolled-nodes.toml"  # in the coordinator's state dir
# iPXE's ${buildarch} -> node arch. An i386 iPXE (the BIOS undionly.kpxe) runs on amd64 machines too.
_ARCHES: dict[str, Arch] = {"x86_64": "amd64", "i386": "amd64", "arm64": "arm64", "riscv64": "riscv64"}
_HEADER = b"""\
# Machines the coordinator enrolled when they network-booted ([boot] enroll = true,
# docs/netboot.md). Written by the coordinator: edit it only while the coordinator is stopped.
# Each [[nodes]] entry is an inventory entry: move it into scalerunner.toml to keep the node
# there (the inventory wins over this file for a name or a MAC both hold).

"""


def node_arch(buildarch: str | None) -> Arch | None:
    """The node arch of an iPXE build (``x86_64``, ``i386``, ``arm64``, ``riscv64``); None for
    anything else, a missing value, or the unexpanded ``${buildarch}`` of an older URL."""
    return _ARCHES.get(buildarch or "")


def enrolled_name(prefix: str, mac: str, taken: Container[str]) -> str:
    """``prefix`` + the last three bytes of ``mac`` (``node-3a5f01``), or with ``-2``, ``-3``, ...
    after it while that name is ``taken``. ``prefix`` follows BootConfig's rule (at most 50 of
    a-z, 0-9, '-'), so the result is a valid node name."""
    base = prefix + mac.replace(":", "")[-6:]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def merge(inventory: Inventory, enrolled: Iterable[Node]) -> tuple[Inventory, list[str]]:
    """The inventory with the enrolled nodes added, and why any was left out: a node whose name
    or MAC an inventory node already has stays out (the inventory wins)."""
    names = {n.name for n in inventory.nodes}
    macs = {n.mac for n in inventory.nodes}
    added: list[Node] = []
    skipped: list[str] = []
    for node in enrolled:
        if node.name in names:
            skipped.append(f"enrolled node {node.name} ({node.mac}): the inventory has a node of that name")
        elif node.mac in macs:
            skipped.append(f"enrolled node {node.name}: the inventory has a node with its MAC {node.mac}")
        else:
            added.append(node)
            names.add(node.name)
            macs.add(node.mac)
    if not added:
        return inventory, skipped
    return msgspec.structs.replace(inventory, nodes=(*inventory.nodes, *added)), skipped


def _entry(node: Node) -> dict[str, Any]:
    """A node as a ``[[nodes]]`` table: the keys it sets (TOML has no null)."""
    data: dict[str, Any] = msgspec.to_builtins(node)
    return {k: v for k, v in data.items() if v is not None}


class EnrolledNodes:
    """``state/enrolled-nodes.toml``: read at start, rewritten whole on every enrolment."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ENROLLED_FILE

    def load(self, cluster: str) -> tuple[Node, ...]:
        """The enrolled nodes; none if the file does not exist. ConfigError naming this file and
        the key at fault (``nodes[2].mac``) for anything the inventory would refuse."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(self.path), "", f"cannot read: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(self.path), "", f"TOML syntax error: {exc}") from exc
        extra = sorted(set(data) - {"nodes"})
        if extra:
            raise ConfigError(str(self.path), extra[0], "unknown key; this file holds only [[nodes]] entries")
        # The inventory's own rules (names, MACs, arch, labels; unique within the file).
        inv = inventory_from_dict({"cluster": {"name": cluster}, "nodes": data.get("nodes", [])}, self.path)
        return inv.nodes

    def save(self, nodes: Iterable[Node]) -> None:
        body = tomli_w.dumps({"nodes": [_entry(n) for n in nodes]}).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, _HEADER + body, mode=0o600)


@dataclass(frozen=True, slots=True)
class EnrolOutcome:
    """A node (enrolled now, or already known), or why the machine was not enrolled."""

    node: Node | None
    refusal: str = ""


class Enroller:
    """Turns an unknown MAC into a node. ``nodes()`` is the coordinator's current node set;
    ``add_node(node)`` makes a node known to every part (the coordinator's ``add_node``);
    ``record(node, reason)`` stores the ``enrolled`` event. One enrolment at a time, so two
    requests from one machine make one node."""

    def __init__(
        self,
        config: BootConfig,
        file: EnrolledNodes,
        enrolled: Iterable[Node],
        *,
        nodes: Callable[[], Iterable[Node]],
        add_node: Callable[[Node], Awaitable[object]],
        record: Callable[[str, str], Awaitable[object]],
    ) -> None:
        self.config = config
        self.file = file
        self.enrolled: list[Node] = list(enrolled)  # what the file holds (clashing ones included)
        self.nodes = nodes
        self.add_node = add_node
        self.record = record
        self._lock = asyncio.Lock()

    async def enrol(self, mac: str, buildarch: str | None, remote: str) -> EnrolOutcome:
        async with self._lock:
            current = list(self.nodes())
            for node in current:
                if node.mac == mac:  # enrolled by a request just before this one
                    return EnrolOutcome(node)
            for node in self.enrolled:
                if node.mac == mac:  # in the file but not a node: a clash with the inventory, logged at start
                    return EnrolOutcome(
                        None, f"it is in {self.file.path.name} as {node.name}, which the inventory overrides"
                    )
            arch = node_arch(buildarch)
            if arch is None:
                said = (
                    f"iPXE said buildarch {buildarch[:20]!r}"
                    if buildarch
                    else "iPXE did not say its buildarch"
                )
                return EnrolOutcome(
                    None, f"its architecture is unknown ({said}; known: x86_64, i386, arm64, riscv64)"
                )
            if int(mac[:2], 16) & 1:
                return EnrolOutcome(None, f"{mac} is a multicast address, not a network card's")
            if len(self.enrolled) >= self.config.enroll_limit:
                return EnrolOutcome(
                    None,
                    f"the enrolment limit is reached ({self.config.enroll_limit} nodes, boot.enroll_limit)",
                )
            taken = {n.name for n in current} | {n.name for n in self.enrolled}
            node = Node(
                name=enrolled_name(self.config.enroll_prefix, mac, taken),
                mac=normalise_mac(mac),
                arch=arch,
                labels=self.config.enroll_labels,
                boot_group=self.config.enroll_boot_group,
            )
            # Durable first: a crash after this leaves a node the next start merges in.
            await asyncio.to_thread(self.file.save, [*self.enrolled, node])
            self.enrolled.append(node)
            await self.record(
                node.name,
                f"enrolled: unknown MAC {mac} ({remote}) network-booted with iPXE buildarch {buildarch};"
                f" arch {arch}, boot group {node.boot_group}, recorded in {self.file.path.name}",
            )
            await self.add_node(node)
            log.info(
                "machine enrolled",
                extra={"node": node.name, "mac": mac, "arch": arch, "remote": remote},
            )
            return EnrolOutcome(node)
