"""Checks only the operator can make: the schema has already rejected what it can.

Pure functions over plain data (the probe spec, node labels, other probes), so
they are unit-tested without a cluster. A Problem stops the apply: the objects
of the previous good spec stay as they are, and the probe's Degraded condition
carries the message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from . import agent_support


@dataclass(frozen=True)
class Problem:
    reason: str   # CamelCase, becomes the Degraded condition's reason
    message: str


@dataclass(frozen=True)
class OtherProbe:
    """What the port-conflict check needs to know about another probe."""
    name: str
    created: str          # metadata.creationTimestamp (RFC 3339 sorts as text)
    metrics_port: int
    node_selector: Mapping[str, str]


def check_spec(spec: Mapping) -> list[Problem]:
    """Problems visible in the spec alone."""
    problems: list[Problem] = []
    wanted = [p["name"] for p in spec["programs"]]
    missing = [name for name in wanted if name not in agent_support.IMPLEMENTED_PROGRAMS]
    if missing:
        problems.append(Problem(
            "UnsupportedProgram",
            f"program(s) {', '.join(missing)} are in the catalogue but not implemented by this "
            f"agent version (it implements {', '.join(sorted(agent_support.IMPLEMENTED_PROGRAMS))}); "
            "remove them from spec.programs",
        ))
    peer_labels = sorted(set(spec.get("labels", [])) & agent_support.PEER_LABELS)
    if peer_labels and spec["resolver"]["peers"] != "cluster":
        problems.append(Problem(
            "ConflictingOptions",
            f"spec.labels asks for {', '.join(peer_labels)} but spec.resolver.peers is "
            f"{spec['resolver']['peers']!r}: peers on other nodes could not be named; "
            "set resolver.peers to cluster or drop the peer labels",
        ))
    return problems


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_nodes(spec: Mapping, node_labels: Mapping[str, Mapping[str, str]]) -> Problem | None:
    """A nodeSelector matching no node: not fatal (nodes may join later), but said."""
    selector = spec.get("nodeSelector") or {}
    if any(selector_matches(selector, labels) for labels in node_labels.values()):
        return None
    if not node_labels:
        return Problem("NoMatchingNodes", "the cluster has no nodes")
    shown = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return Problem(
        "NoMatchingNodes",
        f"spec.nodeSelector {{{shown}}} matches none of the {len(node_labels)} nodes",
    )


def check_port_conflicts(
    name: str,
    created: str,
    spec: Mapping,
    others: Iterable[OtherProbe],
    node_labels: Mapping[str, Mapping[str, str]],
) -> Problem | None:
    """Agents use the host network: two probes on one node need distinct ports.

    The older probe keeps the port; the newer one is refused, so a second probe
    never breaks the first one's agents.
    """
    port = spec["agent"]["metricsPort"]
    mine = {n for n, labels in node_labels.items()
            if selector_matches(spec.get("nodeSelector") or {}, labels)}
    for other in others:
        if other.name == name or other.metrics_port != port:
            continue
        if (other.created, other.name) > (created, name):
            continue  # the other one is newer: it is the one to move
        shared = sorted(n for n in mine
                        if selector_matches(other.node_selector, node_labels[n]))
        if shared:
            return Problem(
                "MetricsPortConflict",
                f"spec.agent.metricsPort {port} is already used by NetworkProbe {other.name} on "
                f"node(s) {', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}; "
                "choose another port",
            )
    return None
