/* The SVG line chart behind perf_plot.h. */
#include "tools/perf_plot.h"

#include <math.h>

#include "tern/error.h"

#define MARGIN_LEFT 80
#define MARGIN_RIGHT 30
#define MARGIN_TOP 50
#define MARGIN_BOTTOM 60
#define TICKS_TARGET 8
/* Step decimals are capped so a tiny step cannot ask printf for 300 digits. */
#define DECIMALS_MAX 9

static const char *const colors[TERN_PERF_PLOT_SERIES_MAX] = {
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
};

/* 1, 2 or 5 times a power of ten, the smallest not below raw. */
static double nice_step(double raw)
{
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    double nice = f <= 1.0 ? 1.0 : f <= 2.0 ? 2.0 : f <= 5.0 ? 5.0 : 10.0;
    return nice * mag;
}

int tern_perf_plot_ticks(double lo, double hi, unsigned target, tern_perf_ticks *out)
{
    if (!out || !isfinite(lo) || !isfinite(hi) || lo > hi || target == 0)
        return TERN_ERR_INVAL;
    if (lo == hi) {
        double pad = lo == 0.0 ? 1.0 : fabs(lo) * 0.1;
        lo -= pad;
        hi += pad;
    }
    double step = nice_step((hi - lo) / (double)target);
    if (!isfinite(step) || step <= 0.0)
        return TERN_ERR_INVAL;
    /* A hair of slack so that a bound already on a tick is not pushed out
     * by rounding. */
    double first = floor(lo / step + 1e-9) * step;
    double last = ceil(hi / step - 1e-9) * step;
    out->first = first;
    out->last = last;
    out->step = step;
    out->n = (unsigned)((last - first) / step + 0.5) + 1;
    int decimals = (int)ceil(-log10(step) - 1e-9);
    out->decimals = decimals < 0 ? 0 : decimals > DECIMALS_MAX ? DECIMALS_MAX : decimals;
    return 0;
}

static void put_escaped(FILE *out, const char *text)
{
    for (const char *p = text ? text : ""; *p; p++) {
        switch (*p) {
        case '<':
            fputs("&lt;", out);
            break;
        case '>':
            fputs("&gt;", out);
            break;
        case '&':
            fputs("&amp;", out);
            break;
        case '"':
            fputs("&quot;", out);
            break;
        case '\'':
            fputs("&apos;", out);
            break;
        default:
            /* Control characters are not allowed in XML 1.0 text. */
            if ((unsigned char)*p >= 0x20 || *p == '\t' || *p == '\n')
                fputc(*p, out);
        }
    }
}

typedef struct frame {
    tern_perf_ticks xt, yt;
    double x0, y0, w, h; /* the plot area in pixels */
} frame;

static double px_x(const frame *f, double x)
{
    return f->x0 + (x - f->xt.first) / (f->xt.last - f->xt.first) * f->w;
}

static double px_y(const frame *f, double y)
{
    return f->y0 + f->h - (y - f->yt.first) / (f->yt.last - f->yt.first) * f->h;
}

static int check_and_range(const tern_perf_plot *p, double *xlo, double *xhi, double *ylo,
                           double *yhi)
{
    bool any = false;
    for (size_t i = 0; i < p->n_series; i++) {
        const tern_perf_plot_series *s = &p->series[i];
        if (s->n > 0 && (!s->x || !s->y))
            return TERN_ERR_INVAL;
        for (size_t k = 0; k < s->n; k++) {
            if (!isfinite(s->x[k]) || !isfinite(s->y[k]))
                return TERN_ERR_INVAL;
            if (!any) {
                *xlo = *xhi = s->x[k];
                *ylo = *yhi = s->y[k];
                any = true;
            }
            *xlo = fmin(*xlo, s->x[k]);
            *xhi = fmax(*xhi, s->x[k]);
            *ylo = fmin(*ylo, s->y[k]);
            *yhi = fmax(*yhi, s->y[k]);
        }
    }
    if (!any) {
        *xlo = *ylo = 0.0;
        *xhi = *yhi = 1.0;
    }
    if (p->x_from_zero && *xlo > 0.0)
        *xlo = 0.0;
    if (p->y_from_zero && *ylo > 0.0)
        *ylo = 0.0;
    return 0;
}

/* The i-th tick's value; a zero that rounding made -0.0000001 prints as 0. */
static double tick_value(const tern_perf_ticks *t, unsigned i)
{
    double v = t->first + t->step * (double)i;
    return fabs(v) < t->step * 1e-9 ? 0.0 : v;
}

static void axes(FILE *out, const frame *f, const tern_perf_plot *p)
{
    /* Grid and ticks: x. */
    for (unsigned i = 0; i < f->xt.n; i++) {
        double v = tick_value(&f->xt, i);
        double x = px_x(f, v);
        fprintf(out,
                "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                "stroke=\"#e0e0e0\"/>\n",
                x, f->y0, x, f->y0 + f->h);
        fprintf(out,
                "<line class=\"tick\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                "stroke=\"#000\"/>\n",
                x, f->y0 + f->h, x, f->y0 + f->h + 5);
        fprintf(out,
                "<text class=\"tick-label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.*f"
                "</text>\n",
                x, f->y0 + f->h + 20, f->xt.decimals, v);
    }
    /* Grid and ticks: y. */
    for (unsigned i = 0; i < f->yt.n; i++) {
        double v = tick_value(&f->yt, i);
        double y = px_y(f, v);
        fprintf(out,
                "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                "stroke=\"#e0e0e0\"/>\n",
                f->x0, y, f->x0 + f->w, y);
        fprintf(out,
                "<line class=\"tick\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                "stroke=\"#000\"/>\n",
                f->x0 - 5, y, f->x0, y);
        fprintf(out,
                "<text class=\"tick-label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.*f"
                "</text>\n",
                f->x0 - 8, y + 4, f->yt.decimals, v);
    }
    /* The axes themselves, over the grid. */
    fprintf(out,
            "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"#000\"/>\n",
            f->x0, f->y0 + f->h, f->x0 + f->w, f->y0 + f->h);
    fprintf(out,
            "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"#000\"/>\n",
            f->x0, f->y0, f->x0, f->y0 + f->h);
    fprintf(out, "<text class=\"x-label\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">",
            f->x0 + f->w / 2, TERN_PERF_PLOT_HEIGHT - 15);
    put_escaped(out, p->x_label);
    fputs("</text>\n", out);
    double ym = f->y0 + f->h / 2;
    fprintf(out,
            "<text class=\"y-label\" x=\"20\" y=\"%.1f\" text-anchor=\"middle\" "
            "transform=\"rotate(-90 20 %.1f)\">",
            ym, ym);
    put_escaped(out, p->y_label);
    fputs("</text>\n", out);
}

static void series(FILE *out, const frame *f, const tern_perf_plot *p)
{
    for (size_t i = 0; i < p->n_series; i++) {
        const tern_perf_plot_series *s = &p->series[i];
        fprintf(out,
                "<polyline class=\"series\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                "points=\"",
                colors[i]);
        for (size_t k = 0; k < s->n; k++)
            fprintf(out, "%s%.2f,%.2f", k ? " " : "", px_x(f, s->x[k]), px_y(f, s->y[k]));
        fputs("\"/>\n", out);
    }
}

/* Top right, over the lines, one entry per series. */
static void legend(FILE *out, const frame *f, const tern_perf_plot *p)
{
    if (p->n_series == 0)
        return;
    fprintf(out,
            "<rect class=\"legend-box\" x=\"%.1f\" y=\"%.1f\" width=\"180\" height=\"%.1f\" "
            "fill=\"#fff\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n",
            f->x0 + f->w - 180, f->y0 + 4, 18.0 * (double)p->n_series + 8);
    for (size_t i = 0; i < p->n_series; i++) {
        double lx = f->x0 + f->w - 170, ly = f->y0 + 18 + 18 * (double)i;
        fprintf(out,
                "<line class=\"legend\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                "stroke=\"%s\" stroke-width=\"3\"/>\n",
                lx, ly - 4, lx + 20, ly - 4, colors[i]);
        fprintf(out, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">", lx + 26, ly);
        put_escaped(out, p->series[i].name);
        fputs("</text>\n", out);
    }
}

int tern_perf_plot_svg(FILE *out, const tern_perf_plot *p)
{
    if (!out || !p || p->n_series > TERN_PERF_PLOT_SERIES_MAX || (p->n_series && !p->series))
        return TERN_ERR_INVAL;
    double xlo, xhi, ylo, yhi;
    int rc = check_and_range(p, &xlo, &xhi, &ylo, &yhi);
    if (rc < 0)
        return rc;
    frame f;
    if (tern_perf_plot_ticks(xlo, xhi, TICKS_TARGET, &f.xt) < 0 ||
        tern_perf_plot_ticks(ylo, yhi, TICKS_TARGET, &f.yt) < 0)
        return TERN_ERR_INVAL;
    f.x0 = MARGIN_LEFT;
    f.y0 = MARGIN_TOP;
    f.w = TERN_PERF_PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    f.h = TERN_PERF_PLOT_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;

    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
            TERN_PERF_PLOT_WIDTH, TERN_PERF_PLOT_HEIGHT, TERN_PERF_PLOT_WIDTH,
            TERN_PERF_PLOT_HEIGHT);
    fprintf(out, "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", TERN_PERF_PLOT_WIDTH,
            TERN_PERF_PLOT_HEIGHT);
    fprintf(out, "<text class=\"title\" x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">",
            TERN_PERF_PLOT_WIDTH / 2);
    put_escaped(out, p->title);
    fputs("</text>\n", out);
    axes(out, &f, p);
    series(out, &f, p);
    legend(out, &f, p);
    fputs("</svg>\n", out);
    return ferror(out) ? TERN_ERR_IO : 0;
}
