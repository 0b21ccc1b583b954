"""The resolver around its indexes, without an API server: settings, lookups, own metrics."""
import time

import pytest
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry, generate_latest

from node_agent.resolver.base import PodRef, Resolver, normalize_ip
from node_agent.resolver.kubernetes import KubernetesResolver, ResolverConfigError
from node_agent.resolver.kubernetes.pod_record import pod_record


def resolver(**kwargs):
    return KubernetesResolver("node-a", api_client=ApiClient(), **kwargs)


def feed(watch, obj, event="ADDED", workload=""):
    watch.index.apply(event, pod_record(obj), workload, time.monotonic())


def test_is_a_resolver_with_one_watch_per_scope():
    cluster = resolver()
    assert isinstance(cluster, Resolver)
    assert [(w.name, w.field_selector) for w in cluster.watches] == [
        ("node", "spec.nodeName=node-a"), ("cluster", None)]
    assert [w.name for w in resolver(peers="node").watches] == ["node"]
    assert not cluster.is_ready()


@pytest.mark.parametrize("kwargs,message", [
    (dict(node_name=""), "node_name"),
    (dict(node_name="n", peers="everything"), "peers must be one of cluster, node"),
    (dict(node_name="n", deleted_pod_grace_seconds=-1), "deleted_pod_grace_seconds"),
    (dict(node_name="n", deleted_pod_grace_seconds="60"), "deleted_pod_grace_seconds"),
])
def test_bad_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(ResolverConfigError, match=message):
        KubernetesResolver(api_client=ApiClient(), **kwargs)


def test_missing_kubeconfig_is_named(tmp_path):
    with pytest.raises(ResolverConfigError, match="does-not-exist"):
        KubernetesResolver("n", kubeconfig=str(tmp_path / "does-not-exist"))


def test_unreadable_kubeconfig_is_a_config_error(tmp_path):
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(ResolverConfigError, match="cannot load credentials"):
        KubernetesResolver("n", kubeconfig=str(bad))


def test_lookup_takes_text_bytes_and_addresses_and_counts_misses(pod):
    r = resolver()
    node, cluster = r.watches
    feed(node, pod("local", ips=["10.0.0.1", "fd00::1"]), workload="web")
    feed(cluster, pod("far", ips=["10.9.0.1"], node="node-b"))
    want = PodRef("shop", "local", "web")
    assert r.lookup(normalize_ip("10.0.0.1")) == want
    assert r.lookup(normalize_ip("fd00::1")) == want
    assert r.lookup(bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])) == want  # BPF key, v4-mapped
    assert r.lookup(normalize_ip("10.9.0.1")).pod == "far"
    assert r.lookup(normalize_ip("192.168.1.10")) is None
    metrics = scrape(r)
    assert "netprobe_resolver_lookups_total 5.0" in metrics
    assert "netprobe_resolver_lookup_misses_total 1.0" in metrics


def test_a_live_pod_in_either_watch_beats_a_departed_one(pod):
    r = resolver()
    node, cluster = r.watches
    old = pod("old", ips=["10.0.0.5"])
    feed(node, old)
    feed(node, old, event="DELETED")
    feed(cluster, pod("moved-in", ips=["10.0.0.5"], node="node-b"))
    assert r.lookup(normalize_ip("10.0.0.5")).pod == "moved-in"


def test_departed_pod_is_still_answered_during_grace(pod):
    r = resolver(peers="node", deleted_pod_grace_seconds=30)
    node, = r.watches
    gone = pod("gone", ips=["10.0.0.6"])
    feed(node, gone)
    feed(node, gone, event="DELETED")
    assert r.lookup(normalize_ip("10.0.0.6")).pod == "gone"


def test_own_metrics_are_exposed_per_watch(pod):
    r = resolver()
    node, cluster = r.watches
    feed(node, pod("a", ips=["10.0.0.1"]))
    gone = pod("b", ips=["10.0.0.2"])
    feed(cluster, gone)
    feed(cluster, pod("c", ips=["10.0.0.3"]))
    feed(cluster, gone, event="DELETED")
    cluster.stale = True
    cluster.restarts["error"] = 3
    cluster.last_sync_time = 1700000000.5
    text = scrape(r)
    for line in [
        'netprobe_resolver_pods{state="live",watch="node"} 1.0',
        'netprobe_resolver_pods{state="departed",watch="node"} 0.0',
        'netprobe_resolver_pods{state="live",watch="cluster"} 1.0',
        'netprobe_resolver_pods{state="departed",watch="cluster"} 1.0',
        'netprobe_resolver_stale{watch="node"} 0.0',
        'netprobe_resolver_stale{watch="cluster"} 1.0',
        'netprobe_resolver_watch_restarts_total{reason="error",watch="cluster"} 3.0',
        'netprobe_resolver_watch_restarts_total{reason="expired",watch="node"} 0.0',
        'netprobe_resolver_last_sync_timestamp_seconds{watch="cluster"} 1.7000000005e+09',
        'netprobe_resolver_last_sync_timestamp_seconds{watch="node"} 0.0',
        'netprobe_resolver_relists_total{watch="node"} 0.0',
        'netprobe_resolver_owner_lookup_errors_total 0.0',
        '# TYPE netprobe_resolver_lookup_misses_total counter',
    ]:
        assert line in text, line


def scrape(collector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()
