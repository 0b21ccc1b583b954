"""log2 slots (bpf/netprobe.h) to cumulative Prometheus buckets.

Slot s counts values v (integers, in the histogram's unit) with
2^(s-1) < v <= 2^s, slot 0 counts v <= 1. So everything in slots <= s is
<= 2^s units: bucket `le = 2^s * unit` is the cumulative count up to slot s,
exactly, with no value of a higher slot able to belong to it. Each slot's
value also carries the sum of its observations; the histogram's sum is the
sum over slots.
"""
from __future__ import annotations

from functools import lru_cache

from prometheus_client.utils import floatToGoString

MAX_SLOT = 63


def log2_slot(v: int) -> int:
    """What the kernel side computes (np_log2_slot): smallest s with v <= 2^s."""
    if v <= 1:
        return 0
    return min((v - 1).bit_length(), MAX_SLOT)


def bucket_bounds(unit_seconds: float, first_slot: int, last_slot: int) -> list[float]:
    return [(1 << s) * unit_seconds for s in range(first_slot, last_slot + 1)]


@lru_cache(maxsize=64)
def bucket_labels(unit_seconds: float, first_slot: int, last_slot: int) -> tuple[str, ...]:
    """The `le` strings of slots first..last (without +Inf), formatted once per histogram shape."""
    return tuple(floatToGoString(b) for b in bucket_bounds(unit_seconds, first_slot, last_slot))


def cumulative_counts(slots: dict[int, int], first_slot: int, last_slot: int) -> list[int]:
    """Cumulative counts for slots first..last (lower slots folded into the first), then +Inf (all)."""
    running = sum(c for s, c in slots.items() if s < first_slot)
    counts = []
    get = slots.get
    for s in range(first_slot, last_slot + 1):
        running += get(s, 0)
        counts.append(running)
    counts.append(sum(slots.values()))
    return counts


def cumulative_buckets(slots: dict[int, int], unit_seconds: float,
                       first_slot: int, last_slot: int) -> list[tuple[str, int]]:
    """[(le, cumulative count)] for slots first..last, then +Inf (all)."""
    return list(zip(bucket_labels(unit_seconds, first_slot, last_slot) + ("+Inf",),
                    cumulative_counts(slots, first_slot, last_slot)))
