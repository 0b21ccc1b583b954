"""Layer 2: address -> pod, with the deletion grace period and IP reuse rules;
pure bookkeeping, fed by watch events, no I/O."""
from __future__ import annotations

import threading
from typing import Iterable

from node_agent.resolver.base import IPAddress, PodRef

from .pod_record import PodRecord


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

