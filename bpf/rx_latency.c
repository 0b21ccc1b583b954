/* rx_latency: time a received IP packet spends in the kernel, by the
 * receiving (local) address and the sender.
 *
 * Four attach modes, chosen at compile time (-DNP_ATTACH_KPROBE,
 * -DNP_ATTACH_TP_BTF, -DNP_ATTACH_RAW_TRACEPOINT or -DNP_ATTACH_TRACEPOINT);
 * docs/agent.md says exactly what each measures.
 *
 *  kprobe:     ip_rcv / ipv6_rcv  ->  ip_local_deliver / ip6_input
 *              IP header validation, the netfilter PREROUTING hooks and the
 *              routing decision, for packets delivered locally: the classic
 *              ip_rcv -> ip_rcv_finish idea, ended at a function that is
 *              always called, never inlined (through dst_input); ip_rcv_finish
 *              itself is inlined into ip_rcv on Debian 12's 6.1 and never fires.
 *  tp_btf, raw_tracepoint, tracepoint:
 *              net:netif_receive_skb  ->  skb:skb_copy_datagram_iovec
 *              from the packet entering the stack on the device it was last
 *              received on, to the first copy of its data to a reader
 *              (recvmsg and friends): IP + transport processing plus the time
 *              the data waited in the socket receive queue.
 *
 * The start time is kept per skb address in a direct-mapped table
 * (inflight; packets never delivered, e.g. forwarded or dropped, are simply
 * overwritten by later ones; TCP segments without payload are never
 * started). The kernel reuses skb addresses, and a start
 * left by a packet that was never read (a dropped one) can meet a later skb at
 * the same address that was never started: the clone of a packet that a
 * capture (an AF_PACKET socket, tcpdump) reads, in either direction. So a
 * slot also holds the packet's identity: a hash of its IP header and the
 * first bytes of its TCP/UDP header (IPv4 id and checksum; IPv6 payload
 * length, ports, TCP sequence and acknowledgement numbers and timestamps),
 * which nothing on the way from the device to the reader changes, and an end
 * counts only if its packet hashes the same; otherwise it is an unmatched
 * end. At the start the IP header is at skb->data (the device's header is
 * pulled, and network_header is not set yet on every path), at the end at
 * head + network_header. The addresses come from the packet's IP header,
 * with sk_buff members at offsets read from the running kernel's BTF
 * (OFF_SKB_*), never from the compile headers.
 * An end whose start is older than NP_MAX_AGE_NS is not a measurement of
 * this packet (the skb address was reused) and is counted as stale instead.
 */
#include "netprobe.h"
#ifdef NP_ATTACH_KPROBE
#include <uapi/linux/ptrace.h>
#endif

#if !defined(OFF_SKB_HEAD) || !defined(OFF_SKB_NETWORK_HEADER) || !defined(OFF_SKB_DATA)
#error "the agent passes sk_buff member offsets from BTF"
#endif

#define NP_IPPROTO_UDP 17

/* ERR_* (np_map_errors slots) come from node_agent/programs/rx_latency.py as -D
 * constants: ERR_LATENCY_NS, and the discarded ends ERR_UNMATCHED (no start for
 * this packet) and ERR_STALE (start too old, skb address reused). */

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
 * matching start (another address, or the same address with another
 * packet's identity) is counted (np_map_errors[ERR_UNMATCHED]). */
struct inflight_slot {
    u64 skb;
    u64 packet;                 /* rx_identity() of the packet started */
    u64 started_ns;
};

BPF_ARRAY(inflight, struct inflight_slot, NP_INFLIGHT_ENTRIES);

/* The address itself, in units of 128 bytes (an sk_buff is larger, so two
 * live ones never share a unit), not a hash of it: the skbs in flight come
 * from a few slab pages, and their slots then sit in a few pages of the
 * table too. A hash spread them over the whole table, a TLB miss per start
 * and per end under bulk traffic (bench kernel_cost: ~30 ns per start and
 * ~100 per end more). Addresses 128 * NP_INFLIGHT_ENTRIES apart share a
 * slot (twice as often as hashed indexes would). */
static __always_inline u32 inflight_index(u64 skb)
{
    return (u32)((skb >> 7) % NP_INFLIGHT_ENTRIES);
}

BPF_TABLE("lru_percpu_hash", struct latency_key, struct np_hist_value, latency_ns, NP_MAX_ENTRIES);

/* latency_ns's front cache (netprobe.h): a flow's samples fall in a few
 * slots, each added to its entry in place. */
struct latency_front {
    struct latency_key key;
    struct np_hist_value value;
};

BPF_PERCPU_ARRAY(latency_ns_front, struct latency_front, NP_FRONT_ENTRIES);

/* The first bytes of a packet from its IP header: enough for an IPv6
 * header with a TCP header carrying timestamps (40 + 32). Fewer are read
 * when the buffer ends sooner; only bytes inside the packet are used. */
#define RX_HDR_WORDS 18

#ifdef NP_BTF_BYTES
#if RX_HDR_WORDS * 4 > NP_BYTES_SIZE
#error "the header window is larger than NP_BYTES_SIZE"
#endif
/* With loads (netprobe.h): all RX_HDR_WORDS words, those past mapped memory
 * 0; or, for an IPv4 header of 20 bytes when `whole` is 0, only the 32 bytes
 * that rx_identity and the addresses need: at the end the header is cold
 * (the packet waited in a queue), and 32 bytes touch one cache line more
 * often than 72. */
static __always_inline int rx_read_header(const u8 *ip, u32 hdr[RX_HDR_WORDS], int whole)
{
    if (!ip)
        return 0;
    const u8 *p = np_btf_bytes(ip);
    u64 *words = (u64 *)hdr;
#pragma unroll
    for (int i = 0; i < 4; i++)
        words[i] = NP_LOAD(u64, p, 8 * i);
    if (!whole && (u8)words[0] == 0x45)   /* IPv4, no options */
        return 32;
#pragma unroll
    for (int i = 4; i < RX_HDR_WORDS / 2; i++)
        words[i] = NP_LOAD(u64, p, 8 * i);
    return RX_HDR_WORDS * 4;
}
#else
/* With the helper: `whole` is not used, as the call costs the same for 32
 * bytes as for 72 (the call is the price, docs/agent.md). */
static __always_inline int rx_read_header(const u8 *ip, u32 hdr[RX_HDR_WORDS], int whole)
{
    if (!ip)
        return 0;
    if (bpf_probe_read_kernel(hdr, RX_HDR_WORDS * 4, ip) == 0)
        return RX_HDR_WORDS * 4;
    if (bpf_probe_read_kernel(hdr, 40, ip) == 0)
        return 40;
    if (bpf_probe_read_kernel(hdr, 20, ip) == 0)
        return 20;
    return 0;
}
#endif

static __always_inline u64 rx_mix(u64 h, u32 word)
{
    return (h ^ word) * 0x9E3779B97F4A7C15ULL;
}

/* Identity of the packet whose headers are in hdr (`got` bytes read): words
 * that differ between two packets of a flow and that nothing changes between
 * the device and the reader. 0 if not IPv4/IPv6. Words beyond the headers the
 * packet has (a UDP payload, absent TCP options) are never used: they may
 * lie past the packet's end, where the bytes are not the packet's. */
static __always_inline u64 rx_identity(const u32 hdr[RX_HDR_WORDS], int got)
{
    const u8 *bytes = (const u8 *)hdr;
    u8 version = bytes[0] >> 4;
    u64 h = 0xcbf29ce484222325ULL;

    if (version == 4 && got >= 20) {
        /* the whole base header: length, id, flags, protocol, checksum (which
         * covers the rest), addresses */
        h = rx_mix(h, hdr[0]); h = rx_mix(h, hdr[1]); h = rx_mix(h, hdr[2]);
        h = rx_mix(h, hdr[3]); h = rx_mix(h, hdr[4]);
        /* TCP without IP options: sequence and acknowledgement numbers */
        if ((bytes[0] & 0xf) == 5 && ((volatile u8 *)bytes)[9] == NP_IPPROTO_TCP && got >= 32) {
            h = rx_mix(h, hdr[6]);
            h = rx_mix(h, hdr[7]);
        }
        return h | 1;
    }
    if (version == 6 && got >= 40) {
        u8 next = ((volatile u8 *)bytes)[6];
        h = rx_mix(h, hdr[0]); h = rx_mix(h, hdr[1]);     /* flow label, payload length */
        for (int i = 2; i < 10; i++)                       /* addresses */
            h = rx_mix(h, hdr[i]);
        if (next == NP_IPPROTO_TCP && got >= 60) {
            h = rx_mix(h, hdr[10]);                        /* ports */
            h = rx_mix(h, hdr[11]);                        /* sequence number */
            h = rx_mix(h, hdr[12]);                        /* acknowledgement number */
            /* TCP options (data offset >= 8 words): where timestamps sit */
            if ((bytes[52] >> 4) >= 8 && got >= 72) {
                h = rx_mix(h, hdr[15]);
                h = rx_mix(h, hdr[16]);
                h = rx_mix(h, hdr[17]);
            }
        } else if (next == NP_IPPROTO_UDP && got >= 48) {
            h = rx_mix(h, hdr[10]);                        /* ports */
            h = rx_mix(h, hdr[11]);                        /* length, checksum */
        }
        return h | 1;
    }
    return 0;
}

/* 1 if hdr holds a TCP segment without payload (a pure ACK, a bare FIN or
 * RST): nothing of it is ever copied to a reader, so it is not started (on
 * a bulk sender half the received packets are ACKs; each start would cost a
 * clock read and could displace the start of a packet that will be read).
 * Lengths of 0 (BIG TCP's IPv4 total length) never match. */
static __always_inline int rx_without_tcp_payload(const u32 hdr[RX_HDR_WORDS], int got)
{
    const u8 *bytes = (const u8 *)hdr;
    u8 version = bytes[0] >> 4;
    u8 protocol4 = ((volatile u8 *)bytes)[9], protocol6 = ((volatile u8 *)bytes)[6];
    if (version == 4 && (bytes[0] & 0xf) == 5 && protocol4 == NP_IPPROTO_TCP && got >= 40)
        return ((bytes[2] << 8) | bytes[3]) == 20 + (bytes[32] >> 4) * 4;     /* TCP data offset: byte 32 */
    if (version == 6 && protocol6 == NP_IPPROTO_TCP && got >= 60)
        return ((bytes[4] << 8) | bytes[5]) == (bytes[52] >> 4) * 4;          /* byte 40 + 12 */
    return 0;
}

/* sample_every N: a packet is measured iff its identity falls in one N-th
 * of the hash space. Its start and its end decide alike, so a packet not
 * measured costs neither a clock read nor a slot at either end (a draw at
 * random could only be taken at the end: a start cannot know whether it is
 * the packet's last hop into the stack). The identity hashes sequence
 * numbers, IP ids and checksums, never a time, so which packets are measured
 * does not depend on how long they took. */
static __always_inline int rx_measured(u64 packet)
{
#if NP_SAMPLE_EVERY > 1
    return (packet >> 32) % NP_SAMPLE_EVERY == 0;
#else
    return 1;
#endif
}

/* data: skb->data, where the IP header is at the start (the device's
 * header was pulled). */
static __always_inline void rx_start_at(u64 skb, const u8 *data)
{
    u32 index = inflight_index(skb);
    struct inflight_slot *slot = inflight.lookup(&index);
    if (!slot)
        return;
    u32 hdr[RX_HDR_WORDS] __attribute__((aligned(8)));
    int got = rx_read_header(data, hdr, 1);
    u64 packet = rx_identity(hdr, got);
    if (!packet || rx_without_tcp_payload(hdr, got) || !rx_measured(packet))
        return;                         /* not IP, nothing to read, or not sampled: never a sample */
    /* time and identity first, then the owner: a reader that sees the owner
     * sees them (stores are not reordered on x86; elsewhere a rare sample
     * may be off) */
    slot->started_ns = bpf_ktime_get_ns();
    slot->packet = packet;
    slot->skb = skb;
}

static __always_inline void rx_start(u64 skb)
{
    const u8 *data = 0;
    bpf_probe_read_kernel(&data, sizeof(data), (const u8 *)skb + OFF_SKB_DATA);
    rx_start_at(skb, data);
}

/* ip: head + network_header, where the IP header is at the end. */
static __always_inline void rx_end_at(u64 skb, const u8 *ip)
{
    u32 hdr[RX_HDR_WORDS] __attribute__((aligned(8)));
    int got = rx_read_header(ip, hdr, 0);
    u64 packet = rx_identity(hdr, got);
    if (packet && !rx_measured(packet))
        return;                         /* not sampled: its start was not taken either */
    u32 index = inflight_index(skb);
    struct inflight_slot *slot = inflight.lookup(&index);
    if (!slot)
        return;
    if (slot->skb != skb || slot->packet != packet) {
        /* start displaced or never seen, or another packet at this address
         * (a capture's clone, a reused skb) */
        np_map_error(ERR_UNMATCHED);
        return;
    }
    u64 now = bpf_ktime_get_ns(), started = slot->started_ns;
    slot->skb = 0;                      /* one sample per packet: later reads of it don't count */
    u64 delta = now - started;
    if (delta > NP_MAX_AGE_NS) {
        np_map_error(ERR_STALE);
        return;
    }
    /* local = the packet's destination, remote = its source */
    struct latency_key key NP_FRONT_KEY = {};
    const u8 *bytes = (const u8 *)hdr;
    if ((bytes[0] >> 4) == 4) {
        np_addr_from_v4_words(key.pair.remote, hdr + 3);    /* bytes 12..16 */
        np_addr_from_v4_words(key.pair.local, hdr + 4);     /* bytes 16..20 */
    } else {                                                /* 6: rx_identity knew it */
        np_addr_copy_words(key.pair.remote, hdr + 2);       /* bytes 8..24 */
        np_addr_copy_words(key.pair.local, hdr + 6);        /* bytes 24..40 */
    }
    key.slot = np_log2_slot(delta);
    u32 front_index = np_front_index((const u64 *)&key, NP_WORDS(key));
    struct latency_front *front = latency_ns_front.lookup(&front_index);
    struct latency_front old;
    u64 add[2] = {1, delta};
    if (!front || !np_front_add((u64 *)front, (const u64 *)&key, NP_WORDS(key), add, 2, (u64 *)&old))
        return;
    struct np_hist_value zero = {}, *bucket = latency_ns.lookup_or_try_init(&old.key, &zero);
    if (bucket) {
        bucket->count += old.value.count;
        bucket->sum += old.value.sum;
    } else {
        np_map_error(ERR_LATENCY_NS);
    }
}

#if !defined(NP_ATTACH_TP_BTF)
static __always_inline void rx_end(u64 skb)
{
    rx_end_at(skb, np_skb_network_header((const u8 *)skb));
}
#endif

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

#elif defined(NP_ATTACH_TP_BTF)

/* The same two hooks as BTF-typed tracepoints: the sk_buff's members (data,
 * head, network_header) are plain loads; so are the packet's bytes where the
 * kernel has bpf_rdonly_cast (NP_BTF_BYTES), else they are read with the
 * helper (the verifier types head and data as numbers). */
int np_btf_netif_receive(u64 *ctx)      /* netif_receive_skb(skb) */
{
    const u8 *skb = (const u8 *)ctx[0];
    rx_start_at(np_address_of(skb), NP_LOAD_PTR(skb, OFF_SKB_DATA));
    return 0;
}

int np_btf_skb_copy(u64 *ctx)           /* skb_copy_datagram_iovec(skb, len) */
{
    const u8 *skb = (const u8 *)ctx[0];
    rx_end_at(np_address_of(skb), np_btf_skb_network_header(skb));
    return 0;
}

#else
#error "define NP_ATTACH_KPROBE, NP_ATTACH_TP_BTF, NP_ATTACH_TRACEPOINT or NP_ATTACH_RAW_TRACEPOINT"
#endif
