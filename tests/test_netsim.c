/* The impairment model: determinism, each impairment's rate and shape, the
 * bottleneck, partitions and every bound. All in virtual time; the bounds on
 * random rates are many standard deviations wide, and every seed is fixed,
 * so a failure replays exactly. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tern/netsim.h"

#define PAYLOAD_MAX 1500

static tern_netsim_link *make_link(const tern_netsim_cfg *cfg, uint64_t seed)
{
    tern_netsim_link *link = NULL;
    cr_assert_eq(tern_netsim_link_new(&link, cfg, seed, NULL), 0);
    cr_assert_not_null(link);
    return link;
}

/* A datagram that carries its own index, so the receiver can tell which one
 * arrived whatever order or copies the link produced. */
static size_t fill_payload(uint8_t *buf, uint32_t index, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(index * 31u + i * 7u);
    memcpy(buf, &index, sizeof(index));
    return len;
}

static uint32_t payload_index(const uint8_t *buf)
{
    uint32_t index;
    memcpy(&index, buf, sizeof(index));
    return index;
}

static uint64_t fnv1a(const uint8_t *p, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * UINT64_C(0x100000001b3);
    return h;
}

static void stats_of(const tern_netsim_link *link, tern_netsim_stats *st)
{
    tern_netsim_link_get_stats(link, st);
}

static uint64_t total_lost(const tern_netsim_stats *st)
{
    return st->lost_random + st->lost_burst + st->lost_partition + st->lost_queue +
           st->lost_overflow;
}

typedef struct delivery {
    tern_ms at;
    size_t len;
    uint64_t hash;
} delivery;

/* Offers datagrams of varying length at a rate of `per_ms` per ms for
 * `offer_ms` ms, receiving whatever is due each ms, then drains the link by
 * jumping to each next delivery. Returns how many were delivered. */
static size_t run_trace(const tern_netsim_cfg *cfg, uint64_t seed, uint32_t per_ms,
                        tern_ms offer_ms, delivery *out, size_t out_cap, tern_netsim_stats *st)
{
    tern_netsim_link *link = make_link(cfg, seed);
    uint8_t buf[PAYLOAD_MAX];
    size_t n = 0;
    uint32_t index = 0;
    tern_ms now = 0;
    for (;;) {
        if (now < offer_ms) {
            for (uint32_t k = 0; k < per_ms; k++, index++) {
                size_t len = fill_payload(buf, index, 40 + (index * 37u) % 1200u);
                cr_assert_eq(tern_netsim_link_send(link, buf, len, now), 0);
            }
        }
        tern_ssize got;
        while ((got = tern_netsim_link_recv(link, buf, sizeof(buf), now)) > 0) {
            cr_assert_lt(n, out_cap);
            out[n++] = (delivery){.at = now, .len = (size_t)got, .hash = fnv1a(buf, (size_t)got)};
        }
        cr_assert_eq(got, 0);
        tern_ms next = tern_netsim_link_next(link);
        if (now + 1 < offer_ms)
            now++;
        else if (next == UINT64_MAX)
            break;
        else
            now = next > now ? next : now + 1;
    }
    stats_of(link, st);
    tern_netsim_link_del(link);
    return n;
}

static void rich_cfg(tern_netsim_cfg *cfg)
{
    tern_netsim_cfg_default(cfg);
    cfg->loss = 0.03;
    cfg->ge_p_good_bad = 0.01;
    cfg->ge_p_bad_good = 0.4;
    cfg->ge_loss_bad = 0.7;
    cfg->delay_ms = 20;
    cfg->jitter_ms = 15;
    cfg->reorder = 0.05;
    cfg->reorder_ms = 30;
    cfg->duplicate = 0.05;
    cfg->corrupt = 0.05;
    cfg->rate_bytes_per_s = 2000000;
    cfg->queue_bytes = 30000;
    cfg->n_partitions = 1;
    cfg->partitions[0] = (tern_netsim_partition){.start_ms = 500, .end_ms = 600};
}

Test(netsim, same_seed_same_trace_different_seed_differs)
{
    enum { CAP = 20000 };
    static delivery a[CAP], b[CAP], c[CAP];
    tern_netsim_cfg cfg;
    rich_cfg(&cfg);
    tern_netsim_stats sa, sb, sc;

    /* About 2.6 MB/s offered into a 2 MB/s bottleneck, so the queue drops too. */
    size_t na = run_trace(&cfg, 42, 4, 2000, a, CAP, &sa);
    size_t nb = run_trace(&cfg, 42, 4, 2000, b, CAP, &sb);
    size_t nc = run_trace(&cfg, 43, 4, 2000, c, CAP, &sc);

    cr_assert_gt(na, 1000);
    cr_assert_eq(na, nb);
    for (size_t i = 0; i < na; i++) {
        cr_assert_eq(a[i].at, b[i].at, "delivery %zu", i);
        cr_assert_eq(a[i].len, b[i].len, "delivery %zu", i);
        cr_assert_eq(a[i].hash, b[i].hash, "delivery %zu", i);
    }
    cr_assert_eq(memcmp(&sa, &sb, sizeof(sa)), 0);

    bool differs = na != nc;
    for (size_t i = 0; !differs && i < na; i++)
        differs = a[i].at != c[i].at || a[i].hash != c[i].hash;
    cr_assert(differs, "seeds 42 and 43 gave the same trace");

    /* Every impairment fired, and nothing is unaccounted for. */
    cr_assert_gt(sa.lost_random, 0);
    cr_assert_gt(sa.lost_burst, 0);
    cr_assert_gt(sa.lost_partition, 0);
    cr_assert_gt(sa.lost_queue, 0);
    cr_assert_gt(sa.duplicated, 0);
    cr_assert_gt(sa.corrupted, 0);
    cr_assert_gt(sa.reordered, 0);
    cr_assert_eq(sa.offered, 8000);
    cr_assert_eq(sa.delivered, na);
    cr_assert_eq(sa.offered + sa.duplicated, sa.delivered + total_lost(&sa));
}

/* A quick slice of seeds normally; `make soak` (TERN_SOAK=1) runs 1000. */
static uint64_t seed_count(void)
{
    const char *soak = getenv("TERN_SOAK");
    return soak && *soak && strcmp(soak, "0") != 0 ? 1000 : 20;
}

Test(netsim, every_seed_replays_and_accounts_for_every_datagram)
{
    enum { CAP = 20000 };
    static delivery a[CAP], b[CAP];
    tern_netsim_cfg cfg;
    rich_cfg(&cfg);
    for (uint64_t seed = 1; seed <= seed_count(); seed++) {
        tern_netsim_stats sa, sb;
        size_t na = run_trace(&cfg, seed, 4, 1000, a, CAP, &sa);
        size_t nb = run_trace(&cfg, seed, 4, 1000, b, CAP, &sb);
        cr_assert_eq(na, nb, "seed %llu", (unsigned long long)seed);
        for (size_t i = 0; i < na; i++)
            cr_assert(a[i].at == b[i].at && a[i].hash == b[i].hash, "seed %llu delivery %zu",
                      (unsigned long long)seed, i);
        cr_assert_eq(memcmp(&sa, &sb, sizeof(sa)), 0, "seed %llu", (unsigned long long)seed);
        cr_assert_eq(sa.offered + sa.duplicated, sa.delivered + total_lost(&sa), "seed %llu",
                     (unsigned long long)seed);
        cr_assert_eq(sa.delivered, na, "seed %llu", (unsigned long long)seed);
    }
}

Test(netsim, perfect_link_delivers_everything_in_order_after_delay)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 25;
    tern_netsim_link *link = make_link(&cfg, 1);
    uint8_t buf[PAYLOAD_MAX], got[PAYLOAD_MAX];

    cr_assert_eq(tern_netsim_link_next(link), UINT64_MAX);
    /* Several per ms, so equal due times must keep offer order. */
    uint32_t sent = 0, received = 0;
    for (tern_ms now = 1000; now < 1400; now++) {
        for (int k = 0; k < 3; k++, sent++) {
            size_t len = fill_payload(buf, sent, 100 + sent % 50);
            cr_assert_eq(tern_netsim_link_send(link, buf, len, now), 0);
        }
        /* The oldest undelivered datagram was offered at max(1000, now - 25). */
        cr_assert_eq(tern_netsim_link_next(link), (now < 1025 ? 1000 : now - 25) + 25);
        tern_ssize n;
        while ((n = tern_netsim_link_recv(link, got, sizeof(got), now)) > 0) {
            size_t len = fill_payload(buf, received, 100 + received % 50);
            cr_assert_eq((size_t)n, len);
            cr_assert_eq(memcmp(got, buf, len), 0, "datagram %u", received);
            /* offered at 1000 + received / 3, due exactly delay_ms later */
            cr_assert_eq(now, 1000 + received / 3 + 25);
            received++;
        }
    }
    cr_assert_eq(received, (1400 - 25 - 1000) * 3);
    cr_assert_eq(tern_netsim_link_recv(link, got, sizeof(got), 1399), 0, "nothing early");
    for (tern_ms now = 1400; now < 1425; now++) {
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            cr_assert_eq(payload_index(got), received);
            cr_assert_eq(now, 1000 + received / 3 + 25);
            received++;
        }
    }
    cr_assert_eq(received, sent);
    cr_assert_eq(tern_netsim_link_next(link), UINT64_MAX);

    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.offered, sent);
    cr_assert_eq(st.delivered, sent);
    cr_assert_eq(st.bytes_offered, st.bytes_delivered);
    cr_assert_eq(total_lost(&st) + st.duplicated + st.corrupted + st.reordered, 0);
    tern_netsim_link_del(link);
}

Test(netsim, zero_delay_delivers_at_the_same_time)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    tern_netsim_link *link = make_link(&cfg, 0);
    uint8_t buf[8] = {1, 2, 3, 4, 5, 6, 7, 8}, got[8];
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 77), 0);
    cr_assert_eq(tern_netsim_link_next(link), 77);
    cr_assert_eq(tern_netsim_link_recv(link, got, sizeof(got), 77), 8);
    cr_assert_eq(memcmp(buf, got, 8), 0);
    tern_netsim_link_del(link);
}

Test(netsim, independent_loss_rate)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.loss = 0.10;
    tern_netsim_link *link = make_link(&cfg, 7);
    uint8_t buf[64], got[64];
    uint32_t delivered = 0;
    for (uint32_t i = 0; i < 100000; i++) {
        fill_payload(buf, i, sizeof(buf));
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), i), 0);
        tern_ssize n = tern_netsim_link_recv(link, got, sizeof(got), i);
        if (n > 0) {
            cr_assert_eq(payload_index(got), i);
            delivered++;
        }
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    /* sd is about 95 datagrams; these bounds are 10 sd away. */
    cr_assert_geq(st.lost_random, 9000);
    cr_assert_leq(st.lost_random, 11000);
    cr_assert_eq(st.lost_random + delivered, 100000);
    cr_assert_eq(st.delivered, delivered);
    cr_assert_eq(st.lost_burst + st.lost_queue + st.lost_overflow + st.lost_partition, 0);
    tern_netsim_link_del(link);
}

Test(netsim, gilbert_elliott_loses_in_bursts_at_the_stationary_rate)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.ge_p_good_bad = 0.05;
    cfg.ge_p_bad_good = 0.3;
    cfg.ge_loss_bad = 1.0;
    tern_netsim_link *link = make_link(&cfg, 99);
    uint8_t buf[32], got[32];
    const uint32_t total = 200000;
    uint32_t lost = 0, bursts = 0;
    bool in_burst = false;
    for (uint32_t i = 0; i < total; i++) {
        fill_payload(buf, i, sizeof(buf));
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 0), 0);
        bool arrived = tern_netsim_link_recv(link, got, sizeof(got), 0) > 0;
        if (!arrived) {
            lost++;
            if (!in_burst)
                bursts++;
        }
        in_burst = !arrived;
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.lost_burst, lost);
    cr_assert_eq(st.lost_random, 0);
    cr_assert_gt(bursts, 0);
    double mean_burst = (double)lost / bursts;
    double loss_rate = (double)lost / total;
    /* Bad-state sojourns are geometric with mean 1 / 0.3 = 3.3 datagrams;
     * stationary loss is 0.05 / (0.05 + 0.3) = 0.143. */
    cr_assert_gt(mean_burst, 1.5, "mean burst %.2f", mean_burst);
    cr_assert(fabs(mean_burst - 1.0 / 0.3) < 0.3, "mean burst %.2f", mean_burst);
    cr_assert(fabs(loss_rate - 0.05 / 0.35) < 0.015, "loss %.4f", loss_rate);
    tern_netsim_link_del(link);
}

Test(netsim, jitter_stays_within_bounds_and_covers_them)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    cfg.jitter_ms = 15;
    tern_netsim_link *link = make_link(&cfg, 5);
    uint8_t buf[16], got[16];
    uint32_t histogram[16] = {0};
    const uint32_t total = 32000;
    uint32_t received = 0;
    /* One offer every 2 ms, each index at a known time. */
    for (tern_ms now = 0; received < total; now++) {
        if (now % 2 == 0 && now / 2 < total) {
            fill_payload(buf, (uint32_t)(now / 2), sizeof(buf));
            cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), now), 0);
        }
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            tern_ms offered = (tern_ms)payload_index(got) * 2;
            tern_ms delay = now - offered;
            cr_assert_geq(delay, 10);
            cr_assert_leq(delay, 25);
            histogram[delay - 10]++;
            received++;
        }
    }
    /* Uniform: about 2000 each, sd 43; both ends are reachable. */
    for (int j = 0; j < 16; j++)
        cr_assert(histogram[j] > 1600 && histogram[j] < 2400, "jitter %d ms: %u", j, histogram[j]);
    tern_netsim_link_del(link);
}

/* Counts the datagrams that arrive after one offered later than them. */
static uint32_t jitter_overtaken(bool keeps_order, uint32_t *max_delay)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    cfg.jitter_ms = 15;
    cfg.jitter_keeps_order = keeps_order;
    tern_netsim_link *link = make_link(&cfg, 5);
    uint8_t buf[16], got[16];
    const uint32_t total = 5000;
    uint32_t received = 0, overtaken = 0, highest = 0;
    *max_delay = 0;
    for (tern_ms now = 0; received < total; now++) {
        if (now < total) {
            fill_payload(buf, (uint32_t)now, sizeof(buf));
            cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), now), 0);
        }
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            uint32_t index = payload_index(got);
            tern_ms delay = now - index;
            cr_assert_geq(delay, 10);
            if (delay > *max_delay)
                *max_delay = (uint32_t)delay;
            if (received > 0 && index < highest)
                overtaken++;
            if (index > highest)
                highest = index;
            received++;
        }
    }
    tern_netsim_link_del(link);
    return overtaken;
}

Test(netsim, jitter_that_keeps_order_never_reorders)
{
    uint32_t max_any, max_kept;
    uint32_t any = jitter_overtaken(false, &max_any);
    uint32_t kept = jitter_overtaken(true, &max_kept);
    /* One offer per ms with 15 ms of jitter: drawn alone, most swap. */
    cr_assert_gt(any, 1000, "independent jitter reordered only %u", any);
    cr_assert_eq(kept, 0, "queueing jitter reordered %u", kept);
    /* Keeping order can only add the wait behind the one ahead: never
     * past the largest delay the jitter itself draws. */
    cr_assert_leq(max_any, 25);
    cr_assert_leq(max_kept, 25);
}

Test(netsim, reorder_holds_some_back_and_changes_order)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    cfg.reorder = 0.2;
    cfg.reorder_ms = 5;
    tern_netsim_link *link = make_link(&cfg, 11);
    uint8_t buf[16], got[16];
    const uint32_t total = 10000;
    uint32_t received = 0, held_back = 0, overtaken = 0, highest = 0;
    for (tern_ms now = 0; received < total; now++) {
        if (now < total) {
            fill_payload(buf, (uint32_t)now, sizeof(buf));
            cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), now), 0);
        }
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            uint32_t index = payload_index(got);
            tern_ms delay = now - index;
            cr_assert(delay == 10 || delay == 15, "delay %llu", (unsigned long long)delay);
            held_back += delay == 15;
            if (received > 0 && index < highest)
                overtaken++;
            if (index > highest)
                highest = index;
            received++;
        }
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.reordered, held_back);
    /* Only a held-back datagram can be overtaken, and with 1 ms spacing
     * nearly every one is (unless the next four were held back too). */
    cr_assert_leq(overtaken, held_back);
    cr_assert_geq(overtaken, held_back * 9 / 10);
    cr_assert(held_back > 1700 && held_back < 2300, "reordered %u", held_back);
    tern_netsim_link_del(link);
}

Test(netsim, duplication_rate_and_copies)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.duplicate = 0.1;
    cfg.jitter_ms = 3;
    tern_netsim_link *link = make_link(&cfg, 13);
    const uint32_t total = 100000;
    uint8_t *copies = calloc(total, 1);
    cr_assert_not_null(copies);
    uint8_t buf[24], got[24];
    for (tern_ms now = 0; now < total + 10; now++) {
        if (now < total) {
            fill_payload(buf, (uint32_t)now, sizeof(buf));
            cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), now), 0);
        }
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            uint32_t index = payload_index(got);
            cr_assert_lt(index, total);
            fill_payload(buf, index, sizeof(buf));
            cr_assert_eq(memcmp(buf, got, sizeof(buf)), 0, "a copy is an exact copy");
            copies[index]++;
        }
    }
    uint32_t twice = 0;
    for (uint32_t i = 0; i < total; i++) {
        cr_assert(copies[i] == 1 || copies[i] == 2, "datagram %u came %u times", i, copies[i]);
        twice += copies[i] == 2;
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.duplicated, twice);
    cr_assert_eq(st.delivered, total + twice);
    cr_assert(twice > 9000 && twice < 11000, "duplicated %u", twice);
    free(copies);
    tern_netsim_link_del(link);
}

static unsigned bits_differing(const uint8_t *a, const uint8_t *b, size_t len)
{
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++)
        for (uint8_t x = a[i] ^ b[i]; x; x &= (uint8_t)(x - 1))
            bits++;
    return bits;
}

Test(netsim, corruption_flips_exactly_one_bit)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.corrupt = 0.1;
    tern_netsim_link *link = make_link(&cfg, 17);
    uint8_t buf[200], got[200];
    const uint32_t total = 100000;
    uint32_t corrupted = 0;
    bool bit_seen[200 * 8] = {false};
    for (uint32_t i = 0; i < total; i++) {
        fill_payload(buf, i, sizeof(buf));
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), i), 0);
        cr_assert_eq(tern_netsim_link_recv(link, got, sizeof(got), i), (tern_ssize)sizeof(buf));
        unsigned bits = bits_differing(buf, got, sizeof(buf));
        cr_assert_leq(bits, 1, "datagram %u: %u bits changed", i, bits);
        if (bits) {
            corrupted++;
            for (size_t b = 0; b < sizeof(buf) * 8; b++)
                if ((buf[b / 8] ^ got[b / 8]) & (1u << (b % 8)))
                    bit_seen[b] = true;
        }
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.corrupted, corrupted);
    cr_assert(corrupted > 9000 && corrupted < 11000, "corrupted %u", corrupted);
    /* The flipped bit is spread over the whole datagram: first and last too. */
    cr_assert(bit_seen[0] && bit_seen[sizeof(buf) * 8 - 1]);
    tern_netsim_link_del(link);
}

Test(netsim, bottleneck_burst_fills_the_queue_then_drains_at_rate)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.rate_bytes_per_s = 1000000; /* 1000 bytes take exactly 1 ms */
    cfg.delay_ms = 5;
    tern_netsim_link *link = make_link(&cfg, 3);
    uint8_t buf[1000], got[1000];
    /* 2 MB at once into the default 64 KiB queue: 65 fit. */
    for (uint32_t i = 0; i < 2000; i++) {
        fill_payload(buf, i, sizeof(buf));
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 0), 0);
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.lost_queue, 2000 - 65);
    uint32_t received = 0;
    for (tern_ms now = 0; now < 200; now++) {
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            cr_assert_eq(payload_index(got), received);
            /* the k-th leaves the wire at k ms, then the delay */
            cr_assert_eq(now, received + 1 + 5);
            received++;
        }
    }
    cr_assert_eq(received, 65);
    tern_netsim_link_del(link);
}

Test(netsim, bottleneck_sustained_throughput_matches_rate)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    /* Not a whole number of microseconds per datagram: the fixed-point
     * accounting must not drift. */
    cfg.rate_bytes_per_s = 1234567;
    cfg.queue_bytes = 20000;
    tern_netsim_link *link = make_link(&cfg, 4);
    uint8_t buf[100], got[100];
    uint64_t bytes_in_window = 0;
    uint32_t index = 0;
    /* Offer 3 MB/s for 3 s; measure what comes out in [1 s, 3 s). */
    for (tern_ms now = 0; now < 3000; now++) {
        for (int k = 0; k < 30; k++, index++) {
            fill_payload(buf, index, sizeof(buf));
            cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), now), 0);
        }
        tern_ssize n;
        while ((n = tern_netsim_link_recv(link, got, sizeof(got), now)) > 0) {
            if (now >= 1000)
                bytes_in_window += (uint64_t)n;
        }
    }
    double rate = (double)bytes_in_window / 2.0;
    cr_assert(fabs(rate - 1234567.0) < 1234567.0 * 0.002, "rate %.0f B/s", rate);
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_gt(st.lost_queue, 0);
    /* What is left once offers stop is what the queue held: at most
     * queue_bytes, drained within queue_bytes / rate. */
    uint32_t left = 0;
    tern_ms last = 0;
    for (tern_ms now = 3000; tern_netsim_link_next(link) != UINT64_MAX; now++) {
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            left++;
            last = now;
        }
    }
    cr_assert_gt(left, 150);
    cr_assert_leq(left, 20000 / 100);
    cr_assert_leq(last, 2999 + 20000 * 1000 / 1234567 + 1);
    stats_of(link, &st);
    cr_assert_eq(st.offered, st.delivered + st.lost_queue);
    tern_netsim_link_del(link);
}

Test(netsim, bottleneck_queue_bytes_and_drain)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.rate_bytes_per_s = 1000000;
    cfg.queue_bytes = 3000;
    tern_netsim_link *link = make_link(&cfg, 8);
    uint8_t buf[1000];
    memset(buf, 0xab, sizeof(buf));
    for (int i = 0; i < 10; i++)
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 0), 0);
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.lost_queue, 7);
    /* 1 ms later 1000 bytes have left: room for exactly one more. */
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 1), 0);
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 1), 0);
    stats_of(link, &st);
    cr_assert_eq(st.lost_queue, 8);
    /* A datagram larger than the whole queue never fits. */
    uint8_t big[3001] = {0};
    cr_assert_eq(tern_netsim_link_send(link, big, sizeof(big), 100), 0);
    stats_of(link, &st);
    cr_assert_eq(st.lost_queue, 9);
    cr_assert_eq(st.offered, 13);
    tern_netsim_link_del(link);
}

Test(netsim, partitions_drop_exactly_what_is_offered_inside_the_window)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 50;
    cfg.n_partitions = 3;
    cfg.partitions[0] = (tern_netsim_partition){.start_ms = 100, .end_ms = 200};
    cfg.partitions[1] = (tern_netsim_partition){.start_ms = 500, .end_ms = 500}; /* empty */
    cfg.partitions[2] = (tern_netsim_partition){.start_ms = 700, .end_ms = 701};
    tern_netsim_link *link = make_link(&cfg, 21);
    uint8_t buf[8], got[8];
    bool arrived[1000] = {false};
    for (tern_ms now = 0; now < 1100; now++) {
        if (now < 1000) {
            fill_payload(buf, (uint32_t)now, sizeof(buf));
            cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), now), 0);
        }
        while (tern_netsim_link_recv(link, got, sizeof(got), now) > 0) {
            uint32_t index = payload_index(got);
            cr_assert_eq(now, index + 50);
            arrived[index] = true;
        }
    }
    for (uint32_t i = 0; i < 1000; i++) {
        bool dropped = (i >= 100 && i < 200) || i == 700;
        /* 99 is delivered at 149, inside the window: offer time decides. */
        cr_assert_eq(arrived[i], !dropped, "datagram %u", i);
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.lost_partition, 101);
    cr_assert_eq(st.delivered, 899);
    tern_netsim_link_del(link);
}

Test(netsim, recv_too_small_keeps_the_datagram)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    tern_netsim_link *link = make_link(&cfg, 0);
    uint8_t buf[100], got[100];
    fill_payload(buf, 5, sizeof(buf));
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 0), 0);

    /* Not due yet: 0 whatever the buffer. */
    cr_assert_eq(tern_netsim_link_recv(link, got, 0, 9), 0);
    cr_assert_eq(tern_netsim_link_recv(link, got, 99, 10), TERN_ERR_NOBUFS);
    cr_assert_eq(tern_netsim_link_recv(link, NULL, 0, 10), TERN_ERR_NOBUFS);
    cr_assert_eq(tern_netsim_link_next(link), 10);
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.delivered, 0);

    cr_assert_eq(tern_netsim_link_recv(link, got, 100, 10), 100);
    cr_assert_eq(memcmp(buf, got, sizeof(buf)), 0);
    cr_assert_eq(tern_netsim_link_recv(link, got, 100, 10), 0);
    cr_assert_eq(tern_netsim_link_next(link), UINT64_MAX);
    tern_netsim_link_del(link);
}

Test(netsim, cfg_check_rejects_bad_values)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cr_assert_eq(tern_netsim_cfg_check(&cfg), 0);
    cr_assert_eq(tern_netsim_cfg_check(NULL), TERN_ERR_INVAL);

    double *probabilities[] = {&cfg.loss,        &cfg.ge_p_good_bad, &cfg.ge_p_bad_good,
                               &cfg.ge_loss_bad, &cfg.reorder,       &cfg.duplicate,
                               &cfg.corrupt};
    const double bad[] = {-0.01, 1.01, NAN, -INFINITY, INFINITY};
    for (size_t p = 0; p < sizeof(probabilities) / sizeof(probabilities[0]); p++) {
        for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
            tern_netsim_cfg_default(&cfg);
            *probabilities[p] = bad[b];
            cr_assert_eq(tern_netsim_cfg_check(&cfg), TERN_ERR_RANGE, "field %zu value %g", p,
                         bad[b]);
            /* A failed new leaves *out NULL, whatever it held before. */
            tern_netsim_link *link = make_link(&(tern_netsim_cfg){0}, 1);
            tern_netsim_link *before = link;
            cr_assert_eq(tern_netsim_link_new(&link, &cfg, 1, NULL), TERN_ERR_RANGE);
            cr_assert_null(link);
            tern_netsim_link_del(before);
        }
        tern_netsim_cfg_default(&cfg);
        *probabilities[p] = 0.0;
        cr_assert_eq(tern_netsim_cfg_check(&cfg), 0);
        *probabilities[p] = 1.0;
        cr_assert_eq(tern_netsim_cfg_check(&cfg), 0);
    }

    tern_netsim_cfg_default(&cfg);
    cfg.n_partitions = 2;
    cfg.partitions[1] = (tern_netsim_partition){.start_ms = 10, .end_ms = 9};
    cr_assert_eq(tern_netsim_cfg_check(&cfg), TERN_ERR_RANGE);
    cfg.partitions[1].end_ms = 10;
    cr_assert_eq(tern_netsim_cfg_check(&cfg), 0);
    /* Partitions past n_partitions are ignored. */
    cfg.partitions[2] = (tern_netsim_partition){.start_ms = 10, .end_ms = 9};
    cr_assert_eq(tern_netsim_cfg_check(&cfg), 0);
    cfg.n_partitions = TERN_NETSIM_MAX_PARTITIONS + 1;
    cfg.partitions[2].end_ms = 10;
    cr_assert_eq(tern_netsim_cfg_check(&cfg), TERN_ERR_RANGE);

    tern_netsim_cfg_default(&cfg);
    cr_assert_eq(tern_netsim_link_new(NULL, &cfg, 1, NULL), TERN_ERR_INVAL);
    tern_netsim_link *link = NULL;
    cr_assert_eq(tern_netsim_link_new(&link, NULL, 1, NULL), TERN_ERR_INVAL);
}

Test(netsim, send_rejects_empty_datagrams)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    tern_netsim_link *link = make_link(&cfg, 0);
    uint8_t buf[4] = {0};
    cr_assert_eq(tern_netsim_link_send(link, buf, 0, 0), TERN_ERR_INVAL);
    cr_assert_eq(tern_netsim_link_send(link, NULL, 4, 0), TERN_ERR_INVAL);
    cr_assert_eq(tern_netsim_link_send(NULL, buf, 4, 0), TERN_ERR_INVAL);
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.offered, 0);
    cr_assert_eq(tern_netsim_link_next(link), UINT64_MAX);
    tern_netsim_link_del(link);
}

Test(netsim, max_pending_bounds_what_is_held)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    cfg.max_pending = 100;
    tern_netsim_link *link = make_link(&cfg, 0);
    uint8_t buf[16], got[16];
    for (uint32_t i = 0; i < 150; i++) {
        fill_payload(buf, i, sizeof(buf));
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 0), 0);
    }
    tern_netsim_stats st;
    stats_of(link, &st);
    cr_assert_eq(st.lost_overflow, 50);
    uint32_t received = 0;
    while (tern_netsim_link_recv(link, got, sizeof(got), 10) > 0) {
        cr_assert_eq(payload_index(got), received, "the first 100 are the ones kept");
        received++;
    }
    cr_assert_eq(received, 100);
    /* Room again once delivered. */
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 10), 0);
    stats_of(link, &st);
    cr_assert_eq(st.lost_overflow, 50);
    cr_assert_eq(tern_netsim_link_next(link), 20);
    tern_netsim_link_del(link);
}

Test(netsim, duplicate_that_does_not_fit_counts_as_overflow)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    cfg.duplicate = 1.0;
    cfg.max_pending = 5;
    tern_netsim_link *link = make_link(&cfg, 0);
    uint8_t buf[16] = {0};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 0), 0);
    tern_netsim_stats st;
    stats_of(link, &st);
    /* 2 + 2 held, the third original fits, its copy does not. */
    cr_assert_eq(st.duplicated, 3);
    cr_assert_eq(st.lost_overflow, 1);
    uint8_t got[16];
    int delivered = 0;
    while (tern_netsim_link_recv(link, got, sizeof(got), 10) > 0)
        delivered++;
    cr_assert_eq(delivered, 5);
    tern_netsim_link_del(link);
}

/* An allocator that counts live blocks and can be told to fail. */
typedef struct test_alloc {
    long live;
    long calls;
    long fail_at; /* the call number that fails; 0: never */
} test_alloc;

static void *test_malloc(size_t size, void *user_data)
{
    test_alloc *a = user_data;
    a->calls++;
    if (a->fail_at && a->calls == a->fail_at)
        return NULL;
    void *p = malloc(size);
    if (p)
        a->live++;
    return p;
}

static void test_free(void *ptr, void *user_data)
{
    test_alloc *a = user_data;
    if (ptr)
        a->live--;
    free(ptr);
}

Test(netsim, allocator_is_used_and_out_of_memory_changes_nothing)
{
    tern_netsim_cfg cfg;
    rich_cfg(&cfg);
    test_alloc counts = {0};
    tern_mem mem = {.malloc_fn = test_malloc, .free_fn = test_free, .user_data = &counts};
    tern_netsim_link *flaky = NULL;
    cr_assert_eq(tern_netsim_link_new(&flaky, &cfg, 1234, &mem), 0);
    tern_netsim_link *steady = make_link(&cfg, 1234);
    cr_assert_gt(counts.live, 0);

    uint8_t buf[PAYLOAD_MAX], got_a[PAYLOAD_MAX], got_b[PAYLOAD_MAX];
    uint32_t failures = 0;
    for (uint32_t i = 0; i < 3000; i++) {
        tern_ms now = i / 2;
        size_t len = fill_payload(buf, i, 40 + (i * 13u) % 900u);
        if (i % 3 == 0)
            counts.fail_at = counts.calls + 1 + i % 3;
        int rc;
        while ((rc = tern_netsim_link_send(flaky, buf, len, now)) == TERN_ERR_NOMEM)
            failures++;
        cr_assert_eq(rc, 0);
        counts.fail_at = 0;
        cr_assert_eq(tern_netsim_link_send(steady, buf, len, now), 0);
        for (;;) {
            tern_ssize a = tern_netsim_link_recv(flaky, got_a, sizeof(got_a), now);
            tern_ssize b = tern_netsim_link_recv(steady, got_b, sizeof(got_b), now);
            cr_assert_eq(a, b, "datagram %u", i);
            if (a <= 0)
                break;
            cr_assert_eq(memcmp(got_a, got_b, (size_t)a), 0);
        }
    }
    cr_assert_gt(failures, 0, "the allocator never failed a send");
    tern_netsim_stats sa, sb;
    stats_of(flaky, &sa);
    stats_of(steady, &sb);
    cr_assert_eq(memcmp(&sa, &sb, sizeof(sa)), 0);
    cr_assert_neq(tern_netsim_link_next(flaky), UINT64_MAX, "deletes with datagrams pending");
    tern_netsim_link_del(flaky);
    tern_netsim_link_del(steady);
    cr_assert_eq(counts.live, 0);
}

Test(netsim, time_going_backwards_is_treated_as_the_latest_time)
{
    tern_netsim_cfg cfg;
    tern_netsim_cfg_default(&cfg);
    cfg.delay_ms = 10;
    tern_netsim_link *link = make_link(&cfg, 0);
    uint8_t buf[4] = {1, 2, 3, 4};
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 100), 0);
    cr_assert_eq(tern_netsim_link_send(link, buf, sizeof(buf), 50), 0);
    uint8_t got[4];
    cr_assert_eq(tern_netsim_link_recv(link, got, sizeof(got), 109), 0);
    cr_assert_eq(tern_netsim_link_recv(link, got, sizeof(got), 110), 4);
    cr_assert_eq(tern_netsim_link_recv(link, got, sizeof(got), 110), 4);
    tern_netsim_link_del(link);
}
