"""The inventory's SNMPv3 protocol names mapped to pysnmp's USM service ids, for the manager
(``snmp_poe.py``) and the simulated agent alike, so both read credentials the same way."""

from __future__ import annotations

from pysnmp.entity import config

from ..inventory import SnmpV3

__all__ = ["AUTH_PROTOCOLS", "PRIV_PROTOCOLS", "usm_protocols"]

AUTH_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "md5": config.USM_AUTH_HMAC96_MD5,
    "sha": config.USM_AUTH_HMAC96_SHA,
    "sha224": config.USM_AUTH_HMAC128_SHA224,
    "sha256": config.USM_AUTH_HMAC192_SHA256,
    "sha384": config.USM_AUTH_HMAC256_SHA384,
    "sha512": config.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "des": config.USM_PRIV_CBC56_DES,
    "3des": config.USM_PRIV_CBC168_3DES,
    "aes": config.USM_PRIV_CFB128_AES,
    "aes128": config.USM_PRIV_CFB128_AES,
    # 192/256: the key extension most vendors (Cisco) use; net-snmp uses the Blumenthal draft
    "aes192": config.USM_PRIV_CFB192_AES,
    "aes256": config.USM_PRIV_CFB256_AES,
}


def usm_protocols(v3: SnmpV3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(auth, priv) service ids for ``v3``; the inventory has already checked the names."""
    return AUTH_PROTOCOLS[v3.auth_protocol], PRIV_PROTOCOLS[v3.priv_protocol]
