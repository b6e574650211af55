"""IP anonymisation, per customer: keep, truncate (IPv4 /24, IPv6 /48) or hash.

The default is ``truncate``: the last octet of an IPv4 address (the last 80 bits of an IPv6
one) are zeroed, which is what the major analytics products do by default and what keeps an
address from naming a household while it still names a network and a country. ``hash``
replaces the address by HMAC-SHA256 under the customer's own secret salt (32 random bytes,
kept in customers.sqlite, never in rows, logs or metadata): the same visitor gets the same
token within the customer, two customers get unrelated tokens for the same address, and
without the salt a token cannot be reversed by hashing the 2^32 IPv4 addresses. ``keep``
lands the address as sent: only when the customer's setting says so.

An address that does not parse is never landed in any mode but ``keep``: null, counted.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VERSION = "ip-1"
MODES = ("keep", "truncate", "hash")
DEFAULT_MODE = "truncate"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"^({_OCTET}\.){{3}}{_OCTET}$"  # what ipaddress accepts (no leading zeros)


def parse(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:a.b.c.d is an IPv4 address
    return address


def truncate(ip: str) -> str | None:
    address = parse(ip)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def truncate_all(ips: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``truncate`` of each address, and whether it parsed: dotted IPv4 in Arrow's RE2 (no
    Python per address), anything else (IPv6, mapped, junk) through :func:`truncate`."""
    v4 = pc.fill_null(pc.match_substring_regex(ips, IPV4), False)
    out = pc.replace_substring_regex(ips, r"\.[0-9]+$", ".0")
    valid = v4.to_numpy(zero_copy_only=False).copy()
    rest = np.flatnonzero(~valid)
    if len(rest):
        texts = pc.take(ips, pa.array(rest)).to_pylist()
        done = [None if t is None else truncate(t) for t in texts]
        valid[rest] = [d is not None for d in done]
        out = pc.replace_with_mask(
            out, pa.array(~v4.to_numpy(zero_copy_only=False)), pa.array(done, pa.string())
        )
    return out, valid


def hashed(ip: str, salt: bytes) -> str | None:
    address = parse(ip)
    if address is None:
        return None
    return hmac.new(salt, address.packed, hashlib.sha256).hexdigest()[:32]


def anonymise(ip: str, mode: str, salt: bytes) -> str | None:
    """The address as it may be landed under ``mode``."""
    if mode == "keep":
        return ip
    if mode == "hash":
        return hashed(ip, salt)
    return truncate(ip)
