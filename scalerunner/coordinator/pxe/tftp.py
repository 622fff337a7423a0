"""The TFTP root dnsmasq serves: iPXE binaries, and one directory per Raspberry Pi 4.

::

    tftp/
      undionly.kpxe  ipxe.efi  snponly.efi      from Debian's ipxe package (copies, 0644)
      1a2b3c4d/                                 a Pi (pi_tftp_prefix = "serial"), or dc-a6-32-01-02-03
        start4.elf fixup4.dat ...               the image's firmware files
        vmlinuz bcm2711-rpi-4-b.dtb initrd.img  the image's kernel, device tree and initrd
        scalerunner-settings.cpio               the node's settings initrd (nodeinitrd.py)
        config.txt cmdline.txt                  generated (raspi.py)

Image files are hard links to the registry's blobs (copies where a link cannot be made or
the blob is not world-readable, which dnsmasq running as root requires). A Pi's directory
is built beside the old one and swapped in, so a Pi booting meanwhile sees either the old
tree or the new one. ``refresh()`` rebuilds a directory only when what it is made of changed
(the promoted image, the node's settings); the part polls it every ``interval`` seconds.
Nothing is ever written outside ``root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from ...atomic import atomic_write
from ..inventory import BootConfig, Node
from .base import BootImage, ImageSource
from .dnsmasq import IpxeBinaries, is_pi_mac
from .raspi import SETTINGS_NAME, PiBoot, PiTreeError, cmdline_txt, config_txt, node_dir_name, safe_file_name

__all__ = ["IPXE_DIR", "TftpTree"]

log = logging.getLogger("scalerunner.coordinator.tftp")

IPXE_DIR = Path("/usr/lib/ipxe")  # Debian's ipxe package
_IPXE_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")

# The one-time token a Pi's cmdline.txt carries. A Pi has no iPXE stage to mint one as its
# script is fetched, so the tree asks this hook when it builds the directory; None (the
# default) writes no token and the node's agent falls back to operator-provided credentials.
TokenHook = Callable[[str], Awaitable[str | None]]
SettingsHook = Callable[[Node], bytes]


class TftpTree:
    """The TFTP root (start()/stop(); ``refresh()`` on demand)."""

    def __init__(
        self,
        root: Path,
        boot: BootConfig,
        nodes: Iterable[Node],
        images: ImageSource | None,
        *,
        settings: SettingsHook | None = None,
        token: TokenHook | None = None,
        ipxe_dir: Path = IPXE_DIR,
        interval: float = 30.0,
        token_max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root.absolute()
        self.boot = boot
        self.nodes = tuple(nodes)
        self.images = images
        self.settings = settings
        self.token = token
        self.ipxe_dir = ipxe_dir
        self.interval = interval
        # A token is minted when the directory is built and lives [boot] token_ttl: the
        # directory is rebuilt with a fresh one once its token is this old.
        self.token_max_age = token_max_age
        self.clock = clock
        self._built: dict[str, tuple[str, float]] = {}  # node -> (what it was built from, when)
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.boot.address}:{self.boot.port}"

    def pi_nodes(self) -> list[Node]:
        """Nodes that boot as Pis: arm64 with a serial or a Raspberry Pi MAC prefix."""
        return [n for n in self.nodes if n.arch == "arm64" and (n.serial is not None or is_pi_mac(n.mac))]

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # dnsmasq may run as another user than the one writing
        self.install_ipxe()
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="tftp-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def install_ipxe(self) -> IpxeBinaries:
        """Copy the iPXE binaries into the root; which ones are there."""
        have: dict[str, str] = {}
        for name in _IPXE_FILES:
            src = self.ipxe_dir / name
            if not src.is_file():
                continue
            data = src.read_bytes()
            dst = self.root / name
            if not dst.is_file() or dst.read_bytes() != data:
                atomic_write(dst, data, 0o644)
            have[name] = name
        if not have:
            log.warning("no iPXE binaries", extra={"dir": str(self.ipxe_dir)})
        return IpxeBinaries(
            bios=have.get("undionly.kpxe"),
            efi_x64=have.get("ipxe.efi") or have.get("snponly.efi"),
            efi_arm64=None,
        )

    async def refresh(self) -> list[str]:
        """Rebuild the directories of the Pis whose image or settings changed; the names rebuilt.
        A Pi that cannot be built is logged and skipped (the others still are)."""
        rebuilt: list[str] = []
        for node in self.pi_nodes():
            try:
                if await self._build(node):
                    rebuilt.append(node.name)
            except (PiTreeError, KeyError, OSError) as exc:
                log.error(
                    "Pi TFTP tree for %s not built: %s",
                    node.name,
                    exc,
                    extra={"node": node.name, "error": str(exc)},
                )
        return rebuilt

    async def token_spent(self, name: str) -> bool:
        """``name`` traded its token: a Pi's directory is rebuilt at once with a fresh one, so
        the Pi's next boot (a RAM image keeps no credentials) finds a live token rather than
        waiting for the token's half-life. False for a node that is not a Pi here."""
        node = next((n for n in self.pi_nodes() if n.name == name), None)
        if node is None:
            return False
        self._built.pop(name, None)
        return await self._build(node)

    def node_dir(self, node: Node) -> Path:
        return self.root / node_dir_name(node, self.boot.pi_tftp_prefix)

    # -- inside ----------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing the TFTP tree failed")

    async def _build(self, node: Node) -> bool:
        target = self.node_dir(node)
        image = await self.images.resolve(node.name, node.arch, node.boot_group) if self.images else None
        if image is None:
            if target.exists():
                shutil.rmtree(target)
                log.info("Pi TFTP tree removed: no image", extra={"node": node.name})
            self._built.pop(node.name, None)
            return False
        settings = self.settings(node) if self.settings is not None else b""
        key = _key(image, settings)
        built = self._built.get(node.name)
        fresh = (
            self.token is None
            or self.token_max_age is None
            or (built is not None and self.clock() - built[1] < self.token_max_age)
        )
        if built is not None and built[0] == key and fresh and target.is_dir():
            return False
        token = await self.token(node.name) if self.token is not None else None
        boot = PiBoot(node=node.name, mac=node.mac, image=image, base_url=self.base_url, token=token)
        texts = {"config.txt": config_txt(boot), "cmdline.txt": cmdline_txt(boot)}
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".build-{target.name}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o755)
        try:
            for f in image.files:
                if not safe_file_name(f.name) or f.name in texts or f.name == SETTINGS_NAME:
                    raise PiTreeError(
                        node.name, f"image {image.name} {image.version}: file name {f.name!r} refused"
                    )
                self._place(self.images.blob_path(f.digest) if self.images else Path(), staging / f.name)
            atomic_write(staging / SETTINGS_NAME, settings, 0o644)
            for name, text in texts.items():
                atomic_write(staging / name, text.encode(), 0o644)
            os.chmod(staging, 0o755)
            old = self.root / f".old-{target.name}"
            if target.exists():
                os.rename(target, old)
            os.rename(staging, target)
            if old.exists():
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._built[node.name] = (key, self.clock())
        log.info(
            "Pi TFTP tree built",
            extra={"node": node.name, "dir": target.name, "image": image.name, "version": image.version},
        )
        return True

    @staticmethod
    def _place(blob: Path, dst: Path) -> None:
        """A hard link to the blob, or a world-readable copy."""
        mode = blob.stat().st_mode
        if mode & stat.S_IROTH:
            try:
                os.link(blob, dst)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
        shutil.copyfile(blob, dst)
        os.chmod(dst, 0o444)


def _key(image: BootImage, settings: bytes) -> str:
    h = hashlib.sha256()
    h.update(f"{image.name}\0{image.version}\0{image.cmdline}\0".encode())
    for f in image.files:
        h.update(f"{f.name}\0{f.role}\0{f.digest}\0".encode())
    h.update(hashlib.sha256(settings).digest())
    return h.hexdigest()
