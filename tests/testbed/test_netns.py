"""The lab itself: if it miscounts, every kernel test built on it lies."""
import subprocess

import pytest
import yaml

from netprobe_testbed.netns import Lab

pytestmark = pytest.mark.kernel


def _netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_pods_talk_v4_and_v6_with_exact_counts(tmp_path):
    with Lab(["a", "b"]) as lab:
        a, b = lab.pods["a"], lab.pods["b"]
        assert a.ip4 != b.ip4 and a.ip4.startswith(f"10.77.{lab.slot}.")
        lab.serve_tcp("b", 7000)
        assert lab.connect_many("a", b.ip4, 7000, 5) == 5
        assert lab.connect_many("a", b.ip6, 7000, 3) == 3
        assert lab.connect_many("a", b.ip4, 7000, 2, payload=b"y" * 300_000) == 2  # many reads
        # nothing listens on 7001: every connection fails, none is counted
        assert lab.connect_many("a", b.ip4, 7001, 2, timeout=2) == 0


def test_random_drop_loses_packets_and_clears():
    with Lab(["a", "b"]) as lab:
        lab.serve_tcp("b", 7000)
        lab.add_random_drop("b", 100, from_ip=lab.pods["a"].ip4)
        assert lab.connect_many("a", lab.pods["b"].ip4, 7000, 1, timeout=1.5) == 0
        lab.clear_drops("b")
        assert lab.connect_many("a", lab.pods["b"].ip4, 7000, 1) == 1


def test_parallel_labs_get_distinct_slots_and_cleanup_is_complete(tmp_path):
    with Lab(["a"]) as one, Lab(["a"]) as two:
        assert one.slot != two.slot
        made = {one.pods["a"].netns, two.pods["a"].netns}
        assert made <= _netns_names()
        path = one.write_static_resolver(tmp_path / "pods.yaml", {"a": ("shop", "cart-1", "cart")})
        doc = yaml.safe_load(path.read_text())
        assert doc == {"pods": [{"namespace": "shop", "pod": "cart-1",
                                 "ips": [one.pods["a"].ip4, one.pods["a"].ip6], "workload": "cart"}]}
        bridges = (one.bridge, two.bridge)
    assert not made & _netns_names()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(f" {b}:" in links for b in bridges)


def test_pinned_lab_runs_its_processes_on_that_cpu():
    with Lab(["a"], pin_cpu=0) as lab:
        out = lab.pods["a"].run(["grep", "Cpus_allowed_list", "/proc/self/status"]).stdout
        assert out.split()[-1] == "0"


def _rx_packets(lab, pod: str, ifname: str) -> int:
    return int(lab.pods[pod].run(["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"]).stdout)


def test_a_direct_link_carries_traffic_past_the_bridge_and_is_in_the_resolver_file(tmp_path):
    with Lab(["a", "b", "c"]) as lab:
        ip_a, ip_b = lab.link("a", "b")
        assert (lab.pods["a"].direct_ips, lab.pods["b"].direct_ips) == ([ip_a], [ip_b])
        assert lab.link("b", "c")[0] not in (ip_a, ip_b)   # a second link gets its own addresses
        lab.serve_tcp("b", 7000)
        route = lab.pods["a"].run(["ip", "-o", "route", "get", ip_b]).stdout
        link_if = route.split(" dev ")[1].split()[0]
        assert link_if != "eth0" and " via " not in route, route
        peer_if = lab.pods["b"].run(["ip", "-o", "addr", "show", "to", ip_b]).stdout.split()[1]
        before = _rx_packets(lab, "b", peer_if)
        assert lab.connect_many("a", ip_b, 7000, 5) == 5
        # SYN, ACK, request, FIN, ACK of the echo at least, per connection
        assert _rx_packets(lab, "b", peer_if) - before >= 25
        pods = yaml.safe_load(lab.write_static_resolver(tmp_path / "pods.yaml",
                                                        {"a": ("ns", "a"), "b": ("ns", "b")}).read_text())
        ips = {p["pod"]: p["ips"] for p in pods["pods"]}
        assert ip_a in ips["a"] and ip_b in ips["b"]
