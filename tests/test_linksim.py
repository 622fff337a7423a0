"""The serial line simulator: pacing, impairments, order, the cut switch, and its asyncio endpoints."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.protocol import FrameDecoder, Message, MsgType, encode_frame
from scalerunner.protocol.link import LinkCore
from scalerunner.protocol.linksim import Impairments, SimChannel, SimLine, VirtualLine

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def channel(
    baud: int = 10_000, imp: Impairments | None = None, seed: int = 0, chunk: int | None = None
) -> SimChannel:
    return SimChannel(baud, imp or Impairments(), rng=random.Random(seed), chunk=chunk)


def arrivals(ch: SimChannel) -> list[tuple[float, bytes]]:
    return list(ch.queue)


# --- the channel on a given clock -------------------------------------------------------------------


def test_a_burst_of_n_bytes_takes_n_times_10_over_baud() -> None:
    ch = channel(baud=10_000, chunk=100)  # 1000 bytes per second
    ch.transmit(bytes(1000), now=2.0)
    assert ch.next_time() == pytest.approx(2.1)  # the first chunk of 100 bytes is whole at 2.1 s
    assert len(ch.take(2.55)) == 500
    assert ch.queue[-1][0] == pytest.approx(3.0)
    assert len(ch.take(3.0)) == 500


def test_writes_queue_behind_each_other_at_line_rate() -> None:
    ch = channel(baud=10_000, chunk=10)
    ch.transmit(bytes(10), now=0.0)
    ch.transmit(bytes(10), now=0.0)  # the line is busy until 0.01
    ch.transmit(bytes(10), now=1.0)  # idle line: starts at once
    assert [t for t, _ in arrivals(ch)] == pytest.approx([0.01, 0.02, 1.01])


def test_default_chunk_is_about_half_a_millisecond_of_line_time() -> None:
    assert channel(baud=3_000_000).chunk == 150
    assert channel(baud=115_200).chunk == 16


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.integers(0, 2**32))
def test_clean_line_delivers_every_byte_unchanged_in_order(writes: list[bytes], seed: int) -> None:
    ch = channel(baud=115_200, seed=seed)
    for i, data in enumerate(writes):
        ch.transmit(data, now=i * 0.001)
    assert ch.take(1e9) == b"".join(writes)


@given(st.floats(0, 0.05), st.floats(0, 0.05), st.integers(0, 2**32))
def test_delay_and_jitter_never_reorder_bytes(delay: float, jitter: float, seed: int) -> None:
    ch = channel(baud=115_200, imp=Impairments(delay=delay, jitter=jitter), seed=seed, chunk=4)
    data = bytes(range(256)) * 4
    for i in range(0, len(data), 64):
        ch.transmit(data[i : i + 64], now=i / 2000)
    times = [t for t, _ in arrivals(ch)]
    assert times == sorted(times)
    assert times[0] >= 4 * 10 / 115_200 + delay
    assert ch.take(1e9) == data


@pytest.mark.parametrize("kind", ["drop", "corrupt", "duplicate"])
def test_byte_impairment_rates_match_their_probability(kind: str) -> None:
    p = 0.02
    ch = channel(baud=1_000_000, imp=Impairments(**{kind: p}), seed=5)
    data = bytes(range(1, 256)) * 400  # 102 000 bytes
    ch.transmit(data, now=0.0)
    got = ch.take(1e9)
    count = {"drop": ch.stats.dropped, "corrupt": ch.stats.corrupted, "duplicate": ch.stats.duplicated}[kind]
    assert count == pytest.approx(p * len(data), rel=0.1)
    if kind == "drop":
        assert len(got) == len(data) - count
    elif kind == "duplicate":
        assert len(got) == len(data) + count
    else:
        assert len(got) == len(data)
        assert sum(a != b for a, b in zip(got, data, strict=True)) == count  # flips change the byte


def test_frame_corruption_hits_one_byte_of_chosen_frames() -> None:
    ch = channel(baud=1_000_000, imp=Impairments(frame_corrupt=0.1), seed=3)
    frames = [Message(MsgType.PING, {"token": i}).to_frame(seq=i % 256, flags=1) for i in range(2000)]
    wire = b"".join(encode_frame(f) for f in frames)
    for i in range(0, len(wire), 1000):  # frames straddle writes
        ch.transmit(wire[i : i + 1000], now=0.0)
    got = ch.take(1e9)
    assert len(got) == len(wire)
    assert ch.stats.frames_corrupted == pytest.approx(200, rel=0.2)
    assert sum(a != b for a, b in zip(got, wire, strict=True)) == ch.stats.frames_corrupted
    decoder = FrameDecoder()
    decoded = decoder.feed(got)
    assert len(decoded) == 2000 - ch.stats.frames_corrupted  # each hit frame is lost, no other
    assert all(f in frames for f in decoded)


def test_idle_zero_bytes_are_not_frames_for_frame_corruption() -> None:
    ch = channel(imp=Impairments(frame_corrupt=1.0))
    ch.transmit(b"\x00" * 50, now=0.0)
    assert ch.take(1e9) == b"\x00" * 50


def test_cut_line_is_silent_and_can_come_back() -> None:
    ch = channel()
    ch.cut = True
    ch.transmit(b"lost", now=0.0)
    assert ch.take(1e9) == b"" and ch.stats.lost_to_cut == 4
    ch.cut = False
    ch.transmit(b"back", now=1.0)
    assert ch.take(1e9) == b"back"


def test_same_seed_same_impairments() -> None:
    imp = Impairments(drop=0.05, corrupt=0.05, duplicate=0.05, jitter=0.01)
    outs = []
    for _ in range(2):
        ch = channel(imp=imp, seed=42, chunk=8)
        ch.transmit(bytes(range(256)) * 8, now=0.0)
        outs.append(arrivals(ch))
    assert outs[0] == outs[1]


def test_impairment_probabilities_are_validated() -> None:
    with pytest.raises(ValueError):
        Impairments(drop=1.5)
    with pytest.raises(ValueError):
        Impairments(delay=-1)


# --- virtual line -------------------------------------------------------------------------------------


def test_virtual_line_goes_idle_once_everything_is_acknowledged() -> None:
    line = VirtualLine(LinkCore(initial_seq=1), LinkCore(initial_seq=2))
    line.send("a", Message(MsgType.PING, {"token": 1}))
    steps = line.run()
    assert steps > 0 and line.next_time() is None
    assert line.a.in_flight == 0 and line.b.stats.delivered == 1
    assert 0 < line.now < 0.01  # a 16-byte frame and a 12-byte ACK at 115200 baud


def test_virtual_line_run_stops_at_the_time_limit() -> None:
    a = LinkCore(rto_init=0.1, max_retries=100)
    line = VirtualLine(a, LinkCore())
    line.cut()
    line.send("a", Message(MsgType.PING, {"token": 1}))
    line.run(until=1.0)
    assert line.now == 1.0 and a.in_flight == 1


# --- real time (asyncio) -----------------------------------------------------------------------------


def test_simline_paces_bytes_at_line_rate_in_real_time() -> None:
    async def main() -> float:
        line = SimLine(115_200)
        data = bytes(range(1, 256)) * 5  # 1275 bytes: 110.7 ms at 11 520 B/s
        t0 = time.perf_counter()
        await line.a.write(data)
        got = bytearray()
        while len(got) < len(data):
            got += await line.b.read()
        assert bytes(got) == data
        return time.perf_counter() - t0

    elapsed = run(main())
    assert 0.105 <= elapsed < 0.5


def test_simline_is_full_duplex() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        await line.a.write(b"ping")
        await line.b.write(b"pong")
        assert await line.b.read() == b"ping"
        assert await line.a.read() == b"pong"

    run(main())


def test_closing_one_end_is_end_of_file_for_both_after_bytes_in_flight() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        await line.a.write(b"last words")
        await line.a.close()
        assert await line.b.read() == b"last words"
        assert await line.b.read() == b""
        assert await line.a.read() == b""
        with pytest.raises(BrokenPipeError):
            await line.a.write(b"x")

    run(main())


def test_close_wakes_a_pending_read() -> None:
    async def main() -> None:
        line = SimLine()
        reader = asyncio.create_task(line.b.read())
        await asyncio.sleep(0.01)
        await line.b.close()
        assert await reader == b""

    run(main())


def test_write_waits_while_the_transmit_buffer_is_full() -> None:
    async def main() -> float:
        line = SimLine(100_000, tx_buffer=100)  # 10 000 B/s
        t0 = time.perf_counter()
        await line.a.write(bytes(600))  # returns when 100 bytes are left: after 50 ms
        return time.perf_counter() - t0

    assert 0.045 <= run(main()) < 0.3


def test_cut_simline_carries_nothing() -> None:
    async def main() -> None:
        line = SimLine(1_000_000)
        line.cut()
        await line.a.write(b"into the void")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await line.b.read()
        line.cut(False)
        await line.a.write(b"hello")
        assert await line.b.read() == b"hello"

    run(main())
