"""The dns program in the running kernel: a real DNS server (dnslib, known
behaviour per name: hack/netprobe_testbed/dns_server.py) in one network namespace, real
clients (dig, and glibc through getent) in others, exact counts.

Every query here crosses the client's veth, the lab's bridge and the server's
veth (and the response the same way back): the exact counts show that each
is counted once, not once per hop.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netprobe_testbed import dns_server
from netprobe_testbed.netns import Lab, wait_until

from agent_harness import AgentProcess, need_root

pytestmark = pytest.mark.kernel

NAMES = {"s": ("kube-system", "coredns-1", "coredns"), "a": ("shop", "cart-7", "cart"),
         "b": ("payments", "api-2", "api"), "m": ("batch", "fuzz-1", "fuzz"), "c": ("shop", "web-1", "web")}
SERVER = Path(dns_server.__file__)
TIMEOUT_MS = 1000
FAMILIES = ["ip4", "ip6"]
TRANSPORTS = ["udp", "tcp"]

QUERIES = "netprobe_dns_queries_total"
RESPONSES = "netprobe_dns_responses_total"
TIMEOUTS = "netprobe_dns_timeouts_total"
RETRANSMITS = "netprobe_dns_retransmits_total"
MALFORMED = "netprobe_dns_malformed_total"
LATENCY = "netprobe_dns_latency_seconds"

# Sends raw messages to the server: argv = host, then hex payloads; "sleep:S" pauses.
_SEND_RAW = r"""
import socket, sys, time
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
for arg in sys.argv[2:]:
    if arg.startswith("sleep:"):
        time.sleep(float(arg[6:]))
    else:
        s.sendto(bytes.fromhex(arg), (host, 53))
time.sleep(0.3)
"""


def labels(client: str, server: str = "s", **extra) -> dict:
    ns, pod, _ = NAMES[client]
    out = {"namespace": ns, "pod": pod}
    if server:
        out.update(peer_namespace=NAMES[server][0], peer_pod=NAMES[server][1])
    out.update(extra)
    return out


@pytest.fixture(scope="module")
def lab():
    need_root()
    if not shutil.which("dig"):
        pytest.fail("dig is missing: run hack/setup.sh (Debian package bind9-dnsutils)")
    with Lab(list(NAMES)) as lab:
        proc = lab.pods["s"].popen([sys.executable, str(SERVER), "53"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"DNS server did not start: {proc.stderr.read()}")
        yield lab


# Every test runs with both hooks: raw tracepoints (the default) and the
# tracepoints' records (the fallback), which must count the same.
@pytest.fixture(scope="module", params=["raw_tracepoint", "tracepoint"])
def agent(lab, tmp_path_factory, request):
    workdir = tmp_path_factory.mktemp("agent")
    pods = lab.write_static_resolver(workdir / "pods.yaml", NAMES)
    agent = AgentProcess(workdir, {"dns": {"timeout_ms": TIMEOUT_MS, "attach": request.param}}, pods).start()
    s = agent.scrape()
    assert [x.labels["attach"] for x in s.all("netprobe_program_info", program="dns")] == [request.param]
    yield agent
    assert agent.stop() == 0


def server_ip(lab, family):
    return getattr(lab.pods["s"], family)


def dig(lab, client: str, family: str, queries: list[tuple[str, str]], transport: str = "udp",
        extra: str = "") -> list[str]:
    """One dig per (name, qtype), one attempt each; returns the status of each."""
    tcp = "+tcp" if transport == "tcp" else "+notcp"
    script = "\n".join(f"dig @{server_ip(lab, family)} {tcp} +tries=1 +timeout=2 {extra} {name} {qtype}"
                       f" | grep -o 'status: [A-Z]*' || echo 'status: none'" for name, qtype in queries)
    out = lab.pods[client].run(["sh", "-c", script], timeout=10 + 5 * len(queries)).stdout
    return [line.split()[-1] for line in out.splitlines()]


def udp_datagrams(lab, pod: str, family: str) -> tuple[int, int]:
    """(sent, received) UDP datagrams of the pod's namespace, the kernel's own count."""
    prefix = "Udp6" if family == "ip6" else "Udp"
    out = lab.pods[pod].run(["nstat", "-saz", f"{prefix}OutDatagrams", f"{prefix}InDatagrams"]).stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.startswith(prefix)}
    return counts[f"{prefix}OutDatagrams"], counts[f"{prefix}InDatagrams"]


def delta(after, before, name, **match) -> float:
    return after.value(name, **match) - before.value(name, **match)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_queries_by_qtype_and_responses_by_rcode_are_exact(lab, agent, family, transport):
    asks = ([(f"q{i}.ok.test", "A") for i in range(3)] + [(f"q{i}.ok.test", "AAAA") for i in range(2)] +
            [(f"q{i}.ok.test", "TXT") for i in range(2)] + [("big.ok.test", "TXT")] +
            [("nx1.test", "A"), ("nx2.test", "A"), ("fail.test", "A"), ("refused.test", "A")])
    before, udp_before = agent.scrape(), udp_datagrams(lab, "a", family)
    statuses = dig(lab, "a", family, asks, transport)
    assert statuses == ["NOERROR"] * 8 + ["NXDOMAIN", "NXDOMAIN", "SERVFAIL", "REFUSED"]
    after, udp_after = agent.scrape(), udp_datagrams(lab, "a", family)
    a = labels("a", transport=transport)
    assert {q: delta(after, before, QUERIES, qtype=q, **a) for q in ("A", "AAAA", "TXT")} == \
        {"A": 7, "AAAA": 2, "TXT": 3}
    got = {(q, r): delta(after, before, RESPONSES, qtype=q, rcode=r, **a)
           for q in ("A", "AAAA", "TXT") for r in ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")}
    assert {k: v for k, v in got.items() if v} == {("A", "NOERROR"): 3, ("AAAA", "NOERROR"): 2,
                                                   ("TXT", "NOERROR"): 3, ("A", "NXDOMAIN"): 2,
                                                   ("A", "SERVFAIL"): 1, ("A", "REFUSED"): 1}
    assert delta(after, before, LATENCY + "_count", **a) == 12
    if transport == "udp":   # the kernel's count of the client's datagrams: one query, one response each
        sent, received = (x - y for x, y in zip(udp_after, udp_before))
        counted = (delta(after, before, QUERIES, **a), delta(after, before, RESPONSES, **a))
        assert counted == (sent, received) == (12, 12)
    # Nothing else moved: no timeout, retransmission or malformed packet, the
    # other transport saw nothing, and the server is the peer, never a client.
    other = "tcp" if transport == "udp" else "udp"
    for name in (TIMEOUTS, RETRANSMITS, MALFORMED):
        assert delta(after, before, name, **labels("a")) == 0, name
    assert delta(after, before, QUERIES, **labels("a", transport=other)) == 0
    assert delta(after, before, QUERIES, **labels("s", server=None)) == 0
    assert after.value(QUERIES, **labels("c", server=None)) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_glibc_resolution_counts_one_a_and_one_aaaa(lab, agent, family):
    """getent ahosts resolves through glibc with the namespace's resolv.conf
    (ip netns exec bind-mounts /etc/netns/<netns>/resolv.conf)."""
    netns = lab.pods["b"].netns
    conf = Path("/etc/netns") / netns / "resolv.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"nameserver {server_ip(lab, family)}\noptions timeout:2 attempts:1\n")
    n = 3
    try:
        before = agent.scrape()
        for i in range(n):
            out = lab.pods["b"].run(["getent", "ahosts", f"glibc{i}.ok.test"]).stdout
            assert "192.0.2.1" in out and "2001:db8::1" in out, out
        after = agent.scrape()
    finally:
        shutil.rmtree(conf.parent, ignore_errors=True)
    b = labels("b", transport="udp")
    assert {q: delta(after, before, QUERIES, qtype=q, **b) for q in ("A", "AAAA")} == {"A": n, "AAAA": n}
    assert {q: delta(after, before, RESPONSES, qtype=q, rcode="NOERROR", **b) for q in ("A", "AAAA")} == \
        {"A": n, "AAAA": n}


def test_truncated_answer_then_tcp_retry_counts_both_exchanges(lab, agent):
    before = agent.scrape()
    assert dig(lab, "a", "ip4", [("tc.ok.test", "A")]) == ["NOERROR"]   # dig retries over TCP on TC
    after = agent.scrape()
    for transport in TRANSPORTS:
        a = labels("a", transport=transport)
        assert delta(after, before, QUERIES, qtype="A", **a) == 1, transport
        assert delta(after, before, RESPONSES, qtype="A", rcode="NOERROR", **a) == 1, transport


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_unanswered_queries_are_timeouts(lab, agent, family, transport):
    n = 2
    b = labels("b", transport=transport)
    before = agent.scrape()
    assert dig(lab, "b", family, [("drop.test", "A")] * n, transport, extra="+timeout=1") == ["none"] * n

    def timed_out():
        s = agent.scrape()    # each scrape expires queries older than timeout_ms
        return s if delta(s, before, TIMEOUTS, qtype="A", **b) >= n else None
    after = wait_until(timed_out, timeout=TIMEOUT_MS / 1000 + 10, what="timeouts counted")
    assert delta(after, before, TIMEOUTS, qtype="A", **b) == n
    assert delta(after, before, QUERIES, qtype="A", **b) == n
    assert delta(after, before, RESPONSES, **b) == 0


def test_a_late_response_is_a_timeout(lab, agent):
    """Answered after 1.5 s, beyond timeout_ms (1 s), with no scrape in
    between: the late response decides the timeout, and is no response."""
    b = labels("b", transport="udp", qtype="A")
    before = agent.scrape()
    assert dig(lab, "b", "ip4", [("late.ok.test", "A")], extra="+timeout=3") == ["NOERROR"]
    after = agent.scrape()
    assert delta(after, before, QUERIES, **b) == 1
    assert delta(after, before, TIMEOUTS, **b) == 1
    assert delta(after, before, RESPONSES, **b) == 0


def test_the_same_query_resent_after_the_timeout_is_a_timeout_and_a_new_query(lab, agent):
    """A resend with the same id after timeout_ms, no scrape in between: the
    resend decides the first one's timeout and is a new query (not a
    retransmission); the agent's sweep later times out the second."""
    query = _query(0x5151, "drop.test").hex()
    b = labels("b", transport="udp", qtype="A")
    before = agent.scrape()
    lab.pods["b"].run([sys.executable, "-c", _SEND_RAW, server_ip(lab, "ip4"), query,
                       f"sleep:{TIMEOUT_MS / 1000 + 0.3}", query])
    after = agent.scrape()
    assert (delta(after, before, QUERIES, **b), delta(after, before, RETRANSMITS, **b)) == (2, 0)
    assert delta(after, before, TIMEOUTS, **b) in (1, 2)    # 2 if the scrape came timeout_ms after the resend
    def both_timed_out():
        s = agent.scrape()
        return s if delta(s, before, TIMEOUTS, **b) >= 2 else None
    final = wait_until(both_timed_out, timeout=TIMEOUT_MS / 1000 + 10, what="the second query timed out")
    assert delta(final, before, TIMEOUTS, **b) == 2


def test_latency_puts_the_80ms_answers_in_the_bucket_holding_80ms(lab, agent):
    """The server answers slow.ok.test after 80 ms, the rest at once: slot 17,
    (65.536 ms, 131.072 ms], holds the slow ones, the fast ones sit below. On a
    busy machine the server's thread may answer late: dig's own query time (an
    upper bound of what the kernel measured) says which slow answers must be
    in slot 17; any later one must still be above 65 ms."""
    slow, fast = 3, 5
    a = labels("a", transport="udp", rcode="NOERROR")
    before = agent.scrape()
    script = "\n".join(f"dig @{server_ip(lab, 'ip4')} +notcp +tries=1 +timeout=2 {name} A | grep 'Query time'"
                       for name in ["slow.ok.test"] * slow + ["f.ok.test"] * fast)
    out = lab.pods["a"].run(["sh", "-c", script]).stdout.split("\n")
    times_ms = [int(line.split()[3]) for line in out if "Query time" in line]
    assert len(times_ms) == slow + fast, out
    after = agent.scrape()
    every = {s.labels["le"]: delta(after, before, LATENCY + "_bucket", le=s.labels["le"], **a)
             for s in after.all(LATENCY + "_bucket", **a)}
    on_time = sum(1 for t in times_ms[:slow] if t < 128)
    assert every["0.065536"] == fast, every
    assert fast + on_time <= every["0.131072"] <= fast + slow, (every, times_ms)
    assert every["+Inf"] == slow + fast
    total = delta(after, before, LATENCY + "_sum", **a)
    assert slow * 0.080 <= total < sum(times_ms) / 1000 + 0.01, (total, times_ms)


def _query(qid: int, name: str, qtype: int = 1, qdcount: int = 1) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return (qid.to_bytes(2, "big") + b"\x01\x00" + qdcount.to_bytes(2, "big") + b"\0" * 6 +
            qname + qtype.to_bytes(2, "big") + b"\x00\x01")


def test_a_retransmission_with_the_same_id_is_one_query(lab, agent):
    """A resolver resends the same message (same id, same socket) while the
    first is pending: one query, one retransmission, one response (the 80 ms
    name: both copies are answered, the second answer matches nothing)."""
    query = _query(0x4242, "slow.ok.test").hex()
    a = labels("a", transport="udp", qtype="A")
    before = agent.scrape()
    lab.pods["a"].run([sys.executable, "-c", _SEND_RAW, server_ip(lab, "ip4"), query, "sleep:0.02", query])
    after = agent.scrape()
    assert delta(after, before, QUERIES, **a) == 1
    assert delta(after, before, RETRANSMITS, **a) == 1
    assert delta(after, before, RESPONSES, rcode="NOERROR", **a) == 1


def test_malformed_packets_are_counted_and_good_queries_still_count(lab, agent):
    too_long = ".".join(["x" * 63] * 5)            # 320 bytes: past the 255 a name may have
    malformed = [
        bytes.fromhex("1234010000"),               # shorter than the header
        _query(1, "a.ok.test", qdcount=0),         # no question
        _query(2, too_long),
        bytes.fromhex("0003 0100 0001 0000 0000 0000".replace(" ", "")) + b"\x32abc",   # label past the end
        bytes(range(200, 240)),                    # random-looking payload (response bit set, no question)
    ]
    # A compression pointer to itself is a loop for a decoder that follows it;
    # the program ends the name at a pointer, so this is a readable query (A).
    pointer_loop = bytes.fromhex("0004 0100 0001 0000 0000 0000 c00c 0001 0001".replace(" ", ""))
    m = labels("m", transport="udp")
    before = agent.scrape()
    args = [p.hex() for p in malformed] + [pointer_loop.hex()]
    lab.pods["m"].run([sys.executable, "-c", _SEND_RAW, server_ip(lab, "ip4"), *args])
    assert dig(lab, "m", "ip4", [("g1.ok.test", "A"), ("g2.ok.test", "AAAA")]) == ["NOERROR"] * 2
    lab.pods["m"].run([sys.executable, "-c", _SEND_RAW, server_ip(lab, "ip4"), *args])
    assert dig(lab, "m", "ip4", [("g3.ok.test", "A")]) == ["NOERROR"]
    # a response shorter than the header: malformed on the response side (its query then times out)
    assert dig(lab, "m", "ip4", [("short.test", "A")], extra="+timeout=1") == ["none"]
    after = agent.scrape()
    assert delta(after, before, MALFORMED, kind="query", **m) == 2 * len(malformed)
    assert delta(after, before, MALFORMED, kind="response", **m) == 1
    assert delta(after, before, QUERIES, qtype="A", **m) == 2 + 2 + 1  # g1, g3, the two pointer loops, short
    assert delta(after, before, QUERIES, qtype="AAAA", **m) == 1
    assert delta(after, before, RESPONSES, rcode="NOERROR", **m) == 3
    assert after.value("netprobe_map_update_failures_total", program="dns") == 0


def test_with_exactly_the_daemonsets_capabilities_for_dns_tcp_dns_counts_exactly(lab, agent_factory, tmp_path):
    """The operator renders SYSLOG into the DaemonSet when dns is selected
    (daemonset_capabilities): with exactly that set, and nothing else, the
    program finds the kernel's memory layout and counts TCP DNS like UDP."""
    from node_agent.kernel.features import CAPABILITY_NAMES, daemonset_capabilities
    granted = daemonset_capabilities(["dns"])
    assert "SYSLOG" in granted and "SYS_ADMIN" not in granted
    drop = ",".join(f"cap_{c.lower()}" for c in CAPABILITY_NAMES if c not in granted)
    pods = lab.write_static_resolver(tmp_path / "pods.yaml", NAMES)
    agent = agent_factory({"dns": {"timeout_ms": TIMEOUT_MS}}, pods,
                          prefix=["capsh", f"--drop={drop}", "--", "-c", 'exec "$0" "$@"']).start()
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    cap_eff = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    assert {name for bit, name in enumerate(CAPABILITY_NAMES) if cap_eff >> bit & 1} == set(granted)
    assert "TCP DNS payload in page fragments will not be read" not in agent.log_path.read_text()
    before = agent.scrape()
    for family in FAMILIES:
        assert dig(lab, "m", family, [("t1.ok.test", "A"), ("t2.ok.test", "AAAA"), ("nx.test", "A")], "tcp") == \
            ["NOERROR", "NOERROR", "NXDOMAIN"]
    after = agent.scrape()
    m = labels("m", transport="tcp")
    assert {q: delta(after, before, QUERIES, qtype=q, **m) for q in ("A", "AAAA")} == {"A": 4, "AAAA": 2}
    assert {r: delta(after, before, RESPONSES, rcode=r, **m) for r in ("NOERROR", "NXDOMAIN")} == \
        {"NOERROR": 4, "NXDOMAIN": 2}
    assert delta(after, before, "netprobe_program_discarded_events_total", program="dns", reason="unreadable") == 0


def test_without_the_kernel_layout_tcp_payload_is_unreadable_not_malformed(lab, agent_factory, tmp_path):
    """Without CAP_SYSLOG kallsyms hides addresses: the program cannot find the
    pages TCP keeps its payload in. Those queries are counted as unreadable
    (discarded), never as malformed; UDP counts as before."""
    pods = lab.write_static_resolver(tmp_path / "pods.yaml", NAMES)
    blind = agent_factory({"dns": {"timeout_ms": TIMEOUT_MS}}, pods,
                          prefix=["capsh", "--drop=cap_syslog", "--", "-c", 'exec "$0" "$@"']).start()
    assert "TCP DNS payload in page fragments will not be read" in blind.log_path.read_text()
    before = blind.scrape()
    assert dig(lab, "m", "ip4", [("u.ok.test", "A")], "udp") == ["NOERROR"]
    assert dig(lab, "m", "ip4", [("t.ok.test", "A")], "tcp") == ["NOERROR"]
    after = blind.scrape()
    m = labels("m")
    assert delta(after, before, QUERIES, transport="udp", **m) == 1
    assert delta(after, before, RESPONSES, transport="udp", **m) == 1
    assert delta(after, before, QUERIES, transport="tcp", **m) == 0
    assert delta(after, before, MALFORMED, **m) == 0
    assert delta(after, before, "netprobe_program_discarded_events_total", program="dns", reason="unreadable") >= 1


NAME_CAP = 4
NAME_QUERIES = "netprobe_dns_name_queries_total"
NAME_RESPONSES = "netprobe_dns_name_responses_total"
NAME_TIMEOUTS = "netprobe_dns_name_timeouts_total"
LONG = ".".join(["L" * 63] * 3) + ".ok.test"        # three labels of the longest kind: 201 bytes on the wire


@pytest.fixture(scope="module")
def named_agent(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("named")
    pods = lab.write_static_resolver(workdir / "pods.yaml", NAMES)
    agent = AgentProcess(workdir, {"dns": {"timeout_ms": TIMEOUT_MS, "query_names": NAME_CAP}}, pods).start()
    yield agent
    assert agent.stop() == 0


def test_query_names_are_labels_for_the_first_n_names_and_the_rest_is_other(lab, named_agent):
    """query_names: 4. Names differing only in case are one name (lowercased);
    a name of three 63-byte labels keeps all its bytes; every name after the
    fourth distinct one (on this node) counts as qname="other". The per-name
    families add up to the unnamed ones."""
    sent = [("Web.OK.test", "A"), ("web.ok.TEST", "A"), ("WEB.ok.test", "AAAA"), (LONG, "TXT"),
            ("nx1.test", "A"), ("nx1.test", "A"), ("drop.test", "A"),
            ("extra1.ok.test", "A"), ("Extra2.ok.test", "A"), ("nx2.test", "A"), ("drop.test", "A")]
    before = named_agent.scrape()
    statuses = dig(lab, "c", "ip4", sent, "udp", extra="+timeout=1")
    assert statuses == ["NOERROR"] * 4 + ["NXDOMAIN"] * 2 + ["none"] + ["NOERROR"] * 2 + ["NXDOMAIN", "none"]

    def timed_out():
        s = named_agent.scrape()
        return s if delta(s, before, TIMEOUTS, **labels("c")) >= 2 else None
    after = wait_until(timed_out, timeout=TIMEOUT_MS / 1000 + 10, what="the drop.test timeouts")
    c = labels("c")
    ours = ["web.ok.test", LONG.lower(), "nx1.test", "drop.test", "extra1.ok.test", "extra2.ok.test", "nx2.test"]
    named = {s.labels["qname"] for s in after.all(NAME_QUERIES) if s.labels["qname"] != "other"}
    # first seen, first named: the names of ours that got a label are the first ones we sent (the
    # cap is per node: DNS of anything else on this machine may have taken some of the four)
    got = [n for n in ours if n in named]
    assert got == ours[:len(got)] and len(named) <= NAME_CAP, named
    if named <= set(ours):                  # nothing else on the node asked a name meanwhile
        assert got == ours[:NAME_CAP]
    queries = {(n, q): delta(after, before, NAME_QUERIES, qname=n, qtype=q, **c)
               for n in got + ["other"] for q in ("A", "AAAA", "TXT")}
    expected_queries: dict = {}
    expected_responses: dict = {}
    expected_timeouts: dict = {}
    for (name, qtype), status in zip(sent, statuses):
        label = name.lower() if name.lower() in got else "other"
        expected_queries[label, qtype] = expected_queries.get((label, qtype), 0) + 1
        if status == "none":
            expected_timeouts[label, qtype] = expected_timeouts.get((label, qtype), 0) + 1
        else:
            expected_responses[label, qtype, status] = expected_responses.get((label, qtype, status), 0) + 1
    assert {k: v for k, v in queries.items() if v} == expected_queries
    responses = {(n, q, r): delta(after, before, NAME_RESPONSES, qname=n, qtype=q, rcode=r, **c)
                 for n in got + ["other"] for q in ("A", "AAAA", "TXT") for r in ("NOERROR", "NXDOMAIN")}
    assert {k: v for k, v in responses.items() if v} == expected_responses
    timeouts = {(n, q): delta(after, before, NAME_TIMEOUTS, qname=n, qtype=q, **c)
                for n in got + ["other"] for q in ("A",)}
    assert {k: v for k, v in timeouts.items() if v} == expected_timeouts
    # the per-name families are the unnamed ones split by name
    for named_family, family in ((NAME_QUERIES, QUERIES), (NAME_RESPONSES, RESPONSES), (NAME_TIMEOUTS, TIMEOUTS)):
        assert delta(after, before, named_family, **c) == delta(after, before, family, **c) == {
            NAME_QUERIES: 11, NAME_RESPONSES: 9, NAME_TIMEOUTS: 2}[named_family], named_family
    assert after.value("netprobe_map_update_failures_total", program="dns") == 0


def test_without_query_names_the_name_families_stay_empty(lab, agent):
    before = agent.scrape()
    assert dig(lab, "c", "ip4", [("n.ok.test", "A")]) == ["NOERROR"]
    after = agent.scrape()
    assert delta(after, before, QUERIES, **labels("c")) == 1
    assert after.all(NAME_QUERIES) == after.all(NAME_RESPONSES) == after.all(NAME_TIMEOUTS) == []
