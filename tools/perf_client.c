/* tern-perf client: connects, asks the server for a test, runs it for
 * --time, collects the server's result and reports.
 *
 * Phases: CONNECT (every session's handshake, then request -> accept),
 * RUN (--time of traffic), DRAIN (throughput: the stream's tail and both
 * ends of stream; latency and game: echoes still in flight, at most
 * --timeout), RESULTS (the server's result messages), CLOSING (graceful
 * session closes, then the endpoints and every handle). Each phase has a
 * deadline; a failure reports one line and exits 1, SIGINT or SIGTERM ends
 * the test early and reports what was measured (exit 0).
 *
 * Throughput is measured where the bytes are known to have arrived: sent
 * bytes less tern_stream_write_queue_size() (acknowledged) when the client
 * sends, bytes read when it receives. Latency samples are round trips
 * timed with uv_hrtime() from the client's send to the echo's arrival. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/perf.h"
#include "tools/perf_plot.h"
#include "tools/perf_stats.h"

#define CLIENTS_MAX 1000
#define RATE_MAX 1000000
#define LATENCY_SIZE_DEFAULT 64
#define STREAM_SIZE_DEFAULT (128U << 10)
#define STREAM_SIZE_MAX (16U << 20)
#define LATENCY_RATE_DEFAULT 1000
#define GAME_RATE_DEFAULT 30
#define GAME_CLIENTS_DEFAULT 4
#define TIMEOUT_DEFAULT_MS 1000
#define CONNECT_TIMEOUT_DEFAULT_MS 5000
#define TIME_DEFAULT_MS 10000
#define PACE_MS 1
/* At most this many messages per session and channel in one pacing tick,
 * so a stalled loop catches up without a burst the size of the stall. */
#define BURST_MAX 64
#define CONNECT_SLACK_MS 1000
#define THROUGHPUT_DRAIN_MS 10000
#define RESULT_WAIT_MS 5000
/* A graceful close whose data is already acknowledged completes only at
 * the session's next timer (up to keepalive_ms later): past this wait the
 * endpoints' close aborts what is left, which loses nothing (the results
 * are in). */
#define CLOSE_WAIT_MS 300
#define CDF_POINTS 400
#define NS_PER_MS 1000000.0

typedef enum phase {
    PH_CONNECT,
    PH_RUN,
    PH_DRAIN,
    PH_RESULTS,
    PH_CLOSING,
} phase;

/* What a data channel saw, over every session. */
typedef struct chan {
    const char *name;
    uint32_t id;
    uint64_t sent, received, timeouts, send_failed, bogus;
    tern_perf_stats rtt_ms;
} chan;

typedef struct client client;

typedef struct conn {
    client *cl;
    tern_endpoint *ep;
    tern_session *s;
    bool connected, accepted, have_result, closed;
    json_t *accept, *result;
    json_t *session_stats;   /* ours, from snap, at the end */
    tern_session_stats snap; /* our counters, while they are whole */
    bool have_snap;
    uint64_t offset_ns; /* game: spreads the sessions' sends over a tick */
    uint64_t due_sent;  /* messages sent per channel, for pacing */
    uint64_t next_seq[TERN_PERF_N_CHANNELS];
    /* Throughput. */
    tern_stream *st;
    uint64_t written, read_bytes, first_read_ns, last_read_ns;
    bool eof, shut_done, stream_done, tail_cut;
} conn;

typedef struct interval {
    double start_s, end_s;
    uint64_t bytes;
} interval;

typedef struct client_opts {
    struct sockaddr_storage server;
    const char *server_text;
    tern_perf_net net;
    tern_perf_mode mode;
    bool reverse, json;
    uint64_t time_ms, timeout_ms, connect_timeout_ms;
    size_t size;
    uint64_t rate;
    uint32_t clients;
    uint32_t latency_channel;
    const char *plot;
} client_opts;

struct client {
    client_opts o;
    uv_loop_t *loop;
    conn *conns;
    uint32_t n_conns;
    uv_signal_t sigint, sigterm;
    uv_timer_t pace, second, deadline;
    uv_check_t check;
    phase ph;
    bool failed, interrupted, quiet, tty, progress_shown, warned, handles_closed;
    uint64_t t0_ns, t_end_ns;
    tern_perf_cpu cpu0;
    double cpu_wall_s;
    json_t *cpu_client;
    uint8_t *buf;
    /* Throughput. */
    interval *iv;
    size_t n_iv, cap_iv;
    uint64_t iv_last_bytes, iv_last_ns;
    uint64_t window_bytes; /* delivered by the end of --time */
    uint64_t pending;      /* bytes written whose callback has not run */
    uint64_t total_msgs;   /* per session and channel: rate x time */
    bool final_pace;       /* end_run's last pacing pass */
    /* Latency and game. */
    chan ch[2];
    uint32_t n_ch;
};

static void usage(FILE *f)
{
    fputs("usage: " TERN_PERF_PROG " client HOST:PORT [--mode MODE] [OPTIONS]\n"
          "\n"
          "Runs one test against a tern-perf server and reports it.\n"
          "\n"
          "  --mode MODE            throughput (default), latency or game\n"
          "  --time T               how long to send: seconds (10), or 500ms, 2s, 1m\n"
          "                         (default 10)\n"
          "  --size BYTES           throughput: bytes per stream write (default 128k);\n"
          "                         latency, game: message size, 16..65536 (default 64)\n"
          "  --rate N               latency: requests per second (default 1000); game: as\n"
          "                         --msgs-per-sec\n"
          "  --reverse              throughput: the server sends, the client receives\n"
          "  --channel KIND         latency: reliable (default), sequenced or unreliable\n"
          "  --clients N            game: sessions, each with its own socket (default 4)\n"
          "  --msgs-per-sec M       game: messages per second per session and channel\n"
          "                         (default 30)\n"
          "  --timeout T            latency, game: an echo later than this is a timeout,\n"
          "                         and the wait for the last echoes (default 1s)\n"
          "  --json                 print the result as one JSON object instead of a table\n"
          "  --plot FILE.svg        write a chart: throughput over time, or the latency CDF\n"
          "  --connect-timeout T    give up on the handshake after T (default 5s)\n",
          f);
    fputs(TERN_PERF_NET_HELP, f);
    fputs("  -h, --help             show this help and exit\n"
          "  -V, --version          show the version and exit\n"
          "\n"
          "Exit status: 0 after a test (also one cut short by SIGINT), 1 if it could not\n"
          "run, 2 for a usage error.\n"
          "\n"
          "Example: " TERN_PERF_PROG " client 127.0.0.1:5201 --mode latency --time 5 --rate 500\n",
          f);
}

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

static double secs(uint64_t from_ns, uint64_t to_ns)
{
    return to_ns > from_ns ? (double)(to_ns - from_ns) / 1e9 : 0.0;
}

/* ---- Flags -------------------------------------------------------------- */

enum {
    OPT_MODE = 256,
    OPT_TIME,
    OPT_SIZE,
    OPT_RATE,
    OPT_REVERSE,
    OPT_CHANNEL,
    OPT_CLIENTS,
    OPT_MPS,
    OPT_TIMEOUT,
    OPT_JSON,
    OPT_PLOT,
    OPT_CONNECT_TIMEOUT,
};

static int usage_error(const char *fmt, const char *a, const char *b)
{
    fputs(TERN_PERF_PROG ": ", stderr);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return TERN_PERF_EXIT_USAGE;
}

static int bad_value(const char *flag, const char *value, int rc, const char *expect)
{
    fprintf(stderr, TERN_PERF_PROG ": invalid value '%s' for --%s: %s (expected %s)\n", value, flag,
            rc < 0 ? tern_strerror(rc) : "unknown name", expect);
    return TERN_PERF_EXIT_USAGE;
}

/* A bare number is seconds here, as in iperf; a unit makes it anything. */
static int parse_seconds(const char *text, uint64_t *ms)
{
    size_t len = strlen(text);
    if (len == 0 || len > 32)
        return TERN_ERR_INVAL;
    char buf[40];
    bool bare = text[len - 1] >= '0' && text[len - 1] <= '9';
    snprintf(buf, sizeof(buf), "%s%s", text, bare ? "s" : "");
    return tern_cli_parse_duration_ms(buf, ms);
}

/* Returns -1 to go on, or the exit status (0 after --help or --version). */
static int parse_args(int argc, char **argv, client_opts *o)
{
    static const struct option longopts[] = {
        {"mode", required_argument, NULL, OPT_MODE},
        {"time", required_argument, NULL, OPT_TIME},
        {"size", required_argument, NULL, OPT_SIZE},
        {"rate", required_argument, NULL, OPT_RATE},
        {"reverse", no_argument, NULL, OPT_REVERSE},
        {"channel", required_argument, NULL, OPT_CHANNEL},
        {"clients", required_argument, NULL, OPT_CLIENTS},
        {"msgs-per-sec", required_argument, NULL, OPT_MPS},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"json", no_argument, NULL, OPT_JSON},
        {"plot", required_argument, NULL, OPT_PLOT},
        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        TERN_PERF_NET_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    tern_perf_net_default(&o->net);
    o->mode = TERN_PERF_THROUGHPUT;
    o->time_ms = TIME_DEFAULT_MS;
    o->timeout_ms = TIMEOUT_DEFAULT_MS;
    o->connect_timeout_ms = CONNECT_TIMEOUT_DEFAULT_MS;
    o->latency_channel = TERN_PERF_CH_RELIABLE;
    uint64_t size = 0, rate = 0, mps = 0, clients = 0, n;
    const char *size_text = NULL;

    opterr = 0;
    int c, idx, rc;
    while ((idx = -1, c = getopt_long(argc, argv, ":hV", longopts, &idx)) != -1) {
        const char *flag = idx >= 0 ? longopts[idx].name : "?";
        switch (c) {
        case OPT_MODE:
            if (tern_perf_mode_from_name(optarg, &o->mode) < 0)
                return bad_value(flag, optarg, 0, "throughput, latency or game");
            break;
        case OPT_TIME:
            rc = parse_seconds(optarg, &n);
            if (rc == 0 && (n == 0 || n > TERN_PERF_TIME_MAX_MS))
                rc = TERN_ERR_RANGE;
            if (rc < 0)
                return bad_value(flag, optarg, rc,
                                 "seconds such as 10 or 1.5, or 500ms, up to 24h");
            o->time_ms = n;
            break;
        case OPT_TIMEOUT:
            rc = tern_cli_parse_duration_ms(optarg, &n);
            if (rc == 0 && (n == 0 || n > 60000))
                rc = TERN_ERR_RANGE;
            if (rc < 0)
                return bad_value(flag, optarg, rc, "a duration such as 500ms or 2s, up to 60s");
            o->timeout_ms = n;
            break;
        case OPT_CONNECT_TIMEOUT:
            rc = tern_cli_parse_duration_ms(optarg, &n);
            if (rc == 0 && (n == 0 || n > 600000))
                rc = TERN_ERR_RANGE;
            if (rc < 0)
                return bad_value(flag, optarg, rc, "a duration such as 2s, up to 10m");
            o->connect_timeout_ms = n;
            break;
        case OPT_SIZE:
            rc = tern_cli_parse_size(optarg, &size);
            if (rc == 0 && (size == 0 || size > STREAM_SIZE_MAX))
                rc = TERN_ERR_RANGE;
            if (rc < 0)
                return bad_value(flag, optarg, rc, "a size such as 64, 1k or 128k");
            size_text = optarg;
            break;
        case OPT_RATE:
        case OPT_MPS:
            rc = tern_cli_parse_u64(optarg, 1, RATE_MAX, &n);
            if (rc < 0)
                return bad_value(flag, optarg, rc, "messages per second, 1 to 1000000");
            if (c == OPT_RATE)
                rate = n;
            else
                mps = n;
            break;
        case OPT_CLIENTS:
            rc = tern_cli_parse_u64(optarg, 1, CLIENTS_MAX, &clients);
            if (rc < 0)
                return bad_value(flag, optarg, rc, "an integer from 1 to 1000");
            break;
        case OPT_CHANNEL:
            if (strcmp(optarg, "reliable") == 0)
                o->latency_channel = TERN_PERF_CH_RELIABLE;
            else if (strcmp(optarg, "sequenced") == 0)
                o->latency_channel = TERN_PERF_CH_SEQUENCED;
            else if (strcmp(optarg, "unreliable") == 0)
                o->latency_channel = TERN_PERF_CH_UNRELIABLE;
            else
                return bad_value(flag, optarg, 0, "reliable, sequenced or unreliable");
            break;
        case OPT_REVERSE:
            o->reverse = true;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_PLOT:
            if (optarg[0] == '\0')
                return bad_value(flag, optarg, TERN_ERR_INVAL, "a file name");
            o->plot = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(TERN_PERF_PROG " %s\n", TERN_VERSION_STRING);
            return 0;
        case ':':
            return usage_error("option '%s' needs a value (try '" TERN_PERF_PROG
                               " client --help')%s",
                               argv[optind - 1], "");
        case '?':
            if (optopt && optopt < 256) {
                char opt[3] = {'-', (char)optopt, '\0'};
                return usage_error("unknown option '%s' (try '" TERN_PERF_PROG " client --help')%s",
                                   opt, "");
            }
            return usage_error("unknown option '%s' (try '" TERN_PERF_PROG " client --help')%s",
                               argv[optind - 1], "");
        default:
            rc = tern_perf_net_option(&o->net, c, flag, optarg);
            if (rc)
                return rc;
        }
    }
    if (optind >= argc)
        return usage_error("the server's HOST:PORT is required (try '" TERN_PERF_PROG
                           " client --help')%s%s",
                           "", "");
    if (optind + 1 < argc)
        return usage_error("unexpected argument '%s' (try '" TERN_PERF_PROG " client --help')%s",
                           argv[optind + 1], "");
    o->server_text = argv[optind];
    rc = tern_cli_parse_hostport(o->server_text, &o->server, NULL);
    if (rc < 0)
        return usage_error("invalid server address '%s': %s (expected HOST:PORT or [IPv6]:PORT)",
                           o->server_text, tern_strerror(rc));

    bool messages = o->mode != TERN_PERF_THROUGHPUT;
    if (o->reverse && messages)
        return usage_error("--reverse applies to --mode throughput only%s%s", "", "");
    if (clients && o->mode != TERN_PERF_GAME)
        return usage_error("--clients applies to --mode game only%s%s", "", "");
    if (messages && size_text && (size < TERN_PERF_DATA_HEADER || size > 65536))
        return bad_value("size", size_text, TERN_ERR_RANGE,
                         "16 to 65536 bytes for latency and game messages");
    o->size = size ? (size_t)size : messages ? LATENCY_SIZE_DEFAULT : STREAM_SIZE_DEFAULT;
    if (o->mode == TERN_PERF_GAME) {
        o->clients = clients ? (uint32_t)clients : GAME_CLIENTS_DEFAULT;
        o->rate = mps ? mps : rate ? rate : GAME_RATE_DEFAULT;
    } else {
        o->clients = 1;
        o->rate = rate ? rate : LATENCY_RATE_DEFAULT;
    }
    return -1;
}

/* ---- Phases -------------------------------------------------------------- */

static void finish(client *cl);

/* Takes the session's counters unless a bulk stream is gone (its engine's
 * counters left the sums with it: the last snapshot is the whole one). */
static void snapshot(conn *c)
{
    if (!c->s || (c->cl->o.mode == TERN_PERF_THROUGHPUT && c->have_snap && !c->st))
        return;
    tern_session_get_stats(c->s, &c->snap);
    c->have_snap = true;
}

static void on_deadline(uv_timer_t *t);
static void on_shutdown(tern_stream *st, int status, void *arg);
static void stream_close(conn *c);

static void fail(client *cl, const char *fmt, const char *a, const char *b)
{
    if (cl->failed || cl->ph == PH_CLOSING)
        return;
    if (cl->progress_shown)
        fputc('\n', stderr);
    cl->progress_shown = false;
    fputs(TERN_PERF_PROG ": ", stderr);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    cl->failed = true;
    finish(cl);
}

static void arm_deadline(client *cl, uint64_t ms)
{
    uv_timer_start(&cl->deadline, on_deadline, ms, 0);
}

/* Whether every session's flag at offset (offsetof(conn, accepted), ...)
 * is set: one loop for the phase checks instead of one per flag. */
static bool all(const client *cl, size_t offset)
{
    for (uint32_t i = 0; i < cl->n_conns; i++) {
        if (!*(const bool *)((const char *)&cl->conns[i] + offset))
            return false;
    }
    return true;
}

static uint64_t delivered_bytes(const client *cl)
{
    const conn *c = &cl->conns[0];
    if (cl->o.reverse)
        return c->read_bytes;
    size_t queued = c->st ? tern_stream_write_queue_size(c->st) : 0;
    return c->written > queued ? c->written - queued : 0;
}

static void add_interval(client *cl, uint64_t now)
{
    uint64_t bytes = delivered_bytes(cl);
    if (cl->n_iv == cl->cap_iv)
        return;
    cl->iv[cl->n_iv++] = (interval){secs(cl->t0_ns, cl->iv_last_ns), secs(cl->t0_ns, now),
                                    bytes - cl->iv_last_bytes};
    cl->iv_last_bytes = bytes;
    cl->iv_last_ns = now;
}

static void send_done(client *cl)
{
    for (uint32_t i = 0; i < cl->n_conns; i++) {
        conn *c = &cl->conns[i];
        int rc = tern_perf_send_control(c->s, json_pack("{s:s}", "type", "done"));
        if (rc < 0) {
            fail(cl, "cannot send to the server: %s%s", tern_strerror(rc), "");
            return;
        }
    }
}

static void maybe_results_done(client *cl);
static void on_pace(uv_timer_t *t);

static void enter_results(client *cl)
{
    if (cl->ph >= PH_RESULTS)
        return;
    cl->ph = PH_RESULTS;
    if (cl->o.mode != TERN_PERF_THROUGHPUT)
        send_done(cl);
    if (cl->failed)
        return;
    arm_deadline(cl, RESULT_WAIT_MS);
    maybe_results_done(cl);
}

static bool echoes_done(const client *cl)
{
    for (uint32_t k = 0; k < cl->n_ch; k++) {
        if (cl->ch[k].received < cl->ch[k].sent)
            return false;
    }
    return true;
}

static void maybe_drained(client *cl)
{
    if (cl->ph != PH_DRAIN)
        return;
    if (cl->o.mode == TERN_PERF_THROUGHPUT ? cl->conns[0].stream_done : echoes_done(cl))
        enter_results(cl);
}

/* --time is up: stop sending, and wait for what is in flight. */
static void end_run(client *cl)
{
    if (cl->ph != PH_RUN)
        return;
    if (cl->o.mode != TERN_PERF_THROUGHPUT && !cl->interrupted) {
        cl->final_pace = true;
        on_pace(&cl->pace); /* what fell due since the last tick */
    }
    uint64_t now = now_ns();
    cl->t_end_ns = now;
    cl->ph = PH_DRAIN;
    uv_timer_stop(&cl->pace);
    uv_timer_stop(&cl->second);
    cl->cpu_wall_s = secs(cl->t0_ns, now);
    cl->cpu_client = tern_perf_cpu_json(&cl->cpu0, cl->cpu_wall_s);
    if (cl->o.mode == TERN_PERF_THROUGHPUT) {
        /* The last, partial interval, unless it is a sliver. */
        if (now - cl->iv_last_ns > 50 * UINT64_C(1000000) || cl->n_iv == 0)
            add_interval(cl, now);
        cl->window_bytes = delivered_bytes(cl);
        arm_deadline(cl, THROUGHPUT_DRAIN_MS);
        conn *c = &cl->conns[0];
        if (!cl->o.reverse && c->st && tern_stream_shutdown(c->st, on_shutdown, c) < 0) {
            fail(cl, "cannot end the stream%s%s", "", "");
            return;
        }
    } else {
        arm_deadline(cl, cl->o.timeout_ms);
    }
    maybe_drained(cl);
}

static void maybe_results_done(client *cl)
{
    if (cl->ph != PH_RESULTS || !all(cl, offsetof(conn, have_result)))
        return;
    finish(cl);
}

/* Closes the sessions gracefully; the endpoints and the handles follow
 * once they are closed or after CLOSE_WAIT_MS. */
static void finish(client *cl)
{
    if (cl->ph == PH_CLOSING)
        return;
    cl->ph = PH_CLOSING;
    uv_timer_stop(&cl->pace);
    uv_timer_stop(&cl->second);
    uv_check_stop(&cl->check);
    if (!cl->cpu_client && cl->t0_ns) {
        cl->cpu_wall_s = secs(cl->t0_ns, now_ns());
        cl->cpu_client = tern_perf_cpu_json(&cl->cpu0, cl->cpu_wall_s);
    }
    if (cl->progress_shown)
        fputc('\n', stderr);
    cl->progress_shown = false;
    for (uint32_t i = 0; i < cl->n_conns; i++) {
        conn *c = &cl->conns[i];
        if (c->s && !c->closed) {
            snapshot(c);
            if (!c->session_stats)
                c->session_stats = tern_perf_session_json(&c->snap);
            if (cl->failed || cl->interrupted || tern_session_close(c->s) < 0)
                (void)tern_session_abort(c->s);
        }
    }
    /* The deadline fires at once if nothing is left to wait for. */
    arm_deadline(cl, all(cl, offsetof(conn, closed)) ? 0 : CLOSE_WAIT_MS);
}

static void close_all(client *cl)
{
    if (cl->handles_closed)
        return;
    cl->handles_closed = true;
    for (uint32_t i = 0; i < cl->n_conns; i++) {
        if (cl->conns[i].ep) {
            (void)tern_endpoint_close(cl->conns[i].ep, NULL);
            cl->conns[i].ep = NULL;
        }
    }
    uv_timer_stop(&cl->deadline);
    uv_close((uv_handle_t *)&cl->sigint, NULL);
    uv_close((uv_handle_t *)&cl->sigterm, NULL);
    uv_close((uv_handle_t *)&cl->pace, NULL);
    uv_close((uv_handle_t *)&cl->second, NULL);
    uv_close((uv_handle_t *)&cl->deadline, NULL);
    uv_close((uv_handle_t *)&cl->check, NULL);
}

/* The deadline of the current phase. */
static void on_deadline(uv_timer_t *t)
{
    client *cl = t->data;
    switch (cl->ph) {
    case PH_CONNECT: {
        char what[96];
        snprintf(what, sizeof(what), "%s", cl->o.server_text);
        fail(cl,
             "no answer from %s%s (is a server running there, with the same --cipher and "
             "--psk?)",
             what, "");
        break;
    }
    case PH_RUN:
        end_run(cl);
        break;
    case PH_DRAIN:
        if (cl->o.mode == TERN_PERF_THROUGHPUT) {
            /* The tail is too slow: cut it (the peer reads a reset and
             * sends its result); the --time window is measured already. */
            conn *c = &cl->conns[0];
            fprintf(stderr,
                    TERN_PERF_PROG ": note: the stream did not drain within %d s after "
                                   "--time; reset\n",
                    THROUGHPUT_DRAIN_MS / 1000);
            c->tail_cut = true;
            stream_close(c);
        }
        /* Whatever did not come back in time is lost. */
        enter_results(cl);
        break;
    case PH_RESULTS:
        fail(cl, "no result from the server within %s%s", "5 s", "");
        break;
    case PH_CLOSING:
        /* Every session closed, or the wait ran out (the endpoints abort
         * what is left). */
        close_all(cl);
        break;
    }
}

/* ---- Traffic ------------------------------------------------------------- */

static void on_write(tern_stream *st, int status, void *arg);

/* Keeps the stream's queue full while the test runs. */
static void fill(client *cl)
{
    conn *c = &cl->conns[0];
    while (cl->ph == PH_RUN && c->st && !cl->o.reverse) {
        if (!tern_perf_may_write(c->s, cl->pending, cl->o.net.mtu))
            return;
        uv_buf_t b = uv_buf_init((char *)cl->buf, (unsigned)cl->o.size);
        int rc = tern_stream_write(c->st, &b, 1, on_write, cl);
        if (rc == TERN_ERR_WOULDBLOCK)
            return;
        if (rc < 0) {
            fail(cl, "stream write failed: %s%s", tern_strerror(rc), "");
            return;
        }
        c->written += cl->o.size;
        cl->pending += cl->o.size;
    }
}

static void on_write(tern_stream *st, int status, void *arg)
{
    (void)st;
    client *cl = arg;
    cl->pending -= cl->o.size;
    if (status == 0)
        fill(cl);
}

/* tern reports no "writable again" after WOULDBLOCK, so every loop
 * iteration (ACKs arriving) tries again. */
static void on_check(uv_check_t *h)
{
    fill(h->data);
}

static void on_alloc(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = tern_stream_get_data(st);
    *buf = uv_buf_init((char *)c->cl->buf, (unsigned)c->cl->o.size);
}

static void stream_close(conn *c)
{
    snapshot(c);
    if (c->st) {
        (void)tern_stream_close(c->st, NULL);
        c->st = NULL;
    }
    c->stream_done = true;
    maybe_drained(c->cl);
}

static void on_shutdown(tern_stream *st, int status, void *arg)
{
    (void)st;
    conn *c = arg;
    if (status < 0)
        return; /* the session ended: its close_cb reports it */
    c->shut_done = true;
    if (c->eof)
        stream_close(c);
}

static void on_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = tern_stream_get_data(st);
    client *cl = c->cl;
    if (n > 0) {
        uint64_t now = now_ns();
        if (c->read_bytes == 0)
            c->first_read_ns = now;
        c->last_read_ns = now;
        c->read_bytes += (uint64_t)n;
        return;
    }
    if (n == TERN_ERR_EOF) {
        c->eof = true;
        if (cl->o.reverse) {
            /* The server is done sending: answer with our end. */
            if (cl->ph == PH_RUN)
                end_run(cl);
            if (tern_stream_shutdown(st, on_shutdown, c) < 0)
                stream_close(c);
        } else if (c->shut_done) {
            stream_close(c);
        }
        return;
    }
    if (n == TERN_ERR_RESET) {
        stream_close(c);
        fail(cl, "the server reset the stream%s%s", "", "");
        return;
    }
    c->st = NULL; /* the session ended; tern frees the stream */
}

static void on_stream(tern_session *s, tern_stream *st)
{
    conn *c = tern_session_get_data(s);
    if (!c->cl->o.reverse || c->st) {
        (void)tern_stream_close(st, NULL);
        return;
    }
    c->st = st;
    tern_stream_set_data(st, c);
    if (tern_stream_read_start(st, on_alloc, on_read) < 0)
        fail(c->cl, "cannot read the server's stream%s%s", "", "");
}

static void send_message(client *cl, conn *c, chan *k)
{
    uint64_t seq = c->next_seq[k->id];
    uint64_t t = now_ns();
    memcpy(cl->buf, &seq, 8);
    memcpy(cl->buf + 8, &t, 8);
    int rc = tern_session_send(c->s, k->id, cl->buf, cl->o.size, 0);
    if (rc < 0) {
        k->send_failed++;
        return;
    }
    c->next_seq[k->id]++;
    k->sent++;
}

/* Sends what each session owes by now at --rate, per channel. */
static void on_pace(uv_timer_t *t)
{
    client *cl = t->data;
    uint64_t now = now_ns();
    for (uint32_t i = 0; i < cl->n_conns && cl->ph == PH_RUN; i++) {
        conn *c = &cl->conns[i];
        uint64_t start = cl->t0_ns + c->offset_ns;
        if (now < start)
            continue;
        /* The first message at start, then one every 1/rate s. */
        uint64_t due = (uint64_t)((double)(now - start) * (double)cl->o.rate / 1e9) + 1;
        /* At the end of --time everything is due, whatever the loop's clock
         * (uv_now() is cached, the timer may fire a hair early) says. */
        if (due > cl->total_msgs || cl->final_pace)
            due = cl->total_msgs;
        for (int burst = 0; c->due_sent < due && burst < BURST_MAX; burst++) {
            for (uint32_t k = 0; k < cl->n_ch; k++)
                send_message(cl, c, &cl->ch[k]);
            c->due_sent++;
        }
    }
}

static void on_data(client *cl, conn *c, uint32_t id, const uint8_t *data, size_t len)
{
    chan *k = NULL;
    for (uint32_t i = 0; i < cl->n_ch; i++) {
        if (cl->ch[i].id == id)
            k = &cl->ch[i];
    }
    uint64_t seq, t, now = now_ns();
    if (!k || len < TERN_PERF_DATA_HEADER) {
        if (k)
            k->bogus++;
        return;
    }
    memcpy(&seq, data, 8);
    memcpy(&t, data + 8, 8);
    /* Only what we sent comes back; anything else is counted, not used. */
    if (seq >= c->next_seq[id] || t > now || t < cl->t0_ns) {
        k->bogus++;
        return;
    }
    double rtt = (double)(now - t) / NS_PER_MS;
    k->received++;
    if (rtt > (double)cl->o.timeout_ms)
        k->timeouts++;
    (void)tern_perf_stats_add(&k->rtt_ms, rtt);
    maybe_drained(cl);
}

/* ---- Progress ------------------------------------------------------------ */

static void progress(client *cl, uint64_t now)
{
    if (!cl->tty || cl->o.json)
        return;
    double t = secs(cl->t0_ns, now);
    if (cl->o.mode == TERN_PERF_THROUGHPUT) {
        const interval *last = cl->n_iv ? &cl->iv[cl->n_iv - 1] : NULL;
        double mbit = last && last->end_s > last->start_s
                          ? (double)last->bytes * 8 / (last->end_s - last->start_s) / 1e6
                          : 0.0;
        tern_session_stats st;
        memset(&st, 0, sizeof(st));
        if (cl->conns[0].s)
            tern_session_get_stats(cl->conns[0].s, &st);
        fprintf(stderr, "\r%6.1f s  %10.2f Mbit/s  srtt %4" PRIu32 " ms  retrans %.3f%%   ", t,
                mbit, st.srtt_ms, tern_perf_retransmit_ratio(&st) * 100.0);
    } else {
        fprintf(stderr, "\r%6.1f s", t);
        for (uint32_t k = 0; k < cl->n_ch; k++) {
            chan *ch = &cl->ch[k];
            fprintf(stderr, "  %s: %" PRIu64 "/%" PRIu64 " p50 %.2f ms p99 %.2f ms", ch->name,
                    ch->received, ch->sent, tern_perf_stats_percentile(&ch->rtt_ms, 50),
                    tern_perf_stats_percentile(&ch->rtt_ms, 99));
        }
        fputs("   ", stderr);
    }
    cl->progress_shown = true;
}

static void on_second(uv_timer_t *t)
{
    client *cl = t->data;
    uint64_t now = now_ns();
    if (cl->o.mode == TERN_PERF_THROUGHPUT) {
        add_interval(cl, now);
    }
    progress(cl, now);
}

/* ---- Sessions ------------------------------------------------------------ */

static void start_run(client *cl)
{
    cl->ph = PH_RUN;
    cl->t0_ns = now_ns();
    cl->iv_last_ns = cl->t0_ns;
    tern_perf_cpu_now(&cl->cpu0);
    arm_deadline(cl, cl->o.time_ms);
    uv_timer_start(&cl->second, on_second, 1000, 1000);
    if (cl->o.mode == TERN_PERF_THROUGHPUT) {
        if (cl->o.reverse)
            return; /* the server opens the stream */
        conn *c = &cl->conns[0];
        int rc = tern_stream_open(c->s, &c->st);
        if (rc < 0) {
            fail(cl, "cannot open a stream: %s%s", tern_strerror(rc), "");
            return;
        }
        tern_stream_set_data(c->st, c);
        rc = tern_stream_read_start(c->st, on_alloc, on_read);
        if (rc < 0) {
            fail(cl, "cannot read the stream: %s%s", tern_strerror(rc), "");
            return;
        }
        uv_check_start(&cl->check, on_check);
        fill(cl);
        return;
    }
    cl->total_msgs = (cl->o.rate * cl->o.time_ms + 999) / 1000;
    /* Sessions spread evenly over one message interval. */
    uint64_t period = (uint64_t)(1e9 / (double)cl->o.rate);
    for (uint32_t i = 0; i < cl->n_conns; i++)
        cl->conns[i].offset_ns = period * i / cl->n_conns;
    uv_timer_start(&cl->pace, on_pace, 0, PACE_MS);
}

static void check_settings(client *cl, const json_t *acc)
{
    const tern_perf_net *n = &cl->o.net;
    const char *preset = json_string_value(json_object_get(acc, "preset"));
    const char *cc = json_string_value(json_object_get(acc, "cc"));
    uint64_t mtu = tern_perf_json_u64(acc, "mtu", 0);
    if (cl->warned)
        return;
    cl->warned = true;
    if (preset && strcmp(preset, tern_perf_preset_name(n->preset)) != 0)
        fprintf(stderr, TERN_PERF_PROG ": note: the server uses --preset %s, this client %s\n",
                preset, tern_perf_preset_name(n->preset));
    if (cc && strcmp(cc, n->cc) != 0)
        fprintf(stderr, TERN_PERF_PROG ": note: the server uses --cc %s, this client %s\n", cc,
                n->cc);
    if (mtu && mtu != n->mtu)
        fprintf(stderr,
                TERN_PERF_PROG ": note: the server uses --mtu %" PRIu64 ", this client %" PRIu32
                               "\n",
                mtu, n->mtu);
}

static void on_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    conn *c = tern_session_get_data(s);
    client *cl = c->cl;
    if (ch != TERN_PERF_CH_CONTROL) {
        if (cl->ph == PH_RUN || cl->ph == PH_DRAIN)
            on_data(cl, c, ch, data, len);
        return;
    }
    const char *type = NULL;
    json_t *msg = tern_perf_parse_control(data, len, &type);
    if (!msg) {
        fail(cl, "malformed message from the server%s%s", "", "");
        return;
    }
    if (strcmp(type, "accept") == 0 && !c->accepted) {
        c->accepted = true;
        c->accept = msg;
        check_settings(cl, msg);
        if (cl->ph == PH_CONNECT && all(cl, offsetof(conn, accepted)))
            start_run(cl);
        return;
    }
    if (strcmp(type, "result") == 0 && !c->have_result) {
        c->have_result = true;
        c->result = msg;
        /* Our counters as they stand at the end of the test. */
        snapshot(c);
        c->session_stats = tern_perf_session_json(&c->snap);
        maybe_results_done(cl);
        return;
    }
    if (strcmp(type, "error") == 0) {
        const char *m = json_string_value(json_object_get(msg, "message"));
        char text[256];
        snprintf(text, sizeof(text), "%s", m ? m : "no reason given");
        json_decref(msg);
        fail(cl, "the server refused the test: %s%s", text, "");
        return;
    }
    json_decref(msg);
}

static void on_connect(tern_session *s, int status)
{
    conn *c = tern_session_get_data(s);
    client *cl = c->cl;
    if (status < 0) {
        fail(cl,
             "cannot connect to %s: %s (is a server running there, with the same --cipher "
             "and --psk?)",
             cl->o.server_text, tern_strerror(status));
        return;
    }
    c->connected = true;
    json_t *req = json_pack(
        "{s:s, s:i, s:s, s:b, s:I, s:I, s:s, s:s, s:s, s:i}", "type", "request", "v",
        TERN_PERF_PROTO_VERSION, "mode", tern_perf_mode_name(cl->o.mode), "reverse", cl->o.reverse,
        "time_ms", (json_int_t)cl->o.time_ms, "size", (json_int_t)cl->o.size, "cipher",
        tern_perf_cipher_name(cl->o.net.cipher), "preset", tern_perf_preset_name(cl->o.net.preset),
        "cc", cl->o.net.cc, "mtu", (int)cl->o.net.mtu);
    int rc = tern_perf_send_control(s, req);
    if (rc < 0)
        fail(cl, "cannot send the request: %s%s", tern_strerror(rc), "");
}

static void on_close(tern_session *s, int status)
{
    conn *c = tern_session_get_data(s);
    client *cl = c->cl;
    c->closed = true;
    c->s = NULL;
    c->st = NULL;
    if (cl->ph != PH_CLOSING && !cl->failed) {
        fail(cl, "the session ended: %s%s", tern_strerror(status), "");
        return;
    }
    /* Closing the endpoints from here would be inside tern's callback:
     * the deadline timer does it on the next iteration. */
    if (cl->ph == PH_CLOSING && !cl->handles_closed && all(cl, offsetof(conn, closed)))
        arm_deadline(cl, 0);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    client *cl = sig->data;
    if (cl->ph == PH_CLOSING) {
        close_all(cl); /* a second signal: stop waiting */
        return;
    }
    cl->interrupted = true;
    if (cl->ph == PH_CONNECT) {
        cl->quiet = true; /* nothing measured: no report */
        finish(cl);
        return;
    }
    end_run(cl);
    finish(cl);
}

/* ---- Reports ------------------------------------------------------------- */

static json_t *rtt_json(chan *k)
{
    tern_perf_stats *s = &k->rtt_ms;
    json_t *o = json_object();
    json_object_set_new(o, "min", json_real(tern_perf_stats_min(s)));
    json_object_set_new(o, "mean", json_real(tern_perf_stats_mean(s)));
    json_object_set_new(o, "p50", json_real(tern_perf_stats_percentile(s, 50)));
    json_object_set_new(o, "p90", json_real(tern_perf_stats_percentile(s, 90)));
    json_object_set_new(o, "p99", json_real(tern_perf_stats_percentile(s, 99)));
    json_object_set_new(o, "p99_9", json_real(tern_perf_stats_percentile(s, 99.9)));
    json_object_set_new(o, "max", json_real(tern_perf_stats_max(s)));
    return o;
}

static json_t *chan_json(chan *k)
{
    uint64_t got = k->received < k->sent ? k->received : k->sent;
    json_t *o = json_object();
    json_object_set_new(o, "sent", json_integer((json_int_t)k->sent));
    json_object_set_new(o, "received", json_integer((json_int_t)k->received));
    json_object_set_new(o, "lost", json_integer((json_int_t)(k->sent - got)));
    json_object_set_new(o, "timeouts", json_integer((json_int_t)k->timeouts));
    json_object_set_new(o, "send_failed", json_integer((json_int_t)k->send_failed));
    json_object_set_new(o, "bogus", json_integer((json_int_t)k->bogus));
    json_object_set_new(o, "delivery_ratio",
                        json_real(k->sent ? (double)got / (double)k->sent : 0.0));
    json_object_set_new(o, "samples", json_integer((json_int_t)k->rtt_ms.n_kept));
    json_object_set_new(o, "rtt_ms", rtt_json(k));
    json_object_set_new(o, "jitter_ms", json_real(tern_perf_stats_jitter(&k->rtt_ms)));
    return o;
}

static double mbit(uint64_t bytes, double s)
{
    return s > 0 ? (double)bytes * 8 / s / 1e6 : 0.0;
}

static json_t *throughput_json(client *cl)
{
    conn *c = &cl->conns[0];
    double window = secs(cl->t0_ns, cl->t_end_ns);
    json_t *o = json_object();
    json_object_set_new(o, "bytes", json_integer((json_int_t)cl->window_bytes));
    json_object_set_new(o, "seconds", json_real(window));
    json_object_set_new(o, "mbit_per_s", json_real(mbit(cl->window_bytes, window)));
    json_object_set_new(o, "mbyte_per_s",
                        json_real(window > 0 ? (double)cl->window_bytes / window / 1e6 : 0.0));
    /* The receiver's own count: every byte, first to last. */
    uint64_t rbytes;
    double rsecs;
    if (cl->o.reverse) {
        rbytes = c->read_bytes;
        rsecs = secs(c->first_read_ns, c->last_read_ns);
    } else {
        rbytes = tern_perf_json_u64(c->result, "bytes", 0);
        rsecs = json_real_value(json_object_get(c->result, "seconds"));
    }
    json_object_set_new(o, "receiver_bytes", json_integer((json_int_t)rbytes));
    json_object_set_new(o, "tail_cut", json_boolean(c->tail_cut));
    json_object_set_new(o, "receiver_seconds", json_real(rsecs));
    /* Retransmissions are the sender's. */
    const json_t *sender = cl->o.reverse ? json_object_get(c->result, "session") : c->session_stats;
    json_object_set_new(o, "retransmit_ratio",
                        json_real(json_real_value(json_object_get(sender, "retransmit_ratio"))));
    json_object_set_new(
        o, "srtt_ms", json_integer((json_int_t)tern_perf_json_u64(c->session_stats, "srtt_ms", 0)));
    return o;
}

static json_t *report_json(client *cl)
{
    const client_opts *o = &cl->o;
    conn *c0 = &cl->conns[0];
    json_t *r = json_object();
    json_object_set_new(r, "tool", json_string(TERN_PERF_PROG));
    json_object_set_new(r, "version", json_string(TERN_VERSION_STRING));
    json_object_set_new(r, "mode", json_string(tern_perf_mode_name(o->mode)));
    json_object_set_new(r, "server", json_string(o->server_text));
    json_object_set_new(r, "interrupted", json_boolean(cl->interrupted));
    json_t *set = json_pack(
        "{s:s, s:s, s:s, s:i, s:f, s:I, s:b}", "cipher", tern_perf_cipher_name(o->net.cipher),
        "preset", tern_perf_preset_name(o->net.preset), "cc", o->net.cc, "mtu", (int)o->net.mtu,
        "time_s", (double)o->time_ms / 1000.0, "size", (json_int_t)o->size, "reverse", o->reverse);
    if (o->mode != TERN_PERF_THROUGHPUT) {
        json_object_set_new(set, "rate", json_integer((json_int_t)o->rate));
        json_object_set_new(set, "clients", json_integer((json_int_t)o->clients));
        json_object_set_new(set, "timeout_ms", json_integer((json_int_t)o->timeout_ms));
    }
    json_object_set_new(r, "settings", set);
    if (c0->accept) {
        json_t *ss = json_deep_copy(c0->accept);
        json_object_del(ss, "type");
        json_object_set_new(r, "server_settings", ss);
    }

    if (o->mode == TERN_PERF_THROUGHPUT) {
        json_t *ivs = json_array();
        for (size_t i = 0; i < cl->n_iv; i++) {
            const interval *v = &cl->iv[i];
            json_array_append_new(ivs,
                                  json_pack("{s:f, s:f, s:I, s:f}", "start_s", v->start_s, "end_s",
                                            v->end_s, "bytes", (json_int_t)v->bytes, "mbit_per_s",
                                            mbit(v->bytes, v->end_s - v->start_s)));
        }
        json_object_set_new(r, "intervals", ivs);
        json_object_set_new(r, "summary", throughput_json(cl));
    } else if (o->mode == TERN_PERF_LATENCY) {
        json_object_set_new(r, "channel", json_string(cl->ch[0].name));
        json_object_set_new(r, "summary", chan_json(&cl->ch[0]));
    } else {
        json_t *chs = json_object();
        for (uint32_t k = 0; k < cl->n_ch; k++)
            json_object_set_new(chs, cl->ch[k].name, chan_json(&cl->ch[k]));
        json_object_set_new(r, "clients", json_integer((json_int_t)o->clients));
        json_object_set_new(r, "channels", chs);
    }

    json_t *cpu = json_object();
    json_object_set(cpu, "client", cl->cpu_client ? cl->cpu_client : json_null());
    json_t *scpu = c0->result ? json_object_get(c0->result, "cpu") : NULL;
    json_object_set(cpu, "server", scpu ? scpu : json_null());
    json_object_set_new(r, "cpu", cpu);
    json_object_set(r, "client_session", c0->session_stats ? c0->session_stats : json_null());
    json_t *ssess = c0->result ? json_object_get(c0->result, "session") : NULL;
    json_object_set(r, "server_session", ssess ? ssess : json_null());
    if (c0->result && o->mode != TERN_PERF_THROUGHPUT) {
        uint64_t echoed = 0, failed = 0;
        for (uint32_t i = 0; i < cl->n_conns; i++) {
            echoed += tern_perf_json_u64(cl->conns[i].result, "echoed", 0);
            failed += tern_perf_json_u64(cl->conns[i].result, "echo_failed", 0);
        }
        json_object_set_new(r, "server_echoed", json_integer((json_int_t)echoed));
        json_object_set_new(r, "server_echo_failed", json_integer((json_int_t)failed));
    }
    return r;
}

static double jnum(const json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

static void print_cpu(const json_t *r)
{
    const json_t *cpu = json_object_get(r, "cpu");
    const char *who[2] = {"client", "server"};
    for (int i = 0; i < 2; i++) {
        const json_t *x = json_object_get(cpu, who[i]);
        if (json_is_object(x))
            printf("cpu %-7s     %.2f s user  %.2f s system  (%.1f%% of one core)\n", who[i],
                   jnum(x, "user_s"), jnum(x, "system_s"), jnum(x, "percent"));
    }
}

static void print_chan_row(const char *name, const json_t *k)
{
    const json_t *rtt = json_object_get(k, "rtt_ms");
    printf("%-11s %8" PRIu64 " %8" PRIu64 " %6" PRIu64 " %8" PRIu64 " %7.4f %8.3f %8.3f %8.3f "
           "%8.3f %8.3f %8.3f %8.3f\n",
           name, tern_perf_json_u64(k, "sent", 0), tern_perf_json_u64(k, "received", 0),
           tern_perf_json_u64(k, "lost", 0), tern_perf_json_u64(k, "timeouts", 0),
           jnum(k, "delivery_ratio"), jnum(rtt, "min"), jnum(rtt, "p50"), jnum(rtt, "p90"),
           jnum(rtt, "p99"), jnum(rtt, "p99_9"), jnum(rtt, "max"), jnum(k, "jitter_ms"));
}

static void print_table(const client *cl, const json_t *r)
{
    const client_opts *o = &cl->o;
    printf("tern-perf %s to %s: cipher %s, preset %s, cc %s, mtu %" PRIu32 "%s\n",
           tern_perf_mode_name(o->mode), o->server_text, tern_perf_cipher_name(o->net.cipher),
           tern_perf_preset_name(o->net.preset), o->net.cc, o->net.mtu,
           cl->interrupted ? " (interrupted)" : "");
    if (o->mode == TERN_PERF_THROUGHPUT) {
        printf("%s\n", o->reverse ? "server -> client" : "client -> server");
        printf("%-17s %14s %12s %10s\n", "interval", "bytes", "Mbit/s", "MB/s");
        const json_t *ivs = json_object_get(r, "intervals");
        size_t i;
        const json_t *v;
        json_array_foreach(ivs, i, v)
        {
            double a = jnum(v, "start_s"), b = jnum(v, "end_s");
            uint64_t bytes = tern_perf_json_u64(v, "bytes", 0);
            printf("%6.2f-%6.2f s  %14" PRIu64 " %12.2f %10.2f\n", a, b, bytes,
                   jnum(v, "mbit_per_s"), b > a ? (double)bytes / (b - a) / 1e6 : 0.0);
        }
        const json_t *s = json_object_get(r, "summary");
        printf("%-17s %14" PRIu64 " %12.2f %10.2f\n", "total", tern_perf_json_u64(s, "bytes", 0),
               jnum(s, "mbit_per_s"), jnum(s, "mbyte_per_s"));
        printf("receiver          %" PRIu64 " bytes in %.2f s\n",
               tern_perf_json_u64(s, "receiver_bytes", 0), jnum(s, "receiver_seconds"));
        printf("retransmitted     %.3f%% of data segments   srtt %" PRIu64 " ms\n",
               jnum(s, "retransmit_ratio") * 100.0, tern_perf_json_u64(s, "srtt_ms", 0));
    } else {
        printf("%-11s %8s %8s %6s %8s %7s %8s %8s %8s %8s %8s %8s %8s\n", "channel", "sent",
               "received", "lost", "timeouts", "deliv.", "min ms", "p50", "p90", "p99", "p99.9",
               "max", "jitter");
        if (o->mode == TERN_PERF_LATENCY) {
            print_chan_row(cl->ch[0].name, json_object_get(r, "summary"));
        } else {
            const json_t *chs = json_object_get(r, "channels");
            for (uint32_t k = 0; k < cl->n_ch; k++)
                print_chan_row(cl->ch[k].name, json_object_get(chs, cl->ch[k].name));
            printf("%" PRIu32 " sessions, %" PRIu64 " messages/s each per channel, %zu bytes\n",
                   o->clients, o->rate, o->size);
        }
    }
    print_cpu(r);
    fflush(stdout);
}

static int write_plot(client *cl)
{
    FILE *f = fopen(cl->o.plot, "w");
    if (!f) {
        fprintf(stderr, TERN_PERF_PROG ": cannot write --plot %s: %s\n", cl->o.plot,
                strerror(errno));
        return TERN_PERF_EXIT_RUNTIME;
    }
    tern_perf_plot p;
    memset(&p, 0, sizeof(p));
    tern_perf_plot_series series[2];
    memset(series, 0, sizeof(series));
    double *xs = NULL, *ys = NULL;
    char title[160];
    int rc = 0;
    if (cl->o.mode == TERN_PERF_THROUGHPUT) {
        xs = calloc(cl->n_iv + 1, sizeof(double));
        ys = calloc(cl->n_iv + 1, sizeof(double));
        for (size_t i = 0; xs && ys && i < cl->n_iv; i++) {
            xs[i] = cl->iv[i].end_s;
            ys[i] = mbit(cl->iv[i].bytes, cl->iv[i].end_s - cl->iv[i].start_s);
        }
        series[0] = (tern_perf_plot_series){"goodput", xs, ys, xs && ys ? cl->n_iv : 0};
        snprintf(title, sizeof(title), "tern-perf throughput%s to %s",
                 cl->o.reverse ? " (reverse)" : "", cl->o.server_text);
        p = (tern_perf_plot){title, "time (s)", "goodput (Mbit/s)", series, 1, true, true};
    } else {
        xs = calloc(2 * CDF_POINTS, sizeof(double));
        ys = calloc(2 * CDF_POINTS, sizeof(double));
        for (uint32_t k = 0; xs && ys && k < cl->n_ch; k++) {
            size_t n = tern_perf_stats_cdf(&cl->ch[k].rtt_ms, xs + k * CDF_POINTS,
                                           ys + k * CDF_POINTS, CDF_POINTS);
            series[k] = (tern_perf_plot_series){cl->ch[k].name, xs + k * CDF_POINTS,
                                                ys + k * CDF_POINTS, n};
        }
        snprintf(title, sizeof(title), "tern-perf %s: round-trip time CDF, %s",
                 tern_perf_mode_name(cl->o.mode), cl->o.server_text);
        p = (tern_perf_plot){
            title, "round-trip time (ms)", "fraction of messages", series, cl->n_ch, true, true};
    }
    if (!xs || !ys)
        rc = TERN_ERR_NOMEM;
    else
        rc = tern_perf_plot_svg(f, &p);
    free(xs);
    free(ys);
    if (fclose(f) != 0 && rc == 0)
        rc = TERN_ERR_IO;
    if (rc < 0) {
        fprintf(stderr, TERN_PERF_PROG ": cannot write --plot %s: %s\n", cl->o.plot,
                tern_strerror(rc));
        return TERN_PERF_EXIT_RUNTIME;
    }
    return 0;
}

/* ---- Start --------------------------------------------------------------- */

static int setup(client *cl, const tern_endpoint_config *cfg)
{
    client_opts *o = &cl->o;
    cl->conns = calloc(o->clients, sizeof(conn));
    cl->buf = calloc(1, o->size < TERN_PERF_DATA_HEADER ? TERN_PERF_DATA_HEADER : o->size);
    if (!cl->conns || !cl->buf)
        return TERN_ERR_NOMEM;
    if (o->mode == TERN_PERF_THROUGHPUT) {
        cl->cap_iv = (size_t)(o->time_ms / 1000) + 2;
        cl->iv = calloc(cl->cap_iv, sizeof(interval));
        if (!cl->iv)
            return TERN_ERR_NOMEM;
    } else if (o->mode == TERN_PERF_LATENCY) {
        static const char *const names[TERN_PERF_N_CHANNELS] = {"", "reliable", "sequenced",
                                                                "unreliable"};
        cl->ch[0].name = names[o->latency_channel];
        cl->ch[0].id = o->latency_channel;
        cl->n_ch = 1;
    } else {
        cl->ch[0].name = "reliable";
        cl->ch[0].id = TERN_PERF_CH_RELIABLE;
        cl->ch[1].name = "sequenced";
        cl->ch[1].id = TERN_PERF_CH_SEQUENCED;
        cl->n_ch = 2;
    }
    for (uint32_t k = 0; k < cl->n_ch; k++)
        (void)tern_perf_stats_init(&cl->ch[k].rtt_ms, 0, NULL);

    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    any.ss_family = o->server.ss_family;
    const struct sockaddr *to[] = {(const struct sockaddr *)&o->server};
    tern_session_callbacks cbs = {.connect_cb = on_connect,
                                  .stream_cb = on_stream,
                                  .message_cb = on_message,
                                  .close_cb = on_close};
    /* One endpoint (socket) per session, as separate players would have. */
    for (uint32_t i = 0; i < o->clients; i++) {
        conn *c = &cl->conns[i];
        c->cl = cl;
        cl->n_conns++;
        int rc = tern_endpoint_new(&c->ep, cl->loop, (const struct sockaddr *)&any, cfg);
        if (rc < 0)
            return rc;
        rc = tern_endpoint_connect(c->ep, to, 1, 0, &cbs, &c->s);
        if (rc < 0)
            return rc;
        tern_session_set_data(c->s, c);
    }
    return 0;
}

static void cleanup(client *cl)
{
    for (uint32_t i = 0; i < cl->n_conns; i++) {
        json_decref(cl->conns[i].accept);
        json_decref(cl->conns[i].result);
        json_decref(cl->conns[i].session_stats);
    }
    for (uint32_t k = 0; k < cl->n_ch; k++)
        tern_perf_stats_free(&cl->ch[k].rtt_ms);
    json_decref(cl->cpu_client);
    free(cl->conns);
    free(cl->buf);
    free(cl->iv);
}

int tern_perf_client_main(int argc, char **argv)
{
    client *cl = calloc(1, sizeof(*cl));
    if (!cl) {
        fprintf(stderr, TERN_PERF_PROG ": out of memory\n");
        return TERN_PERF_EXIT_RUNTIME;
    }
    int rc = parse_args(argc, argv, &cl->o);
    if (rc >= 0) {
        free(cl);
        return rc;
    }
    tern_endpoint_config cfg;
    tern_key psk;
    rc = tern_perf_endpoint_config(&cl->o.net, &cfg, &psk);
    cfg.handshake_timeout_ms = (uint32_t)cl->o.connect_timeout_ms;
    if (rc < 0) {
        fprintf(stderr, TERN_PERF_PROG ": cannot set up --cipher %s: %s\n",
                tern_perf_cipher_name(cl->o.net.cipher), tern_strerror(rc));
        free(cl);
        return TERN_PERF_EXIT_RUNTIME;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    cl->loop = &loop;
    cl->tty = isatty(2) == 1;
    uv_signal_init(&loop, &cl->sigint);
    uv_signal_init(&loop, &cl->sigterm);
    uv_timer_init(&loop, &cl->pace);
    uv_timer_init(&loop, &cl->second);
    uv_timer_init(&loop, &cl->deadline);
    uv_check_init(&loop, &cl->check);
    cl->sigint.data = cl->sigterm.data = cl;
    cl->pace.data = cl->second.data = cl->deadline.data = cl->check.data = cl;
    uv_signal_start(&cl->sigint, on_signal, SIGINT);
    uv_signal_start(&cl->sigterm, on_signal, SIGTERM);

    rc = setup(cl, &cfg);
    memset(&psk, 0, sizeof(psk)); /* each endpoint has its copy */
    if (rc < 0) {
        fprintf(stderr, TERN_PERF_PROG ": cannot connect to %s: %s\n", cl->o.server_text,
                tern_strerror(rc));
        cl->failed = true;
        cl->ph = PH_CLOSING;
        close_all(cl);
    } else {
        arm_deadline(cl, cfg.handshake_timeout_ms + CONNECT_SLACK_MS);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        fprintf(stderr, TERN_PERF_PROG ": warning: handles left open at exit\n");

    int status = cl->failed ? TERN_PERF_EXIT_RUNTIME : 0;
    if (!cl->failed && !cl->quiet) {
        json_t *r = report_json(cl);
        if (cl->o.json) {
            json_dumpf(r, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
            fputc('\n', stdout);
            fflush(stdout);
        } else {
            print_table(cl, r);
        }
        json_decref(r);
        if (cl->o.plot)
            status = write_plot(cl);
    }
    cleanup(cl);
    free(cl);
    return status;
}
