"""The garbage collector deletes dependents whose owner is gone."""
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from netprobe_testbed.kube import wait_for

pytestmark = pytest.mark.cluster


def _exists(core, name):
    try:
        core.read_namespaced_config_map(name, "default")
        return True
    except ApiException as error:
        if error.status == 404:
            return False
        raise


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_owner_removes_dependent(kube_api, propagation):
    core = client.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:8]
    owner = core.create_namespaced_config_map(
        "default", {"metadata": {"name": f"owner-{suffix}"}})
    dependent = f"dependent-{suffix}"
    bystander = f"bystander-{suffix}"
    core.create_namespaced_config_map("default", {"metadata": {
        "name": dependent,
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                             "name": owner.metadata.name, "uid": owner.metadata.uid}],
    }})
    core.create_namespaced_config_map("default", {"metadata": {"name": bystander}})

    core.delete_namespaced_config_map(owner.metadata.name, "default",
                                      propagation_policy=propagation)
    wait_for(f"the garbage collector to delete {dependent}",
             lambda: not _exists(core, dependent), timeout=60)
    assert not _exists(core, owner.metadata.name)
    assert _exists(core, bystander)
    core.delete_namespaced_config_map(bystander, "default")
