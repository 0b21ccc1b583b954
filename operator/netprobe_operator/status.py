"""The probe's status: what `kubectl get networkprobes` and a person read.

Conditions (metav1.Condition shape):
  Ready                 the agent runs and is ready on every node it should run on
  Degraded              something asked for could not be done (rejected spec, port
                        conflict, no matching node, API errors), or an agent pod
                        reports that it cannot start or that programs failed to
                        load (agent_issues); the message says what
  MonitoringConfigured  ServiceMonitor/PrometheusRule created, disabled, or skipped
                        because the monitoring.coreos.com CRDs are absent

Pure functions: the current status in, the new status out.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .validation import Problem


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class AgentCounts:
    desired: int
    ready: int
    updated: int
    settled: bool  # the DaemonSet controller has seen the DaemonSet's latest generation

    @classmethod
    def from_daemonset(cls, daemonset: Mapping | None) -> "AgentCounts | None":
        if daemonset is None:
            return None
        st = daemonset.get("status") or {}
        meta = daemonset.get("metadata") or {}
        return cls(
            desired=int(st.get("desiredNumberScheduled", 0)),
            ready=int(st.get("numberReady", 0)),
            updated=int(st.get("updatedNumberScheduled", 0)),
            settled=int(st.get("observedGeneration", 0)) >= int(meta.get("generation", 1)),
        )


@dataclass
class Outcome:
    """What one reconcile did, for the status."""
    applied: bool
    problems: list[Problem] = field(default_factory=list)   # stopped the apply
    warnings: list[Problem] = field(default_factory=list)   # applied, but worth saying
    skipped: list[str] = field(default_factory=list)
    monitoring: tuple[str, str, str] = ("True", "Applied", "")
    daemonset: Mapping | None = None
    retry: bool = False   # a transient refusal (RBAC, API): try again later


def ready_condition(agents: AgentCounts | None) -> tuple[str, str, str]:
    if agents is None:
        return ("False", "NotApplied",
                "no agent DaemonSet yet: the spec was not applied (see the Degraded condition)")
    if not agents.settled:
        return ("False", "RolloutPending", "the DaemonSet controller has not processed the latest spec yet")
    if agents.desired == 0:
        return ("False", "NoMatchingNodes",
                "no node matches spec.nodeSelector and spec.tolerations, so no agent runs")
    if agents.updated < agents.desired:
        return ("False", "RolloutInProgress",
                f"{agents.updated} of {agents.desired} agent pods run the current spec")
    if agents.ready < agents.desired:
        return ("False", "AgentsNotReady", f"{agents.ready} of {agents.desired} agent pods are ready")
    return ("True", "AgentsReady", f"all {agents.desired} agent pods are ready")


# The agent's own pod condition (node_agent/pod_status.py): False lists the programs
# that failed to load while the agent keeps running the others.
AGENT_CONDITION = "netprobe.io/ProgramsLoaded"
AGENT_CONTAINER = "agent"
# Waiting reasons of a container that will not run without someone acting.
_STUCK_WAITING = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull",
                  "CreateContainerConfigError", "CreateContainerError", "InvalidImageName",
                  "RunContainerError")
NODES_NAMED = 3   # per distinct problem; the rest are counted


def _pod_issue(pod: Mapping) -> Problem | None:
    """What one agent pod reports, if anything is wrong with it."""
    st = pod.get("status") or {}
    cs = next((c for c in st.get("containerStatuses") or [] if c.get("name") == AGENT_CONTAINER), None)
    if cs is not None and not cs.get("ready"):
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        # The last run's end: the agent writes why it could not start as its
        # termination message (the kubelet copies it here). Also while the next
        # attempt runs but is not ready yet, so Degraded does not flap with each
        # restart of a crash loop.
        ended = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if ended and ended.get("exitCode", 0) != 0:
            why = (ended.get("message") or "").strip() or \
                f"exit code {ended.get('exitCode')} ({ended.get('reason') or 'no message'})"
            return Problem("AgentCannotStart", f"the agent cannot start: {why}")
        if waiting.get("reason") in _STUCK_WAITING:
            return Problem("AgentCannotStart",
                           f"the agent container is {waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))
    for cond in st.get("conditions") or []:
        if cond.get("type") == AGENT_CONDITION and cond.get("status") == "False":
            return Problem(cond.get("reason") or "ProgramsFailed", cond.get("message") or "programs failed to load")
    return None


def agent_issues(pods: Sequence[Mapping]) -> list[Problem]:
    """The probe's agent pods' problems, one per distinct problem, naming the nodes."""
    nodes: dict[Problem, list[str]] = {}
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue   # going away (a rollout): its successor reports
        issue = _pod_issue(pod)
        if issue is not None:
            nodes.setdefault(issue, []).append((pod.get("spec") or {}).get("nodeName") or "(unscheduled)")
    out = []
    for issue, names in sorted(nodes.items(), key=lambda item: (item[0].reason, item[0].message)):
        names = sorted(names)
        where = ", ".join(names[:NODES_NAMED]) + (f" and {len(names) - NODES_NAMED} more" if len(names) > NODES_NAMED
                                                  else "")
        out.append(Problem(issue.reason, f"agent on node{'s' if len(names) > 1 else ''} {where}: {issue.message}"))
    return out


def degraded_condition(outcome: Outcome | None, agents: Sequence[Problem] = ()) -> tuple[str, str, str]:
    problems = list(outcome.problems) if outcome else []
    issues = problems + (list(outcome.warnings) if outcome else [])
    message = "; ".join(p.message for p in issues)
    if problems:
        message += " (nothing was changed for this generation)"
    message = "; ".join(m for m in [message] + [p.message for p in agents] if m)
    issues += list(agents)
    if not issues:
        return ("False", "AsExpected", "")
    return ("True", issues[0].reason, message)


def _conditions(previous: Sequence[Mapping], wanted: Mapping[str, tuple[str, str, str]],
                generation: int) -> list[dict]:
    """Merge wanted conditions into previous ones, keeping lastTransitionTime when unchanged."""
    by_type = {c.get("type"): c for c in previous or []}
    out = []
    for ctype, (status, reason, message) in wanted.items():
        old = by_type.pop(ctype, None)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else now()
        out.append({"type": ctype, "status": status, "reason": reason, "message": message,
                    "observedGeneration": generation, "lastTransitionTime": since})
    out.extend(dict(c) for c in by_type.values())
    order = {"Ready": 0, "Degraded": 1, "MonitoringConfigured": 2}
    return sorted(out, key=lambda c: order.get(c.get("type"), 9))


def _agent_fields(agents: AgentCounts | None) -> dict:
    desired = agents.desired if agents else 0
    ready = agents.ready if agents else 0
    return {"nodesDesired": desired, "nodesReady": ready, "nodes": f"{ready}/{desired}"}


def after_reconcile(current: Mapping | None, generation: int, programs: Sequence[str],
                    outcome: Outcome, agent_problems: Sequence[Problem] = ()) -> dict:
    current = current or {}
    agents = AgentCounts.from_daemonset(outcome.daemonset)
    status = {
        "observedGeneration": generation,
        "programs": ",".join(programs),
        "skipped": list(outcome.skipped),
        **_agent_fields(agents),
    }
    status["conditions"] = _conditions(current.get("conditions") or [], {
        "Ready": ready_condition(agents),
        "Degraded": degraded_condition(outcome, agent_problems),
        "MonitoringConfigured": outcome.monitoring,
    }, generation)
    return status


def after_agent_change(current: Mapping | None, daemonset: Mapping | None) -> dict:
    """Only node counts and Ready change when the DaemonSet's status moves."""
    current = current or {}
    agents = AgentCounts.from_daemonset(daemonset)
    generation = int(current.get("observedGeneration", 0))
    kept = [c for c in current.get("conditions") or [] if c.get("type") != "Ready"]
    previous_ready = [c for c in current.get("conditions") or [] if c.get("type") == "Ready"]
    merged = _conditions(previous_ready, {"Ready": ready_condition(agents)}, generation)
    return {**_agent_fields(agents),
            "conditions": _conditions(merged + kept, {}, generation)}


def after_agent_pods(current: Mapping | None, outcome: Outcome | None, agents: Sequence[Problem]) -> dict:
    """Only Degraded changes when what the agent pods report moves; `outcome` is the
    last reconcile's (its problems and warnings stay in the message)."""
    current = current or {}
    generation = int(current.get("observedGeneration", 0))
    return {"conditions": _conditions(current.get("conditions") or [],
                                      {"Degraded": degraded_condition(outcome, agents)}, generation)}


def differs(current: Mapping | None, new: Mapping) -> bool:
    """Whether writing `new` would change anything a reader sees."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items())
