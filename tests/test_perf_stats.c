/* tern-perf's statistics (tools/perf_stats.c) and SVG writer
 * (tools/perf_plot.c): nearest-rank percentiles on known data, jitter, the
 * exact aggregates, bounded sample memory (reservoir past the cap, counted
 * drops when memory runs out), the CDF points, "nice" axis ticks, and an
 * SVG that is well formed with the expected elements (checked as text:
 * <svg ... </svg>, one polyline per series with exactly its points, axis
 * labels, escaped text). */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/error.h"
#include "tools/perf_plot.h"
#include "tools/perf_stats.h"

#define EPS 1e-9

/* ---- Statistics ---------------------------------------------------------- */

Test(perf_stats, percentiles_on_one_to_hundred)
{
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 0, NULL), 0);
    /* 1..100 in a scrambled order: 37 is coprime with 100. */
    for (int i = 0; i < 100; i++)
        cr_assert_eq(tern_perf_stats_add(&s, (double)((i * 37) % 100 + 1)), 0);
    cr_assert_eq(s.count, 100);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 0), 1.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 1), 1.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 50), 50.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 90), 90.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 99), 99.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 99.9), 100.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 100), 100.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 150), 100.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, -3), 1.0, EPS);
    cr_assert_float_eq(tern_perf_stats_min(&s), 1.0, EPS);
    cr_assert_float_eq(tern_perf_stats_max(&s), 100.0, EPS);
    cr_assert_float_eq(tern_perf_stats_mean(&s), 50.5, EPS);
    /* Adding after a percentile re-sorts. */
    cr_assert_eq(tern_perf_stats_add(&s, 0.5), 0);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 0), 0.5, EPS);
    tern_perf_stats_free(&s);
}

Test(perf_stats, nearest_rank_on_small_sets)
{
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 0, NULL), 0);
    /* Empty: everything is 0. */
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 50), 0.0, EPS);
    cr_assert_float_eq(tern_perf_stats_mean(&s), 0.0, EPS);
    cr_assert_float_eq(tern_perf_stats_jitter(&s), 0.0, EPS);
    cr_assert_float_eq(tern_perf_stats_max(&s), 0.0, EPS);
    /* {10, 20, 30, 40}: p25 is rank 1, p26 rank 2, p50 rank 2, p75 rank 3. */
    const double v[] = {40, 10, 30, 20};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(tern_perf_stats_add(&s, v[i]), 0);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 25), 10.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 26), 20.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 50), 20.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 75), 30.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 76), 40.0, EPS);
    tern_perf_stats_free(&s);

    cr_assert_eq(tern_perf_stats_add(&s, 7.0), 0);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 0), 7.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 99.9), 7.0, EPS);
    cr_assert_eq(tern_perf_stats_add(&s, NAN), TERN_ERR_INVAL);
    cr_assert_eq(s.count, 1, "a NaN is not counted");
    cr_assert_eq(tern_perf_stats_add(NULL, 1.0), TERN_ERR_INVAL);
    cr_assert_eq(tern_perf_stats_init(NULL, 0, NULL), TERN_ERR_INVAL);
    tern_perf_stats_free(&s);
}

Test(perf_stats, jitter_is_mean_absolute_difference_in_arrival_order)
{
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 0, NULL), 0);
    /* |3-1| + |2-3| + |6-2| = 7 over 3 differences. */
    const double v[] = {1, 3, 2, 6};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(tern_perf_stats_add(&s, v[i]), 0);
    cr_assert_float_eq(tern_perf_stats_jitter(&s), 7.0 / 3.0, EPS);
    /* Sorting for a percentile does not change it: it is arrival order. */
    (void)tern_perf_stats_percentile(&s, 50);
    cr_assert_eq(tern_perf_stats_add(&s, 6.0), 0);
    cr_assert_float_eq(tern_perf_stats_jitter(&s), 7.0 / 4.0, EPS);
    tern_perf_stats_free(&s);

    /* A constant series has none. */
    for (int i = 0; i < 10; i++)
        cr_assert_eq(tern_perf_stats_add(&s, 5.0), 0);
    cr_assert_float_eq(tern_perf_stats_jitter(&s), 0.0, EPS);
    tern_perf_stats_free(&s);
}

Test(perf_stats, sample_memory_is_bounded_by_the_cap)
{
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 1000, NULL), 0);
    const int n = 200000;
    for (int i = 0; i < n; i++)
        cr_assert_eq(tern_perf_stats_add(&s, (double)i), 0);
    /* The aggregates are exact... */
    cr_assert_eq(s.count, (uint64_t)n);
    cr_assert_float_eq(tern_perf_stats_min(&s), 0.0, EPS);
    cr_assert_float_eq(tern_perf_stats_max(&s), (double)(n - 1), EPS);
    cr_assert_float_eq(tern_perf_stats_mean(&s), (double)(n - 1) / 2.0, 1e-6);
    cr_assert_float_eq(tern_perf_stats_jitter(&s), 1.0, EPS);
    /* ...the memory is not... */
    cr_assert_eq(s.n_kept, 1000);
    cr_assert_leq(s.alloc, 1000);
    cr_assert_eq(s.dropped, 0);
    /* ...and the reservoir is a uniform sample of everything, not the first
     * 1000: its median is near the middle and its tail near the top. */
    double p50 = tern_perf_stats_percentile(&s, 50);
    double p99 = tern_perf_stats_percentile(&s, 99);
    cr_assert(fabs(p50 - n / 2.0) < n * 0.06, "p50 %f", p50);
    cr_assert(p99 > n * 0.95, "p99 %f", p99);
    cr_assert(tern_perf_stats_percentile(&s, 0) < n * 0.01);
    tern_perf_stats_free(&s);
    cr_assert_null(s.kept);
    cr_assert_eq(s.cap, 1000, "free keeps the cap for reuse");
}

Test(perf_stats, default_cap_is_a_million)
{
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 0, NULL), 0);
    cr_assert_eq(s.cap, TERN_PERF_SAMPLES_DEFAULT);
    cr_assert_eq(TERN_PERF_SAMPLES_DEFAULT, 1u << 20);
    cr_assert_null(s.kept, "nothing is allocated before the first value");
    tern_perf_stats_free(&s);
}

typedef struct budget {
    int allocs_left;
} budget;

static void *limited_malloc(size_t size, void *user)
{
    budget *b = user;
    if (b->allocs_left <= 0)
        return NULL;
    b->allocs_left--;
    return malloc(size);
}

static void plain_free(void *p, void *user)
{
    (void)user;
    free(p);
}

Test(perf_stats, out_of_memory_counts_the_drop_and_keeps_aggregates)
{
    budget b = {1}; /* the first block (1024 values), no growth */
    tern_mem mem = {limited_malloc, plain_free, &b};
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 5000, &mem), 0);
    int nomem = 0;
    for (int i = 0; i < 3000; i++) {
        int rc = tern_perf_stats_add(&s, (double)i);
        cr_assert(rc == 0 || rc == TERN_ERR_NOMEM);
        nomem += rc == TERN_ERR_NOMEM;
    }
    cr_assert_eq(s.n_kept, 1024);
    cr_assert_eq(s.dropped, 3000 - 1024);
    cr_assert_eq(nomem, 3000 - 1024);
    cr_assert_eq(s.count, 3000);
    cr_assert_float_eq(tern_perf_stats_max(&s), 2999.0, EPS);
    cr_assert_float_eq(tern_perf_stats_percentile(&s, 100), 1023.0, EPS);
    tern_perf_stats_free(&s);
}

Test(perf_stats, cdf_points_span_the_samples)
{
    tern_perf_stats s;
    cr_assert_eq(tern_perf_stats_init(&s, 0, NULL), 0);
    double x[8], y[8];
    cr_assert_eq(tern_perf_stats_cdf(&s, x, y, 8), 0, "empty");
    for (int i = 10; i >= 1; i--)
        cr_assert_eq(tern_perf_stats_add(&s, (double)i), 0);
    size_t n = tern_perf_stats_cdf(&s, x, y, 5);
    cr_assert_eq(n, 5);
    cr_assert_float_eq(x[0], 1.0, EPS);
    cr_assert_float_eq(y[0], 0.1, EPS);
    cr_assert_float_eq(x[4], 10.0, EPS);
    cr_assert_float_eq(y[4], 1.0, EPS);
    for (size_t i = 1; i < n; i++) {
        cr_assert_geq(x[i], x[i - 1]);
        cr_assert_gt(y[i], y[i - 1]);
        /* y is the fraction of values <= x: for 1..10, x / 10. */
        cr_assert_float_eq(y[i], x[i] / 10.0, EPS);
    }
    /* More room than values: one point per value. */
    cr_assert_eq(tern_perf_stats_cdf(&s, x, y, 8), 8);
    double x2[16], y2[16];
    cr_assert_eq(tern_perf_stats_cdf(&s, x2, y2, 16), 10);
    cr_assert_eq(tern_perf_stats_cdf(&s, x2, y2, 1), 0);
    tern_perf_stats_free(&s);
}

/* ---- Ticks ---------------------------------------------------------------- */

Test(perf_plot, nice_ticks)
{
    tern_perf_ticks t;
    cr_assert_eq(tern_perf_plot_ticks(0, 97, 8, &t), 0);
    /* 97 / 8 = 12.1 -> 20. */
    cr_assert_float_eq(t.step, 20.0, EPS);
    cr_assert_float_eq(t.first, 0.0, EPS);
    cr_assert_float_eq(t.last, 100.0, EPS);
    cr_assert_eq(t.n, 6);
    cr_assert_eq(t.decimals, 0);

    cr_assert_eq(tern_perf_plot_ticks(0.013, 0.087, 8, &t), 0);
    cr_assert_float_eq(t.step, 0.01, EPS);
    cr_assert_float_eq(t.first, 0.01, EPS);
    cr_assert_float_eq(t.last, 0.09, EPS);
    cr_assert_eq(t.n, 9);
    cr_assert_eq(t.decimals, 2);

    /* 0..1 by 0.2 (0.125 -> 0.2): a CDF's y axis. */
    cr_assert_eq(tern_perf_plot_ticks(0, 1, 8, &t), 0);
    cr_assert_float_eq(t.step, 0.2, EPS);
    cr_assert_eq(t.n, 6);
    cr_assert_eq(t.decimals, 1);

    /* A degenerate range is widened around the value. */
    cr_assert_eq(tern_perf_plot_ticks(5, 5, 8, &t), 0);
    cr_assert_lt(t.first, 5.0);
    cr_assert_gt(t.last, 5.0);
    cr_assert_eq(tern_perf_plot_ticks(0, 0, 8, &t), 0);
    cr_assert_lt(t.first, 0.0);

    cr_assert_eq(tern_perf_plot_ticks(2, 1, 8, &t), TERN_ERR_INVAL);
    cr_assert_eq(tern_perf_plot_ticks(NAN, 1, 8, &t), TERN_ERR_INVAL);
    cr_assert_eq(tern_perf_plot_ticks(0, INFINITY, 8, &t), TERN_ERR_INVAL);
    cr_assert_eq(tern_perf_plot_ticks(0, 1, 0, &t), TERN_ERR_INVAL);
}

/* ---- SVG -------------------------------------------------------------------- */

typedef struct svg_text {
    char *buf;
    size_t len;
} svg_text;

static int render(const tern_perf_plot *p, svg_text *out)
{
    out->buf = NULL;
    out->len = 0;
    FILE *f = open_memstream(&out->buf, &out->len);
    cr_assert_not_null(f);
    int rc = tern_perf_plot_svg(f, p);
    cr_assert_eq(fclose(f), 0);
    return rc;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The number of "x,y" pairs in the points attribute of the k-th polyline. */
static size_t polyline_points(const char *svg, size_t k)
{
    const char *p = svg;
    for (size_t i = 0; i <= k; i++) {
        p = strstr(p, "<polyline");
        cr_assert_not_null(p, "polyline %zu missing", k);
        if (i < k)
            p++;
    }
    p = strstr(p, "points=\"");
    cr_assert_not_null(p);
    p += 8;
    const char *end = strchr(p, '"');
    cr_assert_not_null(end);
    if (end == p)
        return 0;
    size_t pairs = 1;
    for (const char *q = p; q < end; q++) {
        if (*q == ' ')
            pairs++;
        else
            cr_assert(*q == ',' || *q == '.' || *q == '-' || (*q >= '0' && *q <= '9'),
                      "unexpected '%c' in points", *q);
    }
    cr_assert_eq(count(p, ",") - count(end, ","), pairs, "one comma per pair");
    return pairs;
}

Test(perf_plot, svg_has_the_expected_elements)
{
    const double x1[] = {0.5, 1, 2, 4, 8}, y1[] = {0.1, 0.3, 0.5, 0.9, 1.0};
    const double x2[] = {1, 2, 3}, y2[] = {0.2, 0.6, 1.0};
    tern_perf_plot_series series[2] = {{"reliable", x1, y1, 5}, {"sequenced", x2, y2, 3}};
    tern_perf_plot p = {
        "RTT <CDF> & more", "round-trip time (ms)", "fraction of messages", series, 2, true, true};
    svg_text t;
    cr_assert_eq(render(&p, &t), 0);
    const char *svg = t.buf;
    cr_assert_eq(strncmp(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39), 0, "%.60s", svg);
    cr_assert_eq(strcmp(svg + t.len - 7, "</svg>\n"), 0);
    cr_assert_eq(count(svg, "<svg"), 1);
    cr_assert_eq(count(svg, "</svg>"), 1);
    cr_assert_eq(count(svg, "<polyline"), 2);
    cr_assert_eq(polyline_points(svg, 0), 5);
    cr_assert_eq(polyline_points(svg, 1), 3);
    /* Titles, axis labels and the legend, escaped. */
    cr_assert_not_null(strstr(svg, ">RTT &lt;CDF&gt; &amp; more</text>"));
    cr_assert_not_null(strstr(svg, "class=\"x-label\""));
    cr_assert_not_null(strstr(svg, ">round-trip time (ms)</text>"));
    cr_assert_not_null(strstr(svg, "class=\"y-label\""));
    cr_assert_not_null(strstr(svg, ">fraction of messages</text>"));
    cr_assert_not_null(strstr(svg, ">reliable</text>"));
    cr_assert_not_null(strstr(svg, ">sequenced</text>"));
    /* Two axes; ticks with labels: x 0..8 by 1 (9), y 0..1 by 0.2 (6). */
    cr_assert_eq(count(svg, "class=\"axis\""), 2);
    cr_assert_eq(count(svg, "class=\"tick\""), 9 + 6);
    cr_assert_eq(count(svg, "class=\"tick-label\""), 9 + 6);
    cr_assert_not_null(strstr(svg, ">0.4</text>"));
    cr_assert_not_null(strstr(svg, ">8</text>"));
    /* Every element opened is closed: each line is one self-closing
     * element or a <text>...</text>, and tags balance. */
    cr_assert_eq(count(svg, "<text"), count(svg, "</text>"));
    cr_assert_eq(count(svg, "<"), count(svg, ">"));
    cr_assert_null(strstr(svg, "nan"));
    cr_assert_null(strstr(svg, "inf"));
    free(t.buf);
}

Test(perf_plot, points_stay_inside_the_canvas)
{
    const double x[] = {0, 1, 2, 3}, y[] = {5, 120, 80, 99.5};
    tern_perf_plot_series s = {"goodput", x, y, 4};
    tern_perf_plot p = {"throughput", "time (s)", "Mbit/s", &s, 1, true, true};
    svg_text t;
    cr_assert_eq(render(&p, &t), 0);
    const char *pts = strstr(strstr(t.buf, "<polyline"), "points=\"") + 8;
    for (int i = 0; i < 4; i++) {
        double px, py;
        cr_assert_eq(sscanf(pts, "%lf,%lf", &px, &py), 2);
        cr_assert(px >= 0 && px <= TERN_PERF_PLOT_WIDTH, "x %f", px);
        cr_assert(py >= 0 && py <= TERN_PERF_PLOT_HEIGHT, "y %f", py);
        /* The largest y is highest on the page (smallest pixel y). */
        if (i == 1)
            cr_assert_lt(py, TERN_PERF_PLOT_HEIGHT / 2.0);
        pts = strchr(pts, ' ');
        if (pts)
            pts++;
    }
    free(t.buf);
}

Test(perf_plot, empty_and_bad_input)
{
    /* No data at all still makes a well-formed chart. */
    tern_perf_plot_series s = {"none", NULL, NULL, 0};
    tern_perf_plot p = {"empty", "x", "y", &s, 1, true, true};
    svg_text t;
    cr_assert_eq(render(&p, &t), 0);
    cr_assert_eq(strncmp(t.buf, "<svg", 4), 0);
    cr_assert_eq(strcmp(t.buf + t.len - 7, "</svg>\n"), 0);
    cr_assert_eq(polyline_points(t.buf, 0), 0);
    free(t.buf);

    const double x[] = {0, NAN}, y[] = {1, 2};
    tern_perf_plot_series bad = {"bad", x, y, 2};
    p.series = &bad;
    cr_assert_eq(render(&p, &t), TERN_ERR_INVAL);
    free(t.buf);

    tern_perf_plot_series many[TERN_PERF_PLOT_SERIES_MAX + 1];
    memset(many, 0, sizeof(many));
    p.series = many;
    p.n_series = TERN_PERF_PLOT_SERIES_MAX + 1;
    cr_assert_eq(render(&p, &t), TERN_ERR_INVAL);
    free(t.buf);

    tern_perf_plot_series nulls = {"nulls", NULL, y, 2};
    p.series = &nulls;
    p.n_series = 1;
    cr_assert_eq(render(&p, &t), TERN_ERR_INVAL);
    free(t.buf);
    cr_assert_eq(tern_perf_plot_svg(NULL, &p), TERN_ERR_INVAL);
}
