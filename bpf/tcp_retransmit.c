/* tcp_retransmit: retransmitted TCP segments and TCP segments sent, by local
 * socket address and peer; their ratio is the retransmit rate.
 *
 * Retransmits: tracepoint tcp:tcp_retransmit_skb, fired by the sender for
 * every retransmitted segment (timeout, fast retransmit, loss probe repair).
 * saddr is the retransmitting socket's own address.
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
 * 0). That is the kernel's Tcp OutSegs: data, pure ACKs, SYN/FIN/RST,
 * retransmissions included. The addresses come from the IP header (local =
 * source, peer = destination) at skb->data + network_offset, with
 * sk_buff->data and ->skb_iif at offsets read from the running kernel's BTF
 * (OFF_SKB_DATA, OFF_SKB_IIF).
 *
 * Cost: this runs for every transmitted packet of the node, so the checks
 * go from free to dearer: the ethertype is a tracepoint field (non-IP packets
 * return at once), then one read of the sk_buff window holding skb_iif and
 * data (forwarded and bridged packets return there), then one read of the IP
 * header, then one map operation.
 */
#include "netprobe.h"

#define ERR_RETRANSMITS 0
#define ERR_SEGMENTS 1

BPF_TABLE("lru_percpu_hash", struct np_addr_pair, u64, retransmits, NP_MAX_ENTRIES);
/* Declared in both attach modes (the collector reads it); empty unless
 * NP_COUNT_SEGMENTS attached the counter. */
BPF_TABLE("lru_percpu_hash", struct np_addr_pair, u64, segments_sent, NP_MAX_ENTRIES);

int np_tcp_retransmit(struct tracepoint__tcp__tcp_retransmit_skb *args)
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
    u64 zero = 0, *count = retransmits.lookup_or_try_init(&key, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_RETRANSMITS);
    return 0;
}

#ifdef NP_COUNT_SEGMENTS

#if !defined(OFF_SKB_IIF) || !defined(OFF_SKB_DATA)
#error "the agent passes sk_buff member offsets from BTF"
#endif

#define NP_ETH_P_IP 0x0800      /* the tracepoint stores the ethertype in host order */
#define NP_ETH_P_IPV6 0x86DD

/* sk_buff->skb_iif (int) and ->data (pointer), read in one window. */
#define SEG_WIN_LO NP_MIN(OFF_SKB_IIF, OFF_SKB_DATA)
#define SEG_WIN_HI NP_MAX(OFF_SKB_IIF + 4, OFF_SKB_DATA + 8)

int np_tcp_segment_sent(struct tracepoint__net__net_dev_start_xmit *args)
{
    u16 protocol = args->protocol;
    if (protocol != NP_ETH_P_IP && protocol != NP_ETH_P_IPV6)
        return 0;

    const u8 *skb = (const u8 *)args->skbaddr;
    int input_ifindex = -1;
    const u8 *data = 0;
#if SEG_WIN_HI - SEG_WIN_LO <= NP_WINDOW_MAX
    u8 win[SEG_WIN_HI - SEG_WIN_LO];
    if (bpf_probe_read_kernel(win, sizeof(win), skb + SEG_WIN_LO))
        return 0;
    __builtin_memcpy(&input_ifindex, win + OFF_SKB_IIF - SEG_WIN_LO, sizeof(input_ifindex));
    if (input_ifindex != 0)
        return 0;               /* received before: forwarded, bridged, or past a veth hop */
    __builtin_memcpy(&data, win + OFF_SKB_DATA - SEG_WIN_LO, sizeof(data));
#else
    bpf_probe_read_kernel(&input_ifindex, sizeof(input_ifindex), skb + OFF_SKB_IIF);
    if (input_ifindex != 0)
        return 0;
    bpf_probe_read_kernel(&data, sizeof(data), skb + OFF_SKB_DATA);
#endif
    if (!data)
        return 0;

    /* 40 bytes hold an IPv6 header, or an IPv4 header and the start of its
     * TCP header: every packet counted here has them. */
    u32 hdr[10];                /* words: the addresses are copied a word at a time */
    u8 *bytes = (u8 *)hdr;
    if (bpf_probe_read_kernel(hdr, sizeof(hdr), data + args->network_offset))
        return 0;
    struct np_addr_pair key = {};
    if (protocol == NP_ETH_P_IP) {
        if ((bytes[0] >> 4) != 4 || bytes[9] != NP_IPPROTO_TCP)
            return 0;
        np_addr_from_v4_words(key.local, hdr + 3);     /* saddr, bytes 12..16 */
        np_addr_from_v4_words(key.remote, hdr + 4);    /* daddr, bytes 16..20 */
    } else {
        /* The next header must be TCP: TCP behind IPv6 extension headers is not counted. */
        if ((bytes[0] >> 4) != 6 || bytes[6] != NP_IPPROTO_TCP)
            return 0;
        np_addr_copy_words(key.local, hdr + 2);        /* bytes 8..24 */
        np_addr_copy_words(key.remote, hdr + 6);       /* bytes 24..40 */
    }

    u64 segments = args->gso_segs ? args->gso_segs : 1;
    u64 zero = 0, *count = segments_sent.lookup_or_try_init(&key, &zero);
    if (count)
        *count += segments;
    else
        np_map_error(ERR_SEGMENTS);
    return 0;
}

#endif /* NP_COUNT_SEGMENTS */
