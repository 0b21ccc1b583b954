/* Shared definitions of the netprobe BPF programs (compiled by BCC).
 *
 * Conventions every program follows, which node_agent/ decodes:
 *  - Addresses are 16 bytes: IPv6 as is, IPv4 as IPv4-mapped (::ffff:a.b.c.d),
 *    so one key layout serves both families.
 *  - Counters live in per-CPU LRU hashes keyed by what the labels need;
 *    user space sums the CPUs at scrape time and never deletes. Maps updated
 *    per packet or per connection have a front cache (below) before them.
 *  - Histograms are log2: the slot is the last key field; slot s counts
 *    values v with 2^(s-1) < v <= 2^s (slot 0: v <= 1), so bucket s has the
 *    inclusive upper bound le = 2^s units. The value (struct np_hist_value)
 *    holds the count and the sum of the slot's values: one map operation per
 *    observation; user space adds the sums of all slots.
 *  - A failed map update is never silent: it increments np_map_errors[index].
 *
 * Compile-time constants come from the program's description (-D on the BCC
 * command line): its options (NP_MAX_ENTRIES and the program's own), its
 * np_map_errors slots (ERR_*), the codes of its key fields (e.g. DIR_*), and
 * kernel struct offsets read from BTF (OFF_*). Key structs are read back by
 * field name (node_agent/runtime/keys.py): fields named pad* are padding.
 */
#ifndef NETPROBE_H
#define NETPROBE_H

#define NP_AF_INET 2
#define NP_AF_INET6 10
#define NP_IPPROTO_TCP 6

#define NP_MAX_SLOT 63          /* values beyond 2^63 units share the last slot */

#ifndef NP_MAX_ENTRIES
#error "NP_MAX_ENTRIES must be defined by the agent"
#endif
#ifndef NP_MAP_ERROR_SLOTS
#define NP_MAP_ERROR_SLOTS 8
#endif

struct np_addr_pair {
    u8 local[16];               /* the socket's own address (this node's side) */
    u8 remote[16];
} __attribute__((aligned(4)));  /* written a word at a time (np_addr_*_words) */

struct np_hist_value {
    u64 count;
    u64 sum;                    /* of the observed values, in the histogram's unit */
};

/* Failed updates per map, and discarded events: the slots are named in the
 * program's description (map_errors, discards) and reach the C code as
 * ERR_<NAME> constants, with NP_MAP_ERROR_SLOTS their count. */
BPF_PERCPU_ARRAY(np_map_errors, u64, NP_MAP_ERROR_SLOTS);

static __always_inline void np_map_error(u32 index)
{
    u64 *count = np_map_errors.lookup(&index);
    if (count)
        (*count)++;
}

static __always_inline void np_addr_from_v4(u8 dst[16], const u8 src[4])
{
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(dst + 12, src, 4);
}

/* The same for addresses at 4-byte-aligned places, a word at a time: clang
 * must copy a u8 array byte by byte (it cannot assume alignment), four times
 * the instructions on the hottest paths. Tracepoint records may only be read
 * at their fields' natural alignment, so only callers that know their source
 * is aligned use these; dst is a key field at a 4-byte-aligned offset. */
static __always_inline void np_addr_from_v4_words(u8 dst[16], const u32 *src)
{
    u32 *d = (u32 *)dst;
    d[0] = 0;
    d[1] = 0;
    d[2] = 0xffff0000;          /* bytes 00 00 ff ff (little endian) */
    d[3] = src[0];
}

static __always_inline void np_addr_copy_words(u8 dst[16], const u32 *src)
{
    u32 *d = (u32 *)dst;
    d[0] = src[0];
    d[1] = src[1];
    d[2] = src[2];
    d[3] = src[3];
}

/* A struct sockaddr_in / sockaddr_in6 as some tracepoints store it (28 bytes,
 * at a 4-byte-aligned offset of the record): family at 0, IPv4 address at 4,
 * IPv6 address at 8. Returns 0 when neither. All six words are loaded before
 * any branch: the verifier only accepts record reads at a constant offset
 * from the context pointer, and clang, left alone, sinks the loads into the
 * branches through one pointer it computes for both. */
static __always_inline int np_addr_from_sockaddr(u8 dst[16], const u8 sa[28])
{
    const volatile u32 *w = (const volatile u32 *)sa;   /* volatile: loaded here, as written */
    u32 words[6] = {w[0], w[1], w[2], w[3], w[4], w[5]};
    u16 family = words[0] & 0xffff;   /* sa_family, little endian */
    if (family == NP_AF_INET) {
        np_addr_from_v4_words(dst, words + 1);
        return 1;
    }
    if (family == NP_AF_INET6) {
        np_addr_copy_words(dst, words + 2);
        return 1;
    }
    return 0;
}

/* Kernel memory is read with bpf_probe_read_kernel, and the helper call, not
 * the bytes, is the price (measured here: ~35 ns a call with warm caches,
 * 8 bytes or 64 alike). So members of a struct that sit close together are
 * read in one call: a window from the lowest to the end of the highest, sized
 * at compile time from the BTF offsets the agent passes. */
#define NP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NP_MAX(a, b) ((a) > (b) ? (a) : (b))
#define NP_WINDOW_MAX 96        /* bytes: beyond this, separate reads */

/* A socket's own (local) and peer address from its struct sock_common, for
 * programs on raw tracepoints, which get the socket pointer instead of a
 * record: one window read covers family and both address pairs. Needs the
 * BTF offsets OFF_SKC_{FAMILY,DADDR,RCV_SADDR,V6_DADDR,V6_RCV_SADDR}. */
#ifdef OFF_SKC_FAMILY
#define NP_SKC_LO NP_MIN(NP_MIN(OFF_SKC_DADDR, OFF_SKC_RCV_SADDR), \
                         NP_MIN(OFF_SKC_FAMILY, NP_MIN(OFF_SKC_V6_DADDR, OFF_SKC_V6_RCV_SADDR)))
#define NP_SKC_HI NP_MAX(NP_MAX(OFF_SKC_DADDR + 4, OFF_SKC_RCV_SADDR + 4), \
                         NP_MAX(OFF_SKC_FAMILY + 2, NP_MAX(OFF_SKC_V6_DADDR + 16, OFF_SKC_V6_RCV_SADDR + 16)))

static __always_inline int np_sock_addresses(const u8 *sk, struct np_addr_pair *pair)
{
#if NP_SKC_HI - NP_SKC_LO <= NP_WINDOW_MAX && NP_SKC_LO % 4 == 0 && OFF_SKC_DADDR % 4 == 0 && \
    OFF_SKC_RCV_SADDR % 4 == 0 && OFF_SKC_V6_DADDR % 4 == 0 && OFF_SKC_V6_RCV_SADDR % 4 == 0
    u32 win[(NP_SKC_HI - NP_SKC_LO + 3) / 4];
    const u8 *w = (const u8 *)win;
    u16 family;

    if (bpf_probe_read_kernel(win, sizeof(win), sk + NP_SKC_LO))
        return 0;
    __builtin_memcpy(&family, w + OFF_SKC_FAMILY - NP_SKC_LO, sizeof(family));
    if (family == NP_AF_INET) {
        np_addr_from_v4_words(pair->local, (const u32 *)(w + OFF_SKC_RCV_SADDR - NP_SKC_LO));
        np_addr_from_v4_words(pair->remote, (const u32 *)(w + OFF_SKC_DADDR - NP_SKC_LO));
        return 1;
    }
    if (family == NP_AF_INET6) {
        np_addr_copy_words(pair->local, (const u32 *)(w + OFF_SKC_V6_RCV_SADDR - NP_SKC_LO));
        np_addr_copy_words(pair->remote, (const u32 *)(w + OFF_SKC_V6_DADDR - NP_SKC_LO));
        return 1;
    }
    return 0;
#else   /* a kernel whose members sit far apart or unaligned: one read each */
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), sk + OFF_SKC_FAMILY);
    if (family == NP_AF_INET) {
        u8 v4[8];
        if (bpf_probe_read_kernel(v4, 4, sk + OFF_SKC_RCV_SADDR) ||
            bpf_probe_read_kernel(v4 + 4, 4, sk + OFF_SKC_DADDR))
            return 0;
        np_addr_from_v4(pair->local, v4);
        np_addr_from_v4(pair->remote, v4 + 4);
        return 1;
    }
    if (family == NP_AF_INET6)
        return !bpf_probe_read_kernel(pair->local, 16, sk + OFF_SKC_V6_RCV_SADDR) &&
               !bpf_probe_read_kernel(pair->remote, 16, sk + OFF_SKC_V6_DADDR);
    return 0;
#endif
}
#endif /* OFF_SKC_FAMILY */

/* BTF-typed tracepoint programs (tp_btf, -DNP_ATTACH_TP_BTF) get their
 * arguments as pointers the verifier knows the types of: members are read
 * with plain loads (checked against the running kernel's BTF, at the same
 * BTF offsets), not a bpf_probe_read_kernel call each. A member read must be
 * a load at a constant offset from the argument, so the helpers below read
 * every word before branching. Memory the argument only points to as a
 * number (packet bytes behind skb->head) is still read with the helper. */
#define NP_LOAD(type, base, off) (*(const volatile type *)((const u8 *)(base) + (off)))
#define NP_LOAD_PTR(base, off) ((const u8 *)NP_LOAD(u64, base, off))

/* Packet bytes with plain loads, in tp_btf programs on kernels with the
 * bpf_rdonly_cast kfunc (6.2+; the agent then defines NP_BYTES_BTF_ID). The
 * verifier types head and data as numbers (or as memory of size 0), so the
 * packet is otherwise read with bpf_probe_read_kernel, and a helper call is
 * the dearest thing a per-packet program does here (60-80 ns: the kernel's
 * return-stack mitigation taxes every return of the helper's nested calls).
 * bpf_rdonly_cast gives the address a type (NP_BYTES_BTF_ID: one array of
 * integers, NP_BYTES_SIZE bytes) whose members the program may load; the
 * verifier checks each load's offset against the type's size and the JIT
 * emits a load that yields 0 instead of faulting (no call), and the cast
 * itself becomes a register move. Bytes past the end of mapped memory read
 * as 0. Only in functions the agent loads as tp_btf: its loader turns the
 * placeholder call below into the kfunc call (BCC would refuse it). */
#if defined(NP_ATTACH_TP_BTF) && defined(NP_BYTES_BTF_ID)
#define NP_BTF_BYTES 1
static const u8 *(*np_rdonly_cast)(const void *obj, u32 btf_id) = (void *)NP_KFUNC_RDONLY_CAST;

static __always_inline const u8 *np_btf_bytes(const void *addr)
{
    return np_rdonly_cast(addr, NP_BYTES_BTF_ID);
}

/* np_ip_addresses (below) with loads: the IPv4 header's 20 bytes or the
 * IPv6 header's 40, no more. */
static __always_inline int np_btf_ip_addresses(const u8 *ip, u8 src[16], u8 dst[16], u8 *protocol)
{
    if (!ip)
        return 0;
    const u8 *p = np_btf_bytes(ip);
    u8 version = NP_LOAD(u8, p, 0) >> 4;
    if (version == 4) {
        u32 addrs[2] = {NP_LOAD(u32, p, 12), NP_LOAD(u32, p, 16)};
        np_addr_from_v4_words(src, addrs);
        np_addr_from_v4_words(dst, addrs + 1);
        *protocol = NP_LOAD(u8, p, 9);
        return 1;
    }
    if (version == 6) {
        u32 s6[4] = {NP_LOAD(u32, p, 8), NP_LOAD(u32, p, 12), NP_LOAD(u32, p, 16), NP_LOAD(u32, p, 20)};
        u32 d6[4] = {NP_LOAD(u32, p, 24), NP_LOAD(u32, p, 28), NP_LOAD(u32, p, 32), NP_LOAD(u32, p, 36)};
        np_addr_copy_words(src, s6);
        np_addr_copy_words(dst, d6);
        *protocol = NP_LOAD(u8, p, 6);
        return 1;
    }
    return 0;
}
#endif

#ifdef NP_ATTACH_TP_BTF
/* A typed pointer's address as a number (to hash it): the verifier refuses
 * any arithmetic but + and - on a pointer. Stored in a map and loaded back
 * (volatile: really loaded), it is a number; an array lookup is inlined. */
BPF_PERCPU_ARRAY(np_scratch, u64, 1);

static __always_inline u64 np_address_of(const void *p)
{
    u32 zero = 0;
    volatile u64 *scratch = np_scratch.lookup(&zero);
    if (!scratch)
        return 0;
    *scratch = (u64)p;
    return *scratch;
}
#endif

#if defined(NP_ATTACH_TP_BTF) && defined(OFF_SKC_FAMILY)
static __always_inline int np_btf_sock_addresses(const u8 *sk, struct np_addr_pair *pair)
{
    u16 family = NP_LOAD(u16, sk, OFF_SKC_FAMILY);
    if (family == NP_AF_INET) {
        u32 local = NP_LOAD(u32, sk, OFF_SKC_RCV_SADDR), remote = NP_LOAD(u32, sk, OFF_SKC_DADDR);
        np_addr_from_v4_words(pair->local, &local);
        np_addr_from_v4_words(pair->remote, &remote);
        return 1;
    }
    if (family == NP_AF_INET6) {
        u32 local[4] = {NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR), NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR + 4),
                        NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR + 8), NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR + 12)};
        u32 remote[4] = {NP_LOAD(u32, sk, OFF_SKC_V6_DADDR), NP_LOAD(u32, sk, OFF_SKC_V6_DADDR + 4),
                         NP_LOAD(u32, sk, OFF_SKC_V6_DADDR + 8), NP_LOAD(u32, sk, OFF_SKC_V6_DADDR + 12)};
        np_addr_copy_words(pair->local, local);
        np_addr_copy_words(pair->remote, remote);
        return 1;
    }
    return 0;
}
#endif

#if defined(NP_ATTACH_TP_BTF) && defined(OFF_SKC_FAMILY)
/* The same into an address pair as four u64 words (a front-cache key): built
 * in registers, 8 bytes at a time, so the key is hashed and compared without
 * reading back narrower stores. */
static __always_inline int np_btf_sock_address_words(const u8 *sk, u64 words[4])
{
    u16 family = NP_LOAD(u16, sk, OFF_SKC_FAMILY);
    if (family == NP_AF_INET) {
        words[0] = 0;
        words[1] = 0xffff0000ULL | (u64)NP_LOAD(u32, sk, OFF_SKC_RCV_SADDR) << 32;
        words[2] = 0;
        words[3] = 0xffff0000ULL | (u64)NP_LOAD(u32, sk, OFF_SKC_DADDR) << 32;
        return 1;
    }
    if (family == NP_AF_INET6) {
#if OFF_SKC_V6_RCV_SADDR % 8 == 0 && OFF_SKC_V6_DADDR % 8 == 0
        words[0] = NP_LOAD(u64, sk, OFF_SKC_V6_RCV_SADDR);
        words[1] = NP_LOAD(u64, sk, OFF_SKC_V6_RCV_SADDR + 8);
        words[2] = NP_LOAD(u64, sk, OFF_SKC_V6_DADDR);
        words[3] = NP_LOAD(u64, sk, OFF_SKC_V6_DADDR + 8);
#else
        words[0] = NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR) | (u64)NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR + 4) << 32;
        words[1] = NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR + 8) | (u64)NP_LOAD(u32, sk, OFF_SKC_V6_RCV_SADDR + 12) << 32;
        words[2] = NP_LOAD(u32, sk, OFF_SKC_V6_DADDR) | (u64)NP_LOAD(u32, sk, OFF_SKC_V6_DADDR + 4) << 32;
        words[3] = NP_LOAD(u32, sk, OFF_SKC_V6_DADDR + 8) | (u64)NP_LOAD(u32, sk, OFF_SKC_V6_DADDR + 12) << 32;
#endif
        return 1;
    }
    return 0;
}
#endif

#if defined(NP_ATTACH_TP_BTF) && defined(OFF_SKB_HEAD) && defined(OFF_SKB_NETWORK_HEADER)
static __always_inline const u8 *np_btf_skb_network_header(const u8 *skb)
{
    const u8 *head = NP_LOAD_PTR(skb, OFF_SKB_HEAD);
    u16 network_header = NP_LOAD(u16, skb, OFF_SKB_NETWORK_HEADER);
    return head ? head + network_header : 0;
}
#endif

/* The IP header of an sk_buff (head + network_header, one window read) and
 * the addresses in it, for programs that get the sk_buff pointer. Needs the
 * BTF offsets OFF_SKB_HEAD and OFF_SKB_NETWORK_HEADER. */
#if defined(OFF_SKB_HEAD) && defined(OFF_SKB_NETWORK_HEADER)
#define NP_SKB_NH_LO NP_MIN(OFF_SKB_NETWORK_HEADER, OFF_SKB_HEAD)
#define NP_SKB_NH_HI NP_MAX(OFF_SKB_NETWORK_HEADER + 2, OFF_SKB_HEAD + 8)

static __always_inline const u8 *np_skb_network_header(const u8 *skb)
{
    const u8 *head = 0;
    u16 network_header = 0;
#if NP_SKB_NH_HI - NP_SKB_NH_LO <= NP_WINDOW_MAX
    u8 win[NP_SKB_NH_HI - NP_SKB_NH_LO];
    if (bpf_probe_read_kernel(win, sizeof(win), skb + NP_SKB_NH_LO))
        return 0;
    __builtin_memcpy(&head, win + OFF_SKB_HEAD - NP_SKB_NH_LO, sizeof(head));
    __builtin_memcpy(&network_header, win + OFF_SKB_NETWORK_HEADER - NP_SKB_NH_LO, sizeof(network_header));
#else
    bpf_probe_read_kernel(&head, sizeof(head), skb + OFF_SKB_HEAD);
    bpf_probe_read_kernel(&network_header, sizeof(network_header), skb + OFF_SKB_NETWORK_HEADER);
#endif
    return head ? head + network_header : 0;
}

/* Source and destination of the IPv4 or IPv6 header at ip, and the
 * protocol it carries (IPv4 protocol, IPv6 next header); 0 if neither family.
 * One read of 40 bytes covers both families' addresses (IPv4: 12..20,
 * IPv6: 8..40); a buffer that ends before 40 bytes (a tiny IPv4 datagram at
 * the end of a page) is read again with the IPv4 header's size. */
static __always_inline int np_ip_addresses(const u8 *ip, u8 src[16], u8 dst[16], u8 *protocol)
{
    u32 hdr[10];                /* words: the addresses are copied a word at a time */
    u8 *bytes = (u8 *)hdr;

    if (!ip)
        return 0;
    int whole = bpf_probe_read_kernel(hdr, sizeof(hdr), ip) == 0;
    if (!whole && bpf_probe_read_kernel(hdr, 20, ip))
        return 0;
    /* both protocol bytes loaded before the branch: otherwise clang picks the
     * byte's address by or-ing into the stack pointer, which the verifier refuses */
    u8 version = bytes[0] >> 4, protocol4 = ((volatile u8 *)bytes)[9], protocol6 = ((volatile u8 *)bytes)[6];
    if (version == 4) {
        np_addr_from_v4_words(src, hdr + 3);        /* bytes 12..16 */
        np_addr_from_v4_words(dst, hdr + 4);        /* bytes 16..20 */
        *protocol = protocol4;
        return 1;
    }
    if (version == 6 && whole) {
        np_addr_copy_words(src, hdr + 2);           /* bytes 8..24 */
        np_addr_copy_words(dst, hdr + 6);           /* bytes 24..40 */
        *protocol = protocol6;
        return 1;
    }
    return 0;
}

/* The reader of an IP header's addresses in tp_btf functions: with loads
 * where the kernel allows them (np_btf_ip_addresses), else with the helper;
 * in objects of the other attach modes, np_ip_addresses. */
#ifdef NP_BTF_BYTES
#define NP_BTF_IP_ADDRESSES np_btf_ip_addresses
#else
#define NP_BTF_IP_ADDRESSES np_ip_addresses
#endif
#endif /* OFF_SKB_HEAD && OFF_SKB_NETWORK_HEADER */

#ifdef NP_SAMPLE_EVERY
/* sample_every (the option of programs that observe a distribution): 1 if
 * this event is skipped. Each event is observed with probability
 * 1/NP_SAMPLE_EVERY by a pseudo-random draw, which does not depend on the
 * value observed, so the histogram is a uniform subsample. A counter (one in
 * N) would lock onto the same member of a periodic pattern: the same
 * connection of two served in turn, the same packet of each exchange. */
static __always_inline int np_sample_skip(void)
{
#if NP_SAMPLE_EVERY > 1
    return bpf_get_prandom_u32() % NP_SAMPLE_EVERY != 0;
#else
    return 0;
#endif
}
#endif

/* The log2 slot of v: the smallest s with v <= 2^s, capped at NP_MAX_SLOT. */
static __always_inline u32 np_log2_slot(u64 v)
{
    if (v <= 1)
        return 0;
    v -= 1;                      /* now: bit length of v is the answer */
    u32 bits = 0, shift;
    shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; bits |= shift;
    shift = (v > 0xFFFF) << 4;        v >>= shift; bits |= shift;
    shift = (v > 0xFF) << 3;          v >>= shift; bits |= shift;
    shift = (v > 0xF) << 2;           v >>= shift; bits |= shift;
    shift = (v > 0x3) << 1;           v >>= shift; bits |= shift;
    bits |= (v >> 1);                /* bits = floor(log2(v)) */
    bits += 1;
    return bits > NP_MAX_SLOT ? NP_MAX_SLOT : bits;
}

/* Front caches: a per-CPU, direct-mapped array of (key, value) entries in
 * front of a per-CPU hash, for maps updated per packet or per connection
 * (MapInfo(front=True) in the program's description). An event whose key
 * is in its slot adds to the entry in place (an inlined array lookup and a
 * key compare: no hash of the key in the kernel's map code, no bucket walk,
 * no lock); a key that finds another in its slot takes the slot over and
 * moves the other's counts into the hash. User space reads the hash first,
 * then the fronts of every CPU, and adds them up. A takeover clears the
 * entry's value, then writes the new key, then the new value, and only then
 * adds the old counts to the hash (np_barrier() keeps the stores in that
 * order): a read that falls between misses the old counts until the next
 * scrape but never counts them twice or under the new key; at worst a copy
 * torn by a takeover shows the new key's first event under the old key.
 * The collector never lets a counter read lower than at its last scrape.
 * Keys are compared and hashed 8 bytes at a time (below). BCC rewrites map
 * calls only in the program's own file, so a program does the two map
 * calls itself and np_front_add the rest:
 *     u32 index = np_front_index((const u64 *)&key, NP_WORDS(key));
 *     struct x_front *front = x_front.lookup(&index);
 *     struct x_front old;
 *     u64 add[N] = {...};             (N: the value's words)
 *     if (front && np_front_add((u64 *)front, (const u64 *)&key, NP_WORDS(key),
 *                               add, N, (u64 *)&old))
 *         ... add old.value to x at old.key (the counting idiom below) ...
 * where struct x_front is { key; value; }, both made of u64 words. */
#ifndef NP_FRONT_ENTRIES_LOG2
#define NP_FRONT_ENTRIES_LOG2 8 /* the program's front_cache_log2 option */
#endif
#define NP_FRONT_ENTRIES (1 << NP_FRONT_ENTRIES_LOG2)   /* per CPU */

/* A multiplicative hash: a product's bits depend only on the factors' lower
 * bits, so the high half is folded down before the last multiply (keys that
 * differ only in an address's last byte, the top byte of a word, must not
 * share a slot) and the index is the product's top bits. Keys are read 8
 * bytes at a time: a key on the stack is declared NP_FRONT_KEY (aligned),
 * and its size is a multiple of 8 with the padding zeroed. */
#define NP_FRONT_KEY __attribute__((aligned(8)))
#define np_barrier() asm volatile("" ::: "memory")
#define NP_WORDS(type) (sizeof(type) / 8)
#define NP_GOLDEN 0x9E3779B97F4A7C15ULL

static __always_inline u32 np_front_index(const u64 *key, const int words)
{
    u64 h = 0;
#pragma unroll
    for (int i = 0; i < words; i++)
        h = (h ^ key[i]) * NP_GOLDEN;
    h ^= h >> 32;
    h *= NP_GOLDEN;
    return NP_FRONT_ENTRIES_LOG2 ? h >> (64 - NP_FRONT_ENTRIES_LOG2) : 0;
}

static __always_inline int np_front_same(const u64 *a, const u64 *b, const int words)
{
    u64 diff = 0;
#pragma unroll
    for (int i = 0; i < words; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

/* The front entry `entry` (key_words of key, then value_words of value):
 * add[] is added to its value if it holds `key`; else the entry is taken
 * over in the order above and what it held is copied to `old` (key, then
 * value). Returns 1 when `old` has counts the caller must move to the hash.
 * Values are u64 words added modulo 2^64, so a signed count (a gauge's
 * -1) adds as its two's complement. */
static __always_inline int np_front_add(u64 *entry, const u64 *key, const int key_words, const u64 *add,
                                        const int value_words, u64 *old)
{
    u64 *value = entry + key_words;
    if (np_front_same(entry, key, key_words)) {
#pragma unroll
        for (int i = 0; i < value_words; i++)
            value[i] += add[i];
        return 0;
    }
    u64 held = 0;
#pragma unroll
    for (int i = 0; i < key_words + value_words; i++)
        old[i] = entry[i];
#pragma unroll
    for (int i = 0; i < value_words; i++) {
        held |= value[i];
        value[i] = 0;
    }
    np_barrier();
#pragma unroll
    for (int i = 0; i < key_words; i++)
        entry[i] = key[i];
    np_barrier();
#pragma unroll
    for (int i = 0; i < value_words; i++)
        value[i] = add[i];
    np_barrier();
    return held != 0;
}

/* Counting idiom (BCC allows no map calls inside macros or included
 * headers, so each program spells it out):
 *     u64 zero = 0, *v = map.lookup_or_try_init(&key, &zero);
 *     if (v) *v += 1; else np_map_error(ERR_MAP);
 * lookup_or_try_init inserts with BPF_NOEXIST and looks up again, so two
 * CPUs creating the same key never overwrite each other's counts. A
 * histogram sets key.slot = np_log2_slot(value) and adds 1 and value to the
 * np_hist_value found there. */

#endif /* NETPROBE_H */
