"""Every program option, against the real API server (the generated CRD installed).

For every option of every program in the catalogue: a NetworkProbe setting a
non-default value is admitted, the agent config the operator renders from the
stored object carries it, and the agent's own parser accepts it. An option on
a program that lacks it, a value out of range, a value of the wrong type: 422
with the field named. Refusals go through the full admission chain as server
dry runs, so nothing is stored.
"""
from __future__ import annotations

import json
import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from crd_schema import CRD_PATH, non_default
from netprobe_operator import render
from netprobe_operator.program_schema import crd_field
from netprobe_testbed.kube import wait_for
from node_agent.config import parse_config
from node_agent.programs import CATALOGUE, NAMES

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "netprobe.io", "v1alpha1", "networkprobes"
OPTIONS = {crd_field(o.name): o for spec in CATALOGUE.values() for o in spec.options}


@pytest.fixture(scope="module")
def probes_api(kube_api):
    """The CRD as committed (generated), applied as the installation applies it."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    extensions = client.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as e:
        if e.status != 409:
            raise
        current = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        crd["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(crd["metadata"]["name"], crd)

    def established():
        got = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or []))
    wait_for("NetworkProbe CRD Established", established, timeout=30)
    return client.CustomObjectsApi(kube_api)


def _body(programs: list[dict]) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NetworkProbe",
            "metadata": {"name": f"adm-{uuid.uuid4().hex[:8]}"}, "spec": {"programs": programs}}


def _refusal(api, programs: list[dict]) -> dict:
    with pytest.raises(ApiException) as refused:
        api.create_cluster_custom_object(GROUP, VERSION, PLURAL, _body(programs), dry_run="All")
    assert refused.value.status == 422, refused.value.body
    status = json.loads(refused.value.body)
    assert status["reason"] == "Invalid"
    return status


def _assert_names(status: dict, field: str, text: str) -> None:
    causes = status["details"]["causes"]
    assert any(c.get("field") == field and text in c.get("message", "") for c in causes), causes


@pytest.mark.parametrize("program", list(CATALOGUE))
def test_every_option_set_off_default_is_admitted_rendered_and_parsed(probes_api, program):
    spec = CATALOGUE[program]
    entry = {"name": program, **{crd_field(o.name): non_default(o) for o in spec.options}}
    body = _body([entry])
    stored = probes_api.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    try:
        assert stored["spec"]["programs"] == [entry]          # nothing pruned, nothing defaulted in
        text = render.render_agent_config(render.Probe(stored["metadata"]["name"], stored["metadata"]["uid"],
                                                       stored["spec"]))
        parsed = parse_config(text)                            # the agent's own parser
        assert parsed.programs[program] == {o.name: non_default(o) for o in spec.options}
        assert parsed.programs[program] != spec.defaults()
    finally:
        probes_api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, body["metadata"]["name"])


def _lacking():
    for program in NAMES:
        have = {crd_field(o.name) for o in CATALOGUE[program].options} if program in CATALOGUE else set()
        for field, option in OPTIONS.items():
            if field not in have:
                yield pytest.param(program, field, option, id=f"{program}-{field}")


@pytest.mark.parametrize("program, field, option", list(_lacking()))
def test_an_option_the_program_lacks_is_refused_naming_the_field(probes_api, program, field, option):
    status = _refusal(probes_api, [{"name": program, field: non_default(option)}])
    _assert_names(status, f"spec.programs[0].{field}", f"{field} is an option of")


def _out_of_range():
    for spec in CATALOGUE.values():
        for o in spec.options:
            field = crd_field(o.name)
            if o.choices:
                yield pytest.param(spec.name, field, "sideways", id=f"{spec.name}-{field}-choice")
            if o.min is not None:
                yield pytest.param(spec.name, field, o.type(o.min) - 1, id=f"{spec.name}-{field}-below")
            if o.max is not None:
                yield pytest.param(spec.name, field, o.type(o.max) + 1, id=f"{spec.name}-{field}-above")


@pytest.mark.parametrize("program, field, value", list(_out_of_range()))
def test_a_value_out_of_range_is_refused_naming_the_field(probes_api, program, field, value):
    status = _refusal(probes_api, [{"name": program, field: value}])
    _assert_names(status, f"spec.programs[0].{field}", "")


def test_a_choice_of_another_program_is_refused_naming_the_field(probes_api):
    """kprobe is an attach mode of rx_latency, not of tcp_rtt: the per-program rule says so."""
    status = _refusal(probes_api, [{"name": "tcp_rtt", "attach": "kprobe"}])
    _assert_names(status, "spec.programs[0].attach", "attach of tcp_rtt must be one of auto, tp_btf, raw_tracepoint, tracepoint")


def _wrong_types():
    wrong = {int: "lots", bool: "yes", str: 7}
    for spec in CATALOGUE.values():
        for o in spec.options:
            yield pytest.param(spec.name, crd_field(o.name), wrong[o.type], id=f"{spec.name}-{o.name}")


@pytest.mark.parametrize("program, field, value", list(_wrong_types()))
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(probes_api, program, field, value):
    status = _refusal(probes_api, [{"name": program, field: value}])
    _assert_names(status, f"spec.programs[0].{field}", "must be of type")
