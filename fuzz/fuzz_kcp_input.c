/* One engine under arbitrary input. The fuzz input is a small program:
 *
 *   header   settings (mode, windows 4..64, mtu 50..1500, preset, bundling,
 *            congestion control, dead_link, send queue bound, and in message
 *            mode the native extensions: unordered delivery, FORWARD), an
 *            allocation index from which the allocator fails, and where the
 *            sequence numbers and the clock start (optionally just before the
 *            2^32 wrap of sn and of the 32-bit wire timestamp)
 *   ops      each one byte, then its operands:
 *     RAW    a length-prefixed arbitrary datagram -> read_pkt
 *     CRAFT  1..4 well-formed segments (PUSH/ACK/WASK/WINS, and FORWARD when
 *            the engine takes it) whose sn, una and ts are chosen near what
 *            the engine has actually sent and acknowledged, with
 *            fuzzer-chosen frg, wnd and length
 *     ACKS   ACKs for a fuzzer-chosen subset of the engine's recent sends
 *     SEND   the application sends N bytes (with FORWARD: maybe with a
 *            deadline a little ahead, or already past)
 *     RECV   the application receives into a buffer of a chosen size
 *     TICK   time moves forward by a bounded delta; handle_expiry; write_pkt
 *     EXPIRE time moves to get_expiry(); handle_expiry; write_pkt
 *     FLUSH  write_pkt until it returns 0
 *
 * After every step the harness checks what must always hold, and aborts if
 * it does not: see check_engine() and check_output(). At the end the engine
 * is deleted and every byte it allocated must have been freed.
 *
 * Built with -DTERN_FUZZ_TRACE, it prints every datagram in and out and
 * every send and recv, which is how a failing input is read. */
#include "fuzz_common.h"

#include "kcp/codec.h"
#include "kcp/engine_internal.h"
#include "tern/kcp.h"

#define CONV 0x314e5254u /* "TRN1" */
#define NEVER UINT64_MAX
#define RAW_MAX 2048     /* largest arbitrary datagram fed */
#define SENT_RING 64     /* the engine's recent PUSH sends remembered */
/* Generous upper bounds on what the engine keeps per segment besides the
 * payload, and on its fixed state (struct, congestion controller). */
#define SEG_HDR_MAX 128
#define FIXED_MAX 8192

#ifdef TERN_FUZZ_TRACE
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif /* TERN_FUZZ_TRACE */

enum { OP_RAW, OP_CRAFT, OP_ACKS, OP_SEND, OP_RECV, OP_TICK, OP_EXPIRE, OP_FLUSH, N_OPS };

typedef struct sent_seg {
    uint32_t sn, ts;
} sent_seg;

typedef struct harness {
    fuzz_in in;
    fuzz_alloc alloc;
    tern_kcp_settings s;
    tern_kcp *k;
    tern_ms now;
    uint32_t mss;
    size_t mem_bound;
    int dead_calls;

    /* What the engine has said on the wire. */
    uint32_t eng_next;   /* the sn its next new PUSH must carry */
    uint32_t eng_una;    /* the una it last advertised (its rcv_nxt) */
    sent_seg sent[SENT_RING];
    uint32_t sent_count;
    uint32_t peer_next;  /* the next in-order sn of our crafted PUSHes */

    uint8_t out[1500];
    uint8_t pkt[4 * (TERN_KCP_OVERHEAD + 1500 + 64)];
    uint8_t payload[1 << 16];
} harness;

static void on_dead(tern_kcp *k, void *user_data)
{
    harness *h = user_data;
    FUZZ_CHECK(tern_kcp_is_dead(k), "dead_link callback on a live engine");
    h->dead_calls++;
    FUZZ_CHECK(h->dead_calls == 1, "dead_link callback called %d times", h->dead_calls);
}

/* ---- settings ---- */

static int setup(harness *h)
{
    fuzz_in *in = &h->in;
    uint8_t flags = fuzz_u8(in);
    uint8_t preset = fuzz_u8(in);
    tern_kcp_settings *s = &h->s;
    tern_kcp_settings_default(s);
    if (tern_kcp_settings_preset(s, (tern_kcp_preset)(preset % 5)) != 0)
        abort();
    s->conv = CONV;
    s->mode = (flags & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
    s->snd_wnd = 4 + fuzz_u8(in) % 61u;
    s->rcv_wnd = 4 + fuzz_u8(in) % 61u;
    s->mtu = 50 + fuzz_u16(in) % 1451u;
    s->snd_queue_max = (size_t)s->mtu * (1 + fuzz_u8(in) % 32u);
    s->dead_link = 1 + fuzz_u8(in) % 32u;
    uint8_t bundle = fuzz_u8(in);
    s->bundle_bytes = (flags & 2) ? 8u * (1u + bundle) : 0;
    s->cc = tern_kcp_cc_find((flags & 4) ? "reno" : "none");
    s->ack_nodelay = (flags & 8) != 0;
    if (flags & 64)
        s->backoff = s->backoff == TERN_KCP_BACKOFF_X2 ? TERN_KCP_BACKOFF_X1_5 : TERN_KCP_BACKOFF_X2;
    if (flags & 128)
        s->early_retransmit = !s->early_retransmit;
    uint8_t knobs = fuzz_u8(in);
    if (knobs & 1)
        s->fast_resend = knobs >> 5; /* 0 (off) .. 7 */
    if (knobs & 2)
        s->fast_limit = (knobs >> 2) & 7;
    if (knobs & 16) {
        s->rto_max_ms = s->rto_min_ms * 4; /* backoff hits the ceiling soon */
        s->rto_initial_ms = s->rto_min_ms;
        s->probe_max_ms = s->probe_min_ms * 2;
    }
    uint16_t fail_at = fuzz_u16(in);
    uint8_t fail_span = fuzz_u8(in);
    /* The native extensions take fail_span values 224..254, whose high bits
     * mean nothing else (only 255 and the low three bits do), so inputs made
     * before them mostly keep their classic meaning. Message mode only. */
    if (!(flags & 1) && fail_span >= 224 && fail_span != 255) {
        s->forward = (fail_span >> 3) & 1;
        s->unordered = (fail_span >> 4) & 1;
    }
    h->alloc.fail_at = fail_at;
    h->alloc.fail_span = fail_span == 255 ? UINT64_MAX : (uint64_t)(1 + fail_span % 8);
    uint8_t start = fuzz_u8(in);
    h->now = (flags & 32) ? 0xfffff000u + (tern_ms)start * 8 : 1000u + (tern_ms)start;
    h->mss = s->mtu - TERN_KCP_OVERHEAD;

    /* What the engine may hold: the fixed part; send ring and timer heap,
     * each a power of two at least 16 that covers snd_wnd; the receive ring,
     * which covers what is held (rcv_wnd deliverable plus up to rcv_wnd out
     * of order); the ACK array (rcv_wnd + 64 entries); the segments it
     * owns: unsent and unacknowledged ones (snd_queue_max, headers
     * included), received ones (a receive side of them, each at most the
     * longest payload fed); and its free lists, which keep at most
     * snd_queue_max bytes (kcp/engine.c, pool_bytes). */
    size_t rcv_segs = 2 * (size_t)s->rcv_wnd;
    size_t rings = 2 * sizeof(void *) * fuzz_pow2_at_least(s->snd_wnd, 16) +
                   sizeof(void *) * fuzz_pow2_at_least(rcv_segs, 16) + 8 * (s->rcv_wnd + 64);
    /* FORWARD: a byte per send ring slot, and the deadline heap, a pointer
     * per message held (each message costs a segment of the send queue). */
    if (s->forward)
        rings += fuzz_pow2_at_least(s->snd_wnd, 16) +
                 2 * sizeof(void *) * fuzz_pow2_at_least(s->snd_queue_max / 96, 16);
    size_t payload_max = RAW_MAX > h->mss + 32 ? RAW_MAX : h->mss + 32;
    size_t received = rcv_segs * (SEG_HDR_MAX + payload_max);
    h->mem_bound = FIXED_MAX + rings + 2 * s->snd_queue_max + received;

    tern_kcp_callbacks cb = {on_dead};
    tern_mem mem = fuzz_mem(&h->alloc);
    int rc = tern_kcp_new(&h->k, &h->s, &cb, h, &mem, h->now);
    if (rc != 0) {
        FUZZ_CHECK(rc == TERN_ERR_NOMEM && h->alloc.failed, "tern_kcp_new: %s",
                   tern_err_name(rc));
        FUZZ_CHECK(h->k == NULL, "failed tern_kcp_new left an engine");
        return -1;
    }
    uint32_t snd0 = 0, rcv0 = 0;
    if (flags & 16) {
        /* Start a few segments short of the 2^32 sequence wrap. */
        snd0 = 0u - 1u - fuzz_u8(in);
        rcv0 = 0u - 1u - fuzz_u8(in);
        FUZZ_CHECK(tern_kcp_test_set_sequence(h->k, snd0, rcv0) == 0, "set_sequence refused");
    }
    h->eng_next = snd0;
    h->eng_una = rcv0;
    h->peer_next = rcv0;
    return 0;
}

static void trace_datagram(const harness *h, const char *what, const uint8_t *p, size_t len)
{
#ifdef TERN_FUZZ_TRACE
    fprintf(stderr, "%llu %s len %zu:", (unsigned long long)h->now, what, len);
    if (tern_kcp_datagram_check_ext(p, len, CONV, h->s.forward) >= 1) {
        for (size_t off = 0; off < len;) {
            tern_kcp_hdr hd;
            tern_kcp_hdr_decode(p + off, &hd);
            fprintf(stderr, " [%u sn %u una %u frg %u wnd %u ts %u len %u]", hd.cmd, hd.sn, hd.una,
                    hd.frg, hd.wnd, hd.ts, hd.len);
            off += TERN_KCP_OVERHEAD + hd.len;
        }
    }
    fputc('\n', stderr);
#else
    (void)h, (void)what, (void)p, (void)len;
#endif /* TERN_FUZZ_TRACE */
}

/* ---- checks ---- */

static void check_engine(harness *h)
{
    tern_kcp *k = h->k;
    const tern_kcp_settings *s = &h->s;
    tern_kcp_stats st;
    tern_kcp_get_stats(k, &st);
    /* The engine holds up to rcv_wnd deliverable unread segments, and accepts
     * out-of-order ones up to rcv_wnd past rcv_nxt as classic KCP does
     * (kcp/engine.c, accept_data). A FORWARD may leave up to 2 x rcv_wnd
     * sequence numbers between rcv_read and rcv_nxt (most of them empty). */
    uint32_t deliverable_max = s->forward ? 2 * s->rcv_wnd : s->rcv_wnd;
    FUZZ_CHECK(st.rcv_queue_segs <= deliverable_max && st.rcv_buf_segs <= s->rcv_wnd,
               "receive side holds %u deliverable + %u out-of-order, rcv_wnd %u", st.rcv_queue_segs,
               st.rcv_buf_segs, s->rcv_wnd);
    FUZZ_CHECK(st.in_flight_segs <= s->snd_wnd, "%u segments in flight > snd_wnd %u",
               st.in_flight_segs, s->snd_wnd);
    FUZZ_CHECK(st.in_flight_bytes <= (uint64_t)st.in_flight_segs * h->mss,
               "%llu bytes in flight in %u segments", (unsigned long long)st.in_flight_bytes,
               st.in_flight_segs);
    FUZZ_CHECK(st.snd_queue_bytes <= s->snd_queue_max, "send side holds %zu bytes > bound %zu",
               st.snd_queue_bytes, s->snd_queue_max);
    FUZZ_CHECK(tern_kcp_unacked_bytes(k) == st.snd_queue_bytes, "unacked %zu != stats %zu",
               tern_kcp_unacked_bytes(k), st.snd_queue_bytes);
    FUZZ_CHECK(st.rto_ms >= s->rto_min_ms && st.rto_ms <= s->rto_max_ms, "rto %u outside [%u, %u]",
               st.rto_ms, s->rto_min_ms, s->rto_max_ms);
    FUZZ_CHECK(st.rmt_wnd <= UINT16_MAX, "rmt_wnd %u", st.rmt_wnd);
    FUZZ_CHECK(h->alloc.live_bytes <= h->mem_bound, "engine holds %zu bytes > bound %zu",
               h->alloc.live_bytes, h->mem_bound);

    tern_ssize peek = tern_kcp_peek_size(k);
    FUZZ_CHECK(peek > 0 || peek == TERN_ERR_AGAIN || (peek == 0 && s->mode == TERN_KCP_MODE_MESSAGE),
               "peek_size %td", peek);
    /* Unordered, a message may be read before rcv_nxt reaches it. */
    if (peek > 0)
        FUZZ_CHECK(st.rcv_queue_segs > 0 || (s->unordered && st.rcv_buf_segs > 0),
                   "peek_size %td with nothing deliverable", peek);

    tern_ms e = tern_kcp_get_expiry(k);
    if (tern_kcp_is_dead(k)) {
        FUZZ_CHECK(e == NEVER, "a dead engine wants to run at %llu", (unsigned long long)e);
    } else if (e != NEVER) {
        uint64_t horizon = s->rto_max_ms;
        if (s->probe_max_ms > horizon)
            horizon = s->probe_max_ms;
        if (s->ack_delay_ms > horizon)
            horizon = s->ack_delay_ms;
        FUZZ_CHECK(e <= h->now + horizon, "expiry %llu is beyond now %llu + %llu",
                   (unsigned long long)e, (unsigned long long)h->now, (unsigned long long)horizon);
    }
}

/* Every datagram the engine writes: within the mtu, well-formed for our
 * conv, new sequence numbers contiguous, una never moving backwards. */
static void check_output(harness *h, const uint8_t *p, size_t len)
{
    const tern_kcp_settings *s = &h->s;
    FUZZ_CHECK(len <= s->mtu, "wrote %zu bytes, mtu %u", len, s->mtu);
    int n = tern_kcp_datagram_check_ext(p, len, CONV, s->forward);
    FUZZ_CHECK(n >= 1, "wrote a datagram the codec rejects: %d", n);
    size_t off = 0;
    while (off < len) {
        tern_kcp_hdr hd;
        tern_kcp_hdr_decode(p + off, &hd);
        off += TERN_KCP_OVERHEAD + hd.len;
        FUZZ_CHECK(hd.wnd <= s->rcv_wnd, "advertised wnd %u > rcv_wnd %u", hd.wnd, s->rcv_wnd);
        FUZZ_CHECK(tern_kcp_diff32(hd.una, h->eng_una) >= 0, "una went back from %u to %u",
                   h->eng_una, hd.una);
        h->eng_una = hd.una;
        FUZZ_CHECK(hd.cmd != TERN_KCP_CMD_FORWARD || s->forward, "FORWARD without forward");
        if (hd.cmd != TERN_KCP_CMD_PUSH)
            continue;
        FUZZ_CHECK(hd.len <= h->mss, "PUSH of %u bytes > mss %u", hd.len, h->mss);
        FUZZ_CHECK(s->mode == TERN_KCP_MODE_MESSAGE || hd.frg == 0, "stream PUSH with frg %u",
                   hd.frg);
        FUZZ_CHECK(hd.ts == (uint32_t)h->now, "PUSH ts %u, now %u", hd.ts, (uint32_t)h->now);
        int32_t ahead = tern_kcp_diff32(hd.sn, h->eng_next);
        /* Only a message cut short at its deadline uses up numbers that are
         * never sent: at most a message's worth past the window. */
        FUZZ_CHECK(ahead <= 0 || (s->forward && ahead <= (int32_t)s->snd_wnd + 256),
                   "PUSH sn %u skips past the next new sn %u", hd.sn, h->eng_next);
        FUZZ_CHECK(-(int64_t)ahead <= (int64_t)s->snd_wnd,
                   "PUSH sn %u is more than snd_wnd behind the next new sn %u", hd.sn, h->eng_next);
        if (ahead >= 0)
            h->eng_next = hd.sn + 1;
        h->sent[h->sent_count++ % SENT_RING] = (sent_seg){hd.sn, hd.ts};
    }
}

/* write_pkt until it has nothing more to say. It must stop: each datagram
 * carries at least one segment, and there are only so many ACKs, probes and
 * window segments that can be due at one instant. */
static void drain(harness *h)
{
    const tern_kcp_settings *s = &h->s;
    uint32_t limit = 2 * (s->snd_wnd + s->rcv_wnd + 64) + 4;
    for (uint32_t i = 0;; i++) {
        FUZZ_CHECK(i <= limit, "write_pkt still writing after %u datagrams at one instant", i);
        tern_ssize n = tern_kcp_write_pkt(h->k, h->out, sizeof(h->out), h->now);
        if (n == TERN_ERR_DEADLINK) {
            FUZZ_CHECK(tern_kcp_is_dead(h->k), "DEADLINK from a live engine");
            return;
        }
        FUZZ_CHECK(n >= 0, "write_pkt: %s", tern_err_name((int)n));
        if (n == 0)
            return;
        trace_datagram(h, "out", h->out, (size_t)n);
        check_output(h, h->out, (size_t)n);
    }
}

/* Timers due now are run, everything due is written; then the engine must
 * not want to run again at this same instant (that would be a busy loop). */
static void run_timers(harness *h)
{
    int rc = tern_kcp_handle_expiry(h->k, h->now);
    FUZZ_CHECK(rc == 0 || (rc == TERN_ERR_DEADLINK && tern_kcp_is_dead(h->k)),
               "handle_expiry: %s", tern_err_name(rc));
    drain(h);
    tern_ms e = tern_kcp_get_expiry(h->k);
    FUZZ_CHECK(e == NEVER || e > h->now, "busy loop: expiry %llu <= now %llu after servicing",
               (unsigned long long)e, (unsigned long long)h->now);
}

/* ---- ops ---- */

static void feed(harness *h, const uint8_t *p, size_t len, int must_accept)
{
    int verdict = tern_kcp_datagram_check_ext(p, len, CONV, h->s.forward);
    trace_datagram(h, "in", p, len);
    int rc = tern_kcp_read_pkt(h->k, p, len, h->now);
    if (verdict >= 1)
        FUZZ_CHECK(rc == 0, "read_pkt refused a well-formed datagram: %s", tern_err_name(rc));
    else
        FUZZ_CHECK(rc == verdict, "read_pkt says %s, codec %s", tern_err_name(rc),
                   tern_err_name(verdict));
    if (must_accept)
        FUZZ_CHECK(verdict >= 1, "harness built a bad datagram: %d", verdict);
}

static void op_raw(harness *h)
{
    size_t want = fuzz_u16(&h->in) % (RAW_MAX + 1u), got;
    const uint8_t *p = fuzz_bytes(&h->in, want, &got);
    /* A copy of exactly that size, so a read past it is caught. */
    uint8_t *copy = malloc(got ? got : 1);
    if (!copy)
        abort();
    if (got)
        memcpy(copy, p, got);
    feed(h, copy, got, 0);
    free(copy);
}

static const sent_seg *recent(harness *h, uint8_t pick)
{
    if (!h->sent_count)
        return NULL;
    uint32_t have = h->sent_count < SENT_RING ? h->sent_count : SENT_RING;
    return &h->sent[(h->sent_count - 1 - pick % have) % SENT_RING];
}

/* A byte as a step from a base sn, in serial arithmetic: 0 for a quarter of
 * the values (the base itself is the interesting case), else -96..95. */
static uint32_t step8(fuzz_in *in)
{
    uint8_t b = fuzz_u8(in);
    if (b < 64)
        return 0;
    return (uint32_t)b - 64u - 96u;
}

static uint32_t pick_sn(harness *h, uint8_t base, const sent_seg *r)
{
    fuzz_in *in = &h->in;
    switch (base & 3) {
    case 0:
        return h->peer_next + step8(in);
    case 1:
        return (r ? r->sn : h->eng_next) + step8(in);
    case 2:
        return h->eng_next + step8(in);
    default:
        return fuzz_u32(in);
    }
}

static void op_craft(harness *h)
{
    fuzz_in *in = &h->in;
    int nseg = 1 + fuzz_u8(in) % 4;
    size_t off = 0;
    for (int i = 0; i < nseg; i++) {
        uint8_t c = fuzz_u8(in);
        const sent_seg *r = recent(h, fuzz_u8(in));
        tern_kcp_hdr hd = {0};
        hd.conv = CONV;
        hd.cmd = (uint8_t)(TERN_KCP_CMD_PUSH + c % 4);
        /* A WINS whose ts would be "now" is a FORWARD for an engine that
         * takes them. */
        if (h->s.forward && hd.cmd == TERN_KCP_CMD_WINS && (c >> 6) == 3)
            hd.cmd = TERN_KCP_CMD_FORWARD;
        hd.sn = pick_sn(h, (uint8_t)(c >> 2), r);
        hd.una = pick_sn(h, (uint8_t)(c >> 4), r);
        uint32_t now32 = (uint32_t)h->now;
        switch (c >> 6) {
        case 0:
            hd.ts = r ? r->ts : now32;
            break;
        case 1:
            hd.ts = now32 - fuzz_u8(in);
            break;
        case 2:
            hd.ts = fuzz_u32(in);
            break;
        default:
            hd.ts = now32;
            break;
        }
        hd.frg = fuzz_u8(in);
        uint8_t w = fuzz_u8(in);
        hd.wnd = w == 255 ? fuzz_u16(in) : w;
        if (hd.cmd == TERN_KCP_CMD_PUSH) {
            hd.len = fuzz_u16(in) % (h->mss + 33);
            if (hd.sn == h->peer_next)
                h->peer_next++;
        } else if (hd.cmd == TERN_KCP_CMD_FORWARD && tern_kcp_diff32(hd.sn, h->peer_next) > 0) {
            h->peer_next = hd.sn; /* our later PUSHes go on from F */
        }
        tern_kcp_hdr_encode(h->pkt + off, &hd);
        off += TERN_KCP_OVERHEAD;
        for (uint32_t j = 0; j < hd.len; j++)
            h->pkt[off + j] = (uint8_t)(hd.sn * 7 + j);
        off += hd.len;
    }
    feed(h, h->pkt, off, 1);
}

static void op_acks(harness *h)
{
    fuzz_in *in = &h->in;
    uint8_t mask = fuzz_u8(in);
    uint8_t u = fuzz_u8(in);
    uint8_t w = fuzz_u8(in);
    size_t off = 0;
    uint32_t una = (u & 1) ? h->eng_next : h->eng_next - (uint32_t)(u >> 1);
    for (uint32_t i = 0; i < 8 && i < h->sent_count; i++) {
        if (!(mask & (1u << i)))
            continue;
        const sent_seg *r = recent(h, (uint8_t)i);
        tern_kcp_hdr hd = {CONV, TERN_KCP_CMD_ACK, 0, w, r->ts, r->sn, una, 0};
        tern_kcp_hdr_encode(h->pkt + off, &hd);
        off += TERN_KCP_OVERHEAD;
    }
    if (off == 0) {
        /* Nothing picked: a bare window update carrying una. */
        tern_kcp_hdr hd = {CONV, TERN_KCP_CMD_WINS, 0, w, (uint32_t)h->now, 0, una, 0};
        tern_kcp_hdr_encode(h->pkt, &hd);
        off = TERN_KCP_OVERHEAD;
    }
    feed(h, h->pkt, off, 1);
}

static void op_send(harness *h)
{
    tern_kcp *k = h->k;
    size_t max = tern_kcp_max_message(k);
    size_t len = fuzz_u16(&h->in) % (max + h->mss + 1);
    if (len > sizeof(h->payload))
        len = sizeof(h->payload);
    for (size_t i = 0; i < len; i++)
        h->payload[i] = (uint8_t)(i * 13 + 1);
    tern_ms deadline = NEVER;
    if (h->s.forward) {
        uint8_t d = fuzz_u8(&h->in);
        if (d < 192)
            deadline = h->now + d * 2u - 64u; /* up to 64 ms in the past */
    }
    bool dead = tern_kcp_is_dead(k);
    uint64_t failed = h->alloc.failed;
    tern_kcp_stats before, after;
    tern_kcp_get_stats(k, &before);
    int rc = tern_kcp_send_deadline(k, h->payload, len, deadline, h->now);
    TRACE("%llu send %zu deadline %lld: %d\n", (unsigned long long)h->now, len,
          deadline == NEVER ? -1LL : (long long)deadline, rc);
    tern_kcp_get_stats(k, &after);
    if (dead) {
        FUZZ_CHECK(rc == TERN_ERR_DEADLINK, "send on a dead engine: %s", tern_err_name(rc));
    } else if (len > max) {
        FUZZ_CHECK(rc == TERN_ERR_MSGSIZE, "send of %zu > max %zu: %s", len, max,
                   tern_err_name(rc));
    } else {
        FUZZ_CHECK(rc == 0 || rc == TERN_ERR_WOULDBLOCK ||
                       (rc == TERN_ERR_NOMEM && h->alloc.failed > failed),
                   "send of %zu: %s", len, tern_err_name(rc));
    }
    /* All or nothing. */
    size_t queued = after.snd_queue_bytes - before.snd_queue_bytes;
    FUZZ_CHECK(queued == (rc == 0 ? len : 0), "send of %zu returned %s and queued %zu", len,
               tern_err_name(rc), queued);
}

static void op_recv(harness *h)
{
    fuzz_in *in = &h->in;
    uint8_t how = fuzz_u8(in);
    tern_ssize peek = tern_kcp_peek_size(h->k);
    size_t cap;
    if ((how & 1) && peek >= 0) {
        /* Just too small, exact, or one more than the next message. */
        int variant = (how >> 1) % 3;
        cap = (size_t)peek;
        if (variant == 0 && cap > 0)
            cap--;
        else if (variant == 2)
            cap++;
    } else
        cap = fuzz_u16(in) % 8192u;
    /* Exactly cap bytes from malloc (ASan catches an overrun), plus a guard
     * that catches it without ASan. */
    uint8_t *buf = malloc(cap + 16);
    if (!buf)
        abort();
    memset(buf + cap, 0xee, 16);
    tern_ssize n = tern_kcp_recv(h->k, buf, cap, h->now);
    TRACE("%llu recv cap %zu (peek %td): %td\n", (unsigned long long)h->now, cap, peek, n);
    for (size_t i = 0; i < 16; i++)
        FUZZ_CHECK(buf[cap + i] == 0xee, "recv wrote past a %zu-byte buffer", cap);
    free(buf);
    FUZZ_CHECK(n < 0 || (size_t)n <= cap, "recv returned %td into %zu bytes", n, cap);
    if (h->s.mode == TERN_KCP_MODE_MESSAGE) {
        if (peek >= 0 && (size_t)peek <= cap)
            FUZZ_CHECK(n == peek, "recv %td, peek said %td (cap %zu)", n, peek, cap);
        else if (peek >= 0)
            FUZZ_CHECK(n == TERN_ERR_NOBUFS, "recv %td, message %td > cap %zu", n, peek, cap);
        else
            FUZZ_CHECK(n == TERN_ERR_AGAIN || n == TERN_ERR_MSGSIZE, "recv %td, peek AGAIN", n);
    } else {
        if (peek > 0)
            FUZZ_CHECK(n == (tern_ssize)((size_t)peek < cap ? (size_t)peek : cap),
                       "stream recv %td, peek %td, cap %zu", n, peek, cap);
        else
            FUZZ_CHECK(n == TERN_ERR_AGAIN, "stream recv %td with nothing ready", n);
    }
}

static void op_tick(harness *h)
{
    uint8_t b = fuzz_u8(&h->in);
    h->now += b < 128 ? b : (tern_ms)(b - 127) * 500;
    run_timers(h);
}

static void op_expire(harness *h)
{
    tern_ms e = tern_kcp_get_expiry(h->k);
    if (e == NEVER)
        return;
    if (e > h->now)
        h->now = e;
    run_timers(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static harness h;
    memset(&h, 0, sizeof(h));
    h.in = (fuzz_in){data, size};
    if (setup(&h) != 0) {
        FUZZ_CHECK(h.alloc.live_allocs == 0, "failed tern_kcp_new leaked %zu allocations",
                   h.alloc.live_allocs);
        return 0;
    }
    check_engine(&h);
    while (!fuzz_empty(&h.in)) {
        switch (fuzz_u8(&h.in) % N_OPS) {
        case OP_RAW:
            op_raw(&h);
            break;
        case OP_CRAFT:
            op_craft(&h);
            break;
        case OP_ACKS:
            op_acks(&h);
            break;
        case OP_SEND:
            op_send(&h);
            break;
        case OP_RECV:
            op_recv(&h);
            break;
        case OP_TICK:
            op_tick(&h);
            break;
        case OP_EXPIRE:
            op_expire(&h);
            break;
        default:
            drain(&h);
            break;
        }
        check_engine(&h);
    }
#ifdef TERN_FUZZ_TRACE
    /* -DTERN_FUZZ_TRACE: one line per input, to see what a corpus exercises. */
    {
        tern_kcp_stats st;
        tern_kcp_get_stats(h.k, &st);
        fprintf(stderr,
                "input: sent %llu segs/%llu B, recv %llu segs, acks %llu/%llu, lost %llu, "
                "malformed %llu, dead %d, alloc failed %llu, peak %zu of bound %zu\n",
                (unsigned long long)st.segs_sent, (unsigned long long)st.bytes_sent,
                (unsigned long long)st.segs_recv, (unsigned long long)st.acks_sent,
                (unsigned long long)st.acks_recv, (unsigned long long)st.lost,
                (unsigned long long)st.malformed, tern_kcp_is_dead(h.k),
                (unsigned long long)h.alloc.failed, h.alloc.peak_bytes, h.mem_bound);
    }
#endif /* TERN_FUZZ_TRACE */
    /* Growing a ring holds the old and the new one for a moment. */
    FUZZ_CHECK(h.alloc.peak_bytes <= h.mem_bound + h.mem_bound / 2,
               "peak %zu bytes > bound %zu (+ transient ring copies)", h.alloc.peak_bytes,
               h.mem_bound);
    tern_kcp_del(h.k);
    FUZZ_CHECK(h.alloc.live_allocs == 0 && h.alloc.live_bytes == 0,
               "tern_kcp_del left %zu allocations (%zu bytes)", h.alloc.live_allocs,
               h.alloc.live_bytes);
    return 0;
}
