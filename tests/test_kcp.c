/* The engine's mechanisms, one at a time, over a hand-driven wire: every
 * datagram is visible to the test, which decides what is delivered when. */
#include <criterion/criterion.h>
#include <string.h>

#include "kcp/codec.h"
#include "kcp/engine_internal.h"
#include "tern/kcp.h"

#define WIRE_MAX 4096

typedef struct wire {
    uint8_t pkt[WIRE_MAX][1500];
    size_t len[WIRE_MAX];
    size_t n;
} wire;

static wire w_ab, w_ba;

static tern_kcp *make(uint32_t conv, tern_kcp_mode mode, void (*tweak)(tern_kcp_settings *))
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.conv = conv;
    s.mode = mode;
    if (tweak)
        tweak(&s);
    tern_kcp *k = NULL;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, NULL, 0), 0);
    return k;
}

/* Everything k has to say now goes onto w. */
static size_t collect(tern_kcp *k, wire *w, tern_ms now)
{
    size_t got = 0;
    for (;;) {
        cr_assert_lt(w->n, WIRE_MAX);
        tern_ssize n = tern_kcp_write_pkt(k, w->pkt[w->n], sizeof(w->pkt[0]), now);
        cr_assert_geq(n, 0, "write_pkt: %s", tern_strerror((int)n));
        if (n == 0)
            return got;
        w->len[w->n++] = (size_t)n;
        got++;
    }
}

/* Delivers w's datagrams to k, skipping those whose index is set in drop. */
static void deliver(wire *w, tern_kcp *k, tern_ms now, const bool *drop)
{
    for (size_t i = 0; i < w->n; i++)
        if (!drop || !drop[i])
            cr_assert_eq(tern_kcp_read_pkt(k, w->pkt[i], w->len[i], now), 0);
    w->n = 0;
}

static void nodelay_acks(tern_kcp_settings *s)
{
    s->ack_nodelay = true;
}

/* ---- codec ---- */

Test(codec, header_is_classic_kcp_little_endian)
{
    const tern_kcp_hdr h = {.conv = 0x11223344, .cmd = TERN_KCP_CMD_PUSH, .frg = 2,
                            .wnd = 0x0102, .ts = 0xa0b0c0d0, .sn = 7, .una = 5, .len = 3};
    const uint8_t expect[24] = {0x44, 0x33, 0x22, 0x11, 81,   2,    0x02, 0x01,
                                0xd0, 0xc0, 0xb0, 0xa0, 7,    0,    0,    0,
                                5,    0,    0,    0,    3,    0,    0,    0};
    uint8_t out[24];
    tern_kcp_hdr_encode(out, &h);
    cr_assert_arr_eq(out, expect, 24);
    tern_kcp_hdr back;
    tern_kcp_hdr_decode(expect, &back);
    cr_assert_eq(back.conv, h.conv);
    cr_assert_eq(back.cmd, h.cmd);
    cr_assert_eq(back.frg, h.frg);
    cr_assert_eq(back.wnd, h.wnd);
    cr_assert_eq(back.ts, h.ts);
    cr_assert_eq(back.sn, h.sn);
    cr_assert_eq(back.una, h.una);
    cr_assert_eq(back.len, h.len);
}

/* The worked example of docs/PROTOCOL.md: conv 1, "hi" sent at t = 1000 ms
 * by a fresh engine whose receive window is 256. */
Test(codec, engine_emits_documented_bytes)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.conv = 1;
    tern_kcp *k = NULL;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, NULL, 1000), 0);
    cr_assert_eq(tern_kcp_send(k, "hi", 2, 1000), 0);
    uint8_t out[1500];
    tern_ssize n = tern_kcp_write_pkt(k, out, sizeof(out), 1000);
    const uint8_t expect[] = {0x01, 0x00, 0x00, 0x00, 0x51, 0x00, 0x00, 0x01, 0xe8, 0x03,
                              0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                              0x02, 0x00, 0x00, 0x00, 0x68, 0x69};
    cr_assert_eq(n, (tern_ssize)sizeof(expect));
    cr_assert_arr_eq(out, expect, sizeof(expect));
    tern_kcp_del(k);
}

Test(codec, datagram_check_rejects_bad_shapes)
{
    uint8_t d[100];
    tern_kcp_hdr h = {.conv = 9, .cmd = TERN_KCP_CMD_PUSH, .len = 4};
    tern_kcp_hdr_encode(d, &h);
    memcpy(d + 24, "abcd", 4);
    cr_assert_eq(tern_kcp_datagram_check(d, 28, 9), 1);
    cr_assert_eq(tern_kcp_datagram_check(d, 23, 9), TERN_ERR_MALFORMED, "short header");
    cr_assert_eq(tern_kcp_datagram_check(d, 27, 9), TERN_ERR_MALFORMED, "payload cut");
    cr_assert_eq(tern_kcp_datagram_check(d, 30, 9), TERN_ERR_MALFORMED, "trailing bytes");
    cr_assert_eq(tern_kcp_datagram_check(d, 28, 8), TERN_ERR_CONV);
    d[4] = 80;
    cr_assert_eq(tern_kcp_datagram_check(d, 28, 9), TERN_ERR_MALFORMED, "unknown cmd");
    tern_kcp_hdr ack = {.conv = 9, .cmd = TERN_KCP_CMD_ACK, .len = 4};
    tern_kcp_hdr_encode(d, &ack);
    cr_assert_eq(tern_kcp_datagram_check(d, 28, 9), TERN_ERR_MALFORMED, "ACK with payload");
    h.len = 0xffffffffu;
    tern_kcp_hdr_encode(d, &h);
    cr_assert_eq(tern_kcp_datagram_check(d, 100, 9), TERN_ERR_MALFORMED, "huge len");
    cr_assert_eq(tern_kcp_datagram_check(NULL, 0, 9), TERN_ERR_MALFORMED);
}

Test(codec, serial_arithmetic_across_wrap)
{
    cr_assert_eq(tern_kcp_diff32(5, 0xfffffffbu), 10);
    cr_assert_eq(tern_kcp_diff32(0xfffffffbu, 5), -10);
    cr_assert_eq(tern_kcp_diff32(0, 0), 0);
}

/* ---- settings ---- */

Test(settings, presets_match_kcptun_modes)
{
    static const struct {
        const char *name;
        uint32_t interval, rto_min;
        tern_kcp_backoff backoff;
    } rows[] = {{"normal", 40, 100, TERN_KCP_BACKOFF_X2},
                {"fast", 30, 100, TERN_KCP_BACKOFF_X2},
                {"fast2", 20, 30, TERN_KCP_BACKOFF_X1_5},
                {"fast3", 10, 30, TERN_KCP_BACKOFF_X1_5}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        tern_kcp_settings s;
        tern_kcp_settings_default(&s);
        cr_assert_eq(tern_kcp_settings_set(&s, "preset", rows[i].name), 0);
        cr_assert_eq(s.interval_ms, rows[i].interval, "%s", rows[i].name);
        cr_assert_eq(s.rto_min_ms, rows[i].rto_min, "%s", rows[i].name);
        cr_assert_eq(s.backoff, rows[i].backoff, "%s", rows[i].name);
        cr_assert_eq(s.fast_resend, 2);
        cr_assert_null(s.cc, "kcptun modes run with nc=1");
        cr_assert_eq(tern_kcp_settings_check(&s), 0);
    }
    tern_kcp_preset p;
    cr_assert_eq(tern_kcp_preset_from_name("turbo", &p), 0);
    cr_assert_eq(p, TERN_KCP_PRESET_TURBO);
    cr_assert_eq(tern_kcp_preset_from_name("warp", &p), TERN_ERR_NOTFOUND);
}

Test(settings, every_knob_by_name)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    cr_assert_eq(tern_kcp_settings_set(&s, "mtu", "1200"), 0);
    cr_assert_eq(s.mtu, 1200);
    cr_assert_eq(tern_kcp_settings_set(&s, "mode", "stream"), 0);
    cr_assert_eq(s.mode, TERN_KCP_MODE_STREAM);
    cr_assert_eq(tern_kcp_settings_set(&s, "backoff", "x2"), 0);
    cr_assert_eq(s.backoff, TERN_KCP_BACKOFF_X2);
    cr_assert_eq(tern_kcp_settings_set(&s, "ack_nodelay", "true"), 0);
    cr_assert(s.ack_nodelay);
    cr_assert_eq(tern_kcp_settings_set(&s, "cc", "reno"), 0);
    cr_assert_str_eq(s.cc->name, "reno");
    cr_assert_eq(tern_kcp_settings_set(&s, "snd_queue_max", "65536"), 0);
    cr_assert_eq(s.snd_queue_max, 65536);
    cr_assert_eq(tern_kcp_settings_set(&s, "rto_min", "500"), 0, "order of knobs is free");
    cr_assert_eq(tern_kcp_settings_check(&s), TERN_ERR_RANGE, "rto_initial below rto_min");
    cr_assert_eq(tern_kcp_settings_set(&s, "rto_initial", "600"), 0);
    cr_assert_eq(tern_kcp_settings_check(&s), 0);

    tern_kcp_settings before = s;
    cr_assert_eq(tern_kcp_settings_set(&s, "warp", "1"), TERN_ERR_NOTFOUND);
    cr_assert_eq(tern_kcp_settings_set(&s, "mtu", "12x"), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_set(&s, "mtu", "-5"), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_set(&s, "mtu", ""), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_set(&s, "mtu", "10"), TERN_ERR_RANGE);
    cr_assert_eq(tern_kcp_settings_set(&s, "mtu", "99999999999999999999999"), TERN_ERR_RANGE);
    cr_assert_eq(tern_kcp_settings_set(&s, "snd_wnd", "0"), TERN_ERR_RANGE);
    cr_assert_eq(tern_kcp_settings_set(&s, "mode", "datagram"), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_set(&s, "cc", "bbr9"), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_set(&s, "preset", "warp"), TERN_ERR_INVAL);
    cr_assert_eq(tern_kcp_settings_set(&s, "ack_nodelay", "maybe"), TERN_ERR_INVAL);
    cr_assert_eq(memcmp(&before, &s, sizeof(s)), 0, "failed sets leave settings untouched");

    tern_kcp *k = NULL;
    s.rto_max_ms = 10;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, NULL, 0), TERN_ERR_RANGE);
    cr_assert_null(k);
}

Test(errors, strerror_and_names)
{
    cr_assert_str_eq(tern_strerror(TERN_ERR_WOULDBLOCK), "send queue full");
    cr_assert_str_eq(tern_err_name(TERN_ERR_MSGSIZE), "MSGSIZE");
    cr_assert_str_eq(tern_strerror(-9999), "unknown error");
    cr_assert_str_eq(tern_err_name(0), "OK");
}

/* ---- data transfer ---- */

Test(engine, message_round_trip_with_fragments)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    static uint8_t msg[1376 * 10 + 5], got[sizeof(msg)];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)(i * 31 + 7);
    cr_assert_eq(tern_kcp_send(a, msg, sizeof(msg), 0), 0);
    cr_assert_eq(tern_kcp_send(a, "", 0, 0), 0, "an empty message is a message");
    cr_assert_eq(collect(a, &w_ab, 1), 11, "10 full datagrams, then the tail and the empty message");
    deliver(&w_ab, b, 20, NULL);
    cr_assert_eq(tern_kcp_peek_size(b), (tern_ssize)sizeof(msg));
    uint8_t small[10];
    cr_assert_eq(tern_kcp_recv(b, small, sizeof(small), 20), TERN_ERR_NOBUFS);
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 20), (tern_ssize)sizeof(msg));
    cr_assert_arr_eq(got, msg, sizeof(msg));
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 20), 0);
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 20), TERN_ERR_AGAIN);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(engine, message_size_limit_is_an_error_not_a_partial_send)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    size_t max = tern_kcp_max_message(a);
    cr_assert_eq(max, (size_t)TERN_KCP_MAX_FRAGMENTS * 1376);
    static uint8_t big[TERN_KCP_MAX_FRAGMENTS * 1376 + 1];
    cr_assert_eq(tern_kcp_send(a, big, max + 1, 0), TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_kcp_unacked_bytes(a), 0);
    cr_assert_eq(tern_kcp_send(a, big, max, 0), 0);
    cr_assert_eq(tern_kcp_unacked_bytes(a), max);
    tern_kcp_del(a);
}

static void small_queue(tern_kcp_settings *s)
{
    s->snd_queue_max = 16 * 1024;
}

Test(engine, send_queue_bound_says_wouldblock)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, small_queue);
    uint8_t chunk[1000] = {0};
    int sent = 0, rc;
    while ((rc = tern_kcp_send(a, chunk, sizeof(chunk), 0)) == 0)
        sent++;
    cr_assert_eq(rc, TERN_ERR_WOULDBLOCK);
    cr_assert_gt(sent, 5);
    cr_assert_lt(sent, 16);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.snd_queue_bytes, (size_t)sent * sizeof(chunk), "nothing partial queued");
    tern_kcp_del(a);
}

Test(engine, stream_mode_coalesces_into_full_segments)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_STREAM, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_STREAM, NULL);
    uint8_t bytes[3000];
    for (size_t i = 0; i < sizeof(bytes); i++)
        bytes[i] = (uint8_t)i;
    for (size_t off = 0; off < sizeof(bytes); off += 10)
        cr_assert_eq(tern_kcp_send(a, bytes + off, 10, 0), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.snd_queue_segs, 3, "3000 bytes in MSS-sized segments");
    cr_assert_eq(collect(a, &w_ab, 0), 3);
    cr_assert_eq(w_ab.len[0], 1400);
    deliver(&w_ab, b, 5, NULL);
    uint8_t got[3000];
    cr_assert_eq(tern_kcp_peek_size(b), 3000);
    cr_assert_eq(tern_kcp_recv(b, got, 7, 5), 7, "partial reads are fine in a stream");
    cr_assert_eq(tern_kcp_recv(b, got + 7, sizeof(got) - 7, 5), 2993);
    cr_assert_arr_eq(got, bytes, sizeof(bytes));
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* ---- reliability ---- */

Test(engine, rtt_is_measured_when_the_ack_arrives)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, nodelay_acks);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 0), 0);
    collect(a, &w_ab, 0);
    deliver(&w_ab, b, 40, NULL);
    collect(b, &w_ba, 40);
    cr_assert_eq(w_ba.n, 1, "ack_nodelay: the ACK leaves at once");
    deliver(&w_ba, a, 80, NULL);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.srtt_ms, 80);
    cr_assert_eq(st.rttvar_ms, 40);
    cr_assert_eq(st.rto_ms, 80 + 4 * 40 + 20, "srtt + 4 rttvar + the peer's ACK delay");
    cr_assert_eq(st.in_flight_segs, 0);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(engine, lone_acks_wait_but_ride_on_data)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 0), 0);
    collect(a, &w_ab, 0);
    deliver(&w_ab, b, 3, NULL);
    cr_assert_eq(collect(b, &w_ba, 3), 0, "a lone ACK waits for data to ride on");
    cr_assert_eq(tern_kcp_get_expiry(b), 3 + 20, "fast3 lets it wait 20 ms");
    cr_assert_eq(tern_kcp_send(b, "y", 1, 4), 0);
    cr_assert_eq(collect(b, &w_ba, 4), 1);
    cr_assert_eq(w_ba.len[0], 24 + 24 + 1, "ACK and data in one datagram");
    deliver(&w_ba, a, 8, NULL);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.acks_recv, 1);
    cr_assert_eq(st.in_flight_segs, 0);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(engine, duplicates_are_acked_and_counted_once)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, nodelay_acks);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 0), 0);
    collect(a, &w_ab, 0);
    cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[0], w_ab.len[0], 1), 0);
    cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[0], w_ab.len[0], 1), 0);
    w_ab.n = 0;
    collect(b, &w_ba, 1);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.dup_segs, 1);
    cr_assert_eq(st.acks_sent, 2, "the duplicate is acknowledged too");
    uint8_t got[8];
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 1), 1);
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 1), TERN_ERR_AGAIN, "delivered once");
    w_ba.n = 0;
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(engine, fast_retransmit_after_skipping_acks)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, nodelay_acks);
    uint8_t chunk[1376] = {1};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(tern_kcp_send(a, chunk, sizeof(chunk), 0), 0);
    cr_assert_eq(collect(a, &w_ab, 0), 4);
    /* Lose sn 0; sn 1..3 arrive one by one, each ACK in its own datagram. */
    for (size_t i = 1; i < 4; i++) {
        cr_assert_eq(tern_kcp_read_pkt(b, w_ab.pkt[i], w_ab.len[i], 5), 0);
        collect(b, &w_ba, 5);
    }
    w_ab.n = 0;
    /* Far from the RTO: only skips can trigger a resend here. */
    deliver(&w_ba, a, 10, NULL);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.lost, 1);
    cr_assert_eq(collect(a, &w_ab, 10), 1);
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.retrans_fast, 1);
    cr_assert_eq(st.retrans_timeout, 0);
    deliver(&w_ab, b, 12, NULL);
    uint8_t got[1400];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 12), 1376);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

static void timeout_only(tern_kcp_settings *s)
{
    s->fast_resend = 0;
    s->early_retransmit = false;
    s->rto_initial_ms = 100;
    s->rto_min_ms = 30;
}

static void timeout_only_x2(tern_kcp_settings *s)
{
    timeout_only(s);
    s->backoff = TERN_KCP_BACKOFF_X2;
}

static void check_backoff(void (*tweak)(tern_kcp_settings *), const tern_ms *expect, size_t n)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, tweak);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 0), 0);
    collect(a, &w_ab, 0);
    w_ab.n = 0;
    tern_ms now = 0;
    for (size_t i = 0; i < n; i++) {
        now = tern_kcp_get_expiry(a);
        cr_assert_eq(now, expect[i], "retransmission %zu at %llu, expected %llu", i,
                     (unsigned long long)now, (unsigned long long)expect[i]);
        cr_assert_eq(tern_kcp_handle_expiry(a, now), 0);
        cr_assert_eq(collect(a, &w_ab, now), 1);
        w_ab.n = 0;
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.retrans_timeout, n);
    tern_kcp_del(a);
}

Test(engine, timeout_backoff_x2)
{
    const tern_ms expect[] = {100, 300, 700, 1500};
    check_backoff(timeout_only_x2, expect, 4);
}

Test(engine, timeout_backoff_x1_5)
{
    const tern_ms expect[] = {100, 250, 475, 812};
    check_backoff(timeout_only, expect, 4);
}

static int dead_calls;

static void on_dead(tern_kcp *k, void *user_data)
{
    (void)k;
    cr_assert_eq(user_data, &dead_calls);
    dead_calls++;
}

Test(engine, dead_link_is_reported_once)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.dead_link = 3;
    tern_kcp_callbacks cb = {.dead_link = on_dead};
    tern_kcp *a = NULL;
    dead_calls = 0;
    cr_assert_eq(tern_kcp_new(&a, &s, &cb, &dead_calls, NULL, 0), 0);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 0), 0);
    collect(a, &w_ab, 0);
    for (int i = 0; i < 5 && !tern_kcp_is_dead(a); i++) {
        tern_ms t = tern_kcp_get_expiry(a);
        tern_kcp_handle_expiry(a, t);
        uint8_t out[1500];
        tern_kcp_write_pkt(a, out, sizeof(out), t);
    }
    cr_assert(tern_kcp_is_dead(a));
    cr_assert_eq(dead_calls, 1);
    uint8_t out[1500];
    cr_assert_eq(tern_kcp_write_pkt(a, out, sizeof(out), 5000), TERN_ERR_DEADLINK);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 5000), TERN_ERR_DEADLINK);
    cr_assert_eq(tern_kcp_handle_expiry(a, 5000), TERN_ERR_DEADLINK);
    cr_assert_eq(tern_kcp_get_expiry(a), UINT64_MAX);
    cr_assert_eq(dead_calls, 1);
    w_ab.n = 0;
    tern_kcp_del(a);
}

/* ---- redundant data bundling ---- */

Test(engine, bundled_copies_repair_a_lost_datagram_without_retransmission)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    cr_assert_eq(tern_kcp_send(a, "first", 5, 0), 0);
    cr_assert_eq(collect(a, &w_ab, 0), 1);
    w_ab.n = 0; /* lost */
    cr_assert_eq(tern_kcp_send(a, "second", 6, 20), 0);
    cr_assert_eq(collect(a, &w_ab, 20), 1);
    cr_assert_eq(w_ab.len[0], 24 + 6 + 24 + 5, "the new message and a copy of the unacked one");
    deliver(&w_ab, b, 40, NULL);
    char got[16];
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 40), 5);
    cr_assert_eq(memcmp(got, "first", 5), 0);
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 40), 6);
    cr_assert_eq(memcmp(got, "second", 6), 0);
    collect(b, &w_ba, 60);
    deliver(&w_ba, a, 80, NULL);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.in_flight_segs, 0, "both acknowledged");
    cr_assert_eq(st.lost, 0);
    cr_assert_eq(st.retrans_timeout + st.retrans_fast + st.retrans_early, 0);
    cr_assert_eq(st.bundled, 1);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

Test(engine, bulk_streams_are_not_bundled)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    uint8_t chunk[1376] = {0};
    for (int i = 0; i < 20; i++)
        cr_assert_eq(tern_kcp_send(a, chunk, sizeof(chunk), 0), 0);
    collect(a, &w_ab, 0);
    w_ab.n = 0;
    cr_assert_eq(tern_kcp_send(a, "x", 1, 1), 0);
    cr_assert_eq(collect(a, &w_ab, 1), 1);
    cr_assert_eq(w_ab.len[0], 25, "20 segments in flight: no copies");
    w_ab.n = 0;
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.bundled, 0);
    tern_kcp_del(a);
}

/* ---- flow control ---- */

static void tiny_rcv_wnd(tern_kcp_settings *s)
{
    s->rcv_wnd = 4;
    s->ack_nodelay = true;
}

Test(engine, zero_window_probe_and_window_update)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, nodelay_acks);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, tiny_rcv_wnd);
    tern_ms now = 0;
    /* Until B speaks, A can only assume B's window is like its own. */
    cr_assert_eq(tern_kcp_send(a, "m", 1, now), 0);
    /* B's window of 4 fills; it says so in its ACKs. */
    for (int round = 0; round < 4; round++) {
        for (int i = 0; round == 1 && i < 9; i++)
            cr_assert_eq(tern_kcp_send(a, "m", 1, now), 0);
        collect(a, &w_ab, now);
        deliver(&w_ab, b, now + 1, NULL);
        collect(b, &w_ba, now + 1);
        deliver(&w_ba, a, now + 2, NULL);
        now += 3;
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.rmt_wnd, 0);
    cr_assert_eq(st.snd_queue_segs, 10 - 4, "only the peer's window was sent");
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs, 4);
    cr_assert_eq(st.out_of_window, 0, "the sender respected the window");

    /* A probes with growing gaps while B's window stays shut. */
    tern_ms probes[3];
    for (int i = 0; i < 3; i++) {
        tern_ms t = tern_kcp_get_expiry(a);
        cr_assert_gt(t, now);
        cr_assert_eq(tern_kcp_handle_expiry(a, t), 0);
        now = t;
        cr_assert_eq(collect(a, &w_ab, now), 1);
        tern_kcp_hdr h;
        tern_kcp_hdr_decode(w_ab.pkt[0], &h);
        cr_assert_eq(h.cmd, TERN_KCP_CMD_WASK);
        probes[i] = now;
        deliver(&w_ab, b, now, NULL);
        collect(b, &w_ba, now);
        cr_assert_eq(w_ba.n, 1);
        tern_kcp_hdr_decode(w_ba.pkt[0], &h);
        cr_assert_eq(h.cmd, TERN_KCP_CMD_WINS);
        cr_assert_eq(h.wnd, 0);
        deliver(&w_ba, a, now, NULL);
    }
    cr_assert_gt(probes[2] - probes[1], probes[1] - probes[0], "probe backoff");

    /* The application drains B: B announces the window at once. */
    uint8_t got[8];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), now), 1);
    cr_assert_eq(collect(b, &w_ba, now), 1);
    tern_kcp_hdr h;
    tern_kcp_hdr_decode(w_ba.pkt[0], &h);
    cr_assert_eq(h.cmd, TERN_KCP_CMD_WINS);
    cr_assert_eq(h.wnd, 4);
    deliver(&w_ba, a, now + 1, NULL);
    cr_assert_gt(collect(a, &w_ab, now + 1), 0, "the sender resumes");
    w_ab.n = 0;
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* As in classic KCP: at most rcv_wnd deliverable unread segments plus rcv_wnd
 * held past them; the advertised window counts only the unread ones. */
Test(engine, receive_buffering_is_bounded_by_the_window)
{
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, tiny_rcv_wnd);
    uint8_t d[64];
    for (uint32_t sn = 0; sn < 20; sn++) {
        tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = sn, .len = 1, .wnd = 32};
        tern_kcp_hdr_encode(d, &h);
        d[24] = (uint8_t)sn;
        cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 1), 0);
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs, 4, "deliverable, unread");
    cr_assert_eq(st.rcv_buf_segs, 4, "held beyond them");
    cr_assert_eq(st.out_of_window, 12);
    collect(b, &w_ba, 1);
    tern_kcp_hdr h;
    tern_kcp_hdr_decode(w_ba.pkt[0], &h);
    cr_assert_eq(h.wnd, 0, "a full window is advertised as zero");
    cr_assert_eq(h.una, 4);
    w_ba.n = 0;
    uint8_t got[8];
    for (uint8_t want = 0; want < 8; want++) {
        cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 2), 1);
        cr_assert_eq(got[0], want, "held segments move up as the reader frees room");
    }
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 2), TERN_ERR_AGAIN);
    tern_kcp_del(b);
}

/* Regression: the receive ring starts small and grows; a ring exactly full of
 * unread segments once made the slot after them alias the first one, and the
 * engine mistook unread data for held data (found by the ikcp interop run). */
Test(engine, a_ring_full_of_unread_segments_is_not_held_data)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    static uint8_t msg[1376 * 20], got[sizeof(msg)];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)(i ^ (i >> 8));
    cr_assert_eq(tern_kcp_send(a, msg, sizeof(msg), 0), 0);
    cr_assert_eq(tern_kcp_send(a, "tail", 4, 0), 0);
    collect(a, &w_ab, 0);
    deliver(&w_ab, b, 1, NULL);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs, 21);
    cr_assert_eq(st.rcv_buf_segs, 0);
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 1), (tern_ssize)sizeof(msg));
    cr_assert_arr_eq(got, msg, sizeof(msg));
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 1), 4);
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* ---- malformed and hostile input ---- */

Test(engine, a_bad_segment_after_good_ones_changes_nothing)
{
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    uint8_t d[200];
    tern_kcp_hdr good = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = 0, .len = 2, .wnd = 32};
    tern_kcp_hdr_encode(d, &good);
    memcpy(d + 24, "ok", 2);
    tern_kcp_hdr bad = {.conv = 7, .cmd = 99, .sn = 1, .len = 0};
    tern_kcp_hdr_encode(d + 26, &bad);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 50, 1), TERN_ERR_MALFORMED);
    tern_kcp_hdr other = {.conv = 8, .cmd = TERN_KCP_CMD_ACK};
    tern_kcp_hdr_encode(d + 26, &other);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 50, 1), TERN_ERR_CONV);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 20, 1), TERN_ERR_MALFORMED);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.malformed, 2);
    cr_assert_eq(st.conv_mismatch, 1);
    cr_assert_eq(st.segs_recv, 0);
    cr_assert_eq(st.datagrams_recv, 0);
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN, "the good segment was not taken");
    cr_assert_eq(collect(b, &w_ba, 100), 0, "and not acknowledged");
    tern_kcp_del(b);
}

Test(engine, acks_for_data_never_sent_are_ignored)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    cr_assert_eq(tern_kcp_send(a, "x", 1, 0), 0);
    collect(a, &w_ab, 0);
    w_ab.n = 0;
    uint8_t d[48];
    tern_kcp_hdr ack = {.conv = 7, .cmd = TERN_KCP_CMD_ACK, .sn = 5, .una = 0, .wnd = 32};
    tern_kcp_hdr_encode(d, &ack);
    tern_kcp_hdr una = {.conv = 7, .cmd = TERN_KCP_CMD_WINS, .una = 1000, .wnd = 32};
    tern_kcp_hdr_encode(d + 24, &una);
    cr_assert_eq(tern_kcp_read_pkt(a, d, 48, 5), 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.in_flight_segs, 1, "still waiting for the real ACK");
    cr_assert_eq(tern_kcp_unacked_bytes(a), 1);
    tern_kcp_del(a);
}

Test(engine, message_larger_than_the_window_is_dropped_not_stuck)
{
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, tiny_rcv_wnd);
    uint8_t d[64];
    for (uint32_t sn = 0; sn < 4; sn++) {
        tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .frg = (uint8_t)(9 - sn), .sn = sn,
                          .len = 1, .wnd = 32};
        tern_kcp_hdr_encode(d, &h);
        cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 1), 0);
    }
    uint8_t got[64];
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 1), TERN_ERR_MSGSIZE);
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs, 0, "the window is free again");
    cr_assert_eq(st.oversize_msgs, 1);
    /* The rest of the 10-fragment message arrives, then a message that fits. */
    for (uint32_t sn = 4; sn < 11; sn++) {
        uint8_t frg = sn < 10 ? (uint8_t)(9 - sn) : 0;
        tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .frg = frg, .sn = sn, .len = 1,
                          .wnd = 32};
        tern_kcp_hdr_encode(d, &h);
        d[24] = sn == 10 ? 'z' : 'x';
        cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 2), 0);
        tern_ssize n = tern_kcp_recv(b, got, sizeof(got), 2);
        if (sn < 10) {
            cr_assert_eq(n, TERN_ERR_AGAIN, "no tail of the dropped message surfaces (sn %u)", sn);
        } else {
            cr_assert_eq(n, 1, "the next message is delivered whole");
            cr_assert_eq(got[0], 'z');
        }
    }
    tern_kcp_del(b);
}

/* ---- wraparound ---- */

Test(engine, sequence_and_clock_wrap)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.conv = 3;
    s.ack_nodelay = true;
    s.bundle_bytes = 0; /* make the drops cost real retransmissions */
    tern_kcp *a = NULL, *b = NULL;
    tern_ms t = 0xffffff00u; /* the wire's 32-bit ts wraps 256 ms in */
    cr_assert_eq(tern_kcp_new(&a, &s, NULL, NULL, NULL, t), 0);
    cr_assert_eq(tern_kcp_new(&b, &s, NULL, NULL, NULL, t), 0);
    cr_assert_eq(tern_kcp_test_set_sequence(a, 0xfffffff0u, 0), 0);
    cr_assert_eq(tern_kcp_test_set_sequence(b, 0, 0xfffffff0u), 0);
    uint32_t next = 0;
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 3; i++) {
            uint32_t v = (uint32_t)(round * 3 + i);
            cr_assert_eq(tern_kcp_send(a, &v, sizeof(v), t), 0);
        }
        collect(a, &w_ab, t);
        /* Drop every fifth datagram to exercise retransmission across the wrap. */
        bool drop[WIRE_MAX] = {0};
        for (size_t i = 0; i < w_ab.n; i++)
            drop[i] = (round + (int)i) % 5 == 0;
        deliver(&w_ab, b, t + 3, drop);
        collect(b, &w_ba, t + 3);
        deliver(&w_ba, a, t + 6, NULL);
        uint32_t v;
        while (tern_kcp_recv(b, &v, sizeof(v), t + 6) == (tern_ssize)sizeof(v))
            cr_assert_eq(v, next++);
        t += 10;
        tern_kcp_handle_expiry(a, t);
    }
    for (int i = 0; i < 200 && next < 300; i++) {
        t = tern_kcp_get_expiry(a) > t ? tern_kcp_get_expiry(a) : t;
        tern_kcp_handle_expiry(a, t);
        collect(a, &w_ab, t);
        deliver(&w_ab, b, t + 3, NULL);
        collect(b, &w_ba, t + 3);
        deliver(&w_ba, a, t + 6, NULL);
        uint32_t v;
        while (tern_kcp_recv(b, &v, sizeof(v), t + 6) == (tern_ssize)sizeof(v))
            cr_assert_eq(v, next++);
        t += 6;
    }
    cr_assert_eq(next, 300, "all messages delivered in order across the wrap");
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_gt(st.lost, 0);
    cr_assert_lt(st.srtt_ms, 50, "RTT samples stay sane across the ts wrap");
    tern_kcp_del(a);
    tern_kcp_del(b);
}

/* ---- congestion control ---- */

Test(cc, reno_grows_halves_and_collapses)
{
    const tern_kcp_cc_ops *reno = tern_kcp_cc_find("reno");
    cr_assert_not_null(reno);
    cr_assert_null(tern_kcp_cc_find("vegas"));
    _Alignas(16) uint8_t state[256];
    cr_assert_leq(reno->state_size, sizeof(state));
    reno->init(state, 1000, 0);
    cr_assert_eq(reno->cwnd(state), 10000);
    reno->on_sent(state, 10000, 1);
    cr_assert_not(reno->can_send(state, 1000), "the window is full");
    reno->on_ack(state, 5000, 5000, 1, 2);
    cr_assert_eq(reno->cwnd(state), 15000, "slow start: +1 byte per byte acked");
    cr_assert(reno->can_send(state, 10000));
    cr_assert_not(reno->can_send(state, 10001));
    reno->on_loss(state, TERN_KCP_LOSS_FAST, 1000, 3, 10);
    cr_assert_eq(reno->cwnd(state), 7500, "halved on fast loss");
    cr_assert_eq(reno->ssthresh(state), 7500);
    reno->on_loss(state, TERN_KCP_LOSS_FAST, 1000, 4, 11);
    cr_assert_eq(reno->cwnd(state), 7500, "one reduction per loss episode");
    reno->on_ack(state, 3000, 3000, 5, 20);
    cr_assert_eq(reno->cwnd(state), 7500, "no growth for data sent before recovery");
    reno->on_sent(state, 7500, 21);
    reno->on_ack(state, 7500, 7500, 21, 30);
    cr_assert_eq(reno->cwnd(state), 8500, "congestion avoidance: +1 MSS per cwnd acked");
    reno->on_sent(state, 1000, 31);
    reno->on_loss(state, TERN_KCP_LOSS_TIMEOUT, 1000, 31, 40);
    cr_assert_eq(reno->cwnd(state), 1000, "collapses to one MSS on timeout");
    cr_assert_eq(reno->ssthresh(state), 4250);
    cr_assert(reno->can_send(state, 5000), "nothing in flight: one send is always allowed");
    reno->on_sent(state, 3000, 41);
    reno->on_ack(state, 3000, 3000, 41, 50);
    cr_assert_eq(reno->cwnd(state), 4000, "slow start again below ssthresh");
    reno->on_loss(state, TERN_KCP_LOSS_TIMEOUT, 1000, 35, 60);
    cr_assert_eq(reno->cwnd(state), 4000, "a timeout from the same episode changes nothing");
    const tern_kcp_cc_ops *none = tern_kcp_cc_find("none");
    cr_assert_eq(none->cwnd(NULL), UINT64_MAX);
    cr_assert(none->can_send(NULL, UINT64_MAX / 2));
}

Test(cc, a_shared_controller_limits_its_engines_together)
{
    const tern_kcp_cc_ops *reno = tern_kcp_cc_find("reno");
    _Alignas(16) uint8_t state[256];
    reno->init(state, 1376, 0);
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.cc = reno;
    s.cc_state = state;
    s.snd_wnd = 1024;
    tern_kcp *one = NULL, *two = NULL;
    cr_assert_eq(tern_kcp_new(&one, &s, NULL, NULL, NULL, 0), 0);
    cr_assert_eq(tern_kcp_new(&two, &s, NULL, NULL, NULL, 0), 0);
    uint8_t chunk[1376] = {0};
    for (int i = 0; i < 50; i++) {
        cr_assert_eq(tern_kcp_send(one, chunk, sizeof(chunk), 0), 0);
        cr_assert_eq(tern_kcp_send(two, chunk, sizeof(chunk), 0), 0);
    }
    size_t n = collect(one, &w_ab, 0) + collect(two, &w_ab, 0);
    cr_assert_eq(n, reno->cwnd(state) / 1376, "one window for both: %zu datagrams", n);
    w_ab.n = 0;
    tern_kcp_del(one);
    cr_assert(reno->can_send(state, 1376 * 5), "deleting an engine releases its flight");
    tern_kcp_del(two);
}

static void with_reno(tern_kcp_settings *s)
{
    s->cc = tern_kcp_cc_find("reno");
    s->snd_wnd = 1024;
    s->rcv_wnd = 1024;
}

Test(cc, engine_respects_the_congestion_window)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, with_reno);
    uint8_t chunk[1376] = {0};
    for (int i = 0; i < 100; i++)
        cr_assert_eq(tern_kcp_send(a, chunk, sizeof(chunk), 0), 0);
    size_t n = collect(a, &w_ab, 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(n, st.cwnd_bytes / 1376, "initial window: %zu datagrams", n);
    cr_assert_leq(st.in_flight_bytes, st.cwnd_bytes);
    w_ab.n = 0;
    tern_kcp_del(a);
}

/* ---- memory ---- */

typedef struct counting_alloc {
    size_t mallocs, frees, bytes;
} counting_alloc;

static void *count_malloc(size_t n, void *ud)
{
    ((counting_alloc *)ud)->mallocs++;
    ((counting_alloc *)ud)->bytes += n;
    return malloc(n);
}

static void count_free(void *p, void *ud)
{
    if (p)
        ((counting_alloc *)ud)->frees++;
    free(p);
}

Test(engine, steady_traffic_does_not_allocate)
{
    counting_alloc ca = {0};
    tern_mem mem = {count_malloc, count_free, &ca};
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.ack_nodelay = true;
    tern_kcp *a = NULL, *b = NULL;
    cr_assert_eq(tern_kcp_new(&a, &s, NULL, NULL, &mem, 0), 0);
    cr_assert_eq(tern_kcp_new(&b, &s, NULL, NULL, &mem, 0), 0);
    uint8_t msg[700] = {0}, got[700];
    size_t after_warmup = 0;
    for (int round = 0; round < 200; round++) {
        if (round == 20)
            after_warmup = ca.mallocs;
        for (int i = 0; i < 8; i++)
            cr_assert_eq(tern_kcp_send(a, msg, sizeof(msg), (tern_ms)round), 0);
        collect(a, &w_ab, (tern_ms)round);
        deliver(&w_ab, b, (tern_ms)round, NULL);
        while (tern_kcp_recv(b, got, sizeof(got), (tern_ms)round) > 0)
            ;
        collect(b, &w_ba, (tern_ms)round);
        deliver(&w_ba, a, (tern_ms)round, NULL);
    }
    cr_assert_eq(ca.mallocs, after_warmup, "no malloc after warm-up");
    tern_kcp_del(a);
    tern_kcp_del(b);
    cr_assert_eq(ca.mallocs, ca.frees, "everything allocated was freed");
}

Test(engine, an_idle_engine_costs_only_its_struct)
{
    counting_alloc ca = {0};
    tern_mem mem = {count_malloc, count_free, &ca};
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.snd_wnd = 8192;
    s.rcv_wnd = 8192;
    tern_kcp *k = NULL;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, &mem, 0), 0);
    cr_assert_eq(ca.mallocs, 1, "rings grow on demand, not up front");
    cr_assert_lt(ca.bytes, 1024, "idle engine: %zu bytes", ca.bytes);
    /* A little traffic grows the rings a little, not to the window. */
    cr_assert_eq(tern_kcp_send(k, "x", 1, 0), 0);
    cr_assert_lt(ca.bytes, 2048, "one message queued: %zu bytes", ca.bytes);
    tern_kcp_del(k);
    cr_assert_eq(ca.mallocs, ca.frees);
}

static void *failing_malloc(size_t n, void *ud)
{
    counting_alloc *ca = ud;
    if (ca->mallocs++ >= ca->bytes) /* bytes: how many allocations succeed */
        return NULL;
    return malloc(n);
}

Test(engine, out_of_memory_is_an_error_never_a_crash)
{
    for (size_t budget = 0; budget < 12; budget++) {
        counting_alloc ca = {.bytes = budget};
        tern_mem mem = {failing_malloc, count_free, &ca};
        tern_kcp_settings s;
        tern_kcp_settings_default(&s);
        tern_kcp *k = NULL;
        int rc = tern_kcp_new(&k, &s, NULL, NULL, &mem, 0);
        if (rc) {
            cr_assert_eq(rc, TERN_ERR_NOMEM);
            continue;
        }
        uint8_t big[5000] = {0};
        rc = tern_kcp_send(k, big, sizeof(big), 0);
        cr_assert(rc == 0 || rc == TERN_ERR_NOMEM, "budget %zu: %d", budget, rc);
        if (rc == TERN_ERR_NOMEM)
            cr_assert_eq(tern_kcp_unacked_bytes(k), 0, "nothing partial queued");
        uint8_t d[64];
        tern_kcp_hdr h = {.conv = 0, .cmd = TERN_KCP_CMD_PUSH, .sn = 3, .len = 1, .wnd = 32};
        tern_kcp_hdr_encode(d, &h);
        cr_assert_eq(tern_kcp_read_pkt(k, d, 25, 1), 0, "a drop for lack of memory is silent");
        uint8_t out[1500];
        cr_assert_geq(tern_kcp_write_pkt(k, out, sizeof(out), 1), 0);
        tern_kcp_del(k);
    }
}

/* ---- the peer's window ---- */

static void feed(tern_kcp *k, uint8_t cmd, uint32_t sn, uint32_t una, uint16_t wnd, tern_ms now)
{
    uint8_t d[24];
    tern_kcp_hdr h = {.conv = 7, .cmd = cmd, .sn = sn, .una = una, .wnd = wnd};
    tern_kcp_hdr_encode(d, &h);
    cr_assert_eq(tern_kcp_read_pkt(k, d, sizeof(d), now), 0);
}

Test(window, a_reordered_old_segment_does_not_reopen_the_window)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, NULL);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(tern_kcp_send(a, "m", 1, 0), 0);
    collect(a, &w_ab, 0);
    w_ab.n = 0;
    feed(a, TERN_KCP_CMD_WINS, 0, 2, 0, 5);  /* new: 2 received, window shut */
    feed(a, TERN_KCP_CMD_WINS, 0, 1, 50, 6); /* late, older: its wnd is stale */
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.rmt_wnd, 0);
    feed(a, TERN_KCP_CMD_WINS, 0, 2, 8, 7); /* same una, newer news */
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.rmt_wnd, 8);
    tern_kcp_del(a);
}

Test(window, lost_segments_wait_for_the_window_and_the_window_is_probed)
{
    tern_kcp *a = make(7, TERN_KCP_MODE_MESSAGE, timeout_only);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(tern_kcp_send(a, "m", 1, 0), 0);
    collect(a, &w_ab, 0);
    w_ab.n = 0;
    feed(a, TERN_KCP_CMD_WINS, 0, 0, 0, 5); /* nothing received, no room */
    tern_ms t = 5;
    int probes = 0;
    for (int i = 0; i < 6; i++) {
        t = tern_kcp_get_expiry(a);
        cr_assert_eq(tern_kcp_handle_expiry(a, t), 0);
        collect(a, &w_ab, t);
        for (size_t j = 0; j < w_ab.n; j++) {
            tern_kcp_hdr h;
            tern_kcp_hdr_decode(w_ab.pkt[j], &h);
            cr_assert_neq(h.cmd, TERN_KCP_CMD_PUSH, "no resend into a shut window");
            probes += h.cmd == TERN_KCP_CMD_WASK;
        }
        w_ab.n = 0;
    }
    cr_assert_gt(probes, 0);
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_eq(st.resend_segs, 3);
    feed(a, TERN_KCP_CMD_WINS, 0, 0, 4, t + 1);
    cr_assert_eq(collect(a, &w_ab, t + 1), 1, "the window opens: all three resent");
    cr_assert_eq(w_ab.len[0], 3 * 25);
    w_ab.n = 0;
    tern_kcp_del(a);
}

static void few_dead(tern_kcp_settings *s)
{
    s->dead_link = 5;
}

Test(window, a_peer_that_answers_no_probe_is_dead)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.conv = 7;
    few_dead(&s);
    tern_kcp_callbacks cb = {.dead_link = on_dead};
    tern_kcp *a = NULL;
    dead_calls = 0;
    cr_assert_eq(tern_kcp_new(&a, &s, &cb, &dead_calls, NULL, 0), 0);
    cr_assert_eq(tern_kcp_send(a, "m", 1, 0), 0);
    collect(a, &w_ab, 0);
    w_ab.n = 0;
    feed(a, TERN_KCP_CMD_ACK, 0, 1, 0, 5); /* acknowledged, and the window shuts */
    cr_assert_eq(tern_kcp_send(a, "n", 1, 6), 0);
    for (int i = 0; i < 50 && !tern_kcp_is_dead(a); i++) {
        tern_ms t = tern_kcp_get_expiry(a);
        tern_kcp_handle_expiry(a, t);
        uint8_t out[1500];
        tern_kcp_write_pkt(a, out, sizeof(out), t);
    }
    cr_assert(tern_kcp_is_dead(a));
    cr_assert_eq(dead_calls, 1, "the callback fires for probe death too");
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    cr_assert_geq(st.probes_sent, 4);
    tern_kcp_del(a);
}

Test(window, empty_segments_cannot_wedge_a_stream)
{
    tern_kcp *b = make(7, TERN_KCP_MODE_STREAM, tiny_rcv_wnd);
    for (uint32_t sn = 0; sn < 12; sn++) {
        uint8_t d[24];
        tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = sn, .wnd = 32};
        tern_kcp_hdr_encode(d, &h);
        cr_assert_eq(tern_kcp_read_pkt(b, d, sizeof(d), 1), 0);
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(b, &st);
    cr_assert_eq(st.rcv_queue_segs, 0, "nothing to read holds no window");
    cr_assert_eq(st.out_of_window, 0);
    uint8_t d[29];
    tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = 12, .wnd = 32, .len = 5};
    tern_kcp_hdr_encode(d, &h);
    memcpy(d + 24, "bytes", 5);
    cr_assert_eq(tern_kcp_read_pkt(b, d, sizeof(d), 2), 0);
    uint8_t got[8];
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 2), 5);
    tern_kcp_del(b);
}

Test(window, peek_agrees_with_recv_while_an_oversize_tail_is_pending)
{
    tern_kcp *b = make(7, TERN_KCP_MODE_MESSAGE, tiny_rcv_wnd);
    uint8_t d[32], got[64];
    /* A 6-fragment message into a window of 4: dropped, 2 fragments to come. */
    for (uint32_t sn = 0; sn < 4; sn++) {
        tern_kcp_hdr h = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .frg = (uint8_t)(5 - sn), .sn = sn,
                          .len = 1, .wnd = 32};
        tern_kcp_hdr_encode(d, &h);
        cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 1), 0);
    }
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 1), TERN_ERR_MSGSIZE);
    /* The tail's first fragment arrives out of order, after a whole message. */
    tern_kcp_hdr next = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .sn = 6, .len = 3, .wnd = 32};
    tern_kcp_hdr_encode(d, &next);
    memcpy(d + 24, "new", 3);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 27, 2), 0);
    tern_kcp_hdr tail = {.conv = 7, .cmd = TERN_KCP_CMD_PUSH, .frg = 1, .sn = 4, .len = 1,
                         .wnd = 32};
    tern_kcp_hdr_encode(d, &tail);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 2), 0);
    cr_assert_eq(tern_kcp_peek_size(b), TERN_ERR_AGAIN, "one tail fragment still missing");
    tail.frg = 0;
    tail.sn = 5;
    tern_kcp_hdr_encode(d, &tail);
    cr_assert_eq(tern_kcp_read_pkt(b, d, 25, 3), 0);
    cr_assert_eq(tern_kcp_peek_size(b), 3, "peek names the message recv returns");
    cr_assert_eq(tern_kcp_recv(b, got, sizeof(got), 3), 3);
    cr_assert_eq(memcmp(got, "new", 3), 0);
    tern_kcp_del(b);
}
