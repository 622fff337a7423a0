"""The broker part of the coordinator: a supervised mosquitto, or the description of an external one.

``ManagedBroker`` writes mosquitto's files into ``<state_dir>/broker/``, starts
``mosquitto -c mosquitto.conf`` as its child, waits until the port accepts connections,
restarts it with back-off if it dies, applies node changes through the dynamic-security
plugin's control API (SIGHUP does not reload the plugin), and on ``stop()`` terminates and
reaps it. ``ExternalBroker`` starts nothing: it says where the broker is and
how the coordinator logs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import aiomqtt

from ...atomic import atomic_write
from ..errors import BrokerError, ConfigError, UnknownNode
from .config import (
    COORDINATOR_USER,
    DYNSEC_TOPIC,
    BrokerAccess,
    BrokerFiles,
    MosquittoConfig,
    TlsFiles,
    connect_host,
    dynsec_commands,
    format_endpoint,
    render_conf,
    render_dynsec,
)
from .credentials import dynsec_hash, ensure_credentials, load_credentials

__all__ = ["Broker", "ExternalBroker", "ManagedBroker", "restart_delay", "terminate"]

log = logging.getLogger("scalerunner.coordinator.broker")

CREDENTIALS_FILE = "broker-credentials.json"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
# Where Debian (multiarch), other distributions and a source build put the plugin.
PLUGIN_DIRS = ("/usr/lib/*-linux-gnu", "/usr/lib", "/usr/local/lib")


def find_dynsec_plugin(dirs: Iterable[str] = PLUGIN_DIRS) -> Path | None:
    """mosquitto's dynamic-security plugin (Debian's package ``mosquitto`` ships it)."""
    for d in dirs:
        for candidate in sorted(Path("/").glob(f"{d.lstrip('/')}/{PLUGIN_NAME}")):
            if candidate.is_file():
                return candidate
    return None


class Broker(Protocol):
    """What the coordinator's app needs of its broker, managed or external."""

    @property
    def endpoint(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def access(self) -> BrokerAccess: ...

    def node_password(self, node: str) -> str: ...


def restart_delay(failures: int, initial: float, cap: float) -> float:
    """Seconds to wait before restart number ``failures`` (1, 2, ...) of a run of quick deaths:
    ``initial`` doubling each time, at most ``cap``."""
    return float(min(cap, initial * 2 ** max(0, failures - 1)))


async def terminate(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Stop a supervised child: SIGTERM, then SIGKILL if it is still there after ``grace`` s."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class ManagedBroker:
    """mosquitto as a supervised child process; ``start()``/``stop()``/``reload(nodes)``.

    ``port=0`` picks a free port at ``start()``; it is then kept across restarts, so clients
    reconnect to the same address. Raises BrokerError (``endpoint`` host:port) when mosquitto
    cannot be started, with the tail of its log; ConfigError for a bad name or value.
    """

    def __init__(
        self,
        cluster: str,
        state_dir: Path,
        nodes: Iterable[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsFiles | None = None,
        coordinator_user: str = COORDINATOR_USER,
        mosquitto: str = "mosquitto",
        plugin: Path | None = None,
        ready_timeout: float = 5.0,
        reload_timeout: float = 2.0,
        restart_initial: float = 0.25,
        restart_cap: float = 30.0,
        stable_after: float = 30.0,
    ) -> None:
        # mosquitto started as root switches to `user` (default "mosquitto"), which could not
        # read the 0600 files written here; naming our own account keeps it as it is.
        plugin = plugin if plugin is not None else find_dynsec_plugin()
        self._plugin_missing = plugin is None
        self._config = MosquittoConfig(
            cluster=cluster,
            host=host,
            port=port,
            nodes=tuple(nodes),
            coordinator_user=coordinator_user,
            tls=tls,
            run_as=pwd.getpwuid(os.geteuid()).pw_name,
            **({"plugin": plugin} if plugin is not None else {}),
        )
        self.state_dir = state_dir.absolute()
        self.files = BrokerFiles(self.state_dir / "broker")
        self.credentials_path = self.state_dir / CREDENTIALS_FILE
        # Debian installs mosquitto in /usr/sbin, which is not on an ordinary user's PATH.
        self._mosquitto = (
            shutil.which(mosquitto) or shutil.which(mosquitto, path="/usr/sbin:/usr/local/sbin") or mosquitto
        )
        self._ready_timeout = ready_timeout
        self._reload_timeout = reload_timeout
        self._restart_initial = restart_initial
        self._restart_cap = restart_cap
        self._stable_after = stable_after
        self._passwords: Mapping[str, str] = MappingProxyType({})
        self._proc: asyncio.subprocess.Process | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ready = False
        self._stopping = False
        self._started_at = 0.0
        self.restarts = 0
        self.failed_restarts = 0

    # -- what others read ------------------------------------------------------------------

    @property
    def config(self) -> MosquittoConfig:
        return self._config

    @property
    def host(self) -> str:
        return self._config.host

    @property
    def port(self) -> int:
        """The listening port (the picked one after ``start()`` when configured as 0)."""
        return self._config.port

    @property
    def endpoint(self) -> str:
        return format_endpoint(self._config.host, self._config.port)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._config.nodes

    @property
    def pid(self) -> int | None:
        """The running mosquitto's PID, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        """True while mosquitto is up and has accepted a connection since it was (re)started."""
        return self._ready and self.pid is not None

    def access(self) -> BrokerAccess:
        """How the coordinator connects: address, its user name and password, the CA file."""
        password = self._passwords.get(self._config.coordinator_user)
        if password is None:
            raise BrokerError(self.endpoint, "not started: no credentials loaded yet")
        tls = self._config.tls
        return BrokerAccess(
            host=connect_host(self._config.host),
            port=self._config.port,
            username=self._config.coordinator_user,
            password=password,
            cafile=tls.cafile if tls else None,
            tls=tls is not None,
        )

    def node_password(self, node: str) -> str:
        """The broker password of ``node``; UnknownNode if it is not one of the broker's nodes."""
        if node not in self._config.nodes:
            raise UnknownNode(node)
        password = self._passwords.get(node)
        if password is None:  # not started yet: the file is the truth
            password = load_credentials(self.credentials_path).get(node)
        if password is None:
            raise UnknownNode(node)
        return password

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._watch_task is not None:
            raise BrokerError(self.endpoint, "already started")
        if self._plugin_missing:
            raise BrokerError(
                self.endpoint,
                f"mosquitto's {PLUGIN_NAME} not found in {', '.join(PLUGIN_DIRS)}"
                " (Debian's package mosquitto ships it)",
            )
        self._stopping = False
        self.files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(self._kill_leftover)
        if self.files.log.exists():
            os.replace(self.files.log, self.files.log.with_name(self.files.log.name + ".1"))
        auto = self._config.port == 0
        # A picked port is kept across coordinator restarts too: agents were configured with it
        # and reconnect only there. The previous run's mosquitto.conf says which one it was.
        previous = _previous_port(self.files.conf) if auto else None
        attempts = 3 if auto else 1
        async with self._lock:
            for attempt in range(1, attempts + 1):
                try:
                    if not auto:
                        port = self._config.port
                    elif attempt == 1 and previous and _port_free(self._config.host, previous):
                        port = previous
                    else:
                        port = _free_port(self._config.host)
                except OSError as exc:
                    raise BrokerError(self.endpoint, f"cannot listen on {self._config.host}: {exc}") from exc
                self._config = replace(self._config, port=port)
                if not auto and not _port_free(self._config.host, port):
                    raise BrokerError(self.endpoint, "the port is already in use by another process")
                await self._write_files()
                try:
                    await self._launch()
                    break
                except BrokerError as exc:
                    # a port picked as free can be taken before mosquitto binds it: pick again
                    if attempt == attempts or "Address already in use" not in exc.detail:
                        if auto:
                            self._config = replace(self._config, port=0)
                        raise
        self._watch_task = asyncio.create_task(self._watch(), name="broker-watch")
        log.info(
            "broker started",
            extra={"endpoint": self.endpoint, "pid": self.pid, "nodes": len(self._config.nodes)},
        )

    async def stop(self) -> None:
        """Terminate mosquitto (SIGTERM, then SIGKILL after 5 s) and reap it. Idempotent."""
        self._stopping = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        proc, self._proc = self._proc, None
        if proc is not None:
            await self._terminate(proc)
            log.info("broker stopped", extra={"endpoint": self.endpoint, "returncode": proc.returncode})
        self._ready = False

    async def reload(self, nodes: Iterable[str]) -> None:
        """Make ``nodes`` the broker's nodes: new ones get credentials, removed ones lose theirs,
        the others keep theirs. The files are rewritten (for the next start) and the running
        mosquitto is told through the dynamic-security plugin's control API, as the coordinator:
        no restart, connected clients stay connected, a removed node's connection is closed.
        Returns once the plugin has answered; BrokerError if it refused a command."""
        new = replace(self._config, nodes=tuple(nodes))  # ConfigError before anything changes
        async with self._lock:
            old_nodes = set(self._config.nodes)
            self._config = new
            if self._watch_task is None:
                return  # not started: start() writes the files
            await self._write_files()
            added = [n for n in new.nodes if n not in old_nodes]
            removed = tuple(sorted(old_nodes - set(new.nodes)))
            extra = {"endpoint": self.endpoint, "added": added, "removed": list(removed)}
            proc = self._proc
            if proc is None or proc.returncode is not None or not self._ready:
                log.info("broker files updated; mosquitto is restarting and will read them", extra=extra)
                return
            if not added and not removed:
                return
            commands = dynsec_commands(new, {n: self._passwords[n] for n in added}, removed)
            await self._control(commands)
            log.info("broker reloaded", extra={**extra, "pid": proc.pid})

    async def _control(self, commands: list[dict[str, Any]]) -> None:
        """Send ``commands`` to the plugin's control API and check every answer."""
        access = self.access()
        corr = f"scalerunner-{os.getpid()}-{time.monotonic_ns()}"
        for i, cmd in enumerate(commands):
            cmd["correlationData"] = f"{corr}-{i}"
        client = aiomqtt.Client(
            access.host,
            access.port,
            username=access.username,
            password=access.password,
            identifier=f"scalerunner-broker-control-{os.getpid()}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=access.tls_context(),
        )
        answered: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(self._reload_timeout), client:
                await client.subscribe(f"{DYNSEC_TOPIC}/response", qos=1)
                await client.publish(DYNSEC_TOPIC, json.dumps({"commands": commands}), qos=1)
                async for message in client.messages:
                    payload = message.payload
                    raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
                    for answer in json.loads(raw).get("responses", []):
                        answered[str(answer.get("correlationData"))] = answer
                    if all(c["correlationData"] in answered for c in commands):
                        break
        except (TimeoutError, aiomqtt.MqttError, ValueError) as exc:
            raise BrokerError(
                self.endpoint, f"the dynamic-security control API did not answer: {exc or 'timeout'}"
            ) from exc
        refused = [
            f"{a.get('command')}: {a['error']}"
            for c in commands
            if (a := answered[c["correlationData"]]).get("error")
        ]
        if refused:
            raise BrokerError(self.endpoint, "the dynamic-security plugin refused " + "; ".join(refused))

    # -- inside ----------------------------------------------------------------------------

    async def _write_files(self) -> None:
        cfg = self._config
        passwords = await asyncio.to_thread(ensure_credentials, self.credentials_path, cfg.users)
        hashes = await asyncio.to_thread(lambda: {user: dynsec_hash(passwords[user]) for user in cfg.users})
        try:
            atomic_write(self.files.dynsec, render_dynsec(cfg, hashes).encode(), 0o600)
            atomic_write(self.files.conf, render_conf(cfg, self.files).encode(), 0o600)
        except OSError as exc:
            raise BrokerError(
                self.endpoint, f"cannot write the broker files in {self.files.directory}: {exc}"
            ) from exc
        for stale in ("passwd", "acl"):  # an older coordinator's password and ACL files
            (self.files.directory / stale).unlink(missing_ok=True)
        self._passwords = passwords

    async def _launch(self) -> None:
        """Start mosquitto and wait until its port accepts a connection; on failure nothing is
        left running and BrokerError carries the tail of what mosquitto logged."""
        offset = _size(self.files.log)
        self._ready = False
        logfd = os.open(self.files.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._mosquitto,
                "-c",
                str(self.files.conf),
                stdin=subprocess.DEVNULL,
                stdout=logfd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the coordinator's Ctrl-C is for the coordinator
            )
        except OSError as exc:
            raise BrokerError(self.endpoint, f"cannot run {self._mosquitto}: {exc}") from exc
        finally:
            os.close(logfd)
        self._proc = proc
        try:
            atomic_write(self.files.pid, f"{proc.pid}\n".encode(), 0o644)
            await self._wait_ready(proc, offset)
        except BaseException:
            await self._terminate(proc)
            raise
        self._ready = True
        self._started_at = time.monotonic()

    async def _wait_ready(self, proc: asyncio.subprocess.Process, offset: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        host = connect_host(self._config.host)
        probe_tls: ssl.SSLContext | None = None
        if self._config.tls is not None:
            # A liveness probe only (no credentials are sent): complete a handshake so that
            # mosquitto does not log a TLS error for every start; who it is does not matter here.
            probe_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe_tls.check_hostname = False
            probe_tls.verify_mode = ssl.CERT_NONE
        while True:
            if proc.returncode is not None:
                raise BrokerError(
                    self.endpoint,
                    f"mosquitto exited with code {proc.returncode} before accepting connections; "
                    f"its log: {self._log_tail(offset)}",
                )
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, self._config.port, ssl=probe_tls), 0.5
                )
            except (OSError, TimeoutError):  # ssl.SSLError is an OSError
                pass
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                if proc.returncode is None:
                    return
                continue
            if loop.time() >= deadline:
                raise BrokerError(
                    self.endpoint,
                    f"mosquitto did not accept connections within {self._ready_timeout:g} s; "
                    f"its log: {self._log_tail(offset)}",
                )
            await asyncio.sleep(0.05)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        await terminate(proc)
        if self._proc is proc:
            self._ready = False
        self.files.pid.unlink(missing_ok=True)

    async def _watch(self) -> None:
        """Restart mosquitto whenever it dies, backing off while it keeps dying quickly."""
        failures = 0
        while True:
            proc = self._proc
            assert proc is not None
            returncode = await proc.wait()
            self._ready = False
            if self._stopping:
                return
            self.files.pid.unlink(missing_ok=True)
            uptime = time.monotonic() - self._started_at
            failures = 1 if uptime >= self._stable_after else failures + 1
            log.warning(
                "broker exited",
                extra={
                    "endpoint": self.endpoint,
                    "pid": proc.pid,
                    "returncode": returncode,
                    "uptime_s": round(uptime, 3),
                    "restarts": self.restarts,
                },
            )
            while True:
                delay = restart_delay(failures, self._restart_initial, self._restart_cap)
                await asyncio.sleep(delay)
                async with self._lock:
                    try:
                        await self._launch()
                    except BrokerError as exc:
                        self.failed_restarts += 1
                        failures += 1
                        log.error(
                            "broker restart failed",
                            extra={
                                "endpoint": self.endpoint,
                                "attempt": failures,
                                "delay_s": delay,
                                "failed_restarts": self.failed_restarts,
                                "error": exc.detail,
                            },
                        )
                        continue
                self.restarts += 1
                log.warning(
                    "broker restarted",
                    extra={
                        "endpoint": self.endpoint,
                        "pid": self.pid,
                        "delay_s": delay,
                        "restarts": self.restarts,
                    },
                )
                break

    def _log_tail(self, offset: int, lines: int = 8) -> str:
        try:
            text = _read_from(self.files.log, offset).decode(errors="replace")
        except OSError as exc:
            return f"(unreadable: {exc})"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) if tail else "(empty)"

    def _kill_leftover(self) -> None:
        """End a mosquitto that an earlier run of this coordinator left behind (it crashed
        before it could stop it): the PID in our pid file, if that process runs our config."""
        try:
            pid = int(self.files.pid.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        if (
            argv
            and "mosquitto" in os.path.basename(argv[0].decode(errors="replace"))
            and (str(self.files.conf).encode() in argv)
        ):
            log.warning("ending a mosquitto left by an earlier run", extra={"pid": pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 3.0
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self.files.pid.unlink(missing_ok=True)


@dataclass(frozen=True)
class ExternalBroker:
    """A broker someone else runs (``mode = "external"``): nothing is started or written.

    ``password_file`` holds the coordinator's password (its first line). ``node_credentials``,
    if given, is a credentials file in the managed broker's format holding the nodes'
    passwords, for handing to booting nodes; otherwise node credentials are the operator's.
    """

    host: str
    port: int
    username: str
    password_file: Path
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    tls: bool = False
    node_credentials: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError("broker", "port", f"an external broker needs a real port, not {self.port}")
        if not self.host:
            raise ConfigError("broker", "host", "an external broker needs a host")

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.cafile is not None or self.certfile is not None

    async def start(self) -> None:
        """Nothing to start; checks that the coordinator's password can be read."""
        self.access()

    async def stop(self) -> None:
        return None

    def access(self) -> BrokerAccess:
        try:
            lines = self.password_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(str(self.password_file), "", f"cannot read the broker password: {exc}") from exc
        password = lines[0].strip() if lines else ""
        if not password:
            raise ConfigError(str(self.password_file), "", "the broker password file is empty")
        return BrokerAccess(
            host=self.host,
            port=self.port,
            username=self.username,
            password=password,
            cafile=self.cafile,
            certfile=self.certfile,
            keyfile=self.keyfile,
            tls=self.uses_tls,
        )

    def node_password(self, node: str) -> str:
        if self.node_credentials is None:
            raise BrokerError(
                self.endpoint, f"node {node}: the external broker's node credentials are not known here"
            )
        password = load_credentials(self.node_credentials).get(node)
        if password is None:
            raise UnknownNode(node)
        return password


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read()


def _family(host: str) -> socket.AddressFamily:
    try:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return socket.AF_INET
    return info[0][0]


def _previous_port(conf: Path) -> int | None:
    """The port in the ``listener`` line of a mosquitto.conf written by an earlier start."""
    try:
        lines = conf.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "listener" and fields[1].isdigit():
            port = int(fields[1])
            return port if 0 < port < 65536 else None
    return None


def _free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now (the kernel's choice)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE  # any other trouble: mosquitto will say it
        return True
