"""End to end: a QEMU VM (TCG) with iPXE boots from the coordinator's boot HTTP server.

QEMU's user networking hands the VM a DHCP boot file that is the coordinator's iPXE URL (the
guest reaches the host's loopback at 10.0.2.2, the address the inventory advertises). The VM's
iPXE (Debian's ipxe-qemu ROM) fetches its script, then Debian's cloud kernel, the image's busybox
initramfs and the node's settings initrd; the init in the initramfs prints the settings, brings
up the network and trades its one-time token with busybox wget, and prints the answer on the
serial console. Asserted: the node went booting, the guest saw its settings (so every file was
fetched and unpacked), got its credentials, and the token is spent.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import httpx
import pytest

from scalerunner.cpio import CpioEntry, newc_archive
from scalerunner.nodeagent.runtime.vm_guest import GuestError, GuestKernel
from tests.integration.netboot_fixtures import QEMU, DirImages, boot_coordinator, boot_inventory, boot_vm

pytestmark = [pytest.mark.slow, pytest.mark.vm]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / ".cache" / "guest"
NODE, MAC = "pxe-01", "52:54:00:5c:a2:01"
MODULES = (  # dependencies first (MACHINE.md); virtio_net needs the failover pair
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in MODULES; do insmod "/lib/modules/$m.ko" || echo "e2e: insmod $m failed"; done
echo "e2e: settings begin"
cat /etc/scalerunner/agent.toml
echo "e2e: settings end"
for word in $(cat /proc/cmdline); do
    case "$word" in
        scalerunner.url=*) URL="${word#*=}" ;;
        scalerunner.node=*) NODE="${word#*=}" ;;
        scalerunner.token=*) TOKEN="${word#*=}" ;;
    esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
ANSWER=$(wget -q -O - --header 'Content-Type: application/json' \
    --post-data "{\"node\":\"$NODE\",\"token\":\"$TOKEN\"}" "$URL/boot/v1/credentials")
echo "e2e: answer $ANSWER"
poweroff -f
""".replace("MODULES", " ".join(MODULES))


def image_initramfs(kernel: GuestKernel) -> bytes:
    d, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    entries = [CpioEntry(p, d) for p in ("bin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib/modules")]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", x, Path("/bin/busybox").read_bytes()))
    entries.append(CpioEntry("init", x, INIT.encode()))
    for name in MODULES:
        entries.append(
            CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, kernel.module(name).read_bytes())
        )
    return newc_archive(entries)


@pytest.fixture(scope="module")
def kernel() -> GuestKernel:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed (make setup)")
    try:
        return GuestKernel.find(GUEST_DIR)
    except GuestError as exc:
        pytest.skip(str(exc))


def test_a_vm_boots_over_http_with_ipxe_and_trades_its_token(kernel: GuestKernel, tmp_path: Path) -> None:
    assert QEMU is not None
    images = DirImages(tmp_path / "blobs")
    images.add(
        "node-os",
        "1",
        "console=ttyS0 panic=-1",
        [("vmlinuz", "kernel", kernel.vmlinuz), ("initrd.img", "initrd", image_initramfs(kernel))],
    )
    text = boot_inventory("lab", [(NODE, MAC)], advertise="10.0.2.2")
    with boot_coordinator(tmp_path / "coord", text, images) as coord:
        assert coord.c.boot is not None
        port = coord.c.boot.port
        bootfile = f"http://10.0.2.2:{port}/boot/ipxe?mac={MAC}"
        run = boot_vm(tmp_path / "console.log", MAC, f"user,id=n0,bootfile={bootfile}")
        out, took = run.check(), run.took
        assert "e2e: answer" in out, out[-3000:]

        settings = out.split("e2e: settings begin", 1)[1].split("e2e: settings end", 1)[0]
        assert f'node = "{NODE}"' in settings and 'host = "10.0.2.2"' in settings
        assert f"port = {coord.c.broker.port}" in settings
        m = re.search(r"e2e: answer (\{.*\})", out)
        assert m, out[-2000:]
        assert f'"username":"{NODE}"' in m.group(1) and '"broker_host":"10.0.2.2"' in m.group(1)

        events = [e for e in coord.events() if e["node"] == NODE]
        assert any(e["axis"] == "state" and e["new"] == "booting" for e in events), events
        assert any(e["axis"] == "boot" and e["new"] == "script" for e in events)
        assert any(e["axis"] == "boot" and e["new"] == "token-traded" for e in events)
        assert images.resolved == [NODE]
        assert images.image is not None
        fetched = coord.c.boot.fetched
        assert all(fetched.get(f.digest, 0) >= 1 for f in images.image.files), fetched  # kernel, initrd
        assert coord.c.boot.settings_fetched == {NODE: 1}
        token = re.search(r"scalerunner\.token=([A-Za-z0-9_-]+)", out)
        assert token, "the kernel command line is printed by the kernel"
        again = httpx.post(
            f"{coord.boot_url}/boot/v1/credentials", json={"node": NODE, "token": token.group(1)}, timeout=10
        )
        assert again.status_code == 403  # the guest spent it
        print(f"netboot e2e: VM booted over HTTP and traded its token in {took:.1f} s")
