"""Decoding map keys: the byte layouts of bpf/*.c, described by KeyLayout."""
from __future__ import annotations

from typing import NamedTuple

from node_agent.runtime.spec import KeyLayout


class DecodedKey(NamedTuple):
    local: bytes          # 16 bytes, IPv4 mapped
    remote: bytes
    code: int | None      # the enum byte (e.g. direction), if the layout has one
    slot: int | None      # histogram slot, if any


def decode_key(raw: bytes, layout: KeyLayout) -> DecodedKey:
    if len(raw) != layout.size:
        raise ValueError(f"key of {len(raw)} bytes, layout expects {layout.size}")
    code = raw[layout.code_offset] if layout.code_offset is not None else None
    slot = (int.from_bytes(raw[layout.slot_offset:layout.slot_offset + 4], "little")
            if layout.slot_offset is not None else None)
    return DecodedKey(raw[0:16], raw[16:32], code, slot)
