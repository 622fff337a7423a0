"""The checks' verdicts over observed levels: a UART decoder, frequency estimation, patterns,
loopback. Property tests generate the waveforms a design would make."""

from __future__ import annotations

import itertools
import re

from hypothesis import given
from hypothesis import strategies as st

from scalerunner.nodeagent.bench.checks import FrequencyCheck, LoopbackCheck, PatternCheck, UartCheck
from scalerunner.nodeagent.bench.evaluate import estimate_frequency, evaluate, loopback_drives
from scalerunner.nodeagent.bench.trace import Change, Trace
from scalerunner.nodeagent.bench.uart import decode_uart, encode_uart


def _trace(signal: str, edges: list[tuple[float, int]], end: float, offset: float = 0.0) -> Trace:
    return Trace({signal: edges[0][1]}, [Change(t + offset, signal, v) for t, v in edges[1:]], end)


bauds = st.sampled_from([9600.0, 57600.0, 115200.0, 1e6])


@given(
    data=st.binary(min_size=1, max_size=40),
    baud=bauds,
    gaps=st.lists(st.floats(0, 30), min_size=40, max_size=40),
)
def test_uart_decoder_reads_back_what_a_transmitter_sends(
    data: bytes, baud: float, gaps: list[float]
) -> None:
    bit = 1 / baud
    edges = encode_uart(data, baud, [bit * (1 + g) for g in gaps[: len(data)]])
    decoded = decode_uart(edges, baud, edges[-1][0] + 20 * bit)
    assert bytes(b.value for b in decoded) == data
    assert not any(b.framing_error for b in decoded)


@given(data=st.binary(min_size=1, max_size=20), skew=st.floats(-0.02, 0.02))
def test_uart_decoder_tolerates_a_two_percent_baud_mismatch(data: bytes, skew: float) -> None:
    edges = encode_uart(data, 115200 * (1 + skew))
    decoded = decode_uart(edges, 115200, edges[-1][0] + 1e-3)
    assert bytes(b.value for b in decoded) == data


def test_uart_at_the_wrong_baud_shows_garbage_and_framing_errors() -> None:
    edges = encode_uart(b"Scalerunner HIL OK\r\n", 57600)
    check = UartCheck(name="u", timeout=0.01, signal="tx", baud=115200, expect="Scalerunner")
    verdict = evaluate(check, _trace("tx", edges, 0.01))
    assert not verdict.passed
    assert re.search(
        r"expected 'Scalerunner' on tx at 115200 baud within 10 ms; saw '.+' \(\d+ framing error",
        verdict.message,
    )


def test_uart_text_must_arrive_within_the_timeout() -> None:
    edges = encode_uart(b"hello", 9600)  # 5 bytes: 5.2 ms
    ok = UartCheck(name="u", timeout=0.006, signal="tx", baud=9600, regex="h.llo")
    assert evaluate(ok, _trace("tx", edges, 0.01)).passed
    late = UartCheck(name="u", timeout=0.004, signal="tx", baud=9600, expect="hello")
    verdict = evaluate(late, _trace("tx", edges, 0.01))
    assert not verdict.passed and "saw 'hel'" in verdict.message


def _square(hz: float, phase: float, duty: float, end: float) -> list[tuple[float, int]]:
    edges: list[tuple[float, int]] = [(0.0, 0)]
    t = phase
    while t < end:
        edges.append((t, 1))
        if t + duty / hz < end:
            edges.append((t + duty / hz, 0))
        t += 1 / hz
    return edges


@given(hz=st.floats(0.5, 1e6), phase=st.floats(0, 1), duty=st.floats(0.1, 0.9), periods=st.integers(4, 50))
def test_frequency_estimate_of_a_square_wave(hz: float, phase: float, duty: float, periods: int) -> None:
    end = (periods + 1) / hz
    got = estimate_frequency(_square(hz, phase / hz, duty, end), end)
    assert got is not None
    assert abs(got[0] - hz) / hz < 1e-9
    assert got[1] >= periods - 1


@given(ratio=st.floats(0.5, 1.5))
def test_frequency_check_passes_inside_the_tolerance_only(ratio: float) -> None:
    check = FrequencyCheck(name="f", timeout=10.0, signal="led0", hz=5.0, tolerance=0.05)
    verdict = evaluate(check, _trace("led0", _square(5.0 * ratio, 0.01, 0.5, 10.0), 10.0))
    assert verdict.passed == (abs(ratio - 1) <= 0.05 - 1e-9) or abs(abs(ratio - 1) - 0.05) < 1e-6
    if not verdict.passed:
        assert "expected led0 toggling at 5 Hz ± 5%; saw" in verdict.message


def test_frequency_check_on_a_stuck_pin_says_what_it_saw() -> None:
    check = FrequencyCheck(name="f", timeout=2.0, signal="led0", hz=5.0)
    verdict = evaluate(check, Trace({"led0": 1}, [], 2.0))
    assert not verdict.passed
    assert verdict.message == "expected led0 toggling at 5 Hz ± 2%; saw 0 change(s) in 2 s, under 3 periods"


SIGS = ("d", "c", "b", "a")


def _count_trace(values: list[int], step: float, skew: float) -> Trace:
    """The group showing ``values``, one per ``step``; bit k changes ``k * skew`` late (lines
    never switch at the same instant)."""
    initial = {s: (values[0] >> (3 - i)) & 1 for i, s in enumerate(SIGS)}
    changes: list[Change] = []
    for n, (old, new) in enumerate(itertools.pairwise(values), start=1):
        for i, s in enumerate(SIGS):
            bit = 3 - i
            if (old ^ new) >> bit & 1:
                changes.append(Change(n * step + bit * skew, s, (new >> bit) & 1))
    return Trace(initial, sorted(changes), len(values) * step)


@given(start=st.integers(0, 15), skew=st.floats(0, 20e-6))
def test_binary_pattern_passes_from_any_start_with_skewed_lines(start: int, skew: float) -> None:
    values = [(start + i) % 16 for i in range(20)]
    check = PatternCheck(name="p", timeout=1.0, signals=SIGS, min_steps=16)
    verdict = evaluate(check, _count_trace(values, 0.01, skew))
    assert verdict.passed, verdict.message


@given(bad_at=st.integers(1, 15), bad=st.integers(0, 15))
def test_binary_pattern_names_the_first_wrong_step(bad_at: int, bad: int) -> None:
    values = list(range(16))
    if bad == values[bad_at]:
        return
    values[bad_at] = bad
    check = PatternCheck(name="p", timeout=1.0, signals=SIGS, min_steps=15)
    verdict = evaluate(check, _count_trace(values, 0.01, 0))
    assert not verdict.passed
    if bad != values[bad_at - 1]:  # equal values are one step: the next differing one is wrong
        want = f"{bad_at:04b} after {bad_at - 1:04b}; saw {bad:04b} at {bad_at * 10:.4g} ms"
        assert want in verdict.message


def test_sequence_pattern_walks_a_ring_and_fails_on_a_skip() -> None:
    ring = [1, 2, 4, 8]
    check = PatternCheck(
        name="w", timeout=1.0, signals=SIGS, mode="sequence", sequence=tuple(ring), min_steps=6
    )
    assert evaluate(check, _count_trace(ring * 3, 0.01, 5e-6)).passed
    verdict = evaluate(check, _count_trace([1, 2, 8, 1], 0.01, 0))
    assert not verdict.passed
    assert "walk 0001, 0010, 0100, 1000: 0100 after 0010; saw 1000" in verdict.message


def test_loopback_follows_and_names_the_value_it_missed() -> None:
    check = LoopbackCheck(name="l", timeout=0.05, drive="i", read="o", hold=0.01, max_delay=0.001)
    drives = loopback_drives(check)
    assert [(d.t, d.value) for d in drives] == [(0.0, 1), (0.01, 0), (0.02, 1), (0.03, 0)]
    echo = Trace({"o": 0}, [Change(d.t + 0.0002, "o", d.value) for d in drives], 0.05)
    assert evaluate(check, echo).passed
    stuck_low = Trace({"o": 0}, [], 0.05)
    verdict = evaluate(check, stuck_low)
    assert verdict.message == "drove i=1 at 0 s: expected o=1 within 1 ms; saw o=0"
    slow = Trace({"o": 0}, [Change(d.t + 0.002, "o", d.value) for d in drives], 0.05)
    assert not evaluate(check, slow).passed


def test_loopback_counts_the_delay_from_when_the_back_end_really_drove() -> None:
    """A back end that reports its drives late (a busy node) is not blamed on the design."""
    check = LoopbackCheck(name="l", timeout=0.05, drive="i", read="o", hold=0.01, max_delay=0.001)
    late = 0.003
    changes = []
    for d in loopback_drives(check):
        changes += [Change(d.t + late, "i", d.value), Change(d.t + late + 0.0005, "o", d.value)]
    assert evaluate(check, Trace({"i": 0, "o": 0}, sorted(changes), 0.05)).passed
    assert not evaluate(check, Trace({"o": 0}, [c for c in changes if c.signal == "o"], 0.05)).passed
