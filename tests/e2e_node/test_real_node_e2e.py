"""The whole chain with real parts on a real node (issue 12); see node_stack.py.

The tests run in file order and share one stack (module fixture): each proves
one claim on the traffic the fixture made. The last one deletes the probe.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from netprobe_testbed.kube import wait_for

import node_stack
from node_stack import CLEAN_PAIRS, LOSSY_PAIR, NAMESPACE, PROBE

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.kernel, pytest.mark.cluster,
              pytest.mark.prometheus]


@pytest.fixture(scope="module")
def stack(real_cluster, netprobe_image, tmp_path_factory):
    cp, node = real_cluster
    _archive, ref = netprobe_image
    with node_stack.NodeStack(cp, node, ref, tmp_path_factory.mktemp("e2e-node")) as s:
        s.make_traffic()
        yield s


def _value(result) -> float:
    assert result, "no series"
    return float(result[0]["value"][1])


def test_operator_and_agent_run_as_their_pods_from_the_image(stack):
    (op,) = stack.get_json("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=netprobe-operator")["items"]
    agent = stack.agent_pod()
    for pod in (op, agent):
        assert pod["spec"]["containers"][0]["image"] == stack.image_ref
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == stack.node.name
        statuses = pod["status"]["containerStatuses"]
        assert statuses[0]["ready"] is True and statuses[0]["imageID"]
    # The agent's securityContext as rendered: no SYS_RESOURCE, which this host could not grant.
    sc = agent["spec"]["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN"]}
    # Its process really runs with exactly those (CapEff of the container's PID 1).
    pid = stack.node.pod_pid(NAMESPACE, agent["metadata"]["name"], "agent")
    cap_eff = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("CapEff:")).split()[1], 16)
    assert cap_eff == (1 << 39) | (1 << 38) | (1 << 12)   # CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN


def test_probe_ready_from_the_kubelet(stack):
    wait_for("probe Ready", lambda: "True" in stack.kubectl(
        "get", "np", PROBE, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}").stdout, timeout=120)
    row = stack.kubectl("get", "np", PROBE, "--no-headers").stdout.split()
    assert row[2:4] == ["1/1", "True"], row
    ds = stack.get_json("-n", NAMESPACE, "get", "ds", f"netprobe-{PROBE}")
    assert ds["status"]["numberReady"] == 1 == ds["status"]["desiredNumberScheduled"]


def test_agent_logs_say_what_loaded_and_doctor_names_the_headers(stack):
    logs = stack.agent_logs()
    for program in node_stack.PROGRAMS:
        assert re.search(rf"program={program}\b.*\bloaded|loaded.*\bprogram={program}\b", logs), logs[-3000:]
    assert "kernel headers" in logs
    doctor = stack.kubectl("-n", NAMESPACE, "exec", f"ds/netprobe-{PROBE}", "--", "netprobe-agent", "doctor",
                           check=False)
    assert "kernel headers: /" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "can load: yes" in doctor.stdout


def test_prometheus_found_the_agent_through_the_service_endpoints(stack):
    targets = wait_for("an up target", lambda: [t for t in stack.prom.targets() if t["health"] == "up"],
                       timeout=60, interval=1)
    (target,) = targets
    assert target["labels"]["job"] == f"netprobe-{PROBE}"
    assert target["labels"]["node"] == stack.node.name
    assert target["discoveredLabels"]["__address__"] == f"{stack.node.ip}:{stack.metrics_port}"


def test_connection_counts_match_exactly(stack):
    for (src, dst), made in stack.connections_made.items():
        s, d = stack.identities[src], stack.identities[dst]
        q = (f'sum(netprobe_tcp_connections_opened_total{{namespace="{s.namespace}",pod="{s.pod}",'
             f'direction="outbound",peer_namespace="{d.namespace}",peer_pod="{d.pod}"}})')
        got = stack.wait_query(q, lambda r, m=made: r and _value(r) >= m, what=f"{src}->{dst} opened")
        if (src, dst) == LOSSY_PAIR:
            assert _value(got) >= made   # a handshake may complete although the answer was lost
        else:
            assert _value(got) == made, f"{src}->{dst}: agent counted {_value(got)}, pods made {made}"
            q_in = (f'sum(netprobe_tcp_connections_opened_total{{namespace="{d.namespace}",pod="{d.pod}",'
                    f'direction="inbound",peer_namespace="{s.namespace}",peer_pod="{s.pod}"}})')
            got_in = stack.wait_query(q_in, lambda r, m=made: r and _value(r) >= m, what=f"{dst}<-{src}")
            assert _value(got_in) == made


def test_retransmits_belong_to_the_lossy_pair_only(stack):
    src, dst = (stack.identities[p] for p in LOSSY_PAIR)
    lossy = stack.wait_query(
        f'sum(netprobe_tcp_retransmits_total{{pod=~"{src.pod}|{dst.pod}",peer_pod=~"{src.pod}|{dst.pod}"}}) > 0',
        what="retransmits of the lossy pair")
    assert _value(lossy) > 0
    for a, b in CLEAN_PAIRS:
        for x, y in ((a, b), (b, a)):
            s, d = stack.identities[x], stack.identities[y]
            clean = stack.prom.query(f'sum(netprobe_tcp_retransmits_total{{pod="{s.pod}",peer_pod="{d.pod}"}}) > 0')
            assert clean == [], f"clean pair {x}->{y} has retransmits: {clean}"


def test_workload_comes_from_the_deployment(stack):
    cart = stack.identities["cart"]
    res = stack.wait_query(f'netprobe_tcp_connections_opened_total{{pod="{cart.pod}",direction="outbound"}}',
                           what="cart's series")
    assert {r["metric"].get("workload") for r in res} == {"cart"}
    assert {r["metric"].get("peer_workload") for r in res} <= {"api-0", "db-0", "api", "db"}


def test_rx_latency_p90_for_receiving_pods(stack):
    for name in ("api", "db"):
        ident = stack.identities[name]
        q = (f'histogram_quantile(0.9, sum by (le) (rate(netprobe_rx_latency_seconds_bucket'
             f'{{namespace="{ident.namespace}",pod="{ident.pod}"}}[2m])))')
        res = stack.wait_query(q, lambda r: r and r[0]["value"][1] not in ("NaN", "+Inf"), what=f"p90 of {name}")
        assert 0 < _value(res) < 1.0


def test_retransmit_alert_fires_for_the_lossy_pair_only(stack):
    lossy_pods = {stack.identities[p].pod for p in LOSSY_PAIR}

    def firing():
        return [a for a in stack.prom.alerts()
                if a["labels"].get("alertname") == "NetprobeHighTcpRetransmitRate" and a["state"] == "firing"]
    alerts = wait_for("NetprobeHighTcpRetransmitRate to fire", firing, timeout=90, interval=1)
    pods = {a["labels"]["pod"] for a in alerts}
    assert pods & lossy_pods
    clean_only = {stack.identities[p].pod for pair in CLEAN_PAIRS for p in pair} - lossy_pods
    assert not pods & clean_only, f"alert fired for clean pods {pods & clean_only}"


def _bpf_program_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out)}


def _agent_program_ids(pid: int) -> set[int]:
    """BPF programs the agent process holds (prog_id of its BPF file descriptors)."""
    ids = set()
    for fd in __import__("pathlib").Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        m = re.search(r"^prog_id:\s+(\d+)", text, re.M)
        if m:
            ids.add(int(m.group(1)))
    return ids


def test_deleting_the_probe_removes_the_pods_and_every_program(stack):
    agent = stack.agent_pod()
    pid = stack.node.pod_pid(NAMESPACE, agent["metadata"]["name"], "agent")
    held = _agent_program_ids(pid)
    assert len(held) >= len(node_stack.PROGRAMS), held
    assert held <= _bpf_program_ids()
    stack.kubectl("delete", "networkprobe", PROBE, "--timeout=90s", timeout=120)
    wait_for("the agent pod to go", lambda: not stack.get_json(
        "-n", NAMESPACE, "get", "pods", "-l", f"netprobe.io/probe={PROBE}")["items"], timeout=90, interval=1)
    left = wait_for("the agent's programs to leave the kernel",
                    lambda: not (held & _bpf_program_ids()) and True, timeout=30, interval=0.5)
    assert left and not held & _bpf_program_ids()
