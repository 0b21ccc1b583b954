"""The agent's reports about itself (node_agent/pod_status.py): the logic here;
the real kubelet and API server carry them in tests/e2e_node/test_real_node_bad_paths.py."""
from __future__ import annotations

import pytest

from node_agent import pod_status
from node_agent.runtime.instance import ProgramError


class FakeClient:
    """CoreV1Api's one call the reporter makes."""

    def __init__(self, fail: int = 0):
        self.calls, self.fail = [], fail

    def patch_namespaced_pod_status(self, name, namespace, body, _request_timeout=None):
        if self.fail:
            self.fail -= 1
            raise OSError("connection refused")
        self.calls.append((namespace, name, body))


def test_condition_names_each_failed_program_its_stage_and_what_still_runs():
    failed = {"rx_latency": ProgramError("rx_latency", "config", "kernel without kprobes")}
    assert pod_status.programs_condition(failed, ["tcp_rtt", "tcp_connections"]) == (
        "False", "ProgramsFailed",
        "rx_latency failed to load (config): kernel without kprobes; still running: tcp_connections, tcp_rtt")
    assert pod_status.programs_condition({}, ["tcp_rtt"]) == ("True", "AllLoaded", "loaded: tcp_rtt")
    long = {"x": ProgramError("x", "compile", "e" * 10000)}
    assert len(pod_status.programs_condition(long, [])[2]) < pod_status.MESSAGE_LIMIT + 40


def test_reporter_patches_its_own_pod_once_per_change_and_retries(monkeypatch):
    monkeypatch.setenv("POD_NAME", "netprobe-e2e-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "netprobe-system")
    monkeypatch.setattr(pod_status, "RETRY_SECONDS", 0.0)
    client = FakeClient(fail=1)
    reporter = pod_status.PodReporter(lambda: client)
    failed = {"rx_latency": ProgramError("rx_latency", "attach", "no kprobes")}
    reporter.report(failed, ["tcp_rtt"])          # the API is down: nothing sent
    assert client.calls == []
    reporter.flush()                              # retried
    reporter.flush()                              # unchanged: not sent again
    (namespace, name, body), = client.calls
    assert (namespace, name) == ("netprobe-system", "netprobe-e2e-abcde")
    (cond,) = body["status"]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (pod_status.CONDITION, "False", "ProgramsFailed")
    reporter.report({}, ["tcp_rtt", "rx_latency"])
    assert client.calls[-1][2]["status"]["conditions"][0]["status"] == "True"


def test_nothing_is_reported_outside_a_pod(monkeypatch, tmp_path):
    monkeypatch.delenv("POD_NAME", raising=False)
    reporter = pod_status.PodReporter(lambda: pytest.fail("no API call outside a pod"))
    reporter.report({"x": ProgramError("x", "load", "y")}, [])
    log = tmp_path / "termination-log"
    log.write_text("")
    assert pod_status.write_termination_message("no headers", str(log)) is False
    monkeypatch.setenv("POD_NAME", "p")
    assert pod_status.write_termination_message("no headers", str(log)) is True
    assert log.read_text() == "no headers"


@pytest.mark.cluster
def test_the_condition_lands_on_the_pod_next_to_others(control_plane, kube_api, monkeypatch):
    """Against the real API server: a strategic merge patch of pods/status that adds
    the condition and leaves another one (the kubelet's) as it was."""
    from kubernetes import client
    core = client.CoreV1Api(kube_api)
    ns = "pod-status-test"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        core.create_namespaced_pod(ns, {"metadata": {"name": "agent"},
                                        "spec": {"containers": [{"name": "agent", "image": "x"}]}})
        kubelets = {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}
        core.patch_namespaced_pod_status("agent", ns, {"status": {"conditions": [kubelets]}})
        monkeypatch.setenv("POD_NAME", "agent")
        monkeypatch.setenv("POD_NAMESPACE", ns)
        reporter = pod_status.PodReporter(lambda: core)
        reporter.report({"rx_latency": ProgramError("rx_latency", "attach", "no kprobes")}, ["tcp_rtt"])
        conds = {c.type: c for c in core.read_namespaced_pod_status("agent", ns).status.conditions}
        assert conds["Ready"].reason == "ContainersNotReady"
        mine = conds[pod_status.CONDITION]
        assert (mine.status, mine.reason) == ("False", "ProgramsFailed") and "rx_latency" in mine.message
        reporter.report({}, ["tcp_rtt", "rx_latency"])
        conds = {c.type: c for c in core.read_namespaced_pod_status("agent", ns).status.conditions}
        assert conds[pod_status.CONDITION].status == "True" and conds["Ready"].reason == "ContainersNotReady"
    finally:
        core.delete_namespace(ns)
