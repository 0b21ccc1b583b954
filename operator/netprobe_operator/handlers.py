"""kopf handlers: thin. Each one finds the probe concerned and calls the Reconciler.

Loaded by `kopf run -m netprobe_operator.handlers` (see main.py). Watches:
  NetworkProbes                   create/update/resume -> full reconcile
  owned DaemonSets/ConfigMaps/    edited or deleted -> re-apply the accepted
  Services/Secrets/               object; DaemonSet status -> probe status
  ServiceMonitors/
  PrometheusRules (by label, in
  the operator's namespace)
  the monitoring.coreos.com CRDs  installed or removed -> reconcile every probe
  the agent pods (by label)       what they report -> the probe's Degraded condition
No timers and no delete handler, so the operator adds no finalizer: deleting a
probe never waits for the operator; garbage collection removes its objects.
Certificate renewal runs in a thread of its own (_renewals).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from . import kube as kube_mod
from . import reconcile as rec
from . import settings as s

CONFIG = s.OperatorSettings.from_env()
MANAGED = {s.LABEL_MANAGED_BY: s.MANAGED_BY}
RETRY_DELAY_SECONDS = 30
RENEWAL_CHECK_SECONDS = 3600
_stopping = threading.Event()

_reconciler: rec.Reconciler | None = None


def reconciler() -> rec.Reconciler:
    global _reconciler
    if _reconciler is None:
        _reconciler = rec.Reconciler(kube_mod.Kube(kube_mod.load_api_client()), CONFIG)
    return _reconciler


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # Watches behind load balancers can go silent: bound every watch request.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING  # only problems become k8s Events
    # No namespace/CRD scanning: the operator serves one exact namespace and
    # watches the monitoring CRDs itself, so it needs no cluster-wide
    # namespace listing (least privilege).
    settings.scanning.disabled = True
    settings.execution.max_workers = 4
    reconciler()
    threading.Thread(target=_renewals, name="certificate-renewals", daemon=True).start()
    logger.info("netprobe operator: namespace %s, default agent image %s",
                CONFIG.namespace, CONFIG.agent_image)


def _renewals() -> None:
    """Serving certificates are renewed well before they expire (docs/operator.md).

    A plain thread rather than a kopf timer: timers put a finalizer on every
    probe, and a down operator would then block probe deletion."""
    while not _stopping.wait(RENEWAL_CHECK_SECONDS):
        try:
            reconciler().renew_due()
        except Exception as err:  # noqa: BLE001 - the API may be down; try again next round
            logging.getLogger(__name__).warning("certificate renewal check failed: %s", err)


@kopf.on.cleanup()
def stop_renewals(**_: Any) -> None:
    _stopping.set()


@kopf.index(s.API_GROUP, s.API_VERSION, s.PROBE_PLURAL)
def probes(name: str, body: kopf.Body, **_: Any) -> dict:
    return {name: rec.ProbeSnapshot.from_body(body)}


def _all(index: kopf.Index) -> list[rec.ProbeSnapshot]:
    return [snap for name in list(index) for snap in index[name]]


def _one(index: kopf.Index, name: str | None) -> rec.ProbeSnapshot | None:
    if not name or name not in index:
        return None
    return next(iter(index[name]), None)


@kopf.on.resume(s.API_GROUP, s.API_VERSION, s.PROBE_PLURAL)
@kopf.on.create(s.API_GROUP, s.API_VERSION, s.PROBE_PLURAL)
@kopf.on.update(s.API_GROUP, s.API_VERSION, s.PROBE_PLURAL)
def probe_changed(body: kopf.Body, probes: kopf.Index, **_: Any) -> None:
    _reconcile(rec.ProbeSnapshot.from_body(body), probes)


def _reconcile(probe: rec.ProbeSnapshot, index: kopf.Index) -> None:
    outcome = reconciler().reconcile(probe, _all(index))
    if outcome is not None and outcome.retry:  # e.g. RBAC granted later: the status says what was refused
        raise kopf.TemporaryError("; ".join(p.message for p in outcome.problems),
                                  delay=RETRY_DELAY_SECONDS)


def _child_event(kind: str, event: str, body: kopf.Body, labels: kopf.Labels,
                 index: kopf.Index) -> None:
    if event not in ("ADDED", "MODIFIED", "DELETED"):
        return  # the initial listing: the resume handlers cover it
    probe = _one(index, labels.get(s.LABEL_PROBE))
    if probe is None:
        return
    try:
        reconciler().child_changed(probe, kind, body, event == "DELETED", _all(index))
    except kube_mod.ApiError as err:
        raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_SECONDS) from err


@kopf.on.event("apps", "v1", "daemonsets", labels=MANAGED)
def agent_daemonset_event(type: str, body: kopf.Body, labels: kopf.Labels,
                          probes: kopf.Index, **_: Any) -> None:
    _child_event("DaemonSet", type, body, labels, probes)


@kopf.on.event("v1", "configmaps", labels=MANAGED)
def configmap_event(type: str, body: kopf.Body, labels: kopf.Labels,
                    probes: kopf.Index, **_: Any) -> None:
    _child_event("ConfigMap", type, body, labels, probes)


@kopf.on.event("v1", "secrets", labels=MANAGED)
def secret_event(type: str, body: kopf.Body, labels: kopf.Labels,
                 probes: kopf.Index, **_: Any) -> None:
    # A deleted serving-certificate Secret is re-issued (new key) at once.
    _child_event("Secret", type, body, labels, probes)


@kopf.on.event("v1", "services", labels=MANAGED)
def service_event(type: str, body: kopf.Body, labels: kopf.Labels,
                  probes: kopf.Index, **_: Any) -> None:
    _child_event("Service", type, body, labels, probes)


@kopf.on.event("v1", "pods", labels=MANAGED)
def agent_pod_event(type: str, labels: kopf.Labels, probes: kopf.Index, **_: Any) -> None:
    """An agent that cannot start (its termination message) or whose programs failed
    to load (its netprobe.io/ProgramsLoaded condition) shows in Degraded."""
    if type not in ("ADDED", "MODIFIED", "DELETED"):
        return
    probe = _one(probes, labels.get(s.LABEL_PROBE))
    if probe is None:
        return
    try:
        reconciler().agent_pod_changed(probe, _all(probes))
    except kube_mod.ApiError as err:
        raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_SECONDS) from err


# ServiceMonitors and PrometheusRules are watched when their CRDs exist as the
# operator starts (kopf resolves resources once; scanning is off). CRDs that
# appear later are handled by monitoring_crd_event: their objects are created
# then, and drift on them is corrected at the next reconcile or restart.
@kopf.on.event("monitoring.coreos.com", "v1", "servicemonitors", labels=MANAGED)
def servicemonitor_event(type: str, body: kopf.Body, labels: kopf.Labels,
                         probes: kopf.Index, **_: Any) -> None:
    _child_event("ServiceMonitor", type, body, labels, probes)


@kopf.on.event("monitoring.coreos.com", "v1", "prometheusrules", labels=MANAGED)
def prometheusrule_event(type: str, body: kopf.Body, labels: kopf.Labels,
                         probes: kopf.Index, **_: Any) -> None:
    _child_event("PrometheusRule", type, body, labels, probes)


def _is_monitoring_crd(name: str, **_: Any) -> bool:
    return name in rec.MONITORING_CRDS


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_is_monitoring_crd)
def monitoring_crd_event(type: str, body: kopf.Body, probes: kopf.Index,
                         logger: logging.Logger, **_: Any) -> None:
    if type not in ("ADDED", "MODIFIED", "DELETED"):
        return
    conditions = (body.get("status") or {}).get("conditions") or []
    established = any(c.get("type") == "Established" and c.get("status") == "True"
                      for c in conditions)
    if type != "DELETED" and not established:
        return  # not served yet; the MODIFIED event that establishes it follows
    logger.info("CRD %s %s: reconciling every NetworkProbe", body["metadata"]["name"], type.lower())
    for probe in _all(probes):
        _reconcile(probe, probes)
