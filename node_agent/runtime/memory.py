"""Give back what compiling cost, once programs are loaded.

BCC compiles with clang/LLVM in-process: afterwards the heap holds freed
arenas and ~80 MiB of LLVM/clang code pages stay mapped, none of which is
used until the next compile (a config reload). malloc_trim returns the free
heap; MADV_PAGEOUT asks the kernel to reclaim those code pages (a hint that
keeps contents: they fault back in from the library files when needed).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21   # Linux 5.4+; older kernels answer EINVAL and nothing happens
COMPILER_LIBRARIES = re.compile(r"/lib(LLVM|clang)[^/]*\.so")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def release_compiler_memory() -> None:
    before = _rss_kib()
    _libc.malloc_trim(0)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or not COMPILER_LIBRARIES.search(parts[5]):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            _libc.madvise(start, end - start, MADV_PAGEOUT)
    log.info("compiler memory released", extra={"kv": {"rss_kib_before": before, "rss_kib_after": _rss_kib()}})
