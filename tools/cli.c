/* The command-line helpers behind tools/cli.h.
 *
 * Every number goes through one strict decimal reader (no sign, exponent,
 * hex or white space) and one exact fixed-point scaler, so "1.5s" is exactly
 * 1500 ms and "10mbit" exactly 1250000 bytes/s, with no floating point in
 * the integer results and every overflow reported. */
#include "tools/cli.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Enough for any fraction a flag needs, and it keeps frac * mul (below
 * 10^6 times the largest unit, 10^12) clear of overflow in scale_decimal(). */
#define FRAC_DIGITS_MAX 6
#define HOST_MAX 256

typedef struct decimal {
    uint64_t whole; /* digits before the point */
    uint64_t frac;  /* digits after it, as an integer */
    uint64_t scale; /* 10^(digits after it); 1 without a point */
    const char *rest;
} decimal;

typedef struct unit {
    const char *suffix;
    uint64_t mul; /* value = number * mul / div */
    uint64_t div;
} unit;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads "D+[.D{1,6}]" from the start of text; what follows is left in
 * d->rest for the caller's unit. */
static int read_decimal(const char *text, decimal *d)
{
    const char *p = text;
    if (!p || !*p)
        return TERN_ERR_INVAL;
    if (p[0] == '-')
        return is_digit(p[1]) || p[1] == '.' ? TERN_ERR_RANGE : TERN_ERR_INVAL;
    if (!is_digit(*p))
        return TERN_ERR_INVAL;

    uint64_t whole = 0;
    for (; is_digit(*p); p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (whole > (UINT64_MAX - digit) / 10)
            return TERN_ERR_RANGE;
        whole = whole * 10 + digit;
    }
    uint64_t frac = 0, scale = 1;
    if (*p == '.') {
        p++;
        if (!is_digit(*p))
            return TERN_ERR_INVAL;
        for (int n = 0; is_digit(*p); p++, n++) {
            if (n == FRAC_DIGITS_MAX)
                return TERN_ERR_INVAL;
            frac = frac * 10 + (uint64_t)(*p - '0');
            scale *= 10;
        }
    }
    d->whole = whole;
    d->frac = frac;
    d->scale = scale;
    d->rest = p;
    return 0;
}

/* d * mul / div rounded to nearest, exactly:
 *   (whole + frac/scale) * mul / div = q + (r * scale + frac * mul) / (scale * div)
 * where q, r = divmod(whole * mul, div). */
static int scale_decimal(const decimal *d, uint64_t mul, uint64_t div, uint64_t *out)
{
    if (d->whole != 0 && mul > UINT64_MAX / d->whole)
        return TERN_ERR_RANGE;
    uint64_t a = d->whole * mul;
    uint64_t q = a / div, r = a % div;
    uint64_t den = d->scale * div;
    uint64_t extra = (r * d->scale + d->frac * mul + den / 2) / den;
    if (q > UINT64_MAX - extra)
        return TERN_ERR_RANGE;
    uint64_t v = q + extra;
    /* "1bit" as 0 bytes/s would silently mean "unlimited". */
    if (v == 0 && (d->whole != 0 || d->frac != 0))
        return TERN_ERR_RANGE;
    *out = v;
    return 0;
}

static const unit *find_unit(const unit *units, size_t n, const char *suffix, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(units[i].suffix) == len && strncasecmp(units[i].suffix, suffix, len) == 0)
            return &units[i];
    }
    return NULL;
}

static int parse_with_units(const char *text, const unit *units, size_t n, uint64_t *out)
{
    decimal d;
    int rc = read_decimal(text, &d);
    if (rc < 0)
        return rc;
    const unit *u = find_unit(units, n, d.rest, strlen(d.rest));
    if (!u)
        return TERN_ERR_INVAL;
    return scale_decimal(&d, u->mul, u->div, out);
}

#define N_UNITS(a) (sizeof(a) / sizeof((a)[0]))

int tern_cli_parse_duration_ms(const char *text, uint64_t *out)
{
    static const unit units[] = {
        {"", 1, 1},      {"ms", 1, 1},      {"s", 1000, 1},
        {"m", 60000, 1}, {"min", 60000, 1}, {"h", 3600000, 1},
    };
    if (!out)
        return TERN_ERR_INVAL;
    return parse_with_units(text, units, N_UNITS(units), out);
}

int tern_cli_parse_percent(const char *text, double *out_fraction)
{
    if (!out_fraction)
        return TERN_ERR_INVAL;
    decimal d;
    int rc = read_decimal(text, &d);
    if (rc < 0)
        return rc;
    bool percent_sign = strcmp(d.rest, "%") == 0;
    if (!percent_sign && *d.rest != '\0')
        return TERN_ERR_INVAL;
    /* Past 100 it is out of range whatever the rule, and this keeps the
     * double conversion exact. */
    if (d.whole > 100)
        return TERN_ERR_RANGE;
    double value = (double)d.whole + (double)d.frac / (double)d.scale;
    if (percent_sign || d.whole >= 1)
        value /= 100.0;
    if (value > 1.0)
        return TERN_ERR_RANGE;
    *out_fraction = value;
    return 0;
}

int tern_cli_parse_rate(const char *text, uint64_t *bytes_per_s)
{
    static const unit units[] = {
        {"bit", 1, 8},
        {"kbit", UINT64_C(1000), 8},
        {"mbit", UINT64_C(1000000), 8},
        {"gbit", UINT64_C(1000000000), 8},
        {"tbit", UINT64_C(1000000000000), 8},
        {"", 1, 1},
        {"b", 1, 1},
        {"k", UINT64_C(1000), 1},
        {"kb", UINT64_C(1000), 1},
        {"m", UINT64_C(1000000), 1},
        {"mb", UINT64_C(1000000), 1},
        {"g", UINT64_C(1000000000), 1},
        {"gb", UINT64_C(1000000000), 1},
        {"t", UINT64_C(1000000000000), 1},
        {"tb", UINT64_C(1000000000000), 1},
    };
    if (!bytes_per_s)
        return TERN_ERR_INVAL;
    decimal d;
    int rc = read_decimal(text, &d);
    if (rc < 0)
        return rc;
    /* An optional "/s" after the unit: "10mbit/s". */
    size_t suffix_len = strlen(d.rest);
    if (suffix_len >= 2 && strcasecmp(d.rest + suffix_len - 2, "/s") == 0)
        suffix_len -= 2;
    const unit *u = find_unit(units, N_UNITS(units), d.rest, suffix_len);
    if (!u)
        return TERN_ERR_INVAL;
    return scale_decimal(&d, u->mul, u->div, bytes_per_s);
}

int tern_cli_parse_size(const char *text, uint64_t *bytes)
{
    static const unit units[] = {
        {"", 1, 1},
        {"b", 1, 1},
        {"k", UINT64_C(1) << 10, 1},
        {"kb", UINT64_C(1) << 10, 1},
        {"kib", UINT64_C(1) << 10, 1},
        {"m", UINT64_C(1) << 20, 1},
        {"mb", UINT64_C(1) << 20, 1},
        {"mib", UINT64_C(1) << 20, 1},
        {"g", UINT64_C(1) << 30, 1},
        {"gb", UINT64_C(1) << 30, 1},
        {"gib", UINT64_C(1) << 30, 1},
    };
    if (!bytes)
        return TERN_ERR_INVAL;
    return parse_with_units(text, units, N_UNITS(units), bytes);
}

int tern_cli_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!out)
        return TERN_ERR_INVAL;
    decimal d;
    int rc = read_decimal(text, &d);
    if (rc < 0)
        return rc;
    if (d.scale != 1 || *d.rest != '\0')
        return TERN_ERR_INVAL;
    if (d.whole < min || d.whole > max)
        return TERN_ERR_RANGE;
    *out = d.whole;
    return 0;
}

/* Digits and dots only: an IPv4 address or a typo of one, never a name, so
 * it is not sent to DNS. */
static bool looks_numeric_v4(const char *host)
{
    for (; *host; host++) {
        if (!is_digit(*host) && *host != '.')
            return false;
    }
    return true;
}

int tern_cli_parse_hostport(const char *text, struct sockaddr_storage *out, socklen_t *out_len)
{
    if (!text || !out)
        return TERN_ERR_INVAL;

    const char *host_start, *port;
    size_t host_len;
    bool bracketed = text[0] == '[';
    if (bracketed) {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return TERN_ERR_INVAL;
        host_start = text + 1;
        host_len = (size_t)(close - host_start);
        port = close + 2;
        if (host_len == 0)
            return TERN_ERR_INVAL;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon)
            return TERN_ERR_INVAL;
        host_start = text;
        host_len = (size_t)(colon - text);
        port = colon + 1;
        /* "::1:80" cannot be split reliably: IPv6 needs brackets. */
        if (memchr(text, ':', host_len))
            return TERN_ERR_INVAL;
    }
    if (host_len >= HOST_MAX)
        return TERN_ERR_INVAL;
    uint64_t port_num;
    int rc = tern_cli_parse_u64(port, 0, 65535, &port_num);
    if (rc < 0)
        return rc;

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    if (host_len == 0) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sin->sin_port = htons((uint16_t)port_num);
        len = sizeof(*sin);
    } else {
        char host[HOST_MAX];
        memcpy(host, host_start, host_len);
        host[host_len] = '\0';
        bool numeric = bracketed || looks_numeric_v4(host);
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = bracketed ? AF_INET6 : AF_UNSPEC;
        hints.ai_socktype = SOCK_DGRAM;
        hints.ai_flags = numeric ? AI_NUMERICHOST : 0;
        if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
            return numeric ? TERN_ERR_INVAL : TERN_ERR_NOTFOUND;
        if (res->ai_addrlen > sizeof(ss) ||
            (res->ai_family != AF_INET && res->ai_family != AF_INET6)) {
            freeaddrinfo(res);
            return TERN_ERR_NOTFOUND;
        }
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        len = res->ai_addrlen;
        freeaddrinfo(res);
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port_num);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port_num);
    }
    *out = ss;
    if (out_len)
        *out_len = len;
    return 0;
}

int tern_cli_format_addr(const struct sockaddr *sa, char *buf, size_t cap)
{
    if (!sa || !buf)
        return TERN_ERR_INVAL;
    char ip[INET6_ADDRSTRLEN];
    int n;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
        if (!inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip)))
            return TERN_ERR_INVAL;
        n = snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (!inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip)))
            return TERN_ERR_INVAL;
        /* A numeric zone, which tern_cli_parse_hostport reads back. */
        if (sin6->sin6_scope_id)
            n = snprintf(buf, cap, "[%s%%%u]:%u", ip, (unsigned)sin6->sin6_scope_id,
                         (unsigned)ntohs(sin6->sin6_port));
        else
            n = snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(sin6->sin6_port));
    } else {
        return TERN_ERR_INVAL;
    }
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            buf[0] = '\0';
        return TERN_ERR_NOBUFS;
    }
    return 0;
}

void tern_cli_usage(FILE *f, const char *prog, const tern_cli_command *table, size_t n)
{
    int width = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(table[i].name);
        if (len > (size_t)width && len < 64)
            width = (int)len;
    }
    fprintf(f, "usage: %s COMMAND [ARGS]\n\nCommands:\n", prog);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  %-*s  %s\n", width, table[i].name, table[i].help ? table[i].help : "");
    fprintf(f, "\nRun '%s COMMAND --help' for a command's options.\n", prog);
}

int tern_cli_dispatch(int argc, char **argv, const tern_cli_command *table, size_t n,
                      const char *prog)
{
    if (!prog)
        prog = argc > 0 && argv && argv[0] ? argv[0] : "tern";
    if (!table)
        n = 0;
    if (argc < 2 || !argv || !argv[1]) {
        fprintf(stderr, "%s: no command given\n", prog);
        tern_cli_usage(stderr, prog, table, n);
        return TERN_CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "help") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        tern_cli_usage(stdout, prog, table, n);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(name, table[i].name) == 0) {
            optind = 1; /* the command parses its own flags with getopt */
            return table[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "%s: unknown command '%s'\n", prog, name);
    tern_cli_usage(stderr, prog, table, n);
    return TERN_CLI_EXIT_USAGE;
}
