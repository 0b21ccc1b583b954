"""tcp_rtt: smoothed RTT distribution of TCP connections (bpf/tcp_rtt.c).

Hooked on tcp_probe as a BTF-typed tracepoint (tp_btf: the socket's
members are plain loads), else as a raw tracepoint (srtt and addresses read
from the socket with bpf_probe_read_kernel; the kernel builds no record), else
as a tracepoint: the same samples every way.
"""
from node_agent.runtime.spec import (BTF_FIRST, PODS, SLOT, SOCK_ADDRESS_OFFSETS, Attach, MapInfo, Metric,
                                     ProgramSpec, Strategy, attach_option, btf_first_modes, front_cache_option,
                                     max_entries_option, sample_every_option)

SPEC = ProgramSpec(
    name="tcp_rtt",
    source="tcp_rtt.c",
    summary="smoothed round-trip time, one sample per segment received on an established connection",
    options=(
        attach_option("tcp_probe (the same samples every way)", BTF_FIRST),
        max_entries_option(16384),
        sample_every_option("received segment"),
        front_cache_option(),
    ),
    strategies=(
        Strategy("tp_btf", (Attach("tp_btf", "tcp:tcp_probe", "np_btf_tcp_rtt"),),
                 defines=("NP_ATTACH_TP_BTF",)),
        Strategy("raw_tracepoint", (Attach("raw_tracepoint", "tcp:tcp_probe", "np_raw_tcp_rtt"),),
                 defines=("NP_ATTACH_RAW_TRACEPOINT",)),
        Strategy("tracepoint", (Attach("tracepoint", "tcp:tcp_probe", "np_tcp_rtt"),)),
    ),
    choose_strategies=btf_first_modes,
    metrics=(
        Metric("netprobe_tcp_rtt_seconds", "histogram",
               "Smoothed TCP round-trip time seen by sockets of this pod, sampled at each "
               "segment they receive, by peer.",
               map="rtt_us", key=(PODS, SLOT), unit_seconds=1e-6, bucket_slots=(2, 22)),
    ),
    maps=(MapInfo("rtt_us", front=True),),
    map_errors=("rtt_us",),
    btf_offsets={"OFF_TCP_SRTT_US": ("tcp_sock", "srtt_us"), **SOCK_ADDRESS_OFFSETS},
)
