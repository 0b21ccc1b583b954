"""`make demo`: the node agent watching a few network-namespace "pods", live.

What it does, in order (each step prints a progress line):

1. creates a Lab (netns.py) of five pods in three Kubernetes-style namespaces
   (shop/web-1, shop/cart-7, payments/api-2, payments/ledger-4, tools/loadgen-1),
   starts an echo server in each and writes a static resolver file naming them;
2. writes an agent config (all four programs, workload and peer labels) in a
   temporary directory and starts `netprobe-agent` on it, logging to a file;
3. waits for /readyz (BCC compiles the programs at start: seconds);
4. keeps traffic flowing: plain requests, bursts of many short connections,
   and a lossy pair (a random-drop rule) so that TCP retransmits;
5. prints a per-pod summary computed from the agent's /metrics every couple
   of seconds, until --duration is over or Ctrl-C / SIGTERM.

On the way out it stops the traffic and the agent and removes the lab and the
temporary directory, whatever happened before.

The agent runs through the test bed's agent helper (netprobe_testbed.agent),
as in the tests and benchmarks; everything else here is the demo's own.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from netprobe_testbed.agent import ALL_PROGRAMS, AgentError, AgentProcess, agent_config, write_config
from netprobe_testbed.netns import Lab

DEFAULT_LISTEN = "127.0.0.1:9435"
ECHO_PORT = 8080
LAB_PREFIX = "npd"  # netns npd<slot>-<pod>, bridge npdbr<slot>: distinct from test labs

# Lab pod -> (namespace, pod, workload) as the agent will label it.
DEMO_PODS: dict[str, tuple[str, str, str]] = {
    "web": ("shop", "web-1", "web"),
    "cart": ("shop", "cart-7", "cart"),
    "api": ("payments", "api-2", "api"),
    "ledger": ("payments", "ledger-4", "ledger"),
    "loadgen": ("tools", "loadgen-1", "loadgen"),
}
LOSSY_DROP_PERCENT = 20


# --- traffic -----------------------------------------------------------------


@dataclass(frozen=True)
class TrafficStream:
    kind: str          # what the stream shows: requests, bursts, lossy
    src: str           # lab pod names
    dst: str
    family: int        # 4 or 6
    payload: int       # bytes per request
    batch: int         # connections per round
    pause: float       # seconds between rounds

    def describe(self) -> str:
        s, d = DEMO_PODS[self.src], DEMO_PODS[self.dst]
        return (f"{self.kind:<8} {s[0]}/{s[1]} -> {d[0]}/{d[1]} (IPv{self.family}): "
                f"{self.batch} x {self.payload} B every {self.pause:g}s")


TRAFFIC = (
    TrafficStream("requests", "web", "cart", 4, 1024, 1, 0.2),
    TrafficStream("requests", "web", "api", 6, 512, 1, 0.5),
    TrafficStream("requests", "api", "ledger", 4, 256, 1, 1.0),
    TrafficStream("bursts", "loadgen", "web", 4, 64, 100, 3.0),
    # cart -> ledger loses LOSSY_DROP_PERCENT % of its packets at ledger's input
    TrafficStream("lossy", "cart", "ledger", 4, 32768, 2, 0.5),
)


def start_traffic(lab: Lab, streams=TRAFFIC) -> None:
    """Start every stream as a process in its source pod (the lab kills them on stop)."""
    for stream in streams:
        dst = lab.pods[stream.dst]
        ip = dst.ip4 if stream.family == 4 else dst.ip6
        lab.start_requests(stream.src, ip, ECHO_PORT, size=stream.payload, batch=stream.batch,
                           pause=stream.pause)


# --- the listen address ----------------------------------------------------------

def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9435' or '[::1]:9435' -> (host, port); ValueError on anything else."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def free_listen_address(listen: str) -> tuple[str, bool]:
    """`listen` if its port can be bound now, else the same host with a free port.

    Returns (address, changed). Port 0 always means "pick one".
    """
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            if port != 0:
                return listen, False
        except OSError as e:
            if e.errno != errno.EADDRINUSE:  # anything else is a bad address
                raise ValueError(f"--listen {listen!r}: cannot listen there: {e.strerror}") from None
            s.bind((host, 0))
        free = s.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return f"{shown}:{free}", port != 0


# --- reading the agent's metrics -------------------------------------------------------

def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as cumulative (upper bound, count) pairs.

    Like PromQL's histogram_quantile: linear interpolation inside the bucket that
    holds the rank, 0 as the lower bound of the first bucket, and the highest
    finite bound when the rank falls into +Inf. None for an empty histogram.
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be in [0, 1]")
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(upper_bound):
                return lower_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper_bound, count
    return lower_bound


@dataclass
class PodFigures:
    """What the agent reports about one pod, summed over peers and directions."""
    opened_out: float = 0
    opened_in: float = 0
    active: float = 0
    closed: float = 0
    retransmits: float = 0
    segments_sent: float | None = None  # when the agent counts them (tcp_retransmit's count_segments)
    resets: float = 0
    rtt_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    rx_buckets: dict[float, float] = field(default_factory=dict)

    @property
    def opened(self) -> float:
        return self.opened_out + self.opened_in

    @property
    def retransmit_percent(self) -> float | None:
        if not self.segments_sent:
            return None
        return 100 * self.retransmits / self.segments_sent

    def rtt(self, q: float) -> float | None:
        return histogram_quantile(q, list(self.rtt_buckets.items()))

    def rx_latency(self, q: float) -> float | None:
        return histogram_quantile(q, list(self.rx_buckets.items()))


def summarize(metrics_text: str) -> dict[tuple[str, str], PodFigures]:
    """Per (namespace, pod) figures from an exposition text.

    Buckets of the same bound are added across peers: a sum of cumulative
    histograms is the cumulative histogram of the union.
    """
    pods: dict[tuple[str, str], PodFigures] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if "pod" not in labels:
                continue
            figures = pods.setdefault((labels.get("namespace", ""), labels["pod"]), PodFigures())
            name, value = sample.name, sample.value
            if name == "netprobe_tcp_connections_opened_total":
                if labels.get("direction") == "inbound":
                    figures.opened_in += value
                else:
                    figures.opened_out += value
            elif name == "netprobe_tcp_connections_active":
                figures.active += value
            elif name == "netprobe_tcp_connections_closed_total":
                figures.closed += value
            elif name == "netprobe_tcp_retransmits_total":
                figures.retransmits += value
            elif name == "netprobe_tcp_segments_sent_total":
                figures.segments_sent = (figures.segments_sent or 0) + value
            elif name == "netprobe_tcp_resets_total":
                figures.resets += value
            elif name == "netprobe_tcp_rtt_seconds_bucket":
                le = float(labels["le"])
                figures.rtt_buckets[le] = figures.rtt_buckets.get(le, 0) + value
            elif name == "netprobe_rx_latency_seconds_bucket":
                le = float(labels["le"])
                figures.rx_buckets[le] = figures.rx_buckets.get(le, 0) + value
    return pods


def program_attach_modes(metrics_text: str) -> dict[str, str]:
    """program -> attach mode, from netprobe_program_info."""
    modes = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "netprobe_program_info" and sample.value:
                modes[sample.labels.get("program", "?")] = sample.labels.get("attach", "?")
    return modes


def _micros(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    return f"{us:.1f}" if us < 10 else f"{us:.0f}"


def _quantiles(get) -> str:
    return "/".join(_micros(get(q)) for q in (0.5, 0.9, 0.99))


SUMMARY_HEADER = ("POD", "CONN/S", "OPENED out/in", "ACTIVE", "CLOSED", "RETRANS", "RETRANS %", "RESETS",
                  "RTT µs p50/p90/p99", "RX LATENCY µs p50/p90/p99")


def render_summary(now: dict[tuple[str, str], PodFigures],
                   before: dict[tuple[str, str], PodFigures] | None,
                   interval: float) -> str:
    """A table, one row per pod: the demo's pods first, then whatever else the agent saw."""
    demo_order = [(ns, pod) for ns, pod, _ in DEMO_PODS.values()]
    keys = [k for k in demo_order if k in now] + sorted(k for k in now if k not in demo_order)
    rows = [SUMMARY_HEADER]
    for key in keys:
        fig = now[key]
        rate = "-"
        if before is not None and key in before and interval > 0:
            rate = f"{(fig.opened - before[key].opened) / interval:.1f}"
        # unknown addresses come as namespace=pod=host (or external): show that once
        name = key[1] if key[0] in ("", key[1]) else f"{key[0]}/{key[1]}"
        percent = "-" if fig.retransmit_percent is None else f"{fig.retransmit_percent:.2f}"
        rows.append((name, rate, f"{fig.opened_out:.0f}/{fig.opened_in:.0f}", f"{fig.active:.0f}",
                     f"{fig.closed:.0f}", f"{fig.retransmits:.0f}", percent, f"{fig.resets:.0f}",
                     _quantiles(fig.rtt), _quantiles(fig.rx_latency)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


# --- the run -------------------------------------------------------------------------------

class Stopped(Exception):
    """SIGTERM or SIGINT: leave the main loop and clean up."""


def _raise_stopped(signum, _frame):
    raise Stopped(signal.Signals(signum).name)


def say(msg: str) -> None:
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        # Nobody reads any more (e.g. piped into `head`): stop as on Ctrl-C,
        # with stdout sent to /dev/null so that the clean-up can still talk.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise Stopped("stdout closed") from None


def run(duration: float, listen: str, refresh: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="netprobe-demo-"))
    lab = Lab(list(DEMO_PODS), prefix=LAB_PREFIX)
    agent: AgentProcess | None = None
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGINT, _raise_stopped)
    try:
        namespaces = sorted({ns for ns, _, _ in DEMO_PODS.values()})
        say(f"[1/5] creating {len(DEMO_PODS)} pods in namespaces {', '.join(namespaces)} "
            f"(network namespaces joined by a bridge)")
        lab.start()
        say(f"      bridge {lab.bridge}; netns {' '.join(p.netns for p in lab.pods.values())}")
        for name, (ns, pod, _) in DEMO_PODS.items():
            p = lab.pods[name]
            say(f"      {ns + '/' + pod:<18} {p.ip4:<13} {p.ip6}")

        say(f"[2/5] starting echo servers on port {ECHO_PORT}; workdir {workdir}")
        for name in DEMO_PODS:
            lab.serve_tcp(name, ECHO_PORT)
        resolver_file = lab.write_static_resolver(workdir / "pods.yaml", DEMO_PODS)
        lossy = next(s for s in TRAFFIC if s.kind == "lossy")
        lab.add_random_drop(lossy.dst, LOSSY_DROP_PERCENT, from_ip=lab.pods[lossy.src].ip4)

        config = write_config(workdir / "agent.yaml", agent_config(listen, resolver_file))
        agent = AgentProcess(config, workdir / "agent.log", listen)
        say(f"[3/5] starting netprobe-agent with {', '.join(ALL_PROGRAMS)}; log {agent.log_path}")
        say("      (BCC compiles the BPF programs at start: this takes a few seconds)")
        agent.start()
        took = agent.wait_ready(progress=lambda t: say(f"      ... waiting for {agent.base_url}/readyz ({t:.0f}s)"))
        modes = program_attach_modes(agent.metrics_text())
        say(f"[4/5] agent ready after {took:.1f}s: "
            + (", ".join(f"{p} ({m})" for p, m in sorted(modes.items())) or "no programs reported"))

        say("[5/5] traffic:")
        for stream in TRAFFIC:
            extra = f", {LOSSY_DROP_PERCENT} % dropped" if stream.kind == "lossy" else ""
            say(f"      {stream.describe()}{extra}")
        start_traffic(lab)
        say(f"metrics: {agent.base_url}/metrics   (agent log: {agent.log_path})")
        say("Ctrl-C to stop." if duration == 0 else f"running for {duration:g}s (Ctrl-C stops earlier).")

        _summary_loop(agent, duration, refresh)
        return 0
    except Stopped as why:
        say(f"\nstopping ({why})")
        return 0
    except AgentError as e:
        print(f"netprobe demo: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:  # setting up the lab failed: say which command and why
        print(f"netprobe demo: {' '.join(map(str, e.cmd))} failed: {(e.stderr or '').strip()}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _cleanup(lab, agent, workdir)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _summary_loop(agent: AgentProcess, duration: float, refresh: float) -> None:
    interactive = sys.stdout.isatty()
    started = time.monotonic()
    before, before_at = None, started
    while True:
        time.sleep(refresh)
        agent.check_running()
        try:
            text = agent.metrics_text()
        except (urllib.error.URLError, OSError) as e:
            say(f"(scrape failed: {e}; retrying)")
            continue
        now, now_at = summarize(text), time.monotonic()
        elapsed = now_at - started
        table = render_summary(now, before, now_at - before_at)
        heading = f"--- netprobe demo: {elapsed:.0f}s, {agent.base_url}/metrics ---"
        if interactive:
            sys.stdout.write("\033[H\033[2J")  # redraw in place; the start-up lines scroll away
            heading += f"\nCtrl-C to stop; agent log {agent.log_path}"
        say(f"{heading}\n{table}")
        before, before_at = now, now_at
        if duration and elapsed >= duration:
            say("--- end of the demo (duration reached) ---")
            return


def _cleanup(lab: Lab, agent: AgentProcess | None, workdir: Path) -> None:
    """Remove all the demo made; every step runs even if one before it failed."""
    def note(msg: str, err: bool = False) -> None:
        try:
            print(msg, file=sys.stderr if err else sys.stdout, flush=True)
        except OSError:
            pass

    note("cleaning up: traffic, agent, lab, temporary files")
    # Traffic first, so the agent's last moments are quiet; the agent before the
    # lab, so nothing it attached outlives the interfaces.
    lab.kill_processes()
    try:
        if agent is not None and agent.proc is not None:
            was_running = agent.proc.poll() is None  # if not, its failure was reported already
            code = agent.stop()
            if was_running and code not in (0, -signal.SIGTERM):
                note(f"netprobe demo: the agent exited with code {code}; last lines of its log:\n"
                     f"{agent.log_tail()}", err=True)
    finally:
        try:
            lab.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    note("cleaned up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netprobe_testbed.demo",
        description="Network-namespace pods, the netprobe agent, traffic and a live per-pod summary.")
    parser.add_argument("--duration", type=float, default=0, metavar="SECONDS",
                        help="stop after this many seconds (default 0: until Ctrl-C)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"address of the agent's /metrics (default {DEFAULT_LISTEN}; "
                             "another free port is picked if it is taken)")
    parser.add_argument("--refresh", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between summaries (default 2)")
    args = parser.parse_args(argv)
    if args.duration < 0:
        parser.error("--duration must be >= 0")
    if args.refresh <= 0:
        parser.error("--refresh must be > 0")
    try:
        listen, changed = free_listen_address(args.listen)
    except ValueError as e:
        parser.error(str(e))
    if os.geteuid() != 0:
        print("netprobe demo: must run as root (it creates network namespaces and loads BPF "
              "programs): try `sudo make demo`", file=sys.stderr)
        return 1
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            print(f"netprobe demo: `{tool}` not found: run `make setup`", file=sys.stderr)
            return 1
    if changed:
        say(f"{args.listen} is taken; the agent listens on {listen} instead")
    return run(args.duration, listen, args.refresh)


if __name__ == "__main__":
    sys.exit(main())
