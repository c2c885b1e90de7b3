/* tern-tunnel's option model (tools/tunnel_config.c): flags good and bad,
 * the JSON config file good and bad (unknown key, wrong type, malformed,
 * missing), flags overriding the file, the security selection rules and
 * what the tuning options do to an endpoint config. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/tunnel_config.h"

#define ERR_CAP 512

static char err[ERR_CAP];

/* A public key whose bytes are seed, seed+1, ... in base64. */
static const char *key_b64(uint8_t seed)
{
    static char out[4][TERN_KEY_BASE64_LEN + 1];
    static int next;
    tern_public_key k;
    for (size_t i = 0; i < sizeof(k.b); i++)
        k.b[i] = (uint8_t)(seed + i);
    char *o = out[next++ % 4];
    tern_public_key_to_base64(&k, o);
    return o;
}

static int argv_count(char **argv)
{
    int n = 0;
    while (argv[n])
        n++;
    return n;
}

/* Flags only (no file), then validate when asked. */
static int parse_flags(tern_tunnel_config *c, tern_tunnel_role role, char **argv, bool validate)
{
    tern_tunnel_config_init(c, role);
    err[0] = '\0';
    int rc = tern_tunnel_config_parse_argv(c, argv_count(argv), argv, err, sizeof(err));
    if (rc == 0 && validate)
        rc = tern_tunnel_config_validate(c, err, sizeof(err));
    return rc;
}

#define ARGS(...) ((char *[]){__VA_ARGS__, NULL})

static void expect_error(tern_tunnel_role role, char **argv, const char *needle)
{
    tern_tunnel_config c;
    int rc = parse_flags(&c, role, argv, true);
    cr_assert_eq(rc, TERN_ERR_INVAL, "expected a usage error naming '%s', got %d", needle, rc);
    cr_assert_not_null(strstr(err, needle), "error '%s' does not name '%s'", err, needle);
    cr_assert_null(strchr(err, '\n'), "one line: '%s'", err);
}

static int parse_json(tern_tunnel_config *c, tern_tunnel_role role, const char *text)
{
    tern_tunnel_config_init(c, role);
    err[0] = '\0';
    return tern_tunnel_config_parse_json(c, text, strlen(text), "t.json", err, sizeof(err));
}

static void expect_json_error(tern_tunnel_role role, const char *text, const char *needle)
{
    tern_tunnel_config c;
    int rc = parse_json(&c, role, text);
    cr_assert_eq(rc, TERN_ERR_INVAL, "expected an error for %s", text);
    cr_assert_not_null(strstr(err, needle), "error '%s' does not name '%s'", err, needle);
    cr_assert_not_null(strstr(err, "t.json"), "error '%s' does not name the file", err);
}

/* ---- flags ----------------------------------------------------------------- */

Test(tunnel_config, defaults)
{
    tern_tunnel_config c;
    tern_tunnel_config_init(&c, TERN_TUNNEL_SERVER);
    cr_assert_eq(c.role, TERN_TUNNEL_SERVER);
    cr_assert_eq(c.set, 0);
    cr_assert_eq(c.mode, TERN_KCP_PRESET_FAST3);
    cr_assert_eq(c.mtu, 1400);
    cr_assert_eq(c.keepalive_s, 5);
    cr_assert_str_eq(c.cc, "reno");
    cr_assert_eq(c.stats_interval_s, 0);
    cr_assert_str_eq(tern_tunnel_opt_name(TERN_TUNNEL_OPT_KEY_FILE), "key-file");
}

Test(tunnel_config, client_flags_every_tuning_option)
{
    const char *peer = key_b64(1);
    tern_tunnel_config c;
    int rc = parse_flags(&c, TERN_TUNNEL_CLIENT,
                         ARGS("client", "-l", "127.0.0.1:12948", "-r", "203.0.113.7:29900",
                              "--peer-key", (char *)peer, "--mode", "fast2", "--mtu", "1350",
                              "--sndwnd", "512", "--rcvwnd", "1024", "--dscp", "46", "--sockbuf",
                              "4M", "--keepalive", "10", "--cc", "none", "--handshake-timeout", "2",
                              "--stats-interval", "5", "--stats-json", "s.jsonl"),
                         true);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_str_eq(c.listen, "127.0.0.1:12948");
    cr_assert_str_eq(c.remote, "203.0.113.7:29900");
    cr_assert_eq(c.mode, TERN_KCP_PRESET_FAST2);
    cr_assert_eq(c.mtu, 1350);
    cr_assert_eq(c.sndwnd, 512);
    cr_assert_eq(c.rcvwnd, 1024);
    cr_assert_eq(c.dscp, 46);
    cr_assert_eq(c.sockbuf, 4U << 20);
    cr_assert_eq(c.keepalive_s, 10);
    cr_assert_str_eq(c.cc, "none");
    cr_assert_eq(c.handshake_timeout_s, 2);
    cr_assert_eq(c.stats_interval_s, 5);
    cr_assert_str_eq(c.stats_json, "s.jsonl");
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_NK);
    cr_assert(c.peer_key_inline, "a base64 --peer-key is decoded, not taken for a file");
    tern_public_key want;
    cr_assert_eq(tern_public_key_from_base64(&want, peer, strlen(peer)), 0);
    cr_assert_arr_eq(c.peer_public.b, want.b, sizeof(want.b));
    cr_assert(tern_tunnel_config_has(&c, TERN_TUNNEL_OPT_MTU));
    cr_assert_not(tern_tunnel_config_has(&c, TERN_TUNNEL_OPT_INSECURE));
}

Test(tunnel_config, long_flags_with_equals_and_names)
{
    tern_tunnel_config c;
    int rc = parse_flags(
        &c, TERN_TUNNEL_CLIENT,
        ARGS("client", "--listen=[::1]:0", "--remote=localhost:29900", "--peer-key=server.pub"),
        true);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_str_eq(c.listen, "[::1]:0");
    cr_assert_str_eq(c.remote, "localhost:29900", "names are kept for the tool to resolve");
    cr_assert_not(c.peer_key_inline, "not a key: a file name");
    cr_assert_str_eq(c.peer_key, "server.pub");
}

Test(tunnel_config, help_and_version)
{
    tern_tunnel_config c;
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT, ARGS("client", "--help"), false), 0);
    cr_assert(c.help);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_SERVER, ARGS("server", "-V"), false), 0);
    cr_assert(c.version);
    cr_assert_not(c.help);
    /* resolve() stops there: nothing else is required. */
    cr_assert_eq(tern_tunnel_config_resolve(&c, TERN_TUNNEL_SERVER, 2, ARGS("server", "-h"), err,
                                            sizeof(err)),
                 0, "%s", err);
    cr_assert(c.help);
}

Test(tunnel_config, bad_flags_name_the_flag)
{
    const char *k = key_b64(9);
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--bogus"), "'--bogus'");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-x"), "'-x'");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l"), "'-l' needs a value");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--mtu"), "'--mtu' needs a value");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--mtu", "12"), "--mtu");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--mtu", "70000"), "--mtu");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--mtu", "abc"), "'abc'");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--sndwnd", "0"), "--sndwnd");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--dscp", "64"), "--dscp");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--sockbuf", "2G"), "--sockbuf");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--keepalive", "-1"), "--keepalive");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--mode", "warp"), "'warp'");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--cc", "cubic"), "--cc");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--psk-env", "1BAD"), "--psk-env");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--psk-env", "A-B"), "--psk-env");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--key-file", ""), "--key-file");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", ":1", "stray"), "'stray'");
    /* Addresses: shape only, never resolved here. */
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", "12948"), "--listen");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", "::1:80"), "--listen");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", "[::1]"), "--listen");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", ":65536"), "--listen");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-r", ":29900"), "--remote");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-r", "host:0"), "--remote");
    expect_error(TERN_TUNNEL_SERVER, ARGS("server", "-t", "bad host:22"), "--target");
    /* A value with a newline (found by fuzz_tunnel_config) still makes a
     * one-line error, the byte shown escaped. */
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", "1\n27.0.0.1:1"), "1\\x0a27.0.0.1:1");
    /* The other role's flags do not exist. */
    expect_error(TERN_TUNNEL_SERVER, ARGS("server", "-r", "1.2.3.4:5"), "'-r'");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-t", "1.2.3.4:5"), "'-t'");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "--allow-key", (char *)k), "--allow-key");
    expect_error(TERN_TUNNEL_SERVER, ARGS("server", "--handshake-timeout", "1"),
                 "--handshake-timeout");
    expect_error(TERN_TUNNEL_SERVER, ARGS("server", "--allow-key", "bm90IGEga2V5"), "--allow-key");
}

Test(tunnel_config, getopt_state_is_reset_between_parses)
{
    tern_tunnel_config c;
    /* Stops inside a cluster of short flags ... */
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT, ARGS("client", "-hx"), false), 0);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT, ARGS("client", "-xl", "a"), false),
                 TERN_ERR_INVAL);
    /* ... and the next parse starts afresh. */
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--insecure"), true),
                 0, "%s", err);
    cr_assert_str_eq(c.listen, ":1");
}

/* ---- security selection ------------------------------------------------------ */

Test(tunnel_config, security_client)
{
    tern_tunnel_config c;
    const char *k = key_b64(3);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--peer-key", (char *)k),
                             true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_NK);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--peer-key", (char *)k,
                                  "--key-file", "c.key"),
                             true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_IK);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--psk-env", "TUNNEL_PSK"),
                             true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_NNPSK0);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--psk-file", "p"), true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_NNPSK0);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--insecure"), true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_PLAINTEXT);
    cr_assert_str_eq(tern_tunnel_security_name(c.security), "plaintext");
}

Test(tunnel_config, security_server)
{
    tern_tunnel_config c;
    const char *a = key_b64(4), *b = key_b64(5);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_SERVER,
                             ARGS("server", "-l", ":1", "-t", "h:2", "--key-file", "s.key"), true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_NK);
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_SERVER,
                             ARGS("server", "-l", ":1", "-t", "h:2", "--key-file", "s.key",
                                  "--allow-key", (char *)a, "--allow-key", (char *)b),
                             true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_IK);
    cr_assert_eq(c.allow.n, 2);
    tern_public_key ka;
    cr_assert_eq(tern_public_key_from_base64(&ka, a, strlen(a)), 0);
    cr_assert_arr_eq(c.allow.keys[0].b, ka.b, sizeof(ka.b));
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_SERVER,
                             ARGS("server", "-l", ":1", "-t", "h:2", "--key-file", "s.key",
                                  "--peer-key", "client.pub"),
                             true),
                 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_IK);
}

Test(tunnel_config, security_rules_refuse)
{
    const char *k = key_b64(6);
    /* No key material at all: plaintext only with --insecure. */
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", ":1", "-r", "h:2"), "--insecure");
    expect_error(TERN_TUNNEL_SERVER, ARGS("server", "-l", ":1", "-t", "h:2"), "--insecure");
    expect_error(TERN_TUNNEL_CLIENT,
                 ARGS("client", "-l", ":1", "-r", "h:2", "--insecure", "--peer-key", (char *)k),
                 "--insecure");
    expect_error(TERN_TUNNEL_SERVER,
                 ARGS("server", "-l", ":1", "-t", "h:2", "--insecure", "--psk-env", "P"),
                 "--insecure");
    expect_error(TERN_TUNNEL_CLIENT,
                 ARGS("client", "-l", ":1", "-r", "h:2", "--psk-env", "P", "--psk-file", "f"),
                 "--psk-file and --psk-env");
    expect_error(TERN_TUNNEL_CLIENT,
                 ARGS("client", "-l", ":1", "-r", "h:2", "--psk-env", "P", "--peer-key", (char *)k),
                 "NNpsk0");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", ":1", "-r", "h:2", "--key-file", "c.key"),
                 "--peer-key");
    expect_error(TERN_TUNNEL_SERVER,
                 ARGS("server", "-l", ":1", "-t", "h:2", "--peer-key", (char *)k), "--key-file");
    expect_error(TERN_TUNNEL_SERVER,
                 ARGS("server", "-l", ":1", "-t", "h:2", "--allow-key", (char *)k), "--key-file");
    /* What is required. */
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-r", "h:2", "--insecure"), "--listen");
    expect_error(TERN_TUNNEL_CLIENT, ARGS("client", "-l", ":1", "--insecure"), "--remote");
    expect_error(TERN_TUNNEL_SERVER, ARGS("server", "-l", ":1", "--insecure"), "--target");
}

/* ---- JSON --------------------------------------------------------------------- */

Test(tunnel_config, json_every_key)
{
    const char *a = key_b64(7), *b = key_b64(8);
    char text[2048];
    snprintf(text, sizeof(text),
             "{\"listen\": \":29900\", \"target\": \"127.0.0.1:22\", \"key-file\": \"s.key\",\n"
             " \"allow-key\": [\"%s\", \"%s\"], \"mode\": \"turbo\", \"mtu\": 1200,\n"
             " \"sndwnd\": 64, \"rcvwnd\": 2048, \"dscp\": 10, \"sockbuf\": \"8M\",\n"
             " \"keepalive\": 0, \"cc\": \"none\", \"stats-interval\": 3,\n"
             " \"stats-json\": \"st.jsonl\", \"insecure\": false}\n",
             a, b);
    tern_tunnel_config c;
    cr_assert_eq(parse_json(&c, TERN_TUNNEL_SERVER, text), 0, "%s", err);
    cr_assert_str_eq(c.listen, ":29900");
    cr_assert_str_eq(c.target, "127.0.0.1:22");
    cr_assert_str_eq(c.key_file, "s.key");
    cr_assert_eq(c.allow.n, 2);
    cr_assert_eq(c.mode, TERN_KCP_PRESET_TURBO);
    cr_assert_eq(c.mtu, 1200);
    cr_assert_eq(c.sndwnd, 64);
    cr_assert_eq(c.rcvwnd, 2048);
    cr_assert_eq(c.dscp, 10);
    cr_assert_eq(c.sockbuf, 8U << 20);
    cr_assert_eq(c.keepalive_s, 0);
    cr_assert_str_eq(c.cc, "none");
    cr_assert_eq(c.stats_interval_s, 3);
    cr_assert_str_eq(c.stats_json, "st.jsonl");
    cr_assert_not(c.insecure);
    cr_assert_eq(tern_tunnel_config_validate(&c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_IK);

    /* One key as a plain string; sockbuf as an integer. */
    snprintf(text, sizeof(text),
             "{\"listen\": \":1\", \"target\": \"h:2\", \"key-file\": \"k\", \"allow-key\": \"%s\","
             " \"sockbuf\": 65536}",
             a);
    cr_assert_eq(parse_json(&c, TERN_TUNNEL_SERVER, text), 0, "%s", err);
    cr_assert_eq(c.allow.n, 1);
    cr_assert_eq(c.sockbuf, 65536);
    cr_assert_eq(parse_json(&c, TERN_TUNNEL_CLIENT, "{}"), 0, "an empty object is fine: %s", err);
    cr_assert_eq(c.set, 0);
}

Test(tunnel_config, json_errors_name_the_key)
{
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"listen\": \":1\", \"bogus\": 1}",
                      "unknown key 'bogus'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"config\": \"x.json\"}", "unknown key 'config'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"target\": \"h:1\"}", "not an option of the client");
    expect_json_error(TERN_TUNNEL_SERVER, "{\"remote\": \"h:1\"}", "not an option of the server");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": \"1350\"}", "key 'mtu': expected an integer");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": 1350.5}", "key 'mtu'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": 100}", "key 'mtu'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": -1400}", "key 'mtu'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": null}", "key 'mtu'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"listen\": 29900}", "key 'listen': expected a string");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"listen\": \"29900\"}", "key 'listen'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"insecure\": \"yes\"}", "key 'insecure'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mode\": \"warp\"}", "key 'mode'");
    expect_json_error(TERN_TUNNEL_SERVER, "{\"allow-key\": [1]}", "key 'allow-key'");
    expect_json_error(TERN_TUNNEL_SERVER, "{\"allow-key\": {}}", "key 'allow-key'");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": 1350,}", "invalid JSON");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": 1350", "invalid JSON");
    expect_json_error(TERN_TUNNEL_CLIENT, "", "invalid JSON");
    expect_json_error(TERN_TUNNEL_CLIENT, "{} {}", "invalid JSON");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"mtu\": 1350, \"mtu\": 1400}", "invalid JSON");
    expect_json_error(TERN_TUNNEL_CLIENT, "[\"listen\", \":1\"]", "JSON object");
    expect_json_error(TERN_TUNNEL_CLIENT, "{\"a\\nb\": 1}", "unknown key 'a\\x0ab'");
    cr_assert_null(strchr(err, '\n'), "one line: %s", err);
    /* Text with a NUL inside is not cut short at it. */
    tern_tunnel_config c;
    tern_tunnel_config_init(&c, TERN_TUNNEL_CLIENT);
    cr_assert_eq(tern_tunnel_config_parse_json(&c, "{}\0{", 4, "t.json", err, sizeof(err)),
                 TERN_ERR_INVAL);
}

static char *write_temp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/tern-tunnel-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

Test(tunnel_config, file_missing_and_bad)
{
    tern_tunnel_config c;
    tern_tunnel_config_init(&c, TERN_TUNNEL_CLIENT);
    int rc = tern_tunnel_config_load_file(&c, "/nonexistent/tunnel.json", err, sizeof(err));
    cr_assert_eq(rc, TERN_ERR_IO);
    cr_assert_not_null(strstr(err, "/nonexistent/tunnel.json"), "%s", err);

    char *path = write_temp("{\"listen\": \":1\",\n \"mtu\": \"big\"}\n");
    tern_tunnel_config_init(&c, TERN_TUNNEL_CLIENT);
    rc = tern_tunnel_config_load_file(&c, path, err, sizeof(err));
    cr_assert_eq(rc, TERN_ERR_INVAL);
    cr_assert_not_null(strstr(err, path), "%s", err);
    cr_assert_not_null(strstr(err, "'mtu'"), "%s", err);
    unlink(path);

    /* resolve() reports the missing file given with -c. */
    rc = tern_tunnel_config_resolve(&c, TERN_TUNNEL_CLIENT, 3,
                                    ARGS("client", "-c", "/nonexistent/tunnel.json"), err,
                                    sizeof(err));
    cr_assert_eq(rc, TERN_ERR_IO);
}

Test(tunnel_config, flags_override_the_file)
{
    const char *f1 = key_b64(20), *f2 = key_b64(21), *cli = key_b64(22);
    char text[1024];
    snprintf(text, sizeof(text),
             "{\"listen\": \":29900\", \"target\": \"127.0.0.1:22\", \"mtu\": 1350,"
             " \"mode\": \"fast\", \"key-file\": \"file.key\", \"allow-key\": [\"%s\", \"%s\"]}",
             f1, f2);
    char *path = write_temp(text);
    tern_tunnel_config c;
    char **argv = ARGS("server", "--mtu", "1200", "-c", path, "--allow-key", (char *)cli,
                       "--stats-interval", "7");
    int rc = tern_tunnel_config_resolve(&c, TERN_TUNNEL_SERVER, argv_count(argv), argv, err,
                                        sizeof(err));
    unlink(path);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(c.mtu, 1200, "the flag wins, wherever -c stands");
    cr_assert_eq(c.mode, TERN_KCP_PRESET_FAST, "the file's value stays");
    cr_assert_str_eq(c.listen, ":29900");
    cr_assert_str_eq(c.key_file, "file.key");
    cr_assert_eq(c.stats_interval_s, 7);
    cr_assert_eq(c.allow.n, 1, "flags replace the file's key list");
    tern_public_key want;
    cr_assert_eq(tern_public_key_from_base64(&want, cli, strlen(cli)), 0);
    cr_assert_arr_eq(c.allow.keys[0].b, want.b, sizeof(want.b));
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_IK);

    /* A file alone can satisfy every requirement ... */
    path = write_temp("{\"listen\": \":1\", \"remote\": \"h:2\", \"insecure\": true}");
    argv = ARGS("client", "-c", path);
    rc = tern_tunnel_config_resolve(&c, TERN_TUNNEL_CLIENT, 3, argv, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(c.security, TERN_TUNNEL_SEC_PLAINTEXT);
    /* ... and its security is checked with the flags merged in. */
    argv = ARGS("client", "-c", path, "--psk-env", "P");
    rc = tern_tunnel_config_resolve(&c, TERN_TUNNEL_CLIENT, 5, argv, err, sizeof(err));
    unlink(path);
    cr_assert_eq(rc, TERN_ERR_INVAL);
    cr_assert_not_null(strstr(err, "--insecure"), "%s", err);
}

/* ---- onto an endpoint config ---------------------------------------------------- */

Test(tunnel_config, apply_tuning)
{
    tern_tunnel_config c;
    cr_assert_eq(parse_flags(&c, TERN_TUNNEL_CLIENT,
                             ARGS("client", "-l", ":1", "-r", "h:2", "--insecure", "--mode",
                                  "turbo", "--mtu", "1200", "--sndwnd", "300", "--rcvwnd", "600",
                                  "--dscp", "46", "--sockbuf", "1M", "--keepalive", "20", "--cc",
                                  "none", "--handshake-timeout", "3"),
                             true),
                 0, "%s", err);
    tern_endpoint_config ep;
    tern_endpoint_config_default(&ep);
    cr_assert_eq(tern_tunnel_config_apply(&c, &ep), 0);
    tern_kcp_settings turbo;
    tern_kcp_settings_default(&turbo);
    cr_assert_eq(tern_kcp_settings_preset(&turbo, TERN_KCP_PRESET_TURBO), 0);
    cr_assert_eq(ep.kcp.interval_ms, turbo.interval_ms);
    cr_assert_eq(ep.kcp.rto_min_ms, turbo.rto_min_ms);
    cr_assert_eq(ep.kcp.fast_resend, turbo.fast_resend);
    cr_assert_eq(ep.mtu, 1200);
    cr_assert_eq(ep.kcp.snd_wnd, 300);
    cr_assert_eq(ep.kcp.rcv_wnd, 600);
    cr_assert_eq(ep.dscp, 46);
    cr_assert_eq(ep.sndbuf, 1 << 20);
    cr_assert_eq(ep.rcvbuf, 1 << 20);
    cr_assert_eq(ep.keepalive_ms, 20000);
    cr_assert_eq(ep.idle_timeout_ms, 80000, "four keepalives");
    cr_assert_eq(ep.kcp.cc, tern_kcp_cc_find("none"));
    cr_assert_eq(ep.handshake_timeout_ms, 3000);

    /* Defaults leave the transport's windows, buffers and DSCP alone;
     * keepalive 0 turns off pings and the idle timeout together. */
    cr_assert_eq(
        parse_flags(&c, TERN_TUNNEL_CLIENT,
                    ARGS("client", "-l", ":1", "-r", "h:2", "--insecure", "--keepalive", "0"),
                    true),
        0, "%s", err);
    tern_endpoint_config def;
    tern_endpoint_config_default(&def);
    tern_endpoint_config_default(&ep);
    cr_assert_eq(tern_tunnel_config_apply(&c, &ep), 0);
    cr_assert_eq(ep.kcp.snd_wnd, def.kcp.snd_wnd);
    cr_assert_eq(ep.kcp.rcv_wnd, def.kcp.rcv_wnd);
    cr_assert_eq(ep.dscp, def.dscp);
    cr_assert_eq(ep.sndbuf, def.sndbuf);
    cr_assert_eq(ep.keepalive_ms, 0);
    cr_assert_eq(ep.idle_timeout_ms, 0);
    cr_assert_eq(ep.kcp.cc, tern_kcp_cc_find("reno"));
}
