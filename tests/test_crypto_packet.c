/* Encrypted DATA packets (include/tern/crypto_packet.h): sessions made from
 * real NK and IK handshakes, round trips both ways, every bit of a packet
 * flipped, truncation, wrong receiver id, replays, reordering, the replay
 * window's edge, rekeying by count and by time with packets reordered
 * across the phase flip, the old key's grace, the receiver's lookahead
 * over generations lost whole (and its bound), the hard limits, and the
 * stats that count each refusal. All in virtual time. */
#include <criterion/criterion.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/packet_internal.h"
#include "tern/crypto.h"

#define BUF 2048
#define INI_ID 0x11223344U
#define RES_ID 0xA1B2C3D4U

/* ---- a handshake, then a session on each side ---- */

static void rng_fill(uint8_t *buf, size_t len, void *user_data)
{
    uint64_t *ctr = user_data;
    uint8_t in[8];
    memcpy(in, ctr, 8);
    (*ctr)++;
    crypto_generichash(buf, len, in, sizeof(in), NULL, 0);
}

typedef struct peers {
    tern_crypto_session *i, *r; /* initiator, responder */
} peers;

static tern_noise *side(const char *proto, bool initiator, const tern_keypair *s,
                        const tern_public_key *rs, uint64_t *ctr)
{
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = proto;
    cfg.initiator = initiator;
    cfg.s = s;
    cfg.rs = rs;
    cfg.random = rng_fill;
    cfg.random_user_data = ctr;
    tern_noise *hs = NULL;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), 0);
    return hs;
}

static void exchange(tern_noise *from, tern_noise *to)
{
    uint8_t msg[512], pl[64];
    tern_ssize n = tern_noise_write_message(from, NULL, 0, msg, sizeof(msg));
    cr_assert_gt(n, 0);
    cr_assert_eq(tern_noise_read_message(to, msg, (size_t)n, pl, sizeof(pl)), 0);
}

/* An NK (or IK) handshake in memory, then sessions from it at time now. */
static void peers_new(peers *p, const char *pattern, const tern_crypto_session_config *base,
                      tern_ms now)
{
    static uint64_t ci, cr_;
    tern_keypair server, client;
    char proto[64];
    bool ik = strcmp(pattern, "IK") == 0;

    cr_assert_eq(tern_crypto_init(), 0);
    ci = 1;
    cr_ = 1000;
    cr_assert_eq(tern_keypair_generate(&server), 0);
    cr_assert_eq(tern_keypair_generate(&client), 0);
    snprintf(proto, sizeof(proto), "Noise_%s_25519_ChaChaPoly_BLAKE2b", pattern);
    tern_noise *hi = side(proto, true, ik ? &client : NULL, &server.pub, &ci);
    tern_noise *hr = side(proto, false, &server, NULL, &cr_);
    exchange(hi, hr);
    exchange(hr, hi);

    tern_crypto_session_config c;
    if (base)
        c = *base;
    else
        tern_crypto_session_config_default(&c);
    c.local_id = INI_ID;
    c.remote_id = RES_ID;
    cr_assert_eq(tern_crypto_session_new(&p->i, hi, &c, NULL, now), 0);
    c.local_id = RES_ID;
    c.remote_id = INI_ID;
    cr_assert_eq(tern_crypto_session_new(&p->r, hr, &c, NULL, now), 0);
    /* The split consumed the handshakes. */
    cr_assert_eq(tern_noise_next(hi), TERN_NOISE_DONE);
    tern_noise_del(hi);
    tern_noise_del(hr);
    sodium_memzero(&server, sizeof(server));
    sodium_memzero(&client, sizeof(client));
}

static void peers_del(peers *p)
{
    tern_crypto_session_del(p->i);
    tern_crypto_session_del(p->r);
}

/* A packet as it travels. */
typedef struct pkt {
    uint8_t b[BUF];
    size_t len;
    uint8_t pl[BUF];
    size_t pl_len;
} pkt;

static void payload(pkt *k, uint32_t tag, size_t len)
{
    for (size_t j = 0; j < len; j++)
        k->pl[j] = (uint8_t)(tag * 31U + j);
    k->pl_len = len;
}

static void seal(tern_crypto_session *s, pkt *k, uint32_t tag, size_t len, tern_ms now)
{
    payload(k, tag, len);
    tern_ssize n = tern_crypto_session_seal(s, k->pl, len, k->b, sizeof(k->b), now);
    cr_assert_eq(n, (tern_ssize)(len + TERN_PACKET_OVERHEAD), "seal: %td (%s)", n,
                 n < 0 ? tern_strerror((int)n) : "");
    k->len = (size_t)n;
}

static void open_ok(tern_crypto_session *s, const pkt *k, tern_ms now)
{
    uint8_t out[BUF];
    tern_ssize n = tern_crypto_session_open(s, k->b, k->len, out, sizeof(out), now);
    cr_assert_eq(n, (tern_ssize)k->pl_len, "open: %td (%s)", n, n < 0 ? tern_strerror((int)n) : "");
    cr_assert_arr_eq(out, k->pl, k->pl_len);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    for (size_t j = 0; j < len; j++)
        if (p[j])
            return false;
    return true;
}

/* Opening fails with want; out is wiped. */
static void open_fails(tern_crypto_session *s, const uint8_t *b, size_t len, int want, tern_ms now)
{
    uint8_t out[BUF];
    memset(out, 0xEE, sizeof(out));
    tern_ssize n = tern_crypto_session_open(s, b, len, out, sizeof(out), now);
    cr_assert_eq(n, (tern_ssize)want, "open: %td (%s), want %s", n,
                 n < 0 ? tern_strerror((int)n) : "", tern_err_name(want));
    size_t pl = len >= TERN_PACKET_OVERHEAD ? len - TERN_PACKET_OVERHEAD : 0;
    cr_assert(all_zero(out, pl), "output not wiped");
}

static tern_crypto_session_stats stats(const tern_crypto_session *s)
{
    tern_crypto_session_stats st;
    tern_crypto_session_get_stats(s, &st);
    return st;
}

/* ---- round trips and layout ---- */

static void round_trip(const char *pattern)
{
    peers p;
    peers_new(&p, pattern, NULL, 0);
    for (uint32_t k = 0; k < 20; k++) {
        pkt a;
        tern_crypto_session *from = k % 2 ? p.r : p.i, *to = k % 2 ? p.i : p.r;
        seal(from, &a, k, (size_t)k * 37, k);
        open_ok(to, &a, k);
    }
    cr_assert_eq(stats(p.i).sealed, 10U);
    cr_assert_eq(stats(p.i).opened, 10U);
    cr_assert_eq(stats(p.r).next_send_counter, 10U);
    peers_del(&p);
}

Test(packet, round_trip_nk)
{
    round_trip("NK");
}

Test(packet, round_trip_ik)
{
    round_trip("IK");
}

Test(packet, header_layout)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    for (int k = 0; k < 3; k++)
        seal(p.i, &a, 1, 5, 0);
    cr_assert_eq(a.b[0], TERN_PACKET_TYPE_DATA);     /* phase 0 */
    const uint8_t id[4] = {0xD4, 0xC3, 0xB2, 0xA1};  /* RES_ID, little-endian */
    const uint8_t ctr[8] = {2, 0, 0, 0, 0, 0, 0, 0}; /* the third packet */
    cr_assert_arr_eq(a.b + 1, id, 4);
    cr_assert_arr_eq(a.b + 5, ctr, 8);
    cr_assert_eq(a.len, 13U + 5U + 16U);
    uint32_t got;
    cr_assert_eq(tern_packet_peek_receiver(a.b, a.len, &got), 0);
    cr_assert_eq(got, RES_ID);
    cr_assert_eq(tern_packet_peek_receiver(a.b, 28, &got), TERN_ERR_MALFORMED);
    cr_assert_eq(tern_packet_overhead(), 29U);
    peers_del(&p);
}

/* The wire format, pinned: a session from raw keys must produce exactly the
 * ChaCha20-Poly1305 IETF output of libsodium with the header as ad and
 * Noise's nonce (4 zero bytes, then the counter little-endian). */
Test(packet, matches_plain_aead)
{
    uint8_t k1[32], k2[32], out[64], ref[64], nonce[12] = {0};
    for (int j = 0; j < 32; j++) {
        k1[j] = (uint8_t)j;
        k2[j] = (uint8_t)(0x80 + j);
    }
    cr_assert_eq(tern_crypto_init(), 0);
    tern_crypto_session *s;
    tern_crypto_session_config c;
    tern_crypto_session_config_default(&c);
    c.remote_id = 7;
    cr_assert_eq(tern_crypto_session_new_from_keys(&s, TERN_AEAD_CHACHAPOLY, k1, k2, &c, NULL, 0),
                 0);
    const uint8_t msg[5] = "hello";
    cr_assert_eq(tern_crypto_session_seal(s, msg, 5, out, sizeof(out), 0), 34);
    cr_assert_eq(tern_crypto_session_seal(s, msg, 5, out, sizeof(out), 0), 34);
    const uint8_t hdr[13] = {0x04, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_arr_eq(out, hdr, 13);
    nonce[4] = 1;
    unsigned long long clen;
    crypto_aead_chacha20poly1305_ietf_encrypt(ref, &clen, msg, 5, hdr, 13, NULL, nonce, k1);
    cr_assert_eq(clen, 21U);
    cr_assert_arr_eq(out + 13, ref, 21);
    tern_crypto_session_del(s);
}

/* ---- tampering ---- */

Test(packet, every_bit_flip_rejected)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 9, 40, 0);
    uint64_t expect_fail = 0, expect_malformed = 0, expect_id = 0;
    for (size_t byte = 0; byte < a.len; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t t[BUF];
            memcpy(t, a.b, a.len);
            t[byte] ^= (uint8_t)(1U << bit);
            int want = TERN_ERR_DECRYPT;
            if (byte == 0 && bit != 7) {
                want = TERN_ERR_MALFORMED; /* no longer DATA */
                expect_malformed++;
            } else if (byte >= 1 && byte < 5) {
                want = TERN_ERR_CONV; /* another receiver */
                expect_id++;
            } else {
                expect_fail++;
            }
            open_fails(p.r, t, a.len, want, 0);
        }
    }
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.auth_failures, expect_fail);
    cr_assert_eq(st.malformed, expect_malformed);
    cr_assert_eq(st.wrong_id, expect_id);
    cr_assert_eq(st.opened, 0U);
    cr_assert_eq(st.recv_key_generation, 0U); /* a flipped phase bit switched nothing */
    /* None of it moved the window: the original still opens. */
    open_ok(p.r, &a, 0);
    peers_del(&p);
}

Test(packet, truncated_and_extended)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 3, 100, 0);
    for (size_t len = 0; len < a.len; len++)
        open_fails(p.r, a.b, len,
                   len < TERN_PACKET_OVERHEAD ? TERN_ERR_MALFORMED : TERN_ERR_DECRYPT, 0);
    uint8_t longer[BUF];
    memcpy(longer, a.b, a.len);
    longer[a.len] = 0;
    open_fails(p.r, longer, a.len + 1, TERN_ERR_DECRYPT, 0);
    open_ok(p.r, &a, 0);
    /* A buffer one byte short: refused, nothing consumed. */
    uint8_t out[BUF];
    pkt b;
    seal(p.i, &b, 4, 10, 0);
    cr_assert_eq(tern_crypto_session_open(p.r, b.b, b.len, out, 9, 0), TERN_ERR_NOBUFS);
    open_ok(p.r, &b, 0);
    peers_del(&p);
}

Test(packet, wrong_receiver_id)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 1, 10, 0);
    /* Sent to the responder; the initiator is not it. */
    open_fails(p.i, a.b, a.len, TERN_ERR_CONV, 0);
    cr_assert_eq(stats(p.i).wrong_id, 1U);
    /* Rewriting the id to the initiator's does not help: the header is ad. */
    a.b[1] = 0x44;
    a.b[2] = 0x33;
    a.b[3] = 0x22;
    a.b[4] = 0x11;
    open_fails(p.i, a.b, a.len, TERN_ERR_DECRYPT, 0);
    peers_del(&p);
}

Test(packet, bad_arguments)
{
    peers p;
    uint8_t out[64];
    peers_new(&p, "NK", NULL, 0);
    cr_assert_eq(tern_crypto_session_seal(NULL, out, 1, out, 64, 0), TERN_ERR_INVAL);
    cr_assert_eq(tern_crypto_session_seal(p.i, NULL, 1, out, 64, 0), TERN_ERR_INVAL);
    cr_assert_eq(tern_crypto_session_seal(p.i, out, 40, out + 0, 64, 0), TERN_ERR_NOBUFS);
    cr_assert_eq(tern_crypto_session_seal(p.i, out, TERN_PACKET_PAYLOAD_MAX + 1, out, 64, 0),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_crypto_session_open(p.r, out, TERN_PACKET_MAX + 1, out, 64, 0),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(stats(p.i).next_send_counter, 0U); /* no counter consumed */
    /* A handshake not finished cannot make a session. */
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = "Noise_NN_25519_ChaChaPoly_BLAKE2b";
    cfg.initiator = true;
    tern_noise *hs;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), 0);
    tern_crypto_session *s = (tern_crypto_session *)1;
    cr_assert_eq(tern_crypto_session_new(&s, hs, NULL, NULL, 0), TERN_ERR_STATE);
    cr_assert_null(s);
    tern_noise_del(hs);
    peers_del(&p);
}

Test(packet, empty_payload)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    seal(p.r, &a, 0, 0, 0);
    cr_assert_eq(a.len, TERN_PACKET_OVERHEAD);
    cr_assert_eq(tern_crypto_session_open(p.i, a.b, a.len, NULL, 0, 0), 0);
    peers_del(&p);
}

/* ---- replays and reordering ---- */

Test(packet, replay_rejected_and_counted)
{
    peers p;
    pkt a, b;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 1, 10, 0);
    seal(p.i, &b, 2, 10, 0);
    open_ok(p.r, &b, 0);
    open_ok(p.r, &a, 0); /* reordered: fine */
    open_fails(p.r, a.b, a.len, TERN_ERR_REPLAY, 0);
    open_fails(p.r, b.b, b.len, TERN_ERR_REPLAY, 0);
    cr_assert_eq(stats(p.r).replays, 2U);
    cr_assert_eq(stats(p.r).opened, 2U);
    peers_del(&p);
}

Test(packet, reorder_within_window_and_too_old)
{
    peers p;
    static pkt q[TERN_PACKET_REPLAY_WINDOW + 1];
    size_t n = sizeof(q) / sizeof(q[0]);
    peers_new(&p, "NK", NULL, 0);
    for (size_t k = 0; k < n; k++)
        seal(p.i, &q[k], (uint32_t)k, 8, 0);
    /* The newest first, then the rest newest to oldest. */
    open_ok(p.r, &q[n - 1], 0);
    for (size_t k = n - 2; k >= 2; k--)
        open_ok(p.r, &q[k], 0);
    /* q[1] is the oldest inside the window; q[0] just behind it. */
    open_ok(p.r, &q[1], 0);
    open_fails(p.r, q[0].b, q[0].len, TERN_ERR_REPLAY, 0);
    cr_assert_eq(stats(p.r).too_old, 1U);
    cr_assert_eq(stats(p.r).replays, 0U);
    peers_del(&p);
}

/* A forged packet far ahead must not move the window. */
Test(packet, forgery_does_not_move_window)
{
    peers p;
    pkt a, f;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 1, 10, 0);
    seal(p.i, &f, 2, 10, 0);
    f.b[5] = 0xFF;
    f.b[6] = 0xFF;
    f.b[7] = 0x7F; /* counter far ahead */
    open_fails(p.r, f.b, f.len, TERN_ERR_DECRYPT, 0);
    open_ok(p.r, &a, 0);
    /* The reserved counter is refused before any AEAD. */
    memset(f.b + 5, 0xFF, 8);
    open_fails(p.r, f.b, f.len, TERN_ERR_MALFORMED, 0);
    cr_assert_eq(stats(p.r).auth_failures, 1U);
    peers_del(&p);
}

/* ---- rekeying ---- */

static tern_crypto_session_config cfg_with(uint64_t rekey_packets, tern_ms rekey_ms)
{
    tern_crypto_session_config c;
    tern_crypto_session_config_default(&c);
    c.rekey_after_packets = rekey_packets;
    c.rekey_after_ms = rekey_ms;
    return c;
}

Test(packet, rekey_by_count_with_reordering)
{
    peers p;
    tern_crypto_session_config c = cfg_with(10, UINT64_MAX);
    static pkt q[40];
    peers_new(&p, "NK", &c, 0);
    for (uint32_t k = 0; k < 40; k++)
        seal(p.i, &q[k], k, 20, 0);
    /* Phases: 0-9 phase 0, 10-19 phase 1, 20-29 phase 0, 30-39 phase 1. */
    for (uint32_t k = 0; k < 40; k++)
        cr_assert_eq(q[k].b[0], TERN_PACKET_TYPE_DATA | ((k / 10) % 2 ? TERN_PACKET_KEY_PHASE : 0));
    /* Counters run on across rekeys. */
    cr_assert_eq(q[10].b[5], 10);
    cr_assert_eq(stats(p.i).rekeys_sent, 3U);
    cr_assert_eq(stats(p.i).send_key_generation, 3U);

    /* Deliver with packets swapped across each flip: 0..8, 10, 9, 11.. */
    static const uint32_t order[] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  11, 9,  10, 12, 13,
                                     14, 15, 16, 17, 18, 21, 19, 20, 22, 23, 24, 25, 26, 27,
                                     28, 31, 29, 30, 32, 33, 34, 35, 36, 37, 38, 39};
    for (size_t k = 0; k < 40; k++)
        open_ok(p.r, &q[order[k]], 1);
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.rekeys_received, 3U);
    cr_assert_eq(st.recv_key_generation, 3U);
    cr_assert_eq(st.opened_old_key, 3U); /* 9, 19, 29 */
    cr_assert_eq(st.opened, 40U);
    cr_assert_eq(st.auth_failures, 0U);
    peers_del(&p);
}

Test(packet, rekey_by_time_and_grace)
{
    peers p;
    tern_crypto_session_config c = cfg_with(UINT64_MAX, 1000);
    c.old_key_grace_ms = 300;
    c.reject_after_ms = 5000;
    pkt old1, old2, old3, fresh;
    peers_new(&p, "NK", &c, 0);
    seal(p.i, &old1, 1, 10, 100);
    seal(p.i, &old2, 2, 10, 999);
    seal(p.i, &old3, 3, 10, 999);
    seal(p.i, &fresh, 4, 10, 1000); /* 1000 ms after install: new key */
    cr_assert_eq(fresh.b[0], TERN_PACKET_TYPE_DATA | TERN_PACKET_KEY_PHASE);
    cr_assert_eq(stats(p.i).rekeys_sent, 1U);

    open_ok(p.r, &old1, 1001);
    open_ok(p.r, &fresh, 1002); /* switch at 1002; old key until 1302 */
    cr_assert_eq(stats(p.r).rekeys_received, 1U);
    open_ok(p.r, &old2, 1301);                                 /* reordered, within grace */
    open_fails(p.r, old3.b, old3.len, TERN_ERR_EXPIRED, 1302); /* hard stop */
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.opened_old_key, 1U);
    cr_assert_eq(st.expired, 1U);
    /* Still expired later, and the window was not touched by it. */
    open_fails(p.r, old3.b, old3.len, TERN_ERR_EXPIRED, 5000);
    peers_del(&p);
}

/* Before the receiver has switched, a packet of the other phase that does
 * not authenticate under the next key switches nothing. */
Test(packet, forged_phase_flip_switches_nothing)
{
    peers p;
    pkt a, b;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 1, 10, 0);
    seal(p.i, &b, 2, 10, 0);
    a.b[0] ^= TERN_PACKET_KEY_PHASE;
    open_fails(p.r, a.b, a.len, TERN_ERR_DECRYPT, 0);
    cr_assert_eq(stats(p.r).recv_key_generation, 0U);
    open_ok(p.r, &b, 0);
    peers_del(&p);
}

Test(packet, rekey_on_request_both_ways)
{
    peers p;
    pkt a;
    peers_new(&p, "IK", NULL, 0);
    for (int round = 0; round < 5; round++) {
        cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
        seal(p.i, &a, (uint32_t)round, 30, 0);
        open_ok(p.r, &a, 0);
        cr_assert_eq(tern_crypto_session_rekey(p.r, 0), 0);
        seal(p.r, &a, (uint32_t)round, 30, 0);
        open_ok(p.i, &a, 0);
    }
    cr_assert_eq(stats(p.r).recv_key_generation, 5U);
    cr_assert_eq(stats(p.i).recv_key_generation, 5U);
    peers_del(&p);
}

/* Continuous traffic, rekeying by count, with a seeded shuffle inside a
 * small reorder span and duplicates: every packet delivered exactly once. */
Test(packet, rekey_under_continuous_reordered_traffic)
{
    peers p;
    tern_crypto_session_config c = cfg_with(50, UINT64_MAX);
    enum { N = 2000, SPAN = 8 };
    static pkt q[N];
    static bool got[N];
    uint64_t rs = 12345;
    peers_new(&p, "NK", &c, 0);
    for (uint32_t k = 0; k < N; k++)
        seal(p.i, &q[k], k, 16 + k % 50, k);
    uint32_t idx[N];
    for (uint32_t k = 0; k < N; k++)
        idx[k] = k;
    for (uint32_t k = 0; k + 1 < N; k++) {
        rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t j = k + (uint32_t)((rs >> 33) % SPAN);
        if (j >= N)
            j = N - 1;
        uint32_t t = idx[k];
        idx[k] = idx[j];
        idx[j] = t;
    }
    uint64_t dups = 0;
    for (uint32_t k = 0; k < N; k++) {
        const pkt *x = &q[idx[k]];
        open_ok(p.r, x, N + k);
        got[idx[k]] = true;
        if (k % 7 == 0) {
            open_fails(p.r, x->b, x->len, TERN_ERR_REPLAY, N + k);
            dups++;
        }
    }
    for (uint32_t k = 0; k < N; k++)
        cr_assert(got[k]);
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.opened, N);
    cr_assert_eq(st.replays, dups);
    cr_assert_eq(st.rekeys_received, N / 50 - 1);
    peers_del(&p);
}

/* ---- generations lost whole: the receiver's lookahead ---- */

/* The receiver's state as the stats show it: with the window, which a
 * caller sees only through what it accepts, this is what must not move on
 * a failure. */
static void same_receiving_state(const tern_crypto_session_stats *a,
                                 const tern_crypto_session_stats *b)
{
    cr_assert_eq(a->recv_key_generation, b->recv_key_generation);
    cr_assert_eq(a->rekeys_received, b->rekeys_received);
    cr_assert_eq(a->rekeys_skipped, b->rekeys_skipped);
    cr_assert_eq(a->opened, b->opened);
}

/* Rekeying by count every 5 packets; all 5 of the middle generation are
 * lost. The first packet two generations on opens (one lookahead try), the
 * receiver jumps by 2, and the rest of that generation costs one attempt
 * each. */
Test(packet, lookahead_jumps_a_generation_lost_whole)
{
    peers p;
    tern_crypto_session_config c = cfg_with(5, UINT64_MAX);
    static pkt q[15];
    peers_new(&p, "NK", &c, 0);
    for (uint32_t k = 0; k < 15; k++)
        seal(p.i, &q[k], k, 24, 0);
    cr_assert_eq(stats(p.i).send_key_generation, 2U);
    cr_assert_eq(q[10].b[0], TERN_PACKET_TYPE_DATA); /* phase 0 again, as generation 0 */
    for (uint32_t k = 0; k < 5; k++)
        open_ok(p.r, &q[k], 1);
    /* q[5..9], generation 1, are lost. */
    open_ok(p.r, &q[10], 2);
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.recv_key_generation, 2U);
    cr_assert_eq(st.rekeys_received, 2U);
    cr_assert_eq(st.rekeys_skipped, 1U);
    cr_assert_eq(st.lookahead_tries, 1U);
    cr_assert_eq(st.auth_failures, 0U); /* the failed first attempt is no failure */
    for (uint32_t k = 11; k < 15; k++)
        open_ok(p.r, &q[k], 3);
    st = stats(p.r);
    cr_assert_eq(st.lookahead_tries, 1U);
    cr_assert_eq(st.opened, 10U);
    /* The sender goes on rekeying; the receiver follows one step at a time. */
    pkt a;
    for (uint32_t k = 0; k < 12; k++) {
        seal(p.i, &a, 100 + k, 24, 4);
        open_ok(p.r, &a, 4);
    }
    st = stats(p.r);
    cr_assert_eq(st.recv_key_generation, stats(p.i).send_key_generation);
    cr_assert_eq(st.rekeys_received, st.recv_key_generation);
    cr_assert_eq(st.lookahead_tries, 1U);
    peers_del(&p);
}

/* Three generations on: the other phase, so g + 1 is tried first, then
 * g + 3. */
Test(packet, lookahead_reaches_three_generations)
{
    peers p;
    tern_crypto_session_config c = cfg_with(5, UINT64_MAX);
    static pkt q[20];
    peers_new(&p, "IK", &c, 0);
    for (uint32_t k = 0; k < 20; k++)
        seal(p.r, &q[k], k, 40, 0); /* the responder's direction this time */
    cr_assert_eq(q[15].b[0], TERN_PACKET_TYPE_DATA | TERN_PACKET_KEY_PHASE);
    open_ok(p.i, &q[2], 0);
    /* q[3..14] lost: the rest of generation 0, and 1 and 2 whole. */
    open_ok(p.i, &q[17], 10);
    tern_crypto_session_stats st = stats(p.i);
    cr_assert_eq(st.recv_key_generation, 3U);
    cr_assert_eq(st.rekeys_received, 3U);
    cr_assert_eq(st.rekeys_skipped, 2U);
    cr_assert_eq(st.lookahead_tries, 1U);
    /* Reordered within generation 3: below the highest counter, one try. */
    open_ok(p.i, &q[15], 10);
    open_ok(p.i, &q[16], 10);
    open_ok(p.i, &q[18], 10);
    open_ok(p.i, &q[19], 10);
    cr_assert_eq(stats(p.i).lookahead_tries, 1U);
    cr_assert_eq(stats(p.i).auth_failures, 0U);
    peers_del(&p);
}

/* Even before the first packet: the sender rekeyed twice, nothing came. */
Test(packet, lookahead_before_the_first_packet)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    seal(p.i, &a, 1, 10, 0);
    open_ok(p.r, &a, 0);
    cr_assert_eq(stats(p.r).recv_key_generation, 2U);
    cr_assert_eq(stats(p.r).rekeys_skipped, 1U);
    peers_del(&p);
}

/* One generation more than the lookahead: the packet fails, nothing moves,
 * and that direction keeps failing whatever the sender does next (the
 * documented bound: the session's timeouts end it). */
Test(packet, lookahead_bound_fails_and_changes_nothing)
{
    peers p;
    pkt a0, a1, x, y;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a0, 1, 10, 0);
    seal(p.i, &a1, 2, 10, 0); /* held back */
    open_ok(p.r, &a0, 0);
    for (unsigned k = 0; k < TERN_PACKET_REKEY_LOOKAHEAD + 1; k++)
        cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    /* Far ahead too: had the window moved, a1 would then be too old. */
    tern_packet_set_next_counter(p.i, 100000);
    seal(p.i, &x, 3, 10, 0);
    tern_crypto_session_stats before = stats(p.r);
    open_fails(p.r, x.b, x.len, TERN_ERR_DECRYPT, 0);
    tern_crypto_session_stats st = stats(p.r);
    same_receiving_state(&before, &st);
    cr_assert_eq(st.auth_failures, 1U);
    cr_assert_eq(st.lookahead_tries, 1U); /* counted once, per packet */
    cr_assert_eq(st.recv_key_generation, 0U);
    open_ok(p.r, &a1, 0); /* window and key as they were */
    open_fails(p.r, x.b, x.len, TERN_ERR_DECRYPT, 0);
    /* Whatever the sender does next stays out of reach. */
    for (int k = 0; k < 6; k++) {
        seal(p.i, &y, 4, 10, 0);
        open_fails(p.r, y.b, y.len, TERN_ERR_DECRYPT, 0);
        cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    }
    st = stats(p.r);
    cr_assert_eq(st.recv_key_generation, 0U);
    cr_assert_eq(st.opened, 2U);
    cr_assert_eq(st.auth_failures, 8U);
    cr_assert_eq(st.lookahead_tries, 8U);
    peers_del(&p);
}

/* After a jump of two, a late packet of the generation jumped past opens
 * under the previous key while its grace lasts, then expires; a late packet
 * of the generation before that (the current phase, below the switch
 * point) fails to authenticate and changes nothing. */
Test(packet, lookahead_late_packets_after_a_jump)
{
    peers p;
    tern_crypto_session_config c = cfg_with(UINT64_MAX, UINT64_MAX);
    c.old_key_grace_ms = 500;
    pkt g0a, g0b, g1a, g1b, g1c, g2a, g2b;
    peers_new(&p, "NK", &c, 0);
    seal(p.i, &g0a, 1, 10, 0);
    seal(p.i, &g0b, 2, 10, 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    seal(p.i, &g1a, 3, 10, 0);
    seal(p.i, &g1b, 4, 10, 0);
    seal(p.i, &g1c, 5, 10, 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    seal(p.i, &g2a, 6, 10, 0);
    seal(p.i, &g2b, 7, 10, 0);

    open_ok(p.r, &g0a, 100);
    open_ok(p.r, &g2a, 200); /* the jump; generation 1 is the previous key until 700 */
    cr_assert_eq(stats(p.r).recv_key_generation, 2U);
    open_ok(p.r, &g1b, 300); /* reordered behind the jump, in the grace */
    cr_assert_eq(stats(p.r).opened_old_key, 1U);

    tern_crypto_session_stats before = stats(p.r);
    open_fails(p.r, g0b.b, g0b.len, TERN_ERR_DECRYPT, 300);
    tern_crypto_session_stats st = stats(p.r);
    same_receiving_state(&before, &st);
    cr_assert_eq(st.lookahead_tries, 1U); /* below the highest: no second try */

    open_fails(p.r, g1c.b, g1c.len, TERN_ERR_EXPIRED, 700); /* the grace is over */
    cr_assert_eq(stats(p.r).expired, 1U);
    open_ok(p.r, &g2b, 700);
    /* g1a never came; the sender's next generation is one step ahead. */
    cr_assert_eq(tern_crypto_session_rekey(p.i, 800), 0);
    pkt g3;
    seal(p.i, &g3, 8, 10, 800);
    open_ok(p.r, &g3, 800);
    cr_assert_eq(stats(p.r).recv_key_generation, 3U);
    cr_assert_eq(stats(p.r).lookahead_tries, 1U);
    (void)g1a;
    peers_del(&p);
}

/* Forgeries cost the lookahead try only with a counter above every one
 * accepted, and never change the receiving state. */
Test(packet, lookahead_forgeries_change_nothing)
{
    peers p;
    pkt a, b, c, f, g2;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 1, 10, 0);
    seal(p.i, &b, 2, 10, 0); /* held back: counter 1 */
    seal(p.i, &c, 3, 10, 0);
    open_ok(p.r, &a, 0);
    open_ok(p.r, &c, 0);

    /* The current phase, a counter far ahead: current key, then g + 2. */
    f = b;
    f.b[12] = 0x40;
    tern_crypto_session_stats before = stats(p.r);
    open_fails(p.r, f.b, f.len, TERN_ERR_DECRYPT, 0);
    tern_crypto_session_stats st = stats(p.r);
    same_receiving_state(&before, &st);
    cr_assert_eq(st.lookahead_tries, 1U);
    cr_assert_eq(st.auth_failures, 1U);

    /* The other phase, far ahead: g + 1, then g + 3. */
    f.b[0] ^= TERN_PACKET_KEY_PHASE;
    open_fails(p.r, f.b, f.len, TERN_ERR_DECRYPT, 0);
    st = stats(p.r);
    same_receiving_state(&before, &st);
    cr_assert_eq(st.lookahead_tries, 2U);
    cr_assert_eq(st.auth_failures, 2U);

    /* Random bytes behind a valid header, either phase. */
    for (int ph = 0; ph < 2; ph++) {
        f = b;
        f.b[0] = (uint8_t)(TERN_PACKET_TYPE_DATA | (ph ? TERN_PACKET_KEY_PHASE : 0U));
        f.b[5] = 0x77;
        randombytes_buf(f.b + TERN_PACKET_HEADER_BYTES, f.len - TERN_PACKET_HEADER_BYTES);
        open_fails(p.r, f.b, f.len, TERN_ERR_DECRYPT, 0);
    }
    st = stats(p.r);
    same_receiving_state(&before, &st);
    cr_assert_eq(st.lookahead_tries, 4U);

    /* A tampered byte in a genuine packet two generations on: no jump. */
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    seal(p.i, &g2, 3, 10, 0);
    f = g2;
    f.b[TERN_PACKET_HEADER_BYTES] ^= 1;
    open_fails(p.r, f.b, f.len, TERN_ERR_DECRYPT, 0);
    st = stats(p.r);
    same_receiving_state(&before, &st);
    cr_assert_eq(st.lookahead_tries, 5U);

    /* A forgery below the highest counter accepted gets one attempt. */
    f = b;
    f.b[TERN_PACKET_HEADER_BYTES] ^= 1;
    open_fails(p.r, f.b, f.len, TERN_ERR_DECRYPT, 0);
    cr_assert_eq(stats(p.r).lookahead_tries, 5U);
    cr_assert_eq(stats(p.r).auth_failures, 6U);

    /* None of it moved anything: b, then the genuine g2, open. */
    open_ok(p.r, &b, 0);
    open_ok(p.r, &g2, 0);
    cr_assert_eq(stats(p.r).recv_key_generation, 2U);
    peers_del(&p);
}

/* A replay after a jump is still a replay, whichever generation it came
 * under. */
Test(packet, lookahead_replays_after_a_jump)
{
    peers p;
    pkt a, b;
    peers_new(&p, "NK", NULL, 0);
    seal(p.i, &a, 1, 10, 0);
    open_ok(p.r, &a, 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    seal(p.i, &b, 2, 10, 0);
    open_ok(p.r, &b, 0);
    cr_assert_eq(stats(p.r).recv_key_generation, 3U);
    open_fails(p.r, b.b, b.len, TERN_ERR_REPLAY, 0);
    open_fails(p.r, a.b, a.len, TERN_ERR_REPLAY, 0);
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.replays, 2U);
    cr_assert_eq(st.recv_key_generation, 3U);
    cr_assert_eq(st.lookahead_tries, 1U); /* refused before any AEAD */
    peers_del(&p);
}

/* Rekeying by time while nothing gets through: the sender's key changes
 * every second, the receiver hears generation 0, then generation 2 two
 * seconds later. By then its current key is past its hard limit (1.5 s), so
 * only the lookahead is tried; a forgery then counts as expired. */
Test(packet, lookahead_after_time_rekeys)
{
    peers p;
    tern_crypto_session_config c = cfg_with(UINT64_MAX, 1000);
    c.reject_after_ms = 1500;
    pkt g0, g1, g2, g2b, f;
    peers_new(&p, "NK", &c, 0);
    seal(p.i, &g0, 1, 10, 0);
    seal(p.i, &g1, 2, 10, 1000);
    seal(p.i, &g2, 3, 10, 2000);
    seal(p.i, &g2b, 4, 10, 2100);
    cr_assert_eq(stats(p.i).send_key_generation, 2U);
    open_ok(p.r, &g0, 10);
    /* g1 is lost. */
    f = g2b;
    f.b[20] ^= 0x10;
    open_fails(p.r, f.b, f.len, TERN_ERR_EXPIRED, 2050);
    tern_crypto_session_stats st = stats(p.r);
    cr_assert_eq(st.expired, 1U);
    cr_assert_eq(st.auth_failures, 0U);
    cr_assert_eq(st.lookahead_tries, 1U);
    cr_assert_eq(st.recv_key_generation, 0U);
    open_ok(p.r, &g2, 2050);
    open_ok(p.r, &g2b, 2150);
    st = stats(p.r);
    cr_assert_eq(st.recv_key_generation, 2U);
    cr_assert_eq(st.rekeys_skipped, 1U);
    cr_assert_eq(st.lookahead_tries, 2U);
    cr_assert_eq(st.expired, 1U);
    /* Generation 1 arrives late, within the grace: the previous key. */
    open_ok(p.r, &g1, 2200);
    cr_assert_eq(stats(p.r).opened_old_key, 1U);
    peers_del(&p);
}

/* ---- hard limits ---- */

Test(packet, hard_limit_by_count)
{
    peers p;
    tern_crypto_session_config c = cfg_with(UINT64_MAX, UINT64_MAX);
    c.reject_after_packets = 5;
    c.reject_after_ms = UINT64_MAX;
    pkt a;
    uint8_t out[BUF];
    peers_new(&p, "NK", &c, 0);
    for (uint32_t k = 0; k < 5; k++) {
        seal(p.i, &a, k, 10, 0);
        open_ok(p.r, &a, 0);
    }
    cr_assert_eq(tern_crypto_session_seal(p.i, a.pl, 10, out, sizeof(out), 0), TERN_ERR_EXPIRED);
    cr_assert_eq(stats(p.i).expired, 1U);
    cr_assert_eq(stats(p.i).next_send_counter, 5U);
    /* A manual rekey gives a fresh key. */
    cr_assert_eq(tern_crypto_session_rekey(p.i, 0), 0);
    seal(p.i, &a, 9, 10, 0);
    open_ok(p.r, &a, 0);
    peers_del(&p);
}

Test(packet, hard_limit_by_time)
{
    peers p;
    tern_crypto_session_config c = cfg_with(UINT64_MAX, UINT64_MAX);
    c.reject_after_ms = 180000;
    pkt a, late;
    uint8_t out[BUF];
    peers_new(&p, "NK", &c, 0);
    seal(p.i, &a, 1, 10, 179999);
    seal(p.i, &late, 2, 10, 179999);
    open_ok(p.r, &a, 179999);
    cr_assert_eq(tern_crypto_session_seal(p.i, a.pl, 10, out, sizeof(out), 180000),
                 TERN_ERR_EXPIRED);
    /* The receiver holds the same line. */
    open_fails(p.r, late.b, late.len, TERN_ERR_EXPIRED, 180000);
    cr_assert_eq(stats(p.r).expired, 1U);
    peers_del(&p);
}

Test(packet, defaults_rekey_before_the_hard_limit)
{
    peers p;
    pkt a;
    peers_new(&p, "NK", NULL, 0);
    /* An idle key 119 s old is still used; at 120 s it is replaced; the
     * replacement is good for another 180 s. */
    seal(p.i, &a, 1, 10, 119999);
    cr_assert_eq(a.b[0], TERN_PACKET_TYPE_DATA);
    open_ok(p.r, &a, 119999);
    seal(p.i, &a, 2, 10, 120000);
    cr_assert_eq(a.b[0], TERN_PACKET_TYPE_DATA | TERN_PACKET_KEY_PHASE);
    open_ok(p.r, &a, 120000);
    seal(p.i, &a, 3, 10, 299999);
    cr_assert_eq(a.b[0], TERN_PACKET_TYPE_DATA); /* 179.999 s later: rekeyed again at 120 */
    open_ok(p.r, &a, 299999);
    cr_assert_eq(stats(p.i).expired, 0U);
    peers_del(&p);
}

/* The end of the counter space: the last two counters are sealed and
 * opened, then the sender refuses; 2^64 - 1 is never used. */
Test(packet, counters_run_out)
{
    peers p;
    pkt a, b;
    uint8_t out[BUF];
    peers_new(&p, "NK", NULL, 0);
    tern_packet_set_next_counter(p.i, UINT64_MAX - 2);
    seal(p.i, &a, 1, 10, 0);
    seal(p.i, &b, 2, 10, 0);
    cr_assert_eq(tern_crypto_session_seal(p.i, a.pl, 10, out, sizeof(out), 0), TERN_ERR_EXPIRED);
    cr_assert_eq(tern_crypto_session_seal(p.i, a.pl, 10, out, sizeof(out), 0), TERN_ERR_EXPIRED);
    cr_assert_eq(stats(p.i).expired, 2U);
    cr_assert_eq(stats(p.i).next_send_counter, UINT64_MAX);
    open_ok(p.r, &b, 0);
    open_ok(p.r, &a, 0);
    open_fails(p.r, a.b, a.len, TERN_ERR_REPLAY, 0);
    peers_del(&p);
}

/* The config defaults, and that the AES-GCM limits follow RFC 9001 where
 * AES-GCM exists. */
Test(packet, config_defaults)
{
    tern_crypto_session_config c;
    tern_crypto_session_config_default(&c);
    cr_assert_eq(c.rekey_after_ms, 120000U);
    cr_assert_eq(c.reject_after_ms, 180000U);
    cr_assert_eq(c.old_key_grace_ms, 3000U);
    cr_assert_leq(TERN_PACKET_AESGCM_REJECT_AFTER, UINT64_C(1) << 23);
    uint8_t k[32] = {1};
    tern_crypto_session *s = NULL;
    c.rekey_after_ms = 0;
    cr_assert_eq(tern_crypto_session_new_from_keys(&s, TERN_AEAD_CHACHAPOLY, k, k, &c, NULL, 0),
                 TERN_ERR_INVAL);
    cr_assert_eq(tern_crypto_session_new_from_keys(&s, (tern_aead)7, k, k, NULL, NULL, 0),
                 TERN_ERR_INVAL);
    cr_assert_eq(tern_crypto_init(), 0);
    if (tern_crypto_aesgcm_available()) {
        cr_assert_eq(tern_crypto_session_new_from_keys(&s, TERN_AEAD_AESGCM, k, k, NULL, NULL, 0),
                     0);
        uint8_t out[64], back[64];
        cr_assert_eq(tern_crypto_session_seal(s, k, 8, out, sizeof(out), 0), 37);
        /* Same key both ways here, so a session opens its own packets if the
         * ids agree (both 0). */
        cr_assert_eq(tern_crypto_session_open(s, out, 37, back, sizeof(back), 0), 8);
        tern_crypto_session_del(s);
    }
}

/* The allocator's failure leaves the handshake ready for another try. */
static void *fail_malloc(size_t size, void *ud)
{
    (void)size;
    (void)ud;
    return NULL;
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

Test(packet, allocation_failure)
{
    uint8_t k[32] = {0};
    tern_mem m = {fail_malloc, plain_free, NULL};
    tern_crypto_session *s = (tern_crypto_session *)1;
    cr_assert_eq(tern_crypto_session_new_from_keys(&s, TERN_AEAD_CHACHAPOLY, k, k, NULL, &m, 0),
                 TERN_ERR_NOMEM);
    cr_assert_null(s);

    /* From a handshake: the failure leaves it ready to split. */
    uint64_t ci = 1, cr_ = 2;
    tern_keypair server;
    cr_assert_eq(tern_crypto_init(), 0);
    cr_assert_eq(tern_keypair_generate(&server), 0);
    const char *proto = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
    tern_noise *hi = side(proto, true, NULL, &server.pub, &ci);
    tern_noise *hr = side(proto, false, &server, NULL, &cr_);
    exchange(hi, hr);
    exchange(hr, hi);
    cr_assert_eq(tern_crypto_session_new(&s, hi, NULL, &m, 0), TERN_ERR_NOMEM);
    cr_assert_eq(tern_noise_next(hi), TERN_NOISE_SPLIT);
    tern_crypto_session *si, *sr;
    cr_assert_eq(tern_crypto_session_new(&si, hi, NULL, NULL, 0), 0);
    cr_assert_eq(tern_crypto_session_new(&sr, hr, NULL, NULL, 0), 0);
    pkt a;
    seal(si, &a, 1, 10, 0); /* both ids 0 with the default config */
    open_ok(sr, &a, 0);
    tern_crypto_session_del(si);
    tern_crypto_session_del(sr);
    tern_noise_del(hi);
    tern_noise_del(hr);
}
