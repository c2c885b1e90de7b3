/* The RFC 6479 replay window (crypto/replay.h): in order, reordered,
 * duplicates, too old, jumps of every size, the reserved counter, and a
 * seeded model check against a plain set of accepted counters. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/replay.h"

#define W TERN_REPLAY_WINDOW

/* check, then commit, as the session does; returns what check said. */
static tern_replay_result accept(tern_replay *w, uint64_t c)
{
    tern_replay_result r = tern_replay_check(w, c);
    tern_replay_result r2 = tern_replay_commit(w, c);
    cr_assert_eq(r, r2, "check and commit disagree on %llu", (unsigned long long)c);
    return r;
}

Test(replay, window_is_at_least_2048)
{
    cr_assert_geq(W, 2048U);
}

Test(replay, in_order_and_duplicates)
{
    tern_replay w;
    tern_replay_init(&w);
    for (uint64_t c = 0; c < 10000; c++) {
        cr_assert_eq(tern_replay_check(&w, c), TERN_REPLAY_OK);
        cr_assert_eq(accept(&w, c), TERN_REPLAY_OK);
        cr_assert_eq(tern_replay_check(&w, c), TERN_REPLAY_DUPLICATE);
    }
    /* Everything in the window is a duplicate, everything behind too old. */
    for (uint64_t c = 10000 - W; c < 10000; c++)
        cr_assert_eq(tern_replay_check(&w, c), TERN_REPLAY_DUPLICATE, "%llu",
                     (unsigned long long)c);
    cr_assert_eq(tern_replay_check(&w, 10000 - W - 1), TERN_REPLAY_TOO_OLD);
    cr_assert_eq(tern_replay_check(&w, 0), TERN_REPLAY_TOO_OLD);
}

Test(replay, check_changes_nothing)
{
    tern_replay w, before;
    tern_replay_init(&w);
    accept(&w, 5);
    memcpy(&before, &w, sizeof(w));
    (void)tern_replay_check(&w, 100000);
    (void)tern_replay_check(&w, 4);
    (void)tern_replay_check(&w, 5);
    cr_assert_eq(memcmp(&before, &w, sizeof(w)), 0);
}

Test(replay, reordered_within_window)
{
    tern_replay w;
    tern_replay_init(&w);
    cr_assert_eq(accept(&w, 5000), TERN_REPLAY_OK);
    /* Every counter of the window, backwards, then each again. */
    for (uint64_t c = 4999; c > 5000 - W; c--)
        cr_assert_eq(accept(&w, c), TERN_REPLAY_OK, "%llu", (unsigned long long)c);
    cr_assert_eq(accept(&w, 5000 - W), TERN_REPLAY_TOO_OLD);
    for (uint64_t c = 5000 - W + 1; c <= 5000; c++)
        cr_assert_eq(accept(&w, c), TERN_REPLAY_DUPLICATE);
}

Test(replay, exact_edge)
{
    tern_replay w;
    tern_replay_init(&w);
    uint64_t top = 3 * W + 17;
    cr_assert_eq(accept(&w, top), TERN_REPLAY_OK);
    cr_assert_eq(tern_replay_check(&w, top - W + 1), TERN_REPLAY_OK); /* oldest inside */
    cr_assert_eq(tern_replay_check(&w, top - W), TERN_REPLAY_TOO_OLD);
    cr_assert_eq(accept(&w, top - W + 1), TERN_REPLAY_OK);
    /* Moving forward by one pushes it out. */
    cr_assert_eq(accept(&w, top + 1), TERN_REPLAY_OK);
    cr_assert_eq(tern_replay_check(&w, top - W + 1), TERN_REPLAY_TOO_OLD);
}

Test(replay, huge_jumps)
{
    tern_replay w;
    tern_replay_init(&w);
    for (uint64_t c = 0; c < 64 * 70; c += 3)
        accept(&w, c);
    /* A jump far beyond the ring clears all of it: nothing stale remains. */
    uint64_t big = UINT64_C(1) << 40;
    cr_assert_eq(accept(&w, big), TERN_REPLAY_OK);
    for (uint64_t c = big - W + 1; c < big; c++)
        cr_assert_eq(tern_replay_check(&w, c), TERN_REPLAY_OK, "%llu", (unsigned long long)c);
    cr_assert_eq(tern_replay_check(&w, 3), TERN_REPLAY_TOO_OLD);
    /* Jumps of exactly one ring and of one word less. */
    uint64_t ring = 64 * TERN_REPLAY_WORDS;
    cr_assert_eq(accept(&w, big + ring), TERN_REPLAY_OK);
    cr_assert_eq(accept(&w, big + ring + ring - 64), TERN_REPLAY_OK);
    cr_assert_eq(tern_replay_check(&w, big + ring), TERN_REPLAY_TOO_OLD);
    cr_assert_eq(tern_replay_check(&w, big + ring + ring - 65), TERN_REPLAY_OK);
    cr_assert_eq(tern_replay_check(&w, big + ring + ring - 64), TERN_REPLAY_DUPLICATE);
}

Test(replay, top_of_the_range)
{
    tern_replay w;
    tern_replay_init(&w);
    cr_assert_eq(tern_replay_check(&w, UINT64_MAX), TERN_REPLAY_RESERVED);
    cr_assert_eq(tern_replay_commit(&w, UINT64_MAX), TERN_REPLAY_RESERVED);
    cr_assert_eq(w.top, 0U); /* refused without a trace */
    cr_assert_eq(accept(&w, UINT64_MAX - 1), TERN_REPLAY_OK);
    cr_assert_eq(accept(&w, UINT64_MAX - 1), TERN_REPLAY_DUPLICATE);
    cr_assert_eq(accept(&w, UINT64_MAX - 2), TERN_REPLAY_OK);
    cr_assert_eq(accept(&w, UINT64_MAX), TERN_REPLAY_RESERVED);
    cr_assert_eq(accept(&w, 0), TERN_REPLAY_TOO_OLD);
}

Test(replay, first_counter_anywhere)
{
    tern_replay w;
    tern_replay_init(&w);
    cr_assert_eq(accept(&w, 12345678), TERN_REPLAY_OK);
    cr_assert_eq(accept(&w, 12345677), TERN_REPLAY_OK);
    cr_assert_eq(accept(&w, 12345678), TERN_REPLAY_DUPLICATE);
}

/* ---- model check ---- */

/* xorshift64*: the test's own generator, so a seed replays exactly. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

#define SPAN (1U << 16)

/* The reference: a plain set of accepted counters (a byte per counter, the
 * counters drawn from [base, base + SPAN)) and the highest so far. */
typedef struct model {
    uint8_t seen[SPAN];
    bool any;
    uint64_t max;
} model;

static tern_replay_result model_check(const model *m, uint64_t base, uint64_t c)
{
    if (c == UINT64_MAX)
        return TERN_REPLAY_RESERVED;
    if (m->any && c <= m->max && m->max - c >= W)
        return TERN_REPLAY_TOO_OLD;
    return m->seen[c - base] ? TERN_REPLAY_DUPLICATE : TERN_REPLAY_OK;
}

static void model_run(uint64_t seed, uint64_t base)
{
    static model m;
    tern_replay w;
    uint64_t rs = seed * 0x9E3779B97F4A7C15ULL + 1;
    uint64_t cursor = 0;

    memset(&m, 0, sizeof(m));
    tern_replay_init(&w);
    for (int step = 0; step < 200000; step++) {
        uint64_t r = next_rand(&rs);
        int64_t delta;
        switch (r % 8) {
        case 0:
            delta = -(int64_t)(next_rand(&rs) % (2 * W));
            break; /* far back */
        case 1:
            delta = (int64_t)(next_rand(&rs) % (3 * W));
            break; /* big jump */
        case 2:
            delta = -(int64_t)(next_rand(&rs) % 64);
            break; /* near back */
        case 3:
            delta = 0;
            break; /* duplicate */
        default:
            delta = (int64_t)(next_rand(&rs) % 4);
            break; /* forward */
        }
        int64_t pos = (int64_t)cursor + delta;
        if (pos < 0)
            pos = 0;
        if (pos >= (int64_t)SPAN)
            break;
        uint64_t c = base + (uint64_t)pos;
        tern_replay_result want = model_check(&m, base, c);
        cr_assert_eq(tern_replay_check(&w, c), want, "seed %llu step %d counter %llu",
                     (unsigned long long)seed, step, (unsigned long long)c);
        cr_assert_eq(tern_replay_commit(&w, c), want);
        if (want == TERN_REPLAY_OK) {
            m.seen[c - base] = 1;
            if (!m.any || c > m.max)
                m.max = c;
            m.any = true;
        }
        if (delta > 0)
            cursor = (uint64_t)pos;
    }
}

Test(replay, model_check_seeded)
{
    for (uint64_t seed = 1; seed <= 40; seed++)
        model_run(seed, 0);
}

Test(replay, model_check_near_the_top)
{
    /* The same near 2^64, where the reserved counter and wrap-around live. */
    for (uint64_t seed = 100; seed < 110; seed++)
        model_run(seed, UINT64_MAX - SPAN + 1);
}
