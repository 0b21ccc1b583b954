"""The exact requests KubeApi sends: a misspelt query parameter is silently ignored
by the API server (no server-side watch timeout, no bookmarks), so pin them here."""
import json
import urllib.parse

import pytest
from kubernetes import client

from node_agent.resolver.kubernetes.api import ApiStatusError, KubeApi, ReplicaSetNotFound
from node_agent.resolver.kubernetes.pod_record import Owner


class Reply:
    def __init__(self, status=200, body=b"{}", reason="OK"):
        self.status, self.reason, self.data = status, reason, body
        self.released = False

    def read(self):
        return self.data

    def release_conn(self):
        self.released = True


class RecordingPool:
    def __init__(self, *replies):
        self.replies = list(replies)
        self.requests = []

    def request(self, method, url, **kwargs):
        self.requests.append((method, url, kwargs))
        return self.replies.pop(0)


def api_with(*replies, token="s3cret"):
    configuration = client.Configuration(host="https://api.test:6443")
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api_client = client.ApiClient(configuration)
    pool = RecordingPool(*replies)
    api_client.rest_client.pool_manager = pool
    return KubeApi(api_client), pool


def query(url):
    parsed = urllib.parse.urlsplit(url)
    return parsed.path, dict(urllib.parse.parse_qsl(parsed.query))


def test_watch_request_asks_for_bookmarks_a_server_timeout_and_resumes():
    api, pool = api_with(Reply())
    api.watch_pods(field_selector="spec.nodeName=n1", resource_version="42", timeout_seconds=270,
                   timeout=(5, 300))
    method, url, kwargs = pool.requests[0]
    assert method == "GET"
    assert url.startswith("https://api.test:6443/api/v1/pods?")
    assert query(url) == ("/api/v1/pods", {"watch": "true", "allowWatchBookmarks": "true",
                                           "fieldSelector": "spec.nodeName=n1",
                                           "resourceVersion": "42", "timeoutSeconds": "270"})
    assert kwargs["headers"]["authorization"] == "Bearer s3cret"
    assert kwargs["preload_content"] is False
    assert (kwargs["timeout"].connect_timeout, kwargs["timeout"].read_timeout) == (5, 300)


def test_list_request_pages_and_omits_unset_parameters():
    page = {"metadata": {"resourceVersion": "7"}, "items": []}
    api, pool = api_with(Reply(body=json.dumps(page).encode()), Reply(body=json.dumps(page).encode()))
    assert api.list_pods(field_selector=None, limit=100, continue_token=None, timeout=(5, 60)) == page
    api.list_pods(field_selector=None, limit=100, continue_token="tok", timeout=(5, 60))
    assert query(pool.requests[0][1]) == ("/api/v1/pods", {"limit": "100"})
    assert query(pool.requests[1][1]) == ("/api/v1/pods", {"limit": "100", "continue": "tok"})


def test_replicaset_owner_read():
    rs = {"metadata": {"ownerReferences": [{"kind": "Deployment", "name": "cart", "controller": True}]}}
    api, pool = api_with(Reply(body=json.dumps(rs).encode()), Reply(404, b"{}", "Not Found"))
    assert api.replicaset_owner("shop", "cart-5d8f") == Owner("Deployment", "cart")
    assert query(pool.requests[0][1]) == ("/apis/apps/v1/namespaces/shop/replicasets/cart-5d8f", {})
    with pytest.raises(ReplicaSetNotFound):
        api.replicaset_owner("shop", "gone")


def test_error_status_carries_the_servers_message():
    body = json.dumps({"kind": "Status", "message": 'pods is forbidden: User "x" cannot list'}).encode()
    reply = Reply(403, body, "Forbidden")
    api, _ = api_with(reply)
    with pytest.raises(ApiStatusError, match="HTTP 403 Forbidden: pods is forbidden") as error:
        api.list_pods(field_selector=None, limit=1, continue_token=None, timeout=(1, 1))
    assert error.value.status == 403 and reply.released
