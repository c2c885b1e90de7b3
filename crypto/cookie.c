/* mac1, mac2 and cookie replies (the layout is in tern/crypto_dos.h). The
 * server keeps no per-client state: a cookie is recomputed from the source
 * address and the secret whenever one is checked. */
#include <sodium.h>
#include <string.h>

#include "common/mem.h"
#include "crypto/cookie_internal.h"

#define MAC TERN_MAC_BYTES
#define KEY TERN_COOKIE_KEY_BYTES
#define REPLY_ID_OFF 1U
#define REPLY_NONCE_OFF 5U
#define REPLY_SEALED_OFF (REPLY_NONCE_OFF + TERN_COOKIE_NONCE_BYTES)

_Static_assert(REPLY_SEALED_OFF + TERN_COOKIE_BYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES ==
                   TERN_COOKIE_REPLY_BYTES,
               "cookie reply layout");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == TERN_COOKIE_NONCE_BYTES,
               "cookie reply nonce");

struct tern_cookie_client {
    tern_mem mem;
    uint8_t mac1_key[KEY];
    uint8_t reply_key[KEY];
    uint8_t last_mac1[MAC];
    bool has_mac1;
    uint8_t cookie[TERN_COOKIE_BYTES];
    bool has_cookie;
    tern_ms cookie_at;
};

struct tern_cookie_server {
    tern_mem mem;
    uint8_t mac1_key[KEY];
    uint8_t reply_key[KEY];
    uint8_t secret[KEY];      /* current */
    uint8_t prev_secret[KEY]; /* the one before, valid until the next rotation */
    bool has_prev;
    tern_ms secret_at;
    tern_random_fn random;
    void *random_user_data;
    tern_cookie_stats stats;
};

size_t tern_cookie_reply_bytes(void)
{
    return TERN_COOKIE_REPLY_BYTES;
}

size_t tern_cookie_reply_len_for(size_t request_len)
{
    return request_len >= TERN_COOKIE_REPLY_BYTES ? TERN_COOKIE_REPLY_BYTES : 0;
}

static void default_random(uint8_t *buf, size_t len, void *user_data)
{
    (void)user_data;
    randombytes_buf(buf, len);
}

void tern_cookie_derive_key(const char label[8], const tern_public_key *pub, uint8_t out[KEY])
{
    crypto_generichash_state st;

    crypto_generichash_init(&st, NULL, 0, KEY);
    crypto_generichash_update(&st, (const uint8_t *)label, 8);
    crypto_generichash_update(&st, pub->b, sizeof(pub->b));
    crypto_generichash_final(&st, out, KEY);
    sodium_memzero(&st, sizeof(st));
}

void tern_cookie_mac(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                     uint8_t out[MAC])
{
    static const uint8_t empty[1];
    crypto_generichash(out, MAC, len ? data : empty, len, key, key_len);
}

static bool addr_ok(const tern_addr *a)
{
    return a && a->len <= TERN_ADDR_MAX;
}

/* ---- client ---- */

int tern_cookie_client_new(tern_cookie_client **out, const tern_public_key *server,
                           const tern_mem *mem)
{
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!server)
        return TERN_ERR_INVAL;
    if (sodium_init() < 0)
        return TERN_ERR_UNSUPPORTED;
    tern_mem m;
    tern_mem_init(&m, mem);
    tern_cookie_client *c = tern_mem_calloc(&m, 1, sizeof(*c));
    if (!c)
        return TERN_ERR_NOMEM;
    c->mem = m;
    tern_cookie_derive_key("mac1----", server, c->mac1_key);
    tern_cookie_derive_key("cookie--", server, c->reply_key);
    *out = c;
    return 0;
}

void tern_cookie_client_del(tern_cookie_client *c)
{
    if (!c)
        return;
    tern_mem m = c->mem;
    sodium_memzero(c, sizeof(*c));
    tern_mem_free(&m, c);
}

static bool cookie_fresh(const tern_cookie_client *c, tern_ms now)
{
    if (!c->has_cookie)
        return false;
    tern_ms age = now > c->cookie_at ? now - c->cookie_at : 0;
    return age < TERN_COOKIE_CLIENT_TTL_MS;
}

int tern_cookie_client_add_macs(tern_cookie_client *c, uint8_t *msg, size_t msg_len, tern_ms now)
{
    if (!c || !msg || msg_len < TERN_MACS_BYTES)
        return TERN_ERR_INVAL;
    size_t mac1_off = msg_len - TERN_MACS_BYTES;
    size_t mac2_off = msg_len - MAC;

    tern_cookie_mac(c->mac1_key, KEY, msg, mac1_off, msg + mac1_off);
    memcpy(c->last_mac1, msg + mac1_off, MAC);
    c->has_mac1 = true;

    if (cookie_fresh(c, now)) {
        tern_cookie_mac(c->cookie, sizeof(c->cookie), msg, mac2_off, msg + mac2_off);
    } else {
        /* Forget an expired cookie: it will never be valid again. */
        if (c->has_cookie) {
            sodium_memzero(c->cookie, sizeof(c->cookie));
            c->has_cookie = false;
        }
        memset(msg + mac2_off, 0, MAC);
    }
    return 0;
}

int tern_cookie_reply_peek(const uint8_t *reply, size_t len, uint32_t *receiver_id)
{
    if (!reply || !receiver_id)
        return TERN_ERR_INVAL;
    if (len != TERN_COOKIE_REPLY_BYTES)
        return TERN_ERR_MALFORMED;
    const uint8_t *p = reply + REPLY_ID_OFF;
    *receiver_id =
        (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return 0;
}

int tern_cookie_client_consume(tern_cookie_client *c, const uint8_t *reply, size_t len, tern_ms now)
{
    uint8_t cookie[TERN_COOKIE_BYTES];

    if (!c || !reply)
        return TERN_ERR_INVAL;
    if (len != TERN_COOKIE_REPLY_BYTES)
        return TERN_ERR_MALFORMED;
    if (!c->has_mac1)
        return TERN_ERR_STATE;
    /* ad = the mac1 we sent last: a reply to any other message fails. */
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            cookie, NULL, NULL, reply + REPLY_SEALED_OFF,
            TERN_COOKIE_BYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES, c->last_mac1, MAC,
            reply + REPLY_NONCE_OFF, c->reply_key) != 0) {
        sodium_memzero(cookie, sizeof(cookie));
        return TERN_ERR_DECRYPT;
    }
    memcpy(c->cookie, cookie, sizeof(cookie));
    sodium_memzero(cookie, sizeof(cookie));
    c->has_cookie = true;
    c->cookie_at = now;
    /* One reply per message sent: a duplicate is refused. */
    c->has_mac1 = false;
    return 0;
}

/* ---- server ---- */

int tern_cookie_server_new(tern_cookie_server **out, const tern_public_key *server,
                           tern_random_fn random, void *random_user_data, tern_ms now,
                           const tern_mem *mem)
{
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!server)
        return TERN_ERR_INVAL;
    if (sodium_init() < 0)
        return TERN_ERR_UNSUPPORTED;
    tern_mem m;
    tern_mem_init(&m, mem);
    tern_cookie_server *s = tern_mem_calloc(&m, 1, sizeof(*s));
    if (!s)
        return TERN_ERR_NOMEM;
    s->mem = m;
    s->random = random ? random : default_random;
    s->random_user_data = random ? random_user_data : NULL;
    tern_cookie_derive_key("mac1----", server, s->mac1_key);
    tern_cookie_derive_key("cookie--", server, s->reply_key);
    s->random(s->secret, sizeof(s->secret), s->random_user_data);
    s->secret_at = now;
    *out = s;
    return 0;
}

void tern_cookie_server_del(tern_cookie_server *s)
{
    if (!s)
        return;
    tern_mem m = s->mem;
    sodium_memzero(s, sizeof(*s));
    tern_mem_free(&m, s);
}

void tern_cookie_server_get_stats(const tern_cookie_server *s, tern_cookie_stats *out)
{
    if (!out)
        return;
    if (!s) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = s->stats;
}

/* Lazy rotation: after one period the current secret becomes the previous;
 * after two without a call, neither is worth keeping. */
static void rotate(tern_cookie_server *s, tern_ms now)
{
    if (now < s->secret_at || now - s->secret_at < TERN_COOKIE_SECRET_MS)
        return;
    if (now - s->secret_at < 2ULL * TERN_COOKIE_SECRET_MS) {
        memcpy(s->prev_secret, s->secret, KEY);
        s->has_prev = true;
    } else {
        sodium_memzero(s->prev_secret, KEY);
        s->has_prev = false;
    }
    s->random(s->secret, KEY, s->random_user_data);
    s->secret_at = now;
    s->stats.rotations++;
}

static void cookie_for(const uint8_t secret[KEY], const tern_addr *src,
                       uint8_t out[TERN_COOKIE_BYTES])
{
    crypto_generichash_state st;
    uint8_t len = src->len;

    crypto_generichash_init(&st, secret, KEY, TERN_COOKIE_BYTES);
    crypto_generichash_update(&st, &len, 1);
    if (len)
        crypto_generichash_update(&st, src->bytes, len);
    crypto_generichash_final(&st, out, TERN_COOKIE_BYTES);
    sodium_memzero(&st, sizeof(st));
}

void tern_cookie_server_make_cookie(tern_cookie_server *s, const tern_addr *src, tern_ms now,
                                    uint8_t out[TERN_COOKIE_BYTES])
{
    rotate(s, now);
    cookie_for(s->secret, src, out);
}

static bool mac1_ok(const tern_cookie_server *s, const uint8_t *msg, size_t msg_len)
{
    uint8_t mac[MAC];
    size_t off = msg_len - TERN_MACS_BYTES;

    tern_cookie_mac(s->mac1_key, KEY, msg, off, mac);
    return sodium_memcmp(mac, msg + off, MAC) == 0;
}

/* mac2 under secret: 1 when it matches. */
static int mac2_match(const uint8_t secret[KEY], const uint8_t *msg, size_t msg_len,
                      const tern_addr *src)
{
    uint8_t cookie[TERN_COOKIE_BYTES], mac[MAC];
    size_t off = msg_len - MAC;

    cookie_for(secret, src, cookie);
    tern_cookie_mac(cookie, sizeof(cookie), msg, off, mac);
    int ok = sodium_memcmp(mac, msg + off, MAC) == 0;
    sodium_memzero(cookie, sizeof(cookie));
    return ok;
}

int tern_cookie_server_check(tern_cookie_server *s, const uint8_t *msg, size_t msg_len,
                             const tern_addr *src, bool need_mac2, tern_ms now)
{
    if (!s || !addr_ok(src) || (!msg && msg_len))
        return TERN_ERR_INVAL;
    if (msg_len < TERN_MACS_BYTES || !mac1_ok(s, msg, msg_len)) {
        s->stats.mac1_bad++;
        return TERN_ERR_DECRYPT;
    }
    if (!need_mac2)
        return 0;
    rotate(s, now);
    /* Both secrets are always tried, so the time taken says nothing about
     * which one (if any) matched. */
    int cur = mac2_match(s->secret, msg, msg_len, src);
    int prev = mac2_match(s->prev_secret, msg, msg_len, src) & (int)s->has_prev;
    if (cur | prev) {
        s->stats.mac2_ok++;
        return 0;
    }
    s->stats.mac2_bad++;
    return TERN_ERR_COOKIE;
}

tern_ssize tern_cookie_reply_write(tern_cookie_server *s, uint8_t type, uint32_t receiver_id,
                                   const uint8_t *msg, size_t msg_len, const tern_addr *src,
                                   tern_ms now, uint8_t *out, size_t out_cap)
{
    uint8_t cookie[TERN_COOKIE_BYTES];

    if (!s || !addr_ok(src) || !out || (!msg && msg_len))
        return TERN_ERR_INVAL;
    if (out_cap < TERN_COOKIE_REPLY_BYTES)
        return TERN_ERR_NOBUFS;
    if (tern_cookie_reply_len_for(msg_len) == 0) {
        s->stats.replies_refused++;
        return TERN_ERR_MSGSIZE;
    }
    if (!mac1_ok(s, msg, msg_len)) {
        s->stats.mac1_bad++;
        return TERN_ERR_DECRYPT;
    }
    out[0] = type;
    for (unsigned i = 0; i < 4; i++)
        out[REPLY_ID_OFF + i] = (uint8_t)(receiver_id >> (8 * i));
    s->random(out + REPLY_NONCE_OFF, TERN_COOKIE_NONCE_BYTES, s->random_user_data);
    tern_cookie_server_make_cookie(s, src, now, cookie);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + REPLY_SEALED_OFF, NULL, cookie, sizeof(cookie),
                                               msg + msg_len - TERN_MACS_BYTES, MAC, NULL,
                                               out + REPLY_NONCE_OFF, s->reply_key);
    sodium_memzero(cookie, sizeof(cookie));
    s->stats.replies++;
    return (tern_ssize)TERN_COOKIE_REPLY_BYTES;
}
