/* The transport under network trouble, over real loopback sockets: loss,
 * reordering and duplication from the endpoint's built-in impairment, a
 * NAT rebinding in the middle of a transfer, many sessions at once, and
 * classic-KCP compatibility with a plain engine on a plain socket. */
#include <stdlib.h>

#include "transport_util.h"

/* ---- a stream sink/echo shared by the tests ---- */

typedef struct flow {
    tern_stream *st;
    uint64_t to_send, sent, received;
    uint32_t seed;
    bool eof, bad;
    int pending;
} flow;

static void alloc_cb(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)st;
    buf->base = malloc(suggested);
    buf->len = suggested;
}

static void echo_written(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)status;
    free(arg);
}

static void echo_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    if (n > 0) {
        uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
        cr_assert_eq(tern_stream_write(st, &out, 1, echo_written, buf->base), 0);
        return;
    }
    free(buf->base);
    if (n == TERN_ERR_EOF)
        (void)tern_stream_shutdown(st, NULL, NULL);
}

static void echo_stream(tern_session *s, tern_stream *st)
{
    (void)s;
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, echo_read), 0);
}

static int accepted;

static void echo_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    accepted++;
    tern_session_callbacks cbs = {.stream_cb = echo_stream};
    tern_session_set_callbacks(s, &cbs);
}

static void flow_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    flow *f = tern_stream_get_data(st);
    if (n > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if ((uint8_t)buf->base[i] != tu_byte(f->received + (uint64_t)i, f->seed))
                f->bad = true;
        }
        f->received += (uint64_t)n;
    } else if (n == TERN_ERR_EOF) {
        f->eof = true;
    }
    free(buf->base);
}

static void flow_pump(flow *f);

static void flow_wrote(tern_stream *st, int status, void *arg)
{
    flow *f = tern_stream_get_data(st);
    free(arg);
    cr_assert_eq(status, 0);
    f->pending--;
    flow_pump(f);
}

static void flow_pump(flow *f)
{
    while (f->sent < f->to_send && f->pending < 2) {
        size_t n = f->to_send - f->sent < 32768 ? (size_t)(f->to_send - f->sent) : 32768;
        uint8_t *p = malloc(n);
        for (size_t i = 0; i < n; i++)
            p[i] = tu_byte(f->sent + i, f->seed);
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int rc = tern_stream_write(f->st, &b, 1, flow_wrote, p);
        if (rc == TERN_ERR_WOULDBLOCK) {
            free(p);
            return;
        }
        cr_assert_eq(rc, 0, "%s", tern_strerror(rc));
        f->sent += n;
        f->pending++;
    }
    if (f->sent == f->to_send && f->pending == 0)
        (void)tern_stream_shutdown(f->st, NULL, NULL);
}

static void flow_start(flow *f, tern_session *s, uint64_t bytes, uint32_t seed)
{
    f->to_send = bytes;
    f->seed = seed;
    cr_assert_eq(tern_stream_open(s, &f->st), 0);
    tern_stream_set_data(f->st, f);
    cr_assert_eq(tern_stream_read_start(f->st, alloc_cb, flow_read), 0);
    flow_pump(f);
}

typedef struct flows {
    flow *f;
    size_t n;
} flows;

static bool flows_done(void *arg)
{
    flows *fs = arg;
    for (size_t i = 0; i < fs->n; i++) {
        if (!fs->f[i].eof)
            return false;
    }
    return true;
}

static void plain(tern_endpoint_config *cfg)
{
    tern_endpoint_config_default(cfg);
    cfg->security = TERN_SECURITY_PLAINTEXT;
}

/* ---- loss ---- */

static void lossy(tern_netsim_cfg *n)
{
    tern_netsim_cfg_default(n);
    n->loss = 0.10;
    n->reorder = 0.05;
    n->reorder_ms = 10;
    n->duplicate = 0.02;
    n->delay_ms = 2;
    n->jitter_ms = 3;
}

static void lossy_streams(const char *cc, int n_flows, uint64_t bytes)
{
    accepted = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    plain(&scfg);
    plain(&ccfg);
    tern_netsim_cfg imp;
    lossy(&imp);
    scfg.impair_send = ccfg.impair_send = &imp;
    scfg.kcp.cc = ccfg.kcp.cc = tern_kcp_cc_find(cc);
    scfg.impair_seed = 11;
    ccfg.impair_seed = 12;
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    cr_assert_eq(tern_endpoint_listen(srv, echo_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, NULL, &s), 0);
    flow f[4];
    memset(f, 0, sizeof(f));
    for (int i = 0; i < n_flows; i++)
        flow_start(&f[i], s, bytes, (uint32_t)i + 1);
    flows fs = {f, (size_t)n_flows};
    cr_assert(tu_run_until(&loop, flows_done, &fs, 30000), "%llu %llu %llu %llu",
              (unsigned long long)f[0].received, (unsigned long long)f[1].received,
              (unsigned long long)f[2].received, (unsigned long long)f[3].received);
    for (int i = 0; i < n_flows; i++) {
        cr_assert_eq(f[i].received, f[i].to_send);
        cr_assert_not(f[i].bad);
    }
    tern_session_stats ss;
    tern_session_get_stats(s, &ss);
    cr_assert_gt(ss.kcp.retrans_fast + ss.kcp.retrans_timeout + ss.kcp.retrans_early, 0,
                 "no loss was repaired: is the impairment on?");
    /* Under a congestion window the session paces; without one it does not. */
    if (strcmp(cc, "reno") == 0)
        cr_assert_gt(ss.pacing_rate, 0);
    else
        cr_assert_eq(ss.pacing_rate, 0);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}

Test(net, streams_survive_10pct_loss_reorder_dup)
{
    lossy_streams("none", 4, 300000);
}

/* Reno shares one window among the session's streams: slower under random
 * loss, but just as exact. */
Test(net, streams_survive_loss_with_reno)
{
    lossy_streams("reno", 2, 60000);
}

/* ---- NAT rebinding: a relay that changes its upstream port mid-way ---- */

typedef struct relay {
    uv_udp_t front;   /* the client talks to this */
    uv_udp_t up[2];   /* towards the server, from two different ports */
    int active;
    struct sockaddr_storage client, server;
    uint64_t forwarded;
    uint64_t switch_after;
} relay;

static void relay_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    static char slab[65536];
    (void)suggested;
    buf->base = slab;
    buf->len = sizeof(slab);
}

static void relay_send(uv_udp_t *h, const uv_buf_t *buf, ssize_t n, const struct sockaddr *to)
{
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
    (void)uv_udp_try_send(h, &b, 1, to);
}

static void relay_front(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                        unsigned flags)
{
    (void)flags;
    relay *r = h->data;
    if (n <= 0 || !from)
        return;
    memcpy(&r->client, from, sizeof(struct sockaddr_in));
    if (++r->forwarded == r->switch_after)
        r->active = 1;
    relay_send(&r->up[r->active], buf, n, (const struct sockaddr *)&r->server);
}

static void relay_back(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                       unsigned flags)
{
    (void)flags;
    relay *r = h->data;
    if (n <= 0 || !from)
        return;
    relay_send(&r->front, buf, n, (const struct sockaddr *)&r->client);
}

static void relay_open(uv_loop_t *loop, relay *r, const struct sockaddr_storage *server)
{
    memset(r, 0, sizeof(*r));
    r->server = *server;
    struct sockaddr_storage any = tu_addr("127.0.0.1:0");
    uv_udp_t *hs[] = {&r->front, &r->up[0], &r->up[1]};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(uv_udp_init(loop, hs[i]), 0);
        hs[i]->data = r;
        cr_assert_eq(uv_udp_bind(hs[i], (const struct sockaddr *)&any, 0), 0);
        cr_assert_eq(uv_udp_recv_start(hs[i], relay_alloc, i == 0 ? relay_front : relay_back), 0);
    }
}

static void relay_close(relay *r)
{
    uv_close((uv_handle_t *)&r->front, NULL);
    uv_close((uv_handle_t *)&r->up[0], NULL);
    uv_close((uv_handle_t *)&r->up[1], NULL);
}

static int path_changes;

static void count_paths(tern_endpoint *ep, const tern_trace_event *ev, void *user)
{
    (void)ep;
    (void)user;
    if (ev->kind == TERN_TRACE_PATH_CHANGE)
        path_changes++;
    char line[256];
    cr_assert_gt(tern_trace_format_json(ev, line, sizeof(line)), 0);
    cr_assert_eq(line[0], '{');
}

Test(net, nat_rebinding_keeps_the_session)
{
    accepted = 0;
    path_changes = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cr_assert_eq(tern_crypto_init(), 0);
    tern_keypair kp;
    cr_assert_eq(tern_keypair_generate(&kp), 0);
    tern_endpoint_config scfg, ccfg;
    tern_endpoint_config_default(&scfg);
    tern_endpoint_config_default(&ccfg);
    scfg.noise.static_key = &kp;
    ccfg.noise.server_public = &kp.pub;
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    tern_endpoint_set_trace(srv, count_paths, NULL);
    cr_assert_eq(tern_endpoint_listen(srv, echo_accept), 0);
    struct sockaddr_storage server_addr = tu_local(srv);
    relay r;
    relay_open(&loop, &r, &server_addr);
    r.switch_after = 200; /* well inside the transfer */
    struct sockaddr_in front;
    int len = sizeof(front);
    cr_assert_eq(uv_udp_getsockname(&r.front, (struct sockaddr *)&front, &len), 0);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&front};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, NULL, &s), 0);
    flow f;
    memset(&f, 0, sizeof(f));
    flow_start(&f, s, 2000000, 99);
    flows fs = {&f, 1};
    cr_assert(tu_run_until(&loop, flows_done, &fs, 20000), "received %llu",
              (unsigned long long)f.received);
    cr_assert_eq(f.received, f.to_send);
    cr_assert_not(f.bad);
    cr_assert_gt(r.forwarded, r.switch_after, "the relay never switched");
    cr_assert_eq(path_changes, 1);
    cr_assert_eq(accepted, 1, "one session throughout");
    relay_close(&r);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}

/* ---- many sessions ---- */

Test(net, many_sessions_one_endpoint)
{
    accepted = 0;
    enum { N = 1000 };
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    plain(&scfg);
    plain(&ccfg);
    /* Small windows: 1000 sessions' worth of default buffers is a lot. */
    scfg.kcp.snd_wnd = ccfg.kcp.snd_wnd = 32;
    scfg.kcp.rcv_wnd = ccfg.kcp.rcv_wnd = 64;
    scfg.rcvbuf = ccfg.rcvbuf = 4 << 20;
    scfg.ratelimit.per_source_rate = 100000;
    scfg.ratelimit.per_source_burst = 100000;
    scfg.ratelimit.load_rate = 100000;
    scfg.ratelimit.load_burst = 100000;
    scfg.ratelimit.halfopen_max = 4096;
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    cr_assert_eq(tern_endpoint_listen(srv, echo_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    flow *f = calloc(N, sizeof(*f));
    for (int i = 0; i < N; i++) {
        tern_session *s;
        cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, NULL, &s), 0);
        flow_start(&f[i], s, 4096, (uint32_t)i);
    }
    flows fs = {f, N};
    cr_assert(tu_run_until(&loop, flows_done, &fs, 30000));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(f[i].received, 4096);
        cr_assert_not(f[i].bad);
    }
    tern_endpoint_stats es;
    tern_endpoint_get_stats(srv, &es);
    cr_assert_eq(es.sessions_accepted, N);
    cr_assert_eq(es.sessions_now, N);
    free(f);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}

/* ---- channel delivery under loss ---- */

enum { CH_ORDERED, CH_UNORDERED, CH_DEADLINE };

typedef struct ch_log {
    int count[3];
    int out_of_order[3];
    int last[3];
    uint8_t seen[3][1000];
    bool dup;
} ch_log;

static ch_log chl;

static void ch_record(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    (void)s;
    cr_assert_eq(len, 600);
    int id = (int)(data[0] | (data[1] << 8));
    cr_assert_lt(id, 1000);
    if (chl.seen[ch][id])
        chl.dup = true;
    chl.seen[ch][id] = 1;
    if (chl.count[ch] > 0 && id < chl.last[ch])
        chl.out_of_order[ch]++;
    chl.last[ch] = id;
    chl.count[ch]++;
}

static void ch_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    accepted++;
    tern_session_callbacks cbs = {.message_cb = ch_record};
    tern_session_set_callbacks(s, &cbs);
}

static bool ch_done(void *arg)
{
    int want = *(int *)arg;
    return chl.count[CH_ORDERED] >= want && chl.count[CH_UNORDERED] >= want;
}

static void channel_table(tern_endpoint_config *cfg)
{
    cfg->n_channels = 3;
    cfg->channels[CH_ORDERED] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .weight = 1};
    cfg->channels[CH_UNORDERED] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_UNORDERED, .weight = 1};
    cfg->channels[CH_DEADLINE] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .weight = 1};
}

static int connected_flag;

static void ch_connect(tern_session *s, int status)
{
    (void)s;
    connected_flag = status == 0 ? 1 : -1;
}

static bool ch_connected(void *arg)
{
    (void)arg;
    return connected_flag != 0;
}

Test(net, reliable_unordered_delivers_past_losses_exactly_once)
{
    memset(&chl, 0, sizeof(chl));
    accepted = connected_flag = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    plain(&scfg);
    plain(&ccfg);
    channel_table(&scfg);
    channel_table(&ccfg);
    tern_netsim_cfg imp;
    lossy(&imp);
    ccfg.impair_send = &imp;
    ccfg.impair_seed = 5;
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    cr_assert_eq(tern_endpoint_listen(srv, ch_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {.connect_cb = ch_connect};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &s), 0);
    cr_assert(tu_run_until(&loop, ch_connected, NULL, 5000));
    int want = 400;
    uint8_t msg[600] = {0};
    for (int i = 0; i < want; i++) {
        msg[0] = (uint8_t)i;
        msg[1] = (uint8_t)(i >> 8);
        cr_assert_eq(tern_session_send(s, CH_ORDERED, msg, sizeof(msg), 0), 0);
        cr_assert_eq(tern_session_send(s, CH_UNORDERED, msg, sizeof(msg), 0), 0);
    }
    cr_assert(tu_run_until(&loop, ch_done, &want, 20000), "%d %d", chl.count[0], chl.count[1]);
    cr_assert_not(chl.dup, "a message delivered twice");
    cr_assert_eq(chl.out_of_order[CH_ORDERED], 0);
    cr_assert_gt(chl.out_of_order[CH_UNORDERED], 0,
                 "10%% loss and no message overtook a lost one: not unordered");
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}

static bool deadline_done(void *arg)
{
    (void)arg;
    return chl.count[CH_DEADLINE] > 0 && chl.seen[CH_DEADLINE][999];
}

Test(net, deadline_messages_are_dropped_not_retransmitted)
{
    memset(&chl, 0, sizeof(chl));
    accepted = connected_flag = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    plain(&scfg);
    plain(&ccfg);
    channel_table(&scfg);
    channel_table(&ccfg);
    /* The client's sends vanish for 600 ms, starting 300 ms from now. */
    tern_netsim_cfg cut;
    tern_netsim_cfg_default(&cut);
    tern_ms t0 = uv_now(&loop);
    cut.n_partitions = 1;
    cut.partitions[0] = (tern_netsim_partition){t0 + 300, t0 + 900};
    ccfg.impair_send = &cut;
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    cr_assert_eq(tern_endpoint_listen(srv, ch_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {.connect_cb = ch_connect};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &s), 0);
    cr_assert(tu_run_until(&loop, ch_connected, NULL, 2000));
    /* Wait for the partition, then send 50 messages that may live 100 ms. */
    tu_run_to(&loop, t0 + 350);
    uint8_t msg[600] = {0};
    for (int i = 0; i < 50; i++) {
        msg[0] = (uint8_t)i;
        cr_assert_eq(tern_session_send(s, CH_DEADLINE, msg, sizeof(msg), 100), 0);
    }
    /* After the partition, one more that must arrive. */
    tu_run_to(&loop, t0 + 950);
    msg[0] = (uint8_t)(999 & 0xFF);
    msg[1] = (uint8_t)(999 >> 8);
    cr_assert_eq(tern_session_send(s, CH_DEADLINE, msg, sizeof(msg), 0), 0);
    cr_assert(tu_run_until(&loop, deadline_done, NULL, 5000), "the message after the gap");
    for (int i = 0; i < 50; i++)
        cr_assert_eq(chl.seen[CH_DEADLINE][i], 0, "expired message %d delivered", i);
    tern_session_stats ss;
    tern_session_get_stats(s, &ss);
    cr_assert_eq(ss.msgs_expired, 50);
    cr_assert_gt(ss.kcp.forwards_sent, 0);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}
