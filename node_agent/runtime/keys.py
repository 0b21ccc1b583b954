"""Map keys by field name: the struct BCC built from the C, read once.

BCC turns each map's C key struct into a ctypes type (table.Key). Its leaf
fields (nested structs flattened, padding named pad* left out) are what a
program's description names in Metric.key; check() refuses a description
that names a field the C lacks or leaves one unclaimed, so the two cannot
drift apart. unpack() turns a raw key into the fields' values with one
struct.unpack (byte arrays as bytes, integers as int), in the order of
`names`.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Callable

# ctypes simple type code -> struct format of the same size and signedness
_INT_FORMATS = {"B": "B", "b": "b", "H": "H", "h": "h", "I": "I", "i": "i",
                "L": "Q", "l": "q", "Q": "Q", "q": "q", "?": "?"}


class KeyMismatch(ValueError):
    pass


def _is_padding(name: str) -> bool:
    return name.lstrip("_").startswith("pad")


def _leaves(ctype, offset: int = 0, name: str = "key"):
    """(name, offset, size, struct format or None for padding) of every leaf field."""
    if isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        if issubclass(ctype, ctypes.Union):
            raise KeyMismatch(f"{name}: unions are not supported in map keys")
        for field in ctype._fields_:
            fname, ftype = field[0], field[1]
            if len(field) > 2:
                raise KeyMismatch(f"{fname}: bit fields are not supported in map keys")
            yield from _leaves(ftype, offset + getattr(ctype, fname).offset, fname)
        return
    size = ctypes.sizeof(ctype)
    if _is_padding(name):
        yield name, offset, size, None
    elif isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        if ctypes.sizeof(ctype._type_) != 1:
            raise KeyMismatch(f"{name}: only byte arrays are supported in map keys")
        yield name, offset, size, f"{size}s"
    else:
        code = getattr(ctype, "_type_", None)
        if code not in _INT_FORMATS:
            raise KeyMismatch(f"{name}: unsupported key field type {ctype.__name__}")
        yield name, offset, size, _INT_FORMATS[code]


@dataclass(frozen=True)
class KeyFields:
    names: tuple[str, ...]                    # leaf fields, padding left out, in memory order
    size: int
    unpack: Callable[[bytes], tuple]          # raw key -> values, in the order of names

    @classmethod
    def of(cls, key_type) -> "KeyFields":
        size = ctypes.sizeof(key_type)
        fmt, names, at = ["="], [], 0
        for name, offset, width, code in sorted(_leaves(key_type), key=lambda leaf: leaf[1]):
            if offset > at:
                fmt.append(f"{offset - at}x")       # alignment holes
            fmt.append(code or f"{width}x")
            if code is not None:
                if name in names:
                    raise KeyMismatch(f"two key fields are named {name}")
                names.append(name)
            at = offset + width
        if size > at:
            fmt.append(f"{size - at}x")
        packed = struct.Struct("".join(fmt))
        assert packed.size == size, (packed.format, size)
        return cls(tuple(names), size, packed.unpack)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def check(self, declared: tuple[str, ...], what: str) -> None:
        """KeyMismatch unless `declared` names every field exactly once."""
        missing = [n for n in declared if n not in self.names]
        unclaimed = [n for n in self.names if n not in declared]
        twice = sorted({n for n in declared if declared.count(n) > 1})
        if missing or unclaimed or twice:
            parts = []
            if missing:
                parts.append(f"described but not in the C key: {', '.join(missing)}")
            if unclaimed:
                parts.append(f"in the C key but not described: {', '.join(unclaimed)}")
            if twice:
                parts.append(f"described twice: {', '.join(twice)}")
            raise KeyMismatch(f"{what}: key fields ({', '.join(self.names)}) do not match the "
                              f"description: {'; '.join(parts)}")
