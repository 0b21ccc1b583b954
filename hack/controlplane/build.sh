#!/usr/bin/env bash
# Builds the test bed's Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd) and the kubelet of the real-node tests from the Go modules
# pinned in this folder's go.mod, and links the binaries into the repo's ignored bin/ folder.
#
# The binaries are cached outside the repo, keyed by go.mod + go.sum + this script + the
# Go version, so a fresh clone (CI) reuses them and an unchanged key skips the build.
# GOMODCACHE and GOCACHE are left at Go's own defaults for the same reason.
#
# Environment:
#   NETPROBE_CACHE   cache root (default /var/cache/netprobe, or ~/.cache/netprobe when
#                    that is not writable)
#   BUILD_JOBS       packages compiled in parallel (default: min(nproc, 2); the 2-core,
#                    24 GiB machines this runs on cannot afford more linkers at once)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet etcd)

say() { printf '[controlplane] %s\n' "$*"; }
die() { printf '[controlplane] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "the Go toolchain (go >= 1.24) is not on PATH. \
The control plane is built from Go modules; install Go (https://go.dev/dl/ or the \
distribution's golang package) and rerun 'make controlplane'."

# Kubernetes 1.34 asks for go 1.24; never let Go download another toolchain.
export GOTOOLCHAIN=local CGO_ENABLED=0
go_version=$(go env GOVERSION)
if ! printf '%s\n' "$go_version" | grep -Eq '^go1\.(2[4-9]|[3-9][0-9])'; then
    die "found $go_version; Kubernetes 1.34 needs go1.24 or newer."
fi

cd "$here"

cache_root=${NETPROBE_CACHE:-/var/cache/netprobe}
if ! mkdir -p "$cache_root" 2>/dev/null || [ ! -w "$cache_root" ]; then
    [ -z "${NETPROBE_CACHE:-}" ] || die "NETPROBE_CACHE=$cache_root is not writable."
    cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/netprobe
    mkdir -p "$cache_root"
fi
key=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)-$go_version
cache_dir=$cache_root/controlplane/$key
cache_bin=$cache_dir/bin

link_into_repo() {
    mkdir -p "$repo/bin"
    for b in "${binaries[@]}"; do
        ln -sfn "$cache_bin/$b" "$repo/bin/$b"
    done
    say "binaries linked into $repo/bin/ (from $cache_bin)"
}

cached=yes
for b in "${binaries[@]}"; do [ -x "$cache_bin/$b" ] || cached=no; done
if [ "$cached" = yes ]; then
    say "up to date (cache key $key)"
    link_into_repo
    exit 0
fi

k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
say "building Kubernetes $k8s_version and etcd $etcd_version with $go_version (cache key $key)"

say "downloading modules (skipped when Go's module cache has them)"
go mod download

# What upstream's hack/lib/version.sh stamps, so /version and `kubectl version` tell
# the pinned release instead of v0.0.0-master. buildDate is fixed for reproducibility.
IFS=. read -r major minor _ <<<"${k8s_version#v}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version"
    ldflags+=" -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

jobs=${BUILD_JOBS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}
total=$(go list -deps tool | wc -l)
mkdir -p "$cache_root/controlplane"
staging=$(mktemp -d "$cache_root/controlplane/.build-XXXXXX")
trap 'rm -rf "$staging"' EXIT

say "compiling up to $total packages, $jobs at a time (a cold build takes a while)"
start=$SECONDS
# One invocation for all six main packages: shared dependencies compile once.
# -v names each package as it is compiled; turn that into a periodic progress line and
# let every other line (compiler errors) through untouched.
report_progress() {
    local line compiled=0
    while IFS= read -r line; do
        if [[ $line =~ ^[A-Za-z0-9._~/-]+$ ]]; then
            compiled=$(( compiled + 1 ))
            if (( compiled % 100 == 0 )); then
                say "compiled $compiled/$total packages ($(( SECONDS - start ))s)"
            fi
        else
            printf '%s\n' "$line"
        fi
    done
}
if ! go build -p "$jobs" -trimpath -ldflags "$ldflags" -v -o "$staging/" tool 2>&1 | report_progress; then
    die "go build failed (see the messages above)"
fi

# go build names a main package after its last path element; etcd's is the v3 module
# root, so its binary comes out as "server".
mv "$staging/server" "$staging/etcd"
for b in "${binaries[@]}"; do [ -x "$staging/$b" ] || die "build produced no $b"; done

# Publish atomically: a concurrent build of the same key may have finished first, in
# which case its (identical) binaries stay and ours are dropped by the EXIT trap.
mkdir -p "$cache_dir"
if mv -T "$staging" "$cache_bin" 2>/dev/null; then
    trap - EXIT
else
    say "another build of the same key finished first; keeping its binaries"
fi
# Keep the cache bounded (~340 MiB a key): this key and the previous one.
ls -1dt "$cache_root"/controlplane/*/ | tail -n +3 | xargs -r rm -rf
say "built in $(( SECONDS - start ))s:"
(cd "$cache_bin" && ls -l "${binaries[@]}" | awk '{printf "[controlplane]   %-24s %4d MiB\n", $9, $5/1048576}')
link_into_repo
