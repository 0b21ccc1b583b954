"""Owner references to workload names."""
import pytest

from node_agent.resolver.kubernetes.api import ReplicaSetNotFound
from node_agent.resolver.kubernetes.pod_record import Owner, PodRecord, pod_record
from node_agent.resolver.kubernetes.workload import WorkloadNamer


class FakeReplicaSets:
    """Answers ReplicaSet owner lookups from a dict; counts calls."""

    def __init__(self, owners=None, error=None):
        self.owners = owners or {}
        self.error = error
        self.calls = []

    def __call__(self, namespace, name):
        self.calls.append((namespace, name))
        if self.error is not None:
            raise self.error
        if (namespace, name) not in self.owners:
            raise ReplicaSetNotFound(name)
        return self.owners[(namespace, name)]


def record(owner, namespace="shop", template_hash=""):
    return PodRecord(uid="u", namespace=namespace, name="p", ips=(), finished=False,
                     owner=owner, template_hash=template_hash)


def test_replicaset_pod_is_named_after_its_deployment_with_one_cached_lookup():
    rs = FakeReplicaSets({("shop", "cart-5d8f"): Owner("Deployment", "cart")})
    namer = WorkloadNamer(rs)
    for _ in range(3):
        assert namer.workload(record(Owner("ReplicaSet", "cart-5d8f"))) == "cart"
    assert rs.calls == [("shop", "cart-5d8f")]


def test_same_replicaset_name_in_two_namespaces_is_two_lookups():
    rs = FakeReplicaSets({("a", "web-1"): Owner("Deployment", "web"),
                          ("b", "web-1"): Owner("Deployment", "other")})
    namer = WorkloadNamer(rs)
    assert namer.workload(record(Owner("ReplicaSet", "web-1"), "a")) == "web"
    assert namer.workload(record(Owner("ReplicaSet", "web-1"), "b")) == "other"


def test_replicaset_without_owner_is_its_own_workload():
    namer = WorkloadNamer(FakeReplicaSets({("shop", "standalone"): None}))
    assert namer.workload(record(Owner("ReplicaSet", "standalone"))) == "standalone"


def test_replicaset_owned_by_another_controller_takes_that_name():
    namer = WorkloadNamer(FakeReplicaSets({("shop", "r-1"): Owner("Rollout", "canary")}))
    assert namer.workload(record(Owner("ReplicaSet", "r-1"))) == "canary"


def test_deleted_replicaset_falls_back_to_the_template_hash_suffix():
    namer = WorkloadNamer(FakeReplicaSets())
    assert namer.workload(record(Owner("ReplicaSet", "cart-5d8f"), template_hash="5d8f")) == "cart"
    assert namer.workload(record(Owner("ReplicaSet", "lonely"), template_hash="5d8f")) == "lonely"


def test_failed_lookup_guesses_counts_and_retries_after_the_pause():
    now = [100.0]
    rs = FakeReplicaSets(error=ConnectionError("refused"))
    namer = WorkloadNamer(rs, retry_after=60, clock=lambda: now[0])
    ref = record(Owner("ReplicaSet", "cart-5d8f"), template_hash="5d8f")
    assert namer.workload(ref) == "cart"
    assert namer.workload(ref) == "cart"
    assert len(rs.calls) == 1 and namer.errors == 1
    # The API is back and says something the guess could not know.
    rs.error = None
    rs.owners[("shop", "cart-5d8f")] = Owner("Deployment", "cart-v2")
    now[0] += 61
    assert namer.workload(ref) == "cart-v2"
    assert len(rs.calls) == 2


def test_cache_is_bounded_least_recently_used_first():
    rs = FakeReplicaSets({("shop", f"rs-{i}"): Owner("Deployment", f"d-{i}") for i in range(3)})
    namer = WorkloadNamer(rs, cache_size=2)
    for name in ("rs-0", "rs-1", "rs-0", "rs-2"):   # rs-1 is the least recently used
        namer.workload(record(Owner("ReplicaSet", name)))
    rs.calls.clear()
    namer.workload(record(Owner("ReplicaSet", "rs-0")))
    namer.workload(record(Owner("ReplicaSet", "rs-1")))
    assert rs.calls == [("shop", "rs-1")]


@pytest.mark.parametrize("owner,workload", [
    (Owner("StatefulSet", "db"), "db"),
    (Owner("DaemonSet", "fluentd"), "fluentd"),
    (Owner("ReplicationController", "legacy"), "legacy"),
    (Owner("Job", "backup-29345760"), "backup"),      # made by CronJob "backup"
    (Owner("Job", "migrate"), "migrate"),
    (Owner("Job", "build-42"), "build-42"),           # too short for a CronJob timestamp
    (Owner("Node", "node-a"), ""),                    # static (mirror) pod
    (Owner("SparkApplication", "etl"), "etl"),        # unknown controllers: their name
    (None, ""),                                       # bare pod
])
def test_other_owner_kinds_without_api_calls(owner, workload):
    rs = FakeReplicaSets()
    assert WorkloadNamer(rs).workload(record(owner)) == workload
    assert rs.calls == []


def test_from_a_pod_object(pod):
    namer = WorkloadNamer(FakeReplicaSets({("shop", "web-abc"): Owner("Deployment", "web")}))
    assert namer.workload(pod_record(pod("web-abc-x1", owner=("ReplicaSet", "web-abc")))) == "web"


def test_failures_are_remembered_within_the_same_bound(caplog):
    namer = WorkloadNamer(FakeReplicaSets(error=PermissionError("403")), cache_size=2)
    for i in range(5):
        namer.workload(record(Owner("ReplicaSet", f"rs-{i}")))
    assert namer.errors == 5 and len(namer._failed) == 2
    assert caplog.text.count("cannot read ReplicaSet") == 1   # rate-limited
