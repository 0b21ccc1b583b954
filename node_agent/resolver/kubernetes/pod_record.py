"""Layer 1: a pod object (raw JSON dict) -> PodRecord, the few fields the
resolver keeps; the big object is dropped at once."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from node_agent.resolver.base import IPAddress, normalize_ip

log = logging.getLogger(__name__)

# Phases after which the kubelet has torn the sandbox down: the pod's addresses
# are free to be handed to another pod.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


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
        owner=controller_owner(meta.get("ownerReferences") or ()),
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
            log.debug("ignoring unparsable pod IP", extra={"kv": {"ip": text}})
            continue
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


def controller_owner(refs: Iterable[Mapping[str, Any]]) -> Owner | None:
    """The owner reference marked controller (the first one if none is)."""
    refs = [r for r in refs if isinstance(r, Mapping) and r.get("kind") and r.get("name")]
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller")), refs[0])
    return Owner(sys.intern(ref["kind"]), ref["name"])

