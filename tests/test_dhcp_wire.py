"""The tests' DHCP codec (tests/dhcp_wire.py): what it builds it parses back, and it refuses
what is not DHCP, so the dnsmasq tests read what was really sent."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import dhcp_wire as w

addresses = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
options = st.dictionaries(
    st.integers(1, 254).filter(lambda c: c != 52), st.binary(min_size=0, max_size=255), max_size=12
)


@given(
    st.integers(1, 2),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=6, max_size=6),
    options,
    addresses,
    addresses,
    st.binary(max_size=63).filter(lambda b: b"\0" not in b),
    st.binary(max_size=127).filter(lambda b: b"\0" not in b),
)
def test_build_then_parse_round_trips(
    op: int, xid: int, mac: bytes, opts: dict[int, bytes], yiaddr: str, siaddr: str, sname: bytes, file: bytes
) -> None:
    p = w.Packet(
        op=op, xid=xid, chaddr=mac, options=opts, yiaddr=yiaddr, siaddr=siaddr, sname=sname, file=file
    )
    raw = w.build(p)
    assert len(raw) >= 300
    q = w.parse(raw)
    assert (q.op, q.xid, q.chaddr, q.yiaddr, q.siaddr) == (op, xid, mac, yiaddr, siaddr)
    assert q.options == opts
    assert q.sname.rstrip(b"\0") == sname
    assert q.file.rstrip(b"\0") == file


def test_rpi4_guid_starts_with_the_fourcc() -> None:
    guid = w.rpi4_guid(0x1A2B3C4D, "dc:a6:32:01:02:03")
    assert len(guid) == 17 and guid[:5] == b"\x00RPi4"
    assert guid[9:13] == bytes.fromhex("32010203") and guid[13:] == bytes.fromhex("4d3c2b1a")


@pytest.mark.parametrize("raw", [b"", b"\x01" * 100, b"\x02" * 236 + b"XXXX" + b"\xff"])
def test_what_is_not_dhcp_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        w.parse(raw)


def test_an_option_running_past_the_end_is_refused() -> None:
    raw = w.build(w.Packet(op=2, xid=1, chaddr=b"\0" * 6))
    with pytest.raises(ValueError, match="option 61"):
        w.parse(raw[:240] + bytes([61, 10, 1, 2]))
