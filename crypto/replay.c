/* RFC 6479's sliding window: the bitmap is a ring of TERN_REPLAY_WORDS
 * words indexed by counter / 64, and moving forward only zeroes the words
 * that come into use. The word holding the highest counter is the newest;
 * the other TERN_REPLAY_WORDS - 1 words are the window. */
#include <string.h>

#include "crypto/replay.h"

#define WORD_MASK (TERN_REPLAY_WORDS - 1U)

void tern_replay_init(tern_replay *w)
{
    memset(w, 0, sizeof(*w));
}

tern_replay_result tern_replay_check(const tern_replay *w, uint64_t counter)
{
    if (counter == UINT64_MAX)
        return TERN_REPLAY_RESERVED;
    if (counter >= w->top)
        return TERN_REPLAY_OK;
    /* top > counter here, so top - 1 - counter cannot wrap. */
    if (w->top - 1U - counter >= TERN_REPLAY_WINDOW)
        return TERN_REPLAY_TOO_OLD;
    uint64_t word = w->bits[(counter >> 6) & WORD_MASK];
    return (word >> (counter & 63U)) & 1U ? TERN_REPLAY_DUPLICATE : TERN_REPLAY_OK;
}

tern_replay_result tern_replay_commit(tern_replay *w, uint64_t counter)
{
    tern_replay_result r = tern_replay_check(w, counter);
    if (r != TERN_REPLAY_OK)
        return r;

    if (counter >= w->top) {
        uint64_t new_word = counter >> 6;
        if (w->top == 0) {
            memset(w->bits, 0, sizeof(w->bits));
        } else {
            /* Zero the words between the old newest and the new one; a jump
             * of a whole ring or more zeroes them all. */
            uint64_t old_word = (w->top - 1U) >> 6;
            uint64_t steps = new_word - old_word;
            if (steps > TERN_REPLAY_WORDS)
                steps = TERN_REPLAY_WORDS;
            for (uint64_t i = 1; i <= steps; i++)
                w->bits[(old_word + i) & WORD_MASK] = 0;
        }
        w->top = counter + 1U; /* counter < UINT64_MAX, so no wrap */
    }
    w->bits[(counter >> 6) & WORD_MASK] |= UINT64_C(1) << (counter & 63U);
    return TERN_REPLAY_OK;
}
