"""Counters that never read lower than at the previous scrape.

A counter the agent exports can read lower than before in two ways that are
not resets: a front cache entry moved into its hash between the collector's
read of the hash and its read of the fronts (bpf/netprobe.h: the counts are
read at the next scrape, never twice), and an LRU hash evicting a key (those
counts are gone; netprobe_map_evictions_total says so). Prometheus would take
either for a counter reset and add the whole value again in rate() and
increase(). So each counter series and each histogram series (buckets, count
and sum) is exported as the maximum of what it read and what it exported
last: what it exports never exceeds what the kernel counted, and catches up
at the next scrape. A series not seen for FORGET_AFTER scrapes is forgotten
within FORGET_AFTER more (its pod is gone), so the memory this takes follows
the live series.
"""
from __future__ import annotations

from node_agent.metrics.exposition import HistogramFamily, ScalarFamily

FORGET_AFTER = 100   # scrapes


class CounterFloor:
    def __init__(self):
        self._last: dict[tuple[str, tuple[str, ...]], tuple[int, object]] = {}
        self._scrape = 0

    def apply(self, family: ScalarFamily | HistogramFamily) -> None:
        """Raise each row of a counter or histogram family to its last exported value."""
        if isinstance(family, ScalarFamily) and family.kind != "counter":
            return
        histogram = isinstance(family, HistogramFamily)
        for labels, value in family.rows.items():
            key = (family.name, labels)
            last = self._last.get(key)
            if last is not None:
                before = last[1]
                if histogram:
                    counts, total = value
                    value = ([max(a, b) for a, b in zip(counts, before[0])], max(total, before[1]))
                else:
                    value = max(value, before)
                family.rows[labels] = value
            self._last[key] = (self._scrape, value)

    def end_scrape(self) -> None:
        """Forget series not seen for FORGET_AFTER scrapes."""
        self._scrape += 1
        if self._scrape % FORGET_AFTER == 0:
            oldest = self._scrape - FORGET_AFTER
            self._last = {k: v for k, v in self._last.items() if v[0] >= oldest}

    def __len__(self) -> int:
        return len(self._last)
