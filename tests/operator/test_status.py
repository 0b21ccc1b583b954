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


def agent_pod(node, ready=True, state=None, last=None, conditions=(), deleting=False):
    cs = {"name": "agent", "ready": ready, "state": state or {"running": {}}}
    if last:
        cs["lastState"] = last
    meta = {"name": f"agent-{node}", **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
    return {"metadata": meta, "spec": {"nodeName": node},
            "status": {"containerStatuses": [cs], "conditions": list(conditions)}}


NO_HEADERS = "no kernel headers found for 6.18.0: install the headers of the running kernel"


def test_agent_issues_from_termination_messages_and_the_programs_condition():
    crash = dict(ready=False, state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                 last={"terminated": {"exitCode": 1, "reason": "Error", "message": NO_HEADERS}})
    failed = {"type": status.AGENT_CONDITION, "status": "False", "reason": "ProgramsFailed",
              "message": "rx_latency failed to load (attach): kernel without kprobes; still running: tcp_rtt"}
    pods = [agent_pod("n3", **crash), agent_pod("n1", **crash), agent_pod("n2", conditions=[failed]),
            agent_pod("n4"),                                                        # healthy
            agent_pod("n5", conditions=[{**failed, "status": "True", "reason": "AllLoaded"}]),
            agent_pod("n6", deleting=True, **crash)]                                # going away
    issues = status.agent_issues(pods)
    assert [i.reason for i in issues] == ["AgentCannotStart", "ProgramsFailed"]
    assert issues[0].message == f"agent on nodes n1, n3: the agent cannot start: {NO_HEADERS}"
    assert issues[1].message == f"agent on node n2: {failed['message']}"
    # a crash without a message, an image that cannot be pulled, many nodes
    bare = dict(ready=False, state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    pull = dict(ready=False, state={"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}})
    issues = status.agent_issues([agent_pod("a", **bare)] + [agent_pod(f"p{i}", **pull) for i in range(5)])
    assert [i.message for i in issues] == [
        "agent on node a: the agent cannot start: exit code 137 (OOMKilled)",
        "agent on nodes p0, p1, p2 and 2 more: the agent container is ErrImageNeverPull: image not present"]
    # a container still starting (running, not ready yet) is no problem, unless its
    # last run failed (a crash loop between two crashes); once ready it is fine
    assert status.agent_issues([agent_pod("s", ready=False)]) == []
    again = dict(state={"running": {}}, last={"terminated": {"exitCode": 1, "message": NO_HEADERS}})
    assert [i.reason for i in status.agent_issues([agent_pod("s", ready=False, **again)])] == ["AgentCannotStart"]
    assert status.agent_issues([agent_pod("s", ready=True, **again)]) == []


def test_degraded_joins_spec_problems_and_agent_issues():
    agents = [Problem("ProgramsFailed", "agent on node n2: rx_latency failed to load")]
    assert status.degraded_condition(Outcome(applied=True), agents) == (
        "True", "ProgramsFailed", "agent on node n2: rx_latency failed to load")
    rejected = Outcome(applied=False, problems=[Problem("PortConflict", "port taken")])
    st, reason, message = status.degraded_condition(rejected, agents)
    assert (st, reason) == ("True", "PortConflict")
    assert message == "port taken (nothing was changed for this generation); agent on node n2: rx_latency failed to load"
    assert status.degraded_condition(Outcome(applied=True), []) == ("False", "AsExpected", "")
    # a pod event changes only Degraded, and back when the agent recovers
    current = status.after_reconcile({}, 2, ["tcp_rtt"], Outcome(applied=True, daemonset=daemonset(1, 1)))
    new = status.after_agent_pods(current, Outcome(applied=True), agents)
    assert [c["type"] for c in new["conditions"]] == ["Ready", "Degraded", "MonitoringConfigured"]
    by_type = {c["type"]: c for c in new["conditions"]}
    assert by_type["Degraded"]["status"] == "True" and by_type["Ready"]["status"] == "True"
    back = status.after_agent_pods({**current, **new}, Outcome(applied=True), [])
    assert {c["type"]: c["status"] for c in back["conditions"]}["Degraded"] == "False"
