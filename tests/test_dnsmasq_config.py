"""dnsmasq.conf as text: what each client class is given, in proxy and full mode."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.inventory import BootConfig, DhcpConfig, Node
from scalerunner.coordinator.pxe.dnsmasq import (
    PI_OUIS,
    DnsmasqConfig,
    IpxeBinaries,
    ipxe_script_url,
    is_pi_mac,
    render,
)

CFG = DnsmasqConfig(tftp_root=Path("/srv/tftp"), lease_file=Path("/var/lib/sr/leases"), user="sr", group="sr")


def boot(mode: str = "proxy", **dhcp: object) -> BootConfig:
    extra: dict[str, object] = (
        {"range_start": "10.77.0.100", "range_end": "10.77.0.150", "lease": 600} if mode == "full" else {}
    )
    extra.update(dhcp)
    return BootConfig(
        enabled=True,
        listen="0.0.0.0:8069",
        advertise="10.77.0.1",
        dhcp=DhcpConfig(mode=mode, interface="prov0", subnet="10.77.0.0/24", **extra),  # type: ignore[arg-type]
    )


NODES = [
    Node(name="pi1", mac="02:00:00:00:00:01", arch="arm64", serial="1a2b3c4d"),
    Node(name="x1", mac="52:54:00:00:00:01", arch="amd64"),
]


KNOWN_KEYS = {
    "port", "interface", "bind-interfaces", "no-resolv", "no-hosts", "user", "group", "dhcp-leasefile",
    "log-dhcp", "dhcp-range", "dhcp-authoritative", "dhcp-no-override", "dhcp-option", "enable-tftp",
    "tftp-root", "tftp-secure", "dhcp-mac", "dhcp-match", "dhcp-userclass", "tag-if", "pxe-service",
    "dhcp-boot", "dhcp-option-force",
}  # fmt: skip


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_every_directive_has_a_comment_saying_why() -> None:
    for mode in ("proxy", "full"):
        lines = render(boot(mode), NODES, CFG).text.splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith("#"):
                assert lines[i - 1].startswith("# "), f"{mode}: {line!r} has no comment"


def test_no_dns_bound_to_the_interface_and_tftp_confined() -> None:
    d = directives(render(boot(), NODES, CFG).text)
    for expected in (
        "port=0",
        "interface=prov0",
        "bind-interfaces",
        "enable-tftp",
        "tftp-root=/srv/tftp",
        "tftp-secure",
        "user=sr",
        "dhcp-leasefile=/var/lib/sr/leases",
    ):
        assert expected in d


def test_proxy_mode_leases_nothing() -> None:
    d = directives(render(boot("proxy"), NODES, CFG).text)
    assert "dhcp-range=10.77.0.0,proxy,255.255.255.0" in d
    assert not any(x.startswith(("dhcp-authoritative", "dhcp-option=option:router")) for x in d)


def test_full_mode_leases_the_range_with_its_lease_time_and_router() -> None:
    d = directives(render(boot("full", router="10.77.0.254"), NODES, CFG).text)
    assert "dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,600" in d
    assert "dhcp-authoritative" in d and "dhcp-no-override" in d
    assert "dhcp-option=option:router,10.77.0.254" in d
    assert 'dhcp-option=tag:boot-pi,66,"10.77.0.1"' in d  # the Pi's TFTP server, an address
    assert 'dhcp-option-force=tag:boot-pi,tag:!has-arch,43,"Raspberry Pi Boot"' in d  # no option 93


def test_full_mode_without_router_sends_none() -> None:
    assert "dhcp-option=option:router" in directives(render(boot("full"), NODES, CFG).text)


def test_client_classes_and_their_files() -> None:
    d = directives(render(boot(), NODES, CFG).text)
    assert "dhcp-match=set:arch-bios,option:client-arch,0" in d
    assert "dhcp-match=set:arch-efi-x64,option:client-arch,7" in d
    assert "dhcp-match=set:arch-efi-x64,option:client-arch,9" in d
    assert "dhcp-match=set:arch-efi-arm64,option:client-arch,11" in d
    assert "dhcp-userclass=set:ipxe,iPXE" in d
    assert "dhcp-boot=tag:boot-bios,undionly.kpxe,,10.77.0.1" in d
    assert "dhcp-boot=tag:boot-efi64,ipxe.efi,,10.77.0.1" in d
    assert f"dhcp-boot=tag:boot-ipxe,{ipxe_script_url(boot())},,10.77.0.1" in d
    assert ipxe_script_url(boot()) == "http://10.77.0.1:8069/boot/ipxe?mac=${net0/mac}&arch=${buildarch}"
    assert 'pxe-service=tag:boot-pi,0,"Raspberry Pi Boot"' in d
    assert "dhcp-boot=tag:boot-pi,,,10.77.0.1" in d  # siaddr only, no file


def test_a_pi_is_recognised_by_prefix_option_97_or_serial_and_excluded_from_x86_and_ipxe() -> None:
    d = directives(render(boot(), NODES, CFG).text)
    for oui in PI_OUIS:
        assert f"dhcp-mac=set:rpi,{oui}:*:*:*" in d
    assert "dhcp-match=set:rpi,97,00:52:50:69:34" in d
    assert "dhcp-mac=set:rpi,02:00:00:00:00:01" in d  # pi1 has a serial
    assert "dhcp-mac=set:rpi,52:54:00:00:00:01" not in d
    classes = [x for x in d if x.startswith("tag-if=set:boot-") and not x.startswith("tag-if=set:boot-pi,")]
    assert len(classes) == 4 and all("tag:!rpi" in x for x in classes)
    # Files are handed out only to the exclusive classes, never by architecture tag alone.
    assert all(x.split(",")[0].split("=")[1].startswith("tag:boot-") for x in d if x.startswith("dhcp-boot="))


def test_arm64_uefi_gets_nothing_and_a_warning_without_a_binary() -> None:
    r = render(boot(), NODES, CFG)
    assert not any("boot-arm64" in x for x in directives(r.text) if x.startswith("dhcp-boot"))
    assert any("arm64" in w for w in r.warnings)
    cfg = DnsmasqConfig(CFG.tftp_root, CFG.lease_file, "sr", "sr", IpxeBinaries(efi_arm64="ipxe-arm64.efi"))
    r2 = render(boot(), NODES, cfg)
    assert "dhcp-boot=tag:boot-arm64,ipxe-arm64.efi,,10.77.0.1" in directives(r2.text)
    assert not any("arm64" in w for w in r2.warnings)


def test_off_mode_and_bad_interface_names_are_refused() -> None:
    with pytest.raises(ValueError, match="proxy or full"):
        render(BootConfig(), NODES, CFG)
    with pytest.raises(ValueError, match=r"boot\.dhcp\.interface"):
        render(
            BootConfig(
                advertise="10.77.0.1",
                dhcp=DhcpConfig(mode="proxy", interface="eth0\nuser=root", subnet="10.77.0.0/24"),
            ),
            NODES,
            CFG,
        )


@given(st.lists(st.integers(0, 255), min_size=6, max_size=6))
def test_is_pi_mac_is_the_oui_list(octets: list[int]) -> None:
    mac = ":".join(f"{o:02x}" for o in octets)
    assert is_pi_mac(mac) == (mac[:8] in PI_OUIS)
    assert is_pi_mac(mac.upper().replace(":", "-")) == is_pi_mac(mac)


@given(
    st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True),
    st.integers(8, 30),
    st.sampled_from(["proxy", "full"]),
)
def test_any_valid_interface_and_subnet_render_only_known_directives(
    iface: str, prefix: int, mode: str
) -> None:
    net = ipaddress.IPv4Network(f"10.0.0.0/{prefix}")
    hosts = [net.network_address + 1, net.network_address + 2]
    extra = {"range_start": str(hosts[0]), "range_end": str(hosts[1])} if mode == "full" else {}
    b = BootConfig(
        advertise=str(hosts[0]),
        dhcp=DhcpConfig(mode=mode, interface=iface, subnet=str(net), **extra),  # type: ignore[arg-type]
    )
    text = render(b, NODES, CFG).text
    assert f"interface={iface}" in directives(text)
    keys = {x.split("=", 1)[0] for x in directives(text)}
    assert keys <= KNOWN_KEYS, keys - KNOWN_KEYS
