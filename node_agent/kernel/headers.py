"""Find kernel headers BCC can compile against, and say which ones.

Order: $BCC_KERNEL_SOURCE if set; the running kernel's
/lib/modules/$(uname -r)/build (with its source/ sibling, as a host mount in a
pod provides it); else the nearest of the installed /usr/src/linux-headers-*
and the image's fallback tree ($NETPROBE_KERNEL_HEADERS, the newest kernel
series Debian packages, already merged; the node's win a tie).
Distributions split those: Debian ships the generated half in -amd64 and the
rest in -common (Ubuntu: -generic and the unflavoured directory). BCC wants one
tree when pointed at it with BCC_KERNEL_SOURCE, so the two are merged into a
private tree of symlinks (RUN_DIR) and BCC_KERNEL_SOURCE points there.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

USR_SRC = Path("/usr/src")
# The image's own header trees, for nodes without headers (hack/image/install.sh).
IMAGE_HEADERS = Path(os.environ.get("NETPROBE_KERNEL_HEADERS", "/opt/netprobe/kernel-headers"))
IMAGE_SOURCE = "image fallback"
MODULES = Path("/lib/modules")
RUN_DIR = Path(os.environ.get("NETPROBE_RUN_DIR", "/run/netprobe")) / "kernel-headers"

FIX_HINT = (
    "install the headers of the running kernel (apt-get install linux-headers-$(uname -r), "
    "or linux-headers-amd64 for the nearest ones), or in a pod mount the host's /lib/modules "
    "and /usr/src read-only, or set BCC_KERNEL_SOURCE to a kernel header tree"
)


class HeadersNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelHeaders:
    source: str        # "BCC_KERNEL_SOURCE" | "/lib/modules" | "/usr/src (nearest)" | IMAGE_SOURCE
    path: str          # what BCC compiles against
    version: str       # kernel version the headers belong to ("" if unknown)
    exact: bool        # headers of the running kernel?

    def describe(self) -> str:
        match = "running kernel" if self.exact else "NOT the running kernel; struct layouts come from BTF"
        return f"{self.path} (from {self.source}, version {self.version or 'unknown'}, {match})"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:4])


def _is_tree(path: Path) -> bool:
    return (path / "include").is_dir() and (path / "arch").is_dir()


def _is_complete(path: Path) -> bool:
    """Has both halves: the generated headers and the plain ones."""
    return (path / "include" / "generated").is_dir() and (path / "include" / "linux").is_dir()


def _merge_into(dst: Path, trees: list[Path]) -> None:
    """Make `dst` a union of `trees` out of symlinks; earlier trees win on conflicts."""
    dst.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[Path]] = {}
    for tree in trees:
        for entry in sorted(tree.iterdir()):
            names.setdefault(entry.name, []).append(entry)
    for name, entries in names.items():
        dirs = list({e.resolve(): e for e in entries if e.is_dir()}.values())
        if len(dirs) > 1:
            _merge_into(dst / name, dirs)
        else:
            (dst / name).symlink_to(entries[0].resolve())


def _split_partner(flavoured: Path) -> Path | None:
    """The plain half of a split header package (Debian -common, Ubuntu unflavoured)."""
    base = flavoured.name.rsplit("-", 1)[0]
    for candidate in (flavoured.parent / f"{base}-common", flavoured.parent / base):
        if candidate != flavoured and _is_tree(candidate):
            return candidate
    # The flavoured Makefile names its partner (Debian: "include .../-common/Makefile").
    makefile = flavoured / "Makefile"
    if makefile.is_file():
        m = re.search(r"include\s+(\S+)/Makefile", makefile.read_text(errors="replace"))
        if m and _is_tree(Path(m.group(1))):
            return Path(m.group(1))
    return None


def _assemble(trees: list[Path], name: str) -> Path:
    """Build the merged tree once; agents started in parallel share it."""
    target = RUN_DIR / name
    if _is_complete(target):
        return target
    tmp = RUN_DIR / f".{name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # only symlinks and directories of ours
    _merge_into(tmp, trees)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp)
        if not _is_complete(target):
            raise
    return target


def _installed_candidates(release: str) -> list[tuple[Path, str, str]]:
    """Generated halves under /usr/src and in the image, nearest version to `release` first."""
    found = []
    for rank, (root, source) in enumerate(((USR_SRC, "/usr/src (nearest)"), (IMAGE_HEADERS, IMAGE_SOURCE))):
        if root.is_dir():
            for d in root.glob("linux-headers-*"):
                if (d / "include" / "generated").is_dir():
                    found.append((d, d.name[len("linux-headers-"):], source, rank))
    want = _version_tuple(release)

    def distance(item):
        v = _version_tuple(item[1])
        # Same major.minor beats everything; then the closest series, the node's before
        # the image's, newer first.
        return (v[:2] != want[:2], abs((v + (0,) * 4)[0] * 1000 + (v + (0,) * 4)[1]
                                        - (want[0] * 1000 + want[1])), item[3], tuple(-x for x in v))
    return [item[:3] for item in sorted(found, key=distance)]


def find_kernel_headers(release: str | None = None, set_env: bool = True) -> KernelHeaders:
    """Locate (and if needed assemble) headers; export BCC_KERNEL_SOURCE for BCC."""
    release = release or os.uname().release

    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        p = Path(env)
        if not _is_tree(p):
            raise HeadersNotFound(f"BCC_KERNEL_SOURCE={env} is not a kernel header tree "
                                  f"(no include/ and arch/); {FIX_HINT}")
        return KernelHeaders("BCC_KERNEL_SOURCE", env, "", False)

    build = MODULES / release / "build"
    if _is_tree(build):
        # BCC itself looks here and combines build/ with source/ when split.
        return KernelHeaders("/lib/modules", str(build.resolve()), release, True)

    for flavoured, version, source in _installed_candidates(release):
        trees = [flavoured]
        if not _is_complete(flavoured):
            partner = _split_partner(flavoured)
            if partner is None:
                log.debug("headers lack their plain half; skipped", extra={"kv": {"path": flavoured}})
                continue
            trees.append(partner)
        path = _assemble(trees, flavoured.name) if len(trees) > 1 else flavoured
        if set_env:
            os.environ["BCC_KERNEL_SOURCE"] = str(path)
        return KernelHeaders(source, str(path), version,
                             _version_tuple(version)[:3] == _version_tuple(release)[:3])

    raise HeadersNotFound(
        f"no kernel headers found for {release} (looked in {build}, {USR_SRC}/linux-headers-* and "
        f"the image's fallback {IMAGE_HEADERS}/linux-headers-*): {FIX_HINT}, or run the netprobe image "
        f"built by `make image`, which carries a fallback header tree")
