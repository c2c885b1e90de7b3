/* tern-netsim, run as a program (TERN_NETSIM_BIN, from CMake) between a UDP
 * echo server and clients in this process, all on 127.0.0.1. Flags: --help,
 * --version, bad flags and values (exit 2, one line naming them), a port in
 * use (exit 1). Forwarding: a clean path delivers everything in order; 50%
 * loss with a fixed seed loses about half each way and the final counters
 * agree with what the sockets saw; per-direction flags override the shared
 * one; a delay shows in the round trip; each client gets its own upstream
 * port; --max-clients refuses and counts; --max-held drops and counts what
 * does not fit; --idle-timeout expires a flow.
 * Every run ends with SIGTERM (or SIGINT), exit status 0 and the final
 * counters. Wall-clock bounds are wide; the loss pattern is seeded. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tool_util.h"

#ifndef TERN_NETSIM_BIN
#error "TERN_NETSIM_BIN must name the tern-netsim binary (tests/CMakeLists.txt)"
#endif /* TERN_NETSIM_BIN */

#define MAX_SEQ 1024
#define READY_TIMEOUT_MS 5000
#define EXIT_TIMEOUT_MS 5000

static void cloexec(int fd)
{
    cr_assert_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
}

/* ---- Running the program ------------------------------------------------ */

typedef tool_proc proc;

static void spawn(proc *p, const char *const *args)
{
    tool_spawn(p, &(tool_cmd){.bin = TERN_NETSIM_BIN, .args = args, .name = "tern-netsim"});
}

/* Runs a command that should exit by itself (help, bad flags). */
static void run_to_exit(proc *p, const char *const *args)
{
    spawn(p, args);
    tool_wait_exit(p, EXIT_TIMEOUT_MS);
}

#define RUN(p, ...) run_to_exit((p), TOOL_ARGS(__VA_ARGS__))

/* Starts the proxy and waits for its readiness line; fills p->port. */
static void start(proc *p, const char *const *args)
{
    tool_start(p, &(tool_cmd){.bin = TERN_NETSIM_BIN, .args = args, .name = "tern-netsim"},
               "tern-netsim: listening on ", READY_TIMEOUT_MS);
}

/* SIGTERM (or sig), then the exit status must be 0. */
static void stop(proc *p, int sig)
{
    tool_stop(p, sig, EXIT_TIMEOUT_MS);
}

/* A counter from the final JSON: "section":{... "key":N ...}. */
static uint64_t json_u64(const char *json, const char *section, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":{", section);
    const char *s = strstr(json, pat);
    cr_assert_not_null(s, "no \"%s\" in %s", section, json);
    const char *close = strchr(s, '}');
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *k = strstr(s, pat);
    cr_assert(k && k < close, "no %s.%s in %s", section, key, json);
    unsigned long long v;
    cr_assert_eq(sscanf(k + strlen(pat), "%llu", &v), 1);
    return v;
}

/* ---- Sockets -------------------------------------------------------------- */

static int udp_socket(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    cloexec(fd);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "%s", strerror(errno));
    cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    return fd;
}

static uint16_t local_port(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

/* An echo server and up to two clients, each datagram carrying its
 * sequence number so order and round trips can be checked. */
typedef struct echo {
    int srv;
    int cli[2];
    uint16_t srv_port, proxy_port;
    uint32_t server_got;
    uint16_t server_peer_ports[8]; /* distinct source ports the server saw */
    int n_server_peers;
    uint32_t client_got[2];
    uint32_t next_expected[2];
    bool in_order[2];
    int64_t sent_at[MAX_SEQ];
    int64_t rtt_min, rtt_max;
} echo;

static void echo_open(echo *e)
{
    memset(e, 0, sizeof(*e));
    e->srv = udp_socket(0);
    e->srv_port = local_port(e->srv);
    e->cli[0] = udp_socket(0);
    e->cli[1] = udp_socket(0);
    e->in_order[0] = e->in_order[1] = true;
    e->rtt_min = INT64_MAX;
}

static void echo_close(echo *e)
{
    close(e->srv);
    close(e->cli[0]);
    close(e->cli[1]);
}

static void echo_send(echo *e, int client, uint32_t seq)
{
    uint8_t buf[64];
    memset(buf, 0x5a, sizeof(buf));
    memcpy(buf, &seq, sizeof(seq));
    struct sockaddr_in to;
    memset(&to, 0, sizeof(to));
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(e->proxy_port);
    if (seq < MAX_SEQ)
        e->sent_at[seq] = tool_now_ms();
    cr_assert_eq(sendto(e->cli[client], buf, sizeof(buf), 0, (struct sockaddr *)&to, sizeof(to)),
                 (ssize_t)sizeof(buf), "%s", strerror(errno));
}

static void note_peer(echo *e, uint16_t port)
{
    for (int i = 0; i < e->n_server_peers; i++) {
        if (e->server_peer_ports[i] == port)
            return;
    }
    if (e->n_server_peers < 8)
        e->server_peer_ports[e->n_server_peers++] = port;
}

/* Serves both sides for up to timeout_ms; returns early once nothing has
 * arrived for quiet_ms (if quiet_ms > 0). */
static void echo_pump(echo *e, int timeout_ms, int quiet_ms)
{
    int64_t end = tool_now_ms() + timeout_ms, last = tool_now_ms();
    for (;;) {
        int64_t now = tool_now_ms();
        if (now >= end || (quiet_ms > 0 && now - last >= quiet_ms))
            return;
        struct pollfd fds[3] = {
            {e->srv, POLLIN, 0}, {e->cli[0], POLLIN, 0}, {e->cli[1], POLLIN, 0}};
        int rc = poll(fds, 3, (int)(end - now < 5 ? end - now : 5));
        if (rc < 0 && errno == EINTR)
            continue;
        cr_assert_geq(rc, 0);
        uint8_t buf[2048];
        struct sockaddr_in from;
        socklen_t len = sizeof(from);
        ssize_t n;
        while ((n = recvfrom(e->srv, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len)) > 0) {
            e->server_got++;
            note_peer(e, ntohs(from.sin_port));
            sendto(e->srv, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
            last = tool_now_ms();
            len = sizeof(from);
        }
        for (int c = 0; c < 2; c++) {
            while ((n = recv(e->cli[c], buf, sizeof(buf), 0)) > 0) {
                uint32_t seq;
                cr_assert_geq(n, (ssize_t)sizeof(seq));
                memcpy(&seq, buf, sizeof(seq));
                if (seq < e->next_expected[c])
                    e->in_order[c] = false;
                e->next_expected[c] = seq + 1;
                e->client_got[c]++;
                if (seq < MAX_SEQ && e->sent_at[seq]) {
                    int64_t rtt = tool_now_ms() - e->sent_at[seq];
                    e->rtt_min = rtt < e->rtt_min ? rtt : e->rtt_min;
                    e->rtt_max = rtt > e->rtt_max ? rtt : e->rtt_max;
                }
                last = tool_now_ms();
            }
        }
    }
}

/* Sends n datagrams from one client, paced so that no socket buffer on the
 * way overflows, then serves until the path has been quiet a while. */
static void echo_burst(echo *e, int client, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        echo_send(e, client, i);
        if (i % 16 == 15)
            echo_pump(e, 2, 0);
    }
    echo_pump(e, 3000, 300);
}

/* Starts the proxy in front of e's server with extra flags. */
static void start_proxy(proc *p, echo *e, const char *const *extra)
{
    char forward[32];
    snprintf(forward, sizeof(forward), "127.0.0.1:%u", (unsigned)e->srv_port);
    const char *args[TOOL_ARGS_MAX];
    int n = 0;
    args[n++] = "--listen";
    args[n++] = "127.0.0.1:0";
    args[n++] = "--forward";
    args[n++] = forward;
    for (; *extra && n < TOOL_ARGS_MAX - 1; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    start(p, args);
    e->proxy_port = p->port;
}

#define START(p, e, ...) start_proxy((p), (e), (const char *const[]){__VA_ARGS__, NULL})

/* ---- Flags ---------------------------------------------------------------- */

static void assert_usage_error(const proc *p, const char *mentions1, const char *mentions2)
{
    cr_assert_eq(p->status, 2, "status %d; stderr: %s", p->status, p->err);
    cr_assert_str_eq(p->out, "");
    cr_assert_eq(strncmp(p->err, "tern-netsim: ", 13), 0, "%s", p->err);
    const char *nl = strchr(p->err, '\n');
    cr_assert(nl && nl[1] == '\0', "not one line: %s", p->err);
    cr_assert_not_null(strstr(p->err, mentions1), "'%s' not in: %s", mentions1, p->err);
    if (mentions2)
        cr_assert_not_null(strstr(p->err, mentions2), "'%s' not in: %s", mentions2, p->err);
}

Test(tool_netsim, help_and_version)
{
    proc p;
    RUN(&p, "--help");
    cr_assert_eq(p.status, 0);
    cr_assert_str_eq(p.err, "");
    cr_assert_not_null(strstr(p.out, "usage: tern-netsim --listen"));
    cr_assert_not_null(strstr(p.out, "--down-NAME"));
    RUN(&p, "-h");
    cr_assert_eq(p.status, 0);
    RUN(&p, "--version");
    cr_assert_eq(p.status, 0);
    cr_assert_eq(strncmp(p.out, "tern-netsim ", 12), 0, "%s", p.out);
}

Test(tool_netsim, bad_flags_and_values_exit_2)
{
    proc p;
    RUN(&p, "--bogus", "--listen", ":0", "--forward", "127.0.0.1:9");
    assert_usage_error(&p, "'--bogus'", NULL);
    RUN(&p, "-x");
    assert_usage_error(&p, "'-x'", NULL);
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--loss", "150%");
    assert_usage_error(&p, "--loss", "'150%'");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--up-delay", "soon");
    assert_usage_error(&p, "--up-delay", "'soon'");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--down-rate", "10furlongs");
    assert_usage_error(&p, "--down-rate", "'10furlongs'");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--burst-loss", "1%,2%");
    assert_usage_error(&p, "--burst-loss", "'1%,2%'");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--delay", "5000000000s");
    assert_usage_error(&p, "--delay", "out of range");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--jitter-order", "sideways");
    assert_usage_error(&p, "--jitter-order", "'sideways'");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--max-clients", "0");
    assert_usage_error(&p, "--max-clients", "'0'");
    RUN(&p, "--listen", ":0", "--forward", "::1:9");
    assert_usage_error(&p, "--forward", "'::1:9'");
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "--delay");
    assert_usage_error(&p, "'--delay'", "needs a value");
    RUN(&p, "--listen", ":0");
    assert_usage_error(&p, "--forward is required", NULL);
    RUN(&p, "--listen", ":0", "--forward", "127.0.0.1:9", "extra");
    assert_usage_error(&p, "'extra'", NULL);
}

Test(tool_netsim, port_in_use_exits_1)
{
    int busy = udp_socket(0);
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", (unsigned)local_port(busy));
    proc p;
    RUN(&p, "--listen", listen, "--forward", "127.0.0.1:9");
    close(busy);
    cr_assert_eq(p.status, 1, "status %d; stderr: %s", p.status, p.err);
    cr_assert_not_null(strstr(p.err, "cannot listen on"), "%s", p.err);
    cr_assert_str_eq(p.out, "");
}

Test(tool_netsim, listen_port_zero_prints_the_bound_port)
{
    proc p;
    start(&p, (const char *const[]){"--listen", ":0", "--forward", "127.0.0.1:9", NULL});
    cr_assert_not_null(strstr(p.err, "listening on 0.0.0.0:"), "%s", p.err);
    cr_assert_neq(p.port, 0);
    stop(&p, SIGINT);
    /* Without --json: a table. */
    cr_assert_not_null(strstr(p.out, "offered"), "%s", p.out);
    cr_assert_not_null(strstr(p.out, "flows: 0 open, 0 total, 0 refused"), "%s", p.out);
}

/* ---- Forwarding ----------------------------------------------------------- */

/* 300 datagrams in a burst through 20 ms of jitter of the given order:
 * whether the echoes came back in the order they were sent. */
static bool burst_in_order(const char *order)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--jitter", "20ms", "--jitter-order", order, "--json");
    echo_burst(&e, 0, 300);
    stop(&p, SIGTERM);
    echo_close(&e);
    cr_assert_eq(e.client_got[0], 300, "%s: %u echoes", order, e.client_got[0]);
    return e.in_order[0];
}

/* Drawn alone, the delays swap datagrams; as queueing delay they keep their
 * order. */
Test(tool_netsim, jitter_order_keep_delivers_in_order_and_any_reorders)
{
    cr_assert(burst_in_order("keep"), "keep: the echoes came back out of order");
    cr_assert_not(burst_in_order("any"), "any: 300 datagrams with 20 ms of jitter kept their order");
}

Test(tool_netsim, clean_path_delivers_all_in_order)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--json");
    echo_burst(&e, 0, 300);
    stop(&p, SIGTERM);
    echo_close(&e);

    cr_assert_eq(e.server_got, 300);
    cr_assert_eq(e.client_got[0], 300);
    cr_assert(e.in_order[0]);
    cr_assert_eq(json_u64(p.out, "up", "offered"), 300, "%s", p.out);
    cr_assert_eq(json_u64(p.out, "up", "delivered"), 300);
    cr_assert_eq(json_u64(p.out, "up", "lost"), 0);
    cr_assert_eq(json_u64(p.out, "down", "offered"), 300);
    cr_assert_eq(json_u64(p.out, "down", "delivered"), 300);
    cr_assert_eq(json_u64(p.out, "down", "bytes_delivered"), 300 * 64);
    cr_assert_eq(json_u64(p.out, "flows", "open"), 1);
    cr_assert_eq(json_u64(p.out, "flows", "total"), 1);
    cr_assert_eq(json_u64(p.out, "flows", "refused"), 0);
}

Test(tool_netsim, half_loss_loses_about_half_each_way)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--loss", "50%", "--seed", "1", "--json");
    echo_burst(&e, 0, 400);
    stop(&p, SIGTERM);
    echo_close(&e);

    /* Half each way: the server sees about 200, the client about 100. */
    cr_assert(e.server_got >= 120 && e.server_got <= 280, "server got %u", e.server_got);
    cr_assert(e.client_got[0] >= 40 && e.client_got[0] <= 160, "client got %u", e.client_got[0]);
    /* The counters account for every datagram the sockets saw. */
    cr_assert_eq(json_u64(p.out, "up", "offered"), 400, "%s", p.out);
    cr_assert_eq(json_u64(p.out, "up", "delivered"), e.server_got);
    cr_assert_eq(json_u64(p.out, "up", "lost_random"), 400 - e.server_got);
    cr_assert_eq(json_u64(p.out, "down", "offered"), e.server_got);
    cr_assert_eq(json_u64(p.out, "down", "delivered"), e.client_got[0]);
    cr_assert_eq(json_u64(p.out, "down", "in_flight"), 0);
}

Test(tool_netsim, seed_replays_the_same_losses)
{
    uint32_t got[2];
    for (int run = 0; run < 2; run++) {
        echo e;
        proc p;
        echo_open(&e);
        START(&p, &e, "--up-loss", "30%", "--seed", "7", "--json");
        echo_burst(&e, 0, 200);
        stop(&p, SIGTERM);
        echo_close(&e);
        got[run] = e.server_got;
    }
    cr_assert_eq(got[0], got[1]);
    cr_assert(got[0] > 100 && got[0] < 180, "%u", got[0]);
}

Test(tool_netsim, per_direction_flag_overrides_the_shared_one)
{
    echo e;
    proc p;
    echo_open(&e);
    /* The override comes first: order on the command line does not matter. */
    START(&p, &e, "--down-loss", "0", "--loss", "50%", "--seed", "3", "--json");
    echo_burst(&e, 0, 200);
    stop(&p, SIGTERM);
    echo_close(&e);

    cr_assert(e.server_got >= 60 && e.server_got <= 140, "server got %u", e.server_got);
    cr_assert_eq(e.client_got[0], e.server_got);
    cr_assert_eq(json_u64(p.out, "down", "lost"), 0, "%s", p.out);
}

Test(tool_netsim, delay_shows_in_the_round_trip)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--delay", "50ms");
    for (uint32_t i = 0; i < 5; i++) {
        echo_send(&e, 0, i);
        echo_pump(&e, 20, 0);
    }
    echo_pump(&e, 2000, 300);
    stop(&p, SIGTERM);
    echo_close(&e);

    cr_assert_eq(e.client_got[0], 5);
    /* 50 ms each way; the proxy's clock has 1 ms steps, the sockets none. */
    cr_assert_geq(e.rtt_min, 97, "rtt %lld ms", (long long)e.rtt_min);
    cr_assert_lt(e.rtt_max, 1000, "rtt %lld ms", (long long)e.rtt_max);
}

Test(tool_netsim, each_client_gets_its_own_upstream_port)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--json");
    for (uint32_t i = 0; i < 10; i++) {
        echo_send(&e, 0, i);
        echo_send(&e, 1, i);
    }
    echo_pump(&e, 2000, 200);
    stop(&p, SIGTERM);
    echo_close(&e);

    cr_assert_eq(e.client_got[0], 10);
    cr_assert_eq(e.client_got[1], 10);
    cr_assert_eq(e.n_server_peers, 2);
    cr_assert_eq(json_u64(p.out, "flows", "total"), 2, "%s", p.out);
}

Test(tool_netsim, max_clients_refuses_and_counts)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--max-clients", "1", "--json");
    for (uint32_t i = 0; i < 5; i++)
        echo_send(&e, 0, i);
    echo_pump(&e, 2000, 150);
    for (uint32_t i = 0; i < 5; i++)
        echo_send(&e, 1, i);
    echo_pump(&e, 2000, 150);
    stop(&p, SIGTERM);
    echo_close(&e);

    cr_assert_eq(e.client_got[0], 5);
    cr_assert_eq(e.client_got[1], 0);
    cr_assert_eq(json_u64(p.out, "flows", "refused"), 5, "%s", p.out);
    cr_assert_eq(json_u64(p.out, "flows", "total"), 1);
    cr_assert_eq(json_u64(p.out, "up", "offered"), 5);
}

Test(tool_netsim, max_held_drops_what_does_not_fit)
{
    echo e;
    proc p;
    echo_open(&e);
    /* 1 KiB held at most, 64-byte datagrams each needing room for a copy:
     * 15 fit while the 300 ms delay holds them, the rest are dropped. */
    START(&p, &e, "--max-held", "1k", "--up-delay", "300ms", "--json");
    for (uint32_t i = 0; i < 40; i++)
        echo_send(&e, 0, i);
    echo_pump(&e, 3000, 500);
    stop(&p, SIGTERM);
    echo_close(&e);

    uint64_t offered = json_u64(p.out, "up", "offered");
    cr_assert_eq(offered, 15, "%s", p.out);
    cr_assert_eq(json_u64(p.out, "up", "dropped_budget"), 40 - offered);
    cr_assert_eq(json_u64(p.out, "up", "delivered"), offered);
    cr_assert_eq(e.server_got, offered);
    cr_assert_eq(e.client_got[0], offered);
}

Test(tool_netsim, idle_flow_expires)
{
    echo e;
    proc p;
    echo_open(&e);
    START(&p, &e, "--idle-timeout", "300ms", "--stats-interval", "50ms", "--json");
    echo_send(&e, 0, 0);
    echo_pump(&e, 1000, 100);
    cr_assert_eq(e.client_got[0], 1);
    /* Past the timeout: the next datagram opens a new flow, so the server
     * sees a new source port. */
    echo_pump(&e, 600, 0);
    echo_send(&e, 0, 1);
    echo_pump(&e, 1000, 100);
    stop(&p, SIGTERM);
    echo_close(&e);

    cr_assert_eq(e.client_got[0], 2);
    cr_assert_eq(e.n_server_peers, 2);
    cr_assert_eq(json_u64(p.out, "flows", "total"), 2, "%s", p.out);
    cr_assert_eq(json_u64(p.out, "flows", "open"), 1);
    /* The closed flow's counters are kept in the totals. */
    cr_assert_eq(json_u64(p.out, "up", "delivered"), 2);
    /* --stats-interval with --json: JSON lines on stderr, one showing the
     * first flow closed. */
    cr_assert_not_null(strstr(p.err, "{\"elapsed_ms\":"), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "\"flows\":{\"open\":0,\"total\":1,"), "%s", p.err);
}
