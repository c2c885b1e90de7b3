/* mac1/mac2 and cookie replies: tern_cookie_server_check() and
 * tern_cookie_client_consume() on arbitrary bytes, arbitrary source
 * addresses and arbitrary times, between genuine exchanges.
 *
 * A server and a client for one fixed server key, the server's randomness
 * seeded. Each record of the input is an operation:
 *
 *   0  server_check() on arbitrary bytes
 *   1  the client MACs a message (body from the input); server_check() it
 *   2  server_check() a mutated copy of a message the client MACed
 *   3  the server answers a client message with a cookie reply; the client
 *      consumes it (or a mutated copy of it)
 *   4  client_consume() on arbitrary bytes
 *   5  advance time
 *
 * mac1 is recomputed here from docs (crypto_dos.h) with libsodium directly.
 * Invariants: server_check() accepts only a message whose mac1 is valid,
 * and, when mac2 is not needed and the address is well-formed, accepts
 * every such message; with mac2 needed it accepts only a message the client
 * MACed while holding a cookie; client_consume() accepts only a reply the
 * server wrote for the last message the client MACed, at most once per
 * message, and accepts that reply unmodified (only the nonce and the sealed cookie are compared:
 * the type and receiver id are the caller's to check); nothing leaks.
 *
 * A twin server, seeded alike, gets every call through the once-only path
 * the transport uses (crypto/cookie_internal.h: mac1, mac2, reply from one
 * verdict): it must answer as the public calls do, write byte-identical
 * replies and end with the same stats. */
#include <sodium.h>

#include "fuzz_common.h"

#include "crypto/cookie_internal.h"
#include "tern/crypto.h"

#define MSG_CAP 600
#define MAX_SENT 16
#define MAX_REPLIES 16

typedef struct sent_msg {
    uint8_t b[MSG_CAP];
    size_t len;
    int with_cookie;
} sent_msg;

typedef struct reply_rec {
    uint8_t b[TERN_COOKIE_REPLY_BYTES];
    uint8_t mac1[TERN_MAC_BYTES];
} reply_rec;

static sent_msg sent[MAX_SENT];
static size_t n_sent;
static reply_rec replies[MAX_REPLIES];
static size_t n_replies;
static uint8_t mac1_key[32];
static uint8_t last_mac1[TERN_MAC_BYTES];
static int have_last;
static int client_has_cookie;
static tern_cookie_server *twin; /* the once-only path, same seed */

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

static int ref_mac1_ok(const uint8_t *msg, size_t len)
{
    if (len < TERN_MACS_BYTES)
        return 0;
    uint8_t m[TERN_MAC_BYTES];
    crypto_generichash(m, sizeof(m), msg, len - TERN_MACS_BYTES, mac1_key, sizeof(mac1_key));
    return sodium_memcmp(m, msg + len - TERN_MACS_BYTES, sizeof(m)) == 0;
}

static void read_addr(fuzz_in *in, tern_addr *a)
{
    memset(a, 0, sizeof(*a));
    uint8_t l = fuzz_u8(in);
    /* Mostly one of two well-formed addresses; sometimes anything. */
    if ((l & 0xc0) != 0xc0) {
        a->len = 6;
        uint8_t pick = l & 1;
        const uint8_t b[6] = {192, 0, 2, (uint8_t)(1 + pick), 0x0f, 0xa0};
        memcpy(a->bytes, b, 6);
        return;
    }
    a->len = (uint8_t)(l % (TERN_ADDR_MAX + 2)); /* TERN_ADDR_MAX + 1: malformed */
    size_t got;
    const uint8_t *p = fuzz_bytes(in, a->len > TERN_ADDR_MAX ? TERN_ADDR_MAX : a->len, &got);
    memcpy(a->bytes, p, got);
}

static void check(tern_cookie_server *s, const uint8_t *msg, size_t len, const tern_addr *a,
                  int need_mac2, tern_ms now)
{
    int r = tern_cookie_server_check(s, msg, len, a, need_mac2 != 0, now);
    int mac1 = ref_mac1_ok(msg, len);
    tern_cookie_msg m;
    int r2 = tern_cookie_server_mac1(twin, &m, msg, len, a);
    if (r2 == 0 && need_mac2)
        r2 = tern_cookie_server_mac2(twin, &m, now);
    FUZZ_CHECK(r2 == r, "once-only path said %d where the public call said %d", r2, r);
    FUZZ_CHECK(r == 0 || r == TERN_ERR_DECRYPT || r == TERN_ERR_COOKIE || r == TERN_ERR_INVAL,
               "server_check: unexpected %d", r);
    FUZZ_CHECK(r != 0 || mac1, "server_check accepted %zu bytes without a valid mac1", len);
    if (!need_mac2 && a->len <= TERN_ADDR_MAX)
        FUZZ_CHECK((r == 0) == mac1, "server_check said %d for a message whose mac1 is %s", r,
                   mac1 ? "valid" : "invalid");
    if (a->len <= TERN_ADDR_MAX && !mac1)
        FUZZ_CHECK(r == TERN_ERR_DECRYPT, "bad mac1 gave %d", r);
    if (r == 0 && need_mac2) {
        int found = 0;
        for (size_t i = 0; i < n_sent && !found; i++)
            found = sent[i].with_cookie && sent[i].len == len && memcmp(sent[i].b, msg, len) == 0;
        FUZZ_CHECK(found, "mac2 accepted on %zu bytes the client never MACed with a cookie", len);
    }
}

static void consume(tern_cookie_client *c, const uint8_t *reply, size_t len, tern_ms now,
                    int must_succeed)
{
    int r = tern_cookie_client_consume(c, reply, len, now);
    if (r == 0) {
        int found = 0;
        for (size_t i = 0; i < n_replies && !found; i++)
            found = len == TERN_COOKIE_REPLY_BYTES &&
                    memcmp(replies[i].b + 5, reply + 5, len - 5) == 0 && have_last &&
                    memcmp(replies[i].mac1, last_mac1, TERN_MAC_BYTES) == 0;
        FUZZ_CHECK(found, "client consumed %zu bytes that are no reply to its last message", len);
        client_has_cookie = 1;
        have_last = 0; /* one reply per message: a second one is refused (STATE) */
    } else {
        FUZZ_CHECK(r == TERN_ERR_MALFORMED || r == TERN_ERR_STATE || r == TERN_ERR_DECRYPT,
                   "consume: unexpected %d", r);
        FUZZ_CHECK(!must_succeed, "client refused the genuine reply to its last message: %d", r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    static tern_keypair server_kp;
    static int init;
    if (!init) {
        if (tern_crypto_init() != 0)
            abort();
        tern_key k;
        for (int j = 0; j < 32; j++)
            k.b[j] = (uint8_t)(7 * j + 3);
        tern_keypair_from_secret(&server_kp, &k);
        uint8_t pre[8 + 32];
        memcpy(pre, "mac1----", 8);
        memcpy(pre + 8, server_kp.pub.b, 32);
        crypto_generichash(mac1_key, sizeof(mac1_key), pre, sizeof(pre), NULL, 0);
        init = 1;
    }
    n_sent = n_replies = 0;
    have_last = 0;
    client_has_cookie = 0;

    fuzz_alloc alloc_c = {0}, alloc_s = {0};
    tern_mem mc = fuzz_mem(&alloc_c), ms = fuzz_mem(&alloc_s);
    /* The server's secrets come from a hash of the input, not a constant:
     * libFuzzer sees the harness compare messages (memcmp) and carries the
     * bytes of a genuine cookie-MACed message from one input into another,
     * where a server with the same secret would rightly accept it although
     * this input's client never MACed it. */
    uint64_t rng = 42;
    {
        uint8_t h[8];
        crypto_generichash(h, sizeof(h), data, size, NULL, 0);
        for (int i = 0; i < 8; i++)
            rng = (rng << 8) ^ h[i];
    }
    tern_ms now = 5000;
    tern_cookie_client *c = NULL;
    tern_cookie_server *s = NULL;
    fuzz_alloc alloc_t = {0};
    tern_mem mt = fuzz_mem(&alloc_t);
    uint64_t rng_twin = rng;
    FUZZ_CHECK(tern_cookie_client_new(&c, &server_kp.pub, &mc) == 0, "client_new");
    FUZZ_CHECK(tern_cookie_server_new(&s, &server_kp.pub, seeded_random, &rng, now, &ms) == 0,
               "server_new");
    FUZZ_CHECK(tern_cookie_server_new(&twin, &server_kp.pub, seeded_random, &rng_twin, now, &mt) ==
                   0,
               "server_new (twin)");

    static uint8_t buf[MSG_CAP + 1];
    int ops = 0;
    while (!fuzz_empty(&in) && ops++ < 128) {
        uint8_t op = fuzz_u8(&in);
        int need_mac2 = (op >> 4) & 1;
        switch (op % 6) {
        case 0: { /* arbitrary bytes to the server */
            tern_addr a;
            read_addr(&in, &a);
            size_t want = fuzz_u16(&in) % MSG_CAP, got;
            const uint8_t *p = fuzz_bytes(&in, want, &got);
            memcpy(buf, p, got);
            check(s, buf, got, &a, need_mac2, now);
            break;
        }
        case 1: { /* a genuine message */
            sent_msg *m = &sent[n_sent < MAX_SENT ? n_sent++ : MAX_SENT - 1];
            tern_addr a;
            read_addr(&in, &a);
            size_t want = TERN_MACS_BYTES + fuzz_u16(&in) % (MSG_CAP - TERN_MACS_BYTES), got;
            const uint8_t *p = fuzz_bytes(&in, want - TERN_MACS_BYTES, &got);
            memset(m->b, 0x33, want);
            memcpy(m->b, p, got);
            m->len = want;
            FUZZ_CHECK(tern_cookie_client_add_macs(c, m->b, m->len, now) == 0, "add_macs");
            FUZZ_CHECK(ref_mac1_ok(m->b, m->len), "the client wrote a wrong mac1");
            m->with_cookie = client_has_cookie;
            memcpy(last_mac1, m->b + m->len - TERN_MACS_BYTES, TERN_MAC_BYTES);
            have_last = 1;
            check(s, m->b, m->len, &a, need_mac2, now);
            break;
        }
        case 2: { /* a mutated copy of one */
            if (!n_sent)
                break;
            const sent_msg *m = &sent[fuzz_u8(&in) % n_sent];
            tern_addr a;
            read_addr(&in, &a);
            memcpy(buf, m->b, m->len);
            size_t len = m->len;
            uint8_t kind = fuzz_u8(&in);
            size_t pos = fuzz_u16(&in) % len;
            uint8_t val = fuzz_u8(&in);
            if (kind & 1)
                buf[pos] ^= (uint8_t)(1U << (val & 7));
            else if (kind & 2)
                len = pos;
            else
                buf[len++] = val;
            check(s, buf, len, &a, need_mac2, now);
            break;
        }
        case 3: { /* a cookie reply to a client message, consumed */
            if (!n_sent)
                break;
            size_t idx = fuzz_u8(&in) % n_sent;
            const sent_msg *m = &sent[idx];
            tern_addr a;
            read_addr(&in, &a);
            uint8_t rep[TERN_COOKIE_REPLY_BYTES + 8];
            tern_ssize r =
                tern_cookie_reply_write(s, 5, 0x1234, m->b, m->len, &a, now, rep, sizeof(rep));
            uint8_t rep2[TERN_COOKIE_REPLY_BYTES + 8];
            tern_cookie_msg tm;
            tern_ssize r2 = tern_cookie_server_mac1(twin, &tm, m->b, m->len, &a);
            if (r2 == 0 || m->len < TERN_COOKIE_REPLY_BYTES)
                r2 = tern_cookie_server_reply(twin, &tm, 5, 0x1234, now, rep2, sizeof(rep2));
            FUZZ_CHECK(r2 == r, "once-only reply gave %d, the public call %d", (int)r2, (int)r);
            FUZZ_CHECK(r <= 0 || memcmp(rep, rep2, (size_t)r) == 0,
                       "once-only reply differs from the public call's");
            if (r < 0) {
                FUZZ_CHECK(r == TERN_ERR_MSGSIZE || r == TERN_ERR_INVAL,
                           "reply_write to a genuine message: %d", (int)r);
                FUZZ_CHECK(r != TERN_ERR_MSGSIZE || m->len < TERN_COOKIE_REPLY_BYTES,
                           "reply refused for %zu bytes", m->len);
                break;
            }
            FUZZ_CHECK(r == TERN_COOKIE_REPLY_BYTES && m->len >= TERN_COOKIE_REPLY_BYTES,
                       "reply of %d bytes to %zu", (int)r, m->len);
            uint32_t rid;
            FUZZ_CHECK(tern_cookie_reply_peek(rep, (size_t)r, &rid) == 0 && rid == 0x1234, "peek");
            reply_rec *rr = &replies[n_replies < MAX_REPLIES ? n_replies++ : MAX_REPLIES - 1];
            memcpy(rr->b, rep, TERN_COOKIE_REPLY_BYTES);
            memcpy(rr->mac1, m->b + m->len - TERN_MACS_BYTES, TERN_MAC_BYTES);
            int is_last = have_last && memcmp(rr->mac1, last_mac1, TERN_MAC_BYTES) == 0;
            uint8_t mut = fuzz_u8(&in);
            if (mut & 1) {
                rep[fuzz_u8(&in) % TERN_COOKIE_REPLY_BYTES] ^= (uint8_t)(1U << (mut >> 5));
                is_last = 0; /* unless the flip was in the unauthenticated header */
            }
            consume(c, rep, (size_t)r, now, is_last);
            break;
        }
        case 4: { /* arbitrary bytes to the client */
            size_t want = fuzz_u8(&in) % 80, got;
            const uint8_t *p = fuzz_bytes(&in, want, &got);
            memcpy(buf, p, got);
            consume(c, buf, got, now, 0);
            break;
        }
        default: {
            static const tern_ms scale[4] = {1, 64, 4096, 65536};
            now += (tern_ms)fuzz_u16(&in) * scale[fuzz_u8(&in) & 3];
            break;
        }
        }
    }

    tern_cookie_stats st_s, st_t;
    tern_cookie_server_get_stats(s, &st_s);
    tern_cookie_server_get_stats(twin, &st_t);
    FUZZ_CHECK(memcmp(&st_s, &st_t, sizeof(st_s)) == 0, "the twin's stats differ");
    tern_cookie_client_del(c);
    tern_cookie_server_del(s);
    tern_cookie_server_del(twin);
    twin = NULL;
    FUZZ_CHECK(alloc_c.live_allocs == 0 && alloc_s.live_allocs == 0 && alloc_t.live_allocs == 0,
               "leak: %zu + %zu + %zu blocks", alloc_c.live_allocs, alloc_s.live_allocs,
               alloc_t.live_allocs);
    return 0;
}
