/* Noise's symmetric layer (the specification's sections 4 and 5.1-5.2:
 * HASH, HMAC, HKDF, the AEAD ciphers, CipherState, SymmetricState), shared by
 * crypto/noise.c and the white-box tests. Not installed.
 *
 * Functions that can fail return 0 or a negative TERN_ERR_*. Buffers named
 * out receive len bytes, plus TERN_CRYPTO_TAG_BYTES when a key is set. */
#ifndef TERN_CRYPTO_NOISE_INTERNAL_H
#define TERN_CRYPTO_NOISE_INTERNAL_H

#include <stdbool.h>

#include "tern/common.h"
#include "tern/crypto.h"

#define TERN_NOISE_HASHLEN 64U   /* BLAKE2b-512 */
#define TERN_NOISE_BLOCKLEN 128U /* BLAKE2b's block, HMAC's pad length */
#define TERN_NOISE_DHLEN 32U
#define TERN_NOISE_NONCE_BYTES 12U

typedef enum tern_noise_cipher {
    TERN_NOISE_CHACHAPOLY = 0,
    TERN_NOISE_AESGCM = 1
} tern_noise_cipher;

/* Noise's CipherState: a key (or none) and the next nonce. */
typedef struct tern_noise_cs {
    tern_key k;
    uint64_t n;
    bool has_key;
    tern_noise_cipher cipher;
} tern_noise_cs;

/* Noise's SymmetricState: the chaining key, the handshake hash and the
 * current cipher. */
typedef struct tern_noise_ss {
    tern_noise_cs cs;
    tern_hash ck;
    tern_hash h;
} tern_noise_ss;

/* The transport cipher handed out by tern_noise_split(). */
struct tern_cipher {
    tern_mem mem;
    tern_noise_cs cs;
};

/* The 96-bit AEAD nonce for counter n: 4 zero bytes, then n as 8 bytes,
 * little-endian for ChaChaPoly and big-endian for AESGCM. */
void tern_noise_nonce(tern_noise_cipher c, uint64_t n, uint8_t out[TERN_NOISE_NONCE_BYTES]);

/* AEAD with an explicit counter. out may be pt (in place). ad and pt may be
 * NULL when their length is 0. */
int tern_noise_aead_seal(tern_noise_cipher c, const tern_key *k, uint64_t n, const uint8_t *ad,
                         size_t ad_len, const uint8_t *pt, size_t len, uint8_t *out);
/* ct_len includes the tag. On failure returns TERN_ERR_DECRYPT and zeroes
 * the ct_len - tag bytes of out. */
int tern_noise_aead_open(tern_noise_cipher c, const tern_key *k, uint64_t n, const uint8_t *ad,
                         size_t ad_len, const uint8_t *ct, size_t ct_len,
                         uint8_t *out) TERN_WARN_UNUSED;

/* HASH(a || b); either may be NULL with length 0. */
void tern_noise_hash(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len,
                     uint8_t out[TERN_NOISE_HASHLEN]);
/* HMAC-BLAKE2b per RFC 2104 with a 128-byte block; any key length (keys
 * longer than the block are hashed first). */
void tern_noise_hmac(const uint8_t *key, size_t key_len, const uint8_t *data, size_t data_len,
                     uint8_t out[TERN_NOISE_HASHLEN]);
/* Noise's HKDF(ck, ikm): two outputs, or three when o3 is not NULL. The
 * outputs may alias ck. */
void tern_noise_hkdf(const tern_hash *ck, const uint8_t *ikm, size_t ikm_len, tern_hash *o1,
                     tern_hash *o2, tern_hash *o3);

/* InitializeKey(k), or an empty key when k is NULL; n = 0. */
void tern_noise_cs_init(tern_noise_cs *cs, tern_noise_cipher c, const tern_key *k);
/* EncryptWithAd / DecryptWithAd: copy without a key; with one, seal or open
 * with nonce n, then n++ (only on success). TERN_ERR_RANGE once n reaches
 * 2^64 - 1; TERN_ERR_DECRYPT (out zeroed) on authentication failure. */
int tern_noise_cs_encrypt(tern_noise_cs *cs, const uint8_t *ad, size_t ad_len, const uint8_t *pt,
                          size_t len, uint8_t *out) TERN_WARN_UNUSED;
int tern_noise_cs_decrypt(tern_noise_cs *cs, const uint8_t *ad, size_t ad_len, const uint8_t *ct,
                          size_t ct_len, uint8_t *out) TERN_WARN_UNUSED;

/* InitializeSymmetric(protocol_name). */
void tern_noise_ss_init(tern_noise_ss *ss, const char *name, size_t name_len, tern_noise_cipher c);
void tern_noise_ss_mix_key(tern_noise_ss *ss, const uint8_t *ikm, size_t ikm_len);
void tern_noise_ss_mix_hash(tern_noise_ss *ss, const uint8_t *data, size_t len);
void tern_noise_ss_mix_key_and_hash(tern_noise_ss *ss, const uint8_t *ikm, size_t ikm_len);
/* out receives len (+ tag once a key is set) bytes; must not overlap pt. */
int tern_noise_ss_encrypt_and_hash(tern_noise_ss *ss, const uint8_t *pt, size_t len,
                                   uint8_t *out) TERN_WARN_UNUSED;
/* out receives ct_len (- tag once a key is set) bytes; must not overlap ct. */
int tern_noise_ss_decrypt_and_hash(tern_noise_ss *ss, const uint8_t *ct, size_t ct_len,
                                   uint8_t *out) TERN_WARN_UNUSED;
/* Split(): c1 for initiator-to-responder, c2 for the other direction. */
void tern_noise_ss_split(const tern_noise_ss *ss, tern_noise_cs *c1, tern_noise_cs *c2);

/* DH(sk, pk) with X25519; TERN_ERR_BADKEY when the result is all zeros
 * (pk of low order). */
int tern_noise_dh(const tern_key *sk, const tern_public_key *pk, tern_key *out) TERN_WARN_UNUSED;

/* TEST ONLY: fixes the ephemeral key pair this side's "e" token uses, as
 * the published test vectors do. Real handshakes take fresh randomness from
 * the configured tern_random_fn. TERN_ERR_STATE once this side has written
 * its ephemeral key. */
int tern_noise_set_ephemeral(tern_noise *hs, const tern_key *secret);

#endif /* TERN_CRYPTO_NOISE_INTERNAL_H */
