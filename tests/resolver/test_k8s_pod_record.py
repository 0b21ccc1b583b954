"""Reading pod objects into the few fields the resolver keeps."""
import ipaddress

import pytest

from node_agent.resolver.kubernetes.pod_record import Owner, pod_record


def test_every_pod_ip_v4_and_v6_is_kept_in_order(pod):
    record = pod_record(pod("cart-7", ips=["10.1.0.7", "fd00::7"]))
    assert record_ips(record) == ["10.1.0.7", "fd00::7"]
    assert (record.namespace, record.name, record.finished, record.host_network) == ("shop", "cart-7", False, False)


def test_pod_ip_alone_is_used_when_pod_ips_is_absent(pod):
    obj = pod("old-style")
    obj["status"]["podIP"] = "10.1.0.9"
    assert record_ips(obj) == ["10.1.0.9"]


def test_v4_mapped_addresses_collapse_to_v4_and_duplicates_and_garbage_are_dropped(pod):
    obj = pod("odd", ips=["::ffff:10.1.0.3", "10.1.0.3", "not-an-ip", "fd00::3"])
    assert record_ips(obj) == ["10.1.0.3", "fd00::3"]


def test_host_network_pod_claims_no_address(pod):
    record = pod_record(pod("kube-proxy-x", namespace="kube-system", ips=["192.168.1.10"],
                            host_network=True))
    assert record.ips == () and record.host_network


@pytest.mark.parametrize("phase,finished", [("Running", False), ("Pending", False),
                                            ("Succeeded", True), ("Failed", True)])
def test_finished_phases(pod, phase, finished):
    assert pod_record(pod("p", ips=["10.1.0.1"], phase=phase)).finished is finished


def test_controller_owner_is_preferred_over_other_owner_references(pod):
    obj = pod("web-1", owner=("StatefulSet", "web"))
    obj["metadata"]["ownerReferences"].insert(0, {"kind": "ConfigMap", "name": "cm", "uid": "u"})
    assert pod_record(obj).owner == Owner("StatefulSet", "web")


def test_first_owner_when_none_is_controller(pod):
    obj = pod("x")
    obj["metadata"]["ownerReferences"] = [{"kind": "Foo", "name": "a"}, {"kind": "Bar", "name": "b"}]
    assert pod_record(obj).owner == Owner("Foo", "a")


def test_template_hash_label_is_read(pod):
    assert pod_record(pod("web-abc-1", owner=("ReplicaSet", "web-abc"), template_hash="abc")).template_hash == "abc"


@pytest.mark.parametrize("missing", ["uid", "name", "namespace"])
def test_pod_without_identity_is_refused(pod, missing):
    obj = pod("x")
    del obj["metadata"][missing]
    with pytest.raises(ValueError, match="uid/namespace/name"):
        pod_record(obj)


def record_ips(obj_or_record):
    record = obj_or_record if not isinstance(obj_or_record, dict) else pod_record(obj_or_record)
    assert all(isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for ip in record.ips)
    return [str(ip) for ip in record.ips]
