"""Spec in, manifests out: the pure half of the operator.

Every Kubernetes object comes from a jinja2 template file in templates/; this
module only computes names and the values the templates need, then parses the
rendered YAML. No API calls, no clock: the same probe always renders the same
list, which is what makes server-side apply idempotent and the unit tests exact.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import jinja2
import yaml

from node_agent.kernel.features import daemonset_capabilities

from . import settings as s
from .program_schema import agent_options

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("netprobe_operator", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
# Grafana JSON is full of {{legend}} placeholders: dashboards use [[ ]] instead.
DASHBOARD_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("netprobe_operator", "templates/dashboards"),
    undefined=jinja2.StrictUndefined,
    variable_start_string="[[", variable_end_string="]]",
    block_start_string="[%", block_end_string="%]",
    comment_start_string="[#", comment_end_string="#]",
    autoescape=False,
)


def _overlay(base: Mapping | None, top: Mapping) -> dict:
    """base with top's keys winning: user labels never replace the operator's own."""
    return {**(base or {}), **top}


TEMPLATES.filters["overlay"] = _overlay
TEMPLATES.filters["b64"] = lambda data: base64.b64encode(data).decode()

# Where the agent container finds its serving certificate.
TLS_MOUNT = "/etc/netprobe-tls"
TEMPLATES.filters["agent_options"] = agent_options


def agent_capabilities(spec: Mapping[str, Any]) -> list[str]:
    """The agent's own list (doctor reads it): SYSLOG only when dns is selected,
    SYS_RESOURCE only when the probe asks."""
    return daemonset_capabilities((p["name"] for p in spec.get("programs", ())),
                                  bool(spec["agent"].get("raiseMemlockLimit")))

# Dashboards shipped, by template file; each becomes one ConfigMap.
DASHBOARDS = {"overview": "Overview", "agents": "Agents"}

MONITORING_GROUP = "monitoring.coreos.com"


@dataclass(frozen=True)
class Probe:
    """The parts of a NetworkProbe that rendering needs (spec already defaulted)."""
    name: str
    uid: str
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class Names:
    config: str
    daemonset: str
    service: str
    service_monitor: str
    prometheus_rule: str
    tls_secret: str
    ca_secret: str
    ca_configmap: str

    @classmethod
    def for_probe(cls, probe_name: str) -> "Names":
        base = f"netprobe-{probe_name}"
        return cls(config=base, daemonset=base, service=base,
                   service_monitor=base, prometheus_rule=base,
                   tls_secret=f"{base}-tls", ca_secret=f"{base}-ca", ca_configmap=f"{base}-ca")


@dataclass(frozen=True)
class Certificates:
    """PEM data the reconciler issued or kept (certs.py); rendering only places it."""
    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def service_dns_names(probe_name: str, namespace: str) -> list[str]:
    """The names in the serving certificate; the first is the ServiceMonitor's serverName."""
    service = Names.for_probe(probe_name).service
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def selector_labels(probe_name: str) -> dict[str, str]:
    # Part of the DaemonSet's immutable selector: never change these.
    return {"app.kubernetes.io/name": "netprobe-agent", s.LABEL_PROBE: probe_name}


def common_labels(probe_name: str) -> dict[str, str]:
    return {
        **selector_labels(probe_name),
        "app.kubernetes.io/instance": probe_name,
        "app.kubernetes.io/component": "agent",
        "app.kubernetes.io/part-of": "netprobe",
        s.LABEL_MANAGED_BY: s.MANAGED_BY,
    }


def owner_references(probe: Probe) -> list[dict]:
    return [{
        "apiVersion": f"{s.API_GROUP}/{s.API_VERSION}",
        "kind": "NetworkProbe",
        "name": probe.name,
        "uid": probe.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }]


def dashboard_uid(probe_name: str, key: str) -> str:
    # Grafana uids are at most 40 characters; probe names up to 40 would not fit.
    digest = hashlib.sha256(probe_name.encode()).hexdigest()[:12]
    return f"netprobe-{digest}-{key}"


def render_agent_config(probe: Probe) -> str:
    return TEMPLATES.get_template("agent-config.yaml.j2").render(
        probe_name=probe.name, spec=probe.spec, tls_mount=TLS_MOUNT)


def render_dashboard(probe: Probe, key: str, title: str) -> str:
    text = DASHBOARD_TEMPLATES.get_template(f"{key}.json.j2").render(
        uid=dashboard_uid(probe.name, key),
        title=f"netprobe / {probe.name} / {title}",
        job=Names.for_probe(probe.name).service,
    )
    return json.dumps(json.loads(text), indent=1, sort_keys=True)


@dataclass
class RenderedSet:
    """The objects one probe should own, in apply order."""
    manifests: list[dict] = field(default_factory=list)

    def by_kind(self, kind: str) -> list[dict]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [m for m in self.by_kind(kind) if name in (None, m["metadata"]["name"])]
        if len(found) != 1:
            raise LookupError(f"{len(found)} {kind} objects named {name or '(any)'}")
        return found[0]

    def find(self, kind: str, namespace: str, name: str) -> dict | None:
        for m in self.by_kind(kind):
            if (m["metadata"]["namespace"], m["metadata"]["name"]) == (namespace, name):
                return m
        return None


def render(probe: Probe, config: s.OperatorSettings, certificates: Certificates | None = None) -> RenderedSet:
    """`certificates` is required when spec.agent.secureMetrics (the reconciler reads or issues them)."""
    spec = probe.spec
    secure = spec["agent"]["secureMetrics"]
    if secure and certificates is None:
        raise ValueError("spec.agent.secureMetrics needs the probe's certificates")
    names = Names.for_probe(probe.name)
    context = {
        "probe_name": probe.name,
        "spec": spec,
        "names": names,
        "namespace": config.namespace,
        "labels": common_labels(probe.name),
        "selector_labels": selector_labels(probe.name),
        "owner_references": owner_references(probe),
        "default_image": config.agent_image,
        "agent_service_account": config.agent_service_account,
        "capabilities": agent_capabilities(spec),
        "program_names": [p["name"] for p in spec["programs"]],
        "tls_mount": TLS_MOUNT,
        "service_dns_names": service_dns_names(probe.name, config.namespace),
        "certificates": certificates,
    }
    templates = ["configmap-agent.yaml.j2", "service.yaml.j2", "daemonset.yaml.j2"]
    if secure:   # before the DaemonSet that mounts them
        templates[:0] = ["secret-ca.yaml.j2", "secret-tls.yaml.j2", "configmap-ca.yaml.j2"]
    if spec["serviceMonitor"]["enabled"]:
        templates.append("servicemonitor.yaml.j2")
    if spec["prometheusRule"]["enabled"]:
        templates.append("prometheusrule.yaml.j2")
    context["agent_config"] = render_agent_config(probe)

    out = RenderedSet()
    for name in templates:
        out.manifests.append(_load(TEMPLATES.get_template(name).render(context), name))
    if spec["dashboards"]["enabled"]:
        dashboards_namespace = spec["dashboards"].get("namespace") or config.namespace
        for key, title in DASHBOARDS.items():
            dashboard = {
                "configmap": f"netprobe-{probe.name}-dashboard-{key}",
                "file": f"netprobe-{probe.name}-{key}.json",
                "json": render_dashboard(probe, key, title),
            }
            text = TEMPLATES.get_template("dashboard-configmap.yaml.j2").render(
                context, dashboard=dashboard, dashboards_namespace=dashboards_namespace)
            out.manifests.append(_load(text, "dashboard-configmap.yaml.j2"))
    return out


def _load(text: str, template: str) -> dict:
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as err:  # a template bug, not bad user input (all values are tojson'd)
        raise RuntimeError(f"template {template} rendered invalid YAML: {err}") from err
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise RuntimeError(f"template {template} rendered no Kubernetes object")
    return manifest
