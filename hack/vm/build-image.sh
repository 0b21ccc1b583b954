#!/usr/bin/env bash
# Builds the second-kernel test VM from Debian's packages only: a bookworm root
# filesystem (mmdebstrap, minbase) with Debian's 6.1 LTS kernel, its headers,
# python3-bpfcc and the tools the kernel-level tests use, plus a virtualenv with
# the project's Python dependencies (wheels fetched by the host's pip, installed
# offline in the image). Output: an ext4 image, the kernel and its initramfs.
#
# Cached outside the tree like the control plane (hack/controlplane/build.sh),
# keyed by this script, the guest init and pyproject.toml; an unchanged key skips
# the build. Prints the cache directory on its last line of stdout.
#
# Environment:
#   NETPROBE_CACHE   cache root (default /var/cache/netprobe, else ~/.cache/netprobe)
#   VM_MIRROR        Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
say() { printf '[vm-image] %s\n' "$*" >&2; }
die() { printf '[vm-image] error: %s\n' "$*" >&2; exit 1; }

# What the guest needs: the kernel and matching headers (BCC compiles against
# them), BCC, the tools tests/agent and the netns lab call (ip, nft, sysctl,
# taskset, capsh, bpftool, dig), a Python able to make a venv (dnslib, the dns
# tests' server, comes with the test dependencies).
PACKAGES=(
  linux-image-amd64 linux-headers-amd64 initramfs-tools kmod
  python3 python3-venv python3-bpfcc bpftool
  iproute2 nftables procps libcap2-bin util-linux ethtool bind9-dnsutils
)
SUITES="bookworm bookworm-updates"
MIRROR=${VM_MIRROR:-http://deb.debian.org/debian}
SECURITY=${VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

[[ $(id -u) -eq 0 ]] || die "building the VM image needs root (mmdebstrap in root mode, ext4 owners)"
for tool in mmdebstrap mke2fs; do
  command -v "$tool" >/dev/null || die "$tool is missing; run hack/vm/setup.sh (make vm-test does)"
done

cache_root=${NETPROBE_CACHE:-/var/cache/netprobe}
if ! mkdir -p "$cache_root" 2>/dev/null || [ ! -w "$cache_root" ]; then
  cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/netprobe
  mkdir -p "$cache_root"
fi
key=$( (printf '%s\n' "${PACKAGES[@]}" "$SUITES"; cat "$here/build-image.sh" "$here/init" "$repo/pyproject.toml") \
       | sha256sum | cut -c1-16)
out=$cache_root/vm/$key
if [[ -f $out/done ]]; then
  say "up to date (cache key $key)"
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root/vm"
work=$(mktemp -d "$cache_root/vm/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

# The project's runtime and test dependencies, as wheels for the guest's Python
# (the same Debian Python 3.11 as this host's), read from pyproject.toml.
say "fetching the Python dependencies' wheels"
mapfile -t deps < <(python3 - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))
PY
)
pip=$repo/.venv/bin/pip
[[ -x $pip ]] || pip="python3 -m pip"
$pip download -q --disable-pip-version-check --only-binary=:all: -d "$work/wheels" "${deps[@]}" pip \
  || die "pip download of ${deps[*]} failed"

say "debootstrapping bookworm with ${PACKAGES[*]}"
sources=$(printf 'deb %s %s main\n' "$MIRROR" bookworm "$MIRROR" bookworm-updates \
          "$SECURITY" bookworm-security)
# eatmydata: no fsync in dpkg (the image is made whole or not at all).
mmdebstrap --variant=minbase --mode=root --format=directory \
  --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo MODULES=most > "$1/etc/initramfs-tools/conf.d/netprobe"' \
  --customize-hook="cp -r '$work/wheels' \"\$1/tmp/wheels\"" \
  --customize-hook='chroot "$1" python3 -m venv --system-site-packages /opt/netprobe-venv' \
  --customize-hook='chroot "$1" /opt/netprobe-venv/bin/pip install -q --no-index --find-links /tmp/wheels --upgrade pip' \
  --customize-hook="chroot \"\$1\" /opt/netprobe-venv/bin/pip install -q --no-index --find-links /tmp/wheels $(printf "'%s' " "${deps[@]}")" \
  --customize-hook='rm -rf "$1/tmp/wheels"' \
  --customize-hook="install -m 0755 '$here/init' \"\$1/sbin/netprobe-vm-init\"" \
  --customize-hook='mkdir -p "$1/repo" "$1/out"' \
  --customize-hook='echo netprobe-vm > "$1/etc/hostname"' \
  --customize-hook='printf "127.0.0.1 localhost netprobe-vm\n::1 localhost\n" > "$1/etc/hosts"' \
  --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version}\n" > "$1/../packages.txt"' \
  bookworm "$work/rootfs" - <<<"$sources" >&2

ls "$work"/rootfs/boot/vmlinuz-* >/dev/null 2>&1 || die "no kernel in the root filesystem"
cp "$work"/rootfs/boot/vmlinuz-* "$work/vmlinuz"
cp "$work"/rootfs/boot/initrd.img-* "$work/initrd.img"
basename "$work"/rootfs/lib/modules/* > "$work/kernel-release"

# ext4 made from the directory (mke2fs -d: no loop mount), with room for the
# tests' writes (the VM runs it with snapshot=on, so the cache stays pristine).
size_mb=$(( $(du -sm "$work/rootfs" | cut -f1) + 1024 ))
say "making a ${size_mb} MiB ext4 image"
mke2fs -q -t ext4 -L netprobe-root -d "$work/rootfs" "$work/rootfs.ext4" "${size_mb}M"
rm -rf "$work/rootfs"

rm -rf "$work/wheels"
date +%s > "$work/done"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
say "built in $(( $(date +%s) - started )) s: kernel $(cat "$out/kernel-release"), $(du -sh "$out/rootfs.ext4" | cut -f1) image (cache key $key)"
echo "$out"
