"""The agent's stop-and-wait link (nodeagent/ledlink.py) against the protocol's LinkCore over a lossy line.

The agent sends requests one at a time; the device (a LinkCore, the reference implementation of
docs/protocol.md section 2) answers each with a reliable EVENT. Whatever frames the line loses, each
side gets every message of the other exactly once and in order, or the agent reports the peer gone.
Also: the agent client's modules load neither construct, pyserial nor the coordinator.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalerunner.nodeagent.ledlink import StopAndWait
from scalerunner.protocol.enums import MsgType
from scalerunner.protocol.link.core import Delivered, Failed, LinkCore
from scalerunner.protocol.lite import TYPE_IDS
from scalerunner.protocol.messages import Message

PING = TYPE_IDS["PING"]
EVENT = TYPE_IDS["EVENT"]


class Line:
    """Whole frames lost by a fixed pattern (True = lost), then delivered."""

    def __init__(self, losses: list[bool]) -> None:
        self.losses = iter(losses)

    def carry(self, data: bytes) -> bytes:
        out = bytearray()
        for chunk in data.split(b"\x00")[:-1]:
            if chunk and next(self.losses, False):
                continue
            out += chunk + b"\x00"
        return bytes(out)


def _run(losses: list[bool], n: int, seed: int) -> tuple[list[int], list[str], bool]:
    agent = StopAndWait(rng=random.Random(seed))
    device = LinkCore(name="led", rng=random.Random(seed + 1))
    there, back = Line(losses), Line(losses[len(losses) // 2 :])
    got_requests: list[int] = []
    got_answers: list[str] = []
    device_failed: list[Failed] = []
    now = 0.0

    def exchange() -> None:
        for ev in device.receive(there.carry(agent.outgoing()), now):
            device_failed.extend([ev] if isinstance(ev, Failed) else [])
            if isinstance(ev, Delivered):
                token = ev.message.fields["token"]
                assert isinstance(token, int)
                got_requests.append(token)
                device.send(
                    Message.make("EVENT", level=1, code=0x110, time_ms=0, text=f"answer {token}"),
                    reliable=True,
                    now=now,
                )
        for type_id, fields in agent.receive(back.carry(device.outgoing()), now):
            if type_id == EVENT:
                text = fields["text"]
                assert isinstance(text, str)
                got_answers.append(text)

    for token in range(n):
        agent.send(PING, {"token": token}, now)
        steps = 0
        while agent.busy or len(got_answers) <= token:
            exchange()
            deadlines = [d for d in (agent.next_deadline(), device.next_deadline()) if d is not None]
            if not deadlines:
                break
            now = max(now, min(deadlines))
            agent.poll(now)
            device_failed.extend(ev for ev in device.poll(now) if isinstance(ev, Failed))
            steps += 1
            if agent.failed or steps > 200:
                return got_requests, got_answers, True
        exchange()
    # the device's last answers are acknowledged too: it never gives the agent up
    while device.next_deadline() is not None and not device_failed:
        now = max(now, device.next_deadline() or now)
        device_failed.extend(ev for ev in device.poll(now) if isinstance(ev, Failed))
        exchange()
    return got_requests, got_answers, bool(device_failed)


@settings(max_examples=60)
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 6), st.integers(0, 2**16))
def test_every_request_and_answer_arrives_once_in_order_whatever_the_line_loses(
    losses: list[bool], n: int, seed: int
) -> None:
    requests, answers, failed = _run(losses, n, seed)
    # Each unacknowledged send needs one lost frame (the request or its ACK), and either side
    # gives up only after max_retries + 1 unacknowledged sends of one message: with no more
    # frames lost than max_retries over both lines, nothing can fail. With more, giving the
    # peer up is the documented outcome; what did arrive still arrived once and in order.
    lost = sum(losses) + sum(losses[len(losses) // 2 :])
    if lost <= StopAndWait().max_retries:
        assert not failed
    if not failed:
        assert requests == list(range(n))
        assert answers == [f"answer {t}" for t in range(n)]
    assert requests == list(range(len(requests)))
    assert answers == [f"answer {t}" for t in range(len(answers))]


def test_a_silent_peer_is_given_up_after_max_retries() -> None:
    agent = StopAndWait(rto_init=0.1, max_retries=3, rng=random.Random(1))
    agent.send(PING, {"token": 1}, 0.0)
    sent = [agent.outgoing()]
    now = 0.0
    while agent.busy:
        deadline = agent.next_deadline()
        assert deadline is not None
        now = deadline
        agent.poll(now)
        sent.append(agent.outgoing())
    assert agent.failed
    frames = [s for s in sent if s]
    assert len(frames) == 4  # the first send and three retries, with a doubled RTO each time
    assert 0.1 + 0.2 + 0.4 + 0.8 - 1e-9 <= now <= 0.1 + 0.2 + 0.4 + 0.8 + 1e-9


def test_a_device_that_restarted_asks_for_a_syn_and_gets_the_request_again() -> None:
    agent = StopAndWait(rng=random.Random(3))
    device = LinkCore(name="led", rng=random.Random(4))
    agent.send(PING, {"token": 1}, 0.0)
    device.receive(agent.outgoing(), 0.0)
    agent.receive(device.outgoing(), 0.0)
    assert not agent.busy
    fresh = LinkCore(name="led", rng=random.Random(5))  # the firmware restarted: it knows no session
    agent.send(PING, {"token": 2}, 0.1)
    assert fresh.receive(agent.outgoing(), 0.1) == []  # not synced: dropped, answered with RST
    agent.receive(fresh.outgoing(), 0.1)  # the RST makes the agent resend with SYN
    delivered = [e for e in fresh.receive(agent.outgoing(), 0.1) if isinstance(e, Delivered)]
    assert [e.message.fields["token"] for e in delivered] == [2]
    assert delivered[0].message.type == MsgType.PING


def test_the_agents_led_client_loads_no_construct_pyserial_or_coordinator() -> None:
    code = (
        "import sys, scalerunner.nodeagent.agent, scalerunner.nodeagent.led, scalerunner.nodeagent.ledclient;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'construct', 'serial', 'pdb', 'fastapi'});"
        "bad += [m for m in sys.modules if m.startswith('scalerunner.coordinator')];"
        "bad += [m for m in sys.modules if m.startswith('scalerunner.protocol.link')];"
        "print(' '.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_agents_led_client_reads_the_state_event_as_the_coordinators_client_does() -> None:
    from scalerunner.coordinator.serial import led as coordinator_led
    from scalerunner.nodeagent import ledclient

    assert ledclient.EV_STATE == coordinator_led.EV_STATE
    for text in ("mode=GAUGE lost=0 px=00ff00", "mode=IDENTIFY lost=12 px=", " mode=OFF lost=3 px=ab\n"):
        theirs = coordinator_led.parse_state(text)
        assert ledclient.parse_shows(text) == ledclient.LedShows(theirs.mode, theirs.lost)
    for bad in ("mode=GAUGE", "lost=1 px=00", ""):
        with pytest.raises(ValueError, match="not an LED state"):
            ledclient.parse_shows(bad)
