"""Address -> pod bookkeeping: grace period, address reuse, relists."""
import ipaddress

import pytest

from node_agent.resolver.base import PodRef, normalize_ip
from node_agent.resolver.kubernetes.index import PodIndex
from node_agent.resolver.kubernetes.pod_record import pod_record

GRACE = 60.0


@pytest.fixture
def index():
    return PodIndex(GRACE)


def ip(text):
    return normalize_ip(text)


def add(index, obj, now=0.0, workload="", event="ADDED"):
    index.apply(event, pod_record(obj), workload, now)


def test_every_address_of_a_live_pod_resolves(index, pod):
    add(index, pod("cart-7", ips=["10.1.0.7", "fd00::7"]), workload="cart")
    want = PodRef("shop", "cart-7", "cart")
    assert index.lookup(ip("10.1.0.7"), 1) == want
    assert index.lookup(ip("fd00::7"), 1) == want
    assert index.lookup(ip("::ffff:10.1.0.7"), 1) == want   # BPF keys store v4 v4-mapped
    assert index.lookup(ip("10.1.0.8"), 1) is None
    assert index.counts(1) == (1, 0)


def test_host_network_pod_does_not_claim_the_node_address(index, pod):
    add(index, pod("kube-proxy", namespace="kube-system", ips=["192.168.1.10"], host_network=True))
    assert index.lookup(ip("192.168.1.10"), 1) is None
    assert index.counts(1) == (0, 0)


def test_pending_pod_without_address_is_not_cached(index, pod):
    add(index, pod("new", phase="Pending"))
    assert index.counts(0) == (0, 0)


def test_deleted_pod_resolves_during_the_grace_period_then_vanishes(index, pod):
    obj = pod("cart-7", ips=["10.1.0.7"])
    add(index, obj)
    add(index, obj, now=10, event="DELETED")
    assert index.lookup(ip("10.1.0.7"), 10 + GRACE - 0.001) == PodRef("shop", "cart-7")
    assert index.counts(11) == (0, 1)
    assert index.lookup(ip("10.1.0.7"), 10 + GRACE) is None
    assert index.counts(10 + GRACE) == (0, 0)
    # The sweep frees the memory; nothing else changes.
    assert index.sweep(10 + GRACE - 1) == 0
    assert index.sweep(10 + GRACE) == 1
    assert index.lookup(ip("10.1.0.7"), 10 + GRACE) is None


def test_a_second_delete_does_not_extend_the_grace(index, pod):
    obj = pod("cart-7", ips=["10.1.0.7"])
    add(index, obj)
    add(index, obj, now=10, event="DELETED")
    add(index, obj, now=50, event="DELETED")
    assert index.lookup(ip("10.1.0.7"), 10 + GRACE) is None


def test_zero_grace_forgets_at_once(pod):
    index = PodIndex(0)
    obj = pod("cart-7", ips=["10.1.0.7"])
    add(index, obj)
    add(index, obj, now=5, event="DELETED")
    assert index.lookup(ip("10.1.0.7"), 5) is None


def test_reused_address_resolves_to_the_new_pod_at_once(index, pod):
    old = pod("old", ips=["10.1.0.5"])
    add(index, old)
    add(index, old, now=1, event="DELETED")
    add(index, pod("new", ips=["10.1.0.5"]), now=2)
    assert index.lookup(ip("10.1.0.5"), 2).pod == "new"
    # The old pod's grace ends, the new pod stays.
    index.sweep(1 + GRACE)
    assert index.lookup(ip("10.1.0.5"), 1 + GRACE).pod == "new"


def test_new_pod_wins_even_when_the_old_pods_deletion_arrives_late(index, pod):
    old, new = pod("old", ips=["10.1.0.5"]), pod("new", ips=["10.1.0.5"])
    add(index, old)
    add(index, new, now=1)                    # both live for a moment
    assert index.lookup(ip("10.1.0.5"), 1).pod == "new"
    add(index, old, now=2, event="DELETED")
    assert index.lookup(ip("10.1.0.5"), 2).pod == "new"
    add(index, new, now=3, event="DELETED")
    assert index.lookup(ip("10.1.0.5"), 3).pod == "new"   # the last to leave
    assert index.lookup(ip("10.1.0.5"), 3 + GRACE) is None


def test_late_update_of_the_old_pod_does_not_steal_the_address_back(index, pod):
    old, new = pod("old", ips=["10.1.0.5"]), pod("new", ips=["10.1.0.5"])
    add(index, old)
    add(index, new, now=1)
    add(index, old, now=2, event="MODIFIED")
    assert index.lookup(ip("10.1.0.5"), 2).pod == "new"


def test_finished_pod_releases_its_address_after_the_grace(index, pod):
    obj = pod("job-x", ips=["10.1.0.9"], uid="job-uid")
    add(index, obj)
    # A finished pod's status may no longer list its address: keep the known one.
    add(index, pod("job-x", phase="Succeeded", uid="job-uid"), now=5, event="MODIFIED")
    assert index.lookup(ip("10.1.0.9"), 6) == PodRef("shop", "job-x")
    assert index.counts(6) == (0, 1)
    add(index, pod("next", ips=["10.1.0.9"]), now=7)
    assert index.lookup(ip("10.1.0.9"), 7).pod == "next"
    # Deleting it later neither revives nor extends it.
    add(index, pod("job-x", phase="Succeeded", uid="job-uid"), now=30, event="DELETED")
    index.sweep(5 + GRACE)
    assert index.counts(5 + GRACE) == (1, 0)


def test_finished_pod_never_seen_running_is_not_cached(index, pod):
    add(index, pod("done", ips=["10.1.0.9"], phase="Failed"))
    assert index.lookup(ip("10.1.0.9"), 0) is None


def test_address_change_releases_the_old_address(index, pod):
    add(index, pod("p", ips=["10.1.0.1"], uid="u1"))
    add(index, pod("p", ips=["10.1.0.2", "fd00::2"], uid="u1"), event="MODIFIED")
    assert index.lookup(ip("10.1.0.1"), 0) is None
    assert index.lookup(ip("10.1.0.2"), 0).pod == "p"
    assert index.lookup(ip("fd00::2"), 0).pod == "p"


def test_workload_change_is_picked_up(index, pod):
    add(index, pod("p", ips=["10.1.0.1"], uid="u1"), workload="")
    add(index, pod("p", ips=["10.1.0.1"], uid="u1"), workload="web", event="MODIFIED")
    assert index.lookup(ip("10.1.0.1"), 0).workload == "web"


def test_recreated_pod_with_the_same_name_is_a_new_pod(index, pod):
    add(index, pod("db-0", ips=["10.1.0.4"], uid="first"))
    add(index, pod("db-0", ips=["10.1.0.4"], uid="first"), now=1, event="DELETED")
    add(index, pod("db-0", ips=["10.1.0.14"], uid="second"), now=2)
    assert index.lookup(ip("10.1.0.4"), 2).pod == "db-0"          # old address in grace
    assert index.lookup(ip("10.1.0.14"), 2).pod == "db-0"
    assert index.lookup(ip("10.1.0.4"), 1 + GRACE) is None
    assert index.counts(2) == (1, 1)


def test_relist_departs_pods_deleted_while_not_watching(index, pod):
    stays, goes = pod("stays", ips=["10.1.0.1"]), pod("goes", ips=["10.1.0.2"])
    add(index, stays)
    add(index, goes)
    arrived = pod("arrived", ips=["10.1.0.3"])
    index.replace([(pod_record(stays), "s"), (pod_record(arrived), "")], now=100)
    assert index.lookup(ip("10.1.0.1"), 100) == PodRef("shop", "stays", "s")
    assert index.lookup(ip("10.1.0.3"), 100).pod == "arrived"
    assert index.lookup(ip("10.1.0.2"), 100 + GRACE - 1).pod == "goes"
    assert index.lookup(ip("10.1.0.2"), 100 + GRACE) is None


def test_relist_revives_a_pod_wrongly_thought_gone(index, pod):
    obj = pod("p", ips=["10.1.0.1"])
    add(index, obj)
    add(index, obj, now=1, event="DELETED")
    index.replace([(pod_record(obj), "")], now=2)
    assert index.lookup(ip("10.1.0.1"), 2 + GRACE) is not None
    assert index.counts(2) == (1, 0)


def test_unknown_event_type_is_refused(index, pod):
    with pytest.raises(ValueError, match="BOOKMARK"):
        index.apply("BOOKMARK", pod_record(pod("p", ips=["10.1.0.1"])), "", 0)


def test_negative_grace_is_refused():
    with pytest.raises(ValueError):
        PodIndex(-1)


def test_many_pods_churning_addresses_leave_nothing_behind(index, pod):
    # 200 pods recreated over the same 50 addresses, then all deleted: after
    # the grace nothing is left in any internal table.
    objs = []
    for i in range(200):
        obj = pod(f"p{i}", ips=[str(ipaddress.IPv4Address("10.2.0.0") + i % 50)])
        add(index, obj, now=i)
        objs.append(obj)
        if i >= 50:
            add(index, objs[i - 50], now=i, event="DELETED")
    for i in range(50):
        assert index.lookup(ip(str(ipaddress.IPv4Address("10.2.0.0") + i)), 200).pod == f"p{150 + i}"
    for obj in objs[150:]:
        add(index, obj, now=300, event="DELETED")
    index.sweep(300 + GRACE)
    assert (index._pods, index._departed, index._owner, index._shared) == ({}, {}, {}, {})
