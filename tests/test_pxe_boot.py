"""Network boot's pure parts and the token rules: iPXE scripts, the settings initrd (read back
with the real cpio), boot tokens against the real SQLite store (hypothesis), and the agent's
side of the trade (saved credentials, retries, refusals)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalerunner.coordinator.inventory import Node
from scalerunner.coordinator.pxe.base import BootFile, BootImage
from scalerunner.coordinator.pxe.ipxe import (
    BootScriptError,
    NodeBoot,
    chain_script,
    kernel_cmdline,
    no_image_script,
    node_script,
    normalise_mac,
    not_enrolled_script,
)
from scalerunner.coordinator.pxe.nodeinitrd import AGENT_TOML, NodeSettings, SettingsCache, settings_archive
from scalerunner.coordinator.pxe.tokens import BootTokens, TokenRejected, token_digest
from scalerunner.coordinator.store.sqlite import SqliteStore
from scalerunner.nodeagent import bootstrap
from scalerunner.nodeagent.config import AgentConfig, BootParams, parse_cmdline, parse_config

D1, D2, D3 = "a" * 64, "b" * 64, "c" * 64
IMAGE = BootImage(
    name="node-os",
    version="7",
    arch="amd64",
    cmdline="console=ttyS0 quiet sr.mac={mac} sr.who={node}",
    files=(
        BootFile("vmlinuz", "kernel", D1, 100),
        BootFile("initrd.img", "initrd", D2, 200),
        BootFile("extra.cpio", "initrd", D3, 300),
    ),
)
BASE = "http://10.0.2.2:8069"


# -- iPXE scripts ----------------------------------------------------------------------------


def test_a_known_node_boots_the_kernel_with_the_image_initrds_then_its_settings() -> None:
    script = node_script(NodeBoot("rack1-01", "02:00:00:00:00:01", IMAGE, BASE, "TOKEN_abc-123456789"))
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    kernel = next(line for line in lines if line.startswith("kernel "))
    assert kernel.split()[1] == f"{BASE}/boot/files/{D1}/vmlinuz"
    initrds = [line.split()[1] for line in lines if line.startswith("initrd ")]
    assert initrds == [
        f"{BASE}/boot/files/{D2}/initrd.img",
        f"{BASE}/boot/files/{D3}/extra.cpio",
        f"{BASE}/boot/node/rack1-01/settings.cpio",
    ]
    assert lines[-1] == "boot"
    # the command line the agent reads back
    params = parse_cmdline(kernel.split(maxsplit=2)[2])
    assert params == BootParams(url=BASE, node="rack1-01", token="TOKEN_abc-123456789")


def test_the_cmdline_fills_the_template_and_puts_the_scalerunner_keys_last() -> None:
    line = kernel_cmdline(NodeBoot("n1", "02:00:00:00:00:01", IMAGE, BASE, "tok"))
    words = line.split()
    assert words[:4] == ["console=ttyS0", "quiet", "sr.mac=02:00:00:00:00:01", "sr.who=n1"]
    assert words[4:7] == ["initrd=initrd.img", "initrd=extra.cpio", "initrd=settings.cpio"]
    assert words[-3:] == [f"scalerunner.url={BASE}", "scalerunner.node=n1", "scalerunner.token=tok"]


def test_an_image_without_a_kernel_is_refused() -> None:
    image = BootImage("x", "1", "amd64", "", (BootFile("initrd.img", "initrd", D2, 1),))
    with pytest.raises(BootScriptError, match="no kernel"):
        node_script(NodeBoot("n1", "02:00:00:00:00:01", image, BASE, "tok"))


def test_not_enrolled_and_no_image_scripts_explain_and_carry_no_secret() -> None:
    text = not_enrolled_script("02:00:00:00:00:99", "lab")
    assert "02:00:00:00:00:99" in text and "not enrolled" in text and "[[nodes]]" in text
    other = no_image_script("n1", "02:00:00:00:00:01", "amd64", "default")
    for script in (text, other):
        assert "token" not in script and "kernel " not in script and "initrd " not in script
        assert script.splitlines()[-1] == "exit 1"


def test_a_request_without_a_mac_chains_with_ipxes_own() -> None:
    assert chain_script(BASE) == f"#!ipxe\nchain {BASE}/boot/ipxe?mac=${{net0/mac}}&arch=${{buildarch}}\n"


@given(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-", ""]), st.booleans())
def test_macs_normalise_from_any_common_spelling(raw: bytes, sep: str, upper: bool) -> None:
    canonical = ":".join(f"{b:02x}" for b in raw)
    text = sep.join(f"{b:02x}" for b in raw)
    assert normalise_mac(text.upper() if upper else text) == canonical


@pytest.mark.parametrize("bad", ["", "02:00:00:00:00", "02:00:00:00:00:0g", "02:00-00:00:00:01", "${x}"])
def test_a_malformed_mac_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(BootScriptError, match="not a MAC"):
        normalise_mac(bad)


@given(st.text(max_size=40))
def test_nothing_from_a_request_can_inject_ipxe_syntax(text: str) -> None:
    script = not_enrolled_script(text, "lab")
    assert "${" not in script.replace("${net0/mac}", "")
    assert len(script.splitlines()) == 6  # a newline in the text cannot add a command


# -- the settings initrd ---------------------------------------------------------------------

SETTINGS = NodeSettings(
    cluster="lab",
    node="rack1-01",
    broker_host="10.0.2.2",
    broker_port=18830,
    labels=("kvm", "pool=ci"),
    cpus=4,
    memory_mb=2048,
)


def test_settings_initrd_unpacks_with_cpio_to_an_agent_config_the_agent_accepts(tmp_path: Path) -> None:
    data = settings_archive(SETTINGS)
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    path = tmp_path / AGENT_TOML
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    text = path.read_text()
    assert tomllib.loads(text)["broker"] == {"host": "10.0.2.2", "port": 18830}
    boot = BootParams(url="http://10.0.2.2:8069", node="rack1-01", token="t" * 43)
    config = parse_config(text, source=str(path), boot=boot)
    assert (config.cluster, config.node, config.broker_host, config.broker_port) == (
        "lab",
        "rack1-01",
        "10.0.2.2",
        18830,
    )
    assert (config.labels, config.cpus, config.memory_mb) == (("kvm", "pool=ci"), 4, 2048)
    assert config.password is None and config.bootstrap_token == "t" * 43


def test_settings_initrd_is_deterministic_and_holds_no_secret() -> None:
    a, b = settings_archive(SETTINGS), settings_archive(dataclasses.replace(SETTINGS))
    assert a == b
    assert b"password" not in a.replace(b"password comes from", b"")
    cache = SettingsCache(size=2)
    first = cache.get(SETTINGS)
    assert cache.get(SETTINGS) is first  # by content, not rebuilt
    other = NodeSettings(cluster="lab", node="rack1-02", broker_host="10.0.2.2", broker_port=1)
    assert cache.get(other)[1] != first[1]


@given(st.lists(st.from_regex(r"^[A-Za-z0-9_.:=/-]{1,20}$", fullmatch=True), max_size=4))
def test_labels_survive_the_toml_round_trip(labels: list[str]) -> None:
    node = Node(name="n1", mac="02:00:00:00:00:01", arch="amd64", labels=tuple(labels))
    s = NodeSettings.of(node, cluster="lab", broker_host="10.0.0.1", broker_port=1883)
    from scalerunner.coordinator.pxe.nodeinitrd import agent_toml

    assert tomllib.loads(agent_toml(s))["labels"] == labels


# -- boot tokens against the real store ------------------------------------------------------


@dataclass
class _Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Model:
    owner: str
    expires_at: float
    used: bool = False


@dataclass
class _Run:
    tokens: list[tuple[str, _Model]] = field(default_factory=list)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("mint"), st.sampled_from(["n1", "n2"])),
        st.tuples(st.just("trade"), st.integers(0, 7), st.sampled_from(["own", "other"])),
        st.tuples(st.just("forged"), st.sampled_from(["x" * 43, "short", "bad token!"])),
        st.tuples(st.just("wait"), st.floats(0, 40)),
        st.tuples(st.just("prune")),
    ),
    max_size=25,
)


@settings(max_examples=40)
@given(ops)
def test_a_token_trades_once_for_its_own_node_before_it_expires(program: list[tuple[object, ...]]) -> None:
    """Against a model: a trade succeeds iff the token was minted, is unused, has not expired,
    and names its own node; any trade of a live token uses it up."""
    ttl = 30.0

    async def main(db: Path) -> None:
        clock = _Clock()
        run = _Run()
        async with SqliteStore(db, flush_interval=None) as store:
            tokens = BootTokens(store, ttl, clock=clock)
            for op in program:
                match op:
                    case ("mint", node):
                        token = await tokens.mint(str(node))
                        run.tokens.append((token, _Model(str(node), clock.now + ttl)))
                    case ("trade", index, who):
                        if not run.tokens:
                            continue
                        token, m = run.tokens[int(str(index)) % len(run.tokens)]
                        node = m.owner if who == "own" else ("n2" if m.owner == "n1" else "n1")
                        live = not m.used and clock.now < m.expires_at
                        should = live and node == m.owner
                        try:
                            await tokens.trade(node, token)
                            ok = True
                        except TokenRejected as exc:
                            ok = False
                            assert exc.node == node
                        assert ok == should, (op, m, clock.now)
                        if live:
                            m.used = True
                    case ("forged", token):
                        with pytest.raises(TokenRejected):
                            await tokens.trade("n1", str(token))
                    case ("wait", dt):
                        clock.now += float(str(dt))
                    case ("prune",):
                        await tokens.prune()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d) / "s.db"))


def test_tokens_are_long_random_and_stored_only_as_digests(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            tokens = BootTokens(store, 60)
            minted = [await tokens.mint("n1") for _ in range(3)]
            assert await store.take_boot_token(token_digest(minted[0]), now=0) == "n1"
            return minted

    minted = asyncio.run(main())
    assert len(set(minted)) == 3 and all(len(t) >= 43 for t in minted)
    for f in tmp_path.iterdir():
        for t in minted[1:]:
            assert t.encode() not in f.read_bytes()


# -- the agent's side ------------------------------------------------------------------------


def _agent_config(tmp_path: Path, token: str | None = "t" * 43) -> AgentConfig:
    text = 'cluster = "lab"\nnode = "rack1-01"\n[broker]\nhost = "127.0.0.1"\nport = 1883\n'
    boot = BootParams(url="http://127.0.0.1:1", node="rack1-01", token="t" * 43)
    config = parse_config(text, source="agent.toml", boot=boot)
    return dataclasses.replace(config, state_dir=tmp_path, bootstrap_token=token)


def test_saved_credentials_are_0600_and_reused_without_the_token(tmp_path: Path) -> None:
    creds = bootstrap.Credentials("rack1-01", "rack1-01", "pw", "10.0.2.2", 18830, "lab")
    path = tmp_path / bootstrap.CREDENTIALS_FILE
    bootstrap.save(path, creds)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = asyncio.run(bootstrap.ensure_credentials(_agent_config(tmp_path, token=None)))
    assert (config.username, config.password, config.broker_host, config.broker_port) == (
        "rack1-01",
        "pw",
        "10.0.2.2",
        18830,
    )
    assert bootstrap.load_saved(path, "rack1-02") is None  # another node's file is not used


def test_without_password_saved_credentials_or_token_the_agent_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(bootstrap.BootstrapError, match="no broker password, no saved credentials"):
        asyncio.run(bootstrap.ensure_credentials(_agent_config(tmp_path, token=None)))


def test_an_unreachable_coordinator_is_retried_with_growing_delays(tmp_path: Path) -> None:
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    with pytest.raises(bootstrap.BootstrapError, match="no answer after 4 attempts"):
        asyncio.run(
            bootstrap.trade_token(
                "http://127.0.0.1:1", "n1", "t" * 43, attempts=4, sleep=sleep, rand=lambda: 1.0, timeout=2
            )
        )
    assert delays == [0.5, 1.0, 2.0]
