/* Helpers shared by tern's command-line tools (tern-netsim, tern-tunnel,
 * tern-perf, tern-keygen): strict parsers for the values their flags take,
 * address formatting and a subcommand table.
 *
 * Every parser is a pure function: it returns 0 and writes *out, or returns a
 * negative TERN_ERR_* and leaves *out untouched. None prints or exits; the
 * tool names the flag and the value in its own one-line error.
 *   TERN_ERR_INVAL  NULL, empty text, junk, an unknown unit suffix
 *   TERN_ERR_RANGE  a negative value, an overflow, a value outside the
 *                   allowed range, or a non-zero value that rounds to zero
 *
 * Numbers are plain decimals: digits, optionally one '.' and up to 6 more
 * digits. No sign, no exponent, no hex, no white space; a leading '-' is
 * reported as TERN_ERR_RANGE. Fractions are exact and round to the nearest
 * unit (halves up). Unit suffixes are case-insensitive unless noted. */
#ifndef TERN_TOOLS_CLI_H
#define TERN_TOOLS_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "tern/error.h"

/* A duration in milliseconds: "40ms", "2s", "1.5s", "1m" (minute), "1h";
 * a bare number is milliseconds ("500"). */
int tern_cli_parse_duration_ms(const char *text, uint64_t *out);

/* A probability, written either way:
 *   "5%", "0.1%"       a percentage (always, with the sign)
 *   "5", "1", "2.5"    a bare number >= 1 is a percentage too ("1" is 1%)
 *   "0.05", "0", "0.5" a bare number below 1 is a fraction (5%, 0, 50%)
 * so 100% is "100" or "100%", never "1". Result in 0..1; above 100% is
 * TERN_ERR_RANGE. */
int tern_cli_parse_percent(const char *text, double *out_fraction);

/* A rate in bytes per second, optionally followed by "/s":
 *   "bit", "kbit", "mbit", "gbit", "tbit"   bits, powers of 1000
 *   "" (bare), "b", "k"/"kb", "m"/"mb", "g"/"gb", "t"/"tb"   bytes, powers
 *                                            of 1000 (network convention)
 * e.g. "10mbit" = 1250000, "2MB" = 2000000, "1000" = 1000. */
int tern_cli_parse_rate(const char *text, uint64_t *bytes_per_s);

/* A size in bytes: "" (bare) or "b", "k"/"kb"/"kib", "m"/"mb"/"mib",
 * "g"/"gb"/"gib": powers of 1024 (memory convention), e.g. "64k" = 65536. */
int tern_cli_parse_size(const char *text, uint64_t *bytes);

/* A plain decimal integer in [min, max]. */
int tern_cli_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out);

/* "HOST:PORT" into a socket address, PORT 0..65535 in decimal:
 *   ":29900"             the IPv4 wildcard, 0.0.0.0:29900
 *   "127.0.0.1:29900"    a numeric IPv4 address
 *   "[::1]:29900"        a numeric IPv6 address, in brackets (a zone such as
 *                        "[fe80::1%eth0]" is accepted)
 *   "localhost:29900"    a name, resolved synchronously with getaddrinfo;
 *                        the first address it returns (the system's
 *                        preference order) is used
 * *out_len (optional) receives the address's length. TERN_ERR_INVAL for
 * bad syntax (a missing port, an IPv6 address without brackets),
 * TERN_ERR_RANGE for a port above 65535, TERN_ERR_NOTFOUND if the name does
 * not resolve. */
int tern_cli_parse_hostport(const char *text, struct sockaddr_storage *out, socklen_t *out_len);

/* "1.2.3.4:5" or "[::1]:5", NUL-terminated. TERN_ERR_INVAL for NULL or a
 * family other than AF_INET/AF_INET6, TERN_ERR_NOBUFS if cap is too small
 * (TERN_CLI_ADDR_MAX always fits). */
#define TERN_CLI_ADDR_MAX 64
int tern_cli_format_addr(const struct sockaddr *sa, char *buf, size_t cap);

/* A subcommand: run gets the arguments from the command's name on (argv[0]
 * is the name) and returns the process's exit status. */
typedef struct tern_cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help; /* one line, for the usage text */
} tern_cli_command;

/* Writes "usage: PROG COMMAND [ARGS]" and one line per command to f. */
void tern_cli_usage(FILE *f, const char *prog, const tern_cli_command *table, size_t n);

/* Dispatches main's arguments: argv[1] names the command, which runs with
 * (argc - 1, argv + 1) after optind is reset to 1, so it can use getopt on
 * its own arguments. Returns the command's status; "help", "--help" or "-h"
 * print the usage to stdout and return 0; a missing or unknown command
 * prints a one-line error and the usage to stderr and returns
 * TERN_CLI_EXIT_USAGE. */
#define TERN_CLI_EXIT_USAGE 2
int tern_cli_dispatch(int argc, char **argv, const tern_cli_command *table, size_t n,
                      const char *prog);

#endif /* TERN_TOOLS_CLI_H */
