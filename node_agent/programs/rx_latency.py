"""rx_latency: time received packets spend in the kernel (bpf/rx_latency.c).

Two spans (docs/agent.md): the classic kprobe on ip_rcv, ended where the
packet is handed to local delivery (ip_local_deliver: ip_rcv_finish, the
classic end, is inlined into ip_rcv on Debian 12's 6.1 and never fires), and on
kernels without kprobes net:netif_receive_skb -> skb:skb_copy_datagram_iovec,
hooked as BTF-typed tracepoints (tp_btf: sk_buff members are plain loads),
else as raw tracepoints (no record built: cheaper than plain ones), else as
tracepoints.
"""
from node_agent.runtime.spec import (PODS, SKB_NETWORK_HEADER_OFFSETS, SLOT, Attach, MapInfo, Metric, Option,
                                     ProgramSpec, Strategy, attach_modes, attach_option, front_cache_option,
                                     max_entries_option, sample_every_option)

KPROBE = Strategy("kprobe", (
    Attach("kprobe", "ip_rcv", "np_ip_rcv"),
    Attach("kprobe", "ip_local_deliver", "np_ip_local_deliver"),
    Attach("kprobe", "ipv6_rcv", "np_ip_rcv"),
    Attach("kprobe", "ip6_input", "np_ip_local_deliver"),
), defines=("NP_ATTACH_KPROBE",))

TP_BTF = Strategy("tp_btf", (
    Attach("tp_btf", "net:netif_receive_skb", "np_btf_netif_receive"),
    Attach("tp_btf", "skb:skb_copy_datagram_iovec", "np_btf_skb_copy"),
), defines=("NP_ATTACH_TP_BTF",))

RAW_TRACEPOINT = Strategy("raw_tracepoint", (
    Attach("raw_tracepoint", "net:netif_receive_skb", "np_raw_netif_receive"),
    Attach("raw_tracepoint", "skb:skb_copy_datagram_iovec", "np_raw_skb_copy"),
), defines=("NP_ATTACH_RAW_TRACEPOINT",))

TRACEPOINT = Strategy("tracepoint", (
    Attach("tracepoint", "net:netif_receive_skb", "np_netif_receive"),
    Attach("tracepoint", "skb:skb_copy_datagram_iovec", "np_skb_copy"),
), defines=("NP_ATTACH_TRACEPOINT",))


MODES = ("kprobe", "tp_btf", "raw_tracepoint", "tracepoint")


def _strategies(options: dict) -> tuple[str, ...]:
    return attach_modes(options, MODES)


SPEC = ProgramSpec(
    name="rx_latency",
    source="rx_latency.c",
    summary="time a received packet spends in the kernel stack (span depends on the attach mode)",
    options=(
        attach_option("the receive path (kprobe and the tracepoints measure different spans)", MODES),
        max_entries_option(16384),
        Option("inflight_entries", int, 65536,
               "slots of the direct-mapped start-time table (24 bytes each: skb address, packet identity, start time); more slots, fewer "
               "samples lost to another packet taking the slot before the first is read",
               min=1024, max=1 << 22, define="NP_INFLIGHT_ENTRIES"),
        Option("stale_after_ms", int, 10000, "an end later than this after its start is a reused skb, not a sample",
               min=1, max=600000, define="NP_MAX_AGE_NS", to_c=lambda ms: f"{ms * 1000000}ULL"),
        front_cache_option(),
        sample_every_option("received packet", "chosen by a hash of its headers (its start and end alike)"),
    ),
    strategies=(KPROBE, TP_BTF, RAW_TRACEPOINT, TRACEPOINT),
    choose_strategies=_strategies,
    metrics=(
        Metric("netprobe_rx_latency_seconds", "histogram",
               "Time received packets addressed to this pod spent in the kernel, by sender; the "
               "span measured depends on the attach mode (netprobe_program_info).",
               map="latency_ns", key=(PODS, SLOT), unit_seconds=1e-9, bucket_slots=(8, 30)),
    ),
    maps=(MapInfo("latency_ns", front=True),),
    map_errors=("latency_ns",),
    discards=("unmatched", "stale"),
    # the IP header at the start (skb->data) and at the end (head + network_header)
    btf_offsets={**SKB_NETWORK_HEADER_OFFSETS, "OFF_SKB_DATA": ("sk_buff", "data")},
)
