"""Give back what compiling cost, once programs are loaded.

BCC compiles with clang/LLVM in-process: afterwards the heap holds freed
arenas, ~80 MiB of LLVM/clang code pages stay mapped, and the kernel's BTF
(parsed for the programs' offsets) stays cached; none of it is used until the
next compile (a config reload). So, after each load:

- the cached BTF is dropped (whatever a scrape needs from it, e.g. drop reason
  names, is computed before: Agent._release_compiler_memory), and the heap
  trimmed (malloc_trim: every arena);
- MADV_PAGEOUT asks the kernel to reclaim the compiler libraries' pages (a
  hint that keeps contents): it frees pages only this process maps, and skips
  shared ones, e.g. when another BCC process (a second agent, bcc-tools, the
  bench's reference programs) has the same libraries mapped;
- MADV_DONTNEED then unmaps the rest of those pages from this process, in the
  mappings where that loses nothing: not writable, no private (anonymous,
  copied-on-write) page, i.e. pure file pages (code, read-only data), which
  fault back in from the page cache when next used. Relocated read-only data
  (RELRO: anonymous pages in a read-only mapping) is left alone: dropping it
  would bring back the unrelocated file contents.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import re

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
MADV_PAGEOUT = 21   # Linux 5.4+; older kernels answer EINVAL and nothing happens
# clang/LLVM and what only they pull in (Z3, ICU, libxml2 are LLVM's dependencies)
COMPILER_LIBRARIES = re.compile(r"/lib(LLVM|clang|z3|icu[a-z]*|xml2)[^/]*\.so")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def compiler_mappings(smaps: str) -> list[tuple[int, int, bool]]:
    """(start, end, pure file pages) of each mapping of a compiler library in
    /proc/self/smaps text; pure: not writable and no anonymous page."""
    out, current = [], None
    for line in smaps.splitlines():
        parts = line.split()
        if not parts:
            continue
        if not parts[0].endswith(":"):            # a mapping's header line
            current = None
            if len(parts) >= 6 and COMPILER_LIBRARIES.search(parts[5]):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                current = [start, end, "w" not in parts[1]]
                out.append(current)
        elif current is not None and parts[0] == "Anonymous:" and int(parts[1]) != 0:
            current[2] = False
    return [tuple(m) for m in out]


def release_compiler_memory() -> None:
    from node_agent.kernel.btf import kernel_btf

    before = _rss_kib()
    kernel_btf.cache_clear()
    gc.collect()
    _libc.malloc_trim(0)
    with open("/proc/self/smaps") as f:
        mappings = compiler_mappings(f.read())
    for start, end, _ in mappings:
        _libc.madvise(start, end - start, MADV_PAGEOUT)
    for start, end, pure in mappings:
        if pure:
            _libc.madvise(start, end - start, MADV_DONTNEED)
    log.info("compiler memory released", extra={"kv": {"rss_kib_before": before, "rss_kib_after": _rss_kib()}})
