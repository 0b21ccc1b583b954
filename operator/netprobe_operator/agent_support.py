"""What the agent version this operator deploys can do, read from the agent's
own program catalogue (node_agent/programs/: pure data, no bcc) in the same
distribution and image: nothing here is written twice.

The CRD's enum holds the whole catalogue, planned programs too, so that a
probe written today stays valid; a probe asking for a program the agent does
not implement yet is marked Degraded instead of being rendered into a config
the agent would refuse.
"""
from __future__ import annotations

from node_agent.metrics.agent_metrics import AGENT_METRICS
from node_agent.programs import CATALOGUE as PROGRAM_SPECS
from node_agent.programs import NAMES

# Programs the agent implements (docs/agent-config.md `programs:`).
IMPLEMENTED_PROGRAMS: frozenset[str] = frozenset(PROGRAM_SPECS)

# The whole catalogue, in the CRD's order.
CATALOGUE: tuple[str, ...] = NAMES

# Labels a probe may add to pod-attributed series; namespace and pod are always there.
OPTIONAL_LABELS: tuple[str, ...] = ("workload", "peer_namespace", "peer_pod", "peer_workload")
PEER_LABELS: frozenset[str] = frozenset({"peer_namespace", "peer_pod", "peer_workload"})

# Metric families the agent exports, by type: the programs' and the agent's
# own. Dashboards and alert rules may name only these (tests enforce it), so a
# renamed metric breaks a test, not a dashboard in production.
EXPORTED_METRICS: dict[str, str] = {
    **{m.name: m.kind for spec in PROGRAM_SPECS.values() for m in spec.metrics},
    **{name: kind for name, (kind, _) in AGENT_METRICS.items()},
}


def exported_series_names() -> frozenset[str]:
    """Every series name a query may select: histograms expand to their parts."""
    names = set()
    for family, kind in EXPORTED_METRICS.items():
        if kind == "histogram":
            names.update({f"{family}_bucket", f"{family}_sum", f"{family}_count"})
        else:
            names.add(family)
    # `up` is Prometheus' own per-target series, present for every scraped agent.
    names.add("up")
    return frozenset(names)
