"""CRDs with a structural schema are validated by the API server at admission."""
import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from netprobe_testbed.kube import wait_for

pytestmark = pytest.mark.cluster

GROUP = "testbed.netprobe.io"


@pytest.fixture
def widget_crd(kube_api):
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    name = f"{plural}.{GROUP}"
    extensions = client.ApiextensionsV1Api(kube_api)
    extensions.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": f"W{plural}"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "mode": {"type": "string", "enum": ["fast", "slow"]},
                        },
                    }},
                }},
            }],
        },
    })

    def established():
        crd = extensions.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True"
                   for c in (crd.status.conditions or []))
    wait_for(f"CRD {name} to be Established", established, timeout=30)
    yield plural
    extensions.delete_custom_resource_definition(name)


def _create(kube_api, plural, spec):
    return client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, "v1", "default", plural,
        {"apiVersion": f"{GROUP}/v1", "kind": f"W{plural}",
         "metadata": {"name": f"w-{uuid.uuid4().hex[:8]}"}, "spec": spec})


def test_valid_object_is_accepted(kube_api, widget_crd):
    created = _create(kube_api, widget_crd, {"port": 8080, "mode": "fast"})
    assert created["spec"] == {"port": 8080, "mode": "fast"}


@pytest.mark.parametrize("spec, field", [
    ({"port": 70000}, "spec.port"),
    ({"port": "eighty"}, "spec.port"),
    ({"mode": "fast"}, "spec.port"),
    ({"port": 80, "mode": "warp"}, "spec.mode"),
])
def test_invalid_object_is_rejected_naming_the_field(kube_api, widget_crd, spec, field):
    with pytest.raises(ApiException) as refused:
        _create(kube_api, widget_crd, spec)
    assert refused.value.status == 422
    status = json.loads(refused.value.body)
    assert status["reason"] == "Invalid"
    assert field in status["message"]
    assert any(cause.get("field") == field for cause in status["details"]["causes"])
