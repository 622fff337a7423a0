"""The agent's configuration: TOML file plus kernel command line; every error names file and key."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from scalerunner.nodeagent.cli import cli
from scalerunner.nodeagent.config import (
    BootParams,
    ConfigError,
    load_config,
    parse_cmdline,
    parse_config,
)

FULL = """
cluster = "lab"
node = "rack1-07"
labels = ["kvm", "pool=ci"]
state_dir = "state"
reboot_command = ["/sbin/reboot", "-f"]
led_serial = "/dev/ttyACM0"

[broker]
host = "coordinator.lan"
port = 18883
username = "n7"
password = "s3cret"
keepalive = 5
reconnect_min = 0.2
reconnect_max = 8

[telemetry]
interval = 2.5

[capacity]
cpus = 4
memory_mb = 3900
slots = 2
"""

MINIMAL = """
cluster = "lab"
node = "rack1-07"
[broker]
host = "coordinator.lan"
password = "x"
"""


def test_every_key_of_a_full_file_lands_in_the_config() -> None:
    c = parse_config(FULL, source="agent.toml", base_dir=Path("/etc/scalerunner"))
    assert (c.cluster, c.node, c.labels) == ("lab", "rack1-07", ("kvm", "pool=ci"))
    assert (c.broker_host, c.broker_port, c.username, c.password) == (
        "coordinator.lan",
        18883,
        "n7",
        "s3cret",
    )
    assert (c.keepalive, c.reconnect_min, c.reconnect_max) == (5, 0.2, 8.0)
    assert c.telemetry_interval == 2.5
    assert (c.cpus, c.memory_mb, c.slots) == (4, 3900, 2)
    assert c.state_dir == Path("/etc/scalerunner/state")  # relative to the file's directory
    assert c.reboot_command == ("/sbin/reboot", "-f")
    assert c.led_serial == "/dev/ttyACM0"


def test_defaults_of_a_minimal_file() -> None:
    c = parse_config(MINIMAL, source="agent.toml")
    assert (c.broker_port, c.username, c.tls_ca) == (1883, "rack1-07", None)
    assert c.labels == () and c.reboot_command == () and c.led_serial is None
    assert (c.cpus, c.memory_mb, c.slots, c.telemetry_interval) == (None, None, 1, 5.0)
    assert c.state_dir == Path("/var/lib/scalerunner")


def test_a_tls_ca_makes_the_default_port_8883() -> None:
    c = parse_config(MINIMAL + 'tls_ca = "ca.pem"\n', source="agent.toml", base_dir=Path("/etc/sr"))
    assert (c.tls_ca, c.broker_port) == (Path("/etc/sr/ca.pem"), 8883)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (('node = "rack1-07"', 'node = "Rack_7"'), "node"),
        (('cluster = "lab"', "cluster = 3"), "cluster"),
        (('cluster = "lab"', ""), "cluster"),
        (('password = "x"', 'password = "x"\nport = 0'), "broker.port"),
        (('password = "x"', 'password = "x"\nport = "1883"'), "broker.port"),
        (('password = "x"', 'password = "x"\nprot = 1883'), "broker.prot"),
        (('password = "x"', 'password = "x"\nkeepalive = true'), "broker.keepalive"),
        (("[broker]", 'labels = ["ok", "not ok"]\n[broker]'), "labels[1]"),
        (("[broker]", 'colour = "red"\n[broker]'), "colour"),
        (("[broker]", "[telemetry]\ninterval = 0\n[broker]"), "telemetry.interval"),
        (("[broker]", "[capacity]\ncpus = 0\n[broker]"), "capacity.cpus"),
        (
            ('password = "x"', 'password = "x"\nreconnect_min = 5.0\nreconnect_max = 1.0'),
            "broker.reconnect_max",
        ),
        (('host = "coordinator.lan"\n', ""), "broker.host"),
        (('password = "x"', ""), "broker.password"),
        (('password = "x"', 'password = "x"\npassword_file = "p"'), "broker.password"),
    ],
)
def test_a_bad_value_is_refused_naming_the_file_and_the_key(edit: tuple[str, str], key: str) -> None:
    old, new = edit
    assert old in MINIMAL
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL.replace(old, new, 1), source="/etc/agent.toml")
    assert (info.value.source, info.value.key) == ("/etc/agent.toml", key)
    assert str(info.value).startswith(f"/etc/agent.toml: {key}: ")
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_toml_is_refused_naming_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^agent\.toml: not valid TOML: .*line 1"):
        parse_config("cluster = = 1", source="agent.toml")


CMDLINE = (
    "console=ttyS0 root=/dev/ram0 scalerunner.url=http://10.0.0.1:8080 scalerunner.node=rack1-07 "
    'scalerunner.token=tok-123 scalerunner.future=ignored quiet "scalerunner.unused=a b"\n'
)


def test_the_kernel_command_line_gives_url_node_and_token() -> None:
    assert parse_cmdline(CMDLINE) == BootParams("http://10.0.0.1:8080", "rack1-07", "tok-123")


def test_kernel_command_line_quotes_group_blanks_and_the_last_value_wins() -> None:
    boot = parse_cmdline('scalerunner.token="a b" scalerunner.node=x1 scalerunner.node=rack1-08')
    assert (boot.token, boot.node) == ("a b", "rack1-08")


def test_kernel_command_line_after_a_lone_double_dash_belongs_to_init() -> None:
    assert parse_cmdline("quiet -- scalerunner.node=rack1-07") == BootParams()


def test_no_scalerunner_keys_on_the_kernel_command_line_means_not_netbooted() -> None:
    assert parse_cmdline("console=ttyS0 quiet\n") == BootParams()
    assert parse_cmdline("") == BootParams()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("scalerunner.node=Bad_Name", "scalerunner.node"),
        ("scalerunner.url=ftp://x", "scalerunner.url"),
        ("scalerunner.url=http://", "scalerunner.url"),
        ("scalerunner.token=", "scalerunner.token"),
    ],
)
def test_a_bad_kernel_command_line_value_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cmdline(text, source="/proc/cmdline")
    assert str(info.value).startswith(f"/proc/cmdline: {key}: ")


GENERIC_IMAGE = """
cluster = "lab"
"""


def test_a_netbooted_node_takes_its_name_broker_host_and_token_from_the_kernel() -> None:
    boot = parse_cmdline(CMDLINE)
    c = parse_config(GENERIC_IMAGE, source="agent.toml", boot=boot)
    assert (c.node, c.username, c.broker_host, c.broker_port) == ("rack1-07", "rack1-07", "10.0.0.1", 1883)
    assert (c.password, c.bootstrap_token, c.coordinator_url) == (None, "tok-123", "http://10.0.0.1:8080")


def test_a_node_name_in_the_file_that_contradicts_the_kernel_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"agent\.toml: node: .*scalerunner\.node=rack1-07"):
        parse_config(
            MINIMAL.replace("rack1-07", "rack1-09"), source="agent.toml", boot=parse_cmdline(CMDLINE)
        )


def test_no_password_and_no_token_is_refused_with_what_to_set() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(GENERIC_IMAGE, source="agent.toml", boot=BootParams(url="http://c", node="n1"))
    assert info.value.key == "broker.password"
    assert "scalerunner.token=" in info.value.detail and "password_file" in info.value.detail


def _write(tmp_path: Path, text: str, cmdline: str = "") -> tuple[Path, Path]:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    cmd = tmp_path / "cmdline"
    cmd.write_text(cmdline)
    return cfg, cmd


def test_load_config_reads_the_password_file_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("from-file\n")
    cfg, cmd = _write(tmp_path, MINIMAL.replace('password = "x"', 'password_file = "mqtt-password"'))
    c = load_config(cfg, cmdline=cmd)
    assert (c.password, c.password_file) == ("from-file", tmp_path / "mqtt-password")


@pytest.mark.parametrize("content", [None, "  \n"])
def test_a_missing_or_empty_password_file_is_refused(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "pw").write_text(content)
    cfg, cmd = _write(tmp_path, MINIMAL.replace('password = "x"', 'password_file = "pw"'))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, cmdline=cmd)
    assert info.value.key == "broker.password_file"


def test_load_config_reads_the_injected_kernel_command_line(tmp_path: Path) -> None:
    cfg, cmd = _write(tmp_path, GENERIC_IMAGE, CMDLINE)
    c = load_config(cfg, cmdline=cmd)
    assert (c.node, c.bootstrap_token) == ("rack1-07", "tok-123")


def test_an_absent_kernel_command_line_means_not_netbooted(tmp_path: Path) -> None:
    cfg, _ = _write(tmp_path, MINIMAL)
    assert load_config(cfg, cmdline=tmp_path / "absent").bootstrap_token is None


@pytest.mark.parametrize(
    "content", [None, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"]
)
def test_an_unreadable_or_invalid_tls_ca_is_refused(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_text(content)
    cfg, cmd = _write(tmp_path, MINIMAL + 'tls_ca = "ca.pem"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg, cmdline=cmd)
    assert info.value.key == "broker.tls_ca"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace('password = "x"', 'password = "x"\nport = -1'), "broker.port"),
        (GENERIC_IMAGE, "node: missing"),
    ],
)
def test_the_cli_prints_one_line_naming_file_and_key_and_exits_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    cfg, cmd = _write(tmp_path, text)
    result = CliRunner().invoke(cli, ["--config", str(cfg), "--cmdline", str(cmd)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"scalerunner-agent: {cfg}: {expected}")


def test_the_cli_names_a_config_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(cli, ["--config", str(missing), "--cmdline", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"scalerunner-agent: {missing}: cannot read: No such file or directory"


def test_the_example_in_docs_agent_md_is_valid_and_shows_every_key() -> None:
    from msgspec.structs import fields

    from scalerunner.nodeagent import config as config_module

    doc = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text()
    example = doc.split("## Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    c = parse_config(example, source="docs/agent.md")
    assert (c.node, c.reboot_command, c.led_serial) == ("rack1-07", ("/sbin/reboot",), "/dev/ttyACM0")
    sections: dict[str, type[msgspec.Struct]] = {
        "broker": config_module._Broker,
        "telemetry": config_module._Telemetry,
        "capacity": config_module._Capacity,
        "jobs": config_module._Jobs,
    }
    for f in fields(config_module._File):
        assert re.search(rf"^(\[{f.name}\]|{f.name} = )", example, re.M), f.name
    for name, struct in sections.items():
        body = example.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
        for f in fields(struct):
            if f.name != "password_file":  # shown in a comment: it excludes password
                assert re.search(rf"^{f.name} = ", body, re.M), f"{name}.{f.name}"
    assert "password_file" in example
