"""A job's ``network`` from the spec to the QEMU command line, and the loopback URL rewrite."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.jobs.spec import JobSpecError, spec_from_mapping
from scalerunner.nodeagent.runtime.base import JobRun
from scalerunner.nodeagent.runtime.vm import VmConfig, guest_env, guest_url, qemu_argv
from scalerunner.nodeagent.runtime.vm_guest import MODULES, NET_MODULES
from scalerunner.protocol.mqtt.payloads import RunJob


def argv_for(tmp_path: Path, network: bool) -> list[str]:
    job = JobRun(job="j", attempt=1, argv=("true",), workdir=tmp_path, network=network)
    socks = {p: tmp_path / f"{p}.sock" for p in ("stdout", "stderr", "work", "status")}
    return qemu_argv(VmConfig(), "tcg", job, Path("k"), Path("i"), tmp_path / "d", socks)


def test_only_a_job_with_network_gets_a_user_mode_nic_and_tells_its_init(tmp_path: Path) -> None:
    off, on = argv_for(tmp_path, False), argv_for(tmp_path, True)
    assert "-netdev" not in off and not any("virtio-net" in a for a in off)
    assert "scalerunner.net=1" not in off[off.index("-append") + 1]
    assert on[on.index("-netdev") + 1] == "user,id=net0"
    assert on[on.index("-netdev") + 3] == "virtio-net-pci,netdev=net0,romfile="
    assert on[on.index("-append") + 1].endswith(" scalerunner.net=1")
    assert "-nodefaults" in on  # no other NIC sneaks in


def test_the_nics_modules_load_after_the_virtio_core() -> None:
    assert NET_MODULES == ("failover", "net_failover", "virtio_net")
    assert not set(NET_MODULES) & set(MODULES)
    init = (Path(__file__).parents[1] / "scalerunner/nodeagent/runtime/vm_guest/init.sh").read_text()
    assert f"for m in {' '.join(NET_MODULES)}; do" in init
    assert init.index("virtio_blk; do") < init.index("for m in failover")


def test_network_is_off_unless_the_spec_asks_and_travels_in_run_job() -> None:
    assert spec_from_mapping({"command": ["true"]}).network is False
    spec = spec_from_mapping({"command": ["true"], "network": True})
    assert spec.network is True
    with pytest.raises(JobSpecError) as err:
        spec_from_mapping({"command": ["true"], "network": "lots"}, "ci.yaml")
    assert err.value.key == "network" and "ci.yaml" in str(err.value)
    run = msgspec.json.decode(
        msgspec.json.encode(RunJob(job="j-1", attempt=1, argv=["true"], network=True)), type=RunJob
    )
    assert run.network is True
    # an older coordinator's payload has no such key: no network
    assert msgspec.json.decode(b'{"job": "j-1", "attempt": 1, "argv": ["x"]}', type=RunJob).network is False


@pytest.mark.parametrize(
    ("value", "seen"),
    [
        ("http://127.0.0.1:8080/api/v1/github/jitconfig", "http://10.0.2.2:8080/api/v1/github/jitconfig"),
        ("https://u:p@LocalHost/x?y=127.0.0.1#f", "https://u:p@10.0.2.2/x?y=127.0.0.1#f"),
        ("http://127.0.0.1", "http://10.0.2.2"),
        ("http://0.0.0.0:8000/a", "http://10.0.2.2:8000/a"),  # a coordinator on every address
        ("127.0.0.1:5000", "127.0.0.1:5000"),  # not a URL: the job's own business
        ("http://127.0.0.1.example.com/", "http://127.0.0.1.example.com/"),
        ("http://[::1]:80/", "http://[::1]:80/"),  # slirp forwards IPv4 loopback only
        ("http://[bad", "http://[bad"),
        ("", ""),
    ],
)
def test_guest_url(value: str, seen: str) -> None:
    assert guest_url(value) == seen


hosts = st.sampled_from(
    ["127.0.0.1", "localhost", "LOCALHOST", "0.0.0.0", "10.1.2.3", "github.com", "127.0.0.2"]
)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
paths = st.text(st.sampled_from("abc/?=&#%.127:@"), max_size=20).map(lambda t: "/" + t)


@given(st.sampled_from(["http", "https", "ws"]), st.sampled_from(["", "user@", "u:pw@"]), hosts, ports, paths)
def test_guest_url_replaces_only_a_loopback_host_and_keeps_the_rest(
    scheme: str, userinfo: str, host: str, port: str, path: str
) -> None:
    url = f"{scheme}://{userinfo}{host}{port}{path}"
    loopback = host.lower() in ("127.0.0.1", "localhost", "0.0.0.0")
    assert guest_url(url) == (f"{scheme}://{userinfo}10.0.2.2{port}{path}" if loopback else url)


def test_guest_env_rewrites_only_with_network() -> None:
    env = {"SCALERUNNER_JIT_URL": "http://127.0.0.1:9/claim", "PLAIN": "127.0.0.1"}
    assert guest_env(env, False) == env
    assert guest_env(env, True) == {"SCALERUNNER_JIT_URL": "http://10.0.2.2:9/claim", "PLAIN": "127.0.0.1"}
