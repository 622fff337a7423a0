"""The agent's functional core: connection seq, reconnect back-off, command decisions, state payload."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.nodeagent.agent import (
    CLOCK_FLOOR_MS,
    Action,
    Backoff,
    Control,
    Identity,
    clock_is_set,
    decide,
    next_conn_seq,
    node_state,
)
from scalerunner.protocol.mqtt import Capacity, Command, NodeState, decode, encode


@given(st.lists(st.integers(0, 2**45), min_size=1, max_size=50))
def test_conn_seq_strictly_increases_even_when_the_clock_steps_back(clock_ms: list[int]) -> None:
    seqs: list[int] = []
    prev: int | None = None
    for now in clock_ms:
        prev = next_conn_seq(prev, now)
        seqs.append(prev)
    assert all(b > a for a, b in itertools.pairwise(seqs))
    assert all(s >= now for s, now in zip(seqs, clock_ms, strict=True))


def test_conn_seq_is_the_wall_clock_when_it_moved_on() -> None:
    assert next_conn_seq(None, 1_700_000_000_000) == 1_700_000_000_000
    assert next_conn_seq(1_700_000_000_000, 1_700_000_000_500) == 1_700_000_000_500
    assert next_conn_seq(1_700_000_000_500, 1_700_000_000_500) == 1_700_000_000_501


def test_a_clock_before_2025_is_not_set_yet() -> None:
    assert not clock_is_set(0) and not clock_is_set(CLOCK_FLOOR_MS - 1)
    assert clock_is_set(CLOCK_FLOOR_MS)


@given(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40))
def test_backoff_delays_have_jitter_within_half_to_full_of_a_capped_doubling(rands: list[float]) -> None:
    b = Backoff(initial=0.5, cap=10.0)
    for n, r in enumerate(rands):
        ceiling = min(10.0, 0.5 * 2**n)
        assert ceiling / 2 <= b.next_delay(now=0.0, rand=r) <= ceiling


def test_backoff_never_exceeds_its_cap_and_grows_until_then() -> None:
    b = Backoff(initial=0.5, cap=4.0)
    delays = [b.next_delay(now=0.0, rand=0.999) for _ in range(8)]
    assert delays[:4] == pytest.approx([0.5, 1.0, 2.0, 4.0], rel=1e-3)
    assert max(delays) <= 4.0


def test_backoff_starts_over_only_after_a_stable_connection() -> None:
    b = Backoff(initial=1.0, cap=60.0, stable_after=10.0)
    for _ in range(4):
        b.next_delay(now=0.0, rand=1.0)
    b.connected(now=100.0)
    assert b.next_delay(now=101.0, rand=1.0) == 16.0  # kicked out at once: keep backing off
    b.connected(now=200.0)
    assert b.next_delay(now=215.0, rand=1.0) == 1.0  # up 15 s: a new incident


def _cmd(name: str) -> bytes:
    return encode(Command(cmd=name))  # type: ignore[arg-type]


def test_drain_sets_the_flag_replies_ok_and_asks_for_the_state_to_be_republished() -> None:
    d = decide(Control(), _cmd("drain"), now=1.0, reboot_configured=False, led_configured=False)
    assert d.control.draining and d.reply.ok and d.action is Action.STATE
    assert d.reply.result == {"draining": True}


def test_drain_twice_is_ok_and_publishes_nothing_new() -> None:
    d = decide(Control(draining=True), _cmd("drain"), now=1.0, reboot_configured=False, led_configured=False)
    assert d.control.draining and d.reply.ok and d.action is Action.NONE


def test_undrain_clears_the_flag() -> None:
    d = decide(
        Control(draining=True), _cmd("undrain"), now=1.0, reboot_configured=False, led_configured=False
    )
    assert not d.control.draining and d.reply.ok and d.action is Action.STATE


@pytest.mark.parametrize("led", [False, True])
def test_identify_replies_ok_and_lasts_30_s_only_with_an_led(led: bool) -> None:
    d = decide(Control(), _cmd("identify"), now=42.0, reboot_configured=False, led_configured=led)
    assert d.reply.ok and d.action is Action.IDENTIFY and d.reply.result == {"led": led, "seconds": 30.0}
    assert d.control.identify_until == (72.0 if led else None)


def test_identify_takes_its_duration_from_args_seconds() -> None:
    data = encode(Command(cmd="identify", args={"seconds": 5}))
    d = decide(Control(), data, now=42.0, reboot_configured=False, led_configured=True)
    assert d.reply.ok and d.control.identify_until == 47.0


@pytest.mark.parametrize("seconds", [0, -1, 3601, "10", True, None])
def test_identify_with_a_bad_duration_is_refused_naming_the_key(seconds: object) -> None:
    data = encode(Command(cmd="identify", args={"seconds": seconds}))
    d = decide(Control(), data, now=42.0, reboot_configured=False, led_configured=True)
    assert not d.reply.ok and "args.seconds" in d.reply.error and d.control == Control()


def test_reboot_without_a_configured_command_is_refused() -> None:
    d = decide(Control(), _cmd("reboot"), now=1.0, reboot_configured=False, led_configured=False)
    assert not d.reply.ok and d.reply.error == "reboot not configured" and d.control == Control()


def test_reboot_with_a_command_is_run_once() -> None:
    d = decide(Control(), _cmd("reboot"), now=1.0, reboot_configured=True, led_configured=False)
    assert d.reply.ok and d.action is Action.REBOOT and d.control.rebooting
    again = decide(d.control, _cmd("reboot"), now=2.0, reboot_configured=True, led_configured=False)
    assert not again.reply.ok and again.action is Action.NONE and "in progress" in again.reply.error


@pytest.mark.parametrize("name", ["run", "cancel", "resend_log"])
def test_job_commands_go_to_the_job_executor_and_change_no_control_state(name: str) -> None:
    d = decide(Control(), _cmd(name), now=1.0, reboot_configured=True, led_configured=True)
    assert d.action is Action.JOB and d.control == Control() and d.cmd == name


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b'{"cmd": "drain", "schema": 2}', "schema"),
        (b'{"cmd": "explode"}', "cmd"),
        (b'{"args": {}}', "cmd"),
        (b'["drain"]', "object"),
        (b'{"cmd": "drain", "args": []}', "args"),
    ],
)
def test_a_malformed_command_is_refused_with_a_reason_and_changes_nothing(data: bytes, reason: str) -> None:
    before = Control(draining=True, identify_until=5.0)
    d = decide(before, data, now=1.0, reboot_configured=True, led_configured=True)
    assert not d.reply.ok and reason in d.reply.error and d.reason == d.reply.error
    assert d.control == before and d.action is Action.NONE and d.cmd == ""


@given(st.binary(max_size=200))
def test_any_bytes_get_a_reply_and_only_a_valid_command_changes_anything(data: bytes) -> None:
    before = Control()
    d = decide(before, data, now=1.0, reboot_configured=True, led_configured=True)
    try:
        msgspec.json.decode(data, type=Command)
    except (msgspec.ValidationError, msgspec.DecodeError):
        assert not d.reply.ok and d.control == before and d.action is Action.NONE


IDENT = Identity("rack1-07", "0.1.0", "arm64", ("kvm",), Capacity(cpus=4, memory_mb=3900))


def test_online_state_and_its_will_share_the_seq_and_validate_against_the_schema() -> None:
    online = node_state(IDENT, "online", 1_750_000_000_000, Control(draining=True), ts=1.5)
    will = node_state(IDENT, "offline", 1_750_000_000_000, Control(draining=True), ts=1.5)
    for state in (online, will):
        assert decode(encode(state), NodeState) == state
    assert (online.status, will.status) == ("online", "offline")
    assert online.conn_seq == will.conn_seq
    assert online.draining and online.arch == "arm64" and online.labels == ["kvm"]


def test_a_decoder_that_predates_the_draining_field_still_reads_the_state() -> None:
    class OldNodeState(msgspec.Struct, kw_only=True):
        schema: int
        node: str
        status: str
        conn_seq: int

    data = encode(node_state(IDENT, "online", 7, Control(draining=True), ts=0.0))
    assert msgspec.json.decode(data, type=OldNodeState).conn_seq == 7
    assert decode(b'{"node":"n1","status":"online","conn_seq":1}', NodeState).draining is False
