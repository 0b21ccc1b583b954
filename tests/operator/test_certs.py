"""The operator's certificates: issued, kept, renewed, re-issued (no cluster:
the reconciler reads Secrets through a stand-in with only `get`)."""
from __future__ import annotations

import base64
import datetime as dt

from cryptography import x509

from netprobe_operator import certs, render, settings
from netprobe_operator.reconcile import ProbeSnapshot, Reconciler

import crd_schema

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
NAMES = render.service_dns_names("p", "netprobe-system")


class SecretStore:
    """Secrets as the API server would return them, written from rendered manifests."""

    def __init__(self):
        self.objects: dict[str, dict] = {}

    def get(self, kind, namespace, name):
        assert kind == "Secret" and namespace == "netprobe-system"
        return self.objects.get(name)

    def store(self, rendered: render.RenderedSet) -> None:
        for secret in rendered.by_kind("Secret"):
            self.objects[secret["metadata"]["name"]] = secret


def probe(uid="uid-1") -> ProbeSnapshot:
    return ProbeSnapshot("p", uid, 1, "", crd_schema.defaulted_spec({"programs": [{"name": "tcp_rtt"}]}), {})


def issue(reconciler, store, snap):
    certificates = reconciler._certificates(snap)
    store.store(render.render(render.Probe(snap.name, snap.uid, snap.spec), reconciler.config, certificates))
    return certificates


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def test_issued_once_then_kept_then_renewed_when_due():
    clock = [NOW]
    store = SecretStore()
    reconciler = Reconciler(store, settings.OperatorSettings(), clock=lambda: clock[0])
    first = issue(reconciler, store, probe())
    assert certs.serving_problem(first.cert, first.key, first.ca_cert, NAMES, NOW) is None
    assert issue(reconciler, store, probe()) == first            # a reconcile changes nothing
    clock[0] = NOW + dt.timedelta(days=250)                       # less than a third of a year left
    assert reconciler._renew_at["p"] <= clock[0]
    renewed = issue(reconciler, store, probe())
    assert renewed.ca_cert == first.ca_cert and serial(renewed.cert) != serial(first.cert)
    assert reconciler._renew_at["p"] > clock[0]


def test_deleted_serving_secret_is_reissued_from_the_same_ca():
    store = SecretStore()
    reconciler = Reconciler(store, settings.OperatorSettings(), clock=lambda: NOW)
    first = issue(reconciler, store, probe())
    del store.objects["netprobe-p-tls"]
    again = issue(reconciler, store, probe())
    assert again.ca_cert == first.ca_cert and again.key != first.key


def test_a_new_ca_brings_a_new_serving_certificate():
    store = SecretStore()
    reconciler = Reconciler(store, settings.OperatorSettings(), clock=lambda: NOW)
    first = issue(reconciler, store, probe())
    del store.objects["netprobe-p-ca"]
    again = issue(reconciler, store, probe())
    assert again.ca_cert != first.ca_cert
    assert certs.serving_problem(again.cert, again.key, again.ca_cert, NAMES, NOW) is None


def test_secrets_of_an_earlier_probe_of_the_same_name_are_not_reused():
    store = SecretStore()
    reconciler = Reconciler(store, settings.OperatorSettings(), clock=lambda: NOW)
    first = issue(reconciler, store, probe("uid-1"))
    again = reconciler._certificates(probe("uid-2"))
    assert again.ca_key != first.ca_key


def test_tampered_secret_is_replaced():
    store = SecretStore()
    reconciler = Reconciler(store, settings.OperatorSettings(), clock=lambda: NOW)
    first = issue(reconciler, store, probe())
    other_key = certs.new_serving(first.ca_cert, first.ca_key, NAMES, NOW)[1]
    store.objects["netprobe-p-tls"]["data"]["tls.key"] = base64.b64encode(other_key).decode()
    again = reconciler._certificates(probe())
    assert certs.serving_problem(again.cert, again.key, again.ca_cert, NAMES, NOW) is None
    assert serial(again.cert) != serial(first.cert)


def test_the_periodic_check_reconciles_only_probes_that_are_due(monkeypatch):
    store = SecretStore()
    bodies = [{"metadata": {"name": n, "uid": f"uid-{n}", "generation": 1},
               "spec": crd_schema.defaulted_spec({"programs": [{"name": "tcp_rtt"}]})} for n in ("p", "q")]
    store.list = lambda kind: bodies if kind == "NetworkProbe" else []
    reconciler = Reconciler(store, settings.OperatorSettings(), clock=lambda: NOW)
    reconciled = []
    monkeypatch.setattr(reconciler, "reconcile", lambda snap, others: reconciled.append(
        (snap.name, sorted(o.name for o in others))))
    assert reconciler.renew_due() == [] and reconciled == []         # nothing issued yet: nothing due
    reconciler._renew_at.update({"p": NOW - dt.timedelta(days=1), "q": NOW + dt.timedelta(days=1)})
    assert reconciler.renew_due() == ["p"]
    assert reconciled == [("p", ["p", "q"])]      # with every probe, for the port-conflict check
