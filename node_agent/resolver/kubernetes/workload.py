"""Layer 4: owner reference -> workload name (ReplicaSet -> Deployment through
one cached GET of the ReplicaSet; the others by name)."""
from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import time
from typing import Callable

from .api import ReplicaSetNotFound, short_error
from .pod_record import Owner, PodRecord

log = logging.getLogger(__name__)

# A Job made by a CronJob is named "<cronjob>-<scheduled time in Unix minutes>"
# (8 digits since 1989). Matching the name avoids a GET
# of every Job (and the RBAC to do it); a hand-made Job named like that is
# attributed to a "CronJob" of its prefix, which is documented.
_CRONJOB_JOB_NAME = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")

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
                log.warning("cannot read ReplicaSet; workload named from its name for now",
                            extra={"kv": {"replicaset": f"{namespace}/{rs_name}", "workload": guess,
                                          "failed_reads": self.errors, "error": short_error(exc)}})
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

