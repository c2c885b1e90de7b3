/* White-box hooks into crypto/packet.c for the tests. Not installed. */
#ifndef TERN_CRYPTO_PACKET_INTERNAL_H
#define TERN_CRYPTO_PACKET_INTERNAL_H

#include <stdint.h>

#include "crypto/aead_ctx.h"
#include "tern/crypto.h"

/* TEST ONLY: sets the next counter the session seals with, so that the end
 * of the counter space can be reached without sending 2^64 packets. */
void tern_packet_set_next_counter(tern_crypto_session *s, uint64_t next);

/* Makes s seal through `seal` and open through `open` instead of its own
 * contexts, until it is deleted: an owner of many sessions on one thread
 * (the transport's endpoint) keeps one pair for all of them rather than
 * about a kilobyte of OpenSSL state per session and direction. Both must
 * outlive s and have been set up with tern_aead_ctx_init(). */
void tern_packet_share_aead(tern_crypto_session *s, tern_aead_ctx *seal, tern_aead_ctx *open);

#endif /* TERN_CRYPTO_PACKET_INTERNAL_H */
