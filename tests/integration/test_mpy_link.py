"""The MicroPython link (srplink.py, run by demo_peer.py under the real unix port) against the host's
asyncio ``Link``, over a pty pair: the same bytes a USB CDC or UART would carry.

The host keeps the pty's slave side open for the whole test, so a device that dies leaves a silent line
(not an end of file) and a restarted device finds the same path.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scalerunner.protocol import (
    DeviceKind,
    ErrorCode,
    EventLevel,
    Frame,
    FrameDecoder,
    Message,
    MsgType,
    PeerTimeout,
    PowerState,
    encode_frame,
)
from scalerunner.protocol.link import Link
from scalerunner.protocol.link.streams import FdStream
from tests.mpy_support import micropython_binary, recv_type

pytestmark = [pytest.mark.micropython, pytest.mark.slow, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
DEMO_PEER = REPO / "scalerunner" / "protocol" / "mpy" / "demo_peer.py"
STEP = 5.0  # seconds any single exchange may take
EV_DROPS = 0x0200  # demo_peer's EVENT code for "link drops"


@dataclass
class Pty:
    master: int
    slave: int
    path: str
    master_open: bool = True

    def stream(self) -> FdStream:
        """A host stream on a duplicate of the master: the link may close it, the line stays up."""
        return FdStream(os.dup(self.master), f"pty:{self.path}")

    def hang_up(self) -> None:
        if self.master_open:
            self.master_open = False
            os.close(self.master)


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    tty.setraw(slave)  # raw before the device opens it: no echo, no line discipline
    p = Pty(master, slave, os.ttyname(slave))
    try:
        yield p
    finally:
        p.hang_up()
        os.close(slave)


@dataclass
class Devices:
    """demo_peer processes; every one is stopped when the test ends."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, path: str, kind: int = DeviceKind.LED) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [micropython_binary(), str(DEMO_PEER), path, str(kind)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def devices() -> Iterator[Devices]:
    d = Devices()
    try:
        yield d
    finally:
        d.stop_all()


def exit_line(proc: subprocess.Popen[bytes]) -> str:
    """The device's last words after its line closed; it must exit by itself, with status 0."""
    out, _ = proc.communicate(timeout=STEP)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def exit_counts(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


async def read_console(link: Link, port: int, n: int) -> bytes:
    got = b""
    async with asyncio.timeout(STEP):
        while len(got) < n:
            got += await link.console.read(port)
    return got


async def ping(link: Link, token: int, stale: list[Message] | None = None) -> Message:
    """PING and its PONG; an earlier PONG (resent to a new host session) goes to ``stale`` if given."""
    await link.send(Message.make("PING", token=token))
    while True:
        pong = await recv_type(link, MsgType.PONG)
        if pong["token"] == token or stale is None:
            break
        stale.append(pong)
    assert pong["token"] == token
    return pong


def test_device_says_hello_answers_commands_and_echoes_the_console(pty: Pty, devices: Devices) -> None:
    async def scenario() -> None:
        dev = devices.start(pty.path, DeviceKind.BMC)
        async with Link(pty.stream()) as link:
            hello = await recv_type(link, MsgType.HELLO)
            assert (hello["kind"], hello["proto"]) == (DeviceKind.BMC, 1)
            assert isinstance(hello["uid"], bytes) and len(hello["uid"]) == 8
            await ping(link, 0xC0FFEE01)
            await link.send(Message.make("POWER", action=1))
            status = await recv_type(link, MsgType.STATUS)
            assert status["power_state"] == PowerState.ON and status["rail_mv"] > 0
            await link.send(Message.make("LED_SET", mode=1, r=255, g=0, b=0, brightness=9, period_ms=0))
            event = await recv_type(link, MsgType.EVENT)
            assert event["level"] == EventLevel.INFO and "SOLID" in str(event["text"])
            await link.send(Message.make("LED_SET", mode=9, r=1, g=2, b=3, brightness=4, period_ms=5))
            error = await recv_type(link, MsgType.ERROR)
            assert (error["code"], error["ref_type"]) == (ErrorCode.BAD_VALUE, MsgType.LED_SET)
            # Frames the device cannot use, written raw beside the link (unreliable, so they take no seq).
            os.write(pty.master, encode_frame(Frame(type=0x55, body=b"?")))
            error = await recv_type(link, MsgType.ERROR)
            assert (error["code"], error["ref_type"]) == (ErrorCode.UNKNOWN_TYPE, 0x55)
            os.write(pty.master, encode_frame(Frame(type=MsgType.PING, body=b"abc")))
            error = await recv_type(link, MsgType.ERROR)
            assert (error["code"], error["ref_type"]) == (ErrorCode.BAD_BODY, MsgType.PING)
            # The console: a few KB on two ports at once, each echoed intact and in order.
            rng = random.Random(7)
            data = {port: rng.randbytes(3000 + 500 * port) for port in (0, 2)}
            for port, payload in data.items():
                await link.console.write(payload, port=port)
            await link.console.drain()
            for port, payload in data.items():
                assert await read_console(link, port, len(payload)) == payload
        pty.hang_up()
        counts = exit_counts(exit_line(dev))
        assert counts.get("unknown_type") == 1 and counts.get("body") == 1 and counts["console_lost"] == 0

    asyncio.run(scenario())


def test_garbage_on_the_line_is_counted_and_the_link_keeps_working(pty: Pty, devices: Devices) -> None:
    async def scenario() -> None:
        dev = devices.start(pty.path)
        async with Link(pty.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            good = encode_frame(Message.make("PING", token=1).to_frame(seq=9, flags=1))
            bad_crc = bytearray(good)
            bad_crc[5] ^= 0x40
            garbage = [
                b"\x00garbage\x00",  # cobs
                b"\x07" * 300 + b"\x00",  # oversize
                bytes(bad_crc),  # crc
                b"\x02\x01\x00",  # short
            ]
            for chunk in garbage:
                os.write(pty.master, chunk)
            await ping(link, 77)
            # The device reports its drop counters in an EVENT (at most every 200 ms): wait for all four.
            reported: dict[str, int] = {}
            while not {"cobs", "oversize", "crc", "short"} <= reported.keys():
                report = await recv_type(link, MsgType.EVENT)
                if report["code"] == EV_DROPS:
                    assert report["level"] == EventLevel.WARNING
                    reported = exit_counts(str(report["text"]))
            # still fully working: a command and a console round trip
            await ping(link, 78)
            await link.console.write(b"still here\n", port=1)
            assert await read_console(link, 1, 11) == b"still here\n"
        pty.hang_up()
        final = exit_counts(exit_line(dev))
        assert final["cobs"] >= 1 and final["oversize"] == 1 and final["crc"] == 1 and final["short"] == 1

    asyncio.run(scenario())


class DamagingStream:
    """A host stream that flips a bit in every ``every``-th chunk written and read: a noisy line."""

    def __init__(self, inner: FdStream, every_write: int, every_read: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.every_write, self.every_read = every_write, every_read
        self.writes = self.reads = 0
        self.damaged_out = self.damaged_in = 0
        self.rng = random.Random(1)

    def _damage(self, data: bytes) -> bytes:
        buf = bytearray(data)
        buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
        return bytes(buf)

    async def read(self) -> bytes:
        data = await self.inner.read()
        self.reads += 1
        if data and self.reads % self.every_read == 0:
            self.damaged_in += 1
            data = self._damage(data)
        return data

    async def write(self, data: bytes) -> None:
        self.writes += 1
        if data and self.writes % self.every_write == 0:
            self.damaged_out += 1
            data = self._damage(data)
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()


def test_a_noisy_line_loses_nothing_in_either_direction(pty: Pty, devices: Devices) -> None:
    async def scenario() -> None:
        dev = devices.start(pty.path)
        noisy = DamagingStream(pty.stream(), every_write=5, every_read=4)
        async with Link(noisy, rto_init=0.05, rto_min=0.02, rto_max=0.5) as link:
            await recv_type(link, MsgType.HELLO)
            for token in range(20):
                await ping(link, token)
            payload = random.Random(3).randbytes(4000)
            await link.console.write(payload, port=0)
            await link.console.drain()
            assert await read_console(link, 0, len(payload)) == payload
            host_retransmits = link.stats.retransmits
        pty.hang_up()
        device = exit_counts(exit_line(dev))
        assert noisy.damaged_out > 0 and noisy.damaged_in > 0
        # the device saw the damage and dropped it; both sides had to resend
        assert sum(device.get(r, 0) for r in ("cobs", "short", "oversize", "crc", "length")) > 0
        assert device["retransmits"] > 0 and host_retransmits > 0

    asyncio.run(scenario())


def test_a_killed_device_times_out_and_a_restarted_one_is_served(pty: Pty, devices: Devices) -> None:
    async def scenario() -> None:
        first = devices.start(pty.path)
        async with Link(pty.stream(), rto_init=0.05, rto_min=0.02, rto_max=0.2, max_retries=3) as link:
            hello = await recv_type(link, MsgType.HELLO)
            await ping(link, 1)
            first.kill()
            first.wait()
            with pytest.raises(PeerTimeout):
                async with asyncio.timeout(STEP):
                    await link.send(Message.make("PING", token=2))
            second = devices.start(pty.path)  # a new process: a new session and a new uid
            hello2 = await recv_type(link, MsgType.HELLO)
            assert hello2["uid"] != hello["uid"]
            await ping(link, 3)
            await link.console.write(b"after restart", port=0)
            assert await read_console(link, 0, 13) == b"after restart"
        pty.hang_up()
        exit_line(second)

    asyncio.run(scenario())


def test_a_restarted_host_is_resynchronised_by_rst(pty: Pty, devices: Devices) -> None:
    # The device keeps its session; the new host's receiver knows none, answers RST, and the device
    # must resend with SYN. (If the old host left before acknowledging PONG 1, the new one gets it too:
    # go-back-N hands the window to whoever is on the line.)
    async def scenario() -> None:
        dev = devices.start(pty.path)
        async with Link(pty.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            await ping(link, 1)
        async with Link(pty.stream()) as link:
            stale: list[Message] = []
            await ping(link, 2, stale)
            assert all(m["token"] == 1 for m in stale)
            assert link.stats.rsts_sent >= 1
            await link.console.write(b"x" * 600, port=0)
            assert await read_console(link, 0, 600) == b"x" * 600
        pty.hang_up()
        exit_line(dev)

    asyncio.run(scenario())


# --- the link's rules one by one, exact frames in and out, on a fake stream and clock ----------------

LINK_DRIVER = """
import sys, json, binascii
sys.path.append(sys.argv[1] + "/scalerunner/protocol")
sys.path.append(sys.argv[1] + "/scalerunner/protocol/mpy")
import srp, srplink

class Stream:
    def __init__(self):
        self.inq = bytearray()
        self.out = bytearray()
    def readinto(self, buf):
        n = min(len(buf), len(self.inq))
        buf[:n] = self.inq[:n]
        self.inq = self.inq[n:]
        return n or None
    def write(self, data):
        self.out += data
        return len(data)

now = [0]
link = stream = None
delivered = []
lost = []

def on_message(t, f):
    f = [binascii.hexlify(v).decode() if isinstance(v, bytes) else v for v in f]
    delivered.append([t, link.rx_seq] + f)
    if t == srp.TYPE_IDS["PING"] and echo:  # answer at once, as demo_peer does
        link.send(srp.TYPE_IDS["PONG"], (f[0], 0))

def state():
    out = binascii.hexlify(stream.out).decode()
    stream.out = bytearray()
    d = list(delivered)
    del delivered[:]
    return {"out": out, "delivered": d, "lost": len(lost), "rto": link.rto, "synced": link.synced,
            "next_seq": link.next_seq, "drops": link.drops, "retransmits": link.retransmits}

echo = False
while True:
    line = sys.stdin.readline()
    if not line or line[0] == "Q":
        break
    cmd, arg = line[0], line[2:].strip()
    if cmd == "N":
        opts = json.loads(arg)
        echo = opts.pop("echo", False)
        now[0] = 0
        stream = Stream()
        link = srplink.Link(stream, on_message=on_message, clock=lambda: now[0], **opts)
        link.on_lost = lost.append
        ok = True
    elif cmd == "S":
        m = json.loads(arg)
        ok = link.send(m["type"], tuple(m["fields"]), m.get("reliable", True))
    elif cmd == "I":
        stream.inq += binascii.unhexlify(arg)
        link.poll()
        ok = True
    elif cmd == "T":
        now[0] += int(arg)
        link.poll()
        ok = True
    answer = state()
    answer["ok"] = ok
    print(json.dumps(answer))
"""

R, A, S, NAK, RST = 0x01, 0x02, 0x04, 0x08, 0x10


class LinkDriver:
    """srplink.Link in one MicroPython process, on a fake stream and a fake millisecond clock."""

    def __init__(self, script: Path) -> None:
        self.proc = subprocess.Popen(
            [micropython_binary(), str(script), str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def ask(self, cmd: str, arg: object = "") -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        text = arg if isinstance(arg, str) else json.dumps(arg)
        self.proc.stdin.write(f"{cmd} {text}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        try:
            answer: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"link driver failed: {line}{self.proc.stdout.read()}") from None
        answer["frames"] = FrameDecoder().feed(bytes.fromhex(answer["out"]))
        return answer

    def new(self, **opts: object) -> dict[str, Any]:
        return self.ask("N", opts)

    def send(self, msg: Message, reliable: bool = True) -> dict[str, Any]:
        fields = [v.hex() if isinstance(v, bytes) else v for v in msg.fields.values()]
        return self.ask("S", {"type": int(msg.type), "fields": fields, "reliable": reliable})

    def feed(self, *frames: Frame) -> dict[str, Any]:
        return self.ask("I", b"".join(encode_frame(f) for f in frames).hex())

    def advance(self, ms: int) -> dict[str, Any]:
        return self.ask("T", str(ms))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("Q\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def drv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkDriver]:
    script = tmp_path_factory.mktemp("mpy") / "link_driver.py"
    script.write_text(LINK_DRIVER)
    d = LinkDriver(script)
    try:
        yield d
    finally:
        d.close()


def hdr(f: Frame) -> tuple[int, int, int, int]:
    return (f.type, f.seq, f.ack, f.flags)


PING = Message.make("PING", token=7)


def ping_frame(seq: int, flags: int = R, ack: int = 0) -> Frame:
    return PING.to_frame(seq=seq, ack=ack, flags=flags)


def test_first_reliable_frame_opens_the_session_with_syn_and_goes_alone(drv: LinkDriver) -> None:
    assert drv.new(seq=250)["out"] == "00"  # one 0x00 opens the line
    (f,) = drv.send(PING)["frames"]
    assert hdr(f) == (MsgType.PING, 250, 0, R | S) and Message.from_frame(f) == PING
    assert drv.send(PING)["frames"] == []  # held back until the SYN frame is acknowledged
    # the timer resends only the SYN frame, SYN still set
    assert [hdr(f) for f in drv.advance(250)["frames"]] == [(MsgType.PING, 250, 0, R | S)]
    st = drv.feed(Frame(type=MsgType.ACK, ack=250, flags=A))
    assert st["synced"] and [hdr(f) for f in st["frames"]] == [(MsgType.PING, 251, 0, R)]


def test_an_ack_beyond_the_syn_frame_is_stale_and_releases_nothing(drv: LinkDriver) -> None:
    # The peer's receiver may still hold our previous session: its ACK must not release new frames.
    drv.new(seq=10)
    drv.send(PING)
    drv.send(PING)
    st = drv.feed(Frame(type=MsgType.ACK, ack=11, flags=A))
    assert not st["synced"] and st["frames"] == []
    assert [hdr(f) for f in drv.advance(250)["frames"]] == [(MsgType.PING, 10, 0, R | S)]


def test_a_full_window_refuses_and_a_cumulative_ack_makes_room(drv: LinkDriver) -> None:
    drv.new(seq=254, window=2)
    drv.send(PING)
    drv.feed(Frame(type=MsgType.ACK, ack=254, flags=A))  # session open
    assert drv.send(PING)["ok"] and drv.send(PING)["ok"]
    assert not drv.send(PING)["ok"]
    assert drv.send(PING, reliable=False)["ok"]  # unreliable frames do not need room
    drv.feed(Frame(type=MsgType.ACK, ack=0, flags=A))  # acks 255 and 0 (wrapping)
    (f,) = drv.send(PING)["frames"]
    assert hdr(f) == (MsgType.PING, 1, 0, R)
    drv.feed(Frame(type=MsgType.ACK, ack=100, flags=A))  # outside the window: old, ignored
    assert drv.advance(250)["frames"][0].seq == 1


def test_receiver_delivers_in_order_and_acknowledges_a_burst_once(drv: LinkDriver) -> None:
    drv.new(seq=0)
    st = drv.feed(ping_frame(40, R | S), ping_frame(41), ping_frame(42))
    assert [d[:2] for d in st["delivered"]] == [[MsgType.PING, 40], [MsgType.PING, 41], [MsgType.PING, 42]]
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 42, A)]


def test_duplicates_are_acknowledged_again_and_not_delivered(drv: LinkDriver) -> None:
    drv.new(seq=0)
    drv.feed(ping_frame(10, R | S), ping_frame(11))
    st = drv.feed(ping_frame(11))
    assert st["delivered"] == [] and st["drops"]["duplicate"] == 1
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 11, A)]
    st = drv.feed(ping_frame(10, R | S))  # the session's opening frame again: re-ack, no new session
    assert st["delivered"] == [] and [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 11, A)]
    st = drv.feed(ping_frame(12))
    assert [d[1] for d in st["delivered"]] == [12]


def test_a_gap_is_answered_by_one_nak_then_filled(drv: LinkDriver) -> None:
    drv.new(seq=0)
    drv.feed(ping_frame(200, R | S))
    st = drv.feed(ping_frame(202), ping_frame(203))
    assert st["delivered"] == [] and st["drops"]["out_of_order"] == 2
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 200, A | NAK)]
    assert drv.feed(ping_frame(204))["frames"] == []  # the same round: NAK already sent for this gap
    st = drv.feed(ping_frame(201), ping_frame(202))
    assert [d[1] for d in st["delivered"]] == [201, 202]
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 202, A)]
    st = drv.feed(ping_frame(205))  # a new gap deserves a new NAK
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 202, A | NAK)]
    # the sender starts its window over (204 is not after 205) and 203 is lost again: one more NAK
    st = drv.feed(ping_frame(204))
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 202, A | NAK)]
    assert drv.feed(ping_frame(205))["frames"] == []  # the same round: no more


def test_reliable_frames_before_any_syn_get_one_rst_per_batch(drv: LinkDriver) -> None:
    drv.new(seq=0)
    st = drv.feed(ping_frame(5), ping_frame(6))
    assert st["delivered"] == [] and st["drops"]["unsynced"] == 2
    assert [hdr(f) for f in st["frames"]] == [(MsgType.ACK, 0, 0, RST)]
    st = drv.feed(Frame(type=MsgType.PING, body=PING.to_frame().body))  # unreliable: delivered anyway
    assert [d[:2] for d in st["delivered"]] == [[MsgType.PING, 0]] and st["frames"] == []


def test_rst_and_nak_make_the_sender_resend_its_window(drv: LinkDriver) -> None:
    drv.new(seq=30)
    drv.send(PING)
    drv.feed(Frame(type=MsgType.ACK, ack=30, flags=A))
    drv.send(PING)
    drv.send(PING)
    frames = drv.feed(Frame(type=MsgType.ACK, ack=30, flags=A | NAK))["frames"]
    assert [hdr(f) for f in frames] == [(MsgType.PING, 31, 0, R), (MsgType.PING, 32, 0, R)]
    frames = drv.feed(Frame(type=MsgType.ACK, flags=RST))["frames"]  # a new session: the SYN frame alone
    assert [hdr(f) for f in frames] == [(MsgType.PING, 31, 0, R | S)]
    frames = drv.feed(Frame(type=MsgType.ACK, ack=31, flags=A))["frames"]
    assert [hdr(f) for f in frames] == [(MsgType.PING, 32, 0, R)]


def test_acks_ride_on_replies(drv: LinkDriver) -> None:
    drv.new(seq=90, echo=True)
    (f,) = drv.feed(ping_frame(3, R | S))["frames"]  # the PONG carries the ACK: no separate ACK frame
    assert hdr(f) == (MsgType.PONG, 90, 3, R | S | A)


def test_rto_follows_rfc6298_with_karn_and_backoff_then_the_peer_is_lost(drv: LinkDriver) -> None:
    drv.new(seq=0, rto_init=250, rto_min=20, rto_max=2000, max_retries=3)
    drv.send(PING)
    st = drv.advance(100)
    st = drv.feed(Frame(type=MsgType.ACK, ack=0, flags=A))
    assert st["rto"] == 100 + 4 * 50  # first sample R: SRTT = R, RTTVAR = R/2
    drv.send(PING)
    st = drv.advance(60)
    st = drv.feed(Frame(type=MsgType.ACK, ack=1, flags=A))
    # RTTVAR = 3/4 * 50 + 1/4 * |100 - 60| = 47.5, SRTT = 7/8 * 100 + 1/8 * 60 = 95 -> 95 + 190
    assert st["rto"] == 285
    drv.send(PING)
    assert drv.advance(284)["frames"] == []
    st = drv.advance(1)
    assert [f.seq for f in st["frames"]] == [2] and st["rto"] == 570  # resent, backed off
    drv.advance(10)
    st = drv.feed(Frame(type=MsgType.ACK, ack=2, flags=A))
    # Karn: no sample from the resent frame (10 ms would have moved it); progress ends the backoff
    assert st["rto"] == 285
    # the timer restarts at each ACK that makes progress, not at the oldest frame's send time
    drv.send(PING)
    drv.send(PING)
    drv.advance(200)
    assert drv.feed(Frame(type=MsgType.ACK, ack=3, flags=A))["frames"] == []
    rto = drv.advance(0)["rto"]  # after a sample of 200: SRTT 108, RTTVAR 62
    assert drv.advance(rto - 1)["frames"] == []
    assert [f.seq for f in drv.advance(1)["frames"]] == [4]
    sent = [drv.advance(ms)["frames"] for ms in (2 * rto, 4 * rto)]  # backed off (still under RTO_MAX)
    assert [[f.seq for f in fs] for fs in sent] == [[4], [4]]
    st = drv.advance(2000)
    assert st["lost"] == 1 and st["frames"] == [] and st["rto"] == rto  # the backoff ends with the session
    (f,) = drv.send(PING)["frames"]  # a new session
    assert hdr(f) == (MsgType.PING, 5, 0, R | S)


def test_unknown_types_and_bad_bodies_are_acked_counted_and_answered(drv: LinkDriver) -> None:
    drv.new(seq=60)
    st = drv.feed(Frame(type=0x55, seq=8, flags=R | S, body=b"?"), Frame(type=MsgType.PING, seq=9, flags=R))
    assert st["delivered"] == [] and st["drops"]["unknown_type"] == 1 and st["drops"]["body"] == 1
    errors = [f for f in st["frames"] if f.type == MsgType.ERROR]
    assert [(f.seq, f.flags & R) for f in errors] == [(0, 0), (0, 0)]  # answered unreliably
    assert [Message.from_frame(f).fields for f in errors] == [
        {"code": ErrorCode.UNKNOWN_TYPE, "ref_type": 0x55, "ref_seq": 8, "text": "unknown type"},
        {"code": ErrorCode.BAD_BODY, "ref_type": MsgType.PING, "ref_seq": 9, "text": "bad body"},
    ]
    assert st["frames"][-1].ack == 9  # both frames acknowledged
    st = drv.feed(Frame(type=MsgType.ACK, seq=10, flags=R, body=b"x"))  # an ACK must be empty
    assert st["drops"]["body"] == 2 and [f.type for f in st["frames"]] == [MsgType.ERROR]
