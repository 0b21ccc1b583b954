"""The prometheus_client Collector: kernel maps read at scrape time.

Nothing crosses from the kernel per packet: at each scrape every map is read
once (batched), per-CPU values are summed, keys are turned into label values
(one resolver lookup per distinct address per scrape), series whose labels
end up equal are summed, log2 slots become cumulative buckets. Nothing is
deleted on read: two Prometheus servers scraping see the same counters.
"""
from __future__ import annotations

import ctypes
import logging
import time
from collections import defaultdict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from node_agent.logs import OnceLog
from node_agent.metrics.agent_metrics import AGENT_METRICS
from node_agent.metrics.exposition import Family, HistogramFamily, ScalarFamily
from node_agent.metrics.histogram import bucket_labels, cumulative_counts
from node_agent.metrics.keys import labeler, slot_index
from node_agent.metrics.labels import LabelScope, NodeAddresses
from node_agent.metrics.monotonic import CounterFloor
from node_agent.programs import CATALOGUE
from node_agent.runtime.instance import ProgramInstance
from node_agent.runtime.keys import KeyFields
from node_agent.runtime.manager import ProgramManager
from node_agent.runtime.spec import Metric as MetricSpec

log = logging.getLogger(__name__)

STAGES = ("config", "compile", "load", "attach")


def _sum_cpus(v):
    """A map value as a number, or a {field: number} dict for struct values;
    per-CPU values (an array, one element per possible CPU) are summed."""
    if isinstance(v, int):
        return v
    if isinstance(v, ctypes.Structure):
        return {f: getattr(v, f) for f, _ in v._fields_}
    if isinstance(v, ctypes.Array):
        if len(v) and isinstance(v[0], ctypes.Structure):
            return {f: sum(getattr(x, f) for x in v) for f, _ in v[0]._fields_}
        return sum(v)
    return v.value


def read_map(table) -> list[tuple[bytes, object]]:
    """All (raw key, value summed over CPUs) of a BCC table."""
    try:
        items = list(table.items_lookup_batch())
    except Exception:   # kernels or map types without batch lookup
        items = table.items()
    out = []
    for k, v in items:
        if isinstance(k, int):        # scalar keys come back as Python ints
            k = table.Key(k)
        out.append((bytes(k), _sum_cpus(v)))
    return out


def read_front(table) -> list[tuple[bytes, object]]:
    """The entries of a front cache (bpf/netprobe.h): a per-CPU array whose
    value is a struct {key, value}; every CPU's used entries, as (raw key,
    value) like read_map's. Empty slots (a zero value) are skipped on the raw
    bytes: most slots are empty, and decoding each through ctypes cost ~1 ms
    per 256 slots per scrape."""
    try:
        items = list(table.items_lookup_batch())
    except Exception:
        items = table.items()
    out = []
    for _, per_cpu in items:
        entry_type = type(per_cpu)._type_           # one CPU's {key, value}
        size, value = ctypes.sizeof(entry_type), entry_type.value
        start, end, empty = value.offset, value.offset + value.size, bytes(value.size)
        raw = bytes(per_cpu)
        for at in range(0, len(raw), size):
            if raw[at + start:at + end] != empty:
                entry = entry_type.from_buffer_copy(raw, at)
                out.append((bytes(entry.key), _sum_cpus(entry.value)))
    return out


def agent_family(name: str, help: str) -> Metric:
    """One of the agent's own families, typed and labelled as AGENT_METRICS declares it."""
    kind, labels = AGENT_METRICS[name]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, help, labels=list(labels))


class AgentState:
    """What the collector reports about the agent itself (set by the Agent)."""

    def __init__(self):
        self.config_reloads = 0
        self.config_reload_errors = 0
        self.labels: tuple[str, ...] = ("namespace", "pod")
        self.resolver = None
        self.configured: dict[str, dict] = {}
        self.info: dict[str, str] = {}
        self.http = None          # node_agent.server.Endpoint: its connection and request counters


class AgentCollector:
    def __init__(self, manager: ProgramManager, state: AgentState):
        self.manager = manager
        self.state = state
        self.node_addresses = NodeAddresses()
        self._previous_keys: dict[tuple[int, str], set[bytes]] = {}
        self._evictions: dict[tuple[str, str], int] = defaultdict(int)
        self.scrape_errors: dict[str, int] = defaultdict(int)
        self._errors = OnceLog(log)
        self._floor = CounterFloor()

    # -- registry protocol --------------------------------------------
    def describe(self):
        """Names only, so registering never reads kernel maps."""
        for spec in CATALOGUE.values():
            for m in spec.metrics:
                yield self._family(m, []).to_metric()
        yield agent_family("netprobe_program_info", "")

    def collect(self):
        """The registry protocol: every family as a prometheus_client object."""
        for family in self.families():
            yield family if isinstance(family, Metric) else family.to_metric()

    def families(self) -> list[Family]:
        """This scrape: the program metrics as exposition rows (rendered by
        ExpositionCache, the /metrics path), the agent's own as prometheus_client families."""
        started = time.perf_counter()
        out: list[Family] = []
        with self.manager.lock:
            instances = self.manager.running()
            scope = None
            if self.state.resolver is not None:
                scope = LabelScope(self.state.resolver, self.state.labels, self.node_addresses.get())
            map_stats = []
            for inst in instances:
                try:
                    out += self._program_families(inst, scope, map_stats)
                except Exception as e:   # one broken program must not break the scrape
                    self.scrape_errors[inst.name] += 1
                    self._errors.error("reading maps failed", e, program=inst.name)
            self._forget_stopped(instances)
            self._floor.end_scrape()
        out += self._self_families(instances, map_stats, scope)
        if self.state.resolver is not None and hasattr(self.state.resolver, "collect"):
            try:
                out += list(self.state.resolver.collect())
            except Exception as e:
                log.warning("resolver metrics failed", extra={"kv": {"error": str(e)}})
        if self.state.http is not None:
            out += self.state.http.families()
        duration = agent_family("netprobe_agent_scrape_duration_seconds",
                                "Time this agent took to read its maps and build this scrape.")
        duration.add_metric([], time.perf_counter() - started)
        out.append(duration)
        return out

    # -- program metrics -----------------------------------------------
    @staticmethod
    def _family(m: MetricSpec, label_names: list[str]) -> ScalarFamily | HistogramFamily:
        if m.kind == "histogram":
            return HistogramFamily(m.name, m.help, label_names,
                                   bucket_labels(m.unit_seconds, *m.bucket_slots))
        return ScalarFamily(m.name, m.kind, m.help, label_names)

    def _program_families(self, inst: ProgramInstance, scope: LabelScope | None, map_stats: list):
        spec = inst.spec
        if spec.before_scrape is not None:
            spec.before_scrape(inst)
        maps: dict[str, list[tuple[bytes, int]]] = {}
        fronts: dict[str, list[tuple[bytes, int]]] = {}
        for info in spec.maps:
            if info.entries_from_sum_of is None:
                maps[info.name] = read_map(inst.table(info.name))
                if info.front:   # after its hash: a count moving between them is missed, never read twice
                    fronts[info.name] = read_front(inst.table(info.name + "_front"))
        for m in spec.metrics:
            if m.map not in maps:
                maps[m.map] = read_map(inst.table(m.map))
        # what the kernel counted: each map's hash entries and its fronts'
        counted = {name: entries + fronts.get(name, []) for name, entries in maps.items()}

        # map self-metrics: size, fill, evictions (LRU keys we never delete that vanished)
        for info in spec.maps:
            if info.entries_from_sum_of is not None:
                source, field = info.entries_from_sum_of
                entries = sum(v[field] for _, v in counted[source])
            else:
                keys = {k for k, _ in maps[info.name]}
                # a key in a front takes a hash entry when it moves: count the keys of both
                entries = len(keys | {k for k, _ in fronts.get(info.name, [])})
                if info.lru and any(m.map == info.name for m in spec.metrics):
                    prev = self._previous_keys.get((id(inst), info.name))
                    if prev is not None:
                        self._evictions[(spec.name, info.name)] += len(prev - keys)
                    self._previous_keys[(id(inst), info.name)] = keys
            map_stats.append((spec.name, info.name, entries, inst.options[info.max_entries_option]))

        families = []
        if scope is None:
            return families
        for m in spec.metrics:
            family = self._family(m, self.label_names(m))
            if m.kind == "histogram":
                self._add_histogram(family, m, counted[m.map], inst.keys[m.map], scope)
            else:
                self._add_scalar(family, m, counted[m.map], inst.keys[m.map], scope)
            self._floor.apply(family)
            families.append(family)
        return families

    def label_names(self, m: MetricSpec) -> list[str]:
        """The identity labels (when the key holds an address pair), then the key's own."""
        return (list(self.state.labels) if m.pods else []) + list(m.extra_labels)

    def _add_scalar(self, family: ScalarFamily, m: MetricSpec, entries, key: KeyFields, scope: LabelScope) -> None:
        totals: dict[tuple[str, ...], int] = defaultdict(int)
        labels, unpack, field = labeler(m, key, scope), key.unpack, m.value_field
        for raw, value in entries:
            totals[labels(unpack(raw))] += value[field] if field else value
        if m.signed:   # per-CPU s64 parts may be read as u64 by some paths
            totals = {labels: (v + (1 << 63)) % (1 << 64) - (1 << 63) for labels, v in totals.items()}
        family.rows.update(totals)

    def _add_histogram(self, family: HistogramFamily, m: MetricSpec, entries, key: KeyFields,
                       scope: LabelScope) -> None:
        slots: dict[tuple[str, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        sums: dict[tuple[str, ...], int] = defaultdict(int)
        labeled, unpack, slot = labeler(m, key, scope), key.unpack, slot_index(m, key)
        for raw, value in entries:
            fields = unpack(raw)
            labels = labeled(fields)
            slots[labels][fields[slot]] += value["count"]
            sums[labels] += value["sum"]
        first, last = m.bucket_slots
        for labels, by_slot in slots.items():
            family.rows[labels] = (cumulative_counts(by_slot, first, last), sums.get(labels, 0) * m.unit_seconds)

    def _forget_stopped(self, instances) -> None:
        live = {id(i) for i in instances}
        for key in [k for k in self._previous_keys if k[0] not in live]:
            del self._previous_keys[key]

    # -- the agent's own health ------------------------------------------
    def _self_families(self, instances, map_stats, scope):
        info = agent_family("netprobe_program_info", "1 for each running program, with the attach mode it got.")
        for inst in instances:
            info.add_metric([inst.name, inst.attach or ""], 1)
        up = agent_family("netprobe_program_up",
                          "1 if a configured program is loaded and attached, 0 if it failed.")
        running = {i.name for i in instances}
        for name in self.state.configured:
            up.add_metric([name], 1 if name in running else 0)
        errors = agent_family("netprobe_program_errors_total", "Failed attempts to bring a program up, by stage "
                              "(config, compile, load, attach).")
        counted = dict(self.manager.errors)
        for name in sorted(set(self.state.configured) | {p for p, _ in counted}):
            for stage in STAGES:
                errors.add_metric([name, stage], counted.get((name, stage), 0))

        entries = agent_family("netprobe_map_entries", "Entries in a program's BPF map.")
        capacity = agent_family("netprobe_map_max_entries", "Size of a program's BPF map.")
        fill = agent_family("netprobe_map_fill_ratio",
                            "Entries / size of a program's BPF map; near 1, raise max_entries.")
        for program, name, n, size in map_stats:
            entries.add_metric([program, name], n)
            capacity.add_metric([program, name], size)
            fill.add_metric([program, name], n / size if size else 0)
        evictions = agent_family("netprobe_map_evictions_total",
                                 "Keys of an LRU map that disappeared between two scrapes (evicted because the map was "
                                 "full; their counts are lost). A lower bound.")
        for (program, name), n in sorted(self._evictions.items()):
            evictions.add_metric([program, name], n)

        failures = agent_family("netprobe_map_update_failures_total",
                                "Map updates that failed in the kernel (map full): events that could not be counted.")
        discarded = agent_family("netprobe_program_discarded_events_total",
                                 "Events a program saw but did not count, by reason.")
        missed = agent_family("netprobe_program_missed_runs_total",
                              "Events the kernel did not run a program for: a program on a (plain) tracepoint is "
                              "skipped while another tracing BPF program runs on the same CPU. These events are "
                              "not counted.")
        with self.manager.lock:
            for inst in self.manager.running():
                if inst.bpf is None:
                    continue
                for hook, n in inst.missed_runs().items():
                    missed.add_metric([inst.name, hook], n)
                per_slot = inst.table("np_map_errors")
                for index, map_name in inst.spec.map_error_slots.items():
                    failures.add_metric([inst.name, map_name], sum(per_slot[per_slot.Key(index)]))
                for index, reason in inst.spec.discard_slots.items():
                    discarded.add_metric([inst.name, reason], sum(per_slot[per_slot.Key(index)]))

        scrape_errors = agent_family("netprobe_agent_scrape_errors_total",
                                     "Scrapes in which reading a program's maps failed.")
        for name, n in sorted(self.scrape_errors.items()):
            scrape_errors.add_metric([name], n)
        reloads = agent_family("netprobe_agent_config_reloads_total",
                               "Changed config files applied without a restart.")
        reloads.add_metric([], self.state.config_reloads)
        reload_errors = agent_family("netprobe_agent_config_reload_errors_total",
                                     "Changed config files refused (invalid); the running set was kept.")
        reload_errors.add_metric([], self.state.config_reload_errors)
        agent = agent_family("netprobe_agent_info", "The agent's kernel and the headers BCC compiled with.")
        agent.add_metric([self.state.info.get(k, "") for k in AGENT_METRICS["netprobe_agent_info"][1]], 1)
        families = [info, up, errors, entries, capacity, fill, evictions, failures, discarded, missed,
                    scrape_errors, reloads, reload_errors, agent]
        if scope is not None:
            unresolved = agent_family("netprobe_resolver_unresolved_addresses",
                                      "Distinct addresses in this scrape that no pod owns (labelled host or external).")
            for side, n in scope.unresolved.items():
                unresolved.add_metric([side], n)
            families.append(unresolved)
        return families
