"""Pod identities from the Kubernetes API server.

Layers, bottom up, so each can be tested on its own:

  pod_record()      a pod object (raw JSON dict) -> PodRecord, the few fields we
                    keep; the big object is dropped at once.
  WorkloadNamer     owner reference -> workload name (ReplicaSet -> Deployment
                    through one cached GET of the ReplicaSet; the others by name).
  PodIndex          address -> pod, with the deletion grace period and IP reuse
                    rules; pure bookkeeping, fed by events, no I/O.
  KubeApi           the three GETs (list pods, watch pods, read a ReplicaSet) as raw
                    JSON over the kubernetes client's configured connection pool.
  PodWatch          one paginated list + resumable watch against the API server
                    feeding one PodIndex from its own thread; reconnects, relists
                    on 410 Gone, backs off while the server is unreachable.
  KubernetesResolver  the agent's Resolver: a watch of this node's pods (the local
                    side) and, with peers="cluster", a watch of every pod (peers).

Lookups (the scrape path) only read the indexes. Every API call happens in a
watch thread.

Memory: the cache keeps, per pod with an address, a PodRef, the name strings,
the parsed addresses and three dictionary slots: about 0.6 KiB of Python
objects per pod in CPython 3.11. Measured as process RSS against a real API
server (bench/resolver_memory.py): a cluster-wide watch of 5,000 pods adds
7.2 MiB, about 1.5 KiB per pod (allocator arenas left partly used by the list
pages). Lists are read in pages of 100 so that the transient JSON of a relist
stays bounded whatever the cluster size.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import random
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import urllib3
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .base import IPAddress, PodRef, Resolver, normalize_ip

log = logging.getLogger(__name__)

PEER_SCOPES = ("cluster", "node")

# Phases after which the kubelet has torn the sandbox down: the pod's addresses
# are free to be handed to another pod.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})

# A Job made by a CronJob is named "<cronjob>-<scheduled time in Unix minutes>"
# (8 digits since 1989). Matching the name avoids a GET
# of every Job (and the RBAC to do it); a hand-made Job named like that is
# attributed to a "CronJob" of its prefix, which is documented.
_CRONJOB_JOB_NAME = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")


class ResolverConfigError(ValueError):
    """The resolver cannot be built from the given settings."""


# --------------------------------------------------------------------------
# Pod objects -> the few fields the resolver keeps
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Owner:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class PodRecord:
    """What the resolver reads from one pod object; the object itself is dropped."""

    uid: str
    namespace: str
    name: str
    ips: tuple[IPAddress, ...]  # empty for host-network pods (the node's address is not theirs)
    finished: bool              # Succeeded/Failed: the addresses are released
    owner: Owner | None         # the controlling owner reference, if any
    template_hash: str = ""     # label pod-template-hash (fallback RS -> Deployment naming)
    host_network: bool = False


def pod_record(obj: Mapping[str, Any]) -> PodRecord:
    """Reads a pod as the API server sends it (JSON dict, camelCase keys)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    uid, namespace, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
    if not (uid and namespace and name):
        raise ValueError(f"pod object without metadata uid/namespace/name: {meta!r:.200}")
    host_network = bool(spec.get("hostNetwork"))
    return PodRecord(
        uid=uid,
        namespace=sys.intern(namespace),
        name=name,
        # A host-network pod reports the node's address as its own: indexing it
        # would label every host process (kubelet, sshd, ...) with that pod.
        ips=() if host_network else _pod_ips(status),
        finished=status.get("phase") in FINISHED_PHASES,
        owner=_controller_owner(meta.get("ownerReferences") or ()),
        template_hash=(meta.get("labels") or {}).get("pod-template-hash", ""),
        host_network=host_network,
    )


def _pod_ips(status: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    raw = [entry.get("ip") for entry in status.get("podIPs") or () if isinstance(entry, Mapping)]
    if not raw and status.get("podIP"):
        raw = [status["podIP"]]
    ips: list[IPAddress] = []
    for text in raw:
        try:
            ip = normalize_ip(text)
        except (TypeError, ValueError):
            log.debug("ignoring unparsable pod IP %r", text)
            continue
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


def _controller_owner(refs: Iterable[Mapping[str, Any]]) -> Owner | None:
    """The owner reference marked controller (the first one if none is)."""
    refs = [r for r in refs if isinstance(r, Mapping) and r.get("kind") and r.get("name")]
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller")), refs[0])
    return Owner(sys.intern(ref["kind"]), ref["name"])


# --------------------------------------------------------------------------
# Owner references -> workload names
# --------------------------------------------------------------------------

class ReplicaSetNotFound(LookupError):
    """The ReplicaSet is gone (404)."""


# (namespace, replicaset name) -> its controlling owner, or None if it has none.
# Raises ReplicaSetNotFound for a 404, anything else for other failures.
ReplicaSetOwnerFetch = Callable[[str, str], "Owner | None"]


class WorkloadNamer:
    """Names the workload a pod belongs to.

    ReplicaSet -> the Deployment (or other controller) owning it, learnt by one
    GET of the ReplicaSet and cached; StatefulSet, DaemonSet, ReplicationController
    and unknown kinds -> the owner's name; Job -> its CronJob when the Job's
    name has the CronJob controller's timestamp suffix, else the Job; a pod
    without an owner (or a static pod, owned by its Node) -> "".

    Called from watch threads only. When the GET fails for another reason than
    a 404, the name is derived from the pod-template-hash suffix (what the
    Deployment controller does) and the GET is retried after `retry_after`.
    """

    def __init__(self, fetch_replicaset_owner: ReplicaSetOwnerFetch, *,
                 cache_size: int = 16384, retry_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch_replicaset_owner
        self._cache_size = cache_size
        self._retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._failed: dict[tuple[str, str], tuple[str, float]] = {}
        self._next_warning = 0.0
        self.fetches = 0
        self.errors = 0

    def workload(self, record: PodRecord) -> str:
        owner = record.owner
        if owner is None or owner.kind == "Node":
            return ""
        if owner.kind == "ReplicaSet":
            return self._replicaset_workload(record.namespace, owner.name, record.template_hash)
        if owner.kind == "Job":
            match = _CRONJOB_JOB_NAME.match(owner.name)
            return sys.intern(match["cronjob"] if match else owner.name)
        return sys.intern(owner.name)

    def _replicaset_workload(self, namespace: str, rs_name: str, template_hash: str) -> str:
        key = (namespace, rs_name)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            failed = self._failed.get(key)
            if failed is not None and self._clock() < failed[1]:
                return failed[0]
        guess = _deployment_name_from_replicaset(rs_name, template_hash)
        self.fetches += 1
        try:
            owner = self._fetch(namespace, rs_name)
        except ReplicaSetNotFound:
            name = guess  # deleted already: its pods are on their way out too
        except Exception as exc:  # API down, RBAC missing, ...: never stop the watch
            self.errors += 1
            now = self._clock()
            if now >= self._next_warning:  # one warning a minute, not one per ReplicaSet
                self._next_warning = now + 60
                log.warning("cannot read ReplicaSet %s/%s (workload named %r for now; "
                            "%d failed reads so far): %s",
                            namespace, rs_name, guess, self.errors, _short_error(exc))
            with self._lock:
                self._failed[key] = (guess, now + self._retry_after)
                while len(self._failed) > self._cache_size:
                    del self._failed[next(iter(self._failed))]
            return guess
        else:
            name = owner.name if owner is not None else rs_name
        name = sys.intern(name)
        with self._lock:
            self._failed.pop(key, None)
            self._cache[key] = name
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return name


def _deployment_name_from_replicaset(rs_name: str, template_hash: str) -> str:
    suffix = "-" + template_hash
    if template_hash and rs_name.endswith(suffix) and len(rs_name) > len(suffix):
        return rs_name[: -len(suffix)]
    return rs_name


# --------------------------------------------------------------------------
# The index: address -> pod, with grace and reuse rules
# --------------------------------------------------------------------------

class _Entry:
    """One pod in an index. Mutated only under the index lock."""

    __slots__ = ("ref", "ips", "seq", "expires_at")

    def __init__(self, ref: PodRef, ips: tuple[IPAddress, ...], seq: int):
        self.ref = ref
        self.ips = ips
        self.seq = seq                       # order first seen: the newer live pod wins an address
        self.expires_at: float | None = None  # set when deleted/finished (monotonic clock)

    @property
    def live(self) -> bool:
        return self.expires_at is None


def _rank(entry: _Entry) -> tuple[bool, float, int]:
    # Live beats departed (an address reused by a new pod resolves to it at
    # once); among departed, the last to leave; then the newest.
    return (entry.expires_at is None, entry.expires_at or 0.0, entry.seq)


class PodIndex:
    """Pods by uid and by address, fed with watch events.

    A deleted or finished pod stays resolvable for `grace_seconds` (so the
    agent's series for it end cleanly), unless a live pod claims its address.
    Times are passed in (monotonic seconds) so the rules are testable.
    """

    def __init__(self, grace_seconds: float):
        if grace_seconds < 0:
            raise ValueError(f"grace period must be >= 0, got {grace_seconds}")
        self.grace_seconds = float(grace_seconds)
        self._lock = threading.Lock()
        self._pods: dict[str, _Entry] = {}          # uid -> entry
        self._departed: dict[str, _Entry] = {}      # uid -> entry, those with expires_at set
        self._owner: dict[IPAddress, _Entry] = {}   # address -> winning claimant
        self._shared: dict[IPAddress, list[_Entry]] = {}  # addresses with 2+ claimants (rare)
        self._next_seq = 0

    # -- events ------------------------------------------------------------

    def apply(self, event_type: str, record: PodRecord, workload: str, now: float) -> None:
        """Applies one watch event (ADDED, MODIFIED or DELETED)."""
        if event_type == "DELETED":
            self.delete(record.uid, now)
        elif event_type in ("ADDED", "MODIFIED"):
            self.upsert(record, workload, now)
        else:
            raise ValueError(f"unknown pod event type {event_type!r}")

    def upsert(self, record: PodRecord, workload: str, now: float) -> None:
        with self._lock:
            self._upsert(record, workload, now)

    def delete(self, uid: str, now: float) -> None:
        with self._lock:
            entry = self._pods.get(uid)
            if entry is not None:
                self._depart(uid, entry, now)

    def replace(self, named_records: Iterable[tuple[PodRecord, str]], now: float) -> None:
        """A full relist: pods absent from it were deleted while we did not watch."""
        with self._lock:
            seen = set()
            for record, workload in named_records:
                seen.add(record.uid)
                self._upsert(record, workload, now)
            for uid, entry in list(self._pods.items()):
                if uid not in seen:
                    self._depart(uid, entry, now)

    def sweep(self, now: float) -> int:
        """Forgets departed pods whose grace period is over; returns how many."""
        with self._lock:
            expired = [(uid, e) for uid, e in self._departed.items() if e.expires_at <= now]
            for uid, entry in expired:
                self._forget(uid, entry)
            return len(expired)

    # -- reads (scrape path) ---------------------------------------------

    def find(self, ip: IPAddress, now: float) -> _Entry | None:
        """The entry owning `ip` (live, or departed within its grace), else None."""
        with self._lock:
            entry = self._owner.get(ip)
            if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
                return None
            return entry

    def lookup(self, ip: IPAddress, now: float) -> PodRef | None:
        entry = self.find(ip, now)
        return entry.ref if entry is not None else None

    def counts(self, now: float) -> tuple[int, int]:
        """(live pods, departed pods still within their grace period)."""
        with self._lock:
            departed = sum(1 for e in self._departed.values() if e.expires_at > now)
            return len(self._pods) - len(self._departed), departed

    # -- internals (lock held) -----------------------------------------------

    def _upsert(self, record: PodRecord, workload: str, now: float) -> None:
        uid = record.uid
        entry = self._pods.get(uid)
        if record.finished:
            # The kubelet has released the addresses. Keep the ones we knew
            # for the grace period (a finished pod's status may list none).
            if entry is not None:
                self._depart(uid, entry, now)
            return
        if not record.ips:
            # Pending, host-network, or (unusually) no address any more.
            if entry is not None:
                self._forget(uid, entry)
            return
        ref = PodRef(record.namespace, record.name, workload)
        if entry is None:
            entry = _Entry(ref, record.ips, self._next_seq)
            self._next_seq += 1
            self._pods[uid] = entry
            for ip in record.ips:
                self._claim(ip, entry)
            return
        if entry.expires_at is not None:
            # The API says it is running again (a relist after a missed event
            # made us think it gone): trust the API.
            entry.expires_at = None
            del self._departed[uid]
            for ip in entry.ips:
                self._rerank(ip)
        if entry.ref != ref:
            entry.ref = ref
        if entry.ips != record.ips:
            old, new = set(entry.ips), set(record.ips)
            for ip in old - new:
                self._release(ip, entry)
            entry.ips = record.ips
            for ip in record.ips:
                if ip not in old:
                    self._claim(ip, entry)

    def _depart(self, uid: str, entry: _Entry, now: float) -> None:
        if entry.expires_at is not None:
            return  # already leaving: a later DELETED does not extend the grace
        entry.expires_at = now + self.grace_seconds
        self._departed[uid] = entry
        for ip in entry.ips:
            self._rerank(ip)

    def _forget(self, uid: str, entry: _Entry) -> None:
        for ip in entry.ips:
            self._release(ip, entry)
        del self._pods[uid]
        self._departed.pop(uid, None)

    def _claim(self, ip: IPAddress, entry: _Entry) -> None:
        current = self._owner.get(ip)
        if current is None or current is entry:
            self._owner[ip] = entry
            return
        claimants = self._shared.get(ip)
        if claimants is None:
            claimants = self._shared[ip] = [current]
        if entry not in claimants:
            claimants.append(entry)
        self._owner[ip] = max(claimants, key=_rank)

    def _release(self, ip: IPAddress, entry: _Entry) -> None:
        claimants = self._shared.get(ip)
        if claimants is not None:
            if entry in claimants:
                claimants.remove(entry)
            if len(claimants) == 1:
                self._owner[ip] = claimants[0]
                del self._shared[ip]
            else:
                self._owner[ip] = max(claimants, key=_rank)
        elif self._owner.get(ip) is entry:
            del self._owner[ip]

    def _rerank(self, ip: IPAddress) -> None:
        claimants = self._shared.get(ip)
        if claimants is not None:
            self._owner[ip] = max(claimants, key=_rank)


# --------------------------------------------------------------------------
# The API reads
# --------------------------------------------------------------------------

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
        return _controller_owner(metadata.get("ownerReferences") or ())

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


# --------------------------------------------------------------------------
# One list + watch loop against the API server
# --------------------------------------------------------------------------

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


RESTART_REASONS = ("closed", "expired", "error")


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

    def __init__(self, name: str, api: "KubeApi", index: PodIndex, namer: WorkloadNamer, *,
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
                log.warning("pod watch %s did not stop within %.0fs", self.name, timeout)
            self._thread = None

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                self.watch_once()
                reason = "closed"
            except WatchExpired:
                log.info("pod watch %s: resourceVersion %s expired, relisting",
                         self.name, self.resource_version)
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
            log.debug("pod watch %s restarting (%s)", self.name, reason)

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
                if token is not None and _http_status(exc) == 410:
                    log.info("pod watch %s: list continuation expired, listing again", self.name)
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
        log.info("pod watch %s: listed %d pods in %.2fs (resourceVersion %s)",
                 self.name, len(records), self._clock() - started, resource_version)

    def watch_once(self) -> None:
        """One watch request from the current resourceVersion until the server ends it."""
        timeout = max(1, round(self.watch_timeout_seconds * random.uniform(0.8, 1.0)))
        try:
            response = self._api.watch_pods(
                field_selector=self.field_selector, resource_version=self.resource_version,
                timeout_seconds=timeout,
                timeout=(self.connect_timeout_seconds, timeout + self.read_slack_seconds))
        except Exception as exc:
            if _http_status(exc) == 410:
                raise WatchExpired() from exc
            raise
        self._response = response
        try:
            self._mark_reachable()
            for line in _response_lines(response):
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
            log.warning("pod watch %s: skipping malformed pod object: %s", self.name, exc)
            return None

    def _mark_reachable(self) -> None:
        self._backoff.reset()
        if self.stale:
            self.stale = False
            log.info("pod watch %s: API server reachable again", self.name)

    def _mark_synced(self) -> None:
        self.last_sync_time = time.time()

    def _mark_unreachable(self, exc: BaseException) -> None:
        status = _http_status(exc)
        if not isinstance(exc, _API_FAILURES):
            # A bug, not the network: say so loudly, but keep serving and retrying.
            log.error("pod watch %s: unexpected failure, retrying", self.name, exc_info=exc)
        elif status in (401, 403):
            log.error("pod watch %s: the API server refuses us (%s); the agent needs list "
                      "and watch on pods (see docs/resolver.md): %s",
                      self.name, status, _short_error(exc))
        elif not self.stale:
            log.warning("pod watch %s: API server unreachable, serving the last known pods: %s",
                        self.name, _short_error(exc))
        self.stale = True


def _response_lines(response: Any) -> Iterator[bytes]:
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


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, ApiStatusError):
        return str(exc)[:300]
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]


# --------------------------------------------------------------------------
# The resolver
# --------------------------------------------------------------------------

def _api_client_from_config(kubeconfig: str | None) -> Any:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            if kubeconfig is not None and not os.path.isfile(kubeconfig):
                raise ResolverConfigError(f"kubernetes resolver: kubeconfig {kubeconfig!r} does not exist")
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration,
                                    persist_config=False)
    except ConfigException as exc:
        where = kubeconfig or "in-cluster service account / $KUBECONFIG / ~/.kube/config"
        raise ResolverConfigError(f"kubernetes resolver: cannot load credentials ({where}): {exc}") from exc
    return client.ApiClient(configuration)


class KubernetesResolver(Resolver):
    """Pods by address from the API server, for the agent's labels.

    Always watches the pods on `node_name` (a server-side field selector on
    spec.nodeName): the local side of every socket. With peers="cluster" it
    also watches every pod in the cluster, so peers get namespace/pod labels;
    that costs about 1.5 KiB of resident memory per pod (measured with 5,000
    pods, docs/resolver.md). With
    peers="node" a peer on another node is an address no pod owns.

    Host-network pods are not indexed: they share the node's address, which
    must resolve to nothing (the agent labels it `host`).
    """

    def __init__(self, node_name: str, peers: str = "cluster",
                 deleted_pod_grace_seconds: float = 60, kubeconfig: str | None = None,
                 *, api_client: Any = None):
        if not isinstance(node_name, str) or not node_name:
            raise ResolverConfigError("kubernetes resolver: node_name must be a non-empty string")
        if peers not in PEER_SCOPES:
            raise ResolverConfigError(
                f"kubernetes resolver: peers must be one of {', '.join(PEER_SCOPES)}, got {peers!r}")
        if isinstance(deleted_pod_grace_seconds, bool) or not isinstance(deleted_pod_grace_seconds, (int, float)) \
                or deleted_pod_grace_seconds < 0:
            raise ResolverConfigError(
                "kubernetes resolver: deleted_pod_grace_seconds must be a number >= 0, "
                f"got {deleted_pod_grace_seconds!r}")
        self.node_name = node_name
        self.peers = peers
        self.grace_seconds = float(deleted_pod_grace_seconds)
        self._api = api_client if api_client is not None else _api_client_from_config(kubeconfig)
        api = KubeApi(self._api)
        self.namer = WorkloadNamer(api.replicaset_owner)
        self.watches = [PodWatch("node", api, PodIndex(self.grace_seconds), self.namer,
                                 field_selector=f"spec.nodeName={node_name}")]
        if peers == "cluster":
            self.watches.append(PodWatch("cluster", api, PodIndex(self.grace_seconds), self.namer))
        self._stats_lock = threading.Lock()
        self._lookups = 0
        self._misses = 0
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for watch in self.watches:
            watch.start()
        if self._janitor is None:
            self._janitor = threading.Thread(target=self._sweep_loop, name="pod-index-sweeper",
                                             daemon=True)
            self._janitor.start()

    def stop(self) -> None:
        self._stop.set()
        for watch in self.watches:
            watch.stop()
        if self._janitor is not None:
            self._janitor.join(5)
            self._janitor = None

    def is_ready(self) -> bool:
        return all(watch.synced.is_set() for watch in self.watches)

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for watch in self.watches:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not watch.synced.wait(remaining):
                return False
        return True

    def _sweep_loop(self) -> None:
        # Lookups already ignore expired entries; this frees their memory.
        interval = min(5.0, max(1.0, self.grace_seconds / 4))
        while not self._stop.wait(interval):
            now = time.monotonic()
            for watch in self.watches:
                watch.index.sweep(now)

    # -- the scrape path -----------------------------------------------------

    def lookup(self, ip: IPAddress) -> PodRef | None:
        if type(ip) is not ipaddress.IPv4Address:
            ip = normalize_ip(ip)
        now = time.monotonic()
        found = None
        for watch in self.watches:  # the node's own watch first
            entry = watch.index.find(ip, now)
            if entry is None:
                continue
            if entry.live:
                found = entry
                break
            if found is None:
                found = entry  # departed: a live owner in the other watch beats it
        with self._stats_lock:
            self._lookups += 1
            if found is None:
                self._misses += 1
        return found.ref if found is not None else None

    # -- own health ----------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """Metric families for the resolver's health (called at each scrape)."""
        now = time.monotonic()
        pods = GaugeMetricFamily(
            "netprobe_resolver_pods",
            "Pods with an address in the resolver cache, per watch; state=departed counts "
            "deleted or finished pods still resolvable during the deletion grace period.",
            labels=["watch", "state"])
        restarts = CounterMetricFamily(
            "netprobe_resolver_watch_restarts",
            "Pod watches re-established: closed (the server ended it, e.g. its timeout), "
            "expired (410 Gone, followed by a full relist), error (request failed).",
            labels=["watch", "reason"])
        relists = CounterMetricFamily(
            "netprobe_resolver_relists", "Complete pod lists read from the API server.",
            labels=["watch"])
        last_sync = GaugeMetricFamily(
            "netprobe_resolver_last_sync_timestamp_seconds",
            "Unix time the pod cache was last known to be in step with the API server "
            "(list completed, event or bookmark received); 0 before the first list.",
            labels=["watch"])
        stale = GaugeMetricFamily(
            "netprobe_resolver_stale",
            "1 while the API server cannot be reached and lookups are answered from the "
            "last known pods; 0 when the watch is connected.",
            labels=["watch"])
        for watch in self.watches:
            live, departed = watch.index.counts(now)
            pods.add_metric([watch.name, "live"], live)
            pods.add_metric([watch.name, "departed"], departed)
            for reason in RESTART_REASONS:
                restarts.add_metric([watch.name, reason], watch.restarts[reason])
            relists.add_metric([watch.name], watch.relists)
            last_sync.add_metric([watch.name], watch.last_sync_time)
            stale.add_metric([watch.name], 1.0 if watch.stale else 0.0)
        with self._stats_lock:
            lookups, misses = self._lookups, self._misses
        yield pods
        yield CounterMetricFamily(
            "netprobe_resolver_lookups", "Address lookups made by the collector.", value=lookups)
        yield CounterMetricFamily(
            "netprobe_resolver_lookup_misses",
            "Lookups of an address no cached pod owns (labelled host or external).", value=misses)
        yield restarts
        yield relists
        yield last_sync
        yield stale
        yield CounterMetricFamily(
            "netprobe_resolver_owner_lookup_errors",
            "ReplicaSet reads that failed (workload named from the pod-template-hash instead).",
            value=self.namer.errors)
