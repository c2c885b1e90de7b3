/* tern-perf's statistics: a latency (or any) sample set with exact count,
 * min, max, mean and jitter, and percentiles from a bounded sample memory.
 *
 * Every value added updates the exact aggregates. The values themselves are
 * kept for percentiles up to a cap (default TERN_PERF_SAMPLES_DEFAULT); past
 * it, reservoir sampling (Vitter's algorithm R, with a fixed-seed
 * generator, so a run replays) keeps a uniform sample of everything seen,
 * so memory stays bounded and percentiles stay unbiased estimates. Below the
 * cap they are exact.
 *
 * Percentiles use the nearest-rank definition on the kept samples sorted
 * ascending: p in [0, 100], rank = ceil(p / 100 * n), the value at that rank
 * (1-based), and p = 0 gives the smallest. So on 1..100, p50 = 50, p99 = 99
 * and p99.9 = 100.
 *
 * Jitter is the mean absolute difference of consecutive values, in the
 * order they were added (RFC 3550's D without its smoothing):
 * sum |x[i] - x[i-1]| / (count - 1), 0 for fewer than two values.
 *
 * Not thread-safe; pure (no I/O, no clock). */
#ifndef TERN_TOOLS_PERF_STATS_H
#define TERN_TOOLS_PERF_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/common.h"

#define TERN_PERF_SAMPLES_DEFAULT ((size_t)1 << 20)

typedef struct tern_perf_stats {
    tern_mem mem;
    double *kept;     /* the sample memory, grown on demand up to cap */
    size_t n_kept;    /* values in kept */
    size_t alloc;     /* kept's allocated length */
    size_t cap;       /* most values ever kept */
    uint64_t count;   /* values added */
    uint64_t dropped; /* values that could not be kept for lack of memory */
    double min, max, sum;
    double prev;       /* the last value, for jitter */
    double jitter_sum; /* sum of |x[i] - x[i-1]| */
    uint64_t rng;      /* reservoir sampling state */
    bool sorted;       /* kept is sorted ascending */
} tern_perf_stats;

/* Sets up an empty set keeping at most cap values (0: the default). mem:
 * NULL for malloc/free; copied. Allocates nothing yet. TERN_ERR_INVAL for
 * NULL. */
int tern_perf_stats_init(tern_perf_stats *s, size_t cap, const tern_mem *mem);
/* Frees the sample memory; the set is empty afterwards and may be reused. */
void tern_perf_stats_free(tern_perf_stats *s);

/* Adds one value. The exact aggregates always count it; if the sample
 * memory cannot grow it is not kept for percentiles, counted in dropped,
 * and TERN_ERR_NOMEM returned. A NaN is refused with TERN_ERR_INVAL and
 * not counted. */
int tern_perf_stats_add(tern_perf_stats *s, double v);

/* Empty set: min, max, mean, jitter and percentiles are 0. */
double tern_perf_stats_min(const tern_perf_stats *s);
double tern_perf_stats_max(const tern_perf_stats *s);
double tern_perf_stats_mean(const tern_perf_stats *s);
double tern_perf_stats_jitter(const tern_perf_stats *s);
/* The nearest-rank percentile above; p is clamped to [0, 100]. Sorts the
 * kept values (once, until the next add). */
double tern_perf_stats_percentile(tern_perf_stats *s, double p);

/* The empirical CDF as at most max_points points (x = value, y = fraction
 * of values <= x, the last point's y is 1), evenly spaced in rank over the
 * kept values, always including the smallest and the largest. Returns the
 * number of points written (0 for an empty set or max_points < 2). */
size_t tern_perf_stats_cdf(tern_perf_stats *s, double *x, double *y, size_t max_points);

#endif /* TERN_TOOLS_PERF_STATS_H */
