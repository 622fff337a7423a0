"""A broker outage longer than telemetry_timeout marks no node offline; a node not heard after it does go.

`scalerunner up` runs against an external mosquitto that the test stops and starts again on the same
port (a managed broker is back within a quarter of a second, too soon to show anything). Two real agents:
rack1-01 lives through the outage and reconnects; rack1-02 is killed while the broker is down, so its
Will is never published (the broker that held it is gone) and only its silence after the broker is back
can tell the coordinator.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
TIMEOUT = 2.0  # s, the inventory's telemetry_timeout
N1, N2 = "rack1-01", "rack1-02"
T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Outage:
    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        (root / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        (root / "secret").write_text("any\n")
        (root / "cmdline").write_text("quiet\n")
        nodes = "".join(
            f'[[nodes]]\nname = "{n}"\nmac = "02:00:00:00:00:0{i}"\narch = "amd64"\n'
            for i, n in enumerate((N1, N2), 1)
        )
        (root / "inv.toml").write_text(
            f'[cluster]\nname = "lab"\n[broker]\nmode = "external"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'username = "coordinator"\npassword_file = "secret"\n[api]\nlisten = "127.0.0.1:0"\n'
            f"[timeouts]\nboot_timeout = 60\ntelemetry_timeout = {TIMEOUT}\n{nodes}"
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SCALERUNNER_")}
        self.env["SCALERUNNER_HOME"] = str(root / "home")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.broker: subprocess.Popen[bytes] | None = None
        self.url = self.token = ""

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.root / log).open("ab") as out:
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def start_broker(self) -> None:
        assert MOSQUITTO is not None
        self.broker = self._spawn([MOSQUITTO, "-c", str(self.root / "mosquitto.conf")], "mosquitto.log")

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 5, "mosquitto listens")

    def start_coordinator(self) -> None:
        argv = [str(BIN / "scalerunner"), "up", "--config", str(self.root / "inv.toml"), "--api-port", "0"]
        proc = self._spawn(argv, "up.log")
        api = self.root / "home" / "api.json"
        wait_until(lambda: api.exists() or proc.poll() is not None, 20, "scalerunner up records its API")
        assert proc.poll() is None, (self.root / "up.log").read_text()[-2000:]
        saved = json.loads(api.read_text())
        self.url, self.token = saved["url"], saved["token"]

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        cfg = self.root / f"{node}.toml"
        cfg.write_text(
            f'cluster = "lab"\nnode = "{node}"\nstate_dir = "."\n[broker]\nhost = "127.0.0.1"\n'
            f'port = {self.port}\npassword = "any"\nkeepalive = 1\nreconnect_min = 0.1\nreconnect_max = 0.5\n'
            "[telemetry]\ninterval = 0.3\n"
        )
        argv = [str(BIN / "scalerunner-agent"), "--config", str(cfg), "--cmdline", str(self.root / "cmdline")]
        return self._spawn(argv, f"{node}.log")

    def api(self, path: str) -> Any:
        resp = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def node(self, name: str) -> dict[str, Any]:
        view: dict[str, Any] = self.api(f"/api/v1/nodes/{name}")
        return view

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    o = Outage(tmp_path)
    try:
        yield o
    finally:
        o.close()


def test_a_broker_outage_longer_than_the_timeout_marks_no_node_offline_and_a_silent_one_goes_after(
    outage: Outage,
) -> None:
    outage.start_broker()
    outage.start_coordinator()
    outage.start_agent(N1)
    doomed = outage.start_agent(N2)
    for name in (N1, N2):
        wait_until(lambda name=name: outage.node(name)["state"] == "idle", 15, f"{name} idle")
    held = outage.node(N1)["conn_seq"]
    events_before = len(outage.api("/api/v1/events?limit=1000"))

    assert outage.broker is not None
    stop(outage.broker)  # the broker is gone: nobody hears anybody
    down_at = time.monotonic()
    stop(doomed, signal.SIGKILL)  # dies unseen: no broker holds its Will
    time.sleep(2.5 * TIMEOUT)
    assert [outage.node(n)["state"] for n in (N1, N2)] == ["idle", "idle"], "silence while deaf is no fault"

    outage.start_broker()  # same port: agents and coordinator reconnect on their own
    wait_until(
        lambda: (v := outage.node(N1))["conn_seq"] > held and v["state"] == "idle", 15, f"{N1} reconnected"
    )
    wait_until(lambda: outage.node(N2)["state"] == "offline", TIMEOUT + 10, f"{N2} goes offline")
    assert time.monotonic() - down_at > 2.5 * TIMEOUT

    after = outage.api("/api/v1/events?limit=1000")[events_before:]
    moves = [(e["node"], e["old"], e["new"]) for e in after if e["axis"] == "state"]
    assert [m for m in moves if m[0] == N1] == [], moves  # rack1-01 never left idle
    # rack1-02 went offline (and, not drained, is up for recovery power-cycles after that)
    assert next(m for m in moves if m[0] == N2) == (N2, "idle", "offline"), moves
    reason = next(e["reason"] for e in after if e["axis"] == "state")
    assert "not heard within 2 s of the coordinator's reconnect to the broker" in reason, reason
