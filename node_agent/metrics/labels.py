"""Addresses in map keys to the label values of the label model (docs/agent.md, "What each program measures").

The local side of a key is the socket's (or packet's) own address on this
node: a pod's, else `host`. The remote side is a pod, else `host` if it is an
address of this node, else `external`. A side that is not a pod gets the fixed
value in every identity label (namespace, pod, workload) so grouping by any
of them shows it, rather than an empty (absent) label.

A LabelScope lives for one scrape and caches every lookup: a scrape resolves
each distinct address once.
"""
from __future__ import annotations

import logging
import threading
import time

from node_agent.resolver.base import EXTERNAL, HOST, PodRef, Resolver, normalize_ip

log = logging.getLogger(__name__)

PEER_LABELS = {"peer_namespace": 0, "peer_pod": 1, "peer_workload": 2}
OWN_LABELS = {"namespace": 0, "pod": 1, "workload": 2}


def _identity(ref: PodRef | None, fallback: str) -> tuple[str, str, str]:
    if ref is None:
        return (fallback, fallback, fallback)
    return (ref.namespace, ref.pod, ref.workload or ref.pod)   # a bare pod is its own workload


class NodeAddresses:
    """This node's own addresses (all interfaces), refreshed now and then."""

    def __init__(self, max_age: float = 30.0):
        self.max_age = max_age
        self._addresses: frozenset = frozenset()
        self._at = 0.0
        self._lock = threading.Lock()

    def get(self) -> frozenset:
        if time.monotonic() - self._at > self.max_age:
            with self._lock:
                if time.monotonic() - self._at > self.max_age:
                    self._addresses = self._read()
                    self._at = time.monotonic()
        return self._addresses

    @staticmethod
    def _read() -> frozenset:
        try:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                return frozenset(normalize_ip(a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL"))
                                 for a in ipr.get_addr())
        except Exception as e:   # never fail a scrape over this
            log.warning("cannot list node addresses", extra={"kv": {"error": str(e)}})
            return frozenset()


class LabelScope:
    def __init__(self, resolver: Resolver, label_names: tuple[str, ...], node_addresses: frozenset):
        self.resolver = resolver
        self.node_addresses = node_addresses
        self._own = [OWN_LABELS[n] for n in label_names if n in OWN_LABELS]
        self._peer = [PEER_LABELS[n] for n in label_names if n in PEER_LABELS]
        self._local_cache: dict[bytes, tuple[str, str, str]] = {}
        self._remote_cache: dict[bytes, tuple[str, str, str]] = {}
        self._pair_cache: dict[tuple[bytes, bytes], tuple[str, ...]] = {}
        self.unresolved = {"local": 0, "remote": 0}

    def _local(self, raw: bytes) -> tuple[str, str, str]:
        ident = self._local_cache.get(raw)
        if ident is None:
            ref = self.resolver.lookup(normalize_ip(raw))
            if ref is None:
                self.unresolved["local"] += 1
            ident = self._local_cache[raw] = _identity(ref, HOST)
        return ident

    def _remote(self, raw: bytes) -> tuple[str, str, str]:
        ident = self._remote_cache.get(raw)
        if ident is None:
            ip = normalize_ip(raw)
            ref = self.resolver.lookup(ip)
            if ref is None:
                self.unresolved["remote"] += 1
                ours = ip in self.node_addresses or ip.is_loopback or ip.is_unspecified
                ident = _identity(None, HOST if ours else EXTERNAL)
            else:
                ident = _identity(ref, EXTERNAL)
            self._remote_cache[raw] = ident
        return ident

    def labels(self, local: bytes, remote: bytes) -> tuple[str, ...]:
        """Identity label values, in the order of the configured label names."""
        key = (local, remote)
        values = self._pair_cache.get(key)
        if values is None:
            own, peer = self._local(local), self._remote(remote)
            values = tuple(own[i] for i in self._own) + tuple(peer[i] for i in self._peer)
            self._pair_cache[key] = values
        return values
