/* tern-tunnel's options: one table describes every option once (its flag,
 * its config key, its type, which role has it, where it is stored), and the
 * flag parser, the JSON parser and the merge are all driven by it, so a
 * flag and its key can never disagree. */
#include "tools/tunnel_config.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"

#define ROLE_CLIENT (1U << TERN_TUNNEL_CLIENT)
#define ROLE_SERVER (1U << TERN_TUNNEL_SERVER)
#define ROLE_BOTH (ROLE_CLIENT | ROLE_SERVER)

/* A config file larger than this is not a config file. */
#define CONFIG_FILE_MAX (1U << 20)

/* getopt values for long-only options: OPT_BASE + tern_tunnel_opt. */
#define OPT_BASE 256

typedef enum kind {
    K_ADDR,   /* HOST:PORT text; min is the least port (0: a listen address) */
    K_PATH,   /* a file name (or, for peer-key, a key or a file name) */
    K_ENV,    /* an environment variable's name */
    K_ALLOW,  /* a base64 public key, repeatable */
    K_BOOL,   /* a flag without a value; a JSON boolean */
    K_PRESET, /* normal|fast|fast2|fast3|turbo */
    K_CC,     /* none|reno */
    K_U32,    /* a decimal integer in [min, max] */
    K_SIZE    /* bytes, with an optional k/M/G suffix, in [min, max] */
} kind;

typedef struct opt_def {
    const char *name;
    char short_name; /* 0: none */
    kind kind;
    unsigned roles;
    size_t off, size; /* where the value lives in tern_tunnel_config */
    uint64_t min, max;
    const char *expect;
} opt_def;

#define FIELD(f) offsetof(tern_tunnel_config, f), sizeof(((tern_tunnel_config *)0)->f)

static const opt_def opts[TERN_TUNNEL_OPT_COUNT] = {
    [TERN_TUNNEL_OPT_LISTEN] = {"listen", 'l', K_ADDR, ROLE_BOTH, FIELD(listen), 0, 0,
                                "HOST:PORT, [IPv6]:PORT or :PORT"},
    [TERN_TUNNEL_OPT_REMOTE] = {"remote", 'r', K_ADDR, ROLE_CLIENT, FIELD(remote), 1, 0,
                                "HOST:PORT or [IPv6]:PORT with a port from 1 to 65535"},
    [TERN_TUNNEL_OPT_TARGET] = {"target", 't', K_ADDR, ROLE_SERVER, FIELD(target), 1, 0,
                                "HOST:PORT or [IPv6]:PORT with a port from 1 to 65535"},
    [TERN_TUNNEL_OPT_KEY_FILE] = {"key-file", 0, K_PATH, ROLE_BOTH, FIELD(key_file), 0, 0,
                                  "a file name"},
    [TERN_TUNNEL_OPT_PEER_KEY] = {"peer-key", 0, K_PATH, ROLE_BOTH, FIELD(peer_key), 0, 0,
                                  "a base64 public key or a file holding one"},
    [TERN_TUNNEL_OPT_PSK_FILE] = {"psk-file", 0, K_PATH, ROLE_BOTH, FIELD(psk_file), 0, 0,
                                  "a file name"},
    [TERN_TUNNEL_OPT_PSK_ENV] = {"psk-env", 0, K_ENV, ROLE_BOTH, FIELD(psk_env), 0, 0,
                                 "an environment variable's name"},
    [TERN_TUNNEL_OPT_ALLOW_KEY] = {"allow-key", 0, K_ALLOW, ROLE_SERVER, FIELD(allow), 0, 0,
                                   "a base64 public key (44 characters)"},
    [TERN_TUNNEL_OPT_INSECURE] = {"insecure", 0, K_BOOL, ROLE_BOTH, FIELD(insecure), 0, 0,
                                  "true or false"},
    [TERN_TUNNEL_OPT_MODE] = {"mode", 0, K_PRESET, ROLE_BOTH, FIELD(mode), 0, 0,
                              "normal, fast, fast2, fast3 or turbo"},
    [TERN_TUNNEL_OPT_MTU] = {"mtu", 0, K_U32, ROLE_BOTH, FIELD(mtu), TERN_TUNNEL_MTU_MIN,
                             TERN_TUNNEL_MTU_MAX, "an integer from 576 to 65507"},
    [TERN_TUNNEL_OPT_SNDWND] = {"sndwnd", 0, K_U32, ROLE_BOTH, FIELD(sndwnd), 1, TERN_KCP_WND_MAX,
                                "an integer from 1 to 32768"},
    [TERN_TUNNEL_OPT_RCVWND] = {"rcvwnd", 0, K_U32, ROLE_BOTH, FIELD(rcvwnd), 1, TERN_KCP_WND_MAX,
                                "an integer from 1 to 32768"},
    [TERN_TUNNEL_OPT_DSCP] = {"dscp", 0, K_U32, ROLE_BOTH, FIELD(dscp), 0, 63,
                              "an integer from 0 to 63"},
    [TERN_TUNNEL_OPT_SOCKBUF] = {"sockbuf", 0, K_SIZE, ROLE_BOTH, FIELD(sockbuf), 0,
                                 TERN_TUNNEL_SOCKBUF_MAX, "a size such as 4M or 65536, at most 1G"},
    [TERN_TUNNEL_OPT_KEEPALIVE] = {"keepalive", 0, K_U32, ROLE_BOTH, FIELD(keepalive_s), 0,
                                   TERN_TUNNEL_KEEPALIVE_MAX, "seconds from 0 to 3600"},
    [TERN_TUNNEL_OPT_CC] = {"cc", 0, K_CC, ROLE_BOTH, FIELD(cc), 0, 0, "none or reno"},
    [TERN_TUNNEL_OPT_HANDSHAKE_TIMEOUT] = {"handshake-timeout", 0, K_U32, ROLE_CLIENT,
                                           FIELD(handshake_timeout_s), 1, TERN_TUNNEL_HANDSHAKE_MAX,
                                           "seconds from 1 to 600"},
    [TERN_TUNNEL_OPT_STATS_INTERVAL] = {"stats-interval", 0, K_U32, ROLE_BOTH,
                                        FIELD(stats_interval_s), 0, TERN_TUNNEL_STATS_MAX,
                                        "seconds from 0 to 86400"},
    [TERN_TUNNEL_OPT_STATS_JSON] = {"stats-json", 0, K_PATH, ROLE_BOTH, FIELD(stats_json), 0, 0,
                                    "a file name"},
    [TERN_TUNNEL_OPT_CONFIG] = {"config", 'c', K_PATH, ROLE_BOTH, FIELD(config_file), 0, 0,
                                "a file name"},
};

static int fail(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t cap, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
        /* One line, whatever the input held (jansson quotes it too). */
        for (char *p = err; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
        }
    }
    return TERN_ERR_INVAL;
}

/* A value as messages show it: control bytes as \xNN, cut after 64
 * characters. */
#define QUOTE_MAX 300
static const char *quote(const char *in, char out[QUOTE_MAX])
{
    size_t n = 0, shown = 0;
    for (const char *p = in; *p && n + 8 < QUOTE_MAX; p++) {
        if (shown++ == 64) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7f)
            n += (size_t)snprintf(out + n, QUOTE_MAX - n, "\\x%02x", ch);
        else
            out[n++] = (char)ch;
    }
    out[n] = '\0';
    return out;
}

void tern_tunnel_config_init(tern_tunnel_config *c, tern_tunnel_role role)
{
    memset(c, 0, sizeof(*c));
    c->role = role;
    c->mode = TERN_KCP_PRESET_FAST3;
    c->mtu = 1400;
    c->keepalive_s = 5;
    c->handshake_timeout_s = 5;
    snprintf(c->cc, sizeof(c->cc), "reno");
}

bool tern_tunnel_config_has(const tern_tunnel_config *c, tern_tunnel_opt opt)
{
    return opt < TERN_TUNNEL_OPT_COUNT && (c->set & (UINT64_C(1) << opt)) != 0;
}

const char *tern_tunnel_opt_name(tern_tunnel_opt opt)
{
    return opt < TERN_TUNNEL_OPT_COUNT ? opts[opt].name : "?";
}

const char *tern_tunnel_role_name(tern_tunnel_role role)
{
    return role == TERN_TUNNEL_SERVER ? "server" : "client";
}

const char *tern_tunnel_security_name(tern_tunnel_security sec)
{
    switch (sec) {
    case TERN_TUNNEL_SEC_NK:
        return "NK";
    case TERN_TUNNEL_SEC_IK:
        return "IK";
    case TERN_TUNNEL_SEC_NNPSK0:
        return "NNpsk0";
    case TERN_TUNNEL_SEC_PLAINTEXT:
        return "plaintext";
    default:
        return "unset";
    }
}

static bool for_role(const opt_def *d, tern_tunnel_role role)
{
    return (d->roles & (1U << role)) != 0;
}

static void *field(tern_tunnel_config *c, const opt_def *d)
{
    return (char *)c + d->off;
}

/* ---- values ------------------------------------------------------------- */

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_alnum(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/* HOST:PORT, [V6]:PORT or :PORT, checked for shape only: names are resolved
 * by the tool, so that this stays pure. need_host: a connect address. */
static bool hostport_ok(const char *text, bool need_host, unsigned min_port)
{
    const char *colon;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close == text + 1)
            return false;
        for (const char *p = text + 1; p < close; p++) {
            if (!is_alnum(*p) && *p != ':' && *p != '.' && *p != '%' && *p != '_' && *p != '-')
                return false;
        }
        if (close[1] != ':')
            return false;
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon || (need_host && colon == text))
            return false;
        for (const char *p = text; p < colon; p++) {
            if (!is_alnum(*p) && *p != '.' && *p != '-' && *p != '_')
                return false;
        }
    }
    const char *port = colon + 1;
    size_t n = strlen(port);
    if (n == 0 || n > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(port[i]))
            return false;
        v = v * 10 + (unsigned)(port[i] - '0');
    }
    return v <= 65535 && v >= min_port;
}

static bool env_name_ok(const char *s)
{
    if (!s[0] || is_digit(s[0]))
        return false;
    for (; *s; s++) {
        if (!is_alnum(*s) && *s != '_')
            return false;
    }
    return true;
}

/* Where a value came from, for messages: "--mtu" or "config.json: key 'mtu'". */
typedef struct origin {
    const char *file; /* NULL: a flag */
} origin;

static int bad(char *err, size_t cap, const origin *o, const opt_def *d, const char *raw,
               const char *why)
{
    char q[QUOTE_MAX];
    const char *value = quote(raw, q);
    if (o->file)
        return fail(err, cap, "%s: key '%s': invalid value '%s'%s%s (expected %s)", o->file,
                    d->name, value, why ? ": " : "", why ? why : "", d->expect);
    return fail(err, cap, "invalid value '%s' for --%s%s%s (expected %s)", value, d->name,
                why ? ": " : "", why ? why : "", d->expect);
}

static int store_text(tern_tunnel_config *c, const opt_def *d, const char *text, const origin *o,
                      char *err, size_t cap)
{
    size_t len = strlen(text);
    if (len == 0)
        return bad(err, cap, o, d, text, "empty");
    if (len >= d->size)
        return bad(err, cap, o, d, text, "too long");
    memcpy(field(c, d), text, len + 1);
    return 0;
}

/* One option's value from text (a flag's argument, or a JSON string). */
static int set_text(tern_tunnel_config *c, tern_tunnel_opt id, const char *text, const origin *o,
                    char *err, size_t cap)
{
    const opt_def *d = &opts[id];
    uint64_t n;
    int rc;
    switch (d->kind) {
    case K_ADDR:
        if (strlen(text) >= d->size || !hostport_ok(text, d->min > 0, (unsigned)d->min))
            return bad(err, cap, o, d, text, NULL);
        rc = store_text(c, d, text, o, err, cap);
        break;
    case K_PATH:
        rc = store_text(c, d, text, o, err, cap);
        break;
    case K_ENV:
        if (!env_name_ok(text))
            return bad(err, cap, o, d, text, NULL);
        rc = store_text(c, d, text, o, err, cap);
        break;
    case K_ALLOW: {
        tern_public_key key;
        if (tern_public_key_from_base64(&key, text, strlen(text)) != 0)
            return bad(err, cap, o, d, text, NULL);
        if (c->allow.n >= TERN_TUNNEL_ALLOW_MAX)
            return bad(err, cap, o, d, text, "too many keys (at most 64)");
        c->allow.keys[c->allow.n++] = key;
        rc = 0;
        break;
    }
    case K_BOOL:
        c->insecure = true;
        rc = 0;
        break;
    case K_PRESET: {
        tern_kcp_preset p;
        if (tern_kcp_preset_from_name(text, &p) != 0)
            return bad(err, cap, o, d, text, NULL);
        c->mode = p;
        rc = 0;
        break;
    }
    case K_CC:
        if (!tern_kcp_cc_find(text))
            return bad(err, cap, o, d, text, NULL);
        rc = store_text(c, d, text, o, err, cap);
        break;
    case K_U32:
        rc = tern_cli_parse_u64(text, d->min, d->max, &n);
        if (rc < 0)
            return bad(err, cap, o, d, text, tern_strerror(rc));
        *(uint32_t *)field(c, d) = (uint32_t)n;
        break;
    case K_SIZE:
        rc = tern_cli_parse_size(text, &n);
        if (rc == 0 && (n < d->min || n > d->max))
            rc = TERN_ERR_RANGE;
        if (rc < 0)
            return bad(err, cap, o, d, text, tern_strerror(rc));
        *(uint64_t *)field(c, d) = n;
        break;
    default:
        return fail(err, cap, "internal error: option %s", d->name);
    }
    if (rc == 0)
        c->set |= UINT64_C(1) << id;
    return rc;
}

/* ---- flags ---------------------------------------------------------------- */

#define N_LONG (TERN_TUNNEL_OPT_COUNT + 3)

int tern_tunnel_config_parse_argv(tern_tunnel_config *c, int argc, char **argv, char *err,
                                  size_t cap)
{
    struct option longopts[N_LONG];
    char shortopts[64];
    size_t nl = 0, ns = 0;

    if (argc < 1 || !argv)
        return fail(err, cap, "no arguments");
    /* '+': stop at the first non-option; ':': a missing value is ':'. */
    shortopts[ns++] = '+';
    shortopts[ns++] = ':';
    for (int id = 0; id < TERN_TUNNEL_OPT_COUNT; id++) {
        const opt_def *d = &opts[id];
        if (!for_role(d, c->role))
            continue;
        int has_arg = d->kind == K_BOOL ? no_argument : required_argument;
        longopts[nl++] = (struct option){d->name, has_arg, NULL, OPT_BASE + id};
        if (d->short_name) {
            shortopts[ns++] = d->short_name;
            shortopts[ns++] = ':';
        }
    }
    longopts[nl++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[nl++] = (struct option){"version", no_argument, NULL, 'V'};
    longopts[nl] = (struct option){NULL, 0, NULL, 0};
    shortopts[ns++] = 'h';
    shortopts[ns++] = 'V';
    shortopts[ns] = '\0';

    /* glibc: optind 0 also forgets a half-read cluster of short flags left
     * over from an earlier parse that stopped at an error. */
    optind = 0;
    opterr = 0;
    int ch;
    for (;;) {
        /* The element getopt is about to read (it stays on a cluster of
         * short flags until the cluster ends), to name it in errors. */
        int at = optind > 0 ? optind : 1;
        ch = getopt_long(argc, argv, shortopts, longopts, NULL);
        if (ch == -1)
            break;
        if (ch == 'h') {
            c->help = true;
            return 0;
        }
        if (ch == 'V') {
            c->version = true;
            return 0;
        }
        if (ch == '?' || ch == ':') {
            char q[QUOTE_MAX];
            const char *what = at < argc ? quote(argv[at], q) : "?";
            char shortname[3] = {'-', (char)optopt, '\0'};
            if (strncmp(what, "--", 2) != 0 && optopt > 0 && optopt < OPT_BASE)
                what = shortname;
            if (ch == ':')
                return fail(err, cap, "option '%s' needs a value", what);
            return fail(err, cap, "unknown option '%s'", what);
        }
        int id = -1;
        if (ch >= OPT_BASE) {
            id = ch - OPT_BASE;
        } else {
            for (int i = 0; i < TERN_TUNNEL_OPT_COUNT; i++) {
                if (opts[i].short_name == ch && for_role(&opts[i], c->role))
                    id = i;
            }
        }
        if (id < 0 || id >= TERN_TUNNEL_OPT_COUNT)
            return fail(err, cap, "unknown option '%c'", ch);
        origin o = {NULL};
        int rc = set_text(c, (tern_tunnel_opt)id, optarg ? optarg : "", &o, err, cap);
        if (rc < 0)
            return rc;
    }
    if (optind < argc) {
        char q[QUOTE_MAX];
        return fail(err, cap, "unexpected argument '%s'", quote(argv[optind], q));
    }
    return 0;
}

/* ---- JSON ------------------------------------------------------------------ */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int wrong_type(char *err, size_t cap, const origin *o, const opt_def *d, const json_t *v,
                      const char *want)
{
    return fail(err, cap, "%s: key '%s': expected %s, not %s", o->file, d->name, want,
                json_type_name(v));
}

static int set_json(tern_tunnel_config *c, tern_tunnel_opt id, const json_t *v, const origin *o,
                    char *err, size_t cap)
{
    const opt_def *d = &opts[id];
    char num[32];
    switch (d->kind) {
    case K_BOOL:
        if (!json_is_boolean(v))
            return wrong_type(err, cap, o, d, v, "true or false");
        c->insecure = json_is_true(v);
        c->set |= UINT64_C(1) << id;
        return 0;
    case K_U32:
    case K_SIZE: {
        if (d->kind == K_SIZE && json_is_string(v))
            return set_text(c, id, json_string_value(v), o, err, cap);
        if (!json_is_integer(v))
            return wrong_type(err, cap, o, d, v,
                              d->kind == K_SIZE ? "an integer or a size string" : "an integer");
        json_int_t n = json_integer_value(v);
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, n);
        if (n < 0 || (uint64_t)n < d->min || (uint64_t)n > d->max)
            return bad(err, cap, o, d, num, tern_strerror(TERN_ERR_RANGE));
        if (d->kind == K_U32)
            *(uint32_t *)field(c, d) = (uint32_t)n;
        else
            *(uint64_t *)field(c, d) = (uint64_t)n;
        c->set |= UINT64_C(1) << id;
        return 0;
    }
    case K_ALLOW:
        if (json_is_array(v)) {
            c->allow.n = 0;
            size_t i;
            const json_t *item;
            json_array_foreach(v, i, item)
            {
                if (!json_is_string(item))
                    return wrong_type(err, cap, o, d, item, "an array of strings");
                int rc = set_text(c, id, json_string_value(item), o, err, cap);
                if (rc < 0)
                    return rc;
            }
            c->set |= UINT64_C(1) << id;
            return 0;
        }
        if (!json_is_string(v))
            return wrong_type(err, cap, o, d, v, "a string or an array of strings");
        c->allow.n = 0;
        return set_text(c, id, json_string_value(v), o, err, cap);
    default:
        if (!json_is_string(v))
            return wrong_type(err, cap, o, d, v, "a string");
        return set_text(c, id, json_string_value(v), o, err, cap);
    }
}

static int find_key(const tern_tunnel_config *c, const char *key)
{
    for (int id = 0; id < TERN_TUNNEL_OPT_COUNT; id++) {
        if (id != TERN_TUNNEL_OPT_CONFIG && for_role(&opts[id], c->role) &&
            strcmp(opts[id].name, key) == 0)
            return id;
    }
    return -1;
}

int tern_tunnel_config_parse_json(tern_tunnel_config *c, const char *text, size_t len,
                                  const char *origin_name, char *err, size_t cap)
{
    origin o = {origin_name ? origin_name : "<config>"};
    if (!text)
        return fail(err, cap, "%s: no text", o.file);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, cap, "%s:%d:%d: invalid JSON: %s", o.file, jerr.line, jerr.column,
                    jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = fail(err, cap, "%s: expected a JSON object of options, not %s", o.file,
                  json_type_name(root));
    } else {
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v)
        {
            int id = find_key(c, key);
            if (id < 0) {
                bool other = false;
                for (int i = 0; i < TERN_TUNNEL_OPT_COUNT; i++)
                    other |= i != TERN_TUNNEL_OPT_CONFIG && strcmp(opts[i].name, key) == 0;
                char q[QUOTE_MAX];
                rc = fail(err, cap, "%s: unknown key '%s'%s%s", o.file, quote(key, q),
                          other ? ": not an option of the " : "",
                          other ? tern_tunnel_role_name(c->role) : "");
                break;
            }
            rc = set_json(c, (tern_tunnel_opt)id, v, &o, err, cap);
            if (rc < 0)
                break;
        }
    }
    json_decref(root);
    return rc;
}

int tern_tunnel_config_load_file(tern_tunnel_config *c, const char *path, char *err, size_t cap)
{
    if (!path || !path[0])
        return fail(err, cap, "no config file named");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(err, cap, "cannot read config file '%s': %s", path, strerror(errno));
        return TERN_ERR_IO;
    }
    char *buf = malloc(CONFIG_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        fail(err, cap, "cannot read config file '%s': out of memory", path);
        return TERN_ERR_IO;
    }
    size_t len = fread(buf, 1, CONFIG_FILE_MAX + 1, f);
    bool io_error = ferror(f) != 0;
    fclose(f);
    int rc;
    if (io_error) {
        fail(err, cap, "cannot read config file '%s': read error", path);
        rc = TERN_ERR_IO;
    } else if (len > CONFIG_FILE_MAX) {
        rc = fail(err, cap, "config file '%s' is larger than 1 MiB", path);
    } else {
        rc = tern_tunnel_config_parse_json(c, buf, len, path, err, cap);
    }
    free(buf);
    return rc;
}

/* ---- merge and checks ----------------------------------------------------- */

void tern_tunnel_config_merge(tern_tunnel_config *base, const tern_tunnel_config *over)
{
    for (int id = 0; id < TERN_TUNNEL_OPT_COUNT; id++) {
        if (!tern_tunnel_config_has(over, (tern_tunnel_opt)id))
            continue;
        const opt_def *d = &opts[id];
        memcpy((char *)base + d->off, (const char *)over + d->off, d->size);
        base->set |= UINT64_C(1) << id;
    }
}

static bool has(const tern_tunnel_config *c, tern_tunnel_opt id)
{
    return tern_tunnel_config_has(c, id);
}

static int need(const tern_tunnel_config *c, tern_tunnel_opt id, char *err, size_t cap)
{
    if (has(c, id))
        return 0;
    return fail(err, cap, "--%s is required", opts[id].name);
}

/* Which security the key options select; see the header. */
static int choose_security(tern_tunnel_config *c, char *err, size_t cap)
{
    bool client = c->role == TERN_TUNNEL_CLIENT;
    bool key_file = has(c, TERN_TUNNEL_OPT_KEY_FILE), peer = has(c, TERN_TUNNEL_OPT_PEER_KEY);
    bool psk_file = has(c, TERN_TUNNEL_OPT_PSK_FILE), psk_env = has(c, TERN_TUNNEL_OPT_PSK_ENV);
    bool allow = has(c, TERN_TUNNEL_OPT_ALLOW_KEY) && c->allow.n > 0;
    bool keys = key_file || peer || allow;

    if (c->insecure) {
        if (keys || psk_file || psk_env)
            return fail(err, cap,
                        "--insecure (plaintext) cannot be combined with key options "
                        "(--key-file, --peer-key, --allow-key, --psk-file, --psk-env)");
        c->security = TERN_TUNNEL_SEC_PLAINTEXT;
        return 0;
    }
    if (psk_file || psk_env) {
        if (psk_file && psk_env)
            return fail(err, cap, "--psk-file and --psk-env are exclusive: give one");
        if (keys)
            return fail(err, cap,
                        "a PSK (--psk-file, --psk-env) selects NNpsk0, which uses no "
                        "--key-file, --peer-key or --allow-key");
        c->security = TERN_TUNNEL_SEC_NNPSK0;
        return 0;
    }
    if (!keys)
        return fail(err, cap,
                    "no security given: use %s, a PSK (--psk-file or --psk-env), or --insecure "
                    "for plaintext",
                    client ? "--peer-key (the server's public key)"
                           : "--key-file (our private key)");
    if (client) {
        if (!peer)
            return fail(err, cap, "--key-file needs --peer-key (the server's public key)");
        c->security = key_file ? TERN_TUNNEL_SEC_IK : TERN_TUNNEL_SEC_NK;
    } else {
        if (!key_file)
            return fail(err, cap, "the server needs --key-file (its private key) for %s",
                        peer ? "--peer-key" : "--allow-key");
        c->security = peer || allow ? TERN_TUNNEL_SEC_IK : TERN_TUNNEL_SEC_NK;
    }
    if (peer) {
        size_t len = strlen(c->peer_key);
        c->peer_key_inline = len == TERN_KEY_BASE64_LEN &&
                             tern_public_key_from_base64(&c->peer_public, c->peer_key, len) == 0;
    }
    return 0;
}

int tern_tunnel_config_validate(tern_tunnel_config *c, char *err, size_t cap)
{
    c->security = TERN_TUNNEL_SEC_UNSET;
    c->peer_key_inline = false;
    int rc = need(c, TERN_TUNNEL_OPT_LISTEN, err, cap);
    if (rc == 0)
        rc =
            need(c, c->role == TERN_TUNNEL_CLIENT ? TERN_TUNNEL_OPT_REMOTE : TERN_TUNNEL_OPT_TARGET,
                 err, cap);
    if (rc == 0)
        rc = choose_security(c, err, cap);
    if (rc == 0 && !tern_kcp_cc_find(c->cc))
        rc = fail(err, cap, "unknown congestion control '%s'", c->cc);
    return rc;
}

int tern_tunnel_config_resolve(tern_tunnel_config *out, tern_tunnel_role role, int argc,
                               char **argv, char *err, size_t cap)
{
    tern_tunnel_config *cli = malloc(sizeof(*cli));
    if (!cli) {
        fail(err, cap, "out of memory");
        return TERN_ERR_NOMEM;
    }
    tern_tunnel_config_init(cli, role);
    int rc = tern_tunnel_config_parse_argv(cli, argc, argv, err, cap);
    if (rc == 0 && !cli->help && !cli->version && has(cli, TERN_TUNNEL_OPT_CONFIG)) {
        tern_tunnel_config_init(out, role);
        rc = tern_tunnel_config_load_file(out, cli->config_file, err, cap);
        if (rc == 0)
            tern_tunnel_config_merge(out, cli);
    } else {
        *out = *cli;
    }
    if (rc == 0 && !out->help && !out->version)
        rc = tern_tunnel_config_validate(out, err, cap);
    free(cli);
    return rc;
}

int tern_tunnel_config_apply(const tern_tunnel_config *c, tern_endpoint_config *ep)
{
    if (tern_kcp_settings_preset(&ep->kcp, c->mode) != 0)
        return TERN_ERR_INVAL;
    ep->mtu = c->mtu;
    if (has(c, TERN_TUNNEL_OPT_SNDWND))
        ep->kcp.snd_wnd = c->sndwnd;
    if (has(c, TERN_TUNNEL_OPT_RCVWND))
        ep->kcp.rcv_wnd = c->rcvwnd;
    if (has(c, TERN_TUNNEL_OPT_DSCP))
        ep->dscp = (int)c->dscp;
    if (has(c, TERN_TUNNEL_OPT_SOCKBUF) && c->sockbuf > 0)
        ep->sndbuf = ep->rcvbuf = (int)c->sockbuf;
    /* A session silent for four keepalives is dead: the client reconnects
     * that much sooner after a server restart (the new server drops the old
     * session's datagrams without a word). No pings means an idle tunnel
     * would look dead: then never time out. */
    ep->keepalive_ms = c->keepalive_s * 1000U;
    ep->idle_timeout_ms = 4 * ep->keepalive_ms;
    const tern_kcp_cc_ops *cc = tern_kcp_cc_find(c->cc);
    if (!cc)
        return TERN_ERR_INVAL;
    ep->kcp.cc = cc;
    ep->handshake_timeout_ms = c->handshake_timeout_s * 1000U;
    return 0;
}
