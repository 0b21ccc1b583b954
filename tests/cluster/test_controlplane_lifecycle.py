"""Starting and stopping control planes: speed, restarts and a clean slate after stop."""
import socket

import pytest
from kubernetes import client

from netprobe_testbed import cluster
from netprobe_testbed.cluster import COMPONENTS, ControlPlane, ControlPlaneError, process_running

pytestmark = pytest.mark.cluster


def test_session_control_plane_started_within_a_minute(control_plane):
    assert control_plane.start_seconds is not None
    assert control_plane.start_seconds < 60, f"start took {control_plane.start_seconds:.1f}s"


def test_separate_control_plane_restarts_apiserver_and_leaves_nothing_behind():
    cp = ControlPlane()
    with cp:
        assert cp.start_seconds < 60, f"start took {cp.start_seconds:.1f}s"
        workdir, pids = cp.workdir, cp.running_pids()
        assert sorted(pids) == sorted(COMPONENTS)
        assert workdir.is_dir() and cp.kubeconfig.is_file()

        cp.kubectl("create", "configmap", "survivor", "--from-literal=k=v")
        api = cp.api_client()
        core = client.CoreV1Api(api)

        cp.stop_apiserver()
        assert "kube-apiserver" not in cp.running_pids()
        refused = cp.kubectl("get", "configmaps", check=False, timeout=30)
        assert refused.returncode != 0
        cp.start_apiserver()
        with pytest.raises(ControlPlaneError, match="already running"):
            cp.start_apiserver()

        # Same port, certificates and etcd: the existing client and data carry on.
        assert core.read_namespaced_config_map("survivor", "default").data == {"k": "v"}
        api.close()

    assert not workdir.exists()
    assert cp.workdir is None and cp.running_pids() == {}
    leftover = {name: pid for name, pid in pids.items() if process_running(pid)}
    assert leftover == {}


def test_using_a_control_plane_not_started_is_a_clear_error():
    cp = ControlPlane()
    with pytest.raises(ControlPlaneError, match="not started"):
        cp.kubectl("get", "pods")


def test_non_empty_workdir_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ControlPlaneError, match="not empty"):
        ControlPlane(workdir=tmp_path).start()
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_start_moves_on_when_a_picked_port_is_taken_meanwhile(monkeypatch):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    picks = []

    def first_pick_includes_a_taken_port(count):
        ports = real_pick(count)
        if not picks:
            ports[0] = squatter.getsockname()[1]   # etcd's client port
        picks.append(ports)
        return ports
    real_pick = cluster.free_ports
    monkeypatch.setattr(cluster, "free_ports", first_pick_includes_a_taken_port)
    try:
        with ControlPlane() as cp:
            assert len(picks) == 2
            assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        squatter.close()
