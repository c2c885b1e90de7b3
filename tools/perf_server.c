/* tern-perf server: accepts sessions, and does what each client's request
 * says. Throughput: counts the bytes of the client's stream (or, reversed,
 * writes for the requested time on a stream of its own); latency and game:
 * echoes every data message on the channel it came on. Each test ends with
 * a result message carrying the server's view (bytes, seconds, CPU time,
 * session counters). Sessions that send no request within REQUEST_TIMEOUT_MS
 * are aborted. Several tests may run at once; CPU time is the process's, so
 * concurrent tests share it. */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/perf.h"

#define REQUEST_TIMEOUT_MS 10000
#define TICK_MS 20
#define READ_BUF 65536
#define WRITE_SIZE_DEFAULT (128U << 10)
#define WRITE_SIZE_MAX (16U << 20)
/* Reversed streams write from one shared buffer of zeros, in chunks of at
 * most this, so memory does not grow with sessions or --size. */
#define WRITE_CHUNK_MAX (1U << 20)

typedef struct server server;

typedef struct conn {
    server *sv;
    tern_session *s;
    struct conn *prev, *next;
    char peer[TERN_CLI_ADDR_MAX];
    uint64_t opened_ms;

    bool have_request, result_sent;
    tern_perf_mode mode;
    bool reverse;
    uint64_t time_ms;
    size_t size;
    uint64_t start_ns; /* request accepted */
    tern_perf_cpu cpu0;

    /* Throughput. */
    tern_stream *st;
    uint64_t bytes; /* read, or written (reversed) */
    uint64_t first_ns, last_ns;
    uint64_t send_until_ns;
    bool sending, shut_done, eof, was_reset;
    uint64_t acked;          /* reversed: bytes acknowledged, as of the last tick */
    uint64_t pending;        /* reversed: bytes written whose callback has not run */
    tern_session_stats snap; /* counters, taken while the stream is open */
    bool have_snap;

    /* Latency and game. */
    uint64_t echoed, echo_failed;
} conn;

struct server {
    uv_loop_t *loop;
    tern_endpoint *ep;
    uv_signal_t sigint, sigterm;
    uv_timer_t tick;
    uv_check_t check;
    conn *conns;
    tern_perf_net net;
    bool stopping, once;
    uint8_t rbuf[READ_BUF];
    uint8_t *wbuf; /* WRITE_CHUNK_MAX zeros, allocated on the first reversed test */
};

typedef struct server_opts {
    struct sockaddr_storage listen;
    tern_perf_net net;
    bool once;
} server_opts;

static void usage(FILE *f)
{
    fputs("usage: " TERN_PERF_PROG " server [-l [HOST]:PORT] [OPTIONS]\n"
          "\n"
          "Serves tern-perf clients: each client's first message says what to measure.\n"
          "\n"
          "  -l, --listen ADDR      where to listen (default :5201); port 0 picks a free\n"
          "                         one; the address is printed to stderr once ready\n",
          f);
    fputs(TERN_PERF_NET_HELP, f);
    fputs("  -1, --once             exit after the first test\n"
          "  -h, --help             show this help and exit\n"
          "  -V, --version          show the version and exit\n"
          "\n"
          "--cipher, --psk, --preset, --cc and --mtu apply to every session, so they\n"
          "must match the client's (the client warns when they do not).\n"
          "On SIGINT or SIGTERM it closes every session and exits 0.\n",
          f);
}

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

static double seconds_between(uint64_t a_ns, uint64_t b_ns)
{
    return b_ns > a_ns ? (double)(b_ns - a_ns) / 1e9 : 0.0;
}

/* ---- Results ---------------------------------------------------------- */

/* tern sums only live engines: once the stream is gone, the last snapshot
 * (taken on every tick and before closing it) is the whole one. */
static void snapshot(conn *c)
{
    if (c->mode == TERN_PERF_THROUGHPUT && c->have_snap && !c->st)
        return;
    tern_session_get_stats(c->s, &c->snap);
    c->have_snap = true;
}

static void send_result(conn *c)
{
    if (c->result_sent)
        return;
    c->result_sent = true;
    uint64_t end = now_ns();
    double wall = seconds_between(c->start_ns, end);
    json_t *r = json_pack("{s:s, s:s}", "type", "result", "mode", tern_perf_mode_name(c->mode));
    if (!r)
        return;
    if (c->mode == TERN_PERF_THROUGHPUT) {
        double secs = seconds_between(c->first_ns, c->last_ns);
        json_object_set_new(r, "bytes", json_integer((json_int_t)c->bytes));
        json_object_set_new(r, "seconds", json_real(secs));
        json_object_set_new(r, "reset", json_boolean(c->was_reset));
        printf("%s throughput%s: %s %" PRIu64 " bytes in %.2f s (%.1f Mbit/s)\n", c->peer,
               c->reverse ? " (reverse)" : "", c->reverse ? "sent" : "received", c->bytes, secs,
               secs > 0 ? (double)c->bytes * 8 / secs / 1e6 : 0.0);
    } else {
        json_object_set_new(r, "echoed", json_integer((json_int_t)c->echoed));
        json_object_set_new(r, "echo_failed", json_integer((json_int_t)c->echo_failed));
        printf("%s %s: echoed %" PRIu64 " messages (%" PRIu64 " failed) in %.2f s\n", c->peer,
               tern_perf_mode_name(c->mode), c->echoed, c->echo_failed, wall);
    }
    fflush(stdout);
    json_object_set_new(r, "cpu", tern_perf_cpu_json(&c->cpu0, wall));
    snapshot(c);
    json_object_set_new(r, "session", tern_perf_session_json(&c->snap));
    int rc = tern_perf_send_control(c->s, r);
    if (rc < 0)
        fprintf(stderr, TERN_PERF_PROG ": %s: cannot send the result: %s\n", c->peer,
                tern_strerror(rc));
}

static void send_error(conn *c, const char *msg)
{
    fprintf(stderr, TERN_PERF_PROG ": %s: refused: %s\n", c->peer, msg);
    (void)tern_perf_send_control(c->s, json_pack("{s:s, s:s}", "type", "error", "message", msg));
    (void)tern_session_close(c->s);
}

/* ---- Throughput streams ------------------------------------------------ */

static void on_alloc(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = tern_stream_get_data(st);
    /* Bytes are counted and dropped: one buffer serves every stream. */
    *buf = uv_buf_init((char *)c->sv->rbuf, READ_BUF);
}

/* Graceful once both directions ended; the stream is freed later by tern. */
static void close_stream(conn *c)
{
    if (!c->st)
        return;
    snapshot(c);
    (void)tern_stream_close(c->st, NULL);
    c->st = NULL;
}

static void on_shutdown(tern_stream *st, int status, void *arg)
{
    (void)st;
    conn *c = arg;
    if (status < 0)
        return; /* the session is ending; its close_cb cleans up */
    c->shut_done = true;
    if (c->reverse) {
        /* Every byte was acknowledged: that is the sender's end. */
        c->last_ns = now_ns();
        send_result(c);
    }
    if (c->eof)
        close_stream(c);
}

static void on_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = tern_stream_get_data(st);
    if (n > 0) {
        if (!c->reverse) {
            if (c->bytes == 0)
                c->first_ns = now_ns();
            c->bytes += (uint64_t)n;
            c->last_ns = now_ns();
        }
        return;
    }
    if (n == TERN_ERR_EOF) {
        c->eof = true;
        if (!c->reverse) {
            send_result(c);
            if (tern_stream_shutdown(st, on_shutdown, c) < 0)
                close_stream(c);
        } else if (c->shut_done) {
            close_stream(c);
        }
        return;
    }
    if (n == TERN_ERR_RESET) {
        /* The client cut the test short (a tail too slow to drain): report
         * what got through. */
        c->was_reset = true;
        c->sending = false;
        if (c->reverse)
            c->bytes = c->acked;
        else
            c->last_ns = now_ns();
        /* A reset dropped the stream's engine and its counters: the
         * result takes the last snapshot (from the latest tick). */
        c->st = NULL;
        send_result(c);
        (void)tern_stream_close(st, NULL);
        return;
    }
    /* The session ended: tern frees the stream after its close_cb. */
    c->st = NULL;
}

static void on_write(tern_stream *st, int status, void *arg);

/* Keeps the reversed stream's queue full until the time is up. */
static void fill(conn *c)
{
    while (c->sending && c->st) {
        uint64_t now = now_ns();
        if (now >= c->send_until_ns) {
            c->sending = false;
            if (tern_stream_shutdown(c->st, on_shutdown, c) < 0)
                close_stream(c);
            return;
        }
        if (!tern_perf_may_write(c->s, c->pending, c->sv->net.mtu))
            return;
        uv_buf_t b = uv_buf_init((char *)c->sv->wbuf, (unsigned)c->size);
        int rc = tern_stream_write(c->st, &b, 1, on_write, c);
        if (rc == TERN_ERR_WOULDBLOCK)
            return;
        if (rc < 0) {
            c->sending = false;
            return;
        }
        if (c->first_ns == 0)
            c->first_ns = now;
        c->bytes += c->size;
        c->pending += c->size;
    }
}

static void on_write(tern_stream *st, int status, void *arg)
{
    (void)st;
    conn *c = arg;
    c->pending -= c->size;
    if (status == 0)
        fill(c);
}

static void on_stream(tern_session *s, tern_stream *st)
{
    conn *c = tern_session_get_data(s);
    if (!c->have_request || c->mode != TERN_PERF_THROUGHPUT || c->reverse || c->st) {
        (void)tern_stream_close(st, NULL);
        return;
    }
    c->st = st;
    tern_stream_set_data(st, c);
    if (tern_stream_read_start(st, on_alloc, on_read) < 0)
        close_stream(c);
}

static int start_reverse(conn *c)
{
    if (!c->sv->wbuf)
        c->sv->wbuf = calloc(1, WRITE_CHUNK_MAX);
    if (!c->sv->wbuf)
        return TERN_ERR_NOMEM;
    if (c->size > WRITE_CHUNK_MAX)
        c->size = WRITE_CHUNK_MAX;
    int rc = tern_stream_open(c->s, &c->st);
    if (rc < 0)
        return rc;
    tern_stream_set_data(c->st, c);
    rc = tern_stream_read_start(c->st, on_alloc, on_read);
    if (rc < 0) {
        close_stream(c);
        return rc;
    }
    c->sending = true;
    c->send_until_ns = now_ns() + c->time_ms * UINT64_C(1000000);
    fill(c);
    return 0;
}

/* ---- Control ----------------------------------------------------------- */

static void on_request(conn *c, json_t *req)
{
    if (c->have_request) {
        send_error(c, "a second request on one session");
        return;
    }
    if (tern_perf_json_u64(req, "v", 0) != TERN_PERF_PROTO_VERSION) {
        send_error(c, "unsupported protocol version");
        return;
    }
    tern_perf_mode mode;
    if (tern_perf_mode_from_name(json_string_value(json_object_get(req, "mode")), &mode) < 0) {
        send_error(c, "unknown mode");
        return;
    }
    uint64_t time_ms = tern_perf_json_u64(req, "time_ms", 0);
    uint64_t size = tern_perf_json_u64(req, "size", WRITE_SIZE_DEFAULT);
    if (time_ms == 0 || time_ms > TERN_PERF_TIME_MAX_MS) {
        send_error(c, "time_ms out of range");
        return;
    }
    if (size == 0 || size > WRITE_SIZE_MAX) {
        send_error(c, "size out of range");
        return;
    }
    c->have_request = true;
    c->mode = mode;
    c->reverse = json_is_true(json_object_get(req, "reverse"));
    c->time_ms = time_ms;
    c->size = (size_t)size;
    c->start_ns = now_ns();
    tern_perf_cpu_now(&c->cpu0);

    /* The server's own settings, so the client can warn about a mismatch. */
    const tern_perf_net *net = &c->sv->net;
    int rc = tern_perf_send_control(c->s, json_pack("{s:s, s:i, s:s, s:s, s:s, s:i}", "type",
                                                    "accept", "v", TERN_PERF_PROTO_VERSION,
                                                    "cipher", tern_perf_cipher_name(net->cipher),
                                                    "preset", tern_perf_preset_name(net->preset),
                                                    "cc", net->cc, "mtu", (int)net->mtu));
    if (rc == 0 && mode == TERN_PERF_THROUGHPUT && c->reverse)
        rc = start_reverse(c);
    if (rc < 0) {
        fprintf(stderr, TERN_PERF_PROG ": %s: cannot start the test: %s\n", c->peer,
                tern_strerror(rc));
        (void)tern_session_abort(c->s);
    }
}

static void on_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    conn *c = tern_session_get_data(s);
    if (ch != TERN_PERF_CH_CONTROL) {
        if (!c->have_request || len < TERN_PERF_DATA_HEADER) {
            c->echo_failed++;
            return;
        }
        if (tern_session_send(s, ch, data, len, 0) < 0)
            c->echo_failed++;
        else
            c->echoed++;
        return;
    }
    const char *type = NULL;
    json_t *msg = tern_perf_parse_control(data, len, &type);
    if (!msg) {
        send_error(c, "malformed control message");
        return;
    }
    if (strcmp(type, "request") == 0) {
        on_request(c, msg);
    } else if (strcmp(type, "done") == 0 && c->have_request && c->mode != TERN_PERF_THROUGHPUT) {
        send_result(c);
    } else {
        send_error(c, "unexpected control message");
    }
    json_decref(msg);
}

/* ---- Sessions ---------------------------------------------------------- */

static void stop(server *sv);

static void on_session_close(tern_session *s, int status)
{
    (void)status;
    conn *c = tern_session_get_data(s);
    if (!c)
        return;
    server *sv = c->sv;
    if (c->prev)
        c->prev->next = c->next;
    else
        sv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    bool tested = c->have_request;
    free(c);
    tern_session_set_data(s, NULL);
    if (sv->once && tested && !sv->conns)
        stop(sv);
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    server *sv = tern_endpoint_get_data(ep);
    conn *c = calloc(1, sizeof(*c));
    if (!c || sv->stopping) {
        free(c);
        (void)tern_session_abort(s);
        return;
    }
    c->sv = sv;
    c->s = s;
    c->opened_ms = uv_now(sv->loop);
    struct sockaddr_storage peer;
    if (tern_session_peer_addr(s, &peer) < 0 ||
        tern_cli_format_addr((const struct sockaddr *)&peer, c->peer, sizeof(c->peer)) < 0)
        snprintf(c->peer, sizeof(c->peer), "?");
    c->next = sv->conns;
    if (sv->conns)
        sv->conns->prev = c;
    sv->conns = c;
    tern_session_set_data(s, c);
    tern_session_callbacks cbs = {
        .stream_cb = on_stream, .message_cb = on_message, .close_cb = on_session_close};
    tern_session_set_callbacks(s, &cbs);
}

/* Refills reversed streams: tern says nothing when a full write queue
 * drains, so every loop iteration looks. */
static void on_check(uv_check_t *h)
{
    server *sv = h->data;
    for (conn *c = sv->conns; c; c = c->next) {
        if (c->sending)
            fill(c);
    }
}

/* Ends reversed sends on time when the loop is otherwise idle, and
 * enforces the request timeout. */
static void on_tick(uv_timer_t *t)
{
    server *sv = t->data;
    uint64_t now = uv_now(sv->loop);
    for (conn *c = sv->conns; c; c = c->next) {
        if (c->st)
            snapshot(c);
        if (c->reverse && c->st) {
            size_t queued = tern_stream_write_queue_size(c->st);
            c->acked = c->bytes > queued ? c->bytes - queued : 0;
        }
        if (c->sending)
            fill(c);
        if (!c->have_request && now - c->opened_ms > REQUEST_TIMEOUT_MS) {
            c->opened_ms = UINT64_MAX / 2; /* once */
            fprintf(stderr, TERN_PERF_PROG ": %s: no request, closing\n", c->peer);
            (void)tern_session_abort(c->s);
        }
    }
}

/* ---- Start and stop ----------------------------------------------------- */

static void stop(server *sv)
{
    if (sv->stopping)
        return;
    sv->stopping = true;
    /* Aborts every session: their close_cbs free the conns. */
    (void)tern_endpoint_close(sv->ep, NULL);
    uv_close((uv_handle_t *)&sv->sigint, NULL);
    uv_close((uv_handle_t *)&sv->sigterm, NULL);
    uv_close((uv_handle_t *)&sv->tick, NULL);
    uv_close((uv_handle_t *)&sv->check, NULL);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    stop(sig->data);
}

static int parse_args(int argc, char **argv, server_opts *o)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"once", no_argument, NULL, '1'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        TERN_PERF_NET_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    tern_perf_net_default(&o->net);
    char def[16];
    snprintf(def, sizeof(def), ":%d", TERN_PERF_DEFAULT_PORT);
    (void)tern_cli_parse_hostport(def, &o->listen, NULL);

    opterr = 0;
    int c, idx;
    while ((idx = -1, c = getopt_long(argc, argv, ":l:1hV", longopts, &idx)) != -1) {
        const char *flag = idx >= 0 ? longopts[idx].name : NULL;
        int rc;
        switch (c) {
        case 'l':
            rc = tern_cli_parse_hostport(optarg, &o->listen, NULL);
            if (rc < 0) {
                fprintf(stderr,
                        TERN_PERF_PROG ": invalid value '%s' for --listen: %s (expected "
                                       "[HOST]:PORT or [IPv6]:PORT)\n",
                        optarg, tern_strerror(rc));
                return TERN_PERF_EXIT_USAGE;
            }
            break;
        case '1':
            o->once = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(TERN_PERF_PROG " %s\n", TERN_VERSION_STRING);
            return 0;
        case ':':
            fprintf(stderr,
                    TERN_PERF_PROG ": option '%s' needs a value (try '" TERN_PERF_PROG
                                   " server --help')\n",
                    argv[optind - 1]);
            return TERN_PERF_EXIT_USAGE;
        case '?':
            if (optopt && optopt < 256)
                fprintf(stderr,
                        TERN_PERF_PROG ": unknown option '-%c' (try '" TERN_PERF_PROG
                                       " server --help')\n",
                        optopt);
            else
                fprintf(stderr,
                        TERN_PERF_PROG ": unknown option '%s' (try '" TERN_PERF_PROG
                                       " server --help')\n",
                        argv[optind - 1]);
            return TERN_PERF_EXIT_USAGE;
        default:
            rc = tern_perf_net_option(&o->net, c, flag ? flag : "?", optarg);
            if (rc)
                return rc;
        }
    }
    if (optind < argc) {
        fprintf(stderr,
                TERN_PERF_PROG ": unexpected argument '%s' (try '" TERN_PERF_PROG
                               " server --help')\n",
                argv[optind]);
        return TERN_PERF_EXIT_USAGE;
    }
    return -1;
}

int tern_perf_server_main(int argc, char **argv)
{
    server_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;

    tern_endpoint_config cfg;
    tern_key psk;
    rc = tern_perf_endpoint_config(&o.net, &cfg, &psk);
    if (rc < 0) {
        fprintf(stderr, TERN_PERF_PROG ": cannot set up --cipher %s: %s\n",
                tern_perf_cipher_name(o.net.cipher), tern_strerror(rc));
        return TERN_PERF_EXIT_RUNTIME;
    }

    server *sv = calloc(1, sizeof(*sv));
    uv_loop_t loop;
    if (!sv || uv_loop_init(&loop) != 0) {
        free(sv);
        fprintf(stderr, TERN_PERF_PROG ": out of memory\n");
        return TERN_PERF_EXIT_RUNTIME;
    }
    sv->loop = &loop;
    sv->once = o.once;
    sv->net = o.net;
    char addr[TERN_CLI_ADDR_MAX];
    rc = tern_endpoint_new(&sv->ep, &loop, (const struct sockaddr *)&o.listen, &cfg);
    memset(&psk, 0, sizeof(psk)); /* the endpoint has its copy */
    if (rc < 0) {
        (void)tern_cli_format_addr((const struct sockaddr *)&o.listen, addr, sizeof(addr));
        fprintf(stderr, TERN_PERF_PROG ": cannot listen on %s: %s\n", addr, tern_strerror(rc));
        uv_loop_close(&loop);
        free(sv);
        return TERN_PERF_EXIT_RUNTIME;
    }
    tern_endpoint_set_data(sv->ep, sv);
    (void)tern_endpoint_listen(sv->ep, on_accept);

    uv_signal_init(&loop, &sv->sigint);
    uv_signal_init(&loop, &sv->sigterm);
    sv->sigint.data = sv->sigterm.data = sv;
    uv_signal_start(&sv->sigint, on_signal, SIGINT);
    uv_signal_start(&sv->sigterm, on_signal, SIGTERM);
    uv_timer_init(&loop, &sv->tick);
    sv->tick.data = sv;
    uv_timer_start(&sv->tick, on_tick, TICK_MS, TICK_MS);
    uv_check_init(&loop, &sv->check);
    sv->check.data = sv;
    uv_check_start(&sv->check, on_check);

    struct sockaddr_storage bound;
    if (tern_endpoint_local_addr(sv->ep, &bound) == 0 &&
        tern_cli_format_addr((const struct sockaddr *)&bound, addr, sizeof(addr)) == 0)
        fprintf(stderr, TERN_PERF_PROG ": listening on %s (cipher %s, preset %s, cc %s)\n", addr,
                tern_perf_cipher_name(o.net.cipher), tern_perf_preset_name(o.net.preset), o.net.cc);

    uv_run(&loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&loop);
    free(sv->wbuf);
    free(sv);
    return rc == 0 ? 0 : TERN_PERF_EXIT_RUNTIME;
}
