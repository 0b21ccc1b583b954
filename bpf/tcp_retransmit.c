/* tcp_retransmit: retransmitted TCP segments, by local socket address and peer.
 *
 * Hook: tracepoint tcp:tcp_retransmit_skb, fired by the sender for every
 * retransmitted segment (timeout, fast retransmit, loss probe repair).
 * saddr is the retransmitting socket's own address.
 */
#include "netprobe.h"

#define ERR_RETRANSMITS 0

BPF_TABLE("lru_percpu_hash", struct np_addr_pair, u64, retransmits, NP_MAX_ENTRIES);

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
