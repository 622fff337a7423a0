"""One simulated Scalenode: its LED and BMC firmware under the real MicroPython unix port, each on a
pty, and its real node agent (process runtime) - running only while its PoE port delivers power.

The cables outlive the power: each serial line has a host pty that stays open for the rack's whole
life (the BMC's is the inventory's ``bmc_port``, the LED's is the agent's ``led_serial``), joined by a
relay in this process to a firmware pty made at every boot. ``boot()`` starts the firmware and the
agent; ``halt()`` is a power loss: the agent, its jobs and the firmware are killed, nothing says
goodbye, and the coordinator learns it as it would from hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import termios
import tty
from dataclasses import dataclass, field
from pathlib import Path

from ..firmware import REPO, micropypath
from . import procs
from .rack_config import SimNodeSpec

log = logging.getLogger("scalerunner.sim.node")


@dataclass
class Pty:
    master: int
    slave: int
    path: str

    @classmethod
    def open(cls) -> Pty:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        return cls(master, slave, os.ttyname(slave))

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class _Relay:
    """Bytes from one pty master to the other, both ways, from the event loop. A line nobody reads
    (the peer is down) loses what does not fit, as a UART would."""

    a: Pty
    b: Pty
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def start(self) -> None:
        self.loop.add_reader(self.a.master, self._move, self.a.master, self.b.master)
        self.loop.add_reader(self.b.master, self._move, self.b.master, self.a.master)

    def stop(self) -> None:
        self.loop.remove_reader(self.a.master)
        self.loop.remove_reader(self.b.master)

    def _move(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # the slave side closed for good: stop watching it
                self.loop.remove_reader(src)
                return
            raise
        with contextlib.suppress(BlockingIOError):
            os.write(dst, data)


class SimNode:
    def __init__(
        self,
        spec: SimNodeSpec,
        *,
        led_host: Pty,
        bmc_host: Pty,
        agent_config: Path,
        workdir: Path,
        micropython: str,
        agent: str,
    ) -> None:
        self.spec = spec
        self.agent_config = agent_config
        self.workdir = workdir
        self.micropython = micropython
        self.agent_bin = agent
        # the host ends of the two cables: open for the rack's life, their paths are in the inventory
        self.led_host = led_host
        self.bmc_host = bmc_host
        self._fw_ptys: list[Pty] = []
        self._relays: list[_Relay] = []
        self.firmware: list[asyncio.subprocess.Process] = []
        self.agent: asyncio.subprocess.Process | None = None
        self.boots = 0
        self._lock = asyncio.Lock()

    @property
    def powered(self) -> bool:
        return self.agent is not None and self.agent.returncode is None

    def pids(self) -> list[int]:
        """The running agent's and firmware's pids (agent first)."""
        return [p.pid for p in [self.agent, *self.firmware] if p is not None and p.returncode is None]

    def _log(self, what: str) -> int:
        return os.open(self.workdir / f"{what}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def _start_fw(self, kind: str, host: Pty) -> None:
        fw = Pty.open()
        self._fw_ptys.append(fw)
        relay = _Relay(fw, host)
        relay.start()
        self._relays.append(relay)
        if kind == "led":
            argv = [str(REPO / "ledfw" / "main.py"), fw.path]
            path = micropypath(REPO / "ledfw")
        else:
            argv = [str(REPO / "bmc" / "main.py"), fw.path]
            path = micropypath(REPO / "bmc")
        err = self._log(f"fw-{kind}")
        try:
            proc = await asyncio.create_subprocess_exec(
                self.micropython,
                *argv,
                env=dict(os.environ, MICROPYPATH=path),
                cwd=self.workdir,  # so `sim down` finds it even if the supervisor died
                stdin=asyncio.subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        finally:
            os.close(err)
        self.firmware.append(proc)

    async def boot(self) -> None:
        """Power arrived: the firmware starts (and says HELLO on its line), then the agent."""
        async with self._lock:
            if self.powered:
                return
            self.boots += 1
            self.workdir.mkdir(parents=True, exist_ok=True)
            # what the firmware said into a dead line before this boot is gone with the power
            termios.tcflush(self.led_host.slave, termios.TCIFLUSH)
            await self._start_fw("led", self.led_host)
            await self._start_fw("bmc", self.bmc_host)
            await self._bmc_power_on()
            err = self._log("agent")
            try:
                self.agent = await asyncio.create_subprocess_exec(
                    self.agent_bin,
                    "--config",
                    str(self.agent_config),
                    "--log-level",
                    "info",
                    cwd=self.workdir,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                )
            finally:
                os.close(err)
            log.info("node booted", extra={"node": self.spec.name, "agent_pid": self.agent.pid})

    async def _bmc_power_on(self) -> None:
        """The enclosure's BMC switches the compute module on, as it does when PoE arrives; the
        module then boots (the agent starts). A BMC that does not answer is logged, not fatal."""
        from ..coordinator.serial import BmcClient, DeviceError, LinkError, PeerTimeout

        try:
            async with BmcClient(self.bmc_host.path, timeout=5.0) as bmc:
                await bmc.power("on")
        except (OSError, DeviceError, LinkError, PeerTimeout) as exc:
            log.warning(
                "BMC power on failed",
                extra={"node": self.spec.name, "port": self.bmc_host.path, "error": str(exc)},
            )

    async def halt(self) -> None:
        """Power lost: everything on the node stops at once, its jobs (own sessions) included."""
        async with self._lock:
            procs_ = [p for p in [self.agent, *self.firmware] if p is not None]
            if self.agent is not None and self.agent.returncode is None:
                stats = procs.scan()
                for pid in procs.descendants(stats, self.agent.pid) - {self.agent.pid}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for p in procs_:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            for p in procs_:
                await p.wait()
            for relay in self._relays:
                relay.stop()
            for pty in self._fw_ptys:
                pty.close()
            self._relays.clear()
            self._fw_ptys.clear()
            self.firmware.clear()
            if self.agent is not None:
                log.info("node halted", extra={"node": self.spec.name})
            self.agent = None

    async def close(self) -> None:
        await self.halt()
        self.led_host.close()
        self.bmc_host.close()
