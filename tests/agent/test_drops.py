"""drops in the running kernel: each drop a known cause, counted exactly per
pod, reason and direction, with the kernel's own count as the truth (nstat of
the pod's network namespace, an nftables rule's counter).

One lab and one agent (drops only) serve the module, once per attach mode;
every assertion is a difference between two scrapes filtered by this lab's
pod labels, so other labs and agents running at the same time cannot disturb
it. The expected reason names are what the running kernel calls its codes:
the code from BTF's enum skb_drop_reason, the name from the kfree_skb
tracepoint's own table, never a number written here.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netprobe_testbed.netns import Lab, wait_until

from agent_harness import LABELS, AgentProcess, need_root
from node_agent.kernel.btf import kernel_btf
from node_agent.kernel.drop_reasons import TRACEPOINT_FORMATS, from_tracepoint_format

pytestmark = pytest.mark.kernel

NAMES = {"a": ("shop", "cart-7", "cart"), "b": ("payments", "api-2", "api")}
FAMILIES = ["ip4", "ip6"]
ATTACH_MODES = ["auto", "raw_tracepoint", "tracepoint"]
EXPECTED_ATTACH = {"auto": "tp_btf", "raw_tracepoint": "raw_tracepoint", "tracepoint": "tracepoint"}


def kernel_name(member: str) -> str:
    """The running kernel's name of an enum skb_drop_reason member, as its
    kfree_skb tracepoint prints it (the code from BTF, the name from the
    tracepoint format: two sources)."""
    code = kernel_btf().enum("skb_drop_reason")[member]
    for path in TRACEPOINT_FORMATS:
        try:
            with open(path) as f:
                return from_tracepoint_format(f.read())[code]
        except FileNotFoundError:
            continue
    raise AssertionError("no kfree_skb tracepoint format")


# Datagrams to host:port; prints how many sendto accepted (a local drop
# rule makes sendto fail with EPERM: those are counted as refused).
_SEND_UDP = r"""
import socket, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sent = refused = 0
for _ in range(count):
    try:
        s.sendto(b"u" * size, (host, port))
        sent += 1
    except PermissionError:
        refused += 1
print(sent, refused)
"""

# A UDP receiver that never reads, with the smallest receive buffer the kernel
# allows: prints "ready", then waits for a line on stdin.
_NEVER_READS = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sys.stdin.readline()
"""


def pod_labels(lab_pod: str, peer: str | None = None, **extra) -> dict:
    ns, pod, _ = NAMES[lab_pod]
    labels = {"namespace": ns, "pod": pod, **extra}
    if peer:
        labels.update(peer_namespace=NAMES[peer][0], peer_pod=NAMES[peer][1])
    return labels


@pytest.fixture(scope="module", params=ATTACH_MODES)
def attach_mode(request):
    return request.param


@pytest.fixture(scope="module")
def lab(attach_mode):
    need_root()
    with Lab(list(NAMES)) as lab:
        yield lab


@pytest.fixture(scope="module")
def agent(lab, attach_mode, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("agent")
    pods = lab.write_static_resolver(workdir / "pods.yaml", NAMES)
    options = {} if attach_mode == "auto" else {"attach": attach_mode}
    if attach_mode == "tracepoint":
        # the front cache at one entry per CPU: every change of key moves the
        # counts before it into the hash, so the exact counts prove the move
        options["front_cache_log2"] = 0
    agent = AgentProcess(workdir, {"drops": options}, pods).start()
    yield agent
    assert agent.stop() == 0


def ip(lab, pod, family):
    return getattr(lab.pods[pod], family)


def nstat(lab, pod: str) -> dict[str, int]:
    """The kernel's absolute counters of a pod's network namespace."""
    out = lab.pods[pod].run(["nstat", "-asz", "--json"]).stdout
    return json.loads(out)["kernel"]


def drops_delta(agent, before, after=None, **labels) -> float:
    after = after or agent.scrape()
    return after.value("netprobe_drops_total", **labels) - before.value("netprobe_drops_total", **labels)


def assert_counted(agent, before, after, expected: int, **labels) -> None:
    """Exactly `expected` drops counted. On a plain tracepoint the kernel skips
    the program while another tracing program runs on the CPU (a drop in a
    softirq that interrupted one); it counts each skip (of any drop on the
    node), and only that many may be missing. Raw and BTF-typed tracepoints are never skipped."""
    got = drops_delta(agent, before, after, **labels)
    hook = dict(program="drops", hook="skb:kfree_skb")
    missed = after.value("netprobe_program_missed_runs_total", **hook) - \
        before.value("netprobe_program_missed_runs_total", **hook)
    assert expected - missed <= got <= expected, (got, expected, missed)
    if after.all("netprobe_program_info", attach="raw_tracepoint") or after.all("netprobe_program_info",
                                                                                attach="tp_btf"):
        assert missed == 0 and got == expected


def wait_for_drops(agent, before, expected: int, **labels):
    """The scrape once `expected` drops are counted (or the last one tried)."""
    def counted():
        s = agent.scrape()
        return s if drops_delta(agent, before, s, **labels) >= expected else None
    try:
        return wait_until(counted, timeout=5, what="drops counted")
    except TimeoutError:
        return agent.scrape()


def test_drops_loads_with_the_expected_attach_mode(agent, attach_mode):
    s = agent.scrape()
    assert [(x.labels["program"], x.labels["attach"]) for x in s.all("netprobe_program_info")] == \
        [("drops", EXPECTED_ATTACH[attach_mode])]
    assert s.value("netprobe_program_errors_total") == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_syns_and_datagrams_to_closed_ports_are_no_socket_drops_of_the_receiver(lab, agent, family):
    """Each SYN to a closed port is answered by a RST (b's Tcp OutRsts) and each
    datagram counted in b's Udp(6) NoPorts; each of them is one NO_SOCKET drop
    of b, ingress, from a."""
    syns, datagrams = 6, 9
    no_ports = "UdpNoPorts" if family == "ip4" else "Udp6NoPorts"
    reason = kernel_name("SKB_DROP_REASON_NO_SOCKET")
    assert reason == "NO_SOCKET"
    labels = pod_labels("b", "a", reason=reason, direction="ingress")
    kernel_before, before = nstat(lab, "b"), agent.scrape()

    refused = lab.connect_refused("a", ip(lab, "b", family), 7101, syns)
    sent, _ = map(int, lab.pods["a"].run([sys.executable, "-c", _SEND_UDP, ip(lab, "b", family), 7102,
                                          datagrams, 100]).stdout.split())
    assert (refused, sent) == (syns, datagrams)

    after = wait_for_drops(agent, before, syns + datagrams, **labels)
    kernel_after = nstat(lab, "b")
    rsts = kernel_after["TcpOutRsts"] - kernel_before["TcpOutRsts"]
    udp = kernel_after[no_ports] - kernel_before[no_ports]
    assert (rsts, udp) == (syns, datagrams)
    assert_counted(agent, before, after, rsts + udp, **labels)
    # Nothing of it counted for the sender, nor as egress.
    assert drops_delta(agent, before, after, **pod_labels("a", reason=reason)) == 0
    assert drops_delta(agent, before, after, **pod_labels("b", direction="egress")) == 0


def add_drop_rule(lab, pod: str, hook: str, match: str) -> None:
    ruleset = ("table inet netprobe_drops {\n"
               f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n"
               f"    {match} counter drop\n"
               "  }\n}\n")
    proc = subprocess.run(["ip", "netns", "exec", lab.pods[pod].netns, "nft", "-f", "-"],
                          input=ruleset, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def rule_counter(lab, pod: str) -> int:
    out = json.loads(lab.pods[pod].run(["nft", "-j", "list", "table", "inet", "netprobe_drops"]).stdout)
    counters = [e["counter"]["packets"] for item in out["nftables"] if "rule" in item
                for e in item["rule"]["expr"] if "counter" in e]
    assert len(counters) == 1
    return counters[0]


def delete_drop_rule(lab, pod: str) -> None:
    lab.pods[pod].run(["nft", "delete", "table", "inet", "netprobe_drops"], check=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_nftables_input_drop_is_a_netfilter_drop_of_the_receiver_equal_to_the_rules_counter(lab, agent, family):
    n, port = 12, 7111
    reason = kernel_name("SKB_DROP_REASON_NETFILTER_DROP")
    labels = pod_labels("b", "a", reason=reason, direction="ingress")
    ipv = "ip" if family == "ip4" else "ip6"
    add_drop_rule(lab, "b", "input", f"{ipv} saddr {ip(lab, 'a', family)} udp dport {port}")
    try:
        before = agent.scrape()
        sent, _ = map(int, lab.pods["a"].run([sys.executable, "-c", _SEND_UDP, ip(lab, "b", family), port,
                                              n, 100]).stdout.split())
        assert sent == n
        after = wait_for_drops(agent, before, n, **labels)
        assert rule_counter(lab, "b") == n
    finally:
        delete_drop_rule(lab, "b")
    assert_counted(agent, before, after, n, **labels)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_nftables_output_drop_is_a_netfilter_drop_of_the_sender_egress(lab, agent, family):
    """A packet the pod made and never received (skb_iif 0) is counted for
    its source, as egress, with the destination as peer."""
    n, port = 8, 7121
    reason = kernel_name("SKB_DROP_REASON_NETFILTER_DROP")
    labels = pod_labels("a", "b", reason=reason, direction="egress")
    ipv = "ip" if family == "ip4" else "ip6"
    add_drop_rule(lab, "a", "output", f"{ipv} daddr {ip(lab, 'b', family)} udp dport {port}")
    try:
        before = agent.scrape()
        sent, refused = map(int, lab.pods["a"].run([sys.executable, "-c", _SEND_UDP, ip(lab, "b", family), port,
                                                    n, 100]).stdout.split())
        assert sent + refused == n
        after = wait_for_drops(agent, before, n, **labels)
        assert rule_counter(lab, "a") == n
    finally:
        delete_drop_rule(lab, "a")
    assert_counted(agent, before, after, n, **labels)
    assert drops_delta(agent, before, after, **pod_labels("b", reason=reason)) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_full_receive_buffer_is_a_socket_rcvbuff_drop_equal_to_rcvbuf_errors(lab, agent, family):
    n, size, port = 200, 1000, 7131
    errors = "UdpRcvbufErrors" if family == "ip4" else "Udp6RcvbufErrors"
    reason = kernel_name("SKB_DROP_REASON_SOCKET_RCVBUFF")
    labels = pod_labels("b", "a", reason=reason, direction="ingress")
    receiver = lab.pods["b"].popen([sys.executable, "-c", _NEVER_READS, ip(lab, "b", family), port],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        kernel_before, before = nstat(lab, "b"), agent.scrape()
        sent, _ = map(int, lab.pods["a"].run([sys.executable, "-c", _SEND_UDP, ip(lab, "b", family), port,
                                              n, size]).stdout.split())
        assert sent == n
        # Delivery through the veth may finish after sendto returned: read until
        # the kernel's count holds still around a scrape that agrees with it.
        def settled():
            kernel = nstat(lab, "b")[errors] - kernel_before[errors]
            s = agent.scrape()
            again = nstat(lab, "b")[errors] - kernel_before[errors]
            missed = s.value("netprobe_program_missed_runs_total", program="drops") - \
                before.value("netprobe_program_missed_runs_total", program="drops")
            return (kernel, s) if kernel == again and drops_delta(agent, before, s, **labels) + missed >= kernel \
                else None
        try:
            kernel, after = wait_until(settled, timeout=10, what="rcvbuf drops counted")
        except TimeoutError:
            kernel, after = nstat(lab, "b")[errors] - kernel_before[errors], agent.scrape()
    finally:
        receiver.stdin.write("\n")
        receiver.stdin.flush()
        receiver.wait(timeout=10)
    assert 0 < kernel < n, "a tiny buffer holds a few datagrams and drops the rest"
    assert_counted(agent, before, after, kernel, **labels)


def test_drops_without_addresses_of_a_pod_go_to_host(lab, agent):
    """Datagrams to a closed port of the host's own bridge address: no pod owns
    the receiver, so the drop is the host's (peer: the sending pod)."""
    reason = kernel_name("SKB_DROP_REASON_NO_SOCKET")
    labels = dict(namespace="host", pod="host", peer_namespace=NAMES["a"][0], peer_pod=NAMES["a"][1],
                  reason=reason, direction="ingress")
    before = agent.scrape()
    sent, _ = map(int, lab.pods["a"].run([sys.executable, "-c", _SEND_UDP, lab.host_ip4, 7141, 5, 10]).stdout.split())
    assert sent == 5
    after = wait_for_drops(agent, before, 5, **labels)
    assert_counted(agent, before, after, 5, **labels)


def test_every_drop_series_has_the_declared_labels(agent):
    s = agent.scrape()
    series = s.all("netprobe_drops_total")
    assert series
    for sample in series:
        assert set(sample.labels) == set(LABELS) | {"reason", "direction"}
        assert sample.labels["direction"] in ("ingress", "egress")
    assert s.value("netprobe_map_update_failures_total", program="drops") == 0
