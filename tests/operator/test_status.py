"""Status arithmetic: conditions from the DaemonSet and the reconcile outcome."""
from __future__ import annotations

from netprobe_operator import status
from netprobe_operator.status import AgentCounts, Outcome
from netprobe_operator.validation import Problem


def daemonset(desired, ready, updated=None, generation=1, observed=1):
    return {"metadata": {"generation": generation},
            "status": {"desiredNumberScheduled": desired, "numberReady": ready,
                       "updatedNumberScheduled": desired if updated is None else updated,
                       "observedGeneration": observed}}


def test_ready_condition_from_the_daemonset():
    ready = lambda ds: status.ready_condition(AgentCounts.from_daemonset(ds))[:2]
    assert ready(None) == ("False", "NotApplied")
    assert ready(daemonset(3, 3)) == ("True", "AgentsReady")
    assert ready(daemonset(3, 2)) == ("False", "AgentsNotReady")
    assert ready(daemonset(3, 3, updated=1)) == ("False", "RolloutInProgress")
    assert ready(daemonset(0, 0)) == ("False", "NoMatchingNodes")
    assert ready(daemonset(3, 3, generation=2, observed=1)) == ("False", "RolloutPending")


def test_after_reconcile_fields_and_degraded():
    outcome = Outcome(applied=True, warnings=[Problem("NoMatchingNodes", "nothing matches")],
                      skipped=["ServiceMonitor/x: absent"],
                      monitoring=("False", "MonitoringCRDsMissing", "skipped"),
                      daemonset=daemonset(0, 0))
    st = status.after_reconcile({}, 4, ["tcp_rtt", "rx_latency"], outcome)
    assert st["observedGeneration"] == 4 and st["programs"] == "tcp_rtt,rx_latency"
    assert st["nodes"] == "0/0" and st["skipped"] == ["ServiceMonitor/x: absent"]
    by_type = {c["type"]: c for c in st["conditions"]}
    assert [c["type"] for c in st["conditions"]] == ["Ready", "Degraded", "MonitoringConfigured"]
    assert by_type["Degraded"]["reason"] == "NoMatchingNodes"
    assert all(c["observedGeneration"] == 4 for c in st["conditions"])


def test_rejected_spec_says_nothing_changed():
    outcome = Outcome(applied=False, problems=[Problem("UnsupportedProgram", "dns is not implemented")])
    degraded = status.degraded_condition(outcome)
    assert degraded[:2] == ("True", "UnsupportedProgram")
    assert degraded[2] == "dns is not implemented (nothing was changed for this generation)"


def test_transition_time_kept_while_the_status_holds():
    first = status.after_reconcile({}, 1, ["tcp_rtt"], Outcome(applied=True, daemonset=daemonset(2, 1)))
    for c in first["conditions"]:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    second = status.after_reconcile(first, 2, ["tcp_rtt"], Outcome(applied=True, daemonset=daemonset(2, 2)))
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Degraded"] == "2020-01-01T00:00:00Z"   # still False
    assert times["Ready"] != "2020-01-01T00:00:00Z"      # False -> True


def test_agent_change_touches_only_ready_and_counts():
    before = status.after_reconcile({}, 3, ["tcp_rtt"], Outcome(
        applied=True, monitoring=("False", "MonitoringCRDsMissing", "m"), daemonset=daemonset(2, 0)))
    after = status.after_agent_change(before, daemonset(2, 2))
    assert set(after) == {"nodes", "nodesReady", "nodesDesired", "conditions"}
    assert after["nodes"] == "2/2"
    by_type = {c["type"]: c for c in after["conditions"]}
    assert by_type["Ready"]["status"] == "True"
    assert by_type["MonitoringConfigured"]["reason"] == "MonitoringCRDsMissing"
    assert by_type["Degraded"]["status"] == "False"
    assert status.differs(before, after) and not status.differs({**before, **after}, after)
