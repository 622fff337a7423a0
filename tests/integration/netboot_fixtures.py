"""A real coordinator with ``[boot] enabled`` for the network-boot tests, in a thread of the test
process (its mosquitto is a real child), and a small image source over files in a directory
(the image registry is its own part, tested on its own)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from scalerunner.coordinator.app import Coordinator
from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.coordinator.pxe.base import BootFile, BootImage, FileRole

T = TypeVar("T")

QEMU = shutil.which("qemu-system-x86_64")


@dataclass(frozen=True)
class VmRun:
    """How a network-booted VM ended: QEMU's exit code and stderr, its serial console, its time."""

    returncode: int
    stderr: str
    console: str
    took: float

    def check(self) -> str:
        """The console text; AssertionError with QEMU's stderr and the console's tail if QEMU failed."""
        assert self.returncode == 0, f"qemu: {self.stderr}\n{self.console[-3000:]}"
        return self.console


def boot_vm(
    console: Path,
    mac: str,
    netdev: str,
    *,
    timeout: float = 120,
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
) -> VmRun:
    """A QEMU VM (TCG, 256 MB) that boots from its NIC (``-boot n``: Debian's iPXE ROM) on
    ``netdev`` (``user,...,bootfile=URL`` or ``tap,...``), its serial console into ``console``;
    killed after ``timeout`` s. ``popen`` starts it (a network namespace's, for a tap in one)."""
    assert QEMU is not None
    argv: Sequence[str] = [
        QEMU,
        "-machine", "q35,accel=tcg",
        "-m", "256",
        "-display", "none",
        "-no-reboot",
        "-boot", "n",
        "-serial", f"file:{console}",
        "-netdev", netdev,
        "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
    ]  # fmt: skip
    started = time.monotonic()
    proc = popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    took = time.monotonic() - started
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    out = console.read_text(errors="replace") if console.exists() else ""
    return VmRun(proc.returncode, err, out, took)


@dataclass
class DirImages:
    """An ``ImageSource``: one image for every node, its files stored by digest under ``root``."""

    root: Path
    image: BootImage | None = None
    resolved: list[str] = field(default_factory=list)

    def add(
        self, name: str, version: str, cmdline: str, files: list[tuple[str, FileRole, bytes | Path]]
    ) -> None:
        out: list[BootFile] = []
        self.root.mkdir(parents=True, exist_ok=True)
        for fname, role, content in files:
            data = content.read_bytes() if isinstance(content, Path) else content
            digest = hashlib.sha256(data).hexdigest()
            blob = self.root / digest
            if isinstance(content, Path):
                shutil.copyfile(content, blob)
            else:
                blob.write_bytes(data)
            out.append(BootFile(fname, role, digest, len(data)))
        self.image = BootImage(name=name, version=version, arch="amd64", cmdline=cmdline, files=tuple(out))

    async def resolve(self, node: str, arch: str, group: str) -> BootImage | None:
        self.resolved.append(node)
        return self.image if self.image is not None and self.image.arch == arch else None

    def blob_path(self, digest: str) -> Path:
        path = self.root / digest
        if not path.is_file():
            raise KeyError(digest)
        return path


class RunningCoordinator:
    """``Coordinator`` started on an event loop in a thread; ``call`` runs a coroutine there."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="coordinator", daemon=True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def boot_url(self) -> str:
        assert self.c.boot is not None
        return f"http://127.0.0.1:{self.c.boot.port}"

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.c.api_url, headers={"Authorization": f"Bearer {self.c.token}"}, timeout=10
        )

    def node_state(self, node: str) -> str:
        with self.api() as client:
            return str(client.get(f"/api/v1/nodes/{node}").raise_for_status().json()["state"])

    def events(self) -> list[dict[str, Any]]:
        with self.api() as client:
            data = client.get("/api/v1/events", params={"limit": 1000}).raise_for_status().json()
            return list(data)


def boot_inventory(
    cluster: str,
    nodes: list[tuple[str, str]],
    *,
    advertise: str | None = None,
    ttl: int = 60,
    listen: str = "127.0.0.1:0",
) -> str:
    """An inventory with [boot] enabled on ``listen`` and amd64 ``nodes`` (name, MAC) labelled netboot."""
    text = f"""
[cluster]
name = "{cluster}"

[broker]
mode = "managed"
host = "127.0.0.1"
port = 0

[store]
url = "sqlite:///state/scalerunner.db"

[api]
listen = "127.0.0.1:0"

[boot]
enabled = true
listen = "{listen}"
token_ttl = {ttl}
"""
    if advertise is not None:
        text += f'advertise = "{advertise}"\n'
    for name, mac in nodes:
        text += (
            f'\n[[nodes]]\nname = "{name}"\nmac = "{mac}"\narch = "amd64"\nlabels = ["netboot"]\ncpus = 1\n'
        )
    return text


@contextmanager
def boot_coordinator(directory: Path, inventory_text: str, images: DirImages) -> Iterator[RunningCoordinator]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scalerunner.toml"
    path.write_text(inventory_text)
    inventory = loads_inventory(inventory_text, path)
    run = RunningCoordinator(
        Coordinator(inventory, directory / "state", source=str(path), api_port=0, boot_images=images)
    )
    run._thread.start()
    try:
        run.call(run.c.start())
        yield run
    finally:
        try:
            run.call(run.c.stop())
        finally:
            run.loop.call_soon_threadsafe(run.loop.stop)
            run._thread.join(10)
