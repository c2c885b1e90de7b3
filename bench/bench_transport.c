/* bench_transport: what the libuv transport costs over real loopback sockets.
 *
 *   goodput  one stream from a client endpoint to a server endpoint, 1 MiB
 *            writes kept in flight for --seconds, in plaintext, Noise NK
 *            ChaChaPoly and (where the CPU has AES-NI) AESGCM, for the fast3
 *            and normal presets with the default windows (128/256) and with
 *            1024/1024. The server checks every byte against the pattern
 *            written; the rate is verified payload bytes over the measured
 *            wall time, after a warm-up. CPU is getrusage (user + sys, the
 *            whole process: both endpoints) over the same time. --threads 1
 *            runs both endpoints on one loop in one thread, 2 gives each
 *            endpoint its own loop and thread. In the same run, on one
 *            thread, raw loopback UDP with sendmmsg/recvmmsg of 32 x 1200
 *            bytes (as bench_udp_raw does) gives the reference for the
 *            ratios, and one UDP_SEGMENT send of 54 x 1200 bytes (what
 *            tern's UDP layer does) a second one. Datagrams the kernel
 *            dropped on the two endpoints' sockets are counted.
 *   idle     --sessions sessions (default 10,000) from --clients client
 *            endpoints (default 10) to one server endpoint, all in this
 *            process (the server on one loop and thread, the clients on
 *            another), all established, then --idle seconds (default 10) of
 *            nothing with keepalive on. Reported: the RSS delta
 *            (/proc/self/statm) over creating them, per session, which holds
 *            both sides of every session; the bytes each side asked of its
 *            allocator (a counting tern_mem per side), per session; and CPU
 *            over the idle period, per side from each thread's CPU clock.
 *   latency  32-byte messages at --rate per second (default 1000) echoed by
 *            the server, on a reliable-ordered channel and on an unreliable
 *            one, in plaintext and ChaChaPoly, for --seconds each; beside raw
 *            UDP ping-pong of the same messages at the same rate (blocking
 *            sockets). Client and server run in two threads in both cases.
 *            RTT percentiles, and what tern adds at p50 and p99.
 *   flood    the goodput of one live ChaChaPoly stream (fast3, default
 *            windows, 4 MiB socket buffers, both endpoints on one loop and
 *            thread) while a flooder thread, free to use the other core,
 *            sends 192-byte INITs at --flood-rate per second from
 *            --flood-sources addresses 127.1.b.c, never answering: real
 *            Noise first messages with a valid mac1 (the attacker knows the
 *            server's public key), or junk that fails the mac1 check. Beside
 *            a no-flood baseline in the same run: the goodput ratio, the
 *            INITs sent, the server's counters (cookies, DH, refusals,
 *            half-open sessions), retransmissions, and the process's, the
 *            loop's and the flooder's CPU.
 *
 * --repeat N runs each goodput or flood cell and each latency series N
 * times, interleaved, and keeps the fastest cell and the series with the
 * lowest p99: on a shared machine interference only slows a run down.
 *
 * Timing is reported, never judged: the program fails only when what it
 * moves is wrong (a byte differs, a message is corrupt or duplicated, a
 * session does not come up or dies), a run stalls, or a flood got further
 * than the server's DoS policy lets it: a session for a flood source, DH
 * for flood INITs or half-open sessions for flood sources beyond the
 * detection burst, min(load_burst, halfopen_max / TERN_HALFOPEN_LOAD_DIV)
 * (with --flood-strict: any at all).
 *
 * Results: a table per mode on stdout and one JSON object per result
 * appended to --out, each stamped with the date, the machine (nproc, CPU
 * model, kernel) and the load average when it is written (after its last
 * repeat). */
#define _GNU_SOURCE /* sendmmsg, recvmmsg, SO_RCVBUFFORCE */

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bench/common.h"
#include "tern/tern.h"
#include "transport/wire.h"

#define PROG "bench_transport"

/* ---- clocks, CPU, memory, machine ---- */

/* User + system CPU seconds of the whole process (every thread). */
static double cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Resident bytes, from the second field of /proc/self/statm. */
static uint64_t rss_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Datagrams the kernel dropped on these sockets (the last column of
 * /proc/net/udp, per socket: a full receive buffer, mostly), found by their
 * local ports on 127.0.0.1. The namespace-wide RcvbufErrors of
 * /proc/net/snmp would count other programs' sockets too. */
static uint64_t socket_drops(const uint16_t *ports, size_t n)
{
    char line[512];
    uint64_t sum = 0;
    FILE *f = fopen("/proc/net/udp", "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned addr = 0, port = 0;
        if (sscanf(line, " %*u: %8X:%4X", &addr, &port) != 2 || addr != 0x0100007Fu)
            continue;
        for (size_t k = 0; k < n; k++) {
            if (port == ports[k]) {
                char *last = NULL, *save = NULL;
                for (char *t = strtok_r(line, " \n", &save); t; t = strtok_r(NULL, " \n", &save))
                    last = t;
                if (last)
                    sum += strtoull(last, NULL, 10);
                break;
            }
        }
    }
    fclose(f);
    return sum;
}

static uint16_t local_port(const tern_endpoint *ep)
{
    struct sockaddr_storage a;
    if (tern_endpoint_local_addr(ep, &a) != 0 || a.ss_family != AF_INET)
        return 0;
    return ntohs(((const struct sockaddr_in *)&a)->sin_port);
}

/* The machine every result is stamped with. */
static tern_bench_machine host;

static void loop_noop_timer(uv_timer_t *t)
{
    (void)t;
}

typedef bool (*done_fn)(void *arg);

/* Runs loop until done(arg) or timeout_s. A 5 ms tick wakes it to check. */
static bool run_until(uv_loop_t *loop, done_fn done, void *arg, double timeout_s)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, loop_noop_timer, 5, 5);
    double end = tern_bench_now_s() + timeout_s;
    bool ok = false;
    while (!(ok = done(arg)) && tern_bench_now_s() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

/* Runs the loop until every handle on it is closed (after the endpoints
 * were closed); false if some handle stays open. */
static bool drain_loop(uv_loop_t *loop)
{
    for (int i = 0; i < 2000 && uv_run(loop, UV_RUN_NOWAIT) != 0; i++)
        ;
    return uv_loop_close(loop) == 0;
}

/* ---- keys and endpoint configurations ---- */

static tern_keypair server_kp;

typedef struct variant {
    const char *name;
    tern_security security;
    const char *cipher; /* Noise only */
    tern_aead_impl aead; /* which library seals and opens */
} variant;

/* chachapoly and aesgcm use the build's default library (OpenSSL where
 * tern was built with it); the -sodium rows pin libsodium, for the
 * side-by-side ratio. */
static const variant variants[] = {
    {"plaintext", TERN_SECURITY_PLAINTEXT, NULL, TERN_AEAD_IMPL_AUTO},
    {"chachapoly", TERN_SECURITY_NOISE, "ChaChaPoly", TERN_AEAD_IMPL_AUTO},
    {"aesgcm", TERN_SECURITY_NOISE, "AESGCM", TERN_AEAD_IMPL_AUTO},
    {"chachapoly-sodium", TERN_SECURITY_NOISE, "ChaChaPoly", TERN_AEAD_IMPL_LIBSODIUM},
    {"aesgcm-sodium", TERN_SECURITY_NOISE, "AESGCM", TERN_AEAD_IMPL_LIBSODIUM},
};
#define N_VARIANTS 5

static bool variant_available(const variant *v)
{
    return (!v->cipher || strcmp(v->cipher, "AESGCM") != 0 || tern_crypto_aesgcm_available()) &&
           tern_aead_impl_available(v->aead);
}

static void endpoint_config(tern_endpoint_config *cfg, const variant *v, bool server)
{
    tern_endpoint_config_default(cfg);
    cfg->security = v->security;
    cfg->noise.cipher = v->cipher;
    cfg->aead_impl = v->aead;
    if (server)
        cfg->noise.static_key = &server_kp;
    else
        cfg->noise.server_public = &server_kp.pub;
}

static int endpoint_new(tern_endpoint **out, uv_loop_t *loop, const tern_endpoint_config *cfg)
{
    struct sockaddr_storage any;
    int rc = tern_sockaddr_parse("127.0.0.1:0", &any);
    if (rc == 0)
        rc = tern_endpoint_new(out, loop, (const struct sockaddr *)&any, cfg);
    if (rc < 0)
        fprintf(stderr, PROG ": endpoint: %s\n", tern_strerror(rc));
    return rc;
}

/* ======================================================================
 * goodput
 * ====================================================================== */

#define GP_WRITE (1u << 20)
/* The stream is this pattern repeated. Not a multiple of the write size,
 * so no two writes carry the same bytes: a lost, repeated or reordered
 * chunk shows. Stored twice, so that any window of it is contiguous. */
#define GP_PATTERN (GP_WRITE + 4093u)
#define GP_INFLIGHT 3u /* 1 MiB writes queued at once: under stream_write_max (4 MiB) */
#define GP_RBUF 65536u
#define GP_SOCKBUF (4 << 20)

typedef struct gp_case {
    const variant *v;
    tern_kcp_preset preset;
    const char *preset_name;
    uint32_t wnd; /* 0: the defaults, 128/256 */
    int threads;
    int sockbuf; /* SO_SNDBUF and SO_RCVBUF; 0: the OS default */
} gp_case;

typedef struct gp_result {
    gp_case c;
    bool ran, ok;
    char why[160];
    double secs, mb_s, cpu_pct, cpu_s_per_gb;
    double mb_s_min; /* the slowest of the repeats */
    unsigned runs;
    uint64_t bytes;
    uint64_t segs_sent, retrans, dgrams_c2s, dgrams_s2c, drops;
    uint32_t snd_wnd, rcv_wnd;
} gp_result;

/* What another mode (flood) does at the run's milestones; all are called on
 * the server's loop. NULL in goodput mode. */
typedef struct gp_hooks {
    /* The stream's first bytes arrived: the warm-up starts. */
    void (*start)(void *arg, uv_loop_t *loop, tern_endpoint *srv);
    /* The measured interval starts. */
    void (*measure)(void *arg);
    /* The run is over, measured or failed (only after start), before the
     * server endpoint closes. */
    void (*end)(void *arg);
    void *arg;
} gp_hooks;

typedef struct gp_run {
    gp_result *res;
    const gp_hooks *hooks;
    uint8_t *pattern; /* 2 x GP_PATTERN */
    double secs, warmup;
    uv_loop_t *cloop, *sloop;
    tern_endpoint *cli, *srv;
    uv_async_t cstop; /* on the client loop: the server side is done */
    uv_timer_t phase; /* on the server loop: warm-up, then measurement */
    uv_timer_t watchdog;
    /* client thread */
    tern_session *cs;
    tern_stream *cst;
    uint64_t next_write;
    unsigned writes_pending;
    bool stop_writing;
    tern_session_stats cstats;
    bool have_cstats;
    int client_error;
    /* server thread */
    uint8_t rbuf[GP_RBUF];
    uint64_t received;
    bool started, measuring, finished;
    double t0, cpu0;
    uint64_t bytes0, drops0;
    uint16_t ports[2]; /* both endpoints' sockets, for their drop counts */
} gp_run;

static void gp_pump(gp_run *r);

static void gp_wrote(tern_stream *st, int status, void *arg)
{
    (void)st;
    gp_run *r = arg;
    r->writes_pending--;
    if (status < 0) {
        r->stop_writing = true;
        return;
    }
    gp_pump(r);
}

static void gp_pump(gp_run *r)
{
    while (!r->stop_writing && r->cst && r->writes_pending < GP_INFLIGHT) {
        uint64_t off = (r->next_write * GP_WRITE) % GP_PATTERN;
        uv_buf_t b = uv_buf_init((char *)r->pattern + off, GP_WRITE);
        int rc = tern_stream_write(r->cst, &b, 1, gp_wrote, r);
        if (rc == TERN_ERR_WOULDBLOCK)
            return; /* a pending write's callback comes back here */
        if (rc < 0) {
            r->client_error = rc;
            r->stop_writing = true;
            return;
        }
        r->writes_pending++;
        r->next_write++;
    }
}

static void gp_client_close(tern_session *s, int status)
{
    gp_run *r = tern_session_get_data(s);
    (void)status;
    tern_session_get_stats(s, &r->cstats);
    r->have_cstats = true;
    r->cs = NULL;
    r->cst = NULL;
    r->stop_writing = true;
}

static void gp_client_connect(tern_session *s, int status)
{
    gp_run *r = tern_session_get_data(s);
    if (status < 0) {
        r->client_error = status;
        return;
    }
    int rc = tern_stream_open(s, &r->cst);
    if (rc < 0) {
        r->client_error = rc;
        return;
    }
    gp_pump(r);
}

static void gp_cstop_closed(uv_handle_t *h)
{
    (void)h;
}

/* Client thread: the server has its figures; stop. */
static void gp_on_cstop(uv_async_t *a)
{
    gp_run *r = a->data;
    r->stop_writing = true;
    if (r->cs) {
        tern_session_get_stats(r->cs, &r->cstats);
        r->have_cstats = true;
    }
    (void)tern_endpoint_close(r->cli, NULL);
    uv_close((uv_handle_t *)&r->cstop, gp_cstop_closed);
}

static void gp_fail(gp_run *r, const char *fmt, const char *detail)
{
    if (!r->res->ok)
        return;
    r->res->ok = false;
    snprintf(r->res->why, sizeof(r->res->why), fmt, detail);
}

/* Server thread: stops everything; the figures are final. */
static void gp_finish(gp_run *r)
{
    if (r->finished)
        return;
    r->finished = true;
    if (r->hooks && r->started)
        r->hooks->end(r->hooks->arg);
    uv_close((uv_handle_t *)&r->phase, NULL);
    uv_close((uv_handle_t *)&r->watchdog, NULL);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(r->srv, &es);
    r->res->dgrams_c2s = es.dgrams_in;
    r->res->dgrams_s2c = es.dgrams_out;
    (void)tern_endpoint_close(r->srv, NULL);
    uv_async_send(&r->cstop);
}

static void gp_on_end(uv_timer_t *t)
{
    gp_run *r = t->data;
    double t1 = tern_bench_now_s(), cpu1 = cpu_s();
    gp_result *res = r->res;
    res->secs = t1 - r->t0;
    res->bytes = r->received - r->bytes0;
    res->mb_s = res->secs > 0 ? (double)res->bytes / res->secs / 1e6 : 0.0;
    res->cpu_pct = res->secs > 0 ? (cpu1 - r->cpu0) / res->secs * 100.0 : 0.0;
    res->cpu_s_per_gb = res->bytes ? (cpu1 - r->cpu0) / ((double)res->bytes / 1e9) : 0.0;
    res->drops = socket_drops(r->ports, 2) - r->drops0;
    if (res->bytes == 0)
        gp_fail(r, "%s", "no payload arrived while measuring");
    gp_finish(r);
}

static void gp_on_warm(uv_timer_t *t)
{
    gp_run *r = t->data;
    r->measuring = true;
    r->t0 = tern_bench_now_s();
    r->cpu0 = cpu_s();
    r->bytes0 = r->received;
    r->drops0 = socket_drops(r->ports, 2);
    if (r->hooks)
        r->hooks->measure(r->hooks->arg);
    uv_timer_start(&r->phase, gp_on_end, (uint64_t)(r->secs * 1000.0), 0);
}

static void gp_on_watchdog(uv_timer_t *t)
{
    gp_run *r = t->data;
    gp_fail(r, "%s", r->started ? "stalled: the measurement did not end" : "no data arrived");
    gp_finish(r);
}

static void gp_alloc(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    gp_run *r = tern_stream_get_data(st);
    (void)suggested;
    *buf = uv_buf_init((char *)r->rbuf, GP_RBUF);
}

static void gp_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    gp_run *r = tern_stream_get_data(st);
    if (n < 0) {
        if (!r->finished)
            gp_fail(r, "the stream ended early: %s", tern_strerror((int)n));
        gp_finish(r);
        return;
    }
    if (r->finished)
        return;
    if (memcmp(buf->base, r->pattern + r->received % GP_PATTERN, (size_t)n) != 0) {
        char at[32];
        snprintf(at, sizeof(at), "%" PRIu64, r->received);
        gp_fail(r, "payload differs from what was written, at byte %s", at);
        gp_finish(r);
        return;
    }
    r->received += (uint64_t)n;
    if (!r->started) {
        r->started = true;
        if (r->hooks)
            r->hooks->start(r->hooks->arg, r->sloop, r->srv);
        uv_timer_start(&r->phase, gp_on_warm, (uint64_t)(r->warmup * 1000.0), 0);
    }
}

static void gp_server_stream(tern_session *s, tern_stream *st)
{
    gp_run *r = tern_session_get_data(s);
    tern_stream_set_data(st, r);
    if (tern_stream_read_start(st, gp_alloc, gp_read) < 0)
        gp_fail(r, "%s", "read_start failed");
}

static void gp_server_accept(tern_endpoint *ep, tern_session *s)
{
    gp_run *r = tern_endpoint_get_data(ep);
    tern_session_set_data(s, r);
    tern_session_callbacks cbs = {.stream_cb = gp_server_stream};
    tern_session_set_callbacks(s, &cbs);
}

static void gp_server_thread(void *arg)
{
    gp_run *r = arg;
    uv_run(r->sloop, UV_RUN_DEFAULT);
}

static void gp_configure(const gp_case *c, tern_endpoint_config *cfg, bool server)
{
    endpoint_config(cfg, c->v, server);
    (void)tern_kcp_settings_preset(&cfg->kcp, c->preset);
    if (c->wnd)
        cfg->kcp.snd_wnd = cfg->kcp.rcv_wnd = c->wnd;
    /* A window of 1024 segments is 1.4 MB in one burst: more than the
     * default socket buffer (about 208 KB) holds. */
    cfg->sndbuf = cfg->rcvbuf = c->sockbuf;
}

static void gp_run_case(const gp_case *c, uint8_t *pattern, double secs, const gp_hooks *hooks,
                        gp_result *res)
{
    memset(res, 0, sizeof(*res));
    res->c = *c;
    res->ran = res->ok = true;
    if (!variant_available(c->v)) {
        res->ran = false;
        snprintf(res->why, sizeof(res->why), "no AES-NI on this CPU, or no OpenSSL in this build");
        return;
    }
    gp_run *r = calloc(1, sizeof(*r));
    uv_loop_t *loops = calloc(2, sizeof(uv_loop_t));
    if (!r || !loops) {
        free(r);
        free(loops);
        res->ok = false;
        snprintf(res->why, sizeof(res->why), "out of memory");
        return;
    }
    r->res = res;
    r->hooks = hooks;
    r->pattern = pattern;
    r->secs = secs;
    r->warmup = secs / 5 < 0.5 ? secs / 5 : 0.5;
    r->cloop = &loops[0];
    r->sloop = c->threads == 2 ? &loops[1] : &loops[0];
    uv_loop_init(r->cloop);
    if (r->sloop != r->cloop)
        uv_loop_init(r->sloop);

    tern_endpoint_config scfg, ccfg;
    gp_configure(c, &scfg, true);
    gp_configure(c, &ccfg, false);
    res->snd_wnd = scfg.kcp.snd_wnd;
    res->rcv_wnd = scfg.kcp.rcv_wnd;
    bool up = false;
    if (endpoint_new(&r->srv, r->sloop, &scfg) == 0) {
        if (endpoint_new(&r->cli, r->cloop, &ccfg) == 0)
            up = true;
        else
            (void)tern_endpoint_close(r->srv, NULL);
    }
    if (up) {
        tern_endpoint_set_data(r->srv, r);
        r->ports[0] = local_port(r->srv);
        r->ports[1] = local_port(r->cli);
        (void)tern_endpoint_listen(r->srv, gp_server_accept);
        uv_async_init(r->cloop, &r->cstop, gp_on_cstop);
        r->cstop.data = r;
        uv_timer_init(r->sloop, &r->phase);
        r->phase.data = r;
        uv_timer_init(r->sloop, &r->watchdog);
        r->watchdog.data = r;
        uv_timer_start(&r->watchdog, gp_on_watchdog, (uint64_t)((secs + r->warmup + 15) * 1000.0),
                       0);
        struct sockaddr_storage to;
        (void)tern_endpoint_local_addr(r->srv, &to);
        const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
        tern_session_callbacks cbs = {.connect_cb = gp_client_connect, .close_cb = gp_client_close};
        int rc = tern_endpoint_connect(r->cli, addrs, 1, 0, &cbs, &r->cs);
        if (rc < 0) {
            gp_fail(r, "connect: %s", tern_strerror(rc));
        } else {
            tern_session_set_data(r->cs, r);
        }
        if (rc < 0) {
            /* Nothing will run: stop from here. */
            gp_finish(r);
        }
        uv_thread_t th;
        bool threaded = r->sloop != r->cloop && uv_thread_create(&th, gp_server_thread, r) == 0;
        uv_run(r->cloop, UV_RUN_DEFAULT);
        if (threaded)
            uv_thread_join(&th);
    } else {
        res->ok = false;
        snprintf(res->why, sizeof(res->why), "endpoint setup failed");
    }
    if (r->client_error)
        gp_fail(r, "client: %s", tern_strerror(r->client_error));
    if (r->have_cstats) {
        res->segs_sent = r->cstats.kcp.segs_sent;
        res->retrans = r->cstats.kcp.retrans_fast + r->cstats.kcp.retrans_timeout +
                       r->cstats.kcp.retrans_early;
    }
    if (!drain_loop(r->cloop) && res->ok)
        gp_fail(r, "%s", "a libuv handle was left open");
    if (r->sloop != r->cloop && !drain_loop(r->sloop) && res->ok)
        gp_fail(r, "%s", "a libuv handle was left open");
    free(loops);
    free(r);
}

/* The stream's bytes: GP_PATTERN pseudo-random bytes, stored twice. NULL
 * when out of memory. */
static uint8_t *gp_pattern_new(void)
{
    uint8_t *pattern = malloc(2 * (size_t)GP_PATTERN);
    if (!pattern)
        return NULL;
    uint64_t seed = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < GP_PATTERN; i++) {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        pattern[i] = (uint8_t)((seed * 0x2545F4914F6CDD1Du) >> 56);
    }
    memcpy(pattern + GP_PATTERN, pattern, GP_PATTERN);
    return pattern;
}

/* ---- the raw reference: sendmmsg / recvmmsg on one thread ---- */

#define RAW_SIZE 1200u
#define RAW_BATCH 32u
/* As many 1200-byte segments as one 65507-byte UDP payload holds. */
#define RAW_GSO_SEGS 54u

typedef struct raw_result {
    bool ok, skipped;
    char why[160];
    uint64_t sent, delivered;
    double secs, mb_s, cpu_pct;
    double mb_s_min; /* the slowest of the repeats */
} raw_result;

static int raw_pair(int *tx, int *rx, struct sockaddr_in *to)
{
    *tx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    *rx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (*tx < 0 || *rx < 0)
        return -1;
    int buf = GP_SOCKBUF;
    (void)setsockopt(*rx, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    (void)setsockopt(*rx, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf));
    memset(to, 0, sizeof(*to));
    to->sin_family = AF_INET;
    to->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*to);
    if (bind(*rx, (struct sockaddr *)to, sizeof(*to)) != 0 ||
        getsockname(*rx, (struct sockaddr *)to, &len) != 0)
        return -1;
    return 0;
}

/* Every round one sendmmsg of 32 numbered datagrams (or, with gso, one
 * sendmsg carrying 54 of them as UDP_SEGMENT segments: what tern's UDP layer
 * does), then recvmmsg until the socket is drained (loopback delivers inside
 * the send call, so the receive buffer never overflows). Each datagram must
 * arrive once, whole, in order. */
static void raw_run(double secs, bool gso, raw_result *r)
{
    memset(r, 0, sizeof(*r));
    r->ok = true;
    int tx = -1, rx = -1;
    struct sockaddr_in to;
    static uint8_t out[RAW_GSO_SEGS][RAW_SIZE], in[RAW_BATCH][RAW_SIZE + 1];
    struct mmsghdr om[RAW_BATCH], im[RAW_BATCH];
    struct iovec oiov[RAW_BATCH], iiov[RAW_BATCH];
    unsigned per_send = gso ? RAW_GSO_SEGS : RAW_BATCH;
    if (raw_pair(&tx, &rx, &to) != 0) {
        r->ok = false;
        snprintf(r->why, sizeof(r->why), "socket setup: %s", strerror(errno));
    }
    if (r->ok && gso) {
        int v = 0;
        socklen_t vl = sizeof(v);
        if (getsockopt(tx, SOL_UDP, UDP_SEGMENT, &v, &vl) != 0) {
            r->ok = false;
            r->skipped = true;
            snprintf(r->why, sizeof(r->why), "no UDP_SEGMENT on this kernel");
        }
    }
    for (unsigned k = 0; k < RAW_GSO_SEGS; k++)
        memset(out[k], (int)(k * 37u + 1u), RAW_SIZE);
    for (unsigned k = 0; k < RAW_BATCH; k++) {
        oiov[k] = (struct iovec){out[k], RAW_SIZE};
        iiov[k] = (struct iovec){in[k], RAW_SIZE + 1};
    }
    double t0 = tern_bench_now_s(), c0 = cpu_s(), t = t0;
    while (r->ok && t - t0 < secs) {
        for (unsigned k = 0; k < per_send; k++) {
            uint64_t seq = r->sent + k;
            memcpy(out[k], &seq, sizeof(seq));
        }
        int n;
        if (gso) {
            union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(uint16_t))];
            } cm;
            struct iovec iov = {out, sizeof(out)};
            struct msghdr h;
            memset(&h, 0, sizeof(h));
            memset(&cm, 0, sizeof(cm));
            h.msg_name = &to;
            h.msg_namelen = sizeof(to);
            h.msg_iov = &iov;
            h.msg_iovlen = 1;
            h.msg_control = cm.buf;
            h.msg_controllen = sizeof(cm.buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = RAW_SIZE;
            memcpy(CMSG_DATA(c), &seg, sizeof(seg));
            n = sendmsg(tx, &h, 0) < 0 ? -1 : (int)RAW_GSO_SEGS;
        } else {
            for (unsigned k = 0; k < RAW_BATCH; k++) {
                memset(&om[k], 0, sizeof(om[k]));
                om[k].msg_hdr.msg_name = &to;
                om[k].msg_hdr.msg_namelen = sizeof(to);
                om[k].msg_hdr.msg_iov = &oiov[k];
                om[k].msg_hdr.msg_iovlen = 1;
            }
            n = sendmmsg(tx, om, RAW_BATCH, 0);
        }
        if (n < 0 && errno != EAGAIN && errno != ENOBUFS) {
            r->ok = false;
            snprintf(r->why, sizeof(r->why), "%s: %s", gso ? "sendmsg" : "sendmmsg",
                     strerror(errno));
            break;
        }
        if (n > 0)
            r->sent += (uint64_t)n;
        for (;;) {
            for (unsigned k = 0; k < RAW_BATCH; k++) {
                memset(&im[k], 0, sizeof(im[k]));
                im[k].msg_hdr.msg_iov = &iiov[k];
                im[k].msg_hdr.msg_iovlen = 1;
            }
            int m = recvmmsg(rx, im, RAW_BATCH, 0, NULL);
            if (m <= 0)
                break;
            for (int k = 0; k < m; k++) {
                uint64_t seq;
                memcpy(&seq, in[k], sizeof(seq));
                if (im[k].msg_len != RAW_SIZE || seq != r->delivered) {
                    r->ok = false;
                    snprintf(r->why, sizeof(r->why),
                             "datagram %" PRIu64 ": got seq %" PRIu64 ", %u bytes", r->delivered,
                             seq, im[k].msg_len);
                    break;
                }
                r->delivered++;
            }
            if (!r->ok || (unsigned)m < RAW_BATCH)
                break;
        }
        t = tern_bench_now_s();
    }
    r->secs = t - t0;
    r->cpu_pct = r->secs > 0 ? (cpu_s() - c0) / r->secs * 100.0 : 0.0;
    r->mb_s = r->secs > 0 ? (double)r->delivered * RAW_SIZE / r->secs / 1e6 : 0.0;
    if (r->ok && r->delivered != r->sent) {
        r->ok = false;
        snprintf(r->why, sizeof(r->why), "sent %" PRIu64 ", delivered %" PRIu64, r->sent,
                 r->delivered);
    }
    if (tx >= 0)
        close(tx);
    if (rx >= 0)
        close(rx);
}

/* ---- goodput: the matrix and its report ---- */

#define FL_RATES_MAX 16u

typedef struct options {
    bool quick;
    bool no_raw; /* goodput without the raw references (for profilers) */
    double secs;
    int threads; /* 0: both */
    int variant; /* -1: all */
    int preset;  /* -1: fast3 and normal */
    const char *preset_name;
    int wnd; /* -1: default and 1024 */
    uint64_t sockbuf;
    unsigned repeat; /* goodput and latency: runs, the best kept */
    uint64_t sessions, clients;
    double idle_secs;
    uint64_t rate;
    uint64_t flood_rates[FL_RATES_MAX]; /* INITs per second; 0: as fast as it can */
    size_t n_flood_rates;
    uint64_t flood_sources;
    int flood_kind;    /* -1: both; else an fl_kind */
    bool flood_strict; /* no DH, no half-open for any flood INIT, not even the burst */
} options;

/* Keeps the fastest of the repeats (interference on a shared machine only
 * slows a run down) and the slowest rate, for the spread; a failure sticks. */
static void keep_gp(gp_result *best, const gp_result *r, unsigned rep)
{
    if (rep > 0 && (!best->ok || !best->ran))
        return;
    unsigned runs = rep + 1;
    double lo = rep == 0 || r->mb_s < best->mb_s_min ? r->mb_s : best->mb_s_min;
    if (rep == 0 || !r->ok || r->mb_s > best->mb_s)
        *best = *r;
    best->runs = runs;
    best->mb_s_min = lo;
}

static void keep_raw(raw_result *best, const raw_result *r, unsigned rep)
{
    if (rep > 0 && !best->ok)
        return;
    double lo = rep == 0 || r->mb_s < best->mb_s_min ? r->mb_s : best->mb_s_min;
    if (rep == 0 || !r->ok || r->mb_s > best->mb_s)
        *best = *r;
    best->mb_s_min = lo;
}

static double spread(double best, double worst)
{
    return best > 0 ? (best - worst) / best * 100.0 : 0.0;
}

static int goodput(const options *o, FILE *out)
{
    struct {
        tern_kcp_preset p;
        const char *name;
    } presets[] = {{TERN_KCP_PRESET_FAST3, "fast3"}, {TERN_KCP_PRESET_NORMAL, "normal"}};
    uint32_t wnds[] = {0, 1024};
    /* --preset and --window pick one of the matrix's values, or replace
     * them with any other. */
    size_t n_presets = 2, n_wnds = 2;
    if (o->preset >= 0) {
        presets[0].p = (tern_kcp_preset)o->preset;
        presets[0].name = o->preset_name;
        n_presets = 1;
    }
    if (o->wnd >= 0) {
        wnds[0] = (uint32_t)o->wnd;
        n_wnds = 1;
    }
    gp_case cases[2 * N_VARIANTS * 2 * 2];
    size_t n = 0;
    for (int th = 1; th <= 2; th++) {
        if (o->threads && o->threads != th)
            continue;
        for (size_t p = 0; p < n_presets; p++) {
            for (size_t w = 0; w < n_wnds; w++) {
                for (int v = 0; v < N_VARIANTS; v++) {
                    if (o->variant >= 0 && o->variant != v)
                        continue;
                    cases[n++] = (gp_case){&variants[v], presets[p].p, presets[p].name,
                                           wnds[w],      th,           (int)o->sockbuf};
                }
            }
        }
    }
    uint8_t *pattern = gp_pattern_new();
    gp_result *res = calloc(n ? n : 1, sizeof(*res));
    if (!pattern || !res) {
        free(pattern);
        free(res);
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }

    printf(
        "== goodput: one stream over loopback, 1 MiB writes, %.2f s per run after a "
        "%.2f s warm-up,\n   fastest of %u interleaved runs; MB/s of verified payload "
        "(10^6 B), CPU = user+sys\n   of the whole process / wall (100%% = one core), s/GB = "
        "CPU seconds per 10^9 B,\n   spread = how far the slowest run fell behind, retrans = "
        "segments resent / sent,\n   drops = datagrams the kernel dropped on the two sockets.\n\n",
        o->secs, o->secs / 5 < 0.5 ? o->secs / 5 : 0.5, o->repeat);
    raw_result raw, gso;
    memset(&raw, 0, sizeof(raw));
    memset(&gso, 0, sizeof(gso));
    raw.skipped = gso.skipped = o->no_raw;
    snprintf(raw.why, sizeof(raw.why), "--no-raw");
    snprintf(gso.why, sizeof(gso.why), "--no-raw");
    for (unsigned rep = 0; rep < o->repeat; rep++) {
        if (!o->no_raw) {
            raw_result x;
            raw_run(o->quick ? 0.2 : o->secs, false, &x);
            keep_raw(&raw, &x, rep);
            raw_run(o->quick ? 0.2 : o->secs, true, &x);
            keep_raw(&gso, &x, rep);
        }
        for (size_t i = 0; i < n; i++) {
            gp_result r;
            gp_run_case(&cases[i], pattern, o->secs, NULL, &r);
            keep_gp(&res[i], &r, rep);
        }
        if (o->repeat > 1)
            printf("(round %u of %u done)\n", rep + 1, o->repeat);
    }
    printf("%-7s %-17s %-6s %9s %9s %7s %6s %6s %8s %8s %7s %7s\n", "threads", "variant", "preset",
           "wnd", "MB/s", "spread", "CPU%", "s/GB", "vs mmsg", "vs plain", "retr%", "drops");
    for (int k = 0; k < 2 && !o->no_raw; k++) {
        const raw_result *x = k ? &gso : &raw;
        const char *name = k ? "raw_gso" : "raw_mmsg";
        char sp[16];
        snprintf(sp, sizeof(sp), "%.1f%%", spread(x->mb_s, x->mb_s_min));
        if (x->ok)
            printf("%-7d %-17s %-6s %9s %9.1f %7s %6.0f %6.2f %8.2f %8s %7s %7s\n", 1, name, "-",
                   "1200 B", x->mb_s, sp, x->cpu_pct,
                   x->mb_s > 0 ? x->cpu_pct / 100.0 / (x->mb_s / 1e3) : 0.0,
                   raw.ok && raw.mb_s > 0 ? x->mb_s / raw.mb_s : 0.0, "-", "-", "-");
        else
            printf("%-7d %-17s %s: %s\n", 1, name, x->skipped ? "skipped" : "FAILED", x->why);
        fprintf(out,
                "{\"bench\":\"transport\",\"mode\":\"goodput\",\"variant\":\"%s\","
                "\"threads\":1,\"dgram_size\":%u,\"ok\":%s,\"sent\":%" PRIu64
                ",\"delivered\":%" PRIu64 ",\"wall_s\":%.4f,\"mb_per_s\":%.2f,"
                "\"mb_per_s_slowest\":%.2f,\"repeats\":%u,\"cpu_pct\":%.1f,",
                name, RAW_SIZE, x->ok ? "true" : "false", x->sent, x->delivered, x->secs, x->mb_s,
                x->mb_s_min, o->repeat, x->cpu_pct);
        if (x->why[0])
            fprintf(out, "\"why\":\"%s\",", x->why);
        tern_bench_json_stamp(out, &host, o->quick);
    }

    int failed = (raw.ok || raw.skipped ? 0 : 1) + (gso.ok || gso.skipped ? 0 : 1);
    for (size_t i = 0; i < n; i++) {
        gp_result *r = &res[i];
        /* The plaintext run of the same threads, preset and window. */
        const gp_result *plain = NULL;
        for (size_t j = 0; j < i; j++)
            if (res[j].ok && res[j].ran && res[j].c.v->security == TERN_SECURITY_PLAINTEXT &&
                res[j].c.threads == r->c.threads && res[j].c.preset == r->c.preset &&
                res[j].c.wnd == r->c.wnd)
                plain = &res[j];
        double vs_raw = raw.ok && raw.mb_s > 0 ? r->mb_s / raw.mb_s : 0.0;
        double vs_plain = plain && plain->mb_s > 0 && r->c.v->security != TERN_SECURITY_PLAINTEXT
                              ? r->mb_s / plain->mb_s
                              : 0.0;
        char wnd[16], vp[16], sp[16];
        snprintf(wnd, sizeof(wnd), "%u/%u", r->snd_wnd, r->rcv_wnd);
        snprintf(sp, sizeof(sp), "%.1f%%", spread(r->mb_s, r->mb_s_min));
        snprintf(vp, sizeof(vp), vs_plain > 0 ? "%.2f" : "-", vs_plain);
        if (!r->ran) {
            printf("%-7d %-17s %-6s %9s skipped: %s\n", r->c.threads, r->c.v->name,
                   r->c.preset_name, wnd, r->why);
        } else if (!r->ok) {
            printf("%-7d %-17s %-6s %9s FAILED: %s\n", r->c.threads, r->c.v->name, r->c.preset_name,
                   wnd, r->why);
            failed++;
        } else {
            printf("%-7d %-17s %-6s %9s %9.1f %7s %6.0f %6.2f %8.2f %8s %7.2f %7" PRIu64 "\n",
                   r->c.threads, r->c.v->name, r->c.preset_name, wnd, r->mb_s, sp, r->cpu_pct,
                   r->cpu_s_per_gb, vs_raw, vp,
                   r->segs_sent ? 100.0 * (double)r->retrans / (double)r->segs_sent : 0.0,
                   r->drops);
        }
        fprintf(out,
                "{\"bench\":\"transport\",\"mode\":\"goodput\",\"variant\":\"%s\",\"threads\":%d,"
                "\"preset\":\"%s\",\"snd_wnd\":%u,\"rcv_wnd\":%u,\"write_bytes\":%u,"
                "\"sockbuf\":%d,\"ran\":%s,\"ok\":%s,\"bytes\":%" PRIu64
                ",\"wall_s\":%.4f,\"mb_per_s\":%.2f,\"mb_per_s_slowest\":%.2f,\"repeats\":%u,"
                "\"cpu_pct\":%.1f,\"cpu_s_per_gb\":%.3f,\"ratio_vs_raw_mmsg\":%.3f,",
                r->c.v->name, r->c.threads, r->c.preset_name, r->snd_wnd, r->rcv_wnd, GP_WRITE,
                r->c.sockbuf, r->ran ? "true" : "false", r->ok ? "true" : "false", r->bytes,
                r->secs, r->mb_s, r->mb_s_min, r->runs, r->cpu_pct, r->cpu_s_per_gb, vs_raw);
        if (vs_plain > 0)
            fprintf(out, "\"ratio_vs_plaintext\":%.3f,", vs_plain);
        fprintf(out,
                "\"segs_sent\":%" PRIu64 ",\"retrans\":%" PRIu64 ",\"dgrams_c2s\":%" PRIu64
                ",\"dgrams_s2c\":%" PRIu64 ",\"socket_drops\":%" PRIu64 ",",
                r->segs_sent, r->retrans, r->dgrams_c2s, r->dgrams_s2c, r->drops);
        if (r->why[0])
            fprintf(out, "\"why\":\"%s\",", r->why);
        tern_bench_json_stamp(out, &host, o->quick);
    }
    /* The best configuration, and what moved it. */
    const gp_result *best[N_VARIANTS] = {NULL};
    for (size_t i = 0; i < n; i++) {
        int v = (int)(res[i].c.v - variants);
        if (res[i].ok && res[i].ran && (!best[v] || res[i].mb_s > best[v]->mb_s))
            best[v] = &res[i];
    }
    printf("\nbest per variant:\n");
    for (int v = 0; v < N_VARIANTS; v++) {
        if (best[v])
            printf("  %-17s %8.1f MB/s  (threads %d, %s, wnd %u/%u)\n", variants[v].name,
                   best[v]->mb_s, best[v]->c.threads, best[v]->c.preset_name, best[v]->snd_wnd,
                   best[v]->rcv_wnd);
    }
    printf("\n");
    free(pattern);
    free(res);
    return failed;
}

/* ======================================================================
 * idle
 * ====================================================================== */

/* Counts the bytes one side asks of its allocator (requested sizes; the
 * allocator's own headers are not counted). Atomic: the main thread reads
 * the server side's count while the server thread allocates. */
typedef struct counting_mem {
    atomic_size_t live;
} counting_mem;

typedef union mem_hdr {
    size_t size;
    max_align_t align;
} mem_hdr;

static void *count_malloc(size_t size, void *user)
{
    counting_mem *c = user;
    mem_hdr *h = malloc(sizeof(*h) + size);
    if (!h)
        return NULL;
    h->size = size;
    atomic_fetch_add(&c->live, size);
    return h + 1;
}

static void count_free(void *p, void *user)
{
    counting_mem *c = user;
    if (!p)
        return;
    mem_hdr *h = (mem_hdr *)p - 1;
    atomic_fetch_sub(&c->live, h->size);
    free(h);
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define IDLE_CLIENTS_MAX 64u
#define IDLE_CONNECTING_MAX 256u /* handshakes in flight: the server's socket keeps up */

/* The server endpoint runs on its own loop and thread, the client endpoints
 * on this thread's loop, so that each side's CPU is read from its thread's
 * clock. Only the atomics cross between them. */
typedef struct idle_run {
    uv_loop_t cloop, sloop;
    tern_endpoint *srv;
    tern_endpoint *cli[IDLE_CLIENTS_MAX];
    size_t n_clients;
    uv_async_t sstop;
    /* client thread */
    uint64_t target, started, connected, failed, client_closed;
    int first_error;
    struct sockaddr_storage to;
    bool fired;
    /* server thread */
    atomic_uint_fast64_t accepted, server_closed;
} idle_run;

static void idle_pump(idle_run *r);

static void idle_connect(tern_session *s, int status)
{
    idle_run *r = tern_session_get_data(s);
    if (status == 0) {
        r->connected++;
    } else {
        r->failed++;
        if (!r->first_error)
            r->first_error = status;
    }
    idle_pump(r);
}

static void idle_client_close(tern_session *s, int status)
{
    idle_run *r = tern_session_get_data(s);
    (void)status;
    r->client_closed++;
}

static void idle_server_close(tern_session *s, int status)
{
    idle_run *r = tern_session_get_data(s);
    (void)status;
    atomic_fetch_add(&r->server_closed, 1);
}

static void idle_accept(tern_endpoint *ep, tern_session *s)
{
    idle_run *r = tern_endpoint_get_data(ep);
    atomic_fetch_add(&r->accepted, 1);
    tern_session_set_data(s, r);
    tern_session_callbacks cbs = {.close_cb = idle_server_close};
    tern_session_set_callbacks(s, &cbs);
}

static void idle_sstop(uv_async_t *a)
{
    idle_run *r = a->data;
    (void)tern_endpoint_close(r->srv, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void idle_server_thread(void *arg)
{
    idle_run *r = arg;
    uv_run(&r->sloop, UV_RUN_DEFAULT);
}

static void idle_pump(idle_run *r)
{
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&r->to};
    tern_session_callbacks cbs = {.connect_cb = idle_connect, .close_cb = idle_client_close};
    while (r->started < r->target && r->started - r->connected - r->failed < IDLE_CONNECTING_MAX) {
        tern_session *s;
        tern_endpoint *ep = r->cli[r->started % r->n_clients];
        int rc = tern_endpoint_connect(ep, addrs, 1, 0, &cbs, &s);
        r->started++;
        if (rc < 0) {
            r->failed++;
            if (!r->first_error)
                r->first_error = rc;
            continue;
        }
        tern_session_set_data(s, r);
    }
}

static bool idle_all_up(void *arg)
{
    idle_run *r = arg;
    return r->failed > 0 || (r->connected == r->target && atomic_load(&r->accepted) == r->target);
}

static void idle_fire(uv_timer_t *t)
{
    idle_run *r = t->data;
    r->fired = true;
}

typedef struct idle_sample {
    uint64_t rss;
    size_t server_live, client_live;
    double wall, process_cpu, server_cpu, client_cpu;
    uint64_t to_server, from_server; /* datagrams, as the clients count them */
} idle_sample;

static void idle_take(idle_run *r, counting_mem *sm, counting_mem *cm, clockid_t server_clock,
                      idle_sample *out)
{
    out->rss = rss_bytes();
    out->server_live = atomic_load(&sm->live);
    out->client_live = atomic_load(&cm->live);
    out->wall = tern_bench_now_s();
    out->process_cpu = cpu_s();
    out->server_cpu = clock_s(server_clock);
    out->client_cpu = clock_s(CLOCK_THREAD_CPUTIME_ID);
    out->to_server = out->from_server = 0;
    for (size_t i = 0; i < r->n_clients; i++) {
        tern_endpoint_stats cs;
        tern_endpoint_get_stats(r->cli[i], &cs);
        out->to_server += cs.dgrams_out;
        out->from_server += cs.dgrams_in;
    }
}

static int idle(const options *o, FILE *out)
{
    idle_run *r = calloc(1, sizeof(*r));
    counting_mem *server_mem = calloc(1, sizeof(*server_mem));
    counting_mem *client_mem = calloc(1, sizeof(*client_mem));
    if (!r || !server_mem || !client_mem) {
        free(r);
        free(server_mem);
        free(client_mem);
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    atomic_init(&server_mem->live, 0);
    atomic_init(&client_mem->live, 0);
    atomic_init(&r->accepted, 0);
    atomic_init(&r->server_closed, 0);
    tern_mem smem = {count_malloc, count_free, server_mem};
    tern_mem cmem = {count_malloc, count_free, client_mem};
    r->target = o->sessions;
    r->n_clients = (size_t)o->clients;
    uv_loop_init(&r->cloop);
    uv_loop_init(&r->sloop);
    const variant *v = &variants[1]; /* Noise NK ChaChaPoly: what a game server runs */
    uint32_t keepalive = o->quick ? 100 : 5000;

    tern_endpoint_config scfg, ccfg;
    endpoint_config(&scfg, v, true);
    endpoint_config(&ccfg, v, false);
    scfg.mem = &smem;
    ccfg.mem = &cmem;
    scfg.keepalive_ms = ccfg.keepalive_ms = keepalive;
    scfg.max_sessions = (uint32_t)o->sessions;
    /* The defences are sized for the open Internet: ten local sources
     * opening thousands of sessions would wait on them for minutes. */
    scfg.ratelimit.per_source_rate = scfg.ratelimit.per_source_burst = 1000000;
    scfg.ratelimit.load_rate = scfg.ratelimit.load_burst = 1000000;
    scfg.ratelimit.halfopen_max = (uint32_t)o->sessions;
    scfg.rcvbuf = GP_SOCKBUF;
    ccfg.rcvbuf = 1 << 20;

    char why[160] = "";
    idle_sample a, b, c; /* before the sessions, established, after the idle period */
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    double setup_s = 0;
    uv_thread_t th;
    bool threaded = false;
    clockid_t server_clock = CLOCK_THREAD_CPUTIME_ID;

    bool up = endpoint_new(&r->srv, &r->sloop, &scfg) == 0;
    for (size_t i = 0; up && i < r->n_clients; i++)
        up = endpoint_new(&r->cli[i], &r->cloop, &ccfg) == 0;
    if (up) {
        tern_endpoint_set_data(r->srv, r);
        (void)tern_endpoint_listen(r->srv, idle_accept);
        (void)tern_endpoint_local_addr(r->srv, &r->to);
        uv_async_init(&r->sloop, &r->sstop, idle_sstop);
        r->sstop.data = r;
        threaded = uv_thread_create(&th, idle_server_thread, r) == 0;
        if (threaded && pthread_getcpuclockid(th, &server_clock) != 0)
            snprintf(why, sizeof(why), "no CPU clock for the server thread");
        if (!threaded)
            snprintf(why, sizeof(why), "cannot start the server thread");
    } else {
        snprintf(why, sizeof(why), "endpoint setup failed");
    }
    if (!why[0]) {
        uv_run(&r->cloop, UV_RUN_NOWAIT);
        idle_take(r, server_mem, client_mem, server_clock, &a);
        idle_pump(r);
        bool all = run_until(&r->cloop, idle_all_up, r, 120.0);
        setup_s = tern_bench_now_s() - a.wall;
        uint64_t accepted = atomic_load(&r->accepted);
        if (!all || r->failed || r->connected != r->target || accepted != r->target) {
            snprintf(why, sizeof(why),
                     "sessions: %" PRIu64 " connected, %" PRIu64 " accepted, %" PRIu64
                     " failed of %" PRIu64 " (%s)",
                     r->connected, accepted, r->failed, r->target,
                     r->first_error ? tern_strerror(r->first_error) : "timed out");
        }
    }
    if (!why[0]) {
        idle_take(r, server_mem, client_mem, server_clock, &b);
        /* Idle: only tern's own timers wake either loop. */
        uv_timer_t stop;
        uv_timer_init(&r->cloop, &stop);
        stop.data = r;
        uv_update_time(&r->cloop);
        uv_timer_start(&stop, idle_fire, (uint64_t)(o->idle_secs * 1000.0), 0);
        while (!r->fired)
            uv_run(&r->cloop, UV_RUN_ONCE);
        idle_take(r, server_mem, client_mem, server_clock, &c);
        uv_close((uv_handle_t *)&stop, NULL);
        uv_run(&r->cloop, UV_RUN_NOWAIT);
        uint64_t sc = atomic_load(&r->server_closed);
        if (sc || r->client_closed)
            snprintf(why, sizeof(why),
                     "sessions died while idle: %" PRIu64 " on the server, %" PRIu64
                     " on the clients",
                     sc, r->client_closed);
        else if (c.to_server == b.to_server)
            snprintf(why, sizeof(why), "no keepalive left the clients while idle");
    }
    if (threaded)
        uv_async_send(&r->sstop);
    else if (r->srv)
        (void)tern_endpoint_close(r->srv, NULL);
    for (size_t i = 0; i < r->n_clients; i++)
        if (r->cli[i])
            (void)tern_endpoint_close(r->cli[i], NULL);
    bool closed = drain_loop(&r->cloop);
    if (threaded)
        uv_thread_join(&th);
    closed &= drain_loop(&r->sloop);
    if (!closed && !why[0])
        snprintf(why, sizeof(why), "a libuv handle was left open");
    size_t sl = atomic_load(&server_mem->live), cl = atomic_load(&client_mem->live);
    if (!why[0] && (sl || cl))
        snprintf(why, sizeof(why), "bytes left allocated after close: server %zu, clients %zu", sl,
                 cl);
    int failed = why[0] ? 1 : 0;

    double n = (double)r->target, iw = c.wall - b.wall;
    double rss_per = b.rss > a.rss ? (double)(b.rss - a.rss) / n : 0.0;
    double s_per = ((double)b.server_live - (double)a.server_live) / n;
    double c_per = ((double)b.client_live - (double)a.client_live) / n;
    double pct_proc = iw > 0 ? (c.process_cpu - b.process_cpu) / iw * 100.0 : 0.0;
    double pct_srv = iw > 0 ? (c.server_cpu - b.server_cpu) / iw * 100.0 : 0.0;
    double pct_cli = iw > 0 ? (c.client_cpu - b.client_cpu) / iw * 100.0 : 0.0;
    printf("== idle: %" PRIu64 " sessions (Noise NK ChaChaPoly) from %zu client endpoints to "
           "one server endpoint;\n   server and clients on a loop and thread each; keepalive %u "
           "ms, idle %.1f s.\n\n",
           r->target, r->n_clients, keepalive, o->idle_secs);
    if (failed) {
        printf("FAILED: %s\n\n", why);
    } else {
        printf("set-up (handshakes)              %9.2f s\n", setup_s);
        printf("RSS delta, both sides            %9.0f B per session (%.1f MB in all)\n", rss_per,
               (double)(b.rss - a.rss) / 1e6);
        printf("  allocator, server side         %9.0f B per session\n", s_per);
        printf("  allocator, client side         %9.0f B per session\n", c_per);
        printf("RSS change over the idle period  %9.1f MB\n",
               ((double)c.rss - (double)b.rss) / 1e6);
        printf("CPU while idle, server thread    %9.2f %% of one core\n", pct_srv);
        printf("CPU while idle, client thread    %9.2f %% of one core\n", pct_cli);
        printf("CPU while idle, whole process    %9.2f %% of one core (over %.2f s)\n", pct_proc,
               iw);
        printf("datagrams while idle             %9" PRIu64 " to the server, %" PRIu64
               " from it (%.2f per session per keepalive)\n\n",
               c.to_server - b.to_server, c.from_server - b.from_server,
               (double)(c.to_server - b.to_server) / n / (iw * 1000.0 / keepalive));
    }
    fprintf(out,
            "{\"bench\":\"transport\",\"mode\":\"idle\",\"variant\":\"%s\",\"ok\":%s,"
            "\"sessions\":%" PRIu64 ",\"clients\":%zu,\"keepalive_ms\":%u,\"idle_s\":%.3f,"
            "\"setup_s\":%.3f,\"rss_delta_bytes\":%" PRIu64 ",\"rss_per_session\":%.0f,"
            "\"server_alloc_per_session\":%.0f,\"client_alloc_per_session\":%.0f,"
            "\"rss_idle_change_bytes\":%" PRId64 ",\"idle_cpu_pct\":%.3f,"
            "\"idle_cpu_pct_server\":%.3f,\"idle_cpu_pct_client\":%.3f,"
            "\"dgrams_to_server_idle\":%" PRIu64 ",\"dgrams_from_server_idle\":%" PRIu64 ",",
            v->name, failed ? "false" : "true", r->target, r->n_clients, keepalive, iw, setup_s,
            b.rss > a.rss ? b.rss - a.rss : 0, rss_per, s_per, c_per,
            (int64_t)c.rss - (int64_t)b.rss, pct_proc, pct_srv, pct_cli, c.to_server - b.to_server,
            c.from_server - b.from_server);
    if (why[0])
        fprintf(out, "\"why\":\"%s\",", why);
    tern_bench_json_stamp(out, &host, o->quick);
    free(r);
    free(server_mem);
    free(client_mem);
    return failed;
}

/* ======================================================================
 * latency
 * ====================================================================== */

#define LAT_MSG 32u
#define LAT_GRACE_MS 1000u /* after the last send, how long echoes may take */

/* A message: its number, then bytes derived from it, so the echo is checked. */
static void lat_fill(uint8_t *m, uint64_t seq)
{
    memcpy(m, &seq, sizeof(seq));
    for (unsigned i = sizeof(seq); i < LAT_MSG; i++)
        m[i] = (uint8_t)(seq * 131u + i * 7u + 3u);
}

static bool lat_check(const uint8_t *m, size_t len, uint64_t *seq)
{
    uint8_t want[LAT_MSG];
    if (len != LAT_MSG)
        return false;
    memcpy(seq, m, sizeof(*seq));
    lat_fill(want, *seq);
    return memcmp(m, want, LAT_MSG) == 0;
}

typedef struct lat_series {
    const char *variant, *channel;
    bool ok;
    char why[160];
    uint64_t sent, echoed, corrupt, dups;
    uint64_t *send_ns, *rtt_ns; /* rtt 0: no echo yet */
    double p50, p90, p99, max;  /* microseconds */
} lat_series;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void lat_summarise(lat_series *s)
{
    uint64_t *v = malloc((s->sent ? s->sent : 1) * sizeof(*v));
    size_t n = 0;
    for (uint64_t i = 0; v && i < s->sent; i++)
        if (s->rtt_ns[i])
            v[n++] = s->rtt_ns[i];
    if (n) {
        qsort(v, n, sizeof(*v), cmp_u64);
        s->p50 = (double)v[(n - 1) * 50 / 100] / 1e3;
        s->p90 = (double)v[(n - 1) * 90 / 100] / 1e3;
        s->p99 = (double)v[(n - 1) * 99 / 100] / 1e3;
        s->max = (double)v[n - 1] / 1e3;
    }
    free(v);
}

static bool lat_series_init(lat_series *s, const char *vname, const char *channel, uint64_t n)
{
    memset(s, 0, sizeof(*s));
    s->variant = vname;
    s->channel = channel;
    s->ok = true;
    s->send_ns = calloc(n, sizeof(uint64_t));
    s->rtt_ns = calloc(n, sizeof(uint64_t));
    return s->send_ns && s->rtt_ns;
}

static void lat_series_free(lat_series *s)
{
    free(s->send_ns);
    free(s->rtt_ns);
    s->send_ns = s->rtt_ns = NULL;
}

/* Records one echo; false if it is corrupt or a duplicate. */
static void lat_record(lat_series *s, const uint8_t *m, size_t len, uint64_t at)
{
    uint64_t seq;
    if (!lat_check(m, len, &seq) || seq >= s->sent) {
        s->corrupt++;
        return;
    }
    if (s->rtt_ns[seq]) {
        s->dups++;
        return;
    }
    s->rtt_ns[seq] = at - s->send_ns[seq] ? at - s->send_ns[seq] : 1;
    s->echoed++;
}

/* ---- raw UDP ping-pong, blocking sockets, two threads ---- */

typedef struct raw_echo {
    int fd;
    atomic_bool stop;
} raw_echo;

static void raw_echo_thread(void *arg)
{
    raw_echo *e = arg;
    uint8_t buf[2048];
    while (!atomic_load(&e->stop)) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(e->fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
        if (n < 0)
            continue; /* the receive timeout: look at stop again */
        (void)sendto(e->fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
}

static int blocking_socket(struct sockaddr_in *bound)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {0, 100000};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(bound, 0, sizeof(*bound));
    bound->sin_family = AF_INET;
    bound->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*bound);
    if (bind(fd, (struct sockaddr *)bound, sizeof(*bound)) != 0 ||
        getsockname(fd, (struct sockaddr *)bound, &len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void sleep_until_ns(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void lat_raw(uint64_t count, uint64_t rate, lat_series *s)
{
    raw_echo e;
    struct sockaddr_in srv, cli;
    e.fd = blocking_socket(&srv);
    atomic_init(&e.stop, false);
    int fd = blocking_socket(&cli);
    uv_thread_t th;
    if (e.fd < 0 || fd < 0 || uv_thread_create(&th, raw_echo_thread, &e) != 0) {
        s->ok = false;
        snprintf(s->why, sizeof(s->why), "socket or thread setup failed");
        if (e.fd >= 0)
            close(e.fd);
        if (fd >= 0)
            close(fd);
        return;
    }
    uint64_t period = 1000000000u / rate, start = tern_bench_now_ns() + 1000000u;
    uint8_t m[LAT_MSG], in[2048];
    for (uint64_t i = 0; i < count; i++) {
        sleep_until_ns(start + i * period);
        lat_fill(m, i);
        s->send_ns[i] = tern_bench_now_ns();
        s->sent = i + 1;
        if (sendto(fd, m, sizeof(m), 0, (struct sockaddr *)&srv, sizeof(srv)) != LAT_MSG)
            continue;
        /* Wait for this echo (an older, late one is recorded on the way). */
        uint64_t deadline = s->send_ns[i] + LAT_GRACE_MS * 1000000ull;
        while (!s->rtt_ns[i] && tern_bench_now_ns() < deadline) {
            ssize_t n = recv(fd, in, sizeof(in), 0);
            if (n >= 0)
                lat_record(s, in, (size_t)n, tern_bench_now_ns());
        }
    }
    atomic_store(&e.stop, true);
    uv_thread_join(&th);
    close(e.fd);
    close(fd);
}

/* ---- tern: client loop in this thread, server loop in another ---- */

typedef struct lat_run {
    uv_loop_t cloop, sloop;
    tern_endpoint *cli, *srv;
    tern_session *cs;
    uv_async_t sstop;
    uv_timer_t tick;
    uint64_t count, rate, period_ns, start_ns, last_send_ns;
    lat_series *series; /* one per channel */
    unsigned phase, n_phases;
    bool connected, done;
    int error;
} lat_run;

static void lat_server_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    (void)tern_session_send(s, ch, data, len, 0);
}

static void lat_server_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    tern_session_callbacks cbs = {.message_cb = lat_server_message};
    tern_session_set_callbacks(s, &cbs);
}

static void lat_sstop_cb(uv_async_t *a)
{
    lat_run *r = a->data;
    (void)tern_endpoint_close(r->srv, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void lat_server_thread(void *arg)
{
    lat_run *r = arg;
    uv_run(&r->sloop, UV_RUN_DEFAULT);
}

static void lat_finish(lat_run *r)
{
    if (r->done)
        return;
    r->done = true;
    uv_close((uv_handle_t *)&r->tick, NULL);
    (void)tern_endpoint_close(r->cli, NULL);
    uv_async_send(&r->sstop);
}

static void lat_client_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    lat_run *r = tern_session_get_data(s);
    uint64_t at = tern_bench_now_ns();
    if (r->done || ch != r->phase) {
        /* A late echo of an earlier phase: still check it. */
        if (ch < r->n_phases)
            lat_record(&r->series[ch], data, len, at);
        return;
    }
    lat_record(&r->series[ch], data, len, at);
}

static void lat_on_tick(uv_timer_t *t)
{
    lat_run *r = t->data;
    if (!r->connected || r->done)
        return;
    lat_series *s = &r->series[r->phase];
    uint64_t now = tern_bench_now_ns();
    if (s->sent == r->count) {
        /* Every echo in, or the grace period over: the next channel. */
        if (s->echoed + s->corrupt < s->sent && now - r->last_send_ns < LAT_GRACE_MS * 1000000ull)
            return;
        if (++r->phase == r->n_phases) {
            lat_finish(r);
            return;
        }
        s = &r->series[r->phase];
        r->start_ns = now;
    }
    /* Sends what is due by now: the rate holds even when ticks come late. */
    uint64_t due = (now - r->start_ns) / r->period_ns + 1;
    if (due > r->count)
        due = r->count;
    uint8_t m[LAT_MSG];
    while (s->sent < due) {
        uint64_t seq = s->sent;
        lat_fill(m, seq);
        s->send_ns[seq] = tern_bench_now_ns();
        s->sent++;
        r->last_send_ns = s->send_ns[seq];
        int rc = tern_session_send(r->cs, r->phase, m, sizeof(m), 0);
        if (rc < 0) {
            s->ok = false;
            snprintf(s->why, sizeof(s->why), "send: %s", tern_strerror(rc));
            lat_finish(r);
            return;
        }
    }
}

static void lat_client_connect(tern_session *s, int status)
{
    lat_run *r = tern_session_get_data(s);
    if (status < 0) {
        r->error = status;
        lat_finish(r);
        return;
    }
    r->connected = true;
    r->start_ns = tern_bench_now_ns();
}

static void lat_client_close(tern_session *s, int status)
{
    lat_run *r = tern_session_get_data(s);
    r->cs = NULL;
    if (!r->done) {
        r->error = status < 0 ? status : TERN_ERR_CLOSED;
        lat_finish(r);
    }
}

static void lat_tern(const variant *v, uint64_t count, uint64_t rate, lat_series *series)
{
    lat_run *r = calloc(1, sizeof(*r));
    if (!r) {
        series[0].ok = false;
        snprintf(series[0].why, sizeof(series[0].why), "out of memory");
        return;
    }
    r->count = count;
    r->rate = rate;
    r->period_ns = 1000000000u / rate;
    r->series = series;
    r->n_phases = 2;
    uv_loop_init(&r->cloop);
    uv_loop_init(&r->sloop);
    tern_endpoint_config scfg, ccfg;
    endpoint_config(&scfg, v, true);
    endpoint_config(&ccfg, v, false);
    scfg.n_channels = ccfg.n_channels = 2;
    scfg.channels[0] = ccfg.channels[0] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .priority = 0, .weight = 1};
    scfg.channels[1] = ccfg.channels[1] =
        (tern_channel_config){.kind = TERN_CHANNEL_UNRELIABLE, .priority = 0, .weight = 1};
    bool up = endpoint_new(&r->srv, &r->sloop, &scfg) == 0;
    if (up && endpoint_new(&r->cli, &r->cloop, &ccfg) != 0) {
        (void)tern_endpoint_close(r->srv, NULL);
        up = false;
    }
    if (up) {
        (void)tern_endpoint_listen(r->srv, lat_server_accept);
        uv_async_init(&r->sloop, &r->sstop, lat_sstop_cb);
        r->sstop.data = r;
        uv_timer_init(&r->cloop, &r->tick);
        r->tick.data = r;
        uv_timer_start(&r->tick, lat_on_tick, 1, 1);
        struct sockaddr_storage to;
        (void)tern_endpoint_local_addr(r->srv, &to);
        const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
        tern_session_callbacks cbs = {.connect_cb = lat_client_connect,
                                      .message_cb = lat_client_message,
                                      .close_cb = lat_client_close};
        int rc = tern_endpoint_connect(r->cli, addrs, 1, 0, &cbs, &r->cs);
        if (rc < 0) {
            r->error = rc;
            lat_finish(r);
        } else {
            tern_session_set_data(r->cs, r);
        }
        uv_thread_t th;
        bool threaded = uv_thread_create(&th, lat_server_thread, r) == 0;
        uv_run(&r->cloop, UV_RUN_DEFAULT);
        if (threaded) {
            uv_thread_join(&th);
        } else {
            r->error = TERN_ERR_IO;
            uv_run(&r->sloop, UV_RUN_DEFAULT);
        }
    } else {
        r->error = TERN_ERR_IO;
    }
    if (r->error && series[0].ok) {
        series[0].ok = false;
        snprintf(series[0].why, sizeof(series[0].why), "session: %s", tern_strerror(r->error));
    }
    if ((!drain_loop(&r->cloop) || !drain_loop(&r->sloop)) && series[0].ok) {
        series[0].ok = false;
        snprintf(series[0].why, sizeof(series[0].why), "a libuv handle was left open");
    }
    free(r);
}

static void lat_print(const lat_series *s, const lat_series *raw, double p99_hi)
{
    if (!s->ok) {
        printf("%-10s %-10s FAILED: %s\n", s->variant, s->channel, s->why);
        return;
    }
    printf("%-10s %-10s %7" PRIu64 " %7" PRIu64 " %8.1f %8.1f %8.1f %9.1f %9.1f", s->variant,
           s->channel, s->sent, s->echoed, s->p50, s->p90, s->p99, s->max, p99_hi);
    if (raw && raw != s && raw->ok)
        printf(" %+9.1f %+9.1f", s->p50 - raw->p50, s->p99 - raw->p99);
    printf("\n");
}

static void lat_json(FILE *out, const lat_series *s, const lat_series *raw, uint64_t rate,
                     double p99_hi, unsigned repeats, bool quick)
{
    fprintf(out,
            "{\"bench\":\"transport\",\"mode\":\"latency\",\"variant\":\"%s\",\"channel\":\"%s\","
            "\"msg_bytes\":%u,\"rate\":%" PRIu64 ",\"ok\":%s,\"sent\":%" PRIu64
            ",\"echoed\":%" PRIu64 ",\"corrupt\":%" PRIu64 ",\"dups\":%" PRIu64
            ",\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
            "\"p99_us_highest\":%.1f,\"repeats\":%u,",
            s->variant, s->channel, LAT_MSG, rate, s->ok ? "true" : "false", s->sent, s->echoed,
            s->corrupt, s->dups, s->p50, s->p90, s->p99, s->max, p99_hi, repeats);
    if (raw && raw != s && raw->ok && s->ok)
        fprintf(out, "\"added_p50_us\":%.1f,\"added_p99_us\":%.1f,", s->p50 - raw->p50,
                s->p99 - raw->p99);
    if (s->why[0])
        fprintf(out, "\"why\":\"%s\",", s->why);
    tern_bench_json_stamp(out, &host, quick);
}

/* A series is good when every echo came back whole, once (reliable), or
 * when none came back corrupt or twice (unreliable may lose some). */
static void lat_judge(lat_series *s, bool must_all)
{
    if (!s->ok)
        return;
    if (s->corrupt || s->dups) {
        s->ok = false;
        snprintf(s->why, sizeof(s->why), "%" PRIu64 " corrupt and %" PRIu64 " duplicate echoes",
                 s->corrupt, s->dups);
    } else if (s->echoed == 0 || (must_all && s->echoed != s->sent)) {
        s->ok = false;
        snprintf(s->why, sizeof(s->why), "%" PRIu64 " of %" PRIu64 " echoes came back", s->echoed,
                 s->sent);
    }
}

static int latency(const options *o, FILE *out)
{
    uint64_t count = (uint64_t)(o->secs * (double)o->rate);
    if (count < 10)
        count = 10;
    enum { RAW = 0, N_SERIES = 5 };
    lat_series best[N_SERIES];
    double p99_hi[N_SERIES];
    memset(best, 0, sizeof(best));
    int failed = 0;
    /* Every repeat runs all series; each series keeps the repeat with the
     * lowest p99 (interference only adds latency), and the highest p99 for
     * the spread. A failure sticks. */
    for (unsigned rep = 0; rep < o->repeat && !failed; rep++) {
        lat_series s[N_SERIES];
        bool mem_ok = lat_series_init(&s[RAW], "raw_udp", "-", count);
        for (int k = 0; k < 2; k++) {
            mem_ok &= lat_series_init(&s[1 + 2 * k], variants[k].name, "reliable", count);
            mem_ok &= lat_series_init(&s[2 + 2 * k], variants[k].name, "unreliable", count);
        }
        if (!mem_ok) {
            fprintf(stderr, PROG ": out of memory\n");
            failed = 1;
        } else {
            lat_raw(count, o->rate, &s[RAW]);
            lat_judge(&s[RAW], false);
            for (int k = 0; k < 2; k++) {
                lat_tern(&variants[k], count, o->rate, &s[1 + 2 * k]);
                if (!s[1 + 2 * k].ok && s[2 + 2 * k].ok) {
                    s[2 + 2 * k].ok = false;
                    snprintf(s[2 + 2 * k].why, sizeof(s[2 + 2 * k].why), "%s", s[1 + 2 * k].why);
                }
                lat_judge(&s[1 + 2 * k], true);
                lat_judge(&s[2 + 2 * k], false);
            }
            for (int i = 0; i < N_SERIES; i++) {
                lat_summarise(&s[i]);
                if (rep == 0 || (best[i].ok && (!s[i].ok || s[i].p99 < best[i].p99)))
                    best[i] = s[i];
                p99_hi[i] = rep == 0 || s[i].p99 > p99_hi[i] ? s[i].p99 : p99_hi[i];
                best[i].send_ns = best[i].rtt_ns = NULL; /* freed below */
            }
        }
        for (int i = 0; i < N_SERIES; i++)
            lat_series_free(&s[i]);
        if (o->repeat > 1 && !failed)
            printf("(latency round %u of %u done)\n", rep + 1, o->repeat);
    }
    if (!failed) {
        printf("== latency: %u-byte messages at %" PRIu64 "/s, %" PRIu64
               " per series, echoed by the server;\n   client and server in two threads; RTT "
               "in microseconds; added = tern - raw_udp;\n   the run with the lowest p99 of %u, "
               "p99 hi = the highest p99 of them.\n\n",
               LAT_MSG, o->rate, count, o->repeat);
        printf("%-10s %-10s %7s %7s %8s %8s %8s %9s %9s %9s %9s\n", "variant", "channel", "sent",
               "echoed", "p50", "p90", "p99", "max", "p99 hi", "added p50", "added p99");
        for (int i = 0; i < N_SERIES; i++) {
            lat_print(&best[i], &best[RAW], p99_hi[i]);
            lat_json(out, &best[i], &best[RAW], o->rate, p99_hi[i], o->repeat, o->quick);
            failed += !best[i].ok;
        }
        printf("\n");
    }
    return failed;
}

/* ======================================================================
 * flood
 * ====================================================================== */

#define FL_BATCH 64u /* INITs per sendmmsg */
#define FL_POOL 64u  /* Noise first messages (ephemeral keys) the flooder cycles through */
#define FL_SOURCES_MAX 4096u
#define FL_REPLY_MAX 128u /* more than any answer to an INIT */
#define FL_SAMPLE_MS 5u   /* how often the server's half-open gauge is read */
/* The server's answer after a responder handshake (NK: e, empty payload's
 * tag): what the flooder counts as a DH done for it. */
#define FL_RESP_BYTES (TERN_WIRE_RESP_HEADER + 48u)

typedef enum fl_kind { FL_NONE = 0, FL_VALID = 1, FL_BADMAC = 2 } fl_kind;
static const char *const fl_kind_names[] = {"none", "valid_mac1", "bad_mac1"};

typedef struct fl_cell {
    fl_kind kind;
    uint64_t rate; /* INITs per second; 0: as fast as the flooder can */
} fl_cell;

/* The attacker: one thread, one socket per source address, INITs sent with
 * sendmmsg at a paced rate; what comes back is counted, never answered. The
 * sockets and messages are made once for the mode, a thread per cell. */
typedef struct flooder {
    int fds[FL_SOURCES_MAX];
    size_t n_fds;
    uint8_t noise1[FL_POOL][TERN_WIRE_NOISE_MAX];
    size_t noise1_len;
    uint8_t junk[TERN_WIRE_INIT_BYTES];
    tern_cookie_client *cc; /* mac1 under the server's public key, as a client makes it */
    uint32_t next_sender;   /* every INIT has its own, so none repeats a handshake */
    /* set before the thread starts, read-only while it runs */
    fl_cell cell;
    struct sockaddr_in to;
    uv_thread_t th;
    bool running;
    /* the thread's counters */
    atomic_bool stop;
    atomic_uint_fast64_t sent, send_errors, got_resp, got_cookie, got_other;
} flooder;

static void fl_teardown(flooder *f)
{
    for (size_t i = 0; i < f->n_fds; i++)
        close(f->fds[i]);
    f->n_fds = 0;
    tern_cookie_client_del(f->cc);
    f->cc = NULL;
}

/* Sockets on 127.1.b.c (all of 127/8 is local on Linux), one per source,
 * and the INITs' ingredients. 0, or -1 with why filled. */
static int fl_setup(flooder *f, size_t n_sources, const variant *v, char *why, size_t cap)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n_sources; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in a;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        /* Host bytes 1..254: no .0 or .255 address. */
        a.sin_addr.s_addr =
            htonl(0x7F010000u | (uint32_t)(i / 254u) << 8 | (uint32_t)(i % 254u + 1u));
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            snprintf(why, cap, "flood source %zu (127.1.%zu.%zu): %s", i, i / 254u, i % 254u + 1u,
                     strerror(errno));
            if (fd >= 0)
                close(fd);
            fl_teardown(f);
            return -1;
        }
        f->fds[f->n_fds++] = fd;
    }
    /* Real Noise first messages: the server cannot tell them from a
     * client's until it has done the DH. Ephemeral keys are reused from a
     * pool, as an attacker would: the server does not look. */
    char protocol[64];
    snprintf(protocol, sizeof(protocol), "Noise_NK_25519_%s_BLAKE2b", v->cipher);
    static const uint8_t prologue[] = "tern/1"; /* as transport/handshake.c */
    for (unsigned k = 0; k < FL_POOL; k++) {
        tern_noise_config nc;
        tern_noise_config_default(&nc);
        nc.protocol = protocol;
        nc.initiator = true;
        nc.prologue = prologue;
        nc.prologue_len = sizeof(prologue) - 1;
        nc.rs = &server_kp.pub;
        tern_noise *hs = NULL;
        tern_ssize n = tern_noise_new(&hs, &nc, NULL);
        if (n == 0)
            n = tern_noise_write_message(hs, NULL, 0, f->noise1[k], sizeof(f->noise1[k]));
        tern_noise_del(hs);
        if (n <= 0) {
            snprintf(why, cap, "flood: Noise message 1: %s", tern_strerror((int)n));
            fl_teardown(f);
            return -1;
        }
        f->noise1_len = (size_t)n;
    }
    if (tern_cookie_client_new(&f->cc, &server_kp.pub, NULL) != 0) {
        snprintf(why, cap, "flood: no memory for the MAC state");
        fl_teardown(f);
        return -1;
    }
    uint64_t x = 0x2545F4914F6CDD1Du;
    for (size_t i = 0; i < sizeof(f->junk); i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f->junk[i] = (uint8_t)x;
    }
    return 0;
}

/* One INIT of the cell's kind, in p (whose fixed bytes are already set). */
static void fl_fill(flooder *f, uint8_t *p)
{
    uint32_t id = ++f->next_sender;
    if (id == 0)
        id = ++f->next_sender;
    tern_wire_put32(p + 2, id);
    if (f->cell.kind == FL_VALID) {
        memcpy(p + TERN_WIRE_INIT_HEADER, f->noise1[id % FL_POOL], f->noise1_len);
        (void)tern_cookie_client_add_macs(f->cc, p, TERN_WIRE_INIT_BYTES, 0);
    }
    /* FL_BADMAC: the junk's last 32 bytes stand for mac1 and mac2, wrong
     * for any sender id. */
}

/* Reads what the server sent back to one source, and counts it. */
static void fl_drain(flooder *f, int fd, struct mmsghdr *im, uint8_t (*back)[FL_REPLY_MAX],
                     struct iovec *iov)
{
    for (int round = 0; round < 4; round++) {
        for (unsigned k = 0; k < FL_BATCH; k++) {
            memset(&im[k], 0, sizeof(im[k]));
            iov[k] = (struct iovec){back[k], FL_REPLY_MAX};
            im[k].msg_hdr.msg_iov = &iov[k];
            im[k].msg_hdr.msg_iovlen = 1;
        }
        int m = recvmmsg(fd, im, FL_BATCH, MSG_DONTWAIT, NULL);
        if (m <= 0)
            return;
        for (int k = 0; k < m; k++) {
            if (back[k][0] == TERN_WIRE_RESP && im[k].msg_len == FL_RESP_BYTES)
                atomic_fetch_add_explicit(&f->got_resp, 1, memory_order_relaxed);
            else if (back[k][0] == TERN_WIRE_COOKIE && im[k].msg_len == TERN_COOKIE_REPLY_BYTES)
                atomic_fetch_add_explicit(&f->got_cookie, 1, memory_order_relaxed);
            else
                atomic_fetch_add_explicit(&f->got_other, 1, memory_order_relaxed);
        }
        if ((unsigned)m < FL_BATCH)
            return;
    }
}

static void fl_thread(void *arg)
{
    flooder *f = arg;
    uint8_t pkt[FL_BATCH][TERN_WIRE_INIT_BYTES];
    uint8_t back[FL_BATCH][FL_REPLY_MAX];
    struct mmsghdr om[FL_BATCH], im[FL_BATCH];
    struct iovec oiov[FL_BATCH], iiov[FL_BATCH];
    for (unsigned k = 0; k < FL_BATCH; k++) {
        if (f->cell.kind == FL_BADMAC)
            memcpy(pkt[k], f->junk, sizeof(pkt[k]));
        else
            memset(pkt[k], 0, sizeof(pkt[k]));
        pkt[k][0] = TERN_WIRE_INIT;
        pkt[k][1] = TERN_WIRE_VERSION;
        oiov[k] = (struct iovec){pkt[k], TERN_WIRE_INIT_BYTES};
        memset(&om[k], 0, sizeof(om[k]));
        om[k].msg_hdr.msg_name = &f->to;
        om[k].msg_hdr.msg_namelen = sizeof(f->to);
        om[k].msg_hdr.msg_iov = &oiov[k];
        om[k].msg_hdr.msg_iovlen = 1;
    }
    /* Batches of about a millisecond's worth at the target rate. */
    uint64_t rate = f->cell.rate;
    unsigned per = FL_BATCH;
    if (rate && rate / 1000u < FL_BATCH)
        per = rate / 1000u ? (unsigned)(rate / 1000u) : 1u;
    uint64_t t0 = tern_bench_now_ns(), sent = 0;
    size_t src = 0;
    while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
        unsigned n = per;
        if (rate) {
            uint64_t now = tern_bench_now_ns();
            uint64_t due = (uint64_t)((double)(now - t0) * (double)rate / 1e9);
            if (due <= sent) {
                /* Until the next batch is due; at most 10 ms, to look at stop. */
                uint64_t next = t0 + (uint64_t)((double)(sent + n) * 1e9 / (double)rate);
                sleep_until_ns(next < now + 10000000u ? next : now + 10000000u);
                continue;
            }
            if (due - sent < n)
                n = (unsigned)(due - sent);
        }
        for (unsigned k = 0; k < n; k++)
            fl_fill(f, pkt[k]);
        int w = sendmmsg(f->fds[src], om, n, 0);
        if (w > 0)
            sent += (uint64_t)w;
        if (w < (int)n)
            atomic_fetch_add_explicit(&f->send_errors, 1, memory_order_relaxed);
        atomic_store_explicit(&f->sent, sent, memory_order_relaxed);
        fl_drain(f, f->fds[src], im, back, iiov);
        src = (src + 1) % f->n_fds;
    }
}

/* Throws away answers left from an earlier cell. */
static void fl_drain_all(flooder *f)
{
    uint8_t buf[FL_REPLY_MAX];
    for (size_t i = 0; i < f->n_fds; i++)
        while (recv(f->fds[i], buf, sizeof(buf), MSG_DONTWAIT) >= 0)
            ;
}

/* One cell's run: the hooks' state, on the server's loop. */
typedef struct fl_run {
    flooder *f;
    tern_endpoint *srv;
    uv_timer_t sample;
    bool started, measured, thread_failed;
    tern_endpoint_stats s0, s1;
    uint32_t halfopen_peak;
    double t_start, t_measure, t_end;
    uint64_t sent_measure, sent_end;
    double loop_cpu0, loop_cpu1, fl_cpu0, fl_cpu1;
    clockid_t fl_clock;
    bool have_fl_clock;
} fl_run;

static void fl_on_sample(uv_timer_t *t)
{
    fl_run *r = t->data;
    tern_endpoint_stats es;
    tern_endpoint_get_stats(r->srv, &es);
    if (es.halfopen_now > r->halfopen_peak)
        r->halfopen_peak = es.halfopen_now;
}

static void fl_start(void *arg, uv_loop_t *loop, tern_endpoint *srv)
{
    fl_run *r = arg;
    flooder *f = r->f;
    r->started = true;
    r->srv = srv;
    tern_endpoint_get_stats(srv, &r->s0);
    r->halfopen_peak = r->s0.halfopen_now;
    uv_timer_init(loop, &r->sample);
    r->sample.data = r;
    uv_timer_start(&r->sample, fl_on_sample, FL_SAMPLE_MS, FL_SAMPLE_MS);
    r->t_start = tern_bench_now_s();
    if (f->cell.kind == FL_NONE)
        return;
    struct sockaddr_storage a;
    (void)tern_endpoint_local_addr(srv, &a);
    memcpy(&f->to, &a, sizeof(f->to));
    if (uv_thread_create(&f->th, fl_thread, f) != 0) {
        r->thread_failed = true;
        return;
    }
    f->running = true;
    r->have_fl_clock = pthread_getcpuclockid(f->th, &r->fl_clock) == 0;
}

static void fl_measure(void *arg)
{
    fl_run *r = arg;
    r->measured = true;
    r->t_measure = tern_bench_now_s();
    r->sent_measure = atomic_load(&r->f->sent);
    r->loop_cpu0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    r->fl_cpu0 = r->have_fl_clock ? clock_s(r->fl_clock) : 0.0;
}

static void fl_end(void *arg)
{
    fl_run *r = arg;
    flooder *f = r->f;
    r->t_end = tern_bench_now_s();
    r->sent_end = atomic_load(&f->sent);
    r->loop_cpu1 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    /* Read before the join: the thread's clock goes with it. */
    r->fl_cpu1 = r->have_fl_clock ? clock_s(r->fl_clock) : 0.0;
    if (f->running) {
        atomic_store(&f->stop, true);
        uv_thread_join(&f->th);
        f->running = false;
    }
    fl_on_sample(&r->sample);
    tern_endpoint_get_stats(r->srv, &r->s1);
    uv_close((uv_handle_t *)&r->sample, NULL);
}

typedef struct fl_result {
    fl_cell cell;
    gp_result gp;   /* the live stream; gp.ok and gp.why hold the flood checks too */
    double flood_s; /* warm-up and measurement: the flood's whole length */
    uint64_t sent, sent_window;
    double sent_per_s; /* over the measured interval */
    double loop_cpu_pct, flood_cpu_pct;
    tern_endpoint_stats d; /* the server's counters over the flood; gauges at its end */
    uint64_t seen;         /* INITs the server read */
    uint64_t dh, dh_bound; /* DH for INITs without a checked cookie, and its bound */
    uint64_t dh_cookie;    /* DH for INITs with a valid cookie (none from a flood) */
    uint32_t halfopen_peak;
    uint64_t send_errors, got_resp, got_cookie, got_other;
} fl_result;

static void fl_fail(fl_result *x, const char *why)
{
    if (!x->gp.ok)
        return;
    x->gp.ok = false;
    snprintf(x->gp.why, sizeof(x->gp.why), "%s", why);
}

/* The figures of a run, and its verdict: what issue 6 asks, past the
 * burst the server needs to detect a flood (no DH without a cookie and no
 * half-open session for a flood source beyond it), or with strict none at
 * all, not even the burst. */
static void fl_judge(fl_result *x, const fl_run *r, const tern_ratelimit_config *rl, bool strict)
{
    const tern_endpoint_stats *a = &r->s0, *b = &r->s1;
    tern_endpoint_stats *d = &x->d;
    char why[160];
    if (!r->started) {
        fl_fail(x, "the stream never started");
        return;
    }
    if (r->thread_failed)
        fl_fail(x, "cannot start the flooder thread");
    x->flood_s = r->t_end - r->t_start;
    x->sent = atomic_load(&r->f->sent);
    x->send_errors = atomic_load(&r->f->send_errors);
    x->got_resp = atomic_load(&r->f->got_resp);
    x->got_cookie = atomic_load(&r->f->got_cookie);
    x->got_other = atomic_load(&r->f->got_other);
    if (r->measured) {
        double w = r->t_end - r->t_measure;
        x->sent_window = r->sent_end - r->sent_measure;
        x->sent_per_s = w > 0 ? (double)x->sent_window / w : 0.0;
        x->loop_cpu_pct = w > 0 ? (r->loop_cpu1 - r->loop_cpu0) / w * 100.0 : 0.0;
        x->flood_cpu_pct = w > 0 ? (r->fl_cpu1 - r->fl_cpu0) / w * 100.0 : 0.0;
    }
#define FL_DELTA(field) d->field = b->field - a->field
    FL_DELTA(dgrams_in);
    FL_DELTA(dgrams_out);
    FL_DELTA(sessions_accepted);
    FL_DELTA(sessions_refused);
    FL_DELTA(drop_malformed);
    FL_DELTA(drop_unknown_session);
    FL_DELTA(drop_auth);
    FL_DELTA(drop_ratelimited);
    FL_DELTA(drop_limit);
    FL_DELTA(drop_peer_refused);
    FL_DELTA(cookies_sent);
    FL_DELTA(send_failed);
    FL_DELTA(bytes_sent_unvalidated);
    FL_DELTA(bytes_recv_unvalidated);
    FL_DELTA(handshakes_unproven);
    FL_DELTA(handshakes_cookie);
#undef FL_DELTA
    d->sessions_now = b->sessions_now;
    d->halfopen_now = b->halfopen_now;
    x->halfopen_peak = r->halfopen_peak;
    x->seen = d->bytes_recv_unvalidated / TERN_WIRE_INIT_BYTES;
    x->dh = d->handshakes_unproven;
    x->dh_cookie = d->handshakes_cookie;
    /* The detection burst: DH without a cookie goes on until the global
     * bucket runs dry or the half-open table reaches its cookie threshold,
     * whichever comes first; from then on the server stays under load while
     * the flood lasts. Bad mac1 gets nothing. */
    uint64_t burst = rl->halfopen_max / TERN_HALFOPEN_LOAD_DIV;
    if (burst == 0)
        burst = 1;
    if (rl->load_burst < burst)
        burst = rl->load_burst;
    x->dh_bound = x->cell.kind == FL_VALID ? burst : 0;
    if (x->cell.kind != FL_NONE && x->sent == 0)
        fl_fail(x, "the flooder sent nothing");
    if (d->sessions_accepted) {
        snprintf(why, sizeof(why), "%" PRIu64 " flood sources got a session", d->sessions_accepted);
        fl_fail(x, why);
    }
    if (x->cell.kind == FL_VALID && d->drop_auth) {
        snprintf(why, sizeof(why), "the server refused %" PRIu64 " flood INITs' mac1",
                 d->drop_auth);
        fl_fail(x, why);
    }
    if (x->dh > x->dh_bound || (strict && x->dh)) {
        snprintf(why, sizeof(why),
                 "%" PRIu64 " DH done for flood INITs without a cookie (%s %" PRIu64 ")", x->dh,
                 strict ? "strict: none allowed; the detection burst is" : "detection burst",
                 x->dh_bound);
        fl_fail(x, why);
    }
    if (x->dh_cookie) {
        snprintf(why, sizeof(why), "%" PRIu64 " DH counted as cookie-validated for a flood",
                 x->dh_cookie);
        fl_fail(x, why);
    }
    /* The live session is open before the flood starts: every half-open
     * session during it is a flood source's. */
    if (x->halfopen_peak > x->dh_bound || (strict && x->halfopen_peak)) {
        snprintf(why, sizeof(why),
                 "%u half-open sessions for flood sources (detection burst %" PRIu64 ")",
                 x->halfopen_peak, x->dh_bound);
        fl_fail(x, why);
    }
}

/* As keep_gp: the fastest run is kept, a failure sticks. */
static void fl_keep(fl_result *best, const fl_result *x, unsigned rep)
{
    if (rep > 0 && !best->gp.ok)
        return;
    double lo = rep == 0 || x->gp.mb_s < best->gp.mb_s_min ? x->gp.mb_s : best->gp.mb_s_min;
    if (rep == 0 || !x->gp.ok || x->gp.mb_s > best->gp.mb_s)
        *best = *x;
    best->gp.runs = rep + 1;
    best->gp.mb_s_min = lo;
}

static void fl_rate_name(char *buf, size_t cap, const fl_cell *c)
{
    if (c->kind == FL_NONE)
        snprintf(buf, cap, "-");
    else if (c->rate == 0)
        snprintf(buf, cap, "max");
    else
        snprintf(buf, cap, "%" PRIu64, c->rate);
}

static int flood(const options *o, FILE *out)
{
    const variant *v = &variants[o->variant >= 0 ? o->variant : 1];
    if (v->security != TERN_SECURITY_NOISE) {
        printf("== flood: skipped: the INITs it floods with are Noise ones (--variant "
               "chachapoly or aesgcm)\n\n");
        return 0;
    }
    gp_case gc = {v,
                  o->preset >= 0 ? (tern_kcp_preset)o->preset : TERN_KCP_PRESET_FAST3,
                  o->preset >= 0 ? o->preset_name : "fast3",
                  o->wnd >= 0 ? (uint32_t)o->wnd : 0,
                  1,
                  (int)o->sockbuf};
    if (!variant_available(v)) {
        printf("== flood: skipped: no AES-NI on this CPU\n\n");
        return 0;
    }
    /* The server runs the default DoS policy; its figures bound the DH. */
    tern_endpoint_config dflt;
    tern_endpoint_config_default(&dflt);
    const tern_ratelimit_config *rl = &dflt.ratelimit;

    fl_cell cells[1 + 2 * FL_RATES_MAX];
    size_t n = 0;
    cells[n++] = (fl_cell){FL_NONE, 0};
    for (size_t i = 0; i < o->n_flood_rates; i++)
        for (int k = FL_VALID; k <= FL_BADMAC; k++)
            if (o->flood_kind < 0 || o->flood_kind == k)
                cells[n++] = (fl_cell){(fl_kind)k, o->flood_rates[i]};
    flooder *f = calloc(1, sizeof(*f));
    fl_result *res = calloc(n, sizeof(*res));
    uint8_t *pattern = gp_pattern_new();
    char why[160] = "";
    if (!f || !res || !pattern) {
        snprintf(why, sizeof(why), "out of memory");
    } else if (fl_setup(f, (size_t)o->flood_sources, v, why, sizeof(why)) != 0) {
        free(f);
        f = NULL;
    }
    if (why[0]) {
        printf("== flood: FAILED: %s\n\n", why);
        fprintf(out, "{\"bench\":\"transport\",\"mode\":\"flood\",\"ok\":false,\"why\":\"%s\",",
                why);
        tern_bench_json_stamp(out, &host, o->quick);
        free(f);
        free(res);
        free(pattern);
        return 1;
    }
    atomic_init(&f->stop, false);

    double warm = o->secs / 5 < 0.5 ? o->secs / 5 : 0.5;
    char wnd[24];
    snprintf(wnd, sizeof(wnd), gc.wnd ? "%u" : "128/256", gc.wnd);
    printf("== flood: one live stream (%s, %s, window %s, socket buffers %" PRIu64
           " B), 1 MiB writes,\n"
           "   byte-checked, client and server endpoints on one loop and thread; a flooder "
           "thread (free\n"
           "   to use the other core) sends 192-byte INITs from %zu sources (127.1.b.c, a "
           "socket each)\n"
           "   at a target rate from the start of a %.2f s warm-up through %.2f s measured, "
           "never\n"
           "   answering. valid_mac1: real Noise NK first messages with a valid mac1; "
           "bad_mac1: junk\n"
           "   that fails the mac1 check. Fastest of %u interleaved runs; ratio = MB/s / "
           "the no-flood\n"
           "   baseline's; CPU%% = process, loop%% = the endpoints' thread, flood%% = the "
           "flooder's;\n"
           "   drops = datagrams the kernel dropped on the two endpoints' sockets, flood "
           "INITs included.\n\n",
           v->name, gc.preset_name, wnd, o->sockbuf, f->n_fds, warm, o->secs, o->repeat);
    for (unsigned rep = 0; rep < o->repeat; rep++) {
        for (size_t i = 0; i < n; i++) {
            fl_result x;
            memset(&x, 0, sizeof(x));
            x.cell = cells[i];
            fl_run run;
            memset(&run, 0, sizeof(run));
            run.f = f;
            f->cell = cells[i];
            atomic_store(&f->stop, false);
            atomic_store(&f->sent, 0);
            atomic_store(&f->send_errors, 0);
            atomic_store(&f->got_resp, 0);
            atomic_store(&f->got_cookie, 0);
            atomic_store(&f->got_other, 0);
            fl_drain_all(f);
            gp_hooks hooks = {fl_start, fl_measure, fl_end, &run};
            gp_run_case(&gc, pattern, o->secs, &hooks, &x.gp);
            if (x.gp.ok)
                fl_judge(&x, &run, rl, o->flood_strict);
            fl_keep(&res[i], &x, rep);
        }
        if (o->repeat > 1)
            printf("(flood round %u of %u done)\n", rep + 1, o->repeat);
    }

    const fl_result *base = &res[0];
    double base_mb = base->gp.ok ? base->gp.mb_s : 0.0;
    printf("%-10s %8s %9s %8s %6s %7s %5s %5s %6s %6s %6s\n", "flood", "target/s", "sent/s", "MB/s",
           "ratio", "spread", "CPU%", "loop%", "flood%", "retr%", "drops");
    for (size_t i = 0; i < n; i++) {
        const fl_result *x = &res[i];
        char rate[24], sp[16];
        fl_rate_name(rate, sizeof(rate), &x->cell);
        snprintf(sp, sizeof(sp), "%.1f%%", spread(x->gp.mb_s, x->gp.mb_s_min));
        if (!x->gp.ok) {
            printf("%-10s %8s FAILED: %s\n", fl_kind_names[x->cell.kind], rate, x->gp.why);
            continue;
        }
        printf("%-10s %8s %9.0f %8.1f %6.2f %7s %5.0f %5.0f %6.0f %6.2f %6" PRIu64 "\n",
               fl_kind_names[x->cell.kind], rate, x->sent_per_s, x->gp.mb_s,
               base_mb > 0 ? x->gp.mb_s / base_mb : 0.0, sp, x->gp.cpu_pct, x->loop_cpu_pct,
               x->flood_cpu_pct,
               x->gp.segs_sent ? 100.0 * (double)x->gp.retrans / (double)x->gp.segs_sent : 0.0,
               x->gp.drops);
    }
    printf("\nThe server over the whole flood (the kept run): INITs read, cookie replies, DH "
           "for INITs\nwithout a cookie (handshakes_unproven) and its bound, the detection "
           "burst min(load_burst %u,\nhalfopen_max %u / %u), DH with a valid cookie "
           "(handshakes_cookie), refusals, half-open\nsessions (peak / at the end), sessions "
           "accepted, and what the flooder got back.\n\n",
           rl->load_burst, rl->halfopen_max, TERN_HALFOPEN_LOAD_DIV);
    printf("%-10s %8s %9s %9s %6s %6s %5s %8s %7s %7s %8s %9s %4s %8s %8s\n", "flood", "target/s",
           "sent", "seen", "DH", "bound", "DHck", "cookies", "ratelim", "limit", "bad mac1",
           "half-open", "acc", "got resp", "got cook");
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        const fl_result *x = &res[i];
        char rate[24], half[24];
        fl_rate_name(rate, sizeof(rate), &x->cell);
        snprintf(half, sizeof(half), "%u/%u", x->halfopen_peak, x->d.halfopen_now);
        failed += !x->gp.ok;
        printf("%-10s %8s %9" PRIu64 " %9" PRIu64 " %6" PRIu64 " %6" PRIu64 " %5" PRIu64
               " %8" PRIu64 " %7" PRIu64 " %7" PRIu64 " %8" PRIu64 " %9s %4" PRIu64 " %8" PRIu64
               " %8" PRIu64 "%s\n",
               fl_kind_names[x->cell.kind], rate, x->sent, x->seen, x->dh, x->dh_bound,
               x->dh_cookie, x->d.cookies_sent, x->d.drop_ratelimited, x->d.drop_limit,
               x->d.drop_auth, half, x->d.sessions_accepted, x->got_resp, x->got_cookie,
               x->gp.ok ? "" : "  FAILED");
        fprintf(out,
                "{\"bench\":\"transport\",\"mode\":\"flood\",\"variant\":\"%s\",\"threads\":1,"
                "\"preset\":\"%s\",\"snd_wnd\":%u,\"rcv_wnd\":%u,\"write_bytes\":%u,"
                "\"sockbuf\":%d,\"flood\":\"%s\",\"flood_rate_target\":%" PRIu64
                ",\"flood_sources\":%zu,\"strict\":%s,\"ok\":%s,\"bytes\":%" PRIu64
                ",\"wall_s\":%.4f,\"mb_per_s\":%.2f,\"mb_per_s_slowest\":%.2f,\"repeats\":%u,"
                "\"ratio_vs_baseline\":%.3f,\"cpu_pct\":%.1f,\"loop_cpu_pct\":%.1f,"
                "\"flooder_cpu_pct\":%.1f,\"segs_sent\":%" PRIu64 ",\"retrans\":%" PRIu64
                ",\"socket_drops\":%" PRIu64 ",",
                v->name, gc.preset_name, x->gp.snd_wnd, x->gp.rcv_wnd, GP_WRITE, gc.sockbuf,
                fl_kind_names[x->cell.kind], x->cell.rate, f->n_fds,
                o->flood_strict ? "true" : "false", x->gp.ok ? "true" : "false", x->gp.bytes,
                x->gp.secs, x->gp.mb_s, x->gp.mb_s_min, x->gp.runs,
                base_mb > 0 ? x->gp.mb_s / base_mb : 0.0, x->gp.cpu_pct, x->loop_cpu_pct,
                x->flood_cpu_pct, x->gp.segs_sent, x->gp.retrans, x->gp.drops);
        fprintf(
            out,
            "\"flood_s\":%.4f,\"inits_sent\":%" PRIu64 ",\"inits_sent_measured\":%" PRIu64
            ",\"inits_per_s\":%.0f,\"send_errors\":%" PRIu64 ",\"inits_seen\":%" PRIu64
            ",\"dh\":%" PRIu64 ",\"dh_bound\":%" PRIu64 ",\"dh_cookie\":%" PRIu64
            ",\"cookies_sent\":%" PRIu64 ",\"drop_auth\":%" PRIu64 ",\"drop_ratelimited\":%" PRIu64
            ",\"drop_limit\":%" PRIu64 ",\"drop_malformed\":%" PRIu64
            ",\"drop_unknown_session\":%" PRIu64 ",\"sessions_refused\":%" PRIu64
            ",\"sessions_accepted\":%" PRIu64 ",\"halfopen_peak\":%u,\"halfopen_end\":%u,"
            "\"sessions_end\":%u,\"send_failed\":%" PRIu64 ",\"bytes_sent_unvalidated\":%" PRIu64
            ",\"bytes_recv_unvalidated\":%" PRIu64 ",\"flooder_got_resp\":%" PRIu64
            ",\"flooder_got_cookie\":%" PRIu64 ",\"flooder_got_other\":%" PRIu64 ",",
            x->flood_s, x->sent, x->sent_window, x->sent_per_s, x->send_errors, x->seen, x->dh,
            x->dh_bound, x->dh_cookie, x->d.cookies_sent, x->d.drop_auth, x->d.drop_ratelimited,
            x->d.drop_limit, x->d.drop_malformed, x->d.drop_unknown_session, x->d.sessions_refused,
            x->d.sessions_accepted, x->halfopen_peak, x->d.halfopen_now, x->d.sessions_now,
            x->d.send_failed, x->d.bytes_sent_unvalidated, x->d.bytes_recv_unvalidated, x->got_resp,
            x->got_cookie, x->got_other);
        if (x->gp.why[0])
            fprintf(out, "\"why\":\"%s\",", x->gp.why);
        tern_bench_json_stamp(out, &host, o->quick);
    }
    printf("\n");
    fl_teardown(f);
    free(f);
    free(res);
    free(pattern);
    return failed;
}

/* ======================================================================
 * main
 * ====================================================================== */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s [--mode goodput|idle|latency|flood|all] [--quick] [--seconds S]\n"
            "       [--out PATH] [--threads 1|2]\n"
            "       [--variant plaintext|chachapoly|aesgcm|chachapoly-sodium|aesgcm-sodium]\n"
            "       [--repeat N] [--preset NAME] [--window N] [--sockbuf B] [--no-raw]\n"
            "       [--sessions N] [--clients N] [--idle S] [--rate N]\n"
            "       [--flood-rate LIST] [--flood-sources N] [--flood-kind valid|bad|both]\n"
            "       [--flood-strict]\n"
            "The transport over loopback: stream goodput and CPU beside raw sendmmsg, memory\n"
            "and CPU of idle sessions, message round trips beside raw UDP ping-pong, and a\n"
            "live stream's goodput under a flood of spoofed handshake initiations.\n"
            "  --mode M      what to run (default all: every mode)\n"
            "  --quick       a seconds-long smoke run (CI)\n"
            "  --seconds S   goodput, flood: time per run; latency: time per series\n"
            "                (default 5)\n"
            "  --threads T   goodput: 1 (one loop) or 2 (a loop per endpoint); default both\n"
            "  --variant V   goodput: only this security variant; flood: this one\n"
            "                instead of chachapoly (a Noise one)\n"
            "  --preset P    goodput: only this preset, normal|fast|fast2|fast3|turbo\n"
            "                (default fast3 and normal); flood: instead of fast3\n"
            "  --window W    goodput: only this window (snd = rcv), 0 for the defaults\n"
            "                (128/256); default 0 and 1024; flood: instead of 0\n"
            "  --repeat N    goodput, latency, flood: runs per cell or series,\n"
            "                interleaved; the best is kept (default 1)\n"
            "  --sockbuf B   goodput, flood: SO_SNDBUF/SO_RCVBUF bytes, 0 for the OS\n"
            "                default (default 4 MiB)\n"
            "  --no-raw      goodput: skip the raw UDP references (for profilers)\n"
            "  --sessions N  idle: sessions (default 10000)\n"
            "  --clients N   idle: client endpoints sharing them (default 10, at most %u)\n"
            "  --idle S      idle: seconds of idleness measured (default 10)\n"
            "  --rate N      latency: messages per second (default 1000)\n"
            "  --flood-rate LIST  flood: INITs per second, comma-separated, \"max\" for as\n"
            "                fast as the flooder can (default 10000,50000,200000,max;\n"
            "                --quick: 20000); a no-flood baseline always runs too\n"
            "  --flood-sources N  flood: source addresses, a socket each (default 256,\n"
            "                at most %u)\n"
            "  --flood-kind K  flood: valid (valid mac1), bad (bad mac1) or both (default)\n"
            "  --flood-strict  flood: fail if any flood INIT cost a DH or a half-open\n"
            "                session, even in the detection burst (default: fail beyond\n"
            "                the burst, min(load_burst, halfopen_max / 8))\n"
            "  --out PATH    JSON-lines results file to append to (default %s)\n",
            PROG, IDLE_CLIENTS_MAX, FL_SOURCES_MAX, TERN_BENCH_RESULTS_DEFAULT);
}

static int parse_named(const char *flag, const char *v, const char *const *names, int n, int *out)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    fprintf(stderr, "%s: bad value for %s: '%s'\n", PROG, flag, v);
    return -1;
}

/* "10000,50000,max": INITs per second, 0 for max. */
static int parse_rates(const char *flag, const char *v, uint64_t *rates, size_t *n)
{
    char buf[256];
    char *save = NULL;
    size_t k = 0;
    snprintf(buf, sizeof(buf), "%s", v);
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (k == FL_RATES_MAX) {
            fprintf(stderr, "%s: %s: at most %u rates\n", PROG, flag, FL_RATES_MAX);
            return -1;
        }
        if (!strcmp(t, "max"))
            rates[k] = 0;
        else if (tern_bench_parse_u64(PROG, flag, t, 1, 100000000, &rates[k]) != 0)
            return -1;
        k++;
    }
    if (k == 0) {
        fprintf(stderr, "%s: bad value for %s: '%s'\n", PROG, flag, v);
        return -1;
    }
    *n = k;
    return 0;
}

int main(int argc, char **argv)
{
    static const char *const modes[] = {"all", "goodput", "idle", "latency", "flood"};
    static const char *const knames[] = {"both", "valid", "bad"};
    static const char *const vnames[] = {"plaintext", "chachapoly", "aesgcm", "chachapoly-sodium",
                                         "aesgcm-sodium"};
    static const char *const pnames[] = {"normal", "fast", "fast2", "fast3", "turbo"};
    const char *out_path = TERN_BENCH_RESULTS_DEFAULT;
    options o = {.secs = 5.0,
                 .sockbuf = GP_SOCKBUF,
                 .repeat = 1,
                 .variant = -1,
                 .preset = -1,
                 .wnd = -1,
                 .sessions = 10000,
                 .clients = 10,
                 .idle_secs = 10.0,
                 .rate = 1000,
                 .flood_rates = {10000, 50000, 200000, 0},
                 .n_flood_rates = 4,
                 .flood_sources = 256,
                 .flood_kind = -1};
    int mode = 0;
    bool secs_given = false, sessions_given = false, clients_given = false, idle_given = false;
    bool flood_rates_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        uint64_t u = 0;
        if (!strcmp(a, "--quick")) {
            o.quick = true;
            continue;
        }
        if (!strcmp(a, "--no-raw")) {
            o.no_raw = true;
            continue;
        }
        if (!strcmp(a, "--flood-strict")) {
            o.flood_strict = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--out")) {
            out_path = v;
        } else if (!strcmp(a, "--mode")) {
            rc = parse_named(a, v, modes, 5, &mode);
        } else if (!strcmp(a, "--seconds")) {
            rc = tern_bench_parse_double(PROG, a, v, 0.05, 600.0, &o.secs);
            secs_given = true;
        } else if (!strcmp(a, "--threads")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, 2, &u);
            o.threads = (int)u;
        } else if (!strcmp(a, "--variant")) {
            rc = parse_named(a, v, vnames, N_VARIANTS, &o.variant);
        } else if (!strcmp(a, "--preset")) {
            rc = parse_named(a, v, pnames, 5, &o.preset);
            o.preset_name = v;
        } else if (!strcmp(a, "--window")) {
            rc = tern_bench_parse_u64(PROG, a, v, 0, TERN_KCP_WND_MAX, &u);
            o.wnd = (int)u;
        } else if (!strcmp(a, "--repeat")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, 100, &u);
            o.repeat = (unsigned)u;
        } else if (!strcmp(a, "--sockbuf")) {
            rc = tern_bench_parse_u64(PROG, a, v, 0, 1 << 30, &o.sockbuf);
        } else if (!strcmp(a, "--sessions")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, 1000000, &o.sessions);
            sessions_given = true;
        } else if (!strcmp(a, "--clients")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, IDLE_CLIENTS_MAX, &o.clients);
            clients_given = true;
        } else if (!strcmp(a, "--idle")) {
            rc = tern_bench_parse_double(PROG, a, v, 0.1, 3600.0, &o.idle_secs);
            idle_given = true;
        } else if (!strcmp(a, "--rate")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, 100000, &o.rate);
        } else if (!strcmp(a, "--flood-rate")) {
            rc = parse_rates(a, v, o.flood_rates, &o.n_flood_rates);
            flood_rates_given = true;
        } else if (!strcmp(a, "--flood-sources")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, FL_SOURCES_MAX, &o.flood_sources);
        } else if (!strcmp(a, "--flood-kind")) {
            int k = 0;
            rc = parse_named(a, v, knames, 3, &k);
            o.flood_kind = k == 0 ? -1 : k;
        } else {
            usage(stderr);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (o.quick) {
        if (!secs_given)
            o.secs = 0.3;
        if (!sessions_given)
            o.sessions = 200;
        if (!clients_given)
            o.clients = 4;
        if (!idle_given)
            o.idle_secs = 0.5;
        if (o.threads == 0)
            o.threads = 1;
        if (o.preset < 0) {
            o.preset = TERN_KCP_PRESET_FAST3;
            o.preset_name = "fast3";
        }
        if (o.wnd < 0)
            o.wnd = 0;
        if (!flood_rates_given) {
            o.flood_rates[0] = 20000;
            o.n_flood_rates = 1;
        }
    }
    if (tern_crypto_init() != 0 || tern_keypair_generate(&server_kp) != 0) {
        fprintf(stderr, PROG ": libsodium did not initialise\n");
        return 1;
    }
    FILE *out = tern_bench_results_open(PROG, out_path);
    if (!out)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    tern_bench_machine_init(&host);
    double load[3];
    tern_bench_loadavg(load);
    printf("%s: %ld CPUs (%s), kernel %s, load average %.2f %.2f %.2f%s\n\n", PROG, host.nproc,
           host.cpu, host.kernel, load[0], load[1], load[2], o.quick ? ", quick run" : "");

    int failed = 0;
    if (mode == 0 || mode == 1)
        failed += goodput(&o, out);
    if (mode == 0 || mode == 2)
        failed += idle(&o, out);
    if (mode == 0 || mode == 3)
        failed += latency(&o, out);
    if (mode == 0 || mode == 4)
        failed += flood(&o, out);
    fclose(out);
    if (failed)
        fprintf(stderr, PROG ": %d result(s) failed\n", failed);
    return failed ? 1 : 0;
}
