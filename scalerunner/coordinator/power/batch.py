"""Status reads of one device joined into one request.

When 42 ports are cycled at once, each sequence polls its own port; asked one by one, that is 42
SNMP GETs per poll round. ``StatusBatcher.read(port)`` waits one loop turn for the other
sequences' reads and asks the back end once for all their ports. If the joined request fails, each
port is asked again alone, so one bad port never fails the others' reads.
"""

from __future__ import annotations

import asyncio

from .base import OutletStatus, PowerBackend, PowerError

__all__ = ["StatusBatcher"]


class StatusBatcher:
    def __init__(self, backend: PowerBackend) -> None:
        self.backend = backend
        self._waiting: dict[int, list[asyncio.Future[OutletStatus]]] = {}
        self._flush: asyncio.Task[None] | None = None
        self.requests = 0  # back-end status calls made (for tests and benchmarks)

    async def read(self, port: int) -> OutletStatus:
        fut: asyncio.Future[OutletStatus] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(port, []).append(fut)
        if self._flush is None:
            self._flush = asyncio.create_task(self._read_all(), name=f"power-status-{self.backend.name}")
        return await fut

    async def _read_all(self) -> None:
        await asyncio.sleep(0)  # one loop turn: the reads asked at the same moment join in
        batch, self._waiting, self._flush = self._waiting, {}, None
        ports = sorted(batch)
        try:
            self.requests += 1
            got = await self.backend.status(ports)
        except PowerError as exc:
            if len(ports) == 1:
                _settle(batch[ports[0]], exc)
                return
            for port in ports:  # find out which port it was, so the others still get their status
                try:
                    self.requests += 1
                    alone = await self.backend.status([port])
                    _settle(batch[port], alone.get(port) or _missing(self.backend, port))
                except PowerError as one:
                    _settle(batch[port], one)
            return
        except BaseException as exc:
            for futs in batch.values():
                _settle(futs, PowerError(self.backend.name, "unreachable", f"status read failed: {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for port in ports:
            _settle(batch[port], got.get(port) or _missing(self.backend, port))


def _missing(backend: PowerBackend, port: int) -> PowerError:
    return PowerError(f"{backend.name}:{port}", "no-such-object", "the status read did not include this port")


def _settle(futs: list[asyncio.Future[OutletStatus]], outcome: OutletStatus | PowerError) -> None:
    for fut in futs:
        if fut.done():
            continue  # its reader was cancelled
        if isinstance(outcome, PowerError):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
