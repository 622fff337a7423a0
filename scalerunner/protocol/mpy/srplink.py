# srplink: reliable delivery over a byte stream for MicroPython (docs/protocol.md section 2).
#
# Go-back-N with cumulative ACK, NAK for fast retransmission, SYN/RST sessions and
# an RFC 6298 retransmission timer, rule by rule as section 2 states them (the
# host's LinkCore in scalerunner/protocol/link/core.py follows the same text).
#
# Nothing blocks: the application calls poll()
# often; it reads what the stream has, handles it, sends one ACK per batch and
# runs the timer. The stream is any object with readinto() (returning None or 0
# when nothing is waiting) and write(): machine.UART on the board, PtyStream here.

import time

from micropython import const

import srp
from srp import ACK, ACKREQ, NAK, RST, SYN

_T_ACK = srp.TYPE_IDS["ACK"]
_T_ERROR = srp.TYPE_IDS["ERROR"]
_T_CONSOLE = srp.TYPE_IDS["CONSOLE_DATA"]
_CONSOLE_CHUNK = const(254)  # CONSOLE_DATA tail: 255 minus the port byte
_RX_CHUNK = const(256)


def _random_seq():
    try:
        import os

        return os.urandom(1)[0]
    except (ImportError, AttributeError):
        return time.ticks_diff(time.ticks_us(), 0) & 0xFF


class Link:
    """One peer over `stream`.

    Delivered messages go to on_message(type_id, fields) or, without a callback,
    into `inbox` as (type_id, fields); during the callback `rx_seq` is the
    message's seq (0 if unreliable), e.g. for an ERROR's ref_seq. on_lost(name)
    is called when the peer stops acknowledging (the window is then emptied; the
    CONSOLE_DATA bytes in it are added to console_lost).
    Times are in ms.
    """

    def __init__(self, stream, on_message=None, window=8, rto_init=250, rto_min=20, rto_max=2000,
                 max_retries=8, name="uart", seq=None, clock=time.ticks_ms):
        if not 1 <= window <= 127:
            raise ValueError("window must be 1..127")
        self.stream = stream
        self.name = name
        self.on_message = on_message
        self.on_lost = None
        self.inbox = []
        self._clock = clock
        self._enc = srp.Encoder()
        self._dec = srp.Decoder(self._on_frame)
        self._rx = bytearray(_RX_CHUNK)
        # Counters: the codec's drop reasons plus the receiver's own.
        self.drops = self._dec.drops
        for reason in ("unsynced", "duplicate", "out_of_order"):
            self.drops[reason] = 0
        self.peer_lost = 0
        self.console_lost = 0  # CONSOLE_DATA payload bytes given up with the peer
        self.retransmits = 0
        # Sender: a ring of W packed bodies, allocated once.
        self.W = window
        self._body = [bytearray(srp.layouts.MAX_BODY) for _ in range(window)]
        self._bodymv = [memoryview(b) for b in self._body]
        self._type = bytearray(window)
        self._len = bytearray(window)
        self._tx = bytearray(window)  # times sent (Karn: sample only if 1)
        self._sent = [0] * window  # ticks of the last send (for RTT samples)
        self._timer = 0  # ticks when the retransmission timer was (re)started
        self._head = 0  # ring index of the oldest unacknowledged frame
        self._count = 0
        self._base = 0  # its seq
        self.next_seq = _random_seq() if seq is None else seq & 0xFF
        self.synced = False
        self.syn_seq = self.next_seq
        self._rto_init, self._rto_min, self._rto_max = rto_init, rto_min, rto_max
        self.rto = rto_init
        self._rto_base = rto_init  # the RTO before any backoff
        self._srtt8 = -1  # smoothed RTT x8 (-1: no sample yet); integers keep floats off the heap
        self._rttvar4 = 0  # RTT variance x4
        self.max_retries = max_retries
        self._retries = 0
        # Receiver.
        self.expected = 0
        self.rx_synced = False
        self.session_syn = 0
        self.rx_seq = 0
        self._nak_sent = False
        self._gap_seq = 0  # the last frame seen past a gap
        self._ack_due = self._nak_due = self._rst_due = False
        self._pumps = []
        # One 0x00 opens the line: the peer drops whatever half-frame it holds.
        stream.write(b"\x00")

    # --- sending -------------------------------------------------------------

    def can_send(self):
        return self._count < self.W

    def send(self, type_id, fields, reliable=True):
        """Send a message (fields tuple in layout order, tail last). False if the window is full."""
        if not reliable:
            ack, flags = self._ack_flags()
            self.stream.write(self._enc.encode(type_id, 0, ack, flags, fields))
            return True
        if self._count >= self.W:
            return False
        i = (self._head + self._count) % self.W
        self._len[i] = srp.pack_body(type_id, fields, self._body[i], 0)  # kept for resending
        self._type[i] = type_id
        self._tx[i] = 0
        seq = self.next_seq
        self.next_seq = (seq + 1) & 0xFF
        if not self._count:
            self._base = seq
        self._count += 1
        if self._count == 1:
            self._timer = self._clock()
        if self.synced or self._count == 1:  # unsynced: only the SYN frame is on the line
            self._transmit(i, seq)
        return True

    def _ack_flags(self):
        # Piggyback whatever acknowledgement is owed on the frame going out.
        flags = 0
        if self.rx_synced:
            flags = ACK | (NAK if self._nak_due else 0)
        if self._rst_due:
            flags |= RST
        self._ack_due = self._nak_due = self._rst_due = False
        return (self.expected - 1) & 0xFF if self.rx_synced else 0, flags

    def _transmit(self, i, seq):
        ack, flags = self._ack_flags()
        flags |= ACKREQ
        if not self.synced and seq == self.syn_seq:
            flags |= SYN
        if self._tx[i]:
            self.retransmits += 1
        if self._tx[i] < 255:
            self._tx[i] += 1
        self._sent[i] = self._clock()
        self.stream.write(self._enc.encode_body(self._type[i], seq, ack, flags, self._bodymv[i][: self._len[i]]))

    def _resend_all(self):
        # Go-back-N: the whole window, in order (only the SYN frame while unsynced).
        for k in range(self._count if self.synced else min(self._count, 1)):
            self._transmit((self._head + k) % self.W, (self._base + k) & 0xFF)
        self._timer = self._clock()

    # --- receiving -----------------------------------------------------------

    def poll(self):
        """Read and handle what has arrived, acknowledge it, run the timer. Call it often.

        Errors of the stream (EOFError, OSError) propagate to the caller.
        """
        n = self.stream.readinto(self._rx)
        while n:
            self._dec.feed(self._rx, n)
            n = self.stream.readinto(self._rx) if n == _RX_CHUNK else 0
        for pump in self._pumps:
            pump()
        if self._ack_due or self._nak_due or self._rst_due:
            ack, flags = self._ack_flags()  # one ACK for the whole batch
            self.stream.write(self._enc.encode(_T_ACK, 0, ack, flags, ()))
        self._run_timer()

    def rx_frames(self):
        """Frames received intact (CRC good) so far, ACKs and duplicates too: proof the peer is there."""
        return self._dec.frames

    def recv(self):
        """The oldest (type_id, fields) in the inbox, or None."""
        return self.inbox.pop(0) if self.inbox else None

    def _on_frame(self, type_id, seq, ack, flags, body):
        # The sender side sees acknowledgements before the frame's own content.
        if flags & ACK:
            self._on_ack(ack, flags & NAK)
        if flags & RST:
            self.synced = False
            self.syn_seq = self._base if self._count else self.next_seq
            self._resend_all()
        if not flags & ACKREQ:
            self._deliver(type_id, 0, body)
            return
        if flags & SYN:
            if self.rx_synced and seq == self.session_syn and 0 < ((self.expected - seq) & 0xFF) < 128:
                self._ack_due = True  # the opening frame again: its ACK was lost
                return
            self.expected = self.session_syn = seq
            self.rx_synced = True
            self._nak_sent = False
        if not self.rx_synced:
            self.drops["unsynced"] += 1
            self._rst_due = True
        elif seq == self.expected:
            self.expected = (seq + 1) & 0xFF
            self._nak_sent = False
            self._ack_due = True
            self._deliver(type_id, seq, body)
        elif ((self.expected - 1 - seq) & 0xFF) < 128:
            self.drops["duplicate"] += 1
            self._ack_due = True
        else:
            self.drops["out_of_order"] += 1
            # One NAK per gap, and one more when the sender starts its window over (a
            # frame not after the last one seen past the gap) and again misses `expected`.
            behind = (seq - self._gap_seq) & 0xFF
            if not self._nak_sent or behind == 0 or behind >= 128:
                self._nak_due = self._nak_sent = True
            self._gap_seq = seq

    def _deliver(self, type_id, seq, body):
        if type_id == _T_ACK and not len(body):
            return  # a bare acknowledgement carries nothing to deliver
        fields = srp.unpack(type_id, body)
        if isinstance(fields, int):  # intact frame we cannot use: count it and say so
            self._dec.drop("unknown_type" if fields == srp.ERR_UNKNOWN_TYPE else "body")
            text = "unknown type" if fields == srp.ERR_UNKNOWN_TYPE else "bad body"
            self.send(_T_ERROR, (fields, type_id, seq, text), reliable=False)
        elif self.on_message is not None:
            self.rx_seq = seq
            self.on_message(type_id, fields)
        else:
            self.inbox.append((type_id, fields))

    def _on_ack(self, ack, nak):
        k = (ack - self._base) & 0xFF
        # An ack outside the window is old; while unsynced only the SYN frame (the
        # oldest) may be acknowledged: anything else is the peer's state for our
        # previous session.
        if k < self._count and (self.synced or k == 0):
            k += 1
            last = (self._head + k - 1) % self.W
            if self._tx[last] == 1:  # Karn's rule: no sample from a resent frame
                self._rtt_sample(time.ticks_diff(self._clock(), self._sent[last]))
            self.rto = self._rto_base  # progress ends the backoff
            self._head = (self._head + k) % self.W
            self._base = (self._base + k) & 0xFF
            self._count -= k
            self._retries = 0
            self._timer = self._clock()  # RFC 6298 5.3
            if not self.synced:
                self.synced = True
                self._resend_all()  # the frames held back behind the SYN
                return
        if nak and self._count:
            self._resend_all()

    # --- timer (RFC 6298) ----------------------------------------------------

    def _rtt_sample(self, r):
        if self._srtt8 < 0:
            self._srtt8 = r << 3
            self._rttvar4 = r << 1  # RTTVAR = R/2
        else:
            delta = r - (self._srtt8 >> 3)
            self._srtt8 += delta  # SRTT += (R - SRTT) / 8
            self._rttvar4 += (delta if delta >= 0 else -delta) - (self._rttvar4 >> 2)  # += (|d| - RTTVAR) / 4
        self.rto = self._rto_base = min(max((self._srtt8 >> 3) + self._rttvar4, self._rto_min), self._rto_max)

    def _run_timer(self):
        if not self._count:
            return
        if time.ticks_diff(self._clock(), self._timer) < self.rto:
            return
        if self._retries >= self.max_retries:
            self._peer_gone()
            return
        self._retries += 1
        self.rto = min(self.rto * 2, self._rto_max)
        self._resend_all()

    def _peer_gone(self):
        # Every message in the window is lost; the next one opens a new session.
        self.peer_lost += 1
        for k in range(self._count):  # console bytes among them, for the owner's loss count
            i = (self._head + k) % self.W
            if self._type[i] == _T_CONSOLE:
                self.console_lost += self._len[i] - 1  # less the port byte
        self._count = 0
        self._retries = 0
        self.synced = False
        self.syn_seq = self.next_seq
        self.rto = self._rto_base  # the backoff ends; the line's RTT estimate stays
        if self.on_lost is not None:
            self.on_lost(self.name)

    def idle_ms(self, limit=100):
        """How long the caller may sleep before poll() has timer work: at most `limit`."""
        if not self._count:
            return limit
        left = self.rto - time.ticks_diff(self._clock(), self._timer)
        return max(0, min(left, limit))


class Console:
    """Buffers console output for one port and sends it as CONSOLE_DATA as the window allows.

    write() takes what fits in the buffer and returns how many bytes it took;
    the link's poll() moves buffered bytes into the window.
    """

    def __init__(self, link, port=0, size=2048):
        self.link = link
        self.port = port
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)
        self._start = self._end = 0
        link._pumps.append(self.pump)

    def pending(self):
        return self._end - self._start

    def write(self, data):
        if self._end + len(data) > len(self._buf) and self._start:  # compact: move the rest to the front
            n = self._end - self._start
            self._buf[:n] = self._mv[self._start : self._end]
            self._start, self._end = 0, n
        n = min(len(data), len(self._buf) - self._end)
        self._buf[self._end : self._end + n] = data if n == len(data) else memoryview(data)[:n]
        self._end += n
        self.pump()
        return n

    def pump(self):
        while self._start < self._end and self.link.can_send():
            n = min(self._end - self._start, _CONSOLE_CHUNK)
            self.link.send(_T_CONSOLE, (self.port, self._mv[self._start : self._start + n]))
            self._start += n
        if self._start == self._end:
            self._start = self._end = 0


class PtyStream:
    """A tty for the unix port (e.g. the slave side of a host's pty): raw, reads never block.

    FileIO.readinto(buf) on a tty loops until buf is full unless the tty has
    VMIN=0, and a pty's termios is shared with the host, which may set it back
    (tty.setraw on the master does). So the stream reads one byte per
    poll-readable event, which never blocks whatever VMIN is. End of line (the
    other side closed) raises EOFError.
    """

    def __init__(self, path):
        import select
        import termios  # type: ignore[import-not-found]  # (unix port only; the RP2040 has none)

        self._f = open(path, "r+b")
        termios.setraw(self._f.fileno())
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)
        self._one = bytearray(1)

    def _readable(self, ms):
        for _ in self._poll.ipoll(ms):
            return True
        return False

    def readinto(self, buf):
        n = 0
        while n < len(buf) and self._readable(0):
            try:
                got = self._f.readinto(self._one)
            except OSError:  # EIO: the other side of the pty is gone
                got = 0
            if not got:
                if n:
                    break  # hand over what we have; the next call reports the end
                raise EOFError
            buf[n] = self._one[0]
            n += 1
        return n or None

    def write(self, data):
        return self._f.write(data)

    def wait(self, ms):
        """Sleep until input arrives or `ms` pass."""
        self._readable(ms)

    def close(self):
        self._f.close()
