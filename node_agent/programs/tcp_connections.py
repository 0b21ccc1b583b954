"""tcp_connections: opens, closes, active, duration, resets (bpf/tcp_connections.c).

Hooked as BTF-typed tracepoints (tp_btf: socket fields are plain loads at
BTF offsets), else as raw tracepoints (the same fields read with
bpf_probe_read_kernel; the kernel builds no record and never skips either for
another tracing program), else as tracepoints: the same counts every way.
"""
from node_agent.runtime.spec import (BTF_FIRST, PODS, SKB_NETWORK_HEADER_OFFSETS, SLOT, SOCK_ADDRESS_OFFSETS,
                                     Attach, Code, MapInfo, Metric, ProgramSpec, Strategy, attach_option,
                                     btf_first_modes, front_cache_option, max_entries_option)

# Which side opened the connection, and which side sent a reset: the C code
# gets them as DIR_OUTBOUND, DIR_INBOUND, DIR_SENT, DIR_RECEIVED.
DIRECTION = Code("direction", "direction", {1: "outbound", 2: "inbound"}, define="DIR")
RESET_DIRECTION = Code("direction", "direction", {1: "sent", 2: "received"}, define="DIR")
CONN_KEY = (PODS, DIRECTION)

SPEC = ProgramSpec(
    name="tcp_connections",
    source="tcp_connections.c",
    summary="TCP connections opened (by direction), closed, active, their duration, and resets",
    options=(attach_option("inet_sock_set_state, tcp_send_reset and tcp_receive_reset", BTF_FIRST),
             max_entries_option(16384), front_cache_option()),
    strategies=(
        Strategy("tp_btf", (
            Attach("tp_btf", "sock:inet_sock_set_state", "np_btf_tcp_state"),
            Attach("tp_btf", "tcp:tcp_send_reset", "np_btf_tcp_send_reset"),
            Attach("tp_btf", "tcp:tcp_receive_reset", "np_btf_tcp_receive_reset"),
        ), defines=("NP_ATTACH_TP_BTF",)),
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
    choose_strategies=btf_first_modes,
    btf_offsets={**SOCK_ADDRESS_OFFSETS, **SKB_NETWORK_HEADER_OFFSETS,
                 "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
                 "OFF_SKC_STATE": ("sock_common", "skc_state")},
    metrics=(
        Metric("netprobe_tcp_connections_opened_total", "counter",
               "TCP connections of this pod that reached ESTABLISHED: outbound (it connected) "
               "or inbound (it accepted), by peer.",
               map="connections", value_field="opened", key=CONN_KEY),
        Metric("netprobe_tcp_connections_closed_total", "counter",
               "TCP connections of this pod (opened while the agent watched) that closed, by peer.",
               map="connections", value_field="closed", key=CONN_KEY),
        Metric("netprobe_tcp_connections_active", "gauge",
               "TCP connections of this pod opened while the agent watched and not closed yet.",
               map="connections", value_field="active", key=CONN_KEY, signed=True),
        Metric("netprobe_tcp_connection_duration_seconds", "histogram",
               "Lifetime of closed TCP connections of this pod, from ESTABLISHED to CLOSE.",
               map="duration_us", key=(PODS, DIRECTION, SLOT),
               unit_seconds=1e-6, bucket_slots=(7, 32)),
        Metric("netprobe_tcp_resets_total", "counter",
               "TCP resets this pod's sockets sent or received, by peer.",
               map="resets", key=(PODS, RESET_DIRECTION)),
    ),
    maps=(
        MapInfo("np_sockets", entries_from_sum_of=("connections", "active"), lru=False),
        MapInfo("connections", front=True), MapInfo("duration_us", front=True), MapInfo("resets"),
    ),
    map_errors=("np_sockets", "connections", "duration_us", "resets"),
)
