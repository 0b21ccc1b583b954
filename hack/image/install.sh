#!/bin/sh
# What goes into the netprobe image: the one definition, run as root inside the
# image's root filesystem by both build paths (docs/getting-started.md):
#   - the Dockerfile (docker/podman build, debian:bookworm-slim base), and
#   - hack/image/build.sh without Docker/Podman (a Debian minbase root made by
#     mmdebstrap, this script run in it with chroot).
# Usage: install.sh SOURCE_DIR   (a checkout of the repository; read only)
#
# It installs the operator and the node agent (not the test bed, not the tests),
# BCC from Debian's python3-bpfcc, and a fallback kernel header tree for nodes
# without headers; then removes what a running image never needs.
set -eu

src=${1:?usage: install.sh SOURCE_DIR}
# The build host's pip settings (a chroot inherits its environment) do not apply here.
for var in $(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p'); do unset "$var"; done
prefix=/opt/netprobe
say() { printf '[image] %s\n' "$*"; }

# Nothing from documentation, manual pages or translations, now or in later layers.
cat > /etc/dpkg/dpkg.cfg.d/netprobe-slim <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/bash-completion/*
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > /etc/apt/apt.conf.d/90netprobe-no-recommends

export DEBIAN_FRONTEND=noninteractive
say "Debian packages"
apt-get update -qq
# python3-bpfcc brings BCC with its clang/LLVM (BCC compiles the programs on the
# node); python3-venv for the virtualenv that sees it. No compilers beyond that.
apt-get install -y -qq python3 python3-venv python3-bpfcc >/dev/null

# Fallback kernel headers: the newest kernel series Debian packages for this
# architecture, for nodes that offer none (node_agent/kernel/headers.py uses the
# node's own first). Only what BCC compiles against is kept: include/ and the
# architecture's include/, both halves (-common and the flavour's generated
# files) merged into one tree.
arch=$(dpkg --print-architecture)
case $arch in
    amd64) karch=x86 ;;
    arm64) karch=arm64 ;;
    *) echo "install.sh: no kernel header fallback for architecture $arch" >&2; exit 1 ;;
esac
flavoured=$(apt-cache depends "linux-headers-$arch" | sed -n 's/^ *Depends: \(linux-headers-[0-9].*\)$/\1/p' | head -n1)
[ -n "$flavoured" ] || { echo "install.sh: cannot resolve linux-headers-$arch" >&2; exit 1; }
common=$(apt-cache depends "$flavoured" | sed -n 's/^ *Depends: \(linux-headers-[0-9].*-common\)$/\1/p' | head -n1)
[ -n "$common" ] || { echo "install.sh: $flavoured names no -common package" >&2; exit 1; }
say "fallback kernel headers: $flavoured + $common"
work=$(mktemp -d)
chown _apt "$work" 2>/dev/null || true   # apt downloads as _apt
(cd "$work" && apt-get download -qq "$flavoured" "$common")
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
tree=$prefix/kernel-headers/$flavoured
mkdir -p "$tree/arch/$karch"
cp -a "$work/x/usr/src/$common/include" "$tree/"
cp -a "$work/x/usr/src/$common/arch/$karch/include" "$tree/arch/$karch/"
cp -a "$work/x/usr/src/$flavoured/include/." "$tree/include/"
cp -a "$work/x/usr/src/$flavoured/arch/$karch/include/." "$tree/arch/$karch/include/"
# Subsystems no network program includes (graphics, sound, media, storage).
rm -rf "$tree/include/drm" "$tree/include/sound" "$tree/include/media" \
       "$tree/include/scsi" "$tree/include/video" "$tree/include/rdma" "$tree/include/target"
rm -rf "$work"
[ -d "$tree/include/generated" ] && [ -d "$tree/include/linux" ] \
    || { echo "install.sh: merged header tree $tree is incomplete" >&2; exit 1; }

say "netprobe (operator and node agent)"
# Only the product's sources: the test bed (hack/netprobe_testbed) and the tests
# stay out. The source is copied because pip writes build files next to it.
build=$(mktemp -d)
cp -a "$src/pyproject.toml" "$src/README.md" "$src/node_agent" "$src/operator" "$build/"
mkdir "$build/hack"   # pyproject's package roots include hack/; empty here
find "$build" -name __pycache__ -prune -exec rm -rf {} +
python3 -m venv --system-site-packages "$prefix"
# With a wheelhouse in the source (the mmdebstrap path downloads one on the build
# host, whose trust store reaches PyPI): offline, from it only. Otherwise PyPI.
# The wheelhouse holds the build backend (setuptools, wheel) too.
if [ -d "$src/.wheels" ]; then
    set -- --no-index --find-links "$src/.wheels"
else
    set --
fi
"$prefix/bin/pip" install -q --no-cache-dir --disable-pip-version-check "$@" "$build"
rm -rf "$build" "$prefix/bin/netprobe-cluster"
# The BPF C sources, compiled by BCC on the node at run time.
cp -a "$src/bpf" "$prefix/bpf"
find "$prefix/bpf" -name '*.o' -delete
"$prefix/bin/python" -c "import bcc, netprobe_operator.handlers, node_agent.cli"
if "$prefix/bin/python" -c "import netprobe_testbed" 2>/dev/null; then
    echo "install.sh: the test bed got into the image" >&2; exit 1
fi
# The asyncio copy of the Kubernetes client (kubernetes >= 35 ships one, ~60 MiB):
# netprobe uses the synchronous client, kopf its own aiohttp calls.
rm -rf "$prefix"/lib/python3*/site-packages/kubernetes/aio
"$prefix/bin/python" -c "import kubernetes.client, kopf"
# pip and setuptools only built the venv; the image never installs anything.
"$prefix/bin/pip" uninstall -q -y pip setuptools >/dev/null 2>&1 || true

# The operator Deployment runs as 65532: give it a name, since kopf asks for the
# user's name (getpass.getuser) and a uid without a passwd entry makes it crash.
groupadd --system --gid 65532 netprobe
useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin netprobe

say "clean up"
apt-get purge -y -qq --auto-remove python3-venv >/dev/null 2>&1 || true
# mmdebstrap's bookworm root carries usrmerge and with it Perl (~50 MiB); the merge is
# done, nothing here needs either (debian:bookworm-slim has neither).
if dpkg-query -W usrmerge >/dev/null 2>&1; then
    apt-get purge -y -qq --auto-remove usrmerge libfile-find-rule-perl perl >/dev/null
    # mmdebstrap marks Perl's libraries as installed by hand: name them (perl-base stays,
    # it is Essential).
    perl_libs=$(dpkg-query -W -f '${Package}\n' | grep -E '^(libperl[0-9.]+|perl-modules-[0-9.]+|lib[a-z0-9-]+-perl)$' || true)
    [ -z "$perl_libs" ] || apt-get purge -y -qq --auto-remove $perl_libs >/dev/null
fi
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
       /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
       /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian \
       /usr/share/bash-completion /root/.cache /tmp/* /var/tmp/*
# BCC's tool collection and its own docs are not needed by the agent.
rm -rf /usr/share/bcc/tools /usr/share/bcc/examples /usr/share/bcc/man
# Still whole after the clean-up.
"$prefix/bin/python" -c "import bcc, netprobe_operator.handlers, node_agent.cli"
say "done"
