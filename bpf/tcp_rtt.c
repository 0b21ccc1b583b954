/* tcp_rtt: distribution of the smoothed round-trip time of TCP connections.
 *
 * Hook: tracepoint tcp:tcp_probe, fired when an established socket processes
 * an incoming segment (tcp_rcv_established). Its srtt field is the socket's
 * smoothed RTT in microseconds (srtt_us >> 3). One observation per received
 * segment, so busy connections weigh more: the histogram is of samples, not
 * of connections. srtt 0 (no RTT measured yet) is skipped.
 */
#include "netprobe.h"

#define ERR_RTT 0

struct rtt_key {
    struct np_addr_pair pair;
    u32 slot;                   /* log2 of srtt in microseconds */
    u32 pad;
};

BPF_TABLE("lru_percpu_hash", struct rtt_key, struct np_hist_value, rtt_us, NP_MAX_ENTRIES);

int np_tcp_rtt(struct tracepoint__tcp__tcp_probe *args)
{
    u64 srtt = args->srtt;
    struct rtt_key key = {};

    if (srtt == 0)
        return 0;
    if (!np_addr_from_sockaddr(key.pair.local, args->saddr) ||
        !np_addr_from_sockaddr(key.pair.remote, args->daddr))
        return 0;
    struct np_hist_value zero = {}, *bucket;
    key.slot = np_log2_slot(srtt);
    bucket = rtt_us.lookup_or_try_init(&key, &zero);
    if (bucket) {
        bucket->count++;
        bucket->sum += srtt;
    } else {
        np_map_error(ERR_RTT);
    }
    return 0;
}
