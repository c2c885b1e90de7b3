/* White-box hooks into crypto/packet.c for the tests. Not installed. */
#ifndef TERN_CRYPTO_PACKET_INTERNAL_H
#define TERN_CRYPTO_PACKET_INTERNAL_H

#include <stdint.h>

#include "tern/crypto.h"

/* TEST ONLY: sets the next counter the session seals with, so that the end
 * of the counter space can be reached without sending 2^64 packets. */
void tern_packet_set_next_counter(tern_crypto_session *s, uint64_t next);

#endif /* TERN_CRYPTO_PACKET_INTERNAL_H */
