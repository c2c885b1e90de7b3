/* An RFC 6479 anti-replay window over 64-bit packet counters: a ring of
 * 64-bit words, so that sliding forward clears whole words instead of
 * shifting the bitmap. Pure and allocation-free; crypto/packet.c keeps one
 * per receiving direction. Not installed.
 *
 * Use: tern_replay_check() before the AEAD (cheap rejection, no state
 * change), tern_replay_commit() only after the AEAD has verified, so that a
 * forged packet can never move the window. */
#ifndef TERN_CRYPTO_REPLAY_H
#define TERN_CRYPTO_REPLAY_H

#include <stdint.h>

#define TERN_REPLAY_WORDS 64U /* a power of two: 4096 bits, 512 bytes */
/* Counters this far below the highest one accepted are still accepted:
 * every word but the one being filled is history (RFC 6479, section 2). */
#define TERN_REPLAY_WINDOW ((TERN_REPLAY_WORDS - 1U) * 64U) /* 4032 */

typedef struct tern_replay {
    uint64_t top; /* highest counter accepted + 1; 0 before the first */
    uint64_t bits[TERN_REPLAY_WORDS];
} tern_replay;

typedef enum tern_replay_result {
    TERN_REPLAY_OK = 0,        /* never seen and inside (or ahead of) the window */
    TERN_REPLAY_DUPLICATE = 1, /* accepted before */
    TERN_REPLAY_TOO_OLD = 2,   /* behind the window: cannot tell, so refused */
    TERN_REPLAY_RESERVED = 3   /* 2^64 - 1, which no sender uses (Noise's Rekey nonce) */
} tern_replay_result;

/* An empty window. */
void tern_replay_init(tern_replay *w);

/* Whether counter would be accepted now. Changes nothing. */
tern_replay_result tern_replay_check(const tern_replay *w, uint64_t counter);

/* Records counter as accepted, sliding the window forward if it is the
 * highest so far. Returns what tern_replay_check() said; the window changes
 * only when that is TERN_REPLAY_OK. */
tern_replay_result tern_replay_commit(tern_replay *w, uint64_t counter);

#endif /* TERN_CRYPTO_REPLAY_H */
