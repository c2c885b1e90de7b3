/* Noise's symmetric layer over libsodium: BLAKE2b, HMAC and HKDF, the two
 * AEAD ciphers with Noise's nonce layout, CipherState and SymmetricState
 * (the specification's sections 4, 5.1 and 5.2), and the public transport
 * cipher built on CipherState. Every function wipes its secrets before it
 * returns. */
#include <sodium.h>
#include <string.h>

#include "common/mem.h"
#include "crypto/noise_internal.h"

#define TAG TERN_CRYPTO_TAG_BYTES

/* Stands in for a NULL buffer of length 0, which libsodium need not accept. */
static const uint8_t empty[1];

static const uint8_t *or_empty(const uint8_t *p)
{
    return p ? p : empty;
}

/* ---- HASH, HMAC, HKDF ---- */

static void hash_update(crypto_generichash_state *st, const uint8_t *p, size_t len)
{
    if (len)
        crypto_generichash_update(st, p, len);
}

void tern_noise_hash(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len,
                     uint8_t out[TERN_NOISE_HASHLEN])
{
    crypto_generichash_state st;

    crypto_generichash_init(&st, NULL, 0, TERN_NOISE_HASHLEN);
    hash_update(&st, a, a_len);
    hash_update(&st, b, b_len);
    crypto_generichash_final(&st, out, TERN_NOISE_HASHLEN);
    sodium_memzero(&st, sizeof(st));
}

/* HMAC(key, d1 || d2): H((K0 ^ opad) || H((K0 ^ ipad) || d1 || d2)). */
static void hmac2(const uint8_t *key, size_t key_len, const uint8_t *d1, size_t l1,
                  const uint8_t *d2, size_t l2, uint8_t out[TERN_NOISE_HASHLEN])
{
    uint8_t k0[TERN_NOISE_BLOCKLEN] = {0};
    uint8_t pad[TERN_NOISE_BLOCKLEN];
    uint8_t inner[TERN_NOISE_HASHLEN];
    crypto_generichash_state st;

    if (key_len > TERN_NOISE_BLOCKLEN)
        tern_noise_hash(key, key_len, NULL, 0, k0);
    else if (key_len)
        memcpy(k0, key, key_len);

    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] = (uint8_t)(k0[i] ^ 0x36);
    crypto_generichash_init(&st, NULL, 0, TERN_NOISE_HASHLEN);
    hash_update(&st, pad, sizeof(pad));
    hash_update(&st, d1, l1);
    hash_update(&st, d2, l2);
    crypto_generichash_final(&st, inner, sizeof(inner));

    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] = (uint8_t)(k0[i] ^ 0x5c);
    crypto_generichash_init(&st, NULL, 0, TERN_NOISE_HASHLEN);
    hash_update(&st, pad, sizeof(pad));
    hash_update(&st, inner, sizeof(inner));
    crypto_generichash_final(&st, out, TERN_NOISE_HASHLEN);

    sodium_memzero(k0, sizeof(k0));
    sodium_memzero(pad, sizeof(pad));
    sodium_memzero(inner, sizeof(inner));
    sodium_memzero(&st, sizeof(st));
}

void tern_noise_hmac(const uint8_t *key, size_t key_len, const uint8_t *data, size_t data_len,
                     uint8_t out[TERN_NOISE_HASHLEN])
{
    hmac2(key, key_len, data, data_len, NULL, 0, out);
}

void tern_noise_hkdf(const tern_hash *ck, const uint8_t *ikm, size_t ikm_len, tern_hash *o1,
                     tern_hash *o2, tern_hash *o3)
{
    static const uint8_t one = 1, two = 2, three = 3;
    uint8_t temp_key[TERN_NOISE_HASHLEN];
    tern_hash t1, t2, t3;

    hmac2(ck->b, sizeof(ck->b), ikm, ikm_len, NULL, 0, temp_key);
    hmac2(temp_key, sizeof(temp_key), &one, 1, NULL, 0, t1.b);
    hmac2(temp_key, sizeof(temp_key), t1.b, sizeof(t1.b), &two, 1, t2.b);
    if (o3)
        hmac2(temp_key, sizeof(temp_key), t2.b, sizeof(t2.b), &three, 1, t3.b);

    /* Copied only now, so that an output may be ck itself. */
    *o1 = t1;
    *o2 = t2;
    if (o3)
        *o3 = t3;

    sodium_memzero(temp_key, sizeof(temp_key));
    sodium_memzero(&t1, sizeof(t1));
    sodium_memzero(&t2, sizeof(t2));
    sodium_memzero(&t3, sizeof(t3));
}

/* ---- AEAD ---- */

void tern_noise_nonce(tern_noise_cipher c, uint64_t n, uint8_t out[TERN_NOISE_NONCE_BYTES])
{
    memset(out, 0, 4);
    for (int i = 0; i < 8; i++) {
        uint8_t byte = (uint8_t)(n >> (8 * i));
        if (c == TERN_NOISE_AESGCM)
            out[4 + 7 - i] = byte;
        else
            out[4 + i] = byte;
    }
}

int tern_noise_aead_seal(tern_noise_cipher c, const tern_key *k, uint64_t n, const uint8_t *ad,
                         size_t ad_len, const uint8_t *pt, size_t len, uint8_t *out)
{
    uint8_t nonce[TERN_NOISE_NONCE_BYTES];
    unsigned long long out_len = 0;
    int rc;

    tern_noise_nonce(c, n, nonce);
    if (c == TERN_NOISE_AESGCM) {
        if (!crypto_aead_aes256gcm_is_available())
            return TERN_ERR_UNSUPPORTED;
        rc = crypto_aead_aes256gcm_encrypt(out, &out_len, or_empty(pt), len, or_empty(ad), ad_len,
                                           NULL, nonce, k->b);
    } else {
        rc = crypto_aead_chacha20poly1305_ietf_encrypt(out, &out_len, or_empty(pt), len,
                                                       or_empty(ad), ad_len, NULL, nonce, k->b);
    }
    return rc == 0 ? 0 : TERN_ERR_INVAL;
}

int tern_noise_aead_open(tern_noise_cipher c, const tern_key *k, uint64_t n, const uint8_t *ad,
                         size_t ad_len, const uint8_t *ct, size_t ct_len, uint8_t *out)
{
    uint8_t nonce[TERN_NOISE_NONCE_BYTES];
    unsigned long long out_len = 0;
    int rc;

    if (ct_len < TAG)
        return TERN_ERR_MALFORMED;
    tern_noise_nonce(c, n, nonce);
    if (c == TERN_NOISE_AESGCM) {
        if (!crypto_aead_aes256gcm_is_available())
            return TERN_ERR_UNSUPPORTED;
        rc = crypto_aead_aes256gcm_decrypt(out, &out_len, NULL, ct, ct_len, or_empty(ad), ad_len,
                                           nonce, k->b);
    } else {
        rc = crypto_aead_chacha20poly1305_ietf_decrypt(out, &out_len, NULL, ct, ct_len,
                                                       or_empty(ad), ad_len, nonce, k->b);
    }
    if (rc != 0) {
        if (ct_len > TAG)
            sodium_memzero(out, ct_len - TAG);
        return TERN_ERR_DECRYPT;
    }
    return 0;
}

/* ---- CipherState ---- */

void tern_noise_cs_init(tern_noise_cs *cs, tern_noise_cipher c, const tern_key *k)
{
    sodium_memzero(cs, sizeof(*cs));
    cs->cipher = c;
    if (k) {
        cs->k = *k;
        cs->has_key = true;
    }
}

int tern_noise_cs_encrypt(tern_noise_cs *cs, const uint8_t *ad, size_t ad_len, const uint8_t *pt,
                          size_t len, uint8_t *out)
{
    if (!cs->has_key) {
        if (len)
            memmove(out, pt, len);
        return 0;
    }
    /* 2^64 - 1 is reserved (it is Rekey()'s nonce). */
    if (cs->n == UINT64_MAX)
        return TERN_ERR_RANGE;
    int rc = tern_noise_aead_seal(cs->cipher, &cs->k, cs->n, ad, ad_len, pt, len, out);
    if (rc == 0)
        cs->n++;
    return rc;
}

int tern_noise_cs_decrypt(tern_noise_cs *cs, const uint8_t *ad, size_t ad_len, const uint8_t *ct,
                          size_t ct_len, uint8_t *out)
{
    if (!cs->has_key) {
        if (ct_len)
            memmove(out, ct, ct_len);
        return 0;
    }
    if (cs->n == UINT64_MAX)
        return TERN_ERR_RANGE;
    int rc = tern_noise_aead_open(cs->cipher, &cs->k, cs->n, ad, ad_len, ct, ct_len, out);
    if (rc == 0)
        cs->n++;
    return rc;
}

/* ---- SymmetricState ---- */

void tern_noise_ss_init(tern_noise_ss *ss, const char *name, size_t name_len, tern_noise_cipher c)
{
    sodium_memzero(ss, sizeof(*ss));
    if (name_len <= TERN_NOISE_HASHLEN)
        memcpy(ss->h.b, name, name_len);
    else
        tern_noise_hash((const uint8_t *)name, name_len, NULL, 0, ss->h.b);
    ss->ck = ss->h;
    tern_noise_cs_init(&ss->cs, c, NULL);
}

/* The first 32 bytes of a 64-byte HKDF output become a cipher key. */
static void init_key_from_hash(tern_noise_ss *ss, const tern_hash *temp)
{
    tern_key k;

    memcpy(k.b, temp->b, sizeof(k.b));
    tern_noise_cs_init(&ss->cs, ss->cs.cipher, &k);
    sodium_memzero(&k, sizeof(k));
}

void tern_noise_ss_mix_key(tern_noise_ss *ss, const uint8_t *ikm, size_t ikm_len)
{
    tern_hash temp_k;

    tern_noise_hkdf(&ss->ck, ikm, ikm_len, &ss->ck, &temp_k, NULL);
    init_key_from_hash(ss, &temp_k);
    sodium_memzero(&temp_k, sizeof(temp_k));
}

void tern_noise_ss_mix_hash(tern_noise_ss *ss, const uint8_t *data, size_t len)
{
    tern_noise_hash(ss->h.b, sizeof(ss->h.b), data, len, ss->h.b);
}

void tern_noise_ss_mix_key_and_hash(tern_noise_ss *ss, const uint8_t *ikm, size_t ikm_len)
{
    tern_hash temp_h, temp_k;

    tern_noise_hkdf(&ss->ck, ikm, ikm_len, &ss->ck, &temp_h, &temp_k);
    tern_noise_ss_mix_hash(ss, temp_h.b, sizeof(temp_h.b));
    init_key_from_hash(ss, &temp_k);
    sodium_memzero(&temp_h, sizeof(temp_h));
    sodium_memzero(&temp_k, sizeof(temp_k));
}

int tern_noise_ss_encrypt_and_hash(tern_noise_ss *ss, const uint8_t *pt, size_t len, uint8_t *out)
{
    size_t out_len = len + (ss->cs.has_key ? TAG : 0);
    int rc = tern_noise_cs_encrypt(&ss->cs, ss->h.b, sizeof(ss->h.b), pt, len, out);
    if (rc < 0)
        return rc;
    tern_noise_ss_mix_hash(ss, out, out_len);
    return 0;
}

int tern_noise_ss_decrypt_and_hash(tern_noise_ss *ss, const uint8_t *ct, size_t ct_len,
                                   uint8_t *out)
{
    int rc = tern_noise_cs_decrypt(&ss->cs, ss->h.b, sizeof(ss->h.b), ct, ct_len, out);
    if (rc < 0)
        return rc;
    tern_noise_ss_mix_hash(ss, ct, ct_len);
    return 0;
}

void tern_noise_ss_split(const tern_noise_ss *ss, tern_noise_cs *c1, tern_noise_cs *c2)
{
    tern_hash t1, t2;

    tern_noise_hkdf(&ss->ck, NULL, 0, &t1, &t2, NULL);
    tern_noise_cs_init(c1, ss->cs.cipher, NULL);
    tern_noise_cs_init(c2, ss->cs.cipher, NULL);
    memcpy(c1->k.b, t1.b, sizeof(c1->k.b));
    memcpy(c2->k.b, t2.b, sizeof(c2->k.b));
    c1->has_key = c2->has_key = true;
    sodium_memzero(&t1, sizeof(t1));
    sodium_memzero(&t2, sizeof(t2));
}

/* ---- the public transport cipher ---- */

tern_ssize tern_cipher_encrypt(tern_cipher *c, const uint8_t *ad, size_t ad_len, const uint8_t *pt,
                               size_t pt_len, uint8_t *out, size_t out_cap, uint64_t *nonce)
{
    if (!c || !out || !nonce || (!ad && ad_len) || (!pt && pt_len))
        return TERN_ERR_INVAL;
    if (pt_len > TERN_NOISE_MSG_MAX - TAG)
        return TERN_ERR_MSGSIZE;
    if (out_cap < pt_len + TAG)
        return TERN_ERR_NOBUFS;
    if (!c->cs.has_key)
        return TERN_ERR_STATE;

    uint64_t n = c->cs.n;
    int rc = tern_noise_cs_encrypt(&c->cs, ad, ad_len, pt, pt_len, out);
    if (rc < 0)
        return rc;
    *nonce = n;
    return (tern_ssize)(pt_len + TAG);
}

tern_ssize tern_cipher_decrypt(tern_cipher *c, uint64_t nonce, const uint8_t *ad, size_t ad_len,
                               const uint8_t *ct, size_t ct_len, uint8_t *out, size_t out_cap)
{
    if (!c || !ct || (!ad && ad_len) || (!out && out_cap))
        return TERN_ERR_INVAL;
    if (ct_len > TERN_NOISE_MSG_MAX)
        return TERN_ERR_MSGSIZE;
    if (ct_len < TAG)
        return TERN_ERR_MALFORMED;
    if (out_cap < ct_len - TAG)
        return TERN_ERR_NOBUFS;
    if (!c->cs.has_key)
        return TERN_ERR_STATE;
    if (nonce == UINT64_MAX)
        return TERN_ERR_RANGE;
    if (ct_len > TAG && !out)
        return TERN_ERR_INVAL;

    /* A zero-length plaintext still needs somewhere to point. */
    uint8_t none[1];
    int rc = tern_noise_aead_open(c->cs.cipher, &c->cs.k, nonce, ad, ad_len, ct, ct_len,
                                  out ? out : none);
    if (rc < 0)
        return rc;
    return (tern_ssize)(ct_len - TAG);
}

void tern_cipher_del(tern_cipher *c)
{
    if (!c)
        return;
    tern_mem mem = c->mem;
    sodium_memzero(c, sizeof(*c));
    tern_mem_free(&mem, c);
}
