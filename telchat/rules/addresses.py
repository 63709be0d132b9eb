"""IP addresses as policy sees them: one form for an address however it is written.

An IPv4-mapped IPv6 address (`::ffff:127.0.0.5`) is its IPv4 address, for a ban as for a
peer. Limits group other IPv6 addresses by /64, since one host usually owns a whole /64.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# An IPv4-mapped network is ::ffff:0:0/96 followed by the IPv4 prefix.
_MAPPED_PREFIX = 96


def parse_address(text: str) -> Address | None:
    """The address `text` names (a zone index dropped, a mapped one as IPv4), or None."""
    try:
        address = ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network:
    """The network `text` names, an IPv4-mapped one as IPv4; ValueError if none."""
    network = ip_network(text, strict=False)
    mapped = network.network_address.ipv4_mapped if isinstance(network, IPv6Network) else None
    if mapped is not None and network.prefixlen >= _MAPPED_PREFIX:
        return IPv4Network((mapped, network.prefixlen - _MAPPED_PREFIX))
    return network


def group_of(address: Address) -> str:
    """The key limits count `address` under: the IPv4 address, or the IPv6 /64."""
    if isinstance(address, IPv6Address):
        return str(IPv6Network((address, 64), strict=False))
    return str(address)


def group_key(host: str) -> str:
    """`group_of` for a host string; a host that is no address is its own group."""
    address = parse_address(host)
    return host if address is None else group_of(address)
