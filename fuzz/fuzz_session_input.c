/* The transport's datagram entry point, tern_ep_on_datagram(): demux,
 * cookies, handshakes, sessions, channels, streams and reassembly, fed
 * datagrams from a handful of source addresses. A real server endpoint runs
 * on a real libuv loop (bound to 127.0.0.1:0 or [::1]:0), in one of three
 * modes chosen by the first input byte: Noise NK with a fixed key pair,
 * plaintext, or KCP compatibility. The rest of the input is a small program:
 *
 *   RAW     an arbitrary datagram from one of the addresses
 *   INIT    a scripted client starts a valid handshake (its own Noise state
 *           and cookie client), maybe mutated; the server's RESP (or COOKIE
 *           reply, answered at once with the cookie in mac2) is read from
 *           what the endpoint sends, which gives the client its keys
 *   DATA    a scripted client sends frames built from the input (KCP
 *           segments for the control engine, streams and channels, with
 *           sequence numbers that follow what was sent and what the server
 *           sent; unreliable fragments; PING, PONG, CLOSE; raw bytes), sealed
 *           with the keys of the handshake (or in a PLAIN header, or as bare
 *           KCP in compatibility mode), maybe from another address, maybe
 *           mutated after sealing, maybe repeated later (a replay)
 *   ACKS    a scripted client acknowledges what the server sent it
 *   APP     the server application acts: sends on a channel, opens and
 *           writes a stream, shuts down, resets or closes one, closes or
 *           aborts a session
 *   TIME    the clock moves forward (0 ms .. 200 s), and the loop runs
 *   RUN     the loop runs once (UV_RUN_NOWAIT)
 *
 * The server application echoes: stream bytes back on their stream (EOF is
 * answered with a shutdown), channel messages back on their channel.
 *
 * Nothing reaches the network: a test hook on the UDP layer
 * (tern_udp_set_send_tap) takes every datagram the endpoint sends. The
 * loop's clock is the harness's: while an input runs, clock_gettime() on
 * CLOCK_MONOTONIC* answers the virtual time (libuv reads the time through
 * it), so time advances cost nothing and an input replays exactly; the
 * randomness of libsodium is a seeded generator, for the same reason.
 *
 * Invariants, checked after every step: the endpoint's counters never go
 * down; sessions_now <= max_sessions and halfopen_now <= halfopen_max; the
 * memory the endpoint holds (counted through its tern_mem hooks) stays
 * under a fixed cap; every datagram it sends fits the MTU and is of a kind
 * it may send (RESP and COOKIE smaller than an INIT); every DATA packet it
 * sends to a scripted client opens with that client's keys and holds
 * well-formed frames (plain and compatibility output likewise). At the end
 * the endpoint closes, every write callback has run exactly once, and every
 * byte it allocated is freed.
 *
 * Built with -DTERN_FUZZ_TRACE, it prints each step and the final stats. */
#define _GNU_SOURCE /* syscall() */

#include "fuzz_common.h"

#include <netinet/in.h>
#include <sodium.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kcp/codec.h"
#include "tern/crypto.h"
#include "tern/crypto_dos.h"
#include "tern/crypto_packet.h"
#include "transport/internal.h"

#ifdef TERN_FUZZ_TRACE
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif /* TERN_FUZZ_TRACE */

#define START_MS UINT64_C(1000000)
#define MAX_OPS 400
#define RAW_MAX 1500  /* the endpoint's UDP layer takes at most this */
#define CAP_MAX 64    /* datagrams captured between two looks */
#define CLIENTS 4     /* scripted clients */
#define CONVS 12      /* conversations a client keeps state for */
#define KEEP_MAX 1500 /* the datagram kept for a replay */
/* What the endpoint may hold: the UDP layer's 2 MiB receive buffer, and for
 * each of at most 6 sessions 7 engines (control, 4 streams, 2 reliable
 * channels) of 32 segments each way plus 32 KiB queued, stream write
 * queues and reassembly: about 8 MiB. Twice that. */
#define MEM_CAP (16U << 20)
#define MAX_SESSIONS 6
#define HALFOPEN_MAX 4
#define CMD_FORWARD 85U /* the engine's native FORWARD extension */

enum { MODE_NOISE, MODE_PLAIN, MODE_COMPAT };
enum { OP_RAW, OP_INIT, OP_DATA, OP_ACKS, OP_APP, OP_TIME, OP_RUN, N_OPS };

/* ---- the virtual clock ---- */

/* Negative: the real clock. Per thread, so that libFuzzer's own threads
 * keep real time. */
static _Thread_local int64_t virt_ms = -1;

__attribute__((visibility("default"))) int clock_gettime(clockid_t id, struct timespec *ts)
{
    if (virt_ms >= 0 && (id == CLOCK_MONOTONIC || id == CLOCK_MONOTONIC_COARSE ||
                         id == CLOCK_MONOTONIC_RAW || id == CLOCK_BOOTTIME)) {
        ts->tv_sec = (time_t)(virt_ms / 1000);
        ts->tv_nsec = (long)(virt_ms % 1000) * 1000000L;
        return 0;
    }
    return (int)syscall(SYS_clock_gettime, id, ts);
}

/* ---- seeded randomness for libsodium ---- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static const char *rng_name(void)
{
    return "tern-fuzz";
}

static uint32_t rng_random(void)
{
    return (uint32_t)rng_next();
}

static void rng_stir(void)
{
}

static void rng_buf(void *const buf, const size_t size)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < size; i++)
        p[i] = (uint8_t)(rng_next() >> 56);
}

static struct randombytes_implementation seeded = {
    .implementation_name = rng_name,
    .random = rng_random,
    .stir = rng_stir,
    .uniform = NULL, /* libsodium's own, on top of random() */
    .buf = rng_buf,
    .close = NULL,
};

/* ---- state ---- */

typedef struct conv_state {
    bool used;
    uint32_t conv;
    uint32_t tx_sn;        /* our next PUSH sn */
    uint32_t rx_next;      /* one past the highest sn the server pushed */
    uint32_t rx_sn, rx_ts; /* the server's latest PUSH */
    bool rx_any;
} conv_state;

typedef enum client_state { CL_FREE, CL_INIT_SENT, CL_OPEN } client_state;

typedef struct client {
    client_state state;
    unsigned addr;
    uint32_t id, server_id; /* compat: id is the conv */
    tern_noise *hs;
    tern_cookie_client *cookie;
    tern_crypto_session *cs;
    uint8_t init[TERN_WIRE_INIT_BYTES];
    uint16_t unrel_seq;
    uint32_t ping;
    conv_state convs[CONVS];
} client;

typedef struct captured {
    size_t len;
    struct sockaddr_storage to;
    uint8_t data[RAW_MAX];
} captured;

typedef struct echo_buf {
    size_t len;
    uint8_t data[];
} echo_buf;

typedef struct harness {
    fuzz_in in;
    fuzz_alloc alloc;
    tern_mem mem;  /* counts through alloc; outlives the endpoint */
    void *big_out; /* the kept big block, while the endpoint holds it */
    size_t big_size;
    int mode;
    uv_loop_t loop;
    tern_endpoint *ep;
    tern_endpoint_config cfg;
    tern_keypair server_key;
    bool closed;
    bool stream_cb_on;
    tern_endpoint_stats last;
    client clients[CLIENTS];
    captured cap[CAP_MAX];
    size_t n_cap;
    uint64_t cap_dropped;
    uint64_t echo_live; /* write requests whose callback has not run */
    uint32_t ids;       /* scripted clients so far */
    uint8_t keep[KEEP_MAX];
    size_t keep_len;
    unsigned keep_addr;
    uint8_t buf[TERN_PACKET_MAX];
    uint8_t pkt[TERN_PACKET_MAX];
    uint8_t opened[TERN_PACKET_MAX];
} harness;

static harness H;
static struct sockaddr_storage addrs[8];

static void addrs_init(void)
{
    static const char *const text[8] = {
        "127.0.0.1:40000", "127.0.0.1:40001", "127.0.0.2:40000", "127.255.255.254:65535",
        "[::1]:40000",     "[::1]:40001",     "127.0.0.3:1",     "[::ffff:127.0.0.1]:40000"};
    for (size_t i = 0; i < 8; i++)
        FUZZ_CHECK(tern_sockaddr_parse(text[i], &addrs[i]) == 0, "address %s", text[i]);
}

static const struct sockaddr *addr_at(unsigned i)
{
    return (const struct sockaddr *)&addrs[i % 8];
}

static tern_ms now_ms(void)
{
    return uv_now(&H.loop);
}

/* ---- the endpoint's allocator ---- */

#define BIG_BLOCK (1U << 20)

static uint8_t *big;
static size_t big_cap;

/* The UDP layer's receive buffer (2 MiB), allocated and filled afresh for
 * every input, cost more than all the rest of an input: it is kept from one
 * input to the next, and counted like any other block. */
static void *ep_malloc(size_t size, void *user_data)
{
    fuzz_alloc *a = user_data;
    if (size < BIG_BLOCK || H.big_out)
        return fuzz_malloc(size, user_data);
    if (big_cap != size) {
        free(big);
        big = malloc(size);
        FUZZ_CHECK(big != NULL, "malloc");
        big_cap = size;
    }
    a->calls++;
    a->live_allocs++;
    a->live_bytes += size;
    if (a->live_bytes > a->peak_bytes)
        a->peak_bytes = a->live_bytes;
    H.big_out = big;
    H.big_size = size;
    return big;
}

static void ep_free(void *ptr, void *user_data)
{
    fuzz_alloc *a = user_data;
    if (!ptr || ptr != H.big_out) {
        fuzz_free(ptr, user_data);
        return;
    }
    a->live_allocs--;
    a->live_bytes -= H.big_size;
    H.big_out = NULL;
}

/* ---- invariants ---- */

static void check_counters(void)
{
    tern_endpoint_stats st;
    tern_endpoint_get_stats(H.ep, &st);
    const tern_endpoint_stats *o = &H.last;
#define GROWS(f)                                                                        \
    FUZZ_CHECK(st.f >= o->f, "%s went from %llu to %llu", #f, (unsigned long long)o->f, \
               (unsigned long long)st.f)
    GROWS(dgrams_in);
    GROWS(dgrams_out);
    GROWS(bytes_in);
    GROWS(bytes_out);
    GROWS(sessions_accepted);
    GROWS(sessions_connected);
    GROWS(sessions_refused);
    GROWS(sessions_timed_out);
    GROWS(sessions_closed);
    GROWS(drop_malformed);
    GROWS(drop_unknown_session);
    GROWS(drop_auth);
    GROWS(drop_ratelimited);
    GROWS(drop_limit);
    GROWS(drop_peer_refused);
    GROWS(cookies_sent);
    GROWS(send_failed);
    GROWS(bytes_sent_unvalidated);
    GROWS(bytes_recv_unvalidated);
#undef GROWS
    FUZZ_CHECK(st.sessions_now <= H.cfg.max_sessions, "%u sessions, max %u", st.sessions_now,
               H.cfg.max_sessions);
    FUZZ_CHECK(st.halfopen_now <= H.cfg.ratelimit.halfopen_max, "%u half-open, max %u",
               st.halfopen_now, H.cfg.ratelimit.halfopen_max);
    FUZZ_CHECK(st.halfopen_now <= st.sessions_now, "%u half-open of %u sessions", st.halfopen_now,
               st.sessions_now);
    FUZZ_CHECK(H.alloc.live_bytes <= MEM_CAP, "%zu bytes held", H.alloc.live_bytes);
    H.last = st;
}

/* ---- what the endpoint sends ---- */

static bool tap(void *user, const uint8_t *data, size_t len, const struct sockaddr *to)
{
    (void)user;
    FUZZ_CHECK(len <= H.cfg.mtu, "a %zu-byte datagram, mtu %u", len, H.cfg.mtu);
    if (H.n_cap == CAP_MAX) {
        H.cap_dropped++;
        return false;
    }
    captured *c = &H.cap[H.n_cap++];
    c->len = len;
    memset(&c->to, 0, sizeof(c->to));
    memcpy(&c->to, to,
           to->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    /* An IPv6 socket sends to IPv4 clients IPv4-mapped: match them as the
     * IPv4 addresses they are. */
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&c->to;
    if (to->sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
        struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = a6->sin6_port};
        memcpy(&a4.sin_addr, &a6->sin6_addr.s6_addr[12], 4);
        memset(&c->to, 0, sizeof(c->to));
        memcpy(&c->to, &a4, sizeof(a4));
    }
    if (len)
        memcpy(c->data, data, len);
    return false; /* swallowed: nothing leaves this process */
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    tern_addr x, y;
    tern_ep_addr_bytes((const struct sockaddr *)a, &x);
    tern_ep_addr_bytes(b, &y);
    return x.len == y.len && memcmp(x.bytes, y.bytes, x.len) == 0;
}

static conv_state *conv_get(client *c, uint32_t conv, bool make)
{
    for (size_t i = 0; i < CONVS; i++) {
        if (c->convs[i].used && c->convs[i].conv == conv)
            return &c->convs[i];
    }
    if (!make)
        return NULL;
    for (size_t i = 0; i < CONVS; i++) {
        if (!c->convs[i].used) {
            c->convs[i] = (conv_state){.used = true, .conv = conv};
            return &c->convs[i];
        }
    }
    return NULL;
}

/* Remembers the server's PUSH segments, so that ACKs can echo them. */
static void note_segments(client *c, const uint8_t *p, size_t len)
{
    size_t off = 0;
    while (len - off >= TERN_KCP_OVERHEAD) {
        tern_kcp_hdr h;
        tern_kcp_hdr_decode(p + off, &h);
        if (h.len > len - off - TERN_KCP_OVERHEAD)
            break;
        if (h.cmd == TERN_KCP_CMD_PUSH) {
            conv_state *cv = conv_get(c, h.conv, true);
            if (cv) {
                cv->rx_any = true;
                cv->rx_sn = h.sn;
                cv->rx_ts = h.ts;
                if (tern_kcp_diff32(h.sn + 1, cv->rx_next) > 0)
                    cv->rx_next = h.sn + 1;
            }
        }
        off += TERN_KCP_OVERHEAD + h.len;
    }
}

static void client_reset(client *c)
{
    tern_noise_del(c->hs);
    tern_cookie_client_del(c->cookie);
    tern_crypto_session_del(c->cs);
    memset(c, 0, sizeof(*c));
}

static void feed(const uint8_t *p, size_t len, unsigned addr)
{
    TRACE("feed %zu bytes type %u from %u\n", len, len ? p[0] : 0, addr % 8);
    tern_ep_on_datagram(H.ep, p, len, addr_at(addr), now_ms());
}

static void on_resp(client *c, const uint8_t *p, size_t len)
{
    c->server_id = tern_wire_get32(p + 1);
    if (H.mode == MODE_NOISE) {
        if (tern_noise_read_message(c->hs, p + TERN_WIRE_RESP_HEADER, len - TERN_WIRE_RESP_HEADER,
                                    NULL, 0) < 0) {
            /* The server answered an INIT this client mutated. */
            client_reset(c);
            return;
        }
        tern_crypto_session_config cc;
        tern_crypto_session_config_default(&cc);
        cc.local_id = c->id;
        cc.remote_id = c->server_id;
        int rc = tern_crypto_session_new(&c->cs, c->hs, &cc, NULL, now_ms());
        FUZZ_CHECK(rc == 0, "client session: %d", rc);
        tern_noise_del(c->hs);
        c->hs = NULL;
    }
    c->state = CL_OPEN;
    TRACE("client %08x open, server id %08x\n", c->id, c->server_id);
}

/* One datagram the endpoint sent to a scripted client's address. */
static void to_client(client *c, const uint8_t *p, size_t len)
{
    if (H.mode == MODE_COMPAT) {
        FUZZ_CHECK(tern_kcp_datagram_check(p, len, tern_wire_get32(p)) >= 1,
                   "malformed compat output (%zu bytes)", len);
        if (tern_wire_get32(p) == c->id)
            note_segments(c, p, len);
        return;
    }
    uint8_t type = p[0] & 0x7F;
    if (type == TERN_WIRE_RESP && c->state == CL_INIT_SENT && tern_wire_get32(p + 5) == c->id) {
        on_resp(c, p, len);
        return;
    }
    if (type == TERN_WIRE_COOKIE && c->state == CL_INIT_SENT) {
        uint32_t id;
        if (tern_cookie_reply_peek(p, len, &id) == 0 && id == c->id &&
            tern_cookie_client_consume(c->cookie, p, len, now_ms()) == 0) {
            /* As the transport's client does: the INIT again, now with the
             * cookie in mac2. */
            FUZZ_CHECK(tern_cookie_client_add_macs(c->cookie, c->init, sizeof(c->init), now_ms()) ==
                           0,
                       "macs");
            feed(c->init, sizeof(c->init), c->addr);
        }
        return;
    }
    if (c->state != CL_OPEN)
        return;
    const uint8_t *payload = NULL;
    size_t plen = 0;
    if (H.mode == MODE_NOISE && type == TERN_WIRE_DATA) {
        uint32_t rid;
        if (tern_packet_peek_receiver(p, len, &rid) < 0 || rid != c->id)
            return;
        tern_ssize n =
            tern_crypto_session_open(c->cs, p, len, H.opened, sizeof(H.opened), now_ms());
        /* Time jumps can outlast a key; anything else means the endpoint
         * sealed something its peer cannot open. */
        FUZZ_CHECK(n >= 0 || n == TERN_ERR_EXPIRED, "server DATA does not open: %s",
                   tern_strerror((int)n));
        if (n < 0)
            return;
        payload = H.opened;
        plen = (size_t)n;
    } else if (H.mode == MODE_PLAIN && type == TERN_WIRE_PLAIN) {
        FUZZ_CHECK(len >= TERN_WIRE_PLAIN_HEADER, "short PLAIN");
        if (tern_wire_get32(p + 1) != c->id)
            return;
        payload = p + TERN_WIRE_PLAIN_HEADER;
        plen = len - TERN_WIRE_PLAIN_HEADER;
    } else {
        return;
    }
    FUZZ_CHECK(tern_wire_frames_check(payload, plen) >= 0, "server sent malformed frames");
    size_t off = 0;
    while (off < plen) {
        tern_frame f;
        tern_wire_frame_next(payload, &off, &f);
        if (f.type == TERN_FRAME_KCP)
            note_segments(c, f.data, f.len);
    }
}

/* Looks at everything the endpoint sent since the last look. */
static void drain_captured(void)
{
    /* Answers (a cookie's INIT) may be captured while we look: take a copy
     * of the batch first. */
    static captured batch[CAP_MAX];
    for (int round = 0; round < 4 && H.n_cap > 0; round++) {
        size_t n = H.n_cap;
        memcpy(batch, H.cap, n * sizeof(batch[0]));
        H.n_cap = 0;
        for (size_t i = 0; i < n; i++) {
            const captured *d = &batch[i];
            FUZZ_CHECK(d->len > 0, "an empty datagram sent");
            if (H.mode != MODE_COMPAT) {
                uint8_t type = d->data[0] & 0x7F;
                FUZZ_CHECK(type == TERN_WIRE_RESP || type == TERN_WIRE_COOKIE ||
                               type == TERN_WIRE_DATA || type == TERN_WIRE_PLAIN,
                           "the server sent type %u", type);
                FUZZ_CHECK(H.mode != MODE_PLAIN || type != TERN_WIRE_DATA, "DATA in plaintext");
                FUZZ_CHECK(H.mode != MODE_NOISE || type != TERN_WIRE_PLAIN, "PLAIN under Noise");
                /* Before an address is proven, every answer is smaller
                 * than the INIT that asked for it. */
                if (type == TERN_WIRE_RESP || type == TERN_WIRE_COOKIE)
                    FUZZ_CHECK(d->len < TERN_WIRE_INIT_BYTES, "a %zu-byte answer", d->len);
            }
            for (size_t k = 0; k < CLIENTS; k++) {
                client *c = &H.clients[k];
                if (c->state != CL_FREE && same_addr(&d->to, addr_at(c->addr)))
                    to_client(c, d->data, d->len);
            }
        }
    }
}

static void pump(void)
{
    for (int i = 0; i < 3; i++) {
        if (!H.closed)
            uv_run(&H.loop, UV_RUN_NOWAIT);
        drain_captured();
    }
}

/* ---- the server application ---- */

static void echo_alloc(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    static char rbuf[4096];
    (void)st;
    (void)suggested;
    *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

static void echo_written(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)status;
    FUZZ_CHECK(H.echo_live > 0, "a write callback twice");
    H.echo_live--;
    free(arg);
}

static void stream_write_copy(tern_stream *st, const uint8_t *data, size_t len)
{
    echo_buf *b = malloc(sizeof(*b) + (len ? len : 1));
    FUZZ_CHECK(b != NULL, "malloc");
    b->len = len;
    if (len)
        memcpy(b->data, data, len);
    uv_buf_t ub = uv_buf_init((char *)b->data, (unsigned)len);
    H.echo_live++;
    if (tern_stream_write(st, &ub, 1, echo_written, b) < 0) {
        H.echo_live--; /* refused: the callback never runs */
        free(b);
    }
}

static void echo_read(tern_stream *st, ssize_t nread, const uv_buf_t *buf)
{
    if (nread > 0) {
        stream_write_copy(st, (const uint8_t *)buf->base, (size_t)nread);
    } else if (nread == TERN_ERR_EOF) {
        (void)tern_stream_shutdown(st, NULL, NULL);
    } else if (nread < 0) {
        (void)tern_stream_close(st, NULL);
    }
}

static void on_stream(tern_session *s, tern_stream *st)
{
    (void)s;
    (void)tern_stream_read_start(st, echo_alloc, echo_read);
}

static void on_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    (void)tern_session_send(s, ch, data, len, 0);
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    tern_session_callbacks cbs = {
        .stream_cb = H.stream_cb_on ? on_stream : NULL,
        .message_cb = on_message,
    };
    tern_session_set_callbacks(s, &cbs);
}

static tern_session *pick_session(uint8_t k)
{
    size_t n = 0;
    for (tern_session *s = H.ep->sessions; s; s = s->next) {
        if (s->state != SESSION_DEAD && s->accepted)
            n++;
    }
    if (n == 0)
        return NULL;
    n = k % n;
    for (tern_session *s = H.ep->sessions; s; s = s->next) {
        if (s->state != SESSION_DEAD && s->accepted && n-- == 0)
            return s;
    }
    return NULL;
}

static tern_stream *pick_stream(tern_session *s, uint8_t k)
{
    size_t n = 0;
    for (tern_stream *st = s->streams; st; st = st->next)
        n += !st->app_closed;
    if (n == 0)
        return NULL;
    n = k % n;
    for (tern_stream *st = s->streams; st; st = st->next) {
        if (!st->app_closed && n-- == 0)
            return st;
    }
    return NULL;
}

static void op_app(void)
{
    uint8_t what = fuzz_u8(&H.in);
    tern_session *s = pick_session(fuzz_u8(&H.in));
    uint8_t k = fuzz_u8(&H.in);
    size_t len = fuzz_u16(&H.in) % 6000;
    if (!s)
        return;
    static uint8_t data[6000];
    memset(data, k, len);
    TRACE("app %u on %08x\n", what % 8, s->local_id);
    switch (what % 8) {
    case 0:
    case 1:
        (void)tern_session_send(s, k % 6, data, len, (what & 0x80) ? 50 : 0);
        break;
    case 2: {
        tern_stream *st;
        if (tern_stream_open(s, &st) == 0) {
            (void)tern_stream_read_start(st, echo_alloc, echo_read);
            stream_write_copy(st, data, len);
            if (what & 0x80)
                (void)tern_stream_shutdown(st, NULL, NULL);
        }
        break;
    }
    case 3: {
        tern_stream *st = pick_stream(s, k);
        if (st)
            stream_write_copy(st, data, len);
        break;
    }
    case 4: {
        tern_stream *st = pick_stream(s, k);
        if (st) {
            if (what & 0x80)
                (void)tern_stream_reset(st);
            else
                (void)tern_stream_shutdown(st, NULL, NULL);
        }
        break;
    }
    case 5: {
        tern_stream *st = pick_stream(s, k);
        if (st)
            (void)tern_stream_close(st, NULL);
        break;
    }
    case 6:
        (void)tern_session_close(s);
        break;
    default:
        (void)tern_session_abort(s);
        break;
    }
}

/* ---- scripted clients ---- */

static void op_init(void)
{
    uint8_t which = fuzz_u8(&H.in);
    client *c = &H.clients[which % CLIENTS];
    client_reset(c);
    c->addr = fuzz_u8(&H.in) % 8;
    /* Never 0, and never one an earlier client had: DATA names only its
     * receiver, so a server session of the earlier handshake would seal
     * to the same id with other keys. */
    c->id = (uint32_t)fuzz_u16(&H.in) << 16 | (++H.ids & 0x7FFFU) << 1 | 1U;
    if (H.mode == MODE_COMPAT) {
        /* No handshake: the first segment of a conv opens its session. */
        c->state = CL_OPEN;
        return;
    }
    memset(c->init, 0, sizeof(c->init));
    c->init[0] = TERN_WIRE_INIT;
    c->init[1] = TERN_WIRE_VERSION;
    tern_wire_put32(c->init + 2, c->id);
    if (H.mode == MODE_NOISE) {
        tern_noise_config nc;
        tern_noise_config_default(&nc);
        nc.protocol = H.ep->protocol;
        nc.initiator = true;
        static const uint8_t prologue[] = "tern/1";
        nc.prologue = prologue;
        nc.prologue_len = sizeof(prologue) - 1;
        nc.rs = &H.server_key.pub;
        FUZZ_CHECK(tern_noise_new(&c->hs, &nc, NULL) == 0, "client noise");
        tern_ssize n = tern_noise_write_message(c->hs, NULL, 0, c->init + TERN_WIRE_INIT_HEADER,
                                                TERN_WIRE_NOISE_MAX);
        FUZZ_CHECK(n > 0, "noise write");
    }
    FUZZ_CHECK(tern_cookie_client_new(&c->cookie, &H.ep->mac_key, NULL) == 0, "cookie client");
    FUZZ_CHECK(tern_cookie_client_add_macs(c->cookie, c->init, sizeof(c->init), now_ms()) == 0,
               "macs");
    c->state = CL_INIT_SENT;
    uint8_t mut = fuzz_u8(&H.in);
    uint8_t tmp[TERN_WIRE_INIT_BYTES + 1];
    memcpy(tmp, c->init, sizeof(c->init));
    size_t len = sizeof(c->init);
    if (mut < 32)
        len = fuzz_mutate(&H.in, tmp, len, sizeof(tmp));
    TRACE("client %08x INIT from %u%s\n", c->id, c->addr, mut < 32 ? " (mutated)" : "");
    feed(tmp, len, c->addr);
    /* Sometimes the INIT comes twice: the server answers with its RESP
     * again and makes no second session. */
    if (mut >= 224)
        feed(tmp, len, c->addr);
}

/* Appends one KCP segment for conv to out; returns its length. */
static size_t craft_segment(client *c, uint32_t conv, uint8_t *out, size_t room)
{
    conv_state *cv = conv_get(c, conv, true);
    uint8_t kind = fuzz_u8(&H.in);
    tern_kcp_hdr h = {.conv = conv, .wnd = 128, .ts = (uint32_t)now_ms()};
    if (cv)
        h.una = cv->rx_next;
    size_t plen = 0;
    uint8_t payload[256];
    switch (kind % 8) {
    case 0:
    case 1:
    case 2: /* the next PUSH, in order */
        h.cmd = TERN_KCP_CMD_PUSH;
        h.sn = cv ? cv->tx_sn : 0;
        if (conv == TERN_CONV_CONTROL) {
            /* A FIN or a RESET for a stream near the ones in use. */
            uint32_t id = fuzz_u8(&H.in) % 12;
            if (kind & 0x80) {
                payload[0] = TERN_CTRL_RESET;
                tern_wire_put32(payload + 1, id);
                plen = TERN_CTRL_RESET_BYTES;
            } else {
                payload[0] = TERN_CTRL_FIN;
                tern_wire_put32(payload + 1, id);
                tern_wire_put64(payload + 5, fuzz_u16(&H.in));
                plen = TERN_CTRL_FIN_BYTES;
            }
        } else {
            size_t got;
            const uint8_t *b = fuzz_bytes(&H.in, fuzz_u8(&H.in) % 200, &got);
            memcpy(payload, b, got);
            plen = got;
        }
        if (cv && h.sn == cv->tx_sn)
            cv->tx_sn++;
        break;
    case 3: /* a PUSH elsewhere: ahead, behind, a fragment */
        h.cmd = TERN_KCP_CMD_PUSH;
        h.sn = (cv ? cv->tx_sn : 0U) + fuzz_u8(&H.in) - 128U;
        h.frg = fuzz_u8(&H.in) % 4;
        plen = fuzz_u8(&H.in) % 64;
        memset(payload, 0x5a, plen);
        break;
    case 4: /* an ACK of what the server sent */
        h.cmd = TERN_KCP_CMD_ACK;
        if (cv && cv->rx_any) {
            h.sn = cv->rx_sn;
            h.ts = cv->rx_ts;
        } else {
            h.sn = fuzz_u8(&H.in);
        }
        break;
    case 5:
        h.cmd = TERN_KCP_CMD_WASK;
        break;
    case 6:
        h.cmd = TERN_KCP_CMD_WINS;
        h.wnd = fuzz_u16(&H.in);
        break;
    default: /* FORWARD, or anything */
        h.cmd = (kind & 0x80) ? CMD_FORWARD : (uint8_t)fuzz_u8(&H.in);
        h.sn = fuzz_u32(&H.in);
        h.una = fuzz_u32(&H.in);
        break;
    }
    if (kind & 0x40)
        h.wnd = 0;
    h.len = (uint32_t)plen;
    if (room < TERN_KCP_OVERHEAD + plen)
        return 0;
    tern_kcp_hdr_encode(out, &h);
    memcpy(out + TERN_KCP_OVERHEAD, payload, plen);
    return TERN_KCP_OVERHEAD + plen;
}

static uint32_t pick_conv(client *c)
{
    uint8_t k = fuzz_u8(&H.in);
    if (H.mode == MODE_COMPAT)
        return (k & 0x80) ? fuzz_u32(&H.in) : c->id;
    switch (k % 8) {
    case 0:
        return TERN_CONV_CONTROL;
    case 1:
    case 2:
    case 3:
        return 1 + 2 * (uint32_t)(fuzz_u8(&H.in) % 6); /* ours: odd */
    case 4:
        return 2 + 2 * (uint32_t)(fuzz_u8(&H.in) % 4); /* the server's: even */
    case 5:
    case 6:
        return TERN_CONV_CHANNEL_BASE + fuzz_u8(&H.in) % 6; /* 4 and 5 do not exist */
    default: {
        /* Any id at all: one far ahead of those seen used to stall the
         * loop (mark_seen shifted its window one id at a time);
         * corpus/session_input/far-stream-id is that input. */
        return fuzz_u32(&H.in);
    }
    }
}

/* Builds frames from the input into H.buf; returns their length. */
static size_t build_payload(client *c, size_t max)
{
    size_t len = 0;
    uint8_t n = 1 + fuzz_u8(&H.in) % 4;
    for (uint8_t i = 0; i < n && !fuzz_empty(&H.in); i++) {
        uint8_t kind = fuzz_u8(&H.in);
        uint8_t *f = H.buf + len;
        size_t room = max - len;
        switch (kind % 8) {
        case 0:
        case 1:
        case 2: { /* KCP: 1..3 segments of one conv */
            if (room < TERN_FRAME_KCP_HEADER + TERN_KCP_OVERHEAD)
                return len;
            uint32_t conv = pick_conv(c);
            size_t body = 0;
            uint8_t segs = 1 + fuzz_u8(&H.in) % 3;
            for (uint8_t k = 0; k < segs; k++)
                body += craft_segment(c, conv, f + TERN_FRAME_KCP_HEADER + body,
                                      room - TERN_FRAME_KCP_HEADER - body);
            if (body == 0)
                return len;
            f[0] = TERN_FRAME_KCP;
            tern_wire_put16(f + 1, (uint16_t)body);
            len += TERN_FRAME_KCP_HEADER + body;
            break;
        }
        case 3: { /* UNREL: one fragment of a message */
            size_t want = fuzz_u16(&H.in) % 1300;
            if (room < TERN_FRAME_UNREL_HEADER + want)
                want = room > TERN_FRAME_UNREL_HEADER ? room - TERN_FRAME_UNREL_HEADER : 0;
            if (room < TERN_FRAME_UNREL_HEADER)
                return len;
            uint8_t count = 1 + fuzz_u8(&H.in) % 4;
            f[0] = TERN_FRAME_UNREL;
            f[1] = fuzz_u8(&H.in) % 6;
            if (kind & 0x80)
                c->unrel_seq++;
            tern_wire_put16(f + 2, c->unrel_seq);
            f[4] = (uint8_t)(fuzz_u8(&H.in) % count);
            f[5] = count;
            memset(f + TERN_FRAME_UNREL_HEADER, kind, want);
            tern_wire_put16(f + 6, (uint16_t)want);
            len += TERN_FRAME_UNREL_HEADER + want;
            break;
        }
        case 4:
        case 5: /* PING, PONG */
            if (room < 5)
                return len;
            f[0] = (kind % 8) == 4 ? TERN_FRAME_PING : TERN_FRAME_PONG;
            tern_wire_put32(f + 1, (kind & 0x80) ? fuzz_u32(&H.in) : ++c->ping);
            len += 5;
            break;
        case 6: { /* raw bytes: probably a malformed payload */
            size_t got;
            const uint8_t *b = fuzz_bytes(&H.in, fuzz_u8(&H.in) % 64, &got);
            if (got > room)
                got = room;
            memcpy(f, b, got);
            len += got;
            break;
        }
        default: /* CLOSE, rarely */
            if ((kind & 0xF0) != 0xF0 || room < 3)
                break;
            f[0] = TERN_FRAME_CLOSE;
            tern_wire_put16(f + 1, fuzz_u16(&H.in));
            len += 3;
            break;
        }
    }
    return len;
}

static void keep_for_replay(const uint8_t *p, size_t len, unsigned addr)
{
    if (len > KEEP_MAX)
        return;
    memcpy(H.keep, p, len);
    H.keep_len = len;
    H.keep_addr = addr;
}

static void send_from_client(client *c, const uint8_t *payload, size_t plen, uint8_t how)
{
    size_t len = 0;
    if (H.mode == MODE_NOISE) {
        tern_ssize n =
            tern_crypto_session_seal(c->cs, payload, plen, H.pkt, sizeof(H.pkt), now_ms());
        if (n < 0)
            return; /* a key past its hard limit after a long time jump */
        len = (size_t)n;
    } else if (H.mode == MODE_PLAIN) {
        H.pkt[0] = TERN_WIRE_PLAIN;
        tern_wire_put32(H.pkt + 1, c->server_id);
        memcpy(H.pkt + TERN_WIRE_PLAIN_HEADER, payload, plen);
        len = TERN_WIRE_PLAIN_HEADER + plen;
    } else {
        memcpy(H.pkt, payload, plen);
        len = plen;
    }
    if (len == 0 || len > RAW_MAX)
        return;
    /* Now and then from another address (a NAT rebinding, or a forger),
     * or mangled on the way. */
    unsigned addr = (how & 0x30) == 0x30 ? fuzz_u8(&H.in) % 8 : c->addr;
    if ((how & 0xC0) == 0xC0)
        len = fuzz_mutate(&H.in, H.pkt, len, RAW_MAX);
    if (len == 0)
        return;
    if (how & 0x08)
        keep_for_replay(H.pkt, len, addr);
    feed(H.pkt, len, addr);
}

static client *pick_open_client(uint8_t k)
{
    for (size_t i = 0; i < CLIENTS; i++) {
        client *c = &H.clients[(k + i) % CLIENTS];
        if (c->state == CL_OPEN)
            return c;
    }
    return NULL;
}

static void op_data(void)
{
    uint8_t how = fuzz_u8(&H.in);
    client *c = pick_open_client(fuzz_u8(&H.in));
    if (!c)
        return;
    if ((how & 0x07) == 0x07 && H.keep_len > 0) {
        TRACE("replay %zu bytes\n", H.keep_len);
        feed(H.keep, H.keep_len, H.keep_addr);
        return;
    }
    size_t max = H.mode == MODE_NOISE   ? H.cfg.mtu - TERN_PACKET_OVERHEAD
                 : H.mode == MODE_PLAIN ? H.cfg.mtu - TERN_WIRE_PLAIN_HEADER
                                        : H.cfg.mtu;
    size_t plen;
    if (H.mode == MODE_COMPAT) {
        /* Bare KCP: 1..3 segments of one conv. */
        uint32_t conv = pick_conv(c);
        uint8_t segs = 1 + fuzz_u8(&H.in) % 3;
        plen = 0;
        for (uint8_t k = 0; k < segs; k++)
            plen += craft_segment(c, conv, H.buf + plen, max - plen);
    } else {
        plen = build_payload(c, max);
    }
    TRACE("client %08x DATA %zu bytes (how %02x)\n", c->id, plen, how);
    send_from_client(c, H.buf, plen, how);
}

/* Every client acknowledges the latest PUSH of every conv it heard. */
static void op_acks(void)
{
    for (size_t i = 0; i < CLIENTS; i++) {
        client *c = &H.clients[i];
        if (c->state != CL_OPEN)
            continue;
        for (size_t k = 0; k < CONVS; k++) {
            conv_state *cv = &c->convs[k];
            if (!cv->used || !cv->rx_any)
                continue;
            tern_kcp_hdr h = {.conv = cv->conv,
                              .cmd = TERN_KCP_CMD_ACK,
                              .wnd = 128,
                              .ts = cv->rx_ts,
                              .sn = cv->rx_sn,
                              .una = cv->rx_next};
            uint8_t *seg = H.buf;
            size_t len = 0;
            if (H.mode != MODE_COMPAT) {
                H.buf[0] = TERN_FRAME_KCP;
                tern_wire_put16(H.buf + 1, TERN_KCP_OVERHEAD);
                seg = H.buf + TERN_FRAME_KCP_HEADER;
                len = TERN_FRAME_KCP_HEADER;
            }
            tern_kcp_hdr_encode(seg, &h);
            len += TERN_KCP_OVERHEAD;
            send_from_client(c, H.buf, len, 0);
        }
    }
}

static void op_raw(void)
{
    unsigned addr = fuzz_u8(&H.in) % 8;
    size_t got;
    const uint8_t *p = fuzz_bytes(&H.in, fuzz_u16(&H.in) % (RAW_MAX + 1), &got);
    /* An exact-size copy, so that a read past the datagram is caught. */
    uint8_t *copy = malloc(got ? got : 1);
    FUZZ_CHECK(copy != NULL, "malloc");
    memcpy(copy, p, got);
    feed(copy, got, addr);
    free(copy);
}

static void op_time(void)
{
    static const uint32_t steps[16] = {0,   1,    5,    10,   20,    50,    100,   200,
                                       500, 1000, 2000, 5000, 10000, 31000, 60000, 200000};
    uint8_t k = fuzz_u8(&H.in);
    virt_ms += steps[k % 16] + (k >> 4);
    TRACE("time +%u\n", steps[k % 16] + (k >> 4));
}

/* ---- one input ---- */

static void on_closed(tern_endpoint *ep)
{
    (void)ep;
    H.closed = true;
}

static void setup(uint8_t conf, uint8_t limits)
{
    H.mode = (conf & 3) == 3 ? MODE_NOISE : conf & 3;
    H.stream_cb_on = !(conf & 0x04);
    tern_endpoint_config *cfg = &H.cfg;
    tern_endpoint_config_default(cfg);
    static const tern_security sec[3] = {TERN_SECURITY_NOISE, TERN_SECURITY_PLAINTEXT,
                                         TERN_SECURITY_KCP_COMPAT};
    cfg->security = sec[H.mode];
    tern_key secret;
    for (size_t i = 0; i < sizeof(secret.b); i++)
        secret.b[i] = (uint8_t)(i * 7 + 1);
    (void)tern_keypair_from_secret(&H.server_key, &secret);
    cfg->noise.pattern = "NK";
    cfg->noise.static_key = &H.server_key;
    /* Small bounds, so that inputs reach them. */
    cfg->max_sessions = 1 + limits % MAX_SESSIONS;
    cfg->max_streams = 4;
    cfg->stream_write_max = 32U << 10;
    cfg->message_max = 4U << 10;
    cfg->reassembly_max = 16U << 10;
    cfg->kcp.snd_queue_max = 32U << 10;
    cfg->kcp.snd_wnd = 32;
    cfg->kcp.rcv_wnd = 32;
    cfg->handshake_timeout_ms = 2000;
    cfg->idle_timeout_ms = (limits & 0x80) ? 3000 : 30000;
    cfg->keepalive_ms = (limits & 0x40) ? 0 : 1000;
    cfg->linger_ms = 2000;
    cfg->ratelimit.per_source_burst = 1 + (limits >> 3) % 4;
    cfg->ratelimit.load_burst = 1 + (limits >> 4) % 8;
    cfg->ratelimit.load_rate = 1;
    cfg->ratelimit.halfopen_max = 1 + (limits >> 2) % HALFOPEN_MAX;
    cfg->ratelimit.capacity = 16;
    cfg->n_channels = 4;
    static const tern_channel_kind kinds[4] = {
        TERN_CHANNEL_RELIABLE_ORDERED, TERN_CHANNEL_RELIABLE_UNORDERED, TERN_CHANNEL_UNRELIABLE,
        TERN_CHANNEL_UNRELIABLE_SEQUENCED};
    for (size_t i = 0; i < 4; i++)
        cfg->channels[i] = (tern_channel_config){.kind = kinds[i], .priority = 0, .weight = 1};
    H.mem = (tern_mem){ep_malloc, ep_free, &H.alloc};
    cfg->mem = &H.mem;

    FUZZ_CHECK(uv_loop_init(&H.loop) == 0, "uv_loop_init");
    struct sockaddr_storage bind;
    FUZZ_CHECK(tern_sockaddr_parse((conf & 0x08) ? "[::1]:0" : "127.0.0.1:0", &bind) == 0, "bind");
    int rc = tern_endpoint_new(&H.ep, &H.loop, (const struct sockaddr *)&bind, cfg);
    if (rc == TERN_ERR_IO && (conf & 0x08)) {
        /* No IPv6 here. */
        FUZZ_CHECK(tern_sockaddr_parse("127.0.0.1:0", &bind) == 0, "bind");
        rc = tern_endpoint_new(&H.ep, &H.loop, (const struct sockaddr *)&bind, cfg);
    }
    FUZZ_CHECK(rc == 0, "endpoint_new: %s", tern_strerror(rc));
    cfg->mem = NULL;
    tern_udp_set_send_tap(H.ep->udp, tap, NULL);
    FUZZ_CHECK(tern_endpoint_listen(H.ep, on_accept) == 0, "listen");
    /* The loop must be reading our clock, or nothing here means anything. */
    uv_update_time(&H.loop);
    FUZZ_CHECK(uv_now(&H.loop) == (uint64_t)virt_ms, "the loop reads %llu, not the virtual %lld",
               (unsigned long long)uv_now(&H.loop), (long long)virt_ms);
}

static void teardown(void)
{
    FUZZ_CHECK(tern_endpoint_close(H.ep, on_closed) == 0, "endpoint_close");
    for (int i = 0; i < 100 && !H.closed; i++) {
        uv_run(&H.loop, UV_RUN_NOWAIT);
        drain_captured();
    }
    FUZZ_CHECK(H.closed, "the endpoint never finished closing");
    for (int i = 0; i < 100 && uv_run(&H.loop, UV_RUN_NOWAIT) != 0; i++)
        ;
    FUZZ_CHECK(uv_loop_close(&H.loop) == 0, "handles left open on the loop");
    FUZZ_CHECK(H.echo_live == 0, "%llu write callbacks never ran", (unsigned long long)H.echo_live);
    FUZZ_CHECK(H.alloc.live_allocs == 0 && H.alloc.live_bytes == 0,
               "%zu allocations (%zu bytes) not freed", H.alloc.live_allocs, H.alloc.live_bytes);
    for (size_t i = 0; i < CLIENTS; i++)
        client_reset(&H.clients[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        once = true;
        /* Before libsodium initialises: it keeps the implementation. */
        FUZZ_CHECK(randombytes_set_implementation(&seeded) == 0, "randombytes");
        /* Now, not in the first input: initialising takes random bytes,
         * which would make the first run of an input differ from the next. */
        FUZZ_CHECK(tern_crypto_init() == 0, "libsodium");
        addrs_init();
    }
    if (size < 2)
        return 0;
    memset(&H, 0, sizeof(H));
    H.in = (fuzz_in){data, size};
    rng_state = UINT64_C(0x7465726e66757a7a);
    virt_ms = (int64_t)START_MS;
    uint8_t conf = fuzz_u8(&H.in);
    setup(conf, fuzz_u8(&H.in));
    check_counters();
    for (int ops = 0; ops < MAX_OPS && !fuzz_empty(&H.in); ops++) {
        uint8_t op = fuzz_u8(&H.in);
        switch (op % N_OPS) {
        case OP_RAW:
            op_raw();
            break;
        case OP_INIT:
            op_init();
            break;
        case OP_DATA:
            op_data();
            break;
        case OP_ACKS:
            op_acks();
            break;
        case OP_APP:
            op_app();
            break;
        case OP_TIME:
            op_time();
            break;
        default:
            break;
        }
        pump();
        check_counters();
    }
#ifdef TERN_FUZZ_TRACE
    fprintf(stderr,
            "sessions accepted %llu closed %llu now %u; drops malformed %llu unknown %llu auth "
            "%llu rate %llu limit %llu; cookies %llu; peak %zu bytes\n",
            (unsigned long long)H.last.sessions_accepted,
            (unsigned long long)H.last.sessions_closed, H.last.sessions_now,
            (unsigned long long)H.last.drop_malformed,
            (unsigned long long)H.last.drop_unknown_session, (unsigned long long)H.last.drop_auth,
            (unsigned long long)H.last.drop_ratelimited, (unsigned long long)H.last.drop_limit,
            (unsigned long long)H.last.cookies_sent, H.alloc.peak_bytes);
#endif /* TERN_FUZZ_TRACE */
    teardown();
    virt_ms = -1;
    return 0;
}
