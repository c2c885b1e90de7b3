/* Whole-protocol runs: two engines through the simulator (sim/pair.h) in
 * virtual time, the core correctness suite of the engine.
 *
 * Each run moves a seeded stream of bytes (stream mode) or of messages of
 * random sizes, from empty to several fragments (message mode), in one or
 * both directions, checks every byte in order as it is read, and checks
 * the engines' bounds at every step and their state once the run is over.
 * The matrix crosses network conditions with seeds; the seed also picks the
 * mode, preset, congestion control, direction and receive window, and every
 * assertion message starts with all of them, so a failure replays exactly:
 * TERN_SEED=n runs only seed index n of each matrix condition (add
 * TERN_SOAK=1 for the soak's transfer size), TERN_VERBOSE=1 prints a line
 * per matrix run.
 *
 * TERN_SOAK=1 runs 1000 seeds per condition with 4 MiB transfers, and more
 * seeds in the other seeded tests; without it, a quick slice (30 seeds of
 * 1 MiB per condition). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kcp/engine_internal.h"
#include "sim/pair.h"
#include "tern/kcp.h"
#include "tern/netsim.h"

#define KB 1024u
#define MTU 1400u
#define MSS (MTU - TERN_KCP_OVERHEAD)
/* The largest test message: four and a half segments. */
#define MSG_MAX (4 * MSS + MSS / 2)
#define READ_MAX (64 * KB)
#define NO_LIMIT UINT64_MAX
#define T32 UINT64_C(0x100000000)

/* What every assertion message starts with: the run being checked. */
static char ctx[256];

static bool soak(void)
{
    const char *e = getenv("TERN_SOAK");
    return e && *e && strcmp(e, "0") != 0;
}

/* ---- deterministic data ---- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    r->s += UINT64_C(0x9e3779b97f4a7c15);
    return mix64(r->s);
}

static uint32_t rng_below(rng *r, uint32_t n)
{
    return (uint32_t)(rng_next(r) % n);
}

/* Bytes [off, off + n) of the endless stream named by key. */
static void stream_fill(uint64_t key, uint64_t off, uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t pos = off + i;
        buf[i] = (uint8_t)(mix64(key + (pos >> 3)) >> ((pos & 7) * 8));
    }
}

static uint64_t fnv_add(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * UINT64_C(0x100000001b3);
    return h;
}

#define FNV_INIT UINT64_C(0xcbf29ce484222325)

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof(v));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Message i of a flow: empty, small, up to one segment, or several
 * fragments. Its first four bytes carry i and its last four a checksum of
 * the bytes between, when it is long enough to hold them. */
static size_t msg_size(uint64_t key, uint32_t i)
{
    uint64_t r = mix64(key ^ (UINT64_C(0x51ed2701) + i));
    uint32_t pick = (uint32_t)(r % 10), v = (uint32_t)(r >> 32);
    if (pick == 0)
        return 0;
    if (pick <= 3)
        return 1 + v % 64;
    if (pick <= 6)
        return 65 + v % (MSS - 64);
    return MSS + 1 + v % (MSG_MAX - MSS);
}

static void msg_fill(uint64_t key, uint32_t i, uint8_t *buf, size_t len)
{
    stream_fill(mix64(key + i + 1), 0, buf, len);
    if (len >= 4)
        put32(buf, i);
    if (len >= 8)
        put32(buf + len - 4, (uint32_t)fnv_add(FNV_INIT, buf + 4, len - 8));
}

/* ---- one direction of a run ---- */

typedef struct flow {
    tern_kcp *tx, *rx;
    tern_kcp_mode mode;
    uint64_t key;
    uint64_t target; /* stream: bytes; message: messages */
    uint64_t sent;   /* stream: bytes; message: messages */
    uint64_t sent_bytes;
    uint64_t got; /* stream: bytes; message: messages */
    uint64_t got_bytes;
    uint64_t tx_sum, rx_sum;
    uint64_t wouldblock;
    rng wr, rd;
} flow;

static void flow_init(flow *f, tern_kcp *tx, tern_kcp *rx, tern_kcp_mode mode, uint64_t key,
                      uint64_t bytes)
{
    memset(f, 0, sizeof(*f));
    f->tx = tx;
    f->rx = rx;
    f->mode = mode;
    f->key = key;
    f->tx_sum = f->rx_sum = FNV_INIT;
    f->wr.s = key ^ 1;
    f->rd.s = key ^ 2;
    if (mode == TERN_KCP_MODE_STREAM) {
        f->target = bytes;
        return;
    }
    uint64_t total = 0;
    while (total < bytes)
        total += msg_size(key, (uint32_t)f->target++);
}

static bool flow_done(const flow *f)
{
    return f->got == f->target;
}

/* Queues as much as the engine takes; WOULDBLOCK means "later". */
static void flow_send(flow *f, tern_ms now, size_t snd_queue_max)
{
    static uint8_t buf[16 * KB];
    while (f->sent < f->target) {
        size_t len;
        if (f->mode == TERN_KCP_MODE_STREAM) {
            len = 1 + rng_below(&f->wr, sizeof(buf));
            /* A stream send is all or nothing, so one larger than the
             * whole queue could never go. */
            if (len > tern_kcp_max_message(f->tx))
                len = tern_kcp_max_message(f->tx);
            if (len > f->target - f->sent)
                len = (size_t)(f->target - f->sent);
            stream_fill(f->key, f->sent, buf, len);
        } else {
            len = msg_size(f->key, (uint32_t)f->sent);
            msg_fill(f->key, (uint32_t)f->sent, buf, len);
        }
        int rc = tern_kcp_send(f->tx, buf, len, now);
        size_t held = tern_kcp_unacked_bytes(f->tx);
        cr_assert_leq(held, snd_queue_max, "%s: %zu bytes held by the sender, bound %zu", ctx, held,
                      snd_queue_max);
        if (rc == TERN_ERR_WOULDBLOCK) {
            f->wouldblock++;
            return;
        }
        cr_assert_eq(rc, 0, "%s: send at %llu: %s", ctx, (unsigned long long)now,
                     tern_strerror(rc));
        f->tx_sum = fnv_add(f->tx_sum, buf, len);
        f->sent_bytes += len;
        f->sent += f->mode == TERN_KCP_MODE_STREAM ? len : 1;
    }
}

/* Reads at most `budget` bytes (stream) or messages, checking each against
 * what was sent. */
static void flow_recv(flow *f, tern_ms now, uint64_t budget)
{
    static uint8_t buf[READ_MAX], want[READ_MAX];
    while (budget > 0) {
        size_t cap = READ_MAX;
        if (f->mode == TERN_KCP_MODE_STREAM) {
            cap = 1 + rng_below(&f->rd, READ_MAX);
            if (cap > budget)
                cap = (size_t)budget;
        }
        tern_ssize n = tern_kcp_recv(f->rx, buf, cap, now);
        if (n == TERN_ERR_AGAIN)
            return;
        cr_assert_geq(n, 0, "%s: recv at %llu: %s", ctx, (unsigned long long)now,
                      tern_strerror((int)n));
        size_t len = (size_t)n;
        if (f->mode == TERN_KCP_MODE_STREAM) {
            cr_assert_gt(len, 0, "%s: an empty stream read", ctx);
            cr_assert_leq(f->got + len, f->target, "%s: more bytes than were sent", ctx);
            stream_fill(f->key, f->got, want, len);
            if (memcmp(buf, want, len) != 0) {
                size_t i = 0;
                while (buf[i] == want[i])
                    i++;
                cr_assert_fail("%s: stream byte %llu is %u, sent %u", ctx,
                               (unsigned long long)(f->got + i), buf[i], want[i]);
            }
            f->got += len;
            budget -= len;
        } else {
            uint32_t i = (uint32_t)f->got;
            cr_assert_lt(f->got, f->target, "%s: more messages than were sent", ctx);
            size_t expect = msg_size(f->key, i);
            if (len >= 4)
                cr_assert_eq(get32(buf), i, "%s: message %u arrived where %u was due", ctx,
                             get32(buf), i);
            cr_assert_eq(len, expect, "%s: message %u is %zu bytes, sent %zu", ctx, i, len, expect);
            if (len >= 8)
                cr_assert_eq(get32(buf + len - 4), (uint32_t)fnv_add(FNV_INIT, buf + 4, len - 8),
                             "%s: message %u fails its checksum", ctx, i);
            msg_fill(f->key, i, want, len);
            cr_assert_arr_eq(buf, want, len, "%s: message %u corrupted", ctx, i);
            f->got++;
            budget--;
        }
        f->rx_sum = fnv_add(f->rx_sum, buf, len);
        f->got_bytes += len;
    }
}

/* ---- one run ---- */

typedef struct run_cfg {
    uint64_t seed;
    tern_kcp_settings a, b;
    tern_netsim_cfg ab, ba;
    bool integrity;
    bool both_ways;
    uint64_t bytes; /* per direction */
    tern_ms start;
    bool set_sequence; /* A sends from seq_a and B from seq_b */
    uint32_t seq_a, seq_b;
    /* The reader: nothing before read_from, then up to read_budget bytes or
     * messages every read_period_ms (0: at every step, no limit). */
    tern_ms read_from;
    uint32_t read_period_ms;
    uint64_t read_budget;
    tern_ms give_up; /* relative to start */
} run_cfg;

typedef struct run_out {
    tern_ms done_at;              /* everything read */
    tern_ms end;                  /* everything read and acknowledged */
    tern_ms resume_at;            /* first new data at B after read_from, 0 if none */
    uint64_t probes_b_at_read;    /* B's probes_sent just before and after the */
    uint64_t probes_b_after_read; /* first read at read_from */
    flow f[2];
    tern_kcp_stats st[2];
    tern_netsim_stats link[2];
    uint64_t datagrams[2];
    uint64_t integrity_drops;
    bool saw_zero_wnd[2]; /* the side, as a sender, saw the peer's window shut */
    uint32_t max_rcv_segs[2];
    uint64_t steps;
} run_out;

static void run_cfg_init(run_cfg *rc, uint64_t seed, tern_kcp_mode mode, uint64_t bytes)
{
    memset(rc, 0, sizeof(*rc));
    rc->seed = seed;
    tern_kcp_settings_default(&rc->a);
    rc->a.conv = (uint32_t)mix64(seed);
    rc->a.mode = mode;
    rc->a.mtu = MTU;
    rc->b = rc->a;
    tern_netsim_cfg_default(&rc->ab);
    rc->ab.delay_ms = 20;
    rc->ba = rc->ab;
    rc->bytes = bytes;
    /* Virtual time is cheap; reno at 30% loss in both directions can take
     * half an hour over 4 MiB (TERN_SOAK). */
    rc->give_up = 3 * 3600 * 1000;
    rc->read_budget = NO_LIMIT;
}

static void check_bounds(const run_cfg *rc, run_out *out, tern_sim_pair *pair)
{
    for (int side = 0; side < 2; side++) {
        const tern_kcp_settings *s = side == TERN_SIM_A ? &rc->a : &rc->b;
        tern_kcp_stats st;
        tern_kcp_get_stats(tern_sim_pair_engine(pair, side), &st);
        /* The receive bound (6ed003a): at most rcv_wnd deliverable unread
         * segments, and at most rcv_wnd more held out of order, since the
         * engine accepts up to rcv_wnd past rcv_nxt as classic KCP does. */
        cr_assert_leq(st.rcv_queue_segs, s->rcv_wnd, "%s: side %d: %u unread segments, rcv_wnd %u",
                      ctx, side, st.rcv_queue_segs, s->rcv_wnd);
        cr_assert_leq(st.rcv_buf_segs, s->rcv_wnd, "%s: side %d: %u held segments, rcv_wnd %u", ctx,
                      side, st.rcv_buf_segs, s->rcv_wnd);
        uint32_t held = st.rcv_queue_segs + st.rcv_buf_segs;
        if (held > out->max_rcv_segs[side])
            out->max_rcv_segs[side] = held;
        cr_assert_leq(st.snd_queue_bytes, s->snd_queue_max, "%s: side %d send queue %zu > %zu", ctx,
                      side, st.snd_queue_bytes, s->snd_queue_max);
        cr_assert_leq(st.in_flight_segs, s->snd_wnd, "%s: side %d has %u in flight", ctx, side,
                      st.in_flight_segs);
        if (st.rmt_wnd == 0)
            out->saw_zero_wnd[side] = true;
    }
}

static void run(const run_cfg *rc, run_out *out)
{
    memset(out, 0, sizeof(*out));
    tern_sim_pair *pair = NULL;
    cr_assert_eq(tern_sim_pair_new(&pair, &rc->a, &rc->b, &rc->ab, &rc->ba, rc->seed, rc->start), 0,
                 "%s: pair", ctx);
    tern_sim_pair_set_integrity(pair, rc->integrity);
    tern_kcp *a = tern_sim_pair_engine(pair, TERN_SIM_A);
    tern_kcp *b = tern_sim_pair_engine(pair, TERN_SIM_B);
    if (rc->set_sequence) {
        cr_assert_eq(tern_kcp_test_set_sequence(a, rc->seq_a, rc->seq_b), 0, "%s", ctx);
        cr_assert_eq(tern_kcp_test_set_sequence(b, rc->seq_b, rc->seq_a), 0, "%s", ctx);
    }
    flow_init(&out->f[0], a, b, rc->a.mode, mix64(rc->seed ^ 0xa), rc->bytes);
    flow_init(&out->f[1], b, a, rc->b.mode, mix64(rc->seed ^ 0xb), rc->both_ways ? rc->bytes : 0);

    const tern_ms give_up = rc->start + rc->give_up;
    const tern_ms read_from = rc->read_from > rc->start ? rc->read_from : rc->start;
    tern_ms next_read = read_from;
    uint64_t bytes_recv_at_read = 0;
    bool read_started = false;
    tern_ms last = rc->start;
    for (;;) {
        tern_ms now = tern_sim_pair_now(pair);
        flow_send(&out->f[0], now, rc->a.snd_queue_max);
        flow_send(&out->f[1], now, rc->b.snd_queue_max);
        cr_assert_eq(tern_sim_pair_flush(pair), 0, "%s: flush", ctx);
        if (now >= next_read) {
            tern_kcp_stats st;
            bool first = !read_started;
            if (first) {
                read_started = true;
                tern_kcp_get_stats(b, &st);
                out->probes_b_at_read = st.probes_sent;
                bytes_recv_at_read = st.bytes_recv;
            }
            flow_recv(&out->f[0], now, rc->read_budget);
            flow_recv(&out->f[1], now, rc->read_budget);
            next_read = rc->read_period_ms ? now + rc->read_period_ms : now;
            if (first) {
                /* Whatever the reads made the receiver say leaves now. */
                cr_assert_eq(tern_sim_pair_flush(pair), 0, "%s: flush", ctx);
                tern_kcp_get_stats(b, &st);
                out->probes_b_after_read = st.probes_sent;
            }
        }
        if (read_started && !out->resume_at) {
            tern_kcp_stats st;
            tern_kcp_get_stats(b, &st);
            if (st.bytes_recv > bytes_recv_at_read)
                out->resume_at = now;
        }
        check_bounds(rc, out, pair);
        bool done = flow_done(&out->f[0]) && flow_done(&out->f[1]);
        if (done && !out->done_at)
            out->done_at = now;
        /* Over when all is read and both engines are idle: every segment
         * (empty messages too) acknowledged, every ACK sent. */
        if (done && tern_kcp_unacked_segments(a) == 0 && tern_kcp_unacked_segments(b) == 0 &&
            tern_kcp_get_expiry(a) == UINT64_MAX && tern_kcp_get_expiry(b) == UINT64_MAX)
            break;
        cr_assert_lt(now, give_up,
                     "%s: gave up at %llu ms: A->B %llu of %llu, B->A %llu of %llu, "
                     "unacked %zu/%zu",
                     ctx, (unsigned long long)(now - rc->start), (unsigned long long)out->f[0].got,
                     (unsigned long long)out->f[0].target, (unsigned long long)out->f[1].got,
                     (unsigned long long)out->f[1].target, tern_kcp_unacked_bytes(a),
                     tern_kcp_unacked_bytes(b));
        /* Time must move: a run stuck at one instant is a livelock. */
        cr_assert_lt(++out->steps, 20u * 1000 * 1000, "%s: livelock at %llu", ctx,
                     (unsigned long long)now);
        tern_ms limit = give_up;
        if (next_read > now && next_read < limit)
            limit = next_read;
        int err = 0;
        tern_ms t = tern_sim_pair_advance(pair, limit, &err);
        cr_assert_eq(err, 0, "%s: at %llu: %s", ctx, (unsigned long long)t, tern_strerror(err));
        cr_assert_geq(t, last, "%s: the clock went back", ctx);
        last = t;
    }
    out->end = tern_sim_pair_now(pair);
    /* Let late copies and ACKs out of the links so their counters are
     * final. Nothing is left to send, so the engines only answer. */
    for (int i = 0; i < 1000000; i++) {
        if (tern_netsim_link_next(tern_sim_pair_link(pair, TERN_SIM_A)) == UINT64_MAX &&
            tern_netsim_link_next(tern_sim_pair_link(pair, TERN_SIM_B)) == UINT64_MAX)
            break;
        int err = 0;
        tern_sim_pair_advance(pair, give_up + 60000, &err);
        cr_assert_eq(err, 0, "%s: draining: %s", ctx, tern_strerror(err));
        flow_recv(&out->f[0], tern_sim_pair_now(pair), NO_LIMIT);
        flow_recv(&out->f[1], tern_sim_pair_now(pair), NO_LIMIT);
    }
    for (int side = 0; side < 2; side++) {
        tern_netsim_link *link = tern_sim_pair_link(pair, side);
        cr_assert_eq(tern_netsim_link_next(link), UINT64_MAX, "%s: link %d still busy", ctx, side);
        tern_netsim_link_get_stats(link, &out->link[side]);
        tern_kcp *k = tern_sim_pair_engine(pair, side);
        tern_kcp_get_stats(k, &out->st[side]);
        out->datagrams[side] = tern_sim_pair_datagrams(pair, side);
        cr_assert_eq(tern_kcp_peek_size(k), TERN_ERR_AGAIN, "%s: side %d has data left", ctx, side);
        cr_assert_eq(tern_kcp_unacked_bytes(k), 0, "%s: side %d", ctx, side);
        cr_assert_eq(tern_kcp_unacked_segments(k), 0, "%s: side %d", ctx, side);
        cr_assert(!tern_kcp_is_dead(k), "%s: side %d declared dead", ctx, side);
    }
    out->integrity_drops = tern_sim_pair_integrity_drops(pair);
    tern_sim_pair_del(pair);
}

static uint64_t link_losses(const tern_netsim_stats *l)
{
    return l->lost_random + l->lost_burst + l->lost_partition + l->lost_queue + l->lost_overflow;
}

static uint64_t retransmits(const tern_kcp_stats *st)
{
    return st->retrans_timeout + st->retrans_fast + st->retrans_early;
}

/* What must hold after every run, whatever the conditions. */
static void check_final(const run_cfg *rc, const run_out *out)
{
    for (int d = 0; d < 2; d++) {
        const flow *f = &out->f[d];
        cr_assert_eq(f->got, f->target, "%s: direction %d incomplete", ctx, d);
        cr_assert_eq(f->sent, f->target, "%s: direction %d", ctx, d);
        cr_assert_eq(f->got_bytes, f->sent_bytes, "%s: direction %d byte count", ctx, d);
        cr_assert_eq(f->rx_sum, f->tx_sum, "%s: direction %d running checksum", ctx, d);
        const tern_kcp_stats *tx = &out->st[d], *rx = &out->st[1 - d];
        cr_assert_eq(tx->bytes_sent, f->sent_bytes, "%s: direction %d: %llu payload bytes sent",
                     ctx, d, (unsigned long long)tx->bytes_sent);
        cr_assert_eq(rx->bytes_recv, f->sent_bytes, "%s: direction %d: %llu bytes received", ctx, d,
                     (unsigned long long)rx->bytes_recv);
        if (f->mode == TERN_KCP_MODE_MESSAGE) {
            cr_assert_eq(tx->msgs_sent, f->target, "%s: direction %d", ctx, d);
            cr_assert_eq(rx->msgs_recv, f->target, "%s: direction %d", ctx, d);
        }
    }
    uint64_t corrupted = out->link[0].corrupted + out->link[1].corrupted;
    if (rc->integrity)
        cr_assert_eq(out->integrity_drops, corrupted,
                     "%s: %llu integrity drops for %llu corrupted datagrams", ctx,
                     (unsigned long long)out->integrity_drops, (unsigned long long)corrupted);
    for (int side = 0; side < 2; side++) {
        const tern_kcp_stats *st = &out->st[side];
        cr_assert_eq(st->in_flight_segs, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->in_flight_bytes, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->snd_queue_segs, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->resend_segs, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->snd_queue_bytes, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->rcv_queue_segs, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->rcv_buf_segs, 0, "%s: side %d", ctx, side);
        cr_assert_eq(st->malformed, 0, "%s: side %d read a malformed datagram", ctx, side);
        cr_assert_eq(st->conv_mismatch, 0, "%s: side %d", ctx, side);
        cr_assert_eq(out->datagrams[side], out->link[side].offered, "%s: side %d", ctx, side);
        cr_assert_eq(st->datagrams_sent, out->datagrams[side], "%s: side %d", ctx, side);
        uint64_t read = out->link[1 - side].delivered;
        cr_assert_leq(st->datagrams_recv, read, "%s: side %d", ctx, side);
        if (!rc->integrity || corrupted == 0)
            cr_assert_eq(st->datagrams_recv, read, "%s: side %d: every delivered datagram read",
                         ctx, side);
        /* Only a segment declared lost is ever sent again. */
        cr_assert_leq(retransmits(st), st->lost, "%s: side %d: %llu resent but %llu lost", ctx,
                      side, (unsigned long long)retransmits(st), (unsigned long long)st->lost);
    }
    /* One direction: every datagram A writes carries data, bar window
     * probes, so more losses on the way to B than A sent probes mean data
     * was lost and must have been repaired by a retransmission. */
    uint64_t lost_ab = link_losses(&out->link[0]) + out->link[0].corrupted;
    if (!rc->both_ways && lost_ab > out->st[0].probes_sent)
        cr_assert_gt(retransmits(&out->st[0]), 0, "%s: %llu datagrams lost, none resent", ctx,
                     (unsigned long long)lost_ab);
}

/* RTT samples come only from echoes of a segment's own sends, so the
 * smoothed RTT lies between the path's fixed round trip and its worst. */
static void check_rtt(const run_cfg *rc, const run_out *out, tern_ms worst_extra)
{
    for (int d = 0; d < (rc->both_ways ? 2 : 1); d++) {
        const tern_kcp_stats *st = &out->st[d];
        const tern_kcp_settings *s = d == 0 ? &rc->a : &rc->b;
        const tern_kcp_settings *peer = d == 0 ? &rc->b : &rc->a;
        tern_ms base = (tern_ms)rc->ab.delay_ms + rc->ba.delay_ms;
        tern_ms worst = base + rc->ab.jitter_ms + rc->ba.jitter_ms + rc->ab.reorder_ms +
                        rc->ba.reorder_ms + (peer->ack_nodelay ? 0 : peer->ack_delay_ms) +
                        s->interval_ms + worst_extra + 10;
        cr_assert_geq(st->srtt_ms, base, "%s: side %d srtt %u below the path's %llu ms", ctx, d,
                      st->srtt_ms, (unsigned long long)base);
        cr_assert_leq(st->srtt_ms, worst, "%s: side %d srtt %u above the path's worst %llu ms", ctx,
                      d, st->srtt_ms, (unsigned long long)worst);
    }
}

/* ---- the matrix ---- */

static const tern_kcp_preset presets[] = {TERN_KCP_PRESET_NORMAL, TERN_KCP_PRESET_FAST3,
                                          TERN_KCP_PRESET_TURBO};
static const char *const preset_names[] = {"normal", "fast3", "turbo"};

typedef struct condition {
    const char *name;
    /* Fills both directions for a run starting at start. */
    void (*path)(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start);
    bool integrity;
    bool reorders;    /* datagrams can overtake each other */
    bool clean;       /* nothing is ever lost */
    tern_ms queue_ms; /* the most a datagram may wait in a bottleneck queue */
} condition;

static void path_clean(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)ab, (void)ba, (void)r, (void)start;
}

static void path_loss(tern_netsim_cfg *ab, tern_netsim_cfg *ba, double p)
{
    ab->loss = ba->loss = p;
}

static void path_loss5(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    path_loss(ab, ba, 0.05);
}

static void path_loss15(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    path_loss(ab, ba, 0.15);
}

static void path_loss30(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    path_loss(ab, ba, 0.30);
}

/* Bursts of about five datagrams, about 4% lost overall. */
static void path_burst(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    ab->ge_p_good_bad = ba->ge_p_good_bad = 0.01;
    ab->ge_p_bad_good = ba->ge_p_bad_good = 0.2;
    ab->ge_loss_bad = ba->ge_loss_bad = 0.8;
}

static void path_reorder(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    ab->jitter_ms = ba->jitter_ms = 15;
    ab->reorder = ba->reorder = 0.05;
    ab->reorder_ms = ba->reorder_ms = 30;
}

static void path_duplicate(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)start;
    ab->duplicate = 0.05 + 0.05 * (double)rng_below(r, 1001) / 1000.0;
    ba->duplicate = 0.05 + 0.05 * (double)rng_below(r, 1001) / 1000.0;
}

static void path_corrupt(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    ab->corrupt = ba->corrupt = 0.01;
}

/* 1 MB/s with a 16 KB queue: about 11 full datagrams, 16 ms of queueing,
 * far less than a send window. */
static void path_bottleneck(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r, (void)start;
    ab->rate_bytes_per_s = ba->rate_bytes_per_s = 1000 * 1000;
    ab->queue_bytes = ba->queue_bytes = 16 * KB;
}

#define PARTITION_AT 80
#define PARTITION_MS 5000

/* A 2 MB/s path (its queue never overflows) that goes dark for 5 s, 80 ms
 * in: the transfer cannot be over by then. */
static void path_partition(tern_netsim_cfg *ab, tern_netsim_cfg *ba, rng *r, tern_ms start)
{
    (void)r;
    tern_netsim_cfg *dirs[2] = {ab, ba};
    for (int i = 0; i < 2; i++) {
        dirs[i]->rate_bytes_per_s = 2 * 1000 * 1000;
        dirs[i]->queue_bytes = 1024 * KB;
        dirs[i]->n_partitions = 1;
        dirs[i]->partitions[0].start_ms = start + PARTITION_AT;
        dirs[i]->partitions[0].end_ms = start + PARTITION_AT + PARTITION_MS;
    }
}

static const condition cond_clean = {"clean", path_clean, false, false, true, 0};
static const condition cond_loss5 = {"loss5", path_loss5, false, false, false, 0};
static const condition cond_loss15 = {"loss15", path_loss15, false, false, false, 0};
static const condition cond_loss30 = {"loss30", path_loss30, false, false, false, 0};
static const condition cond_burst = {"burst", path_burst, false, false, false, 0};
static const condition cond_reorder = {"reorder", path_reorder, false, true, false, 0};
static const condition cond_duplicate = {"duplicate", path_duplicate, false, false, false, 0};
static const condition cond_corrupt = {"corrupt", path_corrupt, true, false, false, 0};
static const condition cond_bottleneck = {"bottleneck", path_bottleneck, false, false, false, 40};
static const condition cond_partition = {"partition", path_partition, false, false, false, 200};

/* The seed index picks the variant, so 24 consecutive seeds cover every
 * mode x preset x cc x direction combination. */
static uint64_t matrix_run(const condition *c, uint64_t index, uint64_t bytes)
{
    const uint64_t seed =
        mix64(fnv_add(FNV_INIT, (const uint8_t *)c->name, strlen(c->name)) + index);
    tern_kcp_mode mode = (index & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
    size_t p = (size_t)(index / 2 % 3);
    bool reno = index / 6 % 2;
    bool both = index / 12 % 2;
    rng r = {seed};
    uint32_t rcv_wnd = rng_below(&r, 2) ? 256 : 48;

    run_cfg rc;
    run_cfg_init(&rc, seed, mode, bytes);
    cr_assert_eq(tern_kcp_settings_preset(&rc.a, presets[p]), 0);
    rc.a.cc = reno ? tern_kcp_cc_find("reno") : NULL;
    rc.a.rcv_wnd = rcv_wnd;
    /* Small enough that the application meets WOULDBLOCK and retries. */
    rc.a.snd_queue_max = 128 * KB;
    /* The matrix is about delivery; dead-link detection has its own tests.
     * With the default 20 transmissions the soak's worst paths are declared
     * dead by chance: reno at 30% loss each way sends one segment at a
     * time, and each try fails (data or its ACK lost) with p = 0.51; the
     * per-datagram Gilbert-Elliott chain stays bad for minutes when only one
     * datagram leaves per RTO (TERN_SOAK=1 loss30 TERN_SEED=102, burst
     * TERN_SEED=474). */
    rc.a.dead_link = 50;
    rc.b = rc.a;
    rc.both_ways = both;
    rc.integrity = c->integrity;
    rc.start = 1000 * (index % 7);
    c->path(&rc.ab, &rc.ba, &r, rc.start);
    snprintf(ctx, sizeof(ctx), "%s seed=%llu (TERN_SEED=%llu) %s %s cc=%s %s rcv_wnd=%u", c->name,
             (unsigned long long)seed, (unsigned long long)index,
             mode == TERN_KCP_MODE_STREAM ? "stream" : "message", preset_names[p],
             reno ? "reno" : "none", both ? "both-ways" : "one-way", rcv_wnd);

    run_out out;
    run(&rc, &out);
    check_final(&rc, &out);
    check_rtt(&rc, &out, c->queue_ms);
    for (int d = 0; d < (both ? 2 : 1); d++)
        cr_assert_gt(out.f[d].wouldblock, 0, "%s: the send queue bound was never reached", ctx);
    if (c->clean) {
        for (int side = 0; side < 2; side++) {
            cr_assert_eq(out.st[side].lost, 0, "%s: side %d declared %llu lost on a clean path",
                         ctx, side, (unsigned long long)out.st[side].lost);
            cr_assert_eq(retransmits(&out.st[side]), 0, "%s: side %d", ctx, side);
            /* The only copies on a clean path are the sender's bundled ones. */
            cr_assert_leq(out.st[side].dup_segs, out.st[1 - side].bundled, "%s: side %d", ctx,
                          side);
        }
    }
    if (!c->reorders) {
        for (int side = 0; side < 2; side++)
            cr_assert_eq(out.st[side].out_of_window, 0,
                         "%s: side %d: %llu segments beyond the window on an in-order path", ctx,
                         side, (unsigned long long)out.st[side].out_of_window);
    }
    if (c->path == path_duplicate) {
        uint64_t copies = out.link[0].duplicated - out.link[0].lost_overflow;
        if (copies)
            cr_assert_gt(out.st[TERN_SIM_B].dup_segs, 0, "%s: %llu copies, no duplicate seen", ctx,
                         (unsigned long long)copies);
    }
    if (c->path == path_partition) {
        cr_assert_gt(out.link[0].lost_partition, 0, "%s: the partition dropped nothing", ctx);
        cr_assert_geq(out.done_at, rc.start + PARTITION_AT + PARTITION_MS,
                      "%s: done at %llu, before the partition ended", ctx,
                      (unsigned long long)out.done_at);
    }
    if (c->path == path_bottleneck)
        cr_assert_gt(out.link[0].lost_queue, 0, "%s: the bottleneck queue never overflowed", ctx);
    if (getenv("TERN_VERBOSE"))
        fprintf(stderr,
                "%s: done %llu ms, %llu steps, datagrams %llu/%llu, lost %llu/%llu, "
                "resent %llu/%llu, dup %llu, bundled %llu, wouldblock %llu\n",
                ctx, (unsigned long long)(out.end - rc.start), (unsigned long long)out.steps,
                (unsigned long long)out.datagrams[0], (unsigned long long)out.datagrams[1],
                (unsigned long long)link_losses(&out.link[0]),
                (unsigned long long)link_losses(&out.link[1]),
                (unsigned long long)retransmits(&out.st[0]),
                (unsigned long long)retransmits(&out.st[1]), (unsigned long long)out.st[1].dup_segs,
                (unsigned long long)out.st[0].bundled, (unsigned long long)out.f[0].wouldblock);
    return out.integrity_drops;
}

static void matrix(const condition *c)
{
    uint64_t seeds = soak() ? 1000 : 30;
    uint64_t bytes = soak() ? 4096 * KB : 1024 * KB;
    const char *only = getenv("TERN_SEED");
    if (only && *only) {
        matrix_run(c, strtoull(only, NULL, 10), bytes);
        return;
    }
    uint64_t integrity_drops = 0;
    for (uint64_t i = 0; i < seeds; i++)
        integrity_drops += matrix_run(c, i, bytes);
    if (c->integrity)
        cr_assert_gt(integrity_drops, 0, "%s: no seed saw a corrupted datagram", c->name);
}

Test(matrix, clean)
{
    matrix(&cond_clean);
}

Test(matrix, loss5)
{
    matrix(&cond_loss5);
}

Test(matrix, loss15)
{
    matrix(&cond_loss15);
}

Test(matrix, loss30)
{
    matrix(&cond_loss30);
}

Test(matrix, burst)
{
    matrix(&cond_burst);
}

Test(matrix, reorder)
{
    matrix(&cond_reorder);
}

Test(matrix, duplicate)
{
    matrix(&cond_duplicate);
}

Test(matrix, corrupt)
{
    matrix(&cond_corrupt);
}

Test(matrix, bottleneck)
{
    matrix(&cond_bottleneck);
}

Test(matrix, partition)
{
    matrix(&cond_partition);
}

/* ---- bounds under load ---- */

static const char *mode_name(tern_kcp_mode m)
{
    return m == TERN_KCP_MODE_STREAM ? "stream" : "message";
}

/* A 16 KiB send queue under a lossy two-way transfer: the application is
 * told WOULDBLOCK over and over, retries, and still delivers everything. */
Test(bounds, send_queue_never_exceeds_its_bound)
{
    for (uint64_t i = 0; i < (soak() ? 200u : 8u); i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        run_cfg rc;
        run_cfg_init(&rc, 0x5e4d0000 + i, mode, 512 * KB);
        rc.a.snd_queue_max = rc.b.snd_queue_max = 16 * KB;
        rc.ab.loss = rc.ba.loss = 0.1;
        rc.both_ways = true;
        snprintf(ctx, sizeof(ctx), "send queue bound seed=%llu %s", (unsigned long long)rc.seed,
                 mode_name(mode));
        run_out out;
        run(&rc, &out); /* checks the bound after every send and every step */
        check_final(&rc, &out);
        for (int d = 0; d < 2; d++)
            cr_assert_gt(out.f[d].wouldblock, 100, "%s: direction %d: only %llu WOULDBLOCKs", ctx,
                         d, (unsigned long long)out.f[d].wouldblock);
    }
}

/* A receive window smaller than the send window, holes from loss and
 * reordering (so stale window advertisements), and a reader that takes a
 * little every 50 ms: the receiver fills its window but never holds more
 * than the bound (checked at every step, see check_bounds). */
Test(bounds, receiver_never_holds_more_than_its_window)
{
    const uint64_t seeds = soak() ? 200u : 8u;
    uint64_t filled = 0;
    for (uint64_t i = 0; i < seeds; i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        run_cfg rc;
        run_cfg_init(&rc, 0x3ec0000 + i, mode, 256 * KB);
        rc.a.rcv_wnd = rc.b.rcv_wnd = 16;
        rc.ab.loss = rc.ba.loss = 0.05;
        rc.ab.jitter_ms = rc.ba.jitter_ms = 10;
        rc.ab.reorder = rc.ba.reorder = 0.05;
        rc.ab.reorder_ms = rc.ba.reorder_ms = 25;
        rc.read_period_ms = 50;
        rc.read_budget = mode == TERN_KCP_MODE_STREAM ? 8 * KB : 6;
        snprintf(ctx, sizeof(ctx), "receive window bound seed=%llu %s", (unsigned long long)rc.seed,
                 mode_name(mode));
        run_out out;
        run(&rc, &out); /* checks the bound at every step */
        check_final(&rc, &out);
        filled += out.max_rcv_segs[TERN_SIM_B] >= 16;
    }
    /* The bound was pressed on, not just respected from afar. */
    cr_assert_geq(filled * 2, seeds, "the window filled in only %llu of %llu runs",
                  (unsigned long long)filled, (unsigned long long)seeds);
}

/* A reader slower than the path: the sender is held to the reader's pace
 * by the window alone, so nothing is lost, resent or refused. */
Test(bounds, slow_reader_throttles_the_sender)
{
    for (uint64_t i = 0; i < 6; i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        size_t p = (size_t)(i / 2);
        run_cfg rc;
        run_cfg_init(&rc, 0x510e0000 + i, mode, 256 * KB);
        cr_assert_eq(tern_kcp_settings_preset(&rc.a, presets[p]), 0);
        rc.a.rcv_wnd = 32;
        rc.a.snd_queue_max = 64 * KB;
        rc.b = rc.a;
        rc.read_period_ms = 100;
        rc.read_budget = mode == TERN_KCP_MODE_STREAM ? 8 * KB : 6;
        snprintf(ctx, sizeof(ctx), "slow reader seed=%llu %s %s", (unsigned long long)rc.seed,
                 mode_name(mode), preset_names[p]);
        run_out out;
        run(&rc, &out);
        check_final(&rc, &out);
        const tern_kcp_stats *a = &out.st[TERN_SIM_A], *b = &out.st[TERN_SIM_B];
        cr_assert(out.saw_zero_wnd[TERN_SIM_A], "%s: the window never shut", ctx);
        cr_assert_eq(out.max_rcv_segs[TERN_SIM_B], 32, "%s: the window did not fill, exactly", ctx);
        cr_assert_eq(b->out_of_window, 0, "%s: %llu segments sent past the window", ctx,
                     (unsigned long long)b->out_of_window);
        cr_assert_eq(a->lost, 0, "%s: %llu segments declared lost", ctx,
                     (unsigned long long)a->lost);
        cr_assert_eq(retransmits(a), 0, "%s", ctx);
        cr_assert_leq(b->dup_segs, a->bundled, "%s: duplicates beyond the bundled copies", ctx);
        cr_assert_gt(out.f[0].wouldblock, 0, "%s: the sender was never held back", ctx);
        /* The reader's pace, not the path's, set the duration: all but
         * what a full window holds was read a budget per period. */
        uint64_t window = mode == TERN_KCP_MODE_STREAM ? 32u * MSS : 32u;
        uint64_t periods = (out.f[0].target - window) / rc.read_budget;
        cr_assert_geq(out.done_at - rc.start, (periods - 1) * rc.read_period_ms,
                      "%s: done in %llu ms", ctx, (unsigned long long)(out.done_at - rc.start));
    }
}

#define READER_WAKES 2000
#define BLACKOUT_MS 1500

/* The reader sleeps until 2 s, long after the window shut; the moment it
 * drains, the receiver announces its window (WINS), but the way back is
 * dark for 1.5 s, so that announcement is lost, as are the answers to the
 * sender's probes during the blackout. Only a later probe can restart the
 * transfer, which it must, within one probe interval of the light coming
 * back. */
Test(bounds, zero_window_probe_recovers_a_lost_window_update)
{
    for (uint64_t i = 0; i < 6; i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        size_t p = (size_t)(i / 2);
        run_cfg rc;
        run_cfg_init(&rc, 0x2e80000 + i, mode, 128 * KB);
        cr_assert_eq(tern_kcp_settings_preset(&rc.a, presets[p]), 0);
        rc.a.rcv_wnd = 16;
        rc.a.probe_max_ms = 3000;
        rc.b = rc.a;
        rc.read_from = READER_WAKES;
        rc.ba.n_partitions = 1;
        rc.ba.partitions[0].start_ms = READER_WAKES;
        rc.ba.partitions[0].end_ms = READER_WAKES + BLACKOUT_MS;
        snprintf(ctx, sizeof(ctx), "lost window update seed=%llu %s %s",
                 (unsigned long long)rc.seed, mode_name(mode), preset_names[p]);
        run_out out;
        run(&rc, &out);
        check_final(&rc, &out);
        const tern_kcp_stats *a = &out.st[TERN_SIM_A];
        cr_assert(out.saw_zero_wnd[TERN_SIM_A], "%s: the window never shut", ctx);
        cr_assert_gt(out.probes_b_after_read, out.probes_b_at_read,
                     "%s: draining did not make the receiver announce its window", ctx);
        cr_assert_gt(out.link[TERN_SIM_B].lost_partition, 0, "%s: the update was not lost", ctx);
        cr_assert_gt(a->probes_sent, 0, "%s: the sender never probed", ctx);
        cr_assert_geq(out.resume_at, READER_WAKES + BLACKOUT_MS,
                      "%s: data flowed at %llu, inside the blackout", ctx,
                      (unsigned long long)out.resume_at);
        cr_assert_leq(out.resume_at,
                      READER_WAKES + BLACKOUT_MS + rc.a.probe_max_ms + 2 * rc.ab.delay_ms + 50,
                      "%s: data resumed only at %llu", ctx, (unsigned long long)out.resume_at);
        cr_assert_eq(a->lost, 0, "%s: the window, not loss, held the data back", ctx);
    }
}

/* The send ring and the timer heap are sized by snd_wnd (128), not by
 * data, and allocated with the first send: allow up to four words a slot
 * on top of the data bounds. */
#define RINGS_ALLOWANCE (128 * 4 * sizeof(void *))

/* Memory as the allocator sees it: every byte the sending engine holds. */
typedef struct counting {
    size_t live, peak;
} counting;

#define ALLOC_HDR 16

static void *count_malloc(size_t n, void *ud)
{
    counting *c = ud;
    uint8_t *p = malloc(n + ALLOC_HDR);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof(n));
    c->live += n;
    if (c->live > c->peak)
        c->peak = c->live;
    return p + ALLOC_HDR;
}

static void count_free(void *ptr, void *ud)
{
    if (!ptr)
        return;
    counting *c = ud;
    uint8_t *p = (uint8_t *)ptr - ALLOC_HDR;
    size_t n;
    memcpy(&n, p, sizeof(n));
    c->live -= n;
    free(p);
}

/* Drives A (counted) and B over two links by hand, since the pair does not
 * take an allocator. Returns A's peak memory above what it held before its
 * first send. */
static size_t counted_transfer(tern_kcp_mode mode, uint64_t seed, size_t snd_queue_max)
{
    counting cnt = {0};
    tern_mem mem = {count_malloc, count_free, &cnt};
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.mode = mode;
    s.mtu = MTU;
    s.snd_queue_max = snd_queue_max;
    tern_netsim_cfg path;
    tern_netsim_cfg_default(&path);
    path.delay_ms = 20;
    path.loss = 0.1;
    tern_kcp *k[2] = {NULL, NULL};
    tern_netsim_link *link[2] = {NULL, NULL};
    cr_assert_eq(tern_kcp_new(&k[0], &s, NULL, NULL, &mem, 0), 0, "%s", ctx);
    cr_assert_eq(tern_kcp_new(&k[1], &s, NULL, NULL, NULL, 0), 0, "%s", ctx);
    cr_assert_eq(tern_netsim_link_new(&link[0], &path, seed, NULL), 0, "%s", ctx);
    cr_assert_eq(tern_netsim_link_new(&link[1], &path, seed + 1, NULL), 0, "%s", ctx);
    const size_t base = cnt.live;
    flow f;
    flow_init(&f, k[0], k[1], mode, seed, 512 * KB);
    static uint8_t dgram[MTU];
    tern_ms now = 0;
    for (int steps = 0; !flow_done(&f) || tern_kcp_unacked_bytes(k[0]); steps++) {
        cr_assert_lt(steps, 1000000, "%s: stuck", ctx);
        cr_assert_lt(now, 600000, "%s: stuck", ctx);
        flow_send(&f, now, snd_queue_max);
        for (int side = 0; side < 2; side++) {
            if (tern_kcp_get_expiry(k[side]) <= now)
                cr_assert_eq(tern_kcp_handle_expiry(k[side], now), 0, "%s", ctx);
            tern_ssize n;
            while ((n = tern_kcp_write_pkt(k[side], dgram, sizeof(dgram), now)) > 0)
                cr_assert_eq(tern_netsim_link_send(link[side], dgram, (size_t)n, now), 0, "%s",
                             ctx);
            cr_assert_geq(n, 0, "%s: write_pkt: %s", ctx, tern_strerror((int)n));
        }
        for (int side = 0; side < 2; side++) {
            tern_ssize n;
            while ((n = tern_netsim_link_recv(link[side], dgram, sizeof(dgram), now)) > 0)
                cr_assert_eq(tern_kcp_read_pkt(k[1 - side], dgram, (size_t)n, now), 0, "%s", ctx);
        }
        flow_recv(&f, now, NO_LIMIT);
        tern_ms next = UINT64_MAX;
        for (int side = 0; side < 2; side++) {
            tern_ms t = tern_kcp_get_expiry(k[side]);
            next = t < next ? t : next;
            t = tern_netsim_link_next(link[side]);
            next = t < next ? t : next;
        }
        /* Nothing due: the application has room to send again, now. */
        if (next != UINT64_MAX && next > now)
            now = next;
    }
    for (int side = 0; side < 2; side++) {
        tern_kcp_del(k[side]);
        tern_netsim_link_del(link[side]);
    }
    cr_assert_eq(cnt.live, 0, "%s: the engine freed all it allocated", ctx);
    return cnt.peak - base;
}

Test(bounds, sender_memory_stays_within_snd_queue_max)
{
    const size_t max = 32 * KB;
    const size_t rings = RINGS_ALLOWANCE;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        snprintf(ctx, sizeof(ctx), "sender memory seed=%llu stream", (unsigned long long)seed);
        size_t peak = counted_transfer(TERN_KCP_MODE_STREAM, seed, max);
        cr_assert_leq(peak, max + rings, "%s: the sender held %zu bytes, bound %zu", ctx, peak,
                      max);
        cr_assert_gt(peak, max / 2, "%s: the queue never filled (%zu bytes)", ctx, peak);
    }
    /* Messages of mixed sizes use three size classes of buffer. Since
     * 18386f5 the free lists keep at most snd_queue_max between them, on
     * top of the live segments' snd_queue_max, so the engine's bound is
     * twice the queue's; these transfers peak near 40 KB for a 32 KiB
     * queue. */
    for (uint64_t seed = 1; seed <= 4; seed++) {
        snprintf(ctx, sizeof(ctx), "sender memory seed=%llu message", (unsigned long long)seed);
        size_t peak = counted_transfer(TERN_KCP_MODE_MESSAGE, seed, max);
        cr_assert_leq(peak, 2 * max + rings, "%s: the sender held %zu bytes, bound 2 x %zu", ctx,
                      peak, max);
        cr_assert_gt(peak, max / 2, "%s: the queue never filled (%zu bytes)", ctx, peak);
    }
}

/* ---- wraparound ---- */

/* The virtual clock starts 4096 ms before 2^32 and a 200 kB/s bottleneck
 * stretches 1 MiB over about five seconds, so the 32-bit ts on the wire
 * wraps mid-transfer. */
Test(wrap, timestamps_wrap_mid_transfer)
{
    for (uint64_t i = 0; i < (soak() ? 100u : 6u); i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        size_t p = (size_t)(i / 2 % 3);
        run_cfg rc;
        run_cfg_init(&rc, 0x75000000 + i, mode, 1024 * KB);
        cr_assert_eq(tern_kcp_settings_preset(&rc.a, presets[p]), 0);
        rc.b = rc.a;
        rc.start = 0xFFFFF000u;
        rc.ab.rate_bytes_per_s = 200 * 1000;
        rc.ab.queue_bytes = 200 * KB;
        rc.ab.loss = rc.ba.loss = 0.03;
        snprintf(ctx, sizeof(ctx), "ts wrap seed=%llu %s %s", (unsigned long long)rc.seed,
                 mode_name(mode), preset_names[p]);
        run_out out;
        run(&rc, &out);
        check_final(&rc, &out);
        cr_assert_gt(out.done_at, T32 + 500, "%s: done at %llu, before the wrap", ctx,
                     (unsigned long long)out.done_at);
        check_rtt(&rc, &out, 1100);
        cr_assert_gt(retransmits(&out.st[TERN_SIM_A]), 0, "%s", ctx);
    }
}

/* Both sequence spaces start just short of 2^32 (A's 256 segments short,
 * B's 16), so both wrap early in a lossy, reordering two-way transfer. */
Test(wrap, sequence_numbers_wrap_mid_transfer)
{
    for (uint64_t i = 0; i < (soak() ? 200u : 12u); i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        size_t p = (size_t)(i / 2 % 3);
        bool reno = i / 6 % 2;
        run_cfg rc;
        run_cfg_init(&rc, 0x5e90000 + i, mode, 512 * KB);
        cr_assert_eq(tern_kcp_settings_preset(&rc.a, presets[p]), 0);
        rc.a.cc = reno ? tern_kcp_cc_find("reno") : NULL;
        rc.b = rc.a;
        rc.both_ways = true;
        rc.set_sequence = true;
        rc.seq_a = 0xFFFFFF00u;
        rc.seq_b = 0xFFFFFFF0u;
        rc.ab.loss = rc.ba.loss = 0.1;
        rc.ab.jitter_ms = rc.ba.jitter_ms = 10;
        rc.ab.reorder = rc.ba.reorder = 0.03;
        rc.ab.reorder_ms = rc.ba.reorder_ms = 20;
        snprintf(ctx, sizeof(ctx), "sn wrap seed=%llu %s %s cc=%s", (unsigned long long)rc.seed,
                 mode_name(mode), preset_names[p], reno ? "reno" : "none");
        run_out out;
        run(&rc, &out);
        check_final(&rc, &out);
        check_rtt(&rc, &out, 0);
        /* At least bytes / MSS data segments went each way. */
        cr_assert_gt(out.st[TERN_SIM_A].bytes_sent / MSS, 0x100, "%s: A never wrapped", ctx);
        cr_assert_gt(out.st[TERN_SIM_B].bytes_sent / MSS, 0x10, "%s: B never wrapped", ctx);
    }
}

Test(wrap, clock_and_sequence_wrap_together)
{
    for (uint64_t i = 0; i < 4; i++) {
        tern_kcp_mode mode = (i & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        run_cfg rc;
        run_cfg_init(&rc, 0xb07b0000 + i, mode, 1024 * KB);
        rc.start = 0xFFFFF000u;
        rc.both_ways = true;
        rc.set_sequence = true;
        rc.seq_a = 0xFFFFFE00u;
        rc.seq_b = 0xFFFFFFFFu;
        rc.ab.rate_bytes_per_s = rc.ba.rate_bytes_per_s = 200 * 1000;
        rc.ab.queue_bytes = rc.ba.queue_bytes = 200 * KB;
        rc.ab.loss = rc.ba.loss = 0.03;
        snprintf(ctx, sizeof(ctx), "ts+sn wrap seed=%llu %s", (unsigned long long)rc.seed,
                 mode_name(mode));
        run_out out;
        run(&rc, &out);
        check_final(&rc, &out);
        cr_assert_gt(out.done_at, T32 + 500, "%s: done before the wrap", ctx);
        check_rtt(&rc, &out, 2100);
    }
}

/* ---- dead link ---- */

/* The path goes dark for good 300 ms into a transfer: the sender must give
 * up, through the pair's err, no sooner than its retransmissions can have
 * run out and no later than dead_link RTOs at their ceiling. */
static void dead_link_run(const char *name, const tern_kcp_settings *s, uint64_t seed,
                          tern_kcp_mode mode)
{
    const tern_ms start = 1000, dark = start + 300;
    tern_kcp_settings set = *s;
    set.mode = mode;
    tern_netsim_cfg path;
    tern_netsim_cfg_default(&path);
    path.delay_ms = 20;
    path.n_partitions = 1;
    path.partitions[0].start_ms = dark;
    path.partitions[0].end_ms = UINT64_MAX;
    snprintf(ctx, sizeof(ctx), "dead link %s seed=%llu %s", name, (unsigned long long)seed,
             mode_name(mode));
    tern_sim_pair *pair = NULL;
    cr_assert_eq(tern_sim_pair_new(&pair, &set, &set, &path, &path, seed, start), 0, "%s", ctx);
    tern_kcp *a = tern_sim_pair_engine(pair, TERN_SIM_A);
    flow f;
    flow_init(&f, a, tern_sim_pair_engine(pair, TERN_SIM_B), mode, seed, 4096 * KB);
    const tern_ms bound = dark + (tern_ms)set.dead_link * set.rto_max_ms;
    int err = 0;
    tern_ms last = start;
    while (err == 0) {
        tern_ms now = tern_sim_pair_now(pair);
        if (!tern_kcp_is_dead(a))
            flow_send(&f, now, set.snd_queue_max);
        flow_recv(&f, now, NO_LIMIT);
        cr_assert_leq(now, bound, "%s: still alive at %llu", ctx, (unsigned long long)now);
        tern_ms t = tern_sim_pair_advance(pair, bound + 1, &err);
        cr_assert_geq(t, last, "%s: the clock went back", ctx);
        last = t;
    }
    cr_assert_eq(err, TERN_ERR_DEADLINK, "%s: ended with %s", ctx, tern_strerror(err));
    cr_assert(tern_kcp_is_dead(a), "%s", ctx);
    cr_assert(!tern_kcp_is_dead(tern_sim_pair_engine(pair, TERN_SIM_B)),
              "%s: the receiver has nothing to resend", ctx);
    cr_assert_gt(last, dark + (tern_ms)(set.dead_link - 2) * set.rto_min_ms,
                 "%s: dead at %llu, too soon after the path went dark", ctx,
                 (unsigned long long)last);
    cr_assert_gt(f.got, 0, "%s: nothing got through before the partition", ctx);
    cr_assert_lt(f.got, f.target, "%s: the transfer finished before the partition", ctx);
    cr_assert_eq(tern_kcp_send(a, "x", 1, last), TERN_ERR_DEADLINK, "%s", ctx);
    cr_assert_eq(tern_kcp_get_expiry(a), UINT64_MAX, "%s", ctx);
    uint8_t dgram[MTU];
    cr_assert_eq(tern_kcp_write_pkt(a, dgram, sizeof(dgram), last), TERN_ERR_DEADLINK, "%s", ctx);
    tern_sim_pair_del(pair);
}

Test(dead_link, permanent_partition_is_declared_dead_in_bounded_time)
{
    tern_kcp_settings quick;
    tern_kcp_settings_default(&quick);
    quick.mtu = MTU;
    quick.dead_link = 8;
    quick.rto_max_ms = 3000;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        tern_kcp_mode mode = (seed & 1) ? TERN_KCP_MODE_STREAM : TERN_KCP_MODE_MESSAGE;
        bool reno = seed > 2;
        for (size_t p = 0; p < 3; p++) {
            tern_kcp_settings s = quick;
            cr_assert_eq(tern_kcp_settings_preset(&s, presets[p]), 0);
            s.cc = reno ? tern_kcp_cc_find("reno") : NULL;
            char name[32];
            snprintf(name, sizeof(name), "%s cc=%s", preset_names[p], reno ? "reno" : "none");
            dead_link_run(name, &s, seed, mode);
        }
    }
    /* The defaults: 20 transmissions, RTO up to a minute. */
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.mtu = MTU;
    dead_link_run("defaults", &s, 9, TERN_KCP_MODE_STREAM);
}

/* ---- regressions: engine bugs this suite found ---- */

/* Found at fcfc8a1 (every matrix seed crashed), fixed in 6ed003a: when the
 * receive ring (16 slots at first) was exactly full of unread in-order
 * segments, the loop in accept_data() that moved rcv_nxt over held
 * segments read slot rcv_nxt & rcv_mask, which aliased the unread segment
 * at rcv_read, took it for a held one and ran rcv_nxt on to rcv_read +
 * rcv_wnd (rcv_held underflowed); recv then walked NULL slots (UBSan:
 * "member access within null pointer" in message_size()). */
Test(regression, a_full_receive_ring_is_not_mistaken_for_held_data)
{
    snprintf(ctx, sizeof(ctx), "ring wrap");
    tern_sim_pair *pair = NULL;
    cr_assert_eq(tern_sim_pair_new(&pair, NULL, NULL, NULL, NULL, 1, 0), 0);
    tern_kcp *a = tern_sim_pair_engine(pair, TERN_SIM_A);
    tern_kcp *b = tern_sim_pair_engine(pair, TERN_SIM_B);
    for (uint8_t i = 0; i < 17; i++)
        cr_assert_eq(tern_kcp_send(a, &i, 1, 0), 0);
    cr_assert_eq(tern_sim_pair_flush(pair), 0);
    cr_assert_eq(tern_sim_pair_datagrams(pair, TERN_SIM_A), 1, "17 small messages, 1 datagram");
    int err = 0;
    tern_sim_pair_advance(pair, 0, &err);
    cr_assert_eq(err, 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs, 17, "17 segments arrived, %u deliverable", st.rcv_queue_segs);
    cr_assert_eq(st.rcv_buf_segs, 0, "none held out of order, %u claimed", st.rcv_buf_segs);
    for (uint8_t i = 0; i < 17; i++) {
        uint8_t got = 0xff;
        cr_assert_eq(tern_kcp_recv(b, &got, 1, 0), 1);
        cr_assert_eq(got, i);
    }
    uint8_t got;
    cr_assert_eq(tern_kcp_recv(b, &got, 1, 0), TERN_ERR_AGAIN);
    tern_sim_pair_del(pair);
}

/* Found at fcfc8a1 (introduced by 986564f, "cwnd covers retransmissions"),
 * fixed in 18386f5: with cc "reno" a dead path took O(snd_wnd x dead_link x
 * RTO) to be declared dead. Every in-flight segment timed out on its own
 * timer, cwnd fell to one MSS and the lost list was resent one segment per
 * RTO, round robin, so the oldest segment got one transmission per trip
 * round the list: fast3 with dead_link 8 and rto_max 3 s died after 521 s
 * (cc none: 2.3 s); the defaults with reno after 12.5 hours. */
Test(regression, dead_link_with_reno_is_bounded)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.mtu = MTU;
    s.dead_link = 8;
    s.rto_max_ms = 3000;
    s.cc = tern_kcp_cc_find("reno");
    dead_link_run("fast3 cc=reno", &s, 3, TERN_KCP_MODE_STREAM);
    s.snd_wnd = 1024;
    s.rcv_wnd = 1024;
    dead_link_run("fast3 cc=reno snd_wnd=1024", &s, 3, TERN_KCP_MODE_STREAM);
    tern_kcp_settings_default(&s);
    s.mtu = MTU;
    s.cc = tern_kcp_cc_find("reno");
    dead_link_run("defaults cc=reno", &s, 3, TERN_KCP_MODE_STREAM);
}

/* Found at fcfc8a1, fixed in 18386f5: a freed segment went back to its
 * size class's free list (128, 512 or MSS bytes) for good, uncharged, so a
 * sender that filled its queue with small messages, then medium, then
 * large ones, waiting for the ACKs each time, held about three times
 * snd_queue_max (99272 bytes for a 32 KiB queue). The seeded message-mode
 * transfers of bounds.sender_memory_stays_within_snd_queue_max showed it
 * first (40616 bytes). */
Test(regression, message_sizes_do_not_multiply_sender_memory)
{
    snprintf(ctx, sizeof(ctx), "size classes");
    counting cnt = {0};
    tern_mem mem = {count_malloc, count_free, &cnt};
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.mtu = MTU;
    s.ack_nodelay = true;
    s.snd_queue_max = 32 * KB;
    tern_kcp *a = NULL, *b = NULL;
    cr_assert_eq(tern_kcp_new(&a, &s, NULL, NULL, &mem, 0), 0);
    cr_assert_eq(tern_kcp_new(&b, &s, NULL, NULL, NULL, 0), 0);
    const size_t base = cnt.live;
    static uint8_t msg[MSS], dgram[MTU];
    const size_t sizes[] = {100, 500, MSS};
    tern_ms now = 0;
    for (size_t phase = 0; phase < 3; phase++) {
        int queued = 0;
        while (tern_kcp_send(a, msg, sizes[phase], now) == 0)
            queued++;
        cr_assert_gt(queued, 0);
        /* A perfect wire, one tick a round, until everything is acknowledged. */
        for (int round = 0; round < 1000 && tern_kcp_unacked_bytes(a); round++) {
            now++;
            tern_kcp_handle_expiry(a, now);
            tern_ssize n;
            while ((n = tern_kcp_write_pkt(a, dgram, sizeof(dgram), now)) > 0)
                cr_assert_eq(tern_kcp_read_pkt(b, dgram, (size_t)n, now), 0);
            while (tern_kcp_recv(b, msg, sizeof(msg), now) >= 0)
                ;
            while ((n = tern_kcp_write_pkt(b, dgram, sizeof(dgram), now)) > 0)
                cr_assert_eq(tern_kcp_read_pkt(a, dgram, (size_t)n, now), 0);
        }
        cr_assert_eq(tern_kcp_unacked_bytes(a), 0, "phase %zu never completed", phase);
        /* Idle, the sender keeps at most a queue's worth of free buffers;
         * busy, at most that plus the queue. */
        const size_t rings = RINGS_ALLOWANCE;
        cr_assert_leq(cnt.live - base, s.snd_queue_max + rings,
                      "phase %zu: an idle sender holds %zu bytes, bound %zu", phase,
                      cnt.live - base, s.snd_queue_max);
        cr_assert_leq(cnt.peak - base, 2 * s.snd_queue_max + rings,
                      "phase %zu: the sender peaked at %zu bytes, bound 2 x %zu", phase,
                      cnt.peak - base, s.snd_queue_max);
    }
    tern_kcp_del(a);
    tern_kcp_del(b);
    cr_assert_eq(cnt.live, 0, "all freed");
}

/* Found at fcfc8a1 (TERN_SOAK=1 TERN_SEED=500 matrix.loss5: message fast3
 * reno both-ways), fixed in 18386f5 by tern_kcp_unacked_segments and
 * stats.resend_segs: an empty message that had timed out sat in the lost
 * list, which nothing counted, and tern_kcp_unacked_bytes counts payload
 * bytes, so "nothing unacknowledged" could be said of an undelivered
 * message. */
Test(regression, an_unacknowledged_empty_message_is_visible)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    tern_kcp *a = NULL;
    cr_assert_eq(tern_kcp_new(&a, &s, NULL, NULL, NULL, 0), 0);
    cr_assert_eq(tern_kcp_send(a, "", 0, 0), 0);
    cr_assert_eq(tern_kcp_unacked_segments(a), 1, "queued");
    uint8_t dgram[MTU];
    cr_assert_eq(tern_kcp_write_pkt(a, dgram, sizeof(dgram), 0), TERN_KCP_OVERHEAD);
    cr_assert_eq(tern_kcp_unacked_segments(a), 1, "in flight");
    /* The datagram is lost; the RTO fires. */
    cr_assert_eq(tern_kcp_handle_expiry(a, tern_kcp_get_expiry(a)), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.lost, 1, "the empty message was declared lost");
    cr_assert_eq(tern_kcp_unacked_bytes(a), 0, "it has no payload");
    cr_assert_eq(tern_kcp_unacked_segments(a), 1, "waiting to be resent");
    cr_assert_eq(st.resend_segs, 1);
    cr_assert_eq(st.in_flight_segs + st.snd_queue_segs, 0);
    tern_kcp_del(a);
}
