"""tcp_rtt: smoothed RTT distribution of TCP connections (bpf/tcp_rtt.c).

Hooked on tcp_probe as a raw tracepoint (srtt and addresses read from the
socket; the kernel builds no record) or, failing that, as a tracepoint: the
same samples either way.
"""
from node_agent.runtime.spec import (Attach, KeyLayout, MapInfo, Metric, Option, ProgramSpec, Strategy,
                                     max_entries_option)

RTT_KEY = KeyLayout(size=40, slot_offset=32)

# struct sock_common members np_sock_addresses reads (bpf/netprobe.h).
SOCK_ADDRESS_OFFSETS = {
    "OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
}


def _strategies(options: dict) -> tuple[str, ...]:
    mode = options["attach"]
    return ("raw_tracepoint", "tracepoint") if mode == "auto" else (mode,)


SPEC = ProgramSpec(
    name="tcp_rtt",
    source="tcp_rtt.c",
    summary="smoothed round-trip time, one sample per segment received on an established connection",
    options=(
        Option("attach", str, "auto", "auto (raw_tracepoint, else tracepoint) | raw_tracepoint | tracepoint",
               choices=("auto", "raw_tracepoint", "tracepoint")),
        max_entries_option(16384),
    ),
    strategies=(
        Strategy("raw_tracepoint", (Attach("raw_tracepoint", "tcp:tcp_probe", "np_raw_tcp_rtt"),),
                 defines=("NP_ATTACH_RAW_TRACEPOINT",)),
        Strategy("tracepoint", (Attach("tracepoint", "tcp:tcp_probe", "np_tcp_rtt"),)),
    ),
    choose_strategies=_strategies,
    metrics=(
        Metric("netprobe_tcp_rtt_seconds", "histogram",
               "Smoothed TCP round-trip time seen by sockets of this pod, sampled at each "
               "segment they receive, by peer.",
               map="rtt_us", key=RTT_KEY, unit_seconds=1e-6, bucket_slots=(2, 22)),
    ),
    maps=(MapInfo("rtt_us"),),
    map_error_slots={0: "rtt_us"},
    btf_offsets={"OFF_TCP_SRTT_US": ("tcp_sock", "srtt_us"), **SOCK_ADDRESS_OFFSETS},
)
