"""Enrolment's core and its file (docs/netboot.md, "Enrolment"): the name rule, iPXE's build
arch, the enrolled-nodes.toml round trip and its errors, the merge into the inventory, the
[boot] enroll keys, and the Enroller's decisions (with a real file, no network)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.errors import ConfigError
from scalerunner.coordinator.inventory import Node, loads_inventory
from scalerunner.coordinator.pxe.enrol import (
    ENROLLED_FILE,
    EnrolledNodes,
    Enroller,
    enrolled_name,
    merge,
    node_arch,
)
from scalerunner.coordinator.pxe.ipxe import chain_script, not_enrolled_script
from scalerunner.protocol.mqtt.topics import NAME_RE

BASE_TOML = """
[cluster]
name = "lab"

[boot]
enabled = true
listen = "127.0.0.1:0"
"""
prefixes = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,49}\Z")
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


def node(name: str, mac: str, arch: str = "amd64") -> Node:
    return Node(name=name, mac=mac, arch=arch)  # type: ignore[arg-type]


@given(prefixes, macs, st.sets(st.text("abcdef0123456789-", min_size=1, max_size=12), max_size=5))
def test_an_enrolled_name_is_a_valid_free_name_from_prefix_and_mac(
    prefix: str, mac: str, extra: set[str]
) -> None:
    base = prefix + mac.replace(":", "")[-6:]
    # taken: the plain name and some of its numbered forms, plus unrelated names
    taken = {base, f"{base}-2", *extra}
    name = enrolled_name(prefix, mac, taken)
    assert NAME_RE.match(name), name
    assert name not in taken
    assert name.startswith(base)
    assert enrolled_name(prefix, mac, set()) == base


def test_an_enrolled_name_example() -> None:
    assert enrolled_name("node-", "02:00:00:3a:5f:01", ()) == "node-3a5f01"
    assert enrolled_name("node-", "02:00:00:3a:5f:01", {"node-3a5f01"}) == "node-3a5f01-2"


@pytest.mark.parametrize(
    ("buildarch", "arch"),
    [("x86_64", "amd64"), ("i386", "amd64"), ("arm64", "arm64"), ("riscv64", "riscv64")],
)
def test_ipxe_build_arches_map_to_node_arches(buildarch: str, arch: str) -> None:
    assert node_arch(buildarch) == arch


@given(st.text(max_size=20).filter(lambda t: t not in {"x86_64", "i386", "arm64", "riscv64"}))
def test_any_other_build_arch_is_unknown(buildarch: str) -> None:
    assert node_arch(buildarch) is None


def test_unknown_arch_cases() -> None:
    assert node_arch(None) is None and node_arch("${buildarch}") is None and node_arch("arm32") is None


def test_the_chain_script_and_not_enrolled_script_say_what_enrolment_needs() -> None:
    assert "arch=${buildarch}" in chain_script("http://10.0.0.1:8069")
    text = not_enrolled_script("02:00:00:00:00:09", "lab", "its architecture is unknown (x)")
    assert "It was not enrolled: its architecture is unknown (x)." in text and text.endswith("exit 1\n")


def test_the_enrolled_file_round_trips_and_is_private(tmp_path: Path) -> None:
    f = EnrolledNodes(tmp_path)
    assert f.load("lab") == ()
    nodes = [
        Node(
            name="node-000001", mac="02:00:00:00:00:01", arch="amd64", labels=("enrolled",), boot_group="new"
        ),
        node("node-000002", "02:00:00:00:00:02", "riscv64"),
    ]
    f.save(nodes)
    assert f.path == tmp_path / ENROLLED_FILE
    assert stat.S_IMODE(f.path.stat().st_mode) == 0o600
    assert f.load("lab") == tuple(nodes)
    assert not list(tmp_path.glob(".*tmp"))
    # its entries are inventory entries: pasted into scalerunner.toml they load as the same nodes
    entries = f.path.read_text()
    assert entries.startswith("#")
    inv = loads_inventory(BASE_TOML + entries, tmp_path / "scalerunner.toml")
    assert inv.nodes == tuple(nodes)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            '[[nodes]]\nname = "a"\nmac = "02:00:00:00:00:01"\narch = "sparc"\n',
            "nodes[0].arch",
            "must be one of",
        ),
        (
            '[[nodes]]\nname = "a"\nmac = "02:00:00:00:00:01"\narch = "amd64"\ncolour = 1\n',
            "nodes[0].colour",
            "",
        ),
        (
            '[[nodes]]\nname = "a"\nmac = "02:00:00:00:00:01"\narch = "amd64"\n'
            '[[nodes]]\nname = "b"\nmac = "02:00:00:00:00:01"\narch = "amd64"\n',
            "nodes[1].mac",
            "duplicate MAC",
        ),
        ('[broker]\nmode = "external"\n', "broker", "only [[nodes]]"),
        ("[[nodes]\n", "", "TOML syntax error"),
    ],
)
def test_a_bad_enrolled_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    (tmp_path / ENROLLED_FILE).write_text(text)
    with pytest.raises(ConfigError) as err:
        EnrolledNodes(tmp_path).load("lab")
    assert err.value.path == str(tmp_path / ENROLLED_FILE)
    assert err.value.key == key and words in err.value.detail


def test_merge_adds_enrolled_nodes_and_the_inventory_wins_a_clash(tmp_path: Path) -> None:
    inv = loads_inventory(
        BASE_TOML + '[[nodes]]\nname = "rack1-01"\nmac = "02:00:00:00:00:01"\narch = "amd64"\n',
        tmp_path / "scalerunner.toml",
    )
    same_name = node("rack1-01", "02:00:00:00:00:09")
    same_mac = node("node-000001", "02:00:00:00:00:01")
    fresh = node("node-000002", "02:00:00:00:00:02", "arm64")
    merged, skipped = merge(inv, [same_name, same_mac, fresh])
    assert [n.name for n in merged.nodes] == ["rack1-01", "node-000002"]
    assert merged.node("rack1-01").mac == "02:00:00:00:00:01"  # the inventory's, not the file's
    assert len(skipped) == 2
    assert "rack1-01" in skipped[0] and "name" in skipped[0]
    assert "02:00:00:00:00:01" in skipped[1] and "MAC" in skipped[1]
    assert merge(inv, []) == (inv, [])


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ("enroll = true\n", "", ""),
        ('enroll = true\nenroll_prefix = "-x"\n', "boot.enroll_prefix", "1-50 of a-z"),
        ('enroll = true\nenroll_labels = ["a", "a"]\n', "boot.enroll_labels[1]", "listed twice"),
        ("enroll = true\nenroll_limit = 0\n", "boot.enroll_limit", ">= 1"),
        ("enroll = true\nenabled = false\n", "boot.enroll", "boot.enabled"),
    ],
)
def test_the_boot_enroll_keys_are_checked(tmp_path: Path, extra: str, key: str, words: str) -> None:
    text = BASE_TOML.replace("enabled = true\n", "") + ("enabled = true\n" if "enabled" not in extra else "")
    text += extra
    if not key:
        b = loads_inventory(text, tmp_path / "s.toml").boot
        assert b.enroll and b.enroll_prefix == "node-" and b.enroll_boot_group == "default"
        assert b.enroll_limit == 64 and b.enroll_labels == ()
        assert not loads_inventory(BASE_TOML, tmp_path / "s.toml").boot.enroll  # off by default
        return
    with pytest.raises(ConfigError) as err:
        loads_inventory(text, tmp_path / "s.toml")
    assert err.value.key == key and words in err.value.detail


def test_enrolment_needs_the_managed_broker(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    text = BASE_TOML + 'enroll = true\n[broker]\nmode = "external"\nport = 1883\nusername = "c"\n'
    text += f'password_file = "{pw}"\n'
    with pytest.raises(ConfigError) as err:
        loads_inventory(text, tmp_path / "s.toml")
    assert err.value.key == "boot.enroll" and "managed" in err.value.detail


class Harness:
    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        self.inv = loads_inventory(
            BASE_TOML
            + 'enroll = true\nenroll_labels = ["new"]\nenroll_limit = 2\n'
            + extra
            + '[[nodes]]\nname = "node-000001"\nmac = "02:00:00:00:00:99"\narch = "amd64"\n',
            tmp_path / "s.toml",
        )
        self.nodes = list(self.inv.nodes)
        self.events: list[tuple[str, str]] = []
        self.file = EnrolledNodes(tmp_path)
        self.enroller = Enroller(
            self.inv.boot, self.file, [], nodes=lambda: self.nodes, add_node=self.add, record=self.record
        )

    async def add(self, n: Node) -> None:
        self.nodes.append(n)

    async def record(self, name: str, reason: str) -> None:
        self.events.append((name, reason))


def test_the_enroller_makes_one_node_per_machine_and_refuses_clearly(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    async def go() -> None:
        # two requests of one machine at once: one node
        a, b = await asyncio.gather(
            h.enroller.enrol("02:00:00:00:00:01", "x86_64", "10.0.0.5"),
            h.enroller.enrol("02:00:00:00:00:01", "x86_64", "10.0.0.5"),
        )
        assert a.node is not None and a.node == b.node
        # its name's plain form is an inventory node's: it gets the next one
        assert a.node.name == "node-000001-2" and a.node.arch == "amd64" and a.node.labels == ("new",)
        assert h.file.load("lab") == (a.node,)
        assert [e[0] for e in h.events] == ["node-000001-2"] and "10.0.0.5" in h.events[0][1]
        unknown = await h.enroller.enrol("02:00:00:00:00:02", None, "x")
        assert unknown.node is None and "did not say its buildarch" in unknown.refusal
        odd = await h.enroller.enrol("02:00:00:00:00:02", "arm32", "x")
        assert odd.node is None and "'arm32'" in odd.refusal
        multicast = await h.enroller.enrol("03:00:00:00:00:02", "arm64", "x")
        assert multicast.node is None and "multicast" in multicast.refusal
        second = await h.enroller.enrol("02:00:00:00:00:02", "riscv64", "x")
        assert second.node is not None and second.node.arch == "riscv64"
        full = await h.enroller.enrol("02:00:00:00:00:03", "arm64", "x")
        assert full.node is None and "limit" in full.refusal
        assert len(h.file.load("lab")) == 2 and len(h.events) == 2

    asyncio.run(go())


@given(st.text(max_size=60))
def test_a_refusal_cannot_inject_ipxe_syntax(text: str) -> None:
    script = not_enrolled_script("02:00:00:00:00:09", "lab", text)
    assert "${" not in script
    assert len(script.splitlines()) == (7 if text else 6)  # a newline in the text adds no command
