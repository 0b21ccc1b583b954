"""The agent's own metric families (docs/agent.md, "Self-metrics"): name -> (type, labels).

Pure data, read by the collector (which builds every self-metric family
through agent_family(), so an undeclared one fails) and by the operator
(agent_support.EXPORTED_METRICS: what dashboards and alerts may name).
"""
from __future__ import annotations

AGENT_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "netprobe_program_info": ("gauge", ("program", "attach")),
    "netprobe_program_up": ("gauge", ("program",)),
    "netprobe_program_errors_total": ("counter", ("program", "stage")),
    "netprobe_map_entries": ("gauge", ("program", "map")),
    "netprobe_map_max_entries": ("gauge", ("program", "map")),
    "netprobe_map_fill_ratio": ("gauge", ("program", "map")),
    "netprobe_map_evictions_total": ("counter", ("program", "map")),
    "netprobe_map_update_failures_total": ("counter", ("program", "map")),
    "netprobe_program_discarded_events_total": ("counter", ("program", "reason")),
    "netprobe_program_missed_runs_total": ("counter", ("program", "hook")),
    "netprobe_agent_scrape_errors_total": ("counter", ("program",)),
    "netprobe_agent_config_reloads_total": ("counter", ()),
    "netprobe_agent_config_reload_errors_total": ("counter", ()),
    "netprobe_agent_info": ("gauge", ("headers", "headers_source", "kernel")),
    "netprobe_resolver_unresolved_addresses": ("gauge", ("side",)),
    "netprobe_agent_scrape_duration_seconds": ("gauge", ()),
    # the HTTP endpoint (node_agent/server.py); the TLS ones (node_agent/tls.py)
    # exist only when /metrics is served over TLS and are not listed here
    "netprobe_agent_http_connections": ("gauge", ()),
    "netprobe_agent_http_requests_total": ("counter", ("path", "code")),
    "netprobe_agent_http_connections_dropped_total": ("counter", ("reason",)),
}
