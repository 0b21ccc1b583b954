"""The program catalogue: the one description everything else is derived from.

One module per implemented program, each exporting SPEC (a ProgramSpec:
options, attach strategies, maps, key fields, metrics). The agent's config
parser and runtime, the operator's CRD schema (crdgen), its rendering of
options, its lists of programs and metrics, the tests, the demo, doctor and
bench all read it; nothing here imports bcc, so the operator can too.

Adding a program = bpf/<name>.c + node_agent/programs/<name>.py with a
ProgramSpec named SPEC + its name in _MODULES (docs/architecture.md).
"""
from __future__ import annotations

import importlib

from node_agent.runtime.spec import ProgramSpec

# Implemented programs, in the order they are listed and loaded.
_MODULES = ("tcp_retransmit", "tcp_connections", "tcp_rtt", "rx_latency", "drops", "dns")

# The rest of the v1 catalogue: valid names in a NetworkProbe today (the
# operator reports them as not implemented yet), with no options.
PLANNED: dict[str, str] = {
    "xdp": "packets at the driver and SYN-flood detection",
    "flows": "bytes and packets per peer",
}


def _load() -> dict[str, ProgramSpec]:
    specs = {}
    for module in _MODULES:
        spec = importlib.import_module(f"{__name__}.{module}").SPEC
        assert spec.name == module, f"{module}.SPEC is named {spec.name}"
        assert module not in PLANNED, f"{module} is both implemented and planned"
        specs[spec.name] = spec
    return specs


CATALOGUE: dict[str, ProgramSpec] = _load()

# Every program name (the CRD's enum), implemented ones first.
NAMES: tuple[str, ...] = tuple(CATALOGUE) + tuple(PLANNED)


def summary(name: str) -> str:
    return CATALOGUE[name].summary if name in CATALOGUE else PLANNED[name]
