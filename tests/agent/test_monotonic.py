"""No scrape ever reads a counter lower than the scrape before it.

The agent (every program, each attach mode the kernel offers, as in
test_programs.py) is scraped in a tight loop while realistic traffic flows
between this lab's pods, over IPv4 and IPv6: short connections (every tenth
to a closed port: resets, drops), a bulk stream of 1 MB requests (TSO/GSO on
the veths), a lossy pair (nftables `numgen random` drops: retransmits), many
small request/response messages on persistent connections, and DNS queries.
Across all scrapes, per series: no counter, histogram bucket, `_count` or
`_sum` decreases, and no series that was there disappears. Any per-socket or
per-CPU staging of counts in the kernel (folded into the exported maps later)
must keep this: it is what Prometheus' rate() relies on (a decrease reads as
a counter reset).

Only the agent's own series (no identity labels) and series of this lab's
pods are judged: the agent sees every packet of the machine, and the labels
of other labs' traffic may change under it (their bridges come and go from
the node's addresses, so a peer turns from `external` to `host`).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent_harness import ALL_PROGRAMS, AgentProcess, Scrape, expected_attach, need_root
from netprobe_testbed import dns_server
from netprobe_testbed.netns import TIME_SCALE, Lab
from node_agent.kernel.features import KernelFeatures
from node_agent.programs import CATALOGUE

pytestmark = pytest.mark.kernel

NAMES = {"client": ("mono-clients", "client-1", "client"), "server": ("mono-servers", "server-1", "server"),
         "lossy": ("mono-servers", "lossy-1", "lossy")}
OUR_NAMESPACES = {ident[0] for ident in NAMES.values()}

# every attach mode this kernel runs: auto (tp_btf, or kprobes), raw
# tracepoints where auto takes something else, plain tracepoints
KPROBES = KernelFeatures().kprobes
TP_BTF = KernelFeatures().btf_tracepoint("tcp:tcp_probe")
# tracepoint mode with one-entry front caches (bpf/netprobe.h): every change
# of key on a CPU moves counts from a front to its hash while scrapes read both
ONE_ENTRY_FRONT = {"front_cache_log2": 0}
ATTACH_MODES = {
    "auto": ALL_PROGRAMS,
    "tracepoint": {name: {"attach": "tracepoint",
                          **(ONE_ENTRY_FRONT if any(o.name == "front_cache_log2" for o in CATALOGUE[name].options)
                             else {})}
                   for name in ALL_PROGRAMS},
    **({"raw_tracepoint": {name: {"attach": "raw_tracepoint"} for name in ALL_PROGRAMS}}
       if KPROBES or TP_BTF else {}),
}

ECHO_PORT, PINGPONG_PORT, CLOSED_PORT = 7301, 7302, 7309
SCRAPE_SECONDS = 15          # how long the loop scrapes (traffic flows throughout)
MAX_SCRAPES = 1000           # and at most this many scrapes
MIN_SCRAPES = 20             # fewer: the loop proves too little (an overloaded machine)

# Echoes whatever arrives on each connection (one thread per connection) until
# the client closes; prints "ready" once listening on [::] (dual stack).
_PINGPONG_SERVER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
def serve(c):
    with c:
        while True:
            data = c.recv(65536)
            if not data:
                return
            c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One persistent connection: a 64-byte message, wait for its echo, again, for
# argv[3] seconds at most; a 10 ms pause every 200 messages keeps it from
# taking a whole CPU of a shared machine.
_PINGPONG_CLIENT = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
with socket.create_connection((host, port), timeout=10) as c:
    n = 0
    while time.monotonic() < deadline:
        c.sendall(b"m" * 64)
        got = 0
        while got < 64:
            chunk = c.recv(64 - got)
            if not chunk:
                sys.exit("server closed")
            got += len(chunk)
        n += 1
        if n % 200 == 0:
            time.sleep(0.01)
print(n)
"""

# DNS queries (one outstanding, each waited for 1 s at most) for argv[2] seconds.
_DNS_LOOP = r"""
import socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(1)
query = bytes.fromhex("0000010000010000000000000162026f6b04746573740000010001")   # b.ok.test A
deadline, i = time.monotonic() + seconds, 0
while time.monotonic() < deadline:
    i += 1
    s.sendto((i % 65536).to_bytes(2, "big") + query[2:], (host, 53))
    try:
        s.recv(4096)
    except OSError:
        pass
    time.sleep(0.002)
"""


@pytest.fixture(scope="module", params=list(ATTACH_MODES))
def attach_mode(request):
    return request.param


@pytest.fixture(scope="module")
def lab():
    need_root()
    with Lab(list(NAMES), prefix="npm") as lab:
        lab.serve_tcp("server", ECHO_PORT)
        lab.serve_tcp("lossy", ECHO_PORT)
        server = lab.pods["server"].popen([sys.executable, "-c", _PINGPONG_SERVER, str(PINGPONG_PORT)],
                                          stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        dns = lab.pods["server"].popen([sys.executable, dns_server.__file__, "53"], stdout=subprocess.PIPE,
                                       text=True)
        assert dns.stdout.readline().strip() == "ready"
        lab.add_random_drop("lossy", 10, from_ip=lab.pods["client"].ip4)
        yield lab


def resolver_file(lab: Lab, path: Path) -> Path:
    """The lab's pods by name, the server's IPv6 address as a pod of its own
    (server-1-v6), so that IPv4 and IPv6 traffic land in series of their own."""
    pods = []
    for lab_pod, (namespace, pod, workload) in NAMES.items():
        p = lab.pods[lab_pod]
        ips = [p.ip4] if lab_pod == "server" else [p.ip4, p.ip6]
        pods.append({"namespace": namespace, "pod": pod, "workload": workload, "ips": ips})
    server = lab.pods["server"]
    pods.append({"namespace": NAMES["server"][0], "pod": "server-1-v6", "workload": "server", "ips": [server.ip6]})
    path.write_text(yaml.safe_dump({"pods": pods}, sort_keys=False))
    return path


def start_traffic(lab: Lab, seconds: float) -> list[subprocess.Popen]:
    """Every kind of traffic at once, client -> server/lossy; the generators
    that loop forever are killed by the caller, the others end by themselves."""
    client, server, lossy = lab.pods["client"], lab.pods["server"], lab.pods["lossy"]
    procs = []
    for ip in (server.ip4, server.ip6):
        procs += [
            lab.start_requests("client", ip, ECHO_PORT, size=64, pause=0.01, closed_port=CLOSED_PORT,
                               refused_every=10),                                  # short connections, resets
            lab.start_requests("client", ip, ECHO_PORT, size=1_000_000, pause=0.05),  # bulk: GSO/TSO
            client.popen([sys.executable, "-c", _PINGPONG_CLIENT, ip, str(PINGPONG_PORT), str(seconds)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            client.popen([sys.executable, "-c", _DNS_LOOP, ip, str(seconds)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
    procs.append(lab.start_requests("client", lossy.ip4, ECHO_PORT, size=65536, pause=0.02))   # retransmits
    return procs


def judged(kind: str, sample_name: str, labels: dict) -> bool:
    """Counters and histogram parts of the agent itself or of this lab's pods."""
    if kind == "counter":
        ok = sample_name.endswith("_total")
    elif kind == "histogram":
        ok = sample_name.endswith(("_bucket", "_count", "_sum"))
    else:
        return False
    return ok and ("namespace" not in labels or labels["namespace"] in OUR_NAMESPACES)


def series(scrape: Scrape) -> dict[tuple, float]:
    """The judged series of a scrape parsed by prometheus_client: (name, sorted labels) -> value."""
    out = {}
    for family in scrape.families.values():
        for s in family.samples:
            if judged(family.type, s.name, s.labels):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def fast_series(text: str) -> dict[tuple, float]:
    """series() of the raw text, parsed here in a few ms: prometheus_client's
    parser takes 100-700 ms for a scrape of this size on a loaded 2-CPU
    machine, too slow for a tight loop. The first and the last scrape of the
    test are parsed both ways and must agree."""
    types, out = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, label_text, value = m.groups()
        kind = types.get(name) or next((types[name.removesuffix(sfx)] for sfx in ("_total", "_bucket", "_count", "_sum")
                                        if name.endswith(sfx) and name.removesuffix(sfx) in types), "untyped")
        labels = {k: re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group()], v)
                  for k, v in _LABEL.findall(label_text or "")}
        if judged(kind, name, labels):
            out[(name, tuple(sorted(labels.items())))] = float(value)
    return out


def show(key: tuple) -> str:
    name, labels = key
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def test_no_counter_or_histogram_ever_reads_lower_than_the_scrape_before(lab, attach_mode, tmp_path):
    programs = ATTACH_MODES[attach_mode]
    agent = AgentProcess(tmp_path, programs, resolver_file(lab, tmp_path / "pods.yaml")).start()
    try:
        first_text = agent.metrics_text(timeout=30)
        first = Scrape(first_text)
        assert fast_series(first_text) == series(first)
        assert {x.labels["program"]: x.labels["attach"] for x in first.all("netprobe_program_info")} == \
            expected_attach(programs)
        seconds = SCRAPE_SECONDS * TIME_SCALE
        procs = start_traffic(lab, seconds + 5)
        try:
            previous, decreases, vanished = series(first), [], []
            text = first_text
            scrapes, moved = 0, 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and scrapes < MAX_SCRAPES:
                text = agent.metrics_text(timeout=30)
                current = fast_series(text)
                scrapes += 1
                for key, before in previous.items():
                    now = current.get(key)
                    if now is None:
                        vanished.append(f"{show(key)} = {before} in scrape {scrapes - 1}, absent in scrape {scrapes}")
                    elif now < before:
                        decreases.append(f"{show(key)}: {before} in scrape {scrapes - 1}, then {now} in scrape {scrapes}")
                moved += any(current.get(k, v) > v for k, v in previous.items())
                previous = current
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
        print(f"{attach_mode}: {scrapes} scrapes in {seconds:.0f}s, {len(previous)} series judged")
        assert not decreases, f"{len(decreases)} decreases over {scrapes} scrapes:\n" + "\n".join(decreases[:30])
        assert not vanished, f"{len(vanished)} series vanished over {scrapes} scrapes:\n" + "\n".join(vanished[:30])
        assert scrapes >= MIN_SCRAPES, f"only {scrapes} scrapes in {seconds:.0f}s"
        assert moved >= scrapes // 2, f"counters moved in only {moved} of {scrapes} scrapes: not during traffic"
        assert fast_series(text) == series(Scrape(text)), "the fast parse disagrees with prometheus_client's"

        # The traffic reached every program: what each judged family counts moved.
        last, ours = agent.scrape(), {"namespace": "mono-clients"}
        for name, labels in (("netprobe_tcp_connections_opened_total", ours),
                             ("netprobe_tcp_resets_total", ours),
                             ("netprobe_tcp_segments_sent_total", ours),
                             ("netprobe_tcp_retransmits_total", ours),
                             ("netprobe_tcp_rtt_seconds_count", ours),
                             ("netprobe_tcp_connection_duration_seconds_count", ours),
                             ("netprobe_rx_latency_seconds_count", ours),
                             ("netprobe_dns_queries_total", ours),
                             ("netprobe_drops_total", {"namespace": "mono-servers"})):
            assert last.value(name, **labels) > first.value(name, **labels), f"{name} did not move"
        for peer in ("server-1", "server-1-v6"):   # IPv4 and IPv6 both counted (the resolver names each apart)
            for name in ("netprobe_tcp_segments_sent_total", "netprobe_tcp_rtt_seconds_count"):
                assert last.value(name, namespace="mono-clients", peer_pod=peer) > 0, (name, peer)
    finally:
        assert agent.stop() == 0
