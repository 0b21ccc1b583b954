"""Shared fixtures for the operator tests."""
from __future__ import annotations

import pytest

from netprobe_operator import render, settings

import crd_schema


@pytest.fixture
def operator_settings() -> settings.OperatorSettings:
    return settings.OperatorSettings(namespace="netprobe-system",
                                     agent_image="registry.example/netprobe:test",
                                     agent_service_account="netprobe-agent")


@pytest.fixture
def render_probe(operator_settings):
    """render_probe(spec, name=...) -> RenderedSet, with the CRD's defaults applied first."""
    def _render(spec: dict, name: str = "demo", uid: str = "0000-uid") -> render.RenderedSet:
        probe = render.Probe(name=name, uid=uid, spec=crd_schema.defaulted_spec(spec))
        return render.render(probe, operator_settings)
    return _render
