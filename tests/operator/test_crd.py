"""The NetworkProbe CRD as a document: structural, self-describing, in step with the operator."""
from __future__ import annotations

import crd_schema
from netprobe_operator import agent_support


def _walk(schema: dict, path: str):
    yield path, schema
    for name, prop in (schema.get("properties") or {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_identity_scope_and_short_names():
    crd = crd_schema.load_crd()
    assert crd["metadata"]["name"] == "networkprobes.netprobe.io"
    assert crd["spec"]["group"] == "netprobe.io"
    assert crd["spec"]["scope"] == "Cluster"
    assert "np" in crd["spec"]["names"]["shortNames"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_every_spec_field_is_described():
    spec = crd_schema.root_schema()["properties"]["spec"]
    undescribed = [path for path, node in _walk(spec, "spec")
                   if not path.endswith("{}") and not node.get("description")]
    assert undescribed == []


def test_program_enum_is_the_catalogue_and_covers_what_the_agent_implements():
    items = crd_schema.root_schema()["properties"]["spec"]["properties"]["programs"]["items"]
    enum = items["properties"]["name"]["enum"]
    assert tuple(enum) == agent_support.CATALOGUE
    assert agent_support.IMPLEMENTED_PROGRAMS < set(enum)


def test_label_enum_matches_the_operator():
    labels = crd_schema.root_schema()["properties"]["spec"]["properties"]["labels"]
    assert tuple(labels["items"]["enum"]) == agent_support.OPTIONAL_LABELS


def test_status_keeps_unknown_fields_for_kopf():
    status = crd_schema.root_schema()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert {"observedGeneration", "conditions", "nodes", "programs"} <= set(status["properties"])


def test_printer_columns():
    (version,) = crd_schema.load_crd()["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Programs"] == ".status.programs"
    assert columns["Nodes"] == ".status.nodes"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_defaults_give_a_complete_spec():
    spec = crd_schema.defaulted_spec({"programs": [{"name": "tcp_rtt"}]})
    assert spec["agent"]["metricsPort"] == 9435
    assert spec["agent"]["raiseMemlockLimit"] is False
    assert spec["resolver"] == {"peers": "cluster", "deletedPodGraceSeconds": 60}
    assert spec["serviceMonitor"] == {"enabled": True, "interval": "30s"}
    assert spec["prometheusRule"]["thresholds"]["retransmitsPerSecond"] == 1
    assert spec["dashboards"]["labels"] == {"grafana_dashboard": "1"}
    assert spec["labels"] == ["workload", "peer_namespace", "peer_workload"]
