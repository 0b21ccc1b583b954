"""Layer 6: the agent's Resolver: a watch of this node's pods (the local side)
and, with peers="cluster", a watch of every pod (peers)."""
from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

from node_agent import kube_client
from node_agent.resolver.base import IPAddress, PodRef, Resolver, SourceHealth, normalize_ip

from .api import KubeApi
from .index import PodIndex
from .watch import PodWatch
from .workload import WorkloadNamer

PEER_SCOPES = ("cluster", "node")


class ResolverConfigError(ValueError):
    """The resolver cannot be built from the given settings."""


def _api_client_from_config(kubeconfig: str | None) -> Any:
    return kube_client.api_client(kubeconfig, "kubernetes resolver", ResolverConfigError)


class KubernetesResolver(Resolver):
    """Pods by address from the API server, for the agent's labels.

    Always watches the pods on `node_name` (a server-side field selector on
    spec.nodeName): the local side of every socket. With peers="cluster" it
    also watches every pod in the cluster, so peers get namespace/pod labels;
    that costs about 1.5 KiB of resident memory per pod (measured with 5,000
    pods, docs/resolver.md). With
    peers="node" a peer on another node is an address no pod owns.

    Host-network pods are not indexed: they share the node's address, which
    must resolve to nothing (the agent labels it `host`).
    """

    def __init__(self, node_name: str, peers: str = "cluster",
                 deleted_pod_grace_seconds: float = 60, kubeconfig: str | None = None,
                 *, api_client: Any = None):
        if not isinstance(node_name, str) or not node_name:
            raise ResolverConfigError("kubernetes resolver: node_name must be a non-empty string")
        if peers not in PEER_SCOPES:
            raise ResolverConfigError(
                f"kubernetes resolver: peers must be one of {', '.join(PEER_SCOPES)}, got {peers!r}")
        if isinstance(deleted_pod_grace_seconds, bool) or not isinstance(deleted_pod_grace_seconds, (int, float)) \
                or deleted_pod_grace_seconds < 0:
            raise ResolverConfigError(
                "kubernetes resolver: deleted_pod_grace_seconds must be a number >= 0, "
                f"got {deleted_pod_grace_seconds!r}")
        self.node_name = node_name
        self.peers = peers
        self.grace_seconds = float(deleted_pod_grace_seconds)
        self._api = api_client if api_client is not None else _api_client_from_config(kubeconfig)
        api = KubeApi(self._api)
        self.namer = WorkloadNamer(api.replicaset_owner)
        self.watches = [PodWatch("node", api, PodIndex(self.grace_seconds), self.namer,
                                 field_selector=f"spec.nodeName={node_name}")]
        if peers == "cluster":
            self.watches.append(PodWatch("cluster", api, PodIndex(self.grace_seconds), self.namer))
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for watch in self.watches:
            watch.start()
        if self._janitor is None:
            self._janitor = threading.Thread(target=self._sweep_loop, name="pod-index-sweeper",
                                             daemon=True)
            self._janitor.start()

    def stop(self) -> None:
        self._stop.set()
        for watch in self.watches:
            watch.stop()
        if self._janitor is not None:
            self._janitor.join(5)
            self._janitor = None

    def is_ready(self) -> bool:
        return all(watch.synced.is_set() for watch in self.watches)

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for watch in self.watches:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not watch.synced.wait(remaining):
                return False
        return True

    def _sweep_loop(self) -> None:
        # Lookups already ignore expired entries; this frees their memory.
        interval = min(5.0, max(1.0, self.grace_seconds / 4))
        while not self._stop.wait(interval):
            now = time.monotonic()
            for watch in self.watches:
                watch.index.sweep(now)

    # -- the scrape path -----------------------------------------------------

    def lookup(self, ip: IPAddress) -> PodRef | None:
        if type(ip) is not ipaddress.IPv4Address:
            ip = normalize_ip(ip)
        now = time.monotonic()
        found = None
        for watch in self.watches:  # the node's own watch first
            entry = watch.index.find(ip, now)
            if entry is None:
                continue
            if entry.live:
                found = entry
                break
            if found is None:
                found = entry  # departed: a live owner in the other watch beats it
        return self._counted(found.ref if found is not None else None)

    # -- own health (the metric families are the base class's) -----------------

    @property
    def owner_lookup_errors(self) -> int:
        return self.namer.errors

    def sources(self) -> list[SourceHealth]:
        now = time.monotonic()
        health = []
        for watch in self.watches:
            live, departed = watch.index.counts(now)
            health.append(SourceHealth(watch.name, live, departed, watch.relists, watch.last_sync_time,
                                       watch.stale, dict(watch.restarts)))
        return health
