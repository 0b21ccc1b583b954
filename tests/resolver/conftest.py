"""Shared helpers for the resolver tests: pod objects as the API server sends them."""
from __future__ import annotations

import itertools

import pytest

_uids = itertools.count(1)


def make_pod(name: str, namespace: str = "shop", *, ips=(), phase: str = "Running",
             host_network: bool = False, owner: tuple[str, str] | None = None,
             template_hash: str = "", uid: str | None = None, resource_version: str = "1",
             node: str = "node-a") -> dict:
    """A pod object (JSON dict, camelCase) with only the fields the resolver reads."""
    metadata = {
        "name": name, "namespace": namespace,
        "uid": uid or f"uid-{next(_uids)}",
        "resourceVersion": resource_version,
    }
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                        "uid": f"o-{owner[1]}", "controller": True}]
    if template_hash:
        metadata["labels"] = {"pod-template-hash": template_hash}
    status = {"phase": phase}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    spec = {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}
    if host_network:
        spec["hostNetwork"] = True
    return {"metadata": metadata, "spec": spec, "status": status}


@pytest.fixture
def pod():
    return make_pod

