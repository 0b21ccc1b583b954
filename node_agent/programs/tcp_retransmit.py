"""tcp_retransmit: retransmitted and sent TCP segments by pod and peer (bpf/tcp_retransmit.c).

rate(netprobe_tcp_retransmits_total) / rate(netprobe_tcp_segments_sent_total)
is the retransmit ratio, both in segments. Counting segments sent needs net:net_dev_start_xmit
(attach mode `tp_btf`, else `raw_tracepoint`, else `tracepoint`); without it (or with
count_segments: false) the program runs with retransmits only, as attach mode
`retransmits_only`.
"""
from node_agent.runtime.spec import (BTF_FIRST, PODS, SKB_NETWORK_HEADER_OFFSETS, Attach, MapInfo, Metric, Option,
                                     ProgramSpec, Strategy, attach_modes, attach_option, front_cache_option,
                                     max_entries_option)

RETRANSMITS = (Attach("tracepoint", "tcp:tcp_retransmit_skb", "np_tcp_retransmit"),
               Attach("tracepoint", "tcp:tcp_retransmit_synack", "np_tcp_retransmit_synack"))

# Segments sent hook every transmitted packet: as a BTF-typed tracepoint by
# default (sk_buff members are plain loads), else as a raw tracepoint (no
# record built), else as a tracepoint.
SEGMENTS_TP_BTF = Strategy("tp_btf", (
    *RETRANSMITS,
    Attach("tp_btf", "net:net_dev_start_xmit", "np_btf_segment_sent"),
), defines=("NP_COUNT_SEGMENTS", "NP_ATTACH_TP_BTF"))

SEGMENTS_RAW = Strategy("raw_tracepoint", (
    *RETRANSMITS,
    Attach("raw_tracepoint", "net:net_dev_start_xmit", "np_raw_segment_sent"),
), defines=("NP_COUNT_SEGMENTS",))

SEGMENTS_TRACEPOINT = Strategy("tracepoint", (
    *RETRANSMITS,
    Attach("tracepoint", "net:net_dev_start_xmit", "np_tcp_segment_sent"),
), defines=("NP_COUNT_SEGMENTS",))

RETRANSMITS_ONLY = Strategy("retransmits_only", RETRANSMITS)


def _strategies(options: dict) -> tuple[str, ...]:
    if not options["count_segments"]:
        return ("retransmits_only",)
    return attach_modes(options, BTF_FIRST) + ("retransmits_only",)


SPEC = ProgramSpec(
    name="tcp_retransmit",
    source="tcp_retransmit.c",
    summary="retransmitted TCP segments and TCP segments sent, counted by the sending socket",
    options=(
        max_entries_option(8192),
        attach_option("net_dev_start_xmit for segments sent", BTF_FIRST),
        Option("count_segments", bool, True,
               "also count every TCP segment sent (netprobe_tcp_segments_sent_total, the ratio's "
               "denominator); one more tracepoint program that runs for every transmitted packet. "
               "false (or a kernel without net:net_dev_start_xmit): retransmits only, attach mode "
               "retransmits_only"),
        front_cache_option(),
    ),
    strategies=(SEGMENTS_TP_BTF, SEGMENTS_RAW, SEGMENTS_TRACEPOINT, RETRANSMITS_ONLY),
    choose_strategies=_strategies,
    metrics=(
        Metric("netprobe_tcp_retransmits_total", "counter",
               "TCP segments retransmitted by sockets of this pod, by peer (a TSO/GSO retransmission "
               "counts its segments, like the kernel's Tcp RetransSegs); the numerator of the "
               "retransmit ratio.",
               map="retransmits", key=(PODS,)),
        Metric("netprobe_tcp_retransmit_events_total", "counter",
               "Retransmissions by sockets of this pod, by peer: one per retransmitted packet "
               "however many segments it carries (what tcpretrans shows).",
               map="retransmit_events", key=(PODS,)),
        Metric("netprobe_tcp_segments_sent_total", "counter",
               "TCP segments sent by this pod, by peer, retransmissions and pure ACKs included "
               "(the kernel's Tcp OutSegs + RetransSegs); the denominator of the retransmit ratio.",
               map="segments_sent", key=(PODS,)),
    ),
    maps=(MapInfo("retransmits"), MapInfo("retransmit_events"), MapInfo("segments_sent", front=True)),
    map_errors=("retransmits", "segments_sent", "retransmit_events"),
    btf_offsets={
        "OFF_SKB_IIF": ("sk_buff", "skb_iif"),
        **SKB_NETWORK_HEADER_OFFSETS,
        "OFF_SKB_END": ("sk_buff", "end"),
        "OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
        "OFF_SHINFO_GSO_SEGS": ("skb_shared_info", "gso_segs"),
        # retransmits: tcp_skb_pcount(skb), and whether the record has err
        "OFF_SKB_CB": ("sk_buff", "cb"),
        "OFF_TCP_SKB_CB_GSO_SEGS": ("tcp_skb_cb", "tcp_gso_segs"),
    },
)
