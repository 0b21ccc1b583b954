"""pytest fixtures for the test bed's control plane.

Enable with `pytest_plugins = ["netprobe_testbed.pytest_cluster"]` in tests/conftest.py.

Fixtures:
  control_plane  session-scoped ControlPlane (one per pytest session, shared by every
                 test that asks for it); fails, never skips, when `make controlplane`
                 has not been run.
  kube_api       kubernetes.client.ApiClient as admin (system:masters).
  sa_kubeconfig  factory: sa_kubeconfig(namespace, name) -> kubeconfig path that
                 authenticates as that ServiceAccount (TokenRequest), so a component
                 runs with exactly the rights its manifests grant.

When a test that used the control plane fails, the tail of each component's log is
attached to its report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from .cluster import BIN_DIR, COMPONENTS, ControlPlane, missing_binaries

LOG_LINES_ON_FAILURE = 25


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"the control plane is not built ({', '.join(missing)} missing from "
                    f"{BIN_DIR}): run `make controlplane`", pytrace=False)
    with ControlPlane() as cp:
        yield cp


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane):
    api = control_plane.api_client()
    yield api
    api.close()


@pytest.fixture(scope="session")
def sa_kubeconfig(control_plane: ControlPlane) -> Callable[[str, str], Path]:
    def kubeconfig_for(namespace: str, name: str) -> Path:
        return control_plane.kubeconfig_for(namespace, name)
    return kubeconfig_for


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    cp = getattr(item, "funcargs", {}).get("control_plane")
    if not isinstance(cp, ControlPlane) or cp.log_dir is None:
        return
    for component in COMPONENTS:
        tail = cp.log_tail(component, LOG_LINES_ON_FAILURE)
        if tail:
            report.sections.append((f"{component} log (last {LOG_LINES_ON_FAILURE} lines)", tail))
