"""iPXE scripts, rendered as text from data (no I/O): what a node's firmware runs after DHCP.

- ``chain_script``: for a client that asked without its MAC (a DHCP filename without the
  query): it asks again with ``${net0/mac}``, which iPXE fills in.
- ``node_script``: a known node boots its image's kernel with the image's initrds and its own
  settings initrd, and a command line carrying the coordinator URL, its name and a one-time token.
- ``not_enrolled_script`` / ``no_image_script``: an explanation on the node's screen, then
  ``exit 1`` so the firmware tries its next boot device. They carry nothing secret.

Every URL points at the boot server by the address nodes reach it at (``BootConfig.address``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from .base import BootFile, BootImage

__all__ = [
    "IPXE_QUERY",
    "SETTINGS_NAME",
    "BootScriptError",
    "NodeBoot",
    "chain_script",
    "file_url",
    "kernel_cmdline",
    "no_image_script",
    "node_script",
    "normalise_mac",
    "not_enrolled_script",
    "settings_url",
]

SETTINGS_NAME = "settings.cpio"  # the node's own initrd, as iPXE names it
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
# iPXE expands ${...} and splits on blanks: nothing from a request may carry either.
_SAFE_TEXT = re.compile(r"[^A-Za-z0-9 .,:;_=+/()\[\]@#'\"-]")


class BootScriptError(ValueError):
    """A boot request that cannot be answered as asked (e.g. a malformed MAC)."""


def normalise_mac(text: str) -> str:
    """``aa:bb:cc:dd:ee:ff`` from any of ``AA:BB:..``, ``aa-bb-..`` or ``aabbcc..``;
    BootScriptError naming the text otherwise."""
    mac = text.strip().lower()
    if not _MAC.match(mac):
        raise BootScriptError(f"not a MAC address: {text[:40]!r}")
    digits = re.sub(r"[:-]", "", mac)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _echo(text: str) -> str:
    return "echo " + _SAFE_TEXT.sub("?", text)


def file_url(base_url: str, f: BootFile) -> str:
    return f"{base_url}/boot/files/{f.digest}/{quote(f.name, safe='')}"


def settings_url(base_url: str, node: str) -> str:
    return f"{base_url}/boot/node/{quote(node, safe='')}/{SETTINGS_NAME}"


@dataclass(frozen=True, slots=True)
class NodeBoot:
    """Everything a known node's script is made of."""

    node: str
    mac: str
    image: BootImage
    base_url: str  # the boot server as nodes reach it: http://ADDRESS:PORT
    token: str


def kernel_cmdline(b: NodeBoot) -> str:
    """The image's command line template filled in (``{node}``, ``{mac}``, ``{url}``; nothing
    else is expanded), the ``initrd=`` names an EFI-stub kernel needs, and the scalerunner keys
    last, so they win over any the template carries."""
    template = b.image.cmdline
    for key, value in (("{node}", b.node), ("{mac}", b.mac), ("{url}", b.base_url)):
        template = template.replace(key, value)
    initrds = [f"initrd={f.name}" for f in b.image.role("initrd")] + [f"initrd={SETTINGS_NAME}"]
    scalerunner = [
        f"scalerunner.url={b.base_url}",
        f"scalerunner.node={b.node}",
        f"scalerunner.token={b.token}",
    ]
    return " ".join(w for w in [*template.split(), *initrds, *scalerunner] if w)


def node_script(b: NodeBoot) -> str:
    kernel = b.image.kernel
    if kernel is None:
        raise BootScriptError(f"image {b.image.name} {b.image.version} has no kernel")
    lines = [
        "#!ipxe",
        _echo(f"Scalerunner: booting {b.node} ({b.mac}) with {b.image.name} {b.image.version}"),
        f"kernel {file_url(b.base_url, kernel)} {kernel_cmdline(b)}",
    ]
    lines += [f"initrd {file_url(b.base_url, f)}" for f in b.image.role("initrd")]
    lines.append(f"initrd {settings_url(b.base_url, b.node)}")
    lines.append("boot")
    return "\n".join(lines) + "\n"


# What iPXE fills in when it fetches a script: its MAC, and its build's architecture (which an
# unknown machine is enrolled with, docs/netboot.md "Enrolment").
IPXE_QUERY = "mac=${net0/mac}&arch=${buildarch}"


def chain_script(base_url: str) -> str:
    return f"#!ipxe\nchain {base_url}/boot/ipxe?{IPXE_QUERY}\n"


def not_enrolled_script(mac: str, cluster: str, refusal: str = "") -> str:
    """An unknown machine's script; ``refusal`` says why enrolment (when on) did not take it."""
    why = [_echo(f"It was not enrolled: {refusal}.")] if refusal else []
    return (
        "\n".join(
            [
                "#!ipxe",
                _echo(f"Scalerunner cluster {cluster}: this machine ({mac}) is not enrolled."),
                *why,
                _echo(f'To enrol it, add a [[nodes]] entry with mac = "{mac}" to the inventory,'),
                _echo("restart the coordinator, and power this machine on again."),
                "sleep 30",
                "exit 1",
            ]
        )
        + "\n"
    )


def no_image_script(node: str, mac: str, arch: str, group: str) -> str:
    return (
        "\n".join(
            [
                "#!ipxe",
                _echo(f"Scalerunner: node {node} ({mac}) has no image to boot:"),
                _echo(f"no version for arch {arch} is promoted to group {group}, and no per-node override."),
                _echo("Promote one with: scalerunner images promote"),
                "sleep 30",
                "exit 1",
            ]
        )
        + "\n"
    )
