"""Bad paths and upgrades on the real node (issue 12).

The operator runs as its Deployment's pod (`kubectl apply -k`, as in
test_real_node_e2e.py); each test starts agents as the DaemonSet's pods on the
real node and reads what a user would: the probe's conditions, `kubectl logs`,
the pods' status, and the agent's /metrics (plain HTTP here:
`secureMetrics: false`, so a test can read it without a Prometheus).

- No headers anywhere: the node's /usr/src and /lib/modules, as containerd
  mounts them into pods, are empty directories (RealNode.without_kernel_headers:
  tmpfs over them in containerd's own mount namespace, the host's files stay)
  and the agent image is the real one with /opt/netprobe/kernel-headers removed
  by a whiteout layer (node.image_without). Then the real image on the same
  headerless node: its fallback tree is used and doctor says so.
- A program the kernel cannot load: rx_latency forced to `attach: kprobe` on
  this kernel, which has no kprobes (a real refusal, no test knob).
- The API server restarted while the agent and pods run.
- A probe change that rolls the DaemonSet (one node: see docs/controlplane.md,
  "Two nodes", for why a two-node rollout is not run here).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netprobe_testbed.kube import wait_for
from node_agent.kernel.features import KernelFeatures
from netprobe_testbed.node import BUSYBOX_IMAGE, image_without
from netprobe_testbed.processes import free_port

import node_stack
from node_stack import NAMESPACE

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.kernel, pytest.mark.cluster]

NO_HEADERS_IMAGE = "localhost/netprobe-noheaders:dev"
IMAGE_FALLBACK = "/opt/netprobe/kernel-headers"
PARTIAL = "partial"      # the probe of the last three tests
SERVER_PORT = 8080


@pytest.fixture(scope="module")
def installed(real_cluster, netprobe_image, tmp_path_factory):
    """The operator installed from the manifests; everything removed afterwards."""
    cp, node = real_cluster
    _archive, ref = netprobe_image
    stack = node_stack.NodeStack(cp, node, ref, tmp_path_factory.mktemp("bad-paths"))
    stack.install()
    try:
        yield stack
    finally:
        for probe in ("noheaders", PARTIAL):
            cp.kubectl("delete", "networkprobe", probe, "--ignore-not-found", "--timeout=60s", check=False)
        cp.kubectl("delete", "namespace", "rn-restart", "--ignore-not-found", "--timeout=90s", check=False,
                   timeout=120)
        cp.kubectl("delete", "-k", str(stack.overlay()), "--ignore-not-found", "--timeout=90s", timeout=120)


def probe_body(name: str, port: int, programs: list[dict], **agent) -> dict:
    return {"apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe", "metadata": {"name": name},
            "spec": {"programs": programs, "nodeSelector": {"netprobe.test/real-node": "true"},
                     "labels": ["peer_namespace", "peer_pod"], "resolver": {"peers": "cluster"},
                     "agent": {"metricsPort": port, "logLevel": "info", "secureMetrics": False, **agent},
                     "serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}}}


def condition(stack, probe: str, ctype: str) -> dict:
    conds = stack.get_json("get", "np", probe).get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == ctype), {})


def wait_condition(stack, probe, ctype, status, reason=None, timeout=180) -> dict:
    def check():
        c = condition(stack, probe, ctype)
        return c if c.get("status") == status and reason in (None, c.get("reason")) else None
    try:
        return wait_for(f"{probe} {ctype}={status} {reason or ''}", check, timeout=timeout, interval=1)
    except Exception:
        stack.dump_logs()
        print(json.dumps(stack.get_json("get", "np", probe).get("status"), indent=1))
        for pod in agent_pods(stack, probe):
            print(f"--- {pod['metadata']['name']} status ---\n" + json.dumps(pod["status"], indent=1))
            print(stack.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"], "--tail=80", check=False).stdout)
        raise


def agent_pods(stack, probe: str) -> list[dict]:
    return [p for p in stack.get_json("-n", NAMESPACE, "get", "pods", "-l", f"netprobe.io/probe={probe}")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def scrape(node, port: int) -> dict[tuple, float]:
    """The agent's /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{node.ip}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


# --- 1. no kernel headers anywhere ---------------------------------------------------

def test_no_headers_on_node_or_image_names_the_fix_then_the_image_fallback_works(installed, netprobe_image,
                                                                                 tmp_path):
    stack, node = installed, installed.node
    assert list(Path("/usr/src").glob("linux-headers-*")), \
        "the host has headers: hiding them is what this test is about"
    archive, ref = netprobe_image
    node.import_image(image_without(archive, [IMAGE_FALLBACK], NO_HEADERS_IMAGE, tmp_path / "noheaders.tar"))
    assert NO_HEADERS_IMAGE in node.imported
    port = free_port()
    with node.without_kernel_headers():
        stack.kubectl("apply", "-f", "-", input=json.dumps(probe_body(
            "noheaders", port, [{"name": "tcp_connections"}], image=NO_HEADERS_IMAGE, imagePullPolicy="Never")))
        degraded = wait_condition(stack, "noheaders", "Degraded", "True", "AgentCannotStart")
        msg = degraded["message"]
        assert f"agent on node {node.name}: the agent cannot start: no kernel headers found for {os.uname().release}" \
            in msg, msg
        # It names where it looked and every fix.
        for part in (f"/lib/modules/{os.uname().release}/build", "/usr/src/linux-headers-*",
                     f"{IMAGE_FALLBACK}/linux-headers-*", "apt-get install linux-headers-$(uname -r)",
                     "mount the host's /lib/modules and /usr/src", "`make image`"):
            assert part in msg, (part, msg)
        ready = condition(stack, "noheaders", "Ready")
        assert ready["status"] == "False" and ready["reason"] == "AgentsNotReady", ready
        # The pod's own log says it too (the run that ended, or the current one; the
        # kubelet removes a dead container's log when it starts the next one).
        (pod,) = agent_pods(stack, "noheaders")
        name = pod["metadata"]["name"]

        def crash_log():
            for args in (("--previous",), ()):
                out = stack.kubectl("-n", NAMESPACE, "logs", name, *args, check=False).stdout
                if "cannot start" in out and "no kernel headers found" in out:
                    return out
            return None
        logs = wait_for("the agent's log to say why it cannot start", crash_log, timeout=60, interval=1)
        assert "make image" in logs and "apt-get install linux-headers" in logs, logs[-2000:]

        # The real image on the same headerless node: the image's tree is used, and the
        # condition clears once the rolled pod runs.
        stack.kubectl("patch", "np", "noheaders", "--type=merge", "-p",
                      json.dumps({"spec": {"agent": {"image": ref, "imagePullPolicy": "IfNotPresent"}}}))
        stack.kubectl("-n", NAMESPACE, "rollout", "status", "ds/netprobe-noheaders", "--timeout=300s", timeout=330)
        wait_condition(stack, "noheaders", "Degraded", "False", "AsExpected", timeout=120)
        wait_condition(stack, "noheaders", "Ready", "True", timeout=120)
        doctor = stack.kubectl("-n", NAMESPACE, "exec", "ds/netprobe-noheaders", "--", "netprobe-agent", "doctor",
                               check=False).stdout
        assert "(from image fallback" in doctor, doctor
        assert "can load: yes" in doctor, doctor
        # The node's directories really were empty in the pod.
        listing = stack.kubectl("-n", NAMESPACE, "exec", "ds/netprobe-noheaders", "--", "ls", "-A", "/usr/src",
                                "/lib/modules", check=False).stdout
        assert "linux-headers" not in listing and os.uname().release not in listing, listing
    stack.kubectl("delete", "np", "noheaders", "--timeout=90s", timeout=120)
    wait_for("the noheaders agent to go", lambda: not agent_pods(stack, "noheaders"), timeout=90, interval=1)


# --- 2. a program the kernel cannot load ----------------------------------------------

@pytest.fixture(scope="module")
def partial(installed):
    """tcp_connections, and rx_latency forced to kprobes, which this kernel lacks."""
    port = free_port()
    installed.kubectl("apply", "-f", "-", input=json.dumps(probe_body(
        PARTIAL, port, [{"name": "tcp_connections"}, {"name": "rx_latency", "attach": "kprobe"}])))
    wait_for("the partial DaemonSet", lambda: installed.kubectl(
        "-n", NAMESPACE, "get", "ds", f"netprobe-{PARTIAL}", check=False).returncode == 0, timeout=60)
    installed.kubectl("-n", NAMESPACE, "rollout", "status", f"ds/netprobe-{PARTIAL}", "--timeout=300s", timeout=330)
    return {"port": port}


def test_a_program_the_kernel_cannot_load_leaves_the_others_running_and_degraded_names_it(installed, partial):
    stack = installed
    assert not KernelFeatures().kprobes, "this kernel has kprobes: the forced kprobe attach would load here"
    degraded = wait_condition(stack, PARTIAL, "Degraded", "True", "ProgramsFailed")
    msg = degraded["message"]
    assert msg.startswith(f"agent on node {stack.node.name}: rx_latency failed to load ("), msg
    assert "kprobe" in msg and "still running: tcp_connections" in msg, msg
    # The pod keeps running, ready, never restarted: the other program works.
    wait_condition(stack, PARTIAL, "Ready", "True")
    row = stack.kubectl("get", "np", PARTIAL, "--no-headers").stdout.split()
    assert row[2:4] == ["1/1", "True"], row
    (pod,) = agent_pods(stack, PARTIAL)
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] and cs["restartCount"] == 0 and "running" in cs["state"]
    own = {c["type"]: c for c in pod["status"]["conditions"]}["netprobe.io/ProgramsLoaded"]
    assert own["status"] == "False" and own["reason"] == "ProgramsFailed"
    logs = stack.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"]).stdout
    assert "program failed" in logs and "program=rx_latency" in logs, logs[-2000:]
    assert "program loaded" in logs and "program=tcp_connections" in logs, logs[-2000:]
    samples = scrape(stack.node, partial["port"])
    assert value(samples, "netprobe_program_up", program="tcp_connections") == 1
    assert value(samples, "netprobe_program_up", program="rx_latency") == 0
    assert value(samples, "netprobe_program_errors_total", program="rx_latency") >= 1


# --- 3. the API server restarted while pods run -----------------------------------------

def _pod(name: str, command: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "rn-restart"},
            "spec": {"nodeName": None, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                     "command": command}]}}


def _start_pods(stack, *names_and_commands) -> dict[str, str]:
    objs = []
    for name, command in names_and_commands:
        pod = _pod(name, command)
        pod["spec"]["nodeName"] = stack.node.name
        objs.append(pod)
    stack.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))
    names = [f"pod/{n}" for n, _ in names_and_commands]
    stack.kubectl("-n", "rn-restart", "wait", "--for=condition=Ready", *names, "--timeout=90s", timeout=120)
    return {n: stack.get_json("-n", "rn-restart", "get", "pod", n)["status"]["podIP"] for n, _ in names_and_commands}


def _connect(stack, src: str, ip: str, count: int) -> int:
    out = stack.kubectl("-n", "rn-restart", "exec", src, "--", "sh", "-c",
                        f"i=0; while [ $i -lt {count} ]; do echo ping | nc -w 3 {ip} {SERVER_PORT}; "
                        f"i=$((i+1)); done; true", timeout=120).stdout
    return out.split().count("pong")


def _connect_from_netns(pid: int, ip: str, count: int) -> int:
    answered = 0
    for _ in range(count):
        out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "busybox", "nc", "-w", "3", ip,
                              str(SERVER_PORT)], input="ping\n", capture_output=True, text=True, timeout=30)
        answered += out.stdout.split().count("pong")
    return answered


def _opened(stack, port, pod, peer, direction="outbound") -> float:
    return value(scrape(stack.node, port), "netprobe_tcp_connections_opened_total", namespace="rn-restart",
                 pod=pod, peer_namespace="rn-restart", peer_pod=peer, direction=direction)


def test_pod_labels_keep_flowing_across_an_api_server_restart(installed, partial):
    stack, cp, port = installed, installed.cp, partial["port"]
    stack.kubectl("create", "namespace", "rn-restart")
    serve = ["nc", "-ll", "-p", str(SERVER_PORT), "-e", "sh", "-c", "read line; echo pong"]
    ips = _start_pods(stack, ("server", serve), ("early", ["sleep", "3600"]))
    assert _connect(stack, "early", ips["server"], 5) == 5
    wait_for("early's connections labelled", lambda: _opened(stack, port, "early", "server") == 5, timeout=30,
             interval=1)

    early_pid = stack.node.pod_pid("rn-restart", "early")   # from containerd, not the API
    cp.stop_apiserver()
    try:
        time.sleep(5)   # the agent's watch, the kubelet and the operator all lose the API
        # Traffic while the API is down (no `kubectl exec` then: from the pod's network
        # namespace directly) is labelled from what the agent already knows.
        assert _connect_from_netns(early_pid, ips["server"], 3) == 3
        assert wait_for("counts while the API is down", lambda: _opened(stack, port, "early", "server") == 8,
                        timeout=30, interval=1)
    finally:
        cp.start_apiserver()

    # A pod created after the restart: its address is learnt from the re-established watch.
    ips.update(_start_pods(stack, ("late", ["sleep", "3600"])))
    assert _connect(stack, "late", ips["server"], 4) == 4
    assert _connect(stack, "early", ips["server"], 2) == 2
    wait_for("the late pod's connections labelled",
             lambda: _opened(stack, port, "late", "server") == 4 and _opened(stack, port, "server", "late",
                                                                             "inbound") == 4,
             timeout=60, interval=1)
    assert _opened(stack, port, "early", "server") == 10
    assert _opened(stack, port, "server", "early", "inbound") == 10
    # The probe's status still follows the agent (the operator's watches came back).
    wait_condition(stack, PARTIAL, "Ready", "True", timeout=60)


# --- 4. a probe change rolls the DaemonSet -----------------------------------------------

def test_a_probe_change_rolls_the_agent_and_metrics_resume(installed, partial):
    """Uses the pods of the restart test (the module's tests run in order)."""
    stack = installed
    ds = stack.get_json("-n", NAMESPACE, "get", "ds", f"netprobe-{PARTIAL}")
    # What the API server admitted: never every node at once, no surge (host port).
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    (old,) = agent_pods(stack, PARTIAL)
    new_port = free_port()
    stack.kubectl("patch", "np", PARTIAL, "--type=merge", "-p",
                  json.dumps({"spec": {"agent": {"metricsPort": new_port, "maxUnavailable": "50%"}}}))
    wait_for("the DaemonSet to take the change", lambda: stack.get_json(
        "-n", NAMESPACE, "get", "ds", f"netprobe-{PARTIAL}")["spec"]["updateStrategy"]["rollingUpdate"]
        ["maxUnavailable"] == "50%", timeout=60, interval=1)
    stack.kubectl("-n", NAMESPACE, "rollout", "status", f"ds/netprobe-{PARTIAL}", "--timeout=300s", timeout=330)
    (new,) = agent_pods(stack, PARTIAL)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["spec"]["containers"][0]["ports"][0]["containerPort"] == new_port
    wait_condition(stack, PARTIAL, "Ready", "True", timeout=120)
    # The new agent serves on the new port; the old one is gone with its pod.
    samples = wait_for("the new agent's metrics", lambda: _try_scrape(stack.node, new_port), timeout=60, interval=1)
    assert value(samples, "netprobe_program_up", program="tcp_connections") == 1
    assert _try_scrape(stack.node, partial["port"]) is None
    # Counting resumes (counters start again with the new pod) and labels resolve.
    ips = {p: stack.get_json("-n", "rn-restart", "get", "pod", p)["status"]["podIP"] for p in ("server",)}
    assert _connect(stack, "late", ips["server"], 3) == 3
    wait_for("counts on the new agent", lambda: _opened(stack, new_port, "late", "server") == 3, timeout=60,
             interval=1)
    partial["port"] = new_port


def _try_scrape(node, port):
    try:
        return scrape(node, port)
    except OSError:
        return None
