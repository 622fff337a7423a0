"""Is KVM usable here? Boot the guest once with it, under a short timeout, and remember the answer.

On these machines /dev/kvm exists but guests hang after "Booting from ROM", so
its presence proves nothing: only a guest that reaches userland does. The answer is cached in a
small JSON file keyed by the QEMU binary and the kernel, so a node pays for the probe once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from scalerunner.nodeagent.runtime.vm_guest import write_shared

__all__ = ["PROBE_MARKER", "KvmProbe", "boot_reaches_userland"]

PROBE_MARKER = b"scalerunner-probe-ok"
log = logging.getLogger("scalerunner.nodeagent.runtime.kvm")


async def boot_reaches_userland(qemu: str, accel: str, vmlinuz: Path, initrd: Path, timeout_s: float) -> bool:
    """Boot the guest in probe mode with ``accel``; True when init prints its marker in time."""
    argv = [
        qemu,
        *("-machine", f"q35,accel={accel}", "-m", "128", "-nodefaults", "-no-user-config"),
        *("-display", "none", "-serial", "stdio", "-no-reboot"),
        *("-kernel", str(vmlinuz), "-initrd", str(initrd)),
        *("-append", "console=ttyS0 quiet panic=-1 scalerunner.probe"),
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except OSError:
        return False
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await proc.stdout.read(4096):
                seen = (seen + chunk)[-4096:]
                if PROBE_MARKER in seen:
                    return True
            return False
    except TimeoutError:
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class KvmProbe:
    """Decides the accelerator for the vm runtime: ``kvm`` when a probe boot worked, else ``tcg``."""

    def __init__(self, cache_file: Path, device: Path = Path("/dev/kvm"), timeout_s: float = 8.0) -> None:
        self.cache_file = cache_file
        self.device = device
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def accel(self, qemu: str, vmlinuz: Path, initrd: Path) -> str:
        async with self._lock:
            key = f"{qemu}|{vmlinuz}"
            cached = self._read()
            if key in cached:
                return "kvm" if cached[key] else "tcg"
            usable = os.access(self.device, os.R_OK | os.W_OK) and await boot_reaches_userland(
                qemu, "kvm", vmlinuz, initrd, self.timeout_s
            )
            log.info("kvm probe", extra={"device": str(self.device), "usable": usable})
            cached[key] = usable
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_shared(self.cache_file, json.dumps(cached, indent=1).encode())
            return "kvm" if usable else "tcg"

    def _read(self) -> dict[str, bool]:
        try:
            data = json.loads(self.cache_file.read_bytes())
        except (OSError, ValueError):
            return {}
        return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}
