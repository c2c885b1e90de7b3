/* tern-tunnel's option model (tools/tunnel_config.c) on arbitrary flags and
 * arbitrary JSON, the way the program uses it: flags, the config text, the
 * merge (flags win) and the checks. No file is ever read: the JSON comes
 * from the input through tern_tunnel_config_parse_json(), and a -c in the
 * flags is only recorded.
 *
 * The input:
 *   byte 0     bit 0: the role (client, server); bits 1-2: what runs
 *              (0 JSON only, 1 flags only, 2 and 3 both)
 *   flags      byte 1 is the number of arguments (at most 31), each
 *              NUL-terminated (the last may end with the input)
 *   the rest   the JSON text (any bytes, NULs included)
 *
 * Invariants: every call returns 0 or TERN_ERR_INVAL with a one-line
 * message; parsing the same text twice gives the same options; after a
 * merge every option the flags set has the flags' value; a config that
 * validates has its required addresses, a security mode that follows the
 * rules in tools/tunnel_config.h, every string terminated inside its array,
 * every number in its range, and tern_tunnel_config_apply() accepts it.
 *
 * Built with -DTERN_FUZZ_TRACE, it prints each input's outcome. */
#include "fuzz_common.h"

#include "tern/crypto.h"
#include "tools/tunnel_config.h"

#define MAX_ARGV 31
#define ERR_CAP 512

static void trace(const char *stage, int rc, const char *err)
{
#ifdef TERN_FUZZ_TRACE
    fprintf(stderr, "%s: %d %s\n", stage, rc, rc ? err : "ok");
#else
    (void)stage, (void)rc, (void)err;
#endif /* TERN_FUZZ_TRACE */
}

static void check_err(int rc, const char *err)
{
    FUZZ_CHECK(rc == 0 || rc == TERN_ERR_INVAL, "rc %d", rc);
    if (rc == 0)
        return;
    size_t len = strnlen(err, ERR_CAP);
    FUZZ_CHECK(len > 0 && len < ERR_CAP, "error message length %zu", len);
    FUZZ_CHECK(memchr(err, '\n', len) == NULL, "a multi-line error: %s", err);
}

static bool has(const tern_tunnel_config *c, tern_tunnel_opt o)
{
    return tern_tunnel_config_has(c, o);
}

#define TERMINATED(c, f) FUZZ_CHECK(memchr((c)->f, '\0', sizeof((c)->f)) != NULL, #f)

static void check_valid(const tern_tunnel_config *c)
{
    TERMINATED(c, listen);
    TERMINATED(c, remote);
    TERMINATED(c, target);
    TERMINATED(c, key_file);
    TERMINATED(c, peer_key);
    TERMINATED(c, psk_file);
    TERMINATED(c, psk_env);
    TERMINATED(c, cc);
    TERMINATED(c, stats_json);
    TERMINATED(c, config_file);
    bool client = c->role == TERN_TUNNEL_CLIENT;
    FUZZ_CHECK(has(c, TERN_TUNNEL_OPT_LISTEN) && c->listen[0], "no listen address");
    if (client)
        FUZZ_CHECK(has(c, TERN_TUNNEL_OPT_REMOTE) && c->remote[0], "client without remote");
    else
        FUZZ_CHECK(has(c, TERN_TUNNEL_OPT_TARGET) && c->target[0], "server without target");
    FUZZ_CHECK(c->mtu >= TERN_TUNNEL_MTU_MIN && c->mtu <= TERN_TUNNEL_MTU_MAX, "mtu %u", c->mtu);
    FUZZ_CHECK(c->dscp <= 63, "dscp %u", c->dscp);
    FUZZ_CHECK(c->sockbuf <= TERN_TUNNEL_SOCKBUF_MAX, "sockbuf");
    FUZZ_CHECK(c->keepalive_s <= TERN_TUNNEL_KEEPALIVE_MAX, "keepalive");
    FUZZ_CHECK(c->allow.n <= TERN_TUNNEL_ALLOW_MAX, "allow list %zu", c->allow.n);
    FUZZ_CHECK(tern_kcp_cc_find(c->cc) != NULL, "cc %s", c->cc);

    bool key_file = has(c, TERN_TUNNEL_OPT_KEY_FILE), peer = has(c, TERN_TUNNEL_OPT_PEER_KEY);
    bool psk = has(c, TERN_TUNNEL_OPT_PSK_FILE) || has(c, TERN_TUNNEL_OPT_PSK_ENV);
    bool allow = has(c, TERN_TUNNEL_OPT_ALLOW_KEY) && c->allow.n > 0;
    switch (c->security) {
    case TERN_TUNNEL_SEC_PLAINTEXT:
        FUZZ_CHECK(c->insecure && !key_file && !peer && !psk && !allow, "plaintext with keys");
        break;
    case TERN_TUNNEL_SEC_NNPSK0:
        FUZZ_CHECK(!c->insecure && psk && !key_file && !peer && !allow, "NNpsk0 rules");
        FUZZ_CHECK(!(has(c, TERN_TUNNEL_OPT_PSK_FILE) && has(c, TERN_TUNNEL_OPT_PSK_ENV)),
                   "two PSKs");
        break;
    case TERN_TUNNEL_SEC_NK:
        FUZZ_CHECK(!c->insecure && !psk, "NK rules");
        FUZZ_CHECK(client ? peer && !key_file : key_file && !peer && !allow, "NK keys");
        break;
    case TERN_TUNNEL_SEC_IK:
        FUZZ_CHECK(!c->insecure && !psk && key_file, "IK rules");
        FUZZ_CHECK(client ? peer : peer || allow, "IK keys");
        break;
    default:
        FUZZ_CHECK(0, "validated without a security mode");
    }
    if (c->peer_key_inline) {
        tern_public_key k;
        FUZZ_CHECK(tern_public_key_from_base64(&k, c->peer_key, strlen(c->peer_key)) == 0 &&
                       memcmp(&k, &c->peer_public, sizeof(k)) == 0,
                   "inline peer key");
    }

    /* The transport's defaults, by hand: the harness links no transport. */
    tern_endpoint_config ep;
    memset(&ep, 0, sizeof(ep));
    tern_kcp_settings_default(&ep.kcp);
    ep.mtu = 1400;
    ep.keepalive_ms = 5000;
    ep.idle_timeout_ms = 30000;
    ep.dscp = -1;
    FUZZ_CHECK(tern_tunnel_config_apply(c, &ep) == 0, "apply refused a valid config");
    FUZZ_CHECK(ep.mtu == c->mtu, "mtu not applied");
    FUZZ_CHECK(ep.kcp.snd_wnd >= 1 && ep.kcp.snd_wnd <= TERN_KCP_WND_MAX, "snd_wnd");
    FUZZ_CHECK(ep.kcp.rcv_wnd >= 1 && ep.kcp.rcv_wnd <= TERN_KCP_WND_MAX, "rcv_wnd");
    FUZZ_CHECK(ep.kcp.cc == tern_kcp_cc_find(c->cc), "cc not applied");
    FUZZ_CHECK(ep.keepalive_ms == c->keepalive_s * 1000U &&
                   ep.idle_timeout_ms == 4 * ep.keepalive_ms,
               "keepalive and idle timeout");
}

/* Parses the JSON twice: the same options both times. */
static int parse_json(tern_tunnel_config *c, tern_tunnel_role role, const char *text, size_t len)
{
    static tern_tunnel_config again;
    char err[ERR_CAP] = "";
    tern_tunnel_config_init(c, role);
    int rc = tern_tunnel_config_parse_json(c, text, len, "fuzz.json", err, sizeof(err));
    trace("json", rc, err);
    check_err(rc, err);
    tern_tunnel_config_init(&again, role);
    int rc2 = tern_tunnel_config_parse_json(&again, text, len, "fuzz.json", err, sizeof(err));
    FUZZ_CHECK(rc == rc2, "rc %d then %d", rc, rc2);
    if (rc == 0)
        FUZZ_CHECK(memcmp(c, &again, sizeof(again)) == 0, "two parses differ");
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tern_tunnel_config flags, file, before;
    static char argstore[4096];
    char *argv[MAX_ARGV + 2];
    char err[ERR_CAP] = "";

    if (size < 1)
        return 0;
    tern_tunnel_role role = (data[0] & 1) ? TERN_TUNNEL_SERVER : TERN_TUNNEL_CLIENT;
    unsigned what = (data[0] >> 1) & 3;
    size_t off = 1;

    int argc = 0;
    argv[argc++] = (char *)tern_tunnel_role_name(role);
    if (what != 0 && off < size) {
        unsigned n = data[off++] % (MAX_ARGV + 1);
        size_t used = 0;
        for (unsigned i = 0; i < n && off < size; i++) {
            const uint8_t *nul = memchr(data + off, '\0', size - off);
            size_t len = nul ? (size_t)(nul - (data + off)) : size - off;
            if (used + len + 1 > sizeof(argstore))
                break;
            memcpy(argstore + used, data + off, len);
            argstore[used + len] = '\0';
            argv[argc++] = argstore + used;
            used += len + 1;
            off += len + (nul ? 1 : 0);
        }
    }
    argv[argc] = NULL;
    const char *text = (const char *)data + off;
    size_t text_len = size - off;

    int rc;
    if (what == 0) {
        rc = parse_json(&file, role, text, text_len);
        if (rc == 0) {
            rc = tern_tunnel_config_validate(&file, err, sizeof(err));
            trace("validate", rc, err);
            check_err(rc, err);
            if (rc == 0)
                check_valid(&file);
        }
        return 0;
    }

    tern_tunnel_config_init(&flags, role);
    rc = tern_tunnel_config_parse_argv(&flags, argc, argv, err, sizeof(err));
    trace("flags", rc, err);
    check_err(rc, err);
    if (rc != 0 || flags.help || flags.version)
        return 0;
    tern_tunnel_config *result = &flags;
    if (what >= 2) {
        if (parse_json(&file, role, text, text_len) != 0)
            return 0;
        before = file;
        tern_tunnel_config_merge(&file, &flags);
        FUZZ_CHECK((file.set & flags.set) == flags.set, "a flag was lost in the merge");
        FUZZ_CHECK((file.set & ~flags.set) == (before.set & ~flags.set), "merge invented options");
        if (has(&flags, TERN_TUNNEL_OPT_MTU))
            FUZZ_CHECK(file.mtu == flags.mtu, "the file's mtu won");
        if (has(&flags, TERN_TUNNEL_OPT_LISTEN))
            FUZZ_CHECK(strcmp(file.listen, flags.listen) == 0, "the file's listen won");
        if (has(&flags, TERN_TUNNEL_OPT_ALLOW_KEY))
            FUZZ_CHECK(file.allow.n == flags.allow.n, "the allow lists were mixed");
        if (!has(&flags, TERN_TUNNEL_OPT_MODE))
            FUZZ_CHECK(file.mode == before.mode, "the file's mode was lost");
        result = &file;
    }
    rc = tern_tunnel_config_validate(result, err, sizeof(err));
    trace("validate", rc, err);
    check_err(rc, err);
    if (rc == 0)
        check_valid(result);
    return 0;
}
