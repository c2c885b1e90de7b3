/* Two engines, A and B, talking through a deterministic in-memory wire.
 *
 * The front of the input is a program: a header (mode, preset, per-side
 * windows, mtu, send queue bound, bundling and congestion control, dead_link,
 * one-way delays, and optionally sequence numbers and clock just short of
 * their 32-bit wraps), then operations: either application sends a message
 * or a run of bytes, either application reads into a buffer of a chosen size,
 * time moves on, reading switches between explicit and automatic. The back
 * of the input, read backwards, decides the fate of each datagram an engine
 * writes: delivered, dropped, duplicated, delayed (so reordered), truncated,
 * or bit-flipped.
 *
 * Plain KCP has no checksum, so the wire carries one: a flipped bit is
 * caught by it and the datagram dropped before read_pkt, as a real UDP or
 * AEAD layer would. A truncated datagram gets a fresh checksum and reaches
 * read_pkt: the engine must refuse it or, cut at a segment boundary, take it
 * for the shorter datagram it then is.
 *
 * Checked throughout: each receiver gets exactly a prefix of what the other
 * side sent, in order (whole messages in message mode, bytes in stream
 * mode); recv never returns more than its buffer; the engines never busy-loop.
 * When the input ends, a clean network (no loss, fixed delays) runs until
 * both engines are idle, and then everything sent must have been delivered
 * and acknowledged, unless a link was declared dead; that is accepted only if
 * the run had at least dead_link - 1 impaired datagrams, the fewest that
 * could make one segment be sent dead_link times. Finally both engines are
 * deleted and must have freed everything they allocated.
 *
 * Built with -DTERN_FUZZ_TRACE, it prints every datagram with its fate, and
 * every send and recv, which is how a failing input is read. */
#include "fuzz_common.h"

#include "kcp/codec.h"
#include "kcp/engine_internal.h"
#include "tern/kcp.h"

#define CONV 0x52494150u /* "PAIR" */
#define NEVER UINT64_MAX
#define WIRE_MAX 4096         /* datagrams in flight per direction */
#define RX_BUF (1u << 17)     /* larger than any message the settings allow */
#define CLEAN_MS 600000u      /* the clean phase's virtual-time budget */
#define CLEAN_STEPS 2000000u  /* ... and its step budget */
#define STEP_LIMIT 4000000u   /* events in one run, fuzz phase included */

#ifdef TERN_FUZZ_TRACE
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif /* TERN_FUZZ_TRACE */

enum { OP_SEND_A, OP_SEND_B, OP_RECV_A, OP_RECV_B, OP_WAIT, OP_WAIT_LONG, OP_NEXT,
       OP_AUTO_A, OP_AUTO_B, OP_FLUSH, N_OPS };

typedef struct pkt {
    tern_ms at;
    uint64_t order;
    uint32_t sum;
    size_t len;
    uint8_t data[];
} pkt;

typedef struct wire {
    pkt *heap[WIRE_MAX];
    size_t n;
    tern_ms delay;
    uint64_t impaired, overflow;
} wire;

typedef struct side {
    tern_kcp *k;
    tern_kcp_settings s;
    fuzz_alloc alloc;
    int dead_calls;
    bool auto_read;
    int dir; /* 0: A, 1: B; names the data this side sends */
    /* What this side's application sent. */
    uint64_t tx_bytes, tx_msgs;
    uint32_t *msg_len;
    size_t msg_cap;
    /* What it received from the other side. */
    uint64_t rx_bytes, rx_msgs;
} side;

typedef struct pair {
    fuzz_in in;
    side a, b;
    wire ab, ba; /* ab carries A's datagrams to B */
    tern_ms now;
    bool clean;
    uint64_t order, steps;
    uint8_t out[1500];
    uint8_t rx[RX_BUF];
    uint8_t tx[RX_BUF];
} pair;

/* ---- content: every byte is a function of where it is ---- */

static uint8_t stream_byte(int dir, uint64_t off)
{
    uint64_t x = (off + 1u) * UINT64_C(0x9e3779b97f4a7c15) + (uint64_t)dir;
    return (uint8_t)(x >> 56);
}

static uint8_t msg_byte(int dir, uint64_t msg, size_t i)
{
    return (uint8_t)(msg * 131 + i * 7 + (i >> 8) + (uint64_t)dir * 91);
}

static uint32_t checksum(const uint8_t *p, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* ---- the wire: a min-heap by (delivery time, send order) ---- */

static bool pkt_before(const pkt *x, const pkt *y)
{
    return x->at < y->at || (x->at == y->at && x->order < y->order);
}

static void wire_push(wire *w, pkt *p)
{
    size_t i = w->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pkt_before(p, w->heap[parent]))
            break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = p;
}

static pkt *wire_pop(wire *w)
{
    pkt *top = w->heap[0];
    pkt *last = w->heap[--w->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= w->n)
            break;
        if (c + 1 < w->n && pkt_before(w->heap[c + 1], w->heap[c]))
            c++;
        if (!pkt_before(w->heap[c], last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (w->n)
        w->heap[i] = last;
    return top;
}

static tern_ms wire_next(const wire *w)
{
    return w->n ? w->heap[0]->at : NEVER;
}

static void wire_put(pair *p, wire *w, const uint8_t *data, size_t len, tern_ms delay)
{
    if (w->n == WIRE_MAX) {
        w->overflow++;
        w->impaired++;
        return;
    }
    pkt *k = malloc(sizeof(pkt) + len);
    if (!k)
        abort();
    k->at = p->now + delay;
    k->order = p->order++;
    k->len = len;
    memcpy(k->data, data, len);
    k->sum = checksum(k->data, len);
    wire_push(w, k);
}

/* One datagram written by an engine: its fate comes from the back of the
 * input while the program lasts, and is "delivered" afterwards. */
static void trace_datagram(const char *what, const pair *p, const wire *w, const uint8_t *data,
                           size_t len, uint8_t fate)
{
#ifdef TERN_FUZZ_TRACE
    fprintf(stderr, "%llu %s %s len %zu fate %u:", (unsigned long long)p->now,
            w == &p->ab ? "A->B" : "B->A", what, len, fate);
    for (size_t off = 0; off + TERN_KCP_OVERHEAD <= len;) {
        tern_kcp_hdr h;
        tern_kcp_hdr_decode(data + off, &h);
        fprintf(stderr, " [%u sn %u una %u wnd %u ts %u len %u]", h.cmd, h.sn, h.una, h.wnd, h.ts,
                h.len);
        off += TERN_KCP_OVERHEAD + h.len;
    }
    fputc('\n', stderr);
#else
    (void)what, (void)p, (void)w, (void)data, (void)len, (void)fate;
#endif /* TERN_FUZZ_TRACE */
}

static void transmit(pair *p, wire *w, const uint8_t *data, size_t len)
{
    uint8_t d = p->clean ? 0 : fuzz_back_u8(&p->in);
    trace_datagram("sent", p, w, data, len, d);
    if (d < 160) {
        wire_put(p, w, data, len, w->delay);
        return;
    }
    w->impaired++;
    if (d < 192)
        return; /* dropped */
    if (d < 208) {
        wire_put(p, w, data, len, w->delay);
        wire_put(p, w, data, len, w->delay + (tern_ms)(d & 15) * 10);
    } else if (d < 240) {
        wire_put(p, w, data, len, w->delay + (tern_ms)(d - 207) * 15);
    } else if (d < 248) {
        wire_put(p, w, data, len * (size_t)(d - 240) / 8, w->delay);
    } else {
        wire_put(p, w, data, len, w->delay);
        /* Flip a bit after the checksum was taken: the receiver's check
         * catches it. The newest datagram is the one just put. */
        for (size_t i = 0; i < w->n; i++) {
            pkt *k = w->heap[i];
            if (k->order == p->order - 1 && k->len) {
                k->data[k->len * (size_t)(d - 248) / 8] ^= (uint8_t)(1u << (d & 7));
                break;
            }
        }
    }
}

/* ---- engines ---- */

static void on_dead(tern_kcp *k, void *user_data)
{
    side *s = user_data;
    FUZZ_CHECK(tern_kcp_is_dead(k), "dead_link callback on a live engine");
    s->dead_calls++;
    FUZZ_CHECK(s->dead_calls == 1, "dead_link callback called %d times", s->dead_calls);
}

static side *peer_of(pair *p, side *s)
{
    return s == &p->a ? &p->b : &p->a;
}

static wire *wire_from(pair *p, side *s)
{
    return s == &p->a ? &p->ab : &p->ba;
}

static void check_stats(const side *s)
{
    tern_kcp_stats st;
    tern_kcp_get_stats(s->k, &st);
    FUZZ_CHECK(st.rcv_queue_segs <= s->s.rcv_wnd && st.rcv_buf_segs <= s->s.rcv_wnd,
               "side %c holds %u + %u segments, rcv_wnd %u", 'A' + s->dir, st.rcv_queue_segs,
               st.rcv_buf_segs, s->s.rcv_wnd);
    FUZZ_CHECK(st.in_flight_segs <= s->s.snd_wnd, "side %c: %u in flight > snd_wnd %u",
               'A' + s->dir, st.in_flight_segs, s->s.snd_wnd);
    FUZZ_CHECK(st.snd_queue_bytes <= s->s.snd_queue_max, "side %c queues %zu > %zu", 'A' + s->dir,
               st.snd_queue_bytes, s->s.snd_queue_max);
}

/* One received unit, checked against what the peer sent. */
static void check_received(pair *p, side *s, const uint8_t *buf, tern_ssize n)
{
    side *from = peer_of(p, s);
    if (s->s.mode == TERN_KCP_MODE_STREAM) {
        FUZZ_CHECK(s->rx_bytes + (uint64_t)n <= from->tx_bytes,
                   "%c received %llu bytes, %c only sent %llu", 'A' + s->dir,
                   (unsigned long long)(s->rx_bytes + (uint64_t)n), 'A' + from->dir,
                   (unsigned long long)from->tx_bytes);
        for (tern_ssize i = 0; i < n; i++)
            FUZZ_CHECK(buf[i] == stream_byte(from->dir, s->rx_bytes + (uint64_t)i),
                       "%c: stream byte %llu is wrong", 'A' + s->dir,
                       (unsigned long long)(s->rx_bytes + (uint64_t)i));
        s->rx_bytes += (uint64_t)n;
        return;
    }
    FUZZ_CHECK(s->rx_msgs < from->tx_msgs, "%c received message %llu, %c sent %llu",
               'A' + s->dir, (unsigned long long)s->rx_msgs, 'A' + from->dir,
               (unsigned long long)from->tx_msgs);
    uint64_t m = s->rx_msgs;
    FUZZ_CHECK((uint64_t)n == from->msg_len[m], "%c: message %llu has %td bytes, sent %u",
               'A' + s->dir, (unsigned long long)m, n, from->msg_len[m]);
    for (tern_ssize i = 0; i < n; i++)
        FUZZ_CHECK(buf[i] == msg_byte(from->dir, m, (size_t)i), "%c: message %llu byte %td wrong",
                   'A' + s->dir, (unsigned long long)m, i);
    s->rx_msgs++;
    s->rx_bytes += (uint64_t)n;
}

static tern_ssize do_recv(pair *p, side *s, size_t cap)
{
    tern_ssize peek = tern_kcp_peek_size(s->k);
    tern_ssize n = tern_kcp_recv(s->k, p->rx, cap, p->now);
    if (n != TERN_ERR_AGAIN)
        TRACE("%llu %c recv cap %zu: %td\n", (unsigned long long)p->now, 'A' + s->dir, cap, n);
    FUZZ_CHECK(n < 0 || (size_t)n <= cap, "recv returned %td into %zu bytes", n, cap);
    if (n >= 0) {
        FUZZ_CHECK(peek >= 0 && n <= peek, "recv %td, peek said %td", n, peek);
        check_received(p, s, p->rx, n);
    } else if (n == TERN_ERR_NOBUFS) {
        FUZZ_CHECK(s->s.mode == TERN_KCP_MODE_MESSAGE && peek > 0 && (size_t)peek > cap,
                   "NOBUFS, peek %td, cap %zu", peek, cap);
    } else {
        /* Our sends never need more fragments than the receive window, so a
         * message is never dropped as oversized. */
        FUZZ_CHECK(n == TERN_ERR_AGAIN, "recv: %s", tern_err_name((int)n));
    }
    return n;
}

static void read_all(pair *p, side *s)
{
    for (int i = 0; i < 100000; i++) {
        tern_ssize n = do_recv(p, s, RX_BUF);
        if (n < 0 || (n == 0 && s->s.mode == TERN_KCP_MODE_STREAM))
            return;
    }
    FUZZ_CHECK(0, "recv keeps returning data");
}

static void drain(pair *p, side *s)
{
    uint32_t limit = 2 * (s->s.snd_wnd + s->s.rcv_wnd + 64) + 4;
    for (uint32_t i = 0;; i++) {
        FUZZ_CHECK(i <= limit, "write_pkt still writing after %u datagrams", i);
        tern_ssize n = tern_kcp_write_pkt(s->k, p->out, sizeof(p->out), p->now);
        if (n == TERN_ERR_DEADLINK) {
            FUZZ_CHECK(tern_kcp_is_dead(s->k), "DEADLINK from a live engine");
            return;
        }
        FUZZ_CHECK(n >= 0, "write_pkt: %s", tern_err_name((int)n));
        if (n == 0)
            return;
        FUZZ_CHECK((size_t)n <= s->s.mtu, "wrote %td > mtu %u", n, s->s.mtu);
        FUZZ_CHECK(tern_kcp_datagram_check(p->out, (size_t)n, CONV) >= 1, "wrote a bad datagram");
        transmit(p, wire_from(p, s), p->out, (size_t)n);
    }
}

/* What a well-behaved driver does at this instant for one side. */
static void service(pair *p, side *s)
{
    if (s->auto_read)
        read_all(p, s);
    if (tern_kcp_get_expiry(s->k) > p->now)
        return;
    int rc = tern_kcp_handle_expiry(s->k, p->now);
    FUZZ_CHECK(rc == 0 || (rc == TERN_ERR_DEADLINK && tern_kcp_is_dead(s->k)),
               "handle_expiry: %s", tern_err_name(rc));
    drain(p, s);
    tern_ms e = tern_kcp_get_expiry(s->k);
    FUZZ_CHECK(e == NEVER || e > p->now, "busy loop: expiry %llu <= now %llu",
               (unsigned long long)e, (unsigned long long)p->now);
    check_stats(s);
}

static void deliver_due(pair *p, wire *w, side *to)
{
    while (w->n && w->heap[0]->at <= p->now) {
        pkt *k = wire_pop(w);
        trace_datagram(checksum(k->data, k->len) == k->sum ? "recv" : "bad-sum", p,
                       w, k->data, k->len, 0);
        if (checksum(k->data, k->len) == k->sum) {
            int want = tern_kcp_datagram_check(k->data, k->len, CONV);
            int rc = tern_kcp_read_pkt(to->k, k->data, k->len, p->now);
            FUZZ_CHECK(rc == (want >= 1 ? 0 : want), "read_pkt: %s (codec %d)",
                       tern_err_name(rc), want);
        }
        free(k);
    }
}

static tern_ms next_event(const pair *p)
{
    tern_ms t = wire_next(&p->ab);
    tern_ms u = wire_next(&p->ba);
    tern_ms ea = tern_kcp_get_expiry(p->a.k);
    tern_ms eb = tern_kcp_get_expiry(p->b.k);
    if (u < t)
        t = u;
    if (ea < t)
        t = ea;
    if (eb < t)
        t = eb;
    return t;
}

/* Runs every event up to and including `until`, in time order. */
static void run_until(pair *p, tern_ms until)
{
    for (;;) {
        FUZZ_CHECK(++p->steps <= STEP_LIMIT, "more than %u events in one run", STEP_LIMIT);
        tern_ms t = next_event(p);
        if (t > until)
            break;
        if (t > p->now)
            p->now = t;
        deliver_due(p, &p->ab, &p->b);
        deliver_due(p, &p->ba, &p->a);
        service(p, &p->a);
        service(p, &p->b);
    }
    if (until != NEVER && until > p->now)
        p->now = until;
    /* Automatic readers also read what arrived without any timer due. */
    if (p->a.auto_read)
        read_all(p, &p->a);
    if (p->b.auto_read)
        read_all(p, &p->b);
}

static void app_send(pair *p, side *s)
{
    side *to = peer_of(p, s);
    uint32_t mss = s->s.mtu - TERN_KCP_OVERHEAD;
    size_t max = tern_kcp_max_message(s->k);
    size_t limit = max + mss;
    if (s->s.mode == TERN_KCP_MODE_MESSAGE) {
        /* A message needing more fragments than the peer's window can never
         * be delivered (the peer drops it, by design): do not send one. */
        size_t fits = (size_t)to->s.rcv_wnd * mss;
        if (limit > fits)
            limit = fits;
    }
    size_t len = fuzz_u16(&p->in) % (limit + 1);
    if (s->s.mode == TERN_KCP_MODE_STREAM)
        for (size_t i = 0; i < len; i++)
            p->tx[i] = stream_byte(s->dir, s->tx_bytes + i);
    else
        for (size_t i = 0; i < len; i++)
            p->tx[i] = msg_byte(s->dir, s->tx_msgs, i);
    int rc = tern_kcp_send(s->k, p->tx, len, p->now);
    TRACE("%llu %c send %zu: %d\n", (unsigned long long)p->now, 'A' + s->dir, len, rc);
    if (tern_kcp_is_dead(s->k))
        FUZZ_CHECK(rc == TERN_ERR_DEADLINK, "send on a dead engine: %s", tern_err_name(rc));
    else if (len > max)
        FUZZ_CHECK(rc == TERN_ERR_MSGSIZE, "send %zu > max %zu: %s", len, max, tern_err_name(rc));
    else
        FUZZ_CHECK(rc == 0 || rc == TERN_ERR_WOULDBLOCK, "send %zu: %s", len, tern_err_name(rc));
    if (rc != 0)
        return;
    if (s->s.mode == TERN_KCP_MODE_STREAM) {
        s->tx_bytes += len;
        return;
    }
    if (s->tx_msgs == s->msg_cap) {
        size_t cap = s->msg_cap ? s->msg_cap * 2 : 64;
        uint32_t *grown = realloc(s->msg_len, cap * sizeof(uint32_t));
        if (!grown)
            abort();
        s->msg_len = grown;
        s->msg_cap = cap;
    }
    s->msg_len[s->tx_msgs++] = (uint32_t)len;
    s->tx_bytes += len;
}

static void app_recv(pair *p, side *s)
{
    uint8_t how = fuzz_u8(&p->in);
    tern_ssize peek = tern_kcp_peek_size(s->k);
    size_t cap;
    if ((how & 1) && peek >= 0)
        cap = (size_t)peek - ((how & 2) && peek > 0 ? 1 : 0);
    else
        cap = fuzz_u16(&p->in) % 4096u;
    do_recv(p, s, cap);
}

/* ---- setup ---- */

static int make_side(pair *p, side *s, int dir, const tern_kcp_settings *common, uint8_t flags,
                     uint32_t snd0, uint32_t rcv0)
{
    fuzz_in *in = &p->in;
    s->dir = dir;
    s->s = *common;
    s->s.snd_wnd = 4 + fuzz_u8(in) % 61u;
    s->s.rcv_wnd = 4 + fuzz_u8(in) % 61u;
    s->s.mtu = 50 + fuzz_u16(in) % 1451u;
    s->s.snd_queue_max = (size_t)s->s.mtu * (2 + fuzz_u8(in) % 32u);
    uint8_t bundle = fuzz_u8(in);
    s->s.bundle_bytes = (flags & 1) ? 8u * (1u + bundle) : 0;
    s->s.cc = tern_kcp_cc_find((flags & 2) ? "reno" : "none");
    tern_kcp_callbacks cb = {on_dead};
    tern_mem mem = fuzz_mem(&s->alloc);
    int rc = tern_kcp_new(&s->k, &s->s, &cb, s, &mem, p->now);
    FUZZ_CHECK(rc == 0, "tern_kcp_new: %s", tern_err_name(rc));
    rc = tern_kcp_test_set_sequence(s->k, snd0, rcv0);
    FUZZ_CHECK(rc == 0, "set_sequence: %s", tern_err_name(rc));
    return 0;
}

static void free_side(side *s)
{
    tern_kcp_del(s->k);
    FUZZ_CHECK(s->alloc.live_allocs == 0, "side %c: tern_kcp_del left %zu allocations",
               'A' + s->dir, s->alloc.live_allocs);
    free(s->msg_len);
}

static void free_wire(wire *w)
{
    while (w->n)
        free(wire_pop(w));
}

static bool quiescent(const pair *p)
{
    return !p->ab.n && !p->ba.n && tern_kcp_get_expiry(p->a.k) == NEVER &&
           tern_kcp_get_expiry(p->b.k) == NEVER;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pair p;
    memset(&p, 0, sizeof(p));
    p.in = (fuzz_in){data, size};
    fuzz_in *in = &p.in;

    uint8_t flags = fuzz_u8(in);
    uint8_t preset = fuzz_u8(in);
    tern_kcp_settings common;
    tern_kcp_settings_default(&common);
    if (tern_kcp_settings_preset(&common, (tern_kcp_preset)(preset % 5)) != 0)
        abort();
    common.conv = CONV;
    common.mode = (flags & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
    common.ack_nodelay = (flags & 128) != 0;
    /* Ceilings low enough that backed-off timers come round within the clean
     * phase's budget many times over. */
    common.rto_max_ms = 4000;
    common.probe_max_ms = 4000;
    common.dead_link = 4 + fuzz_u8(in) % 29u;
    p.ab.delay = 1 + fuzz_u8(in) % 20u;
    p.ba.delay = 1 + fuzz_u8(in) % 20u;
    p.now = (flags & 64) ? 0xffffe000u + (tern_ms)fuzz_u8(in) * 16 : 1;
    uint32_t seq_a = 0, seq_b = 0;
    if (flags & 32) {
        seq_a = 0u - 1u - fuzz_u8(in);
        seq_b = 0u - 1u - fuzz_u8(in);
    }
    make_side(&p, &p.a, 0, &common, (uint8_t)(flags >> 1), seq_a, seq_b);
    make_side(&p, &p.b, 1, &common, (uint8_t)(flags >> 3), seq_b, seq_a);

    while (!fuzz_empty(in)) {
        switch (fuzz_u8(in) % N_OPS) {
        case OP_SEND_A:
            app_send(&p, &p.a);
            break;
        case OP_SEND_B:
            app_send(&p, &p.b);
            break;
        case OP_RECV_A:
            app_recv(&p, &p.a);
            break;
        case OP_RECV_B:
            app_recv(&p, &p.b);
            break;
        case OP_WAIT:
            run_until(&p, p.now + fuzz_u8(in));
            break;
        case OP_WAIT_LONG:
            run_until(&p, p.now + (tern_ms)fuzz_u8(in) * 50);
            break;
        case OP_NEXT: {
            tern_ms t = next_event(&p);
            if (t != NEVER)
                run_until(&p, t);
            break;
        }
        case OP_AUTO_A:
            p.a.auto_read = !p.a.auto_read;
            break;
        case OP_AUTO_B:
            p.b.auto_read = !p.b.auto_read;
            break;
        default:
            run_until(&p, p.now);
            break;
        }
    }

    /* The clean network: everything delivered, both applications reading. */
    p.clean = true;
    p.a.auto_read = p.b.auto_read = true;
    tern_ms clean_start = p.now;
    uint64_t clean_steps = p.steps;
    run_until(&p, p.now);
    while (!quiescent(&p)) {
        bool over = p.now - clean_start > CLEAN_MS || p.steps - clean_steps > CLEAN_STEPS;
        /* A live engine facing a dead one may wait for it forever (its
         * zero-window probes go unanswered): only then is this no failure. */
        if (over && (tern_kcp_is_dead(p.a.k) || tern_kcp_is_dead(p.b.k)))
            break;
        FUZZ_CHECK(!over, "no quiescence after %llu ms / %llu steps of clean network",
                   (unsigned long long)(p.now - clean_start),
                   (unsigned long long)(p.steps - clean_steps));
        run_until(&p, next_event(&p));
    }

    bool dead = tern_kcp_is_dead(p.a.k) || tern_kcp_is_dead(p.b.k);
    uint64_t impaired = p.ab.impaired + p.ba.impaired;
#ifdef TERN_FUZZ_TRACE
    /* -DTERN_FUZZ_TRACE: one line per input, to see what a corpus exercises. */
    {
        tern_kcp_stats sa, sb;
        tern_kcp_get_stats(p.a.k, &sa);
        tern_kcp_get_stats(p.b.k, &sb);
        fprintf(stderr,
                "pair: %s A->B %llu B/%llu msgs, B->A %llu B/%llu msgs, impaired %llu, "
                "dead %d%d, retrans %llu+%llu, t=%llu ms, steps %llu\n",
                p.a.s.mode == TERN_KCP_MODE_STREAM ? "stream" : "message",
                (unsigned long long)p.b.rx_bytes, (unsigned long long)p.b.rx_msgs,
                (unsigned long long)p.a.rx_bytes, (unsigned long long)p.a.rx_msgs,
                (unsigned long long)impaired, tern_kcp_is_dead(p.a.k), tern_kcp_is_dead(p.b.k),
                (unsigned long long)(sa.retrans_timeout + sa.retrans_fast + sa.retrans_early),
                (unsigned long long)(sb.retrans_timeout + sb.retrans_fast + sb.retrans_early),
                (unsigned long long)(p.now - clean_start), (unsigned long long)p.steps);
    }
#endif /* TERN_FUZZ_TRACE */
    if (dead) {
        FUZZ_CHECK(impaired + 1 >= common.dead_link,
                   "link declared dead (A %d, B %d) after only %llu impaired datagrams, "
                   "dead_link %u",
                   tern_kcp_is_dead(p.a.k), tern_kcp_is_dead(p.b.k),
                   (unsigned long long)impaired, common.dead_link);
    } else {
        side *sides[2] = {&p.a, &p.b};
        for (int i = 0; i < 2; i++) {
            side *s = sides[i], *from = peer_of(&p, s);
            FUZZ_CHECK(s->rx_bytes == from->tx_bytes && s->rx_msgs == from->tx_msgs,
                       "%c received %llu bytes / %llu messages of %llu / %llu sent",
                       'A' + s->dir, (unsigned long long)s->rx_bytes,
                       (unsigned long long)s->rx_msgs, (unsigned long long)from->tx_bytes,
                       (unsigned long long)from->tx_msgs);
            FUZZ_CHECK(tern_kcp_unacked_bytes(s->k) == 0, "%c: %zu bytes never acknowledged",
                       'A' + s->dir, tern_kcp_unacked_bytes(s->k));
            FUZZ_CHECK(tern_kcp_peek_size(s->k) == TERN_ERR_AGAIN, "%c: data left unread",
                       'A' + s->dir);
        }
    }
    free_wire(&p.ab);
    free_wire(&p.ba);
    free_side(&p.a);
    free_side(&p.b);
    return 0;
}
