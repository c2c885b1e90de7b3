/* The packet path's AEAD: OpenSSL's EVP with the key kept loaded, or
 * libsodium. See crypto/aead_ctx.h. */
#include <limits.h>
#include <sodium.h>
#include <string.h>

#include "crypto/aead_ctx.h"

#ifdef TERN_HAVE_OPENSSL
#include <openssl/evp.h>
#endif

#define TAG TERN_CRYPTO_TAG_BYTES

bool tern_aead_impl_available(tern_aead_impl impl)
{
    switch (impl) {
    case TERN_AEAD_IMPL_AUTO:
    case TERN_AEAD_IMPL_LIBSODIUM:
        return true;
    case TERN_AEAD_IMPL_OPENSSL:
#ifdef TERN_HAVE_OPENSSL
        return true;
#else
        return false;
#endif
    default:
        return false;
    }
}

int tern_aead_ctx_init(tern_aead_ctx *c, tern_aead_impl impl)
{
    memset(c, 0, sizeof(*c));
    if (!tern_aead_impl_available(impl))
        return impl == TERN_AEAD_IMPL_OPENSSL ? TERN_ERR_UNSUPPORTED : TERN_ERR_INVAL;
    if (impl == TERN_AEAD_IMPL_AUTO)
        impl = tern_aead_impl_available(TERN_AEAD_IMPL_OPENSSL) ? TERN_AEAD_IMPL_OPENSSL
                                                                : TERN_AEAD_IMPL_LIBSODIUM;
    c->impl = impl;
    return 0;
}

void tern_aead_ctx_clear(tern_aead_ctx *c)
{
#ifdef TERN_HAVE_OPENSSL
    /* EVP_CIPHER_CTX_free() cleanses the key schedule. */
    EVP_CIPHER_CTX_free(c->evp);
#endif
    tern_aead_impl impl = c->impl;
    sodium_memzero(c, sizeof(*c));
    c->impl = impl;
}

#ifdef TERN_HAVE_OPENSSL

/* Readies c->evp for k in the given direction; false: use libsodium. */
static bool evp_ready(tern_aead_ctx *c, tern_noise_cipher cipher, const tern_key *k, int enc)
{
    if (c->impl != TERN_AEAD_IMPL_OPENSSL)
        return false;
    if (!c->evp) {
        c->evp = EVP_CIPHER_CTX_new();
        if (!c->evp)
            return false;
    }
    if (c->has_key && c->loaded_cipher == cipher && c->loaded_enc == enc &&
        sodium_memcmp(c->loaded.b, k->b, sizeof(k->b)) == 0)
        return true;
    const EVP_CIPHER *evp_cipher =
        cipher == TERN_NOISE_AESGCM ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
    c->has_key = false;
    /* Both AEADs default to the 12-byte nonce Noise uses. */
    if (EVP_CipherInit_ex(c->evp, evp_cipher, NULL, k->b, NULL, enc) != 1)
        return false;
    c->loaded = *k;
    c->loaded_cipher = cipher;
    c->loaded_enc = enc;
    c->has_key = true;
    return true;
}

static int evp_seal(tern_aead_ctx *c, uint64_t n, const uint8_t *ad, size_t ad_len,
                    const uint8_t *pt, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *x = c->evp;
    uint8_t nonce[TERN_NOISE_NONCE_BYTES];
    int outl = 0, finl = 0;
    tern_noise_nonce(c->loaded_cipher, n, nonce);
    bool ok = EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, -1) == 1 &&
              (ad_len == 0 || EVP_CipherUpdate(x, NULL, &outl, ad, (int)ad_len) == 1) &&
              (len == 0 || EVP_CipherUpdate(x, out, &outl, pt, (int)len) == 1) &&
              EVP_CipherFinal_ex(x, out + (len ? (size_t)outl : 0), &finl) == 1 &&
              EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, (int)TAG, out + len) == 1;
    /* A context left half-way must be keyed afresh. */
    if (!ok)
        c->has_key = false;
    return ok ? 0 : TERN_ERR_INVAL;
}

static int evp_open(tern_aead_ctx *c, uint64_t n, const uint8_t *ad, size_t ad_len,
                    const uint8_t *ct, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *x = c->evp;
    uint8_t nonce[TERN_NOISE_NONCE_BYTES];
    uint8_t tag[TAG];
    int outl = 0, finl = 0;
    /* Copied first: out may be ct (in place). */
    memcpy(tag, ct + len, TAG);
    tern_noise_nonce(c->loaded_cipher, n, nonce);
    bool ok = EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, -1) == 1 &&
              EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, (int)TAG, tag) == 1 &&
              (ad_len == 0 || EVP_CipherUpdate(x, NULL, &outl, ad, (int)ad_len) == 1) &&
              (len == 0 || EVP_CipherUpdate(x, out, &outl, ct, (int)len) == 1);
    if (!ok) {
        c->has_key = false;
        if (len)
            sodium_memzero(out, len);
        return TERN_ERR_DECRYPT;
    }
    if (EVP_CipherFinal_ex(x, out + (len ? (size_t)outl : 0), &finl) != 1) {
        /* The tag did not verify: what was decrypted must not be seen. */
        if (len)
            sodium_memzero(out, len);
        return TERN_ERR_DECRYPT;
    }
    return 0;
}

#endif /* TERN_HAVE_OPENSSL */

int tern_aead_ctx_seal(tern_aead_ctx *c, tern_noise_cipher cipher, const tern_key *k, uint64_t n,
                       const uint8_t *ad, size_t ad_len, const uint8_t *pt, size_t len,
                       uint8_t *out)
{
#ifdef TERN_HAVE_OPENSSL
    if (ad_len <= INT_MAX && len <= INT_MAX && evp_ready(c, cipher, k, 1) &&
        evp_seal(c, n, ad, ad_len, pt, len, out) == 0)
        return 0;
#else
    (void)c;
#endif
    return tern_noise_aead_seal(cipher, k, n, ad, ad_len, pt, len, out);
}

int tern_aead_ctx_open(tern_aead_ctx *c, tern_noise_cipher cipher, const tern_key *k, uint64_t n,
                       const uint8_t *ad, size_t ad_len, const uint8_t *ct, size_t ct_len,
                       uint8_t *out)
{
    if (ct_len < TAG)
        return TERN_ERR_MALFORMED;
#ifdef TERN_HAVE_OPENSSL
    if (ad_len <= INT_MAX && ct_len - TAG <= INT_MAX && evp_ready(c, cipher, k, 0))
        return evp_open(c, n, ad, ad_len, ct, ct_len - TAG, out);
#else
    (void)c;
#endif
    return tern_noise_aead_open(cipher, k, n, ad, ad_len, ct, ct_len, out);
}
