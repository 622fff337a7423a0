"""Host-side clients of the Scalenode firmwares over the framed serial protocol (docs/protocol.md).

``LedClient`` drives the LED indicator (ledfw/), ``BmcClient`` the BMC (bmc/); both are async context
managers over a serial port path or a ``ByteStream``. A device that answers ERROR raises ``DeviceError``;
one that does not answer raises ``PeerTimeout`` (both name the port).
"""

from __future__ import annotations

from ...protocol.errors import LinkClosed, LinkError, PeerTimeout
from ._base import DEFAULT_TIMEOUT, DeviceClient, DeviceError, Hello
from .bmc import BMC_BAUD, BmcClient, BmcConsole, BmcStatus, LogEntry
from .led import EV_STATE, LED_BAUD, LedClient, LedState, parse_state

__all__ = [
    "BMC_BAUD",
    "DEFAULT_TIMEOUT",
    "EV_STATE",
    "LED_BAUD",
    "BmcClient",
    "BmcConsole",
    "BmcStatus",
    "DeviceClient",
    "DeviceError",
    "Hello",
    "LedClient",
    "LedState",
    "LinkClosed",
    "LinkError",
    "LogEntry",
    "PeerTimeout",
    "parse_state",
]
