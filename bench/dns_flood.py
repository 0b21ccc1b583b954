"""DNS query flood: the agent's CPU at two query rates, and the dns program's ns/event under the flood.

The dns program counts in the kernel; the agent reads its maps only when
scraped (and then sweeps the pending table for timeouts), so its CPU time
should follow the scrapes and the number of series, not the query rate. An
agent running only dns is scraped every SCRAPE_EVERY seconds through windows
of equal length (2 x --seconds, at least 10 s), --reps pairs of them
alternating: LOW_RATE queries/s, then as many as the client gets answered
(IN_FLIGHT outstanding at most); then one flood window without scrapes. Once
with query names off, once with query_names QUERY_NAMES of the FLOOD_NAMES
names the client cycles through (the rest is `other`: a bounded series count
whatever the rate). Every query is answered at once by
a responder that sends it back with the response bit set (no parsing, so the
server is not what limits the flood), over the lab's bridge: each query and
response crosses two veths and the bridge, running both of the program's
hooks on every hop.

CPU time of the agent comes from its own cpuacct cgroup (bench.common.CpuAccount,
as agent_resources); the program's cost from the kernel's BPF run-time
statistics (bench.kernel_cost), next to the empty reference program on
net:netif_receive_skb in the same window.
"""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import CpuAccount, Figure, log, running_agent, spread
from bench.hooks import EMPTY_KIND, Hook, empty_programs_on, hooks_of
from bench.kernel_cost import bpf_stats_enabled, function_of, hooks_by_function, prog_ids_of, prog_stats
from bench.metrics_render import count_series
from netprobe_testbed.netns import Lab

NAME = "dns_flood"
SCRAPE_EVERY = 2.0
LOW_RATE = 200          # queries/s in the low window
IN_FLIGHT = 32          # outstanding queries at most in the high window (a resolver's burst, not a DoS)
FLOOD_NAMES = 256       # distinct names the client cycles through
QUERY_NAMES = 64        # the agent's query_names cap
MAX_RATE = 50_000       # bound on the high window's rate, whatever the machine

# Answers every datagram on port 53 with itself, the response bit set (NOERROR).
_RESPONDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    if len(data) >= 12:
        s.sendto(data[:2] + bytes([data[2] | 0x80, data[3] & 0xf0]) + data[4:], peer)
"""

# argv: server, seconds, rate (0: as fast as answered), in flight, names.
# Prints {"sent", "answered", "seconds"} as JSON.
_CLIENT = r"""
import json, select, socket, sys, time
host, seconds, rate, in_flight, names = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
max_rate = float(sys.argv[6])
def wire(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
questions = [wire(f"n{i}.flood.test") + b"\x00\x01\x00\x01" for i in range(names)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
s.connect((host, 53))
sent = answered = outstanding = 0
start = time.monotonic()
end, next_send, last_answer = start + seconds, start, start
interval = 1 / (rate or max_rate)
while True:
    now = time.monotonic()
    if now >= end:
        break
    while outstanding < in_flight and now >= next_send:
        s.send((sent & 0xffff).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + questions[sent % names])
        sent += 1
        outstanding += 1
        next_send += interval
    if now - last_answer > 0.5:       # lost: do not stall on them
        outstanding, last_answer = 0, now
    readable, _, _ = select.select([s], [], [], max(0.0, min(next_send - now, 0.01)) if outstanding < in_flight else 0.01)
    if readable:
        while True:
            try:
                s.recv(2048)
            except BlockingIOError:
                break
            answered += 1
            outstanding = max(0, outstanding - 1)
            last_answer = time.monotonic()
print(json.dumps({"sent": sent, "answered": answered, "seconds": time.monotonic() - start}))
"""


def _window(agent, cpu: CpuAccount, client, server_ip: str, seconds: float, rate: float, ids: set[int],
            scrape: bool) -> dict:
    """Queries for `seconds` at `rate` (0: flood), scraping on schedule if `scrape`; CPU and program
    statistics deltas."""
    stats0, cpu0 = prog_stats(ids), cpu.total_ns()
    proc = client.popen([sys.executable, "-c", _CLIENT, server_ip, str(seconds), str(rate), str(IN_FLIGHT),
                         str(FLOOD_NAMES), str(MAX_RATE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    next_scrape, exposition, scrapes = time.monotonic(), "", 0
    deadline = time.monotonic() + seconds + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if scrape and time.monotonic() >= next_scrape:
            exposition = agent.metrics_text()
            scrapes += 1
            next_scrape += SCRAPE_EVERY
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        raise RuntimeError("the DNS client did not finish")
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the DNS client failed: {err[-500:]}")
    result = json.loads(out)
    cpu1, stats1 = cpu.total_ns(), prog_stats(ids)
    runs = {i: (rec.get("run_cnt", 0) - stats0.get(i, {}).get("run_cnt", 0),
                rec.get("run_time_ns", 0) - stats0.get(i, {}).get("run_time_ns", 0), rec["name"])
            for i, rec in stats1.items()}
    return {**result, "cpu": (cpu1 - cpu0) / 1e9, "scrapes": scrapes,
            "series": count_series(exposition) if exposition else 0,
            "qps": result["answered"] / result["seconds"], "runs": runs}


def run(workdir: Path, seconds: float, reps: int = 3, **_) -> list[Figure]:
    window_seconds = max(2 * seconds, 10)
    owners = hooks_by_function()
    runs = {}
    with Lab(["client", "server"], prefix="npd") as lab, bpf_stats_enabled():
        client, server = lab.pods["client"], lab.pods["server"]
        resolver = lab.write_static_resolver(workdir / "pods-dns-flood.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("kube-system", "coredns-1", "coredns")})
        responder = server.popen([sys.executable, "-c", _RESPONDER, server.ip4], stdout=subprocess.PIPE, text=True)
        try:
            if responder.stdout.readline().strip() != "ready":
                raise RuntimeError("the DNS responder did not start")
            for names in (0, QUERY_NAMES):
                runs[names] = _agent_run(workdir, resolver, client, server.ip4, names, window_seconds, reps)
        finally:
            responder.kill()
            responder.wait()
    return _figures(runs, owners)


def _agent_run(workdir: Path, resolver: Path, client, server_ip: str, names: int, window_seconds: float,
               reps: int) -> dict:
    """One agent with only dns (query_names `names`): `reps` pairs of low and high
    windows, alternating (this machine's load drifts), scraped; then one flood
    window without scrapes."""
    with running_agent(workdir, resolver, f"dns-flood-{names}", programs={"dns": {"query_names": names}}) as agent:
        ids = prog_ids_of(agent.pid)
        if not ids:
            raise RuntimeError("the agent holds no BPF program file descriptors")
        cpu = CpuAccount(agent.pid)
        try:
            # an empty program on each of dns's hooks, as this kernel attaches them: each dns
            # program is set against the one on its own hook
            dns_hooks = hooks_of(["dns"])
            with empty_programs_on(dns_hooks) as empty:
                floor_ids = {hook.target: empty.ids[hook] for hook in dns_hooks}
                agent.metrics_text()          # the first scrape builds caches: not steady state
                windows: dict[tuple[str, bool], list[dict]] = {}
                for label, rate, scrape in [("low", LOW_RATE, True), ("high", 0, True)] * reps + [("high", 0, False)]:
                    w = _window(agent, cpu, client, server_ip, window_seconds, rate, ids | set(floor_ids.values()), scrape)
                    windows.setdefault((label, scrape), []).append(w)
                    log(f"query_names {names}, {label:>4} rate, {'scraped' if scrape else 'not scraped':<11}: "
                        f"{w['answered']:,} of {w['sent']:,} answered in {w['seconds']:.1f}s ({w['qps']:,.0f}/s), "
                        f"agent CPU {w['cpu']:.4f}s, {w['scrapes']} scrapes, {w['series']:,} series")
        finally:
            cpu.close()
        return {"windows": windows, "floor_ids": floor_ids,
                "how": "cpuacct cgroup" if cpu.precise else "clock ticks of /proc/<pid>/stat"}


def _figures(runs: dict, owners: dict[str, tuple[str, list[Hook]]]) -> list[Figure]:
    def percent(w):
        return w["cpu"] / w["seconds"] * 100

    figures = []
    for names, result in runs.items():
        windows, tag = result["windows"], f"query_names {names}"
        for (label, scrape), ws in windows.items():
            cpus = [percent(w) for w in ws]
            w = ws[0]
            figures.append(Figure(
                NAME, f"agent CPU, {label} query rate, {'scraped' if scrape else 'not scraped'}, {tag}",
                statistics.median(cpus), "% of a CPU",
                detail=f"{spread(cpus)} over {w['seconds']:.0f}s windows at "
                       f"{statistics.median(x['qps'] for x in ws):,.0f} answered queries/s (median), "
                       f"{w['scrapes']} scrapes of {ws[-1]['series']:,} series each; only dns, "
                       f"{FLOOD_NAMES} names cycled"))
        low, high, idle = windows["low", True], windows["high", True], windows["high", False]
        ratios = [percent(h) / max(percent(lo), 1e-9) for lo, h in zip(low, high)]
        figures += [
            Figure(NAME, f"query rate high/low, {tag}",
                   statistics.median(h["qps"] for h in high) / max(statistics.median(x["qps"] for x in low), 1e-9),
                   "ratio", detail=f"medians of {len(low)} windows each"),
            Figure(NAME, f"agent CPU high/low query rate, scraped, {tag}", statistics.median(ratios), "ratio",
                   detail=f"1 = independent of the query rate; pairs: {spread(ratios)}; CPU time from the "
                          f"{result['how']}; a flood window without scrapes: {percent(idle[0]):.3f} % (what the "
                          "agent is charged doing nothing: kernels without IRQ time accounting charge softirq "
                          "work to the task it interrupts)"),
        ]
        def floor_ns(target: str) -> float:
            """The empty program's ns/event on `target` over the flood windows."""
            floor = []
            for h in high:
                n, ns, _ = h["runs"].get(result["floor_ids"].get(target), (0, 0, ""))
                floor += [ns / n] if n > 0 else []
            return statistics.median(floor) if floor else math.nan
        per_prog: dict[str, list[tuple[int, int]]] = {}
        for h in high:
            for n, ns, name in h["runs"].values():
                per_prog.setdefault(name, []).append((n, ns))
        for name, samples in sorted(per_prog.items()):
            fn = function_of(name, owners)
            if fn is None or owners[fn][0] != "dns":
                continue
            what = f"dns: {fn} ({', '.join(h.target for h in owners[fn][1])})"
            values = [ns / n for n, ns in samples if n > 0]
            value = statistics.median(values) if values else math.nan
            rate = statistics.median(n for n, _ in samples) / high[0]["seconds"]
            detail = f"{spread(values, '{:.0f}')} during the flood windows, {rate:,.0f} events/s"
            hook = owners[fn][1][0]
            empty_ns = floor_ns(hook.target)
            if not math.isnan(value) and not math.isnan(empty_ns):
                detail += (f"; {value - empty_ns:,.0f} ns above the empty {EMPTY_KIND[hook.kind]} program on "
                           f"{hook.target} ({empty_ns:,.0f})")
            figures.append(Figure(NAME, f"{what}, query flood, {tag}", value, "ns/event", detail=detail))
    return figures
