"""What the agent tells Kubernetes about itself, so the probe's status can say it.

Two channels, both about the agent's own Pod (the operator reads them into the
NetworkProbe's Degraded condition, docs/operator.md):

- A start that fails (no kernel headers, an unusable certificate, ...) is
  written as the container's termination message (/dev/termination-log, the
  kubelet's default `terminationMessagePath`); the kubelet copies it into
  `status.containerStatuses[].lastState.terminated.message`. No API call is
  needed, so it works while the API server is unreachable too.
- Programs that failed to load while the agent keeps running the others are
  the pod condition `netprobe.io/ProgramsLoaded` (False, reason ProgramsFailed,
  the message naming each program, the stage and the kernel's or compiler's
  words), patched on the pod's own `status` (RBAC: pods/status patch in the
  agent's namespace). The kubelet keeps conditions it does not own. A patch
  that fails (API server down) is retried every RETRY_SECONDS.

Outside a pod (POD_NAME/POD_NAMESPACE unset: tests, the demo, a host process)
nothing is reported.
"""
from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from typing import Any, Mapping

log = logging.getLogger(__name__)

CONDITION = "netprobe.io/ProgramsLoaded"
TERMINATION_LOG = os.environ.get("NETPROBE_TERMINATION_LOG", "/dev/termination-log")
MESSAGE_LIMIT = 3500        # the kubelet keeps 4096 bytes of a termination message
RETRY_SECONDS = 10.0


def write_termination_message(text: str, path: str = TERMINATION_LOG) -> bool:
    """The reason the agent stops, where the kubelet reads it; False outside a pod."""
    if not os.environ.get("POD_NAME") or not os.path.exists(path):
        return False
    try:
        with open(path, "w") as f:
            f.write(text[:MESSAGE_LIMIT])
        return True
    except OSError as e:
        log.warning("termination message not written", extra={"kv": {"path": path, "error": e.strerror or e}})
        return False


def programs_condition(failed: Mapping[str, Any], running: list[str]) -> tuple[str, str, str]:
    """(status, reason, message) of the ProgramsLoaded condition."""
    if not failed:
        return ("True", "AllLoaded", f"loaded: {', '.join(sorted(running)) or 'none'}")
    parts = [f"{name} failed to load ({getattr(err, 'stage', 'load')}): {getattr(err, 'message', err)}"
             for name, err in sorted(failed.items())]
    running_text = f"; still running: {', '.join(sorted(running))}" if running else "; nothing else runs"
    message = "; ".join(parts)
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT - 3] + "..."
    return ("False", "ProgramsFailed", message + running_text)


class PodReporter:
    """Keeps the agent pod's ProgramsLoaded condition equal to what runs."""

    def __init__(self, api_client_factory=None):
        self.pod = os.environ.get("POD_NAME")
        self.namespace = os.environ.get("POD_NAMESPACE")
        self._factory = api_client_factory
        self._client = None
        self._wanted: tuple[str, str, str] | None = None
        self._sent: tuple[str, str, str] | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.pod and self.namespace)

    def report(self, failed: Mapping[str, Any], running: list[str]) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._wanted = programs_condition(failed, running)
            self._next_try = 0.0
        self.flush()

    def flush(self) -> None:
        """Send what changed; a failure is retried after RETRY_SECONDS (call this periodically)."""
        with self._lock:
            wanted = self._wanted
            if wanted is None or wanted == self._sent or time.monotonic() < self._next_try:
                return
            try:
                self._patch(wanted)
            except Exception as e:  # noqa: BLE001 - the API may be down or refuse; retried
                self._next_try = time.monotonic() + RETRY_SECONDS
                log.warning("pod condition not reported; will retry",
                            extra={"kv": {"condition": CONDITION, "error": str(e)[:300],
                                          "retry_seconds": RETRY_SECONDS}})
                return
            self._sent = wanted
            log.info("pod condition reported", extra={"kv": {"condition": CONDITION, "status": wanted[0],
                                                             "reason": wanted[1]}})

    def _patch(self, wanted: tuple[str, str, str]) -> None:
        if self._client is None:
            if self._factory is None:
                from kubernetes import client

                from node_agent.kube_client import api_client
                self._client = client.CoreV1Api(api_client(None, "pod status", RuntimeError))
            else:
                self._client = self._factory()
        status, reason, message = wanted
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # A dict body is sent as a strategic merge patch: conditions merge by type, so
        # the kubelet's stay as they are.
        body = {"status": {"conditions": [{"type": CONDITION, "status": status, "reason": reason,
                                           "message": message, "lastTransitionTime": now}]}}
        self._client.patch_namespaced_pod_status(self.pod, self.namespace, body, _request_timeout=10)
