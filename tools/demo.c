/* tern-demo: tern-tunnel through tern-netsim, end to end on one machine.
 *
 *   demo (bulk, probes) --TCP--> tern-tunnel client ==UDP==> tern-netsim
 *       ==UDP==> tern-tunnel server --TCP--> demo (sink, echo)
 *
 * One libuv loop does everything: it writes a fresh server key in a
 * temporary directory, spawns the three programs (found beside this one)
 * on :0 ports, learns their real ports from their readiness lines on
 * stderr, serves the tunnel server's target itself, moves --megabytes
 * through the tunnel (checksummed at both ends), sends --probes 64-byte
 * echoes at a fixed rate, then stops every program with SIGTERM and reads
 * their final counters. It prints a short table and writes the full JSON
 * and SVG plots under --out-dir.
 *
 * Every exit path (a failed step, the deadline, SIGINT/SIGTERM) goes through
 * the same stop (tools/proc.c): SIGTERM to each child still running, SIGKILL
 * after TERN_PROC_KILL_AFTER_MS, every child reaped, every handle closed,
 * the temporary directory removed. The target and the load are
 * tools/tcpload.c.
 *
 * --sim runs the older simulator demo instead (tools/demo_sim.c).
 *
 * Exit status: 0 after a run (and after --help, --version, SIGINT or
 * SIGTERM), 2 for a usage error, 1 when a step failed. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "tern/tern.h"
#include "tools/cli.h"
#include "tools/demo.h"
#include "tools/perf_plot.h"
#include "tools/perf_stats.h"
#include "tools/proc.h"
#include "tools/tcpload.h"

#define PROG "tern-demo"
#define EXIT_RUNTIME 1
#define EXIT_USAGE TERN_CLI_EXIT_USAGE

#define PATH_CAP 4096
#define OUT_CAP (1U << 20) /* a child's stdout kept (tern-netsim's JSON) */
#define PROBE_SIZE TERN_TCPLOAD_PROBE_SIZE
#define SLOT_MS 250 /* throughput plot resolution */
#define CDF_POINTS 400
#define RTT_SAMPLES_MAX 10000 /* --probes limit: every round trip is kept */

/* ---- options ------------------------------------------------------------------ */

typedef struct options {
    uint64_t megabytes, probes, rate, seed, window;
    double loss;
    uint64_t delay_ms, jitter_ms, timeout_ms;
    const char *mode, *cc, *jitter_order;
    bool parallel, verbose, sim;
    char bindir[PATH_CAP], out_dir[PATH_CAP];
} options;

static const char *const modes[] = {"normal", "fast", "fast2", "fast3", "turbo"};
static const char *const ccs[] = {"none", "reno"};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " [OPTIONS]\n"
            "\n"
            "Runs tern end to end on this machine: tern-netsim (a lossy, delaying UDP\n"
            "proxy), a tern-tunnel server and client through it, and a TCP sink and echo\n"
            "server of its own behind the tunnel. Moves --megabytes through the tunnel,\n"
            "sends latency probes through it, prints a short table, and writes the full\n"
            "JSON and SVG plots. Every process it starts is stopped and reaped before it\n"
            "exits.\n"
            "\n"
            "The path (tern-netsim, both directions):\n"
            "  --loss P           independent loss (default 2%%)\n"
            "  --delay D          one-way delay (default 20ms: a 40 ms round trip)\n"
            "  --jitter D         extra delay, uniform in [0, D] (default 5ms)\n"
            "  --jitter-order O   keep (default): jitter is queueing delay and keeps the\n"
            "                     datagrams in order, as on most paths; any: each datagram\n"
            "                     draws its own, so those closer than D reorder (as netem)\n"
            "  --seed N           the proxy's random seed (default 1)\n"
            "The tunnel (tern-tunnel, both ends):\n"
            "  --mode M           normal, fast, fast2, fast3 (default) or turbo\n"
            "  --cc none|reno     congestion control (default none: the window alone\n"
            "                     limits, as kcptun's fast modes do)\n"
            "  --window N         send and receive windows in segments (default 1024)\n"
            "The load:\n"
            "  --megabytes N      bulk transfer in MiB, 1..1024 (default 24)\n"
            "  --probes N         latency probes of %d bytes, 1..%d (default 300)\n"
            "  --rate N           probes per second, 1..1000 (default 50)\n"
            "  --parallel         send the probes during the bulk transfer, not after it\n"
            "Other options:\n"
            "  --timeout T        give up after T in all (default 50s)\n"
            "  --out-dir DIR      where the JSON and SVG files go (default: demo/ beside\n"
            "                     the directory holding this program, e.g. build/demo)\n"
            "  --bindir DIR       where tern-tunnel and tern-netsim are (default: this\n"
            "                     program's directory)\n"
            "  -v, --verbose      copy the programs' stderr to ours\n"
            "  --sim              the engine alone through the simulator in virtual time,\n"
            "                     every preset side by side (no processes, no sockets)\n"
            "  -h, --help         show this help and exit\n"
            "  -V, --version      show the version and exit\n"
            "\n"
            "Exit status: 0 after a run (or SIGINT/SIGTERM, which stop everything first),\n"
            "1 when a step failed (the reason is the last line on stderr), 2 for a usage\n"
            "error.\n",
            PROBE_SIZE, RTT_SAMPLES_MAX);
}

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

static int bad_value(const char *flag, const char *value, const char *why)
{
    fprintf(stderr, PROG ": invalid value '%s' for --%s: %s (try '" PROG " --help')\n", value, flag,
            why);
    return EXIT_USAGE;
}

enum {
    OPT_MEGABYTES = 256,
    OPT_PROBES,
    OPT_RATE,
    OPT_LOSS,
    OPT_DELAY,
    OPT_JITTER,
    OPT_JITTER_ORDER,
    OPT_SEED,
    OPT_MODE,
    OPT_CC,
    OPT_WINDOW,
    OPT_PARALLEL,
    OPT_TIMEOUT,
    OPT_OUT_DIR,
    OPT_BINDIR,
    OPT_SIM,
};

/* Returns -1 to run, or an exit status. */
static int parse_args(int argc, char **argv, options *o)
{
    static const struct option longs[] = {
        {"megabytes", required_argument, NULL, OPT_MEGABYTES},
        {"probes", required_argument, NULL, OPT_PROBES},
        {"rate", required_argument, NULL, OPT_RATE},
        {"loss", required_argument, NULL, OPT_LOSS},
        {"delay", required_argument, NULL, OPT_DELAY},
        {"jitter", required_argument, NULL, OPT_JITTER},
        {"jitter-order", required_argument, NULL, OPT_JITTER_ORDER},
        {"seed", required_argument, NULL, OPT_SEED},
        {"mode", required_argument, NULL, OPT_MODE},
        {"cc", required_argument, NULL, OPT_CC},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"parallel", no_argument, NULL, OPT_PARALLEL},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"out-dir", required_argument, NULL, OPT_OUT_DIR},
        {"bindir", required_argument, NULL, OPT_BINDIR},
        {"sim", no_argument, NULL, OPT_SIM},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->megabytes = 24;
    o->probes = 300;
    o->rate = 50;
    o->loss = 0.02;
    o->delay_ms = 20;
    o->jitter_ms = 5;
    o->jitter_order = "keep";
    o->seed = 1;
    o->window = 1024;
    o->timeout_ms = 50000;
    o->mode = "fast3";
    o->cc = "none";
    bool have_out = false, have_bin = false;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":vhV", longs, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case OPT_MEGABYTES:
            rc = tern_cli_parse_u64(optarg, 1, 1024, &o->megabytes);
            if (rc < 0)
                return bad_value("megabytes", optarg, "expected 1..1024 (MiB)");
            break;
        case OPT_PROBES:
            rc = tern_cli_parse_u64(optarg, 1, RTT_SAMPLES_MAX, &o->probes);
            if (rc < 0)
                return bad_value("probes", optarg, "expected 1..10000");
            break;
        case OPT_RATE:
            rc = tern_cli_parse_u64(optarg, 1, 1000, &o->rate);
            if (rc < 0)
                return bad_value("rate", optarg, "expected 1..1000 (per second)");
            break;
        case OPT_LOSS:
            rc = tern_cli_parse_percent(optarg, &o->loss);
            if (rc < 0)
                return bad_value("loss", optarg, "expected a percentage such as 2%");
            break;
        case OPT_DELAY:
        case OPT_JITTER:
            rc = tern_cli_parse_duration_ms(optarg, c == OPT_DELAY ? &o->delay_ms : &o->jitter_ms);
            if (rc < 0 || (c == OPT_DELAY ? o->delay_ms : o->jitter_ms) > 5000)
                return bad_value(c == OPT_DELAY ? "delay" : "jitter", optarg,
                                 "expected a duration up to 5s, such as 20ms");
            break;
        case OPT_JITTER_ORDER:
            if (strcmp(optarg, "keep") != 0 && strcmp(optarg, "any") != 0)
                return bad_value("jitter-order", optarg, "expected keep or any");
            o->jitter_order = optarg;
            break;
        case OPT_SEED:
            rc = tern_cli_parse_u64(optarg, 0, UINT64_MAX, &o->seed);
            if (rc < 0)
                return bad_value("seed", optarg, "expected a decimal integer");
            break;
        case OPT_MODE:
            if (!in_list(optarg, modes, sizeof(modes) / sizeof(modes[0])))
                return bad_value("mode", optarg, "expected normal, fast, fast2, fast3 or turbo");
            o->mode = optarg;
            break;
        case OPT_CC:
            if (!in_list(optarg, ccs, sizeof(ccs) / sizeof(ccs[0])))
                return bad_value("cc", optarg, "expected none or reno");
            o->cc = optarg;
            break;
        case OPT_WINDOW:
            rc = tern_cli_parse_u64(optarg, 1, 32768, &o->window);
            if (rc < 0)
                return bad_value("window", optarg, "expected 1..32768 (segments)");
            break;
        case OPT_PARALLEL:
            o->parallel = true;
            break;
        case OPT_TIMEOUT:
            rc = tern_cli_parse_duration_ms(optarg, &o->timeout_ms);
            if (rc < 0 || o->timeout_ms < 1000 || o->timeout_ms > 600000)
                return bad_value("timeout", optarg, "expected a duration from 1s to 10m");
            break;
        case OPT_OUT_DIR:
        case OPT_BINDIR: {
            char *dst = c == OPT_OUT_DIR ? o->out_dir : o->bindir;
            if (!optarg[0] || strlen(optarg) >= PATH_CAP - 64)
                return bad_value(c == OPT_OUT_DIR ? "out-dir" : "bindir", optarg,
                                 "expected a directory name");
            snprintf(dst, PATH_CAP, "%s", optarg);
            if (c == OPT_OUT_DIR)
                have_out = true;
            else
                have_bin = true;
            break;
        }
        case OPT_SIM:
            o->sim = true;
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(PROG " %s\n", TERN_VERSION_STRING);
            return 0;
        case ':':
            fprintf(stderr, PROG ": option '%s' needs a value (try '" PROG " --help')\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        default:
            if (optopt)
                fprintf(stderr, PROG ": unknown option '-%c' (try '" PROG " --help')\n", optopt);
            else
                fprintf(stderr, PROG ": unknown option '%s' (try '" PROG " --help')\n",
                        argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (try '" PROG " --help')\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (o->sim)
        return -1;
    char exe[PATH_CAP];
    if ((!have_bin || !have_out) && tern_proc_exe_dir(exe, sizeof(exe) - 16) != 0) {
        fprintf(stderr, PROG ": cannot find this program's directory (/proc/self/exe); "
                             "give --bindir and --out-dir\n");
        return EXIT_RUNTIME;
    }
    if (!have_bin)
        snprintf(o->bindir, sizeof(o->bindir), "%s", exe);
    if (!have_out) {
        /* build/tools/tern-demo -> build/demo */
        char *slash = strrchr(exe, '/');
        if (slash && slash != exe)
            *slash = '\0';
        tern_proc_join_path(o->out_dir, sizeof(o->out_dir), exe, "demo");
    }
    return -1;
}

/* ---- state ------------------------------------------------------------------------ */

typedef enum child_id { SERVER = 0, NETSIM, CLIENT, N_CHILDREN } child_id;

typedef enum phase {
    PH_SERVER = 0, /* waiting for the tunnel server's readiness line */
    PH_NETSIM,
    PH_CLIENT,  /* waiting for the client's readiness and its handshake */
    PH_MEASURE, /* bulk and probes */
    PH_STOP     /* children told to exit */
} phase;

typedef struct demo {
    uv_loop_t loop;
    options o;
    char tmp[PATH_CAP]; /* "" until made */
    char key_path[PATH_CAP], client_stats[PATH_CAP], server_stats[PATH_CAP];
    char peer_key[TERN_KEY_BASE64_LEN + 1];
    char out_json[PATH_CAP], out_cdf[PATH_CAP], out_tput[PATH_CAP];
    tern_proc_group procs; /* SERVER, NETSIM, CLIENT */
    tern_tcpload load;     /* the target, the bulk transfer and the probes */
    uv_timer_t deadline;
    uv_signal_t sigint, sigterm;
    phase phase;
    bool stopping, measured;
    bool failed;
    char reason[1536];
    int interrupted; /* the signal that stopped us, or 0 */
    uint64_t *slots; /* bytes received per SLOT_MS since the bulk connection */
    size_t n_slots;
} demo;

static const char *const child_names[N_CHILDREN] = {"tern-tunnel server", "tern-netsim",
                                                    "tern-tunnel client"};

static void stop_all(demo *d);

/* Records the first failure (later ones are consequences) and stops. */
static void fail(demo *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(demo *d, const char *fmt, ...)
{
    if (!d->failed) {
        d->failed = true;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->reason, sizeof(d->reason), fmt, ap);
        va_end(ap);
    }
    stop_all(d);
}

static double seconds_between(uint64_t t0_ns, uint64_t t1_ns)
{
    return (double)(t1_ns - t0_ns) / 1e9;
}

static tern_proc *child(demo *d, child_id id)
{
    return &d->procs.procs[id];
}

/* ---- stopping ---------------------------------------------------------------------- */

/* Every child is reaped: close the rest, and uv_run() returns. */
static void on_procs_done(void *data)
{
    demo *d = data;
    tern_tcpload_close(&d->load);
    tern_proc_close_handle((uv_handle_t *)&d->deadline);
    tern_proc_close_handle((uv_handle_t *)&d->sigint);
    tern_proc_close_handle((uv_handle_t *)&d->sigterm);
}

static void stop_all(demo *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->phase = PH_STOP;
    tern_tcpload_stop(&d->load);
    if (uv_is_active((uv_handle_t *)&d->deadline))
        uv_timer_stop(&d->deadline);
    tern_proc_group_stop(&d->procs);
}

/* What the children and the load report. */
static void on_fail(void *data, const char *reason)
{
    fail(data, "%s", reason);
}

/* The throughput plot: bytes at the sink per SLOT_MS. */
static void on_received(void *data, size_t n, uint64_t now)
{
    demo *d = data;
    size_t slot = (size_t)((now - d->load.t_bulk0) / (SLOT_MS * 1000000ULL));
    d->slots[slot < d->n_slots ? slot : d->n_slots - 1] += n;
}

/* ---- the children -------------------------------------------------------------------- */

static void bin_path(const demo *d, const char *name, char *out, size_t cap)
{
    tern_proc_join_path(out, cap, d->o.bindir, name);
}

/* One end of the tunnel: the server in front of our target, or the client
 * behind the proxy, both tuned alike. */
static void spawn_tunnel(demo *d, child_id id)
{
    bool server = id == SERVER;
    char bin[PATH_CAP], peer[64], window[24];
    bin_path(d, "tern-tunnel", bin, sizeof(bin));
    snprintf(peer, sizeof(peer), "127.0.0.1:%u",
             (unsigned)(server ? d->load.sink_port : child(d, NETSIM)->port));
    snprintf(window, sizeof(window), "%" PRIu64, d->o.window);
    const char *const args[] = {bin,
                                server ? "server" : "client",
                                "-l",
                                "127.0.0.1:0",
                                server ? "-t" : "-r",
                                peer,
                                server ? "--key-file" : "--peer-key",
                                server ? d->key_path : d->peer_key,
                                "--mode",
                                d->o.mode,
                                "--cc",
                                d->o.cc,
                                "--sndwnd",
                                window,
                                "--rcvwnd",
                                window,
                                "--stats-json",
                                server ? d->server_stats : d->client_stats,
                                NULL};
    tern_proc_args a = {.n = 0};
    tern_proc_args_add(&a, args);
    (void)tern_proc_spawn(child(d, id), &a);
}

static void spawn_netsim(demo *d)
{
    char bin[PATH_CAP], forward[64], loss[32], delay[32], jitter[32], seed[32];
    bin_path(d, "tern-netsim", bin, sizeof(bin));
    snprintf(forward, sizeof(forward), "127.0.0.1:%u", (unsigned)child(d, SERVER)->port);
    snprintf(loss, sizeof(loss), "%.4f%%", d->o.loss * 100.0);
    snprintf(delay, sizeof(delay), "%" PRIu64 "ms", d->o.delay_ms);
    snprintf(jitter, sizeof(jitter), "%" PRIu64 "ms", d->o.jitter_ms);
    snprintf(seed, sizeof(seed), "%" PRIu64, d->o.seed);
    const char *const args[] = {bin,      "--listen", "127.0.0.1:0",    "--forward",
                                forward,  "--loss",   loss,             "--delay",
                                delay,    "--jitter", jitter,           "--jitter-order",
                                d->o.jitter_order,    "--seed",         seed,
                                "--json", NULL};
    tern_proc_args a = {.n = 0};
    tern_proc_args_add(&a, args);
    (void)tern_proc_spawn(child(d, NETSIM), &a);
}

/* ---- the sequence ------------------------------------------------------------------------ */

/* The next step, once the last one is done: the children's progress and
 * the load's end come here. */
static void advance(void *data)
{
    demo *d = data;
    if (d->stopping)
        return;
    if (d->phase == PH_SERVER && child(d, SERVER)->ready) {
        d->phase = PH_NETSIM;
        spawn_netsim(d);
    }
    if (d->phase == PH_NETSIM && child(d, NETSIM)->ready) {
        d->phase = PH_CLIENT;
        spawn_tunnel(d, CLIENT);
    }
    const tern_proc *cli = child(d, CLIENT);
    if (d->phase == PH_CLIENT && cli->ready && cli->connected) {
        d->phase = PH_MEASURE;
        (void)tern_tcpload_start(&d->load, TERN_TCPLOAD_BULK, cli->port);
        if (d->o.parallel)
            (void)tern_tcpload_start(&d->load, TERN_TCPLOAD_PROBES, cli->port);
    }
    if (d->stopping || d->phase != PH_MEASURE || !d->load.bulk_done)
        return;
    if (!d->load.probes_started)
        (void)tern_tcpload_start(&d->load, TERN_TCPLOAD_PROBES, cli->port);
    else if (d->load.probes_done) {
        d->measured = true;
        stop_all(d);
    }
}

static void on_deadline(uv_timer_t *t)
{
    demo *d = t->data;
    char what[256];
    switch (d->phase) {
    case PH_SERVER:
    case PH_NETSIM:
        snprintf(what, sizeof(what), "waiting for %s to listen",
                 d->phase == PH_SERVER ? child_names[SERVER] : child_names[NETSIM]);
        break;
    case PH_CLIENT:
        snprintf(what, sizeof(what), "waiting for the tunnel client's %s",
                 child(d, CLIENT)->ready ? "handshake" : "readiness line");
        break;
    default:
        snprintf(what, sizeof(what),
                 "%.1f of %.1f MiB through, %" PRIu64 " of %" PRIu64 " probes echoed",
                 (double)d->load.bulk_got / 1048576.0, (double)d->load.cfg.bulk_bytes / 1048576.0,
                 d->load.probes_got, d->o.probes);
        break;
    }
    fail(d, "did not finish within %.1f s (%s); raise --timeout or lower --megabytes",
         (double)d->o.timeout_ms / 1000.0, what);
}

static void on_signal(uv_signal_t *s, int signum)
{
    demo *d = s->data;
    if (!d->interrupted)
        d->interrupted = signum;
    fail(d, "interrupted by %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- files ---------------------------------------------------------------------------------- */

static int mkdir_p(const char *path)
{
    char buf[PATH_CAP];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* The key pair and the paths in a fresh temporary directory. */
static int make_keys(demo *d)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0] || strlen(tmp) > PATH_CAP - 64)
        tmp = "/tmp";
    snprintf(d->tmp, sizeof(d->tmp), "%s/tern-demo-XXXXXX", tmp);
    if (!mkdtemp(d->tmp)) {
        fail(d, "cannot make a temporary directory in %s: %s", tmp, strerror(errno));
        d->tmp[0] = '\0';
        return -1;
    }
    tern_proc_join_path(d->key_path, sizeof(d->key_path), d->tmp, "server.key");
    tern_proc_join_path(d->client_stats, sizeof(d->client_stats), d->tmp, "client-stats.jsonl");
    tern_proc_join_path(d->server_stats, sizeof(d->server_stats), d->tmp, "server-stats.jsonl");
    tern_keypair kp;
    char err[256] = "";
    int rc = tern_crypto_init();
    if (rc == 0)
        rc = tern_keypair_generate(&kp);
    if (rc == 0)
        rc = tern_keyfile_write_secret(d->key_path, &kp.secret, 0, err, sizeof(err));
    if (rc == 0)
        tern_public_key_to_base64(&kp.pub, d->peer_key);
    memset(&kp, 0, sizeof(kp));
    if (rc != 0) {
        fail(d, "cannot make the demo's key pair: %s", err[0] ? err : tern_strerror(rc));
        return -1;
    }
    return 0;
}

static void remove_tmp(demo *d)
{
    if (!d->tmp[0])
        return;
    unlink(d->key_path);
    unlink(d->client_stats);
    unlink(d->server_stats);
    if (rmdir(d->tmp) != 0)
        fprintf(stderr, PROG ": warning: cannot remove %s: %s\n", d->tmp, strerror(errno));
}

/* The last JSON line of a tern-tunnel --stats-json file, or NULL. */
static json_t *last_stats_line(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char line[16384];
    json_t *last = NULL;
    while (fgets(line, sizeof(line), f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (j && json_is_object(j)) {
            json_decref(last);
            last = j;
        } else {
            json_decref(j);
        }
    }
    fclose(f);
    return last;
}

static double ratio(uint64_t part, uint64_t whole)
{
    return whole ? (double)part / (double)whole : 0.0;
}

static uint64_t json_u64(const json_t *o, const char *dir, const char *key)
{
    json_t *v = json_object_get(json_object_get(o, dir), key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* The throughput slots the bulk transfer covered, and each one's span in
 * seconds from its start (the last one ends with the last byte). */
static size_t slots_used(const demo *d)
{
    size_t used = (size_t)((d->load.t_bulk1 - d->load.t_bulk0) / (SLOT_MS * 1000000ULL)) + 1;
    return used < d->n_slots ? used : d->n_slots;
}

static void slot_span(const demo *d, size_t i, size_t used, double *start, double *end)
{
    *start = (double)i * SLOT_MS / 1000.0;
    *end = i + 1 < used ? (double)(i + 1) * SLOT_MS / 1000.0
                        : seconds_between(d->load.t_bulk0, d->load.t_bulk1);
}

static int write_svg(const char *path, const tern_perf_plot *plot)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return TERN_ERR_IO;
    int rc = tern_perf_plot_svg(f, plot);
    if (fclose(f) != 0 && rc == 0)
        rc = TERN_ERR_IO;
    return rc;
}

static int write_plots(demo *d)
{
    double cx[CDF_POINTS], cy[CDF_POINTS];
    size_t n = tern_perf_stats_cdf(&d->load.rtt, cx, cy, CDF_POINTS);
    char title[256];
    snprintf(title, sizeof(title),
             "tern-demo: probe round trips through tern-tunnel (%s, cc %s), %.4g%% loss, "
             "%" PRIu64 " ms RTT",
             d->o.mode, d->o.cc, d->o.loss * 100.0, 2 * d->o.delay_ms);
    tern_perf_plot_series cdf = {"round trip", cx, cy, n};
    tern_perf_plot p = {title, "round-trip time (ms)", "fraction of probes", &cdf, 1, true, true};
    int rc = write_svg(d->out_cdf, &p);
    if (rc < 0)
        return rc;

    size_t used = slots_used(d);
    double *tx = calloc(used, sizeof(double)), *ty = calloc(used, sizeof(double));
    if (!tx || !ty) {
        free(tx);
        free(ty);
        return TERN_ERR_NOMEM;
    }
    for (size_t i = 0; i < used; i++) {
        double start, end;
        slot_span(d, i, used, &start, &end);
        tx[i] = end;
        ty[i] = end > start ? (double)d->slots[i] * 8.0 / (end - start) / 1e6 : 0.0;
    }
    snprintf(title, sizeof(title), "tern-demo: bulk goodput through tern-tunnel (%s, cc %s)",
             d->o.mode, d->o.cc);
    tern_perf_plot_series tput = {"goodput at the sink", tx, ty, used};
    p = (tern_perf_plot){title, "time (s)", "goodput (Mbit/s)", &tput, 1, true, true};
    rc = write_svg(d->out_tput, &p);
    free(tx);
    free(ty);
    return rc;
}

/* A path as the user would type it: relative to the working directory
 * when it is inside it. */
static const char *shown(const char *path)
{
    static char cwd[PATH_CAP];
    if (!getcwd(cwd, sizeof(cwd)))
        return path;
    size_t n = strlen(cwd);
    if (n > 1 && strncmp(path, cwd, n) == 0 && path[n] == '/')
        return path + n + 1;
    return path;
}

static void print_reaped(const demo *d, FILE *f)
{
    bool any = false;
    for (int i = N_CHILDREN - 1; i >= 0; i--) {
        const tern_proc *c = &d->procs.procs[i];
        if (!c->spawned)
            continue;
        char how[64];
        if (c->exited)
            tern_proc_describe_exit(c, how, sizeof(how));
        else
            snprintf(how, sizeof(how), "not reaped");
        fprintf(f, "%s %s pid %d (%s)", any ? "," : "reaped:", c->name, c->pid, how);
        any = true;
    }
    if (any)
        fputc('\n', f);
}

static json_t *processes_json(const demo *d)
{
    json_t *a = json_array();
    for (int i = 0; a && i < N_CHILDREN; i++) {
        const tern_proc *c = &d->procs.procs[i];
        if (!c->spawned)
            continue;
        json_array_append_new(a, json_pack("{s:s, s:i, s:I, s:i, s:b}", "name", c->name, "pid",
                                           c->pid, "exit_status", (json_int_t)c->status, "signal",
                                           c->term_signal, "reaped", c->exited));
    }
    return a;
}

/* After a successful run: the JSON, the plots and the table. */
static int report(demo *d)
{
    json_error_t jerr;
    const tern_proc *ns = child(d, NETSIM);
    json_t *netsim = json_loadb(ns->stdout_buf, ns->stdout_len, 0, &jerr);
    if (!netsim || !json_is_object(netsim)) {
        json_decref(netsim);
        fprintf(stderr, PROG ": tern-netsim printed no final counters (%s)\n", jerr.text);
        return EXIT_RUNTIME;
    }
    json_t *tc = last_stats_line(d->client_stats);
    json_t *ts = last_stats_line(d->server_stats);
    double secs = seconds_between(d->load.t_bulk0, d->load.t_bulk1);
    const tern_tcpload *l = &d->load;
    double mbyte_s = (double)l->cfg.bulk_bytes / secs / 1e6;
    double loss_up = ratio(json_u64(netsim, "up", "lost"), json_u64(netsim, "up", "offered"));
    double loss_down = ratio(json_u64(netsim, "down", "lost"), json_u64(netsim, "down", "offered"));
    json_t *rr = json_object_get(tc, "retrans_ratio");
    double retrans = json_is_number(rr) ? json_number_value(rr) : -1.0;
    tern_perf_stats *r = &d->load.rtt;
    double p50 = tern_perf_stats_percentile(r, 50), p90 = tern_perf_stats_percentile(r, 90);
    double p99 = tern_perf_stats_percentile(r, 99), pmax = tern_perf_stats_max(r);

    json_t *slots = json_array();
    size_t used = slots_used(d);
    for (size_t i = 0; slots && i < used; i++) {
        double start, end;
        slot_span(d, i, used, &start, &end);
        json_array_append_new(slots, json_pack("{s:f, s:f, s:I}", "start_s", start, "end_s", end,
                                               "bytes", (json_int_t)d->slots[i]));
    }
    char sum[24];
    snprintf(sum, sizeof(sum), "%016" PRIx64, l->sum_got);
    json_t *root = json_pack(
        "{s:s, s:s, s:{s:f, s:I, s:I, s:s, s:I, s:I}, s:{s:s, s:s, s:I, s:s}, "
        "s:{s:I, s:f, s:f, s:f, s:s, s:s, s:b, s:o}, "
        "s:{s:I, s:i, s:I, s:I, s:b, s:{s:f, s:f, s:f, s:f, s:f, s:f, s:f}, s:f}, "
        "s:o, s:o, s:o, s:o, s:{s:s, s:s}}",
        "tool", PROG, "version", TERN_VERSION_STRING,
        /* path */
        "path", "loss", d->o.loss, "delay_ms", (json_int_t)d->o.delay_ms, "jitter_ms",
        (json_int_t)d->o.jitter_ms, "jitter_order", d->o.jitter_order, "rtt_ms", (json_int_t)(2 * d->o.delay_ms), "seed",
        (json_int_t)d->o.seed,
        /* tunnel */
        "tunnel", "mode", d->o.mode, "cc", d->o.cc, "window", (json_int_t)d->o.window, "security",
        "NK",
        /* bulk */
        "bulk", "bytes", (json_int_t)l->cfg.bulk_bytes, "seconds", secs, "mbyte_per_s", mbyte_s,
        "mbit_per_s", mbyte_s * 8.0, "checksum", "fnv1a64", "checksum_value", sum, "checksum_ok",
        l->sum_got == l->sum_sent, "intervals", slots ? slots : json_array(),
        /* latency */
        "latency", "probes", (json_int_t)d->o.probes, "size", PROBE_SIZE, "rate",
        (json_int_t)d->o.rate, "echoed", (json_int_t)l->probes_got, "during_bulk", d->o.parallel,
        "rtt_ms", "min", tern_perf_stats_min(r), "mean", tern_perf_stats_mean(r), "p50", p50, "p90",
        p90, "p99", p99, "p99_9", tern_perf_stats_percentile(r, 99.9), "max", pmax, "jitter_ms",
        tern_perf_stats_jitter(r),
        /* the programs' own counters */
        "netsim", netsim, "tunnel_client", tc ? tc : json_null(), "tunnel_server",
        ts ? ts : json_null(), "processes", processes_json(d),
        /* files */
        "files", "latency_cdf", d->out_cdf, "throughput", d->out_tput);
    if (!root) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    int rc = json_dump_file(root, d->out_json, JSON_INDENT(2)) == 0 ? 0 : TERN_ERR_IO;
    json_decref(root);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", d->out_json, strerror(errno));
        return EXIT_RUNTIME;
    }
    rc = write_plots(d);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot write the plots in %s: %s\n", d->o.out_dir,
                tern_strerror(rc));
        return EXIT_RUNTIME;
    }

    char up[16], down[16], rt[16];
    snprintf(up, sizeof(up), "%.1f%%", loss_up * 100.0);
    snprintf(down, sizeof(down), "%.1f%%", loss_down * 100.0);
    if (retrans >= 0)
        snprintf(rt, sizeof(rt), "%.1f%%", retrans * 100.0);
    else
        snprintf(rt, sizeof(rt), "n/a");
    printf("\n  %-7s %11s %8s %8s %8s %8s %18s %11s\n", "preset", "goodput", "p50 ms", "p90 ms",
           "p99 ms", "max ms", "proxy loss up/dn", "retransmit");
    printf("  %-7s %6.2f MB/s %8.1f %8.1f %8.1f %8.1f %9s / %-6s %11s\n", d->o.mode, mbyte_s, p50,
           p90, p99, pmax, up, down, rt);
    printf("\n%" PRIu64 " MiB in %.2f s (%.1f Mbit/s), checksum ok; %" PRIu64 " of %" PRIu64
           " probes echoed%s.\n",
           d->o.megabytes, secs, mbyte_s * 8.0, l->probes_got, d->o.probes,
           d->o.parallel ? " (sent during the bulk transfer)" : "");
    printf("full JSON: %s, latency CDF: %s\n", shown(d->out_json), shown(d->out_cdf));
    printf("goodput over time: %s\n", shown(d->out_tput));
    print_reaped(d, stdout);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void print_header(const demo *d)
{
    const options *o = &d->o;
    printf("tern %s demo: tern-tunnel through tern-netsim, all on 127.0.0.1\n",
           TERN_VERSION_STRING);
    printf("  path    %.4g%% loss, %" PRIu64 " ms delay each way (%" PRIu64 " ms RTT), %" PRIu64
           " ms jitter (%s), seed %" PRIu64 "\n",
           o->loss * 100.0, o->delay_ms, 2 * o->delay_ms, o->jitter_ms,
           strcmp(o->jitter_order, "keep") == 0 ? "keeps order" : "reorders", o->seed);
    printf("  tunnel  preset %s, cc %s, windows %" PRIu64 ", Noise NK with a fresh key pair\n",
           o->mode, o->cc, o->window);
    printf("  load    %" PRIu64 " MiB on one TCP connection, %s %" PRIu64 " probes of %d bytes "
           "at %" PRIu64 "/s on another\n",
           o->megabytes, o->parallel ? "with" : "then", o->probes, PROBE_SIZE, o->rate);
    fflush(stdout);
}

/* Everything up to the first spawn; a failure is recorded by fail(). */
static void setup(demo *d)
{
    const char *need[] = {"tern-tunnel", "tern-netsim"};
    for (size_t i = 0; i < 2; i++) {
        char bin[PATH_CAP];
        bin_path(d, need[i], bin, sizeof(bin));
        if (access(bin, X_OK) != 0) {
            fail(d, "cannot run %s: %s (build it, or name its directory with --bindir)", bin,
                 strerror(errno));
            return;
        }
    }
    if (mkdir_p(d->o.out_dir) != 0) {
        fail(d, "--out-dir: cannot create '%s': %s", d->o.out_dir, strerror(errno));
        return;
    }
    tern_proc_join_path(d->out_json, sizeof(d->out_json), d->o.out_dir, "demo.json");
    tern_proc_join_path(d->out_cdf, sizeof(d->out_cdf), d->o.out_dir, "latency-cdf.svg");
    tern_proc_join_path(d->out_tput, sizeof(d->out_tput), d->o.out_dir, "throughput.svg");
    d->n_slots = (size_t)(d->o.timeout_ms / SLOT_MS) + 2;
    d->slots = calloc(d->n_slots, sizeof(*d->slots));
    if (!d->slots) {
        fail(d, "out of memory");
        return;
    }
    /* Until here the load is all zeroes, which stops and closes as nothing. */
    tern_tcpload_config lc = {.bulk_bytes = d->o.megabytes << 20,
                              .seed = d->o.seed,
                              .probes = d->o.probes,
                              .rate = d->o.rate};
    lc.cbs = (tern_tcpload_cbs){on_fail, advance, NULL, on_received};
    int rc = tern_tcpload_init(&d->load, &d->loop, &lc, NULL, d);
    if (rc != 0) {
        fail(d, "%s", tern_strerror(rc));
        return;
    }
    if (make_keys(d) != 0 || tern_tcpload_listen(&d->load) != 0)
        return;
    spawn_tunnel(d, SERVER);
}

static int run_live(demo *d)
{
    if (uv_loop_init(&d->loop) != 0) {
        fprintf(stderr, PROG ": cannot start the event loop\n");
        return EXIT_RUNTIME;
    }
    d->loop.data = d;
    tern_proc_config pc = {.n = N_CHILDREN, .stdout_cap = OUT_CAP, .verbose = d->o.verbose};
    pc.cbs = (tern_proc_cbs){on_fail, advance, on_procs_done};
    if (tern_proc_group_init(&d->procs, &d->loop, &pc, NULL, d) != 0) {
        (void)uv_loop_close(&d->loop);
        fprintf(stderr, PROG ": cannot set up the child processes\n");
        return EXIT_RUNTIME;
    }
    tern_proc_set(child(d, SERVER), child_names[SERVER], TERN_PROC_LISTENER);
    tern_proc_set(child(d, NETSIM), child_names[NETSIM], TERN_PROC_LISTENER);
    tern_proc_set(child(d, CLIENT), child_names[CLIENT], TERN_PROC_TUNNEL_CLIENT);
    uv_timer_init(&d->loop, &d->deadline);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sigterm);
    d->deadline.data = d->sigint.data = d->sigterm.data = d;
    if (uv_signal_start(&d->sigint, on_signal, SIGINT) != 0 ||
        uv_signal_start(&d->sigterm, on_signal, SIGTERM) != 0)
        fail(d, "cannot catch SIGINT and SIGTERM");
    uv_timer_start(&d->deadline, on_deadline, d->o.timeout_ms, 0);
    print_header(d);
    if (!d->failed)
        setup(d);
    if (d->failed)
        stop_all(d); /* nothing may have been spawned: finish at once */
    uv_run(&d->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&d->loop) != 0)
        fprintf(stderr, PROG ": warning: handles left open at exit\n");

    int status = 0;
    if (d->interrupted) {
        print_reaped(d, stderr);
        fprintf(stderr, PROG ": interrupted by %s; every process it started was stopped\n",
                d->interrupted == SIGINT ? "SIGINT" : "SIGTERM");
    } else if (d->failed || !d->measured) {
        print_reaped(d, stderr);
        fprintf(stderr, PROG ": %s\n", d->failed ? d->reason : "stopped before the end");
        status = EXIT_RUNTIME;
    } else {
        status = report(d);
    }
    remove_tmp(d);
    return status;
}

int main(int argc, char **argv)
{
    /* A write to a connection the tunnel reset must fail with EPIPE, not
     * kill us (children get default dispositions back from uv_spawn). */
    signal(SIGPIPE, SIG_IGN);
    demo *d = calloc(1, sizeof(*d));
    if (!d) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    int status = parse_args(argc, argv, &d->o);
    if (status < 0)
        status = d->o.sim ? tern_demo_sim_run() : run_live(d);
    tern_proc_group_free(&d->procs);
    tern_tcpload_free(&d->load);
    free(d->slots);
    free(d);
    return status;
}
