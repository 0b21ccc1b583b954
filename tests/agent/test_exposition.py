"""The /metrics renderer (node_agent/metrics/exposition.py) against prometheus_client's.

Whatever the fast path prints must be what generate_latest prints for the same
families: the same bytes, so the same families and samples for every parser,
dashboard and rule downstream. No kernel needed: the collector test feeds the
real catalogue's specs from fake maps.
"""
from __future__ import annotations

import ctypes
import ipaddress
import math
import random
import subprocess
import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from node_agent.metrics.collector import AgentCollector, AgentState
from node_agent.metrics.exposition import (ExpositionCache, HistogramFamily, ScalarFamily,
                                           format_value)
from node_agent.metrics.histogram import bucket_labels
from node_agent.programs import CATALOGUE
from node_agent.resolver.base import PodRef, Resolver
from node_agent.runtime.keys import KeyFields
from node_agent.runtime.spec import Code, Pods, Slot

IDENTITY = ("namespace", "pod", "workload", "peer_namespace", "peer_pod", "peer_workload")
AWKWARD_VALUES = ['say "hi"', "back\\slash", "two\nlines", "ünïcødé ✓", "", "trailing\\", '\\"\n']


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def reference(families) -> bytes:
    """What prometheus_client prints for the same families."""
    return generate_latest(_Families([f if not hasattr(f, "to_metric") else f.to_metric() for f in families]))


def parsed(text: bytes) -> list:
    """(family name, type, help, [(sample name, labels, value)]) with NaN made comparable."""
    out = []
    for fam in text_string_to_metric_families(text.decode("utf-8")):
        samples = [(s.name, s.labels, "NaN" if math.isnan(s.value) else s.value) for s in fam.samples]
        out.append((fam.name, fam.type, fam.documentation, samples))
    return out


def assert_same_as_prometheus_client(families) -> bytes:
    ours = ExpositionCache().render(families)
    expected = reference(families)
    assert ours == expected
    assert parsed(ours) == parsed(expected)
    return ours


# ---------------------------------------------------------------- values


EDGE_NUMBERS = [0, 1, -1, 7, 999_999, 1_000_000, 1_234_567, -1_234_567, 10 ** 15 - 1, 10 ** 15, -(10 ** 15) + 1,
                -(10 ** 15), 2 ** 53, 2 ** 53 + 1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 10 ** 16, 10 ** 30,
                0.0, -0.0, 0.5, 1e-9, 3.0e-6, 123456.789, 1234567.891, 1e21, -2.5e-7,
                math.inf, -math.inf, math.nan, True, False]


@pytest.mark.parametrize("value", EDGE_NUMBERS, ids=repr)
def test_values_are_formatted_as_prometheus_client_formats_them(value):
    assert format_value(value) == floatToGoString(value)


def test_random_integers_and_floats_format_like_prometheus_client():
    rng = random.Random(5)
    for _ in range(20_000):
        magnitude = 10 ** rng.randint(0, 20)
        for v in (rng.randint(-magnitude, magnitude), rng.uniform(-magnitude, magnitude)):
            assert format_value(v) == floatToGoString(v), v


# ---------------------------------------------------------------- families


def _counter(name="netprobe_test_events_total", labels=("namespace", "pod"), rows=()):
    family = ScalarFamily(name, "counter", "Events, by pod.", labels)
    for values, v in rows:
        family.add(values, v)
    return family


def _histogram(labels, rows, bounds=bucket_labels(1e-9, 8, 30)):
    family = HistogramFamily("netprobe_test_latency_seconds", "Latency.", labels, bounds)
    for values, counts, total in rows:
        family.add(values, counts, total)
    return family


def _cumulative(rng, n):
    counts, running = [], 0
    for _ in range(n):
        running += rng.choice([0, 0, 1, 3, 1000, 2_000_000])
        counts.append(running)
    return counts


def test_counters_and_gauges_with_labels_match_generate_latest():
    rng = random.Random(1)
    counter = _counter(rows=[((f"ns-{i % 7}", f"pod-{i}"), rng.choice(EDGE_NUMBERS[:20])) for i in range(300)])
    gauge = ScalarFamily("netprobe_test_active", "gauge", "Active, may be negative.", ("pod", "direction"))
    for i, v in enumerate(EDGE_NUMBERS):
        gauge.add((f"p{i}", "inbound"), v)
    text = assert_same_as_prometheus_client([counter, gauge])
    assert b"# TYPE netprobe_test_events_total counter\n" in text
    assert b'netprobe_test_events_total{namespace="ns-0",pod="pod-0"} ' in text
    assert b"_created" not in text


def test_label_values_are_escaped_like_prometheus_client():
    rows = [((v, f"pod-{i}"), i) for i, v in enumerate(AWKWARD_VALUES)]
    text = assert_same_as_prometheus_client([_counter(rows=rows),
                                             _histogram(("namespace", "pod"),
                                                        [((v, "x"), [1] * 24, 0.5) for v in AWKWARD_VALUES])])
    assert b'namespace="say \\"hi\\""' in text and b'namespace="two\\nlines"' in text
    assert {s.labels["namespace"] for f in text_string_to_metric_families(text.decode())
            for s in f.samples} == set(AWKWARD_VALUES)


def test_help_text_is_escaped_and_may_be_empty():
    families = [ScalarFamily("netprobe_a", "gauge", "a \\ backslash\nand a newline", ()),
                ScalarFamily("netprobe_b", "gauge", "", ())]
    families[0].add((), 1)
    families[1].add((), 2)
    text = assert_same_as_prometheus_client(families)
    assert b"# HELP netprobe_a a \\\\ backslash\\nand a newline\n" in text


@pytest.mark.parametrize("labels", [
    IDENTITY + ("direction",),     # labels on both sides of `le` in sort order
    ("aaa", "bbb"),                # all before `le`
    ("pod", "zone"),               # all after `le`
    (),                            # none
], ids=["around-le", "before-le", "after-le", "no-labels"])
def test_histograms_match_generate_latest_wherever_le_sorts(labels):
    rng = random.Random(2)
    bounds = bucket_labels(1e-9, 8, 30)
    rows = [(tuple(f"{n}-{i}" for n in labels), _cumulative(rng, len(bounds) + 1), rng.random() * 10 ** rng.randint(-6, 8))
            for i in range(40 if labels else 1)]
    text = assert_same_as_prometheus_client([_histogram(labels, rows)])
    assert text.count(b'le="+Inf"') == len(rows)


def test_no_label_families_empty_families_and_prometheus_client_families_keep_their_order():
    empty_counter = _counter()
    empty_histogram = _histogram(("pod",), [])
    own = CounterMetricFamily("netprobe_agent_reloads_total", "Reloads.", labels=["program"])
    own.add_metric(["x"], 3)
    solo = ScalarFamily("netprobe_scrape_seconds", "gauge", "Time.", ())
    solo.add((), 0.0123)
    info = GaugeMetricFamily("netprobe_info", "Info.", labels=["kernel"])
    info.add_metric(["6.18"], 1)
    families = [own, empty_counter, solo, info, empty_histogram, _counter(rows=[(("a", "b"), 1)]), own]
    text = assert_same_as_prometheus_client(families)
    names = [line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE")]
    assert names == ["netprobe_agent_reloads_total", "netprobe_test_events_total", "netprobe_scrape_seconds",
                     "netprobe_info", "netprobe_test_latency_seconds", "netprobe_test_events_total",
                     "netprobe_agent_reloads_total"]


def test_bad_families_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="invalid metric name"):
        ScalarFamily("bad-name", "counter", "", ())
    with pytest.raises(ValueError, match="invalid label name"):
        ScalarFamily("ok", "counter", "", ("bad label",))
    with pytest.raises(ValueError, match="duplicate label names"):
        ScalarFamily("ok", "gauge", "", ("pod", "pod"))
    with pytest.raises(ValueError, match="kind must be"):
        ScalarFamily("ok", "summary", "", ())
    with pytest.raises(ValueError, match="2 label values for 1 label names"):
        ScalarFamily("ok", "gauge", "", ("pod",)).add(("a", "b"), 1)
    with pytest.raises(ValueError, match="`le` is reserved"):
        HistogramFamily("ok", "", ("le",), ("1.0",))
    with pytest.raises(ValueError, match="ascending"):
        HistogramFamily("ok", "", (), ("2.0", "1.0"))
    with pytest.raises(ValueError, match="3 bucket counts for 2 buckets"):
        HistogramFamily("ok", "", (), ("1.0",)).add((), [1, 2, 3], 0.0)


# ---------------------------------------------------------------- the label cache


def test_the_label_cache_holds_only_the_last_scrapes_label_sets():
    cache = ExpositionCache()
    bounds = bucket_labels(1e-6, 2, 22)
    for scrape in range(50):
        # 30 pods live at a time; every scrape 10 leave and 10 new ones come
        live = range(scrape * 10, scrape * 10 + 30)
        counter = _counter(labels=IDENTITY, rows=[(("ns", f"p{i}", "w", "ns", "peer", "w"), i) for i in live])
        histogram = _histogram(IDENTITY + ("direction",),
                               [(("ns", f"p{i}", "w", "ns", "peer", "w", "inbound"), [1] * (len(bounds) + 1), 1.0)
                                for i in live], bounds)
        text = cache.render([counter, histogram])
        assert len(cache) == 60                       # 30 label sets for each of the two label-name tuples
        assert f'pod="p{scrape * 10 - 1}"'.encode() not in text
        assert text == reference([counter, histogram])
    cache.render([])
    assert len(cache) == 0


def test_concurrent_renders_each_get_a_complete_scrape():
    families = [_counter(labels=IDENTITY, rows=[(("ns", f"p{i}", "w", "ns", "q", "w"), i) for i in range(500)])]
    expected = reference(families)
    cache, results = ExpositionCache(), []

    def scrape():
        for _ in range(20):
            results.append(cache.render(families) == expected)

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 80
    assert len(cache) == 500


# ---------------------------------------------------------------- the collector, over the real catalogue


class _DictResolver(Resolver):
    def __init__(self, pods: dict[str, PodRef]):
        self.pods = {ipaddress.ip_address(k): v for k, v in pods.items()}

    def lookup(self, ip):
        return self.pods.get(ip)


class _FakeTable:
    """What read_map needs of a BCC table: items_lookup_batch() -> (key, value)."""

    def __init__(self, items):
        self.entries = items

    def items_lookup_batch(self):
        return iter(self.entries)

    def items(self):
        return list(self.entries)


def key_type(decoders) -> type:
    """A ctypes key struct laid out as bpf/*.c lay theirs out (what BCC builds from the C)."""
    fields = []
    for d in decoders:
        if isinstance(d, Pods):
            fields += [(d.local, ctypes.c_ubyte * 16), (d.remote, ctypes.c_ubyte * 16)]
        elif isinstance(d, Slot):
            fields += [(d.field, ctypes.c_uint32), (f"pad_{d.field}", ctypes.c_uint32)]
        else:
            fields += [(d.field, ctypes.c_uint8), (f"pad_{d.field}", ctypes.c_uint8 * 7)]
    return type("Key", (ctypes.Structure,), {"_fields_": fields})


class _FakeInstance:
    """A running program whose maps hold the given entries (keys laid out as the spec describes them)."""

    def __init__(self, spec, pairs: list[tuple[str, str]], rng: random.Random):
        self.spec, self.name, self.attach, self.bpf = spec, spec.name, "tracepoint", None
        self.options = spec.defaults()
        self.tables: dict[str, _FakeTable] = {}
        self.keys: dict[str, KeyFields] = {}
        by_map: dict[str, list] = {}
        for m in spec.metrics:
            by_map.setdefault(m.map, []).append(m)
        for map_name, metrics in by_map.items():
            fields = sorted({f for m in metrics for f in ((("count", "sum") if m.kind == "histogram" else ())
                                                          + ((m.value_field,) if m.value_field else ()))})
            struct = type("Value", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_uint64) for f in fields]})
            per_cpu = struct * 2
            decoders = metrics[0].key
            key_struct = key_type(decoders)
            self.keys[map_name] = KeyFields.of(key_struct)
            code = next((d for d in decoders if isinstance(d, Code)), None)
            # a code table may be the running kernel's (a function; e.g. drop reasons): a few of its codes
            codes = sorted({c for m in metrics for d in m.key if isinstance(d, Code)
                            for c in (d.values() if callable(d.values) else d.values)})[:8] or [0]
            slots = range(0, 40) if metrics[0].slot is not None else [None]
            items = []
            for local, remote in pairs:
                for c in codes:
                    for slot in rng.sample(list(slots), min(3, len(slots))):
                        key = key_struct()
                        key.local[:] = ipaddress.IPv6Address(f"::ffff:{local}").packed
                        key.remote[:] = ipaddress.IPv6Address(f"::ffff:{remote}").packed
                        if code is not None:
                            setattr(key, code.field, c)
                        if slot is not None:
                            key.slot = slot
                        value = per_cpu(*(struct(*(rng.randint(0, 5000) for _ in fields)) for _ in range(2))) \
                            if fields else rng.randint(0, 2 ** 40)
                        items.append((bytes(key), value))
            self.tables[map_name] = _FakeTable(items)

    def table(self, name):
        return self.tables.get(name, _FakeTable([]))


class _FakeManager:
    def __init__(self, instances):
        self.lock = threading.Lock()
        self.instances = instances
        self.errors = {}

    def running(self):
        return list(self.instances)


@pytest.fixture
def catalogue_collector():
    """An AgentCollector over every program of the catalogue, maps full of 12 pod pairs."""
    rng = random.Random(3)
    pods = {f"10.1.0.{i}": PodRef("shop" if i % 2 else "pay", f"pod-{i}", f"deploy-{i % 3}" if i % 4 else None)
            for i in range(1, 7)}
    pairs = [(f"10.1.0.{a}", f"10.1.0.{b}") for a in range(1, 5) for b in range(3, 6)] + [("10.1.0.1", "8.8.8.8")]
    state = AgentState()
    state.labels = IDENTITY
    state.resolver = _DictResolver(pods)
    state.configured = {name: {} for name in CATALOGUE}
    state.info = {"kernel": "6.18", "headers": "/usr/src/x", "headers_source": "test"}
    collector = AgentCollector(_FakeManager([_FakeInstance(spec, pairs, rng) for spec in CATALOGUE.values()]), state)
    collector.node_addresses._at = float("inf")   # never list this machine's addresses
    return collector


def test_the_collectors_families_render_as_generate_latest_renders_them(catalogue_collector):
    families = catalogue_collector.families()
    text = assert_same_as_prometheus_client(families)
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    for spec in CATALOGUE.values():
        for m in spec.metrics:
            assert m.name.removesuffix("_total") in names
    assert b'peer_namespace="external"' in text


def test_the_registry_protocol_gives_the_same_samples_as_the_fast_path(catalogue_collector):
    catalogue_collector.families()    # eviction counters appear from the second scrape on
    fast = parsed(ExpositionCache().render(catalogue_collector.families()))
    registry = parsed(reference(list(catalogue_collector.collect())))
    drop_duration = lambda fams: [f for f in fams if f[0] != "netprobe_agent_scrape_duration_seconds"]
    assert drop_duration(fast) == drop_duration(registry)


def test_promtool_accepts_a_rendered_scrape(catalogue_collector):
    text = ExpositionCache().render(catalogue_collector.families())
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert res.returncode == 0, (res.stdout + res.stderr).decode()
