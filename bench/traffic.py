"""Load generators run inside lab pods: iperf3 (stream), sockperf (ping-pong), short connections."""
from __future__ import annotations

import json
import os
import re
import subprocess

from bench.common import wait_listening

IPERF3_PORT = 5201
SOCKPERF_PORT = 11111

# Client and server pinned to one and the same CPU in every run. Left to the
# scheduler, a ping-pong ran at 14k or 50k round trips/s depending on whether
# both ends happened to share a CPU, which drowned any agent effect; on two
# CPUs it was steady at ~12k but noisy from whatever else ran. On one CPU it
# is steady (52k-62k here), and the whole path - client, softirq with the
# agent's programs, server - is serial there, so the agent's cost is not hidden
# by parallelism.
CLIENT_CPU = SERVER_CPU = (os.cpu_count() or 1) - 1


def pinned(cpu: int, argv: list) -> list:
    return ["taskset", "--cpu-list", str(cpu), *argv]


def start_iperf3_server(pod) -> subprocess.Popen:
    proc = pod.popen(pinned(SERVER_CPU, ["iperf3", "--server", "--port", IPERF3_PORT]),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(pod, IPERF3_PORT)
    return proc


def iperf3_client_argv(server_ip: str, seconds: float) -> list[str]:
    return pinned(CLIENT_CPU, ["iperf3", "--client", server_ip, "--port", IPERF3_PORT,
                               "--time", f"{seconds:g}", "--json"])


def iperf3_received(pod, server_ip: str, seconds: float) -> dict:
    """One TCP stream for `seconds`; iperf3's end.sum_received (bytes, bits_per_second, ...)."""
    res = pod.run(iperf3_client_argv(server_ip, seconds), timeout=seconds + 60)
    report = json.loads(res.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    return report["end"]["sum_received"]


def iperf3_bits_per_second(pod, server_ip: str, seconds: float) -> float:
    """One TCP stream for `seconds`; the receiver's average rate in bit/s."""
    return float(iperf3_received(pod, server_ip, seconds)["bits_per_second"])


def busy_cpu_ns(cpu: int = CLIENT_CPU) -> int:
    """Time `cpu` spent not idle since boot (/proc/stat, in USER_HZ ticks): the
    CPU that the load generators, and with them the whole veth path, run on."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                fields = [int(x) for x in line.split()[1:]]
                break
        else:
            raise RuntimeError(f"no cpu{cpu} line in /proc/stat")
    idle = fields[3] + fields[4]                        # idle, iowait
    busy = sum(fields[:8]) - idle                       # user .. steal (guest time is inside user)
    return busy * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def start_sockperf_server(pod, ip: str) -> subprocess.Popen:
    proc = pod.popen(pinned(SERVER_CPU, ["sockperf", "server", "--tcp", "-i", ip, "-p", SOCKPERF_PORT]),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(pod, SOCKPERF_PORT)
    return proc


def sockperf_pingpong_argv(server_ip: str, seconds: float, msg_size: int = 64,
                           mps: int | None = None) -> list[str]:
    """One persistent TCP connection, one small message in flight at a time.

    `mps` caps the messages per second (None: as fast as the round trips allow).
    """
    return pinned(CLIENT_CPU, ["sockperf", "ping-pong", "--tcp", "-i", server_ip, "-p", SOCKPERF_PORT,
                               "-t", f"{seconds:g}", "-m", msg_size, "--mps", "max" if mps is None else mps])


def sockperf_round_trips_per_second(output: str) -> float:
    """From sockperf's '[Valid Duration] RunTime=2.550 sec; SentMessages=..; ReceivedMessages=N'."""
    m = re.search(r"\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)",
                  output)
    if not m:
        raise RuntimeError(f"sockperf printed no result:\n{output[-2000:]}")
    return int(m.group(3)) / float(m.group(1))


def sockperf_total_round_trips(output: str) -> int:
    """Every round trip of the run, warm-up included (what the kernel saw), from
    sockperf's '[Total Run] RunTime=..; Warm up time=..; SentMessages=N; ReceivedMessages=M'."""
    m = re.search(r"\[Total Run\].*?SentMessages=(\d+); ReceivedMessages=(\d+)", output)
    if not m:
        raise RuntimeError(f"sockperf printed no total:\n{output[-2000:]}")
    return int(m.group(2))


def sockperf_pingpong_output(pod, server_ip: str, seconds: float, mps: int | None = None) -> str:
    """What a ping-pong over one connection printed (its figures: the two parsers above)."""
    res = pod.run(sockperf_pingpong_argv(server_ip, seconds, mps=mps), timeout=seconds + 60)
    return res.stdout + res.stderr


def sockperf_pingpong(pod, server_ip: str, seconds: float, mps: int | None = None) -> float:
    """Round trips per second of a ping-pong over one connection."""
    return sockperf_round_trips_per_second(sockperf_pingpong_output(pod, server_ip, seconds, mps))


