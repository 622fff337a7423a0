# console: the node's UART <-> the protocol's console channel (CONSOLE_DATA port 0).
#
# Node -> host: bytes read from the UART go into a fixed ring; pump() sends them as
# CONSOLE_DATA while the link window has room. When the ring is full, new bytes
# are dropped and counted exactly; take_drops() hands the count over once, so the
# caller can log it and tell the host (never silent loss).
# Host -> node: CONSOLE_DATA for port 0 is written to the UART as it arrives.

from micropython import const

_CHUNK = const(254)  # CONSOLE_DATA tail: 255 minus the port byte
PORT = const(0)


class ConsoleBridge:
    def __init__(self, uart, send, size=4096, rx_chunk=64):
        """`uart` has readinto/write; `send(fields)` sends one CONSOLE_DATA, False if the window is full."""
        self.uart = uart
        self._send = send
        self.size = size
        self._ring = bytearray(size)
        self._mv = memoryview(self._ring)
        self._rx = bytearray(rx_chunk)
        self._head = 0  # oldest byte
        self._count = 0
        self.dropped = 0  # bytes lost to a full ring, ever
        self._reported = 0
        self.to_node = 0
        self.to_host = 0

    def pending(self):
        return self._count

    def feed(self, data, n=-1):
        """Put bytes from the node in the ring; returns how many were dropped."""
        if n < 0:
            n = len(data)
        room = self.size - self._count
        take = n if n <= room else room
        tail = (self._head + self._count) % self.size
        first = take if take <= self.size - tail else self.size - tail
        self._ring[tail : tail + first] = data[:first] if first == n else memoryview(data)[:first]
        if take > first:
            self._ring[: take - first] = memoryview(data)[first:take]
        self._count += take
        self.dropped += n - take
        return n - take

    def poll_uart(self):
        """Read what the node's UART has (never blocks)."""
        n = self.uart.readinto(self._rx)
        while n:
            self.feed(self._rx, n)
            n = self.uart.readinto(self._rx) if n == len(self._rx) else 0

    def pump(self):
        """Send buffered bytes while the window allows; contiguous chunks, no copies."""
        while self._count:
            n = self._count if self._count < _CHUNK else _CHUNK
            if n > self.size - self._head:
                n = self.size - self._head
            if not self._send((PORT, self._mv[self._head : self._head + n])):
                return
            self._head = (self._head + n) % self.size
            self._count -= n
            self.to_host += n
        self._head = 0

    def from_host(self, data):
        self.uart.write(data)
        self.to_node += len(data)

    def take_drops(self):
        """Bytes dropped since the last call (0 if none)."""
        n = self.dropped - self._reported
        self._reported = self.dropped
        return n
