"""The coordinator's dnsmasq (DHCP and TFTP) as a supervised child process.

``DnsmasqService`` writes ``<state_dir>/dnsmasq/dnsmasq.conf`` (``dnsmasq.render``), starts
``dnsmasq --keep-in-foreground --log-facility=-`` and waits until it has bound its sockets,
feeds every line it logs into our logger, restarts it with back-off when it dies, and on
``stop()`` terminates and reaps it. The TFTP tree it serves is built by ``tftp.TftpTree``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import subprocess
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from ...atomic import atomic_write
from ..broker.supervisor import restart_delay, terminate
from ..errors import ConfigError
from ..inventory import BootConfig, Node
from .dnsmasq import DnsmasqConfig, IpxeBinaries, render

__all__ = ["DnsmasqError", "DnsmasqService"]

log = logging.getLogger("scalerunner.coordinator.dhcp")

# dnsmasq logs this once its DHCP and TFTP sockets are bound; it exits at once if they cannot be.
_READY_MARK = "TFTP root is"


class DnsmasqError(ConfigError):
    """dnsmasq could not be configured or started; ``interface`` is the provisioning interface.
    A ConfigError (key ``boot.dhcp``): what stops it is nearly always the inventory's interface
    or a port another DHCP/TFTP server holds, and ``scalerunner up`` reports it as such (exit 2)."""

    def __init__(self, interface: str, detail: str, source: str = "inventory") -> None:
        super().__init__(source, "boot.dhcp", f"dnsmasq on {interface}: {detail}")
        self.interface = interface
        self.detail = detail


class DnsmasqService:
    """dnsmasq for ``boot.dhcp`` (mode proxy or full), serving ``tftp_root`` over TFTP."""

    def __init__(
        self,
        boot: BootConfig,
        nodes: Iterable[Node],
        state_dir: Path,
        tftp_root: Path,
        *,
        binaries: IpxeBinaries | None = None,
        ready_timeout: float = 10.0,
        restart_initial: float = 0.25,
        restart_cap: float = 30.0,
        stable_after: float = 30.0,
        source: str = "inventory",
    ) -> None:
        self.boot = boot
        self.source = source  # the inventory file, named in errors
        self.nodes = tuple(nodes)
        self.interface = boot.dhcp.interface or "?"
        self.directory = state_dir.absolute() / "dnsmasq"
        self.conf = self.directory / "dnsmasq.conf"
        self.leases = self.directory / "dnsmasq.leases"
        self.tftp_root = tftp_root.absolute()
        self.binaries = binaries
        self._ready_timeout = ready_timeout
        self._restart_initial = restart_initial
        self._restart_cap = restart_cap
        self._stable_after = stable_after
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._tail: deque[str] = deque(maxlen=12)
        self._stopping = False
        self._started_at = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None and self._ready.is_set()

    def config_text(self) -> str:
        """dnsmasq.conf as it is written (warnings logged)."""
        user = pwd.getpwuid(os.geteuid())
        cfg = DnsmasqConfig(
            tftp_root=self.tftp_root,
            lease_file=self.leases,
            user=user.pw_name,
            group=grp.getgrgid(os.getegid()).gr_name,
            binaries=self.binaries if self.binaries is not None else _present_binaries(self.tftp_root),
        )
        rendered = render(self.boot, self.nodes, cfg)
        for warning in rendered.warnings:
            log.warning("dnsmasq: %s", warning, extra={"interface": self.interface})
        return rendered.text

    async def start(self) -> None:
        self._stopping = False
        try:
            text = self.config_text()
        except ValueError as exc:
            raise DnsmasqError(self.interface, str(exc), self.source) from exc
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(self.conf, text.encode(), 0o644)
        except OSError as exc:
            raise DnsmasqError(self.interface, f"cannot write {self.conf}: {exc}", self.source) from exc
        await self._launch()
        self._watch_task = asyncio.create_task(self._watch(), name="dnsmasq-watch")
        log.info(
            "dnsmasq up",
            extra={
                "interface": self.interface,
                "mode": self.boot.dhcp.mode,
                "pid": self.pid,
                "conf": str(self.conf),
            },
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._proc is not None:
            await self._terminate(self._proc)
            self._proc = None

    # -- inside ----------------------------------------------------------------------------

    async def _launch(self) -> None:
        self._ready.clear()
        self._tail.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.boot.dhcp.dnsmasq,
                f"--conf-file={self.conf}",
                "--keep-in-foreground",  # our child, so we see it die
                "--log-facility=-",  # its log on stderr, into our logger
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the coordinator's Ctrl-C is for the coordinator
            )
        except OSError as exc:
            raise DnsmasqError(
                self.interface, f"cannot run {self.boot.dhcp.dnsmasq}: {exc}", self.source
            ) from exc
        self._proc = proc
        self._reader = asyncio.create_task(self._read_log(proc), name="dnsmasq-log")
        try:
            async with asyncio.timeout(self._ready_timeout):
                ready = asyncio.create_task(self._ready.wait())
                exited = asyncio.create_task(proc.wait())
                await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
                for t in (ready, exited):
                    t.cancel()
        except TimeoutError:
            await self._terminate(proc)
            raise DnsmasqError(
                self.interface,
                f"not ready within {self._ready_timeout:g} s; its log: {self._log_tail()}",
                self.source,
            ) from None
        if not self._ready.is_set():
            await self._terminate(proc)
            raise DnsmasqError(
                self.interface,
                f"exited with code {proc.returncode} at start; its log: {self._log_tail()}",
                self.source,
            )
        self._started_at = time.monotonic()

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip()
            if not text:
                continue
            self._tail.append(text)
            bad = "failed" in text or "error" in text.lower() or text.startswith("dnsmasq: ")
            log.log(
                logging.WARNING if bad else logging.INFO,
                "dnsmasq: %s",
                text,
                extra={"interface": self.interface, "pid": proc.pid},
            )
            if _READY_MARK in text:
                self._ready.set()

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        await terminate(proc)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 2.0)
            self._reader = None

    async def _watch(self) -> None:
        """Restart dnsmasq whenever it dies, backing off while it keeps dying quickly."""
        failures = 0
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            uptime = time.monotonic() - self._started_at
            failures = 1 if uptime >= self._stable_after else failures + 1
            log.warning(
                "dnsmasq exited",
                extra={
                    "interface": self.interface,
                    "pid": proc.pid,
                    "returncode": code,
                    "uptime_s": round(uptime, 3),
                },
            )
            while True:
                delay = restart_delay(failures, self._restart_initial, self._restart_cap)
                await asyncio.sleep(delay)
                try:
                    await self._launch()
                except DnsmasqError as exc:
                    failures += 1
                    log.error(
                        "dnsmasq restart failed", extra={"interface": self.interface, "error": exc.detail}
                    )
                    continue
                self.restarts += 1
                log.warning(
                    "dnsmasq restarted",
                    extra={"interface": self.interface, "pid": self.pid, "restarts": self.restarts},
                )
                break

    def _log_tail(self) -> str:
        return " | ".join(self._tail) if self._tail else "(empty)"


def _present_binaries(root: Path) -> IpxeBinaries:
    """The iPXE binaries the TFTP root holds (the tree decides what is offered)."""

    def have(name: str) -> str | None:
        return name if (root / name).is_file() else None

    return IpxeBinaries(
        bios=have("undionly.kpxe"),
        efi_x64=have("ipxe.efi") or have("snponly.efi"),
        efi_arm64=have("ipxe-arm64.efi"),
    )
