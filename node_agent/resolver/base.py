"""Who owns an address: the resolver interface every label source implements.

The collector asks a resolver at scrape time, so a lookup must be a dictionary
read from a cache that something else keeps fresh (a file, an API watch):
never a network call on the scrape path.
"""
from __future__ import annotations

import abc
import ipaddress
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Fixed label values for addresses no pod owns (docs/agent.md, labels):
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


# Why a source's reads restarted (the `reason` label of the restarts metric).
RESTART_REASONS = ("closed", "expired", "error")


@dataclass(frozen=True)
class SourceHealth:
    """One source of pod identities (an API watch, a file) as the resolver metrics show it."""

    name: str                      # the `watch` label: node, cluster, file
    live: int                      # pods with an address in the cache
    departed: int                  # deleted or finished, still resolvable within the grace period
    relists: int                   # complete reads of the source
    last_sync_time: float          # Unix time the cache was last known in step with it; 0: never
    stale: bool                    # the source cannot be read: lookups use the last known pods
    restarts: Mapping[str, int]    # reason (RESTART_REASONS) -> count


# Guards the lookup counters of every resolver: a scrape thread counts, another may read.
_STATS_LOCK = threading.Lock()


class Resolver(abc.ABC):
    """Maps addresses to pods from a local cache, and reports its own health.

    Every resolver exports the same metric families with the same labels
    (collect()); what differs is only what its sources() report.
    """

    _lookups = 0
    _misses = 0
    owner_lookup_errors = 0   # failed reads of a pod's owner (workload named from the pod instead)

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

    def sources(self) -> list[SourceHealth]:
        """The health of each source the cache is filled from."""
        return []

    def _counted(self, ref: PodRef | None) -> PodRef | None:
        """A lookup's answer, counted for the lookups and misses metrics."""
        with _STATS_LOCK:
            self._lookups += 1
            if ref is None:
                self._misses += 1
        return ref

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Metric families of the resolver's health (called at each scrape)."""
        pods = GaugeMetricFamily(
            "netprobe_resolver_pods",
            "Pods with an address in the resolver cache, per watch; state=departed counts "
            "deleted or finished pods still resolvable during the deletion grace period.",
            labels=["watch", "state"])
        restarts = CounterMetricFamily(
            "netprobe_resolver_watch_restarts",
            "Pod watches re-established: closed (the server ended it, e.g. its timeout), "
            "expired (410 Gone, followed by a full relist), error (the request failed, or "
            "the pods file could not be read or was refused).",
            labels=["watch", "reason"])
        relists = CounterMetricFamily(
            "netprobe_resolver_relists",
            "Complete pod lists read (from the API server, or a new version of the pods file).",
            labels=["watch"])
        last_sync = GaugeMetricFamily(
            "netprobe_resolver_last_sync_timestamp_seconds",
            "Unix time the pod cache was last known to be in step with its source (list "
            "completed, event or bookmark received, pods file read); 0 before the first read.",
            labels=["watch"])
        stale = GaugeMetricFamily(
            "netprobe_resolver_stale",
            "1 while the source cannot be read (API server unreachable, pods file refused) "
            "and lookups are answered from the last known pods; 0 when it is in step.",
            labels=["watch"])
        for source in self.sources():
            pods.add_metric([source.name, "live"], source.live)
            pods.add_metric([source.name, "departed"], source.departed)
            for reason in RESTART_REASONS:
                restarts.add_metric([source.name, reason], source.restarts.get(reason, 0))
            relists.add_metric([source.name], source.relists)
            last_sync.add_metric([source.name], source.last_sync_time)
            stale.add_metric([source.name], 1.0 if source.stale else 0.0)
        with _STATS_LOCK:
            lookups, misses = self._lookups, self._misses
        yield pods
        yield CounterMetricFamily(
            "netprobe_resolver_lookups", "Address lookups made by the collector.", value=lookups)
        yield CounterMetricFamily(
            "netprobe_resolver_lookup_misses",
            "Lookups of an address no cached pod owns (labelled host or external).", value=misses)
        yield restarts
        yield relists
        yield last_sync
        yield stale
        yield CounterMetricFamily(
            "netprobe_resolver_owner_lookup_errors",
            "ReplicaSet reads that failed (workload named from the pod-template-hash instead).",
            value=self.owner_lookup_errors)
