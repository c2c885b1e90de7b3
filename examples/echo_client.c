/* echo_client: connects to echo_server, sends lines and prints what comes
 * back, checking that it is exactly what was sent.
 *
 *   echo_client --server-key KEY [options] HOST:PORT [HOST:PORT ...]
 *
 * Several addresses are tried in order (failover): tern moves to the next
 * one when an address does not answer the handshake in time. Lines come
 * from standard input (a terminal, a pipe or a file), or --count N sends
 * --text N times. By default each line goes on one reliable stream;
 * --messages sends each line as a message on a reliable channel instead.
 * Standard output carries only the echo; what the client does is told on
 * standard error. Exit status: 0 when everything came back and the session
 * closed gracefully, 1 on a failure, 2 for a usage error.
 *
 * The first SIGINT (Ctrl-C) stops reading and ends gracefully (what was
 * sent is still echoed); a second one aborts the session.
 *
 * What to copy from here: the client's endpoint and keys, connecting with
 * failover, a stream's life (open, write with buffers that outlive the
 * call, shut down, read to the end, close), a send window that keeps memory
 * bounded, and the graceful session close. */
#include <arpa/inet.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/tern.h>

#define PROG "echo_client"
#define EXIT_USAGE 2
#define MAX_SERVERS 8

/* The channel table: the same as echo_server.c's (both peers must agree). */
#define ECHO_CHANNEL 0

/* At most this many bytes are sent and not yet echoed. It bounds our memory
 * (we keep them to check the echo) and the server's queues, and it is the
 * simplest form of backpressure: stop producing until the peer catches up. */
#define WINDOW (64U << 10)
/* Longest line sent as one piece; longer lines go in several. */
#define LINE_MAX_BYTES 4096U

typedef struct options {
    tern_public_key server_key;
    bool have_key;
    struct sockaddr_storage servers[MAX_SERVERS];
    size_t n_servers;
    unsigned long count; /* 0: read standard input */
    const char *text;
    bool messages;
    unsigned long handshake_timeout_ms;
} options;

/* Standard input, line by line. libuv reads a terminal (uv_tty_t) or a pipe
 * (uv_pipe_t) as a stream; a regular file cannot be polled, so it is read
 * with uv_fs_read() on libuv's thread pool. */
typedef struct input {
    uv_handle_type kind; /* UV_TTY, UV_NAMED_PIPE or UV_FILE */
    union {
        uv_tty_t tty;
        uv_pipe_t pipe;
    } h;
    uv_fs_t req;
    bool open, reading, fs_busy, eof;
    char buf[LINE_MAX_BYTES];
    size_t len;
} input;

typedef struct client {
    options opt;
    uv_loop_t *loop;
    tern_endpoint *ep;
    tern_session *s;
    tern_stream *st;
    uv_signal_t sigint;
    int signals;
    input in;

    /* Sent and not yet echoed, oldest first: a ring of WINDOW bytes. */
    uint8_t ring[WINDOW];
    size_t ring_head, ring_len;
    uint64_t sent, echoed;
    unsigned long lines_sent;

    uint64_t connect_started;
    bool connected, input_done, shut, got_eof, closing, mismatch;
    int exit_code;
} client;

static void format_addr(const struct sockaddr_storage *a, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)a;
        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)a;
        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
    }
}

static void pump(client *c);
static void maybe_finish(client *c);

/* ---- sending, and checking the echo ---- */

static void on_written(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)status; /* < 0 only if the stream or session ended; reported there */
    free(arg);
}

/* Sends one line (or piece of one) and remembers it for the check. The
 * caller made sure it fits in the window. */
static int send_bytes(client *c, const char *data, size_t len)
{
    int rc;
    if (c->opt.messages) {
        /* Messages are copied by tern before the call returns. */
        rc = tern_session_send(c->s, ECHO_CHANNEL, data, len, 0);
    } else {
        /* Stream writes are not copied: the buffer must live until
         * on_written(), so give tern a copy of its own. */
        char *copy = malloc(len);
        if (!copy)
            return TERN_ERR_NOMEM;
        memcpy(copy, data, len);
        uv_buf_t b = uv_buf_init(copy, (unsigned)len);
        rc = tern_stream_write(c->st, &b, 1, on_written, copy);
        if (rc < 0)
            free(copy);
    }
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < len; i++)
        c->ring[(c->ring_head + c->ring_len + i) % WINDOW] = (uint8_t)data[i];
    c->ring_len += len;
    c->sent += len;
    return 0;
}

static bool window_has_room(const client *c, size_t len)
{
    return c->ring_len + len <= WINDOW;
}

/* Echoed bytes: print them and check them against what we sent. */
static void got_echo(client *c, const char *data, size_t len)
{
    if (len > c->ring_len) {
        c->mismatch = true;
        len = c->ring_len;
    }
    for (size_t i = 0; i < len; i++) {
        if ((uint8_t)data[i] != c->ring[(c->ring_head + i) % WINDOW])
            c->mismatch = true;
    }
    c->ring_head = (c->ring_head + len) % WINDOW;
    c->ring_len -= len;
    c->echoed += len;
    fwrite(data, 1, len, stdout);
    fflush(stdout); /* an interactive user wants the line now */
    if (c->mismatch) {
        fprintf(stderr, PROG ": the echo differs from what was sent\n");
        (void)tern_session_abort(c->s);
        return;
    }
    pump(c); /* the window has room again */
}

/* ---- standard input ---- */

static void input_stop(client *c)
{
    input *in = &c->in;
    if ((in->kind == UV_TTY || in->kind == UV_NAMED_PIPE) && in->reading)
        uv_read_stop((uv_stream_t *)&in->h);
    in->reading = false;
}

static void input_close(client *c)
{
    input *in = &c->in;
    input_stop(c);
    if (in->open && in->kind == UV_TTY)
        uv_tty_reset_mode(); /* the terminal as we found it */
    if (in->open && in->kind != UV_FILE)
        uv_close((uv_handle_t *)&in->h, NULL);
    in->open = false;
}

static void take_lines(client *c);

static void stdin_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    client *c = h->data;
    *buf = uv_buf_init(c->in.buf + c->in.len, (unsigned)(sizeof(c->in.buf) - c->in.len));
}

static void stdin_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    client *c = h->data;
    if (nread > 0)
        c->in.len += (size_t)nread;
    else if (nread < 0) {
        if (nread != UV_EOF)
            fprintf(stderr, PROG ": standard input: %s\n", uv_strerror((int)nread));
        c->in.eof = true;
        input_stop(c);
    }
    take_lines(c);
}

static void file_read_done(uv_fs_t *req)
{
    client *c = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    c->in.fs_busy = false;
    if (!c->in.open)
        return; /* finished while this read ran */
    if (n > 0) {
        c->in.len += (size_t)n;
    } else {
        if (n < 0)
            fprintf(stderr, PROG ": standard input: %s\n", uv_strerror((int)n));
        c->in.eof = true;
    }
    take_lines(c);
}

/* Reads more when there is room for it. */
static void input_resume(client *c)
{
    input *in = &c->in;
    if (in->eof || !in->open || in->len == sizeof(in->buf))
        return;
    if (in->kind == UV_FILE) {
        if (in->fs_busy)
            return;
        uv_buf_t b = uv_buf_init(in->buf + in->len, (unsigned)(sizeof(in->buf) - in->len));
        in->req.data = c;
        /* Offset -1: read from the current position, like read(2). */
        int rc = uv_fs_read(c->loop, &in->req, 0, &b, 1, -1, file_read_done);
        if (rc == 0) {
            in->fs_busy = true;
        } else {
            fprintf(stderr, PROG ": standard input: %s\n", uv_strerror(rc));
            (void)tern_session_abort(c->s);
        }
        return;
    }
    if (!in->reading && uv_read_start((uv_stream_t *)&in->h, stdin_alloc, stdin_read) == 0)
        in->reading = true;
}

/* Sends every whole line that fits in the window; a line longer than the
 * buffer goes in pieces, and the last one may lack its newline. */
static void take_lines(client *c)
{
    input *in = &c->in;
    if (c->input_done || c->closing || !c->s)
        return; /* interrupted or finished: read no more */
    while (in->len > 0) {
        char *nl = memchr(in->buf, '\n', in->len);
        size_t n = nl ? (size_t)(nl - in->buf) + 1 : in->len;
        if (!nl && !in->eof && in->len < sizeof(in->buf))
            break; /* the rest of the line is still to come */
        if (!window_has_room(c, n))
            break; /* wait for the echo to catch up */
        int rc = send_bytes(c, in->buf, n);
        if (rc < 0) {
            fprintf(stderr, PROG ": send failed: %s\n", tern_strerror(rc));
            (void)tern_session_abort(c->s);
            return;
        }
        c->lines_sent++;
        memmove(in->buf, in->buf + n, in->len - n);
        in->len -= n;
    }
    if (in->eof && in->len == 0) {
        c->input_done = true;
        maybe_finish(c);
        return;
    }
    /* Backpressure reaches the source: stop reading while the buffer is
     * full (the window is), read again once the echo made room. */
    if (in->len == sizeof(in->buf))
        input_stop(c);
    else
        input_resume(c);
}

static int input_open(client *c)
{
    input *in = &c->in;
    in->kind = uv_guess_handle(0);
    int rc;
    if (in->kind == UV_TTY) {
        rc = uv_tty_init(c->loop, &in->h.tty, 0, 1);
    } else if (in->kind == UV_NAMED_PIPE) {
        rc = uv_pipe_init(c->loop, &in->h.pipe, 0);
        if (rc == 0 && (rc = uv_pipe_open(&in->h.pipe, 0)) < 0)
            uv_close((uv_handle_t *)&in->h.pipe, NULL);
    } else if (in->kind == UV_FILE) {
        rc = 0;
    } else {
        fprintf(stderr, PROG ": standard input is neither a terminal, a pipe nor a file\n");
        return -1;
    }
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot read standard input: %s\n", uv_strerror(rc));
        return -1;
    }
    ((uv_handle_t *)&in->h)->data = c;
    in->open = true;
    return 0;
}

/* ---- the flow of the program ---- */

/* Produces input while the window has room: --count lines, or stdin. */
static void pump(client *c)
{
    if (c->input_done || c->closing)
        return;
    if (c->opt.count == 0) {
        take_lines(c);
        return;
    }
    char line[LINE_MAX_BYTES + 2];
    int n = snprintf(line, sizeof(line), "%s\n", c->opt.text);
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    while (c->lines_sent < c->opt.count && window_has_room(c, len)) {
        int rc = send_bytes(c, line, len);
        if (rc < 0) {
            fprintf(stderr, PROG ": send failed: %s\n", tern_strerror(rc));
            (void)tern_session_abort(c->s);
            return;
        }
        c->lines_sent++;
    }
    if (c->lines_sent == c->opt.count) {
        c->input_done = true;
        maybe_finish(c);
    }
}

static void on_stream_closed(tern_stream *st)
{
    client *c = tern_session_get_data(tern_stream_session(st));
    c->st = NULL;
    /* Graceful: waits until the server acknowledged everything, tells it,
     * then close_cb runs with status 0. */
    if (!c->closing) {
        c->closing = true;
        (void)tern_session_close(c->s);
    }
}

static void on_shutdown(tern_stream *st, int status, void *arg)
{
    client *c = arg;
    (void)st;
    if (status == 0) {
        c->shut = true;
        maybe_finish(c);
    }
}

/* Ends things once there is nothing left to send or to wait for. */
static void maybe_finish(client *c)
{
    if (!c->input_done || c->closing || !c->connected)
        return;
    if (c->opt.messages) {
        if (c->ring_len == 0) {
            c->closing = true;
            (void)tern_session_close(c->s);
        }
        return;
    }
    /* Streams: tell the server we are done (its end of stream follows its
     * last echo); close once both ends are done, so nothing is cut off. */
    if (!c->st)
        return;
    if (!c->shut && tern_stream_shutdown(c->st, on_shutdown, c) == TERN_ERR_STATE)
        return; /* already asked; on_shutdown() comes back here */
    if (c->shut && c->got_eof)
        (void)tern_stream_close(c->st, on_stream_closed);
}

static void on_read(tern_stream *st, ssize_t nread, const uv_buf_t *buf)
{
    client *c = tern_session_get_data(tern_stream_session(st));
    if (nread > 0) {
        got_echo(c, buf->base, (size_t)nread);
    } else if (nread == TERN_ERR_EOF) {
        c->got_eof = true;
        if (c->ring_len > 0) {
            fprintf(stderr, PROG ": the server ended the stream with %zu bytes not echoed\n",
                    c->ring_len);
            c->mismatch = true;
            (void)tern_session_abort(c->s);
        } else {
            maybe_finish(c);
        }
    } else if (nread < 0) {
        /* Reset, or the session ended (close_cb says why). */
        if (nread != TERN_ERR_CANCELED && c->s)
            fprintf(stderr, PROG ": stream ended: %s\n", tern_strerror((int)nread));
    }
    free(buf->base);
}

static void alloc_cb(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)st;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void on_connect(tern_session *s, int status)
{
    client *c = tern_session_get_data(s);
    if (status < 0) {
        /* close_cb follows and ends the program. */
        fprintf(stderr, PROG ": could not connect to any of %zu address(es): %s\n",
                c->opt.n_servers, tern_strerror(status));
        return;
    }
    c->connected = true;
    struct sockaddr_storage peer;
    char addr[64] = "?";
    if (tern_session_peer_addr(s, &peer) == 0)
        format_addr(&peer, addr, sizeof(addr));
    fprintf(stderr, PROG ": connected to %s in %llu ms (session %08x)\n", addr,
            (unsigned long long)(uv_now(c->loop) - c->connect_started), tern_session_id(s));
    if (!c->opt.messages) {
        int rc = tern_stream_open(s, &c->st);
        if (rc == 0)
            rc = tern_stream_read_start(c->st, alloc_cb, on_read);
        if (rc < 0) {
            fprintf(stderr, PROG ": cannot open a stream: %s\n", tern_strerror(rc));
            (void)tern_session_abort(s);
            return;
        }
    }
    if (c->opt.count == 0 && input_open(c) < 0) {
        (void)tern_session_abort(s);
        return;
    }
    pump(c);
}

static void on_message(tern_session *s, uint32_t channel, const uint8_t *data, size_t len)
{
    client *c = tern_session_get_data(s);
    if (channel != ECHO_CHANNEL)
        return;
    got_echo(c, (const char *)data, len);
    maybe_finish(c);
}

static void on_session_closed(tern_session *s, int status)
{
    client *c = tern_session_get_data(s);
    bool ok = status == 0 && c->input_done && c->ring_len == 0 && !c->mismatch;
    if (c->connected)
        fprintf(stderr, PROG ": %s: sent %llu bytes (%lu lines), %llu came back%s\n",
                status == 0 ? "closed" : tern_strerror(status), (unsigned long long)c->sent,
                c->lines_sent, (unsigned long long)c->echoed, ok ? ", all of it" : "");
    c->exit_code = ok ? 0 : 1;
    c->s = NULL;
    c->st = NULL; /* freed with the session */
    /* The session is freed after this returns. Close everything else so
     * that uv_run() returns. */
    input_close(c);
    (void)tern_endpoint_close(c->ep, NULL);
    uv_close((uv_handle_t *)&c->sigint, NULL);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    client *c = sig->data;
    if (!c->s)
        return;
    if (++c->signals > 1 || !c->connected) {
        fprintf(stderr, PROG ": interrupted, aborting\n");
        (void)tern_session_abort(c->s);
        return;
    }
    fprintf(stderr, PROG ": interrupted, finishing what was sent (Ctrl-C again to abort)\n");
    input_stop(c);
    c->in.len = 0;
    c->input_done = true;
    maybe_finish(c);
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --server-key KEY [options] HOST:PORT [HOST:PORT ...]\n"
               "\n"
               "Addresses are numeric (127.0.0.1:7777, [::1]:7777) and tried in order.\n"
               "\n"
               "  -k, --server-key KEY        the server's public key, base64 (echo_server\n"
               "                              prints it)\n"
               "  -K, --server-key-file FILE  or read it from FILE (tern-keygen pubkey)\n"
               "  -n, --count N               send --text N times instead of reading standard\n"
               "                              input\n"
               "  -t, --text TEXT             the line --count sends (default \"hello, tern\")\n"
               "  -m, --messages              send lines as channel messages, not on a stream\n"
               "      --handshake-timeout MS  time given to each address (default 2000)\n"
               "  -h, --help                  show this help\n");
}

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, PROG ": %s '%s' (try --help)\n", msg, arg);
    return EXIT_USAGE;
}

/* Returns -1 to go on, or the exit status. */
static int parse_args(int argc, char **argv, options *o)
{
    static const struct option opts[] = {
        {"server-key", required_argument, NULL, 'k'},
        {"server-key-file", required_argument, NULL, 'K'},
        {"count", required_argument, NULL, 'n'},
        {"text", required_argument, NULL, 't'},
        {"messages", no_argument, NULL, 'm'},
        {"handshake-timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char err[512];
    char *end;
    int c;

    memset(o, 0, sizeof(*o));
    o->text = "hello, tern";
    o->handshake_timeout_ms = 2000;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":k:K:n:t:mh", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            if (tern_public_key_from_base64(&o->server_key, optarg, strlen(optarg)) < 0)
                return usage_error("--server-key is not a base64 key:", optarg);
            o->have_key = true;
            break;
        case 'K':
            if (tern_keyfile_read_public(optarg, &o->server_key, err, sizeof(err)) < 0) {
                fprintf(stderr, PROG ": %s\n", err);
                return 1;
            }
            o->have_key = true;
            break;
        case 'n':
            o->count = strtoul(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end || o->count == 0 || o->count > 10000000)
                return usage_error("--count wants a number from 1 to 10000000, not", optarg);
            break;
        case 't':
            if (strlen(optarg) > LINE_MAX_BYTES - 1 || strchr(optarg, '\n'))
                return usage_error("--text must be one line of at most 4095 bytes:", optarg);
            o->text = optarg;
            break;
        case 'm':
            o->messages = true;
            break;
        case 'T':
            o->handshake_timeout_ms = strtoul(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end || o->handshake_timeout_ms == 0 ||
                o->handshake_timeout_ms > 600000)
                return usage_error("--handshake-timeout wants milliseconds (1..600000), not",
                                   optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return usage_error("this option needs a value:", argv[optind - 1]);
        default:
            return usage_error("unknown option", argv[optind - 1]);
        }
    }
    if (!o->have_key) {
        fprintf(stderr, PROG ": --server-key or --server-key-file is required (try --help)\n");
        return EXIT_USAGE;
    }
    if (optind == argc) {
        fprintf(stderr, PROG ": no server address given (try --help)\n");
        return EXIT_USAGE;
    }
    for (; optind < argc; optind++) {
        if (o->n_servers == MAX_SERVERS)
            return usage_error("too many addresses, from", argv[optind]);
        struct sockaddr_storage *a = &o->servers[o->n_servers];
        if (tern_sockaddr_parse(argv[optind], a) < 0)
            return usage_error("not a numeric IP:PORT address:", argv[optind]);
        /* One socket serves every address, so they share its family. */
        if (a->ss_family != o->servers[0].ss_family)
            return usage_error("addresses must all be IPv4 or all IPv6:", argv[optind]);
        o->n_servers++;
    }
    return -1;
}

int main(int argc, char **argv)
{
    client *c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    int rc = parse_args(argc, argv, &c->opt);
    if (rc >= 0) {
        free(c);
        return rc;
    }

    /* A client brings the server's public key (NK) and the same channel
     * table as the server. handshake_timeout_ms is per address: after it,
     * tern tries the next one. */
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.noise.server_public = &c->opt.server_key;
    cfg.handshake_timeout_ms = (uint32_t)c->opt.handshake_timeout_ms;
    /* Resend a lost handshake packet a few times within that time. */
    cfg.handshake_retry_ms = cfg.handshake_timeout_ms / 4 + 1;
    cfg.n_channels = 1;
    cfg.channels[ECHO_CHANNEL] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .priority = 0, .weight = 1};

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, PROG ": cannot start the event loop\n");
        free(c);
        return 1;
    }
    c->loop = &loop;
    c->exit_code = 1;
    /* Any local port, of the servers' family. */
    struct sockaddr_storage any;
    (void)tern_sockaddr_parse(c->opt.servers[0].ss_family == AF_INET6 ? "[::]:0" : "0.0.0.0:0",
                              &any);
    rc = tern_endpoint_new(&c->ep, &loop, (const struct sockaddr *)&any, &cfg);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot open a socket: %s\n", tern_strerror(rc));
        uv_loop_close(&loop);
        free(c);
        return 1;
    }

    const struct sockaddr *addrs[MAX_SERVERS];
    for (size_t i = 0; i < c->opt.n_servers; i++)
        addrs[i] = (const struct sockaddr *)&c->opt.servers[i];
    tern_session_callbacks cbs = {
        .connect_cb = on_connect, .message_cb = on_message, .close_cb = on_session_closed};
    c->connect_started = uv_now(&loop);
    rc = tern_endpoint_connect(c->ep, addrs, c->opt.n_servers, 0, &cbs, &c->s);
    if (rc < 0) {
        /* A failed call never runs its callbacks: clean up here. */
        fprintf(stderr, PROG ": cannot connect: %s\n", tern_strerror(rc));
        (void)tern_endpoint_close(c->ep, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        free(c);
        return 1;
    }
    /* Set before the loop runs, so every callback finds it. */
    tern_session_set_data(c->s, c);

    uv_signal_init(&loop, &c->sigint);
    c->sigint.data = c;
    uv_signal_start(&c->sigint, on_signal, SIGINT);

    char local[64], first[64];
    struct sockaddr_storage bound;
    (void)tern_endpoint_local_addr(c->ep, &bound);
    format_addr(&bound, local, sizeof(local));
    format_addr(&c->opt.servers[0], first, sizeof(first));
    fprintf(stderr, PROG ": bound to %s, connecting to %s%s\n", local, first,
            c->opt.n_servers > 1 ? " (then the other addresses)" : "");

    uv_run(&loop, UV_RUN_DEFAULT);
    rc = c->exit_code;
    if (uv_loop_close(&loop) != 0)
        rc = 1;
    free(c);
    return rc;
}
