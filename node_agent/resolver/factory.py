"""Build the resolver the config names."""
from __future__ import annotations

from node_agent.config import AgentConfig, KubernetesResolverConfig, StaticResolverConfig
from node_agent.resolver.base import Resolver


def make_resolver(config: AgentConfig) -> Resolver:
    rc = config.resolver
    if isinstance(rc, StaticResolverConfig):
        from node_agent.resolver.static import StaticResolver
        return StaticResolver(rc.file)
    if isinstance(rc, KubernetesResolverConfig):
        # Imported here: the kubernetes client is heavy, and a node using the
        # static resolver must not need it.
        from node_agent.resolver.kubernetes import KubernetesResolver
        return KubernetesResolver(node_name=config.node_name, peers=rc.peers,
                                  deleted_pod_grace_seconds=rc.deleted_pod_grace_seconds,
                                  kubeconfig=rc.kubeconfig)
    raise TypeError(f"unknown resolver config {rc!r}")
