"""End to end through the coordinator's own dnsmasq: a network namespace with a bridge, the
coordinator (boot HTTP server and dnsmasq) on the host end of a veth, clients on the bridge.

1. Proxy mode: an iPXE client's DHCP is answered with the URL of the coordinator's boot server
   (its real port), and that URL, fetched from inside the namespace, is the node's script.
2. Full mode, for real: a QEMU VM (TCG) on a tap in the bridge boots with Debian's iPXE ROM,
   gets its address and the script URL from dnsmasq, loads the kernel, the image's busybox
   initramfs and its settings initrd over HTTP, and trades its one-time token (phones home).
   The guest side reuses tests/integration/test_netboot_qemu.py's initramfs.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from scalerunner.nodeagent.runtime.vm_guest import GuestError, GuestKernel
from tests import dhcp_wire as w
from tests.integration import netlab
from tests.integration import test_netboot_qemu as guest
from tests.integration.netboot_fixtures import (
    QEMU,
    DirImages,
    RunningCoordinator,
    boot_coordinator,
    boot_inventory,
    boot_vm,
)
from tests.integration.netlab import NetLab

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
NODE, MAC = "pxe-02", "52:54:00:5c:b2:01"
_why_not = netlab.available() or (None if Path(DNSMASQ).exists() else "needs dnsmasq (make setup)")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


def inventory(lab: NetLab, mode: str) -> str:
    hosts = list(lab.subnet.hosts())
    full = f'range_start = "{hosts[99]}"\nrange_end = "{hosts[149]}"\n' if mode == "full" else ""
    base = boot_inventory("lab", [(NODE, MAC)], advertise=lab.server_ip, listen=f"{lab.server_ip}:0")
    return (
        base
        + f"""
[boot.dhcp]
mode = "{mode}"
interface = "{lab.host_if}"
subnet = "{lab.subnet}"
dnsmasq = "{DNSMASQ}"
{full}"""
    )


@contextmanager
def lab_coordinator(
    tmp_path: Path, mode: str, images: DirImages
) -> Iterator[tuple[NetLab, RunningCoordinator]]:
    with NetLab() as lab, boot_coordinator(tmp_path / "coord", inventory(lab, mode), images) as coord:
        assert coord.c.dhcp is not None and coord.c.dhcp.running
        yield lab, coord


def test_proxy_mode_points_ipxe_at_the_coordinators_boot_server(tmp_path: Path) -> None:
    images = DirImages(tmp_path / "blobs")
    images.add(
        "node-os", "1", "console=ttyS0", [("vmlinuz", "kernel", b"kernel"), ("initrd.img", "initrd", b"x")]
    )
    with lab_coordinator(tmp_path, "proxy", images) as (lab, coord):
        assert coord.c.boot is not None
        lab.add_port("cli0", address=lab.spare_ips[0], mac=MAC)
        pkt = w.Packet(
            op=1,
            xid=random.getrandbits(32),
            chaddr=w.mac_bytes(MAC),
            options=w.client_options(
                w.DISCOVER, arch=0, vendor_class=w.pxe_vendor_class(0), user_class="iPXE"
            ),
        )
        replies = [p for _, p in lab.dhcp("cli0", pkt, wait=3, until=1)]
        assert replies, "no answer from the coordinator's dnsmasq"
        url = replies[0].file_name
        assert (
            url
            == f"http://{lab.server_ip}:{coord.c.boot.port}/boot/ipxe?mac=${{net0/mac}}&arch=${{buildarch}}"
        )
        asked = url.replace("${net0/mac}", MAC).replace("${buildarch}", "x86_64")  # as iPXE fills them in
        script = lab.inside(lambda: httpx.get(asked, timeout=10))
        assert script.status_code == 200 and script.text.startswith("#!ipxe")
        assert f"scalerunner.node={NODE}" in script.text


@pytest.mark.vm
def test_a_vm_on_the_bridge_boots_through_dnsmasq_and_phones_home(tmp_path: Path) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed (make setup)")
    try:
        kernel = GuestKernel.find(guest.GUEST_DIR)
    except GuestError as exc:
        pytest.skip(str(exc))
    images = DirImages(tmp_path / "blobs")
    with NetLab() as lab:
        # The guest's Linux takes a fixed address on the lab's subnet (its iPXE got one by DHCP).
        vm_ip = lab.spare_ips[5]
        init = guest.INIT.replace("10.0.2.15/24", f"{vm_ip}/{lab.subnet.prefixlen}").replace(
            "via 10.0.2.2", f"via {lab.server_ip}"
        )
        assert init != guest.INIT
        original, guest.INIT = guest.INIT, init
        try:
            initramfs = guest.image_initramfs(kernel)
        finally:
            guest.INIT = original
        images.add(
            "node-os",
            "1",
            "console=ttyS0 panic=-1",
            [("vmlinuz", "kernel", kernel.vmlinuz), ("initrd.img", "initrd", initramfs)],
        )
        with boot_coordinator(tmp_path / "coord", inventory(lab, "full"), images) as coord:
            assert coord.c.boot is not None and coord.c.dhcp is not None and coord.c.dhcp.running
            tap = "tapb0"
            subprocess.run(["ip", "-n", lab.ns, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            subprocess.run(["ip", "-n", lab.ns, "link", "set", tap, "master", "br0", "up"], check=True)
            run = boot_vm(
                tmp_path / "console.log",
                MAC,
                f"tap,id=n0,ifname={tap},script=no,downscript=no",
                timeout=150,
                popen=lab.popen,
            )
            out, took = run.check(), run.took
            m = re.search(r"e2e: answer (\{.*\})", out)
            assert m, out[-3000:]
            assert f'"username":"{NODE}"' in m.group(1)
            leases = coord.c.dhcp.leases.read_text()
            assert MAC in leases, leases  # iPXE's address came from the coordinator's dnsmasq
            events = [e for e in coord.events() if e["node"] == NODE]
            assert any(e["axis"] == "boot" and e["new"] == "token-traded" for e in events), events
            print(f"netboot through dnsmasq: DHCP, iPXE script, kernel, initrds, token trade in {took:.1f} s")
