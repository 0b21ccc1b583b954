"""BTF-typed tracepoint programs (tp_btf), loaded from what BCC compiled.

A tp_btf program is BPF_PROG_TYPE_TRACING with expected attach type
BPF_TRACE_RAW_TP and attach_btf_id = the id of the typedef
btf_trace_<event> in the kernel's BTF. The verifier then knows the types of
the tracepoint's arguments (struct sock *, struct sk_buff *), so the program
reads their members with plain loads, checked against the running kernel's
BTF, instead of a bpf_probe_read_kernel call per read; helpers that want a
typed socket (bpf_skc_to_tcp_sock) accept them.

BCC 0.26 cannot load one itself: its loader takes the attach point from the
function's name prefix (kfunc__, lsm__, ...) and, for any other name, resets
the expected attach type to 0 and looks for a kernel *function* of that name
("bpf: <name> is not found in vmlinux BTF"). So BCC compiles (and creates the
maps, whose fds are already in the instructions), and this module loads the
function's instructions with bpf(BPF_PROG_LOAD) and attaches them with
bpf(BPF_RAW_TRACEPOINT_OPEN) and no name (the kernel takes the attach point
from the program). The caller owns both file descriptors and closes them.
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
from functools import lru_cache

from node_agent.kernel.btf import KFUNCS, kernel_btf

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_RAW_TP = 23
_OBJ_NAME_LEN = 16
_CALL = 0x85                    # BPF_JMP | BPF_CALL
_PSEUDO_KFUNC_CALL = 2          # src_reg of a kfunc call
_INSN = struct.Struct("<BBhi")  # code, dst_reg | src_reg << 4, off, imm
_LOG_SIZE = 1 << 20

# union bpf_attr, BPF_PROG_LOAD: the members up to attach_btf_id (stable UAPI
# offsets; the kernel accepts a shorter attr and zero-fills the rest).
_PROG_LOAD = struct.Struct("<IIQQIIQII16sIIIIQIIQIII")
_RAW_TP_OPEN = struct.Struct("<QII")


class TpBtfError(Exception):
    pass


@lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise TpBtfError(f"bpf() syscall number unknown on {platform.machine()}")
    return _libc().syscall(nr, cmd, attr, len(attr))


def _verifier_tail(log: bytes, lines: int = 6) -> str:
    kept = [l for l in log.split(b"\0", 1)[0].decode(errors="replace").splitlines() if l.strip()]
    return " | ".join(kept[-lines:])


def with_kfunc_calls(insns: bytes) -> bytes:
    """`insns` with every call of a KFUNCS placeholder helper made a call of
    that kernel function. TpBtfError if this kernel lacks one that is called."""
    placeholders = {number: name for name, number in KFUNCS.items()}
    out = bytearray(insns)
    for pos in range(0, len(out), _INSN.size):
        code, regs, off, imm = _INSN.unpack_from(out, pos)
        if code != _CALL or regs != 0 or imm not in placeholders:
            continue
        func_id = kernel_btf().kfunc_id(placeholders[imm])
        if func_id is None:
            raise TpBtfError(f"the program calls kernel function {placeholders[imm]}, which this kernel lacks")
        _INSN.pack_into(out, pos, code, _PSEUDO_KFUNC_CALL << 4, 0, func_id)
    return bytes(out)


def load(insns: bytes, name: str, event: str, license: bytes = b"GPL") -> int:
    """Load `insns` as a tp_btf program on tracepoint `event` (e.g. "tcp_probe");
    returns its fd. TpBtfError (with the verifier's last lines) if refused;
    BTFError if the kernel's BTF has no such tracepoint."""
    type_id = kernel_btf().trace_typedef_id(event)
    insns = with_kfunc_calls(insns)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)
    log = ctypes.create_string_buffer(_LOG_SIZE)

    def attempt(log_level: int) -> int:
        attr = ctypes.create_string_buffer(_PROG_LOAD.pack(
            _BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
            log_level, _LOG_SIZE if log_level else 0, ctypes.addressof(log) if log_level else 0,
            0, 0, name.encode()[:_OBJ_NAME_LEN - 1], 0, _BPF_TRACE_RAW_TP, 0, 0, 0, 0, 0, 0, 0, type_id, 0),
            _PROG_LOAD.size)
        return _bpf(_BPF_PROG_LOAD, attr)

    fd = attempt(0)
    if fd < 0:
        err = os.strerror(ctypes.get_errno())
        attempt(1)     # again with the verifier's log, for the message
        raise TpBtfError(f"BPF_PROG_LOAD (tp_btf {event}): {err}: {_verifier_tail(log.raw)}")
    return fd


def attach(prog_fd: int) -> int:
    """Attach a loaded tp_btf program to its tracepoint; returns the link fd
    (closing it detaches)."""
    attr = ctypes.create_string_buffer(_RAW_TP_OPEN.pack(0, prog_fd, 0), _RAW_TP_OPEN.size)
    fd = _bpf(_BPF_RAW_TRACEPOINT_OPEN, attr)
    if fd < 0:
        raise TpBtfError(f"BPF_RAW_TRACEPOINT_OPEN: {os.strerror(ctypes.get_errno())}")
    return fd
