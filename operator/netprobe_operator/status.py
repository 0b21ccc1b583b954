"""The probe's status: what `kubectl get networkprobes` and a person read.

Conditions (metav1.Condition shape):
  Ready                 the agent runs and is ready on every node it should run on
  Degraded              something asked for could not be done (rejected spec, port
                        conflict, no matching node, API errors); the message says what
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


def degraded_condition(outcome: Outcome) -> tuple[str, str, str]:
    issues = outcome.problems + outcome.warnings
    if not issues:
        return ("False", "AsExpected", "")
    message = "; ".join(p.message for p in issues)
    if outcome.problems:
        message += " (nothing was changed for this generation)"
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
                    outcome: Outcome) -> dict:
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
        "Degraded": degraded_condition(outcome),
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


def differs(current: Mapping | None, new: Mapping) -> bool:
    """Whether writing `new` would change anything a reader sees."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items())
