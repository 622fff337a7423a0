"""The boot HTTP server in a real coordinator (``[boot] enabled``, its own mosquitto and SQLite):
iPXE scripts for known and unknown MACs, files with Range, traversal attempts, the token trade,
the lifecycle and events, and a real ``scalerunner-agent`` that trades its token and goes online."""

from __future__ import annotations

import http.client
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from scalerunner.coordinator.broker.credentials import node_password
from tests.integration.netboot_fixtures import DirImages, RunningCoordinator, boot_coordinator, boot_inventory

pytestmark = pytest.mark.slow

CLUSTER = "lab"
N1, N2, N3 = "rack1-01", "rack1-02", "rack1-03"
MACS = {N1: "02:00:00:00:00:01", N2: "02:00:00:00:00:02", N3: "02:00:00:00:00:03"}
KERNEL = os.urandom(3 << 20)  # big enough for sendfile to take several rounds
INITRD = os.urandom(200_000)
AGENT = Path(sys.executable).parent / "scalerunner-agent"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> DirImages:
    src = DirImages(tmp_path_factory.mktemp("blobs"))
    src.add(
        "node-os", "3", "console=ttyS0", [("vmlinuz", "kernel", KERNEL), ("initrd.img", "initrd", INITRD)]
    )
    return src


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory, images: DirImages) -> Iterator[RunningCoordinator]:
    text = boot_inventory(CLUSTER, list(MACS.items()))
    with boot_coordinator(tmp_path_factory.mktemp("coord"), text, images) as run:
        yield run


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def script_for(coord: RunningCoordinator, mac: str) -> str:
    r = httpx.get(f"{coord.boot_url}/boot/ipxe", params={"mac": mac}, timeout=10)
    assert r.status_code == 200 and r.text.startswith("#!ipxe")
    return r.text


def token_of(script: str) -> str:
    m = re.search(r"scalerunner\.token=([A-Za-z0-9_-]+)", script)
    assert m, script
    return m.group(1)


def trade(coord: RunningCoordinator, node: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{coord.boot_url}/boot/v1/credentials", json={"node": node, "token": token}, timeout=10
    )


def raw_get(coord: RunningCoordinator, path: str) -> int:
    """GET ``path`` exactly as written (httpx would normalise ``..`` away before sending)."""
    assert coord.c.boot is not None
    conn = http.client.HTTPConnection("127.0.0.1", coord.c.boot.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_a_known_mac_gets_its_script_and_the_node_goes_booting(coord: RunningCoordinator) -> None:
    assert coord.node_state(N2) == "off"
    script = script_for(coord, MACS[N2].upper().replace(":", "-"))  # as any firmware may spell it
    assert f"scalerunner.node={N2}" in script and f"scalerunner.url={coord.boot_url}" in script
    assert f"/boot/node/{N2}/settings.cpio" in script
    wait_for("booting", lambda: coord.node_state(N2) == "booting")
    boots = [e for e in coord.events() if e["node"] == N2 and e["axis"] == "boot"]
    assert boots and boots[-1]["new"] == "script" and "node-os 3" in boots[-1]["reason"]
    # the path form iPXE may also use
    r = httpx.get(f"{coord.boot_url}/boot/ipxe/{MACS[N2]}", timeout=10)
    assert f"scalerunner.node={N2}" in r.text


def test_an_unknown_mac_gets_the_not_enrolled_script_and_an_event(coord: RunningCoordinator) -> None:
    r = httpx.get(f"{coord.boot_url}/boot/ipxe", params={"mac": "02:99:00:00:00:09"}, timeout=10)
    assert r.status_code == 200 and "not enrolled" in r.text
    assert "token" not in r.text and "kernel" not in r.text
    # as the operator sees it: `scalerunner events`
    env = {**os.environ, "SCALERUNNER_URL": coord.c.api_url, "SCALERUNNER_TOKEN": coord.c.token}
    out = subprocess.run(
        [str(AGENT.with_name("scalerunner")), "events", "--json", "--limit", "1000"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    events = [e for e in json.loads(out.stdout) if e["axis"] == "boot" and e["new"] == "not-enrolled"]
    assert any("02:99:00:00:00:09" in e["reason"] and e["node"] == "coordinator" for e in events)
    bad = httpx.get(f"{coord.boot_url}/boot/ipxe", params={"mac": "nope"}, timeout=10)
    assert bad.status_code == 400 and "not a MAC" in bad.json()["error"]
    chain = httpx.get(f"{coord.boot_url}/boot/ipxe", timeout=10)
    assert "${net0/mac}" in chain.text


def test_files_are_served_whole_and_by_range(coord: RunningCoordinator, images: DirImages) -> None:
    assert images.image is not None and images.image.kernel is not None
    url = f"{coord.boot_url}/boot/files/{images.image.kernel.digest}/vmlinuz"
    whole = httpx.get(url, timeout=30)
    assert whole.status_code == 200 and whole.content == KERNEL
    part = httpx.get(url, headers={"Range": "bytes=1000000-1000099"}, timeout=10)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1000000-1000099/{len(KERNEL)}"
    assert part.content == KERNEL[1000000:1000100]
    tail = httpx.get(url, headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.status_code == 206 and tail.content == KERNEL[-10:]


def test_settings_initrd_names_the_node_and_the_broker_and_no_secret(
    coord: RunningCoordinator, tmp_path: Path
) -> None:
    r = httpx.get(f"{coord.boot_url}/boot/node/{N1}/settings.cpio", timeout=10)
    assert r.status_code == 200
    subprocess.run(["cpio", "-id", "--quiet"], input=r.content, cwd=tmp_path, check=True)
    text = (tmp_path / "etc/scalerunner/agent.toml").read_text()
    assert f'node = "{N1}"' in text and f"port = {coord.c.broker.port}" in text
    password = node_password(coord.c.state_dir / "broker-credentials.json", N1)
    assert password not in r.text
    assert httpx.get(f"{coord.boot_url}/boot/node/nobody/settings.cpio", timeout=10).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/boot/files/../../../../etc/passwd",
        "/boot/files/%2e%2e/%2e%2e/etc/passwd",
        "/boot/files/{digest}/..%2f..%2f..%2fetc%2fpasswd",
        "/boot/files/{digest}/../../../etc/passwd",
        "/boot/files/..%2f..%2fetc/passwd",
        "/boot/files/" + "0" * 64 + "/vmlinuz",  # well-formed, not stored
        "/boot/files/{DIGEST}/vmlinuz",  # upper-case hex is not a stored digest's name
        "/boot/files/{digest}/.hidden",
        "/boot/node/..%2f..%2fstate/settings.cpio",
        "/boot/../state/scalerunner.db",
        "/state/broker-credentials.json",
        "/boot/files/{digest}",
    ],
)
def test_traversal_attempts_get_404(coord: RunningCoordinator, images: DirImages, path: str) -> None:
    assert images.image is not None and images.image.kernel is not None
    d = images.image.kernel.digest
    status = raw_get(coord, path.replace("{digest}", d).replace("{DIGEST}", d.upper()))
    assert status == 404, (path, status)


def test_a_token_trades_once_for_the_nodes_credentials(coord: RunningCoordinator) -> None:
    token = token_of(script_for(coord, MACS[N1]))
    first = trade(coord, N1, token)
    assert first.status_code == 200, first.text
    creds = first.json()
    assert creds == {
        "username": N1,
        "password": node_password(coord.c.state_dir / "broker-credentials.json", N1),
        "broker_host": "127.0.0.1",
        "broker_port": coord.c.broker.port,
        "cluster": CLUSTER,
    }
    again = trade(coord, N1, token)
    assert again.status_code == 403
    assert again.json() == {
        "error": f"node {N1}: the boot token is unknown, already used or expired",
        "node": N1,
    }


def test_refused_trades_are_403_and_spend_the_token(coord: RunningCoordinator) -> None:
    token = token_of(script_for(coord, MACS[N3]))
    wrong_node = trade(coord, N2, token)
    assert wrong_node.status_code == 403 and "not issued to this node" in wrong_node.json()["error"]
    assert trade(coord, N3, token).status_code == 403  # a leaked token is no good to its node either
    assert trade(coord, N3, "A" * 43).status_code == 403
    assert trade(coord, "nobody", "A" * 43).status_code == 403
    assert trade(coord, N3, "../../x").json()["error"] == f"node {N3}: the boot token is malformed"
    bad = httpx.post(f"{coord.boot_url}/boot/v1/credentials", content=b"{", timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    huge = httpx.post(f"{coord.boot_url}/boot/v1/credentials", content=b"x" * 10000, timeout=10)
    assert huge.status_code == 413


def test_an_expired_token_is_refused(coord: RunningCoordinator) -> None:
    from scalerunner.coordinator.pxe.tokens import token_digest

    token = "E" * 43
    coord.call(coord.c.store.put_boot_token(token_digest(token), N3, time.time() - 1))
    r = trade(coord, N3, token)
    assert r.status_code == 403 and "expired" in r.json()["error"]


def test_an_agent_trades_its_token_once_and_goes_online(coord: RunningCoordinator, tmp_path: Path) -> None:
    token = token_of(script_for(coord, MACS[N1]))
    state = tmp_path / "state"
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        f"console=ttyS0 scalerunner.url={coord.boot_url} scalerunner.node={N1} scalerunner.token={token}\n"
    )
    settings = httpx.get(f"{coord.boot_url}/boot/node/{N1}/settings.cpio", timeout=10).content
    subprocess.run(["cpio", "-id", "--quiet"], input=settings, cwd=tmp_path, check=True)
    config = tmp_path / "etc/scalerunner/agent.toml"
    # the coordinator's file as the node gets it, plus what a test needs: its own state dir, and
    # a short keepalive so the broker notices a stopped agent quickly
    text = config.read_text().replace(
        "\n[broker]\n", f'\nstate_dir = "{state}"\n\n[broker]\nkeepalive = 2\n', 1
    )
    config.write_text(text)

    def run_agent() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(AGENT), "--config", str(config), "--cmdline", str(cmdline)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    agent = run_agent()
    try:
        try:
            wait_for("online", lambda: coord.node_state(N1) in ("online", "idle", "busy"), 30)
        except AssertionError:
            agent.terminate()
            raise AssertionError(agent.communicate(timeout=10)[1].decode()[-3000:]) from None
        saved = state / "broker-credentials.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert json.loads(saved.read_text())["username"] == N1
        assert trade(coord, N1, token).status_code == 403  # spent by the agent
        agent.terminate()
        agent.wait(10)
        wait_for("offline", lambda: coord.node_state(N1) == "offline", 30)
        agent = run_agent()  # a restart on the same boot: the saved credentials, not the spent token
        wait_for("online again", lambda: coord.node_state(N1) in ("online", "idle", "busy"), 30)
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def test_an_agent_with_a_spent_token_exits_with_the_reason(coord: RunningCoordinator, tmp_path: Path) -> None:
    token = token_of(script_for(coord, MACS[N2]))
    assert trade(coord, N2, token).status_code == 200
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"scalerunner.url={coord.boot_url} scalerunner.node={N2} scalerunner.token={token}\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'cluster = "{CLUSTER}"\nstate_dir = "{tmp_path / "state"}"\n')
    done = subprocess.run(
        [str(AGENT), "--config", str(config), "--cmdline", str(cmdline)], capture_output=True, timeout=60
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    assert f"refused the boot token of node {N2} (HTTP 403" in err and "reboot the node" in err


def test_scripts_and_trades_are_counted_in_metrics(coord: RunningCoordinator) -> None:
    with coord.api() as client:
        text = client.get("/metrics").raise_for_status().text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("scalerunner_boot_")
    }
    assert values['scalerunner_boot_scripts_total{kind="node"}'] >= 1
    assert values['scalerunner_boot_scripts_total{kind="not-enrolled"}'] >= 1
    assert values['scalerunner_boot_token_trades_total{outcome="ok"}'] >= 1
    assert values['scalerunner_boot_token_trades_total{outcome="rejected"}'] >= 1
