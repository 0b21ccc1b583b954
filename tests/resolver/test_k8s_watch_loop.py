"""The list+watch loop against a scripted API: pagination, resume, 410, outages.

The fake stands in for CoreV1Api's one method the watch uses and returns
response objects with the urllib3 surface the loop reads (data, stream,
release_conn); everything above that is the real code.
"""
import json

import pytest

from node_agent.resolver.base import PodRef, normalize_ip
from node_agent.resolver.kubernetes.api import ApiStatusError
from node_agent.resolver.kubernetes.index import PodIndex
from node_agent.resolver.kubernetes.watch import Backoff, PodWatch, WatchExpired, response_lines
from node_agent.resolver.kubernetes.workload import WorkloadNamer


class FakeResponse:
    def __init__(self, data=b"", chunks=()):
        self.data = data
        self.chunks = list(chunks)
        self.released = False

    def stream(self, amt=None, decode_content=True):
        yield from self.chunks

    def release_conn(self):
        self.released = True

    def shutdown(self):
        pass


class ScriptedApi:
    """Plays a script, one step per list_pods / watch_pods call (KubeApi's surface).

    A step is ("list", page dict), ("watch", [chunks]), (kind, exception), or
    (kind, callable(kwargs) -> one of those) to look at the loop's state at
    that moment. When the script is over, the watch is stopped.
    """

    def __init__(self, *steps):
        self.steps = list(steps)
        self.calls = []
        self.responses = []
        self.watch = None

    def list_pods(self, **kwargs):
        return self._play("list", kwargs)

    def watch_pods(self, **kwargs):
        return self._play("watch", kwargs)

    def _play(self, kind, kwargs):
        self.calls.append(dict(kwargs, kind=kind))
        if not self.steps:
            self.watch.stop()
            raise ConnectionError("end of script")
        expected, payload = self.steps.pop(0)
        assert kind == expected, (kind, expected, kwargs)
        if callable(payload):
            payload = payload(kwargs)
        if isinstance(payload, BaseException):
            raise payload
        if kind == "list":
            return json.loads(json.dumps(payload))
        response = FakeResponse(chunks=payload)
        self.responses.append(response)
        return response


def page(items, resource_version, cont=None):
    metadata = {"resourceVersion": resource_version}
    if cont:
        metadata["continue"] = cont
    return {"kind": "PodList", "metadata": metadata, "items": items}


def stream(*events, chunk=7):
    """Events as the server streams them, cut at awkward places."""
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    return [body[i:i + chunk] for i in range(0, len(body), chunk)]


def event(kind, obj):
    return {"type": kind, "object": obj}


def bookmark(resource_version):
    return event("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": resource_version}})


def gone():
    return event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})


def make_watch(core, selector=None):
    watch = PodWatch("cluster", core, PodIndex(60), WorkloadNamer(lambda ns, name: None),
                     field_selector=selector, backoff=Backoff(0.001, 0.002))
    core.watch = watch
    return watch


def resolved(watch, address):
    ref = watch.index.lookup(normalize_ip(address), 0)
    return ref.pod if ref else None


def test_relist_reads_every_page_and_remembers_the_resource_version(pod):
    core = ScriptedApi(("list", page([pod("a", ips=["10.0.0.1"])], "10", cont="next-1")),
                        ("list", page([pod("b", ips=["10.0.0.2"])], "10")))
    watch = make_watch(core, selector="spec.nodeName=node-a")
    watch.relist()
    assert [c["continue_token"] for c in core.calls] == [None, "next-1"]
    assert all(c["limit"] == PodWatch.page_size and c["field_selector"] == "spec.nodeName=node-a"
               for c in core.calls)
    assert (resolved(watch, "10.0.0.1"), resolved(watch, "10.0.0.2")) == ("a", "b")
    assert watch.resource_version == "10" and watch.synced.is_set() and watch.relists == 1
    assert watch.last_sync_time > 0


def test_expired_continuation_starts_the_list_again(pod):
    core = ScriptedApi(("list", page([pod("a", ips=["10.0.0.1"])], "10", cont="c")),
                        ("list", ApiStatusError(410, "Gone")),
                        ("list", page([pod("b", ips=["10.0.0.2"])], "12")))
    watch = make_watch(core)
    watch.relist()
    assert [c["continue_token"] for c in core.calls] == [None, "c", None]
    # Only the complete, consistent list counts: "a" was in the abandoned one.
    assert (resolved(watch, "10.0.0.1"), resolved(watch, "10.0.0.2")) == (None, "b")
    assert watch.resource_version == "12"


def test_watch_applies_events_resumes_from_the_last_version_and_sets_timeouts(pod):
    a = pod("a", ips=["10.0.0.1"], resource_version="11")
    moved = dict(a, status={"phase": "Running", "podIPs": [{"ip": "10.0.0.9"}]},
                 metadata=dict(a["metadata"], resourceVersion="12"))
    core = ScriptedApi(("watch", stream(event("ADDED", a), event("MODIFIED", moved), bookmark("15"))))
    watch = make_watch(core)
    watch.resource_version = "10"
    watch.watch_once()
    call = core.calls[0]
    assert call["resource_version"] == "10"
    connect, read = call["timeout"]
    assert 0 < call["timeout_seconds"] <= PodWatch.watch_timeout_seconds
    assert read > call["timeout_seconds"]   # a silent connection is given up, not waited on forever
    assert (resolved(watch, "10.0.0.1"), resolved(watch, "10.0.0.9")) == (None, "a")
    assert watch.resource_version == "15"
    assert core.responses[0].released


def test_deleted_event_keeps_the_pod_for_the_grace(pod):
    a = pod("a", ips=["10.0.0.1"])
    core = ScriptedApi(("watch", stream(event("ADDED", a), event("DELETED", a))))
    watch = make_watch(core)
    watch.resource_version = "1"
    watch.watch_once()
    assert watch.index.counts(0) == (0, 1)
    assert watch.index.lookup(normalize_ip("10.0.0.1"), 59) == PodRef("shop", "a")


def test_error_event_410_means_relist():
    core = ScriptedApi(("watch", stream(gone())))
    watch = make_watch(core)
    watch.resource_version = "5"
    with pytest.raises(WatchExpired):
        watch.watch_once()


def test_malformed_pod_is_skipped_not_fatal(pod):
    broken = {"metadata": {"name": "no-uid", "resourceVersion": "3"}}
    core = ScriptedApi(("watch", stream(event("ADDED", broken), event("ADDED", pod("ok", ips=["10.0.0.3"])))))
    watch = make_watch(core)
    watch.resource_version = "1"
    watch.watch_once()
    assert resolved(watch, "10.0.0.3") == "ok"


def test_the_loop_through_expiry_and_an_outage(pod):
    seen = {}

    def while_down(kwargs):
        seen["stale_during_outage"] = watch.stale
        seen["still_served_during_outage"] = resolved(watch, "10.0.0.2")
        return ConnectionRefusedError("connection refused")

    def after_outage(kwargs):
        seen["resumed_from"] = kwargs["resource_version"]
        return stream(event("ADDED", pod("c", ips=["10.0.0.3"], resource_version="31")))

    b = pod("b", ips=["10.0.0.2"], resource_version="11")
    core = ScriptedApi(
        ("list", page([pod("a", ips=["10.0.0.1"])], "10")),
        ("watch", stream(event("ADDED", b))),
        ("watch", ApiStatusError(410, "Gone")),       # resourceVersion 11 too old
        ("list", page([b], "30")),
        ("watch", ConnectionRefusedError("connection refused")),  # API server down
        ("watch", while_down),
        ("watch", after_outage),
    )
    watch = make_watch(core)
    watch.run()
    assert seen == {"stale_during_outage": True, "still_served_during_outage": "b", "resumed_from": "30"}
    assert [c["kind"] for c in core.calls[:4]] == ["list", "watch", "watch", "list"]
    assert core.calls[4]["resource_version"] == "30"
    assert not watch.stale
    assert resolved(watch, "10.0.0.3") == "c"
    # "a" vanished while the watch was expired: the relist departed it.
    assert watch.index.counts(0) == (2, 1)
    assert watch.relists == 2
    assert watch.restarts["expired"] == 1
    assert watch.restarts["closed"] == 2
    assert watch.restarts["error"] >= 2


def test_forbidden_is_logged_as_missing_rbac(caplog):
    core = ScriptedApi(("list", ApiStatusError(403, "Forbidden")))
    watch = make_watch(core)
    watch.run()
    assert watch.stale and not watch.synced.is_set()
    assert "needs list and watch on pods" in caplog.text


def test_lines_are_reassembled_across_chunks():
    response = FakeResponse(chunks=[b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}'])
    assert [json.loads(line) for line in response_lines(response)] == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_backoff_grows_to_its_cap_and_resets():
    backoff = Backoff(1, 8)
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(0.5 * cap <= d <= cap for d, cap in zip(delays, [1, 2, 4, 8, 8, 8]))
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_list_without_resource_version_is_an_error_not_a_silent_gap(pod):
    core = ScriptedApi(("list", {"metadata": {}, "items": [pod("a", ips=["10.0.0.1"])]}))
    watch = make_watch(core)
    with pytest.raises(ValueError, match="resourceVersion"):
        watch.relist()
    assert not watch.synced.is_set()
