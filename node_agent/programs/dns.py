"""dns: DNS queries, responses, timeouts and latency by client pod and server (bpf/dns.c).

Queries are counted at their first transmit on this node (net_dev_start_xmit,
skb_iif 0), responses at the first receive hop that matches a pending query
(netif_receive_skb); both as BTF-typed tracepoints (else raw, else plain
tracepoints), with a port check before
anything else (docs/agent.md, "dns"). A query with no response within
`timeout_ms` is a timeout, decided by the first of: the agent at scrape time
(expire_pending below), a retransmission, a late response.
"""
from __future__ import annotations

import logging
import platform
import struct
import time

from node_agent.runtime.spec import (BTF_FIRST, PODS, SKB_NETWORK_HEADER_OFFSETS, SLOT, Attach, Code, MapInfo, Metric,
                                     Option, ProgramSpec, Strategy, attach_option, btf_first_modes,
                                     max_entries_option)

log = logging.getLogger(__name__)

TRANSPORTS = {6: "tcp", 17: "udp"}
KINDS = {1: "query", 2: "response"}
# Common query types by name; any other shows as its number.
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 252: "AXFR", 255: "ANY", 257: "CAA"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
          7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}

QTYPE = Code("qtype", "qtype", QTYPES)
TRANSPORT = Code("transport", "transport", TRANSPORTS, define="TRANSPORT")
RCODE = Code("rcode", "rcode", RCODES)

# x86-64 without randomized memory layout (4-level paging): where the kernel
# maps all physical memory and its struct page array.
X86_64_PAGE_OFFSET = 0xFFFF888000000000
X86_64_VMEMMAP = 0xFFFFEA0000000000


X86_64_TEXT = 0xFFFFFFFF81000000     # _text of a kernel whose layout is not randomized


def _kallsyms(names: set[str]) -> dict[str, int]:
    found = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, _, name = line.split()[:3]
            if name in names:
                found[name] = int(addr, 16)
    return found


def kernel_layout() -> dict[str, int | str]:
    """Where the running kernel maps memory, to read TCP payload from a page
    fragment: page_offset_base and vmemmap_base read by the program at run
    time when kallsyms lists them (a randomized layout), x86-64's fixed
    addresses when the kernel is not randomized (_text at its link address).
    kallsyms shows addresses only to CAP_SYSLOG (or with kptr_restrict 0 and
    perf_event_paranoid <= 1); without them the layout is unknown and
    NP_NO_PAGE_FRAGS leaves payload in page fragments unread (docs/agent.md)."""
    from node_agent.kernel.btf import BTFError, kernel_btf
    btf = kernel_btf()
    out: dict[str, int | str] = {"NP_STRUCT_PAGE_SIZE": btf.sizeof("page")}
    # skb_frag_t: struct skb_frag {netmem, len, offset} since 6.12, struct bio_vec before
    for struct_name, members in (("skb_frag", ("netmem", "len", "offset")),
                                 ("bio_vec", ("bv_page", "bv_len", "bv_offset"))):
        try:
            out.update({f"OFF_FRAG_{what}": btf.offsetof(struct_name, member)
                        for what, member in zip(("PAGE", "LEN", "OFFSET"), members)})
            break
        except BTFError:
            continue
    syms = _kallsyms({"_text", "page_offset_base", "vmemmap_base"}) if platform.machine() == "x86_64" else {}
    if "OFF_FRAG_PAGE" not in out:
        syms = {}                      # no known fragment layout: as if the memory layout were unknown
    if syms.get("page_offset_base") and syms.get("vmemmap_base"):
        out["NP_PAGE_OFFSET_BASE_SYM"] = f"{syms['page_offset_base']:#x}ULL"
        out["NP_VMEMMAP_BASE_SYM"] = f"{syms['vmemmap_base']:#x}ULL"
    elif syms.get("_text") == X86_64_TEXT and "page_offset_base" not in syms:
        out["NP_PAGE_OFFSET"] = f"{X86_64_PAGE_OFFSET:#x}ULL"
        out["NP_VMEMMAP"] = f"{X86_64_VMEMMAP:#x}ULL"
    else:
        why = (f"architecture {platform.machine()}" if platform.machine() != "x86_64" else
               "no skb_frag or bio_vec in BTF" if "OFF_FRAG_PAGE" not in out else
               "kallsyms hides addresses (needs CAP_SYSLOG)" if not syms.get("_text") else
               "randomized layout without page_offset_base in kallsyms")
        log.warning("TCP DNS payload in page fragments will not be read",
                    extra={"kv": {"program": "dns", "reason": why}})
        out.update({"NP_NO_PAGE_FRAGS": 1, "OFF_FRAG_PAGE": 0, "OFF_FRAG_LEN": 0, "OFF_FRAG_OFFSET": 0})
    return out


def qname_label(wire: bytes) -> str:
    """A question name as kept by the program (wire format) -> its label:
    lowercased, labels joined by dots, no trailing dot, the root as ".".
    Bytes other than printable ASCII, and dots or backslashes inside a
    label, are written as \\DDD (decimal), as in zone files (RFC 1035 5.1)."""
    labels, at = [], 0
    while at < len(wire) and wire[at] and len(labels) < 128:
        n = wire[at]
        part = wire[at + 1:at + 1 + n]
        labels.append("".join(chr(c).lower() if 0x21 <= c <= 0x7e and c not in (0x2e, 0x5c) else f"\\{c:03d}"
                              for c in part))
        at += 1 + n
    return ".".join(labels) or "."


class QueryNames(dict):
    """Query-name hash (the key field qname) -> label; 0 is every name past
    the cap. A hash not known yet is read from the running instance's qnames
    map when a key first carries it (the labeler's get), so a name the kernel
    kept after the scrape began is labelled in that same scrape. An agent
    runs one dns instance at a time; a new instance starts a new table."""

    def __init__(self):
        super().__init__({0: "other"})
        self.inst = None

    def use(self, inst) -> None:
        if inst is not self.inst:
            self.clear()
            self[0] = "other"
            self.inst = inst

    def get(self, key, default=None):
        if key in self:
            return self[key]
        if self.inst is None or not self.inst.options["query_names"]:
            return default
        qnames = self.inst.table("qnames")
        try:
            text = qnames[qnames.Key(key)].bytes
        except KeyError:
            return default
        self[key] = qname_label(bytes(text))
        return self[key]


_query_names = QueryNames()
QNAME = Code("qname", "qname", lambda: _query_names)


def before_scrape(inst) -> None:
    expire_pending(inst)
    _query_names.use(inst)


def expire_pending(inst) -> None:
    """At scrape: pending queries older than timeout_ms are timeouts. An entry
    is counted by whoever deletes it (here, or the kernel on a retransmission
    or late response), so nothing counts twice. The agent writes its timeouts
    under keys with pad = 1, which the kernel never writes (it uses 0): the
    per-CPU value is never written by both."""
    timeout_ns = inst.options["timeout_ms"] * 1_000_000
    pending = inst.table("pending")
    now = time.monotonic_ns()          # CLOCK_MONOTONIC, as bpf_ktime_get_ns
    try:
        entries = list(pending.items_lookup_batch())
    except Exception:                  # kernels or map types without batch lookup
        entries = pending.items()
    expired = [(bytes(k), v.started_ns, v.qtype, v.qname) for k, v in entries if now - v.started_ns > timeout_ns]
    counts: dict[tuple[str, bytes], int] = {}
    names = inst.options["query_names"] > 0
    for raw, started_ns, qtype, qname in expired:
        key = pending.Key.from_buffer_copy(raw)
        try:
            if pending[key].started_ns != started_ns:
                continue               # the kernel replaced it meanwhile (a new query with this id)
            del pending[key]
        except KeyError:               # answered or expired by the kernel meanwhile
            continue
        # pending_key: pair (32 bytes), client_port, server_port, id, transport, pad;
        # name_query_key: pair, qname, qtype, pad (1: the agent's), pad1, pad2
        transport = raw[38]
        tkey = ("timeouts", raw[:32] + struct.pack("<HBB", qtype, transport, 1))
        counts[tkey] = counts.get(tkey, 0) + 1
        if names:   # name_query_key: pair, qtype, qname, pad (1: the agent's), pad2
            nkey = ("name_timeouts", raw[:32] + struct.pack("<QHBBI", qname, qtype, 1, 0, 0))
            counts[nkey] = counts.get(nkey, 0) + 1
    for (map_name, raw), n in counts.items():
        table = inst.table(map_name)
        key = table.Key.from_buffer_copy(raw)
        try:
            current = sum(table.getvalue(key))
        except KeyError:
            current = 0
        leaf = table.Leaf()             # one value per CPU: the total on the first
        leaf[0] = current + n
        try:
            table[key] = leaf
        except Exception as e:
            log.warning("timeouts not recorded", extra={"kv": {"program": "dns", "map": map_name, "count": n,
                                                               "error": str(e)}})


SPEC = ProgramSpec(
    name="dns",
    source="dns.c",
    summary="DNS queries, responses by rcode, timeouts and latency, by client pod and server, over UDP and TCP",
    options=(
        attach_option("net_dev_start_xmit and netif_receive_skb (the same counts every way)", BTF_FIRST),
        max_entries_option(8192),
        Option("pending_entries", int, 16384,
               "queries awaiting a response that can be tracked at once (64 bytes each); a query that finds "
               "the table full is counted (netprobe_map_update_failures_total{map=\"pending\"}) and never "
               "gets a response or timeout",
               min=64, max=1 << 20, define="NP_PENDING_ENTRIES"),
        Option("timeout_ms", int, 5000,
               "a query with no response within this time is a timeout (glibc's default wait is 5 s)",
               min=10, max=120000, define="NP_TIMEOUT_NS", to_c=lambda ms: f"{ms * 1000000}ULL"),
        Option("query_names", int, 0,
               "0: no query names. N > 0: the netprobe_dns_name_* families count queries, responses and "
               "timeouts by question name (label qname, lowercased) for the first N distinct names this node "
               "sees, every later name as qname=\"other\" (docs/agent.md, \"Query names\")",
               min=0, max=4096, define="NP_QUERY_NAMES"),
    ),
    strategies=(
        Strategy("tp_btf", (
            Attach("tp_btf", "net:net_dev_start_xmit", "np_btf_dns_xmit"),
            Attach("tp_btf", "net:netif_receive_skb", "np_btf_dns_receive"),
        ), defines=("NP_ATTACH_TP_BTF",)),
        Strategy("raw_tracepoint", (
            Attach("raw_tracepoint", "net:net_dev_start_xmit", "np_dns_xmit"),
            Attach("raw_tracepoint", "net:netif_receive_skb", "np_dns_receive"),
        )),
        Strategy("tracepoint", (
            Attach("tracepoint", "net:net_dev_start_xmit", "np_dns_xmit_tp"),
            Attach("tracepoint", "net:netif_receive_skb", "np_dns_receive_tp"),
        ), defines=("NP_ATTACH_TRACEPOINT",)),
    ),
    choose_strategies=btf_first_modes,
    metrics=(
        Metric("netprobe_dns_queries_total", "counter",
               "DNS queries sent by this pod, by server, query type and transport (a retransmission of a "
               "pending query with the same id is not a new query).",
               map="queries", key=(PODS, QTYPE, TRANSPORT)),
        Metric("netprobe_dns_responses_total", "counter",
               "First responses to this pod's DNS queries within the timeout, by server, query type, "
               "transport and rcode.",
               map="responses", key=(PODS, QTYPE, TRANSPORT, RCODE)),
        Metric("netprobe_dns_timeouts_total", "counter",
               "DNS queries of this pod with no response within the timeout, by server, query type and transport.",
               map="timeouts", key=(PODS, QTYPE, TRANSPORT)),
        Metric("netprobe_dns_retransmits_total", "counter",
               "DNS queries this pod sent again with the same id while the first was pending.",
               map="retransmits", key=(PODS, QTYPE, TRANSPORT)),
        Metric("netprobe_dns_latency_seconds", "histogram",
               "Time from a DNS query's first transmission to its first response, by server, rcode and transport.",
               map="latency_us", key=(PODS, RCODE, TRANSPORT, SLOT), unit_seconds=1e-6, bucket_slots=(4, 24)),
        Metric("netprobe_dns_name_queries_total", "counter",
               "With query_names: DNS queries sent by this pod, by server, question name and query type "
               "(names past the per-node cap as qname=\"other\").",
               map="name_queries", key=(PODS, QTYPE, QNAME)),
        Metric("netprobe_dns_name_responses_total", "counter",
               "With query_names: first responses to this pod's DNS queries within the timeout, by server, "
               "question name, query type and rcode.",
               map="name_responses", key=(PODS, QTYPE, QNAME, RCODE)),
        Metric("netprobe_dns_name_timeouts_total", "counter",
               "With query_names: DNS queries of this pod with no response within the timeout, by server, "
               "question name and query type.",
               map="name_timeouts", key=(PODS, QTYPE, QNAME)),
        Metric("netprobe_dns_malformed_total", "counter",
               "Packets to or from port 53 that are not a DNS message this program can read (shorter than "
               "the header, no question, a name longer than 255 bytes or past the message), by kind.",
               map="malformed", key=(PODS, Code("kind", "kind", KINDS, define="KIND"), TRANSPORT)),
    ),
    maps=(MapInfo("queries"), MapInfo("responses"), MapInfo("timeouts"), MapInfo("retransmits"),
          MapInfo("latency_us"), MapInfo("malformed"),
          MapInfo("pending", max_entries_option="pending_entries", lru=False),
          MapInfo("name_queries"), MapInfo("name_responses"), MapInfo("name_timeouts")),
    map_errors=("queries", "responses", "timeouts", "retransmits", "latency_us", "malformed", "pending",
                "name_queries", "name_responses", "name_timeouts"),
    # DNS packets whose payload could not be read (a page fragment without the
    # kernel's memory layout, a failed read): neither counted nor malformed
    discards=("unreadable",),
    btf_offsets={
        **SKB_NETWORK_HEADER_OFFSETS,
        "OFF_SKB_IIF": ("sk_buff", "skb_iif"),
        "OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
        "OFF_SKB_DATA": ("sk_buff", "data"),
        "OFF_SKB_LEN": ("sk_buff", "len"),
        "OFF_SKB_DATA_LEN": ("sk_buff", "data_len"),
        "OFF_SKB_END": ("sk_buff", "end"),
        "OFF_SHINFO_FRAGS": ("skb_shared_info", "frags"),
    },
    kernel_constants=kernel_layout,
    before_scrape=before_scrape,
)
