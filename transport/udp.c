/* One UDP socket on a libuv loop: see transport/udp.h.
 *
 * Receive. libuv reads with recvmmsg (UV_UDP_RECVMMSG) into one buffer that
 * alloc_cb hands out again and again: recv_batch slots of 64 KiB, because
 * libuv carves its buffer into 64 KiB slots (one per datagram, so nothing is
 * ever truncated by the OS) and reads at most 20 slots per call in 1.44.
 * libuv hands every chunk of a batch to on_recv before it asks for a buffer
 * again, and on_recv keeps no pointer into it, so one buffer is enough.
 * Starvation: libuv bounds one poll event of a busy socket to about 32
 * datagrams (it stops reading once 32 have come in, so at most 32 + 19), then
 * returns to the loop; tests/test_udp.c checks that bound.
 *
 * Send. Datagrams are copied into a ring of fixed-size slots that grows by
 * doubling up to send_queue_max, so steady traffic does no malloc. A flush
 * builds up to MMSG_BATCH messages for one sendmmsg(2) on the raw fd; with
 * GSO, a run of same-destination datagrams of one size (the last may be
 * shorter) becomes one message whose iovecs are the slots and whose
 * UDP_SEGMENT cmsg tells the kernel where to cut. EAGAIN leaves the rest
 * queued for the next iteration (a 1 ms timer makes sure there is one).
 *
 * Impairment. A datagram offered to a tern_netsim_link carries its address
 * in a trailer (payload | address | family tag), so duplicates, reordering
 * and loss need no side table. The model's corruption is switched off and
 * applied here, to the payload only, when a datagram is released: a flipped
 * address bit would send it somewhere else. The trailer's 7 (IPv4) or 23
 * (IPv6) bytes count against the model's rate and queue, like a small tunnel
 * header. One uv_timer fires at the earliest release of either link. */
#define _GNU_SOURCE /* sendmmsg, struct mmsghdr, SO_*BUFFORCE, IPV6_TCLASS */

#include "transport/udp.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>

#include "common/mem.h"
#include "tern/error.h"

#define MMSG_BATCH 64u /* messages per sendmmsg */
#define IOV_POOL 1024u /* datagrams per sendmmsg: the kernel's UIO_MAXIOV */
/* UDP_MAX_SEGMENTS until Linux raised it to 128; 64 works on every kernel
 * with UDP_SEGMENT. */
#define GSO_MAX_SEGS 64u
#define UV_SLOT 65536u /* libuv's recvmmsg slot size */
#define INITIAL_SLOTS 64u
#define RETRY_MS 1u
#define TRAILER_V4 7u  /* port 2, address 4, tag 1 */
#define TRAILER_V6 23u /* port 2, address 16, scope 4, tag 1 */
#define TRAILER_MAX TRAILER_V6
#define NEVER UINT64_MAX

enum { H_UDP = 1, H_PREPARE = 2, H_CHECK = 4, H_TIMER = 8 };

typedef union udp_addr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} udp_addr;

typedef struct qmeta {
    size_t len;
    socklen_t addrlen;
    udp_addr to;
} qmeta;

typedef struct impair {
    tern_netsim_link *link;
    double corrupt; /* applied here, not by the link */
    uint64_t rng;
    uint64_t corrupted;
} impair;

struct tern_udp {
    tern_mem mem;
    uv_loop_t *loop;
    uv_udp_t udp;
    uv_prepare_t prepare;
    uv_check_t check;
    uv_timer_t timer;
    tern_udp_recv_fn recv;
    void *user;
    tern_udp_config cfg; /* defaults resolved; the impair pointers are not kept */
    int family;
    int fd;
    bool gso; /* UDP_SEGMENT in use now */
    bool closing;
    bool blocked;  /* the last flush stopped at EAGAIN */
    bool reserved; /* send_reserve() handed out space not yet committed */
    unsigned live; /* H_* handles initialised */
    unsigned closes_left;
    void (*close_cb)(void *arg);
    void *close_arg;
    int last_uv_err;
    tern_ms timer_due; /* NEVER: timer not armed */

    /* The send queue: a ring of cap slots of stride bytes, `count` datagrams
     * from `head`. */
    uint8_t *slots;
    qmeta *meta;
    size_t stride;
    uint32_t cap, head, count;

    /* sendmmsg scratch, sized once. */
    struct mmsghdr msgs[MMSG_BATCH];
    uint32_t segs[MMSG_BATCH]; /* datagrams in each message */
    struct iovec iov[IOV_POOL];
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(uint16_t))];
    } cmsg[MMSG_BATCH];

    uint8_t *rbuf; /* libuv's receive buffer */
    size_t rbuf_len;

    /* Impairment buffers, each max_datagram + TRAILER_MAX: sbuf packs sends
     * (and is the reserved space), xsend takes released sends, rpack packs
     * receives, xrecv takes released receives. Kept apart so a recv callback
     * that sends or flushes never overwrites the data it was given. */
    impair isend, irecv;
    uint8_t *sbuf, *xsend, *rpack, *xrecv;

    tern_udp_stats stats;
    tern_udp_tap_fn tap; /* test hook: tern_udp_set_send_tap() */
    void *tap_user;
};

/* ---- small helpers ---- */

static uint64_t mix_next(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* libuv's errors on Unix are negative errno values. */
static int map_uv(tern_udp *u, int uv_err)
{
    u->last_uv_err = uv_err;
    switch (uv_err) {
    case UV_ENOMEM:
    case UV_ENOBUFS:
        return TERN_ERR_NOMEM;
    case UV_EINVAL:
    case UV_EAFNOSUPPORT:
        return TERN_ERR_INVAL;
    default:
        return TERN_ERR_IO;
    }
}

static uint8_t *slot_at(const tern_udp *u, uint32_t i)
{
    return u->slots + (size_t)((u->head + i) % u->cap) * u->stride;
}

static qmeta *meta_at(const tern_udp *u, uint32_t i)
{
    return &u->meta[(u->head + i) % u->cap];
}

/* ---- addresses ---- */

/* Validates a destination and copies it with zeroed padding, so that two
 * destinations compare with memcmp. An IPv4 destination on a dual-stack
 * IPv6 socket becomes IPv4-mapped. */
static int dest_check(const tern_udp *u, const struct sockaddr *to, udp_addr *out, socklen_t *alen)
{
    if (!to)
        return TERN_ERR_INVAL;
    memset(out, 0, sizeof(*out));
    if (to->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, to, sizeof(in));
        if (in.sin_port == 0)
            return TERN_ERR_INVAL;
        if (u->family == AF_INET) {
            out->in4.sin_family = AF_INET;
            out->in4.sin_port = in.sin_port;
            out->in4.sin_addr = in.sin_addr;
            *alen = sizeof(out->in4);
            return 0;
        }
        if (u->cfg.v6only)
            return TERN_ERR_INVAL;
        out->in6.sin6_family = AF_INET6;
        out->in6.sin6_port = in.sin_port;
        out->in6.sin6_addr.s6_addr[10] = 0xff;
        out->in6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&out->in6.sin6_addr.s6_addr[12], &in.sin_addr, 4);
        *alen = sizeof(out->in6);
        return 0;
    }
    if (to->sa_family == AF_INET6 && u->family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, to, sizeof(in6));
        if (in6.sin6_port == 0)
            return TERN_ERR_INVAL;
        out->in6.sin6_family = AF_INET6;
        out->in6.sin6_port = in6.sin6_port;
        out->in6.sin6_flowinfo = in6.sin6_flowinfo;
        out->in6.sin6_addr = in6.sin6_addr;
        out->in6.sin6_scope_id = in6.sin6_scope_id;
        *alen = sizeof(out->in6);
        return 0;
    }
    return TERN_ERR_INVAL;
}

/* Appends the address trailer at p; returns its length. */
static size_t trailer_pack(uint8_t *p, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof(in));
        memcpy(p, &in.sin_port, 2);
        memcpy(p + 2, &in.sin_addr, 4);
        p[6] = 4;
        return TRAILER_V4;
    }
    struct sockaddr_in6 in6;
    memcpy(&in6, sa, sizeof(in6));
    memcpy(p, &in6.sin6_port, 2);
    memcpy(p + 2, &in6.sin6_addr, 16);
    memcpy(p + 18, &in6.sin6_scope_id, 4);
    p[22] = 6;
    return TRAILER_V6;
}

/* Splits a released datagram into payload length and address. false if the
 * trailer is not one this layer wrote (it always is: the model cannot touch
 * it, corruption being applied here). */
static bool trailer_unpack(const uint8_t *buf, size_t n, udp_addr *a, socklen_t *alen, size_t *len)
{
    memset(a, 0, sizeof(*a));
    if (n >= TRAILER_V4 && buf[n - 1] == 4) {
        const uint8_t *p = buf + n - TRAILER_V4;
        a->in4.sin_family = AF_INET;
        memcpy(&a->in4.sin_port, p, 2);
        memcpy(&a->in4.sin_addr, p + 2, 4);
        *alen = sizeof(a->in4);
        *len = n - TRAILER_V4;
        return true;
    }
    if (n >= TRAILER_V6 && buf[n - 1] == 6) {
        const uint8_t *p = buf + n - TRAILER_V6;
        a->in6.sin6_family = AF_INET6;
        memcpy(&a->in6.sin6_port, p, 2);
        memcpy(&a->in6.sin6_addr, p + 2, 16);
        memcpy(&a->in6.sin6_scope_id, p + 18, 4);
        *alen = sizeof(a->in6);
        *len = n - TRAILER_V6;
        return true;
    }
    return false;
}

/* ---- impairment ---- */

static int impair_init(impair *imp, const tern_netsim_cfg *cfg, uint64_t seed, uint64_t rng,
                       const tern_mem *mem)
{
    tern_netsim_cfg c = *cfg;
    imp->corrupt = c.corrupt;
    imp->rng = rng;
    c.corrupt = 0.0;
    return tern_netsim_link_new(&imp->link, &c, seed, mem);
}

/* One bit of the payload, with the configured probability, per copy. */
static void maybe_corrupt(impair *imp, uint8_t *data, size_t len)
{
    if (imp->corrupt <= 0.0 || len == 0)
        return;
    if ((double)(mix_next(&imp->rng) >> 11) * 0x1.0p-53 >= imp->corrupt)
        return;
    uint64_t bit = mix_next(&imp->rng) % ((uint64_t)len * 8);
    data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    imp->corrupted++;
}

static void update_timer(tern_udp *u);

/* Offers len bytes at buf (data copied there first unless it is already
 * there) with addr's trailer. */
static int impair_offer(tern_udp *u, impair *imp, uint8_t *buf, const uint8_t *data, size_t len,
                        const struct sockaddr *addr)
{
    if (len && data != buf)
        memcpy(buf, data, len);
    size_t n = len + trailer_pack(buf + len, addr);
    int rc = tern_netsim_link_send(imp->link, buf, n, uv_now(u->loop));
    if (rc < 0) {
        u->stats.impair_errors++;
        return rc;
    }
    update_timer(u);
    return 0;
}

/* ---- the send queue ---- */

/* Makes room for one more datagram at the tail: 0, TERN_ERR_WOULDBLOCK at
 * send_queue_max, or TERN_ERR_NOMEM. Growing moves the slots, so it happens
 * only here, never while a reserved slot is outstanding (reserve calls this
 * and commit does not). */
static int queue_room(tern_udp *u)
{
    if (u->count < u->cap)
        return 0;
    if (u->cap >= u->cfg.send_queue_max)
        return TERN_ERR_WOULDBLOCK;
    uint32_t cap = u->cap ? u->cap * 2 : INITIAL_SLOTS;
    if (cap > u->cfg.send_queue_max)
        cap = (uint32_t)u->cfg.send_queue_max;
    uint8_t *slots = tern_mem_calloc(&u->mem, cap, u->stride);
    qmeta *meta = tern_mem_calloc(&u->mem, cap, sizeof(*meta));
    if (!slots || !meta) {
        tern_mem_free(&u->mem, slots);
        tern_mem_free(&u->mem, meta);
        return TERN_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < u->count; i++) {
        memcpy(slots + (size_t)i * u->stride, slot_at(u, i), meta_at(u, i)->len);
        meta[i] = *meta_at(u, i);
    }
    tern_mem_free(&u->mem, u->slots);
    tern_mem_free(&u->mem, u->meta);
    u->slots = slots;
    u->meta = meta;
    u->cap = cap;
    u->head = 0;
    return 0;
}

static void commit_tail(tern_udp *u, size_t len, const udp_addr *to, socklen_t alen)
{
    qmeta *m = meta_at(u, u->count);
    m->len = len;
    m->addrlen = alen;
    m->to = *to;
    u->count++;
}

static int enqueue(tern_udp *u, const uint8_t *data, size_t len, const udp_addr *to, socklen_t alen)
{
    int rc = queue_room(u);
    if (rc < 0) {
        u->stats.send_dropped++;
        return rc;
    }
    if (len)
        memcpy(slot_at(u, u->count), data, len);
    commit_tail(u, len, to, alen);
    return 0;
}

/* Moves every datagram the send impairment has due into the queue. */
static void release_send(tern_udp *u, tern_ms now)
{
    size_t cap = u->cfg.max_datagram + TRAILER_MAX;
    tern_ssize n;
    while ((n = tern_netsim_link_recv(u->isend.link, u->xsend, cap, now)) > 0) {
        udp_addr to;
        socklen_t alen;
        size_t len;
        if (!trailer_unpack(u->xsend, (size_t)n, &to, &alen, &len))
            continue;
        maybe_corrupt(&u->isend, u->xsend, len);
        (void)enqueue(u, u->xsend, len, &to, alen); /* a drop is counted */
    }
}

static bool same_dest(const qmeta *a, const qmeta *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->to, &b->to, a->addrlen) == 0;
}

/* Fills msgs/iov from the head of the queue; returns the message count. */
static uint32_t build_batch(tern_udp *u)
{
    uint32_t nmsg = 0, niov = 0, i = 0;
    while (i < u->count && nmsg < MMSG_BATCH && niov < IOV_POOL) {
        qmeta *first = meta_at(u, i);
        uint32_t segs = 1;
        if (u->gso && first->len > 0) {
            size_t total = first->len;
            while (i + segs < u->count && segs < GSO_MAX_SEGS && niov + segs < IOV_POOL) {
                const qmeta *m = meta_at(u, i + segs);
                if (m->len == 0 || m->len > first->len || total + m->len > TERN_UDP_MAX_DATAGRAM ||
                    !same_dest(first, m))
                    break;
                total += m->len;
                segs++;
                if (m->len < first->len)
                    break; /* only the last segment may be shorter */
            }
        }
        for (uint32_t k = 0; k < segs; k++) {
            u->iov[niov + k].iov_base = slot_at(u, i + k);
            u->iov[niov + k].iov_len = meta_at(u, i + k)->len;
        }
        struct msghdr *h = &u->msgs[nmsg].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &first->to;
        h->msg_namelen = first->addrlen;
        h->msg_iov = &u->iov[niov];
        h->msg_iovlen = segs;
        if (segs > 1) {
            uint16_t gso_size = (uint16_t)first->len;
            memset(&u->cmsg[nmsg], 0, sizeof(u->cmsg[nmsg]));
            h->msg_control = u->cmsg[nmsg].buf;
            h->msg_controllen = sizeof(u->cmsg[nmsg].buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(gso_size));
            memcpy(CMSG_DATA(c), &gso_size, sizeof(gso_size));
        }
        u->segs[nmsg] = segs;
        nmsg++;
        niov += segs;
        i += segs;
    }
    return nmsg;
}

static void pop(tern_udp *u, uint32_t n)
{
    u->head = (u->head + n) % u->cap;
    u->count -= n;
}

/* Counts and removes the first `sent` messages of the last batch. */
static void pop_sent(tern_udp *u, uint32_t sent)
{
    for (uint32_t k = 0; k < sent; k++) {
        uint32_t segs = u->segs[k];
        for (uint32_t s = 0; s < segs; s++)
            u->stats.bytes_out += meta_at(u, s)->len;
        u->stats.dgrams_out += segs;
        u->stats.gso_sends += segs > 1;
        pop(u, segs);
    }
}

static int flush_now(tern_udp *u)
{
    if (u->isend.link)
        release_send(u, uv_now(u->loop));
    bool was_blocked = u->blocked;
    u->blocked = false;
    while (u->count) {
        uint32_t nmsg = build_batch(u);
        int sent;
        do {
            u->stats.send_syscalls++;
            sent = sendmmsg(u->fd, u->msgs, nmsg, MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        if (sent > 0) {
            pop_sent(u, (uint32_t)sent);
            continue;
        }
        int e = sent == 0 ? EAGAIN : errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
            /* Kept queued; new sends beyond send_queue_max are dropped. */
            u->blocked = true;
            u->stats.send_blocked++;
            update_timer(u);
            return TERN_ERR_AGAIN;
        }
        u->last_uv_err = -e;
        if ((e == EIO || e == EINVAL) && u->segs[0] > 1) {
            /* Segmentation refused (EIO: the route's device cannot checksum
             * it; EINVAL: a segment beyond what the path or kernel takes):
             * from now on each datagram is its own message. */
            u->gso = false;
            continue;
        }
        /* sendmmsg reports an error only for the first message it tried. */
        u->stats.send_errors += u->segs[0];
        pop(u, u->segs[0]);
    }
    if (was_blocked)
        update_timer(u);
    return 0;
}

/* ---- the timer, the prepare/check pair ---- */

static void release_recv(tern_udp *u, tern_ms now);

static void on_timer(uv_timer_t *t)
{
    tern_udp *u = t->data;
    u->timer_due = NEVER;
    if (u->irecv.link)
        release_recv(u, uv_now(u->loop));
    if (u->closing)
        return;
    (void)flush_now(u);
    update_timer(u);
}

static void update_timer(tern_udp *u)
{
    if (u->closing)
        return;
    tern_ms now = uv_now(u->loop), next = NEVER, t;
    if (u->isend.link && (t = tern_netsim_link_next(u->isend.link)) < next)
        next = t;
    if (u->irecv.link && (t = tern_netsim_link_next(u->irecv.link)) < next)
        next = t;
    if (u->blocked && now + RETRY_MS < next)
        next = now + RETRY_MS;
    if (next == u->timer_due)
        return;
    u->timer_due = next;
    if (next == NEVER)
        uv_timer_stop(&u->timer);
    else
        uv_timer_start(&u->timer, on_timer, next > now ? next - now : 0, 0);
}

static void on_prepare(uv_prepare_t *p)
{
    tern_udp *u = p->data;
    if (!u->closing)
        (void)flush_now(u);
}

static void on_check(uv_check_t *c)
{
    tern_udp *u = c->data;
    if (!u->closing)
        (void)flush_now(u);
}

/* ---- receive ---- */

static void deliver(tern_udp *u, const uint8_t *data, size_t len, const struct sockaddr *from,
                    tern_ms now)
{
    if (u->cfg.filter && !u->cfg.filter(u->cfg.filter_user, data, len, from)) {
        u->stats.filtered++;
        return;
    }
    u->stats.dgrams_delivered++;
    u->recv(u->user, data, len, from, now);
}

static void release_recv(tern_udp *u, tern_ms now)
{
    size_t cap = u->cfg.max_datagram + TRAILER_MAX;
    tern_ssize n;
    while (!u->closing && (n = tern_netsim_link_recv(u->irecv.link, u->xrecv, cap, now)) > 0) {
        udp_addr from;
        socklen_t alen;
        size_t len;
        if (!trailer_unpack(u->xrecv, (size_t)n, &from, &alen, &len))
            continue;
        maybe_corrupt(&u->irecv, u->xrecv, len);
        deliver(u, u->xrecv, len, &from.sa, now);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tern_udp *u = h->data;
    (void)suggested;
    *buf = uv_buf_init((char *)u->rbuf, (unsigned)u->rbuf_len);
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags)
{
    tern_udp *u = h->data;
    if (flags & UV_UDP_MMSG_FREE) {
        /* The end of one recvmmsg batch; the buffer is ours and reused. */
        u->stats.recv_batches++;
        return;
    }
    if (nread < 0) {
        u->stats.recv_errors++;
        u->last_uv_err = (int)nread;
        return;
    }
    /* nread 0 without an address: nothing more to read for now. With one, an
     * empty datagram, delivered as such. */
    if (!addr || u->closing)
        return;
    if (!(flags & UV_UDP_MMSG_CHUNK))
        u->stats.recv_batches++; /* a plain recvmsg: one datagram per call */
    size_t len = (size_t)nread;
    u->stats.dgrams_in++;
    u->stats.bytes_in += len;
    if ((flags & UV_UDP_PARTIAL) || len > u->cfg.max_datagram) {
        u->stats.recv_truncated++;
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    if (!u->irecv.link) {
        deliver(u, data, len, addr, uv_now(u->loop));
        return;
    }
    tern_ms now = uv_now(u->loop);
    (void)impair_offer(u, &u->irecv, u->rpack, data, len, addr); /* failures counted */
    release_recv(u, now);
}

/* ---- open and close ---- */

static void free_all(tern_udp *u)
{
    tern_mem mem = u->mem;
    tern_netsim_link_del(u->isend.link);
    tern_netsim_link_del(u->irecv.link);
    tern_mem_free(&mem, u->slots);
    tern_mem_free(&mem, u->meta);
    tern_mem_free(&mem, u->rbuf);
    tern_mem_free(&mem, u->sbuf);
    tern_mem_free(&mem, u->xsend);
    tern_mem_free(&mem, u->rpack);
    tern_mem_free(&mem, u->xrecv);
    tern_mem_free(&mem, u);
}

static void on_closed(uv_handle_t *h)
{
    tern_udp *u = h->data;
    if (--u->closes_left)
        return;
    if (u->close_cb)
        u->close_cb(u->close_arg);
    free_all(u);
}

static void begin_close(tern_udp *u)
{
    u->closing = true;
    u->reserved = false;
    u->closes_left = 0;
    if (u->live & H_UDP) {
        (void)uv_udp_recv_stop(&u->udp);
        uv_close((uv_handle_t *)&u->udp, on_closed);
        u->closes_left++;
    }
    if (u->live & H_PREPARE) {
        uv_close((uv_handle_t *)&u->prepare, on_closed);
        u->closes_left++;
    }
    if (u->live & H_CHECK) {
        uv_close((uv_handle_t *)&u->check, on_closed);
        u->closes_left++;
    }
    if (u->live & H_TIMER) {
        uv_close((uv_handle_t *)&u->timer, on_closed);
        u->closes_left++;
    }
    u->live = 0;
}

void tern_udp_config_default(tern_udp_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->dscp = -1;
    cfg->recv_batch = TERN_UDP_DEFAULT_RECV_BATCH;
    cfg->max_datagram = TERN_UDP_DEFAULT_MAX_DATAGRAM;
    cfg->send_queue_max = TERN_UDP_DEFAULT_SEND_QUEUE;
    cfg->gso = true;
}

static int resolve_config(tern_udp_config *c, const tern_udp_config *in)
{
    if (in)
        *c = *in;
    else
        tern_udp_config_default(c);
    if (c->sndbuf < 0 || c->rcvbuf < 0 || c->dscp < -1 || c->dscp > 63)
        return TERN_ERR_INVAL;
    if (!c->recv_batch)
        c->recv_batch = TERN_UDP_DEFAULT_RECV_BATCH;
    if (!c->max_datagram)
        c->max_datagram = TERN_UDP_DEFAULT_MAX_DATAGRAM;
    if (!c->send_queue_max)
        c->send_queue_max = TERN_UDP_DEFAULT_SEND_QUEUE;
    if (c->recv_batch > TERN_UDP_MAX_RECV_BATCH || c->max_datagram > TERN_UDP_MAX_DATAGRAM ||
        c->send_queue_max > TERN_UDP_MAX_SEND_QUEUE)
        return TERN_ERR_INVAL;
    int rc = 0;
    if (c->impair_send && (rc = tern_netsim_cfg_check(c->impair_send)) < 0)
        return rc;
    if (c->impair_recv && (rc = tern_netsim_cfg_check(c->impair_recv)) < 0)
        return rc;
    return 0;
}

/* Linux reports twice the size asked for (it adds its bookkeeping); less
 * means net.core.[rw]mem_max capped it, and the privileged FORCE variant
 * may still get it. */
static int set_buffer(tern_udp *u, int opt, int force_opt, int bytes)
{
    if (setsockopt(u->fd, SOL_SOCKET, opt, &bytes, sizeof(bytes)) != 0)
        return -errno;
    int got = 0;
    socklen_t len = sizeof(got);
    if (getsockopt(u->fd, SOL_SOCKET, opt, &got, &len) == 0 && got / 2 < bytes)
        (void)setsockopt(u->fd, SOL_SOCKET, force_opt, &bytes, sizeof(bytes));
    return 0;
}

static int configure_socket(tern_udp *u)
{
    int err;
    if (u->cfg.sndbuf && (err = set_buffer(u, SO_SNDBUF, SO_SNDBUFFORCE, u->cfg.sndbuf)) < 0)
        return err;
    if (u->cfg.rcvbuf && (err = set_buffer(u, SO_RCVBUF, SO_RCVBUFFORCE, u->cfg.rcvbuf)) < 0)
        return err;
    if (u->cfg.dscp >= 0) {
        int tos = u->cfg.dscp << 2;
        if (u->family == AF_INET) {
            if (setsockopt(u->fd, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) != 0)
                return -errno;
        } else {
            if (setsockopt(u->fd, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos)) != 0)
                return -errno;
            /* IPv4-mapped traffic on a dual-stack socket takes IP_TOS. */
            if (!u->cfg.v6only)
                (void)setsockopt(u->fd, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
        }
    }
    return 0;
}

/* getsockopt on UDP_SEGMENT fails (ENOPROTOOPT) on kernels without UDP GSO,
 * which would otherwise ignore the cmsg and send one oversized datagram. */
static bool gso_probe(int fd)
{
    int v = 0;
    socklen_t len = sizeof(v);
    return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &v, &len) == 0;
}

static int alloc_buffers(tern_udp *u)
{
    u->stride = (u->cfg.max_datagram + 15u) & ~(size_t)15u;
    if (u->stride == 0)
        u->stride = 16;
    u->rbuf_len = (size_t)u->cfg.recv_batch * UV_SLOT;
    u->rbuf = tern_mem_alloc(&u->mem, u->rbuf_len);
    if (!u->rbuf)
        return TERN_ERR_NOMEM;
    size_t ibuf = u->cfg.max_datagram + TRAILER_MAX;
    if (u->cfg.impair_send) {
        u->sbuf = tern_mem_alloc(&u->mem, ibuf);
        u->xsend = tern_mem_alloc(&u->mem, ibuf);
        if (!u->sbuf || !u->xsend)
            return TERN_ERR_NOMEM;
    }
    if (u->cfg.impair_recv) {
        u->rpack = tern_mem_alloc(&u->mem, ibuf);
        u->xrecv = tern_mem_alloc(&u->mem, ibuf);
        if (!u->rpack || !u->xrecv)
            return TERN_ERR_NOMEM;
    }
    /* Two link seeds and two corruption streams from the one seed. */
    uint64_t s = u->cfg.impair_seed;
    uint64_t send_seed = mix_next(&s), recv_seed = mix_next(&s);
    uint64_t send_rng = mix_next(&s), recv_rng = mix_next(&s);
    int rc;
    if (u->cfg.impair_send &&
        (rc = impair_init(&u->isend, u->cfg.impair_send, send_seed, send_rng, &u->mem)) < 0)
        return rc;
    if (u->cfg.impair_recv &&
        (rc = impair_init(&u->irecv, u->cfg.impair_recv, recv_seed, recv_rng, &u->mem)) < 0)
        return rc;
    u->cfg.impair_send = NULL;
    u->cfg.impair_recv = NULL;
    return 0;
}

/* Creates the handles, configures and binds; on failure the caller closes
 * whatever is in u->live. */
static int start(tern_udp *u, const struct sockaddr *bind)
{
    int err = uv_udp_init_ex(u->loop, &u->udp, (unsigned)u->family | UV_UDP_RECVMMSG);
    if (err)
        return map_uv(u, err);
    u->live |= H_UDP;
    u->udp.data = u;
    if ((err = uv_prepare_init(u->loop, &u->prepare)) != 0)
        return map_uv(u, err);
    u->live |= H_PREPARE;
    u->prepare.data = u;
    if ((err = uv_check_init(u->loop, &u->check)) != 0)
        return map_uv(u, err);
    u->live |= H_CHECK;
    u->check.data = u;
    if ((err = uv_timer_init(u->loop, &u->timer)) != 0)
        return map_uv(u, err);
    u->live |= H_TIMER;
    u->timer.data = u;
    /* The socket keeps the loop alive while it receives; the helpers must
     * not keep it alive on their own. */
    uv_unref((uv_handle_t *)&u->prepare);
    uv_unref((uv_handle_t *)&u->check);
    uv_unref((uv_handle_t *)&u->timer);

    uv_os_fd_t fd;
    if ((err = uv_fileno((const uv_handle_t *)&u->udp, &fd)) != 0)
        return map_uv(u, err);
    u->fd = fd;
    if ((err = configure_socket(u)) < 0)
        return map_uv(u, err);
    unsigned flags = u->family == AF_INET6 && u->cfg.v6only ? UV_UDP_IPV6ONLY : 0;
    if ((err = uv_udp_bind(&u->udp, bind, flags)) != 0)
        return map_uv(u, err);
    if ((err = uv_udp_recv_start(&u->udp, on_alloc, on_recv)) != 0)
        return map_uv(u, err);
    if ((err = uv_prepare_start(&u->prepare, on_prepare)) != 0 ||
        (err = uv_check_start(&u->check, on_check)) != 0)
        return map_uv(u, err);
    u->gso = u->cfg.gso && gso_probe(u->fd);
    return 0;
}

int tern_udp_open_ex(tern_udp **out, uv_loop_t *loop, const struct sockaddr *bind,
                     const tern_udp_config *cfg, tern_udp_recv_fn recv, void *user,
                     const tern_mem *mem, int *uv_err)
{
    if (uv_err)
        *uv_err = 0;
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!loop || !bind || !recv || (bind->sa_family != AF_INET && bind->sa_family != AF_INET6))
        return TERN_ERR_INVAL;
    tern_udp_config c;
    int rc = resolve_config(&c, cfg);
    if (rc < 0)
        return rc;

    tern_mem m;
    tern_mem_init(&m, mem);
    tern_udp *u = tern_mem_calloc(&m, 1, sizeof(*u));
    if (!u)
        return TERN_ERR_NOMEM;
    u->mem = m;
    u->loop = loop;
    u->recv = recv;
    u->user = user;
    u->cfg = c;
    u->family = bind->sa_family;
    u->fd = -1;
    u->timer_due = NEVER;
    if ((rc = alloc_buffers(u)) < 0) {
        free_all(u);
        return rc;
    }
    if ((rc = start(u, bind)) < 0) {
        if (uv_err)
            *uv_err = u->last_uv_err;
        if (u->live)
            begin_close(u); /* frees u once libuv has closed the handles */
        else
            free_all(u);
        return rc;
    }
    *out = u;
    return 0;
}

int tern_udp_open(tern_udp **out, uv_loop_t *loop, const struct sockaddr *bind,
                  const tern_udp_config *cfg, tern_udp_recv_fn recv, void *user,
                  const tern_mem *mem)
{
    return tern_udp_open_ex(out, loop, bind, cfg, recv, user, mem, NULL);
}

void tern_udp_close(tern_udp *u, void (*cb)(void *arg), void *arg)
{
    if (!u || u->closing)
        return;
    (void)flush_now(u);
    u->close_cb = cb;
    u->close_arg = arg;
    begin_close(u);
}

/* ---- sending ---- */

static int send_prepared(tern_udp *u, const uint8_t *data, size_t len, const struct sockaddr *to,
                         bool in_slot)
{
    if (len > u->cfg.max_datagram)
        return TERN_ERR_MSGSIZE;
    if (len && !data)
        return TERN_ERR_INVAL;
    udp_addr a;
    socklen_t alen;
    int rc = dest_check(u, to, &a, &alen);
    if (rc < 0)
        return rc;
    if (u->tap && !u->tap(u->tap_user, data, len, &a.sa))
        return 0;
    if (u->isend.link)
        return impair_offer(u, &u->isend, u->sbuf, data, len, &a.sa);
    if (in_slot) {
        commit_tail(u, len, &a, alen);
        return 0;
    }
    return enqueue(u, data, len, &a, alen);
}

int tern_udp_send(tern_udp *u, const uint8_t *data, size_t len, const struct sockaddr *to)
{
    if (!u)
        return TERN_ERR_INVAL;
    if (u->closing)
        return TERN_ERR_CLOSED;
    /* A send ends any open reservation: it may take the reserved slot. */
    u->reserved = false;
    return send_prepared(u, data, len, to, false);
}

uint8_t *tern_udp_send_reserve(tern_udp *u)
{
    if (!u || u->closing)
        return NULL;
    if (u->isend.link) {
        u->reserved = true;
        return u->sbuf;
    }
    if (queue_room(u) < 0) {
        u->stats.send_dropped++;
        u->reserved = false;
        return NULL;
    }
    u->reserved = true;
    return slot_at(u, u->count);
}

int tern_udp_send_commit(tern_udp *u, size_t len, const struct sockaddr *to)
{
    if (!u)
        return TERN_ERR_INVAL;
    if (u->closing)
        return TERN_ERR_CLOSED;
    if (!u->reserved)
        return TERN_ERR_STATE;
    u->reserved = false;
    /* The data already sits where it goes: the tail slot, or sbuf. */
    const uint8_t *data = u->isend.link ? u->sbuf : slot_at(u, u->count);
    return send_prepared(u, data, len, to, true);
}

int tern_udp_flush(tern_udp *u)
{
    if (!u)
        return TERN_ERR_INVAL;
    if (u->closing)
        return TERN_ERR_CLOSED;
    return flush_now(u);
}

/* ---- queries ---- */

int tern_udp_local_addr(const tern_udp *u, struct sockaddr_storage *out)
{
    if (!u || !out || u->closing)
        return TERN_ERR_INVAL;
    int len = (int)sizeof(*out);
    memset(out, 0, sizeof(*out));
    int err = uv_udp_getsockname(&u->udp, (struct sockaddr *)out, &len);
    if (err)
        return map_uv((tern_udp *)u, err);
    return 0;
}

void tern_udp_get_stats(const tern_udp *u, tern_udp_stats *out)
{
    if (!out)
        return;
    if (!u) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = u->stats;
    if (u->isend.link) {
        tern_netsim_link_get_stats(u->isend.link, &out->impair_send_stats);
        out->impair_send_stats.corrupted += u->isend.corrupted;
    }
    if (u->irecv.link) {
        tern_netsim_link_get_stats(u->irecv.link, &out->impair_recv_stats);
        out->impair_recv_stats.corrupted += u->irecv.corrupted;
    }
}

int tern_udp_last_uv_error(const tern_udp *u)
{
    return u ? u->last_uv_err : 0;
}

bool tern_udp_gso_active(const tern_udp *u)
{
    return u && u->gso;
}

int tern_udp_fileno(const tern_udp *u)
{
    return u && !u->closing ? u->fd : -1;
}

void tern_udp_set_send_tap(tern_udp *u, tern_udp_tap_fn tap, void *tap_user)
{
    if (!u)
        return;
    u->tap = tap;
    u->tap_user = tap_user;
}
