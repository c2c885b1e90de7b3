/* tools/cli: every flag parser on good and bad input (empty, NULL, junk
 * suffixes, signs, overflow, out of range), address parsing and formatting
 * round trips, and the subcommand table. A failed parse must leave *out
 * untouched. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/cli.h"

#define SENTINEL UINT64_C(0xdeadbeef)

static void duration_ok(const char *text, uint64_t want)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_duration_ms(text, &v), 0, "'%s'", text);
    cr_assert_eq(v, want, "'%s': %llu, want %llu", text, (unsigned long long)v,
                 (unsigned long long)want);
}

static void duration_bad(const char *text, int err)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_duration_ms(text, &v), err, "'%s'", text ? text : "(null)");
    cr_assert_eq(v, SENTINEL, "'%s' changed *out", text ? text : "(null)");
}

Test(cli, duration)
{
    duration_ok("40ms", 40);
    duration_ok("2s", 2000);
    duration_ok("1.5s", 1500);
    duration_ok("500", 500);
    duration_ok("0", 0);
    duration_ok("0ms", 0);
    duration_ok("1m", 60000);
    duration_ok("2min", 120000);
    duration_ok("1h", 3600000);
    duration_ok("1.25S", 1250);
    duration_ok("0.001s", 1);
    duration_ok("2.5ms", 3); /* halves round up */
    duration_ok("2.4ms", 2);
    duration_ok("18446744073709551615", UINT64_MAX);
    duration_ok("18446744073709551.615s", UINT64_MAX);

    duration_bad(NULL, TERN_ERR_INVAL);
    duration_bad("", TERN_ERR_INVAL);
    duration_bad("ms", TERN_ERR_INVAL);
    duration_bad("10x", TERN_ERR_INVAL);
    duration_bad("10 ms", TERN_ERR_INVAL);
    duration_bad(" 10", TERN_ERR_INVAL);
    duration_bad("10ms ", TERN_ERR_INVAL);
    duration_bad("+10", TERN_ERR_INVAL);
    duration_bad("1e3", TERN_ERR_INVAL);
    duration_bad("0x10", TERN_ERR_INVAL);
    duration_bad("1.", TERN_ERR_INVAL);
    duration_bad(".5s", TERN_ERR_INVAL);
    duration_bad("1.2.3s", TERN_ERR_INVAL);
    duration_bad("1.0000001s", TERN_ERR_INVAL); /* more than 6 decimals */
    duration_bad("nan", TERN_ERR_INVAL);
    duration_bad("-5ms", TERN_ERR_RANGE);
    duration_bad("-0.5s", TERN_ERR_RANGE);
    duration_bad("18446744073709551616", TERN_ERR_RANGE);
    duration_bad("18446744073709552s", TERN_ERR_RANGE);
    duration_bad("99999999999999999999999h", TERN_ERR_RANGE);
    duration_bad("0.4ms", TERN_ERR_RANGE); /* not zero, but rounds to it */
    cr_assert_eq(tern_cli_parse_duration_ms("1s", NULL), TERN_ERR_INVAL);
}

static void percent_ok(const char *text, double want)
{
    double v = -1.0;
    cr_assert_eq(tern_cli_parse_percent(text, &v), 0, "'%s'", text);
    cr_assert_float_eq(v, want, 1e-12, "'%s': %g, want %g", text, v, want);
}

static void percent_bad(const char *text, int err)
{
    double v = -1.0;
    cr_assert_eq(tern_cli_parse_percent(text, &v), err, "'%s'", text ? text : "(null)");
    cr_assert(v == -1.0, "'%s' changed *out", text ? text : "(null)");
}

Test(cli, percent)
{
    percent_ok("5%", 0.05);
    percent_ok("0.1%", 0.001);
    percent_ok("100%", 1.0);
    percent_ok("0%", 0.0);
    percent_ok("0.05", 0.05);
    percent_ok("0.5", 0.5);
    percent_ok("0", 0.0);
    /* A bare number >= 1 is a percentage, "1" included. */
    percent_ok("5", 0.05);
    percent_ok("1", 0.01);
    percent_ok("1.0", 0.01);
    percent_ok("2.5", 0.025);
    percent_ok("100", 1.0);
    percent_ok("99.999999", 0.99999999);

    percent_bad(NULL, TERN_ERR_INVAL);
    percent_bad("", TERN_ERR_INVAL);
    percent_bad("%", TERN_ERR_INVAL);
    percent_bad("5%%", TERN_ERR_INVAL);
    percent_bad("5 %", TERN_ERR_INVAL);
    percent_bad("5x", TERN_ERR_INVAL);
    percent_bad("five", TERN_ERR_INVAL);
    percent_bad("inf", TERN_ERR_INVAL);
    percent_bad("1e-2", TERN_ERR_INVAL);
    percent_bad("-1%", TERN_ERR_RANGE);
    percent_bad("-0.05", TERN_ERR_RANGE);
    percent_bad("100.5%", TERN_ERR_RANGE);
    percent_bad("101", TERN_ERR_RANGE);
    percent_bad("100.000001", TERN_ERR_RANGE);
    percent_bad("18446744073709551616%", TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_percent("5%", NULL), TERN_ERR_INVAL);
}

static void rate_ok(const char *text, uint64_t want)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_rate(text, &v), 0, "'%s'", text);
    cr_assert_eq(v, want, "'%s': %llu, want %llu", text, (unsigned long long)v,
                 (unsigned long long)want);
}

static void rate_bad(const char *text, int err)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_rate(text, &v), err, "'%s'", text ? text : "(null)");
    cr_assert_eq(v, SENTINEL, "'%s' changed *out", text ? text : "(null)");
}

Test(cli, rate)
{
    rate_ok("10mbit", 1250000);
    rate_ok("10Mbit", 1250000);
    rate_ok("10mbit/s", 1250000);
    rate_ok("1gbit", 125000000);
    rate_ok("500kbit", 62500);
    rate_ok("1.5mbit", 187500);
    rate_ok("8bit", 1);
    rate_ok("2MB", 2000000);
    rate_ok("2mb/s", 2000000);
    rate_ok("64k", 64000);
    rate_ok("1000", 1000);
    rate_ok("1000/s", 1000);
    rate_ok("1000b", 1000);
    rate_ok("0", 0);
    rate_ok("1tbit", UINT64_C(125000000000));
    rate_ok("18446744073709551615", UINT64_MAX);
    rate_ok("18446744073709551615bit", UINT64_C(2305843009213693952)); /* .875 rounds up */

    rate_bad(NULL, TERN_ERR_INVAL);
    rate_bad("", TERN_ERR_INVAL);
    rate_bad("mbit", TERN_ERR_INVAL);
    rate_bad("10mbps", TERN_ERR_INVAL);
    rate_bad("10 mbit", TERN_ERR_INVAL);
    rate_bad("10mbit/", TERN_ERR_INVAL);
    rate_bad("10mbit/s/s", TERN_ERR_INVAL);
    rate_bad("10/x", TERN_ERR_INVAL);
    rate_bad("-10mbit", TERN_ERR_RANGE);
    rate_bad("1bit", TERN_ERR_RANGE); /* an eighth of a byte would mean "unlimited" */
    rate_bad("18446744073709551616", TERN_ERR_RANGE);
    rate_bad("20000000tb", TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_rate("1k", NULL), TERN_ERR_INVAL);
}

static void size_ok(const char *text, uint64_t want)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_size(text, &v), 0, "'%s'", text);
    cr_assert_eq(v, want, "'%s': %llu, want %llu", text, (unsigned long long)v,
                 (unsigned long long)want);
}

static void size_bad(const char *text, int err)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_size(text, &v), err, "'%s'", text ? text : "(null)");
    cr_assert_eq(v, SENTINEL, "'%s' changed *out", text ? text : "(null)");
}

Test(cli, size)
{
    size_ok("64k", 65536);
    size_ok("64K", 65536);
    size_ok("64KiB", 65536);
    size_ok("1M", 1048576);
    size_ok("1mb", 1048576);
    size_ok("1.5k", 1536);
    size_ok("2G", UINT64_C(2147483648));
    size_ok("4096", 4096);
    size_ok("4096b", 4096);
    size_ok("0", 0);

    size_bad(NULL, TERN_ERR_INVAL);
    size_bad("", TERN_ERR_INVAL);
    size_bad("k", TERN_ERR_INVAL);
    size_bad("64kbit", TERN_ERR_INVAL);
    size_bad("64q", TERN_ERR_INVAL);
    size_bad("64k/s", TERN_ERR_INVAL);
    size_bad("-1k", TERN_ERR_RANGE);
    size_bad("17179869184G", TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_size("1k", NULL), TERN_ERR_INVAL);
}

Test(cli, u64)
{
    uint64_t v = SENTINEL;
    cr_assert_eq(tern_cli_parse_u64("42", 0, 100, &v), 0);
    cr_assert_eq(v, 42);
    cr_assert_eq(tern_cli_parse_u64("0", 0, 0, &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(tern_cli_parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
    cr_assert_eq(v, UINT64_MAX);
    cr_assert_eq(tern_cli_parse_u64("007", 1, 10, &v), 0);
    cr_assert_eq(v, 7);

    v = SENTINEL;
    cr_assert_eq(tern_cli_parse_u64("101", 0, 100, &v), TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_u64("0", 1, 100, &v), TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_u64("18446744073709551616", 0, UINT64_MAX, &v), TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_u64("-1", 0, 100, &v), TERN_ERR_RANGE);
    cr_assert_eq(tern_cli_parse_u64("", 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_u64(NULL, 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_u64("1.0", 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_u64("12k", 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_u64("12 ", 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_u64("+1", 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_u64("-", 0, 100, &v), TERN_ERR_INVAL);
    cr_assert_eq(v, SENTINEL);
    cr_assert_eq(tern_cli_parse_u64("1", 0, 100, NULL), TERN_ERR_INVAL);
}

static void hostport_v4(const char *text, const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    cr_assert_eq(tern_cli_parse_hostport(text, &ss, &len), 0, "'%s'", text);
    cr_assert_eq(ss.ss_family, AF_INET, "'%s'", text);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
    char got[INET_ADDRSTRLEN];
    cr_assert_not_null(inet_ntop(AF_INET, &sin->sin_addr, got, sizeof(got)));
    cr_assert_str_eq(got, ip, "'%s'", text);
    cr_assert_eq(ntohs(sin->sin_port), port, "'%s'", text);
}

static void hostport_bad(const char *text, int err)
{
    struct sockaddr_storage ss;
    memset(&ss, 0xab, sizeof(ss));
    socklen_t len = 77;
    cr_assert_eq(tern_cli_parse_hostport(text, &ss, &len), err, "'%s'", text ? text : "(null)");
    cr_assert_eq(len, 77, "'%s' changed *out_len", text ? text : "(null)");
    cr_assert_eq(((const uint8_t *)&ss)[0], 0xab, "'%s' changed *out", text ? text : "(null)");
}

Test(cli, hostport)
{
    hostport_v4(":29900", "0.0.0.0", 29900);
    hostport_v4(":0", "0.0.0.0", 0);
    hostport_v4("127.0.0.1:29900", "127.0.0.1", 29900);
    hostport_v4("10.1.2.3:65535", "10.1.2.3", 65535);

    struct sockaddr_storage ss;
    socklen_t len = 0;
    cr_assert_eq(tern_cli_parse_hostport("[::1]:29900", &ss, &len), 0);
    cr_assert_eq(ss.ss_family, AF_INET6);
    cr_assert_eq(len, sizeof(struct sockaddr_in6));
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
    cr_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
    cr_assert_eq(ntohs(sin6->sin6_port), 29900);
    cr_assert_eq(tern_cli_parse_hostport("[::]:1", &ss, NULL), 0);
    cr_assert(IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&ss)->sin6_addr));

    /* A name, through getaddrinfo: localhost is a loopback address of
     * either family, with the port set. */
    cr_assert_eq(tern_cli_parse_hostport("localhost:29900", &ss, &len), 0);
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        cr_assert_eq(ntohl(sin->sin_addr.s_addr) >> 24, 127);
        cr_assert_eq(ntohs(sin->sin_port), 29900);
    } else {
        cr_assert_eq(ss.ss_family, AF_INET6);
        cr_assert(IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&ss)->sin6_addr));
        cr_assert_eq(ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port), 29900);
    }

    hostport_bad(NULL, TERN_ERR_INVAL);
    hostport_bad("", TERN_ERR_INVAL);
    hostport_bad("29900", TERN_ERR_INVAL);
    hostport_bad("127.0.0.1", TERN_ERR_INVAL);
    hostport_bad("127.0.0.1:", TERN_ERR_INVAL);
    hostport_bad(":", TERN_ERR_INVAL);
    hostport_bad(":http", TERN_ERR_INVAL);
    hostport_bad(":12x", TERN_ERR_INVAL);
    hostport_bad("::1:29900", TERN_ERR_INVAL); /* IPv6 needs brackets */
    hostport_bad("[::1]29900", TERN_ERR_INVAL);
    hostport_bad("[::1:29900", TERN_ERR_INVAL);
    hostport_bad("[]:29900", TERN_ERR_INVAL);
    hostport_bad("[127.0.0.1]:29900", TERN_ERR_INVAL);
    hostport_bad("[nonsense]:29900", TERN_ERR_INVAL);
    /* Digits and dots are never sent to DNS: a bad address is a syntax error. */
    hostport_bad("1.2.3.999:29900", TERN_ERR_INVAL);
    hostport_bad("1.2.3:4:5", TERN_ERR_INVAL);
    hostport_bad(":65536", TERN_ERR_RANGE);
    hostport_bad("127.0.0.1:99999999999999999999", TERN_ERR_RANGE);
    hostport_bad(":-1", TERN_ERR_RANGE);

    char longhost[400];
    memset(longhost, 'a', 300);
    strcpy(longhost + 300, ":1");
    hostport_bad(longhost, TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_parse_hostport(":1", NULL, NULL), TERN_ERR_INVAL);
}

Test(cli, format_addr_round_trip)
{
    const char *const addrs[] = {"127.0.0.1:29900", "0.0.0.0:0",       "255.255.255.255:65535",
                                 "[::1]:29900",     "[2001:db8::1]:1", "[fe80::1%3]:443"};
    for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
        struct sockaddr_storage ss;
        cr_assert_eq(tern_cli_parse_hostport(addrs[i], &ss, NULL), 0, "%s", addrs[i]);
        char buf[TERN_CLI_ADDR_MAX];
        cr_assert_eq(tern_cli_format_addr((const struct sockaddr *)&ss, buf, sizeof(buf)), 0);
        cr_assert_str_eq(buf, addrs[i]);
    }
}

Test(cli, format_addr_errors)
{
    struct sockaddr_storage ss;
    cr_assert_eq(tern_cli_parse_hostport("127.0.0.1:29900", &ss, NULL), 0);
    char buf[TERN_CLI_ADDR_MAX];
    /* "127.0.0.1:29900" needs 16 bytes with its NUL. */
    memset(buf, 'x', sizeof(buf));
    cr_assert_eq(tern_cli_format_addr((const struct sockaddr *)&ss, buf, 15), TERN_ERR_NOBUFS);
    cr_assert_eq(buf[0], '\0');
    cr_assert_eq(tern_cli_format_addr((const struct sockaddr *)&ss, buf, 16), 0);
    cr_assert_str_eq(buf, "127.0.0.1:29900");
    cr_assert_eq(tern_cli_format_addr((const struct sockaddr *)&ss, buf, 0), TERN_ERR_NOBUFS);
    cr_assert_eq(tern_cli_format_addr(NULL, buf, sizeof(buf)), TERN_ERR_INVAL);
    cr_assert_eq(tern_cli_format_addr((const struct sockaddr *)&ss, NULL, 16), TERN_ERR_INVAL);
    struct sockaddr unix_family;
    memset(&unix_family, 0, sizeof(unix_family));
    unix_family.sa_family = AF_UNIX;
    cr_assert_eq(tern_cli_format_addr(&unix_family, buf, sizeof(buf)), TERN_ERR_INVAL);
}

/* ---- The subcommand table --------------------------------------------- */

static int last_argc;
static char last_argv0[32], last_argv1[32];
static int last_optind;

static int cmd_record(int argc, char **argv)
{
    last_argc = argc;
    last_optind = optind;
    snprintf(last_argv0, sizeof(last_argv0), "%s", argv[0]);
    snprintf(last_argv1, sizeof(last_argv1), "%s", argc > 1 ? argv[1] : "");
    return 7;
}

static int cmd_other(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 3;
}

static const tern_cli_command table[] = {
    {"show", cmd_record, "show the current state"},
    {"set-something", cmd_other, "change a setting"},
};
#define N_TABLE (sizeof(table) / sizeof(table[0]))

/* Runs the dispatcher with stdout and stderr sent to files, so that usage
 * output can be checked and stays out of the test log. */
typedef struct dispatched {
    int status;
    char out[2048], err[2048];
} dispatched;

static void slurp_fd(int fd, char *buf, size_t cap)
{
    cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
    ssize_t n = read(fd, buf, cap - 1);
    cr_assert_geq(n, 0);
    buf[n] = '\0';
}

static void dispatch(dispatched *d, int argc, char **argv)
{
    char out_path[] = "/tmp/tern-cli-out-XXXXXX", err_path[] = "/tmp/tern-cli-err-XXXXXX";
    int out = mkstemp(out_path), err = mkstemp(err_path);
    cr_assert(out >= 0 && err >= 0);
    unlink(out_path);
    unlink(err_path);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    dup2(out, 1);
    dup2(err, 2);
    d->status = tern_cli_dispatch(argc, argv, table, N_TABLE, "tern-x");
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    slurp_fd(out, d->out, sizeof(d->out));
    slurp_fd(err, d->err, sizeof(d->err));
    close(out);
    close(err);
}

Test(cli, dispatch_runs_the_named_command)
{
    char *argv[] = {"tern-x", "show", "--verbose", NULL};
    dispatched d;
    optind = 5;
    dispatch(&d, 3, argv);
    cr_assert_eq(d.status, 7);
    cr_assert_eq(last_argc, 2);
    cr_assert_str_eq(last_argv0, "show");
    cr_assert_str_eq(last_argv1, "--verbose");
    cr_assert_eq(last_optind, 1, "optind reset for the command's getopt");

    char *argv2[] = {"tern-x", "set-something", NULL};
    dispatch(&d, 2, argv2);
    cr_assert_eq(d.status, 3);
    cr_assert_str_eq(d.err, "");
}

Test(cli, dispatch_unknown_and_missing)
{
    char *argv[] = {"tern-x", "sho", NULL};
    dispatched d;
    dispatch(&d, 2, argv);
    cr_assert_eq(d.status, TERN_CLI_EXIT_USAGE);
    cr_assert_str_eq(d.out, "");
    cr_assert_not_null(strstr(d.err, "tern-x: unknown command 'sho'\n"), "%s", d.err);
    cr_assert_not_null(strstr(d.err, "usage: tern-x COMMAND"), "%s", d.err);
    cr_assert_not_null(strstr(d.err, "set-something  change a setting"), "%s", d.err);

    dispatch(&d, 1, argv);
    cr_assert_eq(d.status, TERN_CLI_EXIT_USAGE);
    cr_assert_not_null(strstr(d.err, "no command given"), "%s", d.err);
    cr_assert_not_null(strstr(d.err, "usage: tern-x"), "%s", d.err);
}

Test(cli, dispatch_help_to_stdout)
{
    const char *const helps[] = {"help", "--help", "-h"};
    for (size_t i = 0; i < 3; i++) {
        char *argv[] = {"tern-x", (char *)helps[i], NULL};
        dispatched d;
        dispatch(&d, 2, argv);
        cr_assert_eq(d.status, 0, "%s", helps[i]);
        cr_assert_str_eq(d.err, "");
        /* Names padded to the longest, then the help line. */
        cr_assert_not_null(strstr(d.out, "  show           show the current state\n"), "%s", d.out);
        cr_assert_not_null(strstr(d.out, "  set-something  change a setting\n"), "%s", d.out);
    }
}
