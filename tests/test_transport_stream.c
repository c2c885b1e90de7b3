/* Stream semantics over loopback: half-close each way, reset in both
 * directions, the per-session stream limit, the write-queue bound, callback
 * accounting when a session dies under pending writes, priorities, and a
 * 100 MB byte-exact transfer. */
#include <stdlib.h>

#include "transport_util.h"

typedef struct side {
    tern_stream *st;
    uint64_t received;
    int eof, reset, other_end, reads_after_end;
    int end_status;
    bool bad;
    uint32_t seed;
} side;

static side srv_side, cli_side;
static int srv_streams, write_cbs, write_errors, shutdown_cbs, close_cbs;
static bool srv_reset_on_first_byte;
static bool srv_stop_on_first_byte;

static void alloc_cb(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)st;
    buf->base = malloc(suggested);
    buf->len = suggested;
}

static void read_into(side *sd, ssize_t n, const uv_buf_t *buf)
{
    if (sd->eof || sd->reset || sd->other_end)
        sd->reads_after_end++;
    if (n > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if ((uint8_t)buf->base[i] != tu_byte(sd->received + (uint64_t)i, sd->seed))
                sd->bad = true;
        }
        sd->received += (uint64_t)n;
    } else if (n == TERN_ERR_EOF) {
        sd->eof++;
    } else if (n == TERN_ERR_RESET) {
        sd->reset++;
    } else {
        sd->other_end++;
        sd->end_status = (int)n;
    }
    free(buf->base);
}

static void srv_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    read_into(&srv_side, n, buf);
    if (n > 0 && srv_reset_on_first_byte) {
        srv_reset_on_first_byte = false;
        cr_assert_eq(tern_stream_reset(st), 0);
    }
    if (n > 0 && srv_stop_on_first_byte) {
        srv_stop_on_first_byte = false;
        cr_assert_eq(tern_stream_read_stop(st), 0);
    }
}

static void cli_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    (void)st;
    read_into(&cli_side, n, buf);
}

static void srv_stream(tern_session *s, tern_stream *st)
{
    (void)s;
    srv_streams++;
    srv_side.st = st;
    srv_side.seed = 1;
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, srv_read), 0);
}

static tern_session *srv_session;
static int srv_session_closes;

static void srv_close(tern_session *s, int status)
{
    (void)s;
    (void)status;
    srv_session_closes++;
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    srv_session = s;
    tern_session_callbacks cbs = {.stream_cb = srv_stream, .close_cb = srv_close};
    tern_session_set_callbacks(s, &cbs);
}

static int connected;

static void on_connect(tern_session *s, int status)
{
    (void)s;
    connected = status == 0 ? 1 : -1;
}

static bool is_connected(void *arg)
{
    (void)arg;
    return connected != 0;
}

typedef struct pair {
    uv_loop_t loop;
    tern_endpoint *srv, *cli;
    tern_session *s;
} pair;

static void pair_open(pair *p, void (*tweak)(tern_endpoint_config *))
{
    memset(&srv_side, 0, sizeof(srv_side));
    memset(&cli_side, 0, sizeof(cli_side));
    srv_streams = write_cbs = write_errors = shutdown_cbs = close_cbs = 0;
    srv_session_closes = 0;
    srv_session = NULL;
    srv_reset_on_first_byte = false;
    srv_stop_on_first_byte = false;
    connected = 0;
    uv_loop_init(&p->loop);
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    if (tweak)
        tweak(&cfg);
    p->srv = tu_endpoint(&p->loop, &cfg);
    p->cli = tu_endpoint(&p->loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(p->srv, on_accept), 0);
    struct sockaddr_storage to = tu_local(p->srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {.connect_cb = on_connect};
    cr_assert_eq(tern_endpoint_connect(p->cli, addrs, 1, 0, &cbs, &p->s), 0);
    cr_assert(tu_run_until(&p->loop, is_connected, NULL, 3000));
    cr_assert_eq(connected, 1);
}

static void pair_close(pair *p)
{
    tern_endpoint *eps[] = {p->cli, p->srv};
    tu_close_all(&p->loop, eps, 2);
}

static void counted_write(tern_stream *st, int status, void *arg)
{
    (void)st;
    write_cbs++;
    if (status < 0)
        write_errors++;
    free(arg);
}

static void counted_shutdown(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)arg;
    cr_assert_eq(status, 0);
    shutdown_cbs++;
}

static void counted_close(tern_stream *st)
{
    (void)st;
    close_cbs++;
}

static void write_pattern(tern_stream *st, uint64_t from, size_t n, uint32_t seed)
{
    uint8_t *p = malloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = tu_byte(from + i, seed);
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    cr_assert_eq(tern_stream_write(st, &b, 1, counted_write, p), 0);
}

static bool srv_eof(void *arg)
{
    (void)arg;
    return srv_side.eof > 0;
}

static bool cli_eof(void *arg)
{
    (void)arg;
    return cli_side.eof > 0;
}

Test(stream, half_close_each_way_then_close)
{
    pair p;
    pair_open(&p, NULL);
    tern_stream *st;
    cr_assert_eq(tern_stream_open(p.s, &st), 0);
    cli_side.seed = 2;
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, cli_read), 0);
    write_pattern(st, 0, 10000, 1);
    cr_assert_eq(tern_stream_shutdown(st, counted_shutdown, NULL), 0);
    cr_assert_eq(tern_stream_shutdown(st, NULL, NULL), TERN_ERR_STATE);
    uv_buf_t b = uv_buf_init("x", 1);
    cr_assert_eq(tern_stream_write(st, &b, 1, NULL, NULL), TERN_ERR_STATE);
    cr_assert(tu_run_until(&p.loop, srv_eof, NULL, 3000));
    cr_assert_eq(srv_side.received, 10000);
    cr_assert_not(srv_side.bad);
    /* The server's side is still open: it can answer after our EOF. */
    write_pattern(srv_side.st, 0, 5000, 2);
    cr_assert_eq(tern_stream_shutdown(srv_side.st, NULL, NULL), 0);
    cr_assert(tu_run_until(&p.loop, cli_eof, NULL, 3000));
    cr_assert_eq(cli_side.received, 5000);
    cr_assert_not(cli_side.bad);
    cr_assert_eq(shutdown_cbs, 1);
    cr_assert_eq(write_cbs, 2);
    cr_assert_eq(write_errors, 0);
    cr_assert_eq(tern_stream_close(st, counted_close), 0);
    cr_assert_eq(tern_stream_close(st, counted_close), TERN_ERR_CLOSED);
    cr_assert_eq(tern_stream_close(srv_side.st, counted_close), 0);
    for (int i = 0; i < 20; i++)
        uv_run(&p.loop, UV_RUN_NOWAIT);
    cr_assert_eq(close_cbs, 2);
    cr_assert_eq(srv_side.reads_after_end + cli_side.reads_after_end, 0);
    cr_assert_eq(srv_side.reset + cli_side.reset, 0, "a graceful close is not a reset");
    pair_close(&p);
}

static bool cli_reset(void *arg)
{
    (void)arg;
    return cli_side.reset > 0;
}

static bool srv_reset(void *arg)
{
    (void)arg;
    return srv_side.reset > 0;
}

Test(stream, reset_by_the_reader_reaches_the_writer)
{
    pair p;
    pair_open(&p, NULL);
    srv_reset_on_first_byte = true;
    tern_stream *st;
    cr_assert_eq(tern_stream_open(p.s, &st), 0);
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, cli_read), 0);
    write_pattern(st, 0, 100000, 1);
    cr_assert(tu_run_until(&p.loop, cli_reset, NULL, 3000));
    cr_assert_eq(cli_side.reset, 1, "RESET delivered once");
    uv_buf_t b = uv_buf_init("x", 1);
    cr_assert_eq(tern_stream_write(st, &b, 1, NULL, NULL), TERN_ERR_CLOSED);
    cr_assert_eq(write_cbs, 1, "the write callback ran exactly once");
    cr_assert_eq(tern_stream_close(st, counted_close), 0);
    for (int i = 0; i < 20; i++)
        uv_run(&p.loop, UV_RUN_NOWAIT);
    cr_assert_eq(close_cbs, 1);
    pair_close(&p);
}

static bool srv_got_1000(void *arg)
{
    (void)arg;
    return srv_side.received >= 1000;
}

Test(stream, reset_by_the_writer_reaches_the_reader)
{
    pair p;
    pair_open(&p, NULL);
    tern_stream *st;
    cr_assert_eq(tern_stream_open(p.s, &st), 0);
    write_pattern(st, 0, 1000, 1);
    cr_assert(tu_run_until(&p.loop, srv_got_1000, NULL, 3000));
    cr_assert_eq(tern_stream_reset(st), 0);
    cr_assert(tu_run_until(&p.loop, srv_reset, NULL, 3000));
    cr_assert_eq(srv_side.reset, 1);
    cr_assert_eq(srv_side.eof, 0);
    pair_close(&p);
}

/* A reset that arrives while the reader has stopped reading is not lost:
 * the next read_start reports it, once. */
Test(stream, reset_while_reading_stopped_is_reported_on_read_start)
{
    pair p;
    pair_open(&p, NULL);
    srv_stop_on_first_byte = true;
    tern_stream *st;
    cr_assert_eq(tern_stream_open(p.s, &st), 0);
    write_pattern(st, 0, 1000, 1);
    cr_assert(tu_run_until(&p.loop, srv_got_1000, NULL, 3000));
    cr_assert_eq(tern_stream_reset(st), 0);
    /* Long enough for the RESET to arrive: nothing may be said meanwhile. */
    (void)tu_run_until(&p.loop, tu_never, NULL, 300);
    cr_assert_eq(srv_side.reset, 0, "read_cb ran while reading was stopped");
    cr_assert_eq(tern_stream_read_start(srv_side.st, alloc_cb, srv_read), 0);
    cr_assert(tu_run_until(&p.loop, srv_reset, NULL, 3000));
    cr_assert_eq(srv_side.reset, 1);
    cr_assert_eq(srv_side.reads_after_end, 0);
    cr_assert_eq(tern_stream_read_start(srv_side.st, alloc_cb, srv_read), TERN_ERR_CLOSED,
                 "the end is reported once");
    pair_close(&p);
}

static void few_streams(tern_endpoint_config *cfg)
{
    cfg->max_streams = 3;
}

Test(stream, stream_limit_both_sides)
{
    pair p;
    pair_open(&p, few_streams);
    tern_stream *st[4];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(tern_stream_open(p.s, &st[i]), 0);
    cr_assert_eq(tern_stream_open(p.s, &st[3]), TERN_ERR_LIMIT);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tern_stream_read_start(st[i], alloc_cb, cli_read), 0);
        write_pattern(st[i], 0, 100, 1);
    }
    uint64_t t0 = uv_now(&p.loop);
    while (srv_streams < 3 && uv_now(&p.loop) - t0 < 2000)
        uv_run(&p.loop, UV_RUN_ONCE);
    cr_assert_eq(srv_streams, 3);
    pair_close(&p);
}

static void small_queue(tern_endpoint_config *cfg)
{
    cfg->stream_write_max = 64 << 10;
}

Test(stream, write_queue_bound_says_wouldblock)
{
    pair p;
    pair_open(&p, small_queue);
    tern_stream *st;
    cr_assert_eq(tern_stream_open(p.s, &st), 0);
    /* Nobody reads on the other side: the queue fills and stays bounded. */
    srv_side.seed = 1;
    int accepted_writes = 0, refused = 0;
    for (int i = 0; i < 100; i++) {
        uint8_t *buf = malloc(16384);
        memset(buf, 1, 16384);
        uv_buf_t b = uv_buf_init((char *)buf, 16384);
        int rc = tern_stream_write(st, &b, 1, counted_write, buf);
        if (rc == TERN_ERR_WOULDBLOCK) {
            free(buf);
            refused++;
        } else {
            cr_assert_eq(rc, 0);
            accepted_writes++;
        }
    }
    cr_assert_gt(refused, 0);
    cr_assert_leq((size_t)accepted_writes * 16384, (64 << 10) + 16384);
    cr_assert_geq(tern_stream_write_queue_size(st), 64 << 10);
    pair_close(&p);
    /* Every accepted write's callback ran exactly once (with an error: the
     * endpoint closed under it, or 0 if it reached the engine). */
    cr_assert_eq(write_cbs, accepted_writes);
}

Test(stream, session_end_fails_pending_writes_once)
{
    pair p;
    pair_open(&p, NULL);
    tern_stream *st;
    cr_assert_eq(tern_stream_open(p.s, &st), 0);
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, cli_read), 0);
    for (int i = 0; i < 50; i++)
        write_pattern(st, 0, 65536, 1);
    cr_assert_eq(tern_session_abort(p.s), 0);
    for (int i = 0; i < 20; i++)
        uv_run(&p.loop, UV_RUN_NOWAIT);
    cr_assert_eq(write_cbs, 50, "every write callback once");
    cr_assert_gt(write_errors, 0, "writes not in the engine fail");
    cr_assert_eq(cli_side.other_end, 1, "the reader learns the end once");
    cr_assert_eq(cli_side.end_status, TERN_ERR_CANCELED);
    pair_close(&p);
}

/* ---- priorities ---- */

static uint64_t hi_done_at, lo_done_at;
static side hi_side, lo_side;

static void prio_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    side *sd = tern_stream_get_data(st);
    if (n > 0)
        sd->received += (uint64_t)n;
    else if (n == TERN_ERR_EOF)
        sd->eof = 1;
    free(buf->base);
}

static void prio_stream(tern_session *s, tern_stream *st)
{
    (void)s;
    /* Streams arrive in id order: the bulk one (1) first. */
    tern_stream_set_data(st, srv_streams++ == 0 ? &lo_side : &hi_side);
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, prio_read), 0);
}

static void prio_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    tern_session_callbacks cbs = {.stream_cb = prio_stream};
    tern_session_set_callbacks(s, &cbs);
}

static bool both_eof(void *arg)
{
    uv_loop_t *loop = arg;
    if (hi_side.eof && !hi_done_at)
        hi_done_at = uv_now(loop);
    if (lo_side.eof && !lo_done_at)
        lo_done_at = uv_now(loop);
    return hi_side.eof && lo_side.eof;
}

static void reno_narrow(tern_endpoint_config *cfg)
{
    /* A shared, narrow congestion window (reno, 10 ms of delay) is what
     * priorities share out. */
    cfg->kcp.cc = tern_kcp_cc_find("reno");
    static tern_netsim_cfg delay;
    tern_netsim_cfg_default(&delay);
    delay.delay_ms = 10;
    cfg->impair_send = &delay;
}

Test(stream, high_priority_stream_overtakes_bulk)
{
    memset(&hi_side, 0, sizeof(hi_side));
    memset(&lo_side, 0, sizeof(lo_side));
    hi_done_at = lo_done_at = 0;
    srv_streams = 0;
    connected = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    reno_narrow(&cfg);
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    tern_endpoint *cli = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, prio_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {.connect_cb = on_connect};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &s), 0);
    cr_assert(tu_run_until(&loop, is_connected, NULL, 3000));
    tern_stream *bulk, *urgent;
    cr_assert_eq(tern_stream_open(s, &bulk), 0);
    cr_assert_eq(tern_stream_set_priority(bulk, 7, 1), 0);
    cr_assert_eq(tern_stream_set_priority(bulk, 8, 1), TERN_ERR_INVAL);
    for (int i = 0; i < 32; i++)
        write_pattern(bulk, 0, 65536, 1);
    cr_assert_eq(tern_stream_shutdown(bulk, NULL, NULL), 0);
    /* Let the bulk transfer fill the window first. */
    for (int i = 0; i < 10; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(tern_stream_open(s, &urgent), 0);
    cr_assert_eq(tern_stream_set_priority(urgent, 0, 1), 0);
    write_pattern(urgent, 0, 65536, 1);
    cr_assert_eq(tern_stream_shutdown(urgent, NULL, NULL), 0);
    cr_assert(tu_run_until(&loop, both_eof, &loop, 20000));
    cr_assert_eq(lo_side.received, 32 * 65536);
    cr_assert_eq(hi_side.received, 65536);
    cr_assert_lt(hi_done_at, lo_done_at, "the urgent stream waited for the bulk one");
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}

/* ---- 100 MB ---- */

static uint64_t big_total, big_sent;
static int big_pending;
static tern_stream *big_st;

static void big_pump(void);

static void big_wrote(tern_stream *st, int status, void *arg)
{
    (void)st;
    cr_assert_eq(status, 0);
    free(arg);
    big_pending--;
    big_pump();
}

static void big_pump(void)
{
    while (big_sent < big_total && big_pending < 4) {
        size_t n = 1 << 20;
        uint8_t *p = malloc(n);
        for (size_t i = 0; i < n; i++)
            p[i] = tu_byte(big_sent + i, 1);
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int rc = tern_stream_write(big_st, &b, 1, big_wrote, p);
        if (rc == TERN_ERR_WOULDBLOCK) {
            free(p);
            return;
        }
        cr_assert_eq(rc, 0);
        big_sent += n;
        big_pending++;
    }
    if (big_sent == big_total && big_pending == 0)
        (void)tern_stream_shutdown(big_st, NULL, NULL);
}

static void big_windows(tern_endpoint_config *cfg)
{
    cfg->kcp.snd_wnd = 1024;
    cfg->kcp.rcv_wnd = 1024;
    cfg->rcvbuf = cfg->sndbuf = 4 << 20;
}

Test(stream, hundred_megabytes_byte_exact, .timeout = 300)
{
    pair p;
    pair_open(&p, big_windows);
    big_total = (uint64_t)100 << 20;
    big_sent = 0;
    big_pending = 0;
    cr_assert_eq(tern_stream_open(p.s, &big_st), 0);
    big_pump();
    cr_assert(tu_run_until(&p.loop, srv_eof, NULL, 240000), "received %llu",
              (unsigned long long)srv_side.received);
    cr_assert_eq(srv_side.received, big_total);
    cr_assert_not(srv_side.bad);
    pair_close(&p);
}
