"""/metrics over TLS, with a bearer token checked per request, and the certificate
reloaded from its files without a restart (issue 15). The authorizer's real
TokenReview/SubjectAccessReview calls are proven against the real API server in
tests/e2e/test_secure_scrape.py; here a stand-in decides, so the server's
handling of each decision is tested exactly."""
from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from types import SimpleNamespace

import pytest
import requests
from cryptography import x509

from agent_harness import AgentProcess, Scrape
from netprobe_operator import certs
from netprobe_testbed.netns import wait_until
from netprobe_testbed.volumes import write_volume
from node_agent.auth import Decision, KubernetesAuthorizer
from node_agent.config import ConfigError, parse_config
from node_agent.server import Endpoint
from node_agent.tls import ServingCertificate, TLSConfigError

import test_endpoint as abuse

NAME = "netprobe-t.netprobe-system.svc"


class Pki:
    def __init__(self, directory):
        now = dt.datetime.now(dt.timezone.utc)
        self.ca, self.ca_key = certs.new_ca("test CA", now)
        self.dir = directory
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(self.ca)
        self.volume = directory / "tls"
        self.issue()

    def issue(self, names=(NAME,)) -> bytes:
        cert, key = certs.new_serving(self.ca, self.ca_key, list(names), dt.datetime.now(dt.timezone.utc))
        write_volume(self.volume, {"tls.crt": cert, "tls.key": key, "ca.crt": self.ca})
        return cert

    @property
    def cert_file(self):
        return str(self.volume / "tls.crt")

    @property
    def key_file(self):
        return str(self.volume / "tls.key")


def served_serial(port: int, ca_file, name: str = NAME) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


class StandIn:
    """Decides by token: 'good' allowed, 'nosy' authenticated but forbidden, anything else unknown."""

    def __init__(self):
        self.reviews = 0

    def cached(self, token):
        return None

    def review(self, token):
        self.reviews += 1
        return {"good": Decision(200, "allowed", "prom"),
                "nosy": Decision(403, "nosy may not get /metrics", "nosy")}.get(
            token, Decision(401, "the bearer token is not valid"))


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def endpoint(pki):
    made = []

    def make(**kw):
        tls = ServingCertificate(pki.cert_file, pki.key_file, check_every=0.1)
        ep = Endpoint("127.0.0.1", 0, lambda: b"up 1\n", lambda: (True, "ready"), tls=tls, **kw).start()
        made.append(ep)
        return ep
    yield make
    for ep in made:
        ep.shutdown()


def _url(ep, path="/metrics", scheme="https"):
    return f"{scheme}://127.0.0.1:{ep.port}{path}"


def _tls_socket(port: int, pki) -> ssl.SSLSocket:
    """A TLS connection to loopback that verifies the CA and the Service name, as Prometheus does."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=NAME)


def _get(tls: ssl.SSLSocket, path="/metrics", token=None, close=True) -> tuple[int, str, bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    conn = "Connection: close\r\n" if close else ""
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\n{auth}{conn}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(l.split(":")[1] for l in head.decode().split("\r\n") if l.lower().startswith("content-length")))
    while len(body) < length:
        body += tls.recv(65536)
    return int(head.split()[1]), head.decode(), body


def _https_port(port, pki, token=None, path="/metrics"):
    with _tls_socket(port, pki) as tls:
        return _get(tls, path, token)


def _https(ep, pki, token=None, path="/metrics"):
    return _https_port(ep.port, pki, token, path)


def test_tls_serves_metrics_and_plain_http_only_health(endpoint, pki):
    ep = endpoint()
    assert _https(ep, pki)[0] == 200
    plain = requests.get(_url(ep, scheme="http"), timeout=5)
    assert plain.status_code == 400 and "HTTPS" in plain.text
    for path in ("/healthz", "/readyz"):
        assert requests.get(_url(ep, path, scheme="http"), timeout=5).status_code == 200
        assert _https(ep, pki, path=path)[0] == 200


def test_a_client_trusting_another_ca_fails_the_handshake(endpoint, pki, tmp_path):
    ep = endpoint()
    other = tmp_path / "other-ca.crt"
    other.write_bytes(certs.new_ca("someone else", dt.datetime.now(dt.timezone.utc))[0])
    with pytest.raises(ssl.SSLCertVerificationError):
        served_serial(ep.port, other)
    with pytest.raises(ssl.SSLCertVerificationError):     # right CA, wrong name
        served_serial(ep.port, pki.ca_file, name="evil.example")
    wait_until(lambda: ep.dropped["tls_handshake"] == 2, timeout=5, what="both handshakes counted")


def test_bearer_token_decides(endpoint, pki):
    ep = endpoint(authorizer=StandIn())
    status, head, _ = _https(ep, pki)
    assert status == 401 and 'WWW-Authenticate: Bearer realm="netprobe"' in head
    assert _https(ep, pki, token="forged")[0] == 401
    status, _, body = _https(ep, pki, token="nosy")
    assert status == 403 and b"nosy may not get /metrics" in body
    assert _https(ep, pki, token="good") == (200, _https(ep, pki, token="good")[1], b"up 1\n")
    assert _https(ep, pki, path="/healthz")[0] == 200          # the probes need no token
    assert ep.requests[("/metrics", "401")] == 2 and ep.requests[("/metrics", "403")] == 1


def test_certificate_rotation_without_restart(endpoint, pki):
    ep = endpoint()
    first = served_serial(ep.port, pki.ca_file)
    with _tls_socket(ep.port, pki) as keep_alive:      # a scraper holding its connection open
        status, head, _ = _get(keep_alive, close=False)
        assert status == 200 and "Connection: close" not in head
        new = x509.load_pem_x509_certificate(pki.issue()).serial_number
        assert new != first
        wait_until(lambda: served_serial(ep.port, pki.ca_file) == new, timeout=5, what="the new certificate served")
        # the old session gets its answer, then is closed: its next scrape handshakes anew
        status, head, _ = _get(keep_alive, close=False)
        assert status == 200 and "Connection: close" in head
    assert ep.tls.reloads == 1 and ep.tls.reload_errors == 0


def test_a_broken_update_keeps_the_previous_certificate(endpoint, pki, caplog):
    ep = endpoint()
    first = served_serial(ep.port, pki.ca_file)
    other_key = certs.new_serving(pki.ca, pki.ca_key, [NAME], dt.datetime.now(dt.timezone.utc))[1]
    cert, _ = certs.new_serving(pki.ca, pki.ca_key, [NAME], dt.datetime.now(dt.timezone.utc))
    write_volume(pki.volume, {"tls.crt": cert, "tls.key": other_key, "ca.crt": pki.ca})   # a mismatched pair
    wait_until(lambda: ep.tls.reload_errors == 1 or served_serial(ep.port, pki.ca_file) is None,
               timeout=5, what="the broken pair refused")
    assert served_serial(ep.port, pki.ca_file) == first
    assert ep.tls.reload_errors == 1
    # fixed: loaded
    new = x509.load_pem_x509_certificate(pki.issue()).serial_number
    wait_until(lambda: served_serial(ep.port, pki.ca_file) == new, timeout=5, what="the fixed pair loaded")


def test_unusable_files_are_a_clear_startup_error(pki, tmp_path):
    with pytest.raises(TLSConfigError, match="cannot load .*missing.crt"):
        ServingCertificate(str(tmp_path / "missing.crt"), pki.key_file)


def test_config_refuses_a_token_over_plain_http():
    base = "resolver: {static: {file: /dev/null}}\n"
    with pytest.raises(ConfigError, match="authorization: needs tls"):
        parse_config(base + "authorization: {kubernetes: {}}\n")
    with pytest.raises(ConfigError, match="tls.key_file: required"):
        parse_config(base + "tls: {cert_file: a}\n")
    with pytest.raises(ConfigError, match="cache_seconds"):
        parse_config(base + "tls: {cert_file: a, key_file: b}\nauthorization: {kubernetes: {cache_seconds: -1}}\n")
    ok = parse_config(base + "tls: {cert_file: a, key_file: b}\nauthorization: {kubernetes: {cache_seconds: 5}}\n")
    assert ok.tls.cert_file == "a" and ok.authorization.cache_seconds == 5


def test_agent_over_tls_stays_bounded_under_abuse(tmp_path, pki):
    pods = tmp_path / "pods.yaml"
    pods.write_text("pods: []\n")
    agent = AgentProcess(tmp_path, {}, pods)
    agent.write_config(text=agent.config_text({}, tls={"cert_file": pki.cert_file, "key_file": pki.key_file}))
    agent.start(timeout=60)
    try:
        def scrape():
            status, _, body = _https_port(agent.port, pki)
            return SimpleNamespace(status_code=status, text=body.decode())
        figures = abuse.run_abuse(agent, tls_hello=abuse.client_hello(agent.port), scrape=scrape)
        abuse.check_abuse(agent, figures)
        assert figures["tls_abandoned"] > 0
        s = Scrape(scrape().text)
        assert s.value("netprobe_agent_http_connections_dropped_total", reason="evicted") > abuse.HALF_OPEN / 2
        assert s.value("netprobe_agent_http_connections_dropped_total", reason="tls_handshake") \
            + s.value("netprobe_agent_http_connections_dropped_total", reason="client_gone") > 0
        assert s.value("netprobe_agent_tls_certificate_expiry_timestamp_seconds") > 0
    finally:
        agent.stop()


# --- the authorizer's cache, with the API answered by stand-ins ---------------


class ReviewApi:
    """TokenReview/SubjectAccessReview stand-ins: 'good' may get /metrics, 'nosy' may not."""

    def __init__(self):
        self.calls, self.down = 0, False

    def create_token_review(self, body, _request_timeout):
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("API server down")
        token = body["spec"]["token"]
        user = SimpleNamespace(username=f"system:serviceaccount:m:{token}", uid="1", groups=["g"], extra=None)
        ok = token in ("good", "nosy")
        return SimpleNamespace(status=SimpleNamespace(authenticated=ok, user=user if ok else None, error=None))

    def create_subject_access_review(self, body, _request_timeout):
        self.calls += 1
        spec = body["spec"]
        assert spec["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"} and spec["groups"] == ["g"]
        return SimpleNamespace(status=SimpleNamespace(allowed=spec["user"].endswith(":good")))


def authorizer(cache_seconds) -> tuple[KubernetesAuthorizer, ReviewApi]:
    from kubernetes import client
    auth = KubernetesAuthorizer(client.ApiClient(client.Configuration()), cache_seconds=cache_seconds)
    api = ReviewApi()
    auth.authn = auth.authz = api
    return auth, api


def test_decisions_are_cached_per_token():
    auth, api = authorizer(60)
    assert auth.cached("good") is None
    assert auth.review("good").status == 200 and api.calls == 2
    assert auth.review("nosy").status == 403 and api.calls == 4
    assert auth.review("forged").status == 401 and api.calls == 5       # no access review for nobody
    assert [auth.cached(t).status for t in ("good", "nosy", "forged")] == [200, 403, 401]
    assert api.calls == 5


def test_an_unreachable_api_server_keeps_recently_allowed_tokens_only():
    auth, api = authorizer(0.05)
    assert auth.review("good").status == 200 and auth.review("nosy").status == 403
    time.sleep(0.1)
    assert auth.cached("good") is None                 # expired: asked again...
    api.down = True
    assert auth.review("good").status == 200           # ...the API is down: still allowed (stale)
    assert auth.review("nosy").status == 503           # a refusal is not turned into access
    assert auth.review("never-seen").status == 503
