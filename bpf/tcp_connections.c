/* tcp_connections: TCP connections opened, closed, active, their duration,
 * and resets, by local socket address, peer and direction.
 *
 * Hooks: sock:inet_sock_set_state (every TCP state change, with the
 * socket's own address as saddr), tcp:tcp_send_reset, tcp:tcp_receive_reset;
 * as BTF-typed tracepoints (np_btf_*: socket fields are plain loads at
 * offsets from the running kernel's BTF), else as raw tracepoints (np_raw_*:
 * the same fields read with bpf_probe_read_kernel), else as tracepoints
 * (their records).
 *
 * A connection is opened when it reaches ESTABLISHED: from SYN_SENT it is
 * outbound (we connected), from SYN_RECV inbound (we accepted). The socket is
 * remembered (open_sockets, else np_sockets) with its open time; when it
 * reaches CLOSE, closed and the duration histogram are counted and active
 * goes down. opened, closed and active share one value (struct conn_counts)
 * per key. Connections opened before the program was loaded are not counted
 * at all, so opened - closed == active exactly. A socket that cannot be
 * remembered (its slot taken and np_sockets full) is counted in opened and in
 * np_map_errors[ERR_NP_SOCKETS], never in active.
 */
#include "netprobe.h"

/* tcp_send_reset's format names this enum (kernel 6.10+); the headers BCC
 * compiles with may predate it. Only its size matters (the field is unused). */
enum sk_rst_reason { NP_SK_RST_REASON_UNUSED };

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

/* DIR_* (DIR_OUTBOUND, DIR_INBOUND for connections; DIR_SENT, DIR_RECEIVED for
 * resets) and ERR_* (np_map_errors slots) come from
 * node_agent/programs/tcp_connections.py as -D constants. */

struct conn_key {
    struct np_addr_pair pair;
    u8 direction;
    u8 pad[7];
};

/* One value per key for the three connection metrics: one map operation
 * per state change instead of three. */
struct conn_counts {
    u64 opened;
    u64 closed;
    s64 active;                 /* per CPU it can be negative; the sum is not */
};

struct duration_key {
    struct conn_key conn;
    u32 slot;                   /* log2 of the duration in microseconds */
    u32 pad;
};

struct sock_info {
    u64 opened_ns;
    struct conn_key conn;
};

/* Open sockets live in a direct-mapped table indexed by a hash of the
 * socket's address, a slot claimed with compare-and-swap on its owner: an
 * array lookup and one atomic instruction per open and close. The hash map
 * np_sockets takes a socket whose slot is already owned; its insert, lookup
 * and delete are helper calls that take the bucket's lock (with them a state
 * change cost ~2x the per-connection budget here). np_sockets_spilled counts
 * np_sockets' entries, so a close of a socket never seen open (a refused
 * connect, a listener) skips the hash lookup while nothing has spilled.
 * One socket's state changes are serialised by the kernel (socket lock), so
 * only the claim can race, with another socket for the same slot. */
struct open_socket {
    u64 sk;                     /* owner; 0: free */
    struct sock_info info;
};

BPF_ARRAY(open_sockets, struct open_socket, NP_MAX_ENTRIES);
BPF_TABLE("hash", u64, struct sock_info, np_sockets, NP_MAX_ENTRIES);
BPF_ARRAY(np_sockets_spilled, s64, 1);

static __always_inline struct open_socket *open_socket_slot(u64 sk)
{
    /* sockets are slab objects of a few KiB: bits below 6 carry nothing */
    u32 index = (u32)(((sk >> 6) * NP_GOLDEN) >> 32) % NP_MAX_ENTRIES;
    return open_sockets.lookup(&index);
}

static __always_inline void spilled_add(s64 n)
{
    u32 zero = 0;
    s64 *spilled = np_sockets_spilled.lookup(&zero);
    if (spilled)
        __sync_fetch_and_add(spilled, n);
}

static __always_inline int any_spilled(void)
{
    u32 zero = 0;
    s64 *spilled = np_sockets_spilled.lookup(&zero);
    return !spilled || *(volatile s64 *)spilled != 0;
}

BPF_TABLE("lru_percpu_hash", struct conn_key, struct conn_counts, connections, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct duration_key, struct np_hist_value, duration_us, NP_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct conn_key, u64, resets, NP_MAX_ENTRIES);

/* Front caches (netprobe.h) before connections and duration_us: a pod
 * pair's connections open and close on the same few keys. */
struct connections_front {
    struct conn_key key;
    struct conn_counts value;
};

struct duration_front {
    struct duration_key key;
    struct np_hist_value value;
};

BPF_PERCPU_ARRAY(connections_front, struct connections_front, NP_FRONT_ENTRIES);
BPF_PERCPU_ARRAY(duration_us_front, struct duration_front, NP_FRONT_ENTRIES);

/* Adds opened, closed and active (a -1 as (u64)-1) to key's counts in its
 * front entry (netprobe.h), moving a displaced key's counts to the hash. */
static __always_inline void add_counts(struct conn_key *key, u64 opened, u64 closed, u64 active)
{
    u32 index = np_front_index((const u64 *)key, NP_WORDS(*key));
    struct connections_front *front = connections_front.lookup(&index);
    struct connections_front old;
    u64 add[3] = {opened, closed, active};
    if (!front || !np_front_add((u64 *)front, (const u64 *)key, NP_WORDS(*key), add, 3, (u64 *)&old))
        return;
    struct conn_counts zero = {}, *counts = connections.lookup_or_try_init(&old.key, &zero);
    if (counts) {
        counts->opened += old.value.opened;
        counts->closed += old.value.closed;
        counts->active += old.value.active;
    } else {
        np_map_error(ERR_CONNECTIONS);
    }
}

static __always_inline void observe_duration(struct conn_key *conn, u64 lived_us)
{
    struct duration_key key NP_FRONT_KEY = {};

    key.conn = *conn;
    key.slot = np_log2_slot(lived_us);
    u32 index = np_front_index((const u64 *)&key, NP_WORDS(key));
    struct duration_front *front = duration_us_front.lookup(&index);
    struct duration_front old;
    u64 add[2] = {1, lived_us};
    if (!front || !np_front_add((u64 *)front, (const u64 *)&key, NP_WORDS(key), add, 2, (u64 *)&old))
        return;
    struct np_hist_value zero = {}, *bucket = duration_us.lookup_or_try_init(&old.key, &zero);
    if (bucket) {
        bucket->count += old.value.count;
        bucket->sum += old.value.sum;
    } else {
        np_map_error(ERR_DURATION_US);
    }
}

static __always_inline void count_reset(struct conn_key *key)
{
    u64 zero = 0, *count = resets.lookup_or_try_init(key, &zero);
    if (count)
        (*count)++;
    else
        np_map_error(ERR_RESETS);
}

/* A connection reached ESTABLISHED (from SYN_SENT or SYN_RECV). */
static __always_inline void connection_established(u64 sk, int oldstate, const struct np_addr_pair *pair)
{
    struct sock_info info = {};
    info.opened_ns = bpf_ktime_get_ns();
    info.conn.direction = oldstate == TCP_SYN_SENT ? DIR_OUTBOUND : DIR_INBOUND;
    info.conn.pair = *pair;
    u64 tracked = 1;
    struct open_socket *slot = open_socket_slot(sk);
    if (slot && __sync_val_compare_and_swap(&slot->sk, 0, sk) == 0) {
        slot->info = info;
    } else if (np_sockets.update(&sk, &info) == 0) {
        spilled_add(1);
    } else {
        tracked = 0;
        np_map_error(ERR_NP_SOCKETS);
    }
    add_counts(&info.conn, 1, 0, tracked);
}

/* A socket reached CLOSE: counted if we saw it open. */
static __always_inline void connection_closed(u64 sk)
{
    struct sock_info seen;
    struct open_socket *slot = open_socket_slot(sk);
    if (slot && slot->sk == sk) {
        seen = slot->info;
        __sync_lock_test_and_set(&slot->sk, 0);     /* an exchange: ordered after the reads */
    } else {
        if (!any_spilled())
            return;             /* opened before we looked, or never established */
        struct sock_info *info = np_sockets.lookup(&sk);
        if (!info)
            return;
        seen = *info;
        if (np_sockets.delete(&sk) == 0)
            spilled_add(-1);
    }
    add_counts(&seen.conn, 0, 1, (u64)-1);
    observe_duration(&seen.conn, (bpf_ktime_get_ns() - seen.opened_ns) / 1000);
}

static __always_inline int interesting(int oldstate, int newstate)
{
    if (newstate == TCP_CLOSE)
        return 1;
    return newstate == TCP_ESTABLISHED && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV);
}

int np_tcp_state(struct tracepoint__sock__inet_sock_set_state *args)
{
    if (args->protocol != NP_IPPROTO_TCP)
        return 0;
    int newstate = args->newstate, oldstate = args->oldstate;
    if (!interesting(oldstate, newstate))
        return 0;
    u64 sk = (u64)args->skaddr;
    if (newstate == TCP_CLOSE) {
        connection_closed(sk);
        return 0;
    }
    /* Every address word is loaded before the family branch (all are at
     * 4-byte-aligned record offsets): the verifier only accepts record reads
     * at a constant offset from the context, and clang, left alone, copies
     * the record into the map value later through one pointer for both
     * branches ("dereference of modified ctx ptr"). */
    const volatile u32 *s4 = (const volatile u32 *)args->saddr, *d4 = (const volatile u32 *)args->daddr;
    const volatile u32 *s6 = (const volatile u32 *)args->saddr_v6, *d6 = (const volatile u32 *)args->daddr_v6;
    u32 local4 = s4[0], remote4 = d4[0];
    u32 local6[4] = {s6[0], s6[1], s6[2], s6[3]}, remote6[4] = {d6[0], d6[1], d6[2], d6[3]};
    struct np_addr_pair pair = {};
    if (args->family == NP_AF_INET) {
        np_addr_from_v4_words(pair.local, &local4);
        np_addr_from_v4_words(pair.remote, &remote4);
    } else if (args->family == NP_AF_INET6) {
        np_addr_copy_words(pair.local, local6);
        np_addr_copy_words(pair.remote, remote6);
    } else {
        return 0;
    }
    connection_established(sk, oldstate, &pair);
    return 0;
}

/* RST we send: saddr is our side (for a socketless reply the kernel stores
 * the incoming packet's addresses reversed, so saddr is still ours). */
int np_tcp_send_reset(struct tracepoint__tcp__tcp_send_reset *args)
{
    struct conn_key key = {};
    key.direction = DIR_SENT;
#ifdef NP_SEND_RESET_SOCKET_RECORD
    /* Before 6.10 the event shares the socket events' record (family,
     * saddr[4], saddr_v6) and fires only for a socket's RST; the agent
     * defines this when the running kernel's format says so. */
    if (args->family == NP_AF_INET) {
        np_addr_from_v4(key.pair.local, args->saddr);
        np_addr_from_v4(key.pair.remote, args->daddr);
    } else if (args->family == NP_AF_INET6) {
        __builtin_memcpy(key.pair.local, args->saddr_v6, 16);
        __builtin_memcpy(key.pair.remote, args->daddr_v6, 16);
    } else {
        return 0;
    }
#else
    if (!np_addr_from_sockaddr(key.pair.local, args->saddr) ||
        !np_addr_from_sockaddr(key.pair.remote, args->daddr))
        return 0;
#endif
    count_reset(&key);
    return 0;
}

int np_tcp_receive_reset(struct tracepoint__tcp__tcp_receive_reset *args)
{
    struct conn_key key = {};
    key.direction = DIR_RECEIVED;
    if (args->family == NP_AF_INET) {
        np_addr_from_v4(key.pair.local, args->saddr);
        np_addr_from_v4(key.pair.remote, args->daddr);
    } else if (args->family == NP_AF_INET6) {
        __builtin_memcpy(key.pair.local, args->saddr_v6, 16);
        __builtin_memcpy(key.pair.remote, args->daddr_v6, 16);
    } else {
        return 0;
    }
    count_reset(&key);
    return 0;
}

#ifdef NP_ATTACH_RAW_TRACEPOINT
#if !defined(OFF_SK_PROTOCOL) || !defined(OFF_SKC_STATE)
#error "the agent passes sock member offsets from BTF"
#endif

#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12

/* The same hooks as raw tracepoints: the kernel builds no record and never
 * skips these programs because another tracing program is running on the
 * CPU (docs/agent.md); what the records held is read from the socket. */

int np_raw_tcp_state(struct bpf_raw_tracepoint_args *ctx)  /* inet_sock_set_state(sk, oldstate, newstate) */
{
    const u8 *sk = (const u8 *)ctx->args[0];
    int oldstate = ctx->args[1], newstate = ctx->args[2];
    u16 protocol = 0;

    if (!interesting(oldstate, newstate))
        return 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OFF_SK_PROTOCOL);
    if (protocol != NP_IPPROTO_TCP)
        return 0;
    if (newstate == TCP_CLOSE) {
        connection_closed((u64)sk);
        return 0;
    }
    struct np_addr_pair pair = {};
    if (!np_sock_addresses(sk, &pair))
        return 0;
    connection_established((u64)sk, oldstate, &pair);
    return 0;
}

/* tcp_send_reset(sk, skb, reason): from a full socket its own addresses; a
 * reply for no socket, a request or a TIME_WAIT socket (sk NULL or not a full
 * socket) takes the incoming packet's, reversed: its destination is our side. */
int np_raw_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
    const u8 *sk = (const u8 *)ctx->args[0];
    const u8 *skb = (const u8 *)ctx->args[1];
    struct conn_key key = {};
    u8 state = 0, protocol;

    key.direction = DIR_SENT;
    if (sk)
        bpf_probe_read_kernel(&state, sizeof(state), sk + OFF_SKC_STATE);
    if (sk && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV) {
        if (!np_sock_addresses(sk, &key.pair))
            return 0;
    } else if (!skb || !np_ip_addresses(np_skb_network_header(skb), key.pair.remote, key.pair.local, &protocol)) {
        return 0;
    }
    count_reset(&key);
    return 0;
}

int np_raw_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)   /* tcp_receive_reset(sk) */
{
    struct conn_key key = {};
    key.direction = DIR_RECEIVED;
    if (!np_sock_addresses((const u8 *)ctx->args[0], &key.pair))
        return 0;
    count_reset(&key);
    return 0;
}
#endif /* NP_ATTACH_RAW_TRACEPOINT */

#ifdef NP_ATTACH_TP_BTF
#if !defined(OFF_SK_PROTOCOL) || !defined(OFF_SKC_STATE)
#error "the agent passes sock member offsets from BTF"
#endif

#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12

/* The same hooks as BTF-typed tracepoints: the socket's members are plain
 * loads; the socket's address (the np_sockets key) is taken as a number. */

int np_btf_tcp_state(u64 *ctx)          /* inet_sock_set_state(sk, oldstate, newstate) */
{
    const u8 *sk = (const u8 *)ctx[0];
    int oldstate = ctx[1], newstate = ctx[2];

    if (!interesting(oldstate, newstate))
        return 0;
    if (NP_LOAD(u16, sk, OFF_SK_PROTOCOL) != NP_IPPROTO_TCP)
        return 0;
    if (newstate == TCP_CLOSE) {
        connection_closed(np_address_of(sk));
        return 0;
    }
    struct np_addr_pair pair = {};
    if (!np_btf_sock_addresses(sk, &pair))
        return 0;
    connection_established(np_address_of(sk), oldstate, &pair);
    return 0;
}

/* tcp_send_reset(sk, skb, reason): as np_raw_tcp_send_reset. */
int np_btf_tcp_send_reset(u64 *ctx)
{
    const u8 *sk = (const u8 *)ctx[0];
    const u8 *skb = (const u8 *)ctx[1];
    struct conn_key key = {};
    u8 state = 0, protocol;

    key.direction = DIR_SENT;
    if (sk)
        state = NP_LOAD(u8, sk, OFF_SKC_STATE);
    if (sk && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV) {
        if (!np_btf_sock_addresses(sk, &key.pair))
            return 0;
    } else if (!skb || !NP_BTF_IP_ADDRESSES(np_btf_skb_network_header(skb), key.pair.remote, key.pair.local,
                                            &protocol)) {
        return 0;
    }
    count_reset(&key);
    return 0;
}

int np_btf_tcp_receive_reset(u64 *ctx)  /* tcp_receive_reset(sk) */
{
    struct conn_key key = {};
    key.direction = DIR_RECEIVED;
    if (!np_btf_sock_addresses((const u8 *)ctx[0], &key.pair))
        return 0;
    count_reset(&key);
    return 0;
}
#endif /* NP_ATTACH_TP_BTF */
