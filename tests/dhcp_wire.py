"""A small DHCP/BOOTP codec for tests (RFC 2131/2132, RFC 4578), built on ``construct``.

The tests speak to a real dnsmasq with it: ``discover``/``request`` build a client's packet
with the options a PXE ROM, iPXE or a Raspberry Pi bootloader sends (93 client architecture,
97 client GUID, 60 vendor class, 77 user class); ``parse`` reads an OFFER or ACK into a
``Reply``. Options are kept as raw bytes; the few the tests look at have helpers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from construct import Bytes, Const, Int8ub, Int16ub, Int32ub, Struct

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
PAD, END = 0, 255

_Header = Struct(
    "op" / Int8ub,
    "htype" / Int8ub,
    "hlen" / Int8ub,
    "hops" / Int8ub,
    "xid" / Int32ub,
    "secs" / Int16ub,
    "flags" / Int16ub,
    "ciaddr" / Bytes(4),
    "yiaddr" / Bytes(4),
    "siaddr" / Bytes(4),
    "giaddr" / Bytes(4),
    "chaddr" / Bytes(16),
    "sname" / Bytes(64),
    "file" / Bytes(128),
    Const(MAGIC),
)

_OptionTLV = Struct("code" / Int8ub, "length" / Int8ub, "data" / Bytes(lambda this: this.length))


@dataclass
class Packet:
    op: int
    xid: int
    chaddr: bytes  # the 6-byte MAC
    options: dict[int, bytes] = field(default_factory=dict)
    flags: int = 0x8000  # broadcast: the client has no address yet
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    sname: bytes = b""
    file: bytes = b""

    @property
    def message_type(self) -> int | None:
        raw = self.options.get(53)
        return raw[0] if raw else None

    @property
    def file_name(self) -> str:
        return self.file.split(b"\0", 1)[0].decode(errors="replace")

    @property
    def server_name(self) -> str:
        return self.sname.split(b"\0", 1)[0].decode(errors="replace")

    def ip_option(self, code: int) -> str | None:
        raw = self.options.get(code)
        return str(ipaddress.IPv4Address(raw)) if raw is not None and len(raw) == 4 else None

    def text_option(self, code: int) -> str | None:
        raw = self.options.get(code)
        return raw.rstrip(b"\0").decode(errors="replace") if raw is not None else None


def build(p: Packet) -> bytes:
    header = _Header.build(
        {
            "op": p.op,
            "htype": 1,
            "hlen": 6,
            "hops": 0,
            "xid": p.xid,
            "secs": 0,
            "flags": p.flags,
            "ciaddr": ipaddress.IPv4Address(p.ciaddr).packed,
            "yiaddr": ipaddress.IPv4Address(p.yiaddr).packed,
            "siaddr": ipaddress.IPv4Address(p.siaddr).packed,
            "giaddr": ipaddress.IPv4Address(p.giaddr).packed,
            "chaddr": p.chaddr.ljust(16, b"\0"),
            "sname": p.sname.ljust(64, b"\0"),
            "file": p.file.ljust(128, b"\0"),
        }
    )
    opts = b"".join(
        _OptionTLV.build({"code": code, "length": len(data), "data": data})
        for code, data in p.options.items()
    )
    body = header + opts + bytes([END])
    return body.ljust(300, b"\0")  # BOOTP's minimum size; some servers drop shorter packets


def parse(raw: bytes) -> Packet:
    """A packet from the wire; ValueError if it is not DHCP. Option overload (52) is not
    followed: dnsmasq is run with dhcp-no-override for PXE clients."""
    try:
        h = _Header.parse(raw[:240])
    except Exception as exc:
        raise ValueError(f"not a DHCP packet: {exc}") from exc
    options: dict[int, bytes] = {}
    i = 240
    while i < len(raw):
        code = raw[i]
        if code == END:
            break
        if code == PAD:
            i += 1
            continue
        if i + 1 >= len(raw) or i + 2 + raw[i + 1] > len(raw):
            raise ValueError(f"option {code} runs past the end of the packet")
        length = raw[i + 1]
        options[code] = options.get(code, b"") + raw[i + 2 : i + 2 + length]  # RFC 3396 concatenation
        i += 2 + length
    return Packet(
        op=h.op,
        xid=h.xid,
        chaddr=bytes(h.chaddr[:6]),
        options=options,
        flags=h.flags,
        ciaddr=str(ipaddress.IPv4Address(h.ciaddr)),
        yiaddr=str(ipaddress.IPv4Address(h.yiaddr)),
        siaddr=str(ipaddress.IPv4Address(h.siaddr)),
        giaddr=str(ipaddress.IPv4Address(h.giaddr)),
        sname=bytes(h.sname),
        file=bytes(h.file),
    )


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def client_options(
    message_type: int,
    *,
    arch: int | None = None,
    guid: bytes | None = None,
    vendor_class: str | None = None,
    user_class: str | None = None,
    requested_ip: str | None = None,
    server_id: str | None = None,
) -> dict[int, bytes]:
    """The options of a client's DISCOVER or REQUEST, in the order PXE ROMs send them."""
    opts: dict[int, bytes] = {53: bytes([message_type])}
    if requested_ip is not None:
        opts[50] = ipaddress.IPv4Address(requested_ip).packed
    if server_id is not None:
        opts[54] = ipaddress.IPv4Address(server_id).packed
    opts[55] = bytes([1, 3, 6, 43, 54, 60, 66, 67, 97, 128, 129, 130])
    if arch is not None:
        opts[93] = arch.to_bytes(2, "big")
        opts[94] = bytes([1, 2, 1])  # UNDI 2.1
    if guid is not None:
        opts[97] = guid
    if vendor_class is not None:
        opts[60] = vendor_class.encode()
    if user_class is not None:
        opts[77] = user_class.encode()
    return opts


def pxe_vendor_class(arch: int) -> str:
    return f"PXEClient:Arch:{arch:05d}:UNDI:002001"


def rpi4_guid(serial: int, mac: str, revision: int = 0x00C03111) -> bytes:
    """A Pi 4 bootloader's option 97: type 0, then 'RPi4' (fourcc 0x34695052 little-endian),
    the board revision, the MAC's last 4 bytes and the serial (rpi-eeprom's DHCP_OPTION97)."""
    return (
        b"\0"
        + (0x34695052).to_bytes(4, "little")
        + revision.to_bytes(4, "little")
        + mac_bytes(mac)[2:]
        + serial.to_bytes(4, "little")
    )


__all__ = [
    "ACK",
    "DISCOVER",
    "MAGIC",
    "OFFER",
    "REQUEST",
    "Packet",
    "build",
    "client_options",
    "mac_bytes",
    "parse",
    "pxe_vendor_class",
    "rpi4_guid",
]
