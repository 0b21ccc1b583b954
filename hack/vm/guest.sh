#!/bin/bash
# Runs inside the test VM as root, started by the image's init (hack/vm/init)
# with the repository at /repo (read-only) and the result folder at /out.
# Prints `netprobe-agent doctor`, then runs pytest with the arguments the host
# wrote to /out/pytest-args (one per line); its junit XML and exit status go
# to /out for the host to read.
set -u
export PATH=/opt/netprobe-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root PYTHONPATH=/repo:/repo/hack PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
cd /repo
set -a; . /out/env; set +a

# What a node's agent finds mounted (the agent also mounts what it misses).
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname netprobe-vm
printf '#!/bin/sh\nexec /opt/netprobe-venv/bin/python -m node_agent.cli "$@"\n' > /usr/local/bin/netprobe-agent
chmod +x /usr/local/bin/netprobe-agent

echo "netprobe-vm: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
echo "netprobe-vm: ---- netprobe-agent doctor ----"
netprobe-agent doctor 2>&1 | tee /out/doctor.txt
echo "doctor exit ${PIPESTATUS[0]}" | tee -a /out/doctor.txt

mapfile -t args < /out/pytest-args
echo "netprobe-vm: ---- pytest ${args[*]} ----"
start=$(date +%s)
python -m pytest -p no:cacheprovider --junitxml=/out/junit.xml "${args[@]}" 2>&1 | tee /out/pytest.log
rc=${PIPESTATUS[0]}
echo "netprobe-vm: pytest exit $rc after $(( $(date +%s) - start )) s"
echo "$rc" > /out/pytest-rc
exit "$rc"
