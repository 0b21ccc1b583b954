"""What only the operator can judge, as conditions rather than crashes."""
from __future__ import annotations

import crd_schema
from netprobe_operator import validation
from netprobe_operator.validation import OtherProbe
from node_agent.programs import CATALOGUE


def spec(**overrides):
    base = {"programs": [{"name": "tcp_retransmit"}]}
    base.update(overrides)
    return crd_schema.defaulted_spec(base)


def test_implemented_programs_pass():
    s = spec(programs=[{"name": n} for n in CATALOGUE])
    assert validation.check_spec(s) == []


def test_catalogue_program_not_implemented_is_named():
    (problem,) = validation.check_spec(spec(programs=[{"name": "tcp_rtt"}, {"name": "flows"}, {"name": "xdp"}]))
    assert problem.reason == "UnsupportedProgram"
    assert "flows, xdp" in problem.message and "tcp_rtt" in problem.message  # names what works


def test_peer_labels_conflict_with_node_local_resolution():
    (problem,) = validation.check_spec(spec(labels=["peer_pod"], resolver={"peers": "node"}))
    assert problem.reason == "ConflictingOptions"
    assert "peer_pod" in problem.message and "resolver.peers" in problem.message
    assert validation.check_spec(spec(labels=["workload"], resolver={"peers": "node"})) == []


NODES = {"a": {"zone": "x", "kubernetes.io/os": "linux"}, "b": {"zone": "y"}}


def test_node_selector_matching_nothing():
    problem = validation.check_nodes(spec(nodeSelector={"zone": "z"}), NODES)
    assert problem.reason == "NoMatchingNodes"
    assert "{zone=z}" in problem.message and "2 nodes" in problem.message
    assert validation.check_nodes(spec(nodeSelector={"zone": "x"}), NODES) is None
    assert validation.check_nodes(spec(), NODES) is None
    assert validation.check_nodes(spec(), {}).message == "the cluster has no nodes"


def test_port_conflict_refuses_the_newer_probe_only():
    older = OtherProbe("old", "2026-01-01T00:00:00Z", 9435, {})
    mine = spec()  # default port 9435, every node
    problem = validation.check_port_conflicts("new", "2026-02-01T00:00:00Z", mine, [older], NODES)
    assert problem.reason == "MetricsPortConflict" and "old" in problem.message
    newer = OtherProbe("newer", "2026-03-01T00:00:00Z", 9435, {})
    assert validation.check_port_conflicts("new", "2026-02-01T00:00:00Z", mine, [newer], NODES) is None


def test_no_port_conflict_on_other_port_or_disjoint_nodes():
    mine = spec(nodeSelector={"zone": "x"})
    other_port = OtherProbe("old", "2026-01-01T00:00:00Z", 9500, {})
    other_nodes = OtherProbe("old2", "2026-01-01T00:00:00Z", 9435, {"zone": "y"})
    assert validation.check_port_conflicts("new", "2026-02-01T00:00:00Z", mine,
                                           [other_port, other_nodes], NODES) is None
