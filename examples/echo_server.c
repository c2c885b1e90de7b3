/* echo_server: the smallest useful tern server. It accepts encrypted
 * sessions (Noise NK: clients must know the server's public key, players
 * stay anonymous), echoes every byte of every stream a client opens, and
 * echoes every channel message back on the channel it came on.
 *
 *   echo_server [--listen HOST:PORT] [--key FILE]
 *
 * Without --key a new key pair is made at every start; with --key FILE the
 * private key is read from FILE, or made and saved there (mode 0600) if FILE
 * does not exist yet, so that the public key clients are given stays the
 * same across restarts. The public key is printed in base64 for
 * echo_client's --server-key. SIGINT or SIGTERM closes every session and
 * exits with status 0.
 *
 * What to copy from here: the endpoint set-up, the accept callback, the
 * stream echo with flow control (stop reading while our own writes pile
 * up), the order in which a stream is ended and closed, and the shutdown on
 * a signal. Everything runs on one libuv loop, in one thread. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <tern/tern.h>

#define PROG "echo_server"
#define EXIT_USAGE 2

/* The channel table. echo_client.c sets the same one: both peers must
 * configure identical tables, since a channel is only a number on the wire. */
#define ECHO_CHANNEL 0

/* Stream flow control: a client can send faster than it reads its echo. We
 * stop reading a stream while more than PAUSE_BYTES of our echo wait to be
 * handed to the engine, and read again below RESUME_BYTES. Without this, a
 * client that never reads would make us queue without limit. */
#define PAUSE_BYTES (1U << 20)
#define RESUME_BYTES (256U << 10)

typedef struct server {
    uv_loop_t *loop;
    tern_endpoint *ep;
    uv_signal_t sigint, sigterm;
    bool stopping;
    uint64_t sessions;
} server;

/* Per session: counters for the goodbye line. */
typedef struct peer {
    char addr[64];
    uint32_t streams;
    uint64_t stream_bytes, messages, echo_failed;
} peer;

/* Per stream: the echo bytes not yet handed to the engine. */
typedef struct echo_stream {
    peer *p;
    size_t pending;
    bool paused;
} echo_stream;

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

/* Secrets should not outlive their use; a volatile pointer keeps the
 * compiler from dropping the stores. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* ---- keys ---- */

/* The server's static key pair: from path, or new (and saved to path when
 * one is given and no file is there yet). Prints the reason on failure. */
static int load_or_create_key(const char *path, tern_keypair *kp)
{
    char err[512];
    struct stat sb;
    int rc;

    if (path && stat(path, &sb) == 0) {
        tern_key secret;
        bool insecure = false;
        rc = tern_keyfile_read_secret(path, &secret, 0, &insecure, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, PROG ": %s\n", err);
            return rc;
        }
        if (insecure) /* loaded, but say so: others can read the key */
            fprintf(stderr, PROG ": warning: %s\n", err);
        tern_keypair_from_secret(kp, &secret);
        wipe(&secret, sizeof(secret));
        fprintf(stderr, PROG ": private key read from %s\n", path);
        return 0;
    }
    if (path && errno != ENOENT) {
        fprintf(stderr, PROG ": cannot use key file %s: %s\n", path, strerror(errno));
        return TERN_ERR_IO;
    }
    rc = tern_keypair_generate(kp);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot generate a key: %s\n", tern_strerror(rc));
        return rc;
    }
    if (!path) {
        fprintf(stderr, PROG ": new key pair for this run (use --key FILE to keep one)\n");
        return 0;
    }
    rc = tern_keyfile_write_secret(path, &kp->secret, 0, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return rc;
    }
    fprintf(stderr, PROG ": new private key saved to %s (mode 0600)\n", path);
    return 0;
}

/* ---- streams ---- */

static void alloc_cb(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)st;
    /* Returning no memory (base NULL) just pauses the stream; tern then
     * waits for tern_stream_read_start() instead of failing. */
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void on_read(tern_stream *st, ssize_t nread, const uv_buf_t *buf);

static void on_echo_written(tern_stream *st, int status, void *arg)
{
    echo_stream *es = tern_stream_get_data(st);
    uv_buf_t *b = arg;
    es->pending -= b->len;
    free(b->base);
    free(b);
    /* status < 0: the stream or session ended first; the read side hears
     * of it too, so there is nothing more to do here. */
    if (status == 0 && es->paused && es->pending <= RESUME_BYTES) {
        es->paused = false;
        (void)tern_stream_read_start(st, alloc_cb, on_read);
    }
}

static void on_stream_closed(tern_stream *st)
{
    /* The last callback for this stream: its state can go. */
    free(tern_stream_get_data(st));
}

static void on_shutdown(tern_stream *st, int status, void *arg)
{
    (void)status;
    (void)arg;
    /* Our end of stream is acknowledged (status 0), or the session ended
     * (status < 0): either way no write is still queued, so closing now
     * loses nothing. Closing before this point would drop unsent echo. */
    (void)tern_stream_close(st, on_stream_closed);
}

static void on_read(tern_stream *st, ssize_t nread, const uv_buf_t *buf)
{
    echo_stream *es = tern_stream_get_data(st);
    if (nread > 0) {
        /* Echo the very buffer we were given: tern_stream_write() does not
         * copy, so it must stay valid until on_echo_written() frees it. */
        uv_buf_t *out = malloc(sizeof(*out));
        if (!out) {
            free(buf->base);
            (void)tern_stream_close(st, on_stream_closed); /* resets it */
            return;
        }
        *out = uv_buf_init(buf->base, (unsigned)nread);
        int rc = tern_stream_write(st, out, 1, on_echo_written, out);
        if (rc < 0) {
            fprintf(stderr, PROG ": stream %u: write failed: %s\n", tern_stream_id(st),
                    tern_strerror(rc));
            free(buf->base);
            free(out);
            (void)tern_stream_close(st, on_stream_closed);
            return;
        }
        es->pending += out->len;
        es->p->stream_bytes += out->len;
        if (es->pending > PAUSE_BYTES) {
            es->paused = true;
            (void)tern_stream_read_stop(st);
        }
        return;
    }
    free(buf->base);
    if (nread == TERN_ERR_EOF) {
        /* The client is done sending. Our end of stream goes out after the
         * echo already queued; we close once it is acknowledged. */
        if (tern_stream_shutdown(st, on_shutdown, NULL) < 0)
            (void)tern_stream_close(st, on_stream_closed);
        return;
    }
    /* Reset by the client, or the session ended: close at once (a reset
     * for anything still queued). */
    (void)tern_stream_close(st, on_stream_closed);
}

static void on_stream(tern_session *s, tern_stream *st)
{
    peer *p = tern_session_get_data(s);
    echo_stream *es = calloc(1, sizeof(*es));
    if (!es) {
        (void)tern_stream_close(st, NULL);
        return;
    }
    es->p = p;
    p->streams++;
    tern_stream_set_data(st, es);
    if (tern_stream_read_start(st, alloc_cb, on_read) < 0)
        (void)tern_stream_close(st, on_stream_closed);
}

/* ---- sessions ---- */

static void on_message(tern_session *s, uint32_t channel, const uint8_t *data, size_t len)
{
    peer *p = tern_session_get_data(s);
    p->messages++;
    /* data is valid only during this call; tern_session_send() copies. */
    int rc = tern_session_send(s, channel, data, len, 0);
    if (rc < 0 && p->echo_failed++ == 0)
        fprintf(stderr, PROG ": %s: cannot echo a message: %s (counted)\n", p->addr,
                tern_strerror(rc));
}

static void on_session_closed(tern_session *s, int status)
{
    peer *p = tern_session_get_data(s);
    tern_session_stats st;
    tern_session_get_stats(s, &st);
    /* EOF: the client closed the session gracefully; RESET: it aborted. */
    fprintf(stderr,
            PROG ": %s left (%s): %u streams, %llu bytes and %llu messages echoed, "
                 "%llu datagrams in, %llu out, rtt %u ms\n",
            p->addr,
            status == TERN_ERR_EOF     ? "closed by the client"
            : status == TERN_ERR_RESET ? "reset by the client"
                                       : tern_strerror(status),
            p->streams, (unsigned long long)p->stream_bytes, (unsigned long long)p->messages,
            (unsigned long long)st.dgrams_in, (unsigned long long)st.dgrams_out, st.srtt_ms);
    free(p);
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    server *sv = tern_endpoint_get_data(ep);
    peer *p = calloc(1, sizeof(*p));
    if (!p) {
        (void)tern_session_abort(s);
        return;
    }
    struct sockaddr_storage addr;
    if (tern_session_peer_addr(s, &addr) == 0)
        format_addr(&addr, p->addr, sizeof(p->addr));
    sv->sessions++;
    /* Callbacks must be set inside the accept callback. */
    tern_session_set_data(s, p);
    tern_session_callbacks cbs = {
        .stream_cb = on_stream, .message_cb = on_message, .close_cb = on_session_closed};
    tern_session_set_callbacks(s, &cbs);
    fprintf(stderr, PROG ": %s joined (session %08x)\n", p->addr, tern_session_id(s));
}

/* ---- start and stop ---- */

static void on_signal(uv_signal_t *sig, int signum)
{
    server *sv = sig->data;
    if (sv->stopping)
        return;
    sv->stopping = true;
    fprintf(stderr, PROG ": %s, closing %llu session(s) served\n",
            signum == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)sv->sessions);
    /* Aborts every session (each peer is told, and each close_cb runs),
     * then closes the socket. Once the signal handles are closed too,
     * nothing is left on the loop and uv_run() returns. */
    (void)tern_endpoint_close(sv->ep, NULL);
    uv_close((uv_handle_t *)&sv->sigint, NULL);
    uv_close((uv_handle_t *)&sv->sigterm, NULL);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [--listen HOST:PORT] [--key FILE]\n"
               "\n"
               "  -l, --listen HOST:PORT  numeric address to listen on (default 127.0.0.1:7777;\n"
               "                          port 0 picks a free one, printed once ready)\n"
               "  -k, --key FILE          the server's private key; made and saved there\n"
               "                          (mode 0600) if FILE does not exist; without it a\n"
               "                          new key is made for this run\n"
               "  -h, --help              show this help\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen = "127.0.0.1:7777", *key_path = NULL;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":l:k:h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            listen = optarg;
            break;
        case 'k':
            key_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            fprintf(stderr, PROG ": option '%s' needs a value\n", argv[optind - 1]);
            return EXIT_USAGE;
        default:
            fprintf(stderr, PROG ": unknown option '%s' (try --help)\n", argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (try --help)\n", argv[optind]);
        return EXIT_USAGE;
    }
    struct sockaddr_storage bind_addr;
    if (tern_sockaddr_parse(listen, &bind_addr) < 0) {
        fprintf(stderr, PROG ": invalid --listen '%s' (expected IP:PORT or [IPv6]:PORT)\n", listen);
        return EXIT_USAGE;
    }

    if (tern_crypto_init() < 0) {
        fprintf(stderr, PROG ": libsodium cannot start (no random source?)\n");
        return 1;
    }
    tern_keypair kp;
    if (load_or_create_key(key_path, &kp) < 0)
        return 1;

    /* The defaults are Noise NK with ChaChaPoly and the fast3 KCP preset;
     * a server only has to bring its key (and the channel table). */
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.noise.static_key = &kp;
    cfg.n_channels = 1;
    cfg.channels[ECHO_CHANNEL] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .priority = 0, .weight = 1};

    server sv;
    memset(&sv, 0, sizeof(sv));
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, PROG ": cannot start the event loop\n");
        return 1;
    }
    sv.loop = &loop;
    int rc = tern_endpoint_new(&sv.ep, &loop, (const struct sockaddr *)&bind_addr, &cfg);
    /* The endpoint copied the key: ours can go. */
    tern_public_key pub = kp.pub;
    wipe(&kp, sizeof(kp));
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot listen on %s: %s\n", listen, tern_strerror(rc));
        uv_loop_close(&loop);
        return 1;
    }
    tern_endpoint_set_data(sv.ep, &sv);
    (void)tern_endpoint_listen(sv.ep, on_accept);

    uv_signal_init(&loop, &sv.sigint);
    uv_signal_init(&loop, &sv.sigterm);
    sv.sigint.data = sv.sigterm.data = &sv;
    uv_signal_start(&sv.sigint, on_signal, SIGINT);
    uv_signal_start(&sv.sigterm, on_signal, SIGTERM);

    /* With port 0 the OS picked the port: ask the endpoint which. */
    char b64[TERN_KEY_BASE64_LEN + 1], addr[64];
    struct sockaddr_storage bound;
    tern_public_key_to_base64(&pub, b64);
    (void)tern_endpoint_local_addr(sv.ep, &bound);
    format_addr(&bound, addr, sizeof(addr));
    fprintf(stderr, PROG ": public key %s\n", b64);
    fprintf(stderr, PROG ": listening on %s\n", addr);
    fprintf(stderr, PROG ": try: echo_client --server-key %s %s\n", b64, addr);

    uv_run(&loop, UV_RUN_DEFAULT);
    /* Every handle is closed by now; a non-zero result would mean a leak. */
    return uv_loop_close(&loop) == 0 ? 0 : 1;
}
