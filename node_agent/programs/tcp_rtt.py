"""tcp_rtt: smoothed RTT distribution of TCP connections (bpf/tcp_rtt.c).

Hooked on tcp_probe as a BTF-typed tracepoint (tp_btf: the socket's
members are plain loads), else as a raw tracepoint (srtt and addresses read
from the socket with bpf_probe_read_kernel; the kernel builds no record), else
as a tracepoint: the same samples every way.

On tp_btf, samples are counted per socket (bpf/tcp_rtt.c: a slot of
rtt_sockets per socket, found through socket-local storage: an array store per
segment instead of a hash update); at each scrape the agent folds the slots of
closed sockets into rtt_us and adds the live ones (fold_closed_sockets,
live_socket_entries), all under the instance's scrape lock.
"""
from __future__ import annotations

import ctypes
import logging
import struct

from node_agent.runtime.spec import (BTF_FIRST, PODS, SLOT, SOCK_ADDRESS_OFFSETS, Attach, MapInfo, Metric, Option,
                                     ProgramSpec, Strategy, attach_option, btf_first_modes, max_entries_option,
                                     sample_every_option)

log = logging.getLogger(__name__)

SOCKET_SLOTS_OPTION = "socket_slots"
FOLDED_PAD, LIVE_PAD = 1, 2     # rtt_key.pad of the agent's entries (the kernel writes 0)


def _per_socket(inst) -> bool:
    return inst.attach == "tp_btf"


def free_all_socket_slots(bpf, strategy) -> None:
    """Before attaching on tp_btf: every slot of rtt_sockets is free."""
    if strategy.name != "tp_btf":
        return
    free = bpf[b"rtt_free"]
    for index in range(bpf[b"rtt_sockets"].max_entries):
        free.push(ctypes.c_uint32(index))


def _key(pair: bytes, slot: int, pad: int) -> bytes:
    return pair + struct.pack("<II", slot, pad)          # struct rtt_key: pair, slot, pad


def fold_closed_sockets(inst) -> None:
    """At scrape, before rtt_us is read: the slots of sockets that closed are
    added to rtt_us under keys with pad = 1 (the kernel never writes those:
    no per-CPU value has two writers), cleared, and their indices freed."""
    if not _per_socket(inst):
        return
    closed, sockets, free, rtt = (inst.table(n) for n in ("rtt_closed", "rtt_sockets", "rtt_free", "rtt_us"))
    indices = []
    while True:
        try:
            indices.append(closed.pop().value)
        except KeyError:
            break
    if not indices:
        return
    adds: dict[bytes, list[int]] = {}
    for index in indices:
        sock = sockets[ctypes.c_int(index)]
        pair = bytes(sock.pair)
        for slot, h in enumerate(sock.hist):
            if h.count:
                total = adds.setdefault(_key(pair, slot, FOLDED_PAD), [0, 0])
                total[0] += h.count
                total[1] += h.sum
    for raw, (count, total) in adds.items():
        key = rtt.Key.from_buffer_copy(raw)
        try:
            current = rtt.getvalue(key)
            count += sum(v.count for v in current)
            total += sum(v.sum for v in current)
        except KeyError:
            pass
        leaf = rtt.Leaf()              # one value per CPU: the total on the first
        leaf[0].count, leaf[0].sum = count, total
        try:
            rtt[key] = leaf
        except Exception as e:
            log.warning("closed sockets' RTT samples not recorded",
                        extra={"kv": {"program": "tcp_rtt", "samples": count, "error": str(e)}})
    empty = sockets.Leaf()
    for index in indices:              # cleared before they are free again
        sockets[ctypes.c_int(index)] = empty
        free.push(ctypes.c_uint32(index))


def live_socket_entries(inst) -> dict[str, list]:
    """At scrape, after rtt_us is read: the slots of the sockets still open
    (and of closed ones not folded yet), as rtt_us entries."""
    if not _per_socket(inst):
        return {}
    sockets = inst.table("rtt_sockets")
    try:
        items = sockets.items_lookup_batch()
    except Exception:                  # kernels without batch lookup on arrays
        items = sockets.items()
    entries = []
    for _, sock in items:
        pair = None
        for slot, h in enumerate(sock.hist):
            if h.count:
                pair = pair or bytes(sock.pair)
                entries.append((_key(pair, slot, LIVE_PAD), {"count": h.count, "sum": h.sum}))
    return {"rtt_us": entries}

SPEC = ProgramSpec(
    name="tcp_rtt",
    source="tcp_rtt.c",
    summary="smoothed round-trip time, one sample per segment received on an established connection",
    options=(
        attach_option("tcp_probe (the same samples every way)", BTF_FIRST),
        max_entries_option(16384),
        sample_every_option("received segment per CPU"),
        Option(SOCKET_SLOTS_OPTION, int, 4096,
               "tp_btf: sockets whose samples are counted per socket (416 bytes each; a "
               "socket beyond them is counted by address, as on the other attach modes)",
               min=64, max=1 << 18, define="NP_SOCKET_SLOTS"),
    ),
    strategies=(
        Strategy("tp_btf", (Attach("tp_btf", "tcp:tcp_probe", "np_btf_tcp_rtt"),
                            Attach("tp_btf", "sock:inet_sock_set_state", "np_btf_rtt_close")),
                 defines=("NP_ATTACH_TP_BTF",)),
        Strategy("raw_tracepoint", (Attach("raw_tracepoint", "tcp:tcp_probe", "np_raw_tcp_rtt"),),
                 defines=("NP_ATTACH_RAW_TRACEPOINT",)),
        Strategy("tracepoint", (Attach("tracepoint", "tcp:tcp_probe", "np_tcp_rtt"),)),
    ),
    choose_strategies=btf_first_modes,
    prepare=free_all_socket_slots,
    before_scrape=fold_closed_sockets,
    live_entries=live_socket_entries,
    metrics=(
        Metric("netprobe_tcp_rtt_seconds", "histogram",
               "Smoothed TCP round-trip time seen by sockets of this pod, sampled at each "
               "segment they receive, by peer.",
               map="rtt_us", key=(PODS, SLOT), unit_seconds=1e-6, bucket_slots=(2, 22)),
    ),
    maps=(MapInfo("rtt_us"),),
    map_errors=("rtt_us",),
    btf_offsets={"OFF_TCP_SRTT_US": ("tcp_sock", "srtt_us"), **SOCK_ADDRESS_OFFSETS},
)
