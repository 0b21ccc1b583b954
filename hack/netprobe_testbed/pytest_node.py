"""pytest fixtures for a real node (containerd + kubelet) and the image built by `make image`.

Enable with `pytest_plugins = ["netprobe_testbed.pytest_node"]` (tests/conftest.py does).

Fixtures:
  netprobe_image  (archive path, image reference) of `make image`'s bin/netprobe-image.tar;
                  fails, never skips, when it has not been built.
  real_cluster    session-scoped (ControlPlane(real_nodes=True), RealNode) with the
                  netprobe image and a busybox image imported; fails with what is missing
                  when this machine cannot run a node. The host is restored on exit.

When a test that used the real node fails, the tails of the kubelet's and containerd's
logs, and of every netprobe-system container's log, are attached to its report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .cluster import BIN_DIR, REPO_ROOT, ControlPlane, missing_binaries
from .node import PACKAGES_HINT, RealNode, missing_prerequisites

IMAGE_ARCHIVE = REPO_ROOT / "bin" / "netprobe-image.tar"
IMAGE_REF = REPO_ROOT / "bin" / "netprobe-image.ref"
LOG_LINES_ON_FAILURE = 40
AGENT_NAMESPACE = "netprobe-system"   # the operator's and the agents' pods


@pytest.fixture(scope="session")
def netprobe_image() -> tuple[Path, str]:
    if not IMAGE_ARCHIVE.exists() or not IMAGE_REF.is_file():
        pytest.fail(f"the netprobe image is not built ({IMAGE_ARCHIVE} missing): run `make image`",
                    pytrace=False)
    return IMAGE_ARCHIVE.resolve(), IMAGE_REF.read_text().strip()


@pytest.fixture(scope="session")
def real_cluster(netprobe_image) -> Iterator[tuple[ControlPlane, RealNode]]:
    missing = missing_binaries() + [m for m in missing_prerequisites() if m not in missing_binaries()]
    if missing:
        pytest.fail(f"this machine cannot run a real node; missing: {'; '.join(missing)}. "
                    f"{PACKAGES_HINT}; `make controlplane` builds the binaries into {BIN_DIR}",
                    pytrace=False)
    archive, _ref = netprobe_image
    with ControlPlane(real_nodes=True) as cp:
        with RealNode(cp, images=[archive], labels={"netprobe.test/real-node": "true"}) as node:
            yield cp, node


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    pair = getattr(item, "funcargs", {}).get("real_cluster")
    if not pair:
        return
    node = pair[1]
    for which in ("kubelet", "containerd"):
        report.sections.append((f"{which} log (last {LOG_LINES_ON_FAILURE} lines)",
                                node.log_tail(which, LOG_LINES_ON_FAILURE)))
    for name, tail in node.container_log_tails(AGENT_NAMESPACE, LOG_LINES_ON_FAILURE).items():
        report.sections.append((f"{AGENT_NAMESPACE} container {name} (last {LOG_LINES_ON_FAILURE} lines)", tail))
