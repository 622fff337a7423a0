"""The agent's side of the serial link to its LED indicator, without I/O: docs/protocol.md section 2
with a window of one frame.

Why not ``protocol.link.LinkCore``: it is built on the construct codec, which costs the agent about
2.5 MB of its 30 MB budget. The agent sends one request at a time and waits for its answer, so a
window of one (stop-and-wait, a go-back-N with W = 1) is all it needs: the sender rules 1-7 of section
2 collapse to one frame in flight, and the receiver rules are those of section 2, whole.
tests/test_agent_ledlink.py runs it against ``LinkCore`` over a lossy line, and the agent's LED tests
against the real firmware.

Driven like ``LinkCore``: ``send`` a message, write ``outgoing()``, feed what the line gives to
``receive`` (it returns the peer's messages), and call ``poll`` at ``next_deadline()``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from ..protocol import layouts
from ..protocol.errors import FrameError
from ..protocol.lite import Fields, LiteDecoder, LiteFrame, decode_body, encode_body, encode_frame

ACKREQ, ACK, SYN, NAK, RST = (
    layouts.FLAG_ACKREQ,
    layouts.FLAG_ACK,
    layouts.FLAG_SYN,
    layouts.FLAG_NAK,
    layouts.FLAG_RST,
)
T_ACK = 0x00


@dataclass(slots=True)
class _InFlight:
    seq: int
    type: int
    body: bytes
    sent_at: float = 0.0
    sends: int = 0


class StopAndWait:
    """One reliable message in flight at a time; the peer's reliable messages acknowledged in order.

    ``failed`` turns true when the peer did not acknowledge after ``max_retries`` resends (the caller
    reports the port as silent); the next ``send`` starts a new session with SYN.
    """

    def __init__(
        self,
        *,
        rto_init: float = 0.25,
        rto_min: float = 0.02,
        rto_max: float = 2.0,
        max_retries: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        self.rto_min, self.rto_max, self.max_retries = rto_min, rto_max, max_retries
        self.rto = min(max(rto_init, rto_min), rto_max)
        self.drops: Counter[str] = Counter()
        self.failed = False
        self._decoder = LiteDecoder()
        self._out = bytearray()
        # sender
        self._next_seq = (rng or random.Random()).randrange(256)
        self._synced = False
        self._flight: _InFlight | None = None
        self._retries = 0
        self._srtt: float | None = None
        self._rttvar = 0.0
        # receiver
        self._expected = 0
        self._rx_synced = False
        self._session_syn = 0
        self._nak_sent = False

    @property
    def busy(self) -> bool:
        """A reliable message is waiting for its acknowledgement."""
        return self._flight is not None

    def next_deadline(self) -> float | None:
        return None if self._flight is None else self._flight.sent_at + self.rto

    def outgoing(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    # -- sender --

    def send(self, type_id: int, fields: Fields, now: float) -> None:
        """Queue a reliable message; EncodeError if it does not fit its layout."""
        if self._flight is not None:
            raise RuntimeError("a message is already in flight")
        body = encode_body(type_id, fields)
        self._flight = _InFlight(self._next_seq, type_id, body)
        self._next_seq = (self._next_seq + 1) % 256
        self.failed = False
        self._retries = 0
        self._transmit(now)

    def _transmit(self, now: float) -> None:
        f = self._flight
        assert f is not None
        flags = ACKREQ | (0 if self._synced else SYN)
        ack = 0
        if self._rx_synced:
            flags |= ACK
            ack = (self._expected - 1) % 256
        self._out += encode_frame(LiteFrame(f.type, f.seq, ack, flags, f.body))
        f.sent_at = now
        f.sends += 1

    def poll(self, now: float) -> None:
        """The retransmission timer: resend with a doubled RTO, or give up after ``max_retries``."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return
        if self._retries >= self.max_retries:
            self._flight = None
            self._synced = False  # the next message opens a new session
            self.failed = True
            return
        self._retries += 1
        self.rto = min(self.rto * 2, self.rto_max)
        self._transmit(now)

    def _on_ack(self, frame: LiteFrame, now: float) -> None:
        f = self._flight
        if f is not None and frame.ack == f.seq:
            if f.sends == 1:  # Karn: only frames sent once give a round-trip sample (RFC 6298)
                sample = now - f.sent_at
                if self._srtt is None:
                    self._srtt, self._rttvar = sample, sample / 2
                else:
                    self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
                    self._srtt = 0.875 * self._srtt + 0.125 * sample
            if self._srtt is not None:
                self.rto = min(max(self._srtt + 4 * self._rttvar, self.rto_min), self.rto_max)
            self._flight = None
            self._synced = True
            self._retries = 0
        elif f is not None and frame.flags & NAK:
            self._transmit(now)

    # -- receiver --

    def receive(self, data: bytes, now: float) -> list[tuple[int, Fields]]:
        """The peer's messages in ``data``, in order, each once; acknowledgements are queued."""
        delivered: list[tuple[int, Fields]] = []
        ack = rst = False
        for frame in self._decoder.feed(data):
            if frame.flags & ACK:
                self._on_ack(frame, now)
            if frame.flags & RST and self._flight is not None:
                self._synced = False
                self._transmit(now)
            if frame.flags & ACKREQ:
                verdict = self._reliable(frame)
                ack = ack or verdict in ("deliver", "ack")
                rst = rst or verdict == "rst"
                if verdict != "deliver":
                    continue
            elif frame.type == T_ACK:
                continue
            try:
                delivered.append((frame.type, decode_body(frame.type, frame.body)))
            except FrameError as err:
                self.drops[err.reason] += 1
        for reason, n in self._decoder.drops.items():
            self.drops[reason] += n
        self._decoder.drops.clear()
        if ack or rst:
            flags = (ACK if ack else 0) | (RST if rst and not self._rx_synced else 0)
            self._out += encode_frame(LiteFrame(T_ACK, 0, (self._expected - 1) % 256, flags, b""))
        return delivered

    def _reliable(self, frame: LiteFrame) -> str:
        seq = frame.seq
        if frame.flags & SYN:
            repeat = self._rx_synced and seq == self._session_syn
            if repeat and 0 < (self._expected - seq) % 256 <= 127:
                return "ack"  # the frame that opened this session again: its ACK was lost
            self._expected, self._session_syn, self._rx_synced, self._nak_sent = seq, seq, True, False
        if not self._rx_synced:
            self.drops["unsynced"] += 1
            return "rst"
        if seq == self._expected:
            self._expected = (seq + 1) % 256
            self._nak_sent = False
            return "deliver"
        if (self._expected - 1 - seq) % 256 < 128:
            self.drops["duplicate"] += 1
            return "ack"
        self.drops["out_of_order"] += 1
        if not self._nak_sent:
            self._nak_sent = True
            self._out += encode_frame(LiteFrame(T_ACK, 0, (self._expected - 1) % 256, ACK | NAK, b""))
        return "drop"


__all__ = ["StopAndWait"]
