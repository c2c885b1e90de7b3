/* Classic-KCP compatibility mode: no handshake, sessions keyed by (address,
 * conv), raw KCP segments on the wire. The peer here is a bare engine on a
 * bare UDP socket, speaking exactly what ikcp speaks (the engine's wire
 * format is checked against ikcp itself in test_kcp_interop). */
#include <stdlib.h>

#include "transport_util.h"

typedef struct raw_peer {
    uv_udp_t sock;
    uv_timer_t timer;
    tern_kcp *kcp;
    struct sockaddr_storage server;
    int echoes;
    uint64_t echo_bytes;
    bool bad;
} raw_peer;

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char slab[65536];
    buf->base = slab;
    buf->len = sizeof(slab);
}

static void raw_flush(raw_peer *p)
{
    uint8_t out[2048];
    tern_ms now = uv_now(p->sock.loop);
    (void)tern_kcp_handle_expiry(p->kcp, now);
    for (;;) {
        tern_ssize n = tern_kcp_write_pkt(p->kcp, out, sizeof(out), now);
        if (n <= 0)
            break;
        uv_buf_t b = uv_buf_init((char *)out, (unsigned)n);
        (void)uv_udp_try_send(&p->sock, &b, 1, (const struct sockaddr *)&p->server);
    }
}

static void raw_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                     unsigned flags)
{
    (void)flags;
    (void)from;
    raw_peer *p = h->data;
    if (n <= 0)
        return;
    tern_ms now = uv_now(h->loop);
    cr_assert_eq(tern_kcp_read_pkt(p->kcp, (const uint8_t *)buf->base, (size_t)n, now), 0);
    uint8_t msg[4096];
    tern_ssize m;
    while ((m = tern_kcp_recv(p->kcp, msg, sizeof(msg), now)) >= 0) {
        for (tern_ssize i = 0; i < m; i++) {
            if (msg[i] != (uint8_t)(p->echoes + i))
                p->bad = true;
        }
        p->echoes++;
        p->echo_bytes += (uint64_t)m;
    }
    raw_flush(p);
}

static void raw_tick(uv_timer_t *t)
{
    raw_flush(t->data);
}

static void raw_open(uv_loop_t *loop, raw_peer *p, const struct sockaddr_storage *server,
                     uint32_t conv)
{
    memset(p, 0, sizeof(*p));
    p->server = *server;
    tern_kcp_settings ks;
    tern_kcp_settings_default(&ks);
    ks.conv = conv;
    cr_assert_eq(tern_kcp_new(&p->kcp, &ks, NULL, NULL, NULL, uv_now(loop)), 0);
    cr_assert_eq(uv_udp_init(loop, &p->sock), 0);
    struct sockaddr_storage any = tu_addr("127.0.0.1:0");
    cr_assert_eq(uv_udp_bind(&p->sock, (const struct sockaddr *)&any, 0), 0);
    p->sock.data = p;
    cr_assert_eq(uv_udp_recv_start(&p->sock, raw_alloc, raw_recv), 0);
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, raw_tick, 10, 10);
}

static void raw_close(raw_peer *p)
{
    uv_close((uv_handle_t *)&p->sock, NULL);
    uv_close((uv_handle_t *)&p->timer, NULL);
    tern_kcp_del(p->kcp);
}

/* The tern side: echo every message of the session's one stream. */
static int accepted, streams;
static uint32_t seen_conv;

static void alloc_cb(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)st;
    buf->base = malloc(suggested);
    buf->len = suggested;
}

static void freed(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)status;
    free(arg);
}

static void echo_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    if (n > 0) {
        uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
        cr_assert_eq(tern_stream_write(st, &out, 1, freed, buf->base), 0);
        return;
    }
    free(buf->base);
}

static void on_stream(tern_session *s, tern_stream *st)
{
    (void)s;
    streams++;
    seen_conv = tern_stream_id(st);
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, echo_read), 0);
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    accepted++;
    tern_session_callbacks cbs = {.stream_cb = on_stream};
    tern_session_set_callbacks(s, &cbs);
}

typedef struct want {
    raw_peer *p;
    int n;
} want;

static bool echoed(void *arg)
{
    want *w = arg;
    return w->p->echoes >= w->n;
}

Test(compat, classic_engine_talks_to_a_tern_server)
{
    accepted = streams = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_KCP_COMPAT;
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, on_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    raw_peer p;
    raw_open(&loop, &p, &to, 0x1234);
    for (int i = 0; i < 50; i++) {
        uint8_t msg[1000];
        size_t len = (size_t)(1 + i * 19);
        for (size_t j = 0; j < len; j++)
            msg[j] = (uint8_t)(i + (int)j);
        cr_assert_eq(tern_kcp_send(p.kcp, msg, len, uv_now(&loop)), 0);
    }
    raw_flush(&p);
    want w = {&p, 50};
    cr_assert(tu_run_until(&loop, echoed, &w, 5000), "echoes %d", p.echoes);
    cr_assert_not(p.bad);
    cr_assert_eq(accepted, 1);
    cr_assert_eq(streams, 1);
    cr_assert_eq(seen_conv, 0x1234);
    /* Datagrams of another conv from the same address are another
     * session; garbage is dropped. */
    uint8_t junk[30] = {0};
    uv_buf_t b = uv_buf_init((char *)junk, sizeof(junk));
    (void)uv_udp_try_send(&p.sock, &b, 1, (const struct sockaddr *)&to);
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(srv, &es);
    cr_assert_eq(es.drop_malformed, 1);
    cr_assert_eq(es.sessions_now, 1);
    raw_close(&p);
    tern_endpoint *eps[] = {srv};
    tu_close_all(&loop, eps, 1);
}

static int client_connected;
static uint64_t client_bytes;
static tern_stream *client_stream;

static void client_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    (void)st;
    if (n > 0) {
        for (ssize_t i = 0; i < n; i++)
            cr_assert_eq((uint8_t)buf->base[i], tu_byte(client_bytes + (uint64_t)i, 5));
        client_bytes += (uint64_t)n;
    }
    free(buf->base);
}

static void client_stream_cb(tern_session *s, tern_stream *st)
{
    (void)s;
    cr_assert_eq(client_connected, 0, "stream before connect");
    client_stream = st;
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, client_read), 0);
}

static void client_connect(tern_session *s, int status)
{
    (void)s;
    cr_assert_eq(status, 0);
    client_connected++;
}

static bool client_done(void *arg)
{
    return client_bytes >= *(uint64_t *)arg;
}

Test(compat, tern_client_and_server_stream_mode)
{
    accepted = streams = 0;
    client_connected = 0;
    client_bytes = 0;
    client_stream = NULL;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_KCP_COMPAT;
    cfg.kcp.mode = TERN_KCP_MODE_STREAM;
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    tern_endpoint *cli = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, on_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {.connect_cb = client_connect, .stream_cb = client_stream_cb};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 77, &cbs, &s), 0);
    /* No handshake and no channels in this mode. */
    tern_stream *extra;
    cr_assert_eq(tern_stream_open(s, &extra), TERN_ERR_STATE);
    cr_assert_eq(tern_session_send(s, 0, "x", 1, 0), TERN_ERR_STATE);
    for (int i = 0; i < 5 && !client_connected; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(client_connected, 1);
    cr_assert_not_null(client_stream);
    cr_assert_eq(tern_stream_id(client_stream), 77);
    static uint8_t data[500000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = tu_byte(i, 5);
    uv_buf_t b = uv_buf_init((char *)data, sizeof(data));
    cr_assert_eq(tern_stream_write(client_stream, &b, 1, NULL, NULL), 0);
    uint64_t total = sizeof(data);
    cr_assert(tu_run_until(&loop, client_done, &total, 10000), "echoed %llu",
              (unsigned long long)client_bytes);
    cr_assert_eq(seen_conv, 77);
    cr_assert_eq(accepted, 1);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}
