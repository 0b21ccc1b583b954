"""tcp_rtt: smoothed RTT distribution of TCP connections (bpf/tcp_rtt.c)."""
from node_agent.runtime.spec import Attach, KeyLayout, MapInfo, Metric, ProgramSpec, Strategy, max_entries_option

RTT_KEY = KeyLayout(size=40, slot_offset=32)

SPEC = ProgramSpec(
    name="tcp_rtt",
    source="tcp_rtt.c",
    summary="smoothed round-trip time, one sample per segment received on an established connection",
    options=(max_entries_option(16384),),
    strategies=(
        Strategy("tracepoint", (Attach("tracepoint", "tcp:tcp_probe", "np_tcp_rtt"),)),
    ),
    metrics=(
        Metric("netprobe_tcp_rtt_seconds", "histogram",
               "Smoothed TCP round-trip time seen by sockets of this pod, sampled at each "
               "segment they receive, by peer.",
               map="rtt_us", key=RTT_KEY, unit_seconds=1e-6, bucket_slots=(2, 22)),
    ),
    maps=(MapInfo("rtt_us"),),
    map_error_slots={0: "rtt_us"},
)
