"""drops: packets the kernel dropped, by its drop reason, direction and pod (bpf/drops.c).

Hooked on skb:kfree_skb (the drop path only, not consume_skb) as a BTF-typed
tracepoint (sk_buff members are plain loads), else a raw tracepoint (no record
built), else a tracepoint: the same counts every way. Reason names come from the running kernel
(node_agent/kernel/drop_reasons.py), never from the headers BCC compiled with.
"""
from node_agent.kernel.drop_reasons import drop_reasons
from node_agent.runtime.spec import (BTF_FIRST, PODS, SKB_NETWORK_HEADER_OFFSETS, Attach, Code, MapInfo, Metric,
                                     ProgramSpec, Strategy, attach_option, btf_first_modes, front_cache_option,
                                     max_entries_option)

# Which side of the packet the pod labels are: C constants DIR_INGRESS, DIR_EGRESS.
DIRECTION = Code("direction", "direction", {1: "ingress", 2: "egress"}, define="DIR")
REASON = Code("reason", "reason", drop_reasons)

SPEC = ProgramSpec(
    name="drops",
    source="drops.c",
    summary="packets the kernel dropped, by its drop reason (named by the running kernel), direction and pod",
    options=(attach_option("skb:kfree_skb (the same counts every way)", BTF_FIRST), max_entries_option(4096),
             front_cache_option()),
    strategies=(
        Strategy("tp_btf", (Attach("tp_btf", "skb:kfree_skb", "np_btf_kfree_skb"),),
                 defines=("NP_ATTACH_TP_BTF",)),
        Strategy("raw_tracepoint", (Attach("raw_tracepoint", "skb:kfree_skb", "np_raw_kfree_skb"),),
                 defines=("NP_ATTACH_RAW_TRACEPOINT",)),
        Strategy("tracepoint", (Attach("tracepoint", "skb:kfree_skb", "np_kfree_skb"),)),
    ),
    choose_strategies=btf_first_modes,
    metrics=(
        Metric("netprobe_drops_total", "counter",
               "Packets the kernel dropped, by drop reason (as the running kernel names it) and "
               "direction: ingress (counted for the packet's destination) or egress (its source), by peer.",
               map="drops", key=(PODS, REASON, DIRECTION)),
    ),
    maps=(MapInfo("drops", front=True),),
    map_errors=("drops",),
    btf_offsets={**SKB_NETWORK_HEADER_OFFSETS,
                 "OFF_SKB_IIF": ("sk_buff", "skb_iif"),
                 "OFF_SKB_PROTOCOL": ("sk_buff", "protocol")},
    btf_enum_values={"NP_SKB_CONSUMED": ("skb_drop_reason", "SKB_CONSUMED")},
)
