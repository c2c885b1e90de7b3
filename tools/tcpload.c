/* The TCP load behind tools/tcpload.h. */
#include "tools/tcpload.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/mem.h"
#include "tools/proc.h"

#define FNV_INIT 0xcbf29ce484222325ULL

/* Formats a reason and hands it to the owner, who keeps the first. */
static void fail(tern_tcpload *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(tern_tcpload *l, const char *fmt, ...)
{
    char reason[TERN_TCPLOAD_REASON_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    l->cfg.cbs.fail(l->data, reason);
}

/* 64-bit FNV-1a, continued from h. */
static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* xorshift64*: the bulk data, reproducible from the seed. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static uint8_t probe_filler(uint64_t seq, size_t i)
{
    return (uint8_t)(seq * 31u + i * 7u + 1u);
}

int tern_tcpload_init(tern_tcpload *l, uv_loop_t *loop, const tern_tcpload_config *cfg,
                      const tern_mem *mem, void *data)
{
    if (!l || !loop || !cfg || !cfg->bulk_bytes || !cfg->cbs.fail || !cfg->cbs.ended ||
        (cfg->probes && (cfg->rate < 1 || cfg->rate > 1000)))
        return TERN_ERR_INVAL;
    memset(l, 0, sizeof(*l));
    l->loop = loop;
    l->cfg = *cfg;
    tern_mem_init(&l->mem, mem);
    l->data = data;
    uv_timer_init(loop, &l->probe_timer);
    l->probe_timer.data = l;
    l->sum_sent = l->sum_got = FNV_INIT;
    l->prng = cfg->seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    for (size_t i = 0; i < TERN_TCPLOAD_CHUNKS; i++)
        l->chunks[i].l = l;
    /* Every probe is kept: percentiles are exact. */
    int rc = tern_perf_stats_init(&l->rtt, (size_t)cfg->probes, mem);
    if (rc < 0)
        return rc;
    if (cfg->probes) {
        l->probe_seen = tern_mem_calloc(&l->mem, (size_t)cfg->probes, 1);
        if (!l->probe_seen)
            return TERN_ERR_NOMEM;
    }
    return 0;
}

void tern_tcpload_stop(tern_tcpload *l)
{
    l->stopping = true;
    if (uv_is_active((uv_handle_t *)&l->probe_timer))
        uv_timer_stop(&l->probe_timer);
}

void tern_tcpload_close(tern_tcpload *l)
{
    tern_proc_close_handle((uv_handle_t *)&l->sink);
    for (size_t i = 0; i < 2; i++)
        tern_proc_close_handle((uv_handle_t *)&l->conns[i].tcp);
    tern_proc_close_handle((uv_handle_t *)&l->bulk_tcp);
    tern_proc_close_handle((uv_handle_t *)&l->probe_tcp);
    tern_proc_close_handle((uv_handle_t *)&l->probe_timer);
}

void tern_tcpload_free(tern_tcpload *l)
{
    if (l->probe_seen)
        tern_mem_free(&l->mem, l->probe_seen);
    l->probe_seen = NULL;
    tern_perf_stats_free(&l->rtt);
}

/* ---- the target: a bulk sink and an echo server ----------------------------------- */

typedef struct echo_write {
    uv_write_t req; /* first: the write callback casts back */
    tern_tcpload *l;
    uv_buf_t buf;
} echo_write;

static void on_sink_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    tern_tcpload_conn *sc = h->data;
    *buf = uv_buf_init((char *)sc->l->rbuf, sizeof(sc->l->rbuf));
}

static void on_echo_written(uv_write_t *req, int status)
{
    (void)status; /* a failed echo shows as a missing probe */
    echo_write *w = (echo_write *)req;
    tern_mem_free(&w->l->mem, w);
}

static void sink_bulk(tern_tcpload_conn *sc, const uint8_t *p, size_t n)
{
    tern_tcpload *l = sc->l;
    uint64_t total = l->cfg.bulk_bytes;
    while (n && sc->hdr_len < sizeof(sc->hdr)) {
        sc->hdr[sc->hdr_len++] = *p++;
        n--;
        if (sc->hdr_len == sizeof(sc->hdr) && get_be64(sc->hdr) != total) {
            fail(l, "the bulk connection's header arrived wrong: %" PRIu64 " bytes announced",
                 get_be64(sc->hdr));
            return;
        }
    }
    if (!n)
        return;
    if (n > total - l->bulk_got) {
        fail(l, "the sink received more than the %" PRIu64 " bytes sent", total);
        return;
    }
    l->bulk_got += n;
    l->sum_got = fnv1a(l->sum_got, p, n);
    uint64_t now = uv_hrtime();
    if (l->cfg.cbs.received)
        l->cfg.cbs.received(l->data, n, now);
    if (l->bulk_got < total)
        return;
    l->t_bulk1 = now;
    l->bulk_done = l->sum_got == l->sum_sent;
    l->cfg.cbs.ended(l->data);
    if (!l->bulk_done)
        fail(l, "bulk data corrupted: checksum %016" PRIx64 " received, %016" PRIx64 " sent",
             l->sum_got, l->sum_sent);
}

static void echo(tern_tcpload_conn *sc, const uint8_t *p, size_t n)
{
    tern_tcpload *l = sc->l;
    echo_write *w = tern_mem_alloc(&l->mem, sizeof(*w) + n);
    if (!w) {
        fail(l, "out of memory");
        return;
    }
    w->l = l;
    memcpy(w + 1, p, n);
    w->buf = uv_buf_init((char *)(w + 1), (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&sc->tcp, &w->buf, 1, on_echo_written);
    if (rc < 0) {
        tern_mem_free(&l->mem, w);
        fail(l, "the echo server cannot write: %s", uv_strerror(rc));
    }
}

static void on_sink_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tern_tcpload_conn *sc = s->data;
    tern_tcpload *l = sc->l;
    if (nread < 0) {
        uv_read_stop(s);
        if (l->stopping)
            return;
        if (sc->kind == 'B' && !l->bulk_done)
            fail(l,
                 "the bulk connection ended at the target after %" PRIu64 " of %" PRIu64
                 " bytes: %s",
                 l->bulk_got, l->cfg.bulk_bytes, uv_strerror((int)nread));
        else if (sc->kind == 'E' && !l->probes_done)
            fail(l, "the echo connection ended at the target: %s", uv_strerror((int)nread));
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t n = (size_t)nread;
    if (n && !sc->kind) {
        sc->kind = (char)p[0];
        p++;
        n--;
        if (sc->kind != 'B' && sc->kind != 'E') {
            fail(l, "a connection reached the target with an unknown first byte 0x%02x",
                 (unsigned)(uint8_t)sc->kind);
            return;
        }
    }
    if (!n || l->stopping)
        return;
    if (sc->kind == 'B')
        sink_bulk(sc, p, n);
    else
        echo(sc, p, n);
}

static void on_sink_connection(uv_stream_t *server, int status)
{
    tern_tcpload *l = server->data;
    if (status < 0) {
        fail(l, "the target cannot accept: %s", uv_strerror(status));
        return;
    }
    tern_tcpload_conn *sc = NULL;
    for (size_t i = 0; i < 2 && !sc; i++)
        if (!l->conns[i].used)
            sc = &l->conns[i];
    if (!sc) {
        fail(l, "the target got a third connection; the load makes two at the most");
        return;
    }
    sc->used = true;
    sc->l = l;
    uv_tcp_init(l->loop, &sc->tcp);
    sc->tcp.data = sc;
    int rc = uv_accept(server, (uv_stream_t *)&sc->tcp);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&sc->tcp, on_sink_alloc, on_sink_read);
    if (rc < 0)
        fail(l, "the target cannot accept: %s", uv_strerror(rc));
}

int tern_tcpload_listen(tern_tcpload *l)
{
    if (l->sink.type != UV_UNKNOWN_HANDLE)
        return TERN_ERR_STATE;
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    uv_tcp_init(l->loop, &l->sink);
    l->sink.data = l;
    int rc = uv_tcp_bind(&l->sink, (const struct sockaddr *)&sin, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->sink, 8, on_sink_connection);
    int len = sizeof(sin);
    if (rc == 0)
        rc = uv_tcp_getsockname(&l->sink, (struct sockaddr *)&sin, &len);
    if (rc < 0) {
        fail(l, "cannot listen on 127.0.0.1:0 for the tunnel's target: %s", uv_strerror(rc));
        return rc;
    }
    l->sink_port = ntohs(sin.sin_port);
    return 0;
}

/* ---- the applications: bulk sender and prober ------------------------------------- */

static void on_chunk_written(uv_write_t *req, int status);

static void write_chunk(tern_tcpload_chunk *c)
{
    tern_tcpload *l = c->l;
    if (l->stopping || l->bulk_queued >= l->cfg.bulk_bytes)
        return;
    uint64_t left = l->cfg.bulk_bytes - l->bulk_queued;
    size_t n = left < TERN_TCPLOAD_CHUNK ? (size_t)left : TERN_TCPLOAD_CHUNK;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = next_random(&l->prng);
        for (size_t k = 0; k < 8 && i + k < n; k++)
            c->buf[i + k] = (uint8_t)(r >> (8 * k));
    }
    l->sum_sent = fnv1a(l->sum_sent, c->buf, n);
    l->bulk_queued += n;
    uv_buf_t b = uv_buf_init((char *)c->buf, (unsigned)n);
    int rc = uv_write(&c->req, (uv_stream_t *)&l->bulk_tcp, &b, 1, on_chunk_written);
    if (rc < 0)
        fail(l, "cannot write to the tunnel client: %s", uv_strerror(rc));
}

static void on_chunk_written(uv_write_t *req, int status)
{
    tern_tcpload_chunk *c = (tern_tcpload_chunk *)req;
    tern_tcpload *l = c->l;
    if (status < 0) {
        if (!l->stopping)
            fail(l, "the bulk connection to the tunnel client failed: %s", uv_strerror(status));
        return;
    }
    write_chunk(c);
}

static void on_ignored_write(uv_write_t *req, int status)
{
    (void)req;
    (void)status; /* a failure shows up in the data that never arrives */
}

typedef struct probe_write {
    uv_write_t req; /* first: the write callback casts back */
    tern_tcpload *l;
    uint8_t buf[TERN_TCPLOAD_PROBE_SIZE];
} probe_write;

static void on_probe_written(uv_write_t *req, int status)
{
    (void)status; /* a failure shows as a missing echo */
    probe_write *w = (probe_write *)req;
    tern_mem_free(&w->l->mem, w);
}

static void send_probe(tern_tcpload *l)
{
    probe_write *w = tern_mem_alloc(&l->mem, sizeof(*w));
    if (!w) {
        fail(l, "out of memory");
        return;
    }
    w->l = l;
    uint64_t seq = l->probes_sent++;
    put_be64(w->buf, seq);
    put_be64(w->buf + 8, uv_hrtime());
    for (size_t i = 16; i < TERN_TCPLOAD_PROBE_SIZE; i++)
        w->buf[i] = probe_filler(seq, i);
    uv_buf_t b = uv_buf_init((char *)w->buf, TERN_TCPLOAD_PROBE_SIZE);
    int rc = uv_write(&w->req, (uv_stream_t *)&l->probe_tcp, &b, 1, on_probe_written);
    if (rc < 0) {
        tern_mem_free(&l->mem, w);
        fail(l, "cannot send a probe: %s", uv_strerror(rc));
    }
}

/* Sends every probe due by now: at the rate, counted from the first, so a
 * late timer catches up instead of drifting. */
static void on_probe_tick(uv_timer_t *t)
{
    tern_tcpload *l = t->data;
    uint64_t due = (uv_hrtime() - l->t_probe0) / 1000 * l->cfg.rate / 1000000 + 1;
    if (due > l->cfg.probes)
        due = l->cfg.probes;
    while (!l->stopping && l->probes_sent < due)
        send_probe(l);
    if (l->probes_sent >= l->cfg.probes && uv_is_active((uv_handle_t *)t))
        uv_timer_stop(t);
}

static void probe_echoed(tern_tcpload *l, const uint8_t *m)
{
    uint64_t now = uv_hrtime();
    uint64_t seq = get_be64(m), sent_at = get_be64(m + 8);
    bool ok = seq < l->probes_sent && !l->probe_seen[seq] && sent_at <= now;
    for (size_t i = 16; ok && i < TERN_TCPLOAD_PROBE_SIZE; i++)
        ok = m[i] == probe_filler(seq, i);
    if (!ok) {
        fail(l, "probe echo %" PRIu64 " came back corrupted or twice", l->probes_got);
        return;
    }
    l->probe_seen[seq] = 1;
    l->probes_got++;
    (void)tern_perf_stats_add(&l->rtt, (double)(now - sent_at) / 1e6);
    if (l->probes_got == l->cfg.probes) {
        l->probes_done = true;
        l->cfg.cbs.ended(l->data);
    }
}

static void on_app_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    tern_tcpload *l = h->data;
    *buf = uv_buf_init((char *)l->rbuf, sizeof(l->rbuf));
}

/* Reads on the connections to the tunnel client: the echoes, and (on the
 * bulk connection) nothing but its end. */
static void on_app_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tern_tcpload *l = s->data;
    bool probe = s == (uv_stream_t *)&l->probe_tcp;
    if (nread < 0) {
        uv_read_stop(s);
        if (!l->stopping && (probe ? !l->probes_done : !l->bulk_done))
            fail(l, "the tunnel client closed the %s connection: %s", probe ? "probe" : "bulk",
                 uv_strerror((int)nread));
        return;
    }
    if (!probe) {
        if (nread > 0)
            fail(l, "the bulk connection got %zd bytes back; the sink sends none", nread);
        return;
    }
    for (ssize_t i = 0; i < nread && !l->stopping; i++) {
        l->probe_rx[l->probe_rx_len++] = (uint8_t)buf->base[i];
        if (l->probe_rx_len == TERN_TCPLOAD_PROBE_SIZE) {
            l->probe_rx_len = 0;
            probe_echoed(l, l->probe_rx);
        }
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    tern_tcpload *l = req->data;
    bool bulk = req == &l->bulk_connect;
    if (status < 0) {
        if (!l->stopping)
            fail(l, "cannot connect to the tunnel client: %s", uv_strerror(status));
        return;
    }
    if (l->stopping)
        return;
    if (bulk)
        l->t_bulk0 = uv_hrtime();
    if (l->cfg.cbs.connected)
        l->cfg.cbs.connected(l->data);
    uv_stream_t *s = (uv_stream_t *)(bulk ? &l->bulk_tcp : &l->probe_tcp);
    l->bulk_hdr[0] = 'B';
    put_be64(l->bulk_hdr + 1, l->cfg.bulk_bytes);
    static const char hello[1] = {'E'};
    uv_buf_t b = bulk ? uv_buf_init((char *)l->bulk_hdr, sizeof(l->bulk_hdr))
                      : uv_buf_init((char *)hello, 1);
    int rc = uv_write(bulk ? &l->bulk_hdr_req : &l->probe_hdr_req, s, &b, 1, on_ignored_write);
    if (rc == 0)
        rc = uv_read_start(s, on_app_alloc, on_app_read);
    if (rc < 0) {
        fail(l, "cannot write to the tunnel client: %s", uv_strerror(rc));
        return;
    }
    if (bulk) {
        for (size_t i = 0; i < TERN_TCPLOAD_CHUNKS; i++)
            write_chunk(&l->chunks[i]);
        return;
    }
    l->t_probe0 = uv_hrtime();
    uint64_t every = 1000 / l->cfg.rate;
    uv_timer_start(&l->probe_timer, on_probe_tick, 0, every ? every : 1);
}

int tern_tcpload_start(tern_tcpload *l, tern_tcpload_kind kind, uint16_t port)
{
    bool bulk = kind == TERN_TCPLOAD_BULK;
    if (!bulk && !l->cfg.probes)
        return TERN_ERR_INVAL;
    if (bulk ? l->bulk_started : l->probes_started)
        return TERN_ERR_STATE;
    if (bulk)
        l->bulk_started = true;
    else
        l->probes_started = true;
    uv_tcp_t *tcp = bulk ? &l->bulk_tcp : &l->probe_tcp;
    uv_connect_t *req = bulk ? &l->bulk_connect : &l->probe_connect;
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", port, &sin);
    uv_tcp_init(l->loop, tcp);
    tcp->data = l;
    req->data = l;
    (void)uv_tcp_nodelay(tcp, 1);
    int rc = uv_tcp_connect(req, tcp, (const struct sockaddr *)&sin, on_connected);
    if (rc < 0)
        fail(l, "cannot connect to the tunnel client: %s", uv_strerror(rc));
    return rc;
}
