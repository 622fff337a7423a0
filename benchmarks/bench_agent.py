"""Node agent footprint: time from process start to its online state on the broker, and its RSS.

The agent runs through its console script against a real mosquitto on a free loopback port; an
observer subscribed to the state topic takes the time the online state arrives. RSS is the
agent's peak (VmHWM) after it has run a few telemetry cycles. Both are set against the budgets
in DESIGN.md (under 1 s, at most 30 MB) as headroom, budget / measured, so >= 1 meets it;
``python -c pass`` is measured beside it as the floor any Python process pays on this machine
(its RSS held open on stdin, so that it can be read from /proc).

A second run gives the agent an LED indicator (``led_serial``): the real LED firmware under the
MicroPython unix port on a pty, joined to the pty the agent opens by a relay thread. That run loads
the agent's LED client (nodeagent/ledclient.py: a struct codec and a window-of-one link, neither
construct nor pyserial) and drives the gauge every telemetry cycle.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.common import Figure, free_port
from scalerunner.firmware import find_tool, micropypath
from scalerunner.protocol.mqtt import Kind, NodeState, decode, node_topic

START_BUDGET_S = 1.0
RSS_BUDGET_KB = 30 * 1024
RUNS = 5
RUN_FOR_S = 1.5  # telemetry cycles before the RSS is read
AGENT = Path(sys.executable).with_name("scalerunner-agent")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[1]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class _Online:
    """Records when each new online state (by conn_seq) reaches a subscriber."""

    def __init__(self, port: int, topic: str) -> None:
        self.seen: dict[int, float] = {}
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-agent", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not subscribed.wait(5):
            raise RuntimeError("observer could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        state = decode(bytes(msg.payload), NodeState)
        if state.status == "online":
            with self._cond:
                self.seen.setdefault(state.conn_seq, at)
                self._cond.notify_all()

    def wait_new(self, known: int, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.seen) > known, timeout):
                raise RuntimeError("the agent did not come online")
            return max(self.seen.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _peer() -> tuple[float, int]:
    """Median wall time of ``python -c pass`` and the peak RSS (KB) of a bare interpreter.

    The RSS is read from /proc while the interpreter waits on stdin: wait4's ru_maxrss of a
    child counts the parent's pages from before its exec, so it would report this process.
    """
    times, rss = [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
        with subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        ) as idle:
            time.sleep(0.2)
            rss.append(_status_kb(idle.pid, "VmHWM"))
            assert idle.stdin is not None
            idle.stdin.close()
    return statistics.median(times), int(statistics.median(rss))


def _pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


@contextlib.contextmanager
def _led_firmware() -> Iterator[str]:
    """ledfw/main.py under MicroPython on a pty, relayed to a second pty; yields that one's path."""
    micropython = find_tool("micropython")
    if micropython is None:
        raise RuntimeError("micropython is not installed (make setup)")
    fw_master, fw_slave, fw_path = _pty()
    master, slave, path = _pty()
    wake_r, wake_w = os.pipe()
    fw = subprocess.Popen(
        [micropython, str(REPO / "ledfw/main.py"), fw_path, "600000"],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "MICROPYPATH": micropypath(REPO / "ledfw")},
    )

    def relay() -> None:
        pairs = {fw_master: master, master: fw_master}
        while True:
            ready, _, _ = select.select([fw_master, master, wake_r], [], [])
            if wake_r in ready:
                return
            for fd in ready:
                try:
                    os.write(pairs[fd], os.read(fd, 65536))
                except OSError:  # the agent's side closed between two runs
                    time.sleep(0.01)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        os.write(wake_w, b"x")
        thread.join(5)
        os.close(fw_master)  # the firmware exits when its line closes
        try:
            fw.wait(5)
        except subprocess.TimeoutExpired:
            fw.kill()
            fw.wait()
        for fd in (fw_slave, master, slave, wake_r, wake_w):
            os.close(fd)


def _agent(workdir: Path, led_serial: str | None = None) -> tuple[float, int]:
    """Median time from Popen to the online state on the broker, and the median peak RSS (KB)."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        cfg = workdir / "agent.toml"
        cfg.write_text(
            'cluster = "bench"\nnode = "bench-1"\nstate_dir = "."\n'
            + (f'led_serial = "{led_serial}"\n' if led_serial else "")
            + f'[broker]\nhost = "127.0.0.1"\nport = {port}\npassword = "x"\n'
            + "[telemetry]\ninterval = 0.1\n"
        )
        (workdir / "cmdline").write_text("")
        observer = _Online(port, node_topic("bench", "bench-1", Kind.STATE))
        starts, rss = [], []
        try:
            for n in range(RUNS):
                t0 = time.perf_counter()
                p = subprocess.Popen(
                    [str(AGENT), "--config", str(cfg), "--cmdline", str(workdir / "cmdline")],
                    stderr=subprocess.DEVNULL,
                )
                agents.append(p)
                starts.append(observer.wait_new(n, timeout=10) - t0)
                time.sleep(RUN_FOR_S)
                rss.append(_status_kb(p.pid, "VmHWM"))
                p.send_signal(signal.SIGTERM)
                p.wait(10)
        finally:
            observer.close()
        return statistics.median(starts), int(statistics.median(rss))
    finally:
        for p in agents:
            if p.poll() is None:
                p.kill()
                p.wait()
        broker.terminate()
        broker.wait(5)


def run() -> list[Figure]:
    peer_s, peer_kb = _peer()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        start_s, agent_kb = _agent(Path(tmp))
    with tempfile.TemporaryDirectory(prefix="bench-agent-led-") as tmp, _led_firmware() as led:
        led_start_s, led_kb = _agent(Path(tmp), led)
    return [
        Figure(
            name="agent start → online state on the broker: 1 s budget / measured",
            measured=f"{start_s * 1000:.0f} ms (python -c pass: {peer_s * 1000:.0f} ms)",
            against=f"{START_BUDGET_S * 1000:.0f} ms budget",
            ratio=START_BUDGET_S / start_s,
            target=1.0,
        ),
        Figure(
            name="agent peak RSS after telemetry cycles: 30 MB budget / measured",
            measured=f"{agent_kb / 1024:.1f} MB (python -c pass: {peer_kb / 1024:.1f} MB)",
            against=f"{RSS_BUDGET_KB / 1024:.0f} MB budget",
            ratio=RSS_BUDGET_KB / agent_kb,
            target=1.0,
        ),
        Figure(
            name="agent with an LED indicator (real firmware on a pty), start: 1 s budget / measured",
            measured=f"{led_start_s * 1000:.0f} ms",
            against=f"{START_BUDGET_S * 1000:.0f} ms budget",
            ratio=START_BUDGET_S / led_start_s,
            target=1.0,
        ),
        Figure(
            name="agent with an LED indicator, peak RSS: 30 MB budget / measured",
            measured=f"{led_kb / 1024:.1f} MB",
            against=f"{RSS_BUDGET_KB / 1024:.0f} MB budget",
            ratio=RSS_BUDGET_KB / led_kb,
            target=1.0,
        ),
    ]


if __name__ == "__main__":
    for f in run():
        print(f)
