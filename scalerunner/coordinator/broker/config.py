"""mosquitto's configuration and access control for the managed broker, from a small input.

Pure: data in, text out. Nothing here reads a file, starts a process or makes a password.

The managed broker checks users and topics with mosquitto's dynamic-security plugin
(``render_dynsec``): it refuses a forbidden SUBSCRIBE with SUBACK 0x87, which the plain
``acl_file`` of mosquitto 2.0 does not (it grants the filter and filters on delivery). The
plugin does not substitute ``%u`` in 2.0.11, so every node has a role of its own naming its
topics literally; a node's name can never contain ``+``, ``#`` or ``/``
(``protocol.mqtt.topics.check_name``). ``render_acl`` renders the same rules as an
``acl_file`` with ``pattern`` lines, for an external mosquitto (docs/broker.md).
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...protocol.mqtt.topics import ROOT, TopicError, check_name
from ..errors import ConfigError

__all__ = [
    "COORDINATOR_USER",
    "DYNSEC_TOPIC",
    "BrokerAccess",
    "BrokerFiles",
    "MosquittoConfig",
    "PasswordHash",
    "TlsFiles",
    "connect_host",
    "dynsec_commands",
    "format_endpoint",
    "node_acls",
    "render_acl",
    "render_conf",
    "render_dynsec",
]

COORDINATOR_USER = "coordinator"

# What a node may write under its own prefix, and what it may read; %u is the node's name.
NODE_WRITES = ("state", "telemetry", "reply", "jobs/+/log", "jobs/+/status")
NODE_READS = ("cmd",)
# Read by every node: the coordinator's retained state (agents say again how their kept job
# attempts ended when a coordinator comes online).
CLUSTER_READS = ("coordinator/state",)

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"  # the plugin's control API; answers on .../response

_SOURCE = "broker"  # ConfigError.path: the input is not a file; the inventory loader names its own
_HOST_RE = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class TlsFiles:
    """The listener's certificate and key (PEM); ``cafile`` is the CA that signed them,
    handed to clients so they can verify the broker."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None


@dataclass(frozen=True)
class BrokerFiles:
    """Where the managed broker's generated files live: one directory, all of them in it."""

    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def dynsec(self) -> Path:
        """The dynamic-security plugin's users and roles (it rewrites the file on every change)."""
        return self.directory / "dynamic-security.json"

    @property
    def log(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def pid(self) -> Path:
        return self.directory / "mosquitto.pid"


@dataclass(frozen=True)
class MosquittoConfig:
    """The input of the renderers. Checked when made: a bad name or value raises ConfigError
    with ``path="broker"`` and the key at fault (``nodes[2]``, ``port``, ``tls.certfile``)."""

    cluster: str
    host: str = "127.0.0.1"
    port: int = 1883
    nodes: tuple[str, ...] = ()
    coordinator_user: str = COORDINATOR_USER
    tls: TlsFiles | None = None
    run_as: str | None = None  # mosquitto's `user` line: the account it keeps after starting as root
    plugin: Path = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")

    def __post_init__(self) -> None:
        _check_name("cluster", "cluster", self.cluster)
        _check_name("coordinator_user", "coordinator user", self.coordinator_user)
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            _check_name(f"nodes[{i}]", "node", node)
            if node in seen:
                raise ConfigError(_SOURCE, f"nodes[{i}]", f"node {node!r} is listed twice")
            if node == self.coordinator_user:
                raise ConfigError(
                    _SOURCE, f"nodes[{i}]", f"node {node!r} has the coordinator's user name; rename one"
                )
            seen.add(node)
        if not _HOST_RE.match(self.host):
            raise ConfigError(_SOURCE, "host", f"{self.host!r} is not a host name or IP address")
        if not 0 <= self.port <= 65535:
            raise ConfigError(_SOURCE, "port", f"{self.port} is not a TCP port (0-65535)")
        if self.run_as is not None and not re.match(r"^[a-z_][a-z0-9_.-]{0,31}$", self.run_as):
            raise ConfigError(_SOURCE, "run_as", f"{self.run_as!r} is not a user name")
        _check_path("plugin", self.plugin)
        if self.tls is not None:
            _check_path("tls.certfile", self.tls.certfile)
            _check_path("tls.keyfile", self.tls.keyfile)
            if self.tls.cafile is not None:
                _check_path("tls.cafile", self.tls.cafile)

    @property
    def prefix(self) -> str:
        """The cluster's topic tree, e.g. ``scalerunner/v1/rack1``."""
        return f"{ROOT}/{self.cluster}"

    @property
    def users(self) -> tuple[str, ...]:
        """Every broker user: the coordinator first, then the nodes in order."""
        return (self.coordinator_user, *self.nodes)


@dataclass(frozen=True)
class BrokerAccess:
    """How a client (the coordinator's MQTT link) reaches a broker and logs in."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    cafile: Path | None = None
    certfile: Path | None = None  # client certificate, for brokers that require one
    keyfile: Path | None = None
    tls: bool = False

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)

    def tls_context(self) -> ssl.SSLContext | None:
        """A client SSL context verifying the broker against ``cafile`` (or the system's CAs);
        None when the broker speaks plain MQTT."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        if self.certfile is not None:
            ctx.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
        return ctx


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(listen_host: str) -> str:
    """The address a local client dials for a listener on ``listen_host`` (a wildcard
    address is not one to connect to)."""
    try:
        addr = ipaddress.ip_address(listen_host)
    except ValueError:
        return listen_host
    if addr.is_unspecified:
        return "::1" if addr.version == 6 else "127.0.0.1"
    return listen_host


def render_acl(config: MosquittoConfig) -> str:
    """The ``acl_file``: the coordinator reads and writes the cluster's tree; every other
    user (a node) writes only under ``nodes/<its name>/`` and reads only its ``cmd``."""
    p = config.prefix
    lines = [
        f"# mosquitto ACL for scalerunner cluster {config.cluster!r}.",
        "# Generated by the coordinator on every start and reload; edits are overwritten.",
        "",
        "# The coordinator reads and writes everything in the cluster's tree.",
        f"user {config.coordinator_user}",
        f"topic readwrite {p}/#",
        "",
        "# Every user is a node whose user name is its node name; %u is that name,",
        "# one whole topic level. A node writes only under its own prefix and reads only its cmd",
        "# and the coordinator's state.",
    ]
    lines += [f"pattern write {p}/nodes/%u/{tail}" for tail in NODE_WRITES]
    lines += [f"pattern read {p}/nodes/%u/{tail}" for tail in NODE_READS]
    lines += [f"pattern read {p}/{tail}" for tail in CLUSTER_READS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PasswordHash:
    """A password as the dynamic-security plugin stores it: base64 PBKDF2-HMAC-SHA512 (64 bytes)
    of the password with ``salt`` (base64) over ``iterations``."""

    hash: str = field(repr=False)
    salt: str
    iterations: int


def _role(node: str) -> str:
    return f"node-{node}"


def node_acls(config: MosquittoConfig, node: str) -> list[dict[str, Any]]:
    """The role of ``node``: publish under its own prefix, receive and subscribe to its cmd."""
    base = f"{config.prefix}/nodes/{node}"
    acls: list[dict[str, Any]] = [
        {"acltype": "publishClientSend", "topic": f"{base}/{tail}", "allow": True} for tail in NODE_WRITES
    ]
    reads = [f"{base}/{tail}" for tail in NODE_READS] + [f"{config.prefix}/{tail}" for tail in CLUSTER_READS]
    for topic in reads:
        acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
        acls.append({"acltype": "subscribeLiteral", "topic": topic, "allow": True})
    return acls


def _coordinator_acls(config: MosquittoConfig) -> list[dict[str, Any]]:
    """Everything in the cluster's tree, and the plugin's control API (``reload`` uses it)."""
    acls = []
    for topic in (f"{config.prefix}/#", f"{DYNSEC_TOPIC}/#"):
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern"):
            acls.append({"acltype": kind, "topic": topic, "allow": True})
    return acls


def render_dynsec(config: MosquittoConfig, hashes: Mapping[str, PasswordHash]) -> str:
    """The dynamic-security plugin's file: the coordinator and every node as clients (``hashes``
    must have each of ``config.users``), one role each; everything else denied."""
    missing = [u for u in config.users if u not in hashes]
    if missing:
        raise ConfigError(_SOURCE, "users", f"no password hash for {', '.join(missing)}")

    def client(user: str, role: str) -> dict[str, Any]:
        h = hashes[user]
        return {
            "username": user,
            "password": h.hash,
            "salt": h.salt,
            "iterations": h.iterations,
            "roles": [{"rolename": role}],
        }

    coordinator = config.coordinator_user
    doc = {
        "clients": [client(coordinator, coordinator)] + [client(n, _role(n)) for n in config.nodes],
        "roles": [{"rolename": coordinator, "acls": _coordinator_acls(config)}]
        + [{"rolename": _role(n), "acls": node_acls(config, n)} for n in config.nodes],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    return json.dumps(doc, indent=1) + "\n"


def dynsec_commands(
    config: MosquittoConfig, added: Mapping[str, str], removed: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The control-API commands that add the nodes of ``added`` (node -> plaintext password; the
    plugin hashes it) and delete the ``removed`` ones with their roles."""
    commands: list[dict[str, Any]] = []
    for node in removed:
        commands.append({"command": "deleteClient", "username": node})
        commands.append({"command": "deleteRole", "rolename": _role(node)})
    for node, password in added.items():
        commands.append({"command": "createRole", "rolename": _role(node), "acls": node_acls(config, node)})
        commands.append(
            {
                "command": "createClient",
                "username": node,
                "password": password,
                "roles": [{"rolename": _role(node)}],
            }
        )
    return commands


def render_conf(config: MosquittoConfig, files: BrokerFiles) -> str:
    """``mosquitto.conf``: one listener, no anonymous clients, the dynamic-security plugin.

    ``config.port`` must be the real port (the supervisor picks one for 0 before rendering).
    Logs go to stderr, which the supervisor sends to ``files.log``. Nothing is persisted:
    retained states and sessions are rebuilt by clients on reconnect, and the store, not the
    broker, is the coordinator's truth.
    """
    if config.port == 0:
        raise ConfigError(_SOURCE, "port", "pick a port before rendering mosquitto.conf (0 means any)")
    _check_path("files.dynsec", files.dynsec)
    lines = [
        f"# mosquitto configuration for scalerunner cluster {config.cluster!r}.",
        "# Generated by the coordinator on every start; edits are overwritten. Users and roles are the",
        "# dynamic-security plugin's; the coordinator changes them through its control API.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {config.plugin}",
        f"plugin_opt_config_file {files.dynsec}",
    ]
    if config.run_as is not None:
        lines.append(f"user {config.run_as}")
    lines += [
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        f"listener {config.port} {config.host}",
        "protocol mqtt",
    ]
    if config.tls is not None:
        lines += [
            f"certfile {config.tls.certfile}",
            f"keyfile {config.tls.keyfile}",
        ]
        if config.tls.cafile is not None:
            lines.append(f"cafile {config.tls.cafile}")
        lines.append("tls_version tlsv1.2")
    return "\n".join(lines) + "\n"


def _check_name(key: str, what: str, name: str) -> None:
    try:
        check_name(what, name)
    except TopicError as exc:
        raise ConfigError(_SOURCE, key, f"{name!r}: {exc.detail}") from exc


def _check_path(key: str, path: Path) -> None:
    text = str(path)
    if not path.is_absolute():
        raise ConfigError(_SOURCE, key, f"{text!r} must be an absolute path")
    if _CONTROL_RE.search(text) or text != text.strip():
        raise ConfigError(_SOURCE, key, f"{text!r} has control characters or edge spaces")
