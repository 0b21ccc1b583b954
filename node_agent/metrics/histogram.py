"""log2 slots (bpf/netprobe.h) to cumulative Prometheus buckets.

Slot s counts values v (integers, in the histogram's unit) with
2^(s-1) < v <= 2^s, slot 0 counts v <= 1. So everything in slots <= s is
<= 2^s units: bucket `le = 2^s * unit` is the cumulative count up to slot s,
exactly, with no value of a higher slot able to belong to it. Each slot's
value also carries the sum of its observations; the histogram's sum is the
sum over slots.
"""
from __future__ import annotations

from prometheus_client.utils import floatToGoString

MAX_SLOT = 63


def log2_slot(v: int) -> int:
    """What the kernel side computes (np_log2_slot): smallest s with v <= 2^s."""
    if v <= 1:
        return 0
    return min((v - 1).bit_length(), MAX_SLOT)


def bucket_bounds(unit_seconds: float, first_slot: int, last_slot: int) -> list[float]:
    return [(1 << s) * unit_seconds for s in range(first_slot, last_slot + 1)]


def cumulative_buckets(slots: dict[int, int], unit_seconds: float,
                       first_slot: int, last_slot: int) -> list[tuple[str, int]]:
    """[(le, cumulative count)] for slots first..last, then +Inf (all)."""
    running = sum(c for s, c in slots.items() if s < first_slot)
    buckets = []
    for s in range(first_slot, last_slot + 1):
        running += slots.get(s, 0)
        buckets.append((floatToGoString((1 << s) * unit_seconds), running))
    buckets.append(("+Inf", sum(slots.values())))
    return buckets
