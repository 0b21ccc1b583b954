"""What the agent version this operator deploys can do: the ONE place to change
when the agent grows a program or a metric.

The CRD's enum holds the whole catalogue (DESIGN.md) so that a probe written
today stays valid; a probe asking for a program the agent does not implement
yet is marked Degraded instead of being rendered into a config the agent would
refuse.
"""
from __future__ import annotations

# Programs the agent implements (docs/agent-config.md `programs:`).
IMPLEMENTED_PROGRAMS: frozenset[str] = frozenset(
    {"rx_latency", "tcp_retransmit", "tcp_connections", "tcp_rtt"}
)

# The whole catalogue, in the CRD's order (kept equal to the CRD by a test).
CATALOGUE: tuple[str, ...] = (
    "rx_latency", "tcp_retransmit", "tcp_connections", "tcp_rtt",
    "dns", "drops", "xdp", "flows",
)

# Labels a probe may add to pod-attributed series; namespace and pod are always there.
OPTIONAL_LABELS: tuple[str, ...] = ("workload", "peer_namespace", "peer_pod", "peer_workload")
PEER_LABELS: frozenset[str] = frozenset({"peer_namespace", "peer_pod", "peer_workload"})

# Metric families the agent exports, by type. Dashboards and alert rules may
# name only these (tests enforce it), so a renamed metric breaks a test, not a
# dashboard in production.
EXPORTED_METRICS: dict[str, str] = {
    "netprobe_tcp_retransmits_total": "counter",
    "netprobe_tcp_segments_sent_total": "counter",
    "netprobe_tcp_connections_opened_total": "counter",
    "netprobe_tcp_connections_closed_total": "counter",
    "netprobe_tcp_connections_active": "gauge",
    "netprobe_tcp_connection_duration_seconds": "histogram",
    "netprobe_tcp_resets_total": "counter",
    "netprobe_tcp_rtt_seconds": "histogram",
    "netprobe_rx_latency_seconds": "histogram",
    # the agent's own health (docs/agent.md, "Self-metrics")
    "netprobe_program_info": "gauge",
    "netprobe_program_up": "gauge",
    "netprobe_program_errors_total": "counter",
    "netprobe_program_discarded_events_total": "counter",
    "netprobe_map_entries": "gauge",
    "netprobe_map_max_entries": "gauge",
    "netprobe_map_fill_ratio": "gauge",
    "netprobe_map_update_failures_total": "counter",
    "netprobe_map_evictions_total": "counter",
    "netprobe_agent_scrape_duration_seconds": "gauge",
    "netprobe_agent_scrape_errors_total": "counter",
    "netprobe_agent_config_reloads_total": "counter",
    "netprobe_agent_config_reload_errors_total": "counter",
    "netprobe_agent_info": "gauge",
    "netprobe_resolver_unresolved_addresses": "gauge",
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
