"""Network namespaces as pods: the test hosts of the demo, the tests and bench/.

A Lab is a set of network namespaces ("pods"), each with one veth whose peer is
enslaved to a bridge in the root namespace, so pods reach each other and the
host (the bridge holds the .1 address). Every Lab takes a free slot n from
lock files, so labs of parallel test runs never share names or subnets:

    pods    10.77.<n>.<i>/24 and fd77:<n>::<i>/64   (i = 2, 3, ... in order)
    host    10.77.<n>.1      and fd77:<n>::1        (the bridge, root netns)

Traffic stays on this machine: only these namespaces and loopback.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from netprobe_testbed.polling import wait_for
from netprobe_testbed.processes import die_with_parent

LOCK_DIR = Path("/run/netprobe-lab")
MAX_SLOTS = 200

# A small accept-echo-close server (reads until the client half-closes, so any
# payload size works); prints "ready" once listening on [::]
# (dual stack, so one server answers IPv4 and IPv6).
_ECHO_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(1024)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.settimeout(30)
        data = b""
        while True:  # the client half-closes after its payload
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        if data:
            c.sendall(data)
    except OSError:
        pass
    finally:
        c.close()
"""

# Sequential connections: connect, send, half-close, read the echo, close. Prints the
# number that completed, which is the exact count tests assert on.
_CONNECT_MANY = r"""
import socket, sys
host, port, count, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
payload = b"x" * size
ok = 0
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=timeout) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while len(got) < size:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
            if got == payload:
                ok += 1
    except OSError as e:
        print("error:", e, file=sys.stderr)
print(ok)
"""


# Connections to a port nothing listens on; prints how many were refused (a
# reset sent by the peer's kernel for no socket).
_CONNECT_REFUSED = r"""
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
refused = 0
for _ in range(count):
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        refused += 1
print(refused)
"""


# Requests in a loop until killed: `batch` requests (as above), then `pause`
# seconds, forever. With refused_every = n > 0, every n-th request goes to
# `closed_port` instead (a refused connection: a reset). One long-lived process
# per stream keeps the generator's own CPU low and the count of processes known.
_REQUEST_LOOP = r"""
import socket, sys, time
host, port, size, batch, pause, closed_port, refused_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
payload = b"r" * size
n = 0
while True:
    for _ in range(batch):
        n += 1
        target = closed_port if refused_every and n % refused_every == 0 else port
        try:
            with socket.create_connection((host, target), timeout=10) as c:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                while c.recv(65536):
                    pass
        except OSError:
            pass
    if pause:
        time.sleep(pause)
"""


def _sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


@dataclass
class Pod:
    name: str
    netns: str
    ip4: str
    ip6: str
    host_veth: str
    cpu: int | None = None
    direct_ips: list[str] = field(default_factory=list)   # on direct links to other pods (Lab.link)
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def _argv(self, argv) -> list[str]:
        pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        return ["ip", "netns", "exec", self.netns, *pin, *map(str, argv)]

    def run(self, argv, check: bool = True, timeout: float | None = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self._argv(argv), check=check, capture_output=True, text=True, timeout=timeout)

    def popen(self, argv, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self._argv(argv), preexec_fn=die_with_parent(), **kw)  # must not outlive its test
        self.processes.append(proc)
        return proc


class Lab:
    """Network namespaces joined by a bridge; a context manager that removes all it made."""

    def __init__(self, pod_names: list[str], prefix: str = "np", pin_cpu: int | None = None):
        """`pin_cpu` runs every lab process on that CPU. A veth hands a packet to
        the backlog of the CPU that sent it, so a sender that moves between CPUs
        can reorder its own segments, and TCP may answer with a retransmission
        although nothing was lost: tests that assert "no retransmits without
        loss" pin."""
        if not pod_names:
            raise ValueError("a lab needs at least one pod")
        if len(pod_names) > 250:
            raise ValueError("at most 250 pods in one lab")
        self.pod_names = list(pod_names)
        self.prefix = prefix
        self.pin_cpu = pin_cpu
        self.slot: int | None = None
        self.pods: dict[str, Pod] = {}
        self._lock_fd: int | None = None

    # --- lifecycle -------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br{self.slot}"

    @property
    def host_ip4(self) -> str:
        return f"10.77.{self.slot}.1"

    @property
    def host_ip6(self) -> str:
        return f"fd77:{self.slot:x}::1"

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        self._take_slot()
        self._remove_leftovers()
        try:
            _sh("ip", "link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            _sh("ip", "addr", "add", f"{self.host_ip4}/24", "dev", self.bridge)
            _sh("sysctl", "-qw", f"net.ipv6.conf.{self.bridge}.accept_dad=0")
            _sh("ip", "-6", "addr", "add", f"{self.host_ip6}/64", "dev", self.bridge, "nodad")
            _sh("ip", "link", "set", self.bridge, "up")
            for i, name in enumerate(self.pod_names, start=2):
                self.pods[name] = self._add_pod(name, i)
        except Exception:
            self.stop()
            raise

    def _add_pod(self, name: str, index: int) -> Pod:
        netns = f"{self.prefix}{self.slot}-{name}"
        host_veth = f"{self.prefix}{self.slot}v{index}"
        if len(host_veth) > 15:
            raise ValueError(f"interface name {host_veth!r} too long; use a shorter prefix")
        pod = Pod(name, netns, f"10.77.{self.slot}.{index}", f"fd77:{self.slot:x}::{index:x}", host_veth,
                  cpu=self.pin_cpu)
        _sh("ip", "netns", "add", netns)
        _sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _sh("ip", "link", "set", host_veth, "master", self.bridge)
        _sh("ip", "link", "set", host_veth, "up")
        pod.run(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        # No tail-loss probes: on a loaded 2-core machine a late ACK makes TCP
        # probe with a real retransmission, and a pair without loss must show
        # none. Loss is still recovered (RTO, fast retransmit) and counted.
        pod.run(["sysctl", "-qw", "net.ipv4.tcp_early_retrans=0"])
        pod.run(["ip", "link", "set", "lo", "up"])
        pod.run(["ip", "addr", "add", f"{pod.ip4}/24", "dev", "eth0"])
        pod.run(["ip", "-6", "addr", "add", f"{pod.ip6}/64", "dev", "eth0", "nodad"])
        pod.run(["ip", "link", "set", "eth0", "up"])
        pod.run(["ip", "route", "add", "default", "via", self.host_ip4])
        return pod

    def kill_processes(self) -> None:
        """Ends every process started in the lab's pods (servers, traffic)."""
        for pod in self.pods.values():
            for proc in pod.processes:
                if proc.poll() is None:
                    proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self) -> None:
        self.kill_processes()
        self.pods.clear()
        if self.slot is not None:
            self._remove_leftovers()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.slot = None

    def _take_slot(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            fd = os.open(LOCK_DIR / f"slot-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.slot, self._lock_fd = slot, fd
            return
        raise RuntimeError(f"all {MAX_SLOTS} lab slots are in use ({LOCK_DIR})")

    def _remove_leftovers(self) -> None:
        """Remove what a lab of this slot made, also one that crashed before."""
        mine = f"{self.prefix}{self.slot}-"
        # Host-side veths first: deleting one destroys its pair at once, while a
        # deleted namespace frees its interfaces later, from a kernel work queue.
        veth = f"{self.prefix}{self.slot}v"
        for line in _sh("ip", "-o", "link", "show", "type", "veth", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(veth) and name[len(veth):].isdigit():
                _sh("ip", "link", "del", name, check=False)
        for line in _sh("ip", "netns", "list", check=False).stdout.splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(mine):
                _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)

    def link(self, a: str, b: str) -> tuple[str, str]:
        """Join pods `a` and `b` by a veth pair of their own, outside the bridge.

        The pair gets 10.78.<slot>.<k>/31 (a point-to-point link), so traffic
        between the returned addresses crosses exactly one veth pair: what a
        benchmark "through a veth pair" measures. Returns (address of a,
        address of b); both are also listed in the pods' `direct_ips` (and so
        in the static resolver file). At most 127 links per lab.
        """
        pod_a, pod_b = self.pods[a], self.pods[b]
        links = sum(len(p.direct_ips) for p in self.pods.values()) // 2
        if links >= 127:
            raise ValueError("at most 127 direct links in one lab")
        ip_a, ip_b = f"10.78.{self.slot}.{2 * links}", f"10.78.{self.slot}.{2 * links + 1}"
        if_a, if_b = f"p2p{links}{b}"[:15], f"p2p{links}{a}"[:15]
        _sh("ip", "link", "add", if_a, "netns", pod_a.netns, "type", "veth", "peer", "name", if_b,
            "netns", pod_b.netns)
        for pod, ifname, ip in ((pod_a, if_a, ip_a), (pod_b, if_b, ip_b)):
            pod.run(["ip", "addr", "add", f"{ip}/31", "dev", ifname])
            pod.run(["ip", "link", "set", ifname, "up"])
            pod.direct_ips.append(ip)
        return ip_a, ip_b

    # --- traffic ---------------------------------------------------------
    def serve_tcp(self, pod: str, port: int) -> subprocess.Popen:
        """Start an accept-echo-close server in `pod`; returns once it listens."""
        proc = self.pods[pod].popen([sys.executable, "-c", _ECHO_SERVER, str(port)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"echo server in {pod} did not start: {proc.stderr.read()}")
        return proc

    def connect_many(self, src: str, dst_ip: str, port: int, count: int,
                     payload: bytes = b"x" * 64, timeout: float = 10.0) -> int:
        """`count` sequential connections from `src`; returns how many completed."""
        res = self.pods[src].run([sys.executable, "-c", _CONNECT_MANY, dst_ip, port, count,
                                  len(payload), timeout], timeout=count * timeout + 30)
        return int(res.stdout.strip() or 0)

    def connect_refused(self, src: str, dst_ip: str, port: int, count: int) -> int:
        """`count` connections from `src` to a closed port; returns how many were refused."""
        res = self.pods[src].run([sys.executable, "-c", _CONNECT_REFUSED, dst_ip, port, count],
                                 timeout=count * 5 + 30)
        return int(res.stdout.strip() or 0)

    def start_requests(self, src: str, dst_ip: str, port: int, size: int = 64, batch: int = 1,
                       pause: float = 0.0, closed_port: int = 9, refused_every: int = 0) -> subprocess.Popen:
        """Requests from `src` in a loop until the lab stops (see _REQUEST_LOOP)."""
        return self.pods[src].popen(
            [sys.executable, "-c", _REQUEST_LOOP, dst_ip, port, size, batch, pause, closed_port, refused_every],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def add_random_drop(self, pod: str, percent: int, from_ip: str | None = None) -> None:
        """Drop `percent` % of the packets arriving at `pod` (optionally only from `from_ip`).

        Dropping on the receiver's input looks like loss on the wire to the
        sender, whose TCP then retransmits.
        """
        if not 0 < percent <= 100:
            raise ValueError("percent must be in 1..100")
        match = ""
        if from_ip is not None:
            family = "ip6" if ipaddress.ip_address(from_ip).version == 6 else "ip"
            match = f"{family} saddr {from_ip} "
        sample = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        ruleset = (
            "table inet netprobe_lab {\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    {match}meta l4proto tcp {sample}drop\n"
            "  }\n"
            "}\n"
        )
        proc = subprocess.run(["ip", "netns", "exec", self.pods[pod].netns, "nft", "-f", "-"],
                              input=ruleset, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed in {pod}: {proc.stderr.strip()}")

    def clear_drops(self, pod: str) -> None:
        self.pods[pod].run(["nft", "delete", "table", "inet", "netprobe_lab"], check=False)

    # --- labels ----------------------------------------------------------
    def write_static_resolver(self, path: str | Path,
                              names: dict[str, tuple[str, str] | tuple[str, str, str]]) -> Path:
        """Write the agent's static resolver file naming lab pods.

        `names` maps a lab pod to (namespace, pod) or (namespace, pod, workload);
        pods not in `names` are left out (they resolve as unknown).
        """
        entries = []
        for lab_pod, ident in names.items():
            pod = self.pods[lab_pod]
            namespace, pod_name, *rest = ident
            entry = {"namespace": namespace, "pod": pod_name, "ips": [pod.ip4, pod.ip6, *pod.direct_ips]}
            if rest and rest[0]:
                entry["workload"] = rest[0]
            entries.append(entry)
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump({"pods": entries}, sort_keys=False))
        tmp.replace(path)  # atomic: a watching agent never reads half a file
        return path


# Slow machines (the 6.1 kernel under QEMU's TCG, make vm-test) stretch every
# wait by this factor; what is awaited stays the same.
TIME_SCALE = float(os.environ.get("NETPROBE_TEST_TIME_SCALE", "1"))


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; raise TimeoutError otherwise."""
    return wait_for(what, predicate, timeout=timeout * TIME_SCALE, interval=interval)
