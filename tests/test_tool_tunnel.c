/* tern-tunnel run as programs (TERN_TUNNEL_BIN, from CMake): a server, a
 * client and tern-netsim (TERN_NETSIM_BIN) between them with seeded loss,
 * all on 127.0.0.1 with :0 ports read back from the readiness lines. The
 * TCP target and the applications are this process, on non-blocking
 * sockets in one poll loop.
 *
 * Covered: four concurrent connections each moving 1 MiB both ways through
 * 2% loss, byte-exact (IK with --allow-key, --stats-json, SIGUSR1); a
 * half-close each way (the target answers only after the application's
 * EOF) and a target that speaks first; NNpsk0 from --psk-env and
 * --psk-file; a client with the wrong server key (its connections are
 * closed, the target never hears of them); SIGTERM and SIGINT exit 0;
 * --help, --version and usage errors (exit 2), unreadable keys (exit 1).
 * Every child gets SIGKILL if this test process dies, and a leak found by
 * LeakSanitizer (in the ASan build) fails its exit status. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern/tern.h"
#include "tool_util.h"

#ifndef TERN_TUNNEL_BIN
#error "TERN_TUNNEL_BIN must name the tern-tunnel binary (tests/CMakeLists.txt)"
#endif /* TERN_TUNNEL_BIN */
#ifndef TERN_NETSIM_BIN
#error "TERN_NETSIM_BIN must name the tern-netsim binary (tests/CMakeLists.txt)"
#endif /* TERN_NETSIM_BIN */

#define READY_MS 10000
#define EXIT_MS 10000
#define MAX_CONNS 40
#define RING 65536

/* ---- a scratch directory, key files ------------------------------------------ */

static char dir[64];

static void make_dir(void)
{
    tool_make_dir(dir, sizeof(dir), "tern-tunnel-test");
}

static const char *path_in_dir(const char *name)
{
    return tool_path(dir, name);
}

static void remove_dir(void)
{
    static const char *const names[] = {"server.key",  "client.key", "other.key",  "psk",
                                        "stats.jsonl", "bad.json",   "server.out", "server.err",
                                        "client.out",  "client.err", "netsim.out", "netsim.err",
                                        "run.out",     "run.err"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unlink(path_in_dir(names[i]));
    rmdir(dir);
}

/* A private key file; the public key in base64 into pub. */
static void make_key(const char *name, char pub[TERN_KEY_BASE64_LEN + 1])
{
    cr_assert_eq(tern_crypto_init(), 0);
    tern_keypair kp;
    cr_assert_eq(tern_keypair_generate(&kp), 0);
    char err[256];
    cr_assert_eq(tern_keyfile_write_secret(path_in_dir(name), &kp.secret, 0, err, sizeof(err)), 0,
                 "%s", err);
    tern_public_key_to_base64(&kp.pub, pub);
}

/* ---- running programs ----------------------------------------------------------- */

typedef tool_proc proc;

/* Runs bin with args; stdout and stderr go to NAME.out and NAME.err in the
 * scratch directory, so a chatty child never blocks on a full pipe while
 * the test moves bytes. env: "NAME=value" or NULL. */
static tool_cmd command(const char *name, const char *bin, const char *const *args, const char *env)
{
    return (tool_cmd){.bin = bin, .args = args, .name = name, .out_dir = dir, .env = env};
}

/* Starts a long-running program and waits for its readiness line. */
static void start(proc *p, const char *name, const char *bin, const char *const *args,
                  const char *env)
{
    tool_cmd cmd = command(name, bin, args, env);
    tool_start(p, &cmd, "listening on ", READY_MS);
}

/* Whether p's stderr shows needle within ms. */
static bool wait_for_text(proc *p, const char *needle, int ms)
{
    return tool_wait_text(p, false, needle, ms);
}

/* A signal, then exit status 0. */
static void stop(proc *p, int sig)
{
    tool_stop(p, sig, EXIT_MS);
}

/* Runs to completion; returns the exit status. */
static int run(proc *p, const char *const *args)
{
    tool_cmd cmd = command("run", TERN_TUNNEL_BIN, args, NULL);
    tool_spawn(p, &cmd);
    return tool_wait_exit(p, EXIT_MS);
}

#define RUN(p, ...) run((p), TOOL_ARGS(__VA_ARGS__))
#define START(p, name, bin, env, ...) start((p), (name), (bin), TOOL_ARGS(__VA_ARGS__), (env))

/* ---- TCP: the applications and the target ----------------------------------- */

static uint8_t pattern(uint32_t seed, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)seed << 32 | seed);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    return (uint8_t)(x >> 56);
}

static void nonblock(int fd)
{
    cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
    cr_assert_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    return sin;
}

static int tcp_listen(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    nonblock(fd);
    struct sockaddr_in sin = loopback(0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    cr_assert_eq(listen(fd, 16), 0);
    socklen_t len = sizeof(sin);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

static int tcp_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sin = loopback(port);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "%s", strerror(errno));
    nonblock(fd);
    return fd;
}

typedef enum target_mode {
    MODE_ECHO,      /* send back what arrives, FIN after the peer's FIN */
    MODE_AFTER_EOF, /* read (and count) until FIN, then send reply bytes, FIN */
    MODE_GREET      /* send a greeting at once, then echo */
} target_mode;

/* One end of a TCP connection in this process. */
typedef struct end {
    int fd;
    /* application side: what it sends and what it expects back */
    uint32_t tx_seed, rx_seed;
    uint64_t tx_len, tx_done, rx_done;
    bool wait_greeting; /* send nothing before the greeting arrived */
    /* target side */
    uint8_t ring[RING];
    size_t head, len;
    uint64_t in, out, reply_len;
    /* both */
    bool tx_shut, rx_eof, bad, reset, closed;
} end;

typedef struct net {
    int listener;
    uint16_t target_port;
    target_mode mode;
    end app[MAX_CONNS];
    int n_app;
    end tgt[MAX_CONNS];
    int n_tgt;
    uint64_t reply_len;
    uint32_t reply_seed;
} net;

static const char greeting[] = "220 tern-tunnel test target\r\n";

static void net_open(net *n, target_mode mode)
{
    memset(n, 0, sizeof(*n));
    n->mode = mode;
    n->listener = tcp_listen(&n->target_port);
}

static void app_add(net *n, uint16_t port, uint32_t seed, uint64_t tx_len)
{
    cr_assert_lt(n->n_app, MAX_CONNS);
    end *e = &n->app[n->n_app++];
    e->fd = tcp_connect(port);
    e->tx_seed = e->rx_seed = seed;
    e->tx_len = tx_len;
}

static void end_close(end *e)
{
    if (!e->closed) {
        close(e->fd);
        e->closed = true;
    }
}

/* The application side: sends its pattern, then FIN; checks what comes
 * back against rx_seed's pattern (the greeting first, if any). */
static void app_io(net *n, end *e, short rev)
{
    if (rev & (POLLIN | POLLHUP | POLLERR)) {
        uint8_t buf[16384];
        ssize_t r = recv(e->fd, buf, sizeof(buf), 0);
        if (r > 0) {
            for (ssize_t i = 0; i < r; i++) {
                uint64_t at = e->rx_done + (uint64_t)i;
                uint8_t want;
                if (n->mode == MODE_GREET && at < sizeof(greeting) - 1)
                    want = (uint8_t)greeting[at];
                else
                    want = pattern(e->rx_seed,
                                   at - (n->mode == MODE_GREET ? sizeof(greeting) - 1 : 0));
                if (buf[i] != want)
                    e->bad = true;
            }
            e->rx_done += (uint64_t)r;
        } else if (r == 0) {
            e->rx_eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
            e->reset = true;
            e->rx_eof = true;
        }
    }
    bool greeted = !e->wait_greeting || e->rx_done >= sizeof(greeting) - 1;
    if ((rev & POLLOUT) && !e->tx_shut && greeted) {
        uint8_t buf[16384];
        uint64_t left = e->tx_len - e->tx_done;
        size_t k = left < sizeof(buf) ? (size_t)left : sizeof(buf);
        for (size_t i = 0; i < k; i++)
            buf[i] = pattern(e->tx_seed, e->tx_done + i);
        ssize_t w = k ? send(e->fd, buf, k, MSG_NOSIGNAL) : 0;
        if (w > 0)
            e->tx_done += (uint64_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            e->reset = true;
        if (e->tx_done == e->tx_len) {
            shutdown(e->fd, SHUT_WR);
            e->tx_shut = true;
        }
    }
}

static void target_accept(net *n)
{
    int fd;
    while ((fd = accept(n->listener, NULL, NULL)) >= 0) {
        cr_assert_lt(n->n_tgt, MAX_CONNS, "more connections reached the target than were made");
        nonblock(fd);
        end *e = &n->tgt[n->n_tgt++];
        e->fd = fd;
        e->reply_len = n->reply_len;
        e->tx_seed = n->reply_seed;
        if (n->mode == MODE_GREET) {
            memcpy(e->ring, greeting, sizeof(greeting) - 1);
            e->len = sizeof(greeting) - 1;
        }
    }
}

/* The target: a ring buffer, so that it reads only what it can send back. */
static void target_io(net *n, end *e, short rev)
{
    if ((rev & (POLLIN | POLLHUP | POLLERR)) && !e->rx_eof) {
        uint8_t buf[16384];
        size_t room = n->mode == MODE_AFTER_EOF ? sizeof(buf) : RING - e->len;
        if (room > sizeof(buf))
            room = sizeof(buf);
        ssize_t r = room ? recv(e->fd, buf, room, 0) : -1;
        if (r > 0) {
            e->in += (uint64_t)r;
            if (n->mode != MODE_AFTER_EOF) {
                for (ssize_t i = 0; i < r; i++)
                    e->ring[(e->head + e->len + (size_t)i) % RING] = buf[i];
                e->len += (size_t)r;
            }
        } else if (r == 0) {
            e->rx_eof = true;
        } else if (room && errno != EAGAIN && errno != EINTR) {
            e->reset = true;
            e->rx_eof = true;
        }
    }
    if (n->mode == MODE_AFTER_EOF && e->rx_eof && !e->tx_shut && e->len == 0 &&
        e->out < e->reply_len) {
        uint64_t left = e->reply_len - e->out;
        size_t k = left < RING ? (size_t)left : RING;
        for (size_t i = 0; i < k; i++)
            e->ring[i] = pattern(e->tx_seed, e->out + i);
        e->head = 0;
        e->len = k;
    }
    if (e->len > 0) {
        size_t k = RING - e->head < e->len ? RING - e->head : e->len;
        ssize_t w = send(e->fd, e->ring + e->head, k, MSG_NOSIGNAL);
        if (w > 0) {
            e->head = (e->head + (size_t)w) % RING;
            e->len -= (size_t)w;
            e->out += (uint64_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            e->reset = true;
        }
    }
    bool all_out = n->mode == MODE_AFTER_EOF ? e->out == e->reply_len : true;
    if (e->rx_eof && e->len == 0 && all_out && !e->tx_shut) {
        shutdown(e->fd, SHUT_WR);
        e->tx_shut = true;
        end_close(e);
    }
}

static bool apps_done(const net *n)
{
    for (int i = 0; i < n->n_app; i++) {
        if (!n->app[i].rx_eof)
            return false;
    }
    return true;
}

/* Moves bytes until every application saw the end of its connection, or
 * ms pass; returns whether they all did. */
static bool pump(net *n, int ms)
{
    int64_t end_at = tool_now_ms() + ms;
    while (!apps_done(n) && tool_now_ms() < end_at) {
        struct pollfd fds[1 + 2 * MAX_CONNS];
        end *who[1 + 2 * MAX_CONNS];
        bool is_app[1 + 2 * MAX_CONNS];
        int k = 0;
        fds[k] = (struct pollfd){n->listener, POLLIN, 0};
        who[k++] = NULL;
        for (int i = 0; i < n->n_app; i++) {
            end *e = &n->app[i];
            if (e->closed)
                continue;
            short ev = e->rx_eof ? 0 : POLLIN;
            bool greeted = !e->wait_greeting || e->rx_done >= sizeof(greeting) - 1;
            if (!e->tx_shut && greeted)
                ev |= POLLOUT; /* data, or the FIN after it */
            fds[k] = (struct pollfd){e->fd, ev, 0};
            is_app[k] = true;
            who[k++] = e;
        }
        for (int i = 0; i < n->n_tgt; i++) {
            end *e = &n->tgt[i];
            if (e->closed)
                continue;
            short ev = 0;
            if (!e->rx_eof)
                ev |= POLLIN;
            if (e->len > 0 || (n->mode == MODE_AFTER_EOF && e->rx_eof))
                ev |= POLLOUT;
            fds[k] = (struct pollfd){e->fd, ev, 0};
            is_app[k] = false;
            who[k++] = e;
        }
        int rc = poll(fds, (nfds_t)k, 20);
        if (rc < 0 && errno == EINTR)
            continue;
        cr_assert_geq(rc, 0);
        if (fds[0].revents)
            target_accept(n);
        for (int i = 1; i < k; i++) {
            if (!fds[i].revents)
                continue;
            if (is_app[i])
                app_io(n, who[i], fds[i].revents);
            else
                target_io(n, who[i], fds[i].revents);
        }
    }
    return apps_done(n);
}

static void net_close(net *n)
{
    for (int i = 0; i < n->n_app; i++)
        end_close(&n->app[i]);
    for (int i = 0; i < n->n_tgt; i++)
        end_close(&n->tgt[i]);
    close(n->listener);
}

static char *port_arg(uint16_t port)
{
    static char buf[8][32];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof(buf[0]), "127.0.0.1:%u", port);
    return p;
}

/* ---- tests --------------------------------------------------------------------- */

#define N_CONNS 4
#define PER_CONN (1U << 20)

Test(tool_tunnel, four_connections_through_loss)
{
    make_dir();
    char server_pub[TERN_KEY_BASE64_LEN + 1], client_pub[TERN_KEY_BASE64_LEN + 1];
    make_key("server.key", server_pub);
    make_key("client.key", client_pub);
    static net n;
    net_open(&n, MODE_ECHO);

    proc server, netsim, client;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          port_arg(n.target_port), "--key-file", path_in_dir("server.key"), "--allow-key",
          client_pub, "--stats-interval", "1", "--stats-json", path_in_dir("stats.jsonl"));
    cr_assert_not_null(strstr(server.err, "(IK)"), "%s", server.err);
    START(&netsim, "netsim", TERN_NETSIM_BIN, NULL, "--listen", "127.0.0.1:0", "--forward",
          port_arg(server.port), "--loss", "2%", "--seed", "7");
    START(&client, "client", TERN_TUNNEL_BIN, NULL, "client", "-l", "127.0.0.1:0", "-r",
          port_arg(netsim.port), "--peer-key", server_pub, "--key-file", path_in_dir("client.key"));

    for (int i = 0; i < N_CONNS; i++)
        app_add(&n, client.port, 100 + (uint32_t)i, PER_CONN);
    bool done = pump(&n, 60000);
    for (int i = 0; i < N_CONNS; i++) {
        end *e = &n.app[i];
        cr_assert(done, "connection %d: sent %llu received %llu eof %d", i,
                  (unsigned long long)e->tx_done, (unsigned long long)e->rx_done, e->rx_eof);
        cr_assert_eq(e->tx_done, PER_CONN, "connection %d sent", i);
        cr_assert_eq(e->rx_done, PER_CONN, "connection %d: bytes in == bytes out", i);
        cr_assert_not(e->bad, "connection %d: corrupted", i);
        cr_assert_not(e->reset, "connection %d: reset", i);
    }
    cr_assert_eq(n.n_tgt, N_CONNS, "one target connection per application connection");
    uint64_t total = 0;
    for (int i = 0; i < n.n_tgt; i++) {
        cr_assert_eq(n.tgt[i].in, PER_CONN);
        cr_assert_eq(n.tgt[i].out, PER_CONN);
        total += n.tgt[i].in;
    }
    cr_assert_eq(total, (uint64_t)N_CONNS * PER_CONN);

    /* SIGUSR1: every counter, and the process goes on. */
    cr_assert_eq(kill(client.pid, SIGUSR1), 0);
    cr_assert(wait_for_text(&client, "in_flight_bytes", 5000), "%s", client.err);
    cr_assert_not_null(strstr(client.err, "tcp_accepted"), "%s", client.err);
    cr_assert_not_null(strstr(client.err, "retrans_fast"), "%s", client.err);

    stop(&client, SIGTERM);
    stop(&netsim, SIGTERM);
    stop(&server, SIGINT);
    net_close(&n);

    /* The server's JSON lines: one per interval, and a last one at exit
     * with every byte counted. */
    FILE *f = fopen(path_in_dir("stats.jsonl"), "r");
    cr_assert_not_null(f);
    char line[4096];
    int lines = 0;
    json_t *last = NULL;
    while (fgets(line, sizeof(line), f)) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        cr_assert_not_null(o, "not JSON: %s (%s)", line, jerr.text);
        json_decref(last);
        last = o;
        lines++;
    }
    fclose(f);
    cr_assert_geq(lines, 1);
    cr_assert_str_eq(json_string_value(json_object_get(last, "event")), "exit");
    cr_assert_str_eq(json_string_value(json_object_get(last, "security")), "IK");
    json_t *tcp = json_object_get(last, "tcp");
    cr_assert_eq(json_integer_value(json_object_get(tcp, "bytes_in")), (json_int_t)total);
    cr_assert_eq(json_integer_value(json_object_get(tcp, "bytes_out")), (json_int_t)total);
    cr_assert_eq(json_integer_value(json_object_get(tcp, "accepted")), N_CONNS);
    json_decref(last);
    remove_dir();
}

/* The application sends, then FIN; the target answers only once it saw
 * that FIN, then FINs itself: each direction ends on its own. */
Test(tool_tunnel, half_close_both_ways)
{
    make_dir();
    char server_pub[TERN_KEY_BASE64_LEN + 1];
    make_key("server.key", server_pub);
    static net n;
    net_open(&n, MODE_AFTER_EOF);
    n.reply_len = 300000;
    n.reply_seed = 77;
    proc server, client;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          port_arg(n.target_port), "--key-file", path_in_dir("server.key"));
    START(&client, "client", TERN_TUNNEL_BIN, NULL, "client", "-l", "127.0.0.1:0", "-r",
          port_arg(server.port), "--peer-key", server_pub);
    cr_assert_not_null(strstr(client.err, "(NK)"), "%s", client.err);
    app_add(&n, client.port, 7, 100000);
    n.app[0].rx_seed = n.reply_seed;
    cr_assert(pump(&n, 20000), "no end of stream: received %llu",
              (unsigned long long)n.app[0].rx_done);
    cr_assert_eq(n.n_tgt, 1);
    cr_assert_eq(n.tgt[0].in, 100000, "the target read everything before the FIN");
    cr_assert(n.tgt[0].rx_eof);
    cr_assert_eq(n.app[0].rx_done, 300000, "the answer sent after the FIN arrived whole");
    cr_assert_not(n.app[0].bad);
    cr_assert_not(n.app[0].reset, "a clean FIN, not a reset");
    stop(&client, SIGTERM);
    stop(&server, SIGTERM);
    net_close(&n);
    remove_dir();
}

/* NNpsk0: the server's passphrase in a file, the client's in the
 * environment. The target speaks first (a greeting) and the application
 * waits for it before sending: a stream is announced before any byte of
 * the application's. */
Test(tool_tunnel, psk_and_a_target_that_speaks_first)
{
    make_dir();
    FILE *f = fopen(path_in_dir("psk"), "w");
    cr_assert_not_null(f);
    fputs("correct horse battery staple\n", f);
    fclose(f);
    chmod(path_in_dir("psk"), 0600);
    static net n;
    net_open(&n, MODE_GREET);
    proc server, client;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          port_arg(n.target_port), "--psk-file", path_in_dir("psk"));
    START(&client, "client", TERN_TUNNEL_BIN, "TUNNEL_TEST_PSK=correct horse battery staple",
          "client", "-l", "127.0.0.1:0", "-r", port_arg(server.port), "--psk-env",
          "TUNNEL_TEST_PSK");
    cr_assert_not_null(strstr(server.err, "(NNpsk0)"), "%s", server.err);
    app_add(&n, client.port, 11, 65536);
    n.app[0].wait_greeting = true;
    cr_assert(pump(&n, 20000), "received %llu", (unsigned long long)n.app[0].rx_done);
    cr_assert_eq(n.app[0].rx_done, sizeof(greeting) - 1 + 65536);
    cr_assert_not(n.app[0].bad);
    stop(&client, SIGTERM);
    stop(&server, SIGTERM);
    net_close(&n);
    remove_dir();
}

/* A client that trusts another key: the handshake fails, its connection is
 * closed, and the target never sees a connection or a byte. */
Test(tool_tunnel, wrong_server_key_delivers_nothing)
{
    make_dir();
    char server_pub[TERN_KEY_BASE64_LEN + 1], other_pub[TERN_KEY_BASE64_LEN + 1];
    make_key("server.key", server_pub);
    make_key("other.key", other_pub);
    static net n;
    net_open(&n, MODE_ECHO);
    proc server, client;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          port_arg(n.target_port), "--key-file", path_in_dir("server.key"));
    START(&client, "client", TERN_TUNNEL_BIN, NULL, "client", "-l", "127.0.0.1:0", "-r",
          port_arg(server.port), "--peer-key", other_pub, "--handshake-timeout", "1");
    app_add(&n, client.port, 3, 4096);
    cr_assert(pump(&n, 15000), "the connection was not closed");
    cr_assert_eq(n.app[0].rx_done, 0, "nothing comes back");
    cr_assert_eq(n.n_tgt, 0, "the target never heard of it");
    cr_assert(wait_for_text(&client, "cannot connect", 3000), "%s", client.err);
    stop(&client, SIGTERM);
    stop(&server, SIGTERM);
    net_close(&n);
    remove_dir();
}

/* Applications that give up: some reset their connection half-way, some
 * send everything, FIN, and leave without reading the answer (so the
 * tunnel's write to them fails, maybe after both directions ended). Through
 * 5% loss the session must stay healthy for the connections after them.
 * This guards the abort path: aborting a connection whose stream had ended
 * both ways once closed the stream gracefully instead of resetting it; the
 * transport then forgot it and never acknowledged the peer's retransmissions
 * again, and with the session's congestion window down to one segment every
 * other stream stalled. That needed an ACK lost at the wrong moment, so this
 * test finds such a regression often, not always. */
#ifndef QUITTERS
#define QUITTERS 20
#endif /* QUITTERS */

Test(tool_tunnel, aborted_connections_leave_the_session_healthy)
{
    make_dir();
    char server_pub[TERN_KEY_BASE64_LEN + 1];
    make_key("server.key", server_pub);
    static net n;
    net_open(&n, MODE_ECHO);
    proc server, netsim, client;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          port_arg(n.target_port), "--key-file", path_in_dir("server.key"));
    START(&netsim, "netsim", TERN_NETSIM_BIN, NULL, "--listen", "127.0.0.1:0", "--forward",
          port_arg(server.port), "--loss", "5%", "--seed", "11");
    START(&client, "client", TERN_TUNNEL_BIN, NULL, "client", "-l", "127.0.0.1:0", "-r",
          port_arg(netsim.port), "--peer-key", server_pub);

    /* Each sends, then either resets or sends FIN and leaves at once
     * without reading: the echo finds a closed socket. */
    static uint8_t junk[100000];
    for (int i = 0; i < QUITTERS; i++) {
        int fd = tcp_connect(client.port);
        int fl = fcntl(fd, F_GETFL);
        cr_assert_eq(fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
        size_t len = i % 3 ? sizeof(junk) / 4 : sizeof(junk);
        cr_assert_eq(send(fd, junk, len, MSG_NOSIGNAL), (ssize_t)len);
        if (i % 3 == 1) {
            struct linger l = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        } else {
            shutdown(fd, SHUT_WR);
        }
        close(fd);
        pump(&n, 10);
    }
    int64_t until = tool_now_ms() + 500;
    while (tool_now_ms() < until)
        pump(&n, 20);

    for (int i = 0; i < 2; i++)
        app_add(&n, client.port, 50 + (uint32_t)i, 200000);
    cr_assert(pump(&n, 30000), "the session stalled: received %llu and %llu",
              (unsigned long long)n.app[0].rx_done, (unsigned long long)n.app[1].rx_done);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(n.app[i].rx_done, 200000);
        cr_assert_not(n.app[i].bad);
        cr_assert_not(n.app[i].reset);
    }
    stop(&client, SIGTERM);
    stop(&netsim, SIGTERM);
    stop(&server, SIGTERM);
    net_close(&n);
    remove_dir();
}

/* Waits until fd (an application connection outside n) is readable, then
 * reads; returns what recv said (-1 with errno for an error, -2 on
 * timeout). Meanwhile the target side of n is served. */
static ssize_t recv_wait(net *n, int fd, void *buf, size_t cap, int ms)
{
    int64_t end_at = tool_now_ms() + ms;
    while (tool_now_ms() < end_at) {
        struct pollfd fds[2 + MAX_CONNS];
        int k = 0;
        fds[k++] = (struct pollfd){fd, POLLIN, 0};
        fds[k++] = (struct pollfd){n->listener, POLLIN, 0};
        for (int i = 0; i < n->n_tgt; i++)
            fds[k++] = (struct pollfd){n->tgt[i].closed ? -1 : n->tgt[i].fd,
                                       (short)(POLLIN | (n->tgt[i].len ? POLLOUT : 0)), 0};
        if (poll(fds, (nfds_t)k, 20) <= 0)
            continue;
        if (fds[1].revents)
            target_accept(n);
        for (int i = 2; i < k; i++) {
            if (fds[i].revents)
                target_io(n, &n->tgt[i - 2], fds[i].revents);
        }
        if (fds[0].revents)
            return recv(fd, buf, cap, 0);
    }
    return -2;
}

/* The server dies (SIGKILL): the client's session times out (four
 * keepalives), the connection it carried is reset, and once a server is
 * back on the same port the client reconnects by itself. */
Test(tool_tunnel, reconnects_after_server_restart)
{
    make_dir();
    char server_pub[TERN_KEY_BASE64_LEN + 1];
    make_key("server.key", server_pub);
    static net n;
    net_open(&n, MODE_ECHO);
    proc server, client;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          port_arg(n.target_port), "--key-file", path_in_dir("server.key"), "--keepalive", "1");
    uint16_t port = server.port;
    START(&client, "client", TERN_TUNNEL_BIN, NULL, "client", "-l", "127.0.0.1:0", "-r",
          port_arg(port), "--peer-key", server_pub, "--keepalive", "1", "--handshake-timeout", "1");

    /* A connection that works, then stays open across the server's death. */
    int fd = tcp_connect(client.port);
    cr_assert_eq(send(fd, "ping", 4, MSG_NOSIGNAL), 4);
    char buf[16];
    ssize_t r = recv_wait(&n, fd, buf, sizeof(buf), 5000);
    cr_assert_eq(r, 4, "no echo through the first session (%zd)", r);
    tool_kill(&server);
    r = recv_wait(&n, fd, buf, sizeof(buf), 10000);
    cr_assert(r == 0 || (r == -1 && errno == ECONNRESET),
              "the connection outlived its session (%zd)", r);
    close(fd);
    /* The socket is reset a moment before the line is written. */
    cr_assert(wait_for_text(&client, "ended", 3000), "%s", client.err);

    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", port_arg(port), "-t",
          port_arg(n.target_port), "--key-file", path_in_dir("server.key"));
    app_add(&n, client.port, 5, 20000);
    cr_assert(pump(&n, 15000), "no echo after the restart: %s", client.err);
    cr_assert_eq(n.app[0].rx_done, 20000);
    cr_assert_not(n.app[0].bad);
    cr_assert_not(n.app[0].reset);
    stop(&client, SIGTERM);
    stop(&server, SIGTERM);
    net_close(&n);
    remove_dir();
}

Test(tool_tunnel, help_version_and_errors)
{
    make_dir();
    proc p;
    cr_assert_eq(RUN(&p, "--help"), 0);
    cr_assert_not_null(strstr(p.out, "client"), "%s", p.out);
    cr_assert_not_null(strstr(p.out, "server"), "%s", p.out);
    cr_assert_eq(RUN(&p, "--version"), 0);
    cr_assert_not_null(strstr(p.out, TERN_VERSION_STRING), "%s", p.out);
    cr_assert_eq(RUN(&p, "client", "--help"), 0);
    cr_assert_not_null(strstr(p.out, "--peer-key"), "%s", p.out);
    cr_assert_not_null(strstr(p.out, "--remote"), "%s", p.out);
    cr_assert_eq(RUN(&p, "server", "-h"), 0);
    cr_assert_not_null(strstr(p.out, "--allow-key"), "%s", p.out);
    cr_assert_eq(RUN(&p, "server", "--version"), 0);
    cr_assert_eq(p.err[0], '\0', "%s", p.err);

    cr_assert_eq(run(&p, (const char *const[]){NULL}), 2);
    cr_assert_eq(RUN(&p, "bogus"), 2);
    cr_assert_eq(RUN(&p, "client", "--bogus"), 2);
    cr_assert_not_null(strstr(p.err, "--bogus"), "%s", p.err);
    cr_assert_eq(RUN(&p, "client", "-l", "127.0.0.1:0", "-r", "127.0.0.1:9", "--mtu", "9"), 2);
    cr_assert_not_null(strstr(p.err, "--mtu"), "%s", p.err);
    /* No key material and no --insecure: a usage error that says so. */
    cr_assert_eq(RUN(&p, "client", "-l", "127.0.0.1:0", "-r", "127.0.0.1:9"), 2);
    cr_assert_not_null(strstr(p.err, "--insecure"), "%s", p.err);
    cr_assert_eq(RUN(&p, "server", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9"), 2);
    /* The config file: unknown key and a missing file. */
    FILE *f = fopen(path_in_dir("bad.json"), "w");
    cr_assert_not_null(f);
    fputs("{\"listen\": \"127.0.0.1:0\", \"speed\": \"fast\"}\n", f);
    fclose(f);
    cr_assert_eq(RUN(&p, "client", "-c", path_in_dir("bad.json")), 2);
    cr_assert_not_null(strstr(p.err, "'speed'"), "%s", p.err);
    cr_assert_eq(RUN(&p, "client", "-c", path_in_dir("missing.json")), 2);
    /* A runtime failure: the key file cannot be read. */
    cr_assert_eq(RUN(&p, "server", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "--key-file",
                     path_in_dir("missing.key")),
                 1);
    cr_assert_not_null(strstr(p.err, "missing.key"), "%s", p.err);
    /* --psk-env naming an unset variable. */
    cr_assert_eq(RUN(&p, "client", "-l", "127.0.0.1:0", "-r", "127.0.0.1:9", "--psk-env",
                     "TERN_TUNNEL_TEST_UNSET_VAR"),
                 2);
    remove_dir();
}

/* A key file others may read is used, with a warning. */
Test(tool_tunnel, world_readable_key_warns)
{
    make_dir();
    char pub[TERN_KEY_BASE64_LEN + 1];
    make_key("server.key", pub);
    cr_assert_eq(chmod(path_in_dir("server.key"), 0644), 0);
    proc server;
    START(&server, "server", TERN_TUNNEL_BIN, NULL, "server", "-l", "127.0.0.1:0", "-t",
          "127.0.0.1:9", "--key-file", path_in_dir("server.key"));
    cr_assert_not_null(strstr(server.err, "warning"), "%s", server.err);
    stop(&server, SIGTERM);
    remove_dir();
}
