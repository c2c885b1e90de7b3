/* Per-message deadlines (tern_kcp_send_deadline) and the FORWARD command
 * (tern_kcp_settings.forward) that tells the receiver what was abandoned:
 * over a hand-driven wire, where the test decides which datagram arrives
 * when, and through the simulator (sim/pair.h) with loss and partitions. */
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
#define NEVER UINT64_MAX

static kp_wire w_ab, w_ba;

static void fwd(tern_kcp_settings *s)
{
    s->forward = true;
    s->ack_nodelay = true;
}

static void fwd_unordered(tern_kcp_settings *s)
{
    fwd(s);
    s->unordered = true;
}

static void fwd_wnd1(tern_kcp_settings *s)
{
    fwd(s);
    s->snd_wnd = 1;
}

/* How many segments with command cmd w holds. */
static size_t count_cmd(const kp_wire *w, uint8_t cmd, uint32_t *last_sn)
{
    size_t n = 0;
    for (size_t i = 0; i < w->n; i++) {
        for (size_t off = 0; off < w->len[i];) {
            tern_kcp_hdr h;
            tern_kcp_hdr_decode(w->pkt[i] + off, &h);
            if (h.cmd == cmd) {
                n++;
                if (last_sn)
                    *last_sn = h.sn;
            }
            off += TERN_KCP_OVERHEAD + h.len;
        }
    }
    return n;
}

static void send_msg(tern_kcp *a, uint32_t id, size_t len, tern_ms deadline, tern_ms now)
{
    static uint8_t buf[KP_MSG_MAX];
    kp_msg_fill(buf, len, id);
    cr_assert_eq(tern_kcp_send_deadline(a, buf, len, deadline, now), 0);
}

/* Both ways until neither side has anything to say, at time now. */
static void exchange(tern_kcp *a, tern_kcp *b, tern_ms now)
{
    kp_exchange(a, b, &w_ab, &w_ba, now);
}

/* ---- the API's refusals ---- */

Test(deadline, send_deadline_needs_forward_and_message_mode)
{
    tern_kcp *plain = kp_make(NULL);
    cr_assert_eq(tern_kcp_send_deadline(plain, "x", 1, 100, 0), TERN_ERR_UNSUPPORTED);
    cr_assert_eq(tern_kcp_unacked_segments(plain), 0, "nothing queued");
    cr_assert_eq(tern_kcp_send_deadline(plain, "x", 1, NEVER, 0), 0, "no deadline: a plain send");
    cr_assert_eq(tern_kcp_unacked_segments(plain), 1);
    tern_kcp_del(plain);

    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.mode = TERN_KCP_MODE_STREAM;
    tern_kcp *stream = NULL;
    cr_assert_eq(tern_kcp_new(&stream, &s, NULL, NULL, NULL, 0), 0);
    cr_assert_eq(tern_kcp_send_deadline(stream, "xy", 2, 100, 0), TERN_ERR_UNSUPPORTED);
    cr_assert_eq(tern_kcp_send_deadline(stream, "xy", 2, NEVER, 0), 0);
    tern_kcp_del(stream);

    tern_kcp *a = kp_make(fwd);
    cr_assert_eq(tern_kcp_send_deadline(NULL, "x", 1, 100, 0), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_send_deadline(a, NULL, 1, 100, 0), TERN_ERR_INVAL);
    static uint8_t big[256 * MSS];
    cr_assert_eq(tern_kcp_send_deadline(a, big, tern_kcp_max_message(a) + 1, 100, 0),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_kcp_send_deadline(a, big, tern_kcp_max_message(a), 100, 0), 0,
                 "the largest message fits, its deadline record included");
    tern_kcp_del(a);
}

/* FORWARD is not classic KCP: an engine without `forward` treats it as an
 * unknown command, so the whole datagram is malformed and counted. */
Test(deadline, cmd_85_is_malformed_without_forward)
{
    uint8_t d[2 * 24 + 1];
    tern_kcp_hdr push = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = 0, .len = 1, .wnd = 64};
    tern_kcp_hdr fw = {.conv = 7, .cmd = TERN_KCP_CMD_FORWARD, .sn = 3, .wnd = 64};
    tern_kcp_hdr_encode(d, &fw);
    tern_kcp_hdr_encode(d + 24, &push);
    d[48] = 'x';
    cr_assert_eq(tern_kcp_datagram_check(d, sizeof(d), 7), TERN_ERR_MALFORMED);
    cr_assert_eq(tern_kcp_datagram_check_ext(d, sizeof(d), 7, false), TERN_ERR_MALFORMED);
    cr_assert_eq(tern_kcp_datagram_check_ext(d, sizeof(d), 7, true), 2);

    tern_kcp *classic = kp_make(NULL);
    cr_assert_eq(tern_kcp_read_pkt(classic, d, sizeof(d), 0), TERN_ERR_MALFORMED);
    tern_kcp_stats st;
    tern_kcp_get_stats(classic, &st);
    cr_assert_eq(st.malformed, 1);
    cr_assert_eq(st.segs_recv, 0, "nothing of it applied");
    cr_assert_eq(tern_kcp_peek_size(classic), TERN_ERR_AGAIN);
    tern_kcp_del(classic);

    tern_kcp *b = kp_make(fwd);
    cr_assert_eq(tern_kcp_read_pkt(b, d, sizeof(d), 0), 0);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.forwards_recv, 1);
    cr_assert_eq(st.forwarded_skipped, 3, "sn 0..2 skipped");
    cr_assert_eq(st.out_of_window + st.dup_segs, 1, "sn 0 is now below rcv_nxt");
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN);
    /* A FORWARD with a payload is malformed even with forward on. */
    fw.len = 1;
    tern_kcp_hdr_encode(d, &fw);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 1), TERN_ERR_MALFORMED);
    tern_kcp_del(b);
}

/* ---- expiry at the sender, skipping at the receiver ---- */

/* A partition longer than the deadline: the messages sent into it expire
 * at the sender (their memory released), the FORWARD that is repeated into
 * the partition gets through once it heals, the receiver skips them, and
 * messages sent after the partition arrive. */
static void partition_run(void (*rx)(tern_kcp_settings *), uint32_t start_sn)
{
    tern_kcp *a = kp_make(fwd);
    tern_kcp *b = kp_make(rx);
    if (start_sn) {
        cr_assert_eq(tern_kcp_test_set_sequence(a, start_sn, start_sn), 0);
        cr_assert_eq(tern_kcp_test_set_sequence(b, start_sn, start_sn), 0);
    }
    send_msg(a, 0, 100, NEVER, 0);
    exchange(a, b, 0);
    uint32_t ids[16];
    cr_assert_eq(kp_drain(b, ids, 16, 0), 1);

    /* Partition from t = 10 to t = 1000; deadlines at t = 110. */
    for (uint32_t i = 1; i <= 5; i++)
        send_msg(a, i, i == 3 ? 3 * MSS : 200, 110, 10);
    uint64_t writes = 0;
    for (tern_ms t = 10; t < 1000; t += 5) {
        cr_assert_eq(tern_kcp_handle_expiry(a, t), 0);
        kp_collect(a, &w_ab, t);
        writes++;
        kp_drop_all(&w_ab);
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.expired_msgs, 5);
    cr_assert_eq(st.expired_segs, 7, "3 of them for the 3-segment message");
    cr_assert_eq(st.snd_queue_bytes, 0, "their memory is released");
    cr_assert_eq(st.in_flight_segs, 0);
    cr_assert_eq(st.in_flight_bytes, 0);
    cr_assert_eq(st.resend_segs, 0);
    cr_assert_eq(tern_kcp_unacked_segments(a), 0);
    cr_assert_geq(st.forwards_sent, 2, "repeated into the partition");
    cr_assert_leq(st.forwards_sent, 8, "on its backed-off timer, not per write: %llu of %llu",
                  (unsigned long long)st.forwards_sent, (unsigned long long)writes);
    uint64_t retrans = st.retrans_timeout + st.retrans_fast + st.retrans_early;

    /* Healed: new messages go, the FORWARD gets through. */
    send_msg(a, 6, 50, NEVER, 1000);
    send_msg(a, 7, 2 * MSS, NEVER, 1000);
    for (tern_ms t = 1000; t < 5000; t += 10)
        exchange(a, b, t);
    size_t n = kp_drain(b, ids, 16, 5000);
    cr_assert_eq(n, 2);
    /* Unordered, 7 may come first: it is known complete on arrival, while
     * 6 follows the gap until the FORWARD fills it. */
    cr_assert(ids[0] + ids[1] == 13 && (ids[0] == 6 || ids[0] == 7));
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.forwarded_skipped, 7);
    cr_assert_geq(st.forwards_recv, 1);
    cr_assert_eq(st.msgs_recv, 3);
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.retrans_timeout + st.retrans_fast + st.retrans_early, retrans,
                 "expired segments are never resent");
    cr_assert_eq(tern_kcp_unacked_segments(a), 0);
    cr_assert_eq(tern_kcp_get_expiry(a), NEVER, "no FORWARD owed any more");
    uint64_t sent = st.forwards_sent;
    exchange(a, b, 9000);
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.forwards_sent, sent);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(deadline, a_partition_longer_than_the_deadline_ordered)
{
    partition_run(fwd, 0);
}

Test(deadline, a_partition_longer_than_the_deadline_unordered)
{
    partition_run(fwd_unordered, 0);
}

/* The skipped sequence numbers straddle the 2^32 wrap. */
Test(deadline, a_partition_longer_than_the_deadline_across_the_wrap)
{
    partition_run(fwd, 0xfffffffcu);
    partition_run(fwd_unordered, 0xfffffffcu);
}

/* A three-fragment message of which the first and last arrive and the
 * middle one is lost: when it expires, the receiver drops the fragments it
 * has (ordered or not), and the next message arrives whole. */
static void partial_run(void (*rx)(tern_kcp_settings *))
{
    tern_kcp *a = kp_make(fwd);
    tern_kcp *b = kp_make(rx);
    send_msg(a, 1, 3 * MSS, 100, 0);
    cr_assert_eq(kp_collect(a, &w_ab, 0), 3);
    /* Lose the middle fragment; ACKs lost too, so nothing is acknowledged. */
    cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[0], w_ab.len[0], 5), 0);
    cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[2], w_ab.len[2], 5), 0);
    w_ab.n = 0;
    kp_collect(b, &w_ba, 5);
    kp_drop_all(&w_ba);
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN);
    /* The deadline comes before the retransmission timer gets anywhere. */
    cr_assert_eq(tern_kcp_handle_expiry(a, 100), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.expired_msgs, 1);
    cr_assert_eq(st.expired_segs, 3);
    send_msg(a, 2, 10, NEVER, 100);
    kp_collect(a, &w_ab, 100);
    uint32_t f = 0;
    cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_FORWARD, &f), 1);
    cr_assert_eq(f, 3, "F is the next message's sn");
    kp_deliver(&w_ab, b, 105, NULL);
    uint32_t ids[4];
    size_t n = kp_drain(b, ids, 4, 105);
    cr_assert_eq(n, 1);
    cr_assert_eq(ids[0], 2);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.forwarded_skipped, 1);
    cr_assert_eq(st.forwarded_dropped, 2, "fragments 0 and 2 dropped");
    cr_assert_eq(st.rcv_buf_segs + st.rcv_queue_segs, 0);
    exchange(a, b, 110);
    cr_assert_eq(tern_kcp_unacked_segments(a), 0);
    cr_assert_eq(tern_kcp_get_expiry(a), NEVER);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(deadline, a_receiver_never_delivers_part_of_a_message_ordered)
{
    partial_run(fwd);
}

Test(deadline, a_receiver_never_delivers_part_of_a_message_unordered)
{
    partial_run(fwd_unordered);
}

/* A message cut short: with a window of one segment only its first
 * fragment was sent (and received) when it expired. Its other fragments'
 * sequence numbers are still used up, so the next message cannot look like
 * their continuation, and the receiver drops the fragment it holds. */
static void cut_run(void (*rx)(tern_kcp_settings *))
{
    tern_kcp *a = kp_make(fwd_wnd1);
    tern_kcp *b = kp_make(rx);
    send_msg(a, 1, 3 * MSS, 50, 0);
    cr_assert_eq(kp_collect(a, &w_ab, 0), 1, "one segment in the window");
    kp_deliver(&w_ab, b, 5, NULL);
    kp_collect(b, &w_ba, 5);
    kp_drop_all(&w_ba); /* its ACK is lost */
    cr_assert_eq(tern_kcp_handle_expiry(a, 50), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.expired_msgs, 1);
    cr_assert_eq(st.expired_segs, 3);
    cr_assert_eq(st.snd_queue_bytes, 0);
    send_msg(a, 2, 10, NEVER, 50);
    for (tern_ms t = 50; t < 3000; t += 10)
        exchange(a, b, t);
    uint32_t ids[4];
    size_t n = kp_drain(b, ids, 4, 3000);
    cr_assert_eq(n, 1);
    cr_assert_eq(ids[0], 2);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.forwarded_dropped, 1);
    cr_assert_eq(st.forwarded_skipped, 2);
    cr_assert_eq(st.msgs_recv, 1);
    cr_assert_eq(tern_kcp_unacked_segments(a), 0);
    cr_assert_eq(tern_kcp_get_expiry(a), NEVER);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(deadline, a_message_cut_short_uses_up_its_sequence_numbers_ordered)
{
    cut_run(fwd);
}

Test(deadline, a_message_cut_short_uses_up_its_sequence_numbers_unordered)
{
    cut_run(fwd_unordered);
}

static void fwd_wnd64(tern_kcp_settings *s)
{
    fwd(s);
    s->snd_wnd = 64;
}

/* Found by fuzz_kcp_input: a message cut short while the peer's window was
 * one segment, then a large message queued before the cut one's numbers
 * were used up. The send ring must have room for those numbers too. */
Test(deadline, the_send_ring_makes_room_for_numbers_still_to_use_up)
{
    tern_kcp *a = kp_make(fwd_wnd64);
    tern_kcp *b = kp_make(fwd);
    uint8_t wins[24];
    tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_WINS, .wnd = 1};
    tern_kcp_hdr_encode(wins, &h);
    cr_assert_eq(tern_kcp_read_pkt(a, wins, sizeof(wins), 0), 0);
    send_msg(a, 1, 12 * MSS, 50, 0);
    cr_assert_eq(kp_collect(a, &w_ab, 0), 1, "the peer's window takes one segment");
    kp_drop_all(&w_ab);
    cr_assert_eq(tern_kcp_handle_expiry(a, 50), 0);
    send_msg(a, 2, 15 * MSS, NEVER, 50);
    /* The FORWARD past the sent fragment opens the peer's window... */
    kp_collect(a, &w_ab, 50);
    cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_FORWARD, NULL), 1);
    kp_deliver(&w_ab, b, 55, NULL);
    kp_collect(b, &w_ba, 55);
    kp_deliver(&w_ba, a, 60, NULL);
    /* ... the cut message's numbers are used up and message 2 goes out. Only
     * the FORWARD past those numbers arrives: the peer's una then covers
     * them, and must acknowledge nothing of message 2. */
    kp_collect(a, &w_ab, 60);
    cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_FORWARD, NULL), 1);
    for (size_t i = 0; i < w_ab.n; i++) {
        tern_kcp_hdr first;
        tern_kcp_hdr_decode(w_ab.pkt[i], &first);
        if (first.cmd == TERN_KCP_CMD_FORWARD)
            cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[i], w_ab.len[i], 65), 0);
    }
    w_ab.n = 0;
    kp_collect(b, &w_ba, 65);
    kp_deliver(&w_ba, a, 70, NULL);
    for (tern_ms t = 70; t < 3000; t += 10)
        exchange(a, b, t);
    uint32_t ids[4];
    cr_assert_eq(kp_drain(b, ids, 4, 3000), 1);
    cr_assert_eq(ids[0], 2);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.forwarded_skipped, 12);
    cr_assert_eq(tern_kcp_unacked_segments(a), 0);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* The FORWARD is lost again and again: it is repeated on its timer, with
 * backoff, never more often, until the receiver's una passes F. */
Test(deadline, a_lost_forward_is_repeated_until_una_passes)
{
    tern_kcp *a = kp_make(fwd);
    tern_kcp *b = kp_make(fwd);
    send_msg(a, 1, 10, 20, 0);
    kp_collect(a, &w_ab, 0);
    kp_drop_all(&w_ab);
    tern_ms t = 0;
    tern_ms sent_at[4];
    for (int i = 0; i < 4; i++) {
        /* Only get_expiry's times: nothing goes between them. */
        for (;;) {
            tern_ms e = tern_kcp_get_expiry(a);
            cr_assert_neq(e, NEVER);
            cr_assert_geq(e, t);
            t = e;
            cr_assert_eq(tern_kcp_handle_expiry(a, t), 0);
            kp_collect(a, &w_ab, t);
            /* Writing again at the same instant adds nothing. */
            cr_assert_eq(kp_collect(a, &w_ab, t), 0);
            if (count_cmd(&w_ab, TERN_KCP_CMD_FORWARD, NULL))
                break;
            kp_drop_all(&w_ab);
        }
        sent_at[i] = t;
        cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_FORWARD, NULL), 1);
        cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_PUSH, NULL), 0, "the expired one is not resent");
        if (i < 3)
            kp_drop_all(&w_ab);
    }
    cr_assert_eq(sent_at[0], 20, "sent as soon as the message expired");
    cr_assert_gt(sent_at[2] - sent_at[1], sent_at[1] - sent_at[0], "backed off");
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.forwards_sent, 4);
    kp_deliver(&w_ab, b, t + 5, NULL);
    kp_collect(b, &w_ba, t + 5);
    cr_assert_eq(count_cmd(&w_ba, TERN_KCP_CMD_WINS, NULL), 1, "answered at once");
    kp_deliver(&w_ba, a, t + 10, NULL);
    cr_assert_eq(tern_kcp_get_expiry(a), NEVER);
    cr_assert_eq(kp_collect(a, &w_ab, t + 10000), 0);
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.forwards_sent, 4);
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.forwarded_skipped, 1);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* A peer that never takes the FORWARD (it has forward off and drops each
 * datagram holding one) ends in a dead link, not a silent stall. */
Test(deadline, a_peer_that_never_takes_the_forward_is_dead)
{
    tern_kcp *a = kp_make(fwd);
    tern_kcp *b = kp_make(NULL);
    send_msg(a, 1, 10, 20, 0);
    kp_collect(a, &w_ab, 0);
    kp_drop_all(&w_ab);
    tern_ms t = 20;
    int rc = 0;
    for (int i = 0; i < 200 && !tern_kcp_is_dead(a); i++) {
        rc = tern_kcp_handle_expiry(a, t);
        for (;;) {
            tern_ssize n = tern_kcp_write_pkt(a, w_ab.pkt[0], sizeof(w_ab.pkt[0]), t);
            if (n <= 0)
                break;
            cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[0], (size_t)n, t), TERN_ERR_MALFORMED);
        }
        tern_ms e = tern_kcp_get_expiry(a);
        t = e == NEVER ? t : e;
    }
    cr_assert(tern_kcp_is_dead(a));
    (void)rc;
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.malformed, 20, "dead_link FORWARDs, each one counted");
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* ---- timers and memory ---- */

Test(deadline, get_expiry_follows_the_earliest_deadline)
{
    tern_kcp *a = kp_make(fwd);
    send_msg(a, 0, 10, 5000, 0);
    kp_collect(a, &w_ab, 0);
    kp_drop_all(&w_ab);
    tern_ms rto = tern_kcp_get_expiry(a);
    cr_assert_lt(rto, 5000, "the RTO comes first");
    /* Deadlines out of send order. */
    send_msg(a, 1, 10, 900, 0);
    send_msg(a, 2, 10, 60, 0);
    send_msg(a, 3, 10, 400, 0);
    kp_collect(a, &w_ab, 0);
    kp_drop_all(&w_ab);
    cr_assert_eq(tern_kcp_get_expiry(a), 60);
    cr_assert_eq(tern_kcp_handle_expiry(a, 60), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.expired_msgs, 1);
    cr_assert_eq(tern_kcp_unacked_segments(a), 3);
    /* Message 2 lies between live ones: nothing to forward past yet. */
    cr_assert_eq(kp_collect(a, &w_ab, 60), 0);
    cr_assert_eq(st.forwards_sent, 0);
    tern_kcp_del(a);
}

static void fwd_small_queue(tern_kcp_settings *s)
{
    fwd(s);
    s->snd_queue_max = 64 * 1024;
}

/* Messages that expire before they were ever sent are simply removed:
 * their memory comes back, no sequence number is used, nothing is owed. */
Test(deadline, never_sent_messages_are_removed_and_their_memory_released)
{
    tern_kcp *a = kp_make(fwd_small_queue);
    int queued = 0, rc;
    while ((rc = tern_kcp_send_deadline(a, (uint8_t[1000]){0}, 1000, 100, 0)) == 0)
        queued++;
    cr_assert_eq(rc, TERN_ERR_WOULDBLOCK);
    cr_assert_gt(queued, 10);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.snd_queue_bytes, (size_t)queued * 1000);
    cr_assert_eq(tern_kcp_get_expiry(a), 0, "data to send now");
    cr_assert_eq(tern_kcp_handle_expiry(a, 100), 0);
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.expired_msgs, (uint64_t)queued);
    cr_assert_eq(st.expired_segs, (uint64_t)queued);
    cr_assert_eq(st.snd_queue_bytes, 0);
    cr_assert_eq(tern_kcp_unacked_segments(a), 0);
    cr_assert_eq(tern_kcp_get_expiry(a), NEVER, "nothing sent, nothing to forward");
    cr_assert_eq(tern_kcp_send_deadline(a, "abcd", 4, 200, 100), 0, "room again");
    cr_assert_eq(kp_collect(a, &w_ab, 100), 1);
    uint32_t sn = 99;
    cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_PUSH, &sn), 1);
    cr_assert_eq(sn, 0, "no sequence number was used up");
    cr_assert_eq(count_cmd(&w_ab, TERN_KCP_CMD_FORWARD, NULL), 0);
    tern_kcp_del(a);
}

/* A deadline already past: the message expires before any of it leaves. */
Test(deadline, a_deadline_in_the_past_sends_nothing)
{
    tern_kcp *a = kp_make(fwd);
    send_msg(a, 0, 10, 5, 10);
    cr_assert_eq(kp_collect(a, &w_ab, 10), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.expired_msgs, 1);
    cr_assert_eq(st.segs_sent, 0);
    tern_kcp_del(a);
}

typedef struct counting_alloc {
    size_t mallocs, frees;
} counting_alloc;

static void *count_malloc(size_t n, void *ud)
{
    ((counting_alloc *)ud)->mallocs++;
    return malloc(n);
}

static void count_free(void *p, void *ud)
{
    if (p)
        ((counting_alloc *)ud)->frees++;
    free(p);
}

/* A deadline per game message must not cost a malloc per message. */
Test(deadline, steady_deadline_traffic_does_not_allocate)
{
    counting_alloc ca = {0};
    tern_mem mem = {count_malloc, count_free, &ca};
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    fwd(&s);
    tern_kcp *a = NULL, *b = NULL;
    cr_assert_eq(tern_kcp_new(&a, &s, NULL, NULL, &mem, 0), 0);
    cr_assert_eq(tern_kcp_new(&b, &s, NULL, NULL, &mem, 0), 0);
    size_t after_warmup = 0;
    uint8_t got[64];
    for (uint32_t round = 0; round < 200; round++) {
        tern_ms now = round * 10;
        if (round == 20)
            after_warmup = ca.mallocs;
        for (uint32_t i = 0; i < 8; i++)
            send_msg(a, round * 8 + i, 40, now + 5, now);
        /* Every tenth round is lost, and expires. */
        kp_collect(a, &w_ab, now);
        if (round % 10 == 9)
            kp_drop_all(&w_ab);
        else
            kp_deliver(&w_ab, b, now, NULL);
        while (tern_kcp_recv(b, got, sizeof(got), now) > 0)
            ;
        cr_assert_eq(tern_kcp_handle_expiry(a, now), 0);
        kp_collect(b, &w_ba, now);
        kp_deliver(&w_ba, a, now, NULL);
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_gt(st.expired_msgs, 0);
    cr_assert_eq(ca.mallocs, after_warmup, "no malloc after warm-up");
    tern_kcp_del(a);
    tern_kcp_del(b);
    cr_assert_eq(ca.mallocs, ca.frees);
}

/* ---- through the simulator ---- */

#define SIM_MSGS 300u

typedef struct dl_cond {
    const char *name;
    double loss, reorder;
    bool partition;
} dl_cond;

/* Plain and deadline messages mixed, over a bad link: every message read
 * is whole and read once, every plain message is read, an ordered receiver
 * reads in send order, and afterwards nothing is left owed. */
static void dl_sim_run(const dl_cond *c, bool unordered, uint64_t seed)
{
    tern_kcp_settings sa, sb;
    tern_kcp_settings_default(&sa);
    fwd(&sa);
    sa.ack_nodelay = false;
    sa.rcv_wnd = sa.snd_wnd = 64;
    sb = sa;
    sb.unordered = unordered;
    tern_netsim_cfg link;
    tern_netsim_cfg_default(&link);
    link.loss = c->loss;
    link.delay_ms = 25;
    link.jitter_ms = 5;
    link.reorder = c->reorder;
    link.reorder_ms = 20;
    if (c->partition) {
        link.n_partitions = 1;
        link.partitions[0] = (tern_netsim_partition){3000, 3800};
    }
    tern_sim_pair *p = NULL;
    cr_assert_eq(tern_sim_pair_new(&p, &sa, &sb, &link, &link, seed, 1000), 0);
    tern_kcp *a = tern_sim_pair_engine(p, TERN_SIM_A);
    tern_kcp *b = tern_sim_pair_engine(p, TERN_SIM_B);
    static uint8_t seen[SIM_MSGS];
    static bool has_deadline[SIM_MSGS];
    memset(seen, 0, sizeof(seen));
    static uint8_t buf[3 * MSS + 64];
    uint32_t sent = 0, got = 0;
    int64_t last_id = -1;
    uint64_t x = seed * 0x9e3779b97f4a7c15u + 7;
    tern_ms now = 1000;
    char ctx[128];
    snprintf(ctx, sizeof(ctx), "%s %s seed %llu", c->name, unordered ? "unordered" : "ordered",
             (unsigned long long)seed);
    while (now < 1000 + 60000) {
        if (sent < SIM_MSGS && tern_kcp_unacked_segments(a) < 64) {
            /* One message every 10 ms, as a game tick would. */
            x = x * 6364136223846793005u + 1442695040888963407u;
            size_t len = 4 + (size_t)((x >> 33) % (2 * MSS));
            has_deadline[sent] = (x >> 20) % 3 != 0;
            kp_msg_fill(buf, len, sent);
            int rc =
                tern_kcp_send_deadline(a, buf, len, has_deadline[sent] ? now + 150 : NEVER, now);
            cr_assert_eq(rc, 0, "%s: send: %s", ctx, tern_strerror(rc));
            sent++;
        }
        cr_assert_eq(tern_sim_pair_flush(p), 0);
        int err = 0;
        tern_ms next = now + 10;
        while (now < next) {
            now = tern_sim_pair_advance(p, next, &err);
            cr_assert_eq(err, 0, "%s: %s", ctx, tern_strerror(err));
        }
        tern_ssize n;
        while ((n = tern_kcp_recv(b, buf, sizeof(buf), now)) >= 0) {
            uint32_t id;
            cr_assert(kp_msg_ok(buf, (size_t)n, &id), "%s: a corrupt or partial message", ctx);
            cr_assert_lt(id, sent);
            cr_assert_eq(seen[id], 0, "%s: message %u twice", ctx, id);
            seen[id] = 1;
            got++;
            if (!unordered)
                cr_assert_gt((int64_t)id, last_id, "%s: %u after %lld", ctx, id,
                             (long long)last_id);
            last_id = id;
        }
        tern_kcp_stats st;
        tern_kcp_get_stats(b, &st);
        cr_assert_leq(st.rcv_buf_segs, sb.rcv_wnd, "%s", ctx);
        if (sent == SIM_MSGS && tern_kcp_unacked_segments(a) == 0 &&
            tern_kcp_get_expiry(a) == NEVER)
            break;
    }
    tern_kcp_stats sta, stb;
    tern_kcp_get_stats(a, &sta);
    tern_kcp_get_stats(b, &stb);
    cr_assert_eq(tern_kcp_unacked_segments(a), 0, "%s: the sender never settled", ctx);
    cr_assert_eq(tern_kcp_get_expiry(a), NEVER, "%s: something still owed", ctx);
    uint32_t plain = 0, plain_seen = 0, dl_seen = 0;
    for (uint32_t i = 0; i < SIM_MSGS; i++) {
        if (!has_deadline[i]) {
            plain++;
            plain_seen += seen[i];
        } else {
            dl_seen += seen[i];
        }
    }
    cr_assert_eq(plain_seen, plain, "%s: %u of %u plain messages", ctx, plain_seen, plain);
    cr_assert_eq(got, plain_seen + dl_seen);
    cr_assert_leq(sta.expired_msgs, SIM_MSGS - plain, "%s", ctx);
    if (c->partition)
        cr_assert_gt(sta.expired_msgs, 0, "%s: the partition expired messages", ctx);
    tern_sim_pair_del(p);
}

/* TERN_SOAK=1: 200 seeds per condition instead of 4. */
static bool soak(void)
{
    const char *e = getenv("TERN_SOAK");
    return e && *e && strcmp(e, "0") != 0;
}

Test(deadline_sim, lossy_links_and_a_partition, .timeout = 600)
{
    static const dl_cond conds[] = {
        {"loss 3%", 0.03, 0, false},
        {"loss 10% + reorder", 0.10, 0.1, false},
        {"partition + loss 2%", 0.02, 0, true},
    };
    uint64_t seeds = soak() ? 200 : 4;
    for (size_t c = 0; c < sizeof(conds) / sizeof(conds[0]); c++)
        for (uint64_t seed = 1; seed <= seeds; seed++) {
            dl_sim_run(&conds[c], false, seed);
            dl_sim_run(&conds[c], true, seed);
        }
}
