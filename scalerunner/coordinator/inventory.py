"""The inventory (``scalerunner.toml``): what the cluster is made of, validated data.

Loading is in three steps, each failing with ``ConfigError(path, key, detail)`` where ``key``
is the dotted key at fault (``nodes[3].mac``, ``switches[0].snmp.auth_key``):

1. TOML syntax (``tomllib``); the detail carries the line and column.
2. Shape, types and ranges (``msgspec`` Structs, frozen). Unknown keys are refused, so a
   typo never passes silently.
3. Rules a schema cannot say: host names, MAC addresses (normalised to ``aa:bb:cc:dd:ee:ff``),
   URLs, files that must exist (resolved against the inventory's directory), and the
   cross-checks (unique names, MACs, switch ports and rack positions; a node's switch exists
   and its port is not an uplink).

The result is plain data; nothing here opens a socket, a serial port or a database.
See docs/inventory.md for every key.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi

from ..protocol.mqtt.payloads import Label as _PayloadLabel
from ..protocol.mqtt.topics import NAME_RE
from .errors import ConfigError, UnknownNode

__all__ = [
    "ApiConfig",
    "Arch",
    "BootConfig",
    "BrokerConfig",
    "ClusterConfig",
    "DhcpConfig",
    "GitHubConfig",
    "GitHubPool",
    "Inventory",
    "Node",
    "PowerConfig",
    "RackPosition",
    "SnmpV2c",
    "SnmpV3",
    "StoreConfig",
    "Switch",
    "Timeouts",
    "inventory_from_dict",
    "load_inventory",
    "loads_inventory",
    "normalise_mac",
    "sqlite_path",
]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PortOrZero = Annotated[int, msgspec.Meta(ge=0, le=65535)]
SwitchPort = Annotated[int, msgspec.Meta(ge=1, le=4096)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Secret = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
ProfileName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}\Z")]
Arch = Literal["amd64", "arm64", "riscv64"]
PiSerial = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8}\Z")]
# An enrolled node's name is this prefix and the last three bytes of its MAC (docs/netboot.md).
EnrolPrefix = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,49}\Z")]


def _pattern(t: Any) -> str:
    info = mi.type_info(t)
    assert isinstance(info, mi.StrType) and info.pattern is not None
    return info.pattern


def _whole(pattern: str) -> str:
    """``pattern`` anchored at the very end: msgspec searches with ``re``, where ``$`` also
    matches before a final newline (``"rack1\\n"`` would pass ``^[a-z0-9]+$``)."""
    return pattern if pattern.endswith(r"\Z") else pattern.removesuffix("$") + r"\Z"


# The node/cluster name rule of the MQTT topics and the label rule of the MQTT payloads, so
# whatever the inventory accepts fits in a topic and a payload.
Name = Annotated[str, msgspec.Meta(pattern=_whole(NAME_RE.pattern))]
Label = Annotated[str, msgspec.Meta(pattern=_whole(_pattern(_PayloadLabel)))]


# What a pattern means, said in words in an error message.
_PATTERN_WORDS = {
    _pattern(Name): "must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
    _pattern(Label): "must be 1-64 of A-Z, a-z, 0-9 and _ . : = / -",
    _pattern(PiSerial): "must be the 8 lower-case hex digits of the Pi's serial number",
    _pattern(ProfileName): "must be 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit",
    _pattern(EnrolPrefix): "must be 1-50 of a-z, 0-9 and '-', starting with a letter or digit",
}


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A TOML table: frozen, and any key it does not name is an error."""


class ClusterConfig(_Table, frozen=True, kw_only=True):
    name: Name


class BrokerConfig(_Table, frozen=True, kw_only=True):
    """``managed``: the coordinator runs mosquitto itself, listening on ``host:port``.
    ``external``: the coordinator connects to a broker that someone else runs.
    File paths are absolute after loading."""

    mode: Literal["managed", "external"] = "managed"
    host: NonEmpty = "127.0.0.1"
    port: PortOrZero = 0  # 0: pick a free port (managed) -- an external broker needs a real one
    cafile: NonEmpty | None = None
    certfile: NonEmpty | None = None
    keyfile: NonEmpty | None = None
    username: NonEmpty | None = None
    password_file: NonEmpty | None = None

    @property
    def tls(self) -> bool:
        return bool(self.cafile or self.certfile)


class StoreConfig(_Table, frozen=True, kw_only=True):
    """``sqlite:///relative.db`` (against the inventory's directory) or ``sqlite:////abs.db``;
    after loading a SQLite URL is always absolute. ``postgresql://`` is parsed, not served yet."""

    url: NonEmpty = "sqlite:///state/scalerunner.db"


class ApiConfig(_Table, frozen=True, kw_only=True):
    listen: NonEmpty = "127.0.0.1:8080"

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


class DhcpConfig(_Table, frozen=True, kw_only=True):
    """The coordinator's dnsmasq (docs/netboot.md). ``off``: none runs (the site hands out
    the boot file itself); ``proxy``: proxy-DHCP beside the site's DHCP server, answering only
    PXE clients on ``subnet``; ``full``: the DHCP server of an isolated provisioning network,
    leasing ``range_start``..``range_end``. TFTP (iPXE binaries, the Raspberry Pi tree) runs
    whenever dnsmasq does."""

    mode: Literal["off", "proxy", "full"] = "off"
    interface: NonEmpty | None = None  # the provisioning network's interface (required unless off)
    subnet: NonEmpty | None = None  # "10.77.0.0/24" (required unless off); advertise lies in it
    range_start: NonEmpty | None = None  # full only: first address leased
    range_end: NonEmpty | None = None  # full only: last address leased
    router: NonEmpty | None = None  # full only: option 3, if the network has one
    lease: Annotated[int, msgspec.Meta(ge=120, le=864000)] = 3600  # full only: seconds
    dnsmasq: NonEmpty = "/usr/sbin/dnsmasq"


class BootConfig(_Table, frozen=True, kw_only=True):
    """Network boot (docs/netboot.md): the node-facing HTTP server (iPXE scripts, kernels,
    initrds, the one-time token trade), and optionally dnsmasq for DHCP and TFTP."""

    enabled: bool = False
    listen: NonEmpty = "0.0.0.0:8069"  # the boot HTTP server
    # The IPv4 address nodes reach this coordinator at (boot HTTP, broker); the Pi's bootloader
    # has no DNS, so an address, never a name. None: the listen address, if not a wildcard.
    advertise: NonEmpty | None = None
    token_ttl: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 900.0  # a boot token's life, seconds
    # Where a Raspberry Pi looks for its files on TFTP (its bootloader's TFTP_PREFIX setting):
    # "serial" = <8 hex digits of its serial>/ (the default), "mac" = <aa-bb-cc-dd-ee-ff>/.
    pi_tftp_prefix: Literal["serial", "mac"] = "serial"
    dhcp: DhcpConfig = DhcpConfig()
    # Enrolment (docs/netboot.md): an unknown MAC that asks for its script becomes a node
    # (ENROL_PREFIX + the MAC's last three bytes) in the state dir's enrolled-nodes.toml.
    enroll: bool = False
    enroll_prefix: EnrolPrefix = "node-"
    enroll_boot_group: Name = "default"
    enroll_labels: tuple[Label, ...] = ()
    enroll_limit: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64  # enrolled nodes at most

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @property
    def address(self) -> str:
        """The address given to nodes (checked at load: set when listen is a wildcard)."""
        return self.advertise or self.host


class Timeouts(_Table, frozen=True, kw_only=True):
    boot_timeout: Seconds = 300.0  # power-on to "online" before recovery starts
    telemetry_timeout: Seconds = 30.0  # silence after which a node counts as lost


class PowerConfig(_Table, frozen=True, kw_only=True):
    """Node power (docs/power.md): how often outlets are read for energy, and the cycle's timing."""

    sample_interval: Seconds = 10.0  # per-outlet power read into the store
    min_off: Annotated[float, msgspec.Meta(ge=0, le=600)] = 2.0  # a cycled node stays unpowered this long
    off_timeout: Seconds = 10.0  # switched off to "not delivering power"
    on_timeout: Seconds = 15.0  # switched on to "delivering power"
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=36500)] = 90  # power samples older are pruned


class SnmpV2c(_Table, frozen=True, kw_only=True, tag_field="version", tag="2c"):
    community: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

    def __repr__(self) -> str:
        return "SnmpV2c(community='***')"


class SnmpV3(_Table, frozen=True, kw_only=True, tag_field="version", tag="3"):
    """USM with authentication and privacy (authPriv)."""

    user: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    auth_protocol: Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"]
    auth_key: Secret
    priv_protocol: Literal["des", "3des", "aes", "aes128", "aes192", "aes256"]
    priv_key: Secret

    def __repr__(self) -> str:
        return (
            f"SnmpV3(user={self.user!r}, auth_protocol={self.auth_protocol!r}, auth_key='***', "
            f"priv_protocol={self.priv_protocol!r}, priv_key='***')"
        )


class Switch(_Table, frozen=True, kw_only=True):
    name: Name
    address: NonEmpty  # host name or IP address
    port: Port = 161  # SNMP, UDP
    profile: ProfileName  # hardware/switches/{profile}.toml
    pse_group: Positive = 1  # pethMainPseGroupIndex / pethPsePortGroupIndex (stack member)
    snmp: SnmpV2c | SnmpV3
    uplink_ports: tuple[SwitchPort, ...] = ()  # never switched off by the coordinator


class RackPosition(_Table, frozen=True, kw_only=True):
    row: Positive
    position: Positive


class Node(_Table, frozen=True, kw_only=True):
    name: Name
    mac: NonEmpty  # "aa:bb:cc:dd:ee:ff" after loading
    arch: Arch
    switch: Name | None = None
    port: SwitchPort | None = None
    bmc_port: NonEmpty | None = None
    led_port: NonEmpty | None = None
    labels: tuple[Label, ...] = ()
    rack: RackPosition | None = None
    cpus: Positive | None = None
    memory_mb: Positive | None = None
    boot_group: Name = "default"  # the image a group's version was promoted to boots it (docs/netboot.md)
    serial: PiSerial | None = None  # a Pi's serial: its TFTP directory when pi_tftp_prefix = "serial"


class JobsConfig(_Table, frozen=True, kw_only=True):
    lease: Annotated[float, msgspec.Meta(ge=3, le=3600)] = 30.0  # s without a heartbeat: the attempt is lost


class HealthCheck(_Table, frozen=True, kw_only=True):
    """A job that proves a node of a type (arch, labels) healthy: run on a node whose health is
    unknown, and again every ``every_hours`` hours or ``every_jobs`` jobs (0: not by count)."""

    arch: Arch | None = None
    labels: tuple[Label, ...] = ()
    command: tuple[str, ...] | None = None
    script: NonEmpty | None = None
    image: str = ""
    timeout: Seconds = 300.0
    every_hours: Annotated[float, msgspec.Meta(gt=0, le=8760)] = 24.0
    every_jobs: Annotated[int, msgspec.Meta(ge=0)] = 0

    def matches(self, node: Node) -> bool:
        return (self.arch is None or self.arch == node.arch) and set(self.labels) <= set(node.labels)


class GitHubPool(_Table, frozen=True, kw_only=True):
    """Workflow jobs that carry every one of ``labels`` (case-insensitive) in ``scope`` run as
    Scalerunner jobs with these parameters (docs/github.md)."""

    name: Name
    scope: NonEmpty  # "ORG" or "OWNER/REPO"
    labels: Annotated[tuple[Label, ...], msgspec.Meta(min_length=1)]
    runner_group_id: Positive = 1
    repositories: tuple[NonEmpty, ...] = ()  # org scope: the repos the reconciler lists (empty: all)
    image: str = ""
    arch: Arch | None = None
    node_labels: tuple[Label, ...] = ()
    cpus: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 1.0
    memory_mb: Positive = 2048
    timeout: Seconds = 21600.0
    command: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = (
        "./run.sh",
        "--jitconfig",
        "{jitconfig}",
    )
    priority: Annotated[int, msgspec.Meta(ge=-100, le=100)] = 0


class GitHubConfig(_Table, frozen=True, kw_only=True):
    """GitHub Actions runners (docs/github.md). Secrets are files, never inventory text."""

    api_url: NonEmpty = "https://api.github.com"
    token_file: NonEmpty | None = None  # a PAT or an installation token; read again whenever it changes
    app_id: Positive | None = None  # or a GitHub App: its id, installation and private key (PEM)
    installation_id: Positive | None = None
    private_key_file: NonEmpty | None = None
    webhook_secret_file: NonEmpty
    reconcile_interval: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    idle_timeout: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0
    pools: Annotated[tuple[GitHubPool, ...], msgspec.Meta(min_length=1)]


class Inventory(_Table, frozen=True, kw_only=True):
    cluster: ClusterConfig
    broker: BrokerConfig = BrokerConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    timeouts: Timeouts = Timeouts()
    boot: BootConfig = BootConfig()
    power: PowerConfig = PowerConfig()
    switches: tuple[Switch, ...] = ()
    nodes: tuple[Node, ...] = ()
    jobs: JobsConfig = JobsConfig()
    health_checks: tuple[HealthCheck, ...] = ()
    github: GitHubConfig | None = None

    def health_check(self, node: Node) -> HealthCheck | None:
        """The first health check whose arch and labels fit ``node``, if any."""
        return next((c for c in self.health_checks if c.matches(node)), None)

    def node(self, name: str) -> Node:
        """The node called ``name``; UnknownNode if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise UnknownNode(name)

    def switch(self, name: str) -> Switch:
        """The switch called ``name``; KeyError if there is none (a node's switch always exists)."""
        for switch in self.switches:
            if switch.name == name:
                return switch
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Loading


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate the inventory file at ``path``; ConfigError says what is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {exc.start})") from exc
    return loads_inventory(text, path)


def loads_inventory(text: str, path: str | Path) -> Inventory:
    """Validate TOML ``text`` as if read from ``path`` (relative paths resolve against its directory)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"TOML syntax error: {exc}") from exc
    return inventory_from_dict(data, path)


def inventory_from_dict(data: Mapping[str, Any], path: str | Path) -> Inventory:
    """Validate already-parsed TOML ``data`` as if read from ``path``."""
    path = Path(path)
    try:
        inv = msgspec.convert(data, type=Inventory)
    except msgspec.ValidationError as exc:
        key, detail = _explain(str(exc), data)
        raise ConfigError(str(path), key, detail) from exc
    return _Checker(path).check(inv)


# --------------------------------------------------------------------------------------------
# Turning msgspec's messages into a dotted key and words a TOML author knows

_AT_RE = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_SEG_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_TYPES = {
    "object": "a table",
    "array": "an array",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "nothing",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}

Segment = str | int


def dotted(segments: list[Segment]) -> str:
    """``["nodes", 3, "mac"]`` -> ``nodes[3].mac``; keys that are not bare TOML keys are quoted."""
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            name = (
                seg
                if _BARE_KEY_RE.fullmatch(seg)
                else '"' + seg.replace("\\", "\\\\").replace('"', '\\"') + '"'
            )
            out += f".{name}" if out else name
    return out


def _explain(message: str, data: Mapping[str, Any]) -> tuple[str, str]:
    m = _AT_RE.match(message)
    msg, segments = (m.group("msg"), _segments(m.group("path"))) if m else (message, [])
    tinfo = _type_at(segments, data)

    if found := re.match(r"^Object contains unknown field `(.*)`$", msg, re.S):
        name = found.group(1)
        known = _known_keys(tinfo, _value_at(segments, data))
        detail = "unknown key"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            detail += f" (did you mean {close[0]!r}?)"
        if known:
            detail += "; known keys: " + ", ".join(known)
        return dotted([*segments, name]), detail
    if found := re.match(r"^Object missing required field `(.*)`$", msg, re.S):
        return dotted([*segments, found.group(1)]), "required key is missing"
    if msg.startswith(("Invalid enum value", "Invalid value")):
        choices = _choices(tinfo)
        return dotted(segments), "must be one of " + ", ".join(repr(c) for c in choices) if choices else msg
    if found := re.match(r"^Expected `([\w |]+)`, got `(\w+)`$", msg):
        wants = [_TOML_TYPES.get(t, t) for t in found.group(1).split(" | ") if t != "null"]
        got = _TOML_TYPES.get(found.group(2), found.group(2))
        return dotted(segments), f"expected {' or '.join(wants)}, got {got}"
    if msg.startswith("Expected `str` matching regex") and isinstance(tinfo, mi.StrType):
        return dotted(segments), _PATTERN_WORDS.get(tinfo.pattern or "", msg)
    if found := re.match(r"^Expected `(\w+)` (.*)$", msg, re.S):
        want = _TOML_TYPES.get(found.group(1), found.group(1))
        return dotted(segments), f"must be {want} {found.group(2)}"
    return dotted(segments), msg


def _segments(path: str) -> list[Segment]:
    return [int(index) if index else name for name, index in _SEG_RE.findall(path)]


def _value_at(segments: list[Segment], data: Any) -> Any:
    for seg in segments:
        try:
            data = data[seg]
        except (KeyError, IndexError, TypeError):
            return None
    return data


class _Tags:
    """The tag key of a tagged union (``snmp.version``): its choices are the members' tags."""

    def __init__(self, union: mi.UnionType) -> None:
        self.values = [u.tag for u in union.types if isinstance(u, mi.StructType)]


def _type_at(segments: list[Segment], data: Any) -> mi.Type | _Tags | None:
    """The schema type at ``segments`` (None if the path leaves the schema)."""
    t: mi.Type | None = mi.type_info(Inventory)
    for seg in segments:
        if isinstance(seg, str) and isinstance(t, mi.UnionType) and _is_tag(t, seg):
            return _Tags(t)
        t = _pick_struct(t, data)
        if isinstance(seg, str) and isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == seg), None)
        elif isinstance(seg, int) and isinstance(t, mi.VarTupleType | mi.ListType):
            t = t.item_type
        else:
            return None
        data = _value_at([seg], data)
    return _pick_struct(t, data)


def _is_tag(t: mi.UnionType, seg: str) -> bool:
    return any(isinstance(u, mi.StructType) and u.tag_field == seg for u in t.types)


def _pick_struct(t: mi.Type | None, data: Any) -> mi.Type | None:
    """Strip ``X | None``; for a tagged union choose the member named by the data's tag."""
    if not isinstance(t, mi.UnionType):
        return t
    members = [u for u in t.types if not isinstance(u, mi.NoneType)]
    if len(members) == 1:
        return members[0]
    tagged = [u for u in members if isinstance(u, mi.StructType) and u.tag_field]
    if tagged and isinstance(data, Mapping):
        tag = data.get(tagged[0].tag_field)
        for u in tagged:
            if u.tag == tag:
                return u
    return t


def _known_keys(t: mi.Type | _Tags | None, data: Any) -> list[str]:
    if isinstance(t, _Tags):
        return []
    t = _pick_struct(t, data)
    if isinstance(t, mi.StructType):
        return ([t.tag_field] if t.tag_field else []) + [f.encode_name for f in t.fields]
    if isinstance(t, mi.UnionType):
        keys: list[str] = []
        for u in t.types:
            keys += [k for k in _known_keys(u, None) if k not in keys]
        return keys
    return []


def _choices(t: mi.Type | _Tags | None) -> list[Any]:
    if isinstance(t, mi.LiteralType):
        return list(t.values)
    if isinstance(t, _Tags):
        return t.values
    return []


# --------------------------------------------------------------------------------------------
# Rules beyond the schema


_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SERIAL_RE = re.compile(r"/[^\s\x00]+|[a-z][a-z0-9+]*://\S+")
_GH_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_GH_REPO_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_GH_SCOPE_RE = re.compile(rf"{_GH_OWNER}(?:/[A-Za-z0-9._-]{{1,100}})?")
# an OCI reference, as the job spec takes it (jobs/spec.py; the inventory does not import the jobs)
_IMAGE_REF = (
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


def normalise_mac(mac: str) -> str:
    """``AA-BB-CC-DD-EE-FF`` or ``aa:BB:...`` -> ``aa:bb:cc:dd:ee:ff``; ValueError if not a MAC.
    One separator throughout: ``-`` or ``:``, not a mix."""
    if not _MAC_RE.fullmatch(mac):
        raise ValueError("not a MAC address: six hex pairs separated by ':' or '-'")
    return mac.lower().replace("-", ":")


def is_host(text: str) -> bool:
    """An IPv4/IPv6 address or a DNS host name (RFC 1123 labels; the last one not all digits)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    labels = text.split(".")
    return (
        len(text) <= 253
        and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError if not that."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [addr]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = listen.rpartition(":")
        if not sep:
            raise ValueError("must be host:port")
        if not is_host(host) or ":" in host:
            raise ValueError(f"{host!r} is not a host name or IPv4 address (IPv6: [addr]:port)")
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not 0-65535")
    return host, int(port)


def sqlite_path(url: str) -> str | None:
    """The file path of a ``sqlite:///path`` URL (``sqlite:////abs`` is absolute), else None."""
    prefix = "sqlite:///"
    return url[len(prefix) :] if url.startswith(prefix) else None


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def fail(self, key: str, detail: str) -> ConfigError:
        return ConfigError(str(self.path), key, detail)

    def check(self, inv: Inventory) -> Inventory:
        self.enrolment(inv)
        return msgspec.structs.replace(
            inv,
            broker=self.broker(inv.broker),
            store=self.store(inv.store),
            api=self.api(inv.api),
            boot=self.boot(inv.boot),
            switches=self.switches(inv.switches),
            nodes=self.nodes(inv.nodes, inv.switches),
            health_checks=self.health_checks(inv.health_checks),
            github=self.github(inv.github),
        )

    def enrolment(self, inv: Inventory) -> None:
        b = inv.boot
        if not b.enroll:
            return
        if not b.enabled:
            raise self.fail("boot.enroll", "needs boot.enabled = true (machines enrol when they ask to boot)")
        if inv.broker.mode != "managed":
            raise self.fail(
                "boot.enroll", "needs broker.mode = 'managed' (it adds an enrolled node's broker user)"
            )
        for j, label in _duplicates(b.enroll_labels):
            raise self.fail(f"boot.enroll_labels[{j}]", f"label {label!r} listed twice")

    def github(self, g: GitHubConfig | None) -> GitHubConfig | None:
        if g is None:
            return None
        if not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", g.api_url):
            raise self.fail("github.api_url", f"{g.api_url!r} is not an http(s) URL")
        names: dict[str, int] = {}
        for i, pool in enumerate(g.pools):
            key = f"github.pools[{i}]"
            if pool.name in names:
                raise self.fail(
                    f"{key}.name",
                    f"duplicate pool name {pool.name!r} (also github.pools[{names[pool.name]}])",
                )
            names[pool.name] = i
            if not _GH_SCOPE_RE.fullmatch(pool.scope):
                raise self.fail(
                    f"{key}.scope",
                    f"{pool.scope!r} is neither an organisation (ORG) nor a repository (OWNER/REPO)",
                )
            if pool.repositories and "/" in pool.scope:
                raise self.fail(f"{key}.repositories", "only for an organisation scope")
            for j, repo in enumerate(pool.repositories):
                if not _GH_REPO_RE.fullmatch(repo):
                    raise self.fail(f"{key}.repositories[{j}]", f"{repo!r} is not a repository name")
            if not any("{jitconfig}" in arg for arg in pool.command):
                raise self.fail(
                    f"{key}.command", "must pass the runner its config: no argument holds {jitconfig}"
                )
            if pool.image and not re.fullmatch(_IMAGE_REF, pool.image):
                raise self.fail(f"{key}.image", f"{pool.image!r} is not an OCI image reference")
        app = {
            "app_id": g.app_id,
            "installation_id": g.installation_id,
            "private_key_file": g.private_key_file,
        }
        given = [k for k, v in app.items() if v is not None]
        if g.token_file is not None and given:
            raise self.fail(f"github.{given[0]}", "give either token_file or a GitHub App, not both")
        if given and len(given) < len(app):
            missing = ", ".join(k for k in app if k not in given)
            raise self.fail(f"github.{given[0]}", f"a GitHub App also needs {missing}")
        if g.token_file is None and not given:
            raise self.fail("github.token_file", "required (or app_id, installation_id and private_key_file)")
        return msgspec.structs.replace(
            g,
            api_url=g.api_url.rstrip("/"),
            token_file=self.file("github.token_file", g.token_file),
            private_key_file=self.file("github.private_key_file", g.private_key_file),
            webhook_secret_file=self.file("github.webhook_secret_file", g.webhook_secret_file)
            or g.webhook_secret_file,
        )

    def health_checks(self, checks: tuple[HealthCheck, ...]) -> tuple[HealthCheck, ...]:
        for i, check in enumerate(checks):
            if (check.command is None) == (check.script is None):
                raise self.fail(f"health_checks[{i}].command", "give exactly one of command and script")
            if check.command is not None and not check.command:
                raise self.fail(f"health_checks[{i}].command", "must not be empty")
        return checks

    def file(self, key: str, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            resolved = (self.base / value).resolve()
            found = resolved.is_file()
        except (OSError, ValueError) as exc:  # a name too long, an embedded NUL
            raise self.fail(key, f"not a usable file path: {exc}") from None
        if not found:
            raise self.fail(key, f"no such file: {resolved}")
        return str(resolved)

    def host(self, key: str, value: str) -> None:
        if not is_host(value):
            raise self.fail(key, f"{value!r} is not a host name or IP address")

    def broker(self, b: BrokerConfig) -> BrokerConfig:
        self.host("broker.host", b.host)
        if (b.certfile is None) != (b.keyfile is None):
            given, missing = ("certfile", "keyfile") if b.keyfile is None else ("keyfile", "certfile")
            raise self.fail(f"broker.{given}", f"given without {missing}: they go together")
        if b.mode == "managed":
            if b.username is not None or b.password_file is not None:
                key = "broker.username" if b.username is not None else "broker.password_file"
                raise self.fail(key, "only for mode = 'external' (a managed broker's credentials are made)")
            if b.cafile is not None and b.certfile is None:
                raise self.fail("broker.cafile", "a managed broker serves TLS only with certfile and keyfile")
        else:
            if b.port == 0:
                raise self.fail("broker.port", "an external broker needs its port (1-65535): missing or 0")
            if (b.username is None) != (b.password_file is None):
                given, missing = (
                    ("username", "password_file")
                    if b.password_file is None
                    else ("password_file", "username")
                )
                raise self.fail(f"broker.{given}", f"given without {missing}: they go together")
        return msgspec.structs.replace(
            b,
            cafile=self.file("broker.cafile", b.cafile),
            certfile=self.file("broker.certfile", b.certfile),
            keyfile=self.file("broker.keyfile", b.keyfile),
            password_file=self.file("broker.password_file", b.password_file),
        )

    def store(self, s: StoreConfig) -> StoreConfig:
        db = sqlite_path(s.url)
        if db is not None:
            if db in ("", ":memory:") or db.endswith("/"):
                raise self.fail("store.url", "needs a database file: sqlite:///path/to/file.db")
            try:
                resolved = (self.base / db).resolve()
            except (OSError, ValueError) as exc:
                raise self.fail("store.url", f"not a usable file path: {exc}") from None
            return StoreConfig(url=f"sqlite:///{resolved}")
        if s.url.startswith("postgresql://") and len(s.url) > len("postgresql://"):
            return s
        raise self.fail(
            "store.url",
            "must be sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://...",
        )

    def api(self, a: ApiConfig) -> ApiConfig:
        try:
            _split_listen(a.listen)
        except ValueError as exc:
            raise self.fail("api.listen", str(exc)) from None
        return a

    def boot(self, b: BootConfig) -> BootConfig:
        try:
            host, _ = _split_listen(b.listen)
        except ValueError as exc:
            raise self.fail("boot.listen", str(exc)) from None
        if b.advertise is not None:
            try:
                ipaddress.IPv4Address(b.advertise)
            except ValueError:
                raise self.fail(
                    "boot.advertise", f"{b.advertise!r} is not an IPv4 address (a Pi's bootloader has no DNS)"
                ) from None
        elif b.enabled and host in ("0.0.0.0", "::"):
            raise self.fail("boot.advertise", f"required when boot.listen is the wildcard {host}")
        d = b.dhcp
        if d.mode == "off":
            return b
        for field in ("interface", "subnet"):
            if getattr(d, field) is None:
                raise self.fail(f"boot.dhcp.{field}", f"required when boot.dhcp.mode = {d.mode!r}")
        if b.advertise is None:
            raise self.fail("boot.advertise", "required with DHCP: the address DHCP names as the boot server")
        try:
            net = ipaddress.IPv4Network(d.subnet or "", strict=True)
        except ValueError as exc:
            raise self.fail("boot.dhcp.subnet", f"{d.subnet!r} is not an IPv4 network: {exc}") from None
        if ipaddress.IPv4Address(b.advertise) not in net:
            raise self.fail("boot.advertise", f"{b.advertise} is not in boot.dhcp.subnet {net}")
        full_only = ("range_start", "range_end", "router")
        if d.mode == "proxy":
            for field in full_only:
                if getattr(d, field) is not None:
                    raise self.fail(f"boot.dhcp.{field}", "only for mode = 'full' (proxy-DHCP leases none)")
            return b
        for field in ("range_start", "range_end"):
            if getattr(d, field) is None:
                raise self.fail(f"boot.dhcp.{field}", "required when boot.dhcp.mode = 'full'")
        addrs: dict[str, ipaddress.IPv4Address] = {}
        for field in full_only:
            value = getattr(d, field)
            if value is None:
                continue
            try:
                addrs[field] = ipaddress.IPv4Address(value)
            except ValueError:
                raise self.fail(f"boot.dhcp.{field}", f"{value!r} is not an IPv4 address") from None
            if addrs[field] not in net:
                raise self.fail(f"boot.dhcp.{field}", f"{value} is not in boot.dhcp.subnet {net}")
        if addrs["range_start"] > addrs["range_end"]:
            raise self.fail("boot.dhcp.range_end", "comes before range_start")
        return b

    def switches(self, switches: tuple[Switch, ...]) -> tuple[Switch, ...]:
        names: dict[str, int] = {}
        endpoints: dict[tuple[str, int, int], int] = {}
        for i, sw in enumerate(switches):
            key = f"switches[{i}]"
            if sw.name in names:
                raise self.fail(
                    f"{key}.name", f"duplicate switch name {sw.name!r} (also switches[{names[sw.name]}])"
                )
            names[sw.name] = i
            self.host(f"{key}.address", sw.address)
            endpoint = (sw.address.lower(), sw.port, sw.pse_group)
            if endpoint in endpoints:
                raise self.fail(
                    f"{key}.address",
                    f"same address, port and pse_group as switches[{endpoints[endpoint]}]",
                )
            endpoints[endpoint] = i
            for j, port in _duplicates(sw.uplink_ports):
                raise self.fail(f"{key}.uplink_ports[{j}]", f"port {port} listed twice")
        return switches

    def nodes(self, nodes: tuple[Node, ...], switches: tuple[Switch, ...]) -> tuple[Node, ...]:
        by_switch = {sw.name: sw for sw in switches}
        names: dict[str, int] = {}
        macs: dict[str, int] = {}
        ports: dict[tuple[str, int], int] = {}
        racks: dict[tuple[int, int], int] = {}
        devices: dict[str, str] = {}
        out = []
        for i, node in enumerate(nodes):
            key = f"nodes[{i}]"
            if node.name in names:
                raise self.fail(
                    f"{key}.name", f"duplicate node name {node.name!r} (also nodes[{names[node.name]}])"
                )
            names[node.name] = i
            try:
                mac = normalise_mac(node.mac)
            except ValueError as exc:
                raise self.fail(f"{key}.mac", f"{node.mac!r} is {exc}") from None
            if int(mac[:2], 16) & 1:
                raise self.fail(f"{key}.mac", f"{mac} is a multicast address, not a network card's")
            if mac in macs:
                raise self.fail(f"{key}.mac", f"duplicate MAC {mac} (also nodes[{macs[mac]}])")
            macs[mac] = i
            if (node.switch is None) != (node.port is None):
                given, missing = ("switch", "port") if node.port is None else ("port", "switch")
                raise self.fail(f"{key}.{given}", f"given without {missing}: they go together")
            if node.switch is not None and node.port is not None:
                sw = by_switch.get(node.switch)
                if sw is None:
                    known = ", ".join(by_switch) or "none"
                    raise self.fail(f"{key}.switch", f"no switch named {node.switch!r} (switches: {known})")
                if node.port in sw.uplink_ports:
                    raise self.fail(f"{key}.port", f"port {node.port} is an uplink of switch {sw.name!r}")
                where = (sw.name, node.port)
                if where in ports:
                    raise self.fail(
                        f"{key}.port", f"{sw.name} port {node.port} is also nodes[{ports[where]}]'s"
                    )
                ports[where] = i
            for field in ("bmc_port", "led_port"):
                device = getattr(node, field)
                if device is None:
                    continue
                if not _SERIAL_RE.fullmatch(device):
                    raise self.fail(
                        f"{key}.{field}", "must be a device path (/dev/...) or a pyserial URL (socket://...)"
                    )
                if device in devices:
                    raise self.fail(f"{key}.{field}", f"{device} is also {devices[device]}")
                devices[device] = f"{key}.{field}"
            for j, label in _duplicates(node.labels):
                raise self.fail(f"{key}.labels[{j}]", f"label {label!r} listed twice")
            if node.rack is not None:
                spot = (node.rack.row, node.rack.position)
                if spot in racks:
                    raise self.fail(
                        f"{key}.rack", f"row {spot[0]} position {spot[1]} is also nodes[{racks[spot]}]'s"
                    )
                racks[spot] = i
            out.append(msgspec.structs.replace(node, mac=mac) if mac != node.mac else node)
        return tuple(out)


def _duplicates(items: tuple[Any, ...]) -> Iterator[tuple[int, Any]]:
    seen = set()
    for j, item in enumerate(items):
        if item in seen:
            yield j, item
        seen.add(item)
