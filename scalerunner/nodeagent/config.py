"""The agent's configuration: a TOML file plus the ``scalerunner.*`` keys of the kernel command line.

``parse_cmdline`` and ``parse_config`` are pure (text in, validated data out); ``load_config``
is the thin shell that reads the files. Every failure is a ``ConfigError`` naming the file and
the key, so the CLI can print one line and exit 2.

A node booted from the network runs a generic RAM image: its config file is the same on every
node, and the kernel command line says who it is (``scalerunner.node=``), where the coordinator
is (``scalerunner.url=``) and carries a one-time ``scalerunner.token=`` that ``bootstrap`` trades
for the node's MQTT credentials.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from ..protocol.mqtt import TopicError, check_name
from .runtime import RUNTIMES

DEFAULT_CMDLINE = Path("/proc/cmdline")
DEFAULT_STATE_DIR = Path("/var/lib/scalerunner")
CMDLINE_PREFIX = "scalerunner."
CMDLINE_KEYS = ("url", "node", "token")

_LABEL = r"^[A-Za-z0-9_.:=/-]{1,64}$"  # as payloads.Label: what a NodeState may carry


class ConfigError(ValueError):
    """The configuration in ``source`` is unusable at ``key`` (None: the file as a whole)."""

    def __init__(self, source: str, key: str | None, detail: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {detail}")
        self.source = source
        self.key = key
        self.detail = detail


@dataclass(frozen=True)
class BootParams:
    """What the kernel command line says (all None when not booted by Scalerunner)."""

    url: str | None = None
    node: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    source: str  # the config file, for messages
    cluster: str
    node: str
    broker_host: str
    broker_port: int
    username: str
    password: str | None  # None: only a bootstrap token is available (traded by bootstrap.py)
    tls_ca: Path | None = None
    keepalive: int = 15
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    labels: tuple[str, ...] = ()
    telemetry_interval: float = 5.0
    cpus: int | None = None  # None: os.cpu_count()
    memory_mb: int | None = None  # None: MemTotal from /proc/meminfo
    slots: int = 1
    state_dir: Path = DEFAULT_STATE_DIR
    reboot_command: tuple[str, ...] = ()  # empty: "reboot" is refused
    led_serial: str | None = None
    password_file: Path | None = None
    coordinator_url: str | None = None
    bootstrap_token: str | None = None
    job_runtime: str = "process"  # [jobs] runtime: the registry name in nodeagent/runtime
    job_dir: Path | None = None  # [jobs] dir; None: <state_dir>/jobs
    job_keep_logs: float = 3600.0  # [jobs] keep_logs: seconds a finished attempt's log stays resendable
    image_dir: Path | None = None  # [jobs] images: the unpacked image cache; None: <state_dir>/images
    insecure_registries: tuple[str, ...] = ()  # [jobs] insecure_registries: host:port reached over plain HTTP
    bench_backend: str = "gpiod"  # [jobs] bench: the pin back end of HIL jobs (gpiod, or sim without boards)
    bench_boards: Path | None = None  # [jobs] bench_boards: this node's boards; None: hardware/boards


# -- the file's layout, validated by msgspec ---------------------------------------------

_Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]
_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class _Broker(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    port: _Port | None = None
    tls_ca: str | None = None
    username: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    password: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    password_file: str | None = None
    keepalive: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 15
    reconnect_min: Annotated[float, msgspec.Meta(ge=0.01, le=60)] = 0.5
    reconnect_max: Annotated[float, msgspec.Meta(ge=0.01, le=3600)] = 30.0


class _Telemetry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 5.0


class _Capacity(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cpus: _Positive | None = None
    memory_mb: _Positive | None = None
    slots: Annotated[int, msgspec.Meta(ge=0)] = 1


class _Jobs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    runtime: Annotated[str, msgspec.Meta(min_length=1)] = "process"
    dir: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    keep_logs: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 3600.0
    images: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    insecure_registries: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")]] = []
    bench: Literal["gpiod", "sim"] = "gpiod"
    bench_boards: Annotated[str, msgspec.Meta(min_length=1)] | None = None


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cluster: str
    node: str | None = None
    labels: list[Annotated[str, msgspec.Meta(pattern=_LABEL)]] = []
    state_dir: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    reboot_command: list[Annotated[str, msgspec.Meta(min_length=1)]] = []
    led_serial: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    broker: _Broker = msgspec.field(default_factory=_Broker)
    telemetry: _Telemetry = msgspec.field(default_factory=_Telemetry)
    capacity: _Capacity = msgspec.field(default_factory=_Capacity)
    jobs: _Jobs = msgspec.field(default_factory=_Jobs)


_AT = re.compile(r"^(?P<detail>.*) - at `\$(?P<path>[^`]*)`$")
_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<field>[^`]+)`")


def _where(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """(dotted key, what is wrong) from msgspec's message, e.g. ('broker.port', 'Expected `int` >= 1')."""
    text = str(exc)
    path, detail = "", text
    if m := _AT.match(text):
        path, detail = m["path"], m["detail"]
    key = path.lstrip(".")
    if m := _FIELD.match(detail):
        key = f"{key}.{m['field']}" if key else m["field"]
        detail = "unknown key" if "unknown" in detail else "missing"
    return key or None, detail


# -- pure parsers ---------------------------------------------------------------------------


def parse_cmdline(text: str, *, source: str = str(DEFAULT_CMDLINE)) -> BootParams:
    """The ``scalerunner.url/node/token`` keys of a kernel command line.

    Parameters are separated by blanks; double quotes group blanks into a value and are removed,
    as the kernel does; everything after a lone ``--`` belongs to init and is not read. Other
    parameters, and unknown ``scalerunner.*`` keys, are ignored.
    """
    found: dict[str, str] = {}
    for word in _split_cmdline(text):
        if word == "--":
            break
        name, sep, value = word.partition("=")
        if not name.startswith(CMDLINE_PREFIX) or not sep:
            continue
        key = name[len(CMDLINE_PREFIX) :]
        if key in CMDLINE_KEYS:
            found[key] = value  # the last one wins, as for the kernel's own parameters
    url, node, token = (found.get(k) for k in CMDLINE_KEYS)
    if node is not None:
        try:
            check_name("node", node)
        except TopicError as exc:
            raise ConfigError(source, "scalerunner.node", exc.detail) from exc
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(source, "scalerunner.url", f"expected an http(s) URL with a host, not {url!r}")
    if token is not None and not token:
        raise ConfigError(source, "scalerunner.token", "empty")
    return BootParams(url=url, node=node, token=token)


def _split_cmdline(text: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    quoted = False
    started = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(ch)
            started = True
    if started:
        words.append("".join(word))
    return words


def parse_config(
    text: str,
    *,
    source: str,
    boot: BootParams = BootParams(),
    base_dir: Path = Path("."),
) -> AgentConfig:
    """Validate the TOML ``text`` of the file ``source`` together with the boot parameters.

    Relative paths in the file are taken from ``base_dir`` (the file's directory). The broker
    password file is named here and read by ``load_config``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from exc
    return _from_mapping(data, source=source, boot=boot, base_dir=base_dir)


def _from_mapping(data: Mapping[str, Any], *, source: str, boot: BootParams, base_dir: Path) -> AgentConfig:
    try:
        f = msgspec.convert(data, _File)
    except msgspec.ValidationError as exc:
        key, detail = _where(exc)
        raise ConfigError(source, key, detail) from exc

    def name(key: str, value: str) -> str:
        try:
            return check_name(key, value)
        except TopicError as exc:
            raise ConfigError(source, key, exc.detail) from exc

    cluster = name("cluster", f.cluster)
    if f.node is not None and boot.node is not None and f.node != boot.node:
        raise ConfigError(
            source, "node", f"is {f.node!r} but the kernel command line says scalerunner.node={boot.node}"
        )
    node_name = f.node if f.node is not None else boot.node
    if node_name is None:
        raise ConfigError(source, "node", "missing (set it here or boot with scalerunner.node=)")
    node = name("node", node_name)

    b = f.broker
    host = b.host
    if host is None and boot.url is not None:
        host = urlsplit(boot.url).hostname
    if host is None:
        raise ConfigError(source, "broker.host", "missing (set it here or boot with scalerunner.url=)")
    if b.password is not None and b.password_file is not None:
        raise ConfigError(source, "broker.password", "set broker.password or broker.password_file, not both")
    if b.password is None and b.password_file is None and boot.token is None:
        raise ConfigError(
            source,
            "broker.password",
            "no broker credentials: set broker.password or broker.password_file,"
            " or boot with scalerunner.token= on the kernel command line",
        )
    if b.reconnect_max < b.reconnect_min:
        raise ConfigError(source, "broker.reconnect_max", "is smaller than broker.reconnect_min")

    def path(value: str | None) -> Path | None:
        return None if value is None else base_dir / Path(value).expanduser()

    if f.jobs.runtime not in RUNTIMES:
        raise ConfigError(
            source,
            "jobs.runtime",
            f"unknown runtime {f.jobs.runtime!r}, expected one of {', '.join(RUNTIMES)}",
        )
    tls_ca = path(b.tls_ca)
    return AgentConfig(
        source=source,
        cluster=cluster,
        node=node,
        broker_host=host,
        broker_port=b.port if b.port is not None else (8883 if tls_ca is not None else 1883),
        username=b.username if b.username is not None else node,
        password=b.password,
        tls_ca=tls_ca,
        keepalive=b.keepalive,
        reconnect_min=b.reconnect_min,
        reconnect_max=b.reconnect_max,
        labels=tuple(f.labels),
        telemetry_interval=f.telemetry.interval,
        cpus=f.capacity.cpus,
        memory_mb=f.capacity.memory_mb,
        slots=f.capacity.slots,
        state_dir=path(f.state_dir) or DEFAULT_STATE_DIR,
        reboot_command=tuple(f.reboot_command),
        led_serial=f.led_serial,
        password_file=path(b.password_file),
        coordinator_url=boot.url,
        bootstrap_token=boot.token,
        job_runtime=f.jobs.runtime,
        job_dir=path(f.jobs.dir),
        job_keep_logs=f.jobs.keep_logs,
        image_dir=path(f.jobs.images),
        insecure_registries=tuple(f.jobs.insecure_registries),
        bench_backend=f.jobs.bench,
        bench_boards=path(f.jobs.bench_boards),
    )


# -- the shell --------------------------------------------------------------------------------


def load_config(path: Path, *, cmdline: Path = DEFAULT_CMDLINE) -> AgentConfig:
    """Read and validate ``path`` and the kernel command line ``cmdline`` (absent: not netbooted)."""
    source = str(path)
    try:
        boot_text = cmdline.read_text(errors="replace")
    except FileNotFoundError:
        boot_text = ""
    except OSError as exc:
        raise ConfigError(str(cmdline), None, f"cannot read: {exc.strerror or exc}") from exc
    boot = parse_cmdline(boot_text, source=str(cmdline))
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, f"not UTF-8: {exc.reason}") from exc
    config = parse_config(text, source=source, boot=boot, base_dir=path.parent)
    if config.tls_ca is not None:
        if not os.access(config.tls_ca, os.R_OK):
            raise ConfigError(source, "broker.tls_ca", f"cannot read {config.tls_ca}")
        import ssl  # only with TLS configured (asyncio loads it anyway)

        try:
            ssl.create_default_context(cafile=str(config.tls_ca))
        except ssl.SSLError as exc:
            raise ConfigError(source, "broker.tls_ca", f"{config.tls_ca} is not a PEM CA bundle") from exc
    if config.password_file is not None:
        try:
            secret = config.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                source, "broker.password_file", f"cannot read {config.password_file}: {exc.strerror or exc}"
            ) from exc
        if not secret:
            raise ConfigError(source, "broker.password_file", f"{config.password_file} is empty")
        config = dataclasses.replace(config, password=secret)
    return config
