"""Who may read /metrics: the scraper's bearer token, checked by the API server.

As kube-rbac-proxy does for node-exporter: a TokenReview says who the token
belongs to (401 when nobody), a SubjectAccessReview whether that user may
`get` the non-resource URL /metrics (403 when not). Decisions (allowed,
forbidden, unauthenticated) are cached per token digest for `cache_seconds`,
so a Prometheus scraping every 30 s costs two API requests per cache period
and a flood of one bad token costs two per period as well. When the API
server cannot be asked, a token allowed within the last `stale_seconds`
stays allowed (monitoring keeps working through a control-plane outage,
which is when it is needed); anything else gets 503, not cached. The agent's ServiceAccount needs
`create` on tokenreviews and subjectaccessreviews (manifests/agent-rbac.yaml),
nothing more.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from node_agent import kube_client
from node_agent.logs import OnceLog

log = logging.getLogger(__name__)


class AuthConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Decision:
    status: int          # 200 allowed, 401 unauthenticated, 403 forbidden, 503 cannot decide
    message: str
    user: str = ""


def api_client(kubeconfig: str | None) -> Any:
    """In a pod: the ServiceAccount; elsewhere: `kubeconfig` or $KUBECONFIG."""
    return kube_client.api_client(kubeconfig, "authorization", AuthConfigError)


class KubernetesAuthorizer:
    def __init__(self, api: Any, cache_seconds: float = 30.0, path: str = "/metrics", verb: str = "get",
                 max_entries: int = 4096, timeout: float = 5.0, stale_seconds: float = 600.0):
        from kubernetes import client
        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.cache_seconds, self.path, self.verb = cache_seconds, path, verb
        self.max_entries, self.timeout, self.stale_seconds = max_entries, timeout, stale_seconds
        self._cache: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()   # (fresh until, decision)
        self._lock = threading.Lock()
        self._errors = OnceLog(log)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()

    def cached(self, token: str) -> Decision | None:
        key = self._key(token)
        with self._lock:
            hit = self._cache.get(key)
            if hit is None or hit[0] < time.monotonic():
                return None     # an expired entry stays, for review()'s fallback
            return hit[1]

    def review(self, token: str) -> Decision:
        """Ask the API server (blocking); cache what it says."""
        try:
            decision = self._review(token)
        except Exception as e:   # API server down, timeout, 403 on the review itself (RBAC missing)
            self._errors.error("authorization: cannot review a token", e)
            with self._lock:
                hit = self._cache.get(self._key(token))
            if hit is not None and hit[1].status == 200 and time.monotonic() - hit[0] < self.stale_seconds:
                return hit[1]
            return Decision(503, f"cannot verify the token now ({type(e).__name__})")
        key = self._key(token)
        with self._lock:
            self._cache[key] = (time.monotonic() + self.cache_seconds, decision)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return decision

    def _review(self, token: str) -> Decision:
        review = self.authn.create_token_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            _request_timeout=self.timeout)
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            log.debug("authorization: token not authenticated",
                      extra={"kv": {"error": (status.error if status else "") or "unknown token"}})
            return Decision(401, "the bearer token is not valid")
        user = status.user
        sar = self.authz.create_subject_access_review(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": {"user": user.username, "uid": user.uid, "groups": user.groups or [],
                      "extra": user.extra or {},
                      "nonResourceAttributes": {"path": self.path, "verb": self.verb}}},
            _request_timeout=self.timeout)
        if sar.status is not None and sar.status.allowed:
            return Decision(200, "allowed", user.username)
        log.info("authorization: forbidden", extra={"kv": {"user": user.username, "verb": self.verb,
                                                          "path": self.path}})
        return Decision(403, f"{user.username} may not {self.verb} {self.path}", user.username)
