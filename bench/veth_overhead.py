"""Throughput and request/response rate through a veth pair: the agent against
empty programs on the same hooks, in the same run.

Two lab pods joined by a veth pair of their own (`Lab.link`: one veth, no
bridge, as the target is stated): iperf3 sends one TCP stream client ->
server for `seconds`; sockperf ping-pongs 64-byte messages over one
persistent TCP connection for `seconds`. Each repetition runs these arms, one
after the other, so that drift of a shared machine hits neighbours alike:

  off      nothing attached (context: what the hooks themselves cost);
  floor    an empty BPF program on every hook the default program set
           (bench.hooks.DEFAULT_PROGRAMS) takes on this kernel, of the same
           kind: what any program on these hooks costs here, the best an
           agent with these hooks can do;
  on       the agent with the default program set;
  then, for every program of the catalogue, request/response only:
  floor:P  empty programs on P's hooks alone;
  on:P     the agent with P alone;
  and two reference arms that run only the statistics windows (below):
  reference:counters    a per-CPU counter increment on every hook of the
                        floor: the least an agent that records every event
                        on these hooks pays;
  reference:timestamps  the same, but rx_latency's hooks store a clock read
                        instead: the least an agent that also times every
                        received packet pays (rx_latency reads the clock at
                        both ends of each packet).

The targets are on/floor (and on:P/floor:P for each program): the agent's own
work, measured against the floor of the same repetition. Each ratio is taken
per repetition (neighbouring arms) and the median of the repetitions is
reported, with every repetition's ratio next to it.

Round-trip rates on a shared VM move by several per cent between neighbouring
windows, as much as the target's margin (a program that never runs on this
path still shows a "cost" of a few per cent). So the floor and on arms also
run one more ping-pong window with the kernel's BPF run-time statistics on
(never the measured windows: the statistics add clock reads to every run),
and report the programs' run time per round trip: each program's own part,
the agent's time above the empty programs, and the ratio that time alone
would give. It leaves out what the programs do to the stack around them
(cache lines they evict), which only the measured ratio holds. The same for
throughput: one more iperf3 window per stats arm gives the agent's run time
above the empty programs per byte received, against the time the CPU that
carries the whole path (the pinned load generators' CPU) was busy per byte
in the floor's window: the stream's rate if that CPU spent the agent's extra
time and nothing else changed. The reference arms get the same two figures,
so the agent's can be read against what no agent doing its job could beat.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import Figure, bpf_programs_on_path, log, running_agent, spread
from bench.hooks import (CLOCK_BODY, COUNTER_BODY, DEFAULT_PROGRAMS, EMPTY_KIND, EmptyPrograms, Hook,
                         HookPrograms, hooks_of)
from bench.kernel_cost import bpf_stats_enabled, function_of, hooks_by_function, prog_ids_of, prog_stats
from bench.traffic import (busy_cpu_ns, iperf3_bits_per_second, iperf3_received, sockperf_pingpong,
                           sockperf_pingpong_output, sockperf_total_round_trips, start_iperf3_server,
                           start_sockperf_server)
from netprobe_testbed.netns import Lab

NAME = "veth_overhead"
TARGET_THROUGHPUT_RATIO = 0.99   # agent on / empty programs (issue 14)
TARGET_RR_RATIO = 0.98
SETTLE_SECONDS = 1  # after the agent is ready: let its start-up CPU burst pass
REFERENCE_ARMS = {   # name -> (what it shows, body of its program on a hook)
    "reference:counters": ("a per-CPU counter on every hook", lambda timed: COUNTER_BODY),
    "reference:timestamps": ("a per-CPU counter on every hook, a clock read on rx_latency's",
                             lambda timed: CLOCK_BODY if timed else COUNTER_BODY),
}
STATS_ARMS = ("floor", "on", *REFERENCE_ARMS)   # the arms that run windows with BPF run-time statistics on


@contextmanager
def arm(state: str, workdir: Path, resolver: Path, tag: str, hooks: list[Hook], programs, loaded: HookPrograms):
    """The arm's BPF set-up; yields the ids of the BPF programs it loaded.
    `loaded`: the floor's (or reference's) programs, attached for the arm."""
    if state == "off":
        yield set()
    elif state in ("floor", "reference"):
        with loaded.attached(hooks) as ids:
            yield ids
    else:
        with running_agent(workdir, resolver, tag, programs=programs) as agent:
            time.sleep(SETTLE_SECONDS)
            yield prog_ids_of(agent.pid)


def missing_note(hooks: list[Hook]) -> str:
    """Hooks the floor lacks (no empty program of their kind): the ratio then includes their dispatch."""
    missing = [str(h) for h in hooks if h.kind not in EMPTY_KIND]
    return f" (no empty program on {', '.join(missing)}: not in the floor)" if missing else ""


def per_rep_ratios(num: list[float], den: list[float]) -> list[float]:
    return [n / d for n, d in zip(num, den)]


def implied_ratios(base: list[float], extra: list[float]) -> list[float]:
    """Per repetition, the rate left when work that took `base` (a round trip,
    a byte's CPU time) also spends `extra`: base / (base + extra)."""
    return [b / (b + e) for b, e in zip(base, extra)]


@dataclass
class BpfTime:
    """One ping-pong window with BPF run-time statistics on."""
    round_trips: int
    by_program: dict[str, tuple[int, int]]       # catalogue program (else kernel name) -> (runs, run time in ns)

    def runs_per_round_trip(self, program: str | None = None) -> float:
        """Of `program`, or of all programs of the window."""
        return self._per_round_trip(0, program)

    def ns_per_round_trip(self, program: str | None = None) -> float:
        return self._per_round_trip(1, program)

    def _per_round_trip(self, field: int, program: str | None) -> float:
        programs = [program] if program else list(self.by_program)
        return sum(self.by_program[p][field] for p in programs) / self.round_trips


def program_of(kernel_name: str, functions) -> str:
    """The catalogue program running a loaded BPF program, from its possibly
    truncated name (two functions of one program may share the kept prefix);
    the name itself when no program or several match (an empty program)."""
    owners = {program for fn, (program, _) in functions.items() if function_of(kernel_name, [fn])}
    return owners.pop() if len(owners) == 1 else kernel_name


@dataclass
class StreamBpfTime:
    """One iperf3 window with BPF run-time statistics on."""
    bytes: float
    busy_cpu_ns: int          # of the CPU carrying the path
    bpf_ns: int               # all the arm's programs

    def cpu_ns_per_byte(self) -> float:
        return self.busy_cpu_ns / self.bytes

    def bpf_ns_per_byte(self) -> float:
        return self.bpf_ns / self.bytes


def _run_time(ids: set[int], functions, traffic):
    """traffic()'s result, and {catalogue program: (runs, run time in ns)} of
    the programs `ids` while it ran, with the kernel's run-time statistics on."""
    with bpf_stats_enabled():
        before = prog_stats(ids)
        result = traffic()
        after = prog_stats(ids)
    by_program: dict[str, tuple[int, int]] = {}
    for prog_id, rec in after.items():
        program, prev = program_of(rec["name"], functions), before.get(prog_id, {})
        runs, ns = by_program.get(program, (0, 0))
        by_program[program] = (runs + rec.get("run_cnt", 0) - prev.get("run_cnt", 0),
                               ns + rec.get("run_time_ns", 0) - prev.get("run_time_ns", 0))
    return result, by_program


def bpf_time_window(client, server_ip: str, seconds: float, ids: set[int], functions) -> BpfTime:
    """A ping-pong of `seconds` with the kernel's run-time statistics on for the programs `ids`."""
    output, by_program = _run_time(ids, functions, lambda: sockperf_pingpong_output(client, server_ip, seconds))
    return BpfTime(sockperf_total_round_trips(output), by_program)


def stream_bpf_time_window(client, server_ip: str, seconds: float, ids: set[int], functions) -> StreamBpfTime:
    """An iperf3 stream of `seconds` with the statistics on, and the path's CPU time."""
    def stream():
        busy = busy_cpu_ns()
        received = iperf3_received(client, server_ip, seconds)
        return received, busy_cpu_ns() - busy
    (received, busy), by_program = _run_time(ids, functions, stream)
    return StreamBpfTime(float(received["bytes"]), busy, sum(ns for _, ns in by_program.values()))


def arms_of(programs) -> list[tuple[str, str, list[Hook], tuple[str, ...], tuple[str, ...]]]:
    """(name, state, hooks of the floor, programs of the agent, measures) of each arm, in order."""
    default_hooks = hooks_of(DEFAULT_PROGRAMS)
    arms = [("off", "off", [], (), ("tput", "rr")),
            ("floor", "floor", default_hooks, (), ("tput", "rr")),
            ("on", "on", default_hooks, DEFAULT_PROGRAMS, ("tput", "rr"))]
    arms += [(name, "reference", default_hooks, (), ()) for name in REFERENCE_ARMS]
    for p in programs:
        hooks = hooks_of([p])
        arms += [(f"floor:{p}", "floor", hooks, (), ("rr",)), (f"on:{p}", "on", hooks, (p,), ("rr",))]
    return arms


def run(workdir: Path, seconds: float, reps: int, **_) -> list[Figure]:
    from node_agent.programs import CATALOGUE

    arms = arms_of(CATALOGUE)
    runs = {name: {"tput": [], "rr": []} for name, *_ in arms}
    bpf_time = {name: [] for name in STATS_ARMS}
    stream_time = {name: [] for name in STATS_ARMS}
    functions = hooks_by_function()
    others = []  # BPF programs of others on the path, per arm
    started = time.monotonic()
    empty = EmptyPrograms([h for _, _, hooks, _, _ in arms for h in hooks])   # compiled once, attached per arm
    timed = {h.target for h in hooks_of(["rx_latency"])}   # the hooks where reference:timestamps reads the clock
    references = {}
    try:
        for name, _, hooks, _, _ in arms:      # each reference arm's programs, on the arm's own hooks
            if name in REFERENCE_ARMS:
                body = REFERENCE_ARMS[name][1]
                references[name] = HookPrograms(hooks, lambda hook, body=body: body(hook.target in timed))
        with Lab(["client", "server"], prefix="npv") as lab:
            client, server = lab.pods["client"], lab.pods["server"]
            _, server_ip = lab.link("client", "server")
            resolver = lab.write_static_resolver(workdir / "pods-veth.yaml", {
                "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server")})
            start_iperf3_server(server)
            start_sockperf_server(server, server_ip)
            log(f"client -> server through one veth pair ({server_ip}); default set {', '.join(DEFAULT_PROGRAMS)} "
                f"on {len(arms[1][2])} hooks: {', '.join(map(str, arms[1][2]))}")
            log("warm-up (discarded)")
            iperf3_bits_per_second(client, server_ip, 1)
            sockperf_pingpong(client, server_ip, 1)
            for rep in range(1, reps + 1):
                for name, state, hooks, programs, measures in arms:
                    tag = f"veth-{rep}-{name.replace(':', '-')}"
                    with arm(state, workdir, resolver, tag, hooks, programs, references.get(name, empty)) as mine:
                        # this process's own programs (the floor arm's) are not others'
                        others.append(bpf_programs_on_path(exclude=mine | prog_ids_of(os.getpid())))
                        if "tput" in measures:
                            runs[name]["tput"].append(iperf3_bits_per_second(client, server_ip, seconds))
                        if "rr" in measures:
                            runs[name]["rr"].append(sockperf_pingpong(client, server_ip, seconds))
                        if name in STATS_ARMS:
                            bpf_time[name].append(bpf_time_window(client, server_ip, seconds, mine, functions))
                            stream_time[name].append(
                                stream_bpf_time_window(client, server_ip, seconds, mine, functions))
                    measured = [f"{runs[name]['tput'][-1] / 1e9:5.2f} Gbit/s"] if "tput" in measures else []
                    measured += [f"{runs[name]['rr'][-1]:>8,.0f} round trips/s"] if "rr" in measures else []
                    if name in STATS_ARMS:
                        measured.append(f"{bpf_time[name][-1].ns_per_round_trip():,.0f} ns of BPF run time per "
                                        f"round trip")
                    log(f"run {rep} {name:<22}: {', '.join(measured)} ({others[-1]} BPF programs of others loaded)")
                log(f"repetition {rep} of {reps} done after {time.monotonic() - started:.0f}s")
    finally:
        for programs in (empty, *references.values()):
            programs.cleanup()
    return (_figures(runs, others, seconds, reps, arms) + _bpf_time_figures(bpf_time, runs["floor"]["rr"], seconds)
            + _stream_bpf_time_figures(stream_time, seconds))


def _figures(runs, others, seconds, reps, arms) -> list[Figure]:
    default_hooks = arms[1][2]
    program_hooks = {programs[0]: hooks for name, _, hooks, programs, _ in arms if name.startswith("on:")}

    def median(arm_name, measure):
        return statistics.median(runs[arm_name][measure])

    gbit = {a: [v / 1e9 for v in runs[a]["tput"]] for a in ("off", "floor", "on")}
    how = f"{seconds:g}s x {reps}, arms in turn in each repetition; {min(others)}-{max(others)} " \
          "BPF programs of others were loaded"
    hooks_note = f"{len(default_hooks)} hooks of {', '.join(DEFAULT_PROGRAMS)}" + missing_note(default_hooks)
    figures = []
    for measure, what, unit, values, fmt, target, tool in (
            ("tput", "TCP stream throughput", "Gbit/s", gbit, "{:.3g}", TARGET_THROUGHPUT_RATIO, "iperf3, 1 stream"),
            ("rr", "TCP request/response", "rt/s", {a: runs[a]["rr"] for a in ("off", "floor", "on")}, "{:,.0f}",
             TARGET_RR_RATIO, "sockperf ping-pong, 64 B, 1 connection")):
        figures += [
            Figure(NAME, f"{what}, agent off", statistics.median(values["off"]), unit, detail=spread(values["off"], fmt)),
            Figure(NAME, f"{what}, empty programs", statistics.median(values["floor"]), unit,
                   detail=f"on the {hooks_note}; " + spread(values["floor"], fmt)),
            Figure(NAME, f"{what}, agent on", statistics.median(values["on"]), unit,
                   detail=f"{', '.join(DEFAULT_PROGRAMS)}; " + spread(values["on"], fmt)),
        ]
        on_floor = per_rep_ratios(runs["on"][measure], runs["floor"][measure])
        floor_off = per_rep_ratios(runs["floor"][measure], runs["off"][measure])
        on_off = per_rep_ratios(runs["on"][measure], runs["off"][measure])
        figures += [
            Figure(NAME, f"{what.split()[-1]} floor/off", statistics.median(floor_off), "ratio",
                   detail="empty programs / nothing: what the hooks cost here; " + spread(floor_off)),
            Figure(NAME, f"{what.split()[-1]} on/off", statistics.median(on_off), "ratio",
                   detail="context; " + spread(on_off)),
            Figure(NAME, f"{what.split()[-1]} on/empty programs", statistics.median(on_floor), "ratio",
                   f">= {target}", f"{tool}; the agent's own work; {spread(on_floor)}; {how}"),
        ]
    for p, hooks in program_hooks.items():
        ratios = per_rep_ratios(runs[f"on:{p}"]["rr"], runs[f"floor:{p}"]["rr"])
        figures.append(Figure(
            NAME, f"request/response, {p} alone/its empty programs", statistics.median(ratios), "ratio",
            detail=(f"{median(f'on:{p}', 'rr'):,.0f} vs {median(f'floor:{p}', 'rr'):,.0f} rt/s "
                    f"(off {median('off', 'rr'):,.0f}) on {', '.join(map(str, hooks))}{missing_note(hooks)}; "
                    f"{spread(ratios)}")))
    return figures


def _bpf_time_figures(bpf_time: dict[str, list[BpfTime]], floor_rates: list[float], seconds: float) -> list[Figure]:
    """The programs' run time per round trip, floor and on, from the statistics windows."""
    floor, on = bpf_time["floor"], bpf_time["on"]
    floor_ns = [w.ns_per_round_trip() for w in floor]
    on_ns = [w.ns_per_round_trip() for w in on]
    above = [a - b for a, b in zip(on_ns, floor_ns)]
    floor_round_trip_ns = [1e9 / rate for rate in floor_rates]   # the measured windows' (statistics off)
    implied = implied_ratios(floor_round_trip_ns, above)
    empty_run_ns = [w.ns_per_round_trip() / w.runs_per_round_trip() for w in floor]   # an empty program's run

    def above_empty(program: str) -> list[float]:
        return [w.ns_per_round_trip(program) - w.runs_per_round_trip(program) * e for w, e in zip(on, empty_run_ns)]

    def part(program: str) -> str:
        runs = [w.runs_per_round_trip(program) for w in on]
        ns = [w.ns_per_round_trip(program) for w in on]
        return (f"{program} {statistics.median(runs):.2g} runs, {statistics.median(ns):,.0f} ns "
                f"({statistics.median(above_empty(program)):,.0f} above empty)")

    programs = sorted(on[0].by_program)
    parts = "; ".join(part(p) for p in programs)
    how = f"one more {seconds:g}s ping-pong window per arm and repetition, BPF run-time statistics on"
    # each program's share: what it alone would cost the round trip, by its run time in the default set
    each = []
    for p in programs:
        implied_p = implied_ratios(floor_round_trip_ns, above_empty(p))
        each.append(Figure(NAME, f"request/response, {p} in the default set, from BPF run time alone",
                           statistics.median(implied_p), "ratio",
                           detail=f"{statistics.median(above_empty(p)):,.0f} ns above as many empty runs per "
                                  f"round trip; " + spread(implied_p)))
    for name, (what, _) in REFERENCE_ARMS.items():
        above_r = [w.ns_per_round_trip() - f for w, f in zip(bpf_time[name], floor_ns)]
        implied_r = implied_ratios(floor_round_trip_ns, above_r)
        each.append(Figure(NAME, f"request/response, {name}, from BPF run time alone", statistics.median(implied_r),
                           "ratio", detail=f"{what} instead of the agent: {statistics.median(above_r):,.0f} ns "
                                           f"above the empty programs per round trip: {spread(above_r, '{:,.0f}')}; "
                                           f"ratios: {spread(implied_r)}"))
    return [
        Figure(NAME, "request/response, BPF run time per round trip, empty programs", statistics.median(floor_ns),
               "ns", detail=f"{statistics.median(w.runs_per_round_trip() for w in floor):.2g} runs per "
                            f"round trip; {spread(floor_ns, '{:,.0f}')}; {how}"),
        Figure(NAME, "request/response, BPF run time per round trip, agent on", statistics.median(on_ns), "ns",
               detail=f"per program, runs and run time per round trip: {parts}; {spread(on_ns, '{:,.0f}')}"),
        Figure(NAME, "request/response, the agent's BPF run time above empty programs", statistics.median(above),
               "ns/round trip", detail=f"{statistics.median(a / t for a, t in zip(above, floor_round_trip_ns)):.1%} "
                                       f"of the empty programs' round trip "
                                       f"({statistics.median(floor_round_trip_ns) / 1000:.1f} us); "
                                       f"{spread(above, '{:,.0f}')}"),
        Figure(NAME, "request/response on/empty programs, from BPF run time alone", statistics.median(implied),
               "ratio", detail="the round trip the agent's run time above the empty programs would give, "
                               "cache effects on the stack around the programs left out; " + spread(implied)),
    ] + each


def _stream_bpf_time_figures(stream_time: dict[str, list[StreamBpfTime]], seconds: float) -> list[Figure]:
    """The agent's run time above the empty programs per byte of a stream, against the path's CPU time."""
    floor, on = stream_time["floor"], stream_time["on"]
    above = [o.bpf_ns_per_byte() - f.bpf_ns_per_byte() for o, f in zip(on, floor)]
    cpu = [f.cpu_ns_per_byte() for f in floor]
    implied = implied_ratios(cpu, above)
    share = [a / c for a, c in zip(above, cpu)]
    how = (f"one more {seconds:g}s iperf3 window per arm and repetition, BPF run-time statistics on; CPU time of "
           "the CPU carrying the path in the floor's window")
    references = []
    for name, (what, _) in REFERENCE_ARMS.items():
        above_r = [r.bpf_ns_per_byte() - f.bpf_ns_per_byte() for r, f in zip(stream_time[name], floor)]
        implied_r = implied_ratios(cpu, above_r)
        references.append(Figure(
            NAME, f"throughput, {name}, from BPF run time alone", statistics.median(implied_r), "ratio",
            detail=f"{what} instead of the agent: {statistics.median(above_r) * 1e6:,.0f} ns/MB above the empty "
                   f"programs: {spread([a * 1e6 for a in above_r], '{:,.0f}')}; ratios: {spread(implied_r)}"))
    return [
        Figure(NAME, "throughput, the agent's BPF run time above empty programs", statistics.median(above) * 1e6,
               "ns/MB", detail=f"{statistics.median(share):.1%} of the path's CPU time per byte in the floor's "
                               f"window ({statistics.median(cpu) * 1e6:,.0f} ns/MB); {spread([a * 1e6 for a in above], '{:,.0f}')}; "
                               f"{how}"),
        Figure(NAME, "throughput on/empty programs, from BPF run time alone", statistics.median(implied), "ratio",
               detail="the rate if the path's CPU also ran the agent's time above the empty programs, cache "
                      "effects left out; " + spread(implied)),
    ] + references
