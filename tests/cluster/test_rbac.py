"""RBAC is enforced: a ServiceAccount has exactly the rights bound to it."""
import json
import uuid

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from netprobe_testbed.cluster import ControlPlaneError
from netprobe_testbed.kube import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(kube_api):
    name = f"rbac-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def service_account(kube_api, namespace):
    client.CoreV1Api(kube_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "reader"}})
    return "reader"


def _list_configmaps_status(kubeconfig, namespace):
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        client.CoreV1Api(api).list_namespaced_config_map(namespace)
        return 200
    except ApiException as error:
        return error.status
    finally:
        api.close()


def test_unbound_service_account_is_forbidden(control_plane, namespace, service_account,
                                              sa_kubeconfig):
    kubeconfig = sa_kubeconfig(namespace, service_account)
    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json",
                                              kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == \
        f"system:serviceaccount:{namespace}:{service_account}"
    assert _list_configmaps_status(kubeconfig, namespace) == 403
    result = control_plane.kubectl("get", "configmaps", "-n", namespace,
                                   kubeconfig=kubeconfig, check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    assert f"system:serviceaccount:{namespace}:{service_account}" in result.stderr


def test_role_binding_grants_exactly_its_verbs(control_plane, kube_api, namespace,
                                               service_account, sa_kubeconfig):
    kubeconfig = sa_kubeconfig(namespace, service_account)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader-reads-configmaps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": service_account,
                      "namespace": namespace}],
    })
    # The authorizer learns of the binding through its informers, a moment later.
    wait_for("the RoleBinding to take effect",
             lambda: _list_configmaps_status(kubeconfig, namespace) == 200, timeout=30)

    listed = control_plane.kubectl("get", "configmaps", "-n", namespace, "-o", "name",
                                   kubeconfig=kubeconfig)
    assert "configmap/kube-root-ca.crt" in listed.stdout.split()
    # Only what the Role says: no create, no secrets, nothing in other namespaces.
    for args in (("create", "configmap", "x", "-n", namespace),
                 ("get", "secrets", "-n", namespace),
                 ("get", "configmaps", "-n", "default")):
        refused = control_plane.kubectl(*args, kubeconfig=kubeconfig, check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), args


def test_token_for_a_missing_service_account_is_a_clear_error(control_plane, namespace):
    with pytest.raises(ControlPlaneError, match=f"{namespace}/nobody failed \\(404\\)"):
        control_plane.token_for(namespace, "nobody")
