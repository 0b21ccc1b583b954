"""Per-program kernel cost: ns per event, from the kernel's own BPF run-time statistics,
against an empty program on the same hook in the same window.

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

Beside the agent, an empty program sits on every hook the agent takes, of the
same kind (bench.hooks.EmptyPrograms), and two reference programs on
net:netif_receive_skb: one increments a per-CPU counter, one stores a clock
read (the least a program that records, or times, an event pays). The empty
ones are the floor of each hook on this machine (the statistics' own clock
reads included, a VM's clock too).
Each agent program is judged by how far above the empty program on its hook
it is, per window: at most +60 ns for a hook that fires per packet, +150 ns
for one that fires per connection event (bench.hooks.grain: from the
tracepoint's record, read from the kernel).

Traffic in each of `reps` windows: one iperf3 stream (segments and ACKs:
tcp_probe, receive path), short connections with every 10th to a closed port
(state changes, resets; NO_SOCKET drops), and a pair with 20 % random loss
(retransmits; NETFILTER_DROP drops). For the dns
program that is the cost it adds to packets that are not DNS (its port
check). Then `reps` windows carry only DNS: DNS_QUERIES queries over UDP,
one after the other, to a DNS server (netprobe_testbed.dns_server) in
another namespace; the dns figures of those windows are the cost on the DNS
path (every hop of a query and its response runs both hooks).
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import platform
import re
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.common import Figure, log, running_agent, spread
from bench.hooks import (CLOCK_BODY, COUNTER_BODY, EMPTY_KIND, EmptyPrograms, Hook, HookPrograms, grain,
                         hooks_of)
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
BUDGET_NS = {"packet": 60, "connection": 150}   # above the empty program on the same hook (issue 14)
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




# The reference programs beside the empty ones, each alone on REFERENCE_HOOK
# (an object of its own: BCC keeps one attachment per raw tracepoint in an
# object): what recording an event and timing one cost here at the least.
REFERENCE_HOOK = Hook("raw_tracepoint", "net:netif_receive_skb")
REFERENCES = {"per-CPU counter increment": COUNTER_BODY, "clock read into a per-CPU cell": CLOCK_BODY}


@contextmanager
def reference_programs():
    """REFERENCES attached for the block; yields {what: program id}."""
    loaded = []
    try:
        with ExitStack() as attached:
            ids = {}
            for what, body in REFERENCES.items():
                loaded.append(HookPrograms([REFERENCE_HOOK], lambda hook, body=body: body))
                ids[what] = attached.enter_context(loaded[-1].attached([REFERENCE_HOOK])).pop()
            yield ids
    finally:
        for programs in loaded:
            programs.cleanup()


def hooks_by_function() -> dict[str, tuple[str, list[Hook]]]:
    """BPF C function -> (its program, its hooks), over every strategy of the catalogue."""
    from node_agent.programs import CATALOGUE

    out: dict[str, tuple[str, list[Hook]]] = {}
    for spec in CATALOGUE.values():
        for strategy in spec.strategies:
            for attach in strategy.attachments:
                program, hooks = out.setdefault(attach.fn, (spec.name, []))
                if Hook(attach.kind, attach.target) not in hooks:
                    hooks.append(Hook(attach.kind, attach.target))
    return out


def function_of(kernel_name: str, functions) -> str | None:
    """The C function a loaded program runs, from its possibly truncated kernel name."""
    matches = [fn for fn in functions if fn == kernel_name
               or (len(kernel_name) == KERNEL_NAME_LEN and fn.startswith(kernel_name))]
    return matches[0] if len(matches) == 1 else None


def per_event(before: dict, after: dict) -> dict[int, tuple[int, float]]:
    """id -> (runs, ns per run) over a window; ns nan without runs."""
    out = {}
    for prog_id, rec in after.items():
        prev = before.get(prog_id, {})
        runs = rec.get("run_cnt", 0) - prev.get("run_cnt", 0)
        ns = rec.get("run_time_ns", 0) - prev.get("run_time_ns", 0)
        out[prog_id] = (runs, ns / runs if runs > 0 else float("nan"))
    return out


def run(workdir: Path, seconds: float, reps: int = 1, **_) -> list[Figure]:
    functions = hooks_by_function()
    with Lab(["client", "server", "lossy"], prefix="npk") as lab, bpf_stats_enabled():
        client, server, lossy = lab.pods["client"], lab.pods["server"], lab.pods["lossy"]
        resolver = lab.write_static_resolver(workdir / "pods-kernel-cost.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server"),
            "lossy": ("bench", "lossy-1", "lossy")})
        start_iperf3_server(server)
        # A port per window: one window's short connections leave ~10,000
        # client ports in TIME_WAIT towards the port they used, and the next
        # window's connect() on the same port then searches for a free one
        # (measured: 3,500 connections/s, then 200/s; the state-change figures
        # of later windows were of that search, with cold caches).
        for rep in range(reps):
            lab.serve_tcp("server", ECHO_PORT + rep)
            lab.serve_tcp("lossy", ECHO_PORT + rep)
        lab.add_random_drop("lossy", 20, from_ip=client.ip4)
        with running_agent(workdir, resolver, "kernel-cost") as agent:
            agent_ids = prog_ids_of(agent.pid)
            if not agent_ids:
                raise RuntimeError("the agent holds no BPF program file descriptors")
            agent_progs = prog_stats(agent_ids)
            # each agent program: its function, program and hooks (as loaded: the kind bpftool reports)
            owners = {}
            for prog_id, rec in agent_progs.items():
                fn = function_of(rec["name"], functions)
                if fn is None:   # loaded by the agent, attached by no strategy of the catalogue
                    owners[prog_id] = ("unknown", rec["name"], [])
                    continue
                program, hooks = functions[fn]
                owners[prog_id] = (program, fn, [h for h in hooks if h in hooks_of([program])] or hooks)
            empty = EmptyPrograms(sorted({h for _, _, hooks in owners.values() for h in hooks},
                                         key=lambda h: (h.target, h.kind)))
            try:
                with empty.attached(empty.hooks), reference_programs() as reference_ids:
                    ids = agent_ids | set(empty.ids.values()) | set(reference_ids.values())
                    mixed, dns_only = [], []
                    for rep in range(1, reps + 1):
                        before, started = prog_stats(ids), time.monotonic()
                        port = ECHO_PORT + rep - 1
                        background = [
                            lab.start_requests("client", server.ip4, port, refused_every=10),
                            lab.start_requests("client", lossy.ip4, port, size=16384),
                        ]
                        client.run(iperf3_client_argv(server.ip4, seconds), timeout=seconds + 60)
                        after, window = prog_stats(ids), time.monotonic() - started
                        for proc in background:
                            proc.kill()
                            proc.wait()
                        mixed.append((per_event(before, after), window))
                        log(f"window {rep}/{reps}: {seconds:g}s iperf3 stream, short connections (10 % refused), "
                            f"20 % lossy pair")
                    dns = server.popen([sys.executable, dns_server.__file__, "53"], stdout=subprocess.PIPE, text=True)
                    try:
                        if dns.stdout.readline().strip() != "ready":
                            raise RuntimeError("the DNS server did not start")
                        for rep in range(1, reps + 1):
                            before, started = prog_stats(ids), time.monotonic()
                            answered = client.run([sys.executable, "-c", _DNS_QUERIES, server.ip4, DNS_QUERIES],
                                                  timeout=DNS_QUERIES + 60).stdout.strip()
                            after, window = prog_stats(ids), time.monotonic() - started
                            dns_only.append((per_event(before, after), window))
                            log(f"DNS window {rep}/{reps}: {answered} of {DNS_QUERIES} queries answered "
                                f"in {window:.1f}s")
                    finally:
                        dns.kill()
                        dns.wait()
            finally:
                empty.cleanup()

    figures = _figures(mixed, owners, empty, reference_ids, "")
    dns_owners = {i: o for i, o in owners.items() if o[0] == "dns"}
    figures += _figures(dns_only, dns_owners, empty, {}, ", only DNS traffic")
    return figures


def _figures(windows: list[tuple[dict, float]], owners: dict, empty: EmptyPrograms, references: dict[str, int],
             tag: str) -> list[Figure]:
    """Each agent program against the empty program on its hook, window by window."""
    agent_figures, reference_figures = [], []

    def rate(prog_id):
        runs = [w[prog_id][0] for w, _ in windows]
        return f"{statistics.median(runs):,.0f} events per window ({statistics.median(r / t for r, (_, t) in zip(runs, windows)):,.0f}/s)"

    def ns_runs(prog_id):
        return [w[prog_id][1] for w, _ in windows]

    for prog_id, (program, fn, hooks) in sorted(owners.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        hook = hooks[0] if hooks else None
        kind = grain(hook) if hook else None
        floor_id = empty.ids.get(hook) if hook else None
        what = f"{program}: {fn} ({', '.join(h.target for h in hooks)})" + tag
        own = ns_runs(prog_id)
        floor = ns_runs(floor_id) if floor_id is not None else [float("nan")] * len(own)
        deltas = [a - b for a, b in zip(own, floor) if not (math.isnan(a) or math.isnan(b))]
        budget = BUDGET_NS.get(kind, BUDGET_NS["packet"])
        grain_note = {"packet": "per packet (the tracepoint's record carries an sk_buff)",
                      "connection": "per connection event (the record carries a socket, no sk_buff)"}.get(
            kind, "unknown grain: judged as per packet")
        if floor_id is None:
            valid_own = [v for v in own if not math.isnan(v)]
            agent_figures.append(Figure(NAME, what, statistics.median(valid_own) if valid_own else float("nan"),
                                        "ns/event", detail=(f"no empty program for a {hook.kind} hook" if hook else
                                                            "no hook in the catalogue") +
                                        f": absolute figure, no verdict; {grain_note}"))
            continue
        if not deltas:
            agent_figures.append(Figure(NAME, what, float("nan"), "ns/event over empty", f"<= {budget}",
                                        f"no events in the windows; {grain_note}"))
            continue
        valid_own = [v for v in own if not math.isnan(v)]
        agent_figures.append(Figure(
            NAME, what, statistics.median(deltas), "ns/event over empty", f"<= {budget}",
            f"{grain_note}; {statistics.median(valid_own):,.0f} ns/event vs "
            f"{statistics.median([v for v in floor if not math.isnan(v)]):,.0f} for an empty "
            f"{EMPTY_KIND[hook.kind]} program on {hook.target}; over empty by window: "
            f"{spread(deltas, '{:,.0f}')}; {rate(prog_id)}, {hook.kind}"))
    shown = {owners[i][2][0] for i in owners if owners[i][2]}
    listed = set()
    for hook, prog_id in empty.ids.items():
        if hook not in shown or prog_id in listed:   # one empty program may serve two hooks (tp_btf and raw)
            continue
        listed.add(prog_id)
        values = [v for v in ns_runs(prog_id) if not math.isnan(v)]
        what = f"reference: empty {EMPTY_KIND[hook.kind]} program ({hook.target}){tag}"
        reference_figures.append(Figure(NAME, what, statistics.median(values) if values else float("nan"),
                                        "ns/event", detail=(spread(values, "{:,.0f}") + "; " + rate(prog_id))
                                        if values else "no events in the windows"))
    for what, prog_id in references.items():
        values = [v for v in ns_runs(prog_id) if not math.isnan(v)]
        reference_figures.append(Figure(
            NAME, f"reference: {what} ({REFERENCE_HOOK.target}, {REFERENCE_HOOK.kind}){tag}",
            statistics.median(values) if values else float("nan"), "ns/event",
            detail=(spread(values, "{:,.0f}") + "; " + rate(prog_id)) if values else "no events"))
    return agent_figures + sorted(reference_figures, key=lambda f: f.what)
