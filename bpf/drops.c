/* drops: packets the kernel dropped, by drop reason, direction, and the
 * packet's own addresses (the pod it belongs to and its peer).
 *
 * Hook: skb:kfree_skb, which the kernel fires only for a packet freed as
 * dropped (kfree_skb_reason/sk_skb_reason_drop); packets freed after use go
 * to skb:consume_skb, which is not hooked. A kernel with reason SKB_CONSUMED
 * routes it to consume_skb itself; the program also refuses it
 * (NP_SKB_CONSUMED, its value in the running kernel's BTF, when it has one),
 * so a kernel that ever passed it here would not count freed packets as
 * drops. Three ways to hook it, counting the same: a BTF-typed tracepoint
 * (np_btf_kfree_skb: the sk_buff's members are plain loads), a raw
 * tracepoint (np_raw_kfree_skb: arguments skb, location, reason[, rx_sk]; no
 * record is built; the members read with bpf_probe_read_kernel) or the
 * tracepoint (np_kfree_skb: the record's skbaddr and reason).
 *
 * The reason is the kernel's enum skb_drop_reason value as it is, subsystem
 * bits included; user space names it from the running kernel's BTF.
 *
 * Direction, from the sk_buff's skb_iif (the interface it was last received
 * on, set by the receive path, 0 for a packet this host made and never
 * received): ingress if it was received (the local side is its destination),
 * egress if not (the local side is its source). A forwarded packet (received,
 * then dropped on its way out) is its destination's ingress.
 *
 * Addresses: from the IP header (sk_buff head + network_header), for IPv4
 * and IPv6 packets (skb->protocol); a drop of anything else (ARP, AF_UNIX,
 * a packet without its IP header yet) counts with no addresses. All
 * sk_buff members at offsets from the running kernel's BTF (OFF_SKB_*).
 * Counts go through a front cache (netprobe.h) before the drops hash.
 */
#include "netprobe.h"
#if !defined(NP_ATTACH_RAW_TRACEPOINT) && !defined(NP_ATTACH_TP_BTF)
/* The record BCC builds from the running kernel's format declares the reason
 * as enum skb_drop_reason: the headers declare the type (4 bytes); its
 * values from the headers are never used. */
#include <linux/skbuff.h>
#endif

#if !defined(OFF_SKB_IIF) || !defined(OFF_SKB_PROTOCOL) || !defined(OFF_SKB_HEAD) || \
    !defined(OFF_SKB_NETWORK_HEADER)
#error "the agent passes sk_buff member offsets from BTF"
#endif

/* ERR_DROPS (np_map_errors slot) and DIR_INGRESS, DIR_EGRESS come from
 * node_agent/programs/drops.py as -D constants. */

struct drop_key {
    struct np_addr_pair pair;   /* local: the destination (ingress) or the source (egress) */
    u32 reason;                 /* enum skb_drop_reason of the running kernel */
    u32 direction;              /* DIR_INGRESS | DIR_EGRESS */
};

BPF_TABLE("lru_percpu_hash", struct drop_key, u64, drops, NP_MAX_ENTRIES);

/* drops' front cache (netprobe.h): a drop storm (a firewall rule, a full
 * queue, a port scan answered with resets) repeats a few keys, each added to
 * its entry in place instead of a hash update per packet. */
struct drops_front {
    struct drop_key key;
    u64 value;
};

BPF_PERCPU_ARRAY(drops_front, struct drops_front, NP_FRONT_ENTRIES);

#define NP_ETH_P_IP 0x0800      /* in host order */
#define NP_ETH_P_IPV6 0x86DD

#define DROP_WIN_LO NP_MIN(NP_MIN(OFF_SKB_IIF, OFF_SKB_PROTOCOL), NP_MIN(OFF_SKB_NETWORK_HEADER, OFF_SKB_HEAD))
#define DROP_WIN_HI NP_MAX(NP_MAX(OFF_SKB_IIF + 4, OFF_SKB_PROTOCOL + 2), \
                           NP_MAX(OFF_SKB_NETWORK_HEADER + 2, OFF_SKB_HEAD + 8))

/* input_ifindex: skb_iif; protocol_be: skb->protocol as stored (network
 * order); network_header: head + network_header (0 if head is NULL). */
static __always_inline void count_drop(u32 reason, int input_ifindex, u16 protocol_be, const u8 *network_header)
{
#ifdef NP_SKB_CONSUMED
    if (reason == NP_SKB_CONSUMED)      /* freed after use: not a drop */
        return;
#endif
    struct drop_key key NP_FRONT_KEY = {};
    key.reason = reason;
    key.direction = input_ifindex ? DIR_INGRESS : DIR_EGRESS;
    u16 protocol = __builtin_bswap16(protocol_be);
    if (network_header && (protocol == NP_ETH_P_IP || protocol == NP_ETH_P_IPV6)) {
        u8 carried = 0;
        if (input_ifindex)      /* ingress: local = destination, peer = source */
            NP_BTF_IP_ADDRESSES(network_header, key.pair.remote, key.pair.local, &carried);
        else
            NP_BTF_IP_ADDRESSES(network_header, key.pair.local, key.pair.remote, &carried);
    }
    u32 index = np_front_index((const u64 *)&key, NP_WORDS(key));
    struct drops_front *front = drops_front.lookup(&index);
    struct drops_front old;
    u64 one = 1;
    if (!front || !np_front_add((u64 *)front, (const u64 *)&key, NP_WORDS(key), &one, 1, (u64 *)&old))
        return;
    u64 zero = 0, *count = drops.lookup_or_try_init(&old.key, &zero);
    if (count)
        *count += old.value;
    else
        np_map_error(ERR_DROPS);
}

#ifndef NP_ATTACH_TP_BTF
/* The sk_buff's members, in one read of the window that holds them. */
static __always_inline void count_drop_of(const u8 *skb, u32 reason)
{
    int input_ifindex = 0;
    u16 protocol_be = 0, network_header = 0;
    const u8 *head = 0;
#if DROP_WIN_HI - DROP_WIN_LO <= NP_WINDOW_MAX
    u8 win[DROP_WIN_HI - DROP_WIN_LO];
    if (bpf_probe_read_kernel(win, sizeof(win), skb + DROP_WIN_LO) == 0) {
        __builtin_memcpy(&input_ifindex, win + OFF_SKB_IIF - DROP_WIN_LO, sizeof(input_ifindex));
        __builtin_memcpy(&protocol_be, win + OFF_SKB_PROTOCOL - DROP_WIN_LO, sizeof(protocol_be));
        __builtin_memcpy(&network_header, win + OFF_SKB_NETWORK_HEADER - DROP_WIN_LO, sizeof(network_header));
        __builtin_memcpy(&head, win + OFF_SKB_HEAD - DROP_WIN_LO, sizeof(head));
    }
#else
    bpf_probe_read_kernel(&input_ifindex, sizeof(input_ifindex), skb + OFF_SKB_IIF);
    bpf_probe_read_kernel(&protocol_be, sizeof(protocol_be), skb + OFF_SKB_PROTOCOL);
    bpf_probe_read_kernel(&network_header, sizeof(network_header), skb + OFF_SKB_NETWORK_HEADER);
    bpf_probe_read_kernel(&head, sizeof(head), skb + OFF_SKB_HEAD);
#endif
    count_drop(reason, input_ifindex, protocol_be, head ? head + network_header : 0);
}
#endif

#if defined(NP_ATTACH_TP_BTF)
/* kfree_skb(skb, location, reason[, rx_sk]) as a BTF-typed tracepoint: the
 * sk_buff's members are plain loads. */
int np_btf_kfree_skb(u64 *ctx)
{
    const u8 *skb = (const u8 *)ctx[0];
    count_drop((u32)ctx[2], NP_LOAD(int, skb, OFF_SKB_IIF), NP_LOAD(u16, skb, OFF_SKB_PROTOCOL),
               np_btf_skb_network_header(skb));
    return 0;
}
#elif defined(NP_ATTACH_RAW_TRACEPOINT)
/* kfree_skb(skb, location, reason[, rx_sk]): the reason is the third argument since 5.17. */
int np_raw_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    count_drop_of((const u8 *)ctx->args[0], (u32)ctx->args[2]);
    return 0;
}
#else
int np_kfree_skb(struct tracepoint__skb__kfree_skb *args)
{
    count_drop_of((const u8 *)args->skbaddr, (u32)args->reason);
    return 0;
}
#endif
