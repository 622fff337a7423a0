"""The Raspberry Pi 4's network boot files, as text and names (pure: no I/O).

A Pi 4 whose EEPROM says ``BOOT_ORDER`` with network boot (2) asks TFTP for its files under a
prefix (``TFTP_PREFIX``): 0 = its serial number (8 lower-case hex digits, the default), 2 = its
MAC address with dashes. There it reads ``start4.elf`` and ``fixup4.dat`` (the GPU firmware),
``config.txt``, the device tree, ``cmdline.txt``, the kernel and the initramfs it names. The
bootloader has no iPXE stage, so what iPXE's script carries for other nodes (the coordinator
URL, the node name, the one-time token, the settings initrd) comes through these files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..inventory import Node
from .base import BootImage

__all__ = [
    "DTB_NAME",
    "SETTINGS_NAME",
    "PiBoot",
    "PiTreeError",
    "cmdline_txt",
    "config_txt",
    "node_dir_name",
    "safe_file_name",
]

DTB_NAME = "bcm2711-rpi-4-b.dtb"  # the Pi 4 B's device tree (the firmware loads it by this name)
SETTINGS_NAME = "scalerunner-settings.cpio"  # the node's settings initrd (nodeinitrd.py)
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class PiTreeError(ValueError):
    """A Pi's tree cannot be made: ``node`` and why."""

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"node {node}: {detail}")
        self.node = node
        self.detail = detail


def safe_file_name(name: str) -> bool:
    """A plain file name (no directory part, no leading dot, no '..'): the only names written."""
    return bool(_SAFE.match(name)) and ".." not in name


def node_dir_name(node: Node, prefix: str) -> str:
    """The directory the Pi asks TFTP for: its serial, or its MAC as aa-bb-cc-dd-ee-ff."""
    if prefix == "mac":
        return node.mac.lower().replace(":", "-")
    if node.serial is None:
        raise PiTreeError(
            node.name, "has no serial, and [boot] pi_tftp_prefix = 'serial' names its TFTP directory"
        )
    return node.serial


@dataclass(frozen=True)
class PiBoot:
    """Everything a Pi's config.txt and cmdline.txt are made of."""

    node: str
    mac: str
    image: BootImage
    base_url: str  # the boot HTTP server as nodes reach it: http://ADDRESS:PORT
    token: str | None  # the one-time token; None until a token source is wired (see tftp.py)


def config_txt(b: PiBoot) -> str:
    """The firmware's config.txt: 64-bit kernel, the image's initrds then the settings initrd
    loaded after the kernel, the serial console on."""
    kernel = b.image.kernel
    if kernel is None:
        raise PiTreeError(b.node, f"image {b.image.name} {b.image.version} has no kernel")
    initrds = [f.name for f in b.image.role("initrd")] + [SETTINGS_NAME]
    return "\n".join(
        [
            f"# Scalerunner: {b.node} ({b.mac}) boots {b.image.name} {b.image.version}; written by the",
            "# coordinator, rewritten when the image or the node's settings change.",
            "[pi4]",
            "arm_64bit=1",
            f"kernel={kernel.name}",
            # followkernel: placed right after the kernel in memory; the list is unpacked in order,
            # so the node's settings land over the image's files.
            f"initramfs {','.join(initrds)} followkernel",
            f"device_tree={DTB_NAME}",
            "enable_uart=1",  # the console on the GPIO UART (serial0), for the BMC's console bridge
            "uart_2ndstage=1",  # the firmware's own messages there too: a failed boot says why
            "disable_splash=1",
            "[all]",
            "",
        ]
    )


def cmdline_txt(b: PiBoot) -> str:
    """cmdline.txt: one line. The image's template filled in (``{node}``, ``{mac}``, ``{url}``),
    the serial console, then the scalerunner keys last so they win."""
    template = b.image.cmdline
    for key, value in (("{node}", b.node), ("{mac}", b.mac), ("{url}", b.base_url)):
        template = template.replace(key, value)
    words = [
        *template.split(),
        "console=serial0,115200",
        f"scalerunner.url={b.base_url}",
        f"scalerunner.node={b.node}",
    ]
    if b.token is not None:
        words.append(f"scalerunner.token={b.token}")
    return " ".join(w for w in words if w) + "\n"
