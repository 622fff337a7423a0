"""Node power as an operator uses it: `scalerunner up` (a subprocess, with its mosquitto) whose
inventory puts nodes on a simulated PoE switch (`scalerunner sim switch`, another subprocess), the
`scalerunner power|energy|events` commands, the REST routes with their token, and /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BIN = Path(sys.executable).parent
SCALERUNNER = str(BIN / "scalerunner")
T = TypeVar("T")

INVENTORY = """
[cluster]
name = "lab"

[api]
listen = "127.0.0.1:0"

[power]
sample_interval = 0.2
min_off = 0.3
off_timeout = 2
on_timeout = 2

[[switches]]
name = "sw1"
address = "127.0.0.1"
port = {port}
profile = "scalerunner-sim"
uplink_ports = [8]
snmp = {{ version = "2c", community = "private" }}

[[nodes]]
name = "n1"
mac = "02:00:00:00:00:01"
arch = "arm64"
switch = "sw1"
port = 1

[[nodes]]
name = "n2"
mac = "02:00:00:00:00:02"
arch = "arm64"
switch = "sw1"
port = 2

[[nodes]]
name = "bare"
mac = "02:00:00:00:00:03"
arch = "arm64"
"""


def wait_until(check: Callable[[], T | None], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        try:
            got = check()
        except (OSError, ValueError, AssertionError):
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


class Setup:
    def __init__(self, root: Path, env: dict[str, str], url: str, token: str) -> None:
        self.root, self.env, self.url, self.token = root, env, url, token

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCALERUNNER, *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=60
        )

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("power")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALERUNNER_")}
    env.update({"SCALERUNNER_HOME": str(root / "home"), "COLUMNS": "200"})
    switch = subprocess.Popen(
        [SCALERUNNER, "sim", "switch", "--ports", "8", "--listen", "127.0.0.1:0", "--community", "private"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    up: subprocess.Popen[bytes] | None = None
    try:
        assert switch.stdout is not None
        line = switch.stdout.readline().decode().strip()
        assert line.startswith("udp:"), line
        (root / "scalerunner.toml").write_text(INVENTORY.format(port=int(line.rsplit(":", 1)[1])))
        out = root / "up.out"
        with out.open("wb") as stdout, (root / "up.log").open("wb") as stderr:
            up = subprocess.Popen(
                [SCALERUNNER, "up", "--config", "scalerunner.toml", "--api-port", "0"],
                cwd=root,
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        proc = up

        def printed() -> str:
            assert proc.poll() is None, (root / "up.log").read_text()
            return out.read_text().strip()

        url = wait_until(printed, 30, "scalerunner up prints the API URL")
        token = json.loads((root / "home" / "api.json").read_text())["token"]
        yield Setup(root, env, url, token)
    finally:
        if up is not None:
            stop(up)
        stop(switch)


def test_power_status_lists_each_node_with_its_outlet_and_exits_1_for_the_one_without(setup: Setup) -> None:
    r = setup.cli("power", "status", "--json")
    assert r.returncode == 1, r.stderr
    rows = {x["node"]: x for x in json.loads(r.stdout)}
    assert (rows["n1"]["ok"], rows["n1"]["outlet"], rows["n1"]["state"]) == (True, "sw1:1", "on")
    assert rows["n1"]["watts"] == pytest.approx(2.5)
    assert (rows["bare"]["ok"], rows["bare"]["cause"]) == (False, "not-assigned")
    ok = setup.cli("power", "status", "n1", "n2")
    assert ok.returncode == 0 and "sw1:1" in ok.stdout and "sw1:2" in ok.stdout, ok.stdout


def test_a_bulk_cycle_with_one_bad_node_prints_a_line_per_node_and_exits_1(setup: Setup) -> None:
    r = setup.cli("power", "cycle", "n1", "n2", "bare", "--reason", "firmware update")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("n1: cycle ok: sw1:1 on") and lines[1].startswith("n2: cycle ok: sw1:2 on")
    assert lines[2] == (
        "bare: cycle FAILED (not-assigned): bare: the inventory gives this node no switch port or BMC"
    )
    assert "cycle failed on 1 of 3 nodes: bare" in r.stderr
    [bare] = [n for n in json.loads(setup.cli("nodes", "ls", "--json").stdout) if n["name"] == "bare"]
    assert bare["state"] == "off"  # nothing can switch it: its lifecycle is left alone
    events = json.loads(setup.cli("events", "--node", "n1", "--json").stdout)
    power = [e for e in events if e["axis"] == "power"]
    assert power[-1]["new"] == "cycle ok" and power[-1]["reason"].startswith("operator: firmware update")


def test_power_off_and_on_through_the_rest_api_with_per_node_results(setup: Setup) -> None:
    assert setup.api("POST", "/api/v1/power/off", json={"nodes": ["n2"]}).status_code == 200
    [off] = setup.api("GET", "/api/v1/power", params={"node": "n2"}).json()
    assert (off["state"], off["watts"]) == ("off", 0.0)
    answer = setup.api("POST", "/api/v1/power/on", json={"nodes": ["n2", "nobody"]})
    assert answer.status_code == 200
    on, nobody = answer.json()
    assert (on["node"], on["ok"], on["state"]) == ("n2", True, "on")
    assert (nobody["ok"], nobody["cause"]) == (False, "unknown-node")
    assert setup.api("POST", "/api/v1/power/reset", json={"nodes": ["n2"]}).status_code == 422
    assert setup.api("POST", "/api/v1/power/on", json={"nodes": []}).status_code == 422
    assert httpx.get(setup.url + "/api/v1/power", timeout=10).status_code == 401


def test_energy_per_node_from_sampled_power_and_in_metrics(setup: Setup) -> None:
    time.sleep(1.5)  # a few samples at 0.2 s
    # a window that ends after n1's cycle in the test before, so its mean is the steady draw
    r = setup.cli("energy", "--node", "n1", "--since", "1s", "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row["node"] == "n1" and row["samples"] >= 3 and row["wh"] > 0
    assert row["mean_w"] == pytest.approx(2.5, rel=0.05)
    table = setup.cli("energy")
    assert table.returncode == 0 and "total" in table.stdout and "n2" in table.stdout
    unknown = setup.cli("energy", "--job", "no-such-job")
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr
    usage = setup.cli("energy", "--job", "j1", "--node", "n1")
    assert usage.returncode == 2
    metrics = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(httpx.get(setup.url + "/metrics", timeout=10).text)
        for s in fam.samples
    }
    assert metrics[("scalerunner_node_power_watts", (("node", "n1"),))] == pytest.approx(2.5)
    assert metrics[("scalerunner_node_energy_watt_hours_total", (("node", "n1"),))] > 0
    assert metrics[("scalerunner_power_actions_total", (("op", "cycle"),))] >= 2
