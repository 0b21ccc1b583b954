"""Every Kubernetes API call the operator makes, in one place.

Writes are server-side apply with the operator's field manager: idempotent (an
unchanged object is not written), drift is taken back (force=True re-owns the
fields we declare after someone edited them), and fields we do not declare stay
with whoever set them (HPA-style controllers, annotations added by hand).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import kubernetes

from . import settings as s



@dataclass(frozen=True)
class Resource:
    group: str          # "" for the core API
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        path = self.base()
        if self.namespaced and namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        return f"{path}/{name}" if name else path


# The kinds the operator reads or writes: a fixed table, no discovery cache.
RESOURCES: dict[str, Resource] = {
    "ConfigMap": Resource("", "v1", "configmaps"),
    "Secret": Resource("", "v1", "secrets"),
    "Service": Resource("", "v1", "services"),
    "DaemonSet": Resource("apps", "v1", "daemonsets"),
    "ServiceMonitor": Resource("monitoring.coreos.com", "v1", "servicemonitors"),
    "PrometheusRule": Resource("monitoring.coreos.com", "v1", "prometheusrules"),
    "NetworkProbe": Resource(s.API_GROUP, s.API_VERSION, s.PROBE_PLURAL, namespaced=False),
    "Node": Resource("", "v1", "nodes", namespaced=False),
    "Pod": Resource("", "v1", "pods"),   # read only: the agent pods' state for the status
}


class ApiError(Exception):
    """A non-2xx answer, with the API server's own message."""

    def __init__(self, method: str, path: str, status: int, body: Any):
        self.status = status
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        self.api_message = body.get("message", str(body)) if isinstance(body, dict) else str(body)
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.api_message}")


def load_api_client() -> kubernetes.client.ApiClient:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG (what kopf also uses)."""
    config = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)
    else:
        kubernetes.config.load_kube_config(client_configuration=config)
    return kubernetes.client.ApiClient(config)


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.api = api_client

    def _request(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (),
                 body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.api.param_serialize(
            method, path, query_params=list(query), header_params=headers, body=body,
            auth_settings=["BearerToken"])
        response = self.api.call_api(*serialized, _request_timeout=(10, 60))
        raw = response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        if not 200 <= response.status < 300:
            raise ApiError(method, path, response.status, data)
        return data

    # --- writes -------------------------------------------------------------

    def apply(self, manifest: Mapping, *, dry_run: bool = False) -> dict:
        """Server-side apply of one object; returns the object as stored."""
        resource = RESOURCES[manifest["kind"]]
        meta = manifest["metadata"]
        query = [("fieldManager", s.FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self._request(
            "PATCH", resource.path(meta.get("namespace"), meta["name"]), query=query,
            body=manifest, content_type="application/apply-patch+yaml")

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        try:
            self._request("DELETE", RESOURCES[kind].path(namespace, name),
                          body={"propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise

    def patch_probe_status(self, name: str, status: Mapping) -> None:
        path = RESOURCES["NetworkProbe"].path(None, name) + "/status"
        try:
            self._request("PATCH", path, body={"status": status},
                          content_type="application/merge-patch+json")
        except ApiError as err:
            if err.status != 404:  # deleted meanwhile: nothing to report on
                raise

    # --- reads --------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self._request("GET", RESOURCES[kind].path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return self._request("GET", RESOURCES[kind].path(namespace), query=query)["items"]

    def node_labels(self) -> dict[str, dict[str, str]]:
        return {n["metadata"]["name"]: n["metadata"].get("labels") or {}
                for n in self.list("Node")}

    def serves(self, kind: str) -> bool:
        """Whether the API server serves `kind` now (e.g. the monitoring CRDs are installed).

        Discovery is open to every authenticated user, so this needs no RBAC rule.
        """
        resource = RESOURCES[kind]
        try:
            listing = self._request("GET", resource.base())
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return any(r.get("name") == resource.plural for r in listing.get("resources", []))
