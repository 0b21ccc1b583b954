"""Map keys to label values, by the decoders a metric's description lists.

The key's fields come from the struct BCC built from the C (runtime/keys.py),
by name; each decoder of Metric.key turns its fields into labels: the
address pair into the identity labels (through the scrape's LabelScope), a
code into its name, a number into its decimal text. The histogram slot is
not a label: the collector reads it with slot_index().
"""
from __future__ import annotations

from typing import Callable

from node_agent.metrics.labels import LabelScope
from node_agent.runtime.keys import KeyFields
from node_agent.runtime.spec import Code, Metric, Number


def labeler(m: Metric, key: KeyFields, scope: LabelScope) -> Callable[[tuple], tuple[str, ...]]:
    """A function: unpacked key fields -> label values (identity labels, then m.extra_labels)."""
    extras = []
    for d in m.key:
        if isinstance(d, Code):
            extras.append((key.index(d.field), d.values() if callable(d.values) else d.values))
        elif isinstance(d, Number):
            extras.append((key.index(d.field), {}))
    pods = m.pods
    if pods is None:
        return lambda f: tuple(values.get(f[i]) or str(f[i]) for i, values in extras)
    local, remote, pair = key.index(pods.local), key.index(pods.remote), scope.labels
    if not extras:
        return lambda f: pair(f[local], f[remote])
    if len(extras) == 1:
        (i, values), = extras
        get = values.get
        return lambda f: pair(f[local], f[remote]) + (get(f[i]) or str(f[i]),)
    return lambda f: pair(f[local], f[remote]) + tuple(values.get(f[i]) or str(f[i]) for i, values in extras)


def slot_index(m: Metric, key: KeyFields) -> int:
    if m.slot is None:
        raise ValueError(f"{m.name}: a histogram's key needs a Slot")
    return key.index(m.slot.field)
