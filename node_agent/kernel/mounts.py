"""Mount the pseudo filesystems BPF tooling needs, when they are missing.

bpffs is where pinned objects would live (we pin nothing, but bpftool and
others expect it); tracefs holds the tracepoint formats and ids; BCC 0.26 reads
tracepoint formats from /sys/kernel/debug/tracing, so debugfs is needed too.
Mounting needs CAP_SYS_ADMIN; in a pod the host's /sys is mounted instead and
nothing is mounted here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

# (mount point, filesystem type, a file that exists once it is mounted)
PSEUDO_FILESYSTEMS = (
    ("/sys/fs/bpf", "bpf", None),
    ("/sys/kernel/tracing", "tracefs", "events"),
    ("/sys/kernel/debug", "debugfs", "tracing"),
)


@dataclass
class MountResult:
    path: str
    fstype: str
    state: str          # "present" | "mounted" | "failed"
    error: str = ""


def _mounted_types() -> dict[str, str]:
    mounts = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mounts[parts[1]] = parts[2]
    return mounts


def _mount(source: str, target: str, fstype: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ensure_pseudo_filesystems() -> list[MountResult]:
    """Mount bpffs, tracefs and debugfs where they are not mounted yet."""
    results = []
    mounted = _mounted_types()
    for path, fstype, marker in PSEUDO_FILESYSTEMS:
        if mounted.get(path) == fstype or (marker and os.path.exists(os.path.join(path, marker))):
            results.append(MountResult(path, fstype, "present"))
            continue
        try:
            os.makedirs(path, exist_ok=True)
            _mount(fstype, path, fstype)
            log.info("mounted", extra={"kv": {"fstype": fstype, "path": path}})
            results.append(MountResult(path, fstype, "mounted"))
        except OSError as e:
            log.warning("could not mount", extra={"kv": {"fstype": fstype, "path": path, "error": e.strerror or e}})
            results.append(MountResult(path, fstype, "failed", e.strerror or str(e)))
    return results
