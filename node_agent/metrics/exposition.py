"""/metrics text (format 0.0.4) for the program metrics, without prometheus_client's per-sample cost.

At 10,000 series, building prometheus_client families (a Sample with a label
dict per bucket) and formatting them with generate_latest (sorting, escaping
and formatting every label of every line) took most of a scrape. Here the
collector hands over rows, one per label set: (label values, value) for
counters and gauges, (label values, cumulative bucket counts, sum) for
histograms. Each label set is escaped and joined once and reused across
scrapes (ExpositionCache); the `le` part of a bucket line is built once per
family.

The output is byte for byte what generate_latest prints for the equivalent
prometheus_client families (`to_metric()`), which tests/agent/test_exposition.py
checks: label names sorted (so `le` sits among them in name order), values
through floatToGoString (`3.0`, `1.234567e+06`, `+Inf`, `NaN`), counters named
`<name>_total` in HELP, TYPE and samples, no `_created`. The agent's own small
families stay prometheus_client objects and go through generate_latest itself.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence, Union

from prometheus_client import generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.utils import floatToGoString

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# Integers in this range print as "<int>.0" under floatToGoString: exactly
# representable as floats, below the 1e6 from which it switches to exponents.
_PLAIN_INT_LOW, _PLAIN_INT_HIGH = -(10 ** 15), 10 ** 6


def format_value(v: float) -> str:
    """floatToGoString(v), with a shortcut for the common case of a small integer."""
    if type(v) is int and _PLAIN_INT_LOW < v < _PLAIN_INT_HIGH:
        return f"{v}.0"
    return floatToGoString(v)


def escape_label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _check_names(name: str, label_names: Sequence[str]) -> tuple[str, ...]:
    if not _METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    for label in label_names:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"metric {name}: invalid label name {label!r}")
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"metric {name}: duplicate label names in {list(label_names)}")
    return tuple(label_names)


class ScalarFamily:
    """A counter or gauge: {label values: value}."""

    def __init__(self, name: str, kind: str, help: str, label_names: Sequence[str]):
        if kind not in ("counter", "gauge"):
            raise ValueError(f"metric {name}: kind must be counter or gauge, got {kind!r}")
        if kind == "counter" and name.endswith("_total"):   # as CounterMetricFamily: the suffix is added
            name = name[:-len("_total")]
        self.name, self.kind, self.help = name, kind, help
        self.label_names = _check_names(name, label_names)
        self.rows: dict[tuple[str, ...], float] = {}

    def add(self, label_values: tuple[str, ...], value: float) -> None:
        if len(label_values) != len(self.label_names):
            raise ValueError(f"metric {self.name}: {len(label_values)} label values for "
                             f"{len(self.label_names)} label names {list(self.label_names)}")
        self.rows[tuple(label_values)] = value

    def to_metric(self) -> Metric:
        """The same family as a prometheus_client object (registry protocol, tests)."""
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.help, labels=self.label_names)
        for values, value in self.rows.items():
            family.add_metric(list(values), value)
        return family


class HistogramFamily:
    """A histogram with fixed bucket bounds: {label values: (cumulative counts, sum)}.

    `bounds` are the `le` strings of the finite buckets, ascending; each row's
    counts has one more element, the +Inf bucket, which is also the count.
    """

    def __init__(self, name: str, help: str, label_names: Sequence[str], bounds: Sequence[str]):
        self.name, self.help = name, help
        self.label_names = _check_names(name, label_names)
        if "le" in self.label_names:
            raise ValueError(f"histogram {name}: `le` is reserved for buckets")
        floats = [float(b) for b in bounds]
        if floats != sorted(floats) or len(set(floats)) != len(floats) or (floats and floats[0] < 0):
            raise ValueError(f"histogram {name}: bucket bounds must be ascending, distinct, >= 0: {list(bounds)}")
        self.bounds = tuple(bounds) + ("+Inf",)
        self.rows: dict[tuple[str, ...], tuple[Sequence[int], float]] = {}

    def add(self, label_values: tuple[str, ...], counts: Sequence[int], sum_value: float) -> None:
        if len(label_values) != len(self.label_names):
            raise ValueError(f"histogram {self.name}: {len(label_values)} label values for "
                             f"{len(self.label_names)} label names {list(self.label_names)}")
        if len(counts) != len(self.bounds):
            raise ValueError(f"histogram {self.name}: {len(counts)} bucket counts for "
                             f"{len(self.bounds)} buckets (the last is +Inf)")
        self.rows[tuple(label_values)] = (counts, sum_value)

    def to_metric(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.label_names)
        for values, (counts, sum_value) in self.rows.items():
            family.add_metric(list(values), list(zip(self.bounds, counts)), sum_value)
        return family


Family = Union[ScalarFamily, HistogramFamily, Metric]


class _LabelSets:
    """How one tuple of label names is rendered: the sorted order, and where `le` falls in it."""

    def __init__(self, label_names: tuple[str, ...]):
        order = sorted(range(len(label_names)), key=label_names.__getitem__)
        self.names = [label_names[i] for i in order]
        self.order = order
        self.before_le = sum(1 for n in self.names if n < "le")

    def render(self, values: tuple[str, ...]) -> tuple[str, str, str]:
        """(all labels, those sorting before `le`, those after), each `a="x",b="y"`."""
        pairs = [f'{name}="{escape_label_value(values[i])}"' for name, i in zip(self.names, self.order)]
        return ",".join(pairs), ",".join(pairs[:self.before_le]), ",".join(pairs[self.before_le:])


class ExpositionCache:
    """Renders families to text 0.0.4, keeping each label set's rendered text between scrapes.

    The cache holds exactly the label sets of the last render: each render
    builds a fresh cache from the entries it used, so a pod that is gone stops
    costing memory one scrape after its series leave. Safe to call from
    several threads at once (each render keeps its own fresh cache; the last
    one to finish is kept).
    """

    def __init__(self):
        self._layouts: dict[tuple[str, ...], _LabelSets] = {}
        self._rendered: dict[tuple[str, ...], dict[tuple[str, ...], tuple[str, str, str]]] = {}

    def __len__(self) -> int:
        """Label sets held (for tests and curiosity)."""
        return sum(len(v) for v in self._rendered.values())

    def render(self, families: Iterable[Family]) -> bytes:
        out: list[str] = []
        fresh: dict[tuple[str, ...], dict[tuple[str, ...], tuple[str, str, str]]] = {}
        pending: list[Metric] = []    # consecutive prometheus_client families, formatted together
        for family in families:
            if isinstance(family, Metric):
                pending.append(family)
                continue
            if pending:
                out.append(_generate_latest(pending))
                pending = []
            labels = self._labels_for(family.label_names, fresh)
            if isinstance(family, HistogramFamily):
                self._histogram(family, labels, out)
            else:
                self._scalar(family, labels, out)
        if pending:
            out.append(_generate_latest(pending))
        self._rendered = fresh
        return "".join(out).encode("utf-8")

    def _labels_for(self, label_names: tuple[str, ...], fresh: dict):
        """A function: label values -> rendered (all, before le, after le), through both caches."""
        layout = self._layouts.get(label_names)
        if layout is None:
            layout = self._layouts[label_names] = _LabelSets(label_names)
        previous = self._rendered.get(label_names, {})
        current = fresh.setdefault(label_names, {})

        def rendered(values: tuple[str, ...]) -> tuple[str, str, str]:
            text = current.get(values)
            if text is None:
                text = previous.get(values)
                if text is None:
                    text = layout.render(values)
                current[values] = text
            return text
        return rendered

    @staticmethod
    def _head(name: str, help: str, kind: str) -> str:
        return f"# HELP {name} {_escape_help(help)}\n# TYPE {name} {kind}\n"

    def _scalar(self, family: ScalarFamily, labels, out: list[str]) -> None:
        name = family.name + "_total" if family.kind == "counter" else family.name
        out.append(self._head(name, family.help, family.kind))
        if not family.label_names:
            out.extend(f"{name} {format_value(v)}\n" for v in family.rows.values())
            return
        out.extend(f"{name}{{{labels(values)[0]}}} {format_value(v)}\n" for values, v in family.rows.items())

    def _histogram(self, family: HistogramFamily, labels, out: list[str]) -> None:
        name = family.name
        out.append(self._head(name, family.help, "histogram"))
        les = [f'le="{b}"' for b in family.bounds]
        bucket, count, total = name + "_bucket{", name + "_count", name + "_sum"
        for values, (counts, sum_value) in family.rows.items():
            every, before, after = labels(values)
            head = f"{bucket}{before}," if before else bucket
            tail = f",{after}}} " if after else "} "
            # bucket counts are almost always small ints: format_value's shortcut, inlined
            out.extend([f"{head}{le}{tail}{c}.0\n" if type(c) is int and 0 <= c < _PLAIN_INT_HIGH
                        else f"{head}{le}{tail}{format_value(c)}\n" for le, c in zip(les, counts)])
            braces = f"{{{every}}}" if every else ""
            out.append(f"{count}{braces} {format_value(counts[-1])}\n{total}{braces} {format_value(sum_value)}\n")


class _Families:
    """Just enough of a registry for generate_latest."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


def _generate_latest(families: list[Metric]) -> str:
    return generate_latest(_Families(families)).decode("utf-8")
