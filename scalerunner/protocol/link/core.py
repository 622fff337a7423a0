"""The link layer's functional core: docs/protocol.md section 2, without I/O.

``LinkCore`` is both ends of one side of the link: the sender of our numbered
frames and the receiver of the peer's. It never reads a clock or touches a port:
every call that can change its state takes ``now`` (seconds, any monotonic
origin), wire bytes go in through ``receive`` and come out of ``outgoing``, and
what happened comes back as a list of events. The asyncio shell (``Link``) and
the virtual-time simulator (``linksim.VirtualLine``) both drive it the same way::

    core.send(msg, reliable=True, now=t)   # queue a message
    write(core.outgoing())                 # bytes to put on the line
    events = core.receive(read(), now=t)   # bytes that came off the line
    events = core.poll(now=t)              # at core.next_deadline()
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..enums import ErrorCode, MsgType
from ..errors import FrameError, LinkError
from ..framing import Frame, FrameDecoder, encode_frame
from ..layouts import FLAG_ACK, FLAG_ACKREQ, FLAG_NAK, FLAG_RST, FLAG_SYN
from ..messages import LAYOUTS, FieldValue, Message, decode_body, encode_body

SEQ_MOD = 256
MAX_WINDOW = 127  # half the sequence space: beyond it "old" and "new" become ambiguous

Direction = Literal["tx", "rx"]
TraceHook = Callable[[Direction, Frame], None]


class WindowFull(LinkError):
    """``send`` of a reliable message while ``window`` frames are unacknowledged."""


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message from the peer, handed up exactly once (reliable) or at most once."""

    message: Message
    seq: int
    reliable: bool


@dataclass(frozen=True, slots=True)
class Acked:
    """Our reliable messages with these sequence numbers were acknowledged (oldest first)."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """Our reliable messages with these sequence numbers failed: the peer stopped acknowledging.

    The window is empty afterwards and the next message starts a new session (SYN).
    """

    seqs: tuple[int, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class PeerSession:
    """The peer began a sending session (a SYN): at start, after a restart or after it timed out.

    ``previous`` is the ``seq`` that opened the session it replaces, or None if we were not synchronised.
    """

    seq: int
    previous: int | None


@dataclass(frozen=True, slots=True)
class PeerReset:
    """The peer answered RST (it is not synchronised to us); our window goes again, led by a SYN."""

    syn_seq: int


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A frame that passed the CRC but whose type or body we cannot decode; it was answered with ERROR."""

    reason: str  # "unknown_type" or "body"
    type: int
    seq: int
    reliable: bool
    detail: str


Event = Delivered | Acked | Failed | PeerSession | PeerReset | Undecodable


# --- state -------------------------------------------------------------------------------------


@dataclass
class LinkStats:
    """Counters of one side of a link (all monotonic)."""

    drops: Counter[str] = field(default_factory=Counter)  # by reason, errors.DROP_REASONS
    duplicate: int = 0  # reliable frames received again (re-acknowledged)
    out_of_order: int = 0  # reliable frames received after a gap (dropped)
    unsynced: int = 0  # reliable frames received before the peer's SYN (answered RST)
    retransmits: int = 0  # frames sent more than once
    timeouts: int = 0  # retransmission timer expiries
    failed: int = 0  # our messages given up on (peer timeout)
    delivered: int = 0  # messages handed up
    acked: int = 0  # our reliable messages acknowledged
    naks_sent: int = 0
    rsts_sent: int = 0
    naks_received: int = 0
    rsts_received: int = 0
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        """Every counter by name; drops as ``drop_<reason>`` (only the reasons seen)."""
        out = {f"drop_{reason}": n for reason, n in sorted(self.drops.items())}
        out.update({name: value for name, value in vars(self).items() if isinstance(value, int)})
        return out


@dataclass(slots=True)
class _Outstanding:
    """A reliable frame in the send window (its body is encoded once, the header on every send)."""

    seq: int
    type: int
    body: bytes
    first_sent: float
    last_sent: float
    sends: int = 0


@dataclass(frozen=True, slots=True)
class _Unreliable:
    type: int
    body: bytes


class LinkCore:
    """Go-back-N sender and in-order receiver of one side of a link (docs/protocol.md section 2).

    ``name`` (the port) is used in error messages. ``window`` is W, the most unacknowledged frames we
    keep (1..127). RTO follows RFC 6298 within [``rto_min``, ``rto_max``] and starts at ``rto_init``;
    after ``max_retries`` consecutive timeouts without progress every message in the window fails.
    ``initial_seq`` fixes the first sequence number (else it is drawn from ``rng``).
    ``trace`` is called with ("tx" | "rx", frame) for every frame sent or decoded.

    Where this core is more precise than the text of section 2 (each is wire-compatible with a peer
    that follows the text):

    - Until its SYN frame is acknowledged, the sender sends only that frame and takes only an ACK of
      exactly it; the rest of the window follows the ACK. An ACK beyond it can only be stale (the
      peer's receiver state for our previous incarnation) and would release frames never received.
    - An ACK that takes frames out of the window restarts the timer (RFC 6298 5.3) and ends the
      exponential backoff, as it resets the retry count; Karn's rule still governs RTT samples.
    - A SYN whose seq is the session's own is a repeat only if ``0 < (expected - seq) mod 256 <= 127``:
      a receiver does not know its peer's W, and ``expected == seq`` is a new session after a wrap.
    - After a gap the receiver NAKs once, and once more whenever the sender visibly starts its window
      over (a frame not after the last one seen past the gap) and still misses ``expected``.
    - ERROR answers to undecodable frames are sent unreliably.
    """

    def __init__(
        self,
        *,
        name: str = "link",
        window: int = 8,
        rto_init: float = 0.25,
        rto_min: float = 0.02,
        rto_max: float = 2.0,
        max_retries: int = 8,
        initial_seq: int | None = None,
        rng: random.Random | None = None,
        trace: TraceHook | None = None,
    ) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window {window} outside 1..{MAX_WINDOW}")
        if not 0 < rto_min <= rto_max:
            raise ValueError(f"need 0 < rto_min ({rto_min}) <= rto_max ({rto_max})")
        if max_retries < 0:
            raise ValueError(f"max_retries {max_retries} < 0")
        if initial_seq is not None and not 0 <= initial_seq < SEQ_MOD:
            raise ValueError(f"initial_seq {initial_seq} outside 0..255")
        self.name = name
        self.window = window
        self.rto_init = min(max(rto_init, rto_min), rto_max)
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.max_retries = max_retries
        self.trace = trace
        self.stats = LinkStats()
        self._decoder = FrameDecoder(on_drop=self._on_drop)
        self._now = 0.0
        self._opened = False
        # sender
        self._next_seq = (
            initial_seq if initial_seq is not None else (rng or random.Random()).randrange(SEQ_MOD)
        )
        self._window: deque[_Outstanding] = deque()
        self._tx: list[_Outstanding | _Unreliable] = []
        self._synced = False
        self._syn_seq = self._next_seq
        self._retries = 0
        self._progress_at = 0.0  # when an ACK last took frames out of the window
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = self.rto_init
        # receiver
        self._expected = 0
        self._rx_synced = False
        self._session_syn = 0
        self._nak_sent = False
        self._gap_seq = 0  # the last frame seen after a gap
        self._ack_pending = False
        self._nak_pending = False
        self._rst_pending = False

    # --- read-only state ---

    @property
    def rto(self) -> float:
        return self._rto

    @property
    def srtt(self) -> float | None:
        return self._srtt

    @property
    def in_flight(self) -> int:
        """Reliable messages sent and not yet acknowledged (or failed)."""
        return len(self._window)

    @property
    def synced(self) -> bool:
        """The peer has acknowledged our session's SYN frame."""
        return self._synced

    @property
    def peer_synced(self) -> bool:
        """We have seen the SYN of the peer's current session."""
        return self._rx_synced

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def can_send(self) -> bool:
        """A reliable message can be sent now (the window has room)."""
        return len(self._window) < self.window

    def next_deadline(self) -> float | None:
        """When ``poll`` next has work to do (the retransmission timer), or None."""
        if not self._window:
            return None
        # RFC 6298 (5.3): an ACK of new frames restarts the timer, so frames queued behind others
        # in the byte stream's buffers do not time out while acknowledgements keep coming.
        return max(self._window[0].last_sent, self._progress_at) + self._rto

    # --- sender ---

    def send(self, msg: Message, *, reliable: bool, now: float) -> int | None:
        """Queue ``msg``; return its ``seq`` if reliable. Raise EncodeError or WindowFull."""
        self._now = now
        body = encode_body(msg)
        if not reliable:
            self._tx.append(_Unreliable(int(msg.type), body))
            return None
        if not self.can_send():
            raise WindowFull(self.name, f"send window full ({self.window} frames unacknowledged)")
        seq = self._next_seq
        self._next_seq = (seq + 1) % SEQ_MOD
        entry = _Outstanding(seq, int(msg.type), body, first_sent=now, last_sent=now)
        self._window.append(entry)
        if self._synced or len(self._window) == 1:  # unsynced: only the SYN frame travels (see _on_ack)
            self._tx.append(entry)
        return seq

    def outgoing(self) -> bytes:
        """Drain the bytes to write: queued frames, each carrying our ACK; else a lone ACK if one is due.

        The first call also returns the 0x00 that opens the line.
        """
        out = bytearray()
        if not self._opened:
            self._opened = True
            out += b"\x00"
        items = self._tx
        self._tx = []
        frames: list[tuple[int, int, int, bytes]] = []
        for item in items:
            if isinstance(item, _Outstanding):
                flags = FLAG_ACKREQ
                if not self._synced and item.seq == self._syn_seq:
                    flags |= FLAG_SYN
                item.sends += 1
                item.last_sent = self._now
                if item.sends > 1:
                    self.stats.retransmits += 1
                frames.append((item.type, item.seq, flags, item.body))
            else:
                frames.append((item.type, 0, 0, item.body))
        if not frames and (self._ack_pending or self._nak_pending or self._rst_pending):
            frames.append((int(MsgType.ACK), 0, 0, b""))
        ack = (self._expected - 1) % SEQ_MOD
        for i, (type_id, seq, flags, body) in enumerate(frames):
            if self._rx_synced:
                flags |= FLAG_ACK
            if i == 0:
                if self._nak_pending:
                    flags |= FLAG_NAK
                    self.stats.naks_sent += 1
                if self._rst_pending:
                    flags |= FLAG_RST
                    self.stats.rsts_sent += 1
            frame = Frame(type=type_id, seq=seq, ack=ack if flags & FLAG_ACK else 0, flags=flags, body=body)
            if self.trace is not None:
                self.trace("tx", frame)
            out += encode_frame(frame)
        self._ack_pending = self._nak_pending = self._rst_pending = False
        self.stats.frames_out += len(frames)
        self.stats.bytes_out += len(out)
        return bytes(out)

    def poll(self, now: float) -> list[Event]:
        """Run the retransmission timer: resend the window on timeout, or fail it after max_retries."""
        self._now = now
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        self.stats.timeouts += 1
        if self._retries >= self.max_retries:
            return [self._fail_window(now)]
        self._retries += 1
        self._rto = min(self._rto * 2, self.rto_max)
        self._resend_window()
        return []

    def _fail_window(self, now: float) -> Failed:
        seqs = tuple(e.seq for e in self._window)
        waited = now - self._window[0].first_sent
        self._window.clear()
        self._tx = [item for item in self._tx if isinstance(item, _Unreliable)]
        self._synced = False
        self._syn_seq = self._next_seq
        self._retries = 0
        self._rto = self._rto_from_estimate()
        self.stats.failed += len(seqs)
        detail = f"peer stopped acknowledging: no progress after {self.max_retries} retries ({waited:.2f} s)"
        return Failed(seqs, detail)

    def _resend_window(self) -> None:
        """Queue every frame of the window again, in order, after any unreliable frames queued.

        While not synced only the SYN frame (always the oldest then) goes; the rest wait for its ACK.
        """
        self._tx = [item for item in self._tx if isinstance(item, _Unreliable)]
        for entry in self._window if self._synced else list(self._window)[:1]:
            entry.last_sent = self._now
            self._tx.append(entry)

    def _on_ack(self, ack: int, events: list[Event]) -> None:
        if not self._window:
            return
        n = (ack - self._window[0].seq) % SEQ_MOD + 1
        if n > len(self._window):
            return  # not in the window: an old acknowledgement
        if not self._synced and n != 1:
            # Only the SYN frame is in flight until it is acknowledged, so an ACK beyond it is stale: the
            # peer's receiver state from before we (re)started our session, whose numbers may fall in
            # our new window by chance. Taking it would drop frames the peer never saw.
            return
        acked = [self._window.popleft() for _ in range(n)]
        gone = {id(e) for e in acked}
        if any(id(item) in gone for item in self._tx):
            self._tx = [item for item in self._tx if id(item) not in gone]
        self._retries = 0
        self._progress_at = self._now
        # The peer answers again: the backoff ends (RTO from the estimate), as the retry count does.
        self._rto = self._rto_from_estimate()
        if not self._synced:
            self._synced = True
            self._resend_window()  # the frames held back behind the SYN
        newest = acked[-1]
        if newest.sends == 1:  # Karn: only frames sent once give a round-trip sample
            self._rtt_sample(self._now - newest.last_sent)
        self.stats.acked += n
        events.append(Acked(tuple(e.seq for e in acked)))

    def _on_rst(self, events: list[Event]) -> None:
        self.stats.rsts_received += 1
        self._synced = False
        self._syn_seq = self._window[0].seq if self._window else self._next_seq
        self._resend_window()
        events.append(PeerReset(self._syn_seq))

    def _rtt_sample(self, rtt: float) -> None:
        """RFC 6298 section 2."""
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = self._rto_from_estimate()

    def _rto_from_estimate(self) -> float:
        if self._srtt is None:
            return self.rto_init
        return min(max(self._srtt + 4 * self._rttvar, self.rto_min), self.rto_max)

    # --- receiver ---

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed wire bytes; return what they caused. Acknowledgements go out with the next ``outgoing``."""
        self._now = now
        self.stats.bytes_in += len(data)
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            self.stats.frames_in += 1
            if self.trace is not None:
                self.trace("rx", frame)
            self._on_frame(frame, events)
        return events

    def _on_drop(self, err: FrameError) -> None:
        self.stats.drops[err.reason] += 1

    def _on_frame(self, frame: Frame, events: list[Event]) -> None:
        # The sender side sees the control flags before the frame's own content is processed.
        if frame.flags & FLAG_ACK:
            self._on_ack(frame.ack, events)
            if frame.flags & FLAG_NAK:
                self.stats.naks_received += 1
                self._resend_window()
        if frame.flags & FLAG_RST:
            self._on_rst(events)
        if frame.flags & FLAG_ACKREQ:
            self._on_reliable(frame, events)
        elif frame.type != MsgType.ACK or frame.body:
            self._deliver(frame, False, events)

    def _on_reliable(self, frame: Frame, events: list[Event]) -> None:
        seq = frame.seq
        if frame.flags & FLAG_SYN:
            since = (self._expected - seq) % SEQ_MOD
            # A repeat of the SYN that opened this session (its ACK was lost). A receiver does not know
            # its peer's window, so it allows the largest one; `since` 0 is a new session, not a repeat.
            if self._rx_synced and seq == self._session_syn and 0 < since <= MAX_WINDOW:
                self.stats.duplicate += 1
                self._ack_pending = True
                return
            previous = self._session_syn if self._rx_synced else None
            self._expected = seq
            self._session_syn = seq
            self._rx_synced = True
            self._nak_sent = False
            self._rst_pending = False
            events.append(PeerSession(seq, previous))
        if not self._rx_synced:
            self.stats.unsynced += 1
            self._rst_pending = True
            return
        if seq == self._expected:
            self._expected = (seq + 1) % SEQ_MOD
            self._nak_sent = False
            self._ack_pending = True
            if frame.type != MsgType.ACK or frame.body:
                self._deliver(frame, True, events)
        elif (self._expected - 1 - seq) % SEQ_MOD < SEQ_MOD // 2:
            self.stats.duplicate += 1
            self._ack_pending = True
        else:
            self.stats.out_of_order += 1
            # One NAK per gap, and one more each time the sender starts its window over (a frame that
            # is not after the last one seen past the gap) and that round again misses `expected`;
            # otherwise a lost retransmission would wait for a whole RTO.
            behind = (seq - self._gap_seq) % SEQ_MOD
            new_round = self._nak_sent and (behind == 0 or behind >= SEQ_MOD // 2)
            if not self._nak_sent or new_round:
                self._nak_sent = True
                self._nak_pending = True
            self._gap_seq = seq

    def _deliver(self, frame: Frame, reliable: bool, events: list[Event]) -> None:
        try:
            msg = decode_body(frame.type, frame.body)
        except FrameError as err:
            self.stats.drops[err.reason] += 1
            events.append(Undecodable(err.reason, frame.type, frame.seq, reliable, err.detail))
            code = ErrorCode.UNKNOWN_TYPE if err.reason == "unknown_type" else ErrorCode.BAD_BODY
            self._queue_error(code, frame, err.detail)
            return
        self.stats.delivered += 1
        events.append(Delivered(msg, frame.seq, reliable))

    def _queue_error(self, code: ErrorCode, frame: Frame, detail: str) -> None:
        limit = LAYOUTS[MsgType.ERROR].max_tail
        text = detail.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
        fields: dict[str, FieldValue] = {
            "code": int(code),
            "ref_type": frame.type,
            "ref_seq": frame.seq,
            "text": text,
        }
        self._tx.append(_Unreliable(int(MsgType.ERROR), encode_body(Message(MsgType.ERROR, fields))))
