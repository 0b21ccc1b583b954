"""Throughput and request/response rate between two pods, agent off vs on.

Two lab pods (each a veth into the lab's bridge): iperf3 sends one TCP stream
client -> server for `seconds`; sockperf ping-pongs 64-byte messages over one
persistent TCP connection for `seconds`. The same pair is measured with no
agent and with the agent running all four programs, interleaved
off, on, off, on, ... (`reps` times each) so that drift of a shared machine
hits both sides alike. Reported: median(on) / median(off) per measure.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

from bench.common import Figure, bpf_programs_on_path, log, running_agent, spread
from bench.kernel_cost import prog_ids_of
from bench.traffic import (iperf3_bits_per_second, sockperf_pingpong, start_iperf3_server,
                           start_sockperf_server)
from netprobe_testbed.netns import Lab

NAME = "veth_overhead"
TARGET_THROUGHPUT_RATIO = 0.97
TARGET_RR_RATIO = 0.95
SETTLE_SECONDS = 2  # after the agent is ready: let its start-up CPU burst pass


def run(workdir: Path, seconds: float, reps: int, **_) -> list[Figure]:
    runs = {"off": {"tput": [], "rr": []}, "on": {"tput": [], "rr": []}}
    others = []  # BPF programs of others on the path, per run
    with Lab(["client", "server"], prefix="npv") as lab:
        client, server = lab.pods["client"], lab.pods["server"]
        resolver = lab.write_static_resolver(workdir / "pods-veth.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server")})
        start_iperf3_server(server)
        start_sockperf_server(server, server.ip4)
        log("warm-up (discarded)")
        iperf3_bits_per_second(client, server.ip4, 1)
        sockperf_pingpong(client, server.ip4, 1)
        for rep in range(1, reps + 1):
            for state in ("off", "on"):
                agent = running_agent(workdir, resolver, f"veth-{rep}") if state == "on" else nullcontext()
                with agent as running:
                    if state == "on":
                        time.sleep(SETTLE_SECONDS)
                    mine = prog_ids_of(running.pid) if state == "on" else set()
                    others.append(bpf_programs_on_path(exclude=mine))
                    tput = iperf3_bits_per_second(client, server.ip4, seconds)
                    rr = sockperf_pingpong(client, server.ip4, seconds)
                runs[state]["tput"].append(tput)
                runs[state]["rr"].append(rr)
                log(f"run {rep} agent {state:<3}: {tput / 1e9:.2f} Gbit/s, {rr:,.0f} round trips/s "
                    f"({others[-1]} BPF programs of others loaded)")

    def ratio(measure):
        return statistics.median(runs["on"][measure]) / statistics.median(runs["off"][measure])

    gbit = {s: [v / 1e9 for v in runs[s]["tput"]] for s in runs}
    return [
        Figure(NAME, "TCP stream throughput, agent off", statistics.median(gbit["off"]), "Gbit/s",
               detail=spread(gbit["off"])),
        Figure(NAME, "TCP stream throughput, agent on", statistics.median(gbit["on"]), "Gbit/s",
               detail=spread(gbit["on"])),
        Figure(NAME, "throughput on/off", ratio("tput"), "ratio", f">= {TARGET_THROUGHPUT_RATIO}",
               f"iperf3, 1 stream, {seconds:g}s x {reps} per side, interleaved; {min(others)}-{max(others)} "
               "BPF programs of others were loaded (both sides)"),
        Figure(NAME, "TCP request/response, agent off", statistics.median(runs["off"]["rr"]), "rt/s",
               detail=spread(runs["off"]["rr"], "{:,.0f}")),
        Figure(NAME, "TCP request/response, agent on", statistics.median(runs["on"]["rr"]), "rt/s",
               detail=spread(runs["on"]["rr"], "{:,.0f}")),
        Figure(NAME, "request/response on/off", ratio("rr"), "ratio", f">= {TARGET_RR_RATIO}",
               f"sockperf ping-pong, 64 B, 1 connection, {seconds:g}s x {reps} per side, interleaved"),
    ]
