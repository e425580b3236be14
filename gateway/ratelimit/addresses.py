"""Whose count a request adds to: the key of a client address, or of a principal."""

from __future__ import annotations

import functools
import ipaddress

from gateway.identity.principal import Principal


def address_key(address: str) -> str:
    """What an address limit counts: an IPv4 address, or the /64 holding an IPv6 one.

    One IPv6 host may use any address of its /64 (RFC 4291 §2.5.1 interface identifiers;
    RFC 8981 temporary addresses), so counting single IPv6 addresses would let one caller
    rotate past the per-address and brute-force limits (OWASP API4, API2). An IPv6 address
    that carries an IPv4 one (mapped, RFC 4291 §2.5.5.2; NAT64 under the well-known
    prefix 64:ff9b::/96, RFC 6052; 6to4, RFC 3056; Teredo, RFC 4380) counts as that IPv4
    address: NAT64 clients are not one caller, and a 6to4 owner does not get 65,536 /64s.
    (A network-specific NAT64 prefix is not known here: its clients share one /64.)
    A port a proxy wrote ("192.0.2.1:5678", "[2001:db8::1]:443") is dropped. An entry
    that is no address is counted as written, prefixed "raw:" when it holds a colon so
    that it cannot pass for an address's key.
    """
    if ":" not in address:  # IPv4, as the socket or a trusted proxy wrote it
        return address
    return _colon_key(address)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_LOW_64 = (1 << 64) - 1


@functools.lru_cache(maxsize=4096)
def _colon_key(address: str) -> str:
    host = address
    if host.startswith("["):  # "[v6]:port" (RFC 3986 §3.2.2)
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # "v4:port": some proxies append the port
        host = host.partition(":")[0]
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            return f"raw:{address}"
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])  # a zone id names no caller
    except ValueError:
        return f"raw:{address}"
    embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    if embedded is None and ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if embedded is not None:
        return str(embedded)
    return f"{ipaddress.IPv6Address(int(ip) & ~_LOW_64)}/64"


def rate_key(principal: Principal) -> str:
    """Whose count a request adds to: an API key's owner, or a token's issuer and subject
    (two issuers, or an issuer and a key owner, may use the same name for different callers)."""
    if principal.credential == "jwt" and principal.issuer:
        return f"{principal.issuer}#{principal.subject}"
    return principal.subject
