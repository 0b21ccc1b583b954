"""tcp_connections: opens, closes, active, duration, resets (bpf/tcp_connections.c).

Hooked as raw tracepoints (socket fields read at BTF offsets; the kernel
builds no record and never skips them for another tracing program) or,
failing that, as tracepoints: the same counts either way.
"""
from node_agent.runtime.spec import (SKB_NETWORK_HEADER_OFFSETS, SOCK_ADDRESS_OFFSETS, Attach, KeyLayout, MapInfo,
                                     Metric, ProgramSpec, Strategy, attach_modes, attach_option,
                                     max_entries_option)

CONN_KEY = KeyLayout(size=40, code_offset=32)
DURATION_KEY = KeyLayout(size=48, code_offset=32, slot_offset=40)
DIRECTION = {1: "outbound", 2: "inbound"}
RESET_DIRECTION = {1: "sent", 2: "received"}

SPEC = ProgramSpec(
    name="tcp_connections",
    source="tcp_connections.c",
    summary="TCP connections opened (by direction), closed, active, their duration, and resets",
    options=(attach_option("inet_sock_set_state, tcp_send_reset and tcp_receive_reset"),
             max_entries_option(16384)),
    strategies=(
        Strategy("raw_tracepoint", (
            Attach("raw_tracepoint", "sock:inet_sock_set_state", "np_raw_tcp_state"),
            Attach("raw_tracepoint", "tcp:tcp_send_reset", "np_raw_tcp_send_reset"),
            Attach("raw_tracepoint", "tcp:tcp_receive_reset", "np_raw_tcp_receive_reset"),
        ), defines=("NP_ATTACH_RAW_TRACEPOINT",)),
        Strategy("tracepoint", (
            Attach("tracepoint", "sock:inet_sock_set_state", "np_tcp_state"),
            Attach("tracepoint", "tcp:tcp_send_reset", "np_tcp_send_reset"),
            Attach("tracepoint", "tcp:tcp_receive_reset", "np_tcp_receive_reset"),
        )),
    ),
    choose_strategies=attach_modes,
    btf_offsets={**SOCK_ADDRESS_OFFSETS, **SKB_NETWORK_HEADER_OFFSETS,
                 "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
                 "OFF_SKC_STATE": ("sock_common", "skc_state")},
    metrics=(
        Metric("netprobe_tcp_connections_opened_total", "counter",
               "TCP connections of this pod that reached ESTABLISHED: outbound (it connected) "
               "or inbound (it accepted), by peer.",
               map="connections", value_field="opened", key=CONN_KEY, code_label="direction", code_values=DIRECTION),
        Metric("netprobe_tcp_connections_closed_total", "counter",
               "TCP connections of this pod (opened while the agent watched) that closed, by peer.",
               map="connections", value_field="closed", key=CONN_KEY, code_label="direction", code_values=DIRECTION),
        Metric("netprobe_tcp_connections_active", "gauge",
               "TCP connections of this pod opened while the agent watched and not closed yet.",
               map="connections", value_field="active", key=CONN_KEY, code_label="direction", code_values=DIRECTION, signed=True),
        Metric("netprobe_tcp_connection_duration_seconds", "histogram",
               "Lifetime of closed TCP connections of this pod, from ESTABLISHED to CLOSE.",
               map="duration_us", key=DURATION_KEY, code_label="direction", code_values=DIRECTION,
               unit_seconds=1e-6, bucket_slots=(7, 32)),
        Metric("netprobe_tcp_resets_total", "counter",
               "TCP resets this pod's sockets sent or received, by peer.",
               map="resets", key=CONN_KEY, code_label="direction", code_values=RESET_DIRECTION),
    ),
    maps=(
        MapInfo("np_sockets", entries_from_sum_of=("connections", "active"), lru=False),
        MapInfo("connections"), MapInfo("duration_us"), MapInfo("resets"),
    ),
    map_error_slots={0: "np_sockets", 1: "connections", 2: "duration_us", 3: "resets"},
)
