"""Layer 5: one paginated list + resumable watch against the API server,
feeding one PodIndex from its own thread; reconnects, relists on 410 Gone,
backs off while the server is unreachable."""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import urllib3

from node_agent.resolver.base import RESTART_REASONS

from .api import ApiStatusError, KubeApi, http_status, short_error
from .index import PodIndex
from .pod_record import PodRecord, pod_record
from .workload import WorkloadNamer

log = logging.getLogger(__name__)


class WatchExpired(Exception):
    """410 Gone: the resource version is too old; relist."""


class WatchError(Exception):
    """The server sent an ERROR event other than 410."""


# What talking to an API server can raise (connection refused or reset,
# timeouts, HTTP errors, a truncated or garbled body).
_API_FAILURES = (OSError, urllib3.exceptions.HTTPError, ApiStatusError, WatchError, ValueError)


class Backoff:
    """Exponential backoff with jitter, reset by a success."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0):
        self.initial, self.maximum = initial, maximum
        self._attempt = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


class PodWatch:
    """Lists then watches pods (optionally narrowed by a field selector) into one PodIndex.

    The watch resumes from the last resourceVersion it saw (events and
    bookmarks); a 410 Gone sends it back to a full, paginated relist. While the
    API server cannot be reached the index keeps serving what it has, `stale`
    is true and connections are retried with backoff.
    """

    # Small pages keep the transient JSON of a relist small (it also sets the
    # process's high-water mark, which CPython rarely gives back).
    page_size = 100
    # The server ends every watch after timeout_seconds (jittered, so that
    # many agents do not reconnect together); the client gives up on a
    # connection that stays silent longer than that plus read_slack (a watch
    # silently dropped by a load balancer).
    watch_timeout_seconds = 300
    read_slack_seconds = 30
    connect_timeout_seconds = 5
    list_read_timeout_seconds = 60

    def __init__(self, name: str, api: KubeApi, index: PodIndex, namer: WorkloadNamer, *,
                 field_selector: str | None = None, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.index = index
        self.field_selector = field_selector
        self._api = api
        self._namer = namer
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self.resource_version: str | None = None
        self.synced = threading.Event()          # set after the first complete list
        self.stale = False
        self.last_sync_time = 0.0                # wall clock, for the metric
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self.relists = 0

    # -- thread control ------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"pod-watch-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # wakes a read blocked on the socket
            except Exception:  # already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("pod watch did not stop in time",
                            extra={"kv": {"watch": self.name, "timeout_seconds": timeout}})
            self._thread = None

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                self.watch_once()
                reason = "closed"
            except WatchExpired:
                log.info("pod watch expired (410 Gone), relisting",
                         extra={"kv": {"watch": self.name, "resource_version": self.resource_version}})
                self.resource_version = None
                reason = "expired"
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._mark_unreachable(exc)
                reason = "error"
                self._stop.wait(self._backoff.next_delay())
            if self._stop.is_set():
                break
            self.restarts[reason] += 1
            log.debug("pod watch restarting", extra={"kv": {"watch": self.name, "reason": reason}})

    # -- list and watch ------------------------------------------------------

    def relist(self) -> None:
        """Reads every pod in scope, page by page, and replaces the index with them."""
        started = self._clock()
        records: list[PodRecord] = []
        token: str | None = None
        while True:
            try:
                page = self._api.list_pods(
                    field_selector=self.field_selector, limit=self.page_size, continue_token=token,
                    timeout=(self.connect_timeout_seconds, self.list_read_timeout_seconds))
            except Exception as exc:
                if token is not None and http_status(exc) == 410:
                    log.info("pod list continuation expired, listing again",
                             extra={"kv": {"watch": self.name}})
                    records, token = [], None
                    continue
                raise
            self._mark_reachable()
            for obj in page.get("items") or ():
                record = self._record_or_none(obj)
                if record is not None:
                    records.append(record)
            metadata = page.get("metadata") or {}
            resource_version = metadata.get("resourceVersion")
            token = metadata.get("continue") or None
            del page  # drop the page's objects before reading the next one
            if token is None:
                break
        if not resource_version:
            raise ValueError("pod list without metadata.resourceVersion: cannot watch from it")
        named = [(record, self._namer.workload(record)) for record in records]
        self.index.replace(named, self._clock())
        self.resource_version = resource_version
        self.relists += 1
        self._mark_synced()
        self.synced.set()
        log.info("pods listed", extra={"kv": {"watch": self.name, "pods": len(records),
                                              "seconds": f"{self._clock() - started:.2f}",
                                              "resource_version": resource_version}})

    def watch_once(self) -> None:
        """One watch request from the current resourceVersion until the server ends it."""
        timeout = max(1, round(self.watch_timeout_seconds * random.uniform(0.8, 1.0)))
        try:
            response = self._api.watch_pods(
                field_selector=self.field_selector, resource_version=self.resource_version,
                timeout_seconds=timeout,
                timeout=(self.connect_timeout_seconds, timeout + self.read_slack_seconds))
        except Exception as exc:
            if http_status(exc) == 410:
                raise WatchExpired() from exc
            raise
        self._response = response
        try:
            self._mark_reachable()
            for line in response_lines(response):
                if self._stop.is_set():
                    return
                self.handle_event(json.loads(line))
            # A clean end (the server's timeout, or its shutdown): we were in
            # step with it until now.
            self._mark_synced()
        finally:
            self._response = None
            response.release_conn()

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """Applies one decoded watch event to the index."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired(obj.get("message", ""))
            raise WatchError(f"watch error {obj.get('code')}: {obj.get('message', obj)!r:.300}")
        resource_version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind != "BOOKMARK":
            record = self._record_or_none(obj)
            if record is not None:
                # A deleted pod keeps the workload it had: no owner lookup for it.
                workload = "" if kind == "DELETED" else self._namer.workload(record)
                self.index.apply(kind, record, workload, self._clock())
        if resource_version:
            self.resource_version = resource_version
        self._mark_synced()

    # -- helpers -------------------------------------------------------------

    def _record_or_none(self, obj: Mapping[str, Any]) -> PodRecord | None:
        try:
            return pod_record(obj)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("skipping malformed pod object", extra={"kv": {"watch": self.name, "error": str(exc)}})
            return None

    def _mark_reachable(self) -> None:
        self._backoff.reset()
        if self.stale:
            self.stale = False
            log.info("API server reachable again", extra={"kv": {"watch": self.name}})

    def _mark_synced(self) -> None:
        self.last_sync_time = time.time()

    def _mark_unreachable(self, exc: BaseException) -> None:
        status = http_status(exc)
        if not isinstance(exc, _API_FAILURES):
            # A bug, not the network: say so loudly, but keep serving and retrying.
            log.error("pod watch failed unexpectedly, retrying", exc_info=exc,
                      extra={"kv": {"watch": self.name, "error": short_error(exc)}})
        elif status in (401, 403):
            log.error("the API server refuses the pod watch: the agent needs list and watch on pods "
                      "(docs/resolver.md)",
                      extra={"kv": {"watch": self.name, "status": status, "error": short_error(exc)}})
        elif not self.stale:
            log.warning("API server unreachable, serving the last known pods",
                        extra={"kv": {"watch": self.name, "error": short_error(exc)}})
        self.stale = True


def response_lines(response: Any) -> Iterator[bytes]:
    """Splits a streamed watch body into its newline-delimited JSON events."""
    pending = bytearray()
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line = bytes(pending[start:end])
            start = end + 1
            if line.strip():
                yield line
        del pending[:start]
    if bytes(pending).strip():
        yield bytes(pending)


