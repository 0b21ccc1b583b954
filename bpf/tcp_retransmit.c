/* tcp_retransmit: retransmitted TCP segments and TCP segments sent, by local
 * socket address and peer; their ratio is the retransmit rate.
 *
 * Retransmits, counted in segments like the kernel's Tcp RetransSegs (the
 * unit of the ratio's denominator):
 *  - tracepoint tcp:tcp_retransmit_skb fires once per retransmission of a
 *    socket's skb (timeout, fast retransmit, loss probe repair, SYN). With
 *    TSO/GSO one skb carries several segments: __tcp_retransmit_skb adds
 *    tcp_skb_pcount(skb), i.e. TCP_SKB_CB(skb)->tcp_gso_segs of the very skb
 *    the tracepoint gets, to RetransSegs, and so do we (read from skb->cb at
 *    BTF offsets). Where the record has an err member (6.18 has) the
 *    tracepoint also fires for attempts that failed before anything was
 *    counted (err != 0: -EBUSY, -ENOMEM, -EAGAIN, ...); only err == 0 is
 *    counted. Older kernels fire it on success only. The kernel also counts an attempt whose transmit failed
 *    after the count (again in TCPRetransFail): not here.
 *  - tracepoint tcp:tcp_retransmit_synack: a SYN-ACK retransmitted for a
 *    request socket (RetransSegs + 1; fired only when it was sent).
 *  saddr is the retransmitting socket's own address. retransmit_events
 *  counts the retransmissions themselves (one per skb or SYN-ACK, what
 *  tcpretrans shows), beside the segments.
 *
 * Segments sent (compiled with -DNP_COUNT_SEGMENTS): tracepoint
 * net:net_dev_start_xmit, which fires each time a device is handed a packet,
 * so a packet crossing veth + bridge fires it once per hop. Only the first
 * transmit of a locally generated packet has skb->skb_iif == 0 (the input
 * interface; never set for a packet this node made): a packet that crossed a
 * veth was received by its peer, which sets skb_iif, so later hops (the
 * bridge port, a forward) are skipped. (skb->sk would not do: the veth hop
 * orphans the packet, but IPv6 RSTs the kernel sends for no socket have no
 * sk on their first transmit either.) Counted: IPv4/IPv6 packets whose
 * transport protocol is TCP, max(gso_segs, 1) segments each (a TSO/GSO skb
 * carries gso_segs wire segments; a pure ACK or a SYN-ACK may have gso_segs
 * 0). Data, pure ACKs, SYN/FIN/RST and retransmissions: the kernel's
 * Tcp OutSegs + RetransSegs (OutSegs leaves retransmissions out). The
 * addresses come from the IP header (local = source, peer = destination),
 * with sk_buff members at offsets read from the running kernel's BTF
 * (OFF_SKB_*), never from the compile headers.
 *
 * Three ways to hook net_dev_start_xmit, counting the same: as a BTF-typed
 * tracepoint (np_btf_segment_sent, the default where the kernel loads it:
 * sk_buff members are plain loads), as a raw tracepoint (np_raw_segment_sent;
 * the kernel builds no record, which costs more than the program on this
 * path) or as a tracepoint (np_tcp_segment_sent; the record brings the
 * ethertype and gso_segs).
 * Retransmits are always tracepoints: they are rare.
 *
 * Cost: this runs for every transmitted packet of the node, so the checks
 * go from cheap to dearer: one read of the sk_buff window holding skb_iif
 * (forwarded and bridged packets return there) and the ethertype (non-IP
 * packets return), then one read of the IP header, then one map operation
 * (and, on the raw path, one read of gso_segs).
 */
#include "netprobe.h"

#if !defined(OFF_SKB_CB) || !defined(OFF_TCP_SKB_CB_GSO_SEGS)
#error "the agent passes sk_buff and tcp_skb_cb offsets from BTF"
#endif

/* NP_RETRANSMIT_HAS_ERR: the running kernel's tcp_retransmit_skb record has an
 * err member (its tracefs format says; node_agent/kernel/features.py). The
 * record's BTF struct is named differently across versions (6.1:
 * trace_event_raw_tcp_event_sk_skb, 6.18: trace_event_raw_tcp_retransmit_skb),
 * and naming err where the record lacks it would not compile. */

/* ERR_* (np_map_errors slots) come from node_agent/programs/tcp_retransmit.py as -D constants. */

BPF_TABLE("lru_percpu_hash", struct np_addr_pair, u64, retransmits, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct np_addr_pair, u64, retransmit_events, NP_MAX_ENTRIES);
/* Declared in both attach modes (the collector reads it); empty unless
 * NP_COUNT_SEGMENTS attached the counter. */
BPF_TABLE("lru_percpu_hash", struct np_addr_pair, u64, segments_sent, NP_MAX_ENTRIES);
/* segments_sent's front cache (netprobe.h): a flow's packets add to its
 * entry in place (declared, like the hash, in both modes). */
struct segments_front {
    struct np_addr_pair key;
    u64 value;
};

BPF_PERCPU_ARRAY(segments_sent_front, struct segments_front, NP_FRONT_ENTRIES);

/* One retransmission of `segments` segments. */
static __always_inline void count_retransmission(struct np_addr_pair *key, u64 segments)
{
    u64 zero = 0, *count = retransmits.lookup_or_try_init(key, &zero);
    if (count)
        *count += segments;
    else
        np_map_error(ERR_RETRANSMITS);
    u64 *events = retransmit_events.lookup_or_try_init(key, &zero);
    if (events)
        (*events)++;
    else
        np_map_error(ERR_RETRANSMIT_EVENTS);
}

int np_tcp_retransmit(struct tracepoint__tcp__tcp_retransmit_skb *args)
{
    struct np_addr_pair key = {};

#ifdef NP_RETRANSMIT_HAS_ERR
    if (args->err)
        return 0;               /* not retransmitted, not in RetransSegs */
#endif
    if (args->family == NP_AF_INET) {
        np_addr_from_v4(key.local, args->saddr);
        np_addr_from_v4(key.remote, args->daddr);
    } else if (args->family == NP_AF_INET6) {
        __builtin_memcpy(key.local, args->saddr_v6, 16);
        __builtin_memcpy(key.remote, args->daddr_v6, 16);
    } else {
        return 0;
    }
    /* tcp_skb_pcount(skb): what the kernel adds to RetransSegs */
    u16 segments = 0;
    bpf_probe_read_kernel(&segments, sizeof(segments),
                          (const u8 *)args->skbaddr + OFF_SKB_CB + OFF_TCP_SKB_CB_GSO_SEGS);
    count_retransmission(&key, segments);
    return 0;
}

int np_tcp_retransmit_synack(struct tracepoint__tcp__tcp_retransmit_synack *args)
{
    struct np_addr_pair key = {};

    if (args->family == NP_AF_INET) {
        np_addr_from_v4(key.local, args->saddr);
        np_addr_from_v4(key.remote, args->daddr);
    } else if (args->family == NP_AF_INET6) {
        __builtin_memcpy(key.local, args->saddr_v6, 16);
        __builtin_memcpy(key.remote, args->daddr_v6, 16);
    } else {
        return 0;
    }
    count_retransmission(&key, 1);
    return 0;
}

#ifdef NP_COUNT_SEGMENTS

#if !defined(OFF_SKB_IIF) || !defined(OFF_SKB_HEAD) || \
    !defined(OFF_SKB_NETWORK_HEADER) || !defined(OFF_SKB_END) || !defined(OFF_SKB_PROTOCOL) || \
    !defined(OFF_SHINFO_GSO_SEGS)
#error "the agent passes sk_buff member offsets from BTF"
#endif

#define NP_ETH_P_IP 0x0800      /* in host order */
#define NP_ETH_P_IPV6 0x86DD

/* The key of a TCP packet from its IP header (local = source, peer =
 * destination); 0 unless IPv4/IPv6 carrying TCP (TCP behind IPv6 extension
 * headers is not counted). */
static __always_inline int segment_key(const u8 *ip, struct np_addr_pair *key)
{
    u8 protocol = 0;
    return np_ip_addresses(ip, key->local, key->remote, &protocol) && protocol == NP_IPPROTO_TCP;
}

static __always_inline void count_segments(struct np_addr_pair *key, u64 gso_segs)
{
    u64 segments = gso_segs ? gso_segs : 1;
    u32 index = np_front_index((const u64 *)key, NP_WORDS(*key));
    struct segments_front *front = segments_sent_front.lookup(&index);
    struct segments_front old;
    if (!front || !np_front_add((u64 *)front, (const u64 *)key, NP_WORDS(*key), &segments, 1, (u64 *)&old))
        return;
    u64 zero = 0, *count = segments_sent.lookup_or_try_init(&old.key, &zero);
    if (count)
        *count += old.value;
    else
        np_map_error(ERR_SEGMENTS_SENT);
}

/* What both hooks read from the sk_buff, in one read of the window from the
 * lowest of these members to the end of the highest. */
struct tx_fields {
    int input_ifindex;          /* skb_iif */
    u16 protocol;               /* the ethertype, host order */
    u16 network_header;         /* offset from head */
    u32 end;                    /* sk_buff_data_t: an offset from head on 64-bit kernels */
    const u8 *head;
};

#define TX_WIN_LO NP_MIN(OFF_SKB_IIF, NP_MIN(OFF_SKB_PROTOCOL, NP_MIN(OFF_SKB_NETWORK_HEADER, \
                  NP_MIN(OFF_SKB_END, OFF_SKB_HEAD))))
#define TX_WIN_HI NP_MAX(OFF_SKB_IIF + 4, NP_MAX(OFF_SKB_PROTOCOL + 2, NP_MAX(OFF_SKB_NETWORK_HEADER + 2, \
                  NP_MAX(OFF_SKB_END + 4, OFF_SKB_HEAD + 8))))

/* 1 if this is the first transmit of an IP packet this node made (skb_iif
 * 0: not received before, so not forwarded, bridged or past a veth hop). */
static __always_inline int tx_fields_of(const u8 *skb, struct tx_fields *f)
{
    u16 protocol_be = 0;
#if TX_WIN_HI - TX_WIN_LO <= NP_WINDOW_MAX
    u8 win[TX_WIN_HI - TX_WIN_LO];
    if (bpf_probe_read_kernel(win, sizeof(win), skb + TX_WIN_LO))
        return 0;
    __builtin_memcpy(&f->input_ifindex, win + OFF_SKB_IIF - TX_WIN_LO, sizeof(f->input_ifindex));
    __builtin_memcpy(&protocol_be, win + OFF_SKB_PROTOCOL - TX_WIN_LO, sizeof(protocol_be));
    __builtin_memcpy(&f->network_header, win + OFF_SKB_NETWORK_HEADER - TX_WIN_LO, sizeof(f->network_header));
    __builtin_memcpy(&f->end, win + OFF_SKB_END - TX_WIN_LO, sizeof(f->end));
    __builtin_memcpy(&f->head, win + OFF_SKB_HEAD - TX_WIN_LO, sizeof(f->head));
#else
    bpf_probe_read_kernel(&f->input_ifindex, sizeof(f->input_ifindex), skb + OFF_SKB_IIF);
    bpf_probe_read_kernel(&protocol_be, sizeof(protocol_be), skb + OFF_SKB_PROTOCOL);
    bpf_probe_read_kernel(&f->network_header, sizeof(f->network_header), skb + OFF_SKB_NETWORK_HEADER);
    bpf_probe_read_kernel(&f->end, sizeof(f->end), skb + OFF_SKB_END);
    bpf_probe_read_kernel(&f->head, sizeof(f->head), skb + OFF_SKB_HEAD);
#endif
    f->protocol = __builtin_bswap16(protocol_be);
    return f->input_ifindex == 0 && f->head &&
           (f->protocol == NP_ETH_P_IP || f->protocol == NP_ETH_P_IPV6);
}

/* Tracepoint net:net_dev_start_xmit: the record's ethertype lets non-IP
 * packets return before any read; gso_segs comes with the record. */
int np_tcp_segment_sent(struct tracepoint__net__net_dev_start_xmit *args)
{
    u16 protocol = args->protocol;
    if (protocol != NP_ETH_P_IP && protocol != NP_ETH_P_IPV6)
        return 0;
    struct tx_fields f = {};
    struct np_addr_pair key NP_FRONT_KEY = {};
    if (!tx_fields_of((const u8 *)args->skbaddr, &f) || !segment_key(f.head + f.network_header, &key))
        return 0;
    count_segments(&key, args->gso_segs);
    return 0;
}

/* Raw tracepoint net_dev_start_xmit(skb, dev): no record is built; gso_segs
 * is read from skb_shared_info, which sits at head + end. */
int np_raw_segment_sent(struct bpf_raw_tracepoint_args *ctx)
{
    struct tx_fields f = {};
    struct np_addr_pair key NP_FRONT_KEY = {};
    if (!tx_fields_of((const u8 *)ctx->args[0], &f) || !segment_key(f.head + f.network_header, &key))
        return 0;
    u16 gso_segs = 0;
    bpf_probe_read_kernel(&gso_segs, sizeof(gso_segs), f.head + f.end + OFF_SHINFO_GSO_SEGS);
    count_segments(&key, gso_segs);
    return 0;
}

#ifdef NP_ATTACH_TP_BTF
/* BTF-typed tracepoint net_dev_start_xmit(skb, dev): the sk_buff's members
 * are plain loads, in the order of the checks (a forwarded or bridged packet
 * returns after the first, a non-IP one after the second); the IP header and
 * gso_segs (behind head, which the verifier types as a number) are loads too
 * where the kernel has bpf_rdonly_cast (NP_BTF_BYTES), else helper reads. */
int np_btf_segment_sent(u64 *ctx)
{
    const u8 *skb = (const u8 *)ctx[0];
    struct np_addr_pair key NP_FRONT_KEY = {};

    if (NP_LOAD(int, skb, OFF_SKB_IIF) != 0)
        return 0;
    u16 protocol = __builtin_bswap16(NP_LOAD(u16, skb, OFF_SKB_PROTOCOL));
    if (protocol != NP_ETH_P_IP && protocol != NP_ETH_P_IPV6)
        return 0;
    const u8 *head = NP_LOAD_PTR(skb, OFF_SKB_HEAD);
    u16 network_header = NP_LOAD(u16, skb, OFF_SKB_NETWORK_HEADER);
    u32 end = NP_LOAD(u32, skb, OFF_SKB_END);
    u8 ip_protocol = 0;
    if (!head || !NP_BTF_IP_ADDRESSES(head + network_header, key.local, key.remote, &ip_protocol) ||
        ip_protocol != NP_IPPROTO_TCP)
        return 0;
#ifdef NP_BTF_BYTES     /* skb_shared_info with a load too (netprobe.h) */
#if OFF_SHINFO_GSO_SEGS + 2 > NP_BYTES_SIZE
#error "gso_segs lies beyond NP_BYTES_SIZE"
#endif
    u16 gso_segs = NP_LOAD(u16, np_btf_bytes(head + end), OFF_SHINFO_GSO_SEGS);
#else
    u16 gso_segs = 0;
    bpf_probe_read_kernel(&gso_segs, sizeof(gso_segs), head + end + OFF_SHINFO_GSO_SEGS);
#endif
    count_segments(&key, gso_segs);
    return 0;
}
#endif /* NP_ATTACH_TP_BTF */

#endif /* NP_COUNT_SEGMENTS */
