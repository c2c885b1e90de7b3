/* What every benchmark shares: reading flag values, the JSON-lines results
 * file and the UTC timestamp stamped on each result. Not part of the
 * installed API. */
#ifndef TERN_BENCH_COMMON_H
#define TERN_BENCH_COMMON_H

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

#endif /* TERN_BENCH_COMMON_H */
