/* The server's once-only cookie path (crypto/cookie_internal.h:
 * tern_cookie_server_mac1/_mac2/_reply, as transport/handshake.c calls
 * them): it accepts and refuses exactly what the public calls do, with the
 * same stats; its replies open at the client; and no two replies share a
 * nonce, across secret rotations too, even when the randomness repeats
 * itself. All in virtual time with seeded randomness. */
#include <criterion/criterion.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/cookie_internal.h"
#include "tern/crypto.h"

#define COOKIE_TYPE 3
#define MSG_LEN 192U /* the transport's INIT */
#define NONCE_OFF 5U
#define SEALED_OFF (NONCE_OFF + TERN_COOKIE_NONCE_BYTES)

static const tern_ms P = TERN_COOKIE_SECRET_MS;

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

/* The worst randomness: the same bytes every time. */
static void stuck_random(uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    memset(buf, 0xa5, len);
}

static tern_keypair server_kp;

static void setup(void)
{
    uint64_t seed = 7;
    tern_key k;
    cr_assert_eq(tern_crypto_init(), 0);
    seeded_random(k.b, sizeof(k.b), &seed);
    tern_keypair_from_secret(&server_kp, &k);
}

TestSuite(cookie_once, .init = setup);

static tern_addr addr4(uint8_t last, uint16_t port)
{
    tern_addr a = {.len = 6, .bytes = {198, 51, 100, last, (uint8_t)(port >> 8), (uint8_t)port}};
    return a;
}

/* A message of MSG_LEN bytes (body from seed) MACed by c at now. */
static void make_msg(tern_cookie_client *c, uint8_t msg[MSG_LEN], uint64_t seed, tern_ms now)
{
    seeded_random(msg, MSG_LEN, &seed);
    cr_assert_eq(tern_cookie_client_add_macs(c, msg, MSG_LEN, now), 0);
}

/* The once-only path on one message: mac1, then mac2 if need_mac2. */
static int once_check(tern_cookie_server *s, const uint8_t *msg, size_t len, const tern_addr *src,
                      bool need_mac2, tern_ms now)
{
    tern_cookie_msg m;
    int rc = tern_cookie_server_mac1(s, &m, msg, len, src);
    if (rc < 0 || !need_mac2)
        return rc;
    return tern_cookie_server_mac2(s, &m, now);
}

static tern_ssize once_reply(tern_cookie_server *s, const uint8_t *msg, size_t len,
                             const tern_addr *src, tern_ms now, uint8_t *out, size_t cap)
{
    tern_cookie_msg m;
    /* Its error, if any, is the reply's to give. */
    int rc = tern_cookie_server_mac1(s, &m, msg, len, src);
    cr_assert_leq(rc, 0);
    return tern_cookie_server_reply(s, &m, COOKIE_TYPE, 9, now, out, cap);
}

/* Two servers with the same seed: one through the public calls, one
 * through the once-only path. */
typedef struct pair {
    tern_cookie_server *pub, *once;
    uint64_t seed_pub, seed_once;
} pair;

static void pair_new(pair *p, tern_ms now)
{
    p->seed_pub = p->seed_once = 1234;
    cr_assert_eq(
        tern_cookie_server_new(&p->pub, &server_kp.pub, seeded_random, &p->seed_pub, now, NULL), 0);
    cr_assert_eq(
        tern_cookie_server_new(&p->once, &server_kp.pub, seeded_random, &p->seed_once, now, NULL),
        0);
}

static void pair_del(pair *p)
{
    tern_cookie_server_del(p->pub);
    tern_cookie_server_del(p->once);
}

/* Both paths give want, for mac2 needed and not (mac1 alone when not). */
static void expect(pair *p, const uint8_t *msg, size_t len, const tern_addr *src, tern_ms now,
                   int want_mac1, int want_mac2, const char *what)
{
    cr_assert_eq(tern_cookie_server_check(p->pub, msg, len, src, false, now), want_mac1,
                 "%s: public, mac1", what);
    cr_assert_eq(once_check(p->once, msg, len, src, false, now), want_mac1, "%s: once, mac1", what);
    cr_assert_eq(tern_cookie_server_check(p->pub, msg, len, src, true, now), want_mac2,
                 "%s: public, mac2", what);
    cr_assert_eq(once_check(p->once, msg, len, src, true, now), want_mac2, "%s: once, mac2", what);
}

static void expect_same_stats(const pair *p)
{
    tern_cookie_stats a, b;
    tern_cookie_server_get_stats(p->pub, &a);
    tern_cookie_server_get_stats(p->once, &b);
    cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0,
                 "stats differ: mac1_bad %llu/%llu mac2_ok %llu/%llu mac2_bad %llu/%llu replies "
                 "%llu/%llu refused %llu/%llu rotations %llu/%llu",
                 (unsigned long long)a.mac1_bad, (unsigned long long)b.mac1_bad,
                 (unsigned long long)a.mac2_ok, (unsigned long long)b.mac2_ok,
                 (unsigned long long)a.mac2_bad, (unsigned long long)b.mac2_bad,
                 (unsigned long long)a.replies, (unsigned long long)b.replies,
                 (unsigned long long)a.replies_refused, (unsigned long long)b.replies_refused,
                 (unsigned long long)a.rotations, (unsigned long long)b.rotations);
}

/* A client gets a cookie for src from server s at now (through the
 * once-only path), so its next messages carry a mac2. */
static void give_cookie(tern_cookie_client *c, tern_cookie_server *s, const tern_addr *src,
                        tern_ms now)
{
    uint8_t msg[MSG_LEN], reply[TERN_COOKIE_REPLY_BYTES];
    make_msg(c, msg, now + 99, now);
    cr_assert_eq(once_reply(s, msg, sizeof(msg), src, now, reply, sizeof(reply)),
                 (tern_ssize)TERN_COOKIE_REPLY_BYTES);
    cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), now), 0);
}

Test(cookie_once, rejects_what_the_public_calls_reject)
{
    pair p;
    tern_cookie_client *c;
    tern_addr a = addr4(1, 4000);
    uint8_t msg[MSG_LEN], junk[MSG_LEN];

    pair_new(&p, 0);
    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);

    /* No cookie yet: mac2 is zeros, and junk in its place fails as well. */
    make_msg(c, msg, 1, 0);
    expect(&p, msg, sizeof(msg), &a, 0, 0, TERN_ERR_COOKIE, "zero mac2");
    memcpy(junk, msg, sizeof(msg));
    seeded_random(junk + MSG_LEN - TERN_MAC_BYTES, TERN_MAC_BYTES, &(uint64_t){5});
    expect(&p, junk, sizeof(junk), &a, 0, 0, TERN_ERR_COOKIE, "junk mac2");

    /* Cookies from both servers (the same secrets): a good mac2. */
    give_cookie(c, p.pub, &a, 10);
    give_cookie(c, p.once, &a, 10);
    make_msg(c, msg, 2, 20);
    expect(&p, msg, sizeof(msg), &a, 20, 0, 0, "good mac2");

    /* Every bit of mac1's coverage and of mac1 itself: mac1 fails. Every
     * bit of mac2: mac1 passes, mac2 fails. */
    for (size_t i = 0; i < MSG_LEN * 8; i += 3) {
        msg[i / 8] ^= (uint8_t)(1U << (i % 8));
        if (i < (MSG_LEN - TERN_MAC_BYTES) * 8)
            expect(&p, msg, sizeof(msg), &a, 20, TERN_ERR_DECRYPT, TERN_ERR_DECRYPT, "mac1 bit");
        else
            expect(&p, msg, sizeof(msg), &a, 20, 0, TERN_ERR_COOKIE, "mac2 bit");
        msg[i / 8] ^= (uint8_t)(1U << (i % 8));
    }

    /* The wrong source: another port, address, length; a bad length. */
    tern_addr port = addr4(1, 4001), ip = addr4(2, 4000), longer = a, bad = {.len = 19};
    longer.len = 7;
    expect(&p, msg, sizeof(msg), &port, 20, 0, TERN_ERR_COOKIE, "other port");
    expect(&p, msg, sizeof(msg), &ip, 20, 0, TERN_ERR_COOKIE, "other address");
    expect(&p, msg, sizeof(msg), &longer, 20, 0, TERN_ERR_COOKIE, "other length");
    expect(&p, msg, sizeof(msg), &bad, 20, TERN_ERR_INVAL, TERN_ERR_INVAL, "bad address");
    /* The right source again, after the cache held another one. */
    expect(&p, msg, sizeof(msg), &a, 20, 0, 0, "good mac2 again");

    /* Short and truncated messages, NULL arguments. */
    expect(&p, msg, sizeof(msg) - 1, &a, 20, TERN_ERR_DECRYPT, TERN_ERR_DECRYPT, "truncated");
    expect(&p, msg, TERN_MACS_BYTES - 1, &a, 20, TERN_ERR_DECRYPT, TERN_ERR_DECRYPT, "short");
    expect(&p, NULL, 0, &a, 20, TERN_ERR_DECRYPT, TERN_ERR_DECRYPT, "empty");
    expect(&p, NULL, 5, &a, 20, TERN_ERR_INVAL, TERN_ERR_INVAL, "NULL with a length");
    expect(&p, msg, sizeof(msg), NULL, 20, TERN_ERR_INVAL, TERN_ERR_INVAL, "NULL source");

    /* The cookie over its life: good under the previous secret, expired
     * after the second rotation and after a long silence. */
    expect(&p, msg, sizeof(msg), &a, P, 0, 0, "previous secret");
    expect(&p, msg, sizeof(msg), &a, 2 * P - 1, 0, 0, "previous secret, last ms");
    expect(&p, msg, sizeof(msg), &a, 2 * P, 0, TERN_ERR_COOKIE, "expired");
    give_cookie(c, p.pub, &a, 2 * P + 1);
    give_cookie(c, p.once, &a, 2 * P + 1);
    make_msg(c, msg, 3, 2 * P + 2);
    expect(&p, msg, sizeof(msg), &a, 2 * P + 2, 0, 0, "fresh cookie");
    expect(&p, msg, sizeof(msg), &a, 5 * P, 0, TERN_ERR_COOKIE, "expired by silence");
    expect_same_stats(&p);

    /* A verdict is bound to its server; a NULL one is refused. */
    tern_cookie_msg m;
    cr_assert_eq(tern_cookie_server_mac1(p.once, &m, msg, sizeof(msg), &a), 0);
    cr_assert_eq(tern_cookie_server_mac2(p.pub, &m, 5 * P), TERN_ERR_INVAL);
    uint8_t reply[TERN_COOKIE_REPLY_BYTES];
    cr_assert_eq(tern_cookie_server_reply(p.pub, &m, COOKIE_TYPE, 1, 5 * P, reply, sizeof(reply)),
                 TERN_ERR_INVAL);
    cr_assert_eq(tern_cookie_server_mac2(p.once, NULL, 5 * P), TERN_ERR_INVAL);
    cr_assert_eq(tern_cookie_server_mac1(p.once, NULL, msg, sizeof(msg), &a), TERN_ERR_INVAL);

    tern_cookie_client_del(c);
    pair_del(&p);
}

Test(cookie_once, replies_refused_as_the_public_calls_refuse)
{
    pair p;
    tern_cookie_client *c;
    tern_addr a = addr4(1, 4000), bad = {.len = TERN_ADDR_MAX + 1};
    uint8_t msg[MSG_LEN], r1[TERN_COOKIE_REPLY_BYTES + 4], r2[TERN_COOKIE_REPLY_BYTES + 4];

    pair_new(&p, 0);
    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    make_msg(c, msg, 1, 0);

    struct {
        size_t len, cap;
        const tern_addr *src;
        bool flip;
        tern_ssize want;
    } cases[] = {
        {MSG_LEN, sizeof(r1), &a, false, (tern_ssize)TERN_COOKIE_REPLY_BYTES},
        {MSG_LEN, sizeof(r1), &a, true, TERN_ERR_DECRYPT},
        {MSG_LEN, TERN_COOKIE_REPLY_BYTES - 1, &a, false, TERN_ERR_NOBUFS},
        {MSG_LEN, sizeof(r1), &bad, false, TERN_ERR_INVAL},
        {TERN_COOKIE_REPLY_BYTES - 1, sizeof(r1), &a, false, TERN_ERR_MSGSIZE},
        {TERN_COOKIE_REPLY_BYTES - 1, sizeof(r1), &a, true, TERN_ERR_MSGSIZE},
        {TERN_COOKIE_REPLY_BYTES, sizeof(r1), &a, true, TERN_ERR_DECRYPT},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t m[MSG_LEN];
        memcpy(m, msg, sizeof(m));
        if (cases[i].len != MSG_LEN) {
            /* A message of that length with a good mac1 (or not, below). */
            cr_assert_eq(tern_cookie_client_add_macs(c, m, cases[i].len, 0), 0);
        }
        if (cases[i].flip)
            m[0] ^= 1;
        tern_ssize x = tern_cookie_reply_write(p.pub, COOKIE_TYPE, 9, m, cases[i].len, cases[i].src,
                                               0, r1, cases[i].cap);
        tern_ssize y = once_reply(p.once, m, cases[i].len, cases[i].src, 0, r2, cases[i].cap);
        cr_assert_eq(x, cases[i].want, "case %zu: public %zd", i, x);
        cr_assert_eq(y, cases[i].want, "case %zu: once %zd", i, y);
    }
    /* The once-only path counts each bad mac1 once (at its mac1 step; the
     * 60-byte one too, before the reply refuses its size). */
    tern_cookie_stats st;
    tern_cookie_server_get_stats(p.once, &st);
    cr_assert_eq(st.replies, 1);
    cr_assert_eq(st.replies_refused, 2);
    cr_assert_eq(st.mac1_bad, 3);

    tern_cookie_client_del(c);
    pair_del(&p);
}

/* The nonce (bytes 5..29) of every reply in a, in order. */
static int nonce_cmp(const void *x, const void *y)
{
    return memcmp(x, y, TERN_COOKIE_NONCE_BYTES);
}

/* n replies from s to messages from c, now advancing by step; true when
 * no two share a nonce. Each reply must open at the client. */
static bool nonces_unique(tern_cookie_server *s, tern_cookie_client *c, unsigned n, tern_ms step)
{
    uint8_t(*nonces)[TERN_COOKIE_NONCE_BYTES] = calloc(n, TERN_COOKIE_NONCE_BYTES);
    cr_assert_not_null(nonces);
    tern_ms now = 0;
    for (unsigned i = 0; i < n; i++, now += step) {
        uint8_t msg[MSG_LEN], reply[TERN_COOKIE_REPLY_BYTES];
        tern_addr src = addr4((uint8_t)i, (uint16_t)(i >> 8));
        make_msg(c, msg, i, now);
        cr_assert_eq(once_reply(s, msg, sizeof(msg), &src, now, reply, sizeof(reply)),
                     (tern_ssize)TERN_COOKIE_REPLY_BYTES);
        cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), now), 0, "reply %u", i);
        memcpy(nonces[i], reply + NONCE_OFF, TERN_COOKIE_NONCE_BYTES);
    }
    qsort(nonces, n, TERN_COOKIE_NONCE_BYTES, nonce_cmp);
    bool unique = true;
    for (unsigned i = 1; i < n; i++)
        unique = unique && memcmp(nonces[i - 1], nonces[i], TERN_COOKIE_NONCE_BYTES) != 0;
    free(nonces);
    return unique;
}

Test(cookie_once, no_two_replies_share_a_nonce)
{
    tern_cookie_server *s;
    tern_cookie_client *c;
    uint64_t seed = 99;
    tern_cookie_stats st;

    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);

    /* 4000 replies over 13 rotations, each secret kept as the previous. */
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &seed, 0, NULL), 0);
    cr_assert(nonces_unique(s, c, 4000, P / 300));
    tern_cookie_server_get_stats(s, &st);
    cr_assert_geq(st.rotations, 13);
    tern_cookie_server_del(s);

    /* A silence between each two replies: both secrets replaced each time. */
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &seed, 0, NULL), 0);
    cr_assert(nonces_unique(s, c, 300, 3 * P));
    tern_cookie_server_get_stats(s, &st);
    cr_assert_eq(st.rotations, 299);
    tern_cookie_server_del(s);

    /* Randomness that repeats itself: every prefix the same, so only the
     * counter keeps the nonces apart, across rotations too. */
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, stuck_random, NULL, 0, NULL), 0);
    cr_assert(nonces_unique(s, c, 1000, P / 50));
    tern_cookie_server_get_stats(s, &st);
    cr_assert_geq(st.rotations, 19);
    tern_cookie_server_del(s);

    /* Two servers with the same key start from different random prefixes. */
    tern_cookie_server *s2;
    uint64_t seed2 = 100;
    uint8_t msg[MSG_LEN], r1[TERN_COOKIE_REPLY_BYTES], r2[TERN_COOKIE_REPLY_BYTES];
    tern_addr a = addr4(1, 1);
    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &seed, 0, NULL), 0);
    cr_assert_eq(tern_cookie_server_new(&s2, &server_kp.pub, seeded_random, &seed2, 0, NULL), 0);
    make_msg(c, msg, 1, 0);
    cr_assert_eq(once_reply(s, msg, sizeof(msg), &a, 0, r1, sizeof(r1)), (tern_ssize)sizeof(r1));
    cr_assert_eq(once_reply(s2, msg, sizeof(msg), &a, 0, r2, sizeof(r2)), (tern_ssize)sizeof(r2));
    cr_assert_neq(memcmp(r1 + NONCE_OFF, r2 + NONCE_OFF, TERN_COOKIE_NONCE_BYTES), 0);
    tern_cookie_server_del(s);
    tern_cookie_server_del(s2);

    tern_cookie_client_del(c);
}

Test(cookie_once, reply_is_xchacha20poly1305_of_the_cookie)
{
    tern_cookie_server *s;
    tern_cookie_client *c;
    uint64_t seed = 5;
    uint8_t key[TERN_COOKIE_KEY_BYTES];
    tern_addr a = addr4(3, 3000);

    cr_assert_eq(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &seed, 0, NULL), 0);
    cr_assert_eq(tern_cookie_client_new(&c, &server_kp.pub, NULL), 0);
    tern_cookie_derive_key("cookie--", &server_kp.pub, key);

    /* Before and after a rotation (a new prefix, a new secret). */
    const tern_ms times[] = {0, 1, P, P + 1, 3 * P};
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        tern_ms now = times[i];
        uint8_t msg[MSG_LEN], reply[TERN_COOKIE_REPLY_BYTES], want[TERN_COOKIE_BYTES],
            got[TERN_COOKIE_BYTES];
        make_msg(c, msg, i, now);
        cr_assert_eq(once_reply(s, msg, sizeof(msg), &a, now, reply, sizeof(reply)),
                     (tern_ssize)sizeof(reply));
        /* libsodium's XChaCha20-Poly1305 opens it, ad = the message's mac1,
         * to the cookie the server gives a now. */
        cr_assert_eq(crypto_aead_xchacha20poly1305_ietf_decrypt(
                         got, NULL, NULL, reply + SEALED_OFF, sizeof(reply) - SEALED_OFF,
                         msg + MSG_LEN - TERN_MACS_BYTES, TERN_MAC_BYTES, reply + NONCE_OFF, key),
                     0, "time %zu", i);
        tern_cookie_server_make_cookie(s, &a, now, want);
        cr_assert_eq(memcmp(got, want, sizeof(want)), 0);
        /* The client takes it, and its next message passes mac2. */
        cr_assert_eq(tern_cookie_client_consume(c, reply, sizeof(reply), now), 0);
        make_msg(c, msg, i + 100, now);
        cr_assert_eq(once_check(s, msg, sizeof(msg), &a, true, now), 0);
    }
    sodium_memzero(key, sizeof(key));
    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
}
