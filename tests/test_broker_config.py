"""The managed broker's files: mosquitto.conf, the dynamic-security plugin's users and roles and
the external ACL as rendered (pure), the credentials file, and the plugin's password hashes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.broker import (
    BrokerAccess,
    BrokerFiles,
    ExternalBroker,
    MosquittoConfig,
    TlsFiles,
    dynsec_hash,
    ensure_credentials,
    load_credentials,
    node_password,
    render_acl,
    render_conf,
    render_dynsec,
    restart_delay,
)
from scalerunner.coordinator.broker.config import PasswordHash, connect_host, dynsec_commands, format_endpoint
from scalerunner.coordinator.broker.supervisor import find_dynsec_plugin
from scalerunner.coordinator.errors import BrokerError, ConfigError, UnknownNode
from scalerunner.protocol.mqtt.topics import NAME_RE

FILES = BrokerFiles(Path("/var/lib/scalerunner/broker"))
CONFIG = MosquittoConfig(cluster="rack1", host="127.0.0.1", port=18830, nodes=("rack1-01", "rack1-02"))


def _lines(text: str) -> list[str]:
    """The lines mosquitto reads: no comments, no blanks."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


# -- ACL -----------------------------------------------------------------------------------


def test_acl_gives_the_coordinator_the_cluster_tree_and_confines_nodes_with_pattern_lines() -> None:
    assert _lines(render_acl(CONFIG)) == [
        "user coordinator",
        "topic readwrite scalerunner/v1/rack1/#",
        "pattern write scalerunner/v1/rack1/nodes/%u/state",
        "pattern write scalerunner/v1/rack1/nodes/%u/telemetry",
        "pattern write scalerunner/v1/rack1/nodes/%u/reply",
        "pattern write scalerunner/v1/rack1/nodes/%u/jobs/+/log",
        "pattern write scalerunner/v1/rack1/nodes/%u/jobs/+/status",
        "pattern read scalerunner/v1/rack1/nodes/%u/cmd",
        "pattern read scalerunner/v1/rack1/coordinator/state",
    ]


def test_acl_is_the_same_for_any_number_of_nodes() -> None:
    # One set of pattern lines confines every node: adding a node changes the password file only.
    many = MosquittoConfig(cluster="rack1", nodes=tuple(f"n{i}" for i in range(50)))
    assert render_acl(many) == render_acl(CONFIG)


def test_acl_names_another_coordinator_user_when_configured() -> None:
    cfg = MosquittoConfig(cluster="lab", coordinator_user="ctl", nodes=("a",))
    assert _lines(render_acl(cfg))[:2] == ["user ctl", "topic readwrite scalerunner/v1/lab/#"]


# -- mosquitto.conf ------------------------------------------------------------------------


def test_conf_has_one_listener_no_anonymous_clients_and_the_generated_files() -> None:
    lines = _lines(render_conf(CONFIG, FILES))
    assert "allow_anonymous false" in lines
    assert "per_listener_settings false" in lines
    assert f"plugin {CONFIG.plugin}" in lines
    assert f"plugin_opt_config_file {FILES.dynsec}" in lines
    assert not any(line.startswith(("password_file", "acl_file")) for line in lines)
    assert [line for line in lines if line.startswith("listener")] == ["listener 18830 127.0.0.1"]
    assert not any(line.startswith(("certfile", "keyfile", "cafile", "tls_version")) for line in lines)


def test_conf_has_the_tls_lines_when_tls_files_are_given() -> None:
    tls = TlsFiles(Path("/etc/sr/broker.crt"), Path("/etc/sr/broker.key"), Path("/etc/sr/ca.crt"))
    lines = _lines(render_conf(MosquittoConfig(cluster="rack1", port=8883, tls=tls), FILES))
    listener = lines.index("listener 8883 127.0.0.1")
    after = lines[listener:]
    assert "certfile /etc/sr/broker.crt" in after
    assert "keyfile /etc/sr/broker.key" in after
    assert "cafile /etc/sr/ca.crt" in after
    assert "tls_version tlsv1.2" in after


def test_conf_names_the_account_mosquitto_keeps_only_when_given() -> None:
    assert "user scalerunner" in _lines(
        render_conf(MosquittoConfig(cluster="rack1", port=1, run_as="scalerunner"), FILES)
    )
    assert not any(line.startswith("user ") for line in _lines(render_conf(CONFIG, FILES)))


def test_conf_needs_a_real_port() -> None:
    with pytest.raises(ConfigError, match="port"):
        render_conf(MosquittoConfig(cluster="rack1", port=0), FILES)


# -- names and values are checked when the input is made -------------------------------------


@pytest.mark.parametrize(
    "bad", ["a/b", "+", "#", "node+1", "node#", "Upper", "", "-x", "x-", "a b", "a" * 64, "n\nuser x"]
)
def test_node_names_that_could_escape_a_topic_level_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        MosquittoConfig(cluster="rack1", nodes=("ok-1", bad))
    assert err.value.key == "nodes[1]"


@pytest.mark.parametrize("bad", ["rack/1", "#", "+", "Rack1", ""])
def test_cluster_and_coordinator_user_names_are_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match="cluster"):
        MosquittoConfig(cluster=bad)
    with pytest.raises(ConfigError, match="coordinator_user"):
        MosquittoConfig(cluster="rack1", coordinator_user=bad)


def test_a_node_named_like_the_coordinator_or_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="coordinator's user name"):
        MosquittoConfig(cluster="rack1", nodes=("a", "coordinator"))
    with pytest.raises(ConfigError, match="twice"):
        MosquittoConfig(cluster="rack1", nodes=("a", "b", "a"))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"host": "127.0.0.1\nallow_anonymous true"}, "host"),
        ({"host": "0.0.0.0 1884"}, "host"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"tls": TlsFiles(Path("/x.crt\nallow_anonymous true"), Path("/x.key"))}, "tls.certfile"),
        ({"tls": TlsFiles(Path("/x.crt"), Path("relative.key"))}, "tls.keyfile"),
        ({"run_as": "root\nallow_anonymous true"}, "run_as"),
    ],
)
def test_values_that_could_inject_config_lines_are_refused(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MosquittoConfig(cluster="rack1", **kwargs)  # type: ignore[arg-type]
    assert err.value.key == key


@given(st.text(max_size=70))
def test_any_accepted_node_name_is_one_plain_topic_level(name: str) -> None:
    try:
        MosquittoConfig(cluster="rack1", nodes=(name,))
    except ConfigError:
        return
    assert NAME_RE.match(name)
    assert not set(name) & set("+#/\n\r\0 ")


# -- credentials -----------------------------------------------------------------------------


def test_credentials_file_is_0600_json_without_temp_files_left(tmp_path: Path) -> None:
    path = tmp_path / "broker-credentials.json"
    creds = ensure_credentials(path, ["coordinator", "n1", "n2"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"version": 1, "users": dict(creds)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker-credentials.json"]
    assert len(set(creds.values())) == 3 and all(len(p) >= 32 for p in creds.values())


def test_adding_a_node_keeps_every_other_password(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    before = ensure_credentials(path, ["coordinator", "n1", "n2"])
    after = ensure_credentials(path, ["coordinator", "n1", "n2", "n3"])
    assert {u: after[u] for u in before} == dict(before)
    assert after["n3"] not in before.values()
    assert load_credentials(path) == after


def test_a_node_that_leaves_loses_its_password(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    ensure_credentials(path, ["coordinator", "n1", "n2"])
    ensure_credentials(path, ["coordinator", "n1"])
    with pytest.raises(UnknownNode):
        node_password(path, "n2")


def test_unchanged_credentials_are_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    ensure_credentials(path, ["coordinator", "n1"])
    inode = path.stat().st_ino
    ensure_credentials(path, ["coordinator", "n1"])
    assert path.stat().st_ino == inode


def test_node_password_looks_up_a_node(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    creds = ensure_credentials(path, ["coordinator", "n1"])
    assert node_password(path, "n1") == creds["n1"]
    with pytest.raises(UnknownNode):
        node_password(path, "n9")


def test_a_malformed_credentials_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"version": 1, "users": {"n1": 5}}')
    with pytest.raises(ConfigError) as err:
        load_credentials(path)
    assert err.value.path == str(path) and err.value.key == "users"
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not JSON"):
        ensure_credentials(path, ["coordinator"])


def test_a_credentials_file_open_to_others_is_closed_again(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    ensure_credentials(path, ["coordinator"])
    path.chmod(0o644)
    load_credentials(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- the dynamic-security plugin's file --------------------------------------------------------


def _hashes(cfg: MosquittoConfig) -> dict[str, PasswordHash]:
    return {u: dynsec_hash(f"pw-{u}", salt=b"0123456789ab") for u in cfg.users}


def test_dynsec_gives_each_node_a_role_of_its_literal_topics_and_denies_the_rest() -> None:
    doc = json.loads(render_dynsec(CONFIG, _hashes(CONFIG)))
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    clients = {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}
    assert clients == {
        "coordinator": ["coordinator"],
        "rack1-01": ["node-rack1-01"],
        "rack1-02": ["node-rack1-02"],
    }
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]} for r in doc["roles"]}
    base = "scalerunner/v1/rack1/nodes/rack1-02"
    assert roles["node-rack1-02"] == {
        *(
            ("publishClientSend", f"{base}/{t}")
            for t in ("state", "telemetry", "reply", "jobs/+/log", "jobs/+/status")
        ),
        ("publishClientReceive", f"{base}/cmd"),
        ("subscribeLiteral", f"{base}/cmd"),
        ("publishClientReceive", "scalerunner/v1/rack1/coordinator/state"),
        ("subscribeLiteral", "scalerunner/v1/rack1/coordinator/state"),
    }
    assert ("subscribePattern", "scalerunner/v1/rack1/#") in roles["coordinator"]
    assert ("publishClientSend", "$CONTROL/dynamic-security/v1/#") in roles["coordinator"]
    assert all(a["allow"] for r in doc["roles"] for a in r["acls"])


def test_dynsec_hash_is_the_plugins_pbkdf2_sha512_and_salts_differ() -> None:
    h = dynsec_hash("secret", salt=b"saltsaltsalt")
    expect = hashlib.pbkdf2_hmac("sha512", b"secret", b"saltsaltsalt", 101, 64)
    assert (base64.b64decode(h.hash), base64.b64decode(h.salt), h.iterations) == (
        expect,
        b"saltsaltsalt",
        101,
    )
    assert dynsec_hash("secret").salt != dynsec_hash("secret").salt


def test_dynsec_needs_a_hash_for_every_user() -> None:
    hashes = _hashes(CONFIG)
    del hashes["rack1-02"]
    with pytest.raises(ConfigError, match="rack1-02"):
        render_dynsec(CONFIG, hashes)


def test_reload_commands_delete_the_leavers_and_create_the_new_with_their_roles() -> None:
    cmds = dynsec_commands(CONFIG, {"rack1-03": "pw3"}, ("rack1-01",))
    assert [(c["command"], c.get("username") or c.get("rolename")) for c in cmds] == [
        ("deleteClient", "rack1-01"),
        ("deleteRole", "node-rack1-01"),
        ("createRole", "node-rack1-03"),
        ("createClient", "rack1-03"),
    ]
    assert cmds[3]["password"] == "pw3" and cmds[3]["roles"] == [{"rolename": "node-rack1-03"}]


def test_no_file_handed_to_mosquitto_holds_a_plaintext_password(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "broker")
    files.directory.mkdir()
    cfg = MosquittoConfig(cluster="rack1", port=1883, nodes=("n1", "n2"))
    creds = ensure_credentials(tmp_path / "creds.json", cfg.users)
    files.dynsec.write_text(render_dynsec(cfg, {u: dynsec_hash(pw) for u, pw in creds.items()}))
    files.conf.write_text(render_conf(cfg, files))
    for path in files.directory.iterdir():
        text = path.read_text()
        for password in creds.values():
            assert password not in text, path.name


# -- small pieces -----------------------------------------------------------------------------


def test_restart_delay_doubles_and_is_capped() -> None:
    assert [restart_delay(n, 0.25, 2.0) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_endpoints_and_the_address_a_client_dials() -> None:
    assert format_endpoint("127.0.0.1", 1883) == "127.0.0.1:1883"
    assert format_endpoint("::1", 1883) == "[::1]:1883"
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("::") == "::1"
    assert connect_host("10.0.0.5") == "10.0.0.5"
    assert connect_host("coordinator.lan") == "coordinator.lan"


def test_access_hides_its_password_from_repr() -> None:
    access = BrokerAccess("127.0.0.1", 1883, "coordinator", "s3cret-pw")
    assert "s3cret-pw" not in repr(access)
    assert access.tls_context() is None


def test_external_broker_reads_the_coordinators_password_and_starts_nothing(tmp_path: Path) -> None:
    pw = tmp_path / "broker.pw"
    pw.write_text("from-the-operator\n")
    ext = ExternalBroker("mqtt.lab", 8883, "coordinator", pw, cafile=tmp_path / "ca.crt")
    asyncio.run(ext.start())
    access = ext.access()
    assert (access.endpoint, access.username, access.password) == (
        "mqtt.lab:8883",
        "coordinator",
        "from-the-operator",
    )
    assert access.tls and access.cafile == tmp_path / "ca.crt"
    with pytest.raises(BrokerError, match="node n1"):
        ext.node_password("n1")
    with pytest.raises(ConfigError, match="real port"):
        ExternalBroker("mqtt.lab", 0, "coordinator", pw)
    with pytest.raises(ConfigError) as err:
        asyncio.run(ExternalBroker("mqtt.lab", 1883, "coordinator", tmp_path / "missing").start())
    assert err.value.path == str(tmp_path / "missing")


def test_the_plugin_is_found_in_a_multiarch_directory_and_its_absence_is_none(tmp_path: Path) -> None:
    assert find_dynsec_plugin([str(tmp_path / "lib/*-linux-gnu"), str(tmp_path / "lib")]) is None
    arch = tmp_path / "lib" / "riscv64-linux-gnu"
    arch.mkdir(parents=True)
    (arch / "mosquitto_dynamic_security.so").write_bytes(b"\x7fELF")
    found = find_dynsec_plugin([str(tmp_path / "lib/*-linux-gnu"), str(tmp_path / "lib")])
    assert found == arch / "mosquitto_dynamic_security.so"
