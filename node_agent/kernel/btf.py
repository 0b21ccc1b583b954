"""Struct member offsets of the running kernel, read from its BTF.

BCC compiles against whatever headers it found, which may belong to another
kernel version (here: Debian 6.1 headers on a 6.18 kernel), so a program must
never dereference a kernel struct with offsets taken from those headers. The
programs that read struct fields get the offsets from /sys/kernel/btf/vmlinux
instead, as -D constants at compile time.

Only what that needs is parsed: the type section's layout, the members of
structs and unions (anonymous members are searched through, as C does), the
values of named enums (codes the kernel defines, e.g. enum
skb_drop_reason, renumbered between kernel versions), the ids of the
typedefs that name tracepoints for BTF-typed programs (btf_trace_<event>),
and the ids of the few kernel functions (kfuncs) the programs call (KFUNCS).
"""
from __future__ import annotations

import struct
from array import array
from functools import lru_cache

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F
TRACE_TYPEDEF_PREFIX = b"btf_trace_"
# Kernel functions (kfuncs) the programs call, with the number of the made-up
# helper their C code calls instead: BCC 0.26 cannot emit a kfunc call, so the
# code calls "helper" NP_KFUNC_<NAME> (passed as -D) and the tp_btf loader
# turns each such call into a call of the kfunc by its BTF id.
KFUNCS = {"bpf_rdonly_cast": 0x4E500001}

# kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}

# bytes that follow the 12-byte common header, by kind (vlen = entries)
_FIXED_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ENTRY = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}


class BTFError(LookupError):
    pass


class BTF:
    def __init__(self, data: bytes):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError("not a little-endian BTF blob")
        self._data = data
        self._types_at = hdr_len + type_off
        self._strings_at = hdr_len + str_off      # the string section, read in place (no copy)
        # type id -> offset of its header (id 0 is void); an array of u32, not
        # a list of ~130,000 Python ints (5 MiB less, held while programs compile)
        self._offsets = array("I", [0])
        self._by_name: dict[str, list[int]] = {}
        self._enums: dict[str, list[int]] = {}      # enum name -> offsets of its headers
        self._trace_typedefs: dict[str, int] = {}   # btf_trace_<event> -> type id
        self._kfuncs: dict[str, int] = {}           # a name of KFUNCS -> its FUNC's type id
        wanted = {name.encode() + b"\0" for name in KFUNCS}
        pos, end = self._types_at, self._types_at + type_len
        while pos < end:
            name_off, info, _ = struct.unpack_from("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            type_id = len(self._offsets)
            self._offsets.append(pos)
            if kind in (STRUCT, UNION) and name_off:
                self._by_name.setdefault(self._str(name_off), []).append(type_id)
            elif kind in (ENUM, ENUM64) and name_off:
                self._enums.setdefault(self._str(name_off), []).append(pos)
            elif kind == TYPEDEF and name_off and data.startswith(TRACE_TYPEDEF_PREFIX,
                                                                  hdr_len + str_off + name_off):
                self._trace_typedefs[self._str(name_off)] = type_id
            elif kind == FUNC and name_off and any(data.startswith(w, hdr_len + str_off + name_off) for w in wanted):
                self._kfuncs[self._str(name_off)] = type_id
            pos += 12 + _FIXED_EXTRA.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    @classmethod
    def from_file(cls, path: str = VMLINUX_BTF) -> "BTF":
        with open(path, "rb") as f:
            return cls(f.read())

    def _str(self, off: int) -> str:
        start = self._strings_at + off
        return self._data[start:self._data.index(b"\0", start)].decode()

    def enum(self, name: str) -> dict[str, int]:
        """Member name -> value of a named enum (the definition with the most members)."""
        found = self._enums.get(name)
        if not found:
            raise BTFError(f"enum {name} not in the kernel's BTF")
        pos = max(found, key=lambda p: struct.unpack_from("<I", self._data, p + 4)[0] & 0xFFFF)
        _, info, _ = struct.unpack_from("<III", self._data, pos)
        kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        values = {}
        for i in range(vlen):
            if kind == ENUM:
                name_off, value = struct.unpack_from("<Ii" if signed else "<II", self._data, pos + 12 + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
                value = hi << 32 | lo
                if signed and value >> 63:
                    value -= 1 << 64
            values[self._str(name_off)] = value
        return values

    def trace_typedef_id(self, event: str) -> int:
        """Type id of btf_trace_<event>, the typedef a BTF-typed tracepoint
        program (tp_btf) names as its attach point."""
        type_id = self._trace_typedefs.get(TRACE_TYPEDEF_PREFIX.decode() + event)
        if type_id is None:
            raise BTFError(f"tracepoint {event} has no btf_trace_{event} in the kernel's BTF")
        return type_id

    def kfunc_id(self, name: str) -> int | None:
        """Type id of kernel function `name` (one of KFUNCS), None if this kernel lacks it."""
        if name not in KFUNCS:
            raise ValueError(f"{name} is not in btf.KFUNCS")
        return self._kfuncs.get(name)

    def _header(self, type_id: int) -> tuple[int, int, int, int, int]:
        pos = self._offsets[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", self._data, pos)
        return pos, name_off, (info >> 24) & 0x1F, info, size_or_type

    def _strip(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type."""
        while True:
            _, _, kind, _, ref = self._header(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref

    def _members(self, type_id: int):
        pos, _, kind, info, _ = self._header(type_id)
        if kind not in (STRUCT, UNION):
            raise BTFError(f"type {type_id} is not a struct or union")
        kind_flag = info >> 31
        for i in range(info & 0xFFFF):
            name_off, mtype, offset = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
            bit_offset = offset & 0xFFFFFF if kind_flag else offset
            yield (self._str(name_off) if name_off else ""), mtype, bit_offset

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type) of `name`, searching anonymous members too."""
        for mname, mtype, bit_offset in self._members(type_id):
            if mname == name:
                return bit_offset, mtype
            if not mname:
                inner = self._strip(mtype)
                if self._header(inner)[2] in (STRUCT, UNION):
                    found = self._find_member(inner, name)
                    if found:
                        return bit_offset + found[0], found[1]
        return None

    def struct_id(self, name: str) -> int:
        ids = self._by_name.get(name)
        if not ids:
            raise BTFError(f"struct {name} not in the kernel's BTF")
        # Prefer a definition with members over an empty one.
        return max(ids, key=lambda t: self._header(t)[3] & 0xFFFF)

    def sizeof(self, struct_name: str) -> int:
        """Size in bytes of a struct."""
        return self._header(self.struct_id(struct_name))[4]

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of a member path like "__sk_common.skc_family"."""
        type_id, total_bits = self.struct_id(struct_name), 0
        for part in path.split("."):
            found = self._find_member(self._strip(type_id), part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} (at {part!r})")
            bits, type_id = found
            total_bits += bits
        if total_bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        return total_bits // 8


@lru_cache(maxsize=1)
def kernel_btf() -> BTF:
    return BTF.from_file()
