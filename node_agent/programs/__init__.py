"""The program catalogue: one module per program, each exporting SPEC.

Adding a program = bpf/<name>.c + node_agent/programs/<name>.py with a
ProgramSpec named SPEC + its name in _MODULES.
"""
from __future__ import annotations

import importlib

from node_agent.runtime.spec import ProgramSpec

# Names are final: they are the NetworkProbe CRD's enum.
_MODULES = ("tcp_retransmit", "tcp_connections", "tcp_rtt", "rx_latency")


def _load() -> dict[str, ProgramSpec]:
    specs = {}
    for module in _MODULES:
        spec = importlib.import_module(f"{__name__}.{module}").SPEC
        assert spec.name == module, f"{module}.SPEC is named {spec.name}"
        specs[spec.name] = spec
    return specs


CATALOGUE: dict[str, ProgramSpec] = _load()
