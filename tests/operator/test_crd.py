"""The NetworkProbe CRD as a document: structural, self-describing, in step with the operator."""
from __future__ import annotations

import subprocess
import sys

import crd_schema
from netprobe_operator import agent_support, crdgen
from netprobe_operator.program_schema import agent_option, crd_field
from node_agent.programs import CATALOGUE


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


def test_committed_crd_and_options_table_are_what_make_generate_writes():
    for path, text in crdgen.generated(crd_schema.REPO).items():
        assert path.read_text() == text, f"{path} is out of date: run `make generate`"


def test_every_agent_option_is_a_program_field_under_one_naming_rule():
    items = crd_schema.root_schema()["properties"]["spec"]["properties"]["programs"]["items"]
    for spec in CATALOGUE.values():
        for option in spec.options:
            field = crd_field(option.name)
            assert agent_option(field) == option.name
            prop = items["properties"][field]
            assert prop["type"] == {int: "integer", bool: "boolean", str: "string"}[option.type]
            assert spec.name in prop["description"] or prop["description"].startswith("Every implemented program")
            assert "Default: " in prop["description"]
            if option.choices:
                assert set(option.choices) <= set(prop["enum"])
            if option.min is not None:
                assert prop["minimum"] <= option.min and prop["maximum"] >= option.max
    assert items["properties"]["name"]["enum"] == list(agent_support.CATALOGUE)


def test_the_operator_does_not_import_bcc():
    """The operator reads the agent's catalogue (pure data); it must never pull in bcc."""
    code = ("import sys, netprobe_operator.main, netprobe_operator.handlers, netprobe_operator.crdgen; "
            "loaded = [m for m in sys.modules if m == 'bcc' or m.startswith('bcc.')]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bounds_and_choices_narrower_than_the_field_become_per_program_rules():
    from netprobe_operator.program_schema import _option_schema, _rules
    from node_agent.runtime.spec import Option
    pairs = [("tcp_rtt", Option("max_entries", int, 100, "size", min=64, max=1024)),
             ("rx_latency", Option("max_entries", int, 100, "size", min=16, max=1024)),
             ("tcp_connections", Option("max_entries", int, 100, "size", min=16, max=4096))]
    schema = _option_schema("max_entries", pairs)
    assert (schema["minimum"], schema["maximum"]) == (16, 4096)
    rules = {r["rule"]: r for r in _rules("max_entries", pairs, schema)}
    assert rules["self.name != 'tcp_rtt' || !has(self.maxEntries) || "
                 "(self.maxEntries >= 64 && self.maxEntries <= 1024)"]["fieldPath"] == ".maxEntries"
    assert "self.name != 'rx_latency' || !has(self.maxEntries) || (self.maxEntries <= 1024)" in rules
    assert "!has(self.maxEntries) || self.name in ['tcp_rtt', 'rx_latency', 'tcp_connections']" in rules
    assert not any("'tcp_connections' ||" in r for r in rules)
