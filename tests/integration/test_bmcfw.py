"""The BMC firmware (bmc/main.py, unchanged) under the real MicroPython unix port, driven from the host with
``scalerunner.protocol.link.Link`` over a pty. A second pty is the node's UART: the test types into it as
the node would and reads what the host sent to the node."""

from __future__ import annotations

import asyncio
import os
import random
import re
import select
import shutil
import subprocess
import sys
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scalerunner.protocol import (
    DeviceKind,
    ErrorCode,
    EventLevel,
    Frame,
    Message,
    MsgType,
    PowerState,
    encode_frame,
)
from scalerunner.protocol.link import Link
from scalerunner.protocol.link.streams import FdStream

pytestmark = [pytest.mark.micropython, pytest.mark.slow, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "bmc" / "main.py"
# ".frozen" first: MICROPYPATH replaces the default path, and asyncio is a frozen module of the unix port.
MICROPYPATH = os.pathsep.join(
    [".frozen", str(REPO / "bmc"), str(REPO / "scalerunner/protocol/mpy"), str(REPO / "scalerunner/protocol")]
)
STEP = 5.0  # seconds any single exchange may take
MIN_OFF_MS = 300
EV_POWER, EV_DEFERRED = 0x0110, 0x0116
EV_CONSOLE_DROP, EV_LINK_DROPS = 0x0120, 0x0200


def micropython_binary() -> str:
    found = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if found is None:
        pytest.fail("the micropython unix port is not installed (make setup installs it)")
    return found


@dataclass
class Pty:
    master: int
    slave: int
    path: str
    master_open: bool = True

    @classmethod
    def open(cls) -> Pty:
        master, slave = os.openpty()
        tty.setraw(slave)  # raw before the firmware opens it: no echo, no line discipline
        tty.setraw(master)
        return cls(master, slave, os.ttyname(slave))

    def hang_up(self) -> None:
        if self.master_open:
            self.master_open = False
            os.close(self.master)

    def close(self) -> None:
        self.hang_up()
        os.close(self.slave)

    def read(self, n: int, timeout: float = STEP) -> bytes:
        """At least ``n`` bytes written by the firmware to this tty (fails after ``timeout``)."""
        got = b""
        while len(got) < n:
            ready, _, _ = select.select([self.master], [], [], timeout)
            assert ready, f"only {len(got)} of {n} bytes arrived"
            got += os.read(self.master, 65536)
        return got


@dataclass
class Bmc:
    """The firmware process with its host line and the node's UART; always stopped at the end."""

    link_pty: Pty
    node_pty: Pty
    proc: subprocess.Popen[bytes]
    output: str = ""
    settings: list[str] = field(default_factory=list)

    def stream(self) -> FdStream:
        return FdStream(os.dup(self.link_pty.master), f"pty:{self.link_pty.path}")

    def finish(self) -> str:
        """Hang up the host line: the firmware must exit by itself, with status 0, and say its counters."""
        self.link_pty.hang_up()
        out, _ = self.proc.communicate(timeout=STEP)
        self.output = out.decode()
        assert self.proc.returncode == 0, self.output
        return self.output


StartBmc = Callable[..., Bmc]


@pytest.fixture
def start_bmc() -> Iterator[StartBmc]:
    started: list[Bmc] = []

    def start(*settings: str) -> Bmc:
        link_pty, node_pty = Pty.open(), Pty.open()
        proc = subprocess.Popen(
            [
                micropython_binary(),
                str(MAIN),
                link_pty.path,
                node_pty.path,
                f"min_off_ms={MIN_OFF_MS}",
                *settings,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MICROPYPATH": MICROPYPATH},
        )
        bmc = Bmc(link_pty, node_pty, proc)
        started.append(bmc)
        return bmc

    try:
        yield start
    finally:
        for bmc in started:
            if bmc.proc.poll() is None:
                bmc.proc.kill()
            bmc.proc.communicate()
            bmc.link_pty.close()
            bmc.node_pty.close()


async def recv_type(link: Link, msg_type: MsgType, seen: list[Message] | None = None) -> Message:
    """The next message of ``msg_type``; others are kept in ``seen``."""
    async with asyncio.timeout(STEP):
        while True:
            msg = await link.recv()
            if msg.type == msg_type:
                return msg
            if seen is not None:
                seen.append(msg)


async def power_event(link: Link, ending: str, seen: list[Message]) -> Message:
    """The next power transition EVENT whose text names the new state ``ending`` (e.g. "-> ON:")."""
    while True:
        ev = await recv_type(link, MsgType.EVENT, seen)
        seen.append(ev)
        if ev["code"] == EV_POWER and f"-> {ending}:" in str(ev["text"]):
            return ev


async def status(link: Link) -> Message:
    await link.send(Message.make("STATUS_GET"))
    return await recv_type(link, MsgType.STATUS)


def counts(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


def test_hello_then_power_on_shows_the_rail_in_status(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            hello = await recv_type(link, MsgType.HELLO)
            assert (hello["kind"], hello["proto"]) == (DeviceKind.BMC, 1) and len(hello["uid"]) == 8
            off = await status(link)
            assert (off["power_state"], off["rail_mv"], off["current_ma"], off["power_mw"]) == (
                PowerState.OFF,
                0,
                0,
                0,
            )
            await link.send(Message.make("BOOT_MODE", mode=1))
            await link.send(Message.make("POWER", action=1))
            seen: list[Message] = []
            starting = await power_event(link, "STARTING", seen)
            assert "boot NETWORK" in str(starting["text"])
            await power_event(link, "ON", seen)
            on = await status(link)
            # the simulated rail: 5.08 V, 1.2 A through 10 mOhm, power as the INA226 computes it, 42.1 degC
            assert (on["power_state"], on["rail_mv"], on["current_ma"], on["power_mw"], on["temp_dc"]) == (
                PowerState.ON,
                5080,
                1200,
                6075,
                421,
            )
            await link.send(Message.make("PING", token=0xB3C))
            pong = await recv_type(link, MsgType.PONG)
            assert pong["token"] == 0xB3C and pong["uptime_ms"] >= starting["time_ms"]
        assert "drops: none" in bmc.finish()

    asyncio.run(scenario())


def test_cycle_waits_the_minimum_off_time_and_the_log_reads_back_oldest_first(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            seen: list[Message] = []
            await link.send(Message.make("POWER", action=1))
            await power_event(link, "ON", seen)
            await link.send(Message.make("POWER", action=2))  # CYCLE
            off = await power_event(link, "OFF", seen)
            again = await power_event(link, "STARTING", seen)
            assert again["time_ms"] - off["time_ms"] >= MIN_OFF_MS
            await power_event(link, "ON", seen)
            assert (await status(link))["power_state"] == PowerState.ON
            live = [(m["level"], m["code"], m["time_ms"], m["text"]) for m in seen if m.type == MsgType.EVENT]
            # the whole log: every event sent live, with consecutive indexes, then the end marker
            await link.send(Message.make("EVENT_LOG_GET", since=0))
            entries = []
            while True:
                e = await recv_type(link, MsgType.EVENT_LOG)
                if e["index"] == e["next"]:
                    break
                entries.append(e)
            assert [e["index"] for e in entries] == list(range(len(entries)))
            assert e["next"] == len(entries)
            logged = [(e["level"], e["code"], e["time_ms"], e["text"]) for e in entries]
            assert logged[0][2] == 0 and "up on unix" in str(logged[0][3])  # the boot event
            assert logged == live
            texts = [str(t[3]) for t in logged if t[1] == EV_POWER]
            assert [t.split(":")[0] for t in texts] == [
                "OFF -> STARTING",
                "STARTING -> ON",
                "ON -> STOPPING",
                "STOPPING -> OFF",
                "OFF -> STARTING",
                "STARTING -> ON",
            ]
            assert any(t[1] == EV_DEFERRED for t in logged)
            # since = the last two: only those, then the marker
            await link.send(Message.make("EVENT_LOG_GET", since=len(entries) - 2))
            tail = [await recv_type(link, MsgType.EVENT_LOG) for _ in range(3)]
            assert [m["index"] for m in tail] == [len(entries) - 2, len(entries) - 1, len(entries)]
            assert tail[2]["next"] == len(entries) and tail[2]["text"] == ""
        bmc.finish()

    asyncio.run(scenario())


def test_bad_values_and_refused_requests_are_answered_with_errors(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            for msg in (
                Message.make("POWER", action=9),
                Message.make("BOOT_MODE", mode=4),
                Message.make("CONSOLE_DATA", port=3, data=b"x"),
            ):
                await link.send(msg)
                err = await recv_type(link, MsgType.ERROR)
                assert (err["code"], err["ref_type"]) == (ErrorCode.BAD_VALUE, msg.type), err
                assert str(err["text"]).startswith("bad value")
            await link.send(Message.make("POWER", action=3))  # RESET while off
            err = await recv_type(link, MsgType.ERROR)
            assert (err["code"], err["ref_type"], err["text"]) == (
                ErrorCode.BUSY,
                MsgType.POWER,
                "RESET refused: power is OFF",
            )
            assert (await status(link))["power_state"] == PowerState.OFF
        bmc.finish()

    asyncio.run(scenario())


def test_a_rail_that_never_comes_good_faults_and_stays_faulted(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc("rail_mv=3000", "rail_timeout_ms=200")
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            await link.send(Message.make("POWER", action=1))
            fault = await power_event(link, "FAULT", [])
            assert fault["level"] == EventLevel.ERROR and "not good within 200 ms" in str(fault["text"])
            await asyncio.sleep(0.1)  # the rail falls in 20 ms once cut
            st = await status(link)
            assert (st["power_state"], st["rail_mv"]) == (PowerState.FAULT, 0)
            await link.send(Message.make("POWER", action=1))
            err = await recv_type(link, MsgType.ERROR)
            assert err["code"] == ErrorCode.BUSY and "FAULT" in str(err["text"])
        bmc.finish()

    asyncio.run(scenario())


def test_console_bytes_cross_both_ways_in_order(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        rng = random.Random(5)
        from_node = rng.randbytes(3000)
        to_node = rng.randbytes(3000)
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            os.write(bmc.node_pty.master, from_node)  # the node prints
            got = b""
            async with asyncio.timeout(STEP):
                while len(got) < len(from_node):
                    got += await link.console.read(0)
            assert got == from_node
            await link.console.write(to_node, port=0)  # the operator types
            await link.console.drain()
            assert bmc.node_pty.read(len(to_node)) == to_node
        final = counts(bmc.finish())
        assert (final["to_host"], final["to_node"], final["console_dropped"]) == (3000, 3000, 0)

    asyncio.run(scenario())


def test_a_console_flood_drops_bytes_but_counts_every_one(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        flood = bytes(i & 0xFF for i in range(30000))
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            os.write(bmc.node_pty.master, flood)  # far more than the 4 KiB ring while the window is busy
            got = b""
            reported = 0
            seen: list[Message] = []
            async with asyncio.timeout(STEP * 2):
                while len(got) + reported < len(flood):
                    while link.console.pending(0):
                        got += await link.console.read(0)
                    try:
                        async with asyncio.timeout(0.2):
                            ev = await recv_type(link, MsgType.EVENT, seen)
                    except TimeoutError:
                        continue
                    if ev["code"] == EV_CONSOLE_DROP:
                        assert ev["level"] == EventLevel.WARNING
                        reported += int(str(ev["text"]).split()[2])
            assert reported > 0 and len(got) + reported == len(flood)
        final = counts(bmc.finish())
        assert final["console_dropped"] == reported and final["to_host"] == len(got)

    asyncio.run(scenario())


def test_garbage_on_the_line_is_counted_and_the_firmware_keeps_working(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            good = encode_frame(Message.make("PING", token=1).to_frame(seq=9, flags=1))
            bad_crc = bytearray(good)
            bad_crc[5] ^= 0x40
            for chunk in (b"\x00garbage\x00", b"\x07" * 300 + b"\x00", bytes(bad_crc), b"\x02\x01\x00"):
                os.write(bmc.link_pty.master, chunk)
            os.write(bmc.link_pty.master, encode_frame(Frame(type=0x55, body=b"?")))
            err = await recv_type(link, MsgType.ERROR)
            assert (err["code"], err["ref_type"]) == (ErrorCode.UNKNOWN_TYPE, 0x55)
            reported: dict[str, int] = {}
            while not {"cobs", "oversize", "crc", "short", "unknown_type"} <= reported.keys():
                ev = await recv_type(link, MsgType.EVENT)
                if ev["code"] == EV_LINK_DROPS:
                    assert ev["level"] == EventLevel.WARNING
                    reported = counts(str(ev["text"]))
            assert reported["oversize"] == 1 and reported["crc"] == 1 and reported["short"] == 1
            await link.send(Message.make("PING", token=2))
            assert (await recv_type(link, MsgType.PONG))["token"] == 2
            await link.send(Message.make("POWER", action=1))
            await power_event(link, "ON", [])
            os.write(bmc.node_pty.master, b"still here\n")
            got = b""
            async with asyncio.timeout(STEP):
                while len(got) < 11:
                    got += await link.console.read(0)
            assert got == b"still here\n"
        final = counts(bmc.finish())
        assert final["crc"] == 1 and final["unknown_type"] == 1

    asyncio.run(scenario())
