"""Enrolment in a real coordinator (``[boot] enabled``, ``enroll = true``, its own mosquitto and
SQLite): an unknown machine that network-boots becomes a node without a restart - a real boot
script with a token, the node in ``scalerunner nodes ls --json``, an ``enrolled`` event, a token
trade whose credentials the real broker accepts (a real agent goes online) - and stays one
across a restart, even with enrolment turned off, when an unknown MAC is "not enrolled" again."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.netboot_fixtures import DirImages, RunningCoordinator, boot_coordinator, boot_inventory

pytestmark = pytest.mark.slow

CLUSTER = "lab"
KNOWN, KNOWN_MAC = "rack1-01", "02:00:00:00:00:01"
NEW_MAC = "02:00:00:3a:5f:01"
NEW = "pool-3a5f01"  # enroll_prefix + the MAC's last three bytes
BIN = Path(sys.executable).parent


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def script(coord: RunningCoordinator, mac: str, arch: str | None) -> str:
    params = {"mac": mac} | ({"arch": arch} if arch is not None else {})
    r = httpx.get(f"{coord.boot_url}/boot/ipxe", params=params, timeout=30)
    assert r.status_code == 200 and r.text.startswith("#!ipxe"), r.text
    return r.text


def nodes_ls(coord: RunningCoordinator) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [
            str(BIN / "scalerunner"),
            "nodes",
            "ls",
            "--json",
            "--url",
            coord.c.api_url,
            "--token",
            coord.c.token,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return {n["name"]: n for n in json.loads(done.stdout)}


def inventory(enroll: bool) -> str:
    text = boot_inventory(CLUSTER, [(KNOWN, KNOWN_MAC)])
    if enroll:
        text = text.replace(
            "[boot]\n", '[boot]\nenroll = true\nenroll_prefix = "pool-"\nenroll_labels = ["enrolled"]\n', 1
        )
    return text


def run_agent(coord: RunningCoordinator, tmp_path: Path, node: str, token: str) -> subprocess.Popen[bytes]:
    """The node's agent as the booted image starts it: the settings initrd's agent.toml and the
    kernel command line of its script."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        f"scalerunner.url={coord.boot_url} scalerunner.node={node} scalerunner.token={token}\n"
    )
    settings = httpx.get(f"{coord.boot_url}/boot/node/{node}/settings.cpio", timeout=10)
    assert settings.status_code == 200
    subprocess.run(["cpio", "-id", "--quiet"], input=settings.content, cwd=tmp_path, check=True)
    config = tmp_path / "etc/scalerunner/agent.toml"
    text = config.read_text().replace(
        "\n[broker]\n", f'\nstate_dir = "{tmp_path / "state"}"\n\n[broker]\n', 1
    )
    config.write_text(text)
    return subprocess.Popen(
        [str(BIN / "scalerunner-agent"), "--config", str(config), "--cmdline", str(cmdline)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(agent: subprocess.Popen[bytes]) -> None:
    agent.terminate()
    try:
        agent.wait(10)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def test_an_unknown_machine_is_enrolled_boots_goes_online_and_survives_a_restart(tmp_path: Path) -> None:
    images = DirImages(tmp_path / "blobs")
    images.add(
        "node-os", "3", "console=ttyS0", [("vmlinuz", "kernel", b"k" * 4096), ("initrd.img", "initrd", b"i")]
    )
    home = tmp_path / "coord"
    with boot_coordinator(home, inventory(enroll=True), images) as coord:
        # an unknown arch is not enrolled, and says why
        odd = script(coord, NEW_MAC, "arm32")
        assert "is not enrolled" in odd and "architecture is unknown" in odd and "token" not in odd
        # iPXE's build arch x86_64: enrolled, and the same request gets the real boot script
        text = script(coord, NEW_MAC.upper(), "x86_64")
        assert f"scalerunner.node={NEW}" in text and f"/boot/node/{NEW}/settings.cpio" in text
        token = re.search(r"scalerunner\.token=([A-Za-z0-9_-]+)", text)
        assert token is not None
        # one node per machine: asking again does not enrol it twice
        assert f"scalerunner.node={NEW}" in script(coord, NEW_MAC, "x86_64")
        listed = nodes_ls(coord)
        assert set(listed) == {KNOWN, NEW}
        new = listed[NEW]
        assert new["arch"] == "amd64" and new["labels"] == ["enrolled"] and new["health"] == "unknown"
        assert new["state"] == "booting"  # the script fed BootRequested to its lifecycle
        events = coord.events()
        enrolled = [e for e in events if e["node"] == NEW and e["new"] == "enrolled"]
        assert len(enrolled) == 1 and NEW_MAC in enrolled[0]["reason"] and "x86_64" in enrolled[0]["reason"]
        assert any(
            e["node"] == "coordinator" and "arch" in e["reason"] for e in events if e["new"] == "not-enrolled"
        )
        # durable, private, and in the inventory's own format
        saved = home / "state" / "enrolled-nodes.toml"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        entry = tomllib.loads(saved.read_text())["nodes"]
        assert entry == [
            {"name": NEW, "mac": NEW_MAC, "arch": "amd64", "labels": ["enrolled"], "boot_group": "default"}
        ]
        # no switch port: no power control, said per node
        with coord.api() as api:
            power = api.get("/api/v1/power", params={"node": NEW})
            assert NEW in power.text and "not-assigned" in power.text, power.text
        # the token trade's credentials are accepted by the real broker: the agent goes online
        agent = run_agent(coord, tmp_path, NEW, token.group(1))
        try:
            try:
                wait_for("online", lambda: coord.node_state(NEW) in ("online", "idle", "busy"), 30)
            except AssertionError:
                agent.terminate()
                raise AssertionError(agent.communicate(timeout=10)[1].decode()[-3000:]) from None
        finally:
            stop(agent)
    # a restart, enrolment now off: the node is still one, a new machine is not enrolled
    with boot_coordinator(home, inventory(enroll=False), images) as coord:
        listed = nodes_ls(coord)
        assert set(listed) == {KNOWN, NEW} and listed[NEW]["arch"] == "amd64"
        assert f"scalerunner.node={NEW}" in script(coord, NEW_MAC, None)
        other = script(coord, "02:00:00:00:00:77", "x86_64")
        assert "is not enrolled" in other and "scalerunner.token" not in other
        assert "pool-000077" not in nodes_ls(coord)
