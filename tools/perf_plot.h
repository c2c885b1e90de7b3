/* tern-perf's plots: a line chart as one self-contained SVG file (no
 * scripts, no external fonts or styles), for the latency CDF and the
 * throughput over time.
 *
 * The chart has a title, an x and a y axis with "nice" ticks (steps of 1, 2
 * or 5 times a power of ten) and their labels, an axis label under the x
 * axis and beside the y axis, light grid lines, one <polyline> per series
 * with exactly its n points, and a legend naming each series. Text is XML
 * escaped. Pure: writes only to the stream it is given. */
#ifndef TERN_TOOLS_PERF_PLOT_H
#define TERN_TOOLS_PERF_PLOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define TERN_PERF_PLOT_SERIES_MAX 8
#define TERN_PERF_PLOT_WIDTH 800
#define TERN_PERF_PLOT_HEIGHT 480

typedef struct tern_perf_plot_series {
    const char *name;    /* for the legend */
    const double *x, *y; /* n points each, finite */
    size_t n;
} tern_perf_plot_series;

typedef struct tern_perf_plot {
    const char *title;
    const char *x_label, *y_label;
    const tern_perf_plot_series *series;
    size_t n_series;  /* 0..TERN_PERF_PLOT_SERIES_MAX */
    bool y_from_zero; /* the y axis starts at 0 (or below, for negative data) */
    bool x_from_zero; /* the same for x */
} tern_perf_plot;

/* Ticks over [lo, hi]: a step of 1, 2 or 5 times a power of ten giving
 * about `target` intervals, and the range widened outwards to multiples of
 * it. first <= lo, last >= hi, n = (last - first) / step + 1 ticks. A
 * degenerate range (lo == hi) is widened around lo first. */
typedef struct tern_perf_ticks {
    double first, last, step;
    unsigned n;
    int decimals; /* digits after the point that show the step exactly */
} tern_perf_ticks;

/* TERN_ERR_INVAL for a non-finite bound, lo > hi or target 0. */
int tern_perf_plot_ticks(double lo, double hi, unsigned target, tern_perf_ticks *out);

/* Writes the chart to out. TERN_ERR_INVAL (NULL, too many series, a
 * series with NULL points, a non-finite value), TERN_ERR_IO (the stream
 * reported an error). */
int tern_perf_plot_svg(FILE *out, const tern_perf_plot *plot);

#endif /* TERN_TOOLS_PERF_PLOT_H */
