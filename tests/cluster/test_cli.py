"""`python -m netprobe_testbed.cluster up|down`: the by-hand entry point (make cluster-up)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netprobe_testbed.cluster import BIN_DIR

pytestmark = pytest.mark.cluster


def _cluster(*args, env):
    return [sys.executable, "-m", "netprobe_testbed.cluster", *args]


def test_up_serves_until_down_then_cleans_up(tmp_path):
    env = {**os.environ, "NETPROBE_CLUSTER_STATE": str(tmp_path / "state.json")}
    workdir = tmp_path / "cp"
    up = subprocess.Popen(_cluster("up", "--workdir", str(workdir), env=env), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = []
        for line in up.stdout:
            printed.append(line)
            if line.startswith("Ctrl-C"):
                break
        output = "".join(printed)
        export = re.search(r"export KUBECONFIG=(\S+)", output)
        assert export, output
        kubeconfig = Path(export.group(1))
        assert kubeconfig.is_relative_to(workdir)

        namespaces = subprocess.run([BIN_DIR / "kubectl", "--kubeconfig", kubeconfig,
                                     "get", "namespace", "default", "-o", "name"],
                                    capture_output=True, text=True, check=True)
        assert namespaces.stdout.strip() == "namespace/default"
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["pid"] == up.pid

        # A second `up` refuses rather than starting another one.
        again = subprocess.run(_cluster("up", env=env), env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 1 and "already up" in again.stderr

        down = subprocess.run(_cluster("down", env=env), env=env, capture_output=True,
                              text=True, timeout=90)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
        assert "stopped" in up.stdout.read()
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)
    assert not workdir.exists()
    assert not (tmp_path / "state.json").exists()

    nothing = subprocess.run(_cluster("down", env=env), env=env, capture_output=True,
                             text=True, timeout=60)
    assert nothing.returncode == 0 and "no control plane is up" in nothing.stdout
