# console: the node's UART <-> the protocol's console channel (CONSOLE_DATA port 0).
#
# Node -> host: bytes read from the UART go into a fixed ring; pump() sends them as
# CONSOLE_DATA while the link window has room. When the ring is full, new bytes
# are dropped and counted exactly; take_drops() hands the count over once, so the
# caller can log it and tell the host (never silent loss).
# Host -> node: CONSOLE_DATA for port 0 is written to the UART as it arrives. A
# UART with timeout=0 takes only what fits its transmit buffer (the host line
# runs faster than the node's), so the rest waits in a second ring that
# flush_node() empties as the UART drains; what does not fit there is dropped and
# counted the same way (take_node_drops()).

from micropython import const

_CHUNK = const(254)  # CONSOLE_DATA tail: 255 minus the port byte
PORT = const(0)


class Ring:
    """A fixed byte ring: put() keeps what fits and returns how many bytes it dropped."""

    def __init__(self, size):
        self.size = size
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)
        self.head = 0  # oldest byte
        self.count = 0

    def put(self, data, n):
        room = self.size - self.count
        take = n if n <= room else room
        tail = (self.head + self.count) % self.size
        first = take if take <= self.size - tail else self.size - tail
        self._buf[tail : tail + first] = data[:first] if first == n else memoryview(data)[:first]
        if take > first:
            self._buf[: take - first] = memoryview(data)[first:take]
        self.count += take
        return n - take

    def oldest(self, limit):
        """The oldest bytes, contiguous, at most `limit` (a view: no copy)."""
        n = self.count if self.count < limit else limit
        if n > self.size - self.head:
            n = self.size - self.head
        return self._mv[self.head : self.head + n]

    def consume(self, n):
        self.head = (self.head + n) % self.size
        self.count -= n
        if not self.count:
            self.head = 0


class ConsoleBridge:
    def __init__(self, uart, send, size=4096, rx_chunk=64, node_size=4096):
        """`uart` has readinto/write; `send(fields)` sends one CONSOLE_DATA, False if the window is full."""
        self.uart = uart
        self._send = send
        self.size = size
        self._up = Ring(size)  # node -> host
        self._down = Ring(node_size)  # host -> node, what the UART could not take yet
        self._rx = bytearray(rx_chunk)
        self.dropped = 0  # bytes for the host lost to a full ring, ever
        self._reported = 0
        self.node_dropped = 0  # bytes for the node lost to a full ring, ever
        self._node_reported = 0
        self.to_node = 0
        self.to_host = 0

    def pending(self):
        return self._up.count

    def node_pending(self):
        return self._down.count

    def feed(self, data, n=-1):
        """Put bytes from the node in the ring; returns how many were dropped."""
        lost = self._up.put(data, len(data) if n < 0 else n)
        self.dropped += lost
        return lost

    def poll_uart(self):
        """Read what the node's UART has (never blocks)."""
        n = self.uart.readinto(self._rx)
        while n:
            self.feed(self._rx, n)
            n = self.uart.readinto(self._rx) if n == len(self._rx) else 0

    def pump(self):
        """Send buffered bytes while the window allows; contiguous chunks, no copies."""
        ring = self._up
        while ring.count:
            chunk = ring.oldest(_CHUNK)
            if not self._send((PORT, chunk)):
                return
            ring.consume(len(chunk))
            self.to_host += len(chunk)

    def _write(self, data):
        n = self.uart.write(data) or 0  # machine.UART: None when nothing fitted
        self.to_node += n
        return n

    def from_host(self, data):
        n = 0 if self._down.count else self._write(data)  # behind what already waits, in order
        if n < len(data):
            self.node_dropped += self._down.put(memoryview(data)[n:], len(data) - n)

    def flush_node(self):
        """Write what waits for the node while its UART takes it (never blocks)."""
        ring = self._down
        while ring.count:
            chunk = ring.oldest(ring.size)
            n = self._write(chunk)
            ring.consume(n)
            if n < len(chunk):
                return

    def take_drops(self):
        """Bytes for the host dropped since the last call (0 if none)."""
        n = self.dropped - self._reported
        self._reported = self.dropped
        return n

    def take_node_drops(self):
        """Bytes for the node dropped since the last call (0 if none)."""
        n = self.node_dropped - self._node_reported
        self._node_reported = self.node_dropped
        return n
