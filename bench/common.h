/* What every benchmark shares: reading flag values, the clock, the JSON-lines
 * results file and the stamp (machine, load, UTC time) that ends each
 * result. Not part of the installed API. */
#ifndef TERN_BENCH_COMMON_H
#define TERN_BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Where results go unless --out says otherwise: `make bench` runs the
 * programs from the repository root. */
#define TERN_BENCH_RESULTS_DEFAULT "build/bench-results.jsonl"

/* Parses a whole decimal string into [min, max]. 0, or -1 after printing
 * "<prog>: bad value for <flag>" to stderr. */
int tern_bench_parse_u64(const char *prog, const char *flag, const char *text, uint64_t min,
                         uint64_t max, uint64_t *out);
int tern_bench_parse_double(const char *prog, const char *flag, const char *text, double min,
                            double max, double *out);

/* Opens (creating if needed) the results file for appending. NULL after
 * printing why to stderr. */
FILE *tern_bench_results_open(const char *prog, const char *path);

/* The current UTC time as ISO 8601, "2026-01-31T12:34:56Z". */
void tern_bench_utc_now(char *buf, size_t cap);

/* CLOCK_MONOTONIC, in nanoseconds and in seconds. */
uint64_t tern_bench_now_ns(void);
double tern_bench_now_s(void);

/* The 1, 5 and 15 minute load averages; -1 each when they cannot be read. */
void tern_bench_loadavg(double load[3]);

/* What a result was measured on. The strings are JSON-safe (no quotes,
 * backslashes or control characters), so they are written as they are. */
typedef struct tern_bench_machine {
    long nproc;       /* CPUs online */
    char cpu[128];    /* the first "model name" of /proc/cpuinfo, or "unknown" */
    char kernel[128]; /* the release, as uname -r prints it */
} tern_bench_machine;

void tern_bench_machine_init(tern_bench_machine *m);

/* Ends a JSON object (no leading comma; the caller's last field ends with
 * one): "quick", "nproc", "cpu", "kernel", "loadavg" and "date", both as of
 * now, then "}" and a newline. Flushes f, so a crash later keeps it. */
void tern_bench_json_stamp(FILE *f, const tern_bench_machine *m, bool quick);

#endif /* TERN_BENCH_COMMON_H */
