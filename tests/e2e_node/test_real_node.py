"""The real node itself: a kubelet and containerd run pods from imported images.

What the real-node end-to-end test stands on: the Node's readiness comes from
the kubelet, pods get CNI addresses and talk to each other, `kubectl logs` and
`kubectl exec` reach the kubelet, and stopping a node leaves the host as found.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from netprobe_testbed.cluster import ControlPlane
from netprobe_testbed.node import BUSYBOX_IMAGE, CGROUP_FS, NETNS_DIR, SYSCTLS, RealNode, _sysctl_path
from netprobe_testbed.kube import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def _json(cp, *args):
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def busybox_pod(name: str, node: str, command: list[str], labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": name}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                     "command": command}]}}


def test_node_readiness_comes_from_its_kubelet(real_cluster):
    cp, node = real_cluster
    n = _json(cp, "get", "node", node.name)
    ready = {c["type"]: c for c in n["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    assert n["status"]["nodeInfo"]["kubeletVersion"] == cp.version
    assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": node.ip} in n["status"]["addresses"]
    assert not [t for t in n["spec"].get("taints", []) if "not-ready" in t["key"]]
    # The kubelet keeps renewing its Lease: the node is alive, not just registered once.
    def renewed():
        result = cp.kubectl("-n", "kube-node-lease", "get", "lease", node.name, "-o",
                            "jsonpath={.spec.renewTime}", check=False)
        return result.stdout if result.returncode == 0 and result.stdout else None
    first = wait_for("the kubelet's node Lease", renewed, timeout=60, interval=1)
    wait_for("the kubelet to renew its node Lease", lambda: renewed() not in (None, first), timeout=60, interval=1)


def test_pods_get_cni_addresses_talk_and_answer_logs_and_exec(real_cluster):
    cp, node = real_cluster
    ns = f"rn-{secrets.token_hex(3)}"
    cp.kubectl("create", "namespace", ns)
    try:
        server = busybox_pod("server", node.name, ["sh", "-c", "echo serving; exec nc -ll -p 8080 -e echo pong"])
        client = busybox_pod("client", node.name, ["sleep", "3600"])
        for pod in (server, client):
            cp.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(pod))
        cp.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=60s")
        ips = {p: _json(cp, "-n", ns, "get", "pod", p)["status"]["podIP"] for p in ("server", "client")}
        for ip in ips.values():
            assert ipaddress.ip_address(ip) in node.subnet, ips
        assert ips["server"] != ips["client"]
        answer = cp.kubectl("-n", ns, "exec", "client", "--", "nc", "-w", "3", ips["server"], "8080").stdout
        assert answer.strip() == "pong"
        assert "serving" in cp.kubectl("-n", ns, "logs", "server").stdout
        # The container's network namespace is the pod's: its address is the CNI one.
        pid = node.pod_pid(ns, "server")
        addrs = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-4", "-o", "addr", "show", "eth0"],
                               capture_output=True, text=True, check=True).stdout
        assert f"inet {ips['server']}/" in addrs
    finally:
        cp.kubectl("delete", "namespace", ns, "--wait=false")


def _host_state() -> dict:
    """What a node could leave behind; other tests on this host may change other things
    meanwhile (their own labs, mounts, tables), so only the node's kinds are compared."""
    def listdir(p: Path) -> list[str]:
        return sorted(os.listdir(p)) if p.is_dir() else []
    mine = ("netprobe-node", "/run/netns/cni-", "containerd", "kubelet", "kubepods")
    return {
        "sysctls": {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS},
        "netns": [n for n in listdir(NETNS_DIR) if n.startswith("cni-")],
        "links": sorted(l["ifname"] for l in json.loads(subprocess.run(
            ["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
            if l["ifname"].startswith(("npnode", "veth"))),
        "nft_tables": [l for l in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                                   text=True).stdout.splitlines() if "netprobe_node" in l],
        "cgroups": {str(h): [d for d in listdir(h) if d.startswith(("netprobe-node", "kubepods"))]
                    for h in (CGROUP_FS / "memory", CGROUP_FS / "cpu", CGROUP_FS / "unified")},
        "mounts": sorted(m for m in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
                         if any(s in m for s in mine)),
        "var_lib_cni": sorted(str(p) for p in Path("/var/lib/cni").rglob("*")),
        "var_log_containers": listdir(Path("/var/log/containers")),
        "processes": sorted(_containerd_processes()),
    }


def _containerd_processes() -> set[str]:
    found = set()
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"containerd" in (p / "cmdline").read_bytes()[:200]:
                found.add(p.name)
        except OSError:
            pass   # exited meanwhile
    return found


def test_a_node_leaves_the_host_as_found():
    """Start a second control plane and node, run a pod, stop: the host is as before."""
    before = _host_state()
    with ControlPlane(real_nodes=True) as cp:
        with RealNode(cp) as node:
            cp.kubectl("apply", "-f", "-", input=json.dumps(busybox_pod("p", node.name, ["sleep", "3600"])))
            cp.kubectl("wait", "--for=condition=Ready", "pod/p", "--timeout=60s")
            during = _host_state()
            # What is checked below was really made: the pod's netns, the bridge, the table.
            assert set(during["netns"]) - set(before["netns"]) and node.bridge in during["links"]
            assert set(during["nft_tables"]) - set(before["nft_tables"])
    after = _host_state()
    # Nothing of ours is left. (Another node of this session may remove its own things
    # meanwhile, so "left" is what is there now and was not before.)
    assert after["sysctls"] == before["sysctls"]
    for key in ("netns", "links", "nft_tables", "mounts", "var_lib_cni", "var_log_containers", "processes"):
        assert set(after[key]) - set(before[key]) == set(), key
    for hierarchy, entries in after["cgroups"].items():
        assert set(entries) - set(before["cgroups"][hierarchy]) == set(), hierarchy
