/* Reliable-unordered delivery (tern_kcp_settings.unordered): over a
 * hand-driven wire, where the test decides which datagram arrives when, and
 * through the simulator (sim/pair.h) with loss, reordering and duplication,
 * where every message must arrive exactly once, in any order. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kcp/codec.h"
#include "kcp/engine_internal.h"
#include "kcp_pair_util.h"
#include "sim/pair.h"
#include "tern/kcp.h"
#include "tern/netsim.h"

#define MSS KP_MSS

static kp_wire w_ab, w_ba;

static void unordered(tern_kcp_settings *s)
{
    s->unordered = true;
    s->ack_nodelay = true;
}

/* ---- settings ---- */

Test(settings, unordered_and_forward_are_message_mode_only)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    cr_assert_not(s.unordered, "off by default");
    cr_assert_not(s.forward, "off by default");
    cr_assert_eq(tern_kcp_settings_set(&s, "unordered", "1"), 0);
    cr_assert(s.unordered);
    cr_assert_eq(tern_kcp_settings_set(&s, "forward", "true"), 0);
    cr_assert(s.forward);
    cr_assert_eq(tern_kcp_settings_set(&s, "unordered", "maybe"), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_check(&s), 0);
    s.mode = TERN_KCP_MODE_STREAM;
    cr_assert_eq(tern_kcp_settings_check(&s), TERN_ERR_INVAL);
    tern_kcp *k = NULL;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, NULL, 0), TERN_ERR_INVAL);
    cr_assert_null(k);
    s.unordered = false;
    cr_assert_eq(tern_kcp_settings_check(&s), TERN_ERR_INVAL, "forward alone, stream mode");
    s.forward = false;
    s.unordered = true;
    cr_assert_eq(tern_kcp_settings_check(&s), TERN_ERR_INVAL, "unordered alone, stream mode");
    s.unordered = false;
    cr_assert_eq(tern_kcp_settings_check(&s), 0);
}

/* ---- hand-driven ---- */

/* Six one-segment messages, each in a datagram of its own; the third is
 * lost. The receiver reads 0, 1, 4 and 5 at once; 3 waits, because a
 * segment after a gap may be the tail of a message begun in the gap (a
 * classic segment says how many fragments follow it, not how many came
 * before); the retransmission of 2 then releases 2 and 3. Each arrives once. */
static void lost_datagram_run(uint32_t start_sn)
{
    tern_kcp *a = kp_make(NULL);
    tern_kcp *b = kp_make(unordered);
    if (start_sn) {
        cr_assert_eq(tern_kcp_test_set_sequence(a, start_sn, start_sn), 0);
        cr_assert_eq(tern_kcp_test_set_sequence(b, start_sn, start_sn), 0);
    }
    static uint8_t msg[MSS];
    for (uint32_t i = 0; i < 6; i++) {
        kp_msg_fill(msg, MSS, i);
        cr_assert_eq(tern_kcp_send(a, msg, MSS, 0), 0);
        cr_assert_eq(kp_collect(a, &w_ab, 0), 1, "a full segment fills a datagram");
    }
    const size_t lose_third[] = {2, SIZE_MAX};
    kp_deliver(&w_ab, b, 10, lose_third);

    uint32_t ids[16];
    size_t n = kp_drain(b, ids, 16, 10);
    cr_assert_eq(n, 4, "read before the loss is repaired: %zu", n);
    cr_assert_eq(ids[0], 0);
    cr_assert_eq(ids[1], 1);
    cr_assert_eq(ids[2], 4);
    cr_assert_eq(ids[3], 5);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.msgs_recv, 4);
    cr_assert_eq(st.rcv_buf_segs, 3, "3 held, 4 and 5 as read marks");

    /* The ACKs of 3..5 make A retransmit 2 (fast retransmit / RTO). */
    kp_collect(b, &w_ba, 10);
    kp_deliver(&w_ba, a, 20, NULL);
    for (tern_ms t = 20; w_ab.n == 0 && t < 2000; t += 10) {
        cr_assert_eq(tern_kcp_handle_expiry(a, t), 0);
        kp_collect(a, &w_ab, t);
    }
    cr_assert_eq(w_ab.n, 1, "exactly the lost segment is resent");
    kp_deliver(&w_ab, b, 2000, NULL);
    n = kp_drain(b, ids, 16, 2000);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[0], 2);
    cr_assert_eq(ids[1], 3);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.msgs_recv, 6);
    cr_assert_eq(st.rcv_buf_segs, 0);
    cr_assert_eq(st.rcv_queue_segs, 0, "the marks were released as rcv_nxt passed");
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN);

    /* A copy of something already read is a duplicate, never a message. */
    kp_msg_fill(msg, MSS, 4);
    tern_kcp_hdr h = {
        .conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = start_sn + 4, .una = 0, .len = MSS, .wnd = 128};
    static uint8_t d[24 + MSS];
    tern_kcp_hdr_encode(d, &h);
    memcpy(d + 24, msg, MSS);
    cr_assert_eq(tern_kcp_read_pkt(b, d, sizeof(d), 2010), 0);
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.dup_segs, 1);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(unordered, later_messages_overtake_a_lost_datagram)
{
    lost_datagram_run(0);
}

/* The same across the 2^32 wrap of sn: the lost segment is the last one
 * before the wrap. */
Test(unordered, across_the_sequence_wrap)
{
    lost_datagram_run(0xfffffffeu);
}

static void no_bundling(tern_kcp_settings *s)
{
    s->bundle_bytes = 0;
}

/* A five-fragment message is read only once every fragment is in, whatever
 * order they come in; the one-segment message after it is read as soon as
 * the fragment before it (the big message's last) says where it begins. */
Test(unordered, a_message_is_read_only_when_complete)
{
    tern_kcp *a = kp_make(no_bundling);
    tern_kcp *b = kp_make(unordered);
    static uint8_t msg[5 * MSS];
    kp_msg_fill(msg, 10, 0);
    cr_assert_eq(tern_kcp_send(a, msg, 10, 0), 0);
    kp_msg_fill(msg, sizeof(msg), 1);
    cr_assert_eq(tern_kcp_send(a, msg, sizeof(msg), 0), 0);
    kp_msg_fill(msg, 20, 2);
    cr_assert_eq(tern_kcp_send(a, msg, 20, 0), 0);
    /* Datagram 0: message 0; 1..5: fragments 1.0 .. 1.4; 6: message 2. */
    cr_assert_eq(kp_collect(a, &w_ab, 0), 7);
    kp_wire *keep = malloc(sizeof(kp_wire));
    cr_assert_not_null(keep);
    memcpy(keep, &w_ab, sizeof(kp_wire));
    const size_t lose[] = {1, 3, SIZE_MAX};
    kp_deliver(&w_ab, b, 5, lose);
    uint32_t ids[8];
    size_t n = kp_drain(b, ids, 8, 5);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[0], 0);
    cr_assert_eq(ids[1], 2, "message 2 follows the end of message 1");
    cr_assert_eq(tern_kcp_read_pkt(b, keep->pkt[3], keep->len[3], 6), 0);
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN, "fragment 1.0 still missing");
    cr_assert_eq(tern_kcp_read_pkt(b, keep->pkt[1], keep->len[1], 7), 0);
    cr_assert_eq(tern_kcp_peek_size(b), (tern_ssize)sizeof(msg));
    n = kp_drain(b, ids, 8, 7);
    cr_assert_eq(n, 1);
    cr_assert_eq(ids[0], 1);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs + st.rcv_buf_segs, 0);
    cr_assert_eq(st.msgs_recv, 3);
    free(keep);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* A message after a complete one is read before the message in front of
 * both is repaired, and peek tells its size. */
Test(unordered, peek_and_recv_agree_and_small_buffers_keep_the_message)
{
    tern_kcp *a = kp_make(NULL);
    tern_kcp *b = kp_make(unordered);
    static uint8_t msg[MSS];
    for (uint32_t i = 0; i < 3; i++) {
        kp_msg_fill(msg, MSS, i);
        cr_assert_eq(tern_kcp_send(a, msg, MSS, 0), 0);
    }
    cr_assert_eq(kp_collect(a, &w_ab, 0), 3);
    const size_t lose[] = {0, SIZE_MAX};
    kp_deliver(&w_ab, b, 5, lose);
    cr_assert_eq(tern_kcp_peek_size(b), (tern_ssize)MSS, "message 2 follows complete message 1");
    uint8_t small[100];
    cr_assert_eq(tern_kcp_recv(b, small, sizeof(small), 5), TERN_ERR_NOBUFS);
    static uint8_t buf[MSS];
    cr_assert_eq(tern_kcp_recv(b, buf, sizeof(buf), 5), (tern_ssize)MSS);
    uint32_t id;
    cr_assert(kp_msg_ok(buf, MSS, &id));
    cr_assert_eq(id, 2);
    cr_assert_eq(tern_kcp_recv(b, buf, sizeof(buf), 5), TERN_ERR_AGAIN,
                 "message 1 follows the gap");
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* A flood of out-of-order one-segment messages beyond a gap, most of them
 * past the window: held segments stay within rcv_wnd, those past it are
 * dropped and counted, the advertised window never grows past rcv_wnd, and
 * reading early does not let the receiver hold more. */
Test(unordered, the_receive_window_stays_bounded_under_a_flood)
{
    tern_kcp *b = kp_make(unordered); /* rcv_wnd 256 */
    uint8_t d[24 + 8];
    uint32_t order[1024];
    for (uint32_t i = 0; i < 1024; i++)
        order[i] = 1 + i;
    /* A fixed shuffle. */
    uint64_t x = 12345;
    for (uint32_t i = 1023; i > 0; i--) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        uint32_t j = (uint32_t)((x >> 33) % (i + 1));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    uint32_t read = 0;
    static uint8_t buf[64];
    for (uint32_t i = 0; i < 1024; i++) {
        tern_kcp_hdr h = {
            .conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = order[i], .len = 8, .wnd = 128};
        tern_kcp_hdr_encode(d, &h);
        memcpy(d + 24, &h.sn, 4);
        memset(d + 28, 0, 4);
        cr_assert_eq(tern_kcp_read_pkt(b, d, sizeof(d), i), 0);
        tern_kcp_stats st;
        tern_kcp_get_stats(b, &st);
        cr_assert_leq(st.rcv_buf_segs, 256, "held %u", st.rcv_buf_segs);
        cr_assert_eq(st.rcv_queue_segs, 0, "sn 0 never came");
        while (tern_kcp_recv(b, buf, sizeof(buf), i) == 8)
            read++;
        uint8_t out[1500];
        tern_ssize n;
        while ((n = tern_kcp_write_pkt(b, out, sizeof(out), i)) > 0) {
            tern_kcp_hdr o;
            tern_kcp_hdr_decode(out, &o);
            cr_assert_leq(o.wnd, 256);
            cr_assert_eq(o.una, 0);
        }
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_gt(st.out_of_window, 700, "past rcv_nxt + rcv_wnd: %llu",
                 (unsigned long long)st.out_of_window);
    /* Of sn 1..255 (the window past sn 0), all but sn 1 are read: each
     * follows a complete message; sn 1 follows the gap. */
    cr_assert_eq(read, 254, "read %u", read);
    /* sn 0 arrives: sn 1 becomes readable, rcv_nxt passes the marks. */
    tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = 0, .len = 8, .wnd = 128};
    tern_kcp_hdr_encode(d, &h);
    cr_assert_eq(tern_kcp_read_pkt(b, d, sizeof(d), 2000), 0);
    while (tern_kcp_recv(b, buf, sizeof(buf), 2000) == 8)
        read++;
    cr_assert_eq(read, 256);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_buf_segs, 0);
    cr_assert_eq(st.rcv_queue_segs, 0);
    cr_assert_eq(st.msgs_recv, 256);
    tern_kcp_del(b);
}

/* A message that cannot fit in what the receiver holds (rcv_wnd
 * deliverable plus rcv_wnd out of order) can never be reassembled:
 * unordered as ordered, it is dropped and counted, and its tail never
 * surfaces. */
static void small_window(tern_kcp_settings *s)
{
    unordered(s);
    s->rcv_wnd = 4;
}

Test(unordered, a_message_larger_than_the_window_is_dropped)
{
    tern_kcp *a = kp_make(NULL);
    tern_kcp *b = kp_make(small_window);
    static uint8_t big[10 * MSS], buf[10 * MSS];
    kp_msg_fill(big, sizeof(big), 0);
    cr_assert_eq(tern_kcp_send(a, big, sizeof(big), 0), 0);
    kp_msg_fill(big, 40, 1);
    cr_assert_eq(tern_kcp_send(a, big, 40, 0), 0);
    uint32_t ids[4];
    size_t n = 0;
    bool msgsize = false;
    for (tern_ms t = 0; t < 20000 && (n == 0 || !msgsize); t += 10) {
        cr_assert_eq(tern_kcp_handle_expiry(a, t), 0);
        kp_collect(a, &w_ab, t);
        kp_deliver(&w_ab, b, t, NULL);
        tern_ssize got = tern_kcp_recv(b, buf, sizeof(buf), t);
        if (got == TERN_ERR_MSGSIZE)
            msgsize = true;
        else if (got >= 0)
            cr_assert(kp_msg_ok(buf, (size_t)got, &ids[n++]));
        kp_collect(b, &w_ba, t);
        kp_deliver(&w_ba, a, t, NULL);
    }
    cr_assert(msgsize);
    cr_assert_eq(n, 1);
    cr_assert_eq(ids[0], 1, "the tail of message 0 never surfaced");
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.oversize_msgs, 1);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* ---- through the simulator ---- */

#define SIM_MSGS 400u

typedef struct cond {
    const char *name;
    double loss, reorder, dup;
    uint32_t jitter;
} cond;

/* A sends SIM_MSGS messages of 0 to 3 segments to an unordered B over a
 * bad link; every message must be read exactly once and intact. Returns
 * how many were read ahead of an older one. */
static uint32_t sim_run(const cond *c, uint64_t seed)
{
    tern_kcp_settings sa, sb;
    tern_kcp_settings_default(&sa);
    tern_kcp_settings_default(&sb);
    sb.unordered = true;
    sa.rcv_wnd = sb.rcv_wnd = 64;
    sa.snd_wnd = sb.snd_wnd = 64;
    tern_netsim_cfg link;
    tern_netsim_cfg_default(&link);
    link.loss = c->loss;
    link.delay_ms = 20;
    link.jitter_ms = c->jitter;
    link.reorder = c->reorder;
    link.reorder_ms = 15;
    link.duplicate = c->dup;
    tern_sim_pair *p = NULL;
    cr_assert_eq(tern_sim_pair_new(&p, &sa, &sb, &link, &link, seed, 1000), 0);
    tern_kcp *a = tern_sim_pair_engine(p, TERN_SIM_A);
    tern_kcp *b = tern_sim_pair_engine(p, TERN_SIM_B);
    static uint8_t seen[SIM_MSGS];
    memset(seen, 0, sizeof(seen));
    static uint8_t buf[3 * MSS + 64];
    uint32_t sent = 0, got = 0, overtakes = 0, next_expected = 0;
    uint64_t x = seed * 2654435761u + 1;
    tern_ms now = 1000;
    while (got < SIM_MSGS && now < 1000 + 600000) {
        while (sent < SIM_MSGS && tern_kcp_unacked_segments(a) < 128) {
            x = x * 6364136223846793005u + 1442695040888963407u;
            size_t len = 4 + (size_t)((x >> 33) % (3 * MSS));
            kp_msg_fill(buf, len, sent);
            int rc = tern_kcp_send(a, buf, len, now);
            if (rc == TERN_ERR_WOULDBLOCK)
                break;
            cr_assert_eq(rc, 0);
            sent++;
        }
        cr_assert_eq(tern_sim_pair_flush(p), 0);
        int err = 0;
        now = tern_sim_pair_advance(p, now + 5, &err);
        cr_assert_eq(err, 0, "%s seed %llu: %s", c->name, (unsigned long long)seed,
                     tern_strerror(err));
        tern_ssize n;
        while ((n = tern_kcp_recv(b, buf, sizeof(buf), now)) >= 0) {
            uint32_t id;
            cr_assert(kp_msg_ok(buf, (size_t)n, &id), "%s seed %llu: corrupt message", c->name,
                      (unsigned long long)seed);
            cr_assert_lt(id, sent);
            cr_assert_eq(seen[id], 0, "%s seed %llu: message %u twice", c->name,
                         (unsigned long long)seed, id);
            seen[id] = 1;
            got++;
            if (id != next_expected)
                overtakes++;
            while (next_expected < SIM_MSGS && seen[next_expected])
                next_expected++;
        }
        tern_kcp_stats st;
        tern_kcp_get_stats(b, &st);
        cr_assert_leq(st.rcv_buf_segs, sb.rcv_wnd);
        cr_assert_leq(st.rcv_queue_segs, sb.rcv_wnd);
    }
    cr_assert_eq(got, SIM_MSGS, "%s seed %llu: %u of %u read", c->name, (unsigned long long)seed,
                 got, SIM_MSGS);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.msgs_recv, SIM_MSGS);
    tern_sim_pair_del(p);
    return overtakes;
}

/* TERN_SOAK=1: 200 seeds per condition instead of 6. */
static bool soak(void)
{
    const char *e = getenv("TERN_SOAK");
    return e && *e && strcmp(e, "0") != 0;
}

Test(unordered_sim, every_message_exactly_once_over_bad_links, .timeout = 600)
{
    static const cond conds[] = {
        {"clean", 0, 0, 0, 0},
        {"loss 5%", 0.05, 0, 0, 0},
        {"loss 15% + jitter", 0.15, 0, 0, 10},
        {"reorder 20%", 0, 0.2, 0, 5},
        {"dup 10% + loss 5%", 0.05, 0, 0.10, 0},
        {"everything", 0.10, 0.10, 0.05, 10},
    };
    uint32_t overtakes_lossy = 0;
    uint64_t seeds = soak() ? 200 : 6;
    for (size_t c = 0; c < sizeof(conds) / sizeof(conds[0]); c++) {
        for (uint64_t seed = 1; seed <= seeds; seed++) {
            uint32_t o = sim_run(&conds[c], seed);
            if (c == 0)
                cr_assert_eq(o, 0, "a clean link delivers in order");
            else
                overtakes_lossy += o;
        }
    }
    cr_assert_gt(overtakes_lossy, 100, "unordered delivery should overtake: %u", overtakes_lossy);
}
