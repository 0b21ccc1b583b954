"""The NetworkProbe CRD's schema, used by the pure tests the way the API server uses it.

The operator never re-implements the CRD's defaults: the API server applies
them. Tests that render without a server apply them here from the same CRD
file, so a default changed in the CRD is a default changed in the tests.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "networkprobes.netprobe.io.yaml"


def load_crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


def root_schema() -> dict:
    (version,) = load_crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(value, schema: dict):
    """Structural defaulting as the API server does it (defaults, then recurse)."""
    if isinstance(value, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(value[name], prop)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            known = set(schema.get("properties") or {})
            for key in list(value):
                if key not in known:
                    value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(item, schema["items"]) for item in value]
    return value


def defaulted_spec(spec: dict) -> dict:
    schema = root_schema()["properties"]["spec"]
    return apply_defaults(copy.deepcopy(spec), schema)


def non_default(option):
    """A valid value of an agent option (runtime.spec.Option) other than its default."""
    if option.choices:
        return next(c for c in reversed(option.choices) if c != option.default)
    if option.type is bool:
        return not option.default
    value = option.default + 1 if option.max is None or option.default + 1 <= option.max else option.default - 1
    return option.type(value)
