/* mac1/mac2, cookie replies and handshake rate limiting
 * (crypto/cookie.c, crypto/ratelimit.c): a real NK initiation framed as
 * type | version | sender id | Noise message 1 | mac1 | mac2, every bit of
 * it flipped, cookies bound to the address and the secret's lifetime,
 * forged and stale replies, the amplification bound, and the rate limiter's
 * buckets and bounded table. All in virtual time with seeded randomness. */
#include <criterion/criterion.h>
#include <sodium.h>
#include <string.h>

#include "crypto/cookie_internal.h"
#include "tern/crypto.h"

#define INIT_TYPE 1
#define COOKIE_TYPE 3
#define HDR 6U

/* Seeded, reproducible randomness (splitmix64). */
static void seeded_random(uint8_t *buf, size_t len, void *ud)
{
    uint64_t *s = ud;
    for (size_t i = 0; i < len; i++) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        buf[i] = (uint8_t)(z ^ (z >> 31));
    }
}

static uint64_t rng_state = 42;
static tern_keypair server_kp, other_kp;

static void setup(void)
{
    cr_assert_eq(tern_crypto_init(), 0);
    tern_key k;
    seeded_random(k.b, sizeof(k.b), &rng_state);
    tern_keypair_from_secret(&server_kp, &k);
    seeded_random(k.b, sizeof(k.b), &rng_state);
    tern_keypair_from_secret(&other_kp, &k);
}

static tern_addr addr4(uint8_t last, uint16_t port)
{
    tern_addr a = {.len = 6, .bytes = {192, 0, 2, last, (uint8_t)(port >> 8), (uint8_t)port}};
    return a;
}

/* A minimal NK initiation (empty payload) with room for the MACs. Returns
 * its length. */
static size_t make_init(uint8_t *out, size_t cap, uint32_t sender)
{
    tern_noise_config cfg;
    tern_noise *hs;
    tern_noise_config_default(&cfg);
    cfg.protocol = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
    cfg.initiator = true;
    cfg.rs = &server_kp.pub;
    cfg.random = seeded_random;
    cfg.random_user_data = &rng_state;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), 0);
    out[0] = INIT_TYPE;
    out[1] = 1;
    memcpy(out + 2, &sender, 4);
    tern_ssize n = tern_noise_write_message(hs, NULL, 0, out + HDR, cap - HDR - TERN_MACS_BYTES);
    cr_assert_gt(n, 0);
    tern_noise_del(hs);
    memset(out + HDR + n, 0xee, TERN_MACS_BYTES);
    return HDR + (size_t)n + TERN_MACS_BYTES;
}

TestSuite(cookie, .init = setup);

Test(cookie, mac1_valid_accepted_every_bit_flip_rejected)
{
    tern_cookie_client *c;
    tern_cookie_server *s;
    uint8_t msg[256];
    tern_addr a = addr4(1, 4000);

    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &rng_state, 0, NULL), 0);
    size_t len = make_init(msg, sizeof(msg), 7);
    cr_assert_eq(len, 86U, "NK initiation is %zu bytes", len);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 0), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, false, 0), 0);

    /* Every bit before mac2 is covered by mac1. */
    for (size_t i = 0; i < (len - TERN_MAC_BYTES) * 8; i++) {
        msg[i / 8] ^= (uint8_t)(1U << (i % 8));
        cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, false, 0), TERN_ERR_DECRYPT,
                     "bit %zu", i);
        msg[i / 8] ^= (uint8_t)(1U << (i % 8));
    }
    /* Truncated and too short. */
    cr_assert_eq(tern_cookie_server_check(s, msg, len - 1, &a, false, 0), TERN_ERR_DECRYPT);
    cr_assert_eq(tern_cookie_server_check(s, msg, 31, &a, false, 0), TERN_ERR_DECRYPT);
    cr_assert_eq(tern_cookie_server_check(s, msg, 0, &a, false, 0), TERN_ERR_DECRYPT);
    /* Without a cookie, mac2 is zeros, and needed mac2 fails. */
    uint8_t zeros[TERN_MAC_BYTES] = {0};
    cr_assert_eq(memcmp(msg + len - TERN_MAC_BYTES, zeros, TERN_MAC_BYTES), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 0), TERN_ERR_COOKIE);

    tern_cookie_stats st;
    tern_cookie_server_get_stats(s, &st);
    cr_assert_eq(st.mac1_bad, (len - TERN_MAC_BYTES) * 8 + 3);
    cr_assert_eq(st.mac2_bad, 1);

    /* A client with another server's key. */
    tern_cookie_client *wrong;
    cr_assert_eq(tern_cookie_client_new(&wrong, &other_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_client_add_macs(wrong, msg, len, 0), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, false, 0), TERN_ERR_DECRYPT);

    tern_cookie_client_del(wrong);
    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
}

/* Server asks for a cookie; client consumes it; its retry passes mac2. */
static void round_trip(tern_cookie_client *c, tern_cookie_server *s, const tern_addr *a,
                       tern_ms now)
{
    uint8_t msg[256], reply[TERN_COOKIE_REPLY_BYTES + 8];
    size_t len = make_init(msg, sizeof(msg), 0x01020304);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, now), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, a, true, now), TERN_ERR_COOKIE);
    tern_ssize n =
        tern_cookie_reply_write(s, COOKIE_TYPE, 0x01020304, msg, len, a, now, reply, sizeof(reply));
    cr_assert_eq(n, (tern_ssize)TERN_COOKIE_REPLY_BYTES);
    cr_assert_eq(reply[0], COOKIE_TYPE);
    uint32_t rid;
    cr_assert_eq(tern_cookie_reply_peek(reply, (size_t)n, &rid), 0);
    cr_assert_eq(rid, 0x01020304U);
    cr_assert_eq(tern_cookie_client_consume(c, reply, (size_t)n, now + 10), 0);
}

Test(cookie, round_trip_and_address_binding)
{
    tern_cookie_client *c;
    tern_cookie_server *s;
    tern_addr a = addr4(1, 4000);
    uint8_t msg[256];

    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &rng_state, 1000, NULL),
                 0);
    round_trip(c, s, &a, 1000);

    size_t len = make_init(msg, sizeof(msg), 9);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 1020), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 1020), 0);

    /* The same message from another address or port. */
    tern_addr other_port = addr4(1, 4001), other_ip = addr4(2, 4000);
    tern_addr v6 = {.len = 18};
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &other_port, true, 1020), TERN_ERR_COOKIE);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &other_ip, true, 1020), TERN_ERR_COOKIE);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &v6, true, 1020), TERN_ERR_COOKIE);
    /* A flipped bit of mac2. */
    msg[len - 1] ^= 1;
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 1020), TERN_ERR_COOKIE);
    msg[len - 1] ^= 1;
    /* A bad address length. */
    tern_addr bad = {.len = TERN_ADDR_MAX + 1};
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &bad, true, 1020), TERN_ERR_INVAL);

    tern_cookie_stats st;
    tern_cookie_server_get_stats(s, &st);
    cr_assert_eq(st.replies, 1);
    cr_assert_eq(st.mac2_ok, 1);

    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
}

Test(cookie, secret_rotation)
{
    tern_cookie_client *c;
    tern_cookie_server *s;
    tern_addr a = addr4(1, 4000);
    uint8_t msg[256];
    const tern_ms P = TERN_COOKIE_SECRET_MS;

    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &rng_state, 0, NULL), 0);
    round_trip(c, s, &a, 0);
    size_t len = make_init(msg, sizeof(msg), 9);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 100), 0);

    /* The same mac2 (the server sees the retry late): valid before the
     * first rotation, and after it under the previous secret... */
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, P - 1), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, P), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 2 * P - 1), 0);
    /* ... but not after the second. */
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 2 * P), TERN_ERR_COOKIE);
    tern_cookie_stats st;
    tern_cookie_server_get_stats(s, &st);
    cr_assert_eq(st.rotations, 2);

    /* A long silence replaces both secrets at once. */
    round_trip(c, s, &a, 3 * P);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 3 * P + 5), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 3 * P + 5), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &a, true, 5 * P + 10), TERN_ERR_COOKIE);

    /* The client stops using a cookie after its TTL: mac2 goes back to zeros. */
    round_trip(c, s, &a, 10 * P);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 10 * P + TERN_COOKIE_CLIENT_TTL_MS - 1),
                 0);
    uint8_t zeros[TERN_MAC_BYTES] = {0};
    cr_assert_neq(memcmp(msg + len - TERN_MAC_BYTES, zeros, TERN_MAC_BYTES), 0);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 10 * P + 10 + TERN_COOKIE_CLIENT_TTL_MS),
                 0);
    cr_assert_eq(memcmp(msg + len - TERN_MAC_BYTES, zeros, TERN_MAC_BYTES), 0);

    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
}

Test(cookie, forged_and_stale_replies_rejected)
{
    tern_cookie_client *c;
    tern_cookie_server *s, *impostor;
    tern_addr a = addr4(1, 4000);
    uint8_t m1[256], m2[256], reply[TERN_COOKIE_REPLY_BYTES];

    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &rng_state, 0, NULL), 0);
    cr_assert_eq(
        tern_cookie_server_new(&impostor, &other_kp.pub, seeded_random, &rng_state, 0, NULL), 0);

    /* Nothing sent yet. */
    memset(reply, 0, sizeof(reply));
    cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), 0), TERN_ERR_STATE);

    size_t l1 = make_init(m1, sizeof(m1), 1);
    cr_assert_eq(tern_cookie_client_add_macs(c, m1, l1, 0), 0);
    tern_ssize n = tern_cookie_reply_write(s, COOKIE_TYPE, 1, m1, l1, &a, 0, reply, sizeof(reply));
    cr_assert_eq(n, (tern_ssize)TERN_COOKIE_REPLY_BYTES);

    /* A reply to m1 after the client sent m2: stale. */
    size_t l2 = make_init(m2, sizeof(m2), 2);
    cr_assert_eq(tern_cookie_client_add_macs(c, m2, l2, 5), 0);
    cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), 6), TERN_ERR_DECRYPT);

    /* Every flipped bit of a good reply's nonce and sealed part. */
    n = tern_cookie_reply_write(s, COOKIE_TYPE, 2, m2, l2, &a, 5, reply, sizeof(reply));
    cr_assert_eq(n, (tern_ssize)TERN_COOKIE_REPLY_BYTES);
    for (size_t i = 5 * 8; i < sizeof(reply) * 8; i++) {
        reply[i / 8] ^= (uint8_t)(1U << (i % 8));
        cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), 6), TERN_ERR_DECRYPT,
                     "bit %zu", i);
        reply[i / 8] ^= (uint8_t)(1U << (i % 8));
    }
    cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply) - 1, 6), TERN_ERR_MALFORMED);

    /* A server with another key refuses the message (mac1) and so never
     * seals a reply for it. */
    cr_assert_eq(
        tern_cookie_reply_write(impostor, COOKIE_TYPE, 2, m2, l2, &a, 5, reply, sizeof(reply)),
        TERN_ERR_DECRYPT);

    /* The good one opens once; a duplicate is refused. */
    n = tern_cookie_reply_write(s, COOKIE_TYPE, 2, m2, l2, &a, 5, reply, sizeof(reply));
    cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), 6), 0);
    cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), 7), TERN_ERR_STATE);

    /* A cookie that expired at the server (two rotations) gives a mac2 it
     * refuses. */
    cr_assert_eq(tern_cookie_client_add_macs(c, m1, l1, 10), 0);
    cr_assert_eq(tern_cookie_server_check(s, m1, l1, &a, true, 10), 0);
    cr_assert_eq(tern_cookie_server_check(s, m1, l1, &a, true, 2 * TERN_COOKIE_SECRET_MS + 10),
                 TERN_ERR_COOKIE);

    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
    tern_cookie_server_del(impostor);
}

Test(cookie, amplification_bound)
{
    tern_cookie_server *s;
    tern_cookie_client *c;
    tern_addr a = addr4(1, 4000);
    uint8_t msg[256], reply[128];

    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, NULL, NULL, 0, NULL), 0);
    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    size_t len = make_init(msg, sizeof(msg), 1);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 0), 0);

    tern_ssize n =
        tern_cookie_reply_write(s, COOKIE_TYPE, 1, msg, len, &a, 0, reply, sizeof(reply));
    cr_assert_eq((size_t)n, tern_cookie_reply_len_for(len));
    cr_assert_leq((size_t)n, len, "reply %zd > request %zu", n, len);
    cr_assert_eq(tern_cookie_reply_bytes(), 61U);
    /* The smallest initiation of any pattern: NN's 32-byte message 1. */
    cr_assert_leq(TERN_COOKIE_REPLY_BYTES, HDR + 32U + TERN_MACS_BYTES);

    /* A request shorter than the reply (valid mac1) is never answered. */
    for (size_t l = TERN_MACS_BYTES; l < TERN_COOKIE_REPLY_BYTES; l++) {
        uint8_t small[TERN_COOKIE_REPLY_BYTES];
        memset(small, 0x55, sizeof(small));
        cr_assert_eq(tern_cookie_client_add_macs(c, small, l, 0), 0);
        cr_assert_eq(tern_cookie_server_check(s, small, l, &a, true, 0), TERN_ERR_COOKIE);
        cr_assert_eq(
            tern_cookie_reply_write(s, COOKIE_TYPE, 1, small, l, &a, 0, reply, sizeof(reply)),
            TERN_ERR_MSGSIZE);
        cr_assert_eq(tern_cookie_reply_len_for(l), 0U);
    }
    cr_assert_eq(tern_cookie_reply_write(s, COOKIE_TYPE, 1, msg, len, &a, 0, reply, 60),
                 TERN_ERR_NOBUFS);

    /* A flood: bytes out never exceed bytes in. */
    uint64_t in = 0, out = 0;
    for (int i = 0; i < 1000; i++) {
        tern_addr src = addr4((uint8_t)i, (uint16_t)(1000 + i));
        len = make_init(msg, sizeof(msg), (uint32_t)i);
        cr_assert_eq(tern_cookie_client_add_macs(c, msg, len, 0), 0);
        in += len;
        if (tern_cookie_server_check(s, msg, len, &src, true, (tern_ms)i) == TERN_ERR_COOKIE) {
            n = tern_cookie_reply_write(s, COOKIE_TYPE, (uint32_t)i, msg, len, &src, (tern_ms)i,
                                        reply, sizeof(reply));
            cr_assert_gt(n, 0);
            out += (uint64_t)n;
        }
    }
    cr_assert_leq(out, in);
    cr_log_info("flood: %llu bytes in, %llu out (factor %.3f)", (unsigned long long)in,
                (unsigned long long)out, (double)out / (double)in);

    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
}

/* ---- rate limiting ---- */

static tern_ratelimit *new_rl(uint32_t rate, uint32_t burst, uint32_t capacity)
{
    tern_ratelimit_config cfg;
    tern_ratelimit *rl;
    tern_ratelimit_config_default(&cfg);
    cfg.per_source_rate = rate;
    cfg.per_source_burst = burst;
    cfg.capacity = capacity;
    cfg.random = seeded_random;
    cfg.random_user_data = &rng_state;
    cr_assert_eq(tern_ratelimit_new(&rl, &cfg, NULL), 0);
    return rl;
}

Test(cookie, ratelimit_burst_then_limited_then_refill)
{
    tern_ratelimit *rl = new_rl(10, 5, 64);
    tern_addr a = addr4(1, 1), b = addr4(1, 2);

    for (int i = 0; i < 5; i++)
        cr_assert_eq(tern_ratelimit_allow(rl, &a, 1000), 0);
    cr_assert_eq(tern_ratelimit_allow(rl, &a, 1000), TERN_ERR_RATE);
    /* Another source (another port) has its own bucket. */
    cr_assert_eq(tern_ratelimit_allow(rl, &b, 1000), 0);
    /* 10/s: one token per 100 ms. */
    cr_assert_eq(tern_ratelimit_allow(rl, &a, 1099), TERN_ERR_RATE);
    cr_assert_eq(tern_ratelimit_allow(rl, &a, 1100), 0);
    cr_assert_eq(tern_ratelimit_allow(rl, &a, 1100), TERN_ERR_RATE);
    /* Time going backwards adds nothing. */
    cr_assert_eq(tern_ratelimit_allow(rl, &a, 500), TERN_ERR_RATE);
    /* A long pause refills to the burst, not beyond. */
    for (int i = 0; i < 5; i++)
        cr_assert_eq(tern_ratelimit_allow(rl, &a, 1000000), 0);
    cr_assert_eq(tern_ratelimit_allow(rl, &a, 1000000), TERN_ERR_RATE);

    tern_ratelimit_stats st;
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_eq(st.allowed, 12);
    cr_assert_eq(st.limited, 5);
    cr_assert_eq(st.tracked, 2);
    cr_assert_eq(st.evictions, 0);
    tern_ratelimit_del(rl);
}

Test(cookie, ratelimit_table_bounded_under_100k_sources)
{
    tern_ratelimit *rl = new_rl(20, 5, 1000);
    tern_ratelimit_stats st;
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_eq(st.capacity, 1024U);

    for (uint32_t i = 0; i < 100000; i++) {
        tern_addr src = {.len = 18};
        memcpy(src.bytes, &i, sizeof(i));
        cr_assert_eq(tern_ratelimit_allow(rl, &src, i / 10), 0);
    }
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_leq(st.tracked, st.capacity);
    cr_assert_geq(st.evictions, 100000U - 1024U);
    cr_assert_eq(st.tracked + st.evictions, 100000U);
    cr_assert_eq(st.allowed, 100000U);
    cr_log_info("100k sources: %u tracked, %llu evictions", st.tracked,
                (unsigned long long)st.evictions);

    /* The newest source is still tracked and limited after its burst. */
    tern_addr last = {.len = 18};
    uint32_t v = 99999;
    memcpy(last.bytes, &v, sizeof(v));
    for (int i = 0; i < 4; i++)
        cr_assert_eq(tern_ratelimit_allow(rl, &last, 9999), 0);
    cr_assert_eq(tern_ratelimit_allow(rl, &last, 9999), TERN_ERR_RATE);
    tern_ratelimit_del(rl);
}

Test(cookie, ratelimit_load_and_halfopen)
{
    tern_ratelimit_config cfg;
    tern_ratelimit *rl;
    tern_ratelimit_config_default(&cfg);
    cfg.load_rate = 100;
    cfg.load_burst = 10;
    cfg.halfopen_max = 3;
    cr_assert_eq(tern_ratelimit_new(&rl, &cfg, NULL), 0);

    for (int i = 0; i < 10; i++)
        cr_assert_not(tern_ratelimit_under_load(rl, 0));
    cr_assert(tern_ratelimit_under_load(rl, 0));
    cr_assert(tern_ratelimit_under_load(rl, 9));
    cr_assert_not(tern_ratelimit_under_load(rl, 10));

    for (int i = 0; i < 3; i++)
        cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), 0);
    cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), TERN_ERR_RATE);
    tern_ratelimit_halfopen_release(rl);
    cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), 0);

    tern_ratelimit_stats st;
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_eq(st.load_checks, 13);
    cr_assert_eq(st.under_load, 2);
    cr_assert_eq(st.halfopen, 3);
    cr_assert_eq(st.halfopen_refused, 1);

    cfg.capacity = 0;
    tern_ratelimit *bad;
    cr_assert_eq(tern_ratelimit_new(&bad, &cfg, NULL), TERN_ERR_INVAL);
    cr_assert_null(bad);
    tern_ratelimit_del(rl);
}

/* The server's policy end to end under a flood: an attacker sending
 * valid-mac1 initiations from spoofed addresses gets cookie replies and
 * costs no DH once the server is under load; a real client that answers
 * its cookie gets through. */
Test(cookie, flood_gets_cookies_client_gets_through)
{
    tern_ratelimit_config cfg;
    tern_ratelimit *rl;
    tern_cookie_server *s;
    tern_cookie_client *attacker, *client;
    uint8_t msg[256], reply[TERN_COOKIE_REPLY_BYTES];
    unsigned dh = 0, cookies = 0;

    tern_ratelimit_config_default(&cfg);
    cfg.load_rate = 50;
    cfg.load_burst = 10;
    cfg.random = seeded_random;
    cfg.random_user_data = &rng_state;
    cr_assert_eq(tern_ratelimit_new(&rl, &cfg, NULL), 0);
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &rng_state, 0, NULL), 0);
    cr_assert_eq(tern_cookie_client_new(&attacker, &server_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_client_new(&client, &server_kp.pub, NULL), 0);
    size_t len = make_init(msg, sizeof(msg), 1);

    /* 10,000 initiations in one second from spoofed sources. */
    for (uint32_t i = 0; i < 10000; i++) {
        tern_addr src = addr4((uint8_t)i, (uint16_t)(i >> 8));
        tern_ms now = i / 10;
        cr_assert_eq(tern_cookie_client_add_macs(attacker, msg, len, now), 0);
        bool load = tern_ratelimit_under_load(rl, now);
        int rc = tern_cookie_server_check(s, msg, len, &src, load, now);
        if (rc == TERN_ERR_COOKIE) {
            cookies++;
            cr_assert_gt(tern_cookie_reply_write(s, COOKIE_TYPE, 1, msg, len, &src, now, reply,
                                                 sizeof(reply)),
                         0);
        } else if (rc == 0 && tern_ratelimit_allow(rl, &src, now) == 0) {
            dh++;
        }
    }
    /* DH only within the load budget: the burst plus 50/s. */
    cr_assert_leq(dh, 10U + 50U + 1U, "dh %u", dh);
    cr_assert_geq(cookies, 10000U - 61U);

    /* The client during the flood: refused once, then in with its cookie. */
    tern_addr ca = addr4(200, 5555);
    tern_ms now = 1000;
    while (!tern_ratelimit_under_load(rl, now))
        ;
    cr_assert_eq(tern_cookie_client_add_macs(client, msg, len, now), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &ca, true, now), TERN_ERR_COOKIE);
    cr_assert_eq(
        tern_cookie_reply_write(s, COOKIE_TYPE, 1, msg, len, &ca, now, reply, sizeof(reply)),
        (tern_ssize)sizeof(reply));
    cr_assert_eq(tern_cookie_client_consume(client, reply, sizeof(reply), now + 40), 0);
    cr_assert_eq(tern_cookie_client_add_macs(client, msg, len, now + 40), 0);
    cr_assert_eq(tern_cookie_server_check(s, msg, len, &ca, true, now + 40), 0);
    cr_assert_eq(tern_ratelimit_allow(rl, &ca, now + 40), 0);

    tern_cookie_client_del(attacker);
    tern_cookie_client_del(client);
    tern_cookie_server_del(s);
    tern_ratelimit_del(rl);
}
