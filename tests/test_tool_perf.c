/* tern-perf, run as a program (TERN_PERF_BIN, from CMake) on 127.0.0.1:
 * a server on an ephemeral port (its readiness line names the port) and a
 * client per test. Throughput for 1 s moves bytes and reports JSON with
 * the expected keys (also reversed, in plaintext); latency for 1 s at 200/s
 * gives 200 ordered samples; game mode with 4 sessions delivers every
 * reliable message; --plot writes an SVG; bad flags exit 2 with one line
 * naming them; --help and --version exit 0; the server exits 0 on SIGTERM
 * after every test. Bounds are wide: these are wall-clock runs. */
#include <criterion/criterion.h>

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tool_util.h"

#ifndef TERN_PERF_BIN
#error "TERN_PERF_BIN must name the tern-perf binary (tests/CMakeLists.txt)"
#endif /* TERN_PERF_BIN */

#define READY_TIMEOUT_MS 10000
#define RUN_TIMEOUT_MS 30000

/* ---- Running the program ------------------------------------------------ */

typedef tool_proc proc;

static void run(proc *p, const char *const *args)
{
    tool_spawn(p, &(tool_cmd){.bin = TERN_PERF_BIN, .args = args, .name = "tern-perf"});
    tool_wait_exit(p, RUN_TIMEOUT_MS);
}

#define RUN(p, ...) run((p), TOOL_ARGS(__VA_ARGS__))

/* ---- A server ------------------------------------------------------------ */

typedef struct server {
    proc p;
    char addr[32]; /* 127.0.0.1:PORT */
} server;

static void server_start(server *s, const char *const *extra)
{
    const char *args[TOOL_ARGS_MAX];
    int n = 0;
    args[n++] = "server";
    args[n++] = "-l";
    args[n++] = "127.0.0.1:0";
    for (; extra && *extra && n < TOOL_ARGS_MAX - 1; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    tool_start(&s->p, &(tool_cmd){.bin = TERN_PERF_BIN, .args = args, .name = "tern-perf"},
               "listening on ", READY_TIMEOUT_MS);
    cr_assert_not_null(strstr(s->p.err, "listening on 127.0.0.1:"), "%s", s->p.err);
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", (unsigned)s->p.port);
}

/* SIGTERM: the server closes everything and exits 0. */
static void server_stop(server *s)
{
    tool_stop(&s->p, SIGTERM, 10000);
}

/* Runs a client against s with args after the address; returns its JSON. */
static json_t *client_json(server *s, proc *c, const char *const *args)
{
    const char *argv[TOOL_ARGS_MAX];
    int n = 0;
    argv[n++] = "client";
    argv[n++] = s->addr;
    for (; *args && n < TOOL_ARGS_MAX - 2; args++)
        argv[n++] = *args;
    argv[n++] = "--json";
    argv[n] = NULL;
    run(c, argv);
    cr_assert_eq(c->status, 0, "client status %d; stderr: %s", c->status, c->err);
    json_error_t err;
    json_t *r = json_loads(c->out, 0, &err);
    cr_assert_not_null(r, "not JSON (%s): %s", err.text, c->out);
    cr_assert(json_is_object(r));
    return r;
}

#define CLIENT_JSON(s, c, ...) client_json((s), (c), (const char *const[]){__VA_ARGS__, NULL})

static const json_t *at(const json_t *o, const char *path)
{
    /* "a.b.c" */
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const json_t *v = o;
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k; k = strtok_r(NULL, ".", &save)) {
        v = json_object_get(v, k);
        cr_assert_not_null(v, "no key '%s' (in %s)", k, path);
    }
    return v;
}

static double num(const json_t *o, const char *path)
{
    const json_t *v = at(o, path);
    cr_assert(json_is_number(v), "%s is not a number", path);
    return json_number_value(v);
}

/* ---- Flags ----------------------------------------------------------------- */

static void assert_usage_error(const proc *p, const char *mentions1, const char *mentions2)
{
    cr_assert_eq(p->status, 2, "status %d; stderr: %s", p->status, p->err);
    cr_assert_str_eq(p->out, "");
    cr_assert_eq(strncmp(p->err, "tern-perf", 9), 0, "%s", p->err);
    const char *nl = strchr(p->err, '\n');
    cr_assert_not_null(nl);
    cr_assert_not_null(strstr(p->err, mentions1), "'%s' not in: %s", mentions1, p->err);
    if (mentions2)
        cr_assert_not_null(strstr(p->err, mentions2), "'%s' not in: %s", mentions2, p->err);
}

static void assert_one_line_usage_error(const proc *p, const char *m1, const char *m2)
{
    assert_usage_error(p, m1, m2);
    cr_assert_eq(strchr(p->err, '\n')[1], '\0', "not one line: %s", p->err);
}

Test(tool_perf, help_and_version)
{
    proc p;
    RUN(&p, "--help");
    cr_assert_eq(p.status, 0);
    cr_assert_not_null(strstr(p.out, "server"));
    cr_assert_not_null(strstr(p.out, "client"));
    RUN(&p, "client", "--help");
    cr_assert_eq(p.status, 0);
    cr_assert_str_eq(p.err, "");
    cr_assert_not_null(strstr(p.out, "usage: tern-perf client HOST:PORT"));
    cr_assert_not_null(strstr(p.out, "--msgs-per-sec"));
    RUN(&p, "server", "--help");
    cr_assert_eq(p.status, 0);
    cr_assert_not_null(strstr(p.out, "usage: tern-perf server"));
    RUN(&p, "--version");
    cr_assert_eq(p.status, 0);
    cr_assert_eq(strncmp(p.out, "tern-perf ", 10), 0, "%s", p.out);
    RUN(&p, "client", "--version");
    cr_assert_eq(p.status, 0);
    cr_assert_eq(strncmp(p.out, "tern-perf ", 10), 0, "%s", p.out);
}

Test(tool_perf, bad_flags_exit_2)
{
    proc p;
    RUN(&p, "client", "127.0.0.1:9", "--mode", "bogus");
    assert_one_line_usage_error(&p, "--mode", "'bogus'");
    RUN(&p, "client", "127.0.0.1:9", "--preset", "warp");
    assert_one_line_usage_error(&p, "--preset", "'warp'");
    RUN(&p, "client", "127.0.0.1:9", "--cipher", "rot13");
    assert_one_line_usage_error(&p, "--cipher", "'rot13'");
    RUN(&p, "client", "127.0.0.1:9", "--cc", "bbr");
    assert_one_line_usage_error(&p, "--cc", "'bbr'");
    RUN(&p, "client", "127.0.0.1:9", "--time", "soon");
    assert_one_line_usage_error(&p, "--time", "'soon'");
    RUN(&p, "client", "127.0.0.1:9", "--time", "0");
    assert_one_line_usage_error(&p, "--time", "'0'");
    RUN(&p, "client", "127.0.0.1:9", "--rate", "0");
    assert_one_line_usage_error(&p, "--rate", "'0'");
    RUN(&p, "client", "127.0.0.1:9", "--mtu", "100");
    assert_one_line_usage_error(&p, "--mtu", "'100'");
    RUN(&p, "client", "127.0.0.1:9", "--mode", "latency", "--size", "8");
    assert_one_line_usage_error(&p, "--size", "'8'");
    RUN(&p, "client", "127.0.0.1:9", "--mode", "latency", "--reverse");
    assert_one_line_usage_error(&p, "--reverse", NULL);
    RUN(&p, "client", "127.0.0.1:9", "--clients", "4");
    assert_one_line_usage_error(&p, "--clients", NULL);
    RUN(&p, "client", "127.0.0.1:9", "--bogus");
    assert_one_line_usage_error(&p, "'--bogus'", NULL);
    RUN(&p, "client", "127.0.0.1:9", "--time");
    assert_one_line_usage_error(&p, "'--time'", "needs a value");
    RUN(&p, "client");
    assert_one_line_usage_error(&p, "HOST:PORT", "required");
    RUN(&p, "client", "::1:9");
    assert_one_line_usage_error(&p, "'::1:9'", NULL);
    RUN(&p, "client", "127.0.0.1:9", "extra");
    assert_one_line_usage_error(&p, "'extra'", NULL);
    RUN(&p, "server", "--listen", "nowhere");
    assert_one_line_usage_error(&p, "--listen", "'nowhere'");
    RUN(&p, "server", "-x");
    assert_one_line_usage_error(&p, "'-x'", NULL);
    /* An unknown command: one line, then the usage, on stderr. */
    RUN(&p, "serve");
    assert_usage_error(&p, "'serve'", NULL);
    run(&p, (const char *const[]){NULL});
    assert_usage_error(&p, "no command", NULL);
}

/* ---- Tests against a server ------------------------------------------------ */

Test(tool_perf, throughput_for_one_second)
{
    server s;
    server_start(&s, NULL);
    proc c;
    json_t *r = CLIENT_JSON(&s, &c, "--mode", "throughput", "--time", "1");
    cr_assert_str_eq(json_string_value(at(r, "mode")), "throughput");
    cr_assert_str_eq(json_string_value(at(r, "settings.cipher")), "chachapoly");
    cr_assert(json_is_false(at(r, "interrupted")));
    cr_assert_gt(num(r, "summary.bytes"), 0, "%s", c.out);
    cr_assert_gt(num(r, "summary.mbit_per_s"), 0);
    cr_assert_float_eq(num(r, "summary.mbyte_per_s") * 8, num(r, "summary.mbit_per_s"), 1e-6);
    cr_assert(num(r, "summary.seconds") >= 0.9 && num(r, "summary.seconds") < 2.0);
    /* The server read at least what was acknowledged in the window. */
    cr_assert_geq(num(r, "summary.receiver_bytes"), num(r, "summary.bytes"));
    cr_assert_gt(num(r, "summary.receiver_seconds"), 0);
    double ratio = num(r, "summary.retransmit_ratio");
    cr_assert(ratio >= 0 && ratio < 1, "%f", ratio);
    num(r, "summary.srtt_ms");
    const json_t *iv = at(r, "intervals");
    cr_assert(json_is_array(iv) && json_array_size(iv) >= 1, "%s", c.out);
    double sum = 0;
    for (size_t i = 0; i < json_array_size(iv); i++)
        sum += num(json_array_get(iv, i), "bytes");
    cr_assert_float_eq(sum, num(r, "summary.bytes"), 0.5, "intervals add up to the total");
    num(r, "cpu.client.user_s");
    num(r, "cpu.client.percent");
    num(r, "cpu.server.user_s");
    num(r, "cpu.server.system_s");
    num(r, "client_session.dgrams_out");
    num(r, "server_session.dgrams_in");
    cr_assert_str_eq(json_string_value(at(r, "server_settings.preset")), "fast3");
    json_decref(r);
    server_stop(&s);
    cr_assert_not_null(strstr(s.p.out, " throughput: received "), "%s", s.p.out);
}

Test(tool_perf, reverse_throughput_in_plaintext)
{
    server s;
    server_start(&s, (const char *const[]){"--cipher", "none", NULL});
    proc c;
    json_t *r =
        CLIENT_JSON(&s, &c, "--reverse", "--time", "0.5", "--cipher", "none", "--size", "16k");
    cr_assert(json_is_true(at(r, "settings.reverse")));
    cr_assert_str_eq(json_string_value(at(r, "settings.cipher")), "none");
    cr_assert_gt(num(r, "summary.bytes"), 0, "%s", c.out);
    cr_assert_geq(num(r, "summary.receiver_bytes"), num(r, "summary.bytes"));
    /* The server sent in 16 KiB writes, all of which arrived. */
    cr_assert_eq((uint64_t)num(r, "summary.receiver_bytes") % 16384, 0, "%s", c.out);
    json_decref(r);
    server_stop(&s);
    cr_assert_not_null(strstr(s.p.out, "throughput (reverse): sent "), "%s", s.p.out);
}

static void assert_ordered_rtt(const json_t *ch)
{
    double min = num(ch, "rtt_ms.min"), p50 = num(ch, "rtt_ms.p50"), p90 = num(ch, "rtt_ms.p90");
    double p99 = num(ch, "rtt_ms.p99"), p999 = num(ch, "rtt_ms.p99_9");
    double max = num(ch, "rtt_ms.max");
    cr_assert(min > 0 && min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
              "%f %f %f %f %f %f", min, p50, p90, p99, p999, max);
    cr_assert_lt(max, 1000.0, "loopback round trips under a second");
    cr_assert_geq(num(ch, "jitter_ms"), 0.0);
}

Test(tool_perf, latency_at_200_per_second)
{
    server s;
    server_start(&s, NULL);
    proc c;
    json_t *r = CLIENT_JSON(&s, &c, "--mode", "latency", "--time", "1", "--rate", "200");
    const json_t *sum = at(r, "summary");
    cr_assert_str_eq(json_string_value(at(r, "channel")), "reliable");
    cr_assert_eq(num(sum, "sent"), 200, "%s", c.out);
    double got = num(sum, "received");
    cr_assert(got >= 190 && got <= 200, "%f", got);
    cr_assert_eq(num(sum, "samples"), got);
    cr_assert_eq(num(sum, "lost"), 200 - got);
    cr_assert_eq(num(sum, "bogus"), 0);
    assert_ordered_rtt(sum);
    cr_assert_eq(num(r, "server_echoed"), 200);
    json_decref(r);
    server_stop(&s);
}

Test(tool_perf, game_with_four_clients)
{
    server s;
    server_start(&s, NULL);
    proc c;
    json_t *r = CLIENT_JSON(&s, &c, "--mode", "game", "--clients", "4", "--time", "1",
                            "--msgs-per-sec", "50", "--size", "100");
    cr_assert_eq(num(r, "clients"), 4);
    const json_t *rel = at(r, "channels.reliable");
    const json_t *seq = at(r, "channels.sequenced");
    /* 4 sessions x 50/s x 1 s on each channel. */
    cr_assert_eq(num(rel, "sent"), 200, "%s", c.out);
    cr_assert_eq(num(seq, "sent"), 200);
    cr_assert_float_eq(num(rel, "delivery_ratio"), 1.0, 1e-12, "%s", c.out);
    cr_assert_eq(num(rel, "received"), 200);
    cr_assert_gt(num(seq, "delivery_ratio"), 0.9);
    assert_ordered_rtt(rel);
    assert_ordered_rtt(seq);
    json_decref(r);
    server_stop(&s);
    /* One line per session in the server's log. */
    size_t lines = 0;
    for (const char *p = strstr(s.p.out, " game: echoed "); p; p = strstr(p + 1, " game: echoed "))
        lines++;
    cr_assert_eq(lines, 4, "%s", s.p.out);
}

static void read_file(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    *buf = calloc(1, 1 << 20);
    *len = fread(*buf, 1, (1 << 20) - 1, f);
    fclose(f);
}

Test(tool_perf, plot_writes_an_svg)
{
    server s;
    server_start(&s, (const char *const[]){"--cipher", "none", NULL});
    char path[] = "/tmp/tern-perf-plot-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    proc c;
    /* Latency: the CDF, one polyline for the one channel. */
    RUN(&c, "client", s.addr, "--mode", "latency", "--time", "0.5", "--rate", "100", "--cipher",
        "none", "--plot", path);
    cr_assert_eq(c.status, 0, "%s", c.err);
    cr_assert_not_null(strstr(c.out, "reliable"), "the table: %s", c.out);
    char *svg;
    size_t len;
    read_file(path, &svg, &len);
    cr_assert_eq(strncmp(svg, "<svg", 4), 0, "%.40s", svg);
    cr_assert_eq(strcmp(svg + len - 7, "</svg>\n"), 0);
    cr_assert_not_null(strstr(svg, "<polyline"));
    cr_assert_not_null(strstr(svg, "round-trip time (ms)"));
    free(svg);
    /* Throughput: goodput over time. */
    RUN(&c, "client", s.addr, "--time", "0.5", "--cipher", "none", "--plot", path);
    cr_assert_eq(c.status, 0, "%s", c.err);
    read_file(path, &svg, &len);
    cr_assert_eq(strncmp(svg, "<svg", 4), 0);
    cr_assert_not_null(strstr(svg, "goodput (Mbit/s)"));
    cr_assert_not_null(strstr(svg, "time (s)"));
    free(svg);
    /* A file that cannot be written: exit 1, naming it. */
    RUN(&c, "client", s.addr, "--mode", "latency", "--time", "0.2", "--cipher", "none", "--plot",
        "/nonexistent-dir/x.svg");
    cr_assert_eq(c.status, 1, "%s", c.err);
    cr_assert_not_null(strstr(c.err, "/nonexistent-dir/x.svg"), "%s", c.err);
    unlink(path);
    server_stop(&s);
}

Test(tool_perf, wrong_passphrase_is_refused)
{
    server s;
    server_start(&s, (const char *const[]){"--psk", "right", NULL});
    proc c;
    /* The server drops the handshake at mac1: the client times out. */
    RUN(&c, "client", s.addr, "--psk", "wrong", "--time", "0.2", "--mode", "latency",
        "--connect-timeout", "700ms");
    cr_assert_eq(c.status, 1, "%s", c.err);
    cr_assert_not_null(strstr(c.err, "cannot connect to"), "%s", c.err);
    cr_assert_str_eq(c.out, "");
    server_stop(&s);
}
