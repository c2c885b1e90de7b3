/* mac1, mac2 and cookie replies (the layout is in tern/crypto_dos.h). The
 * server keeps no per-client state: a cookie is recomputed from the source
 * address and the secret whenever one is checked (one, the last, is cached
 * so that the check and the reply to the same INIT share it).
 *
 * Per INIT the server computes mac1 once (tern_cookie_msg carries the
 * verdict to the mac2 check and the reply), mac2 only when one is offered,
 * under the previous secret only when the current one fails, and takes the
 * reply's nonce from a counter: no system call per reply. */
#include <sodium.h>
#include <string.h>

#include "common/mem.h"
#include "crypto/cookie_internal.h"

#define MAC TERN_MAC_BYTES
#define KEY TERN_COOKIE_KEY_BYTES
#define REPLY_ID_OFF 1U
#define REPLY_NONCE_OFF 5U
#define REPLY_SEALED_OFF (REPLY_NONCE_OFF + TERN_COOKIE_NONCE_BYTES)
/* A reply nonce is prefix (16 random bytes) || counter (8, LE): the split
 * of XChaCha20's nonce into HChaCha20's input and ChaCha20's nonce. */
#define PREFIX crypto_core_hchacha20_INPUTBYTES
#define CTR_BYTES (TERN_COOKIE_NONCE_BYTES - PREFIX)

_Static_assert(REPLY_SEALED_OFF + TERN_COOKIE_BYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES ==
                   TERN_COOKIE_REPLY_BYTES,
               "cookie reply layout");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == TERN_COOKIE_NONCE_BYTES,
               "cookie reply nonce");
_Static_assert(CTR_BYTES == 8, "a 64-bit counter ends the nonce");

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
    /* Reply nonces: a random prefix, drawn with each secret, then a counter
     * that never goes back; see next_nonce(). */
    uint8_t nonce_prefix[PREFIX];
    uint8_t reply_subkey[KEY]; /* HChaCha20(reply_key, nonce_prefix) */
    uint64_t nonce_ctr;
    /* The last cookie derived under the current secret, and for whom;
     * dropped with that secret. */
    tern_addr cached_src; /* bytes past len are zero */
    uint8_t cached_cookie[TERN_COOKIE_BYTES];
    bool has_cached;
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

/* A new secret, and with it a new nonce prefix; the cached cookie was made
 * under the old secret and is dropped. */
static void new_secret(tern_cookie_server *s)
{
    s->random(s->secret, KEY, s->random_user_data);
    s->random(s->nonce_prefix, PREFIX, s->random_user_data);
    /* XChaCha20's first step depends on the prefix alone: done once here,
     * not per reply (see seal_reply()). */
    crypto_core_hchacha20(s->reply_subkey, s->nonce_prefix, s->reply_key, NULL);
    sodium_memzero(s->cached_cookie, sizeof(s->cached_cookie));
    s->has_cached = false;
}

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
    new_secret(s);
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
    new_secret(s);
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

/* src with the bytes past its len zeroed, so two copies of one address
 * compare equal as whole structs. src->len is at most TERN_ADDR_MAX. */
static void addr_copy(tern_addr *dst, const tern_addr *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->len = src->len;
    memcpy(dst->bytes, src->bytes, src->len);
}

/* The cookie for src (normalised, see addr_copy()) under the current
 * secret: from the cache when it is src's, else derived and cached. The
 * check of an INIT and the reply to it derive it once between them. */
static void current_cookie(tern_cookie_server *s, const tern_addr *src,
                           uint8_t out[TERN_COOKIE_BYTES])
{
    /* Constant time, like the rest: the last source is someone else's. */
    if (!s->has_cached || sodium_memcmp(&s->cached_src, src, sizeof(*src)) != 0) {
        cookie_for(s->secret, src, s->cached_cookie);
        s->cached_src = *src;
        s->has_cached = true;
    }
    memcpy(out, s->cached_cookie, TERN_COOKIE_BYTES);
}

void tern_cookie_server_make_cookie(tern_cookie_server *s, const tern_addr *src, tern_ms now,
                                    uint8_t out[TERN_COOKIE_BYTES])
{
    tern_addr a;
    addr_copy(&a, src);
    rotate(s, now);
    current_cookie(s, &a, out);
}

/* mac2 of msg under cookie: true when it matches. */
static bool mac2_match(const uint8_t cookie[TERN_COOKIE_BYTES], const uint8_t *msg, size_t msg_len)
{
    uint8_t mac[MAC];
    size_t off = msg_len - MAC;

    tern_cookie_mac(cookie, TERN_COOKIE_BYTES, msg, off, mac);
    return sodium_memcmp(mac, msg + off, MAC) == 0;
}

int tern_cookie_server_mac1(tern_cookie_server *s, tern_cookie_msg *m, const uint8_t *msg,
                            size_t msg_len, const tern_addr *src)
{
    if (!m)
        return TERN_ERR_INVAL;
    memset(m, 0, sizeof(*m));
    m->mac1_rc = TERN_ERR_INVAL;
    if (!s || !addr_ok(src) || (!msg && msg_len))
        return TERN_ERR_INVAL;
    m->server = s;
    m->msg = msg;
    m->msg_len = msg_len;
    addr_copy(&m->src, src);
    m->mac1_rc = TERN_ERR_DECRYPT;
    if (msg_len < TERN_MACS_BYTES) {
        s->stats.mac1_bad++;
        return TERN_ERR_DECRYPT;
    }
    uint8_t mac[MAC];
    size_t off = msg_len - TERN_MACS_BYTES;
    tern_cookie_mac(s->mac1_key, KEY, msg, off, mac);
    if (sodium_memcmp(mac, msg + off, MAC) != 0) {
        s->stats.mac1_bad++;
        return TERN_ERR_DECRYPT;
    }
    m->mac1_rc = 0;
    return 0;
}

int tern_cookie_server_mac2(tern_cookie_server *s, const tern_cookie_msg *m, tern_ms now)
{
    if (!s || !m || m->server != s)
        return TERN_ERR_INVAL;
    if (m->mac1_rc < 0)
        return m->mac1_rc;
    rotate(s, now);
    const uint8_t *mac2 = m->msg + m->msg_len - MAC;
    bool ok = false;
    /* Sixteen zero bytes mean "no cookie" (crypto_dos.h): refused with no
     * hashing, which tells the sender only what it sent. A real mac2 of
     * zeros, refused too, is a 2^-128 chance. */
    if (!sodium_is_zero(mac2, MAC)) {
        uint8_t cookie[TERN_COOKIE_BYTES];
        current_cookie(s, &m->src, cookie);
        ok = mac2_match(cookie, m->msg, m->msg_len);
        /* The previous secret only when the current one fails: the time
         * then says which secret a good cookie was made under, which its
         * holder knows from when it got it. A refusal takes the same time
         * whatever the mac2. */
        if (!ok && s->has_prev) {
            cookie_for(s->prev_secret, &m->src, cookie);
            ok = mac2_match(cookie, m->msg, m->msg_len);
        }
        sodium_memzero(cookie, sizeof(cookie));
    }
    if (ok) {
        s->stats.mac2_ok++;
        return 0;
    }
    s->stats.mac2_bad++;
    return TERN_ERR_COOKIE;
}

/* The next reply nonce: prefix || counter. A counter that only goes up
 * never repeats a nonce under one prefix, or under any prefix of this
 * server (it is not reset when the prefix is redrawn); 2^64 replies at
 * 10^8 per second would take 5,800 years. The random prefix, 128 bits,
 * keeps two servers with the same static key (hence the same reply key,
 * say before and after a restart) apart: XChaCha20's 192-bit nonce leaves
 * room for both, where a 96-bit one would not. */
static void next_nonce(tern_cookie_server *s, uint8_t out[TERN_COOKIE_NONCE_BYTES])
{
    uint64_t n = s->nonce_ctr++;
    memcpy(out, s->nonce_prefix, PREFIX);
    for (unsigned i = 0; i < CTR_BYTES; i++)
        out[PREFIX + i] = (uint8_t)(n >> (8 * i));
}

/* XChaCha20-Poly1305 (what the client opens) of the cookie under the
 * reply key, nonce prefix || counter: by its definition, ChaCha20-Poly1305
 * under the subkey HChaCha20(key, prefix) with the nonce 0 (4 bytes) ||
 * counter. The subkey is kept per prefix. */
static void seal_reply(const tern_cookie_server *s, const uint8_t nonce[TERN_COOKIE_NONCE_BYTES],
                       const uint8_t cookie[TERN_COOKIE_BYTES], const uint8_t ad[MAC],
                       uint8_t *sealed)
{
    uint8_t n12[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    _Static_assert(sizeof(n12) == 4 + CTR_BYTES, "ChaCha20 nonce: 4 zero bytes, counter");
    memcpy(n12 + 4, nonce + PREFIX, CTR_BYTES);
    crypto_aead_chacha20poly1305_ietf_encrypt(sealed, NULL, cookie, TERN_COOKIE_BYTES, ad, MAC,
                                              NULL, n12, s->reply_subkey);
}

tern_ssize tern_cookie_server_reply(tern_cookie_server *s, const tern_cookie_msg *m, uint8_t type,
                                    uint32_t receiver_id, tern_ms now, uint8_t *out, size_t out_cap)
{
    uint8_t cookie[TERN_COOKIE_BYTES];

    if (!s || !m || !out || m->server != s || m->mac1_rc == TERN_ERR_INVAL)
        return TERN_ERR_INVAL;
    if (out_cap < TERN_COOKIE_REPLY_BYTES)
        return TERN_ERR_NOBUFS;
    if (tern_cookie_reply_len_for(m->msg_len) == 0) {
        s->stats.replies_refused++;
        return TERN_ERR_MSGSIZE;
    }
    if (m->mac1_rc < 0)
        return m->mac1_rc;
    rotate(s, now);
    out[0] = type;
    for (unsigned i = 0; i < 4; i++)
        out[REPLY_ID_OFF + i] = (uint8_t)(receiver_id >> (8 * i));
    next_nonce(s, out + REPLY_NONCE_OFF);
    current_cookie(s, &m->src, cookie);
    seal_reply(s, out + REPLY_NONCE_OFF, cookie, m->msg + m->msg_len - TERN_MACS_BYTES,
               out + REPLY_SEALED_OFF);
    sodium_memzero(cookie, sizeof(cookie));
    s->stats.replies++;
    return (tern_ssize)TERN_COOKIE_REPLY_BYTES;
}

int tern_cookie_server_check(tern_cookie_server *s, const uint8_t *msg, size_t msg_len,
                             const tern_addr *src, bool need_mac2, tern_ms now)
{
    tern_cookie_msg m;
    int rc = tern_cookie_server_mac1(s, &m, msg, msg_len, src);
    if (rc < 0 || !need_mac2)
        return rc;
    return tern_cookie_server_mac2(s, &m, now);
}

tern_ssize tern_cookie_reply_write(tern_cookie_server *s, uint8_t type, uint32_t receiver_id,
                                   const uint8_t *msg, size_t msg_len, const tern_addr *src,
                                   tern_ms now, uint8_t *out, size_t out_cap)
{
    if (!s || !addr_ok(src) || !out || (!msg && msg_len))
        return TERN_ERR_INVAL;
    if (out_cap < TERN_COOKIE_REPLY_BYTES)
        return TERN_ERR_NOBUFS;
    if (tern_cookie_reply_len_for(msg_len) == 0) {
        s->stats.replies_refused++;
        return TERN_ERR_MSGSIZE;
    }
    tern_cookie_msg m;
    int rc = tern_cookie_server_mac1(s, &m, msg, msg_len, src);
    if (rc < 0)
        return rc;
    return tern_cookie_server_reply(s, &m, type, receiver_id, now, out, out_cap);
}
