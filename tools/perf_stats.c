/* Sample statistics for tern-perf (see perf_stats.h). */
#include "tools/perf_stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tern/error.h"

/* The first allocation; the memory doubles from there up to cap. */
#define ALLOC_FIRST 1024
#define RNG_SEED UINT64_C(0x9E3779B97F4A7C15)

static void *default_malloc(size_t size, void *user)
{
    (void)user;
    return malloc(size);
}

static void default_free(void *ptr, void *user)
{
    (void)user;
    free(ptr);
}

int tern_perf_stats_init(tern_perf_stats *s, size_t cap, const tern_mem *mem)
{
    if (!s)
        return TERN_ERR_INVAL;
    memset(s, 0, sizeof(*s));
    if (mem) {
        s->mem = *mem;
    } else {
        s->mem.malloc_fn = default_malloc;
        s->mem.free_fn = default_free;
    }
    s->cap = cap ? cap : TERN_PERF_SAMPLES_DEFAULT;
    s->rng = RNG_SEED;
    s->sorted = true;
    return 0;
}

void tern_perf_stats_free(tern_perf_stats *s)
{
    if (!s)
        return;
    if (s->kept)
        s->mem.free_fn(s->kept, s->mem.user_data);
    tern_mem mem = s->mem;
    size_t cap = s->cap;
    memset(s, 0, sizeof(*s));
    s->mem = mem;
    s->cap = cap;
    s->rng = RNG_SEED;
    s->sorted = true;
}

/* xorshift64*: enough for choosing reservoir slots, and it replays. */
static uint64_t next_random(tern_perf_stats *s)
{
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return x * UINT64_C(0x2545F4914F6CDD1D);
}

/* Makes room for one more kept value; false if the memory cannot grow. */
static bool grow(tern_perf_stats *s)
{
    if (s->n_kept < s->alloc)
        return true;
    size_t want = s->alloc ? s->alloc * 2 : ALLOC_FIRST;
    if (want > s->cap)
        want = s->cap;
    if (want > SIZE_MAX / sizeof(double))
        return false;
    double *p = s->mem.malloc_fn(want * sizeof(double), s->mem.user_data);
    if (!p)
        return false;
    if (s->kept) {
        memcpy(p, s->kept, s->n_kept * sizeof(double));
        s->mem.free_fn(s->kept, s->mem.user_data);
    }
    s->kept = p;
    s->alloc = want;
    return true;
}

int tern_perf_stats_add(tern_perf_stats *s, double v)
{
    if (!s || isnan(v))
        return TERN_ERR_INVAL;
    if (s->count == 0) {
        s->min = s->max = v;
    } else {
        s->min = v < s->min ? v : s->min;
        s->max = v > s->max ? v : s->max;
        s->jitter_sum += fabs(v - s->prev);
    }
    s->prev = v;
    s->sum += v;
    s->count++;

    if (s->n_kept < s->cap) {
        if (!grow(s)) {
            s->dropped++;
            return TERN_ERR_NOMEM;
        }
        s->kept[s->n_kept++] = v;
        s->sorted = false;
        return 0;
    }
    /* Algorithm R: the count-th value replaces a random slot with
     * probability cap / count, so every value seen is equally likely to be
     * kept. Values refused for memory are not part of the count. */
    uint64_t seen = s->count - s->dropped;
    uint64_t j = next_random(s) % seen;
    if (j < s->cap) {
        s->kept[j] = v;
        s->sorted = false;
    }
    return 0;
}

double tern_perf_stats_min(const tern_perf_stats *s)
{
    return s && s->count ? s->min : 0.0;
}

double tern_perf_stats_max(const tern_perf_stats *s)
{
    return s && s->count ? s->max : 0.0;
}

double tern_perf_stats_mean(const tern_perf_stats *s)
{
    return s && s->count ? s->sum / (double)s->count : 0.0;
}

double tern_perf_stats_jitter(const tern_perf_stats *s)
{
    return s && s->count > 1 ? s->jitter_sum / (double)(s->count - 1) : 0.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void sort_kept(tern_perf_stats *s)
{
    if (!s->sorted) {
        qsort(s->kept, s->n_kept, sizeof(double), cmp_double);
        s->sorted = true;
    }
}

double tern_perf_stats_percentile(tern_perf_stats *s, double p)
{
    if (!s || s->n_kept == 0)
        return 0.0;
    sort_kept(s);
    if (isnan(p) || p <= 0.0)
        return s->kept[0];
    if (p >= 100.0)
        return s->kept[s->n_kept - 1];
    /* The small epsilon keeps p99 of 100 values at rank 99, not 100, when
     * p / 100 * n comes out a hair above an integer. */
    double rank = ceil(p / 100.0 * (double)s->n_kept - 1e-9);
    size_t r = rank < 1.0 ? 1 : (size_t)rank;
    if (r > s->n_kept)
        r = s->n_kept;
    return s->kept[r - 1];
}

size_t tern_perf_stats_cdf(tern_perf_stats *s, double *x, double *y, size_t max_points)
{
    if (!s || !x || !y || s->n_kept == 0 || max_points < 2)
        return 0;
    sort_kept(s);
    size_t n = s->n_kept;
    size_t m = n < max_points ? n : max_points;
    if (m < 2)
        m = n == 1 ? 1 : 2;
    for (size_t i = 0; i < m; i++) {
        /* Ranks 1..n spread evenly, first and last included. */
        size_t r = m == 1 ? 1 : 1 + (size_t)((double)i * (double)(n - 1) / (double)(m - 1) + 0.5);
        x[i] = s->kept[r - 1];
        y[i] = (double)r / (double)n;
    }
    return m;
}
