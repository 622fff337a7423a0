"""The inventory: every rule, each failing with ConfigError naming the file and the dotted key."""

from __future__ import annotations

import contextlib
import copy
import datetime
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.errors import ConfigError, UnknownNode
from scalerunner.coordinator.inventory import (
    ApiConfig,
    BrokerConfig,
    ClusterConfig,
    Inventory,
    Node,
    RackPosition,
    SnmpV2c,
    SnmpV3,
    StoreConfig,
    Switch,
    Timeouts,
    inventory_from_dict,
    load_inventory,
    loads_inventory,
    normalise_mac,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "scalerunner.toml"
BASE: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
V3 = {
    "version": "3",
    "user": "scalerunner",
    "auth_protocol": "sha256",
    "auth_key": "auth-secret",
    "priv_protocol": "aes",
    "priv_key": "priv-secret",
}


def mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def fails(data: dict[str, Any], path: Path = EXAMPLE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        inventory_from_dict(data, path)
    assert info.value.path == str(path)
    return info.value


def minimal(**extra: Any) -> dict[str, Any]:
    return {"cluster": {"name": "lab"}, **extra}


# ---------------------------------------------------------------------------------------------
# The example and the defaults


def test_the_documented_example_loads_with_macs_normalised_and_paths_absolute() -> None:
    inv = load_inventory(EXAMPLE)
    assert inv.cluster.name == "lab"
    assert [n.name for n in inv.nodes] == ["rack1-01", "rack1-02", "rack1-03", "rack1-04"]
    assert inv.node("rack1-02").mac == "dc:a6:32:00:00:02"  # written DC-A6-32-00-00-02
    assert inv.store.url == f"sqlite:///{EXAMPLE.parent / 'state' / 'scalerunner.db'}"
    assert inv.switch("sw1").uplink_ports == (8,)
    assert isinstance(inv.switch("sw1").snmp, SnmpV2c)
    rack = inv.node("rack1-01").rack
    assert rack is not None and (rack.row, rack.position) == (1, 1)


def test_only_the_cluster_name_is_required_and_the_rest_has_documented_defaults(tmp_path: Path) -> None:
    inv = loads_inventory('[cluster]\nname = "c1"\n', tmp_path / "scalerunner.toml")
    assert inv.broker.mode == "managed" and inv.broker.host == "127.0.0.1" and inv.broker.port == 0
    assert not inv.broker.tls
    assert inv.store.url == f"sqlite:///{tmp_path.resolve() / 'state' / 'scalerunner.db'}"
    assert (inv.api.host, inv.api.port) == ("127.0.0.1", 8080)
    assert (inv.timeouts.boot_timeout, inv.timeouts.telemetry_timeout) == (300.0, 30.0)
    assert inv.switches == () and inv.nodes == ()


def test_the_inventory_is_frozen() -> None:
    inv = load_inventory(EXAMPLE)
    with pytest.raises(AttributeError):
        inv.cluster.name = "other"  # type: ignore[misc]


def test_lookup_of_an_unknown_node_raises_unknown_node() -> None:
    with pytest.raises(UnknownNode):
        load_inventory(EXAMPLE).node("rack9-99")


def test_snmp_secrets_never_show_in_repr() -> None:
    data = mutated(lambda d: d["switches"][0].update(snmp=V3))
    inv = inventory_from_dict(data, EXAMPLE)
    assert isinstance(inv.switches[0].snmp, SnmpV3)
    text = repr(inv)
    assert "auth-secret" not in text and "priv-secret" not in text
    assert "private" not in repr(load_inventory(EXAMPLE))


# ---------------------------------------------------------------------------------------------
# The file itself


def test_a_toml_syntax_error_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "scalerunner.toml"
    path.write_text('[cluster]\nname = "lab\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.path == str(path) and info.value.key == ""
    assert "line 2" in info.value.detail and "column" in info.value.detail


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_inventory(tmp_path / "nope.toml")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "scalerunner.toml"
    path.write_bytes(b'[cluster]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_inventory(path)


# ---------------------------------------------------------------------------------------------
# Shape: unknown keys, missing keys, types, ranges


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (lambda d: d.update(images={}), "images", "unknown key"),
        (lambda d: d["cluster"].update(nmae="x"), "cluster.nmae", "did you mean 'name'"),
        (lambda d: d["nodes"][3].update(lables=["x"]), "nodes[3].lables", "did you mean 'labels'"),
        (lambda d: d["switches"][0]["snmp"].update(comunity="x"), "switches[0].snmp.comunity", "community"),
        (lambda d: d["switches"][0]["snmp"].update(user="x"), "switches[0].snmp.user", "unknown key"),
        (lambda d: d["nodes"][0]["rack"].update(column=1), "nodes[0].rack.column", "unknown key"),
        (lambda d: d["nodes"][1].update({"a key": 1}), 'nodes[1]."a key"', "unknown key"),
    ],
)
def test_unknown_keys_are_refused(change: Callable[[dict[str, Any]], object], key: str, words: str) -> None:
    err = fails(mutated(change))
    assert err.key == key
    assert words in err.detail


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.pop("cluster"), "cluster"),
        (lambda d: d["cluster"].pop("name"), "cluster.name"),
        (lambda d: d["nodes"][3].pop("mac"), "nodes[3].mac"),
        (lambda d: d["nodes"][2].pop("arch"), "nodes[2].arch"),
        (lambda d: d["switches"][0].pop("snmp"), "switches[0].snmp"),
        (lambda d: d["switches"][0].pop("profile"), "switches[0].profile"),
        (lambda d: d["switches"][0]["snmp"].pop("version"), "switches[0].snmp.version"),
        (lambda d: d["switches"][0]["snmp"].pop("community"), "switches[0].snmp.community"),
    ],
)
def test_a_missing_required_key_is_named(change: Callable[[dict[str, Any]], object], key: str) -> None:
    err = fails(mutated(change))
    assert (err.key, err.detail) == (key, "required key is missing")


@pytest.mark.parametrize(
    ("change", "key", "detail"),
    [
        (lambda d: d.update(cluster="lab"), "cluster", "expected a table, got a string"),
        (lambda d: d.update(nodes={}), "nodes", "expected an array, got a table"),
        (lambda d: d["nodes"][2].update(port="3"), "nodes[2].port", "expected an integer, got a string"),
        (lambda d: d["nodes"][2].update(cpus=True), "nodes[2].cpus", "expected an integer, got a boolean"),
        (lambda d: d["nodes"][0].update(labels=["a", 1]), "nodes[0].labels[1]", "expected a string"),
        (
            lambda d: d["nodes"][0].update(name=datetime.date(2024, 1, 1)),
            "nodes[0].name",
            "expected a string, got a date",
        ),
        (lambda d: d["timeouts"].update(boot_timeout="5m"), "timeouts.boot_timeout", "expected a number"),
    ],
)
def test_a_wrong_type_is_named_in_toml_words(
    change: Callable[[dict[str, Any]], object], key: str, detail: str
) -> None:
    err = fails(mutated(change))
    assert err.key == key
    assert err.detail.startswith(detail)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["broker"].update(port=65536), "broker.port"),
        (lambda d: d["broker"].update(port=-1), "broker.port"),
        (lambda d: d["switches"][0].update(port=0), "switches[0].port"),
        (lambda d: d["switches"][0].update(pse_group=0), "switches[0].pse_group"),
        (lambda d: d["switches"][0].update(uplink_ports=[0]), "switches[0].uplink_ports[0]"),
        (lambda d: d["nodes"][0].update(port=0), "nodes[0].port"),
        (lambda d: d["nodes"][0].update(cpus=0), "nodes[0].cpus"),
        (lambda d: d["nodes"][0].update(memory_mb=-5), "nodes[0].memory_mb"),
        (lambda d: d["nodes"][0].update(rack={"row": 0, "position": 1}), "nodes[0].rack.row"),
        (lambda d: d["timeouts"].update(boot_timeout=0), "timeouts.boot_timeout"),
        (lambda d: d["timeouts"].update(telemetry_timeout=-1.5), "timeouts.telemetry_timeout"),
        (lambda d: d["timeouts"].update(telemetry_timeout=float("nan")), "timeouts.telemetry_timeout"),
        (lambda d: d["timeouts"].update(boot_timeout=float("inf")), "timeouts.boot_timeout"),
    ],
)
def test_an_out_of_range_value_is_named(change: Callable[[dict[str, Any]], object], key: str) -> None:
    err = fails(mutated(change))
    assert err.key == key
    assert err.detail.startswith("must be")


# ---------------------------------------------------------------------------------------------
# Names, labels, enumerations


@pytest.mark.parametrize("name", ["Lab", "-lab", "lab-", "la b", "lab\n", "a" * 64, ""])
def test_the_cluster_name_follows_the_topic_name_rule(name: str) -> None:
    err = fails(mutated(lambda d: d["cluster"].update(name=name)))
    assert err.key == "cluster.name"


@pytest.mark.parametrize("name", ["Rack1", "rack_1", "rack1.01", "rack1-01\n"])
def test_a_node_name_follows_the_topic_name_rule(name: str) -> None:
    err = fails(mutated(lambda d: d["nodes"][2].update(name=name)))
    assert err.key == "nodes[2].name"
    assert "a-z, 0-9 and '-'" in err.detail


def test_node_names_are_unique() -> None:
    err = fails(mutated(lambda d: d["nodes"][3].update(name="rack1-01")))
    assert err.key == "nodes[3].name" and "nodes[0]" in err.detail


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "ARM64", ""])
def test_arch_is_one_of_three(arch: str) -> None:
    err = fails(mutated(lambda d: d["nodes"][0].update(arch=arch)))
    assert err.key == "nodes[0].arch"
    assert err.detail == "must be one of 'amd64', 'arm64', 'riscv64'"


def test_labels_follow_the_payload_label_rule_and_are_not_repeated() -> None:
    assert fails(mutated(lambda d: d["nodes"][0].update(labels=["ok", "not ok"]))).key == "nodes[0].labels[1]"
    err = fails(mutated(lambda d: d["nodes"][0].update(labels=["pi4", "kvm", "pi4"])))
    assert err.key == "nodes[0].labels[2]" and "twice" in err.detail


# ---------------------------------------------------------------------------------------------
# MAC addresses


@pytest.mark.parametrize(
    "mac",
    ["dc:a6:32:00:00", "dc:a6:32:00:00:01:02", "dc-a6:32:00:00:01", "dca632000001", "dc:a6:32:00:00:0g", " "],
)
def test_a_malformed_mac_is_refused(mac: str) -> None:
    err = fails(mutated(lambda d: d["nodes"][1].update(mac=mac)))
    assert err.key == "nodes[1].mac" and "not a MAC address" in err.detail


def test_a_multicast_mac_is_refused() -> None:
    err = fails(mutated(lambda d: d["nodes"][1].update(mac="01:00:5e:00:00:01")))
    assert err.key == "nodes[1].mac" and "multicast" in err.detail


def test_macs_are_unique_after_normalisation() -> None:
    err = fails(mutated(lambda d: d["nodes"][2].update(mac="DC-A6-32-00-00-01")))
    assert err.key == "nodes[2].mac" and "nodes[0]" in err.detail


@given(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-"]), st.data())
def test_mac_normalisation_gives_lower_case_colon_form(raw: bytes, sep: str, data: st.DataObject) -> None:
    canonical = ":".join(f"{b:02x}" for b in raw)
    written = "".join(
        c.upper() if data.draw(st.booleans(), label=f"upper {i}") else c
        for i, c in enumerate(sep.join(f"{b:02x}" for b in raw))
    )
    assert normalise_mac(written) == canonical
    assert normalise_mac(canonical) == canonical


@given(st.text(max_size=20))
def test_mac_normalisation_refuses_whatever_is_not_a_mac(text: str) -> None:
    looks_like_mac = re.fullmatch(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}", text)
    if looks_like_mac:
        assert normalise_mac(text) == text.lower().replace("-", ":")
    else:
        with pytest.raises(ValueError):
            normalise_mac(text)


# ---------------------------------------------------------------------------------------------
# Switches, ports, rack positions, serial devices


def test_a_node_switch_must_exist() -> None:
    err = fails(mutated(lambda d: d["nodes"][0].update(switch="sw2")))
    assert err.key == "nodes[0].switch" and "sw1" in err.detail


def test_a_node_port_must_not_be_an_uplink() -> None:
    err = fails(mutated(lambda d: d["nodes"][0].update(port=8)))
    assert err.key == "nodes[0].port" and "uplink" in err.detail


def test_a_switch_port_powers_one_node_only() -> None:
    err = fails(mutated(lambda d: d["nodes"][3].update(port=1)))
    assert err.key == "nodes[3].port" and "nodes[0]" in err.detail


def test_switch_and_port_go_together_and_the_error_names_the_one_given() -> None:
    assert fails(mutated(lambda d: d["nodes"][0].pop("port"))).key == "nodes[0].switch"
    assert fails(mutated(lambda d: d["nodes"][0].pop("switch"))).key == "nodes[0].port"


def test_a_node_without_a_switch_is_allowed() -> None:
    def no_switch(d: dict[str, Any]) -> None:
        del d["nodes"][0]["switch"], d["nodes"][0]["port"]

    inv = inventory_from_dict(mutated(no_switch), EXAMPLE)
    assert inv.nodes[0].switch is None and inv.nodes[0].port is None


def test_rack_positions_are_unique() -> None:
    err = fails(mutated(lambda d: d["nodes"][3].update(rack={"row": 1, "position": 2})))
    assert err.key == "nodes[3].rack" and "nodes[1]" in err.detail


def test_switch_names_are_unique_and_uplinks_not_repeated() -> None:
    second = {**BASE["switches"][0], "address": "192.0.2.11"}
    err = fails(mutated(lambda d: d["switches"].append(second)))
    assert err.key == "switches[1].name"
    err = fails(mutated(lambda d: d["switches"][0].update(uplink_ports=[7, 8, 7])))
    assert err.key == "switches[0].uplink_ports[2]"


def test_two_stack_members_may_share_an_address_with_distinct_pse_groups() -> None:
    second = {**BASE["switches"][0], "name": "sw1b", "pse_group": 2}
    inventory_from_dict(mutated(lambda d: d["switches"].append(second)), EXAMPLE)
    err = fails(mutated(lambda d: d["switches"].append({**second, "pse_group": 1})))
    assert err.key == "switches[1].address"


@pytest.mark.parametrize("address", ["sw 1", "-sw1", "1.2.3", "999.1.1.1", "sw1..lab", "a" * 64])
def test_a_switch_address_is_a_host_name_or_ip(address: str) -> None:
    assert fails(mutated(lambda d: d["switches"][0].update(address=address))).key == "switches[0].address"


@pytest.mark.parametrize("address", ["sw1", "sw1.lab.example.org", "10.0.0.1", "fe80::1"])
def test_host_names_and_addresses_of_both_families_are_accepted(address: str) -> None:
    inventory_from_dict(mutated(lambda d: d["switches"][0].update(address=address)), EXAMPLE)


@pytest.mark.parametrize(
    ("snmp", "key"),
    [
        ({**V3, "auth_key": "short"}, "switches[0].snmp.auth_key"),
        ({**V3, "priv_key": "1234567"}, "switches[0].snmp.priv_key"),
        ({**V3, "auth_protocol": "sha1"}, "switches[0].snmp.auth_protocol"),
        ({**V3, "priv_protocol": "blowfish"}, "switches[0].snmp.priv_protocol"),
        ({**V3, "community": "x"}, "switches[0].snmp.community"),
        ({"version": "2", "community": "x"}, "switches[0].snmp.version"),
        ({"version": 2, "community": "x"}, "switches[0].snmp.version"),
        ({"version": "2c", "community": ""}, "switches[0].snmp.community"),
    ],
)
def test_snmp_credentials_are_checked(snmp: dict[str, Any], key: str) -> None:
    assert fails(mutated(lambda d: d["switches"][0].update(snmp=snmp))).key == key


def test_an_unknown_snmp_version_lists_the_known_ones() -> None:
    err = fails(mutated(lambda d: d["switches"][0]["snmp"].update(version="1")))
    assert err.detail == "must be one of '2c', '3'"


def test_serial_devices_are_paths_or_pyserial_urls_used_once() -> None:
    ok = mutated(lambda d: d["nodes"][1].update(bmc_port="socket://127.0.0.1:7001"))
    assert inventory_from_dict(ok, EXAMPLE).nodes[1].bmc_port == "socket://127.0.0.1:7001"
    assert fails(mutated(lambda d: d["nodes"][1].update(led_port="COM3"))).key == "nodes[1].led_port"
    err = fails(mutated(lambda d: d["nodes"][2].update(led_port=d["nodes"][0]["bmc_port"])))
    assert err.key == "nodes[2].led_port" and "nodes[0].bmc_port" in err.detail


# ---------------------------------------------------------------------------------------------
# Broker, store, API


def test_tls_files_resolve_against_the_inventory_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    for name in ("ca.pem", "broker.pem", "broker.key"):
        (tmp_path / "tls" / name).write_text("x")
    path = tmp_path / "scalerunner.toml"
    tls = {"cafile": "tls/ca.pem", "certfile": "tls/broker.pem", "keyfile": "tls/broker.key"}
    inv = inventory_from_dict(minimal(broker=tls), path)
    assert inv.broker.tls and inv.broker.cafile == str(tmp_path.resolve() / "tls" / "ca.pem")
    err = fails(minimal(broker={**tls, "keyfile": "tls/missing.key"}), path)
    assert err.key == "broker.keyfile" and "no such file" in err.detail
    assert fails(minimal(broker={**tls, "cafile": "bad\0name"}), path).key == "broker.cafile"


def test_tls_certfile_and_keyfile_go_together(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    err = fails(minimal(broker={"certfile": "c.pem"}), tmp_path / "s.toml")
    assert err.key == "broker.certfile" and "keyfile" in err.detail
    err = fails(minimal(broker={"cafile": "c.pem"}), tmp_path / "s.toml")
    assert err.key == "broker.cafile"


def test_an_external_broker_takes_credentials_and_needs_a_port(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    path = tmp_path / "s.toml"
    ext = {"mode": "external", "host": "mqtt.lab", "port": 8883, "username": "c", "password_file": "pw"}
    inv = inventory_from_dict(minimal(broker=ext), path)
    assert inv.broker.password_file == str(tmp_path.resolve() / "pw")
    assert fails(minimal(broker={**ext, "port": 0}), path).key == "broker.port"
    assert fails(minimal(broker={"mode": "external", "host": "mqtt.lab"}), path).key == "broker.port"
    no_pw = {k: v for k, v in ext.items() if k != "password_file"}
    assert fails(minimal(broker=no_pw), path).key == "broker.username"
    err = fails(minimal(broker={"username": "c", "password_file": "pw"}), path)
    assert err.key == "broker.username" and "external" in err.detail
    assert fails(minimal(broker={"mode": "mqtt"}), path).detail == "must be one of 'external', 'managed'"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///db/sr.db", "sqlite:///{dir}/db/sr.db"),
        ("sqlite:////var/lib/scalerunner/sr.db", "sqlite:////var/lib/scalerunner/sr.db"),
        ("postgresql://sr@db.lab/scalerunner", "postgresql://sr@db.lab/scalerunner"),
    ],
)
def test_store_urls(tmp_path: Path, url: str, expected: str) -> None:
    inv = inventory_from_dict(minimal(store={"url": url}), tmp_path / "s.toml")
    assert inv.store.url == expected.format(dir=tmp_path.resolve())


@pytest.mark.parametrize(
    "url", ["mysql://x/y", "sqlite://x.db", "sqlite:///", "sqlite:///:memory:", "state.db"]
)
def test_bad_store_urls(tmp_path: Path, url: str) -> None:
    assert fails(minimal(store={"url": url}), tmp_path / "s.toml").key == "store.url"


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:80", "0.0.0.0", 80), ("[::1]:8080", "::1", 8080), ("coordinator.lab:0", "coordinator.lab", 0)],
)
def test_api_listen_forms(tmp_path: Path, listen: str, host: str, port: int) -> None:
    inv = inventory_from_dict(minimal(api={"listen": listen}), tmp_path / "s.toml")
    assert (inv.api.host, inv.api.port) == (host, port)


@pytest.mark.parametrize(
    "listen", ["8080", "localhost", "::1:8080", "[::1]8080", "h:65536", "h:-1", "h:\uff18\uff10"]
)
def test_bad_api_listen(tmp_path: Path, listen: str) -> None:
    assert fails(minimal(api={"listen": listen}), tmp_path / "s.toml").key == "api.listen"


# ---------------------------------------------------------------------------------------------
# The reference says what the code accepts

INVENTORY_MD = (ROOT / "docs" / "inventory.md").read_text()


@pytest.mark.parametrize(
    ("heading", "tables"),
    [
        ("## `[cluster]`", [ClusterConfig]),
        ("## `[broker]`", [BrokerConfig]),
        ("## `[store]`", [StoreConfig]),
        ("## `[api]`", [ApiConfig]),
        ("## `[timeouts]`", [Timeouts]),
        ("## `[[switches]]`", [Switch]),
        ("### `snmp`", [SnmpV2c, SnmpV3]),
        ("## `[[nodes]]`", [Node]),
        ("### `rack`", [RackPosition]),
    ],
)
def test_docs_inventory_md_has_a_row_for_every_key(heading: str, tables: list[type[msgspec.Struct]]) -> None:
    section = INVENTORY_MD.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    if heading.startswith("## "):
        section = section.split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    keys = {f.encode_name for t in tables for f in msgspec.structs.fields(t)}
    keys |= {"version"} if heading == "### `snmp`" else set()
    assert documented == keys


def test_docs_inventory_md_names_every_top_level_section() -> None:
    for field in msgspec.structs.fields(Inventory):
        assert f"`[{field.encode_name}]`" in INVENTORY_MD or f"`[[{field.encode_name}]]`" in INVENTORY_MD


# ---------------------------------------------------------------------------------------------
# Mutations of a valid inventory: always ConfigError, naming a key that is there

Path_ = list[str | int]
REQUIRED = {"cluster", "name", "mac", "arch", "address", "profile", "snmp", "version", "community"}
REQUIRED |= {"user", "auth_protocol", "auth_key", "priv_protocol", "priv_key"}


def _base() -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    sw2 = copy.deepcopy(data["switches"][0])
    data["switches"].append({**sw2, "name": "sw2", "address": "sw2.lab", "snmp": dict(V3)})
    data["nodes"][3].update(switch="sw2", port=1)
    return data


MUTATION_BASE = _base()
inventory_from_dict(MUTATION_BASE, EXAMPLE)  # valid, or the properties below prove nothing


def _paths(value: Any, prefix: Path_) -> list[tuple[Path_, Any]]:
    out: list[tuple[Path_, Any]] = [(prefix, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, [*prefix, k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, [*prefix, i])
    return out


ALL_PATHS = _paths(MUTATION_BASE, [])
TABLES = [p for p, v in ALL_PATHS if isinstance(v, dict)]
LEAVES = [p for p, v in ALL_PATHS if not isinstance(v, dict | list)]
ANY_VALUES = [v for _, v in ALL_PATHS if not isinstance(v, dict | list)]

_KEY_TOKEN = re.compile(r'\[(\d+)\]|"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+)')


def _parse_key(key: str) -> Path_:
    out: Path_ = []
    for index, quoted, bare in _KEY_TOKEN.findall(key):
        if index:
            out.append(int(index))
        elif bare:
            out.append(bare)
        else:
            out.append(re.sub(r"\\(.)", r"\1", quoted))
    return out


def _exists(data: Any, path: Path_) -> bool:
    for seg in path:
        in_list = isinstance(seg, int) and isinstance(data, list) and seg < len(data)
        in_table = isinstance(seg, str) and isinstance(data, dict) and seg in data
        if not (in_list or in_table):
            return False
        data = data[seg]
    return True


def _set(data: Any, path: Path_, value: Any) -> None:
    for seg in path[:-1]:
        data = data[seg]
    data[path[-1]] = value


def _delete(data: Any, path: Path_) -> None:
    for seg in path[:-1]:
        data = data[seg]
    del data[path[-1]]


toml_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.sampled_from(ANY_VALUES),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(MUTATION_BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(data, []) if p]
        action = draw(st.sampled_from(["replace", "delete", "insert"]))
        if action == "insert":
            tables = [p for p, v in _paths(data, []) if isinstance(v, dict)]
            table = draw(st.sampled_from(tables))
            key = draw(st.text(max_size=8) | st.sampled_from(sorted(REQUIRED | {"port", "labels", "rack"})))
            _set(data, [*table, key], draw(toml_values))
        elif paths:
            path = draw(st.sampled_from(paths))
            if action == "replace":
                _set(data, path, draw(toml_values))
            else:
                _delete(data, path)
    return data


@given(mutations())
def test_any_mutation_gives_an_inventory_or_a_config_error_naming_a_key_that_is_there(
    data: dict[str, Any],
) -> None:
    try:
        result = inventory_from_dict(data, EXAMPLE)
    except ConfigError as err:
        path = _parse_key(err.key)
        if "missing" in err.detail:
            assert _exists(data, path[:-1]), err
        else:
            assert _exists(data, path), err
    else:
        assert isinstance(result, Inventory)


@given(st.sampled_from(TABLES), st.text(min_size=1, max_size=10))
def test_an_unknown_key_anywhere_is_refused_by_its_name(table: Path_, key: str) -> None:
    data = copy.deepcopy(MUTATION_BASE)
    probe: Any = data
    for seg in table:
        probe = probe[seg]
    if key in probe or (key == "version" and "snmp" in table):
        return  # not unknown
    probe[key] = 1
    err = fails(data)
    assert _parse_key(err.key) == [*table, key]
    assert err.detail.startswith("unknown key")


@given(st.sampled_from(LEAVES), st.sampled_from([True, False, {"x": 1}, [{"x": 1}]]))
def test_a_value_of_a_type_no_key_takes_is_refused_at_its_key(leaf: Path_, value: Any) -> None:
    data = copy.deepcopy(MUTATION_BASE)
    _set(data, leaf, value)
    err = fails(data)
    assert _parse_key(err.key) == leaf, err


@given(st.sampled_from([p for p, _ in ALL_PATHS if p and p[-1] in REQUIRED]))
def test_deleting_a_required_key_names_it(leaf: Path_) -> None:
    data = copy.deepcopy(MUTATION_BASE)
    _delete(data, leaf)
    err = fails(data)
    assert (_parse_key(err.key), err.detail) == (leaf, "required key is missing")


@given(st.text(max_size=200))
def test_any_text_is_an_inventory_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        loads_inventory(text, EXAMPLE)


@given(st.data())
def test_damaging_the_example_text_never_raises_anything_but_config_error(data: st.DataObject) -> None:
    text = EXAMPLE.read_text()
    pos = data.draw(st.integers(0, len(text) - 1))
    cut = data.draw(st.integers(0, 20))
    insert = data.draw(st.text(max_size=10))
    with contextlib.suppress(ConfigError):
        loads_inventory(text[:pos] + insert + text[pos + cut :], EXAMPLE)
