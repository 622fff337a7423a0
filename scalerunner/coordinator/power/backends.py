"""The power back ends of an inventory: an explicit registry, one line per kind.

Each switch gets the ``snmp-poe`` back end with its vendor profile; each node with a BMC and no
switch port gets the ``bmc`` back end on its serial port.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from ..inventory import Inventory
from .base import PowerBackend
from .bmc import BmcBackend
from .outlets import bmc_device
from .profiles import Profile, load_profiles
from .snmp_poe import SnmpPoeBackend

__all__ = ["build_backends"]


def build_backends(
    inventory: Inventory, *, source: str | Path = "inventory", profiles: Mapping[str, Profile] | None = None
) -> dict[str, PowerBackend]:
    """A back end per power device of ``inventory``, by name (switch name, ``bmc:<port>``).
    ConfigError naming ``switches[i].profile`` for a profile that does not exist."""
    backends: dict[str, PowerBackend] = {}
    if inventory.switches and profiles is None:
        profiles = load_profiles()
    for i, switch in enumerate(inventory.switches):
        assert profiles is not None
        profile = profiles.get(switch.profile)
        if profile is None:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(
                str(source), f"switches[{i}].profile", f"no profile {switch.profile!r} (known: {known})"
            )
        backends[switch.name] = SnmpPoeBackend(switch, profile)
    for node in inventory.nodes:
        if node.switch is None and node.bmc_port is not None:
            backends[bmc_device(node.bmc_port)] = BmcBackend(node.bmc_port)
    return backends
