"""Logic of the agent without the kernel: bucket math, key decoding, config
validation, the static resolver file, label resolution."""
from __future__ import annotations

import ctypes
import ipaddress
import subprocess
import sys

import pytest

from node_agent.config import ConfigError, load_config, parse_config
from node_agent.metrics.histogram import bucket_bounds, cumulative_buckets, log2_slot
from node_agent.metrics.keys import labeler, slot_index
from node_agent.metrics.labels import LabelScope
from node_agent.programs import CATALOGUE
from node_agent.resolver.base import PodRef, Resolver
from node_agent.resolver.static import StaticFileError, parse_static_file
from node_agent.runtime.keys import KeyFields, KeyMismatch
from node_agent.runtime.spec import Code, Metric, Number

BASE = "resolver: {static: {file: /tmp/pods.yaml}}\n"


# ---------------------------------------------------------------- histogram math

@pytest.mark.parametrize("value,slot", [
    (0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4),
    (1023, 10), (1024, 10), (1025, 11), (2**40, 40), (2**40 + 1, 41), (2**64 - 1, 63),
])
def test_log2_slot_is_the_smallest_power_of_two_at_or_above(value, slot):
    assert log2_slot(value) == slot


def test_every_value_lands_in_the_first_bucket_whose_bound_holds_it():
    """le = 2^s * unit must contain exactly the values <= 2^s (the off-by-one
    that bit ebpf_exporter: a value equal to a bound belongs to that bucket)."""
    unit = 1e-6
    for v in list(range(0, 300)) + [2**k + d for k in range(9, 20) for d in (-1, 0, 1)]:
        slots = {log2_slot(v): 1}
        buckets = cumulative_buckets(slots, unit, 0, 22)
        for (le, count), bound in zip(buckets, bucket_bounds(unit, 0, 22)):
            assert count == (1 if v * unit <= bound + 1e-15 else 0), (v, le)
        assert buckets[-1] == ("+Inf", 1)


def test_cumulative_buckets_fold_low_slots_into_the_first_and_high_ones_into_inf():
    slots = {0: 2, 3: 5, 4: 1, 9: 7, 40: 3}
    buckets = cumulative_buckets(slots, 1e-9, 3, 8)
    assert [c for _, c in buckets] == [7, 8, 8, 8, 8, 8, 18]
    assert buckets[0][0] == "8e-09" and buckets[-2][0] == "2.56e-07" and buckets[-1][0] == "+Inf"


def test_bucket_bounds_are_powers_of_two_in_seconds():
    assert bucket_bounds(1e-6, 2, 4) == [4e-6, 8e-6, 16e-6]


# ---------------------------------------------------------------- key decoding

class _Pair(ctypes.Structure):
    _fields_ = [("local", ctypes.c_ubyte * 16), ("remote", ctypes.c_ubyte * 16)]


class _Conn(ctypes.Structure):            # struct conn_key of bpf/tcp_connections.c
    _fields_ = [("pair", _Pair), ("direction", ctypes.c_ubyte), ("pad", ctypes.c_ubyte * 7)]


class _Duration(ctypes.Structure):        # struct duration_key: nested, as BCC builds it
    _fields_ = [("conn", _Conn), ("slot", ctypes.c_uint), ("pad", ctypes.c_uint)]


def test_duration_key_decodes_addresses_direction_and_slot_by_field_name():
    local = ipaddress.IPv6Address("::ffff:10.77.3.2").packed
    remote = ipaddress.IPv6Address("fd77:3::3").packed
    raw = local + remote + bytes([2]) + bytes(7) + (13).to_bytes(4, "little") + bytes(4)
    key = KeyFields.of(_Duration)
    assert key.names == ("local", "remote", "direction", "slot") and key.size == 48
    assert key.unpack(raw) == (local, remote, 2, 13)
    (metric,) = [m for m in CATALOGUE["tcp_connections"].metrics if m.map == "duration_us"]
    key.check(metric.key_fields, metric.name)
    resolver = DictResolver({"10.77.3.2": PodRef("shop", "web-1", "web")})
    labels = labeler(metric, key, LabelScope(resolver, ("namespace", "pod"), frozenset()))
    assert labels(key.unpack(raw)) == ("shop", "web-1", "inbound")
    assert key.unpack(raw)[slot_index(metric, key)] == 13


def test_a_description_that_disagrees_with_the_c_key_is_refused():
    key = KeyFields.of(_Duration)
    with pytest.raises(KeyMismatch, match="in the C key but not described: slot"):
        key.check(("local", "remote", "direction"), "m")
    with pytest.raises(KeyMismatch, match="described but not in the C key: reason"):
        key.check(("local", "remote", "direction", "slot", "reason"), "m")


def test_a_key_without_addresses_decodes_codes_and_numbers():
    """A drop reason and an interface: no pods, labels from the key's own fields."""
    class Drop(ctypes.Structure):
        _fields_ = [("reason", ctypes.c_uint16), ("pad", ctypes.c_uint16), ("ifindex", ctypes.c_uint32)]
    metric = Metric("netprobe_x_total", "counter", "x", map="drops",
                    key=(Code("reason", "reason", {2: "NOT_SPECIFIED", 5: "TCP_CSUM"}), Number("ifindex", "ifindex")))
    key = KeyFields.of(Drop)
    key.check(metric.key_fields, metric.name)
    labels = labeler(metric, key, LabelScope(DictResolver({}), ("namespace", "pod"), frozenset()))
    assert metric.pods is None and metric.extra_labels == ("reason", "ifindex")
    assert labels(key.unpack(bytes(Drop(5, 0, 7)))) == ("TCP_CSUM", "7")
    assert labels(key.unpack(bytes(Drop(99, 0, 1)))) == ("99", "1")


class _DropKey(ctypes.Structure):         # struct drop_key of bpf/drops.c
    _fields_ = [("pair", _Pair), ("reason", ctypes.c_uint), ("direction", ctypes.c_uint)]


def test_drop_key_names_reasons_by_the_kernels_table_subsystems_and_unknown_codes_by_number():
    """The reason table is the running kernel's (a function, read at scrape
    time): here a 6.1-like one, where 1 is NOT_SPECIFIED, with openvswitch as
    subsystem 3; a subsystem code outside it is "SUBSYSTEM:n", any other
    unknown code its number."""
    from node_agent.kernel.drop_reasons import ReasonNames
    from node_agent.programs.drops import DIRECTION, REASON
    table = ReasonNames({1: "NOT_SPECIFIED", 2: "NO_SOCKET"}, {3: "OPENVSWITCH"})
    (metric,) = CATALOGUE["drops"].metrics
    key = KeyFields.of(_DropKey)
    key.check(metric.key_fields, metric.name)
    local = ipaddress.IPv6Address("::ffff:10.77.3.2").packed
    remote = ipaddress.IPv6Address("::ffff:10.77.3.3").packed
    resolver = DictResolver({"10.77.3.2": PodRef("shop", "web-1", "web")})
    scope = LabelScope(resolver, ("namespace", "pod", "peer_pod"), frozenset())
    metric = Metric(metric.name, metric.kind, metric.help, metric.map,
                    key=tuple(Code(d.field, d.label, lambda: table) if d is REASON else d for d in metric.key))
    labels = labeler(metric, key, scope)
    ingress, egress = (next(c for c, n in DIRECTION.values.items() if n == name) for name in ("ingress", "egress"))
    assert labels(key.unpack(bytes(_DropKey(_Pair.from_buffer_copy(local + remote), 1, ingress)))) == \
        ("shop", "web-1", "external", "NOT_SPECIFIED", "ingress")
    assert labels(key.unpack(bytes(_DropKey(_Pair.from_buffer_copy(local + remote), 3 << 16 | 7, egress)))) == \
        ("shop", "web-1", "external", "OPENVSWITCH:7", "egress")
    assert labels(key.unpack(bytes(_DropKey(_Pair(), 999, ingress))))[3] == "999"


def test_error_slots_and_codes_reach_the_c_code_as_constants():
    constants = CATALOGUE["tcp_connections"].constants()
    assert constants["ERR_NP_SOCKETS"] == 0 and constants["ERR_RESETS"] == 3
    assert (constants["DIR_OUTBOUND"], constants["DIR_INBOUND"]) == (1, 2)
    assert (constants["DIR_SENT"], constants["DIR_RECEIVED"]) == (1, 2)
    rx = CATALOGUE["rx_latency"]
    assert rx.discard_slots == {1: "unmatched", 2: "stale"}
    assert rx.constants()["ERR_STALE"] == 2


# ---------------------------------------------------------------- labels

class DictResolver(Resolver):
    def __init__(self, pods):
        self.pods = {ipaddress.ip_address(k): v for k, v in pods.items()}
        self.calls = 0

    def lookup(self, ip):
        self.calls += 1
        return self.pods.get(ip)


def test_label_scope_names_pods_host_and_external_and_caches():
    r = DictResolver({"10.0.0.2": PodRef("shop", "cart-7", "cart"), "10.0.0.3": PodRef("pay", "api-2")})
    scope = LabelScope(r, ("namespace", "pod", "workload", "peer_namespace", "peer_pod", "peer_workload"),
                       frozenset({ipaddress.ip_address("192.168.1.1")}))
    v4 = lambda a: ipaddress.IPv6Address(f"::ffff:{a}").packed
    assert scope.labels(v4("10.0.0.2"), v4("10.0.0.3")) == ("shop", "cart-7", "cart", "pay", "api-2", "api-2")
    assert scope.labels(v4("10.9.9.9"), v4("192.168.1.1")) == ("host",) * 6
    assert scope.labels(v4("10.0.0.3"), v4("8.8.8.8"))[3:] == ("external",) * 3
    calls = r.calls
    scope.labels(v4("10.0.0.2"), v4("10.0.0.3"))
    assert r.calls == calls                        # cached within the scrape
    assert scope.unresolved == {"local": 1, "remote": 2}


def test_label_scope_keeps_only_the_configured_labels():
    r = DictResolver({"fd77::2": PodRef("shop", "cart-7", "cart")})
    scope = LabelScope(r, ("namespace", "pod", "peer_pod"), frozenset())
    assert scope.labels(ipaddress.ip_address("fd77::2").packed,
                        ipaddress.ip_address("2001:db8::1").packed) == ("shop", "cart-7", "external")


# ---------------------------------------------------------------- config

def test_the_documented_example_is_valid():
    import pathlib
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "agent-config.md").read_text()
    example = doc.split("```yaml", 1)[1].split("```", 1)[0]
    config = parse_config(example)
    assert set(config.programs) == set(CATALOGUE)
    assert config.programs["tcp_connections"]["max_entries"] == 16384
    assert config.programs["rx_latency"]["attach"] == "auto"


def test_defaults_fill_every_option():
    config = parse_config(BASE + "programs: {rx_latency: {}, tcp_rtt: null}")
    assert config.programs["rx_latency"] == CATALOGUE["rx_latency"].defaults()
    assert config.labels == ("namespace", "pod")
    assert config.listen == "0.0.0.0:9435"


@pytest.mark.parametrize("text,field", [
    ("programs: {dns_magic: {}}", "programs.dns_magic"),
    ("programs: {tcp_rtt: {max_entries: lots}}", "programs.tcp_rtt.max_entries"),
    ("programs: {tcp_rtt: {max_entries: true}}", "programs.tcp_rtt.max_entries"),
    ("programs: {tcp_rtt: {max_entries: 10}}", "programs.tcp_rtt.max_entries"),
    ("programs: {tcp_rtt: {max_entries: 99999999}}", "programs.tcp_rtt.max_entries"),
    ("programs: {tcp_rtt: {colour: red}}", "programs.tcp_rtt.colour"),
    ("programs: {rx_latency: {attach: fentry}}", "programs.rx_latency.attach"),
    ("programs: [tcp_rtt]", "programs"),
    ("labels: [namespace, pod, peer_ip]", "labels[2]"),
    ("labels: pod", "labels"),
    ("listen: 9435", "listen"),
    ("listen: 'localhost'", "listen"),
    ("log_level: loud", "log_level"),
    ("extra: 1", "extra"),
])
def test_bad_config_names_the_field(text, field):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + text)
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


@pytest.mark.parametrize("text,field", [
    ("resolver: {}", "resolver"),
    ("resolver: {static: {file: a}, kubernetes: {}}", "resolver"),
    ("resolver: {static: {}}", "resolver.static.file"),
    ("resolver: {dns: {}}", "resolver.dns"),
    ("resolver: {kubernetes: {peers: galaxy}}", "resolver.kubernetes.peers"),
    ("resolver: {kubernetes: {deleted_pod_grace_seconds: -1}}", "resolver.kubernetes.deleted_pod_grace_seconds"),
    ("programs: {}", "resolver"),
])
def test_bad_resolver_config_names_the_field(text, field):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert e.value.field == field


def test_kubernetes_resolver_section_validates():
    config = parse_config("resolver: {kubernetes: {peers: node, deleted_pod_grace_seconds: 5}}")
    assert (config.resolver.peers, config.resolver.deleted_pod_grace_seconds) == ("node", 5.0)


@pytest.mark.parametrize("text,field", [
    ("programs: {nope: {}}", "programs.nope"),
    ("programs: {tcp_rtt: {max_entries: abc}}", "programs.tcp_rtt.max_entries"),
    ("labels: [namespace, pod, peer_ip]", "labels[2]"),
])
def test_agent_refuses_a_bad_config_at_start(tmp_path, text, field):
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + text)
    proc = subprocess.run([sys.executable, "-m", "node_agent.cli", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert field in proc.stderr


@pytest.mark.parametrize("listen", ["9435", "host:port", "0.0.0.0:70000", ""])
def test_agent_refuses_a_bad_listen_flag_naming_it(tmp_path, listen):
    path = tmp_path / "agent.yaml"
    path.write_text(BASE)
    proc = subprocess.run([sys.executable, "-m", "node_agent.cli", "--config", str(path), "--listen", listen],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--listen: expected host:port, got {listen!r}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_listen_flag_replaces_the_files_listen(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + "listen: 127.0.0.1:9500\n")
    config = load_config(str(path), "[::1]:9600")
    assert (config.listen_host, config.listen_port, config.listen) == ("::1", 9600, "[::1]:9600")
    assert load_config(str(path)).listen == "127.0.0.1:9500"


# ---------------------------------------------------------------- static resolver file

def test_static_file_maps_every_address_of_a_pod():
    pods = parse_static_file("pods:\n  - {namespace: shop, pod: cart-7, workload: cart, ips: [10.77.0.2, 'fd77::2']}\n"
                             "  - {namespace: payments, pod: api-2, ips: ['::ffff:10.77.0.3']}\n")
    assert pods[ipaddress.ip_address("10.77.0.2")] == PodRef("shop", "cart-7", "cart")
    assert pods[ipaddress.ip_address("fd77::2")] == PodRef("shop", "cart-7", "cart")
    assert pods[ipaddress.ip_address("10.77.0.3")] == PodRef("payments", "api-2", "")   # v4-mapped collapsed


@pytest.mark.parametrize("text,where", [
    ("pods: [{namespace: a, pod: b}]", "pods[0].ips"),
    ("pods: [{namespace: a, pod: b, ips: [300.1.1.1]}]", "pods[0].ips[0]"),
    ("pods: [{namespace: a, pod: b, ips: [], colour: red}]", "pods[0].colour"),
    ("pods: [{namespace: a, pod: b, ips: [10.0.0.1]}, {namespace: c, pod: d, ips: [10.0.0.1]}]", "pods[1].ips[0]"),
    ("nodes: []", "single field"),
])
def test_static_file_errors_say_where(text, where):
    with pytest.raises(StaticFileError) as e:
        parse_static_file(text)
    assert where in str(e.value)


def test_config_builds_the_kubernetes_resolver(tmp_path):
    from node_agent.resolver.factory import make_resolver
    from node_agent.resolver.kubernetes import KubernetesResolver
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    config = parse_config(f"node_name: node-1\nresolver: {{kubernetes: {{peers: node, "
                          f"deleted_pod_grace_seconds: 5, kubeconfig: {kubeconfig}}}}}")
    resolver = make_resolver(config)        # constructed, not started: no API call
    assert isinstance(resolver, KubernetesResolver)
    assert (resolver.node_name, resolver.peers, resolver.grace_seconds) == ("node-1", "node", 5.0)


def test_the_config_doc_lists_every_option_of_every_program():
    import pathlib
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "agent-config.md").read_text()
    for spec in CATALOGUE.values():
        for option in spec.options:
            assert f"`{option.name}`" in doc, f"{spec.name}.{option.name} undocumented"


def test_missed_runs_of_a_descriptor_that_is_no_program_are_unknown_not_zero():
    from node_agent.runtime.prog_info import recursion_misses
    with open("/dev/null") as f:
        assert recursion_misses(f.fileno()) is None
    assert recursion_misses(-1) is None


# ---------------------------------------------------------------- front caches and the counter floor

class _Key(ctypes.Structure):
    _fields_ = [("local", ctypes.c_uint8 * 16), ("remote", ctypes.c_uint8 * 16)]


class _Hist(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint64), ("sum", ctypes.c_uint64)]


class _Entry(ctypes.Structure):
    _fields_ = [("key", _Key), ("value", _Hist)]


class _FakeFront:
    """A per-CPU array as BCC's batch lookup yields it: (index, one entry per CPU)."""
    def __init__(self, slots):
        self.slots = slots

    def items_lookup_batch(self):
        for i, per_cpu in enumerate(self.slots):
            yield ctypes.c_uint32(i), (_Entry * len(per_cpu))(*per_cpu)


def _entry(last_byte: int, count: int, total: int) -> _Entry:
    key = _Key()
    key.local[15] = last_byte
    return _Entry(key, _Hist(count, total))


def test_a_front_cache_is_read_per_cpu_and_its_empty_slots_skipped():
    from node_agent.metrics.collector import read_front
    front = _FakeFront([[_entry(1, 3, 30), _entry(2, 5, 50)],    # slot 0: another key on each CPU
                        [_Entry(), _entry(1, 1, 7)]])            # slot 1: empty on CPU 0
    got = read_front(front)
    assert [(raw[15], value) for raw, value in got] == [
        (1, {"count": 3, "sum": 30}), (2, {"count": 5, "sum": 50}), (1, {"count": 1, "sum": 7})]


def test_the_counter_floor_never_exports_a_counter_or_histogram_lower_than_last_time():
    from node_agent.metrics.exposition import HistogramFamily, ScalarFamily
    from node_agent.metrics.monotonic import FORGET_AFTER, CounterFloor

    floor = CounterFloor()

    def scrape(counter, gauge, histogram):
        c = ScalarFamily("c_total", "counter", "", ["pod"])
        g = ScalarFamily("g", "gauge", "", ["pod"])
        h = HistogramFamily("h", "", ["pod"], ["1", "+Inf"])
        c.rows, g.rows, h.rows = dict(counter), dict(gauge), dict(histogram)
        for family in (c, g, h):
            floor.apply(family)
        floor.end_scrape()
        return c.rows, g.rows, h.rows

    scrape({("a",): 10, ("b",): 4}, {("a",): 9}, {("a",): ([2, 5], 7.0)})
    # a move between hash and front read mid-way: a, b and the histogram's first bucket read low
    c, g, h = scrape({("a",): 8, ("b",): 6}, {("a",): 3}, {("a",): ([1, 6], 6.5)})
    assert c == {("a",): 10, ("b",): 6}
    assert g == {("a",): 3}                      # gauges go down
    assert h == {("a",): ([2, 6], 7.0)}
    c, _, _ = scrape({("a",): 12}, {}, {})
    assert c == {("a",): 12}                     # caught up: the kernel's count again
    # a series unseen for 2 * FORGET_AFTER scrapes is forgotten (its memory too)
    for _ in range(2 * FORGET_AFTER):
        scrape({("a",): 12}, {}, {})
    c, _, h = scrape({("a",): 12, ("b",): 1}, {}, {("a",): ([0, 1], 1.0)})
    assert c == {("a",): 12, ("b",): 1} and h == {("a",): ([0, 1], 1.0)}
    assert len(floor) == 3
