#!/usr/bin/env bash
# `make vm-test`: the kernel-level tests on a second kernel, Debian 12's 6.1 LTS
# (with kprobes), in QEMU with TCG (no KVM needed). Installs QEMU and mmdebstrap
# when missing, builds (or reuses) the cached image (hack/vm/build-image.sh),
# boots it with the repository shared read-only over 9p, and reads back what
# ran inside: `netprobe-agent doctor` and pytest's exit status and junit XML.
# A failure inside the VM fails this script, with the VM console's tail.
#
# Environment:
#   VM_PYTEST_ARGS  what pytest runs inside (default: the subset below, see
#                   docs/agent.md "Kernels tested in CI")
#   VM_MEMORY       guest memory (default 4G); VM_CPUS guest CPUs (default 2)
#   VM_TIMEOUT      seconds before the VM is killed (default 2700)
#   VM_TIME_SCALE   factor on the tests' waits inside the VM (default 10)
#   VM_LOG_DIR      where the console log and results stay (default: a new /tmp dir)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
say() { printf '[vm-test] %s\n' "$*"; }
die() { printf '[vm-test] error: %s\n' "$*" >&2; exit 1; }

started=$(date +%s)
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v mke2fs >/dev/null || missing+=(e2fsprogs)
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]}; run as root or install them"
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

image=$(bash "$here/build-image.sh" | tail -n1)
[[ -f $image/done ]] || die "no image built"
built=$(date +%s)

log_dir=${VM_LOG_DIR:-$(mktemp -d /tmp/netprobe-vm.XXXXXX)}
mkdir -p "$log_dir/out"
out=$log_dir/out
rm -f "$out"/*
console=$log_dir/console.log
# Default selection (docs/agent.md "Kernels tested in CI"): TCG is too slow for
# every kernel test of tests/agent in CI time, so: doctor and headers, the
# kprobe fallback, and of test_programs.py every test in `auto` (kprobes here)
# plus, in each forced mode, loading, exact connection counts, rx_latency,
# segments = the kernel's OutSegs and retransmits, and the BTF-skew check.
# VM_PYTEST_ARGS="-v -m kernel tests/agent" runs them all.
SUBSET="(doctor or headers_exits or failed_strategy or auto or loads or connections_are_counted or rx_latency \
or segments_sent_equal or retransmits_carry or wrong_btf or queries_by_qtype or truncated_answer \
or malformed_packets_are or query_names_are_labels or daemonsets_capabilities_for_dns or no_socket_drops \
or netfilter_drop or socket_rcvbuff) and not sample_every"
if [[ -n ${VM_PYTEST_ARGS:-} ]]; then
  read -r -a args <<<"$VM_PYTEST_ARGS"
else
  args=(-v -rfEs -m kernel --timeout 1800 -k "$SUBSET" tests/agent/test_kernel_env.py
        tests/agent/test_lifecycle.py tests/agent/test_programs.py tests/agent/test_dns.py tests/agent/test_drops.py)
fi
printf '%s\n' "${args[@]}" > "$out/pytest-args"
# TCG runs the guest ~10-50x slower than the host: every test's waits stretch
# by this factor (netprobe_testbed.netns.TIME_SCALE); the assertions do not.
echo "NETPROBE_TEST_TIME_SCALE=${VM_TIME_SCALE:-10}" > "$out/env"

say "booting Debian kernel $(cat "$image/kernel-release") under QEMU TCG (${VM_CPUS:-2} cpus, ${VM_MEMORY:-4G}); console: $console"
set +e
timeout --kill-after=10 "${VM_TIMEOUT:-2700}" \
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "${VM_CPUS:-2}" -m "${VM_MEMORY:-4G}" \
    -nographic -no-reboot -nic none \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw init=/sbin/netprobe-vm-init panic=-1 loglevel=4 net.ifnames=0" \
    -drive "file=$image/rootfs.ext4,format=raw,if=virtio,snapshot=on" \
    -virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on" \
    -virtfs "local,path=$out,mount_tag=out,security_model=none" \
    </dev/null 2>&1 | tee "$console" | sed -u -n '/^netprobe-vm: /,$p' | sed -u 's/^/vm| /'
qemu_rc=${PIPESTATUS[0]}
set -e
finished=$(date +%s)

fail() {
  say "FAILED: $*"
  say "---- VM console, last 60 lines ($console) ----"
  tail -n 60 "$console" | sed 's/^/console| /'
  exit 1
}
((qemu_rc == 0)) || fail "QEMU exited with $qemu_rc$( ((qemu_rc == 124)) && echo " (timed out after ${VM_TIMEOUT:-2700} s)")"
[[ -f $out/pytest-rc ]] || fail "the guest wrote no pytest result"
rc=$(cat "$out/pytest-rc")
summary=$(grep -E '(passed|failed|error)' "$out/pytest.log" | tail -n1)
say "image $(( built - started )) s, boot and tests $(( finished - built )) s, total $(( finished - started )) s"
say "kernel $(cat "$image/kernel-release"): pytest exit $rc: $summary"
((rc == 0)) || fail "pytest in the VM exited with $rc"
grep -q '^doctor exit 0$' "$out/doctor.txt" || fail "netprobe-agent doctor failed in the VM"
