"""The agent drives the real LED firmware: telemetry load -> gauge, identify command -> IDENTIFY and back.

Real parts: the managed mosquitto (generated config, node-a's own credentials), `scalerunner-agent` as a
process, and ledfw/main.py unchanged under the MicroPython unix port on a pty. The agent is given a second
pty's path; a relay thread joins the two and taps what the firmware sends: the firmware answers every
command of the agent's LedClient with its state (`mode=... px=...`), so the tap sees what the LED shows
without a second client on the line. The node's load comes from a /proc tree the test writes
(`--proc-root`).

Also here, in-process: a port that does not exist or answers garbage is logged with its name and retried,
and the driver keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scalerunner.coordinator.serial.led import EV_STATE, LedState, parse_state
from scalerunner.firmware import micropypath
from scalerunner.nodeagent.led import LedDriver
from scalerunner.protocol.enums import MsgType
from scalerunner.protocol.framing import FrameDecoder
from scalerunner.protocol.messages import Message
from scalerunner.protocol.mqtt import Command, Reply, Telemetry, decode, encode
from tests.integration.broker_fixtures import (
    RunningBroker,
    managed_broker_fixture,  # noqa: F401 (a fixture)
)
from tests.mpy_support import micropython_binary

pytestmark = [pytest.mark.micropython, pytest.mark.slow, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
AGENT = Path(sys.executable).with_name("scalerunner-agent")
NODE = "node-a"
STEP = 10.0


def _pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


class TappedLed:
    """ledfw under MicroPython on one pty, relayed to a second pty whose slave path the agent opens."""

    def __init__(self) -> None:
        self.fw_master, self.fw_slave, fw_path = _pty()
        self.master, self.slave, self.path = _pty()
        self.proc = subprocess.Popen(
            [micropython_binary(), str(REPO / "ledfw/main.py"), fw_path, "600000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MICROPYPATH": micropypath(REPO / "ledfw")},
        )
        self.states: list[LedState] = []
        self._cond = threading.Condition()
        self._decoder = FrameDecoder()
        self._wake_r, self._wake_w = os.pipe()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _tap(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            if frame.type != MsgType.EVENT:
                continue
            msg = Message.from_frame(frame)
            if msg.fields.get("code") == EV_STATE:
                with self._cond:
                    self.states.append(parse_state(str(msg.fields["text"])))
                    self._cond.notify_all()

    def _pump(self) -> None:
        pairs = {self.fw_master: self.master, self.master: self.fw_master}
        while not self._done.is_set():
            ready, _, _ = select.select([self.fw_master, self.master, self._wake_r], [], [], 1.0)
            for fd in ready:
                if fd == self._wake_r:
                    return
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the agent's side is closed (between its reconnects)
                    time.sleep(0.01)
                    continue
                if fd == self.fw_master:
                    self._tap(data)
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(pairs[fd], view) :]
                    except BlockingIOError:
                        time.sleep(0.001)
                    except OSError:
                        break

    def mark(self) -> int:
        with self._cond:
            return len(self.states)

    def wait(
        self, what: str, pred: Callable[[LedState], bool], timeout: float = STEP, since: int | None = None
    ) -> LedState:
        """The first state reported since ``since`` (a ``mark()``; default: now) that ``pred`` accepts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            start = len(self.states) if since is None else since
            while True:
                for st in self.states[start:]:
                    if pred(st):
                        return st
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(s.mode, lit(s)) for s in self.states[-5:]]
                    raise AssertionError(f"LED never showed {what} within {timeout:g} s; last: {seen}")
                self._cond.wait(left)

    def close(self) -> None:
        self._done.set()
        os.write(self._wake_w, b"x")
        self._thread.join(STEP)
        os.close(self.fw_master)  # the firmware exits when its line closes
        try:
            self.proc.communicate(timeout=STEP)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        for fd in (self.fw_slave, self.master, self.slave, self._wake_r, self._wake_w):
            os.close(fd)


def lit(st: LedState) -> int:
    px = st.pixels
    return sum(1 for i in range(0, len(px), 3) if px[i : i + 3] != b"\0\0\0")


@pytest.fixture
def led() -> Iterator[TappedLed]:
    tapped = TappedLed()
    try:
        yield tapped
    finally:
        tapped.close()


def write_proc(root: Path, load1: float) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "temp").write_text("45000\n")
    (root / "proc/stat").write_text("cpu  100 0 100 1000 0 0 0 0 0 0\n")
    (root / "proc/meminfo").write_text("MemTotal: 4000000 kB\nMemAvailable: 3000000 kB\n")
    tmp = root / "proc/loadavg.tmp"
    tmp.write_text(f"{load1:.2f} 0.00 0.00 1/100 1\n")
    tmp.replace(root / "proc/loadavg")


class Coordinator:
    """The coordinator's side of a command: an MQTT 5 request with a response topic and correlation data."""

    def __init__(self, broker: RunningBroker) -> None:
        self.prefix = f"scalerunner/v1/{broker.cluster}/nodes/{NODE}"
        self.replies: dict[bytes, Reply] = {}
        self.telemetry: list[Telemetry] = []
        self._cond = threading.Condition()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        c.username_pw_set(broker.coordinator_user, broker.password(broker.coordinator_user))
        c.on_message = self._on_message
        c.connect(broker.host, broker.port, keepalive=10)
        c.loop_start()
        c.subscribe([(f"{self.prefix}/reply", 1), (f"{self.prefix}/telemetry", 0)])
        self.client = c

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            if msg.topic.endswith("/telemetry"):
                self.telemetry.append(decode(bytes(msg.payload), Telemetry))
            else:
                corr = getattr(msg.properties, "CorrelationData", b"")
                self.replies[bytes(corr)] = decode(bytes(msg.payload), Reply)
            self._cond.notify_all()

    def command(self, cmd: Command, corr: bytes) -> Reply:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{self.prefix}/reply"
        props.CorrelationData = corr
        self.client.publish(f"{self.prefix}/cmd", encode(cmd), qos=1, properties=props)
        with self._cond:
            assert self._cond.wait_for(lambda: corr in self.replies, STEP), f"no reply to {cmd.cmd}"
            return self.replies[corr]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_agent_shows_load_on_the_led_gauge_and_identify_on_command(
    managed_broker: RunningBroker, led: TappedLed, tmp_path: Path
) -> None:
    proc_root = tmp_path / "root"
    write_proc(proc_root, 0.0)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'cluster = "{managed_broker.cluster}"\nnode = "{NODE}"\nstate_dir = "."\n'
        f'led_serial = "{led.path}"\n'
        f'[broker]\nhost = "{managed_broker.host}"\nport = {managed_broker.port}\n'
        f'password = "{managed_broker.password(NODE)}"\nreconnect_min = 0.1\n'
        "[telemetry]\ninterval = 0.2\n[capacity]\ncpus = 2\nmemory_mb = 1000\n"
    )
    (tmp_path / "cmdline").write_text("quiet\n")
    log_path = tmp_path / "agent.log"
    coord = Coordinator(managed_broker)
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [
                str(AGENT),
                "--config",
                str(config),
                "--cmdline",
                str(tmp_path / "cmdline"),
                "--proc-root",
                str(proc_root),
                "--log-level",
                "debug",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        idle = led.wait("an idle gauge", lambda s: s.mode == "GAUGE" and lit(s) == 0)
        n = len(idle.pixels) // 3
        write_proc(proc_root, 1.0)  # half of the 2 CPUs
        half = led.wait("half the gauge", lambda s: s.mode == "GAUGE" and lit(s) == (n + 1) // 2)
        assert half.pixels[1::3] != bytes(n), "45 °C is the green band"
        assert half.pixels[0::3] == bytes(n), "45 °C has no red"
        with coord._cond:  # the broker carried the same load
            assert coord._cond.wait_for(lambda: any(t.load1 == 1.0 for t in coord.telemetry), STEP)

        since = led.mark()
        reply = coord.command(Command(cmd="identify", args={"seconds": 1.5}), b"id-1")
        assert reply.ok and reply.result == {"led": True, "seconds": 1.5}
        led.wait("identify", lambda s: s.mode == "IDENTIFY", since=since)
        back = led.wait("the gauge again", lambda s: s.mode == "GAUGE", timeout=5.0)
        assert lit(back) == (n + 1) // 2
        assert agent.poll() is None
    finally:
        coord.close()
        agent.terminate()
        try:
            agent.wait(STEP)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    text = log_path.read_text()
    assert "LED indicator driven" in text and f"port={led.path}" in text
    assert agent.returncode == 0, text[-2000:]


# -- a bad port never takes the agent down --------------------------------------------------------


def _drive(port: str, seconds: float) -> LedDriver:
    async def scenario() -> LedDriver:
        driver = LedDriver(port, node="n1", cpus=1, timeout=0.3, retry_min=0.05, retry_max=0.2)
        await driver.start()
        driver.show(Telemetry(node="n1", ts=1.0, load1=0.5, cpu_pct=1.0, mem_used_mb=1, mem_total_mb=2))
        await asyncio.sleep(seconds)
        task = driver._task
        assert task is not None and not task.done(), "the driver's task ended"
        await driver.stop()
        return driver

    return asyncio.run(scenario())


def test_a_missing_port_is_logged_with_its_name_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = str(tmp_path / "ttyACM9")
    with caplog.at_level(logging.WARNING, logger="scalerunner.nodeagent.led"):
        driver = _drive(port, 1.0)
    assert driver.failures >= 3 and not driver.connected and driver.sent == 0
    assert any(getattr(r, "port", None) == port and "unavailable" in r.getMessage() for r in caplog.records)


def test_a_port_answering_garbage_is_retried_and_the_driver_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    master, slave, path = _pty()
    os.set_blocking(master, False)  # a full line must not block the babbler once the driver is gone
    done = threading.Event()

    def babble() -> None:  # a device that talks, but not the protocol: zero bytes and noise
        while not done.is_set():
            try:
                os.write(master, b"\x00\x13garbage\xff\x00" * 8)
                select.select([master], [], [], 0.02)
                os.read(master, 4096)
            except OSError:
                time.sleep(0.02)

    thread = threading.Thread(target=babble, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="scalerunner.nodeagent.led"):
            driver = _drive(path, 1.5)
    finally:
        done.set()
        thread.join(5)
        os.close(master)
        os.close(slave)
    assert driver.failures >= 2 and driver.sent == 0
    assert any(getattr(r, "port", None) == path and path in r.getMessage() for r in caplog.records)
