"""What the API needs from the coordinator: a small interface, so the HTTP layer
is tested without a broker and the coordinator without HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .models import EventView, HealthName, NodeView


class NodeService(Protocol):
    async def list_nodes(self) -> list[NodeView]: ...

    async def get_node(self, name: str) -> NodeView: ...  # UnknownNode

    async def drain(self, name: str, reason: str) -> str: ...  # NodeStateError, CommandTimeout/Failed

    async def undrain(self, name: str, reason: str) -> str: ...

    async def identify(self, name: str) -> str: ...

    async def reboot(self, name: str, reason: str) -> str: ...

    async def set_health(self, name: str, health: HealthName, reason: str) -> NodeView: ...

    async def events(self, node: str | None, after_id: int | None, limit: int) -> list[EventView]: ...

    def metrics(self) -> bytes: ...  # Prometheus text format


class PowerApi(Protocol):
    """Node power (coordinator/power/service.py); results are per node, never one error for all."""

    async def act(self, names: Sequence[str], op: Any, reason: str = ...) -> Sequence[Any]: ...

    async def status(self, names: Sequence[str] | None = None) -> Sequence[Any]: ...

    async def energy(
        self, names: Sequence[str] | None, since: float | None, until: float | None
    ) -> Sequence[Any]: ...

    async def job_energy(self, job_id: str) -> Sequence[Any]: ...  # LookupError: no such job
