"""The NetworkProbe's program options, derived from the agent's catalogue.

One naming rule, applied everywhere: an agent option `snake_case` is the
NetworkProbe field `camelCase` (max_entries <-> maxEntries). From it and the
catalogue come the CRD's spec.programs.items schema (crdgen writes it into
crds/) and the rendering of a probe's program entry into the agent config
(agent_options, used by templates/agent-config.yaml.j2).

The schema is one object for every program: each option field once, typed,
with the widest bounds any program gives it, and described per program
(`kubectl explain networkprobe.spec.programs` shows it all). CEL rules
(x-kubernetes-validations, each with the field's path) then refuse at
admission what holds for some programs only: an option the named program
lacks, and a program's narrower bounds or choices. Per-program defaults are
the agent's: the schema names them but does not apply them (a schema default
would land on every program's entry).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from node_agent.programs import CATALOGUE, NAMES, summary
from node_agent.runtime.spec import Option

_TYPES = {int: "integer", bool: "boolean", str: "string", float: "number"}


def crd_field(option: str) -> str:
    """agent option -> NetworkProbe field: max_entries -> maxEntries."""
    head, *rest = option.split("_")
    return head + "".join(part.capitalize() for part in rest)


def agent_option(field: str) -> str:
    """NetworkProbe field -> agent option: maxEntries -> max_entries."""
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), field)


def agent_options(program: Mapping[str, Any]) -> dict[str, Any]:
    """A spec.programs entry as the agent config's options: every field but name, renamed."""
    return {agent_option(k): v for k, v in program.items() if k != "name"}


def _options() -> dict[str, list[tuple[str, Option]]]:
    """option name -> [(program, its Option)], in catalogue order."""
    by_name: dict[str, list[tuple[str, Option]]] = {}
    for spec in CATALOGUE.values():
        for opt in spec.options:
            if agent_option(crd_field(opt.name)) != opt.name:
                raise ValueError(f"{spec.name}.{opt.name}: not a snake_case name the camelCase rule round-trips")
            by_name.setdefault(opt.name, []).append((spec.name, opt))
    for name, pairs in by_name.items():
        types = {o.type for _, o in pairs}
        if len(types) != 1:
            raise ValueError(f"option {name} has different types in {', '.join(p for p, _ in pairs)}")
    return by_name


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _number(v: float, t: type) -> int | float:
    return int(v) if t is int else float(v)


def _shared(pairs, describe) -> str:
    """One text when every program says the same, else one per program."""
    texts = [(p, describe(o)) for p, o in pairs]
    if len({t for _, t in texts}) == 1:
        return texts[0][1]
    return ", ".join(f"{p} {t}" for p, t in texts)


def _range(o: Option) -> str:
    if o.choices:
        return " | ".join(o.choices)
    if o.min is not None and o.max is not None:
        return f"{_value(_number(o.min, o.type))} to {_value(_number(o.max, o.type))}"
    return ""


def _option_schema(name: str, pairs: list[tuple[str, Option]]) -> dict:
    t = pairs[0][1].type
    programs = [p for p, _ in pairs]
    which = "Every implemented program" if programs == list(CATALOGUE) else f"{', '.join(programs)} only"
    if len({o.help for _, o in pairs}) == 1:
        help_text = pairs[0][1].help
        help_text = help_text[0].upper() + help_text[1:]
    else:
        help_text = "; ".join(f"{p} - {o.help}" for p, o in pairs)
    description = f"{which}. {help_text}."
    ranges = _shared(pairs, _range)
    if ranges and not all(c in o.help for _, o in pairs for c in (o.choices or ("-",))):
        description += f" Values: {ranges}."
    description += f" Default: {_shared(pairs, lambda o: _value(o.default))}."
    schema: dict[str, Any] = {"type": _TYPES[t], "description": description}
    if any(o.choices for _, o in pairs):
        choices = list(dict.fromkeys(c for _, o in pairs for c in (o.choices or ())))
        schema["enum"] = choices
        schema["maxLength"] = max(len(c) for c in choices)   # bounds the CEL rules' cost
    mins = [o.min for _, o in pairs]
    maxes = [o.max for _, o in pairs]
    if all(v is not None for v in mins):
        schema["minimum"] = _number(min(mins), t)
    if all(v is not None for v in maxes):
        schema["maximum"] = _number(max(maxes), t)
    return schema


def _quoted(values) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _rules(name: str, pairs: list[tuple[str, Option]], schema: dict) -> list[dict]:
    field = crd_field(name)
    programs = [p for p, _ in pairs]
    rules = []
    if set(programs) != set(NAMES):
        rules.append({"rule": f"!has(self.{field}) || self.name in {_quoted(programs)}",
                      "message": f"{field} is an option of {', '.join(programs)} only",
                      "fieldPath": f".{field}"})
    for program, o in pairs:
        if o.choices and list(o.choices) != schema.get("enum"):
            rules.append({"rule": f"self.name != '{program}' || !has(self.{field}) || "
                                  f"self.{field} in {_quoted(o.choices)}",
                          "message": f"{field} of {program} must be one of {', '.join(o.choices)}",
                          "fieldPath": f".{field}"})
        low = o.min is not None and o.min != schema.get("minimum")
        high = o.max is not None and o.max != schema.get("maximum")
        if low or high:
            lo, hi = _value(_number(o.min, o.type)), _value(_number(o.max, o.type))
            checks = " && ".join(c for c in (low and f"self.{field} >= {lo}", high and f"self.{field} <= {hi}") if c)
            rules.append({"rule": f"self.name != '{program}' || !has(self.{field}) || ({checks})",
                          "message": f"{field} of {program} must be from {lo} to {hi}",
                          "fieldPath": f".{field}"})
    return rules


def program_items_schema() -> dict:
    """The CRD's spec.programs.items."""
    options = _options()
    lines = []
    for name in NAMES:
        fields = [crd_field(o.name) for o in CATALOGUE[name].options] if name in CATALOGUE else []
        lines.append(f"{name} - {', '.join(fields) if fields else 'no options (not implemented yet)'}")
    properties: dict[str, Any] = {"name": {
        "type": "string",
        "description": "Catalogue name. " + "; ".join(f"{n} - {summary(n)}" for n in NAMES) + ".",
        "enum": list(NAMES),
        "maxLength": max(len(n) for n in NAMES),
    }}
    rules = []
    for name, pairs in options.items():
        schema = _option_schema(name, pairs)
        properties[crd_field(name)] = schema
        rules += _rules(name, pairs, schema)
    return {
        "type": "object",
        "description": "One kernel program and its options (the agent's defaults apply to options left out). "
                       "Options by program: " + "; ".join(lines) + ".",
        "required": ["name"],
        "x-kubernetes-validations": rules,
        "properties": properties,
    }
