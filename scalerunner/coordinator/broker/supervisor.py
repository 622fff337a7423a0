"""The broker part of the coordinator: a supervised mosquitto, or the description of an external one.

``ManagedBroker`` writes mosquitto's files into ``<state_dir>/broker/``, starts
``mosquitto -c mosquitto.conf`` as its child, waits until the port accepts connections,
restarts it with back-off if it dies, applies node changes by SIGHUP, and on ``stop()``
terminates and reaps it. ``ExternalBroker`` starts nothing: it says where the broker is and
how the coordinator logs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
from typing import Protocol

from ...atomic import atomic_write
from ..errors import BrokerError, ConfigError, UnknownNode
from .config import (
    COORDINATOR_USER,
    BrokerAccess,
    BrokerFiles,
    MosquittoConfig,
    TlsFiles,
    connect_host,
    format_endpoint,
    render_acl,
    render_conf,
)
from .credentials import ensure_credentials, load_credentials, write_password_file

__all__ = ["Broker", "ExternalBroker", "ManagedBroker", "restart_delay"]

log = logging.getLogger("scalerunner.coordinator.broker")

CREDENTIALS_FILE = "broker-credentials.json"
_RELOAD_LINE = b"Reloading config."


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
        mosquitto_passwd: str = "mosquitto_passwd",
        ready_timeout: float = 5.0,
        reload_timeout: float = 2.0,
        restart_initial: float = 0.25,
        restart_cap: float = 30.0,
        stable_after: float = 30.0,
    ) -> None:
        # mosquitto started as root switches to `user` (default "mosquitto"), which could not
        # read the 0600 files written here; naming our own account keeps it as it is.
        self._config = MosquittoConfig(
            cluster=cluster,
            host=host,
            port=port,
            nodes=tuple(nodes),
            coordinator_user=coordinator_user,
            tls=tls,
            run_as=pwd.getpwuid(os.geteuid()).pw_name,
        )
        self.state_dir = state_dir.absolute()
        self.files = BrokerFiles(self.state_dir / "broker")
        self.credentials_path = self.state_dir / CREDENTIALS_FILE
        # Debian installs mosquitto in /usr/sbin, which is not on an ordinary user's PATH.
        self._mosquitto = (
            shutil.which(mosquitto) or shutil.which(mosquitto, path="/usr/sbin:/usr/local/sbin") or mosquitto
        )
        self._mosquitto_passwd = mosquitto_passwd
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
        the others keep theirs. Rewrites the files and sends SIGHUP (no restart; connected
        clients stay connected); returns once mosquitto has logged that it reloaded."""
        new = replace(self._config, nodes=tuple(nodes))  # ConfigError before anything changes
        async with self._lock:
            old_nodes = set(self._config.nodes)
            self._config = new
            if self._watch_task is None:
                return  # not started: start() writes the files
            await self._write_files()
            proc = self._proc
            extra = {
                "endpoint": self.endpoint,
                "added": sorted(set(new.nodes) - old_nodes),
                "removed": sorted(old_nodes - set(new.nodes)),
            }
            if proc is None or proc.returncode is not None or not self._ready:
                log.info("broker files updated; mosquitto is restarting and will read them", extra=extra)
                return
            offset = _size(self.files.log)
            proc.send_signal(signal.SIGHUP)
            confirmed = await self._wait_for_log(offset, _RELOAD_LINE, self._reload_timeout)
            if confirmed:
                log.info("broker reloaded", extra={**extra, "pid": proc.pid})
            else:
                log.warning(
                    "broker sent SIGHUP but did not log a reload",
                    extra={**extra, "pid": proc.pid, "timeout_s": self._reload_timeout},
                )

    # -- inside ----------------------------------------------------------------------------

    async def _write_files(self) -> None:
        cfg = self._config
        passwords = await asyncio.to_thread(ensure_credentials, self.credentials_path, cfg.users)
        try:
            await asyncio.to_thread(
                write_password_file,
                self.files.password_file,
                passwords,
                mosquitto_passwd=self._mosquitto_passwd,
            )
        except OSError as exc:
            raise BrokerError(
                self.endpoint, f"cannot write the password file {self.files.password_file}: {exc}"
            ) from exc
        atomic_write(self.files.acl, render_acl(cfg).encode(), 0o600)
        atomic_write(self.files.conf, render_conf(cfg, self.files).encode(), 0o600)
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
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
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

    async def _wait_for_log(self, offset: int, needle: bytes, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if needle in _read_from(self.files.log, offset):
                return True
            await asyncio.sleep(0.02)
        return False

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
