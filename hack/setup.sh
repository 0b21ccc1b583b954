#!/usr/bin/env bash
# Idempotent set-up from nothing: Debian packages, a virtualenv that sees
# Debian's bcc, the project installed editable with its test extras.
# Called by `make setup` (and so by `make demo` / `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
APT_PACKAGES=(
  python3 python3-venv python3-pip
  python3-bpfcc bpfcc-tools bpftool   # BCC runtime, bpftool for leak checks
  linux-headers-amd64                 # kernel headers BCC compiles against
  iproute2 nftables iperf3 ethtool    # network namespaces, drop rules, traffic
  sockperf                            # bench: TCP request/response rate
  libcap2-bin                         # capsh: least-privilege test
  prometheus                          # real Prometheus server and promtool
  bind9-dnsutils                      # dig: DNS clients of the dns program's tests
  openssl curl ca-certificates
  # a real node for the end-to-end test (netprobe_testbed.node): container runtime, CNI
  # plugins, a static busybox for pause and workload images; mmdebstrap for `make image`
  containerd runc containernetworking-plugins busybox-static mmdebstrap
)

log() { printf '==> %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged Prometheus as a service; tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true
fi

# The venv must come from Debian's Python: python3-bpfcc lives in its dist-packages.
if [[ ! -x $VENV/bin/python ]]; then
  log "creating virtualenv $VENV (system site packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || {
  echo "setup: the virtualenv $VENV cannot import bcc; is python3-bpfcc installed for /usr/bin/python3?" >&2
  exit 1
}

stamp=$VENV/.netprobe-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "installing netprobe (editable) with test extras"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi
log "setup complete"
