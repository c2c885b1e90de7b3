/* tern-demo run as a program (TERN_DEMO_BIN, from CMake): the real thing,
 * tern-tunnel through tern-netsim on loopback, found beside it.
 *
 * Covered: a short run (--megabytes 2 --probes 50) exits 0, prints the
 * table and where the files went, writes JSON that parses and agrees with
 * the path (every probe echoed, round trips of at least the 40 ms the proxy
 * adds, losses applied, every program exited 0) and two SVG plots; the
 * programs it reports as reaped no longer exist and its temporary directory
 * is gone. SIGINT in the middle of a run stops and reaps everything (exit
 * 0). A tunnel client that dies at start (a stand-in script) fails the run
 * with exit 1 and a one-line reason naming it, and the server and proxy
 * already started are reaped too. Usage errors exit 2 naming the flag and
 * the value; a --bindir without the programs exits 1. */
#include <criterion/criterion.h>

#include <dirent.h>
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

#ifndef TERN_DEMO_BIN
#error "TERN_DEMO_BIN must name the tern-demo binary (tests/CMakeLists.txt)"
#endif /* TERN_DEMO_BIN */

#define RUN_MS 60000 /* the demo's own deadline is 50 s, plus its stop */

/* ---- a scratch directory per test ------------------------------------------------ */

static char dir[128];

static const char *in_dir(const char *name)
{
    return tool_path(dir, name);
}

static void make_dir(void)
{
    tool_make_dir(dir, sizeof(dir), "tern-demo-test");
    /* The demo's TMPDIR: it must be empty again after every run. */
    cr_assert_eq(mkdir(in_dir("tmp"), 0700), 0);
}

static void remove_tree(const char *path)
{
    DIR *dp = opendir(path);
    if (!dp) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char sub[512];
        snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
        remove_tree(sub);
    }
    closedir(dp);
    rmdir(path);
}

static void drop_dir(void)
{
    remove_tree(dir);
}

static size_t entries(const char *path)
{
    DIR *dp = opendir(path);
    cr_assert_not_null(dp, "%s: %s", path, strerror(errno));
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(dp);
    return n;
}

/* ---- running the demo ----------------------------------------------------------------- */

typedef tool_proc run;

/* Starts the demo with args (NULL-terminated), TMPDIR in the scratch
 * directory, stdout and stderr to files there. */
static void start(run *r, const char *const *args)
{
    char env[256];
    snprintf(env, sizeof(env), "TMPDIR=%s", in_dir("tmp"));
    tool_cmd cmd = {.bin = TERN_DEMO_BIN, .args = args, .name = "demo", .out_dir = dir, .env = env};
    tool_spawn(r, &cmd);
}

static void run_to_end(run *r, const char *const *args)
{
    start(r, args);
    tool_wait_exit(r, RUN_MS);
}

#define ARGS TOOL_ARGS

/* The pids on the "reaped:" line ("NAME pid N (...)"); asserts there are
 * want of them and that none exists any more. */
static void assert_reaped(const char *text, int want)
{
    const char *line = strstr(text, "reaped:");
    cr_assert_not_null(line, "no 'reaped:' line in: %s", text);
    const char *eol = strchr(line, '\n');
    int n = 0;
    for (const char *p = strstr(line, " pid "); p && (!eol || p < eol); p = strstr(p, " pid ")) {
        p += strlen(" pid ");
        long pid = strtol(p, NULL, 10);
        cr_assert_gt(pid, 1);
        errno = 0;
        cr_assert_eq(kill((pid_t)pid, 0), -1, "process %ld is still there", pid);
        cr_assert_eq(errno, ESRCH);
        n++;
    }
    cr_assert_eq(n, want, "%d pids on: %s", n, line);
    cr_assert_null(strstr(line, "not reaped"), "%s", line);
}

/* The last non-empty line of text, into buf. */
static void last_line(const char *text, char *buf, size_t cap)
{
    size_t n = strlen(text);
    while (n && text[n - 1] == '\n')
        n--;
    size_t b = n;
    while (b && text[b - 1] != '\n')
        b--;
    snprintf(buf, cap, "%.*s", (int)(n - b), text + b);
}

static json_t *member(json_t *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k; k = strtok_r(NULL, ".", &save)) {
        cur = json_object_get(cur, k);
        cr_assert_not_null(cur, "the JSON has no %s", path);
    }
    return cur;
}

static double number(json_t *o, const char *path)
{
    json_t *v = member(o, path);
    cr_assert(json_is_number(v), "%s is not a number", path);
    return json_number_value(v);
}

/* ---- a whole run --------------------------------------------------------------------------- */

Test(tool_demo, short_run_prints_table_writes_files_and_reaps_everything, .init = make_dir,
     .fini = drop_dir)
{
    run r;
    run_to_end(&r, ARGS("--megabytes", "2", "--probes", "50", "--out-dir", in_dir("out")));
    cr_assert_eq(r.status, 0, "exit %d; stdout: %s\nstderr: %s", r.status, r.out, r.err);

    /* The table: its header, the preset's row, where the files went. */
    cr_assert_not_null(strstr(r.out, "goodput"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "p99 ms"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "retransmit"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "\n  fast3 "), "%s", r.out);
    cr_assert_not_null(strstr(r.out, " MB/s "), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "checksum ok; 50 of 50 probes echoed"), "%s", r.out);
    char want[512];
    snprintf(want, sizeof(want), "full JSON: %s, latency CDF: %s", in_dir("out/demo.json"),
             in_dir("out/latency-cdf.svg"));
    cr_assert_not_null(strstr(r.out, want), "no '%s' in: %s", want, r.out);
    assert_reaped(r.out, 3);
    cr_assert_eq(entries(in_dir("tmp")), 0, "the demo left its temporary directory behind");

    /* The JSON agrees with what was asked and with the path. */
    json_error_t jerr;
    json_t *j = json_load_file(in_dir("out/demo.json"), 0, &jerr);
    cr_assert_not_null(j, "demo.json: %s (line %d)", jerr.text, jerr.line);
    cr_assert_eq(number(j, "bulk.bytes"), 2.0 * 1048576);
    cr_assert(json_is_true(member(j, "bulk.checksum_ok")));
    cr_assert_gt(number(j, "bulk.mbyte_per_s"), 0.0);
    cr_assert_eq(number(j, "latency.echoed"), 50);
    /* 20 ms each way through the proxy: no round trip can be shorter, but
     * for the proxy's clock, which is its loop's millisecond (up to 1 ms
     * early each way). */
    cr_assert_geq(number(j, "latency.rtt_ms.min"), 38.0);
    cr_assert_geq(number(j, "latency.rtt_ms.p99"), number(j, "latency.rtt_ms.p50"));
    cr_assert_gt(number(j, "netsim.up.offered"), 1000); /* 2 MiB is 1500 datagrams */
    cr_assert_gt(number(j, "netsim.up.lost"), 0);       /* 2% of them, seeded */
    cr_assert_eq(number(j, "netsim.up.dropped_invalid"), 0);
    cr_assert_eq(number(j, "tunnel_client.tcp.bytes_in"), 1 + 8 + 2.0 * 1048576 + 1 + 50 * 64);
    cr_assert_eq(number(j, "tunnel_server.tcp.accepted"), 2);
    json_t *procs = member(j, "processes");
    cr_assert_eq(json_array_size(procs), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *p = json_array_get(procs, i);
        cr_assert_eq(number(p, "exit_status"), 0);
        cr_assert_eq(number(p, "signal"), 0);
        cr_assert(json_is_true(member(p, "reaped")));
    }
    json_decref(j);

    /* The plots. */
    char svg[TOOL_TEXT_MAX];
    tool_slurp(in_dir("out/latency-cdf.svg"), svg, sizeof(svg));
    cr_assert_not_null(strstr(svg, "<svg"), "latency-cdf.svg: %.200s", svg);
    cr_assert_not_null(strstr(svg, "<polyline"), "latency-cdf.svg has no curve");
    tool_slurp(in_dir("out/throughput.svg"), svg, sizeof(svg));
    cr_assert_not_null(strstr(svg, "<polyline"), "throughput.svg has no curve");
}

/* ---- stopping in the middle ------------------------------------------------------------------ */

Test(tool_demo, sigint_mid_run_stops_and_reaps_every_process, .init = make_dir, .fini = drop_dir)
{
    run r;
    /* Big enough to be still moving data when the signal comes. */
    start(&r, ARGS("--megabytes", "512", "--verbose", "--out-dir", in_dir("out")));
    tool_wait_text(&r, false, "[tern-tunnel client] tern-tunnel: connected to", 20000);
    cr_assert_not_null(strstr(r.err, "connected to"), "the tunnel never connected: %s", r.err);
    tool_sleep_ms(300);
    cr_assert_eq(kill(r.pid, SIGINT), 0);
    tool_wait_exit(&r, 15000);
    cr_assert_eq(r.status, 0, "exit %d; stderr: %s", r.status, r.err);
    char last[512];
    last_line(r.err, last, sizeof(last));
    cr_assert_not_null(strstr(last, "interrupted by SIGINT"), "%s", last);
    assert_reaped(r.err, 3);
    cr_assert_eq(entries(in_dir("tmp")), 0, "the demo left its temporary directory behind");
    cr_assert_null(strstr(r.out, "full JSON"), "an interrupted run reports nothing");
}

/* A stand-in tern-tunnel: the server claims to listen and waits; the client
 * fails at once. tern-netsim is the real one. */
static void fake_bindir(void)
{
    cr_assert_eq(mkdir(in_dir("bin"), 0700), 0);
    char netsim[512];
    snprintf(netsim, sizeof(netsim), "%s", TERN_DEMO_BIN);
    char *slash = strrchr(netsim, '/');
    cr_assert_not_null(slash);
    snprintf(slash + 1, sizeof(netsim) - (size_t)(slash + 1 - netsim), "tern-netsim");
    cr_assert_eq(symlink(netsim, in_dir("bin/tern-netsim")), 0);
    FILE *f = fopen(in_dir("bin/tern-tunnel"), "w");
    cr_assert_not_null(f);
    fputs("#!/bin/sh\n"
          "if [ \"$1\" = server ]; then\n"
          "  echo 'tern-tunnel: server listening on 127.0.0.1:9 (NK), target 127.0.0.1:9' >&2\n"
          "  exec sleep 30\n"
          "fi\n"
          "echo 'tern-tunnel: client: no such luck' >&2\n"
          "exit 3\n",
          f);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(chmod(in_dir("bin/tern-tunnel"), 0700), 0);
}

Test(tool_demo, a_program_that_dies_fails_the_run_and_the_rest_are_reaped, .init = make_dir,
     .fini = drop_dir)
{
    fake_bindir();
    run r;
    run_to_end(&r, ARGS("--bindir", in_dir("bin"), "--out-dir", in_dir("out")));
    cr_assert_eq(r.status, 1, "exit %d; stderr: %s", r.status, r.err);
    char last[512];
    last_line(r.err, last, sizeof(last));
    cr_assert_not_null(strstr(last, "tern-demo: tern-tunnel client exited early (exit 3)"), "%s",
                       last);
    cr_assert_not_null(strstr(last, "no such luck"), "the reason quotes its stderr: %s", last);
    assert_reaped(r.err, 3);
    cr_assert_eq(entries(in_dir("tmp")), 0, "the demo left its temporary directory behind");
}

/* ---- flags ----------------------------------------------------------------------------------- */

Test(tool_demo, flags_help_version_and_usage_errors, .init = make_dir, .fini = drop_dir)
{
    run r;
    run_to_end(&r, ARGS("--help"));
    cr_assert_eq(r.status, 0);
    cr_assert_not_null(strstr(r.out, "usage: tern-demo"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "--megabytes"), "%s", r.out);
    run_to_end(&r, ARGS("--version"));
    cr_assert_eq(r.status, 0);
    cr_assert_not_null(strstr(r.out, "tern-demo "), "%s", r.out);

    static const char *const bad[][3] = {
        {"--megabytes", "0", "'0' for --megabytes"}, {"--probes", "x", "'x' for --probes"},
        {"--loss", "150%", "'150%' for --loss"},     {"--mode", "warp", "'warp' for --mode"},
        {"--timeout", "0", "'0' for --timeout"},     {"--jitter-order", "up", "'up' for --jitter-order"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        run_to_end(&r, ARGS(bad[i][0], bad[i][1]));
        cr_assert_eq(r.status, 2, "%s %s: exit %d", bad[i][0], bad[i][1], r.status);
        cr_assert_not_null(strstr(r.err, bad[i][2]), "%s", r.err);
        cr_assert_eq(strchr(r.err, '\n'), r.err + strlen(r.err) - 1, "one line: %s", r.err);
    }
    run_to_end(&r, ARGS("--no-such-flag"));
    cr_assert_eq(r.status, 2);
    cr_assert_not_null(strstr(r.err, "--no-such-flag"), "%s", r.err);

    /* Nothing to run there: a runtime failure, nothing started. */
    run_to_end(&r, ARGS("--bindir", in_dir("nothing"), "--out-dir", in_dir("out")));
    cr_assert_eq(r.status, 1);
    cr_assert_not_null(strstr(r.err, "nothing/tern-tunnel"), "%s", r.err);
    cr_assert_null(strstr(r.err, "reaped:"), "%s", r.err);
    cr_assert_eq(entries(in_dir("tmp")), 0);
}
