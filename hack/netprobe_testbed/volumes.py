"""Secret and ConfigMap volumes as the kubelet writes them, for agents run as processes.

The kubelet's atomic writer puts a volume's files in a timestamped directory,
points the `..data` symlink at it (renamed into place, so the switch is
atomic) and makes each file a symlink through `..data`. An update writes a new
directory and swaps `..data`: a reader following the paths sees the old set or
the new one, never a mix, and the files' inodes change. The agent's
certificate reload (node_agent/tls.py) relies on exactly that.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Mapping


def write_volume(target: Path, files: Mapping[str, bytes | str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{time.monotonic_ns() % 10**9:09d}"
    version = target / stamp
    version.mkdir()
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (version / name).write_bytes(data)
        (version / name).chmod(0o600)
    old = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    tmp = target / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(stamp)
    tmp.rename(target / "..data")
    for name in files:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)
    for entry in target.iterdir():      # files the new version no longer has
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old:
        shutil.rmtree(target / old, ignore_errors=True)
