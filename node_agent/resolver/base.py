"""Who owns an address: the resolver interface every label source implements.

The collector asks a resolver at scrape time, so a lookup must be a dictionary
read from a cache that something else keeps fresh (a file, an API watch):
never a network call on the scrape path.
"""
from __future__ import annotations

import abc
import ipaddress
from dataclasses import dataclass
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Fixed label values for addresses no pod owns (DESIGN.md, label model):
# cardinality stays bounded by the cluster, not by the internet.
HOST = "host"          # an address of this node, or a host-network process on it
EXTERNAL = "external"  # anything else


@dataclass(frozen=True)
class PodRef:
    namespace: str
    pod: str
    workload: str = ""


def normalize_ip(raw: bytes | str | IPAddress) -> IPAddress:
    """16 raw bytes from a BPF key (v4 stored v4-mapped), or text, to an address.

    IPv4-mapped IPv6 addresses collapse to IPv4 so that one pod has one key.
    """
    if isinstance(raw, (bytes, bytearray)):
        ip = ipaddress.ip_address(bytes(raw)) if len(raw) in (4, 16) else None
        if ip is None:
            raise ValueError(f"address of {len(raw)} bytes")
    elif isinstance(raw, str):
        ip = ipaddress.ip_address(raw)
    else:
        ip = raw
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Resolver(abc.ABC):
    """Maps addresses to pods from a local cache."""

    @abc.abstractmethod
    def lookup(self, ip: IPAddress) -> PodRef | None:
        """The pod that owns `ip` now (or within the deletion grace period)."""

    def start(self) -> None:
        """Begin keeping the cache fresh (watches, file polling)."""

    def stop(self) -> None:
        """Stop background work; lookups may still be served from the cache."""

    def is_ready(self) -> bool:
        """True once the cache has been filled at least once."""
        return True
