"""`make demo` run for real: lab, agent, traffic, a summary with real figures, full clean-up.

The demo prints its summary as a table (see netprobe_testbed.demo.render_summary);
these tests read the last table it printed, the way a person would.
"""
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from netprobe_testbed.demo import DEMO_PODS, SUMMARY_HEADER

DEMO = [sys.executable, "-m", "netprobe_testbed.demo"]
# Starting takes seconds to minutes on a busy 2-core machine (BCC compiles four programs).
START_BUDGET = 400


def _last_table(stdout: str) -> dict[str, dict[str, str]]:
    """The last summary printed: pod -> column -> cell."""
    blocks = re.split(r"^--- netprobe demo: .*---$", stdout, flags=re.M)
    assert len(blocks) > 1, f"no summary printed:\n{stdout}"
    lines = [ln for ln in blocks[-1].splitlines() if ln.strip() and not ln.startswith("---")]
    header = re.split(r"\s{2,}", lines[0].strip())
    assert tuple(header) == SUMMARY_HEADER
    table = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(header):
            break  # the end of the table (e.g. "cleaning up")
        table[cells[0]] = dict(zip(header, cells))
    return table


def _quantiles(cell: str) -> list[float]:
    """'12/30/250' -> [12.0, 30.0, 250.0]; '-' (no data) fails the test."""
    parts = cell.split("/")
    assert len(parts) == 3 and "-" not in parts, f"no quantiles in {cell!r}"
    return [float(p) for p in parts]


def _made_by_the_demo(stdout: str) -> tuple[str, list[str], Path]:
    bridge, netns = re.search(r"bridge (\S+); netns (.+)$", stdout, flags=re.M).groups()
    workdir = Path(re.search(r"workdir (\S+)$", stdout, flags=re.M).group(1))
    return bridge, netns.split(), workdir


def _assert_all_removed(stdout: str) -> None:
    bridge, netns, workdir = _made_by_the_demo(stdout)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = {line.split()[0] for line in listed.splitlines() if line.strip()} & set(netns)
    assert not left, f"network namespaces left behind: {left}"
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0, \
        f"bridge {bridge} left behind"
    assert not workdir.exists(), f"{workdir} left behind"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert str(workdir) not in cmdline.read_bytes().decode(errors="replace"), \
                f"a process still uses {workdir}: {cmdline}"
        except (FileNotFoundError, ProcessLookupError):
            pass


@pytest.mark.kernel
def test_demo_prints_real_figures_per_pod_and_cleans_up():
    proc = subprocess.run([*DEMO, "--duration", "20"], capture_output=True, text=True,
                          timeout=START_BUDGET + 120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "--- end of the demo (duration reached) ---" in proc.stdout
    assert "cleaned up" in proc.stdout
    table = _last_table(proc.stdout)
    pods = {f"{ns}/{pod}" for ns, pod, _ in DEMO_PODS.values()}
    assert pods <= set(table), f"pods missing from the summary: {pods - set(table)}\n{proc.stdout}"

    def opened(pod):
        out, inbound = table[pod]["OPENED out/in"].split("/")
        return int(out), int(inbound)

    # who connects to whom is fixed by demo.TRAFFIC
    assert opened("tools/loadgen-1")[0] >= 100       # at least one burst of 100
    assert opened("shop/web-1")[1] >= 100            # ... that web-1 accepted
    assert opened("shop/web-1")[0] > 0 and opened("shop/cart-7")[1] > 0
    assert opened("payments/ledger-4")[1] > 0
    assert int(table["shop/cart-7"]["RETRANS"]) > 0  # the lossy pair, cart-7 -> ledger-4
    # a lossy pod's share of retransmitted segments is well above a clean one's
    assert float(table["shop/cart-7"]["RETRANS %"]) > 1
    assert float(table["tools/loadgen-1"]["RETRANS %"]) < 1
    assert int(table["tools/loadgen-1"]["CLOSED"]) > 0
    for pod in ("shop/web-1", "shop/cart-7", "tools/loadgen-1"):
        p50, p90, p99 = _quantiles(table[pod]["RTT µs p50/p90/p99"])
        assert 0 < p50 <= p90 <= p99 < 5_000_000, pod
    # rx latency (tracepoint path) ends when a reader gets the data: on the lossy
    # receiver data waits for retransmissions (RTO backoff: seconds), bounded by
    # the agent's stale_after_ms (10 s); where nothing is lost, well under a second
    for pod, bound_us in (("shop/web-1", 1e6), ("shop/cart-7", 1e6), ("payments/ledger-4", 10e6)):
        p50, p90, p99 = _quantiles(table[pod]["RX LATENCY µs p50/p90/p99"])
        assert 0 < p50 <= p90 <= p99 < bound_us, pod
    _assert_all_removed(proc.stdout)


@pytest.mark.kernel
def test_ctrl_c_stops_the_agent_and_removes_everything():
    proc = subprocess.Popen([*DEMO, "--refresh", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    try:
        for line in proc.stdout:  # until the first summary table has been printed
            seen.append(line)
            if len(seen) >= 2 and seen[-2].startswith("--- netprobe demo:"):
                break
        else:
            pytest.fail(f"the demo ended before its first summary:\n{''.join(seen)}{proc.stderr.read()}")
        # while it runs, /metrics is there for anyone (Prometheus, curl) with the demo's pods
        url = re.search(r"^metrics: (\S+)", "".join(seen), flags=re.M).group(1)
        with urllib.request.urlopen(url, timeout=30) as resp:
            exposition = resp.read().decode()
        assert re.search(r'^netprobe_tcp_connections_opened_total\{[^}]*pod="web-1"', exposition, flags=re.M)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = "".join(seen) + rest
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{err}"
    assert "stopping (SIGINT)" in stdout and "cleaned up" in stdout
    _assert_all_removed(stdout)


def test_not_root_is_a_clear_error():
    if os.geteuid() != 0:
        proc = subprocess.run([*DEMO, "--duration", "1"], capture_output=True, text=True, timeout=60)
    else:  # drop to nobody: the check must not depend on who runs the suite
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *DEMO,
                               "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "must run as root" in proc.stderr


def test_bad_options_are_refused_by_name():
    proc = subprocess.run([*DEMO, "--listen", "nowhere"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--listen 'nowhere'" in proc.stderr
    proc = subprocess.run([*DEMO, "--duration", "-3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--duration must be >= 0" in proc.stderr
