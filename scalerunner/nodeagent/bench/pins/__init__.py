"""Pin back ends, registered by name: adding one is one file and one line here."""

from __future__ import annotations

from collections.abc import Callable

from .base import BackendSetup, PinBackend
from .gpiod import GpiodBackend
from .sim import SimBackend

__all__ = ["BACKENDS", "BackendSetup", "PinBackend"]

BACKENDS: dict[str, Callable[[BackendSetup], PinBackend]] = {
    "gpiod": GpiodBackend,
    "sim": SimBackend,
}
