"""`python -m bench [BENCHMARK ...]`: run the benchmarks, print their figures next to the targets."""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import agent_resources, dns_flood, kernel_cost, metrics_render, veth_overhead
from bench.common import Figure, machine_state

BENCHMARKS = {m.NAME: m for m in (kernel_cost, veth_overhead, agent_resources, metrics_render, dns_flood)}


def _value(f: Figure) -> str:
    if math.isnan(f.value):
        return "n/a"
    return f"{f.value:,.3f}" if abs(f.value) < 10 else f"{f.value:,.1f}" if abs(f.value) < 1000 else f"{f.value:,.0f}"


def _verdict(f: Figure) -> str:
    ok = f.meets()
    return "" if ok is None else "meets" if ok else "MISSES"


def render_table(figures: list[Figure], markdown: bool) -> str:
    header = ("benchmark", "figure", "value", "unit", "target", "", "how")
    rows = [(f.benchmark, f.what, _value(f), f.unit, f.target, _verdict(f), f.detail) for f in figures]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths)), r[-1]]).rstrip()
                     for r in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                        help=f"which to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--seconds", type=float, default=3,
                        help="length of each measurement window (default 3)")
    parser.add_argument("--reps", type=int, default=5,
                        help="repetitions of every measurement; figures are their medians (default 5)")
    parser.add_argument("--markdown", action="store_true", help="print the final table as Markdown")
    args = parser.parse_args(argv)
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.seconds <= 0 or args.reps < 1:
        parser.error("--seconds must be > 0 and --reps >= 1")
    if os.geteuid() != 0:
        print("bench: must run as root (network namespaces, BPF, sysctl)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "sockperf", "bpftool", "nft"):
        if shutil.which(tool) is None:
            print(f"bench: `{tool}` not found: run `make setup`", file=sys.stderr)
            return 1

    names = args.benchmarks or list(BENCHMARKS)
    print(f"netprobe benchmarks: {', '.join(names)}")
    print(f"before: {machine_state()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="netprobe-bench-"))
    figures, failed = [], []
    started = time.monotonic()
    try:
        for name in names:
            print(f"\n== {name}", flush=True)
            t0, wall0 = time.monotonic(), time.time()
            try:
                figures += BENCHMARKS[name].run(workdir, seconds=args.seconds, reps=args.reps)
            except KeyboardInterrupt:
                raise
            except Exception:  # one broken benchmark must not hide the others' figures
                failed.append(name)
                print(f"{name} FAILED:\n{traceback.format_exc()}", file=sys.stderr)
                for log in sorted(p for p in workdir.glob("agent-*.log") if p.stat().st_mtime >= wall0):
                    print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace")
                                                                   .splitlines()[-20:]), file=sys.stderr)
            print(f"   ({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nafter:  {machine_state()}")
    print(f"total {time.monotonic() - started:.0f}s; figures from this one run, medians of {args.reps} "
          "repetitions (ratios are of arms of the same run; nothing is asserted)\n")
    print(render_table(figures, args.markdown))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
