"""The control plane answers and is the release pinned in hack/controlplane/go.mod."""
import json

import pytest
from kubernetes import client

from netprobe_testbed.cluster import pinned_kubernetes_version

pytestmark = pytest.mark.cluster


def test_readyz_answers_ok(control_plane):
    result = control_plane.kubectl("get", "--raw", "/readyz")
    assert result.stdout.strip() == "ok"


def test_kubectl_and_server_report_the_pinned_release(control_plane):
    pinned = pinned_kubernetes_version()
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitVersion"] == pinned
    major, minor = pinned.lstrip("v").split(".")[:2]
    assert (versions["serverVersion"]["major"], versions["serverVersion"]["minor"]) == (major, minor)


def test_python_client_sees_the_same_version(kube_api):
    info = client.VersionApi(kube_api).get_code()
    assert info.git_version == pinned_kubernetes_version()
