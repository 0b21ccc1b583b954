"""Throughput and request/response rate through a veth pair, agent off vs on.

Two lab pods joined by a veth pair of their own (`Lab.link`: one veth, no
bridge, as the target is stated): iperf3 sends one TCP stream client ->
server for `seconds`; sockperf ping-pongs 64-byte messages over one
persistent TCP connection for `seconds`. Three arms, interleaved off, floor,
on, off, floor, on, ... (`reps` times each) so that drift of a shared machine
hits all alike:

  off    nothing attached;
  floor  an empty BPF program on every hook the agent uses, of the same kind
         (tracepoint or raw tracepoint): what any program on these hooks
         costs on this machine (dispatch, a tracepoint's record, the run of a
         program that does nothing), the ceiling of the ratio for an agent
         with these hooks;
  on     the agent with all four programs.

Reported: median(on) / median(off) per measure, and the same for the floor.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
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
ARMS = ("off", "floor", "on")


def agent_hooks() -> list[tuple[str, str]]:
    """(kind, tracepoint) of every hook the agent's default programs take on this kernel:
    per program, the first attach strategy whose requirements this kernel meets."""
    from node_agent.kernel.features import KernelFeatures
    from node_agent.programs import CATALOGUE

    features, hooks = KernelFeatures(), []
    for spec in CATALOGUE.values():
        usable = [s for s in spec.candidate_strategies(spec.defaults()) if not features.unmet(s)]
        for attach in usable[0].attachments if usable else ():
            # a tp_btf program runs through the same dispatch as a raw tracepoint's: its floor is an empty raw one
            kind = "raw_tracepoint" if attach.kind == "tp_btf" else attach.kind
            if kind in ("tracepoint", "raw_tracepoint") and (kind, attach.target) not in hooks:
                hooks.append((kind, attach.target))
    return hooks


@contextmanager
def empty_programs_on(hooks: list[tuple[str, str]]):
    """An empty BPF program attached to each hook, for the block: one program
    per hook, as the agent has (one program on several hooks would be skipped
    whenever it nests in itself, and look cheaper than it is)."""
    from bcc import BPF

    from node_agent.kernel.headers import find_kernel_headers

    find_kernel_headers(set_env=True)
    bpf = BPF(text="".join(f"int floor_{i}(void *ctx) {{ return 0; }}\n" for i in range(len(hooks))))
    try:
        for i, (kind, tp) in enumerate(hooks):
            if kind == "raw_tracepoint":
                bpf.attach_raw_tracepoint(tp=tp.split(":", 1)[1], fn_name=f"floor_{i}")
            else:
                bpf.attach_tracepoint(tp=tp, fn_name=f"floor_{i}")
        yield
    finally:
        bpf.cleanup()


@contextmanager
def arm(state: str, workdir: Path, resolver: Path, tag: str, hooks: list[tuple[str, str]]):
    """The arm's BPF set-up; yields the ids of the BPF programs it loaded."""
    if state == "off":
        yield set()
    elif state == "floor":
        with empty_programs_on(hooks):
            yield prog_ids_of(os.getpid())
    else:
        with running_agent(workdir, resolver, tag) as agent:
            time.sleep(SETTLE_SECONDS)
            yield prog_ids_of(agent.pid)


def run(workdir: Path, seconds: float, reps: int, **_) -> list[Figure]:
    runs = {state: {"tput": [], "rr": []} for state in ARMS}
    others = []  # BPF programs of others on the path, per run
    hooks = agent_hooks()
    with Lab(["client", "server"], prefix="npv") as lab:
        client, server = lab.pods["client"], lab.pods["server"]
        _, server_ip = lab.link("client", "server")
        resolver = lab.write_static_resolver(workdir / "pods-veth.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server")})
        start_iperf3_server(server)
        start_sockperf_server(server, server_ip)
        log(f"client -> server through one veth pair ({server_ip}); floor arm: an empty program on "
            f"each of the agent's {len(hooks)} hooks ({', '.join(f'{t} ({k})' for k, t in hooks)})")
        log("warm-up (discarded)")
        iperf3_bits_per_second(client, server_ip, 1)
        sockperf_pingpong(client, server_ip, 1)
        for rep in range(1, reps + 1):
            for state in ARMS:
                with arm(state, workdir, resolver, f"veth-{rep}", hooks) as mine:
                    # this process's own programs (the floor arm's) are not others'
                    others.append(bpf_programs_on_path(exclude=mine | prog_ids_of(os.getpid())))
                    tput = iperf3_bits_per_second(client, server_ip, seconds)
                    rr = sockperf_pingpong(client, server_ip, seconds)
                runs[state]["tput"].append(tput)
                runs[state]["rr"].append(rr)
                log(f"run {rep} {state:<5}: {tput / 1e9:.2f} Gbit/s, {rr:,.0f} round trips/s "
                    f"({others[-1]} BPF programs of others loaded)")

    def ratio(measure, state="on"):
        return statistics.median(runs[state][measure]) / statistics.median(runs["off"][measure])

    gbit = {s: [v / 1e9 for v in runs[s]["tput"]] for s in runs}
    how = f"{seconds:g}s x {reps} per arm, interleaved off/floor/on; {min(others)}-{max(others)} " \
          "BPF programs of others were loaded"
    floor_how = f"empty programs on the agent's {len(hooks)} hooks (same kinds) / off: this machine's ceiling"
    return [
        Figure(NAME, "TCP stream throughput, agent off", statistics.median(gbit["off"]), "Gbit/s",
               detail=spread(gbit["off"])),
        Figure(NAME, "TCP stream throughput, empty programs", statistics.median(gbit["floor"]), "Gbit/s",
               detail=spread(gbit["floor"])),
        Figure(NAME, "TCP stream throughput, agent on", statistics.median(gbit["on"]), "Gbit/s",
               detail=spread(gbit["on"])),
        Figure(NAME, "throughput floor/off", ratio("tput", "floor"), "ratio", detail=floor_how),
        Figure(NAME, "throughput on/off", ratio("tput"), "ratio", f">= {TARGET_THROUGHPUT_RATIO}",
               f"iperf3, 1 stream; {how}"),
        Figure(NAME, "TCP request/response, agent off", statistics.median(runs["off"]["rr"]), "rt/s",
               detail=spread(runs["off"]["rr"], "{:,.0f}")),
        Figure(NAME, "TCP request/response, empty programs", statistics.median(runs["floor"]["rr"]), "rt/s",
               detail=spread(runs["floor"]["rr"], "{:,.0f}")),
        Figure(NAME, "TCP request/response, agent on", statistics.median(runs["on"]["rr"]), "rt/s",
               detail=spread(runs["on"]["rr"], "{:,.0f}")),
        Figure(NAME, "request/response floor/off", ratio("rr", "floor"), "ratio", detail=floor_how),
        Figure(NAME, "request/response on/off", ratio("rr"), "ratio", f">= {TARGET_RR_RATIO}",
               f"sockperf ping-pong, 64 B, 1 connection; {how}"),
    ]
