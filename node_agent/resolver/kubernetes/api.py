"""Layer 3: the three GETs the resolver makes (list pods, watch pods, read a
ReplicaSet) as raw JSON over the kubernetes client's configured connection
pool, and the errors they raise."""
from __future__ import annotations

import json
import urllib.parse
from typing import Any, Mapping

import urllib3

from .pod_record import Owner, controller_owner


class ReplicaSetNotFound(LookupError):
    """The ReplicaSet is gone (404)."""


class ApiStatusError(Exception):
    """The API server answered with a non-2xx status."""

    def __init__(self, status: int, reason: str, body: bytes = b""):
        self.status, self.reason = status, reason
        message = ""
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            pass
        super().__init__(f"HTTP {status} {reason}" + (f": {message}" if message else ""))


class KubeApi:
    """The three reads the resolver makes, over the kubernetes client's settings.

    The client's Configuration and connection pool carry the TLS, credentials
    (including the in-cluster token refresh) and proxy of the kubeconfig or
    service account. Its generated API classes are not used: importing
    CoreV1Api and AppsV1Api costs about 20 MiB of model classes, and we read
    raw JSON anyway.
    """

    def __init__(self, api_client: Any):
        self._configuration = api_client.configuration
        self._pool = api_client.rest_client.pool_manager
        self._host = self._configuration.host.rstrip("/")

    def list_pods(self, *, field_selector: str | None, limit: int, continue_token: str | None,
                  timeout: tuple[float, float]) -> dict:
        response = self._get("/api/v1/pods", {"fieldSelector": field_selector, "limit": limit,
                                              "continue": continue_token}, timeout)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def watch_pods(self, *, field_selector: str | None, resource_version: str | None,
                   timeout_seconds: int, timeout: tuple[float, float]) -> Any:
        """The open watch response (urllib3), to be streamed and released by the caller."""
        return self._get("/api/v1/pods", {
            "watch": "true", "allowWatchBookmarks": "true", "fieldSelector": field_selector,
            "resourceVersion": resource_version, "timeoutSeconds": timeout_seconds}, timeout)

    def replicaset_owner(self, namespace: str, name: str) -> Owner | None:
        path = (f"/apis/apps/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
                f"/replicasets/{urllib.parse.quote(name, safe='')}")
        try:
            response = self._get(path, {}, (5, 10))
        except ApiStatusError as exc:
            if exc.status == 404:
                raise ReplicaSetNotFound(f"{namespace}/{name}") from exc
            raise
        try:
            metadata = json.loads(response.data).get("metadata") or {}
        finally:
            response.release_conn()
        return controller_owner(metadata.get("ownerReferences") or ())

    def _get(self, path: str, query: Mapping[str, Any], timeout: tuple[float, float]) -> Any:
        headers = {"Accept": "application/json", "User-Agent": "netprobe-agent/resolver"}
        for setting in self._configuration.auth_settings().values():  # refreshes tokens
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        params = {k: v for k, v in query.items() if v is not None}
        url = self._host + path + ("?" + urllib.parse.urlencode(params) if params else "")
        response = self._pool.request(
            "GET", url, headers=headers, preload_content=False, retries=False,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
        if not 200 <= response.status < 300:
            try:
                body = response.read()
            finally:
                response.release_conn()
            raise ApiStatusError(response.status, response.reason or "", body)
        return response


# -- what went wrong, short enough for a log line -------------------------

def http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def short_error(exc: BaseException) -> str:
    """The failure in one line: the API's own message, or the HTTP status, or the exception."""
    if isinstance(exc, ApiStatusError):
        return str(exc)[:300]
    status = http_status(exc)
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]

