/* The server's load decision (crypto/ratelimit.c) in virtual time: "under
 * load" is sticky for load_cooldown_ms after the global bucket last ran
 * dry, a flood that keeps draining it keeps the server there, and a
 * half-open table filled to halfopen_max / TERN_HALFOPEN_LOAD_DIV requires
 * cookies on its own. The bucket and table basics are in
 * test_crypto_cookie.c. */
#include <criterion/criterion.h>

#include "tern/crypto.h"

static tern_ratelimit *new_rl(uint32_t load_rate, uint32_t load_burst, uint32_t cooldown_ms,
                              uint32_t halfopen_max)
{
    tern_ratelimit_config cfg;
    tern_ratelimit *rl;
    tern_ratelimit_config_default(&cfg);
    cfg.load_rate = load_rate;
    cfg.load_burst = load_burst;
    cfg.load_cooldown_ms = cooldown_ms;
    cfg.halfopen_max = halfopen_max;
    cr_assert_eq(tern_ratelimit_new(&rl, &cfg, NULL), 0);
    return rl;
}

/* What the server does for an initiation without a valid cookie: ask
 * whether cookies are required, else take a token; either way an unproven
 * initiation is charged to the bucket. Returns whether it would get DH. */
static bool unproven_init(tern_ratelimit *rl, tern_ms now)
{
    if (tern_ratelimit_cookies_required(rl, now)) {
        (void)tern_ratelimit_under_load(rl, now);
        return false;
    }
    return !tern_ratelimit_under_load(rl, now);
}

Test(ratelimit, defaults)
{
    tern_ratelimit_config cfg;
    tern_ratelimit_config_default(&cfg);
    cr_assert_eq(cfg.load_cooldown_ms, 1000);
    cr_assert_eq(cfg.load_burst, 200);
    cr_assert_eq(cfg.load_rate, 1000);
    cr_assert_eq(cfg.halfopen_max, 1024);
    cr_assert(tern_ratelimit_cookies_required(NULL, 0), "no limiter: be safe");
}

Test(ratelimit, sticky_load_through_cooldown_then_released)
{
    /* Burst 10, 100/s, cooldown 1 s. */
    tern_ratelimit *rl = new_rl(100, 10, 1000, 1024);
    cr_assert_not(tern_ratelimit_cookies_required(rl, 0));
    for (int i = 0; i < 10; i++)
        cr_assert(unproven_init(rl, 0), "initiation %d within the burst", i);
    cr_assert_not(unproven_init(rl, 0), "the bucket runs dry");
    cr_assert(tern_ratelimit_cookies_required(rl, 0));

    /* A flood at 200/s, twice the refill rate, for 3 s: never out of load,
     * even though the bucket regains a token every 10 ms. */
    unsigned dh = 0;
    tern_ms last_dry = 0;
    tern_ratelimit_stats st;
    for (tern_ms now = 5; now <= 3000; now += 5) {
        cr_assert(tern_ratelimit_cookies_required(rl, now), "out of load at %llu ms",
                  (unsigned long long)now);
        tern_ratelimit_get_stats(rl, &st);
        uint64_t before = st.under_load;
        dh += unproven_init(rl, now);
        tern_ratelimit_get_stats(rl, &st);
        if (st.under_load > before)
            last_dry = now;
    }
    cr_assert_eq(dh, 0, "no DH for unproven initiations once under load");
    cr_assert_gt(st.under_load, 100, "the flood kept running the bucket dry");
    cr_assert_geq(last_dry, 2990);

    /* Then no initiations: still under load for the cooldown, out after. */
    cr_assert(tern_ratelimit_cookies_required(rl, last_dry + 999));
    cr_assert_not(tern_ratelimit_cookies_required(rl, last_dry + 1000));
    /* The bucket refilled meanwhile: the next burst is served. */
    for (int i = 0; i < 10; i++)
        cr_assert(unproven_init(rl, last_dry + 1000));
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_eq(st.halfopen_load, 0);
    cr_assert_geq(st.cookies_required, 600);
    tern_ratelimit_del(rl);
}

Test(ratelimit, slow_flood_leaves_load_after_cooldown)
{
    /* A rate below load_rate after the bucket ran dry once: it refills,
     * never runs dry again, and cookies stop after the cooldown. */
    tern_ratelimit *rl = new_rl(100, 10, 500, 1024);
    for (int i = 0; i < 11; i++)
        (void)unproven_init(rl, 0);
    cr_assert(tern_ratelimit_cookies_required(rl, 0));
    tern_ms now;
    for (now = 20; now < 500; now += 20) /* 50/s */
        cr_assert_not(unproven_init(rl, now), "no DH at %llu ms", (unsigned long long)now);
    cr_assert_not(tern_ratelimit_cookies_required(rl, 500));
    cr_assert(unproven_init(rl, 500));
    tern_ratelimit_del(rl);
}

Test(ratelimit, no_cooldown_is_the_bucket_alone)
{
    tern_ratelimit *rl = new_rl(100, 2, 0, 1024);
    cr_assert(unproven_init(rl, 0));
    cr_assert(unproven_init(rl, 0));
    cr_assert_not(unproven_init(rl, 0));
    /* 10 ms later one token is back and nothing is sticky. */
    cr_assert_not(tern_ratelimit_cookies_required(rl, 10));
    cr_assert(unproven_init(rl, 10));
    tern_ratelimit_del(rl);
}

Test(ratelimit, clock_going_backwards_stays_under_load)
{
    tern_ratelimit *rl = new_rl(100, 1, 1000, 1024);
    cr_assert(unproven_init(rl, 5000));
    cr_assert_not(unproven_init(rl, 5000));
    cr_assert(tern_ratelimit_cookies_required(rl, 10));
    cr_assert(tern_ratelimit_cookies_required(rl, 5999));
    cr_assert_not(tern_ratelimit_cookies_required(rl, 6000));
    tern_ratelimit_del(rl);
}

Test(ratelimit, halfopen_threshold_requires_cookies)
{
    /* halfopen_max 64: cookies from 8 half-open handshakes. A bucket large
     * enough that only the half-open count can say so. */
    tern_ratelimit *rl = new_rl(100000, 100000, 1000, 64);
    for (unsigned i = 0; i < 64 / TERN_HALFOPEN_LOAD_DIV; i++) {
        cr_assert_not(tern_ratelimit_cookies_required(rl, 0), "at %u half-open", i);
        cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), 0);
    }
    cr_assert(tern_ratelimit_cookies_required(rl, 0));
    /* The cap itself is still halfopen_max: proven clients find room. */
    for (unsigned i = 64 / TERN_HALFOPEN_LOAD_DIV; i < 64; i++)
        cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), 0);
    cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), TERN_ERR_RATE);
    /* Not sticky: below the threshold again, no cookies. */
    for (unsigned i = 64 / TERN_HALFOPEN_LOAD_DIV; i <= 64; i++)
        tern_ratelimit_halfopen_release(rl);
    cr_assert_not(tern_ratelimit_cookies_required(rl, 1));

    tern_ratelimit_stats st;
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_eq(st.halfopen, 64 / TERN_HALFOPEN_LOAD_DIV - 1);
    cr_assert_eq(st.halfopen_load, 1);
    cr_assert_eq(st.cookies_required, 1);
    cr_assert_eq(st.under_load, 0);
    tern_ratelimit_del(rl);
}

Test(ratelimit, halfopen_threshold_at_least_one)
{
    /* halfopen_max below the divisor: the first half-open handshake already
     * requires cookies for the next (never a threshold of zero, which would
     * require them always). */
    tern_ratelimit *rl = new_rl(100000, 100000, 1000, 3);
    cr_assert_not(tern_ratelimit_cookies_required(rl, 0));
    cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), 0);
    cr_assert(tern_ratelimit_cookies_required(rl, 0));
    tern_ratelimit_del(rl);
}

/* The spoofed flood in virtual time: 2,000 unproven initiations per second
 * for 2 s against the default policy, each that gets DH holding a
 * half-open slot for the whole run. DH stays within the detection burst,
 * min(load_burst, halfopen_max / 8), and the cap keeps room. */
Test(ratelimit, spoofed_flood_detection_burst_bound)
{
    tern_ratelimit_config cfg;
    tern_ratelimit *rl;
    tern_ratelimit_config_default(&cfg);
    cr_assert_eq(tern_ratelimit_new(&rl, &cfg, NULL), 0);
    unsigned dh = 0;
    for (unsigned i = 0; i < 4000; i++) {
        tern_ms now = i / 2;
        if (unproven_init(rl, now)) {
            cr_assert_eq(tern_ratelimit_halfopen_acquire(rl), 0);
            dh++;
        }
    }
    uint32_t bound = cfg.halfopen_max / TERN_HALFOPEN_LOAD_DIV;
    if (cfg.load_burst < bound)
        bound = cfg.load_burst;
    cr_assert_eq(dh, bound, "dh %u, bound %u", dh, bound);
    tern_ratelimit_stats st;
    tern_ratelimit_get_stats(rl, &st);
    cr_assert_eq(st.halfopen, bound);
    cr_assert_lt(st.halfopen, cfg.halfopen_max, "room for proven clients");
    tern_ratelimit_del(rl);
}
