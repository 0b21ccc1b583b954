"""A watch that goes silent (a load balancer dropped it without closing) is given up
and re-established, over a real HTTP connection to a server that stops talking."""
import http.server
import json
import threading
import time

import pytest
from kubernetes import client

from node_agent.resolver.base import normalize_ip
from node_agent.resolver.kubernetes.api import KubeApi
from node_agent.resolver.kubernetes.index import PodIndex
from node_agent.resolver.kubernetes.watch import Backoff, PodWatch
from node_agent.resolver.kubernetes.workload import WorkloadNamer


class SilentApiServer(http.server.ThreadingHTTPServer):
    """Answers the pod list with one pod, then accepts watches and never says a word."""

    daemon_threads = True

    def __init__(self, pod):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pod = pod
        self.watch_requests = []
        self.release = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if "watch=true" in self.path:
            self.server.watch_requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.server.release.wait(30)   # silent, connection kept open
            return
        body = json.dumps({"metadata": {"resourceVersion": "5"}, "items": [self.server.pod]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def silent_server(pod):
    server = SilentApiServer(pod("quiet", ips=["10.0.0.1"]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_silent_watch_is_given_up_and_reestablished(silent_server):
    api = KubeApi(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{silent_server.server_port}")))
    watch = PodWatch("cluster", api, PodIndex(60), WorkloadNamer(lambda ns, name: None),
                     backoff=Backoff(0.01, 0.02))
    # Server-side timeout 1 s (which this server ignores), client read timeout 1 s later.
    watch.watch_timeout_seconds = 1
    watch.read_slack_seconds = 1
    watch.start()
    try:
        assert watch.synced.wait(10)
        give_up = time.monotonic() + 20
        while len(silent_server.watch_requests) < 2 and time.monotonic() < give_up:
            time.sleep(0.1)
    finally:
        watch.stop()
    assert len(silent_server.watch_requests) >= 2, "the silent watch was never given up"
    assert all("resourceVersion=5" in path and "timeoutSeconds=1" in path
               for path in silent_server.watch_requests)
    assert watch.restarts["error"] >= 1
    assert watch.relists == 1      # resumed from its resourceVersion, no relist
    assert watch.index.lookup(normalize_ip("10.0.0.1"), 0).pod == "quiet"
