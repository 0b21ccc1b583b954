"""Agent memory and CPU: RSS after start, at steady state and at its peak; CPU time at two packet rates.

The agent (every program of the catalogue) aggregates in the kernel and reads
the maps only when scraped, so its own CPU time should follow the scrapes, not
the packets. In each of `reps` repetitions, four windows of equal length: one
sockperf ping-pong connection capped at a low message rate, then uncapped;
first without scrapes, then with the same scrape schedule (every SCRAPE_EVERY
seconds, as a Prometheus would, only more often). The packet rate is counted
on the server pod's veth; the agent's CPU time comes from a cpuacct cgroup
(bench.common.CpuAccount), its memory from /proc/<pid>/status (VmRSS after
each repetition; VmHWM, the peak, includes the BCC compile at start).
"""
from __future__ import annotations

import re
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import CpuAccount, Figure, interface_packets, log, process_memory_kib, running_agent, spread
from bench.metrics_render import agent_collect_seconds, count_series
from bench.traffic import sockperf_pingpong_argv, sockperf_round_trips_per_second, start_sockperf_server
from netprobe_testbed.netns import Lab
from node_agent.programs import CATALOGUE

NAME = "agent_resources"
TARGET_RSS_MIB = 100          # steady state (issue 14)
TARGET_PEAK_RSS_MIB = 200     # while BCC compiles
TARGET_CPU_RATIO = 1.5        # agent CPU at the high packet rate / at the low one: independent of packets
SCRAPE_EVERY = 2.0
WARMUP_SCRAPES = 3
LOW_RATE_MPS = 200  # messages/s in the low-rate window (each: a request and a response)


def map_entries(exposition: str) -> int:
    """Entries in all the agent's BPF maps (netprobe_map_entries), what a scrape walks."""
    return int(sum(float(v) for v in re.findall(r"^netprobe_map_entries\{[^}]*\} (\S+)$", exposition, flags=re.M)))


def _window(agent, cpu: CpuAccount, client, server, seconds: float, mps: int | None, scrape: bool) -> dict:
    """One measurement window: traffic for `seconds`, scraping on schedule if `scrape`."""
    cpu0, total0 = cpu.user_system_ns(), cpu.total_ns()
    packets0, t0 = interface_packets(server.host_veth), time.monotonic()
    proc = client.popen(sockperf_pingpong_argv(server.ip4, seconds, mps=mps),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    next_scrape, expositions = t0, []
    while proc.poll() is None:
        if scrape and time.monotonic() >= next_scrape:
            expositions.append(agent.metrics_text())
            next_scrape += SCRAPE_EVERY
        time.sleep(0.05)
    output = proc.stdout.read()
    cpu1, total1 = cpu.user_system_ns(), cpu.total_ns()
    packets1, t1 = interface_packets(server.host_veth), time.monotonic()
    user, system = (cpu1[0] - cpu0[0]) / 1e9, (cpu1[1] - cpu0[1]) / 1e9
    scraped = {}
    if expositions:
        collect = [c for c in map(agent_collect_seconds, expositions) if c is not None]
        scraped = {"scrapes": len(expositions), "series": count_series(expositions[-1]), "map_entries": map_entries(expositions[-1]),
                   "collect_ms": statistics.median(collect) * 1e3 if collect else float("nan")}
    return {"seconds": t1 - t0, "user": user, "system": system, "cpu": (total1 - total0) / 1e9, **scraped,
            "packets_per_second": (packets1 - packets0) / (t1 - t0),
            "round_trips_per_second": sockperf_round_trips_per_second(output)}


def run(workdir: Path, seconds: float, reps: int = 1, **_) -> list[Figure]:
    window_seconds = seconds
    with Lab(["client", "server"], prefix="npr") as lab:
        client, server = lab.pods["client"], lab.pods["server"]
        resolver = lab.write_static_resolver(workdir / "pods-resources.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server")})
        start_sockperf_server(server, server.ip4)
        with running_agent(workdir, resolver, "resources") as agent:
            at_start = process_memory_kib(agent.pid)
            log(f"RSS after start: {at_start['VmRSS'] / 1024:.1f} MiB (peak {at_start['VmHWM'] / 1024:.1f} MiB)")
            cpu = CpuAccount(agent.pid)
            for _ in range(WARMUP_SCRAPES):  # first scrapes build caches: not steady state
                agent.metrics_text()
                time.sleep(SCRAPE_EVERY)
            windows = {(rate, scrape): [] for rate in ("low", "high") for scrape in (False, True)}
            steady = []
            try:
                for rep in range(1, reps + 1):
                    for scrape in (False, True):
                        for rate, mps in (("low", LOW_RATE_MPS), ("high", None)):
                            w = _window(agent, cpu, client, server, window_seconds, mps, scrape)
                            windows[rate, scrape].append(w)
                            log(f"{rep}: {rate:>4} rate, "
                                f"{'scraped every %gs' % SCRAPE_EVERY if scrape else 'no scrapes':<17}: "
                                f"{w['packets_per_second']:>9,.0f} packets/s, agent CPU {w['cpu']:.4f}s "
                                f"in {w['seconds']:.1f}s")
                    steady.append(process_memory_kib(agent.pid))
            finally:
                cpu.close()
            how = "cpuacct cgroup" if cpu.precise else "clock ticks of /proc/<pid>/stat"

    def percent(w):
        return w["cpu"] / w["seconds"] * 100

    def detail(ws, scrape):
        w = ws[len(ws) // 2]
        text = (f"{spread([percent(x) for x in ws], '{:.3f}')}; one window: {w['cpu']:.4f} CPU s over "
                f"{w['seconds']:.1f}s at {w['packets_per_second']:,.0f} packets/s")
        if not scrape:
            return text + ", not scraped"
        return (text + f", {w['scrapes']} scrapes of {w['series']:,} series from {w['map_entries']:,} map entries "
                f"(agent's collect time median {w['collect_ms']:.1f} ms)")

    rss = [m["VmRSS"] / 1024 for m in steady]
    peak = max(m["VmHWM"] for m in steady) / 1024
    low_pps = statistics.median(w["packets_per_second"] for w in windows["low", False])
    high_pps = statistics.median(w["packets_per_second"] for w in windows["high", False])
    figures = [
        Figure(NAME, "agent RSS after start", at_start["VmRSS"] / 1024, "MiB",
               detail=f"right after /readyz, {len(CATALOGUE)} programs loaded"),
        Figure(NAME, "agent RSS at steady state", statistics.median(rss), "MiB", f"<= {TARGET_RSS_MIB}",
               f"after each repetition's traffic windows: {spread(rss, '{:.1f}')}"),
        Figure(NAME, "agent peak RSS (BCC compile)", peak, "MiB", f"<= {TARGET_PEAK_RSS_MIB}",
               f"VmHWM at the end ({at_start['VmHWM'] / 1024:.1f} MiB right after start)"),
        Figure(NAME, "packet rate high/low", high_pps / low_pps, "ratio",
               detail=f"{low_pps:,.0f} vs {high_pps:,.0f} packets/s on the server's veth (medians)"),
    ]
    for scrape in (False, True):
        low, high = windows["low", scrape], windows["high", scrape]
        suffix = "scraped" if scrape else "not scraped"
        figures += [
            Figure(NAME, f"agent CPU, low packet rate, {suffix}", statistics.median(map(percent, low)), "% of a CPU",
                   detail=detail(low, scrape)),
            Figure(NAME, f"agent CPU, high packet rate, {suffix}", statistics.median(map(percent, high)),
                   "% of a CPU", detail=detail(high, scrape)),
        ]
    for scrape in (False, True):
        ratios = [percent(h) / max(percent(lo), 1e-9)
                  for lo, h in zip(windows["low", scrape], windows["high", scrape])]
        figures.append(Figure(
            NAME, f"agent CPU high/low packet rate, {'scraped' if scrape else 'not scraped'}",
            statistics.median(ratios), "ratio", f"<= {TARGET_CPU_RATIO}",
            detail=f"{spread(ratios)} per repetition; 1 = independent of the packet rate (a per-packet cost "
                   f"would follow the packet rate, x{high_pps / low_pps:,.0f}); CPU time from the {how}"))
    return figures
