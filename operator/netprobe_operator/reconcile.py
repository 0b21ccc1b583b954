"""Decide what should exist for a probe, then make it so in one apply step.

The kopf handlers (handlers.py) call into this module and nothing else; it
calls render (pure) and kube (all API calls). A spec the operator rejects
changes nothing: the previous generation's objects keep running and the status
says why. An accepted spec is first applied as a server-side dry run, object by
object, and written only if every object passed, so an API error (a forbidden
namespace, an invalid value) never leaves a half-applied set.
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import certs
from . import kube as kube_mod
from . import render, status, validation
from . import settings as s

log = logging.getLogger(__name__)

MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")
MONITORING_CRDS = frozenset({"servicemonitors.monitoring.coreos.com",
                             "prometheusrules.monitoring.coreos.com"})
# Kinds pruned when the spec no longer asks for them (e.g. serviceMonitor disabled).
PRUNABLE_KINDS = ("Secret", "ConfigMap", "Service", "DaemonSet") + MONITORING_KINDS


@dataclass(frozen=True)
class ProbeSnapshot:
    """A NetworkProbe as the operator last saw it (kept in the kopf index)."""
    name: str
    uid: str
    generation: int
    created: str
    spec: Mapping
    status: Mapping

    @classmethod
    def from_body(cls, body: Mapping) -> "ProbeSnapshot":
        meta = body["metadata"]
        return cls(
            name=meta["name"], uid=meta["uid"], generation=int(meta.get("generation", 1)),
            created=meta.get("creationTimestamp", ""),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
        )

    def as_other(self) -> validation.OtherProbe:
        return validation.OtherProbe(
            name=self.name, created=self.created,
            metrics_port=self.spec["agent"]["metricsPort"],
            node_selector=self.spec.get("nodeSelector") or {})


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Reconciler:
    def __init__(self, kube: kube_mod.Kube, config: s.OperatorSettings, clock=_utcnow):
        self.kube = kube
        self.config = config
        self.clock = clock
        # When each probe's serving certificate is due for renewal (renew_due()).
        self._renew_at: dict[str, dt.datetime] = {}
        # One re-entrant lock per probe: a reconcile and a child event never
        # interleave, so a child event cannot re-apply a set a running
        # reconcile is replacing.
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        # The last set applied per probe (uid, generation, manifests): child events
        # re-apply from it, so a drifted child returns to what was accepted, never
        # to a render of a spec that was rejected.
        self._applied: dict[str, tuple[str, int, render.RenderedSet]] = {}
        # The last reconcile's outcome per probe: an agent pod event rewrites Degraded
        # from it and what the pods report now.
        self._outcomes: dict[str, status.Outcome] = {}

    def _lock(self, name: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.RLock())

    # --- the whole probe ----------------------------------------------------

    def _live(self, probe: ProbeSnapshot) -> ProbeSnapshot | None:
        """The probe as the API server has it now, or None if it is gone or going.

        The kopf index can lag behind (a watch reconnecting after an API server
        restart): a probe being deleted must not get its children back while
        garbage collection removes them.
        """
        live = self.kube.get("NetworkProbe", None, probe.name)
        if (live is None or live["metadata"]["uid"] != probe.uid
                or live["metadata"].get("deletionTimestamp")):
            return None
        return ProbeSnapshot.from_body(live)

    def reconcile(self, probe: ProbeSnapshot, others: Iterable[ProbeSnapshot]) -> status.Outcome | None:
        """Apply the probe; None when it no longer exists (nothing to do)."""
        with self._lock(probe.name):
            probe = self._live(probe)
            if probe is None:
                return None
            outcome = self._reconcile(probe, list(others))
            self._outcomes[probe.name] = outcome
            new_status = status.after_reconcile(
                probe.status, probe.generation,
                [p["name"] for p in probe.spec["programs"]], outcome, self._agent_issues(probe))
            self.kube.patch_probe_status(probe.name, new_status)
            return outcome

    def _agent_issues(self, probe: ProbeSnapshot) -> list[validation.Problem]:
        """What the probe's agent pods report (status.agent_issues)."""
        selector = f"{s.LABEL_PROBE}={probe.name},{s.LABEL_MANAGED_BY}={s.MANAGED_BY}"
        try:
            pods = self.kube.list("Pod", self.config.namespace, selector)
        except kube_mod.ApiError as err:   # e.g. an operator Role without pods: say so, apply anyway
            return [validation.Problem("AgentPodsUnreadable", f"cannot read the agent pods: {err}")]
        return status.agent_issues(pods)

    def agent_pod_changed(self, probe: ProbeSnapshot, others: Iterable[ProbeSnapshot]) -> None:
        """An agent pod's state moved: rewrite Degraded from what the pods report."""
        with self._lock(probe.name):
            probe = self._live(probe)
            if probe is None:
                return
            outcome = self._outcomes.get(probe.name)
            if outcome is None:   # not reconciled by this process yet
                self.reconcile(probe, others)
                return
            new = status.after_agent_pods(probe.status, outcome, self._agent_issues(probe))
            if status.differs(probe.status, new):
                self.kube.patch_probe_status(probe.name, new)

    def _reconcile(self, probe: ProbeSnapshot, others: list[ProbeSnapshot]) -> status.Outcome:
        daemonset_name = render.Names.for_probe(probe.name).daemonset
        problems = validation.check_spec(probe.spec)
        nodes = self.kube.node_labels()
        conflict = validation.check_port_conflicts(
            probe.name, probe.created, probe.spec,
            [o.as_other() for o in others if o.uid != probe.uid], nodes)
        if conflict:
            problems.append(conflict)
        if problems:
            log.warning("NetworkProbe %s generation %d not applied: %s", probe.name,
                        probe.generation, "; ".join(p.message for p in problems))
            return status.Outcome(
                applied=False, problems=problems,
                monitoring=("Unknown", "NotApplied", "the spec was not applied"),
                daemonset=self.kube.get("DaemonSet", self.config.namespace, daemonset_name))

        warnings = [w for w in [validation.check_nodes(probe.spec, nodes)] if w]
        try:
            certificates = self._certificates(probe)
        except kube_mod.ApiError as err:   # e.g. the operator may not read Secrets (RBAC)
            return status.Outcome(
                applied=False, retry=True,
                problems=[validation.Problem("CertificateUnavailable",
                                             f"cannot read the probe's certificate Secrets: {err}")],
                monitoring=("Unknown", "NotApplied", "the spec was not applied"),
                daemonset=self.kube.get("DaemonSet", self.config.namespace, daemonset_name))
        rendered = render.render(render.Probe(probe.name, probe.uid, probe.spec), self.config, certificates)
        served = {kind: self.kube.serves(kind) for kind in MONITORING_KINDS}
        wanted = [m for m in rendered.manifests if served.get(m["kind"], True)]
        skipped = [f"{m['kind']}/{m['metadata']['name']}: the monitoring.coreos.com CRD is not installed"
                   for m in rendered.manifests if not served.get(m["kind"], True)]
        monitoring = self._monitoring_condition(probe.spec, served)

        try:
            for manifest in wanted:
                self.kube.apply(manifest, dry_run=True)
        except kube_mod.ApiError as err:
            return status.Outcome(
                applied=False, monitoring=monitoring, skipped=skipped,
                problems=[validation.Problem("ApplyRejected", f"the API server refused {err}")],
                daemonset=self.kube.get("DaemonSet", self.config.namespace, daemonset_name),
                retry=True)

        stored: dict[str, dict] = {}
        try:
            for manifest in wanted:
                stored[manifest["kind"]] = self.kube.apply(manifest)
            self._prune(probe, wanted, served)
        except kube_mod.ApiError as err:  # after a passing dry run: a race, e.g. RBAC revoked
            return status.Outcome(
                applied=False, monitoring=monitoring, skipped=skipped,
                problems=[validation.Problem("ApplyFailed", f"applying failed midway: {err}")],
                daemonset=self.kube.get("DaemonSet", self.config.namespace, daemonset_name),
                retry=True)
        self._applied[probe.name] = (probe.uid, probe.generation, render.RenderedSet(wanted))
        return status.Outcome(applied=True, warnings=warnings, skipped=skipped,
                              monitoring=monitoring, daemonset=stored.get("DaemonSet"))

    # --- certificates ---------------------------------------------------------

    def _certificates(self, probe: ProbeSnapshot) -> render.Certificates | None:
        """The stored CA and serving certificate when still good, else new ones (certs.py)."""
        if not probe.spec["agent"]["secureMetrics"]:
            self._renew_at.pop(probe.name, None)
            return None
        names = render.Names.for_probe(probe.name)
        now = self.clock()
        ca = self._secret_data(names.ca_secret, probe.uid)
        ca_cert, ca_key = ca.get("ca.crt"), ca.get("ca.key")
        problem = certs.ca_problem(ca_cert, ca_key, now)
        if problem:
            log.info("NetworkProbe %s: new CA (%s)", probe.name, problem)
            ca_cert, ca_key = certs.new_ca(f"netprobe {probe.name} metrics CA", now)
        serving = self._secret_data(names.tls_secret, probe.uid)
        cert, key = serving.get("tls.crt"), serving.get("tls.key")
        dns_names = render.service_dns_names(probe.name, self.config.namespace)
        problem = certs.serving_problem(cert, key, ca_cert, dns_names, now)
        if problem:
            log.info("NetworkProbe %s: new serving certificate (%s)", probe.name, problem)
            cert, key = certs.new_serving(ca_cert, ca_key, dns_names, now)
        self._renew_at[probe.name] = certs.renew_at(cert)
        return render.Certificates(ca_cert=ca_cert, ca_key=ca_key, cert=cert, key=key)

    def _secret_data(self, name: str, probe_uid: str) -> dict[str, bytes]:
        """A Secret's data, decoded; empty when absent or left by an earlier probe of the same name."""
        secret = self.kube.get("Secret", self.config.namespace, name)
        if secret is None:
            return {}
        owners = {ref.get("uid") for ref in secret["metadata"].get("ownerReferences") or []}
        if probe_uid not in owners:
            return {}
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def renew_due(self) -> list[str]:
        """Reconcile every probe whose serving certificate is due (called periodically)."""
        now = self.clock()
        due = sorted(name for name, when in list(self._renew_at.items()) if when <= now)
        if not due:
            return []
        snapshots = [ProbeSnapshot.from_body(p) for p in self.kube.list("NetworkProbe")]
        for snap in snapshots:
            if snap.name in due:
                log.info("NetworkProbe %s: serving certificate due for renewal", snap.name)
                self.reconcile(snap, snapshots)
        return due

    @staticmethod
    def _monitoring_condition(spec: Mapping, served: Mapping[str, bool]) -> tuple[str, str, str]:
        enabled = {"ServiceMonitor": spec["serviceMonitor"]["enabled"],
                   "PrometheusRule": spec["prometheusRule"]["enabled"]}
        missing = [k for k, on in enabled.items() if on and not served[k]]
        if missing:
            return ("False", "MonitoringCRDsMissing",
                    f"{' and '.join(missing)} skipped: the monitoring.coreos.com CRDs are not "
                    "installed; they are created as soon as the CRDs appear")
        if not any(enabled.values()):
            return ("True", "Disabled", "serviceMonitor and prometheusRule are disabled in the spec")
        made = [k for k, on in enabled.items() if on]
        return ("True", "Applied", f"{' and '.join(made)} applied")

    def _prune(self, probe: ProbeSnapshot, wanted: list[dict], served: Mapping[str, bool]) -> None:
        keep = {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in wanted}
        selector = f"{s.LABEL_PROBE}={probe.name},{s.LABEL_MANAGED_BY}={s.MANAGED_BY}"
        namespaces = {self.config.namespace, probe.spec["dashboards"].get("namespace") or self.config.namespace}
        for kind in PRUNABLE_KINDS:
            if not served.get(kind, True):
                continue
            for namespace in sorted(namespaces):
                if kind != "ConfigMap" and namespace != self.config.namespace:
                    continue
                for obj in self.kube.list(kind, namespace, selector):
                    meta = obj["metadata"]
                    if (kind, meta["namespace"], meta["name"]) not in keep:
                        log.info("pruning %s %s/%s of NetworkProbe %s", kind,
                                 meta["namespace"], meta["name"], probe.name)
                        self.kube.delete(kind, meta["namespace"], meta["name"])

    # --- one child ----------------------------------------------------------

    def child_changed(self, probe: ProbeSnapshot, kind: str, child: Mapping,
                      deleted: bool, others: Iterable[ProbeSnapshot]) -> None:
        """A child was edited or deleted: put back what was accepted for the probe."""
        meta = child["metadata"]
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if probe.uid not in owners:
            return  # left over from an earlier probe of the same name: GC's business
        with self._lock(probe.name):
            probe = self._live(probe)
            if probe is None:
                return
            applied = self._applied.get(probe.name)
            if applied is None or applied[0] != probe.uid or deleted:
                self.reconcile(probe, others)
                return
            desired = applied[2].find(kind, meta["namespace"], meta["name"])
            if desired is not None:
                self.kube.apply(desired)  # a no-op write when nothing drifted
            if kind == "DaemonSet":
                new = status.after_agent_change(probe.status, child)
                if status.differs(probe.status, new):
                    self.kube.patch_probe_status(probe.name, new)
