/* A keyed AEAD context for the packet path: the key is loaded when it
 * changes, not for every packet. Built with OpenSSL (TERN_HAVE_OPENSSL), it
 * can use OpenSSL's EVP AEADs, which on x86-64 run ChaCha20-Poly1305 and
 * AES-256-GCM about 1.7 times as fast as libsodium 1.0.18 (docs/BENCHMARKS.md);
 * otherwise, or when OpenSSL cannot allocate, libsodium computes the same
 * bytes. The nonce is Noise's (tern_noise_nonce()). Not installed. */
#ifndef TERN_CRYPTO_AEAD_CTX_H
#define TERN_CRYPTO_AEAD_CTX_H

#include <stdbool.h>

#include "crypto/noise_internal.h"
#include "tern/crypto.h"

typedef struct tern_aead_ctx {
    tern_aead_impl impl;  /* resolved: LIBSODIUM or OPENSSL */
    void *evp;            /* EVP_CIPHER_CTX *, created on first use */
    tern_key loaded;      /* the key evp holds */
    tern_noise_cipher loaded_cipher;
    int loaded_enc;       /* 1: sealing, 0: opening */
    bool has_key;
} tern_aead_ctx;

/* impl AUTO picks OpenSSL when built in. UNSUPPORTED: OPENSSL asked of a
 * build without it. */
int tern_aead_ctx_init(tern_aead_ctx *c, tern_aead_impl impl);
/* Wipes the loaded key and frees OpenSSL's context. */
void tern_aead_ctx_clear(tern_aead_ctx *c);

/* tern_noise_aead_seal() and tern_noise_aead_open() (same arguments, same
 * bytes, same failures: open zeroes out on failure) through c. */
int tern_aead_ctx_seal(tern_aead_ctx *c, tern_noise_cipher cipher, const tern_key *k, uint64_t n,
                       const uint8_t *ad, size_t ad_len, const uint8_t *pt, size_t len,
                       uint8_t *out);
int tern_aead_ctx_open(tern_aead_ctx *c, tern_noise_cipher cipher, const tern_key *k, uint64_t n,
                       const uint8_t *ad, size_t ad_len, const uint8_t *ct, size_t ct_len,
                       uint8_t *out) TERN_WARN_UNUSED;

#endif /* TERN_CRYPTO_AEAD_CTX_H */
