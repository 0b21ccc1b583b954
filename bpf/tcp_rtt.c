/* tcp_rtt: distribution of the smoothed round-trip time of TCP connections.
 *
 * Hook: tcp_probe, fired when an established socket processes an incoming
 * segment (tcp_rcv_established). The smoothed RTT is tcp_sock->srtt_us >> 3,
 * in microseconds. One observation per received segment, so busy
 * connections weigh more: the histogram is of samples, not of connections.
 * srtt 0 (no RTT measured yet) is skipped.
 *
 * Three attach modes, the same hook and the same numbers:
 *  tp_btf: the BTF-typed tracepoint: the socket is a typed pointer, so
 *      its addresses are plain loads, and srtt_us a load through
 *      bpf_rdonly_cast where the kernel has it (NP_BTF_BYTES), else one
 *      after bpf_skc_to_tcp_sock (the verifier lets a struct sock pointer
 *      reach only struct sock's members; the helper checks the socket is TCP
 *      and returns it typed as the tcp_sock it is); no bpf_probe_read_kernel.
 *  raw_tracepoint: the program gets tcp_probe's arguments (sk, skb) and
 *      reads srtt_us and the addresses from the socket at offsets read from
 *      the running kernel's BTF; the kernel builds no record for it, which
 *      is most of what a tracepoint costs on a busy receive path.
 *  tracepoint: tcp:tcp_probe's record (saddr/daddr sockaddrs, srtt).
 */
#include "netprobe.h"

/* ERR_* (np_map_errors slots) come from node_agent/programs/tcp_rtt.py as -D constants. */

struct rtt_key {
    struct np_addr_pair pair;
    u32 slot;                   /* log2 of srtt in microseconds */
    u32 pad;
};

BPF_TABLE("lru_percpu_hash", struct rtt_key, struct np_hist_value, rtt_us, NP_MAX_ENTRIES);

/* rtt_us's front cache (netprobe.h): a socket's samples mostly fall in one
 * slot, so a busy connection adds to its entry in place. */
struct rtt_front {
    struct rtt_key key;
    struct np_hist_value value;
};

BPF_PERCPU_ARRAY(rtt_us_front, struct rtt_front, NP_FRONT_ENTRIES);

static __always_inline void rtt_observe(struct rtt_key *key, u64 srtt)
{
    key->slot = np_log2_slot(srtt);
    u32 index = np_front_index((const u64 *)key, NP_WORDS(*key));
    struct rtt_front *front = rtt_us_front.lookup(&index);
    struct rtt_front old;
    u64 add[2] = {1, srtt};
    if (!front || !np_front_add((u64 *)front, (const u64 *)key, NP_WORDS(*key), add, 2, (u64 *)&old))
        return;
    struct np_hist_value zero = {}, *bucket = rtt_us.lookup_or_try_init(&old.key, &zero);
    if (bucket) {
        bucket->count += old.value.count;
        bucket->sum += old.value.sum;
    } else {
        np_map_error(ERR_RTT_US);
    }
}

int np_tcp_rtt(struct tracepoint__tcp__tcp_probe *args)
{
    if (np_sample_skip())
        return 0;
    u64 srtt = args->srtt;
    struct rtt_key key NP_FRONT_KEY = {};

    if (srtt == 0)
        return 0;
    if (!np_addr_from_sockaddr(key.pair.local, args->saddr) ||
        !np_addr_from_sockaddr(key.pair.remote, args->daddr))
        return 0;
    rtt_observe(&key, srtt);
    return 0;
}

#ifdef NP_ATTACH_RAW_TRACEPOINT
#ifndef OFF_TCP_SRTT_US
#error "the agent passes tcp_sock member offsets from BTF"
#endif

int np_raw_tcp_rtt(struct bpf_raw_tracepoint_args *ctx)     /* tcp_probe(sk, skb) */
{
    const u8 *sk = (const u8 *)ctx->args[0];
    u32 srtt_us = 0;
    struct rtt_key key NP_FRONT_KEY = {};

    if (np_sample_skip())
        return 0;
    bpf_probe_read_kernel(&srtt_us, sizeof(srtt_us), sk + OFF_TCP_SRTT_US);
    if ((srtt_us >> 3) == 0)
        return 0;
    if (!np_sock_addresses(sk, &key.pair))
        return 0;
    rtt_observe(&key, srtt_us >> 3);
    return 0;
}
#endif

#ifdef NP_ATTACH_TP_BTF
#ifndef OFF_TCP_SRTT_US
#error "the agent passes tcp_sock member offsets from BTF"
#endif

int np_btf_tcp_rtt(u64 *ctx)                                 /* tcp_probe(sk, skb) */
{
    struct rtt_key key NP_FRONT_KEY = {};

    if (np_sample_skip())
        return 0;
#ifdef NP_BTF_BYTES
    /* tcp_probe fires only in tcp_rcv_established, for a full TCP socket:
     * srtt_us is read with a load (netprobe.h), no helper call */
    const u8 *tp = (const u8 *)ctx[0];
    u32 srtt_us = NP_LOAD(u32, np_btf_bytes(tp + OFF_TCP_SRTT_US), 0);
#else
    const u8 *tp = (const u8 *)bpf_skc_to_tcp_sock((void *)ctx[0]);
    if (!tp)
        return 0;
    u32 srtt_us = NP_LOAD(u32, tp, OFF_TCP_SRTT_US);
#endif
    if ((srtt_us >> 3) == 0)
        return 0;
    if (!np_btf_sock_address_words(tp, (u64 *)&key.pair))
        return 0;
    rtt_observe(&key, srtt_us >> 3);
    return 0;
}
#endif
