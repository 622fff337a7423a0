"""A simulated full-duplex serial line, for tests and benchmarks.

Each direction is a ``SimChannel``: paced at the line rate of 8N1 (``baud / 10`` bytes per second, so a
burst of N bytes takes ``N * 10 / baud`` seconds), delivered in chunks of a few hundred microseconds
rather than byte by byte, and impaired as its ``Impairments`` say: bytes dropped, corrupted (random bits
flipped) or duplicated with given probabilities, whole frames hit by one corrupted byte, extra delay and
jitter that never reorder, and a ``cut`` switch that makes the line silent. A seeded RNG makes every run
reproducible.

Two ways to drive it:

- ``SimLine``: real time under asyncio; ``line.a`` and ``line.b`` are ``ByteStream`` endpoints for two
  ``Link``s (or anything else that reads and writes bytes).
- ``VirtualLine``: virtual time without asyncio; it moves bytes between two ``LinkCore``s and runs their
  timers on a simulated clock, so a property test can run hundreds of exchanges in a second.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .link.core import Event, LinkCore
from .messages import Message

_NEVER = 1 << 62


@dataclass(frozen=True)
class Impairments:
    """What one direction of the line does to the bytes it carries (probabilities are per byte/frame)."""

    drop: float = 0.0  # a byte is lost
    corrupt: float = 0.0  # a byte has random bits flipped
    duplicate: float = 0.0  # a byte is delivered twice
    frame_corrupt: float = 0.0  # a frame (the bytes up to a 0x00) has one of its bytes corrupted
    delay: float = 0.0  # seconds added to every byte's arrival
    jitter: float = 0.0  # further random seconds in [0, jitter); arrivals still never reorder

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "duplicate", "frame_corrupt"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability {p} outside [0, 1]")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must be >= 0")


CLEAN = Impairments()


@dataclass
class ChannelStats:
    bytes_sent: int = 0  # bytes the writer put on the line
    bytes_delivered: int = 0  # bytes the reader took off it
    dropped: int = 0
    corrupted: int = 0
    duplicated: int = 0
    frames_corrupted: int = 0
    lost_to_cut: int = 0


class _Bernoulli:
    """Positions hit by independent events of probability p, drawn as geometric gaps (not per byte)."""

    def __init__(self, p: float, rng: random.Random) -> None:
        self.p = p
        self.rng = rng
        self._left = self._gap()

    def _gap(self) -> int:
        if self.p <= 0.0:
            return _NEVER
        if self.p >= 1.0:
            return 0
        gap = math.log1p(-self.rng.random()) / math.log1p(-self.p)
        return _NEVER if gap >= _NEVER else int(gap)

    def hits(self, n: int) -> list[int]:
        out: list[int] = []
        pos = self._left
        while pos < n:
            out.append(pos)
            pos += 1 + self._gap()
        self._left = pos - n
        return out


class SimChannel:
    """One direction of the line: a paced, impaired, order-keeping byte pipe on a clock given by the caller.

    ``transmit(data, now)`` puts bytes on the line; ``take(now)`` returns those that have arrived by
    ``now``; ``next_time()`` is when the next ones arrive.
    """

    def __init__(
        self,
        baud: int,
        impairments: Impairments = CLEAN,
        *,
        rng: random.Random,
        chunk: int | None = None,
    ) -> None:
        if baud <= 0:
            raise ValueError(f"baud {baud} <= 0")
        self.baud = baud
        self.rate = baud / 10  # bytes per second, 8N1
        # About half a millisecond of line time per delivery, at least 16 bytes.
        self.chunk = chunk if chunk is not None else max(16, int(self.rate * 0.0005))
        self.rng = rng
        self.cut = False
        self.stats = ChannelStats()
        self.queue: deque[tuple[float, bytes]] = deque()
        self.line_free_at = 0.0
        self.closed = False
        self.listener: Callable[[], None] | None = None
        self._last_arrival = 0.0
        self._at_frame_start = True
        self.impairments = impairments

    @property
    def impairments(self) -> Impairments:
        return self._imp

    @impairments.setter
    def impairments(self, imp: Impairments) -> None:
        self._imp = imp
        self._drop = _Bernoulli(imp.drop, self.rng)
        self._corrupt = _Bernoulli(imp.corrupt, self.rng)
        self._duplicate = _Bernoulli(imp.duplicate, self.rng)

    def backlog(self, now: float) -> float:
        """Seconds of line time already committed beyond ``now``."""
        return max(0.0, self.line_free_at - now)

    def transmit(self, data: bytes, now: float) -> None:
        if not data:
            return
        n = len(data)
        byte_time = 1.0 / self.rate
        start = max(now, self.line_free_at)
        self.line_free_at = start + n * byte_time
        self.stats.bytes_sent += n
        if self.cut:
            self.stats.lost_to_cut += n
            return
        imp = self._imp
        for off in range(0, n, self.chunk):
            piece = data[off : off + self.chunk]
            arrival = start + (off + len(piece)) * byte_time + imp.delay
            if imp.jitter:
                arrival += imp.jitter * self.rng.random()
            arrival = max(arrival, self._last_arrival)
            self._last_arrival = arrival
            piece = self._impair(piece)
            if piece:
                self.queue.append((arrival, piece))
        if self.listener is not None:
            self.listener()

    def _impair(self, piece: bytes) -> bytes:
        flips = self._corrupt.hits(len(piece))
        if self._imp.frame_corrupt:
            flips += self._frame_hits(piece)
        drops = self._drop.hits(len(piece))
        dups = self._duplicate.hits(len(piece))
        if not (flips or drops or dups):
            return piece
        buf = bytearray(piece)
        for pos in flips:
            buf[pos] ^= self.rng.randrange(1, 256)
        self.stats.corrupted += len(flips)
        if not (drops or dups):
            return bytes(buf)
        drop_set, dup_set = set(drops), set(dups)
        out = bytearray()
        for i, byte in enumerate(buf):
            if i in drop_set:
                self.stats.dropped += 1
                continue
            out.append(byte)
            if i in dup_set:
                self.stats.duplicated += 1
                out.append(byte)
        return bytes(out)

    def _frame_hits(self, piece: bytes) -> list[int]:
        """One position per frame chosen for corruption: a byte of the frame's first part in this chunk."""
        hits: list[int] = []
        i, n = 0, len(piece)
        while i < n:
            end = piece.find(0, i)
            stop = n if end < 0 else end
            if self._at_frame_start and stop > i:  # a frame begins at i (0x00 runs are idle fill)
                if self.rng.random() < self._imp.frame_corrupt:
                    hits.append(self.rng.randrange(i, stop))
                    self.stats.frames_corrupted += 1
                self._at_frame_start = False
            if end < 0:
                break
            self._at_frame_start = True
            i = end + 1
        return hits

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def take(self, now: float) -> bytes:
        """All bytes that have arrived by ``now``."""
        out = bytearray()
        while self.queue and self.queue[0][0] <= now:
            out += self.queue.popleft()[1]
        self.stats.bytes_delivered += len(out)
        return bytes(out)


# --- real time (asyncio) ---------------------------------------------------------------------------


class SimEndpoint:
    """One end of a ``SimLine``; a ``ByteStream``. Closing it is end of file for both ends."""

    def __init__(self, name: str, tx: SimChannel, rx: SimChannel, tx_buffer: int) -> None:
        self.name = name
        self._tx = tx
        self._rx = rx
        self._tx_buffer = tx_buffer
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        rx.listener = self._wake

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                return b""
            data = self._rx.take(loop.time())
            if data:
                return data
            if self._rx.closed and not self._rx.queue:
                return b""
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            when = self._rx.next_time()
            timer = loop.call_at(when, self._wake) if when is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise BrokenPipeError(f"{self.name}: write on a closed endpoint")
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._tx.transmit(bytes(data), now)
        # Like a UART driver: the write returns once what is left fits in the transmit buffer.
        excess = self._tx.backlog(now) - self._tx_buffer / self._tx.rate
        if excess > 0:
            await asyncio.sleep(excess)

    async def close(self) -> None:
        self._closed = True
        self._tx.closed = True
        self._wake()
        if self._tx.listener is not None:
            self._tx.listener()


class SimLine:
    """A full-duplex serial line at ``baud`` 8N1 between endpoints ``a`` and ``b``, in real time.

    ``a_to_b`` and ``b_to_a`` are the two directions (set their ``impairments`` or ``cut`` at any time).
    ``tx_buffer`` is how many bytes a write may leave queued before it waits, like a driver's buffer.
    """

    def __init__(
        self,
        baud: int = 115200,
        *,
        a_to_b: Impairments = CLEAN,
        b_to_a: Impairments = CLEAN,
        seed: int = 0,
        chunk: int | None = None,
        tx_buffer: int = 4096,
        names: tuple[str, str] = ("sim-a", "sim-b"),
    ) -> None:
        rng = random.Random(seed)
        self.baud = baud
        self.a_to_b = SimChannel(baud, a_to_b, rng=random.Random(rng.random()), chunk=chunk)
        self.b_to_a = SimChannel(baud, b_to_a, rng=random.Random(rng.random()), chunk=chunk)
        self.a = SimEndpoint(names[0], self.a_to_b, self.b_to_a, tx_buffer)
        self.b = SimEndpoint(names[1], self.b_to_a, self.a_to_b, tx_buffer)

    @property
    def line_rate(self) -> float:
        """Bytes per second in each direction."""
        return self.baud / 10

    def cut(self, cut: bool = True) -> None:
        """Make both directions silent (the peer vanished), or bring them back."""
        self.a_to_b.cut = self.b_to_a.cut = cut


# --- virtual time (no asyncio) -----------------------------------------------------------------------


class VirtualLine:
    """Two ``LinkCore``s joined by a simulated line, on a virtual clock.

    ``step()`` jumps to the next arrival or timer, feeds the cores and collects their events in
    ``events_a`` / ``events_b``; ``run`` repeats it. Replace a core (``line.b = LinkCore(...)``) to
    simulate a restart: the new one opens the line with its 0x00 at the next ``flush``.
    """

    def __init__(
        self,
        a: LinkCore,
        b: LinkCore,
        *,
        baud: int = 115200,
        a_to_b: Impairments = CLEAN,
        b_to_a: Impairments = CLEAN,
        seed: int = 0,
        chunk: int | None = None,
        start: float = 0.0,
    ) -> None:
        rng = random.Random(seed)
        self.a = a
        self.b = b
        self.now = start
        self.a_to_b = SimChannel(baud, a_to_b, rng=random.Random(rng.random()), chunk=chunk)
        self.b_to_a = SimChannel(baud, b_to_a, rng=random.Random(rng.random()), chunk=chunk)
        self.events_a: list[Event] = []
        self.events_b: list[Event] = []
        self.flush()

    def cut(self, cut: bool = True) -> None:
        self.a_to_b.cut = self.b_to_a.cut = cut

    def send(self, side: Literal["a", "b"], msg: Message, *, reliable: bool = True) -> int | None:
        core = self.a if side == "a" else self.b
        seq = core.send(msg, reliable=reliable, now=self.now)
        self.flush()
        return seq

    def flush(self) -> None:
        """Move what the cores have to say onto the line."""
        self.a_to_b.transmit(self.a.outgoing(), self.now)
        self.b_to_a.transmit(self.b.outgoing(), self.now)

    def next_time(self) -> float | None:
        times = [
            t
            for t in (
                self.a_to_b.next_time(),
                self.b_to_a.next_time(),
                self.a.next_deadline(),
                self.b.next_deadline(),
            )
            if t is not None
        ]
        return min(times) if times else None

    def step(self) -> bool:
        """Advance to the next thing that happens; False if nothing ever will (both idle)."""
        t = self.next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        data = self.a_to_b.take(self.now)
        if data:
            self.events_b += self.b.receive(data, self.now)
        data = self.b_to_a.take(self.now)
        if data:
            self.events_a += self.a.receive(data, self.now)
        self.events_a += self.a.poll(self.now)
        self.events_b += self.b.poll(self.now)
        self.flush()
        return True

    def run(
        self,
        *,
        until: float | None = None,
        stop: Callable[[], bool] | None = None,
        max_steps: int = 1_000_000,
    ) -> int:
        """Step until idle, until virtual time ``until``, or until ``stop()`` is true; return the steps.

        Raises RuntimeError after ``max_steps`` (a livelock is a bug, not a hang).
        """
        for steps in range(max_steps):
            if stop is not None and stop():
                return steps
            t = self.next_time()
            if t is None:
                return steps
            if until is not None and t > until:
                self.now = max(self.now, until)
                return steps
            self.step()
        raise RuntimeError(f"virtual line still busy after {max_steps} steps at t={self.now:.3f}")
