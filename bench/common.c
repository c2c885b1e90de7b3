#define _GNU_SOURCE /* getloadavg */

#include "bench/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

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

uint64_t tern_bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double tern_bench_now_s(void)
{
    return (double)tern_bench_now_ns() / 1e9;
}

void tern_bench_loadavg(double load[3])
{
    if (getloadavg(load, 3) != 3)
        load[0] = load[1] = load[2] = -1;
}

void tern_bench_machine_init(tern_bench_machine *m)
{
    memset(m, 0, sizeof(*m));
    m->nproc = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(m->cpu, sizeof(m->cpu), "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            colon++;
            while (*colon == ' ' || *colon == '\t')
                colon++;
            colon[strcspn(colon, "\n")] = '\0';
            /* Kept JSON-safe: it goes into the results unescaped. */
            size_t n = 0;
            for (const char *c = colon; *c && n + 1 < sizeof(m->cpu); c++)
                if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20)
                    m->cpu[n++] = *c;
            m->cpu[n] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(m->kernel, sizeof(m->kernel), "%s", u.release);
}

void tern_bench_json_stamp(FILE *f, const tern_bench_machine *m, bool quick)
{
    char date[32];
    double load[3];
    tern_bench_utc_now(date, sizeof(date));
    tern_bench_loadavg(load);
    fprintf(f,
            "\"quick\":%s,\"nproc\":%ld,\"cpu\":\"%s\",\"kernel\":\"%s\","
            "\"loadavg\":[%.2f,%.2f,%.2f],\"date\":\"%s\"}\n",
            quick ? "true" : "false", m->nproc, m->cpu, m->kernel, load[0], load[1], load[2], date);
    fflush(f);
}
