"""Shared fixtures for the operator tests."""
from __future__ import annotations

import datetime as dt

import pytest

from netprobe_operator import certs, render, settings

import crd_schema


@pytest.fixture
def operator_settings() -> settings.OperatorSettings:
    return settings.OperatorSettings(namespace="netprobe-system",
                                     agent_image="registry.example/netprobe:test",
                                     agent_service_account="netprobe-agent")


NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="session")
def certificates() -> render.Certificates:
    """Issued once, as the reconciler would for probe "demo" (names are not checked by render)."""
    ca_cert, ca_key = certs.new_ca("netprobe demo metrics CA", NOW)
    cert, key = certs.new_serving(ca_cert, ca_key, render.service_dns_names("demo", "netprobe-system"), NOW)
    return render.Certificates(ca_cert, ca_key, cert, key)


@pytest.fixture
def render_probe(operator_settings, certificates):
    """render_probe(spec, name=...) -> RenderedSet, with the CRD's defaults applied first."""
    def _render(spec: dict, name: str = "demo", uid: str = "0000-uid") -> render.RenderedSet:
        probe = render.Probe(name=name, uid=uid, spec=crd_schema.defaulted_spec(spec))
        return render.render(probe, operator_settings, certificates)
    return _render
