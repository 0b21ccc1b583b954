/* dns: DNS queries, responses, timeouts and latency, by the client (local)
 * and the server (peer), over UDP and TCP, IPv4 and IPv6.
 *
 * Hooks (docs/agent.md, "dns"): BTF-typed tracepoints (else raw, else plain
 * tracepoints) on every packet, with the cheapest possible refusal of
 * non-DNS packets first.
 *  - net_dev_start_xmit: a query is counted at the first transmit of a
 *    packet this node made (skb_iif == 0, as in tcp_retransmit.c: a packet
 *    that crossed a veth was received by its peer, which set skb_iif, so the
 *    bridge port and the second veth of the same query are skipped). Only
 *    destination port 53 counts as a query; a UDP packet from port 53 is
 *    only checked here for being malformed (counted once, at its sender).
 *  - netif_receive_skb: a response (source port 53) is matched against the
 *    pending queries by (client, server, ports, transport, id). The first hop
 *    that matches deletes the pending entry; later hops of the same response
 *    find none and are ignored, so a response is counted once. (Behind a
 *    service NAT the first hops carry the backend's address and match
 *    nothing; the hop into the client's namespace, de-NATed, matches.)
 *
 * Pending queries live in a plain hash of NP_PENDING_ENTRIES (not LRU: a
 * full table refuses new queries and counts them in
 * np_map_errors[ERR_PENDING], instead of silently evicting old ones).
 * A query with no response within NP_TIMEOUT_NS is a timeout. It is decided
 * by whichever comes first: the agent at scrape time (it walks the table,
 * node_agent/programs/dns.py), a retransmission of the same query, or a
 * late response. Whoever deletes the pending entry counts it, so nothing is
 * counted twice.
 *
 * A retransmission (same id and 5-tuple while the query is pending, RFC
 * 1035 4.2.1: a resolver resends the same query) is not a new query: it is
 * counted in retransmits, and the latency is measured from the first
 * transmission (what the application waits).
 *
 * Parsing is bounded: the DNS header and the question are read in one copy
 * of at most DNS_READ bytes; the question name is walked label by label, at
 * most DNS_MAX_LABELS labels (a name longer than 255 bytes, a label past the
 * end of the message or of the copy are malformed). A compression pointer
 * ends the name (its 2 bytes, never followed), so a pointer loop costs
 * nothing. qdcount 0, a message shorter than the header, a response bit on
 * a query or a name that does not fit are counted as malformed. A payload
 * the program cannot reach is counted as unreadable (a discard), not malformed.
 *
 * Query names (NP_QUERY_NAMES > 0, the `query_names` option): the question
 * name, lowercased, is hashed (FNV-1a 64 over at most 256 bytes) and kept
 * with its bytes in qname_ids, a plain hash of NP_QUERY_NAMES entries, by
 * the first query that carries it: the map's size is the per-node cap, and
 * an insert into the full map fails, so the first NP_QUERY_NAMES distinct
 * names are kept and every later one counts as hash 0 (`other`). The name_*
 * maps count by the hash: the per-name families, beside the unnamed ones.
 *
 * TCP: the segment's payload must start with a message (2-byte length,
 * then the header); only the first message of a segment is read. Payload in
 * page fragments (what TCP sends) is read from the first fragment's page.
 */
#include "netprobe.h"

#if !defined(OFF_SKB_IIF) || !defined(OFF_SKB_HEAD) || !defined(OFF_SKB_DATA) || \
    !defined(OFF_SKB_NETWORK_HEADER) || !defined(OFF_SKB_PROTOCOL) || !defined(OFF_SKB_LEN) || \
    !defined(OFF_SKB_DATA_LEN) || !defined(OFF_SKB_END) || !defined(OFF_SHINFO_FRAGS) || \
    !defined(OFF_FRAG_PAGE) || !defined(OFF_FRAG_OFFSET) || !defined(OFF_FRAG_LEN) || !defined(NP_STRUCT_PAGE_SIZE)
#error "the agent passes sk_buff member offsets from BTF and the kernel's memory layout"
#endif

/* Where the kernel maps physical memory and its struct page array: fixed
 * (NP_PAGE_OFFSET, NP_VMEMMAP) or, on a randomized layout, read at run time
 * from the variables at these kallsyms addresses. */
#if defined(NP_NO_PAGE_FRAGS)
#define NP_PAGE_OFFSET 0ULL
#define NP_VMEMMAP 0ULL
#elif defined(NP_PAGE_OFFSET_BASE_SYM)
static __always_inline u64 np_kernel_u64(u64 addr)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const void *)addr);
    return v;
}
#define NP_PAGE_OFFSET np_kernel_u64(NP_PAGE_OFFSET_BASE_SYM)
#define NP_VMEMMAP np_kernel_u64(NP_VMEMMAP_BASE_SYM)
#endif

#define NP_ETH_P_IP 0x0800
#define NP_ETH_P_IPV6 0x86DD
#define NP_IPPROTO_UDP 17
#define NP_IPPROTO_FRAGMENT 44
#define DNS_PORT 53
#define DNS_HEADER 12
#define DNS_MAX_NAME 255
#define DNS_MAX_LABELS 128          /* 255 bytes hold at most 127 labels and the root */
#define DNS_READ (2 + DNS_HEADER + DNS_MAX_NAME + 4 + 8)   /* TCP length, header, name, qtype/qclass, slack */

#define DNS_NAME_BYTES 256          /* what qnames keeps of a name: all of it (255 + the end) */

/* ERR_* (np_map_errors slots), TRANSPORT_*, KIND_* come from node_agent/programs/dns.py. */

struct query_key {
    struct np_addr_pair pair;   /* local = the client, remote = the server */
    u16 qtype;
    u8 transport;               /* IP protocol: TRANSPORT_UDP, TRANSPORT_TCP */
    u8 pad;                     /* timeouts: 0 written here, 1 by the agent's sweep (never the same key) */
};

struct response_key {
    struct np_addr_pair pair;
    u16 qtype;
    u8 transport;
    u8 rcode;
};

struct latency_key {
    struct np_addr_pair pair;
    u8 rcode;
    u8 transport;
    u16 pad;
    u32 slot;                   /* log2 of the latency in microseconds */
};

struct malformed_key {
    struct np_addr_pair pair;   /* local = this node's side of the packet */
    u8 kind;                    /* KIND_QUERY, KIND_RESPONSE */
    u8 transport;
    u16 pad;
};

struct pending_key {
    struct np_addr_pair pair;   /* client, server */
    u16 client_port;
    u16 server_port;
    u16 id;
    u8 transport;
    u8 pad;
};

struct pending_value {
    u64 started_ns;
    u64 qname;                  /* the name's hash in qname_ids (0: other, or names off) */
    u16 qtype;
    u16 pad1;
    u32 pad2;
};

/* The per-name families: the query's name index instead of the transport. */
struct name_query_key {
    struct np_addr_pair pair;
    u64 qname;
    u16 qtype;
    u8 pad;                     /* timeouts: 0 written here, 1 by the agent's sweep */
    u8 pad1;
    u32 pad2;
};

struct name_response_key {
    struct np_addr_pair pair;
    u64 qname;
    u16 qtype;
    u8 rcode;
    u8 pad1;
    u32 pad2;
};

struct qname_text {
    u8 bytes[DNS_NAME_BYTES];   /* the name as first sent (wire format: length-prefixed labels) */
};

BPF_TABLE("lru_percpu_hash", struct query_key, u64, queries, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct query_key, u64, retransmits, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct query_key, u64, timeouts, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct response_key, u64, responses, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct latency_key, struct np_hist_value, latency_us, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct malformed_key, u64, malformed, NP_MAX_ENTRIES);
BPF_TABLE("hash", struct pending_key, struct pending_value, pending, NP_PENDING_ENTRIES);

#if NP_QUERY_NAMES
BPF_TABLE("lru_percpu_hash", struct name_query_key, u64, name_queries, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct name_query_key, u64, name_timeouts, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct name_response_key, u64, name_responses, NP_MAX_ENTRIES);
BPF_TABLE("hash", u64, struct qname_text, qnames, NP_QUERY_NAMES);  /* the cap: a full map refuses new names */
BPF_ARRAY(qnames_full, u32, 1);     /* 1 once an insert found qnames full: later names skip the attempt */
#else
/* names off: the families exist, empty; nothing allocated until written (never) */
BPF_F_TABLE("percpu_hash", struct name_query_key, u64, name_queries, NP_MAX_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", struct name_query_key, u64, name_timeouts, NP_MAX_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", struct name_response_key, u64, name_responses, NP_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#endif

/* Scratch for the copy of a message's start (too big for the stack). */
struct scratch_buf {
    u8 bytes[1024];             /* DNS_READ used; the rest lets a masked index (& 0x1ff) pass the verifier;
                                 * 512..767: a query name on its way into qnames; 800: the name walk's state */
};
BPF_PERCPU_ARRAY(scratch, struct scratch_buf, 1);

/* The sk_buff members both hooks read, in one window (64 bytes on 6.18). */
struct skb_fields {
    int input_ifindex;
    u16 protocol;               /* ethertype, host order */
    u16 network_header;
    u32 len, data_len, end;
    const u8 *head, *data;
};

#define SKB_LO NP_MIN(NP_MIN(OFF_SKB_IIF, OFF_SKB_PROTOCOL), NP_MIN(NP_MIN(OFF_SKB_NETWORK_HEADER, OFF_SKB_LEN), \
               NP_MIN(NP_MIN(OFF_SKB_DATA_LEN, OFF_SKB_END), NP_MIN(OFF_SKB_HEAD, OFF_SKB_DATA))))
#define SKB_HI NP_MAX(NP_MAX(OFF_SKB_IIF + 4, OFF_SKB_PROTOCOL + 2), NP_MAX(NP_MAX(OFF_SKB_NETWORK_HEADER + 2, \
               OFF_SKB_LEN + 4), NP_MAX(NP_MAX(OFF_SKB_DATA_LEN + 4, OFF_SKB_END + 4), \
               NP_MAX(OFF_SKB_HEAD + 8, OFF_SKB_DATA + 8))))

#ifdef NP_ATTACH_TP_BTF
/* BTF-typed tracepoints: the same members as plain loads, no helper call. */
static __always_inline int skb_fields_of(const u8 *skb, struct skb_fields *f)
{
    f->input_ifindex = NP_LOAD(int, skb, OFF_SKB_IIF);
    f->protocol = __builtin_bswap16(NP_LOAD(u16, skb, OFF_SKB_PROTOCOL));
    f->network_header = NP_LOAD(u16, skb, OFF_SKB_NETWORK_HEADER);
    f->len = NP_LOAD(u32, skb, OFF_SKB_LEN);
    f->data_len = NP_LOAD(u32, skb, OFF_SKB_DATA_LEN);
    f->end = NP_LOAD(u32, skb, OFF_SKB_END);
    f->head = NP_LOAD_PTR(skb, OFF_SKB_HEAD);
    f->data = NP_LOAD_PTR(skb, OFF_SKB_DATA);
    return f->head != 0;
}
#else
static __always_inline int skb_fields_of(const u8 *skb, struct skb_fields *f)
{
    u16 protocol_be = 0;
#if SKB_HI - SKB_LO <= NP_WINDOW_MAX
    u8 win[SKB_HI - SKB_LO];
    if (bpf_probe_read_kernel(win, sizeof(win), skb + SKB_LO))
        return 0;
#define NP_GET(dst, off) __builtin_memcpy(&(dst), win + (off) - SKB_LO, sizeof(dst))
#else
#define NP_GET(dst, off) bpf_probe_read_kernel(&(dst), sizeof(dst), skb + (off))
#endif
    NP_GET(f->input_ifindex, OFF_SKB_IIF);
    NP_GET(protocol_be, OFF_SKB_PROTOCOL);
    NP_GET(f->network_header, OFF_SKB_NETWORK_HEADER);
    NP_GET(f->len, OFF_SKB_LEN);
    NP_GET(f->data_len, OFF_SKB_DATA_LEN);
    NP_GET(f->end, OFF_SKB_END);
    NP_GET(f->head, OFF_SKB_HEAD);
    NP_GET(f->data, OFF_SKB_DATA);
#undef NP_GET
    f->protocol = __builtin_bswap16(protocol_be);
    return f->head != 0;
}
#endif

/* A DNS packet's addresses, ports and where its payload starts. */
struct dns_packet {
    u8 src[16], dst[16];
    u16 sport, dport;
    u8 transport;
    u32 payload;                /* offset of the L4 payload from the network header */
    u32 payload_len;
};

#ifdef NP_BTF_BYTES
/* The port check with loads (netprobe.h), before dns_headers' helper read: 0
 * if the packet at ip is surely not DNS (not UDP or TCP, or neither port
 * what dns_headers wants), 1 if it may be, including what constant offsets
 * cannot tell (IPv4 options, IPv6 fragments): dns_headers decides those. Only
 * a few bytes, and only for the early return: with the whole 60 bytes in
 * registers the verifier followed the parser's branches on every byte and
 * gave up at its instruction limit. */
static __always_inline int dns_port_may_match(const u8 *ip, int want_dport)
{
    const u8 *b = np_btf_bytes(ip);
    u8 first = NP_LOAD(u8, b, 0), transport;
    u32 ports;
    if (first == 0x45) {                    /* IPv4 without options */
        transport = NP_LOAD(u8, b, 9);
        ports = NP_LOAD(u32, b, 20);
    } else if ((first >> 4) == 4) {
        return 1;
    } else if ((first >> 4) == 6) {
        transport = NP_LOAD(u8, b, 6);
        if (transport == NP_IPPROTO_FRAGMENT)
            return 1;
        ports = NP_LOAD(u32, b, 40);
    } else {
        return 0;
    }
    if (transport != NP_IPPROTO_UDP && transport != NP_IPPROTO_TCP)
        return 0;
    u16 sport = __builtin_bswap16(ports & 0xffff), dport = __builtin_bswap16(ports >> 16);
    return sport == DNS_PORT || (want_dport && dport == DNS_PORT);
}
#endif

/* The IP and L4 headers at ip (one read of 60 bytes: IPv6 + TCP's data
 * offset, IPv4 + TCP); 1 if UDP or TCP to or from port 53 (with
 * want_dport; else only from port 53). Non-DNS packets return here: this is
 * the port check every packet pays (on tp_btf with 6.2+, dns_port_may_match
 * first). */
static __always_inline int dns_headers(const u8 *ip, int want_dport, struct dns_packet *p)
{
    u32 hdr[15];
    u8 *b = (u8 *)hdr;
    if (!ip)
        return 0;
#ifdef NP_BTF_BYTES
    if (!dns_port_may_match(ip, want_dport))
        return 0;
#endif
    if (bpf_probe_read_kernel(hdr, sizeof(hdr), ip))
        return 0;
    u8 version = b[0] >> 4;
    u32 l4, ip_len;
    /* both protocol bytes loaded before the branch (see np_ip_addresses) */
    u8 protocol4 = ((volatile u8 *)b)[9], protocol6 = ((volatile u8 *)b)[6];
    if (version == 4) {
        if ((b[6] & 0x1f) | b[7])           /* a later fragment: no L4 header */
            return 0;
        l4 = (b[0] & 0xf) * 4;
        ip_len = (b[2] << 8) | b[3];
        p->transport = protocol4;
    } else if (version == 6) {
        l4 = 40;
        ip_len = 40 + ((b[4] << 8) | b[5]);
        p->transport = protocol6;
    } else {
        return 0;
    }
    if (version == 6 && p->transport == NP_IPPROTO_FRAGMENT) {
        /* a fragmented datagram (an EDNS0 response beyond the MTU): the
         * first fragment holds the UDP header; later ones are skipped */
        if ((b[42] << 8 | b[43]) & 0xfff8)
            return 0;
        p->transport = b[40];
        l4 = 48;
    }
    if (p->transport != NP_IPPROTO_UDP && p->transport != NP_IPPROTO_TCP)
        return 0;                           /* other IPv6 extension headers: not seen (docs) */
    u16 ports[4];                           /* UDP: ports, length, checksum */
    if (l4 == 20 || l4 == 40 || l4 == 48) {
        __builtin_memcpy(ports, b + (l4 == 20 ? 20 : l4 == 40 ? 40 : 48), 8);
    } else if (bpf_probe_read_kernel(ports, 8, ip + l4)) {
        return 0;
    }
    u16 sport = __builtin_bswap16(ports[0]), dport = __builtin_bswap16(ports[1]);
    if (want_dport ? dport != DNS_PORT && sport != DNS_PORT : sport != DNS_PORT)
        return 0;
    /* a DNS packet from here on: the rest is paid by DNS only */
    p->sport = sport;
    p->dport = dport;
    if (version == 4) {
        np_addr_from_v4_words(p->src, hdr + 3);
        np_addr_from_v4_words(p->dst, hdr + 4);
    } else {
        np_addr_copy_words(p->src, hdr + 2);
        np_addr_copy_words(p->dst, hdr + 6);
    }
    u32 l4_len = 8;
    if (p->transport == NP_IPPROTO_TCP) {
        u8 doff = 0;
        if (bpf_probe_read_kernel(&doff, 1, ip + l4 + 12))
            return 0;
        l4_len = (doff >> 4) * 4;
    }
    p->payload = l4 + l4_len;
    p->payload_len = ip_len > p->payload ? ip_len - p->payload : 0;
    if (p->transport == NP_IPPROTO_UDP) {   /* the datagram's length, also when fragmented */
        u16 udp_len = __builtin_bswap16(ports[2]);
        p->payload_len = udp_len > 8 ? udp_len - 8 : 0;
    }
    return 1;
}

/* v & 0x1ff, done where written: clang would drop a mask it can prove
 * redundant, but the verifier may not know the bound it proved from. */
static __always_inline u32 np_index(u32 v)
{
    asm volatile("%0 &= 0x1ff" : "+r"(v));
    return v;
}

/* Copy up to DNS_READ bytes of the payload into buf: from the linear part
 * when it holds the payload's start, else from the first page fragment
 * (TCP puts its payload there). Returns the bytes copied, 0 if none. */
static __always_inline u32 copy_payload(const struct skb_fields *f, const struct dns_packet *p, u8 *buf)
{
    u32 want = p->payload_len < DNS_READ ? p->payload_len : DNS_READ;
    if (want == 0)
        return 0;
    const u8 *start = f->head + f->network_header + p->payload;
    u32 linear = f->len - f->data_len;                  /* bytes from data */
    s64 from_data = (s64)(start - f->data);
    const u8 *src;
    if (from_data >= 0 && from_data < (s64)linear) {
        src = start;
    } else {
#ifdef NP_NO_PAGE_FRAGS
        return 0;                                       /* the kernel's memory layout is unknown */
#endif
        /* skb_shinfo(skb)->frags[0]: its page's address in the direct map */
        u8 frag[16];
        const u8 *shinfo = f->head + f->end;
        if (bpf_probe_read_kernel(frag, sizeof(frag), shinfo + OFF_SHINFO_FRAGS))
            return 0;
        u64 page = 0;
        u32 offset = 0, frag_len = 0;
        __builtin_memcpy(&page, frag + OFF_FRAG_PAGE, 8);
        __builtin_memcpy(&offset, frag + OFF_FRAG_OFFSET, 4);
        __builtin_memcpy(&frag_len, frag + OFF_FRAG_LEN, 4);
        if (from_data - (s64)linear >= (s64)frag_len)
            return 0;                                   /* the payload starts in a later fragment */
        u64 vmemmap = NP_VMEMMAP;
        if (!page || (page & 1) || page < vmemmap)      /* bit 0: not a page (net_iov) */
            return 0;
        u64 pfn = (page - vmemmap) / NP_STRUCT_PAGE_SIZE;
        src = (const u8 *)(NP_PAGE_OFFSET + (pfn << 12) + offset + (from_data - (s64)linear));
    }
    if (want < DNS_READ) {
        /* the copy's length must be a constant or bounded: read the whole window
         * (past the message's end: bytes that are ignored), fall back to the exact length */
        if (bpf_probe_read_kernel(buf, DNS_READ, src) == 0)
            return want;
        want = np_index(want);                          /* < DNS_READ already; for the verifier */
        return bpf_probe_read_kernel(buf, want, src) == 0 ? want : 0;
    }
    return bpf_probe_read_kernel(buf, DNS_READ, src) == 0 ? DNS_READ : 0;
}

struct dns_message {
    u16 id;
    u16 flags;
    u16 qtype;
    u8 malformed;
    u8 pointer;                 /* the question name ends in a compression pointer */
    u64 qname;                  /* with NP_QUERY_NAMES: the name's hash (never 0) */
};

/* The message in buf (len bytes copied, msg_len the message's own length):
 * header fields; for a query also the question's qtype (bounded label walk). */
static __always_inline int parse_message(u8 *buf, u32 len, u32 msg_len, int want_qtype, struct dns_message *m)
{
    if (msg_len < DNS_HEADER || len < DNS_HEADER) {
        m->malformed = 1;
        return 0;
    }
    m->id = (buf[0] << 8) | buf[1];
    m->flags = (buf[2] << 8) | buf[3];
    if (!want_qtype)
        return 1;
    u16 qdcount = (buf[4] << 8) | buf[5];
    if (qdcount == 0 || (m->flags & 0x8000)) {          /* no question, or a response bit on a query */
        m->malformed = 1;
        return 0;
    }
    u32 off = DNS_HEADER;
    u32 end = msg_len < len ? msg_len : len;
    int done = 0;
#if NP_QUERY_NAMES
    /* byte by byte, hashing the name as it goes (one loop: a label walk and a
     * hash loop after it are too many states for the verifier) */
    /* where the next length byte is: kept in the scratch (a map value), whose
     * reads the verifier knows nothing about, so the states of all iterations
     * look alike and are pruned (a tracked range differs with each label) */
    u32 *next = (u32 *)(buf + 800);
    *next = DNS_HEADER;
    u64 h = 0xcbf29ce484222325ULL;                      /* FNV-1a 64 of the lowercased name */
#pragma clang loop unroll(disable)
    for (u32 at = DNS_HEADER; at <= DNS_HEADER + DNS_MAX_NAME && !done; at++) {
        if (at >= end) {
            m->malformed = 1;
            return 0;
        }
        u8 c = buf[np_index(at)];
        if (at == *next) {
            if (c == 0) {
                off = at + 1;
                done = 1;
            } else if ((c & 0xc0) == 0xc0) {            /* compression pointer: ends the name */
                off = at + 2;
                done = 1;
                m->pointer = 1;
            } else if (c & 0xc0) {                      /* reserved label types */
                m->malformed = 1;
                return 0;
            } else {
                *next = at + c + 1;
            }
        } else if (c >= 'A' && c <= 'Z') {              /* names are case-insensitive (RFC 4343) */
            c |= 0x20;
        }
        h = (h ^ c) * 0x100000001b3ULL;
    }
    m->qname = h | !h;                                  /* 0 is other */
#else
#pragma clang loop unroll(disable)
    for (int i = 0; i < DNS_MAX_LABELS && !done; i++) {
        if (off >= end || off > DNS_HEADER + DNS_MAX_NAME) {
            m->malformed = 1;
            return 0;
        }
        u8 label = buf[np_index(off)];
        if (label == 0) {
            off += 1;
            done = 1;
        } else if ((label & 0xc0) == 0xc0) {            /* compression pointer: ends the name */
            off += 2;
            done = 1;
            m->pointer = 1;
        } else if (label & 0xc0) {                      /* reserved label types */
            m->malformed = 1;
            return 0;
        } else {
            off += label + 1;
        }
    }
#endif
    if (!done || off + 4 > end || off + 2 > DNS_READ) {
        m->malformed = 1;
        return 0;
    }
    off = np_index(off);
    m->qtype = (buf[off] << 8) | buf[off + 1];
    return 1;
}

static __always_inline void count_malformed(const u8 *local, const u8 *remote, u8 kind, u8 transport)
{
    struct malformed_key key = {.kind = kind, .transport = transport};
    __builtin_memcpy(key.pair.local, local, 16);
    __builtin_memcpy(key.pair.remote, remote, 16);
    u64 zero = 0, *count = malformed.lookup_or_try_init(&key, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_MALFORMED);
}

static __always_inline void count_timeout(const struct pending_key *pk, u16 qtype, u64 qname)
{
    struct query_key key = {.pair = pk->pair, .qtype = qtype, .transport = pk->transport};
    u64 zero = 0, *count = timeouts.lookup_or_try_init(&key, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_TIMEOUTS);
#if NP_QUERY_NAMES
    struct name_query_key nk = {.pair = pk->pair, .qtype = qtype, .qname = qname};
    count = name_timeouts.lookup_or_try_init(&nk, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_NAME_TIMEOUTS);
#endif
}

#if NP_QUERY_NAMES
#define NP_EEXIST 17
/* The question name's hash (the qname of the name_* keys): kept in qnames
 * with the name's bytes by the first query that carries it, while qnames
 * has room; 0 (other) for a name that finds it full, and for a name ending
 * in a compression pointer (whose rest this program does not follow). */
static __always_inline u64 qname_of(const u8 *msg, const struct dns_message *m)
{
    if (m->pointer)
        return 0;
    u64 h = m->qname;
    if (qnames.lookup(&h))
        return h;
    u32 zero = 0, *full = qnames_full.lookup(&zero);
    u8 *buf = (u8 *)scratch.lookup(&zero);
    if (!full || *full || !buf)
        return 0;
    /* the value from the scratch's unused half (too big for the stack); the
     * kernel copies it in with the key, so a reader never sees half a name */
    u8 *text = buf + 512;
    bpf_probe_read_kernel(text, DNS_NAME_BYTES, msg + DNS_HEADER);
    long err = qnames.insert(&h, (struct qname_text *)text);
    if (err == 0 || err == -NP_EEXIST)                  /* EEXIST: another CPU kept it first */
        return h;
    *full = 1;                                          /* E2BIG: the cap is reached */
    return 0;
}
#endif

/* The message of a DNS packet: copied and parsed; for TCP after its length. */
static __always_inline int read_message(const struct skb_fields *f, const struct dns_packet *p, int query,
                                        struct dns_message *m, const u8 **msg)
{
    u32 zero = 0;
    u8 *buf = (u8 *)scratch.lookup(&zero);
    if (!buf)
        return 0;
    *msg = p->transport == NP_IPPROTO_TCP ? buf + 2 : buf;
    u32 len = copy_payload(f, p, buf);
    if (p->payload_len == 0) {
        if (p->transport == NP_IPPROTO_UDP)
            m->malformed = 1;                           /* an empty datagram */
        return 0;                                       /* TCP: SYN, ACK, FIN carry no message */
    }
    if (len == 0) {
        np_map_error(ERR_UNREADABLE);                   /* payload where this program cannot read it */
        return 0;
    }
    if (p->transport == NP_IPPROTO_TCP) {
        if (p->payload_len < 2 + DNS_HEADER || len < 2 + DNS_HEADER) {
            /* a message split over segments (e.g. its length written alone): not readable here */
            np_map_error(ERR_UNREADABLE);
            return 0;
        }
        u32 msg_len = (buf[0] << 8) | buf[1];
        return parse_message(buf + 2, len - 2, msg_len, query, m);
    }
    return parse_message(buf, len, p->payload_len, query, m);
}

static __always_inline void on_query(const u8 *skb)
{
    struct skb_fields f = {};
    if (!skb_fields_of(skb, &f) || f.input_ifindex != 0 ||
        (f.protocol != NP_ETH_P_IP && f.protocol != NP_ETH_P_IPV6))
        return;
    struct dns_packet p = {};
    if (!dns_headers(f.head + f.network_header, 1, &p))
        return;
    struct dns_message m = {};
    const u8 *msg = 0;
    if (p.dport != DNS_PORT) {
        /* a response, sent by a server on this node: only checked for being
         * malformed here, once (on receive it would be once per hop and
         * cannot be matched); well-formed ones are matched on receive */
        if (p.transport == NP_IPPROTO_UDP && !read_message(&f, &p, 0, &m, &msg) && m.malformed)
            count_malformed(p.dst, p.src, KIND_RESPONSE, p.transport);
        return;
    }
    if (!read_message(&f, &p, 1, &m, &msg)) {
        if (m.malformed)
            count_malformed(p.src, p.dst, KIND_QUERY, p.transport);
        return;
    }
    struct pending_key pk = {.client_port = p.sport, .server_port = p.dport, .id = m.id,
                             .transport = p.transport};
    __builtin_memcpy(pk.pair.local, p.src, 16);
    __builtin_memcpy(pk.pair.remote, p.dst, 16);
    struct query_key qk = {.pair = pk.pair, .qtype = m.qtype, .transport = p.transport};
    u64 now = bpf_ktime_get_ns();
    struct pending_value *old = pending.lookup(&pk);
    if (old) {
        if (now - old->started_ns <= NP_TIMEOUT_NS) {
            u64 zero = 0, *count = retransmits.lookup_or_try_init(&qk, &zero);
            if (count)
                (*count)++;
            else
                np_map_error(ERR_RETRANSMITS);
            return;
        }
        /* the earlier query with this id timed out: decided now, by whoever deletes it */
        u16 old_qtype = old->qtype;
        u64 old_qname = old->qname;
        if (pending.delete(&pk) == 0)
            count_timeout(&pk, old_qtype, old_qname);
    }
    u64 qname = 0;
#if NP_QUERY_NAMES
    qname = qname_of(msg, &m);
#endif
    struct pending_value value = {.started_ns = now, .qtype = m.qtype, .qname = qname};
    if (pending.update(&pk, &value))
        np_map_error(ERR_PENDING);                      /* table full: this query can get no response or timeout */
    u64 zero = 0, *count = queries.lookup_or_try_init(&qk, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_QUERIES);
#if NP_QUERY_NAMES
    struct name_query_key nk = {.pair = pk.pair, .qtype = m.qtype, .qname = qname};
    count = name_queries.lookup_or_try_init(&nk, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_NAME_QUERIES);
#endif
}

static __always_inline void on_response(const u8 *skb)
{
    struct skb_fields f = {};
    if (!skb_fields_of(skb, &f) || (f.protocol != NP_ETH_P_IP && f.protocol != NP_ETH_P_IPV6))
        return;
    /* at netif_receive_skb, data is the network header (the mac header was pulled) */
    f.network_header = (u16)(f.data - f.head);
    struct dns_packet p = {};
    if (!dns_headers(f.data, 0, &p))
        return;
    struct dns_message m = {};
    const u8 *msg = 0;
    if (!read_message(&f, &p, 0, &m, &msg))
        return;                                         /* malformed responses are counted at their first transmit */
    if (!(m.flags & 0x8000))
        return;                                         /* a query from port 53 (server to server): not ours */
    struct pending_key pk = {.client_port = p.dport, .server_port = p.sport, .id = m.id,
                             .transport = p.transport};
    __builtin_memcpy(pk.pair.local, p.dst, 16);
    __builtin_memcpy(pk.pair.remote, p.src, 16);
    struct pending_value *pending_query = pending.lookup(&pk);
    if (!pending_query)
        return;                                         /* a later hop of a counted response, or unsolicited */
    u64 started = pending_query->started_ns;
    u16 qtype = pending_query->qtype;
    u64 qname = pending_query->qname;
    if (pending.delete(&pk) != 0)
        return;                                         /* another CPU or the agent's sweep took it */
    u64 latency = bpf_ktime_get_ns() - started;
    if (latency > NP_TIMEOUT_NS) {
        count_timeout(&pk, qtype, qname);               /* a late response: the query had timed out */
        return;
    }
    u8 rcode = m.flags & 0xf;
    struct response_key rk = {.pair = pk.pair, .qtype = qtype, .transport = p.transport, .rcode = rcode};
    u64 zero = 0, *count = responses.lookup_or_try_init(&rk, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_RESPONSES);
#if NP_QUERY_NAMES
    struct name_response_key nk = {.pair = pk.pair, .qtype = qtype, .qname = qname, .rcode = rcode};
    count = name_responses.lookup_or_try_init(&nk, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_NAME_RESPONSES);
#endif
    struct latency_key lk = {.pair = pk.pair, .rcode = rcode, .transport = p.transport};
    u64 us = latency / 1000;
    lk.slot = np_log2_slot(us);
    struct np_hist_value hzero = {}, *bucket = latency_us.lookup_or_try_init(&lk, &hzero);
    if (bucket) {
        bucket->count++;
        bucket->sum += us;
    } else {
        np_map_error(ERR_LATENCY_US);
    }
}

#ifdef NP_ATTACH_TRACEPOINT

int np_dns_xmit_tp(struct tracepoint__net__net_dev_start_xmit *args)
{
    on_query((const u8 *)args->skbaddr);
    return 0;
}

int np_dns_receive_tp(struct tracepoint__net__netif_receive_skb *args)
{
    on_response((const u8 *)args->skbaddr);
    return 0;
}

#elif defined(NP_ATTACH_TP_BTF)

/* BTF-typed tracepoints: the sk_buff's members are plain loads; so is the
 * port check where the kernel allows (dns_port_may_match), the rest of the
 * packet's bytes behind head are read with the helper. */
int np_btf_dns_xmit(u64 *ctx)           /* net_dev_start_xmit(skb, dev) */
{
    on_query((const u8 *)ctx[0]);
    return 0;
}

int np_btf_dns_receive(u64 *ctx)        /* netif_receive_skb(skb) */
{
    on_response((const u8 *)ctx[0]);
    return 0;
}

#else   /* raw tracepoints: no record is built */

int np_dns_xmit(struct bpf_raw_tracepoint_args *ctx)        /* net_dev_start_xmit(skb, dev) */
{
    on_query((const u8 *)ctx->args[0]);
    return 0;
}

int np_dns_receive(struct bpf_raw_tracepoint_args *ctx)     /* netif_receive_skb(skb) */
{
    on_response((const u8 *)ctx->args[0]);
    return 0;
}

#endif
