"""Both resolvers export the same health metrics, with the same labels: one
dashboard panel and one alert serve a node whatever resolver it runs."""
import time

from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry, generate_latest

from node_agent.resolver.base import Resolver, normalize_ip
from node_agent.resolver.kubernetes import KubernetesResolver
from node_agent.resolver.static import StaticResolver

PODS = "pods: [{namespace: shop, pod: cart-7, ips: [10.1.0.2]}, {namespace: pay, pod: api-2, ips: [10.1.0.3, fd00::3]}]\n"



def _replace(path, text):
    """Swap the file's content at once, as a ConfigMap volume update does: a
    truncating write_text lets a poll in between read an empty file (a valid,
    empty mapping), which made this test flaky."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)

def shape(resolver: Resolver) -> dict[str, tuple[str, frozenset[str]]]:
    """Family name -> (type, label names of its samples)."""
    out = {}
    for family in resolver.collect():
        labels = frozenset(name for sample in family.samples for name in sample.labels)
        out[family.name] = (family.type, labels)
    return out


def static_resolver(tmp_path) -> StaticResolver:
    path = tmp_path / "pods.yaml"
    path.write_text(PODS)
    r = StaticResolver(str(path), poll_seconds=0.05)
    r.load()
    return r


def test_static_and_kubernetes_resolvers_export_the_same_families_and_labels(tmp_path):
    static = shape(static_resolver(tmp_path))
    kube = shape(KubernetesResolver("node-a", api_client=ApiClient()))
    assert static == kube
    assert static["netprobe_resolver_pods"] == ("gauge", {"watch", "state"})
    assert static["netprobe_resolver_watch_restarts"] == ("counter", {"watch", "reason"})
    assert len(static) == 8, sorted(static)


def samples(resolver: Resolver) -> dict[tuple, float]:
    text = generate_latest(_registry(resolver)).decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("netprobe_resolver_") and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def _registry(collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_static_resolver_follows_its_file_keeps_the_last_good_one_and_says_so(tmp_path):
    before = time.time()
    r = static_resolver(tmp_path)
    assert r.lookup(normalize_ip("10.1.0.3")).pod == "api-2"
    assert r.lookup(normalize_ip("10.9.9.9")) is None
    s = samples(r)
    assert s['netprobe_resolver_pods{state="live",watch="file"}'] == 2
    assert s['netprobe_resolver_pods{state="departed",watch="file"}'] == 0
    assert s['netprobe_resolver_relists_total{watch="file"}'] == 1
    assert s['netprobe_resolver_stale{watch="file"}'] == 0
    assert s['netprobe_resolver_last_sync_timestamp_seconds{watch="file"}'] >= before
    assert s["netprobe_resolver_lookups_total"] == 2
    assert s["netprobe_resolver_lookup_misses_total"] == 1

    r.start()
    try:
        _replace(tmp_path / "pods.yaml", "pods: [{namespace: shop}]\n")   # refused: pod, ips missing
        deadline = time.monotonic() + 5
        while samples(r)['netprobe_resolver_stale{watch="file"}'] != 1:
            assert time.monotonic() < deadline, "refused file not reported as stale"
            time.sleep(0.05)
        s = samples(r)
        assert s['netprobe_resolver_watch_restarts_total{reason="error",watch="file"}'] >= 1
        assert s['netprobe_resolver_pods{state="live",watch="file"}'] == 2   # the last good version
        assert r.lookup(normalize_ip("10.1.0.2")).pod == "cart-7"
        _replace(tmp_path / "pods.yaml", PODS.replace("cart-7", "cart-8"))
        while samples(r)['netprobe_resolver_stale{watch="file"}'] != 0:
            assert time.monotonic() < deadline, "good file not taken again"
            time.sleep(0.05)
        assert samples(r)['netprobe_resolver_relists_total{watch="file"}'] == 2
        assert r.lookup(normalize_ip("10.1.0.2")).pod == "cart-8"
    finally:
        r.stop()
