"""tcp_retransmit: retransmitted TCP segments by pod and peer (bpf/tcp_retransmit.c)."""
from node_agent.runtime.spec import PAIR_KEY, Attach, MapInfo, Metric, ProgramSpec, Strategy, max_entries_option

SPEC = ProgramSpec(
    name="tcp_retransmit",
    source="tcp_retransmit.c",
    summary="retransmitted TCP segments, counted by the retransmitting socket",
    options=(max_entries_option(8192),),
    strategies=(
        Strategy("tracepoint", (Attach("tracepoint", "tcp:tcp_retransmit_skb", "np_tcp_retransmit"),)),
    ),
    metrics=(
        Metric("netprobe_tcp_retransmits_total", "counter",
               "TCP segments retransmitted by sockets of this pod, by peer.",
               map="retransmits", key=PAIR_KEY),
    ),
    maps=(MapInfo("retransmits"),),
    map_error_slots={0: "retransmits"},
)
