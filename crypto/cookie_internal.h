/* mac1/mac2 and cookie primitives shared by crypto/cookie.c and its
 * white-box tests. Not installed. */
#ifndef TERN_CRYPTO_COOKIE_INTERNAL_H
#define TERN_CRYPTO_COOKIE_INTERNAL_H

#include "tern/crypto.h"

#define TERN_COOKIE_KEY_BYTES 32U

/* BLAKE2b-256(label (8 bytes) || pub): the mac1 key ("mac1----") or the
 * cookie reply key ("cookie--"). */
void tern_cookie_derive_key(const char label[8], const tern_public_key *pub,
                            uint8_t out[TERN_COOKIE_KEY_BYTES]);

/* BLAKE2b-128 keyed with key (key_len 16..64) over data. */
void tern_cookie_mac(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                     uint8_t out[TERN_MAC_BYTES]);

/* The cookie the server would give src now (under its current secret),
 * rotating the secrets first if due. */
void tern_cookie_server_make_cookie(tern_cookie_server *s, const tern_addr *src, tern_ms now,
                                    uint8_t out[TERN_COOKIE_BYTES]);

#endif /* TERN_CRYPTO_COOKIE_INTERNAL_H */
