#!/usr/bin/env bash
# `make image`: builds the netprobe image (operator and node agent) from this tree.
#
#   With Docker or Podman (IMAGE_BUILDER=docker|podman, or found on PATH):
#     <tool> build -t $IMAGE . (the Dockerfile, debian:bookworm-slim base)
#   Without them (IMAGE_BUILDER=mmdebstrap; no registry needed, only Debian's mirror):
#     a Debian bookworm minbase root filesystem made by mmdebstrap, the Dockerfile's
#     own step (hack/image/install.sh) run in it, packed by hack/image/oci_pack.py
#     into an OCI archive for `ctr -n k8s.io images import`, `docker load`, `podman load`.
#     The archive is cached outside the tree, keyed by every input, and linked as
#     bin/netprobe-image.tar.
#
# Environment:
#   IMAGE           image reference (default localhost/netprobe:dev)
#   IMAGE_BUILDER   docker | podman | mmdebstrap (default: the first of docker, podman whose
#                   `info` answers, else mmdebstrap)
#   NETPROBE_CACHE  cache root (default /var/cache/netprobe, or ~/.cache/netprobe)
#   DEBIAN_MIRROR   (default http://deb.debian.org/debian)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
IMAGE=${IMAGE:-localhost/netprobe:dev}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

say() { printf '[image] %s\n' "$*"; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
    # A CLI without a reachable daemon (docker info fails) does not count.
    for tool in docker podman mmdebstrap; do
        if [ $tool = mmdebstrap ] || { command -v $tool >/dev/null 2>&1 && $tool info >/dev/null 2>&1; }; then
            builder=$tool; break
        fi
    done
fi

case $builder in
docker|podman)
    command -v "$builder" >/dev/null 2>&1 || die "IMAGE_BUILDER=$builder but $builder is not on PATH"
    say "building $IMAGE with $builder from the Dockerfile"
    DOCKER_BUILDKIT=1 "$builder" build -t "$IMAGE" -f Dockerfile .
    say "built $IMAGE; push it with: $builder push $IMAGE (after tagging it for your registry)"
    exit 0 ;;
mmdebstrap) ;;
*) die "IMAGE_BUILDER=$builder: expected docker, podman or mmdebstrap" ;;
esac

# --- without Docker/Podman: Debian's packages, mmdebstrap, an OCI archive ----------
[ "$(id -u)" -eq 0 ] || die "the mmdebstrap path runs as root (mmdebstrap --mode=root, chroot)"
if ! command -v mmdebstrap >/dev/null 2>&1; then
    say "installing mmdebstrap (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap python3-pip >/dev/null \
        || die "could not install mmdebstrap; apt-get install mmdebstrap"
fi

# What the image is made of, and so what the cache key covers.
context=(Dockerfile pyproject.toml README.md node_agent operator bpf hack/image)
cache_root=${NETPROBE_CACHE:-/var/cache/netprobe}
if ! mkdir -p "$cache_root" 2>/dev/null || [ ! -w "$cache_root" ]; then
    [ -z "${NETPROBE_CACHE:-}" ] || die "NETPROBE_CACHE=$cache_root is not writable."
    cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/netprobe
    mkdir -p "$cache_root"
fi
key=$( { printf '%s\n' "$IMAGE" "$mirror" "$security" "$(uname -m)"
         find "${context[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
             | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
cache_dir=$cache_root/image/$key
archive=$cache_dir/netprobe-image.tar

link_into_repo() {
    mkdir -p "$repo/bin"
    ln -sfn "$archive" "$repo/bin/netprobe-image.tar"
    printf '%s\n' "$IMAGE" > "$repo/bin/netprobe-image.ref"
    say "$IMAGE: $archive ($(du -m "$archive" | cut -f1) MiB; linked as bin/netprobe-image.tar)"
    say "import with: ctr -n k8s.io images import bin/netprobe-image.tar (or docker load / podman load -i)"
}

if [ -f "$archive" ]; then
    say "up to date (cache key $key)"
    link_into_repo
    exit 0
fi

start=$SECONDS
mkdir -p "$cache_root/image"
work=$(mktemp -d "$cache_root/image/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/context"
tar -c --exclude=__pycache__ --exclude='*.pyc' "${context[@]}" | tar -x -C "$work/context"
# The Python dependencies as wheels, downloaded here by Debian's Python 3.11 (the image's
# Python; this host's pip settings and trust store apply) and installed offline in the
# chroot; cached by pyproject.toml.
wheels=$cache_root/image/wheels-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -d "$wheels" ]; then
    say "downloading the Python dependencies (wheels)"
    /usr/bin/python3 - > "$work/requirements.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"] + ["wheel"]))
PY
    /usr/bin/python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
        -d "$work/wheels" -r "$work/requirements.txt"
    mv -T "$work/wheels" "$wheels"
fi
cp -a "$wheels" "$work/context/.wheels"

say "building $IMAGE with mmdebstrap (Debian bookworm minbase + hack/image/install.sh), key $key"
mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='mkdir -p "$1/tmp/netprobe-src"' \
    --customize-hook="sync-in $work/context /tmp/netprobe-src" \
    --customize-hook='chroot "$1" sh /tmp/netprobe-src/hack/image/install.sh /tmp/netprobe-src' \
    --customize-hook='rm -rf "$1/tmp/netprobe-src"' \
    bookworm "$work/rootfs.tar" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"
say "root filesystem in $(( SECONDS - start ))s; packing"
/usr/bin/python3 "$here/oci_pack.py" --layer "$work/rootfs.tar" --dockerfile Dockerfile --ref "$IMAGE" \
    --out "$work/netprobe-image.tar"
mkdir -p "$cache_dir"
mv "$work/netprobe-image.tar" "$archive"
# Keep the cache bounded: this key and the previous one.
ls -1dt "$cache_root"/image/*/ | grep -v '/wheels-' | tail -n +3 | xargs -r rm -rf
say "built in $(( SECONDS - start ))s"
link_into_repo
