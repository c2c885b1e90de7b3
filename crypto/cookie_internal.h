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

/* ---- the server's checks, each MAC computed once per message ----
 *
 * tern_cookie_server_check() and tern_cookie_reply_write() each start from
 * mac1, so a server that calls check(false), check(true) and reply_write()
 * on one INIT (as the transport does under load) would compute it three
 * times. These split the same work into steps that share one verdict:
 *
 *   tern_cookie_msg m;
 *   if (tern_cookie_server_mac1(s, &m, msg, len, &src) < 0)     drop
 *   ...
 *   if (tern_cookie_server_mac2(s, &m, now) == TERN_ERR_COOKIE)
 *       tern_cookie_server_reply(s, &m, type, id, now, out, cap);
 *
 * Results, errors and stats are those of the public calls they replace.
 * m points into msg: msg must stay unchanged while m is used. m holds no
 * secret. */
typedef struct tern_cookie_msg {
    const tern_cookie_server *server; /* the server that checked mac1 */
    const uint8_t *msg;
    size_t msg_len;
    tern_addr src; /* copied, bytes past len zeroed */
    int mac1_rc;   /* 0, TERN_ERR_DECRYPT or TERN_ERR_INVAL */
} tern_cookie_msg;

/* Checks mac1 of msg (msg_len counts both MACs) from src, and fills *m for
 * the steps below. Returns 0, TERN_ERR_DECRYPT (mac1 wrong or msg too
 * short; counted in mac1_bad) or TERN_ERR_INVAL (NULL s or m, src->len >
 * TERN_ADDR_MAX, NULL msg with a length). As tern_cookie_server_check()
 * with need_mac2 false. */
int tern_cookie_server_mac1(tern_cookie_server *s, tern_cookie_msg *m, const uint8_t *msg,
                            size_t msg_len, const tern_addr *src) TERN_WARN_UNUSED;

/* Checks mac2 of the message m describes, after its mac1: 0 (valid under
 * the current or the previous secret), TERN_ERR_COOKIE (not), m's mac1
 * error again (not counted again), or TERN_ERR_INVAL (NULL, or m filled by
 * another server). Rotates the secrets first if due. */
int tern_cookie_server_mac2(tern_cookie_server *s, const tern_cookie_msg *m,
                            tern_ms now) TERN_WARN_UNUSED;

/* Writes the COOKIE_REPLY to the message m describes, as
 * tern_cookie_reply_write() does, without checking mac1 again. Returns
 * TERN_COOKIE_REPLY_BYTES, or TERN_ERR_INVAL, TERN_ERR_NOBUFS,
 * TERN_ERR_MSGSIZE (counted in replies_refused), m's mac1 error, in that
 * order. */
tern_ssize tern_cookie_server_reply(tern_cookie_server *s, const tern_cookie_msg *m, uint8_t type,
                                    uint32_t receiver_id, tern_ms now, uint8_t *out,
                                    size_t out_cap) TERN_WARN_UNUSED;

#endif /* TERN_CRYPTO_COOKIE_INTERNAL_H */
