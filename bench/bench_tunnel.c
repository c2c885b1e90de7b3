/* bench_tunnel: tern-tunnel against kcptun, side by side in one run.
 *
 *   bench (bulk, probes) --TCP--> tunnel client ==UDP==> tern-netsim
 *       ==UDP==> tunnel server --TCP--> bench (sink, echo)
 *
 * For every mode (normal, fast, fast2, fast3) and every test, each line runs
 * once, one right after the other, each with fresh processes:
 *   kcptun          kcptun-client/-server (Debian's kcptun), --crypt none,
 *                   no FEC (--datashard 0 --parityshard 0), --nocomp
 *   tern plaintext  tern-tunnel --insecure: the same plaintext as kcptun's
 *   tern NK         tern-tunnel with a fresh server key (Noise NK,
 *                   ChaChaPoly): what a real deployment runs
 * Both use MTU 1350, sndwnd = rcvwnd = 1024, 4 MiB socket buffers and no
 * congestion control (kcptun's modes all set nc=1; tern gets --cc none).
 * The tests, through tern-netsim on 127.0.0.1 with --delay each way:
 *   bulk      one TCP connection moves --megabytes MiB of seeded random bytes
 *             (checksummed at the sink) at 0% and at --loss (2%) loss. Goodput
 *             is the bytes over the time from the connect to the last byte at
 *             the sink; tunnel CPU is utime + stime of the client and server
 *             processes (/proc/PID/stat) over the same span. Repeated
 *             --repeat times; the table shows the median.
 *   latency   --probes 64-byte request/response probes at --rate per second
 *             on one TCP connection, echoed by the sink, at --latency-loss
 *             (10%): p50, p90, p99 and max of the round trips.
 * The table gives tern/kcptun ratios per cell; one JSON object per run is
 * appended to --out. kcptun is a reference only: when its programs are not
 * found, the bench says so and runs the tern lines alone.
 *
 * Timing is reported, never judged. Exit status: 0 after the runs (also
 * after SIGINT/SIGTERM, which stop the current run's processes first), 2 for
 * a usage error, 1 when a tern run broke (data corrupted, a process died, a
 * run stalled past --timeout) or nothing could run. A kcptun run that breaks
 * is reported as such and does not change the exit status. */

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "bench/common.h"
#include "tern/tern.h"
#include "tools/perf_stats.h"
#include "tools/proc.h"
#include "tools/tcpload.h"

#define PROG "bench_tunnel"
#define EXIT_USAGE 2
#define EXIT_RUNTIME 1

#define PATH_CAP 4096
#define OUT_CAP (1U << 16) /* a child's stdout kept (tern-netsim's JSON) */
#define PROBE_SIZE TERN_TCPLOAD_PROBE_SIZE
#define PATH_MAX_FD 320 /* "/proc/PID/fd/N" */
#define POLL_MS 10      /* how often kcptun's sockets are looked for */
#define PROBES_MAX 100000
#define REPEAT_MAX 20
#define MTU "1350"
#define WINDOW "1024"
#define SOCKBUF_TERN "4M"
#define SOCKBUF_KCPTUN "4194304"

/* ---- what runs ------------------------------------------------------------------- */

typedef enum line_id { LINE_KCPTUN = 0, LINE_PLAIN, LINE_NK, N_LINES } line_id;
static const char *const line_names[N_LINES] = {"kcptun", "tern plaintext", "tern NK"};
static const char *const line_keys[N_LINES] = {"kcptun", "plain", "nk"};

typedef enum test_id { TEST_BULK0 = 0, TEST_BULK, TEST_LATENCY, N_TESTS } test_id;

#define N_MODES 4
static const char *const mode_names[N_MODES] = {"normal", "fast", "fast2", "fast3"};

typedef struct options {
    uint64_t megabytes, probes, rate, delay_ms, repeat, seed, timeout_ms;
    double loss, latency_loss;
    bool mode_on[N_MODES], line_on[N_LINES];
    bool quick, verbose;
    const char *out;
    char bindir[PATH_CAP];
    char kcptun_dir[PATH_CAP]; /* "" = search PATH */
} options;

/* One run's figures; a cell of the table. */
typedef struct result {
    bool ran, ok, timed_out;
    char reason[512];
    uint64_t bytes;                            /* bulk: payload bytes that reached the sink */
    double seconds, mb_per_s;                  /* bulk */
    double cpu_client, cpu_server, cpu_netsim; /* CPU seconds over the measured span */
    double wall;                               /* the measured span, seconds */
    uint64_t up_dgrams, down_dgrams, up_bytes, down_bytes, up_lost, down_lost;
    int64_t drops[3]; /* kernel drops at each process's UDP sockets (-1: unknown) */
    uint64_t echoed;  /* latency */
    double p50, p90, p99, pmax, mean;
} result;

/* CPU seconds of both tunnel processes; NaN when either was gone. */
static double cpu_total(const result *r)
{
    return r->cpu_client >= 0 && r->cpu_server >= 0 ? r->cpu_client + r->cpu_server : NAN;
}

/* ---- small helpers ---------------------------------------------------------------- */

/* utime + stime of a process, all its threads, in seconds; -1 when it is
 * gone. Fields 14 and 15 of /proc/PID/stat, counted after the ')' that
 * ends the command name (which may hold spaces). */
static double proc_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1.0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1.0;
    p++;
    unsigned long long ut = 0, st = 0;
    /* After ')': state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
     * cmajflt utime(14) stime(15). */
    if (sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1.0;
    long hz = sysconf(_SC_CLK_TCK);
    return (double)(ut + st) / (double)(hz > 0 ? hz : 100);
}

/* Whether something on this machine holds port (TCP: listening on it) on
 * 127.0.0.1 or the wildcard, from /proc/net/{tcp,udp}{,6}. kcptun prints
 * no readiness line with its real port, so the bench gives it a free port
 * and watches for the socket. */
static bool port_bound(bool tcp, uint16_t port)
{
    const char *files[2] = {tcp ? "/proc/net/tcp" : "/proc/net/udp",
                            tcp ? "/proc/net/tcp6" : "/proc/net/udp6"};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f)
            continue;
        char line[512];
        bool found = false;
        while (!found && fgets(line, sizeof(line), f)) {
            char local[64];
            unsigned st = 0;
            if (sscanf(line, " %*[0-9]: %63s %*s %x", local, &st) != 2)
                continue;
            char *colon = strrchr(local, ':');
            if (!colon)
                continue;
            unsigned long p = strtoul(colon + 1, NULL, 16);
            found = p == port && (!tcp || st == 0x0A);
        }
        fclose(f);
        if (found)
            return true;
    }
    return false;
}

/* Datagrams the kernel dropped at a process's UDP sockets because their
 * receive buffer was full (the last column of /proc/net/udp{,6}), summed
 * over the sockets it holds now; -1 if they cannot be read. tern-netsim
 * only counts what it reads, so a burst that overflows its socket is loss
 * that no program reports. */
static int64_t udp_drops_of(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    unsigned long inodes[64];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL && n < sizeof(inodes) / sizeof(inodes[0])) {
        char link[PATH_MAX_FD], target[64];
        snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
        ssize_t len = readlink(link, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        unsigned long ino;
        if (sscanf(target, "socket:[%lu]", &ino) == 1)
            inodes[n++] = ino;
    }
    closedir(dir);
    int64_t drops = 0;
    const char *files[2] = {"/proc/net/udp", "/proc/net/udp6"};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f)
            continue;
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            unsigned long ino = 0, d = 0;
            /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops */
            if (sscanf(line, " %*[0-9]: %*s %*s %*s %*s %*s %*s %*s %*s %lu %*s %*s %lu", &ino,
                       &d) != 2)
                continue;
            for (size_t k = 0; k < n; k++)
                if (inodes[k] == ino)
                    drops += (int64_t)d;
        }
        fclose(f);
    }
    return drops;
}

/* A port nothing holds right now, of the given type, on 127.0.0.1; 0 if
 * none could be had. Another program could take it before the child binds
 * it: the run then fails at start and is tried again. */
static uint16_t free_port(int type)
{
    int fd = socket(AF_INET, type, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sin);
    uint16_t port = 0;
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
        port = ntohs(sin.sin_port);
    close(fd);
    return port;
}

/* ---- one run: three processes and the TCP load -------------------------------------- */

typedef enum child_id { SERVER = 0, NETSIM, CLIENT, N_CHILDREN } child_id;
static const char *const child_roles[N_CHILDREN] = {"server", "tern-netsim", "client"};

typedef enum phase { PH_SERVER = 0, PH_NETSIM, PH_CLIENT, PH_MEASURE, PH_STOP } phase;

typedef struct run run;

/* What every run shares: found once. */
typedef struct shared {
    options o;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    int interrupted;
    char tern_tunnel[PATH_CAP], tern_netsim[PATH_CAP];
    char kcptun_client[PATH_CAP], kcptun_server[PATH_CAP];
    bool have_kcptun;
    char tmp[PATH_CAP]; /* "" until made */
    char key_path[PATH_CAP];
    char peer_key[TERN_KEY_BASE64_LEN + 1];
    FILE *out;
    run *current;
} shared;

struct run {
    shared *s;
    line_id line;
    test_id test;
    int mode;
    double loss;
    uint64_t timeout_ms;
    tern_proc_group procs;   /* SERVER, NETSIM, CLIENT */
    double cpu0[N_CHILDREN]; /* CPU seconds at the start of the measurement */
    tern_tcpload load;       /* the target and one connection: bulk or probes */
    uv_timer_t deadline, poll_timer;
    phase phase;
    bool stopping, measured, failed, start_failed;
    char reason[512];
    uint64_t t0, t1; /* uv_hrtime(): the measured span */
    result res;
};

static tern_proc *child(run *r, child_id id)
{
    return &r->procs.procs[id];
}

static void stop_all(run *r);

/* Records the first failure (later ones are consequences) and stops. */
static void fail(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(run *r, const char *fmt, ...)
{
    if (!r->failed) {
        r->failed = true;
        if (r->phase < PH_MEASURE)
            r->start_failed = true;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
        va_end(ap);
    }
    stop_all(r);
}

/* ---- stopping ---- */

/* Every child is reaped: close the rest, and the run's uv_run() returns. */
static void on_procs_done(void *data)
{
    run *r = data;
    tern_tcpload_close(&r->load);
    tern_proc_close_handle((uv_handle_t *)&r->deadline);
    tern_proc_close_handle((uv_handle_t *)&r->poll_timer);
}

static void stop_all(run *r)
{
    if (r->stopping)
        return;
    r->stopping = true;
    r->phase = PH_STOP;
    tern_tcpload_stop(&r->load);
    uv_timer_stop(&r->deadline);
    uv_timer_stop(&r->poll_timer);
    tern_proc_group_stop(&r->procs);
}

/* What the children and the load report. */
static void on_fail(void *data, const char *reason)
{
    fail(data, "%s", reason);
}

static void advance(void *data);

/* ---- the children ---- */

/* One end of the tunnel under test, kcptun or tern-tunnel, with the same
 * tuning at both ends: the server forwards to the TCP target (-t), the
 * client to tern-netsim (-r). */
static void spawn_tunnel(run *r, child_id id)
{
    shared *s = r->s;
    bool server = id == SERVER;
    char peer[64], listen[64];
    snprintf(peer, sizeof(peer), "127.0.0.1:%u",
             (unsigned)(server ? r->load.sink_port : child(r, NETSIM)->port));
    const char *mode = mode_names[r->mode];
    tern_proc_args a = {.n = 0};
    if (r->line == LINE_KCPTUN) {
        tern_proc *c = child(r, id);
        c->port = free_port(server ? SOCK_DGRAM : SOCK_STREAM);
        if (!c->port) {
            fail(r, server ? "no free UDP port on 127.0.0.1 for the kcptun server"
                           : "no free TCP port on 127.0.0.1 for the kcptun client");
            return;
        }
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", (unsigned)c->port);
        const char *const args[] = {server ? s->kcptun_server : s->kcptun_client,
                                    "-l",
                                    listen,
                                    server ? "-t" : "-r",
                                    peer,
                                    "--crypt",
                                    "none",
                                    "--mode",
                                    mode,
                                    "--mtu",
                                    MTU,
                                    "--sndwnd",
                                    WINDOW,
                                    "--rcvwnd",
                                    WINDOW,
                                    "--datashard",
                                    "0",
                                    "--parityshard",
                                    "0",
                                    "--nocomp",
                                    "--sockbuf",
                                    SOCKBUF_KCPTUN,
                                    NULL};
        tern_proc_args_add(&a, args);
        if (!server) {
            tern_proc_arg(&a, "--conn");
            tern_proc_arg(&a, "1");
        }
        tern_proc_arg(&a, "--quiet");
    } else {
        const char *const args[] = {s->tern_tunnel,
                                    server ? "server" : "client",
                                    "-l",
                                    "127.0.0.1:0",
                                    server ? "-t" : "-r",
                                    peer,
                                    "--mode",
                                    mode,
                                    "--mtu",
                                    MTU,
                                    "--sndwnd",
                                    WINDOW,
                                    "--rcvwnd",
                                    WINDOW,
                                    "--cc",
                                    "none",
                                    "--sockbuf",
                                    SOCKBUF_TERN,
                                    NULL};
        tern_proc_args_add(&a, args);
        if (r->line == LINE_NK) {
            tern_proc_arg(&a, server ? "--key-file" : "--peer-key");
            tern_proc_arg(&a, server ? s->key_path : s->peer_key);
        } else {
            tern_proc_arg(&a, "--insecure");
        }
    }
    (void)tern_proc_spawn(child(r, id), &a);
}

static void spawn_netsim(run *r)
{
    char forward[64], loss[32], delay[32], seed[32];
    snprintf(forward, sizeof(forward), "127.0.0.1:%u", (unsigned)child(r, SERVER)->port);
    snprintf(loss, sizeof(loss), "%.4f%%", r->loss * 100.0);
    snprintf(delay, sizeof(delay), "%" PRIu64 "ms", r->s->o.delay_ms);
    snprintf(seed, sizeof(seed), "%" PRIu64, r->s->o.seed);
    const char *const args[] = {
        r->s->tern_netsim, "--listen", "127.0.0.1:0", "--forward", forward,  "--loss", loss,
        "--delay",         delay,      "--seed",      seed,        "--json", NULL};
    tern_proc_args a = {.n = 0};
    tern_proc_args_add(&a, args);
    (void)tern_proc_spawn(child(r, NETSIM), &a);
}

/* ---- the measured span: from the connect to the last byte or echo ---- */

static void mark_end(run *r)
{
    r->t1 = uv_hrtime();
    for (int i = 0; i < N_CHILDREN; i++) {
        const tern_proc *c = child(r, (child_id)i);
        double now = proc_cpu_s(c->pid);
        double used = now >= 0 && r->cpu0[i] >= 0 ? now - r->cpu0[i] : -1.0;
        if (i == SERVER)
            r->res.cpu_server = used;
        else if (i == CLIENT)
            r->res.cpu_client = used;
        else
            r->res.cpu_netsim = used;
        r->res.drops[i] = c->spawned ? udp_drops_of(c->pid) : -1;
    }
    r->res.wall = (double)(r->t1 - r->t0) / 1e9;
}

static void mark_start(void *data)
{
    run *r = data;
    r->t0 = uv_hrtime();
    for (int i = 0; i < N_CHILDREN; i++)
        r->cpu0[i] = proc_cpu_s(child(r, (child_id)i)->pid);
}

static void on_load_ended(void *data)
{
    mark_end(data);
    advance(data);
}

/* ---- the sequence ---- */

/* The next step, once the last one is done: the children's progress and
 * the load's end come here. */
static void advance(void *data)
{
    run *r = data;
    if (r->stopping)
        return;
    if (r->phase == PH_SERVER && child(r, SERVER)->ready) {
        r->phase = PH_NETSIM;
        spawn_netsim(r);
    }
    if (r->phase == PH_NETSIM && child(r, NETSIM)->ready && !r->stopping) {
        r->phase = PH_CLIENT;
        spawn_tunnel(r, CLIENT);
    }
    const tern_proc *cli = child(r, CLIENT);
    if (r->phase == PH_CLIENT && cli->ready && cli->connected && !r->stopping) {
        r->phase = PH_MEASURE;
        uv_timer_stop(&r->poll_timer);
        (void)tern_tcpload_start(
            &r->load, r->test == TEST_LATENCY ? TERN_TCPLOAD_PROBES : TERN_TCPLOAD_BULK, cli->port);
    }
    if (r->phase == PH_MEASURE && (r->load.bulk_done || r->load.probes_done)) {
        r->measured = true;
        stop_all(r);
    }
}

/* kcptun's readiness: its sockets appear. */
static void on_poll(uv_timer_t *t)
{
    run *r = t->data;
    tern_proc *srv = child(r, SERVER), *cli = child(r, CLIENT);
    if (srv->kind == TERN_PROC_FOREIGN && srv->spawned && !srv->ready &&
        port_bound(false, srv->port))
        srv->ready = true;
    if (cli->kind == TERN_PROC_FOREIGN && cli->spawned && !cli->ready &&
        port_bound(true, cli->port))
        cli->ready = cli->connected = true; /* kcptun has no handshake */
    advance(r);
}

static void on_deadline(uv_timer_t *t)
{
    run *r = t->data;
    if (r->phase < PH_MEASURE) {
        fail(r, "did not start within %.1f s (waiting for the %s)", (double)r->timeout_ms / 1e3,
             child(r, r->phase == PH_SERVER   ? SERVER
                      : r->phase == PH_NETSIM ? NETSIM
                                              : CLIENT)
                 ->name);
        return;
    }
    r->res.timed_out = true;
    mark_end(r);
    if (r->test == TEST_LATENCY)
        fail(r, "timed out after %.1f s: %" PRIu64 " of %" PRIu64 " probes echoed",
             (double)r->timeout_ms / 1e3, r->load.probes_got, r->s->o.probes);
    else
        fail(r, "timed out after %.1f s: %" PRIu64 " of %" PRIu64 " bytes through",
             (double)r->timeout_ms / 1e3, r->load.bulk_got, r->load.cfg.bulk_bytes);
}

static uint64_t json_u64(const json_t *o, const char *dir, const char *key)
{
    json_t *v = json_object_get(json_object_get(o, dir), key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* Fills r->res from what the run measured and tern-netsim's counters. */
static void collect(run *r)
{
    result *res = &r->res;
    res->ran = true;
    res->ok = r->measured && !r->failed;
    snprintf(res->reason, sizeof(res->reason), "%s", r->failed ? r->reason : "");
    if (r->test != TEST_LATENCY) {
        res->bytes = r->load.bulk_got;
        res->seconds = res->wall;
        res->mb_per_s = res->wall > 0 ? (double)r->load.bulk_got / res->wall / 1e6 : 0.0;
    } else {
        tern_perf_stats *st = &r->load.rtt;
        res->echoed = r->load.probes_got;
        res->p50 = tern_perf_stats_percentile(st, 50);
        res->p90 = tern_perf_stats_percentile(st, 90);
        res->p99 = tern_perf_stats_percentile(st, 99);
        res->pmax = tern_perf_stats_max(st);
        res->mean = tern_perf_stats_mean(st);
    }
    const tern_proc *ns = child(r, NETSIM);
    json_t *j = ns->stdout_len ? json_loadb(ns->stdout_buf, ns->stdout_len, 0, NULL) : NULL;
    if (j) {
        res->up_dgrams = json_u64(j, "up", "offered");
        res->down_dgrams = json_u64(j, "down", "offered");
        res->up_bytes = json_u64(j, "up", "bytes_offered");
        res->down_bytes = json_u64(j, "down", "bytes_offered");
        res->up_lost = json_u64(j, "up", "lost");
        res->down_lost = json_u64(j, "down", "lost");
        json_decref(j);
    }
}

/* Sets up a run on the shared loop; the loop then runs until it is done.
 * 0, or a negative TERN_ERR_* before any handle exists. */
static int run_init(run *r, shared *s, line_id line, test_id test, int mode)
{
    memset(r, 0, sizeof(*r));
    r->s = s;
    r->line = line;
    r->test = test;
    r->mode = mode;
    const options *o = &s->o;
    uv_loop_t *loop = &s->loop;
    tern_proc_config pc = {.n = N_CHILDREN, .stdout_cap = OUT_CAP, .verbose = o->verbose};
    pc.cbs = (tern_proc_cbs){on_fail, advance, on_procs_done};
    int rc = tern_proc_group_init(&r->procs, loop, &pc, NULL, r);
    if (rc < 0)
        return rc;
    r->loss = test == TEST_BULK0 ? 0.0 : test == TEST_BULK ? o->loss : o->latency_loss;
    r->timeout_ms = o->timeout_ms;
    if (test == TEST_LATENCY) /* the probes' own time, plus the same margin */
        r->timeout_ms += o->probes * 1000 / o->rate;
    uv_timer_init(loop, &r->deadline);
    uv_timer_init(loop, &r->poll_timer);
    r->deadline.data = r->poll_timer.data = r;
    for (int i = 0; i < N_CHILDREN; i++) {
        bool kcptun = line == LINE_KCPTUN && i != NETSIM;
        char name[TERN_PROC_NAME_CAP];
        if (i == NETSIM)
            snprintf(name, sizeof(name), "tern-netsim");
        else
            snprintf(name, sizeof(name), "%s %s", kcptun ? "kcptun" : "tern-tunnel",
                     child_roles[i]);
        tern_proc_set(child(r, (child_id)i), name,
                      kcptun        ? TERN_PROC_FOREIGN
                      : i == CLIENT ? TERN_PROC_TUNNEL_CLIENT
                                    : TERN_PROC_LISTENER);
        r->cpu0[i] = -1.0;
    }
    return 0;
}

/* One run, start to reaped. */
static void run_one(shared *s, run *r)
{
    s->current = r;
    const options *o = &s->o;
    tern_tcpload_config lc = {.bulk_bytes = o->megabytes << 20,
                              .seed = o->seed,
                              .probes = r->test == TEST_LATENCY ? o->probes : 0,
                              .rate = o->rate};
    lc.cbs = (tern_tcpload_cbs){on_fail, on_load_ended, mark_start, NULL};
    int rc = tern_tcpload_init(&r->load, &s->loop, &lc, NULL, r);
    if (rc < 0)
        fail(r, "%s", tern_strerror(rc));
    uv_timer_start(&r->deadline, on_deadline, r->timeout_ms, 0);
    if (r->line == LINE_KCPTUN)
        uv_timer_start(&r->poll_timer, on_poll, POLL_MS, POLL_MS);
    if (!r->failed && tern_tcpload_listen(&r->load) == 0)
        spawn_tunnel(r, SERVER);
    if (r->failed)
        stop_all(r);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    collect(r);
    tern_proc_group_free(&r->procs);
    tern_tcpload_free(&r->load);
    s->current = NULL;
}

static void on_signal(uv_signal_t *h, int signum)
{
    shared *s = h->data;
    if (!s->interrupted)
        s->interrupted = signum;
    if (s->current)
        fail(s->current, "interrupted by %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- machine, keys, programs ---------------------------------------------------------- */

static tern_bench_machine host;

/* name in dir, or (dir "") the first executable one on $PATH. */
static bool find_program(const char *dir, const char *name, char *out, size_t cap)
{
    if (dir[0]) {
        tern_proc_join_path(out, cap, dir, name);
        return access(out, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    if (!path || !path[0])
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && n < cap - 2 - strlen(name)) {
            char d[PATH_CAP];
            memcpy(d, path, n);
            d[n] = '\0';
            tern_proc_join_path(out, cap, d, name);
            if (access(out, X_OK) == 0)
                return true;
        }
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

static int make_keys(shared *s)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0] || strlen(tmp) > PATH_CAP - 64)
        tmp = "/tmp";
    snprintf(s->tmp, sizeof(s->tmp), "%s/bench-tunnel-XXXXXX", tmp);
    if (!mkdtemp(s->tmp)) {
        fprintf(stderr, PROG ": cannot make a temporary directory in %s: %s\n", tmp,
                strerror(errno));
        s->tmp[0] = '\0';
        return -1;
    }
    tern_proc_join_path(s->key_path, sizeof(s->key_path), s->tmp, "server.key");
    tern_keypair kp;
    char err[256] = "";
    int rc = tern_crypto_init();
    if (rc == 0)
        rc = tern_keypair_generate(&kp);
    if (rc == 0)
        rc = tern_keyfile_write_secret(s->key_path, &kp.secret, 0, err, sizeof(err));
    if (rc == 0)
        tern_public_key_to_base64(&kp.pub, s->peer_key);
    memset(&kp, 0, sizeof(kp));
    if (rc != 0) {
        fprintf(stderr, PROG ": cannot make the NK server key: %s\n",
                err[0] ? err : tern_strerror(rc));
        return -1;
    }
    return 0;
}

static void remove_tmp(shared *s)
{
    if (!s->tmp[0])
        return;
    unlink(s->key_path);
    if (rmdir(s->tmp) != 0)
        fprintf(stderr, PROG ": warning: cannot remove %s: %s\n", s->tmp, strerror(errno));
}

/* ---- results ------------------------------------------------------------------------ */

static double ratio_or_nan(double ours, double theirs)
{
    return theirs > 0 && ours >= 0 ? ours / theirs : NAN;
}

/* A JSON number, or null for NaN and infinities (a negative CPU time means
 * the process was gone: null too). */
static const char *num(char buf[32], double v)
{
    if (isfinite(v))
        snprintf(buf, 32, "%.6g", v);
    else
        snprintf(buf, 32, "null");
    return buf;
}

static void json_num(FILE *f, const char *key, double v)
{
    char a[32];
    fprintf(f, ",\"%s\":%s", key, num(a, v));
}

static void json_string_field(FILE *f, const char *key, const char *v)
{
    fprintf(f, ",\"%s\":\"", key);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if ((unsigned char)*c < 0x20)
            fprintf(f, "\\u%04x", (unsigned)(unsigned char)*c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

/* One JSON object per run. ref: the kcptun run of the same cell, or NULL. */
static void write_json(const shared *s, const run *r, unsigned rep, const result *ref)
{
    FILE *f = s->out;
    const options *o = &s->o;
    const result *res = &r->res;
    bool lat = r->test == TEST_LATENCY;
    char a[32];
    fprintf(f, "{\"bench\":\"tunnel\",\"test\":\"%s\",\"impl\":\"%s\",\"security\":\"%s\"",
            lat ? "latency" : "bulk", r->line == LINE_KCPTUN ? "kcptun" : "tern",
            r->line == LINE_NK ? "noise_nk" : "none");
    fprintf(f, ",\"line\":\"%s\",\"mode\":\"%s\",\"repeat\":%u,\"ok\":%s,\"timed_out\":%s",
            line_keys[r->line], mode_names[r->mode], rep, res->ok ? "true" : "false",
            res->timed_out ? "true" : "false");
    json_string_field(f, "error", res->reason);
    fprintf(f, ",\"loss_pct\":%.4g,\"delay_ms\":%" PRIu64 ",\"mtu\":%s,\"window\":%s",
            r->loss * 100.0, o->delay_ms, MTU, WINDOW);
    if (lat) {
        fprintf(f,
                ",\"probes\":%" PRIu64 ",\"probe_bytes\":%d,\"rate\":%" PRIu64
                ",\"echoed\":%" PRIu64,
                o->probes, PROBE_SIZE, o->rate, res->echoed);
        json_num(f, "p50_ms", res->p50);
        json_num(f, "p90_ms", res->p90);
        json_num(f, "p99_ms", res->p99);
        json_num(f, "max_ms", res->pmax);
        json_num(f, "mean_ms", res->mean);
    } else {
        fprintf(f, ",\"bytes\":%" PRIu64, res->bytes);
        json_num(f, "seconds", res->seconds);
        json_num(f, "mb_per_s", res->mb_per_s);
    }
    json_num(f, "wall_s", res->wall);
    json_num(f, "cpu_client_s", res->cpu_client);
    json_num(f, "cpu_server_s", res->cpu_server);
    json_num(f, "cpu_tunnel_s", cpu_total(res));
    json_num(f, "cpu_netsim_s", res->cpu_netsim);
    json_num(f, "cpu_tunnel_pct", res->wall > 0 ? cpu_total(res) / res->wall * 100.0 : NAN);
    fprintf(f,
            ",\"wire\":{\"up_datagrams\":%" PRIu64 ",\"down_datagrams\":%" PRIu64
            ",\"up_bytes\":%" PRIu64 ",\"down_bytes\":%" PRIu64 ",\"up_lost\":%" PRIu64
            ",\"down_lost\":%" PRIu64 "}",
            res->up_dgrams, res->down_dgrams, res->up_bytes, res->down_bytes, res->up_lost,
            res->down_lost);
    fprintf(f,
            ",\"kernel_drops\":{\"client\":%" PRId64 ",\"netsim\":%" PRId64 ",\"server\":%" PRId64
            "}",
            res->drops[CLIENT], res->drops[NETSIM], res->drops[SERVER]);
    if (r->line != LINE_KCPTUN) {
        /* tern over kcptun in the same cell: above 1 is faster (goodput), below 1
         * is cheaper (CPU per byte) or quicker (round trips). */
        bool have = ref && ref->ok && res->ok;
        fputs(",\"vs_kcptun\":", f);
        if (!have) {
            fputs("null", f);
        } else if (lat) {
            fprintf(f, "{\"p50\":%s", num(a, ratio_or_nan(res->p50, ref->p50)));
            fprintf(f, ",\"p90\":%s", num(a, ratio_or_nan(res->p90, ref->p90)));
            fprintf(f, ",\"p99\":%s", num(a, ratio_or_nan(res->p99, ref->p99)));
            fprintf(f, ",\"max\":%s}", num(a, ratio_or_nan(res->pmax, ref->pmax)));
        } else {
            fprintf(f, "{\"goodput\":%s", num(a, ratio_or_nan(res->mb_per_s, ref->mb_per_s)));
            fprintf(f, ",\"cpu_per_byte\":%s}",
                    num(a, ratio_or_nan(cpu_total(res) / (double)res->bytes,
                                        cpu_total(ref) / (double)ref->bytes)));
        }
    }
    fputc(',', f);
    tern_bench_json_stamp(f, &host, o->quick);
}

/* ---- the table ------------------------------------------------------------------------ */

typedef struct bench {
    shared s;
    result *results; /* [repeat][mode][test][line] */
    unsigned repeats_done;
    unsigned runs, runs_failed_tern, runs_failed_kcptun;
} bench;

static result *cell(const bench *b, unsigned rep, int mode, test_id test, line_id line)
{
    size_t i =
        (((size_t)rep * N_MODES + (size_t)mode) * N_TESTS + (size_t)test) * N_LINES + (size_t)line;
    return &b->results[i];
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of a cell's bulk runs that finished: goodput, and tunnel CPU
 * milliseconds per MB (10^6 bytes), each on its own; and the goodput's
 * range. False if none finished. */
typedef struct bulk_summary {
    unsigned n;
    double mb_s, mb_s_min, mb_s_max, cpu_ms_per_mb, cpu_pct, wire_per_byte, drops;
} bulk_summary;

static bool summarize_bulk(const bench *b, int mode, test_id test, line_id line, bulk_summary *out)
{
    double g[REPEAT_MAX], c[REPEAT_MAX], p[REPEAT_MAX], w[REPEAT_MAX], k[REPEAT_MAX];
    unsigned n = 0, nc = 0;
    for (unsigned rep = 0; rep < b->repeats_done; rep++) {
        const result *r = cell(b, rep, mode, test, line);
        if (!r->ran || !r->ok)
            continue;
        g[n] = r->mb_per_s;
        w[n] = r->bytes ? (double)(r->up_bytes + r->down_bytes) / (double)r->bytes : 0.0;
        k[n] = 0;
        for (int i = 0; i < N_CHILDREN; i++)
            k[n] = r->drops[i] >= 0 && k[n] >= 0 ? k[n] + (double)r->drops[i] : -1.0;
        n++;
        double cpu = cpu_total(r);
        if (isfinite(cpu) && r->bytes && r->wall > 0) {
            c[nc] = cpu * 1e3 / ((double)r->bytes / 1e6);
            p[nc] = cpu / r->wall * 100.0;
            nc++;
        }
    }
    memset(out, 0, sizeof(*out));
    if (!n)
        return false;
    qsort(g, n, sizeof(double), cmp_double);
    qsort(w, n, sizeof(double), cmp_double);
    qsort(k, n, sizeof(double), cmp_double);
    out->n = n;
    out->drops = n % 2 ? k[n / 2] : (k[n / 2 - 1] + k[n / 2]) / 2;
    out->mb_s = n % 2 ? g[n / 2] : (g[n / 2 - 1] + g[n / 2]) / 2;
    out->mb_s_min = g[0];
    out->mb_s_max = g[n - 1];
    out->wire_per_byte = n % 2 ? w[n / 2] : (w[n / 2 - 1] + w[n / 2]) / 2;
    out->cpu_ms_per_mb = out->cpu_pct = NAN;
    if (nc) {
        qsort(c, nc, sizeof(double), cmp_double);
        qsort(p, nc, sizeof(double), cmp_double);
        out->cpu_ms_per_mb = nc % 2 ? c[nc / 2] : (c[nc / 2 - 1] + c[nc / 2]) / 2;
        out->cpu_pct = nc % 2 ? p[nc / 2] : (p[nc / 2 - 1] + p[nc / 2]) / 2;
    }
    return true;
}

static const char *fmt_ratio(char buf[16], double v)
{
    if (isfinite(v))
        snprintf(buf, 16, "%.2fx", v);
    else
        snprintf(buf, 16, "-");
    return buf;
}

static void print_bulk_table(const bench *b, test_id test)
{
    const options *o = &b->s.o;
    double loss = test == TEST_BULK0 ? 0.0 : o->loss;
    printf("\nBulk: %" PRIu64 " MiB on one TCP connection, %.4g%% loss, %" PRIu64
           " ms each way; median of %u run%s (MB = 10^6 bytes)\n",
           o->megabytes, loss * 100.0, o->delay_ms, b->repeats_done,
           b->repeats_done == 1 ? "" : "s");
    printf("  %-6s %-14s %9s %13s %6s %9s %8s %6s | %-12s %s\n", "mode", "line", "MB/s", "range",
           "CPU %", "CPU ms/MB", "wire B/B", "drops", "tern/kcptun:", "goodput  CPU/MB");
    for (int m = 0; m < N_MODES; m++) {
        if (!o->mode_on[m])
            continue;
        bulk_summary ref;
        bool have_ref = o->line_on[LINE_KCPTUN] && summarize_bulk(b, m, test, LINE_KCPTUN, &ref);
        for (int l = 0; l < N_LINES; l++) {
            if (!o->line_on[l])
                continue;
            bulk_summary bs;
            if (!summarize_bulk(b, m, test, (line_id)l, &bs)) {
                printf("  %-6s %-14s %9s   (no run finished: see the errors above)\n",
                       mode_names[m], line_names[l], "failed");
                continue;
            }
            char range[32], r1[16], r2[16];
            snprintf(range, sizeof(range), "%.2f-%.2f", bs.mb_s_min, bs.mb_s_max);
            printf("  %-6s %-14s %9.2f %13s %5.0f%% %9.1f %8.3f %6.0f |", mode_names[m],
                   line_names[l], bs.mb_s, range, bs.cpu_pct, bs.cpu_ms_per_mb, bs.wire_per_byte,
                   bs.drops);
            if (l != LINE_KCPTUN && have_ref)
                printf(" %-12s %-8s %s", "", fmt_ratio(r1, bs.mb_s / ref.mb_s),
                       fmt_ratio(r2, bs.cpu_ms_per_mb / ref.cpu_ms_per_mb));
            printf("\n");
        }
    }
}

static void print_latency_table(const bench *b)
{
    const options *o = &b->s.o;
    printf("\nLatency: %" PRIu64 " probes of %d bytes at %" PRIu64 "/s on one TCP connection, "
           "%.4g%% loss, %" PRIu64 " ms each way (round trips in ms)\n",
           o->probes, PROBE_SIZE, o->rate, o->latency_loss * 100.0, o->delay_ms);
    printf("  %-6s %-14s %8s %8s %8s %8s %7s | %-12s %s\n", "mode", "line", "p50", "p90", "p99",
           "max", "CPU %", "tern/kcptun:", "p50    p90    p99    max");
    for (int m = 0; m < N_MODES; m++) {
        if (!o->mode_on[m])
            continue;
        const result *ref = cell(b, 0, m, TEST_LATENCY, LINE_KCPTUN);
        bool have_ref = o->line_on[LINE_KCPTUN] && ref->ran && ref->ok;
        for (int l = 0; l < N_LINES; l++) {
            if (!o->line_on[l])
                continue;
            const result *r = cell(b, 0, m, TEST_LATENCY, (line_id)l);
            if (!r->ran || !r->ok) {
                printf("  %-6s %-14s %8s   (%s)\n", mode_names[m], line_names[l], "failed",
                       r->ran ? "see the errors above" : "not run");
                continue;
            }
            double cpu = cpu_total(r);
            printf("  %-6s %-14s %8.1f %8.1f %8.1f %8.1f %6.1f%% |", mode_names[m], line_names[l],
                   r->p50, r->p90, r->p99, r->pmax,
                   isfinite(cpu) && r->wall > 0 ? cpu / r->wall * 100.0 : NAN);
            if (l != LINE_KCPTUN && have_ref) {
                char a1[16], a2[16], a3[16], a4[16];
                printf(" %-12s %-6s %-6s %-6s %s", "", fmt_ratio(a1, r->p50 / ref->p50),
                       fmt_ratio(a2, r->p90 / ref->p90), fmt_ratio(a3, r->p99 / ref->p99),
                       fmt_ratio(a4, r->pmax / ref->pmax));
            }
            printf("\n");
        }
    }
}

/* ---- options -------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " [OPTIONS]\n"
            "\n"
            "tern-tunnel against kcptun, side by side, through tern-netsim on 127.0.0.1:\n"
            "goodput and tunnel CPU of one bulk TCP transfer at 0%% and --loss, and\n"
            "round trips of 64-byte probes at --latency-loss, for every mode, with\n"
            "tern/kcptun ratios. Lines: kcptun (--crypt none, no FEC, no compression),\n"
            "tern plaintext (--insecure) and tern NK (Noise NK, ChaChaPoly). Both use\n"
            "MTU 1350, windows 1024/1024, 4 MiB socket buffers, no congestion control.\n"
            "kcptun (kcptun-client, kcptun-server) is optional: without it the tern\n"
            "lines run alone.\n"
            "\n"
            "  --megabytes N     bulk transfer in MiB, 1..1024 (default 32)\n"
            "  --loss PCT        bulk loss in percent, each way (default 2)\n"
            "  --probes N        latency probes, 1..%d (default 500)\n"
            "  --rate N          probes per second, 1..1000 (default 50)\n"
            "  --latency-loss PCT  loss for the probes, each way (default 10)\n"
            "  --delay MS        one-way delay of the proxy, 0..1000 (default 20)\n"
            "  --repeat N        runs of each bulk cell, 1..%d (default 3; the table\n"
            "                    shows the median)\n"
            "  --modes LIST      of normal,fast,fast2,fast3 (default all four)\n"
            "  --lines LIST      of kcptun,plain,nk (default all three)\n"
            "  --seed N          the proxy's seed (default 1)\n"
            "  --timeout S       give up a run after S seconds (default 120; latency runs\n"
            "                    get the probes' own time on top)\n"
            "  --bindir DIR      where tern-tunnel and tern-netsim are (default: tools/\n"
            "                    beside this program's directory, e.g. build/tools)\n"
            "  --kcptun-dir DIR  where kcptun-client and kcptun-server are (default: PATH)\n"
            "  --out PATH        JSON lines appended here (default " TERN_BENCH_RESULTS_DEFAULT
            ")\n"
            "  --quick           smoke run: tern lines only, fast3, 2 MiB, 50 probes, 1 run\n"
            "  -v, --verbose     copy the programs' stderr to ours\n"
            "  -h, --help        show this help and exit\n"
            "\n"
            "Exit status: 0 after the runs (or SIGINT/SIGTERM), 1 when a tern run broke or\n"
            "nothing could run, 2 for a usage error.\n",
            PROBES_MAX, REPEAT_MAX);
}

/* A comma-separated list of names into on[]. 0, or -1 naming the bad one. */
static int parse_list(const char *flag, const char *text, const char *const *names, size_t n,
                      bool *on)
{
    for (size_t i = 0; i < n; i++)
        on[i] = false;
    const char *p = text;
    bool any = false;
    while (*p) {
        size_t len = strcspn(p, ",");
        size_t i = 0;
        while (i < n && !(strlen(names[i]) == len && strncmp(p, names[i], len) == 0))
            i++;
        if (i == n) {
            fprintf(stderr, PROG ": bad value for %s: '%.*s' in '%s' (want a list of", flag,
                    (int)len, p, text);
            for (size_t k = 0; k < n; k++)
                fprintf(stderr, "%s%s", k ? "," : " ", names[k]);
            fprintf(stderr, ")\n");
            return -1;
        }
        on[i] = any = true;
        p += len;
        if (*p == ',')
            p++;
    }
    if (!any) {
        fprintf(stderr, PROG ": bad value for %s: '%s' (empty list)\n", flag, text);
        return -1;
    }
    return 0;
}

enum {
    OPT_MEGABYTES = 256,
    OPT_LOSS,
    OPT_PROBES,
    OPT_RATE,
    OPT_LATENCY_LOSS,
    OPT_DELAY,
    OPT_REPEAT,
    OPT_MODES,
    OPT_LINES,
    OPT_SEED,
    OPT_TIMEOUT,
    OPT_BINDIR,
    OPT_KCPTUN_DIR,
    OPT_OUT,
    OPT_QUICK,
};

/* Returns -1 to run, or an exit status. */
static int parse_args(int argc, char **argv, options *o)
{
    static const struct option longs[] = {
        {"megabytes", required_argument, NULL, OPT_MEGABYTES},
        {"loss", required_argument, NULL, OPT_LOSS},
        {"probes", required_argument, NULL, OPT_PROBES},
        {"rate", required_argument, NULL, OPT_RATE},
        {"latency-loss", required_argument, NULL, OPT_LATENCY_LOSS},
        {"delay", required_argument, NULL, OPT_DELAY},
        {"repeat", required_argument, NULL, OPT_REPEAT},
        {"modes", required_argument, NULL, OPT_MODES},
        {"lines", required_argument, NULL, OPT_LINES},
        {"seed", required_argument, NULL, OPT_SEED},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"bindir", required_argument, NULL, OPT_BINDIR},
        {"kcptun-dir", required_argument, NULL, OPT_KCPTUN_DIR},
        {"out", required_argument, NULL, OPT_OUT},
        {"quick", no_argument, NULL, OPT_QUICK},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->megabytes = 32;
    o->probes = 500;
    o->rate = 50;
    o->delay_ms = 20;
    o->repeat = 3;
    o->seed = 1;
    o->timeout_ms = 120000;
    o->loss = 0.02;
    o->latency_loss = 0.10;
    o->out = TERN_BENCH_RESULTS_DEFAULT;
    for (int i = 0; i < N_MODES; i++)
        o->mode_on[i] = true;
    for (int i = 0; i < N_LINES; i++)
        o->line_on[i] = true;
    bool given[OPT_QUICK + 1] = {false};
    bool have_bin = false;
    opterr = 0;
    optind = 1;
    int c;
    int idx = -1;
    while ((c = getopt_long(argc, argv, ":vh", longs, &idx)) != -1) {
        char flag[64] = "";
        if (c >= OPT_MEGABYTES && idx >= 0)
            snprintf(flag, sizeof(flag), "--%s", longs[idx].name);
        idx = -1;
        uint64_t u = 0;
        double d = 0;
        int rc = 0;
        if (c >= OPT_MEGABYTES && c <= OPT_QUICK)
            given[c] = true;
        switch (c) {
        case OPT_MEGABYTES:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 1, 1024, &o->megabytes);
            break;
        case OPT_LOSS:
        case OPT_LATENCY_LOSS:
            rc = tern_bench_parse_double(PROG, flag, optarg, 0.0, 50.0, &d);
            if (c == OPT_LOSS)
                o->loss = d / 100.0;
            else
                o->latency_loss = d / 100.0;
            break;
        case OPT_PROBES:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 1, PROBES_MAX, &o->probes);
            break;
        case OPT_RATE:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 1, 1000, &o->rate);
            break;
        case OPT_DELAY:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 0, 1000, &o->delay_ms);
            break;
        case OPT_REPEAT:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 1, REPEAT_MAX, &o->repeat);
            break;
        case OPT_MODES:
            rc = parse_list(flag, optarg, mode_names, N_MODES, o->mode_on);
            break;
        case OPT_LINES:
            rc = parse_list(flag, optarg, line_keys, N_LINES, o->line_on);
            break;
        case OPT_SEED:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 0, UINT64_MAX, &o->seed);
            break;
        case OPT_TIMEOUT:
            rc = tern_bench_parse_u64(PROG, flag, optarg, 1, 3600, &u);
            o->timeout_ms = u * 1000;
            break;
        case OPT_BINDIR:
        case OPT_KCPTUN_DIR:
            if (!optarg[0] || strlen(optarg) >= PATH_CAP - 64) {
                fprintf(stderr, PROG ": bad value for %s: '%s' (want a directory)\n", flag, optarg);
                return EXIT_USAGE;
            }
            snprintf(c == OPT_BINDIR ? o->bindir : o->kcptun_dir, PATH_CAP, "%s", optarg);
            have_bin |= c == OPT_BINDIR;
            break;
        case OPT_OUT:
            o->out = optarg;
            break;
        case OPT_QUICK:
            o->quick = true;
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            fprintf(stderr, PROG ": option '%s' needs a value (try '" PROG " --help')\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        default:
            fprintf(stderr, PROG ": unknown option '%s' (try '" PROG " --help')\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
        if (rc < 0)
            return EXIT_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (try '" PROG " --help')\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (o->quick) {
        /* A smoke run for ctest: tern only, so it needs nothing installed. */
        if (!given[OPT_MEGABYTES])
            o->megabytes = 2;
        if (!given[OPT_PROBES])
            o->probes = 50;
        if (!given[OPT_REPEAT])
            o->repeat = 1;
        if (!given[OPT_TIMEOUT])
            o->timeout_ms = 30000;
        if (!given[OPT_MODES])
            for (int i = 0; i < N_MODES; i++)
                o->mode_on[i] = i == 3; /* fast3 */
        if (!given[OPT_LINES])
            o->line_on[LINE_KCPTUN] = false;
    }
    if (!have_bin) {
        char exe[PATH_CAP];
        if (tern_proc_exe_dir(exe, sizeof(exe) - 16) != 0) {
            fprintf(stderr, PROG ": cannot find this program's directory (/proc/self/exe); "
                                 "give --bindir\n");
            return EXIT_RUNTIME;
        }
        /* build/bench/bench_tunnel -> build/tools */
        char *slash = strrchr(exe, '/');
        if (slash && slash != exe)
            *slash = '\0';
        tern_proc_join_path(o->bindir, sizeof(o->bindir), exe, "tools");
    }
    return -1;
}

/* ---- main ------------------------------------------------------------------------------- */

static void print_header(const bench *b)
{
    const shared *s = &b->s;
    const options *o = &s->o;
    double load[3];
    tern_bench_loadavg(load);
    char date[32];
    tern_bench_utc_now(date, sizeof(date));
    printf(PROG ": tern-tunnel %s vs kcptun through tern-netsim on 127.0.0.1\n",
           TERN_VERSION_STRING);
    printf("  machine  %ld CPUs, %s, kernel %s; load average %.2f %.2f %.2f; %s\n", host.nproc,
           host.cpu, host.kernel, load[0], load[1], load[2], date);
    printf("  tunnels  MTU " MTU ", sndwnd/rcvwnd " WINDOW ", 4 MiB socket buffers, no congestion "
           "control; kcptun --crypt none, no FEC, --nocomp\n");
    printf("  tern     %s\n", s->tern_tunnel);
    if (o->line_on[LINE_KCPTUN])
        printf("  kcptun   %s, %s\n", s->kcptun_client, s->kcptun_server);
    printf("  CPU      utime + stime of the tunnel client and server over the measured span; "
           "100%% = one core\n");
    fflush(stdout);
}

static bool is_tern(line_id l)
{
    return l != LINE_KCPTUN;
}

static const char *test_label(test_id t)
{
    return t == TEST_BULK0 ? "bulk 0% loss" : t == TEST_BULK ? "bulk with loss" : "latency";
}

/* Runs one cell; retries a run that failed before it could measure (a port
 * taken between our pick and the child's bind). */
static void run_cell(bench *b, run *r, unsigned rep, int mode, test_id test, line_id line)
{
    shared *s = &b->s;
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = run_init(r, s, line, test, mode);
        if (rc < 0) {
            r->res.ran = true;
            snprintf(r->res.reason, sizeof(r->res.reason), "cannot set up the run: %s",
                     tern_strerror(rc));
            break;
        }
        run_one(s, r);
        if (!r->start_failed || s->interrupted)
            break;
        if (attempt < 2)
            fprintf(stderr, PROG ": %s %s %s: %s; trying again\n", mode_names[mode],
                    test_label(test), line_names[line], r->reason);
    }
    result *res = cell(b, rep, mode, test, line);
    *res = r->res;
    b->runs++;
    const result *ref = line != LINE_KCPTUN ? cell(b, rep, mode, test, LINE_KCPTUN) : NULL;
    write_json(s, r, rep, ref && ref->ran ? ref : NULL);
    if (s->interrupted)
        return;
    printf("  [%u] %-6s %-14s %-14s ", rep + 1, mode_names[mode], test_label(test),
           line_names[line]);
    if (!res->ok) {
        printf("FAILED: %s\n", res->reason);
        if (is_tern(line))
            b->runs_failed_tern++;
        else
            b->runs_failed_kcptun++;
    } else if (test == TEST_LATENCY) {
        printf("p50 %.1f p99 %.1f max %.1f ms\n", res->p50, res->p99, res->pmax);
    } else {
        printf("%.2f MB/s in %.2f s, tunnel CPU %.2f s\n", res->mb_per_s, res->seconds,
               cpu_total(res));
    }
    fflush(stdout);
}

static int run_all(bench *b)
{
    shared *s = &b->s;
    const options *o = &s->o;
    run *r = calloc(1, sizeof(*r));
    if (!r) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    print_header(b);
    for (unsigned rep = 0; rep < o->repeat && !s->interrupted; rep++) {
        for (int m = 0; m < N_MODES && !s->interrupted; m++) {
            if (!o->mode_on[m])
                continue;
            for (int t = 0; t < N_TESTS && !s->interrupted; t++) {
                if (t == TEST_LATENCY && rep > 0)
                    continue; /* one latency run per cell: 500 samples each */
                for (int l = 0; l < N_LINES && !s->interrupted; l++)
                    if (o->line_on[l])
                        run_cell(b, r, rep, m, (test_id)t, (line_id)l);
            }
        }
        if (!s->interrupted)
            b->repeats_done = rep + 1;
    }
    free(r);
    if (s->interrupted) {
        fprintf(stderr, PROG ": interrupted by %s; every process it started was stopped\n",
                s->interrupted == SIGINT ? "SIGINT" : "SIGTERM");
        if (!b->repeats_done)
            return 0;
    }
    print_bulk_table(b, TEST_BULK0);
    print_bulk_table(b, TEST_BULK);
    print_latency_table(b);
    if (o->line_on[LINE_KCPTUN])
        printf("\nRatios are tern/kcptun in the same cell: goodput above 1x is faster, CPU/MB "
               "and round trips below 1x are better.\n");
    printf("%u runs, %u tern run%s failed, %u kcptun run%s failed; JSON lines in %s\n", b->runs,
           b->runs_failed_tern, b->runs_failed_tern == 1 ? "" : "s", b->runs_failed_kcptun,
           b->runs_failed_kcptun == 1 ? "" : "s", o->out);
    return b->runs_failed_tern ? EXIT_RUNTIME : 0;
}

static int setup(bench *b)
{
    shared *s = &b->s;
    options *o = &s->o;
    tern_proc_join_path(s->tern_tunnel, sizeof(s->tern_tunnel), o->bindir, "tern-tunnel");
    tern_proc_join_path(s->tern_netsim, sizeof(s->tern_netsim), o->bindir, "tern-netsim");
    if (access(s->tern_tunnel, X_OK) != 0 || access(s->tern_netsim, X_OK) != 0) {
        fprintf(stderr,
                PROG ": cannot run %s and %s: %s (build them, or name their directory with "
                     "--bindir)\n",
                s->tern_tunnel, s->tern_netsim, strerror(errno));
        return EXIT_RUNTIME;
    }
    if (o->line_on[LINE_KCPTUN]) {
        s->have_kcptun = find_program(o->kcptun_dir, "kcptun-client", s->kcptun_client,
                                      sizeof(s->kcptun_client)) &&
                         find_program(o->kcptun_dir, "kcptun-server", s->kcptun_server,
                                      sizeof(s->kcptun_server));
        if (!s->have_kcptun) {
            printf("kcptun not installed: skipping (no kcptun-client and kcptun-server %s%s; "
                   "Debian: apt-get install kcptun)\n",
                   o->kcptun_dir[0] ? "in " : "on PATH", o->kcptun_dir);
            o->line_on[LINE_KCPTUN] = false;
        }
    }
    bool any = false;
    for (int l = 0; l < N_LINES; l++)
        any |= o->line_on[l];
    if (!any) {
        fprintf(stderr, PROG ": nothing to run (--lines names only kcptun, which is missing)\n");
        return EXIT_RUNTIME;
    }
    if (o->line_on[LINE_NK] && make_keys(s) != 0)
        return EXIT_RUNTIME;
    s->out = tern_bench_results_open(PROG, o->out);
    if (!s->out)
        return EXIT_RUNTIME;
    b->results = calloc((size_t)o->repeat * N_MODES * N_TESTS * N_LINES, sizeof(result));
    if (!b->results) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    return -1;
}

int main(int argc, char **argv)
{
    /* A write to a connection the tunnel reset must fail with EPIPE, not
     * kill us (children get default dispositions back from uv_spawn). */
    signal(SIGPIPE, SIG_IGN);
    bench *b = calloc(1, sizeof(*b));
    if (!b) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    shared *s = &b->s;
    int status = parse_args(argc, argv, &s->o);
    if (status < 0) {
        tern_bench_machine_init(&host);
        status = setup(b);
    }
    if (status < 0) {
        if (uv_loop_init(&s->loop) != 0) {
            fprintf(stderr, PROG ": cannot start the event loop\n");
            status = EXIT_RUNTIME;
        } else {
            s->loop.data = s;
            uv_signal_init(&s->loop, &s->sigint);
            uv_signal_init(&s->loop, &s->sigterm);
            s->sigint.data = s->sigterm.data = s;
            uv_signal_start(&s->sigint, on_signal, SIGINT);
            uv_signal_start(&s->sigterm, on_signal, SIGTERM);
            /* They must not keep a run's uv_run going once its handles are closed. */
            uv_unref((uv_handle_t *)&s->sigint);
            uv_unref((uv_handle_t *)&s->sigterm);
            status = run_all(b);
            uv_close((uv_handle_t *)&s->sigint, NULL);
            uv_close((uv_handle_t *)&s->sigterm, NULL);
            uv_run(&s->loop, UV_RUN_DEFAULT);
            if (uv_loop_close(&s->loop) != 0)
                fprintf(stderr, PROG ": warning: handles left open at exit\n");
        }
    }
    if (s->out)
        fclose(s->out);
    remove_tmp(s);
    free(b->results);
    free(b);
    return status;
}
