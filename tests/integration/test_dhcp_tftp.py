"""The coordinator's dnsmasq, for real: DHCP answers per client class and TFTP from its tree.

Each lab is a network namespace with a bridge (tests/integration/netlab.py): the coordinator's
``DnsmasqService`` listens on the host end of a veth; clients are ports on the bridge, driven
by the DHCP codec in tests/dhcp_wire.py and by tftp-hpa's ``tftp``. In proxy mode a second
dnsmasq on the same bridge plays the site's DHCP server and leases the addresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scalerunner.coordinator.inventory import Inventory, loads_inventory
from scalerunner.coordinator.pxe.base import BootFile, BootImage, FileRole
from scalerunner.coordinator.pxe.dhcp import DnsmasqError, DnsmasqService
from scalerunner.coordinator.pxe.tftp import TftpTree
from tests import dhcp_wire as w
from tests.integration import netlab
from tests.integration.netlab import NetLab

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
RASPI = REPO / ".cache" / "raspi"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
PI_SERIAL = "1a2b3c4d"
PI_MAC = "dc:a6:32:0a:0b:0c"
PI97_MAC = "02:11:22:33:44:55"  # a locally administered MAC: recognisable only by option 97

_why_not = netlab.available() or (
    None if Path(DNSMASQ).exists() and shutil.which("tftp") else "needs dnsmasq and tftp-hpa (make setup)"
)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


@dataclass
class MemImages:
    """An ``ImageSource`` over blobs in a directory (the registry is tested on its own)."""

    root: Path
    image: BootImage | None = None

    def add(self, files: list[tuple[str, FileRole, bytes]], version: str = "1") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        out = []
        for name, role, data in files:
            digest = hashlib.sha256(data).hexdigest()
            (self.root / digest).write_bytes(data)
            (self.root / digest).chmod(0o444)
            out.append(BootFile(name, role, digest, len(data)))
        self.image = BootImage("pi-os", version, "arm64", "quiet", tuple(out))

    async def resolve(self, node: str, arch: str, group: str) -> BootImage | None:
        return self.image if self.image is not None and arch == self.image.arch else None

    def blob_path(self, digest: str) -> Path:
        path = self.root / digest
        if not path.is_file():
            raise KeyError(digest)
        return path


def pi_files() -> list[tuple[str, FileRole, bytes]]:
    """The real Pi 4 boot files (tools/fetch-raspi-files.sh) plus a small initrd."""
    files: list[tuple[str, FileRole, bytes]] = [
        (p.name, "firmware", p.read_bytes()) for p in sorted((RASPI / "firmware").iterdir())
    ]
    files.append(("vmlinuz", "kernel", (RASPI / "kernel" / "vmlinuz").read_bytes()))
    files.append(("bcm2711-rpi-4-b.dtb", "dtb", (RASPI / "kernel" / "bcm2711-rpi-4-b.dtb").read_bytes()))
    files.append(("initrd.img", "initrd", b"070701" + b"0" * 200))
    return files


def inventory(lab: NetLab, mode: str, directory: Path) -> Inventory:
    hosts = list(lab.subnet.hosts())
    full = f'range_start = "{hosts[99]}"\nrange_end = "{hosts[149]}"\nlease = 600\n' if mode == "full" else ""
    text = f"""
[cluster]
name = "lab"

[boot]
enabled = true
listen = "{lab.server_ip}:8069"
advertise = "{lab.server_ip}"

[boot.dhcp]
mode = "{mode}"
interface = "{lab.host_if}"
subnet = "{lab.subnet}"
dnsmasq = "{DNSMASQ}"
{full}
[[nodes]]
name = "pi1"
mac = "{PI_MAC}"
arch = "arm64"
serial = "{PI_SERIAL}"

[[nodes]]
name = "x1"
mac = "52:54:00:12:34:01"
arch = "amd64"
"""
    path = directory / "scalerunner.toml"
    path.write_text(text)
    return loads_inventory(text, path)


class Served:
    """A lab with the coordinator's TFTP tree and dnsmasq running on a loop in a thread."""

    def __init__(self, mode: str, directory: Path) -> None:
        self.mode = mode
        self.directory = directory
        self.lab = NetLab()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dnsmasq-loop", daemon=True)
        self.images = MemImages(directory / "blobs")
        self.client_ip = self.site_ip = "0.0.0.0"  # the proxy lab's client and site DHCP server
        if (RASPI / "firmware" / "start4.elf").is_file():
            self.images.add(pi_files())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Served:
        self.lab.__enter__()
        self._thread.start()
        try:
            inv = inventory(self.lab, self.mode, self.directory)
            self.tree = TftpTree(
                self.directory / "state" / "tftp",
                inv.boot,
                inv.nodes,
                self.images,
                settings=lambda node: f"settings of {node.name}".encode(),
            )
            self.call(self.tree.start())
            self.dnsmasq = DnsmasqService(inv.boot, inv.nodes, self.directory / "state", self.tree.root)
            self.call(self.dnsmasq.start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for part in ("dnsmasq", "tree"):
                if hasattr(self, part):
                    self.call(getattr(self, part).stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.lab.close()

    # -- clients ---------------------------------------------------------------------------

    def discover(
        self, port: str, mac: str, *, wait: float = 2.0, until: int | None = 1, **opts: Any
    ) -> list[w.Packet]:
        pkt = w.Packet(
            op=1,
            xid=random.getrandbits(32),
            chaddr=w.mac_bytes(mac),
            options=w.client_options(w.DISCOVER, **opts),
        )
        return [p for _, p in self.lab.dhcp(port, pkt, wait=wait, until=until)]

    def boot_server_request(self, port: str, mac: str, item: bytes | None, **opts: Any) -> w.Packet | None:
        """A PXE client's second step in proxy mode: REQUEST to the boot server's port 4011,
        from the address the site's DHCP server leased it (ciaddr)."""
        options = w.client_options(w.REQUEST, **opts)
        if item is not None:
            options[43] = bytes([71, 4]) + item + b"\x00\x00" + b"\xff"  # PXE_BOOT_ITEM, layer 0
        pkt = w.Packet(
            op=1,
            xid=random.getrandbits(32),
            chaddr=w.mac_bytes(mac),
            options=options,
            flags=0,
            ciaddr=self.client_ip,
        )
        sock = self.lab.udp_socket(port, ("0.0.0.0", 0))
        try:
            sock.sendto(w.build(pkt), (self.lab.server_ip, 4011))
            sock.settimeout(1.5)
            while True:
                try:
                    raw = sock.recv(4096)
                except TimeoutError:
                    return None
                reply = w.parse(raw)
                if reply.xid == pkt.xid:
                    return reply
        finally:
            sock.close()

    def tftp(self, *commands: str) -> subprocess.CompletedProcess[bytes]:
        """tftp-hpa's client, run in the lab's namespace."""
        return self.lab.run(["tftp", "-m", "binary", self.lab.server_ip, "-c", *commands], timeout=30)


def _menu_items(opt43: bytes) -> list[tuple[bytes, str]]:
    """The PXE boot menu (sub-option 9) of an option 43: (item type, text)."""
    i, items = 0, []
    while i < len(opt43) and opt43[i] != 255:
        code, length = opt43[i], opt43[i + 1]
        data = opt43[i + 2 : i + 2 + length]
        if code == 9:
            j = 0
            while j < len(data):
                kind, n = data[j : j + 2], data[j + 2]
                items.append((kind, data[j + 3 : j + 3 + n].decode()))
                j += 3 + n
        i += 2 + length
    return items


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("proxy")
    with Served("proxy", directory) as served:
        lab = served.lab
        # The site's own DHCP server on the same link, leasing addresses (no PXE).
        site_ip, client_ip = lab.spare_ips[0], lab.spare_ips[1]
        site_ns = lab.add_port("site0", address=site_ip, own_ns=True)
        lab.add_port("cli0", address=client_ip)
        hosts = list(lab.subnet.hosts())
        site_conf = directory / "site.conf"
        site_conf.write_text(
            f"port=0\ninterface=site0\nbind-interfaces\nno-resolv\nno-hosts\nuser=root\nno-ping\n"
            f"dhcp-leasefile={directory / 'site.leases'}\ndhcp-range={hosts[19]},{hosts[29]},600\n"
        )
        site = lab.popen(
            [DNSMASQ, "-C", str(site_conf), "-k", "--log-facility=-"], ns=site_ns, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)
        assert site.poll() is None, "the site's dnsmasq did not start"
        served.client_ip, served.site_ip = client_ip, site_ip
        yield served


def _from_proxy(replies: list[w.Packet], server: str) -> w.Packet:
    mine = [p for p in replies if p.ip_option(54) == server]
    assert len(mine) == 1, f"expected one answer from the coordinator {server}, got {replies}"
    return mine[0]


def test_proxy_coexists_with_the_site_dhcp_server_which_alone_leases(proxy: Served) -> None:
    replies = proxy.discover("cli0", "52:54:00:00:01:01", until=2, arch=0, vendor_class=w.pxe_vendor_class(0))
    by_server = {p.ip_option(54): p for p in replies}
    assert set(by_server) == {proxy.lab.server_ip, proxy.site_ip}
    site, ours = by_server[proxy.site_ip], by_server[proxy.lab.server_ip]
    assert site.yiaddr != "0.0.0.0" and site.message_type == w.OFFER
    assert ours.yiaddr == "0.0.0.0", "proxy-DHCP must lease nothing"
    assert ours.options[60] == b"PXEClient" and 43 in ours.options


def _boots_offered_file(opt43: bytes) -> bool:
    """PXE discovery control (sub-option 6) bit 3: boot the file named in this offer."""
    return opt43[:2] == b"\x06\x01" and bool(opt43[2] & 0x08)


def test_proxy_bios_client_is_sent_undionly_kpxe(proxy: Served) -> None:
    offer = _from_proxy(
        proxy.discover("cli0", "52:54:00:00:01:02", until=2, arch=0, vendor_class=w.pxe_vendor_class(0)),
        proxy.lab.server_ip,
    )
    assert offer.file_name == "undionly.kpxe" and offer.siaddr == proxy.lab.server_ip
    assert _boots_offered_file(offer.options[43])


@pytest.mark.parametrize("arch", [7, 9])
def test_proxy_uefi_x64_client_is_sent_the_efi_binary(proxy: Served, arch: int) -> None:
    mac = f"52:54:00:00:01:{arch:02x}"
    offer = _from_proxy(
        proxy.discover("cli0", mac, until=2, arch=arch, vendor_class=w.pxe_vendor_class(arch)),
        proxy.lab.server_ip,
    )
    assert offer.file_name == "ipxe.efi" and offer.siaddr == proxy.lab.server_ip


def test_proxy_arm64_uefi_client_gets_no_x86_binary(proxy: Served) -> None:
    mac = "52:54:00:00:01:0b"
    replies = proxy.discover("cli0", mac, until=2, arch=11, vendor_class=w.pxe_vendor_class(11))
    for p in replies:
        assert p.file_name not in ("undionly.kpxe", "ipxe.efi", "snponly.efi")
    ack = proxy.boot_server_request("cli0", mac, None, arch=11, vendor_class=w.pxe_vendor_class(11))
    assert ack is None or ack.file_name == ""


def test_proxy_ipxe_user_class_is_sent_the_http_script_url(proxy: Served) -> None:
    offer = _from_proxy(
        proxy.discover(
            "cli0",
            "52:54:00:00:01:03",
            until=2,
            arch=0,
            vendor_class=w.pxe_vendor_class(0),
            user_class="iPXE",
        ),
        proxy.lab.server_ip,
    )
    assert (
        offer.file_name
        == f"http://{proxy.lab.server_ip}:8069/boot/ipxe?mac=${{net0/mac}}&arch=${{buildarch}}"
    )
    assert _boots_offered_file(offer.options[43])


def test_proxy_pi_by_mac_with_arch_0_gets_option_43_and_no_x86_file(proxy: Served) -> None:
    offer = _from_proxy(
        proxy.discover("cli0", PI_MAC, until=2, arch=0, vendor_class=w.pxe_vendor_class(0)),
        proxy.lab.server_ip,
    )
    assert b"Raspberry Pi Boot" in offer.options[43]
    assert [t for _, t in _menu_items(offer.options[43])] == ["Raspberry Pi Boot"]
    assert offer.file_name == ""
    assert offer.siaddr == proxy.lab.server_ip  # the TFTP server, as an address
    # Even asked directly, the boot server hands a Pi no x86 binary.
    ack = proxy.boot_server_request("cli0", PI_MAC, b"\x80\x00", arch=0, vendor_class=w.pxe_vendor_class(0))
    assert ack is None or ack.file_name not in ("undionly.kpxe", "ipxe.efi")


def test_proxy_pi_recognised_by_option_97_alone(proxy: Served) -> None:
    guid = w.rpi4_guid(0x1A2B3C4D, PI97_MAC)
    offer = _from_proxy(
        proxy.discover("cli0", PI97_MAC, until=2, arch=0, vendor_class=w.pxe_vendor_class(0), guid=guid),
        proxy.lab.server_ip,
    )
    assert [t for _, t in _menu_items(offer.options[43])] == ["Raspberry Pi Boot"]
    assert offer.file_name == ""
    # The same MAC without the Pi's option 97 is an ordinary BIOS client.
    plain = _from_proxy(
        proxy.discover("cli0", PI97_MAC, until=2, arch=0, vendor_class=w.pxe_vendor_class(0)),
        proxy.lab.server_ip,
    )
    assert plain.file_name == "undionly.kpxe"


# -- TFTP ------------------------------------------------------------------------------------


def test_tftp_serves_ipxe_binaries(proxy: Served, tmp_path: Path) -> None:
    out = tmp_path / "undionly.kpxe"
    r = proxy.tftp("get", "undionly.kpxe", str(out))
    assert out.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes(), r.stderr


@pytest.mark.skipif(
    not (RASPI / "firmware" / "start4.elf").is_file(), reason="no Pi files: run tools/fetch-raspi-files.sh"
)
def test_tftp_pi_fetches_start4_elf_and_its_config_from_its_serial_dir(proxy: Served, tmp_path: Path) -> None:
    for name in ("start4.elf", "config.txt", "cmdline.txt", "bcm2711-rpi-4-b.dtb", "vmlinuz"):
        out = tmp_path / name
        r = proxy.tftp("get", f"{PI_SERIAL}/{name}", str(out))
        assert out.is_file() and out.stat().st_size > 0, (name, r.stdout, r.stderr)
    assert (tmp_path / "start4.elf").read_bytes() == (RASPI / "firmware" / "start4.elf").read_bytes()
    config = (tmp_path / "config.txt").read_text()
    assert "arm_64bit=1" in config and "kernel=vmlinuz" in config
    assert "initramfs initrd.img,scalerunner-settings.cpio followkernel" in config
    cmdline = (tmp_path / "cmdline.txt").read_text()
    assert (
        f"scalerunner.url=http://{proxy.lab.server_ip}:8069" in cmdline and "scalerunner.node=pi1" in cmdline
    )


def test_tftp_absent_files_are_answered_not_found_at_once(proxy: Served, tmp_path: Path) -> None:
    took = []
    for i in range(20):
        start = time.monotonic()
        r = proxy.tftp("get", f"{PI_SERIAL}/probe-{i}.dat", str(tmp_path / f"p{i}"))
        took.append(time.monotonic() - start)
        assert b"not found" in (r.stdout + r.stderr).lower(), r
    print(f"20 absent-file probes: max {max(took) * 1000:.0f} ms, mean {sum(took) / 20 * 1000:.0f} ms")
    assert max(took) < 1.0  # an unanswered request would wait out tftp's 5 s timeout


@pytest.mark.parametrize(
    "name", ["../secret.txt", "/etc/passwd", f"{PI_SERIAL}/../../secret.txt", "..%2fsecret.txt"]
)
def test_tftp_refuses_paths_outside_its_root(proxy: Served, tmp_path: Path, name: str) -> None:
    secret = proxy.tree.root.parent / "secret.txt"
    secret.write_text("not for nodes\n")
    secret.chmod(0o644)
    out = tmp_path / "got"
    r = proxy.tftp("get", name, str(out))
    assert not out.exists() or out.read_bytes() == b"", (name, r.stdout, r.stderr)
    assert b"error" in (r.stdout + r.stderr).lower()


def test_tftp_refuses_writes(proxy: Served, tmp_path: Path) -> None:
    local = tmp_path / "upload.txt"
    local.write_text("overwrite\n")
    before = (proxy.tree.root / "undionly.kpxe").read_bytes()
    r = proxy.tftp("put", str(local), "undionly.kpxe")
    r2 = proxy.tftp("put", str(local), "new-file.txt")
    assert (proxy.tree.root / "undionly.kpxe").read_bytes() == before, r
    assert not (proxy.tree.root / "new-file.txt").exists(), r2
    assert b"error" in (r.stdout + r.stderr + r2.stdout + r2.stderr).lower()


def test_dnsmasq_is_restarted_when_it_dies(proxy: Served) -> None:
    pid = proxy.dnsmasq.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (proxy.dnsmasq.pid in (None, pid) or not proxy.dnsmasq.running):
        time.sleep(0.1)
    assert proxy.dnsmasq.pid not in (None, pid) and proxy.dnsmasq.restarts >= 1
    offer = proxy.discover(
        "cli0", "52:54:00:00:01:09", until=2, arch=0, vendor_class=w.pxe_vendor_class(0), wait=3
    )
    assert any(p.ip_option(54) == proxy.lab.server_ip for p in offer)


# -- full DHCP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with Served("full", tmp_path_factory.mktemp("full")) as served:
        served.lab.add_port("cli0")
        yield served


def test_full_mode_leases_from_the_range_with_the_boot_file(full: Served) -> None:
    mac = "52:54:00:00:02:01"
    hosts = list(full.lab.subnet.hosts())
    # dnsmasq pings an address before it offers it: up to 3 s.
    offers = full.discover("cli0", mac, wait=8, arch=0, vendor_class=w.pxe_vendor_class(0))
    assert offers, "no OFFER"
    offer = offers[0]
    assert hosts[99] <= ipaddress.IPv4Address(offer.yiaddr) <= hosts[149]
    assert offer.file_name == "undionly.kpxe" and offer.siaddr == full.lab.server_ip
    req = w.Packet(
        op=1,
        xid=random.getrandbits(32),
        chaddr=w.mac_bytes(mac),
        options=w.client_options(
            w.REQUEST,
            arch=0,
            vendor_class=w.pxe_vendor_class(0),
            requested_ip=offer.yiaddr,
            server_id=full.lab.server_ip,
        ),
    )
    acks = [p for _, p in full.lab.dhcp("cli0", req, wait=5, until=1)]
    assert acks and acks[0].message_type == w.ACK and acks[0].yiaddr == offer.yiaddr
    deadline = time.monotonic() + 5  # dnsmasq writes the lease file just after the ACK
    while mac not in (full.dnsmasq.leases.read_text() if full.dnsmasq.leases.exists() else ""):
        assert time.monotonic() < deadline, "the lease was not written"
        time.sleep(0.05)


@pytest.mark.parametrize("arch", [0, None], ids=["arch-0", "no-option-93"])
def test_full_mode_pi_gets_option_43_and_tftp_server_as_address(full: Served, arch: int | None) -> None:
    offers = full.discover("cli0", PI_MAC, wait=8, arch=arch, vendor_class=w.pxe_vendor_class(0))
    assert offers
    offer = offers[0]
    assert b"Raspberry Pi Boot" in offer.options[43] and offer.options[60] == b"PXEClient"
    assert offer.text_option(66) == full.lab.server_ip and offer.siaddr == full.lab.server_ip
    assert offer.file_name == ""


def test_dnsmasq_that_cannot_start_fails_with_its_own_words(tmp_path: Path) -> None:
    text = f"""
[cluster]
name = "lab"

[boot]
enabled = true
listen = "10.99.0.1:8069"
advertise = "10.99.0.1"

[boot.dhcp]
mode = "proxy"
interface = "srb-absent0"
subnet = "10.99.0.0/24"
dnsmasq = "{DNSMASQ}"
"""
    inv = loads_inventory(text, tmp_path / "scalerunner.toml")
    service = DnsmasqService(inv.boot, inv.nodes, tmp_path / "state", tmp_path / "tftp")
    (tmp_path / "tftp").mkdir()
    with pytest.raises(DnsmasqError) as info:
        asyncio.run(service.start())
    assert info.value.interface == "srb-absent0"
    assert "exited with code" in info.value.detail and "srb-absent0" in info.value.detail
    assert service.pid is None
