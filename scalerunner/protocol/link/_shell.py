"""The asyncio shell around ``LinkCore``: moves bytes between a ``ByteStream`` and the core.

Three named tasks per link: the reader feeds everything it reads to the core (one read, however many
frames, then one ACK), the writer drains the core's outgoing bytes to the stream whenever woken, and the
timer calls ``core.poll`` at ``core.next_deadline()``. Waiters get their outcome from the core's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Literal

from ..enums import MsgType
from ..errors import LinkClosed, LinkError, PeerTimeout
from ..messages import Message
from .console import CONSOLE_CHUNK_MAX, Console
from .core import Acked, Delivered, Event, Failed, LinkCore, LinkStats, TraceHook
from .streams import ByteStream

log = logging.getLogger("scalerunner.link")

_State = Literal["new", "running", "closed"]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a waiter's exception as seen: nobody may be awaiting a ``wait=False`` send."""
    if not fut.cancelled():
        fut.exception()


class Link:
    """A reliable, framed link to one peer over ``stream`` (docs/protocol.md sections 1 and 2).

    Use as ``async with Link(stream) as link:`` or call ``start()``/``stop()``. The keyword options are
    ``LinkCore``'s; ``console_chunk`` is the largest CONSOLE_DATA payload ``link.console`` sends;
    ``on_event`` sees every core event (e.g. ``PeerSession`` when the device restarted).
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        window: int = 8,
        rto_init: float = 0.25,
        rto_min: float = 0.02,
        rto_max: float = 2.0,
        max_retries: int = 8,
        initial_seq: int | None = None,
        rng: random.Random | None = None,
        trace: TraceHook | None = None,
        console_chunk: int = CONSOLE_CHUNK_MAX,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.stream = stream
        self.name = stream.name
        self.core = LinkCore(
            name=stream.name,
            window=window,
            rto_init=rto_init,
            rto_min=rto_min,
            rto_max=rto_max,
            max_retries=max_retries,
            initial_seq=initial_seq,
            rng=rng,
            trace=trace,
        )
        self.console = Console(self, chunk=console_chunk)
        self.on_event = on_event
        self._state: _State = "new"
        self._closed_detail = ""
        self._stopped = False  # closed by stop(), not by the stream
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._inbox: deque[Message] = deque()
        self._inbox_event = asyncio.Event()
        self._room = asyncio.Event()
        self._write_wake = asyncio.Event()
        self._timer_fut: asyncio.Future[None] | None = None
        self._armed: float | None = None
        self._stream_closed = False

    # --- lifecycle ---

    @property
    def stats(self) -> LinkStats:
        return self.core.stats

    @property
    def state(self) -> _State:
        return self._state

    async def start(self) -> None:
        if self._state != "new":
            raise LinkError(self.name, f"link is {self._state}, cannot start it")
        loop = asyncio.get_running_loop()
        self._state = "running"
        try:
            await self.stream.write(self.core.outgoing())  # the 0x00 that opens the line
        except OSError as exc:
            self._shutdown(f"write failed: {exc}")
            raise LinkClosed(self.name, f"write failed: {exc}") from exc
        for role, coro in (("reader", self._reader()), ("writer", self._writer()), ("timer", self._timer())):
            task = loop.create_task(coro, name=f"link-{role} {self.name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Stop the tasks, wake every waiter with LinkClosed, flush what is due, close the stream."""
        was_running = self._state == "running"
        self._shutdown("link stopped", stopped=True)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if was_running:  # a last ACK the peer may be waiting for
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(0.2):
                    await self.stream.write(self.core.outgoing())
        if not self._stream_closed:
            self._stream_closed = True
            await self.stream.close()

    async def __aenter__(self) -> Link:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _check_running(self) -> None:
        if self._state == "new":
            raise LinkError(self.name, "link not started")
        if self._state == "closed":
            raise LinkClosed(self.name, self._closed_detail)

    def _shutdown(self, detail: str, *, stopped: bool = False) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._closed_detail = detail
        self._stopped = stopped
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkClosed(self.name, detail))
        self._pending.clear()
        self._room.set()
        self._inbox_event.set()
        self._write_wake.set()
        if self._timer_fut is not None:
            _resolve(self._timer_fut)
        self.console._close(detail)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: %s crashed: %r", self.name, task.get_name(), exc, exc_info=exc)
            self._shutdown(f"internal error in {task.get_name()}: {exc!r}")

    # --- sending ---

    async def send(self, msg: Message, *, reliable: bool = True, wait: bool = True) -> None:
        """Send ``msg``. Reliable: wait for window room, then (``wait``) for the acknowledgement.

        Raises PeerTimeout if the peer stopped acknowledging, LinkClosed if the link closed meanwhile,
        EncodeError if the message does not encode. Cancelling the caller does not withdraw the message.
        """
        fut = await self._submit(msg, reliable)
        if wait and fut is not None:
            await asyncio.shield(fut)

    async def _submit(self, msg: Message, reliable: bool) -> asyncio.Future[None] | None:
        """Queue ``msg`` in the core; return the future of its acknowledgement (reliable)."""
        self._check_running()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] | None = None
        if reliable:
            while not self.core.can_send():
                self._room.clear()
                await self._room.wait()
                self._check_running()
            seq = self.core.send(msg, reliable=True, now=loop.time())
            assert seq is not None
            fut = loop.create_future()
            fut.add_done_callback(_retrieve)
            self._pending[seq] = fut
        else:
            self.core.send(msg, reliable=False, now=loop.time())
        self._after_core()
        return fut

    def _after_core(self) -> None:
        """After the core changed: have its bytes written, and the timer re-armed if it must fire sooner."""
        self._write_wake.set()
        deadline = self.core.next_deadline()
        sooner = deadline is not None and (self._armed is None or deadline < self._armed)
        if sooner and self._timer_fut is not None:
            _resolve(self._timer_fut)

    # --- receiving ---

    async def recv(self) -> Message:
        """The next message from the peer (CONSOLE_DATA goes to ``console`` instead)."""
        while not self._inbox:
            self._check_running()
            self._inbox_event.clear()
            await self._inbox_event.wait()
        return self._inbox.popleft()

    def __aiter__(self) -> Link:
        return self

    async def __anext__(self) -> Message:
        """Messages until ``stop()``; a stream that ends or fails raises LinkClosed instead."""
        try:
            return await self.recv()
        except LinkClosed:
            if self._stopped:
                raise StopAsyncIteration from None
            raise

    def _handle(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Delivered):
                msg = ev.message
                if msg.type == MsgType.CONSOLE_DATA:
                    port, data = msg.fields["port"], msg.fields["data"]
                    assert isinstance(port, int) and isinstance(data, bytes)
                    self.console._feed(port, data)
                else:
                    self._inbox.append(msg)
                    self._inbox_event.set()
            elif isinstance(ev, Acked):
                for seq in ev.seqs:
                    fut = self._pending.pop(seq, None)
                    if fut is not None:
                        _resolve(fut)
                self._room.set()
            elif isinstance(ev, Failed):
                for seq in ev.seqs:
                    fut = self._pending.pop(seq, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(PeerTimeout(self.name, ev.detail))
                self._room.set()
                log.warning("%s: %d message(s) failed: %s", self.name, len(ev.seqs), ev.detail)
            if self.on_event is not None:
                self.on_event(ev)

    # --- tasks ---

    async def _reader(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.stream.read()
            except OSError as exc:
                self._shutdown(f"read failed: {exc}")
                return
            if not data:
                self._shutdown("end of file on the byte stream")
                return
            self._handle(self.core.receive(data, loop.time()))
            self._after_core()

    async def _writer(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            if self._state != "running":
                return
            data = self.core.outgoing()
            if not data:
                continue
            try:
                await self.stream.write(data)
            except OSError as exc:
                self._shutdown(f"write failed: {exc}")
                return

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        while self._state == "running":
            deadline = self.core.next_deadline()
            self._armed = deadline
            fut: asyncio.Future[None] = loop.create_future()
            self._timer_fut = fut
            handle = loop.call_at(deadline, _resolve, fut) if deadline is not None else None
            try:
                await fut
            finally:
                self._timer_fut = None
                if handle is not None:
                    handle.cancel()
            if self._state != "running":
                return
            events = self.core.poll(loop.time())
            if events:
                self._handle(events)
            self._write_wake.set()
