"""End to end: a QEMU VM (TCG) with a MAC no node has is enrolled by real iPXE.

The DHCP boot file is the coordinator's own iPXE URL with ``${net0/mac}`` and ``${buildarch}``
left for iPXE to fill in (``dnsmasq.ipxe_script_url``, what dnsmasq hands out). Debian's iPXE ROM
fills them in, the coordinator enrols the machine (its arch from iPXE's build), and the VM boots
the node's image and trades its token, as an inventory node's would (test_netboot_qemu.py)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from scalerunner.coordinator.pxe.dnsmasq import ipxe_script_url
from scalerunner.nodeagent.runtime.vm_guest import GuestError, GuestKernel
from tests.integration.netboot_fixtures import QEMU, DirImages, boot_coordinator, boot_inventory, boot_vm
from tests.integration.test_netboot_qemu import GUEST_DIR, image_initramfs

pytestmark = [pytest.mark.slow, pytest.mark.vm]

MAC = "52:54:00:5c:a2:77"
NODE = "node-5ca277"  # the default prefix and the MAC's last three bytes


@pytest.fixture(scope="module")
def guest_kernel() -> GuestKernel:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed (make setup)")
    try:
        return GuestKernel.find(GUEST_DIR)
    except GuestError as exc:
        pytest.skip(str(exc))


def test_a_vm_with_an_unknown_mac_is_enrolled_by_its_ipxe_and_boots(
    guest_kernel: GuestKernel, tmp_path: Path
) -> None:
    assert QEMU is not None
    images = DirImages(tmp_path / "blobs")
    images.add(
        "node-os",
        "1",
        "console=ttyS0 panic=-1",
        [
            ("vmlinuz", "kernel", guest_kernel.vmlinuz),
            ("initrd.img", "initrd", image_initramfs(guest_kernel)),
        ],
    )
    text = boot_inventory("lab", [], advertise="10.0.2.2").replace("[boot]\n", "[boot]\nenroll = true\n", 1)
    with boot_coordinator(tmp_path / "coord", text, images) as coord:
        assert coord.c.boot is not None
        boot = msgspec.structs.replace(coord.c.inventory.boot, listen=f"127.0.0.1:{coord.c.boot.port}")
        bootfile = ipxe_script_url(boot)
        assert "${buildarch}" in bootfile and "${net0/mac}" in bootfile
        out = boot_vm(tmp_path / "console.log", MAC, f"user,id=n0,bootfile={bootfile}").check()
        m = re.search(r"e2e: answer (\{.*\})", out)
        assert m, out[-3000:]
        assert f'"username":"{NODE}"' in m.group(1)
        enrolled = [e for e in coord.events() if e["node"] == NODE and e["new"] == "enrolled"]
        assert len(enrolled) == 1, coord.events()
        # Debian's ROM under SeaBIOS is iPXE's i386 build (an EFI one would say x86_64)
        said = re.search(r"buildarch (\S+);", enrolled[0]["reason"])
        assert said and said.group(1) in ("i386", "x86_64"), enrolled[0]["reason"]
        assert coord.c.inventory.node(NODE).arch == "amd64" and coord.c.inventory.node(NODE).mac == MAC
        events = [e for e in coord.events() if e["node"] == NODE]
        assert any(e["axis"] == "boot" and e["new"] == "token-traded" for e in events), events
        print(f"enrolment e2e: iPXE said buildarch {said.group(1)}")
