# eventlog: a ring of the BMC's timestamped events, read back with EVENT_LOG_GET.
#
# Every event gets the next u16 index (wrapping at 65536). The ring holds the last
# `size` of them; older ones are overwritten. Pure: the caller passes the time.

from micropython import const

_MASK = const(0xFFFF)
_HALF = const(0x8000)


class EventLog:
    def __init__(self, size=64):
        if not 1 <= size < _HALF:
            raise ValueError("size must be 1..32767")
        self.size = size
        self.next = 0  # the index the next event will get
        self.count = 0  # events in the ring
        self.overwritten = 0
        # Allocated once; slot i holds the event whose index % size == i (modulo the wrap).
        self._level = bytearray(size)
        self._code = [0] * size
        self._time = [0] * size
        self._text = [""] * size
        self._slot = 0  # the slot the next event goes to

    def log(self, level, code, time_ms, text):
        """Store an event; returns its index."""
        i = self._slot
        self._level[i] = level
        self._code[i] = code
        self._time[i] = time_ms & 0xFFFFFFFF
        self._text[i] = text
        self._slot = (i + 1) % self.size
        if self.count < self.size:
            self.count += 1
        else:
            self.overwritten += 1
        index = self.next
        self.next = (index + 1) & _MASK
        return index

    def oldest(self):
        return (self.next - self.count) & _MASK

    def first_from(self, since):
        """The first index >= `since` still in the ring (== next if there is none).

        `since` older than the oldest event starts at the oldest; `since` up to
        32767 ahead of `next` (a host from the future) gets nothing.
        """
        behind = (self.next - since) & _MASK  # how many events since..next-1 would be
        if behind <= self.count:
            return since & _MASK
        if behind < _HALF:
            return self.oldest()  # overwritten already: start at what is left
        return self.next

    def get(self, index):
        """(index, level, code, time_ms, text) of an event still in the ring, or None."""
        back = (self.next - 1 - index) & _MASK  # 0 for the newest
        if back >= self.count:
            return None
        i = (self._slot - 1 - back) % self.size
        return index, self._level[i], self._code[i], self._time[i], self._text[i]


class Reader:
    """A cursor into the log that hands out events oldest first, e.g. as the link window allows.

    If events are overwritten before they are read, the cursor skips to the oldest
    left and counts how many it lost.
    """

    def __init__(self, log, since):
        self.log = log
        self.pos = log.first_from(since)
        self.skipped = 0

    def pending(self):
        return self.pos != self.log.next

    def take(self):
        """The next event (index, level, code, time_ms, text), or None when caught up."""
        if self.pos == self.log.next:
            return None
        e = self.log.get(self.pos)
        if e is None:  # overwritten while waiting
            oldest = self.log.oldest()
            self.skipped += (oldest - self.pos) & _MASK
            self.pos = oldest
            e = self.log.get(self.pos)
        self.pos = (self.pos + 1) & _MASK
        return e
