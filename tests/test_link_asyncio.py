"""The asyncio Link over the simulated line, a real pty pair and TCP: delivery, console, timeouts, closing."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from scalerunner.protocol import Frame, LinkClosed, LinkError, Message, MsgType, PeerTimeout
from scalerunner.protocol.link import (
    AsyncioStream,
    ByteStream,
    Delivered,
    Event,
    FdStream,
    Link,
    PeerSession,
    open_fd_stream,
    open_pty_pair,
    open_serial,
    open_tcp,
)
from scalerunner.protocol.linksim import Impairments, SimLine

T = TypeVar("T")

FAST: dict[str, Any] = {"rto_init": 0.02, "rto_min": 0.01, "rto_max": 0.08}


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def ping(token: int) -> Message:
    return Message(MsgType.PING, {"token": token})


async def read_exactly(link: Link, n: int, port: int = 0) -> bytes:
    got = bytearray()
    while len(got) < n:
        got += await link.console.read(port)
    return bytes(got)


async def exchange(a: Link, b: Link, count: int = 20) -> None:
    """Messages both ways at once, and console bytes on two ports; everything arrives once, in order."""
    rng = random.Random(count)
    blob = rng.randbytes(3000)

    async def talk(src: Link, base: int) -> None:
        for i in range(count):
            await src.send(ping(base + i), wait=i % 5 == 4)

    async def listen(dst: Link, base: int) -> None:
        for i in range(count):
            assert await dst.recv() == ping(base + i)

    await asyncio.gather(talk(a, 0), talk(b, 1000), listen(b, 0), listen(a, 1000))
    await a.console.write(blob)
    await a.console.write(b"to port 3", port=3)
    await b.console.write(blob[::-1])
    await asyncio.gather(a.console.drain(), b.console.drain())
    assert await read_exactly(b, len(blob)) == blob
    assert await read_exactly(b, 9, port=3) == b"to port 3"
    assert await read_exactly(a, len(blob)) == blob[::-1]


class Borrowed:
    """A stream a Link may use and stop without closing it (a device that reboots on the same wire)."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self.name = inner.name

    async def read(self) -> bytes:
        return await self.inner.read()

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        pass


# --- delivery -----------------------------------------------------------------------------------------


def test_two_links_over_the_simulated_line_exchange_messages_and_console_bytes() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        async with Link(line.a) as a, Link(line.b) as b:
            await exchange(a, b)
            assert a.stats.failed == b.stats.failed == 0

    run(main())


def test_console_bytes_arrive_in_order_over_an_impaired_line() -> None:
    async def main() -> None:
        imp = Impairments(drop=0.001, corrupt=0.001, duplicate=0.001, frame_corrupt=0.02, jitter=0.001)
        line = SimLine(3_000_000, a_to_b=imp, b_to_a=imp, seed=11)
        async with Link(line.a, console_chunk=100, **FAST) as a, Link(line.b, **FAST) as b:
            blob = random.Random(1).randbytes(40_000)
            reader = asyncio.create_task(read_exactly(b, len(blob)))
            await a.console.write(blob)
            await a.console.drain()
            assert await reader == blob
            assert a.stats.retransmits > 0  # the line did lose frames
            assert a.stats.frames_out >= 400  # cut into 100-byte messages

    run(main())


def test_two_links_over_a_real_pty_pair() -> None:
    async def main() -> None:
        master, slave = open_pty_pair("test")
        async with Link(master) as a, Link(slave) as b:
            await exchange(a, b)
            assert b.name.startswith("/dev/")

    run(main())


def test_two_links_over_tcp() -> None:
    async def main() -> None:
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result((reader, writer))

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = await open_tcp("127.0.0.1", port)
            reader, writer = await accepted
            async with Link(client) as a, Link(AsyncioStream(reader, writer, "server")) as b:
                await exchange(a, b)
                assert a.name == f"127.0.0.1:{port}"

    run(main())


def test_unreliable_messages_are_delivered_and_not_acknowledged() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        async with Link(line.a) as a, Link(line.b) as b:
            gauge = Message(MsgType.LED_GAUGE, {"load_pct": 7, "temp_dc": 215})
            await a.send(gauge, reliable=False)
            assert await b.recv() == gauge
            assert a.core.in_flight == 0 and a.stats.acked == 0

    run(main())


def test_send_without_wait_returns_at_once_and_a_full_window_holds_the_next_send() -> None:
    async def main() -> None:
        line = SimLine(9600)  # a 16-byte frame takes 16.7 ms
        async with Link(line.a, window=1) as a, Link(line.b) as b:
            t0 = time.perf_counter()
            await a.send(ping(1), wait=False)
            assert time.perf_counter() - t0 < 0.015 and a.core.in_flight == 1  # the ACK takes ~30 ms
            await a.send(ping(2), wait=False)  # waits for the first ACK: frame + ACK on the line
            assert time.perf_counter() - t0 > 0.025
            await a.send(ping(3))
            assert [await b.recv() for _ in range(3)] == [ping(1), ping(2), ping(3)]

    run(main())


def test_async_iteration_yields_messages_until_stop() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        async with Link(line.a) as a, Link(line.b) as b:
            for i in range(3):
                await a.send(ping(i))
            await a.console.write(b"console bytes are not messages")
            await a.console.drain()

            async def stop_soon() -> None:
                await asyncio.sleep(0.05)
                await b.stop()

            stopper = asyncio.create_task(stop_soon())
            assert [msg async for msg in b] == [ping(0), ping(1), ping(2)]
            await stopper

    run(main())


def test_trace_hook_and_event_hook_see_the_traffic() -> None:
    async def main() -> None:
        trace: list[tuple[str, Frame]] = []
        events: list[Event] = []
        line = SimLine(1_000_000)
        async with (
            Link(line.a, trace=lambda d, f: trace.append((d, f))) as a,
            Link(line.b, on_event=events.append) as b,
        ):
            await a.send(ping(5))
            assert await b.recv() == ping(5)
        assert ("tx", ping(5).to_frame(seq=trace[0][1].seq, flags=0x05)) == trace[0]
        assert any(d == "rx" and f.type == MsgType.ACK for d, f in trace)
        assert isinstance(events[0], PeerSession) and isinstance(events[1], Delivered)

    run(main())


# --- timeouts and recovery --------------------------------------------------------------------------------


def test_send_to_a_silent_peer_raises_peer_timeout_naming_the_port_in_bounded_time() -> None:
    async def main() -> float:
        line = SimLine(1_000_000, names=("ttyACM7", "nobody"))  # nothing runs on line.b
        async with Link(line.a, max_retries=3, **FAST) as a:
            t0 = time.perf_counter()
            with pytest.raises(PeerTimeout) as info:
                await a.send(ping(1))
            assert info.value.port == "ttyACM7" and "3 retries" in str(info.value)
            return time.perf_counter() - t0

    # RTOs of 0.02, 0.04, 0.08 and 0.08 s: 0.22 s and a little scheduling slack
    assert 0.2 <= run(main()) < 1.0


def test_send_over_a_pty_nobody_answers_times_out_with_the_pty_name() -> None:
    async def main() -> None:
        master, slave = open_pty_pair("bmc")
        try:
            async with Link(master, max_retries=2, **FAST) as a:
                with pytest.raises(PeerTimeout) as info:
                    await a.send(ping(1))
                assert info.value.port == master.name and master.name.startswith("bmc:/dev/")
        finally:
            await slave.close()

    run(main())


def test_link_works_again_after_a_peer_timeout_once_the_line_is_back() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        async with Link(line.a, max_retries=2, **FAST) as a, Link(line.b, **FAST) as b:
            await a.send(ping(1))
            line.cut()
            with pytest.raises(PeerTimeout):
                await a.send(ping(2))
            line.cut(False)
            await a.send(ping(3))  # a new session (SYN)
            assert await b.recv() == ping(1)
            assert await b.recv() == ping(3)
            await b.send(ping(4))
            assert await a.recv() == ping(4)

    run(main())


def test_restarted_peer_is_resynchronised_and_later_messages_arrive_exactly_once() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        async with Link(line.a, initial_seq=100, **FAST) as a:
            b1 = Link(Borrowed(line.b), initial_seq=10)
            await b1.start()
            await a.send(ping(1))
            await b1.send(ping(1001))
            assert await b1.recv() == ping(1)
            assert await a.recv() == ping(1001)
            await b1.stop()  # the device reboots: its link state is gone
            async with Link(Borrowed(line.b), initial_seq=200, **FAST) as b2:
                await a.send(ping(2))  # b2 answers RST; a resends with SYN
                await b2.send(ping(1002))  # b2's SYN starts a new session at a
                assert await b2.recv() == ping(2)
                assert await a.recv() == ping(1002)
                assert a.stats.rsts_received >= 1
        await line.b.close()

    run(main())


# --- closing --------------------------------------------------------------------------------------------


def test_stop_wakes_every_waiter_with_link_closed() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)  # no peer: nothing is ever acknowledged
        a = Link(line.a, window=1)
        await a.start()
        waiters = [
            asyncio.create_task(a.recv()),
            asyncio.create_task(a.send(ping(1))),  # waits for its ACK
            asyncio.create_task(a.send(ping(2))),  # waits for window room
            asyncio.create_task(a.console.read()),
        ]
        await asyncio.sleep(0.02)
        assert not any(w.done() for w in waiters)
        await a.stop()
        for waiter in waiters:
            with pytest.raises(LinkClosed) as info:
                await waiter
            assert info.value.port == "sim-a" and "stopped" in info.value.detail
        with pytest.raises(LinkClosed):
            await a.send(ping(3))
        await a.stop()  # idempotent

    run(main())


def test_end_of_file_on_the_stream_closes_the_link() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        async with Link(line.a) as a:
            await line.b.close()
            with pytest.raises(LinkClosed) as info:
                async for _ in a:
                    pass
            assert "end of file" in info.value.detail
            assert a.state == "closed"

    run(main())


def test_pty_whose_other_side_closes_reads_as_end_of_file() -> None:
    async def main() -> None:
        master_fd, slave_fd = os.openpty()
        master = open_fd_stream(master_fd, name="pty master")
        slave = FdStream(slave_fd, os.ttyname(slave_fd))
        async with Link(master) as a:
            await slave.close()
            with pytest.raises(LinkClosed):
                await a.recv()

    run(main())


def test_start_twice_or_use_before_start_fails_loudly() -> None:
    async def main() -> None:
        line = SimLine()
        link = Link(line.a)
        with pytest.raises(LinkError, match="not started"):
            await link.send(ping(1))
        await link.start()
        with pytest.raises(LinkError, match="running"):
            await link.start()
        await link.stop()

    run(main())


def test_opening_a_missing_port_names_it() -> None:
    with pytest.raises(LinkError) as info:
        FdStream.open("/dev/does-not-exist-7")
    assert info.value.port == "/dev/does-not-exist-7"
    with pytest.raises(LinkError) as info:
        open_serial("/dev/does-not-exist-8", 115200)
    assert info.value.port == "/dev/does-not-exist-8"


def test_connecting_to_a_closed_tcp_port_names_it() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(LinkError) as info:
            await open_tcp("127.0.0.1", port)
        assert info.value.port == f"127.0.0.1:{port}"

    run(main())


def test_fd_stream_opens_a_pty_by_path() -> None:
    async def main() -> None:
        master, slave_fd = os.openpty()
        path = os.ttyname(slave_fd)
        stream = FdStream.open(path)
        try:
            await stream.write(b"hello")
            assert os.read(master, 5) == b"hello"
        finally:
            await stream.close()
            os.close(slave_fd)
            os.close(master)

    run(main())


def test_open_serial_waits_on_an_idle_line_instead_of_reading_end_of_file() -> None:
    from scalerunner.protocol.link import open_serial

    master, slave = os.openpty()

    async def body() -> bytes:
        stream = open_serial(os.ttyname(slave), 115200)
        try:
            asyncio.get_running_loop().call_later(0.3, os.write, master, b"late")
            return await stream.read()
        finally:
            await stream.close()

    try:
        assert run(body(), timeout=3) == b"late"
    finally:
        os.close(master)
        os.close(slave)
