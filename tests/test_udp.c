/* The UDP layer (transport/udp.c) over real loopback sockets: binding,
 * batching (sendmmsg, GSO, recvmmsg), every bound and counter, the built-in
 * impairment, the filter hook, close, and libuv's per-event read bound. Each
 * test runs its own libuv loop; a counting allocator checks that close frees
 * every byte. Impairment draws are seeded, so their counts replay exactly. */
#define _GNU_SOURCE /* IPV6_TCLASS */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "tern/error.h"
#include "transport/udp.h"

#define MAX_INDEX 4096u
#define RUN_TIMEOUT_MS 3000u

/* ---- a counting allocator: every byte asked for must come back ---- */

typedef struct counter {
    size_t live;
} counter;

static void *count_malloc(size_t n, void *ud)
{
    size_t *p = malloc(n + sizeof(size_t) * 2);
    if (!p)
        return NULL;
    p[0] = n;
    ((counter *)ud)->live += n;
    return p + 2;
}

static void count_free(void *ptr, void *ud)
{
    if (!ptr)
        return;
    size_t *p = (size_t *)ptr - 2;
    ((counter *)ud)->live -= p[0];
    free(p);
}

/* ---- payloads that carry their index ---- */

static void fill(uint8_t *buf, uint32_t index, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(index * 31u + i * 7u);
    if (len >= 4)
        memcpy(buf, &index, sizeof(index));
}

/* Number of bits in which buf differs from the payload of its index. */
static unsigned payload_diff_bits(const uint8_t *buf, size_t len, uint32_t index)
{
    unsigned bits = 0;
    for (size_t i = 4; i < len; i++)
        bits += (unsigned)__builtin_popcount(buf[i] ^ (uint8_t)(index * 31u + i * 7u));
    return bits;
}

/* ---- a receiver ---- */

typedef struct rx {
    uint32_t got, bad, dup, out_of_order, empty;
    uint32_t next_index;
    uint8_t seen[MAX_INDEX];
    uint32_t corrupt_one_bit; /* datagrams that differ from their payload by one bit */
    const uint8_t *pattern;   /* when set, every datagram is compared with it whole */
    size_t pattern_len;
    tern_ms last_now;
    uint64_t last_hr;
    struct sockaddr_storage from;
    tern_udp *self;
    bool close_on_first;
    int closed;
} rx;

static void on_close_count(void *arg)
{
    (*(int *)arg)++;
}

static void on_rx(void *user, const uint8_t *data, size_t len, const struct sockaddr *from,
                  tern_ms now)
{
    rx *r = user;
    r->got++;
    r->last_now = now;
    r->last_hr = uv_hrtime();
    memcpy(&r->from, from,
           from->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    if (r->pattern) {
        unsigned bits = 0;
        for (size_t i = 0; i < len && len == r->pattern_len; i++)
            bits += (unsigned)__builtin_popcount(data[i] ^ r->pattern[i]);
        if (len != r->pattern_len || bits > 1)
            r->bad++;
        r->corrupt_one_bit += bits == 1;
    } else if (len == 0) {
        r->empty++;
    } else if (len < 4) {
        r->bad++;
    } else {
        uint32_t index;
        memcpy(&index, data, sizeof(index));
        unsigned diff = index < MAX_INDEX ? payload_diff_bits(data, len, index) : 99;
        if (diff == 1)
            r->corrupt_one_bit++;
        else if (diff != 0)
            r->bad++;
        if (index < MAX_INDEX) {
            if (r->seen[index]++)
                r->dup++;
            if (index != r->next_index)
                r->out_of_order++;
            r->next_index = index + 1;
        }
    }
    if (r->close_on_first && r->got == 1)
        tern_udp_close(r->self, on_close_count, &r->closed);
}

/* ---- running the loop ---- */

static void tick(uv_timer_t *t)
{
    (void)t;
}

typedef bool (*done_fn)(void *arg);

/* Runs the loop until done(arg) or timeout_ms; a 2 ms ticker keeps
 * UV_RUN_ONCE from blocking for ever. */
static bool run_until(uv_loop_t *loop, done_fn done, void *arg, uint64_t timeout_ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick, 2, 2);
    uint64_t deadline = uv_hrtime() + timeout_ms * 1000000u;
    bool ok;
    while (!(ok = done(arg)) && uv_hrtime() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

static void run_for(uv_loop_t *loop, uint64_t ms)
{
    (void)run_until(loop, never, NULL, ms);
}

typedef struct want {
    const rx *r;
    uint32_t n;
} want;

static bool got_n(void *arg)
{
    const want *w = arg;
    return w->r->got >= w->n;
}

static bool got_all(uv_loop_t *loop, const rx *r, uint32_t n)
{
    want w = {r, n};
    return run_until(loop, got_n, &w, RUN_TIMEOUT_MS);
}

/* Runs the loop until every handle is closed, then closes it. */
static void finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(loop), 0, "a handle was left open");
}

/* ---- opening ---- */

static struct sockaddr_in v4(const char *ip, int port)
{
    struct sockaddr_in a;
    cr_assert_eq(uv_ip4_addr(ip, port, &a), 0);
    return a;
}

static struct sockaddr_in6 v6(const char *ip, int port)
{
    struct sockaddr_in6 a;
    cr_assert_eq(uv_ip6_addr(ip, port, &a), 0);
    return a;
}

static tern_udp *open_on(uv_loop_t *loop, const struct sockaddr *bind, const tern_udp_config *cfg,
                         rx *r, const tern_mem *mem)
{
    tern_udp *u = NULL;
    int rc = tern_udp_open(&u, loop, bind, cfg, on_rx, r, mem);
    cr_assert_eq(rc, 0, "tern_udp_open: %s", tern_strerror(rc));
    cr_assert_not_null(u);
    if (r)
        r->self = u;
    return u;
}

static tern_udp *open_v4(uv_loop_t *loop, const tern_udp_config *cfg, rx *r, const tern_mem *mem)
{
    struct sockaddr_in a = v4("127.0.0.1", 0);
    return open_on(loop, (const struct sockaddr *)&a, cfg, r, mem);
}

static struct sockaddr_storage addr_of(const tern_udp *u)
{
    struct sockaddr_storage ss;
    cr_assert_eq(tern_udp_local_addr(u, &ss), 0);
    return ss;
}

static int send_indexed(tern_udp *u, uint32_t index, size_t len, const struct sockaddr_storage *to)
{
    uint8_t buf[2048];
    fill(buf, index, len);
    return tern_udp_send(u, buf, len, (const struct sockaddr *)to);
}

static tern_udp_stats stats_of(const tern_udp *u)
{
    tern_udp_stats st;
    tern_udp_get_stats(u, &st);
    return st;
}

/* ---- binding ---- */

Test(udp, binds_v4_and_v6_ephemeral_ports)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    counter c = {0};
    tern_mem mem = {count_malloc, count_free, &c};
    rx r4 = {0}, r6 = {0};
    tern_udp *a = open_v4(&loop, NULL, &r4, &mem);
    struct sockaddr_in6 b6 = v6("::1", 0);
    tern_udp *b = open_on(&loop, (const struct sockaddr *)&b6, NULL, &r6, &mem);

    struct sockaddr_storage sa = addr_of(a), sb = addr_of(b);
    cr_assert_eq(sa.ss_family, AF_INET);
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)&sa;
    cr_assert_neq(in4->sin_port, 0);
    cr_assert_eq(ntohl(in4->sin_addr.s_addr), INADDR_LOOPBACK);
    cr_assert_eq(sb.ss_family, AF_INET6);
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&sb;
    cr_assert_neq(in6->sin6_port, 0);
    cr_assert(IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr));
    cr_assert_geq(tern_udp_fileno(a), 0);

    /* A datagram each way over IPv6 proves the v6 socket is live. */
    cr_assert_eq(send_indexed(b, 7, 100, &sb), 0);
    cr_assert(got_all(&loop, &r6, 1));
    cr_assert_eq(r6.seen[7], 1);

    int closed = 0;
    tern_udp_close(a, on_close_count, &closed);
    tern_udp_close(b, on_close_count, &closed);
    finish(&loop);
    cr_assert_eq(closed, 2);
    cr_assert_eq(c.live, 0, "%zu bytes not freed", c.live);
}

/* ---- batching ---- */

Test(udp, thousand_datagrams_leave_in_one_iteration_batched)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config rc;
    tern_udp_config_default(&rc);
    rc.rcvbuf = 4 << 20;
    tern_udp_config sc;
    tern_udp_config_default(&sc);
    sc.gso = false; /* sendmmsg alone; GSO has its own test */
    rx r = {0};
    tern_udp *recv = open_v4(&loop, &rc, &r, NULL);
    tern_udp *send = open_v4(&loop, &sc, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);

    for (uint32_t i = 0; i < 1000; i++)
        cr_assert_eq(send_indexed(send, i, 100 + (i * 37u) % 1200u, &to), 0);
    cr_assert_eq(stats_of(send).dgrams_out, 0, "send only queues");
    uv_run(&loop, UV_RUN_NOWAIT);
    tern_udp_stats ss = stats_of(send);
    cr_assert_eq(ss.dgrams_out, 1000, "all leave in the first iteration (%llu)",
                 (unsigned long long)ss.dgrams_out);
    cr_assert_leq(ss.send_syscalls, 32, "sendmmsg batches: %llu calls",
                  (unsigned long long)ss.send_syscalls);
    cr_assert_eq(ss.gso_sends, 0);
    cr_assert_eq(ss.send_errors + ss.send_dropped, 0);

    cr_assert(got_all(&loop, &r, 1000), "received %u of 1000", r.got);
    cr_assert_eq(r.bad + r.dup, 0);
    for (uint32_t i = 0; i < 1000; i++)
        cr_assert_eq(r.seen[i], 1, "datagram %u", i);
    tern_udp_stats rs = stats_of(recv);
    cr_assert_eq(rs.dgrams_in, 1000);
    cr_assert_eq(rs.dgrams_delivered, 1000);
    cr_assert_lt(rs.recv_batches, 200, "recvmmsg batches: %llu reads",
                 (unsigned long long)rs.recv_batches);

    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

Test(udp, gso_sends_runs_split_by_size_and_destination)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config rc;
    tern_udp_config_default(&rc);
    rc.rcvbuf = 4 << 20;
    rx ra = {0}, rb = {0};
    tern_udp *a = open_v4(&loop, &rc, &ra, NULL);
    tern_udp *b = open_v4(&loop, &rc, &rb, NULL);
    tern_udp *send = open_v4(&loop, NULL, NULL, NULL);
    if (!tern_udp_gso_active(send)) {
        tern_udp_close(a, NULL, NULL);
        tern_udp_close(b, NULL, NULL);
        tern_udp_close(send, NULL, NULL);
        finish(&loop);
        cr_skip_test("this kernel does not offer UDP_SEGMENT (getsockopt refused)");
    }
    struct sockaddr_storage ta = addr_of(a), tb = addr_of(b);

    /* To a: 150 x 1000 B and a 300 B tail (runs of at most 64, the tail the
     * last segment of one); then 5 to b; then 3 to a of mixed sizes. */
    uint32_t ia = 0, ib = 0;
    for (; ia < 150; ia++)
        cr_assert_eq(send_indexed(send, ia, 1000, &ta), 0);
    cr_assert_eq(send_indexed(send, ia++, 300, &ta), 0);
    for (; ib < 5; ib++)
        cr_assert_eq(send_indexed(send, ib, 1000, &tb), 0);
    cr_assert_eq(send_indexed(send, ia++, 500, &ta), 0);
    cr_assert_eq(send_indexed(send, ia++, 700, &ta), 0); /* longer: a new run */
    cr_assert_eq(send_indexed(send, ia++, 700, &ta), 0);
    cr_assert_eq(tern_udp_flush(send), 0);

    tern_udp_stats ss = stats_of(send);
    cr_assert(tern_udp_gso_active(send), "GSO was turned off (uv error %d)",
              tern_udp_last_uv_error(send));
    cr_assert_eq(ss.dgrams_out, 159);
    cr_assert_eq(ss.send_errors, 0);
    /* Runs: 64 + 64 + 23 (to a, the 300 B tail last), 5 (b), 1 (500 B),
     * 2 (700 B): five GSO messages, one plain. */
    cr_assert_eq(ss.gso_sends, 5, "gso_sends %llu", (unsigned long long)ss.gso_sends);
    cr_assert_eq(ss.send_syscalls, 1);

    cr_assert(got_all(&loop, &ra, ia), "a received %u of %u", ra.got, ia);
    cr_assert(got_all(&loop, &rb, ib), "b received %u of %u", rb.got, ib);
    cr_assert_eq(ra.bad + ra.dup + rb.bad + rb.dup, 0);
    cr_assert_eq(ra.out_of_order + rb.out_of_order, 0, "loopback keeps segment order");

    tern_udp_close(a, NULL, NULL);
    tern_udp_close(b, NULL, NULL);
    tern_udp_close(send, NULL, NULL);
    finish(&loop);
}

/* ---- bounds ---- */

Test(udp, msgsize_and_config_bounds)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config cfg;
    tern_udp_config_default(&cfg);
    cfg.max_datagram = 512;
    rx r = {0};
    tern_udp *u = open_v4(&loop, &cfg, &r, NULL);
    struct sockaddr_storage to = addr_of(u);
    uint8_t buf[600] = {0};
    cr_assert_eq(tern_udp_send(u, buf, 513, (const struct sockaddr *)&to), TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_udp_send(u, buf, 512, (const struct sockaddr *)&to), 0);
    uint8_t *p = tern_udp_send_reserve(u);
    cr_assert_not_null(p);
    cr_assert_eq(tern_udp_send_commit(u, 513, (const struct sockaddr *)&to), TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_udp_send_commit(u, 10, (const struct sockaddr *)&to), TERN_ERR_STATE,
                 "a failed commit ends the reservation");
    cr_assert_not_null(tern_udp_send_reserve(u));
    cr_assert_eq(tern_udp_send(u, buf, 5, (const struct sockaddr *)&to), 0);
    cr_assert_eq(tern_udp_send_commit(u, 10, (const struct sockaddr *)&to), TERN_ERR_STATE,
                 "a send ends the reservation (it may take the reserved slot)");
    cr_assert_eq(tern_udp_send(u, NULL, 5, (const struct sockaddr *)&to), TERN_ERR_INVAL);
    cr_assert_eq(tern_udp_send(u, buf, 5, NULL), TERN_ERR_INVAL);
    struct sockaddr_in port0 = v4("127.0.0.1", 0);
    cr_assert_eq(tern_udp_send(u, buf, 5, (const struct sockaddr *)&port0), TERN_ERR_INVAL);
    struct sockaddr_in6 six = v6("::1", 9);
    cr_assert_eq(tern_udp_send(u, buf, 5, (const struct sockaddr *)&six), TERN_ERR_INVAL,
                 "an IPv4 socket cannot reach an IPv6 address");

    tern_udp *bad = NULL;
    struct sockaddr_in any = v4("127.0.0.1", 0);
    const struct sockaddr *bind = (const struct sockaddr *)&any;
    tern_udp_config c2 = cfg;
    c2.max_datagram = TERN_UDP_MAX_DATAGRAM + 1;
    cr_assert_eq(tern_udp_open(&bad, &loop, bind, &c2, on_rx, &r, NULL), TERN_ERR_INVAL);
    cr_assert_null(bad);
    c2 = cfg;
    c2.recv_batch = TERN_UDP_MAX_RECV_BATCH + 1;
    cr_assert_eq(tern_udp_open(&bad, &loop, bind, &c2, on_rx, &r, NULL), TERN_ERR_INVAL);
    c2 = cfg;
    c2.dscp = 64;
    cr_assert_eq(tern_udp_open(&bad, &loop, bind, &c2, on_rx, &r, NULL), TERN_ERR_INVAL);
    c2 = cfg;
    c2.rcvbuf = -1;
    cr_assert_eq(tern_udp_open(&bad, &loop, bind, &c2, on_rx, &r, NULL), TERN_ERR_INVAL);
    tern_netsim_cfg bad_model;
    tern_netsim_cfg_default(&bad_model);
    bad_model.loss = 1.5;
    c2 = cfg;
    c2.impair_send = &bad_model;
    cr_assert_eq(tern_udp_open(&bad, &loop, bind, &c2, on_rx, &r, NULL), TERN_ERR_RANGE);
    cr_assert_eq(tern_udp_open(&bad, &loop, bind, &cfg, NULL, &r, NULL), TERN_ERR_INVAL);
    cr_assert_eq(tern_udp_open(&bad, NULL, bind, &cfg, on_rx, &r, NULL), TERN_ERR_INVAL);
    cr_assert_eq(tern_udp_open(NULL, &loop, bind, &cfg, on_rx, &r, NULL), TERN_ERR_INVAL);
    struct sockaddr unix_family = {.sa_family = AF_UNIX};
    cr_assert_eq(tern_udp_open(&bad, &loop, &unix_family, &cfg, on_rx, &r, NULL), TERN_ERR_INVAL);
    cr_assert_null(bad);

    cr_assert(got_all(&loop, &r, 2));
    run_for(&loop, 10);
    cr_assert_eq(r.got, 2, "only the 512-byte and the 5-byte datagrams were sent");
    tern_udp_close(u, NULL, NULL);
    finish(&loop);
}

Test(udp, queue_full_drops_and_counts)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config cfg;
    tern_udp_config_default(&cfg);
    cfg.send_queue_max = 10;
    rx r = {0};
    tern_udp *recv = open_v4(&loop, NULL, &r, NULL);
    tern_udp *send = open_v4(&loop, &cfg, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(send_indexed(send, i, 200, &to), 0);
    cr_assert_eq(send_indexed(send, 10, 200, &to), TERN_ERR_WOULDBLOCK);
    cr_assert_null(tern_udp_send_reserve(send));
    cr_assert_eq(stats_of(send).send_dropped, 2);

    cr_assert_eq(tern_udp_flush(send), 0);
    cr_assert_eq(stats_of(send).dgrams_out, 10);
    /* Room again after the flush, through reserve/commit. */
    uint8_t *p = tern_udp_send_reserve(send);
    cr_assert_not_null(p);
    fill(p, 11, 200);
    cr_assert_eq(tern_udp_send_commit(send, 200, (const struct sockaddr *)&to), 0);
    cr_assert(got_all(&loop, &r, 11), "received %u of 11", r.got);
    run_for(&loop, 20);
    cr_assert_eq(r.got, 11);
    cr_assert_eq(r.seen[10], 0, "the dropped one never left");
    cr_assert_eq(r.seen[11], 1);
    cr_assert_eq(r.bad, 0);

    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

Test(udp, oversized_received_datagrams_are_counted_and_empty_ones_delivered)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config cfg;
    tern_udp_config_default(&cfg);
    cfg.max_datagram = 512;
    rx r = {0};
    tern_udp *recv = open_v4(&loop, &cfg, &r, NULL);
    tern_udp *send = open_v4(&loop, NULL, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    cr_assert_eq(send_indexed(send, 0, 600, &to), 0);
    cr_assert_eq(send_indexed(send, 1, 500, &to), 0);
    cr_assert_eq(tern_udp_send(send, NULL, 0, (const struct sockaddr *)&to), 0);
    cr_assert(got_all(&loop, &r, 2));
    run_for(&loop, 20);
    tern_udp_stats rs = stats_of(recv);
    cr_assert_eq(rs.dgrams_in, 3);
    cr_assert_eq(rs.recv_truncated, 1);
    cr_assert_eq(r.got, 2);
    cr_assert_eq(r.seen[1], 1);
    cr_assert_eq(r.empty, 1);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

Test(udp, kernel_refusal_is_counted_and_the_rest_still_leaves)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    rx r = {0};
    tern_udp *recv = open_v4(&loop, NULL, &r, NULL);
    tern_udp *send = open_v4(&loop, NULL, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    /* The loopback broadcast address without SO_BROADCAST: EACCES. */
    struct sockaddr_in bcast = v4("127.255.255.255", 9);
    struct sockaddr_storage bs;
    memset(&bs, 0, sizeof(bs));
    memcpy(&bs, &bcast, sizeof(bcast));
    cr_assert_eq(send_indexed(send, 0, 100, &to), 0);
    cr_assert_eq(send_indexed(send, 1, 100, &bs), 0);
    cr_assert_eq(send_indexed(send, 2, 100, &to), 0);
    cr_assert_eq(tern_udp_flush(send), 0);
    tern_udp_stats ss = stats_of(send);
    cr_assert_eq(ss.send_errors, 1);
    cr_assert_eq(ss.dgrams_out, 2);
    cr_assert_eq(tern_udp_last_uv_error(send), UV_EACCES, "uv error %d",
                 tern_udp_last_uv_error(send));
    cr_assert(got_all(&loop, &r, 2));
    cr_assert_eq(r.seen[0] + r.seen[2], 2);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

/* ---- libuv's per-event read bound ---- */

Test(udp, one_poll_event_reads_a_bounded_burst)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config cfg;
    tern_udp_config_default(&cfg);
    cfg.rcvbuf = 4 << 20;
    rx r = {0};
    tern_udp *recv = open_v4(&loop, &cfg, &r, NULL);
    struct sockaddr_storage to = addr_of(recv);

    /* 1000 datagrams waiting before the loop first polls. */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    uint8_t buf[1200];
    for (uint32_t i = 0; i < 1000; i++) {
        fill(buf, i, sizeof(buf));
        cr_assert_eq(sendto(fd, buf, sizeof(buf), 0, (const struct sockaddr *)&to,
                            sizeof(struct sockaddr_in)),
                     (ssize_t)sizeof(buf));
    }
    close(fd);

    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick, 2, 2);
    uint32_t prev = 0, max_per_iteration = 0, iterations = 0;
    uint64_t deadline = uv_hrtime() + RUN_TIMEOUT_MS * 1000000ull;
    while (r.got < 1000 && uv_hrtime() < deadline) {
        uv_run(&loop, UV_RUN_ONCE);
        uint32_t n = r.got - prev;
        prev = r.got;
        iterations += n > 0;
        if (n > max_per_iteration)
            max_per_iteration = n;
    }
    uv_close((uv_handle_t *)&t, NULL);
    cr_assert_eq(r.got, 1000);
    /* libuv stops reading once 32 have come in; a recvmmsg of up to 20 can
     * overshoot that by 19. */
    cr_assert_leq(max_per_iteration, 51, "one iteration read %u datagrams", max_per_iteration);
    cr_assert_geq(iterations, 1000 / 51, "only %u iterations", iterations);
    cr_assert_eq(r.bad + r.dup, 0);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

/* ---- impairment ---- */

/* Sends n datagrams through a socket whose impairment is `model` on one side
 * and returns how many the peer received. */
static uint32_t lossy_run(const tern_netsim_cfg *model, bool on_send, uint64_t seed, uint32_t n,
                          tern_udp_stats *sender, tern_udp_stats *receiver)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config sc, rc;
    tern_udp_config_default(&sc);
    tern_udp_config_default(&rc);
    rc.rcvbuf = 4 << 20; /* the whole burst fits: the loss is the model's */
    if (on_send) {
        sc.impair_send = model;
        sc.impair_seed = seed;
    } else {
        rc.impair_recv = model;
        rc.impair_seed = seed;
    }
    rx r = {0};
    tern_udp *recv = open_v4(&loop, &rc, &r, NULL);
    tern_udp *send = open_v4(&loop, &sc, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(send_indexed(send, i, 200, &to), 0);
    run_for(&loop, 60);
    *sender = stats_of(send);
    *receiver = stats_of(recv);
    cr_assert_eq(r.bad + r.dup, 0);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
    return r.got;
}

Test(udp, impairment_loss_is_seeded_and_about_half)
{
    tern_netsim_cfg model;
    tern_netsim_cfg_default(&model);
    model.loss = 0.5;
    tern_udp_stats s1, r1, s2, r2;

    uint32_t got = lossy_run(&model, true, 7, 1000, &s1, &r1);
    cr_assert(got >= 400 && got <= 600, "send side: %u of 1000 arrived", got);
    cr_assert_eq(s1.impair_send_stats.offered, 1000);
    cr_assert_eq(s1.impair_send_stats.lost_random, 1000 - got);
    cr_assert_eq(s1.dgrams_out, got);
    cr_assert_eq(lossy_run(&model, true, 7, 1000, &s2, &r2), got, "same seed, same trace");

    got = lossy_run(&model, false, 7, 1000, &s1, &r1);
    cr_assert(got >= 400 && got <= 600, "receive side: %u of 1000 delivered", got);
    cr_assert_eq(r1.dgrams_in, 1000, "all reached the socket");
    cr_assert_eq(r1.impair_recv_stats.lost_random, 1000 - got);
    cr_assert_eq(r1.dgrams_delivered, got);
}

Test(udp, impairment_corruption_flips_one_payload_bit_and_keeps_the_address)
{
    tern_netsim_cfg model;
    tern_netsim_cfg_default(&model);
    model.corrupt = 1.0;
    model.duplicate = 1.0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config ic;
    tern_udp_config_default(&ic);
    ic.impair_send = &model;
    ic.impair_seed = 3;
    uint8_t pattern[300];
    fill(pattern, 1, sizeof(pattern));
    rx r = {0};
    r.pattern = pattern;
    r.pattern_len = sizeof(pattern);
    tern_udp *recv = open_v4(&loop, NULL, &r, NULL);
    tern_udp *send = open_v4(&loop, &ic, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    for (uint32_t i = 0; i < 50; i++)
        cr_assert_eq(tern_udp_send(send, pattern, sizeof(pattern), (const struct sockaddr *)&to),
                     0);
    cr_assert(got_all(&loop, &r, 100), "received %u of 100 copies", r.got);
    run_for(&loop, 20);
    cr_assert_eq(r.got, 100);
    cr_assert_eq(r.bad, 0, "a copy differs by more than one bit or in length");
    cr_assert_eq(r.corrupt_one_bit, 100, "%u of 100 copies differ by one bit", r.corrupt_one_bit);
    tern_udp_stats ss = stats_of(send);
    cr_assert_eq(ss.impair_send_stats.duplicated, 50);
    cr_assert_eq(ss.impair_send_stats.corrupted, 100);
    cr_assert_eq(ss.dgrams_out, 100);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

static void delay_run(bool on_send)
{
    tern_netsim_cfg model;
    tern_netsim_cfg_default(&model);
    model.delay_ms = 30;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config ic;
    tern_udp_config_default(&ic);
    if (on_send)
        ic.impair_send = &model;
    else
        ic.impair_recv = &model;
    rx r = {0};
    tern_udp *recv = open_v4(&loop, on_send ? NULL : &ic, &r, NULL);
    tern_udp *send = open_v4(&loop, on_send ? &ic : NULL, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    uv_update_time(&loop);
    tern_ms sent_at = uv_now(&loop);
    uint64_t sent_hr = uv_hrtime();
    for (uint32_t i = 0; i < 5; i++)
        cr_assert_eq(send_indexed(send, i, 100, &to), 0);
    cr_assert(got_all(&loop, &r, 5), "received %u of 5", r.got);
    cr_assert_geq(r.last_now, sent_at + 30, "delivered after %llu ms",
                  (unsigned long long)(r.last_now - sent_at));
    uint64_t hr_ms = (r.last_hr - sent_hr) / 1000000u;
    /* The loop's clock may trail the wall clock by up to a millisecond or
     * two (a coarse clock), hence the margin. */
    cr_assert_geq(hr_ms, 27, "delivered after %llu ms of wall time", (unsigned long long)hr_ms);
    cr_assert_lt(hr_ms, 1000);
    cr_assert_eq(r.bad, 0);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

Test(udp, impairment_delay_on_send_holds_datagrams_30ms)
{
    delay_run(true);
}

Test(udp, impairment_delay_on_receive_holds_datagrams_30ms)
{
    delay_run(false);
}

/* ---- the filter hook ---- */

static bool drop_odd(void *user, const uint8_t *data, size_t len, const struct sockaddr *from)
{
    (void)from;
    (*(uint32_t *)user)++;
    uint32_t index;
    if (len < 4)
        return true;
    memcpy(&index, data, sizeof(index));
    return index % 2 == 0;
}

Test(udp, filter_hook_drops_and_counts)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    uint32_t calls = 0;
    tern_udp_config cfg;
    tern_udp_config_default(&cfg);
    cfg.filter = drop_odd;
    cfg.filter_user = &calls;
    rx r = {0};
    tern_udp *recv = open_v4(&loop, &cfg, &r, NULL);
    tern_udp *send = open_v4(&loop, NULL, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv);
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(send_indexed(send, i, 64, &to), 0);
    cr_assert(got_all(&loop, &r, 50));
    run_for(&loop, 20);
    cr_assert_eq(r.got, 50);
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(r.seen[i], i % 2 == 0, "datagram %u", i);
    tern_udp_stats rs = stats_of(recv);
    cr_assert_eq(calls, 100);
    cr_assert_eq(rs.filtered, 50);
    cr_assert_eq(rs.dgrams_in, 100);
    cr_assert_eq(rs.dgrams_delivered, 50);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}

/* ---- close ---- */

Test(udp, close_flushes_calls_back_once_and_frees_everything)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    counter c = {0};
    tern_mem mem = {count_malloc, count_free, &c};
    tern_netsim_cfg model;
    tern_netsim_cfg_default(&model);
    model.delay_ms = 1000; /* held when the socket closes: dropped, freed */
    tern_udp_config ic;
    tern_udp_config_default(&ic);
    ic.impair_recv = &model;
    rx r = {0};
    tern_udp *recv = open_v4(&loop, NULL, &r, &mem);
    tern_udp *send = open_v4(&loop, &ic, NULL, &mem);
    struct sockaddr_storage to = addr_of(recv), back = addr_of(send);
    cr_assert_gt(c.live, 0);
    /* One datagram into send's receive impairment, where close finds it. */
    cr_assert_eq(send_indexed(recv, 99, 100, &back), 0);
    run_for(&loop, 20);
    cr_assert_eq(stats_of(send).impair_recv_stats.offered, 1);

    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(send_indexed(send, i, 300, &to), 0);
    int closed = 0;
    tern_udp_close(send, on_close_count, &closed);
    tern_udp_close(send, on_close_count, &closed); /* ignored */
    cr_assert_eq(closed, 0, "close is asynchronous");
    cr_assert(got_all(&loop, &r, 10), "close flushed %u of 10", r.got);
    run_for(&loop, 10);
    cr_assert_eq(closed, 1);
    cr_assert_eq(r.bad, 0);

    int closed_recv = 0;
    tern_udp_close(recv, on_close_count, &closed_recv);
    finish(&loop);
    cr_assert_eq(closed, 1);
    cr_assert_eq(closed_recv, 1);
    cr_assert_eq(c.live, 0, "%zu bytes not freed", c.live);
}

Test(udp, calls_after_close_are_refused)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp *u = open_v4(&loop, NULL, NULL, NULL);
    struct sockaddr_storage to = addr_of(u);
    tern_udp_close(u, NULL, NULL);
    cr_assert_eq(send_indexed(u, 0, 10, &to), TERN_ERR_CLOSED);
    cr_assert_null(tern_udp_send_reserve(u));
    cr_assert_eq(tern_udp_send_commit(u, 10, (const struct sockaddr *)&to), TERN_ERR_CLOSED);
    cr_assert_eq(tern_udp_flush(u), TERN_ERR_CLOSED);
    cr_assert_eq(tern_udp_fileno(u), -1);
    finish(&loop);
}

Test(udp, close_from_the_recv_callback_stops_delivery)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    counter c = {0};
    tern_mem mem = {count_malloc, count_free, &c};
    rx r = {0};
    r.close_on_first = true;
    tern_udp *recv = open_v4(&loop, NULL, &r, &mem);
    tern_udp *send = open_v4(&loop, NULL, NULL, &mem);
    struct sockaddr_storage to = addr_of(recv);
    for (uint32_t i = 0; i < 50; i++)
        cr_assert_eq(send_indexed(send, i, 100, &to), 0);
    run_for(&loop, 30);
    cr_assert_eq(r.got, 1, "nothing is delivered after close (%u were)", r.got);
    cr_assert_eq(r.closed, 1);
    tern_udp_close(send, NULL, NULL);
    finish(&loop);
    cr_assert_eq(r.closed, 1);
    cr_assert_eq(c.live, 0, "%zu bytes not freed", c.live);
}

Test(udp, failed_bind_reports_the_uv_error_and_frees_everything)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    counter c = {0};
    tern_mem mem = {count_malloc, count_free, &c};
    tern_udp *u = open_v4(&loop, NULL, NULL, NULL);
    struct sockaddr_storage taken = addr_of(u);
    tern_udp *dup = NULL;
    int uv_err = 0;
    int rc = tern_udp_open_ex(&dup, &loop, (const struct sockaddr *)&taken, NULL, on_rx, NULL, &mem,
                              &uv_err);
    cr_assert_eq(rc, TERN_ERR_IO, "%s", tern_strerror(rc));
    cr_assert_eq(uv_err, UV_EADDRINUSE, "uv error %d", uv_err);
    cr_assert_null(dup);
    tern_udp_close(u, NULL, NULL);
    finish(&loop);
    cr_assert_eq(c.live, 0, "%zu bytes not freed", c.live);
}

/* ---- socket options ---- */

static int get_int_opt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof(v);
    cr_assert_eq(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

Test(udp, dscp_and_buffer_sizes_are_applied)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_udp_config cfg;
    tern_udp_config_default(&cfg);
    cfg.dscp = 46; /* EF */
    cfg.sndbuf = 1 << 20;
    cfg.rcvbuf = 1 << 20;
    tern_udp *a = open_v4(&loop, &cfg, NULL, NULL);
    int fd = tern_udp_fileno(a);
    cr_assert_eq(get_int_opt(fd, IPPROTO_IP, IP_TOS), 46 << 2);
    /* Linux reports twice what was set; at least what was asked either way. */
    cr_assert_geq(get_int_opt(fd, SOL_SOCKET, SO_RCVBUF), 1 << 20);
    cr_assert_geq(get_int_opt(fd, SOL_SOCKET, SO_SNDBUF), 1 << 20);

    cfg.dscp = 10;
    cfg.v6only = true;
    struct sockaddr_in6 b6 = v6("::1", 0);
    tern_udp *b = open_on(&loop, (const struct sockaddr *)&b6, &cfg, NULL, NULL);
    fd = tern_udp_fileno(b);
    cr_assert_eq(get_int_opt(fd, IPPROTO_IPV6, IPV6_TCLASS), 10 << 2);
    cr_assert_eq(get_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY), 1);
    struct sockaddr_in to4 = v4("127.0.0.1", 9);
    uint8_t x[4] = {0};
    cr_assert_eq(tern_udp_send(b, x, sizeof(x), (const struct sockaddr *)&to4), TERN_ERR_INVAL,
                 "a v6only socket cannot reach IPv4");
    tern_udp_close(a, NULL, NULL);
    tern_udp_close(b, NULL, NULL);
    finish(&loop);
}

Test(udp, dual_stack_socket_reaches_ipv4_through_mapped_addresses)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    rx r = {0};
    tern_udp *recv = open_v4(&loop, NULL, &r, NULL);
    struct sockaddr_in6 any6 = v6("::", 0);
    tern_udp *send = open_on(&loop, (const struct sockaddr *)&any6, NULL, NULL, NULL);
    struct sockaddr_storage to = addr_of(recv), from = addr_of(send);
    uint8_t *p = tern_udp_send_reserve(send);
    cr_assert_not_null(p);
    fill(p, 5, 80);
    cr_assert_eq(tern_udp_send_commit(send, 80, (const struct sockaddr *)&to), 0);
    cr_assert(got_all(&loop, &r, 1));
    cr_assert_eq(r.seen[5], 1);
    cr_assert_eq(r.bad, 0);
    cr_assert_eq(r.from.ss_family, AF_INET);
    const struct sockaddr_in *src = (const struct sockaddr_in *)&r.from;
    cr_assert_eq(src->sin_port, ((const struct sockaddr_in6 *)&from)->sin6_port);
    tern_udp_close(send, NULL, NULL);
    tern_udp_close(recv, NULL, NULL);
    finish(&loop);
}
