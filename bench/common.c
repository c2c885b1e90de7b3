#include "bench/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int tern_bench_parse_u64(const char *prog, const char *flag, const char *text, uint64_t min,
                         uint64_t max, uint64_t *out)
{
    /* strtoull accepts a sign and leading blanks; a flag value should not. */
    if (text && *text >= '0' && *text <= '9') {
        errno = 0;
        char *end = NULL;
        unsigned long long v = strtoull(text, &end, 10);
        if (errno == 0 && *end == '\0' && v >= min && v <= max) {
            *out = v;
            return 0;
        }
    }
    fprintf(stderr, "%s: bad value for %s: '%s' (want an integer in %llu..%llu)\n", prog, flag,
            text ? text : "", (unsigned long long)min, (unsigned long long)max);
    return -1;
}

int tern_bench_parse_double(const char *prog, const char *flag, const char *text, double min,
                            double max, double *out)
{
    if (text && ((*text >= '0' && *text <= '9') || *text == '.')) {
        errno = 0;
        char *end = NULL;
        double v = strtod(text, &end);
        if (errno == 0 && *end == '\0' && v >= min && v <= max) {
            *out = v;
            return 0;
        }
    }
    fprintf(stderr, "%s: bad value for %s: '%s' (want a number in %g..%g)\n", prog, flag,
            text ? text : "", min, max);
    return -1;
}

FILE *tern_bench_results_open(const char *prog, const char *path)
{
    FILE *f = fopen(path, "a");
    if (!f)
        fprintf(stderr,
                "%s: cannot open results file %s: %s (run from the repository root "
                "after building build/, or pass --out PATH)\n",
                prog, path, strerror(errno));
    return f;
}

void tern_bench_utc_now(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    if (cap == 0)
        return;
    if (!gmtime_r(&t, &tm) || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        buf[0] = '\0';
}
