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
 * the same stop: SIGTERM to each child still running, SIGKILL after
 * KILL_AFTER_MS, every child reaped, every handle closed, the temporary
 * directory removed.
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

#define PROG "tern-demo"
#define EXIT_RUNTIME 1
#define EXIT_USAGE TERN_CLI_EXIT_USAGE

#define PATH_CAP 4096
#define LINE_CAP 1024       /* one stderr line of a child; longer ones are cut */
#define OUT_CAP (1U << 20)  /* a child's stdout kept (tern-netsim's JSON) */
#define CHUNK (64U << 10)   /* bulk bytes per TCP write */
#define CHUNKS 4            /* bulk writes in flight */
#define PROBE_SIZE 64       /* bytes per latency probe */
#define KILL_AFTER_MS 3000  /* SIGTERM, then SIGKILL this much later */
#define DRAIN_AFTER_MS 1000 /* after SIGKILL, how long to wait for the pipes */
#define SLOT_MS 250         /* throughput plot resolution */
#define CDF_POINTS 400
#define RTT_SAMPLES_MAX 10000 /* --probes limit: every round trip is kept */

/* ---- options ------------------------------------------------------------------ */

typedef struct options {
    uint64_t megabytes, probes, rate, seed, window;
    double loss;
    uint64_t delay_ms, jitter_ms, timeout_ms;
    const char *mode, *cc;
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

/* out = dir + "/" + name, cut to cap (dir names are bounded when parsed). */
static void join_path(char *out, size_t cap, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a > cap - 2)
        a = cap - 2;
    if (b > cap - 2 - a)
        b = cap - 2 - a;
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, name, b);
    out[a + 1 + b] = '\0';
}

/* The directory holding this program, from /proc/self/exe. */
static int exe_dir(char *out, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0)
        return TERN_ERR_IO;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        return TERN_ERR_IO;
    *slash = '\0';
    return 0;
}

enum {
    OPT_MEGABYTES = 256,
    OPT_PROBES,
    OPT_RATE,
    OPT_LOSS,
    OPT_DELAY,
    OPT_JITTER,
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
    if ((!have_bin || !have_out) && exe_dir(exe, sizeof(exe) - 16) != 0) {
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
        join_path(o->out_dir, sizeof(o->out_dir), exe, "demo");
    }
    return -1;
}

/* ---- state ------------------------------------------------------------------------ */

typedef enum child_id { SERVER = 0, NETSIM, CLIENT, N_CHILDREN } child_id;

typedef struct demo demo;

typedef struct child {
    demo *d;
    const char *name; /* "tern-tunnel server" */
    uv_process_t proc;
    uv_pipe_t out, err;
    bool spawned, exited, killed;
    bool out_open, err_open;
    int pid;
    int64_t status;
    int term_signal;
    char line[LINE_CAP]; /* the stderr line being read */
    size_t line_len;
    char last[LINE_CAP]; /* the last complete stderr line, for errors */
    char *stdout_buf;    /* OUT_CAP bytes, NUL-terminated */
    size_t stdout_len;
    char rbuf[4096];
    uint16_t port; /* from the readiness line */
    bool ready, connected;
} child;

/* A connection the tunnel server made to our target: its first byte says
 * what it is ('B' bulk sink, 'E' echo). */
typedef struct sink_conn {
    demo *d;
    uv_tcp_t tcp;
    bool used;
    char kind;
    uint8_t hdr[8]; /* bulk: the length, big-endian */
    size_t hdr_len;
} sink_conn;

typedef struct chunk {
    uv_write_t req; /* first: the write callback casts back */
    demo *d;
    uint8_t buf[CHUNK];
} chunk;

typedef struct probe_write {
    uv_write_t req; /* first */
    uint8_t buf[PROBE_SIZE];
} probe_write;

typedef struct echo_write {
    uv_write_t req; /* first */
    uv_buf_t buf;
} echo_write;

typedef enum phase {
    PH_SERVER = 0, /* waiting for the tunnel server's readiness line */
    PH_NETSIM,
    PH_CLIENT,  /* waiting for the client's readiness and its handshake */
    PH_MEASURE, /* bulk and probes */
    PH_STOP     /* children told to exit */
} phase;

struct demo {
    uv_loop_t loop;
    options o;
    char tmp[PATH_CAP]; /* "" until made */
    char key_path[PATH_CAP], client_stats[PATH_CAP], server_stats[PATH_CAP];
    char peer_key[TERN_KEY_BASE64_LEN + 1];
    char out_json[PATH_CAP], out_cdf[PATH_CAP], out_tput[PATH_CAP];
    child ch[N_CHILDREN];
    uv_tcp_t sink;
    uint16_t sink_port;
    sink_conn conns[2];
    uv_tcp_t bulk_tcp, probe_tcp;
    uv_connect_t bulk_connect, probe_connect;
    uv_write_t bulk_hdr_req, probe_hdr_req;
    uv_timer_t deadline, probe_timer, kill_timer;
    uv_signal_t sigint, sigterm;
    phase phase;
    bool stopping, finished, killed_all, measured;
    bool failed;
    char reason[1536];
    int interrupted; /* the signal that stopped us, or 0 */

    /* bulk */
    uint64_t bulk_total, bulk_queued, bulk_got;
    uint64_t sum_sent, sum_got, prng;
    uint64_t t_bulk0, t_bulk1; /* uv_hrtime() of the first write, of the last byte in */
    bool bulk_started, bulk_done;
    uint8_t bulk_hdr[9];
    chunk chunks[CHUNKS];
    uint64_t *slots; /* bytes received per SLOT_MS since t_bulk0 */
    size_t n_slots;

    /* probes */
    uint64_t probes_sent, probes_got, t_probe0;
    bool probes_started, probes_done;
    uint8_t probe_rx[PROBE_SIZE];
    size_t probe_rx_len;
    uint8_t *probe_seen; /* one byte per probe */
    tern_perf_stats rtt;

    uint8_t rbuf[CHUNK]; /* every TCP read lands here and is consumed at once */
};

static const char *const child_names[N_CHILDREN] = {"tern-tunnel server", "tern-netsim",
                                                    "tern-tunnel client"};

static void stop_all(demo *d);

/* Records the first failure (later ones are consequences) and stops. */
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

static void close_handle(uv_handle_t *h)
{
    if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
        uv_close(h, NULL);
}

/* 64-bit FNV-1a, continued from h. */
static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ULL

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static double seconds_between(uint64_t t0_ns, uint64_t t1_ns)
{
    return (double)(t1_ns - t0_ns) / 1e9;
}

/* ---- stopping ---------------------------------------------------------------------- */

static void finish(demo *d)
{
    if (d->finished)
        return;
    d->finished = true;
    close_handle((uv_handle_t *)&d->sink);
    for (size_t i = 0; i < 2; i++)
        close_handle((uv_handle_t *)&d->conns[i].tcp);
    close_handle((uv_handle_t *)&d->bulk_tcp);
    close_handle((uv_handle_t *)&d->probe_tcp);
    close_handle((uv_handle_t *)&d->deadline);
    close_handle((uv_handle_t *)&d->probe_timer);
    close_handle((uv_handle_t *)&d->kill_timer);
    close_handle((uv_handle_t *)&d->sigint);
    close_handle((uv_handle_t *)&d->sigterm);
    for (int i = 0; i < N_CHILDREN; i++) {
        close_handle((uv_handle_t *)&d->ch[i].out);
        close_handle((uv_handle_t *)&d->ch[i].err);
        close_handle((uv_handle_t *)&d->ch[i].proc);
    }
}

/* Finishes once every child is reaped and has nothing more to say. */
static void check_done(demo *d)
{
    if (!d->stopping)
        return;
    for (int i = 0; i < N_CHILDREN; i++) {
        const child *c = &d->ch[i];
        if (c->spawned && (!c->exited || c->out_open || c->err_open))
            return;
    }
    finish(d);
}

static void on_kill_timer(uv_timer_t *t)
{
    demo *d = t->data;
    if (d->killed_all) {
        /* SIGKILLed children whose pipes are still open: some grandchild
         * holds them. Stop waiting. */
        finish(d);
        return;
    }
    d->killed_all = true;
    for (int i = 0; i < N_CHILDREN; i++) {
        child *c = &d->ch[i];
        if (c->spawned && !c->exited) {
            c->killed = true;
            (void)uv_process_kill(&c->proc, SIGKILL);
            fail(d, "%s did not exit within %d ms of SIGTERM; killed", c->name, KILL_AFTER_MS);
        }
    }
    uv_timer_start(&d->kill_timer, on_kill_timer, DRAIN_AFTER_MS, 0);
}

static void stop_all(demo *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->phase = PH_STOP;
    if (uv_is_active((uv_handle_t *)&d->probe_timer))
        uv_timer_stop(&d->probe_timer);
    if (uv_is_active((uv_handle_t *)&d->deadline))
        uv_timer_stop(&d->deadline);
    for (int i = 0; i < N_CHILDREN; i++) {
        child *c = &d->ch[i];
        if (c->spawned && !c->exited)
            (void)uv_process_kill(&c->proc, SIGTERM);
    }
    uv_timer_start(&d->kill_timer, on_kill_timer, KILL_AFTER_MS, 0);
    check_done(d);
}

/* ---- the children -------------------------------------------------------------------- */

/* The port in "... listening on HOST:PORT[, (]...". */
static uint16_t port_of(const char *line)
{
    const char *a = strstr(line, "listening on ");
    if (!a)
        return 0;
    a += strlen("listening on ");
    size_t n = strcspn(a, " ,\n");
    const char *colon = NULL;
    for (const char *q = a; q < a + n; q++)
        if (*q == ':')
            colon = q;
    if (!colon)
        return 0;
    char digits[8];
    size_t len = (size_t)(a + n - (colon + 1));
    if (len == 0 || len >= sizeof(digits))
        return 0;
    memcpy(digits, colon + 1, len);
    digits[len] = '\0';
    uint64_t port;
    if (tern_cli_parse_u64(digits, 1, 65535, &port) != 0)
        return 0;
    return (uint16_t)port;
}

static void advance(demo *d);

static void on_child_line(child *c, const char *line)
{
    demo *d = c->d;
    if (d->o.verbose)
        fprintf(stderr, "  [%s] %s\n", c->name, line);
    snprintf(c->last, sizeof(c->last), "%s", line);
    if (d->stopping)
        return;
    if (!c->ready && strstr(line, "listening on ")) {
        c->port = port_of(line);
        if (!c->port) {
            fail(d, "%s: no port in its readiness line '%s'", c->name, line);
            return;
        }
        c->ready = true;
        advance(d);
        return;
    }
    if (c == &d->ch[CLIENT]) {
        if (strstr(line, "cannot connect to ")) {
            fail(d, "the tunnel client cannot reach the server through the proxy: '%s'", line);
        } else if (strstr(line, ": connected to ")) {
            c->connected = true;
            advance(d);
        } else if (strstr(line, "session to ") && strstr(line, " ended")) {
            fail(d, "the tunnel's session ended during the run: '%s'", line);
        }
    }
}

static void on_child_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    child *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_child_stderr(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    child *c = s->data;
    if (nread < 0) {
        if (c->line_len) {
            c->line[c->line_len] = '\0';
            c->line_len = 0;
            on_child_line(c, c->line);
        }
        c->err_open = false;
        uv_close((uv_handle_t *)s, NULL);
        check_done(c->d);
        return;
    }
    for (ssize_t i = 0; i < nread; i++) {
        char ch = buf->base[i];
        if (ch == '\n') {
            c->line[c->line_len] = '\0';
            c->line_len = 0;
            on_child_line(c, c->line);
        } else if (c->line_len < sizeof(c->line) - 1) {
            c->line[c->line_len++] = ch; /* longer lines are cut */
        }
    }
}

static void on_child_stdout(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    child *c = s->data;
    if (nread < 0) {
        c->out_open = false;
        uv_close((uv_handle_t *)s, NULL);
        check_done(c->d);
        return;
    }
    size_t room = OUT_CAP - 1 - c->stdout_len;
    size_t n = (size_t)nread < room ? (size_t)nread : room; /* the rest is dropped */
    memcpy(c->stdout_buf + c->stdout_len, buf->base, n);
    c->stdout_len += n;
    c->stdout_buf[c->stdout_len] = '\0';
}

static void describe_exit(const child *c, char *buf, size_t cap)
{
    if (c->term_signal)
        snprintf(buf, cap, "killed by signal %d", c->term_signal);
    else
        snprintf(buf, cap, "exit %" PRId64, c->status);
}

static void on_child_exit(uv_process_t *p, int64_t status, int term_signal)
{
    child *c = p->data;
    demo *d = c->d;
    c->exited = true;
    c->status = status;
    c->term_signal = term_signal;
    uv_close((uv_handle_t *)p, NULL);
    char how[64];
    describe_exit(c, how, sizeof(how));
    if (!d->stopping)
        fail(d, "%s exited early (%s): '%s'", c->name, how, c->last);
    else if (!c->killed && (status != 0 || term_signal != 0))
        fail(d, "%s ended badly after SIGTERM (%s): '%s'", c->name, how, c->last);
    check_done(d);
}

/* args[0] is the program's path; args ends with NULL. */
static int spawn_child(demo *d, child_id id, char **args)
{
    child *c = &d->ch[id];
    uv_pipe_init(&d->loop, &c->out, 0);
    uv_pipe_init(&d->loop, &c->err, 0);
    c->out.data = c->err.data = c->proc.data = c;
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[1].data.stream = (uv_stream_t *)&c->out;
    stdio[2].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[2].data.stream = (uv_stream_t *)&c->err;
    uv_process_options_t po;
    memset(&po, 0, sizeof(po));
    po.exit_cb = on_child_exit;
    po.file = args[0];
    po.args = args;
    po.stdio = stdio;
    po.stdio_count = 3;
    int rc = uv_spawn(&d->loop, &c->proc, &po);
    if (rc < 0) {
        fail(d, "cannot start %s (%s): %s", c->name, args[0], uv_strerror(rc));
        return rc;
    }
    c->spawned = true;
    c->pid = c->proc.pid;
    c->out_open = c->err_open = true;
    uv_read_start((uv_stream_t *)&c->out, on_child_alloc, on_child_stdout);
    uv_read_start((uv_stream_t *)&c->err, on_child_alloc, on_child_stderr);
    return 0;
}

static void bin_path(const demo *d, const char *name, char *out, size_t cap)
{
    join_path(out, cap, d->o.bindir, name);
}

/* The tuning flags both tunnel ends get; buffers live as long as the call. */
typedef struct tunnel_args {
    char window[24];
    char *v[40];
    int n;
} tunnel_args;

static void add_arg(tunnel_args *a, const char *s)
{
    if (a->n < (int)(sizeof(a->v) / sizeof(a->v[0])) - 1)
        a->v[a->n++] = (char *)s;
    a->v[a->n] = NULL;
}

static void add_tuning(demo *d, tunnel_args *a, const char *stats)
{
    snprintf(a->window, sizeof(a->window), "%" PRIu64, d->o.window);
    add_arg(a, "--mode");
    add_arg(a, d->o.mode);
    add_arg(a, "--cc");
    add_arg(a, d->o.cc);
    add_arg(a, "--sndwnd");
    add_arg(a, a->window);
    add_arg(a, "--rcvwnd");
    add_arg(a, a->window);
    add_arg(a, "--stats-json");
    add_arg(a, stats);
}

static void spawn_server(demo *d)
{
    char bin[PATH_CAP], target[64];
    bin_path(d, "tern-tunnel", bin, sizeof(bin));
    snprintf(target, sizeof(target), "127.0.0.1:%u", (unsigned)d->sink_port);
    tunnel_args a = {.n = 0};
    add_arg(&a, bin);
    add_arg(&a, "server");
    add_arg(&a, "-l");
    add_arg(&a, "127.0.0.1:0");
    add_arg(&a, "-t");
    add_arg(&a, target);
    add_arg(&a, "--key-file");
    add_arg(&a, d->key_path);
    add_tuning(d, &a, d->server_stats);
    (void)spawn_child(d, SERVER, a.v);
}

static void spawn_netsim(demo *d)
{
    char bin[PATH_CAP], forward[64], loss[32], delay[32], jitter[32], seed[32];
    bin_path(d, "tern-netsim", bin, sizeof(bin));
    snprintf(forward, sizeof(forward), "127.0.0.1:%u", (unsigned)d->ch[SERVER].port);
    snprintf(loss, sizeof(loss), "%.4f%%", d->o.loss * 100.0);
    snprintf(delay, sizeof(delay), "%" PRIu64 "ms", d->o.delay_ms);
    snprintf(jitter, sizeof(jitter), "%" PRIu64 "ms", d->o.jitter_ms);
    snprintf(seed, sizeof(seed), "%" PRIu64, d->o.seed);
    char *args[] = {bin,      "--listen", "127.0.0.1:0", "--forward", forward,
                    "--loss", loss,       "--delay",     delay,       "--jitter",
                    jitter,   "--seed",   seed,          "--json",    NULL};
    (void)spawn_child(d, NETSIM, args);
}

static void spawn_client(demo *d)
{
    char bin[PATH_CAP], remote[64];
    bin_path(d, "tern-tunnel", bin, sizeof(bin));
    snprintf(remote, sizeof(remote), "127.0.0.1:%u", (unsigned)d->ch[NETSIM].port);
    tunnel_args a = {.n = 0};
    add_arg(&a, bin);
    add_arg(&a, "client");
    add_arg(&a, "-l");
    add_arg(&a, "127.0.0.1:0");
    add_arg(&a, "-r");
    add_arg(&a, remote);
    add_arg(&a, "--peer-key");
    add_arg(&a, d->peer_key);
    add_tuning(d, &a, d->client_stats);
    (void)spawn_child(d, CLIENT, a.v);
}

/* ---- the target: a bulk sink and an echo server ----------------------------------------- */

static void on_tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    demo *d = h->loop->data;
    *buf = uv_buf_init((char *)d->rbuf, sizeof(d->rbuf));
}

static void on_echo_written(uv_write_t *req, int status)
{
    (void)status; /* a failed echo shows as a missing probe */
    free(req);
}

static void sink_bulk(sink_conn *sc, const uint8_t *p, size_t n)
{
    demo *d = sc->d;
    while (n && sc->hdr_len < sizeof(sc->hdr)) {
        sc->hdr[sc->hdr_len++] = *p++;
        n--;
        if (sc->hdr_len == sizeof(sc->hdr) && get_be64(sc->hdr) != d->bulk_total) {
            fail(d, "the bulk connection's header arrived wrong: %" PRIu64 " bytes announced",
                 get_be64(sc->hdr));
            return;
        }
    }
    if (!n)
        return;
    if (n > d->bulk_total - d->bulk_got) {
        fail(d, "the sink received more than the %" PRIu64 " bytes sent", d->bulk_total);
        return;
    }
    d->bulk_got += n;
    d->sum_got = fnv1a(d->sum_got, p, n);
    uint64_t now = uv_hrtime();
    size_t slot = (size_t)((now - d->t_bulk0) / (SLOT_MS * 1000000ULL));
    d->slots[slot < d->n_slots ? slot : d->n_slots - 1] += n;
    if (d->bulk_got == d->bulk_total) {
        d->t_bulk1 = now;
        if (d->sum_got != d->sum_sent) {
            fail(d, "bulk data corrupted: checksum %016" PRIx64 " received, %016" PRIx64 " sent",
                 d->sum_got, d->sum_sent);
            return;
        }
        d->bulk_done = true;
        advance(d);
    }
}

static void on_sink_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sink_conn *sc = s->data;
    demo *d = sc->d;
    if (nread < 0) {
        uv_read_stop(s);
        if (d->stopping)
            return;
        if (sc->kind == 'B' && !d->bulk_done)
            fail(d,
                 "the bulk connection ended at the target after %" PRIu64 " of %" PRIu64
                 " bytes: %s",
                 d->bulk_got, d->bulk_total, uv_strerror((int)nread));
        else if (sc->kind == 'E' && !d->probes_done)
            fail(d, "the echo connection ended at the target: %s", uv_strerror((int)nread));
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t n = (size_t)nread;
    if (n && !sc->kind) {
        sc->kind = (char)p[0];
        p++;
        n--;
        if (sc->kind != 'B' && sc->kind != 'E') {
            fail(d, "a connection reached the target with an unknown first byte 0x%02x",
                 (unsigned)(uint8_t)sc->kind);
            return;
        }
    }
    if (!n || d->stopping)
        return;
    if (sc->kind == 'B') {
        sink_bulk(sc, p, n);
        return;
    }
    echo_write *w = malloc(sizeof(*w) + n);
    if (!w) {
        fail(d, "out of memory");
        return;
    }
    memcpy(w + 1, p, n);
    w->buf = uv_buf_init((char *)(w + 1), (unsigned)n);
    int rc = uv_write(&w->req, s, &w->buf, 1, on_echo_written);
    if (rc < 0) {
        free(w);
        fail(d, "the echo server cannot write: %s", uv_strerror(rc));
    }
}

static void on_sink_connection(uv_stream_t *server, int status)
{
    demo *d = server->data;
    if (status < 0) {
        fail(d, "the target cannot accept: %s", uv_strerror(status));
        return;
    }
    sink_conn *sc = NULL;
    for (size_t i = 0; i < 2 && !sc; i++)
        if (!d->conns[i].used)
            sc = &d->conns[i];
    if (!sc) {
        fail(d, "the target got a third connection; only two were made");
        return;
    }
    sc->used = true;
    sc->d = d;
    uv_tcp_init(&d->loop, &sc->tcp);
    sc->tcp.data = sc;
    int rc = uv_accept(server, (uv_stream_t *)&sc->tcp);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&sc->tcp, on_tcp_alloc, on_sink_read);
    if (rc < 0)
        fail(d, "the target cannot accept: %s", uv_strerror(rc));
}

static int start_sink(demo *d)
{
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    uv_tcp_init(&d->loop, &d->sink);
    d->sink.data = d;
    int rc = uv_tcp_bind(&d->sink, (const struct sockaddr *)&sin, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->sink, 8, on_sink_connection);
    int len = sizeof(sin);
    if (rc == 0)
        rc = uv_tcp_getsockname(&d->sink, (struct sockaddr *)&sin, &len);
    if (rc < 0) {
        fail(d, "cannot listen on 127.0.0.1:0 for the tunnel's target: %s", uv_strerror(rc));
        return rc;
    }
    d->sink_port = ntohs(sin.sin_port);
    return 0;
}

/* ---- the applications: bulk sender and prober ------------------------------------------ */

/* xorshift64*: the bulk data, reproducible from --seed. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static void on_chunk_written(uv_write_t *req, int status);

static void write_chunk(chunk *c)
{
    demo *d = c->d;
    if (d->stopping || d->bulk_queued >= d->bulk_total)
        return;
    uint64_t left = d->bulk_total - d->bulk_queued;
    size_t n = left < CHUNK ? (size_t)left : CHUNK;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = next_random(&d->prng);
        for (size_t k = 0; k < 8 && i + k < n; k++)
            c->buf[i + k] = (uint8_t)(r >> (8 * k));
    }
    d->sum_sent = fnv1a(d->sum_sent, c->buf, n);
    d->bulk_queued += n;
    uv_buf_t b = uv_buf_init((char *)c->buf, (unsigned)n);
    int rc = uv_write(&c->req, (uv_stream_t *)&d->bulk_tcp, &b, 1, on_chunk_written);
    if (rc < 0)
        fail(d, "cannot write to the tunnel client: %s", uv_strerror(rc));
}

static void on_chunk_written(uv_write_t *req, int status)
{
    chunk *c = (chunk *)req;
    demo *d = c->d;
    if (status < 0) {
        if (!d->stopping)
            fail(d, "the bulk connection to the tunnel client failed: %s", uv_strerror(status));
        return;
    }
    write_chunk(c);
}

static void on_ignored_write(uv_write_t *req, int status)
{
    (void)req;
    (void)status; /* a failure shows up in the data that never arrives */
}

static void on_app_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_bulk_connected(uv_connect_t *req, int status)
{
    demo *d = req->data;
    if (status < 0) {
        if (!d->stopping)
            fail(d, "cannot connect to the tunnel client: %s", uv_strerror(status));
        return;
    }
    if (d->stopping)
        return;
    d->t_bulk0 = uv_hrtime();
    d->bulk_hdr[0] = 'B';
    put_be64(d->bulk_hdr + 1, d->bulk_total);
    uv_buf_t b = uv_buf_init((char *)d->bulk_hdr, sizeof(d->bulk_hdr));
    int rc = uv_write(&d->bulk_hdr_req, (uv_stream_t *)&d->bulk_tcp, &b, 1, on_ignored_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&d->bulk_tcp, on_tcp_alloc, on_app_read);
    if (rc < 0) {
        fail(d, "cannot write to the tunnel client: %s", uv_strerror(rc));
        return;
    }
    for (size_t i = 0; i < CHUNKS; i++)
        write_chunk(&d->chunks[i]);
}

static int connect_app(demo *d, uv_tcp_t *tcp, uv_connect_t *req, uv_connect_cb cb)
{
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", d->ch[CLIENT].port, &sin);
    uv_tcp_init(&d->loop, tcp);
    tcp->data = d;
    req->data = d;
    (void)uv_tcp_nodelay(tcp, 1);
    int rc = uv_tcp_connect(req, tcp, (const struct sockaddr *)&sin, cb);
    if (rc < 0)
        fail(d, "cannot connect to the tunnel client: %s", uv_strerror(rc));
    return rc;
}

static void start_bulk(demo *d)
{
    d->bulk_started = true;
    (void)connect_app(d, &d->bulk_tcp, &d->bulk_connect, on_bulk_connected);
}

static uint8_t probe_filler(uint64_t seq, size_t i)
{
    return (uint8_t)(seq * 31u + i * 7u + 1u);
}

static void on_probe_written(uv_write_t *req, int status)
{
    (void)status; /* a failure shows as a missing echo */
    free(req);
}

static void send_probe(demo *d)
{
    probe_write *w = malloc(sizeof(*w));
    if (!w) {
        fail(d, "out of memory");
        return;
    }
    uint64_t seq = d->probes_sent++;
    put_be64(w->buf, seq);
    put_be64(w->buf + 8, uv_hrtime());
    for (size_t i = 16; i < PROBE_SIZE; i++)
        w->buf[i] = probe_filler(seq, i);
    uv_buf_t b = uv_buf_init((char *)w->buf, PROBE_SIZE);
    int rc = uv_write(&w->req, (uv_stream_t *)&d->probe_tcp, &b, 1, on_probe_written);
    if (rc < 0) {
        free(w);
        fail(d, "cannot send a probe: %s", uv_strerror(rc));
    }
}

/* Sends every probe due by now: at --rate, counted from the first, so a
 * late timer catches up instead of drifting. */
static void on_probe_tick(uv_timer_t *t)
{
    demo *d = t->data;
    uint64_t due = (uv_hrtime() - d->t_probe0) / 1000 * d->o.rate / 1000000 + 1;
    if (due > d->o.probes)
        due = d->o.probes;
    while (!d->stopping && d->probes_sent < due)
        send_probe(d);
    if (d->probes_sent >= d->o.probes && uv_is_active((uv_handle_t *)t))
        uv_timer_stop(t);
}

static void probe_echoed(demo *d, const uint8_t *m)
{
    uint64_t now = uv_hrtime();
    uint64_t seq = get_be64(m), sent_at = get_be64(m + 8);
    bool ok = seq < d->probes_sent && !d->probe_seen[seq] && sent_at <= now;
    for (size_t i = 16; ok && i < PROBE_SIZE; i++)
        ok = m[i] == probe_filler(seq, i);
    if (!ok) {
        fail(d, "probe echo %" PRIu64 " came back corrupted or twice", d->probes_got);
        return;
    }
    d->probe_seen[seq] = 1;
    d->probes_got++;
    (void)tern_perf_stats_add(&d->rtt, (double)(now - sent_at) / 1e6);
    if (d->probes_got == d->o.probes) {
        d->probes_done = true;
        advance(d);
    }
}

/* Reads on the two connections to the tunnel client: the echoes, and
 * (on the bulk connection) nothing but its end. */
static void on_app_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    demo *d = s->data;
    bool probe = s == (uv_stream_t *)&d->probe_tcp;
    if (nread < 0) {
        uv_read_stop(s);
        if (!d->stopping && (probe ? !d->probes_done : !d->bulk_done))
            fail(d, "the tunnel client closed the %s connection: %s", probe ? "probe" : "bulk",
                 uv_strerror((int)nread));
        return;
    }
    if (!probe) {
        if (nread > 0)
            fail(d, "the bulk connection got %zd bytes back; the sink sends none", nread);
        return;
    }
    for (ssize_t i = 0; i < nread && !d->stopping; i++) {
        d->probe_rx[d->probe_rx_len++] = (uint8_t)buf->base[i];
        if (d->probe_rx_len == PROBE_SIZE) {
            d->probe_rx_len = 0;
            probe_echoed(d, d->probe_rx);
        }
    }
}

static void on_probe_connected(uv_connect_t *req, int status)
{
    demo *d = req->data;
    if (status < 0) {
        if (!d->stopping)
            fail(d, "cannot connect to the tunnel client: %s", uv_strerror(status));
        return;
    }
    if (d->stopping)
        return;
    static const char hello[1] = {'E'};
    uv_buf_t b = uv_buf_init((char *)hello, 1);
    int rc = uv_write(&d->probe_hdr_req, (uv_stream_t *)&d->probe_tcp, &b, 1, on_ignored_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&d->probe_tcp, on_tcp_alloc, on_app_read);
    if (rc < 0) {
        fail(d, "cannot write to the tunnel client: %s", uv_strerror(rc));
        return;
    }
    d->t_probe0 = uv_hrtime();
    uint64_t every = 1000 / d->o.rate;
    uv_timer_start(&d->probe_timer, on_probe_tick, 0, every ? every : 1);
}

static void start_probes(demo *d)
{
    d->probes_started = true;
    (void)connect_app(d, &d->probe_tcp, &d->probe_connect, on_probe_connected);
}

/* ---- the sequence ------------------------------------------------------------------------ */

static void advance(demo *d)
{
    if (d->stopping)
        return;
    if (d->phase == PH_SERVER && d->ch[SERVER].ready) {
        d->phase = PH_NETSIM;
        spawn_netsim(d);
    }
    if (d->phase == PH_NETSIM && d->ch[NETSIM].ready) {
        d->phase = PH_CLIENT;
        spawn_client(d);
    }
    if (d->phase == PH_CLIENT && d->ch[CLIENT].ready && d->ch[CLIENT].connected) {
        d->phase = PH_MEASURE;
        start_bulk(d);
        if (d->o.parallel)
            start_probes(d);
    }
    if (d->stopping || d->phase != PH_MEASURE || !d->bulk_done)
        return;
    if (!d->probes_started)
        start_probes(d);
    else if (d->probes_done) {
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
                 d->ch[CLIENT].ready ? "handshake" : "readiness line");
        break;
    default:
        snprintf(what, sizeof(what),
                 "%.1f of %.1f MiB through, %" PRIu64 " of %" PRIu64 " probes echoed",
                 (double)d->bulk_got / 1048576.0, (double)d->bulk_total / 1048576.0, d->probes_got,
                 d->o.probes);
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
    join_path(d->key_path, sizeof(d->key_path), d->tmp, "server.key");
    join_path(d->client_stats, sizeof(d->client_stats), d->tmp, "client-stats.jsonl");
    join_path(d->server_stats, sizeof(d->server_stats), d->tmp, "server-stats.jsonl");
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
    size_t used = (size_t)((d->t_bulk1 - d->t_bulk0) / (SLOT_MS * 1000000ULL)) + 1;
    return used < d->n_slots ? used : d->n_slots;
}

static void slot_span(const demo *d, size_t i, size_t used, double *start, double *end)
{
    *start = (double)i * SLOT_MS / 1000.0;
    *end =
        i + 1 < used ? (double)(i + 1) * SLOT_MS / 1000.0 : seconds_between(d->t_bulk0, d->t_bulk1);
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
    size_t n = tern_perf_stats_cdf(&d->rtt, cx, cy, CDF_POINTS);
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
        const child *c = &d->ch[i];
        if (!c->spawned)
            continue;
        char how[64];
        if (c->exited)
            describe_exit(c, how, sizeof(how));
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
        const child *c = &d->ch[i];
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
    json_t *netsim = json_loadb(d->ch[NETSIM].stdout_buf, d->ch[NETSIM].stdout_len, 0, &jerr);
    if (!netsim || !json_is_object(netsim)) {
        json_decref(netsim);
        fprintf(stderr, PROG ": tern-netsim printed no final counters (%s)\n", jerr.text);
        return EXIT_RUNTIME;
    }
    json_t *tc = last_stats_line(d->client_stats);
    json_t *ts = last_stats_line(d->server_stats);
    double secs = seconds_between(d->t_bulk0, d->t_bulk1);
    double mbyte_s = (double)d->bulk_total / secs / 1e6;
    double loss_up = ratio(json_u64(netsim, "up", "lost"), json_u64(netsim, "up", "offered"));
    double loss_down = ratio(json_u64(netsim, "down", "lost"), json_u64(netsim, "down", "offered"));
    json_t *rr = json_object_get(tc, "retrans_ratio");
    double retrans = json_is_number(rr) ? json_number_value(rr) : -1.0;
    tern_perf_stats *r = &d->rtt;
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
    snprintf(sum, sizeof(sum), "%016" PRIx64, d->sum_got);
    json_t *root = json_pack(
        "{s:s, s:s, s:{s:f, s:I, s:I, s:I, s:I}, s:{s:s, s:s, s:I, s:s}, "
        "s:{s:I, s:f, s:f, s:f, s:s, s:s, s:b, s:o}, "
        "s:{s:I, s:i, s:I, s:I, s:b, s:{s:f, s:f, s:f, s:f, s:f, s:f, s:f}, s:f}, "
        "s:o, s:o, s:o, s:o, s:{s:s, s:s}}",
        "tool", PROG, "version", TERN_VERSION_STRING,
        /* path */
        "path", "loss", d->o.loss, "delay_ms", (json_int_t)d->o.delay_ms, "jitter_ms",
        (json_int_t)d->o.jitter_ms, "rtt_ms", (json_int_t)(2 * d->o.delay_ms), "seed",
        (json_int_t)d->o.seed,
        /* tunnel */
        "tunnel", "mode", d->o.mode, "cc", d->o.cc, "window", (json_int_t)d->o.window, "security",
        "NK",
        /* bulk */
        "bulk", "bytes", (json_int_t)d->bulk_total, "seconds", secs, "mbyte_per_s", mbyte_s,
        "mbit_per_s", mbyte_s * 8.0, "checksum", "fnv1a64", "checksum_value", sum, "checksum_ok",
        d->sum_got == d->sum_sent, "intervals", slots ? slots : json_array(),
        /* latency */
        "latency", "probes", (json_int_t)d->o.probes, "size", PROBE_SIZE, "rate",
        (json_int_t)d->o.rate, "echoed", (json_int_t)d->probes_got, "during_bulk", d->o.parallel,
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
           d->o.megabytes, secs, mbyte_s * 8.0, d->probes_got, d->o.probes,
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
           " ms jitter, seed %" PRIu64 "\n",
           o->loss * 100.0, o->delay_ms, 2 * o->delay_ms, o->jitter_ms, o->seed);
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
    join_path(d->out_json, sizeof(d->out_json), d->o.out_dir, "demo.json");
    join_path(d->out_cdf, sizeof(d->out_cdf), d->o.out_dir, "latency-cdf.svg");
    join_path(d->out_tput, sizeof(d->out_tput), d->o.out_dir, "throughput.svg");
    d->bulk_total = d->o.megabytes << 20;
    d->sum_sent = d->sum_got = FNV_INIT;
    d->prng = d->o.seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    d->n_slots = (size_t)(d->o.timeout_ms / SLOT_MS) + 2;
    d->slots = calloc(d->n_slots, sizeof(*d->slots));
    d->probe_seen = calloc((size_t)d->o.probes, 1);
    if (!d->slots || !d->probe_seen || tern_perf_stats_init(&d->rtt, RTT_SAMPLES_MAX, NULL)) {
        fail(d, "out of memory");
        return;
    }
    for (size_t i = 0; i < CHUNKS; i++)
        d->chunks[i].d = d;
    if (make_keys(d) != 0 || start_sink(d) != 0)
        return;
    spawn_server(d);
}

static int run_live(demo *d)
{
    if (uv_loop_init(&d->loop) != 0) {
        fprintf(stderr, PROG ": cannot start the event loop\n");
        return EXIT_RUNTIME;
    }
    d->loop.data = d;
    uv_timer_init(&d->loop, &d->deadline);
    uv_timer_init(&d->loop, &d->probe_timer);
    uv_timer_init(&d->loop, &d->kill_timer);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sigterm);
    d->deadline.data = d->probe_timer.data = d->kill_timer.data = d;
    d->sigint.data = d->sigterm.data = d;
    for (int i = 0; i < N_CHILDREN; i++) {
        d->ch[i].d = d;
        d->ch[i].name = child_names[i];
        d->ch[i].stdout_buf = calloc(OUT_CAP, 1);
        if (!d->ch[i].stdout_buf)
            fail(d, "out of memory");
    }
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
    for (int i = 0; i < N_CHILDREN; i++)
        free(d->ch[i].stdout_buf);
    free(d->slots);
    free(d->probe_seen);
    tern_perf_stats_free(&d->rtt);
    free(d);
    return status;
}
