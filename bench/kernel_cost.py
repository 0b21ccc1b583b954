"""Per-program kernel cost: ns per event, from the kernel's own BPF run-time statistics.

While run-time statistics are on (kernel.bpf_stats_enabled) the kernel adds,
for every BPF program, the time each run took (run_time_ns) and the number of
runs (run_cnt); bpftool shows both. They are switched on with the bpf()
command BPF_ENABLE_STATS rather than by writing the sysctl: the command's file
descriptor holds them on for as long as this process keeps it, whatever
anyone else does to the sysctl meanwhile (a save-and-restore of the sysctl by
two users at once switches it off under one of them), and closing it leaves
the sysctl as it was. The agent's programs are found through the agent process's file
descriptors (/proc/<pid>/fdinfo prog_id), named by the BPF C function they run,
and attributed to their catalogue program and hook by the agent's own program
specs (node_agent.programs.CATALOGUE). The cost is the delta over a traffic window, divided by the
delta of runs: one run = one event (a tracepoint hit).

Two reference programs run in the same window on net:netif_receive_skb: an
empty one and one that increments a per-CPU counter. They show the floor of
this machine (the statistics' own clock reads included, a VM's clock too), so
the agent's figures can be read against what any program costs here. A third,
empty, on skb:kfree_skb as a raw tracepoint, is the floor of the drop path
(rarer, colder events) that the drops program sits on.

Traffic while measuring: one iperf3 stream (segments and ACKs: tcp_probe,
receive path), short connections with every 10th to a closed port (state
changes, resets; NO_SOCKET drops), and a pair with 20 % random loss
(retransmits; NETFILTER_DROP drops). For the dns
program that is the cost it adds to packets that are not DNS (its port
check). A second window carries only DNS: DNS_QUERIES queries over UDP,
one after the other, to a DNS server (netprobe_testbed.dns_server) in
another namespace; the dns figures of that window are the cost on the DNS
path (every hop of a query and its response runs both hooks).
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench.common import Figure, log, running_agent
from bench.traffic import iperf3_client_argv, start_iperf3_server
from netprobe_testbed import dns_server
from netprobe_testbed.netns import Lab

NAME = "kernel_cost"
DNS_QUERIES = 3000

# Sequential UDP queries (one outstanding), each waited for (1 s at most);
# prints how many were answered.
_DNS_QUERIES = r"""
import socket, sys
host, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
query = bytes.fromhex("0000010000010000000000000162026f6b04746573740000010001")   # b.ok.test A
answered = 0
for i in range(count):
    s.sendto(i.to_bytes(2, "big") + query[2:], (host, 53))
    try:
        s.recv(4096)
        answered += 1
    except OSError:
        pass
print(answered)
"""
TARGET_NS = 100
ECHO_PORT = 8080
KERNEL_NAME_LEN = 15  # BPF_OBJ_NAME_LEN - 1: the kernel keeps this much of a program's name


SYS_BPF = 321             # x86_64
BPF_ENABLE_STATS = 32     # enum bpf_cmd
BPF_STATS_RUN_TIME = 0    # enum bpf_stats_type


@contextmanager
def bpf_stats_enabled():
    """BPF run-time statistics on for the block (reference-counted by the kernel)."""
    if platform.machine() != "x86_64":
        raise RuntimeError("bpf() syscall number known for x86_64 only")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)  # union bpf_attr { struct { __u32 type; } enable_stats; }
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"BPF_ENABLE_STATS failed: {os.strerror(err)} (needs CAP_SYS_ADMIN, Linux >= 5.8)")
    try:
        yield
    finally:
        os.close(fd)


def functions_by_program() -> dict[str, str]:
    """BPF C function name -> "program (hook, ...)" from the agent's catalogue."""
    from node_agent.programs import CATALOGUE

    hooks: dict[str, tuple[str, list[str]]] = {}
    for spec in CATALOGUE.values():
        for strategy in spec.strategies:
            for attach in strategy.attachments:
                program, targets = hooks.setdefault(attach.fn, (spec.name, []))
                if attach.target not in targets:
                    targets.append(attach.target)
    return {fn: f"{program}: {fn} ({', '.join(targets)})" for fn, (program, targets) in hooks.items()}


def prog_ids_of(pid: int) -> set[int]:
    """IDs of the BPF programs a process holds open."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            m = re.search(r"^prog_id:\s+(\d+)", info.read_text(), flags=re.M)
        except OSError:
            continue  # the fd closed meanwhile
        if m:
            ids.add(int(m.group(1)))
    return ids


def prog_stats(ids: set[int]) -> dict[int, dict]:
    """id -> bpftool's record (name, type, run_time_ns, run_cnt) for the given programs."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return {p["id"]: p for p in json.loads(out.stdout) if p["id"] in ids}


REFERENCE_TRACEPOINT = "net:netif_receive_skb"
_REFERENCE_PROGRAMS = r"""
BPF_PERCPU_ARRAY(ref_counter, u64, 1);

int ref_empty(void *ctx)
{
    return 0;
}

int ref_empty_drop(void *ctx)
{
    return 0;
}

int ref_count(void *ctx)
{
    u32 zero = 0;
    u64 *value = ref_counter.lookup(&zero);
    if (value)
        (*value)++;
    return 0;
}
"""
DROP_TRACEPOINT = "kfree_skb"   # skb:kfree_skb, raw
REFERENCES = {"ref_empty": "reference: empty program", "ref_count": "reference: per-CPU counter increment",
              "ref_empty_drop": "reference: empty program"}
REFERENCE_HOOKS = {"ref_empty": REFERENCE_TRACEPOINT, "ref_count": REFERENCE_TRACEPOINT,
                   "ref_empty_drop": "skb:kfree_skb, raw"}


class ReferencePrograms:
    """The reference programs, compiled and attached in this process.

    One BPF object per program: BCC keeps one attachment per tracepoint name
    in an object, so a second program attached to the same tracepoint would
    be left attached by cleanup() (it was, and ran on for the rest of the
    bench)."""

    def __init__(self):
        from bcc import BPF

        from node_agent.kernel.headers import find_kernel_headers

        find_kernel_headers(set_env=True)  # BCC_KERNEL_SOURCE, as the agent does
        self.objects = []
        try:
            for fn in REFERENCES:
                bpf = BPF(text=_REFERENCE_PROGRAMS)
                self.objects.append(bpf)
                if fn == "ref_empty_drop":
                    bpf.attach_raw_tracepoint(tp=DROP_TRACEPOINT, fn_name=fn)
                else:
                    bpf.attach_tracepoint(tp=REFERENCE_TRACEPOINT, fn_name=fn)
        except Exception:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        for bpf in self.objects:
            bpf.cleanup()
        self.objects = []



def describe_prog(kernel_name: str, owners: dict[str, str]) -> str:
    """What a loaded program is, from its possibly truncated kernel name."""
    matches = [fn for fn in owners if fn == kernel_name
               or (len(kernel_name) == KERNEL_NAME_LEN and fn.startswith(kernel_name))]
    if len(matches) == 1:
        return owners[matches[0]]
    return f"unknown program {kernel_name}"


def run(workdir: Path, seconds: float, **_) -> list[Figure]:
    owners = functions_by_program()
    with Lab(["client", "server", "lossy"], prefix="npk") as lab, bpf_stats_enabled():
        client, server, lossy = lab.pods["client"], lab.pods["server"], lab.pods["lossy"]
        resolver = lab.write_static_resolver(workdir / "pods-kernel-cost.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server"),
            "lossy": ("bench", "lossy-1", "lossy")})
        start_iperf3_server(server)
        lab.serve_tcp("server", ECHO_PORT)
        lab.serve_tcp("lossy", ECHO_PORT)
        lab.add_random_drop("lossy", 20, from_ip=client.ip4)
        with running_agent(workdir, resolver, "kernel-cost") as agent:
            ids = prog_ids_of(agent.pid)
            if not ids:
                raise RuntimeError("the agent holds no BPF program file descriptors")
            references = ReferencePrograms()
            try:
                reference_ids = prog_ids_of(os.getpid())
                ids |= reference_ids
                before = prog_stats(ids)
                started = time.monotonic()
                background = [
                    lab.start_requests("client", server.ip4, ECHO_PORT, refused_every=10),
                    lab.start_requests("client", lossy.ip4, ECHO_PORT, size=16384),
                ]
                log(f"traffic for {seconds:g}s: iperf3 stream, short connections (10 % refused), "
                    "20 % lossy pair")
                client.run(iperf3_client_argv(server.ip4, seconds), timeout=seconds + 60)
                after = prog_stats(ids)
                window = time.monotonic() - started
                for proc in background:
                    proc.kill()
                dns_before, dns_window = prog_stats(ids), None
                dns = server.popen([sys.executable, dns_server.__file__, "53"], stdout=subprocess.PIPE, text=True)
                if dns.stdout.readline().strip() != "ready":
                    raise RuntimeError("the DNS server did not start")
                started = time.monotonic()
                answered = client.run([sys.executable, "-c", _DNS_QUERIES, server.ip4, DNS_QUERIES],
                                      timeout=DNS_QUERIES + 60).stdout.strip()
                dns_after, dns_window = prog_stats(ids), time.monotonic() - started
                log(f"DNS window: {answered} of {DNS_QUERIES} queries answered in {dns_window:.1f}s")
            finally:
                references.cleanup()

    figures = _figures(before, after, window, reference_ids, owners, "")
    dns_ids = {i for i, rec in dns_after.items()
               if i in reference_ids or describe_prog(rec["name"], owners).startswith("dns:")}
    figures += _figures({i: dns_before[i] for i in dns_ids if i in dns_before},
                        {i: dns_after[i] for i in dns_ids}, dns_window, reference_ids, owners,
                        ", only DNS traffic")
    return figures


def _figures(before: dict, after: dict, window: float, reference_ids: set[int], owners: dict[str, str],
             tag: str) -> list[Figure]:
    agent_figures, reference_figures = [], []
    for prog_id, rec in after.items():
        prev = before.get(prog_id, {})
        runs = rec.get("run_cnt", 0) - prev.get("run_cnt", 0)
        ns = rec.get("run_time_ns", 0) - prev.get("run_time_ns", 0)
        if prog_id in reference_ids:
            what, target, into = f"{REFERENCES.get(rec['name'], rec['name'])} ({REFERENCE_HOOKS.get(rec['name'], '?')}){tag}", "", \
                reference_figures
        else:
            what, target, into = describe_prog(rec["name"], owners) + tag, f"<= {TARGET_NS}", agent_figures
        if runs <= 0:
            into.append(Figure(NAME, what, float("nan"), "ns/event", target, "no events in the window"))
        else:
            into.append(Figure(NAME, what, ns / runs, "ns/event", target,
                               f"{runs} events in {window:.1f}s ({runs / window:,.0f}/s), {rec['type']}"))
    # each agent program against the empty program on its own path: the drop
    # path's (kfree_skb) for the programs there, the receive path's for the rest
    floors = {hook: f.value for f in reference_figures for fn, hook in REFERENCE_HOOKS.items()
              if fn.startswith("ref_empty") and f.what == f"{REFERENCES[fn]} ({hook}){tag}" and not math.isnan(f.value)}
    for f in agent_figures:
        hook = REFERENCE_HOOKS["ref_empty_drop"] if "(skb:kfree_skb)" in f.what else REFERENCE_TRACEPOINT
        if hook in floors and not math.isnan(f.value):
            f.detail += f"; {f.value - floors[hook]:,.0f} ns above the empty program on {hook}"
    return sorted(agent_figures, key=lambda f: f.what) + sorted(reference_figures, key=lambda f: f.what)
