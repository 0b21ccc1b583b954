"""Names of the kernel's packet drop reasons, read from the running kernel.

`enum skb_drop_reason` is renumbered between kernel versions (6.1:
NOT_SPECIFIED=1; 6.18: CONSUMED=1, NOT_SPECIFIED=2), so a table compiled in
(or taken from the headers BCC found) names drops wrongly. The names come from
the running kernel's BTF (the enum itself), else from the skb:kfree_skb
tracepoint's format (its __print_symbolic table). Values with subsystem bits
(reason >> SKB_DROP_REASON_SUBSYS_SHIFT: mac80211, openvswitch, whose own
enums live in their modules) are named by their subsystem and number,
e.g. "OPENVSWITCH:3"; any other code no table names shows as its number.
"""
from __future__ import annotations

import logging
import os
import re
from functools import lru_cache

from node_agent.kernel.btf import BTF, BTFError, kernel_btf

log = logging.getLogger(__name__)

# include/net/dropreason.h: a #define, so not in BTF; unchanged since drop reason subsystems came.
SUBSYS_SHIFT = 16
TRACEPOINT_FORMATS = ("/sys/kernel/tracing/events/skb/kfree_skb/format",
                      "/sys/kernel/debug/tracing/events/skb/kfree_skb/format")


class ReasonNames(dict):
    """code -> name, as a metric's Code decoder reads it (with .get): a code
    outside the table but in a known subsystem gets "SUBSYSTEM:number"."""

    def __init__(self, names: dict[int, str], subsystems: dict[int, str] | None = None, source: str = ""):
        super().__init__(names)
        self.subsystems = subsystems or {}
        self.source = source

    def get(self, code, default=None):
        name = dict.get(self, code)
        if name is None and isinstance(code, int):
            subsystem = self.subsystems.get(code >> SUBSYS_SHIFT)
            if subsystem:
                name = f"{subsystem}:{code & ((1 << SUBSYS_SHIFT) - 1)}"
        return default if name is None else name


def _short(member: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if member.startswith(prefix):
            return member[len(prefix):]
    return member


def from_btf(btf: BTF) -> ReasonNames:
    """SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET, SKB_CONSUMED -> CONSUMED, as the tracepoint prints them."""
    names = {v: _short(m, ("SKB_DROP_REASON_", "SKB_")) for m, v in btf.enum("skb_drop_reason").items()
             if not m.startswith("SKB_DROP_REASON_SUBSYS_")}     # SUBSYS_MASK: not a reason
    try:
        subsystems = {v: _short(m, ("SKB_DROP_REASON_SUBSYS_",))
                      for m, v in btf.enum("skb_drop_reason_subsys").items()}
    except BTFError:                # before 6.4: no subsystems
        subsystems = {}
    subsystems = {v: n for v, n in subsystems.items() if v and n != "NUM"}
    return ReasonNames(names, subsystems, "btf")


_SYMBOL = re.compile(r'\{\s*(\d+)\s*,\s*"([A-Z0-9_]+)"\s*\}')


def from_tracepoint_format(text: str) -> ReasonNames:
    """The __print_symbolic table of skb:kfree_skb's print fmt."""
    at = text.find("__print_symbolic(REC->reason")
    if at < 0:
        raise ValueError("the kfree_skb format has no reason table")
    return ReasonNames({int(code): name for code, name in _SYMBOL.findall(text[at:])}, source="tracepoint")


@lru_cache(maxsize=1)
def drop_reasons() -> ReasonNames:
    """The running kernel's table (read once): BTF, else the tracepoint format, else none (numbers)."""
    try:
        return from_btf(kernel_btf())
    except (OSError, BTFError) as e:
        log.warning("no drop reason names in BTF", extra={"kv": {"error": str(e)}})
    for path in TRACEPOINT_FORMATS:
        if os.path.exists(path):
            try:
                with open(path) as f:
                    return from_tracepoint_format(f.read())
            except (OSError, ValueError) as e:
                log.warning("no drop reason names in the tracepoint format", extra={"kv": {"path": path, "error": str(e)}})
    return ReasonNames({}, source="none")
