"""The Raspberry Pi 4 TFTP tree: names, config.txt and cmdline.txt (pure), and the directory
``TftpTree`` builds from an image source (hard links, rebuilt only when the image changes,
nothing outside its root)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.inventory import BootConfig, Node
from scalerunner.coordinator.pxe.base import BootFile, BootImage, FileRole
from scalerunner.coordinator.pxe.raspi import (
    SETTINGS_NAME,
    PiBoot,
    PiTreeError,
    cmdline_txt,
    config_txt,
    node_dir_name,
    safe_file_name,
)
from scalerunner.coordinator.pxe.tftp import TftpTree

BOOT = BootConfig(enabled=True, listen="0.0.0.0:8069", advertise="10.77.0.1")
PI = Node(name="pi1", mac="dc:a6:32:01:02:03", arch="arm64", serial="1a2b3c4d")


def image(version: str = "1", files: tuple[BootFile, ...] | None = None) -> BootImage:
    return BootImage(
        "pi-os",
        version,
        "arm64",
        "quiet node={node} mac={mac}",
        files
        or (
            BootFile("start4.elf", "firmware", "a" * 64, 1),
            BootFile("fixup4.dat", "firmware", "b" * 64, 1),
            BootFile("vmlinuz", "kernel", "c" * 64, 1),
            BootFile("bcm2711-rpi-4-b.dtb", "dtb", "d" * 64, 1),
            BootFile("initrd.img", "initrd", "e" * 64, 1),
        ),
    )


def test_config_txt_boots_64_bit_with_the_image_and_settings_initrds() -> None:
    text = config_txt(PiBoot("pi1", PI.mac, image(), "http://10.77.0.1:8069", None))
    lines = text.splitlines()
    for expected in (
        "arm_64bit=1",
        "kernel=vmlinuz",
        f"initramfs initrd.img,{SETTINGS_NAME} followkernel",
        "device_tree=bcm2711-rpi-4-b.dtb",
        "enable_uart=1",
    ):
        assert expected in lines


def test_config_txt_refuses_an_image_without_kernel() -> None:
    no_kernel = image(files=(BootFile("start4.elf", "firmware", "a" * 64, 1),))
    with pytest.raises(PiTreeError, match="no kernel"):
        config_txt(PiBoot("pi1", PI.mac, no_kernel, "http://x", None))


def test_cmdline_is_one_line_with_console_url_node_and_token_last() -> None:
    text = cmdline_txt(PiBoot("pi1", PI.mac, image(), "http://10.77.0.1:8069", "tok123"))
    assert text.endswith("\n") and text.count("\n") == 1
    words = text.split()
    assert words[:3] == ["quiet", "node=pi1", f"mac={PI.mac}"]
    assert words[3:] == [
        "console=serial0,115200",
        "scalerunner.url=http://10.77.0.1:8069",
        "scalerunner.node=pi1",
        "scalerunner.token=tok123",
    ]
    assert "scalerunner.token" not in cmdline_txt(PiBoot("pi1", PI.mac, image(), "http://x", None))


def test_node_dir_is_serial_or_dashed_mac() -> None:
    assert node_dir_name(PI, "serial") == "1a2b3c4d"
    assert node_dir_name(PI, "mac") == "dc-a6-32-01-02-03"
    with pytest.raises(PiTreeError, match="pi2: has no serial"):
        node_dir_name(Node(name="pi2", mac="dc:a6:32:01:02:04", arch="arm64"), "serial")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", ".hidden", "..", "x..y", "", "a\nb"])
def test_unsafe_file_names_are_refused(name: str) -> None:
    assert not safe_file_name(name)


@given(st.text(min_size=1, max_size=40))
def test_a_safe_name_never_leaves_its_directory(name: str) -> None:
    if safe_file_name(name):
        root = Path("/srv/tftp/node")
        assert (root / name).resolve().parent == root.resolve()


class Images:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.image: BootImage | None = None

    def put(self, version: str, contents: dict[str, tuple[FileRole, bytes]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        files = []
        for name, (role, data) in contents.items():
            digest = hashlib.sha256(data).hexdigest()
            blob = self.root / digest
            blob.write_bytes(data)
            blob.chmod(0o444)
            files.append(BootFile(name, role, digest, len(data)))
        self.image = BootImage("pi-os", version, "arm64", "", tuple(files))

    async def resolve(self, node: str, arch: str, group: str) -> BootImage | None:
        return self.image

    def blob_path(self, digest: str) -> Path:
        if not (self.root / digest).is_file():
            raise KeyError(digest)
        return self.root / digest


def pi_contents(kernel: bytes = b"kernel-1") -> dict[str, tuple[FileRole, bytes]]:
    return {
        "start4.elf": ("firmware", b"gpu firmware"),
        "fixup4.dat": ("firmware", b"fixup"),
        "vmlinuz": ("kernel", kernel),
        "bcm2711-rpi-4-b.dtb": ("dtb", b"dtb"),
        "initrd.img": ("initrd", b"initrd"),
    }


def tree(tmp_path: Path, images: Images, ipxe: Path | None = None) -> TftpTree:
    return TftpTree(
        tmp_path / "tftp",
        BOOT,
        [PI, Node(name="x1", mac="52:54:00:00:00:01", arch="amd64")],
        images,
        settings=lambda n: f"settings {n.name}".encode(),
        token=lambda node: _const(f"token-of-{node}"),
        ipxe_dir=ipxe or tmp_path / "no-ipxe",
    )


async def _const(value: str) -> str:
    return value


def test_tree_links_the_image_files_and_writes_the_generated_ones(tmp_path: Path) -> None:
    images = Images(tmp_path / "blobs")
    images.put("1", pi_contents())
    t = tree(tmp_path, images)
    assert asyncio.run(t.refresh()) == ["pi1"]
    d = tmp_path / "tftp" / "1a2b3c4d"
    assert sorted(os.listdir(d)) == sorted([*pi_contents(), "config.txt", "cmdline.txt", SETTINGS_NAME])
    kernel = images.blob_path(hashlib.sha256(b"kernel-1").hexdigest())
    assert (d / "vmlinuz").stat().st_ino == kernel.stat().st_ino  # a hard link, not a copy
    assert (d / SETTINGS_NAME).read_bytes() == b"settings pi1"
    assert "scalerunner.token=token-of-pi1" in (d / "cmdline.txt").read_text()
    assert not (tmp_path / "tftp" / "52-54-00-00-00-01").exists()  # x1 is no Pi


def test_tree_is_rebuilt_only_when_the_image_changes(tmp_path: Path) -> None:
    images = Images(tmp_path / "blobs")
    images.put("1", pi_contents())
    t = tree(tmp_path, images)

    async def run() -> None:
        assert await t.refresh() == ["pi1"]
        assert await t.refresh() == []
        images.put("2", pi_contents(kernel=b"kernel-2"))
        assert await t.refresh() == ["pi1"]
        assert (tmp_path / "tftp" / "1a2b3c4d" / "vmlinuz").read_bytes() == b"kernel-2"
        images.image = None  # nothing promoted any more: the Pi gets nothing
        assert await t.refresh() == []
        assert not (tmp_path / "tftp" / "1a2b3c4d").exists()

    asyncio.run(run())
    assert sorted(p.name for p in (tmp_path / "tftp").iterdir()) == []  # no staging leftovers


def test_an_image_file_with_a_path_in_its_name_is_refused_and_nothing_escapes(tmp_path: Path) -> None:
    images = Images(tmp_path / "blobs")
    contents = pi_contents()
    contents["../../escaped"] = ("firmware", b"x")
    images.put("1", contents)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert asyncio.run(tree(tmp_path, images).refresh()) == []
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and "/tftp" not in p] == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "tftp" / "1a2b3c4d").exists()


def test_ipxe_binaries_are_copied_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "ipxe"
    src.mkdir()
    (src / "undionly.kpxe").write_bytes(b"undi")
    (src / "snponly.efi").write_bytes(b"snp")
    t = tree(tmp_path, Images(tmp_path / "blobs"), ipxe=src)
    (tmp_path / "tftp").mkdir()
    have = t.install_ipxe()
    assert (have.bios, have.efi_x64, have.efi_arm64) == ("undionly.kpxe", "snponly.efi", None)
    assert (tmp_path / "tftp" / "undionly.kpxe").read_bytes() == b"undi"
    assert (tmp_path / "tftp" / "undionly.kpxe").stat().st_mode & 0o777 == 0o644


def test_tree_is_rebuilt_with_a_fresh_token_before_the_old_one_expires(tmp_path: Path) -> None:
    images = Images(tmp_path / "blobs")
    images.put("1", pi_contents())
    now = [0.0]
    minted: list[str] = []

    async def token(node: str) -> str:
        minted.append(node)
        return f"t{len(minted)}"

    t = TftpTree(tmp_path / "tftp", BOOT, [PI], images, token=token, token_max_age=450, clock=lambda: now[0])

    async def run() -> None:
        assert await t.refresh() == ["pi1"]
        now[0] = 449
        assert await t.refresh() == []
        now[0] = 451
        assert await t.refresh() == ["pi1"]

    asyncio.run(run())
    assert minted == ["pi1", "pi1"]
    assert "scalerunner.token=t2" in (tmp_path / "tftp" / "1a2b3c4d" / "cmdline.txt").read_text()


def test_a_traded_token_is_replaced_at_once_and_other_nodes_are_left_alone(tmp_path: Path) -> None:
    images = Images(tmp_path / "blobs")
    images.put("1", pi_contents())
    minted: list[str] = []

    async def token(node: str) -> str:
        minted.append(node)
        return f"t{len(minted)}"

    t = TftpTree(tmp_path / "tftp", BOOT, [PI], images, token=token, token_max_age=450, clock=lambda: 0.0)

    async def run() -> None:
        assert await t.refresh() == ["pi1"]
        assert await t.token_spent("pi1") is True  # the Pi booted and traded t1
        assert await t.token_spent("not-a-pi") is False
        assert await t.refresh() == []  # the fresh one is not rebuilt again before its time

    asyncio.run(run())
    assert minted == ["pi1", "pi1"]
    assert "scalerunner.token=t2" in (tmp_path / "tftp" / "1a2b3c4d" / "cmdline.txt").read_text()
