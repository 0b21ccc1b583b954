"""tcp_retransmit: retransmitted and sent TCP segments by pod and peer (bpf/tcp_retransmit.c).

rate(netprobe_tcp_retransmits_total) / rate(netprobe_tcp_segments_sent_total)
is the retransmit ratio. Counting segments sent needs the net:net_dev_start_xmit
tracepoint; without it (or with count_segments: false) the program runs with
retransmits only, as attach mode `retransmits_only`.
"""
from node_agent.runtime.spec import (PAIR_KEY, Attach, MapInfo, Metric, Option, ProgramSpec, Strategy,
                                     max_entries_option)

RETRANSMITS = Attach("tracepoint", "tcp:tcp_retransmit_skb", "np_tcp_retransmit")

WITH_SEGMENTS = Strategy("tracepoint", (
    RETRANSMITS,
    Attach("tracepoint", "net:net_dev_start_xmit", "np_tcp_segment_sent"),
), defines=("NP_COUNT_SEGMENTS",))

RETRANSMITS_ONLY = Strategy("retransmits_only", (RETRANSMITS,))


def _strategies(options: dict) -> tuple[str, ...]:
    return ("tracepoint", "retransmits_only") if options["count_segments"] else ("retransmits_only",)


SPEC = ProgramSpec(
    name="tcp_retransmit",
    source="tcp_retransmit.c",
    summary="retransmitted TCP segments and TCP segments sent, counted by the sending socket",
    options=(
        max_entries_option(8192),
        Option("count_segments", bool, True,
               "also count every TCP segment sent (netprobe_tcp_segments_sent_total, the ratio's "
               "denominator); one more tracepoint program that runs for every transmitted packet"),
    ),
    strategies=(WITH_SEGMENTS, RETRANSMITS_ONLY),
    choose_strategies=_strategies,
    metrics=(
        Metric("netprobe_tcp_retransmits_total", "counter",
               "TCP segments retransmitted by sockets of this pod, by peer.",
               map="retransmits", key=PAIR_KEY),
        Metric("netprobe_tcp_segments_sent_total", "counter",
               "TCP segments sent by this pod, by peer, retransmissions and pure ACKs included "
               "(like the kernel's Tcp OutSegs); the denominator of the retransmit ratio.",
               map="segments_sent", key=PAIR_KEY),
    ),
    maps=(MapInfo("retransmits"), MapInfo("segments_sent")),
    map_error_slots={0: "retransmits", 1: "segments_sent"},
    btf_offsets={
        "OFF_SKB_IIF": ("sk_buff", "skb_iif"),
        "OFF_SKB_DATA": ("sk_buff", "data"),
    },
)
