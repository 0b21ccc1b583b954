/* rx_latency: time a received IP packet spends in the kernel, by the
 * receiving (local) address and the sender.
 *
 * Three attach modes, chosen at compile time (-DNP_ATTACH_KPROBE,
 * -DNP_ATTACH_RAW_TRACEPOINT or -DNP_ATTACH_TRACEPOINT); docs/agent.md says
 * exactly what each measures.
 *
 *  kprobe:     ip_rcv / ipv6_rcv  ->  ip_local_deliver / ip6_input
 *              IP header validation, the netfilter PREROUTING hooks and the
 *              routing decision, for packets delivered locally: the classic
 *              ip_rcv -> ip_rcv_finish idea, ended at a function that is
 *              always called, never inlined (through dst_input); ip_rcv_finish
 *              itself is inlined into ip_rcv on Debian 12's 6.1 and never fires.
 *  raw_tracepoint, tracepoint:
 *              net:netif_receive_skb  ->  skb:skb_copy_datagram_iovec
 *              from the packet entering the stack on the device it was last
 *              received on, to the first copy of its data to a reader
 *              (recvmsg and friends): IP + transport processing plus the time
 *              the data waited in the socket receive queue.
 *
 * The start time is kept per skb address in a direct-mapped table
 * (inflight; packets never delivered, e.g. forwarded or dropped, are simply
 * overwritten by later ones). The addresses
 * come from the packet's IP header, found through sk_buff->head and
 * ->network_header at offsets read from the running kernel's BTF
 * (OFF_SKB_HEAD, OFF_SKB_NETWORK_HEADER), never from the compile headers.
 * An end whose start is older than NP_MAX_AGE_NS is not a measurement of
 * this packet (the skb address was reused) and is counted as stale instead.
 */
#include "netprobe.h"
#ifdef NP_ATTACH_KPROBE
#include <uapi/linux/ptrace.h>
#endif

#if !defined(OFF_SKB_HEAD) || !defined(OFF_SKB_NETWORK_HEADER)
#error "the agent passes sk_buff member offsets from BTF"
#endif

#define ERR_LATENCY 0
#define ERR_UNMATCHED 1         /* discarded ends: no start for this packet */
#define ERR_STALE 2             /* discarded ends: start too old, skb address reused */

struct latency_key {
    struct np_addr_pair pair;   /* local = packet destination, remote = source */
    u32 slot;                   /* log2 of the latency in nanoseconds */
    u32 pad;
};

/* Start times live in a direct-mapped table indexed by a hash of the skb
 * address: one array store per received packet, no lock, no allocation, no
 * eviction work (an LRU hash cost ~3x more per packet here, because most
 * received packets are never read and keep it full). A packet whose slot is
 * taken by another before it is read loses its sample; an end that finds no
 * matching start is counted (np_map_errors[ERR_UNMATCHED]). */
struct inflight_slot {
    u64 skb;
    u64 started_ns;
};

BPF_ARRAY(inflight, struct inflight_slot, NP_INFLIGHT_ENTRIES);

static __always_inline u32 inflight_index(u64 skb)
{
    return (u32)(((skb >> 6) * 0x9E3779B97F4A7C15ULL) >> 32) % NP_INFLIGHT_ENTRIES;
}

BPF_TABLE("lru_percpu_hash", struct latency_key, struct np_hist_value, latency_ns, NP_MAX_ENTRIES);

static __always_inline void rx_start(u64 skb)
{
    u32 index = inflight_index(skb);
    struct inflight_slot *slot = inflight.lookup(&index);
    if (!slot)
        return;
    /* time first, then the owner: a reader that sees the owner sees its time
     * (stores are not reordered on x86; elsewhere a rare sample may be off) */
    slot->started_ns = bpf_ktime_get_ns();
    slot->skb = skb;
}

static __always_inline void rx_end(u64 skb)
{
    u32 index = inflight_index(skb);
    struct inflight_slot *slot = inflight.lookup(&index);
    if (!slot)
        return;
    if (slot->skb != skb) {
        np_map_error(ERR_UNMATCHED);    /* start displaced, or never seen */
        return;
    }
    u64 delta = bpf_ktime_get_ns() - slot->started_ns;
    slot->skb = 0;                      /* one sample per packet: later reads of it don't count */
    if (delta > NP_MAX_AGE_NS) {
        np_map_error(ERR_STALE);
        return;
    }
    struct latency_key key = {};        /* local = the packet's destination, remote = its source */
    u8 protocol;
    if (!np_ip_addresses(np_skb_network_header((const u8 *)skb), key.pair.remote, key.pair.local, &protocol))
        return;
    struct np_hist_value zero = {}, *bucket;
    key.slot = np_log2_slot(delta);
    bucket = latency_ns.lookup_or_try_init(&key, &zero);
    if (bucket) {
        bucket->count++;
        bucket->sum += delta;
    } else {
        np_map_error(ERR_LATENCY);
    }
}

#if defined(NP_ATTACH_KPROBE)

int np_ip_rcv(struct pt_regs *ctx)
{
    rx_start(PT_REGS_PARM1(ctx));              /* ip_rcv(skb, dev, pt, orig_dev) */
    return 0;
}

int np_ip_local_deliver(struct pt_regs *ctx)
{
    rx_end(PT_REGS_PARM1(ctx));                /* ip_local_deliver(skb), ip6_input(skb) */
    return 0;
}

#elif defined(NP_ATTACH_TRACEPOINT)

int np_netif_receive(struct tracepoint__net__netif_receive_skb *args)
{
    rx_start((u64)args->skbaddr);
    return 0;
}

int np_skb_copy(struct tracepoint__skb__skb_copy_datagram_iovec *args)
{
    rx_end((u64)args->skbaddr);
    return 0;
}

#elif defined(NP_ATTACH_RAW_TRACEPOINT)

/* The same two hooks as raw tracepoints: the skb is the first argument of
 * both, and the kernel builds no record for the program. */
int np_raw_netif_receive(struct bpf_raw_tracepoint_args *ctx)   /* netif_receive_skb(skb) */
{
    rx_start(ctx->args[0]);
    return 0;
}

int np_raw_skb_copy(struct bpf_raw_tracepoint_args *ctx)        /* skb_copy_datagram_iovec(skb, len) */
{
    rx_end(ctx->args[0]);
    return 0;
}

#else
#error "define NP_ATTACH_KPROBE, NP_ATTACH_TRACEPOINT or NP_ATTACH_RAW_TRACEPOINT"
#endif
