"""What the kernel counts about a loaded BPF program (bpf(BPF_OBJ_GET_INFO_BY_FD)).

Only `recursion_misses` is read: the runs the kernel skipped. A program on a
plain tracepoint (a perf-event program) is not run while another tracing BPF
program is running on the same CPU — a packet sent from a softirq that
interrupted one, for instance — and the event is lost to it; the kernel counts
each such skip. A program on a raw tracepoint is skipped when the same
program is already running on that CPU: an interrupt arrived while it ran
with softirqs enabled (process context) and the softirqs run on the
interrupt's way out hit the same hook (tcp_probe, inet_sock_set_state do).
The counter needs no statistics switched on (unlike
run_time_ns/run_cnt). Its offset in struct bpf_prog_info comes from the
running kernel's BTF, so no copy of the UAPI layout lives here.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
from functools import lru_cache

from node_agent.kernel.btf import BTFError, kernel_btf

log = logging.getLogger(__name__)

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_OBJ_GET_INFO_BY_FD = 15      # enum bpf_cmd
_INFO_BUFFER = 1024               # larger than any struct bpf_prog_info so far; the tail stays zero


class _InfoByFd(ctypes.Structure):  # union bpf_attr's info member
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


@lru_cache(maxsize=1)
def _recursion_misses_offset() -> int | None:
    try:
        return kernel_btf().offsetof("bpf_prog_info", "recursion_misses")
    except (BTFError, OSError) as e:   # no BTF, or a kernel before 5.12
        log.info("bpf_prog_info.recursion_misses unavailable", extra={"kv": {"error": str(e)}})
        return None


@lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def recursion_misses(prog_fd: int) -> int | None:
    """Runs the kernel skipped for the program behind `prog_fd`; None if unknown here."""
    offset, nr = _recursion_misses_offset(), _SYS_BPF.get(platform.machine())
    if offset is None or nr is None:
        return None
    buffer = ctypes.create_string_buffer(_INFO_BUFFER)
    attr = _InfoByFd(prog_fd, _INFO_BUFFER, ctypes.addressof(buffer))
    if _libc().syscall(nr, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        log.debug("BPF_OBJ_GET_INFO_BY_FD failed", extra={"kv": {"error": os.strerror(ctypes.get_errno())}})
        return None
    if attr.info_len < offset + 8:      # the kernel filled less than that
        return None
    return int.from_bytes(buffer.raw[offset:offset + 8], "little")
