/* One TCP connection spliced to one tern stream, both ways, with
 * backpressure and half-close:
 *
 *   up    TCP read -> tern_stream_write   stops reading TCP while the
 *                                         stream's queue is >= HIGH
 *   down  tern read -> uv_write           stops reading the stream while
 *                                         the socket's queue is >= HIGH
 *
 * TCP EOF becomes tern_stream_shutdown() and tern EOF becomes uv_shutdown();
 * once both shutdowns are done, both sides close cleanly. A TCP reset or
 * error resets the stream; a tern reset (or the session's end) closes the
 * socket with RST, so the application sees a failure and not a clean end.
 *
 * Memory: a connection is freed once nothing can call back into it. It
 * counts its references: the TCP handle (until its close callback), the
 * stream (until its close callback, or the session's end), each write and
 * the shutdown queued on the stream (their callbacks come even after the
 * session's close callback, as the session frees its streams). */
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/tunnel.h"

/* A buffer in flight, either way; data follows. */
typedef struct chunk {
    tern_tunnel_conn *c;
    uv_write_t req;
    size_t len;
    char data[];
} chunk;

struct tern_tunnel_conn {
    tern_tunnel *tn;
    tern_tunnel_group *group;
    tern_tunnel_conn *next, *prev; /* group's list */
    uv_tcp_t tcp;
    uv_connect_t connect_req; /* server */
    uv_shutdown_t shutdown_req;
    tern_stream *st; /* NULL once closed or detached */
    unsigned refs;
    chunk *held; /* read from TCP, refused by a full stream */

    bool tcp_reading; /* uv_read_start is on */
    bool up_paused;   /* TCP reading stopped for the stream's sake */
    bool tcp_eof;     /* the TCP peer sent FIN */
    bool tern_shut;   /* tern_stream_shutdown called */
    bool up_done;     /* ...and acknowledged */

    bool down_paused; /* stream reading stopped for the socket's sake */
    bool tern_eof;    /* the tern peer shut down */
    bool tcp_shut;    /* uv_shutdown called */
    bool down_done;   /* ...and done */

    bool need_hello; /* server: the stream's first byte is still to come */
    bool connected;  /* TCP is established (always, client side) */
    bool closing;    /* both sides are being closed */
    bool clean;      /* closed after both directions ended */
    bool lingering;  /* the socket is closed, the stream waits (LINGER) */
    uint64_t linger_until;
};

static void conn_abort(tern_tunnel_conn *c, bool rst);
static void resume_up(tern_tunnel_conn *c);
static void on_poll(uv_timer_t *t);
static void on_linger(uv_timer_t *t);

/* ---- references and the group list ----------------------------------------- */

static void group_link(tern_tunnel_group *g, tern_tunnel_conn *c)
{
    c->group = g;
    c->prev = NULL;
    c->next = g->conns;
    if (g->conns)
        g->conns->prev = c;
    g->conns = c;
    g->n_conns++;
}

static void group_unlink(tern_tunnel_conn *c)
{
    tern_tunnel_group *g = c->group;
    if (!g)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        g->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->group = NULL;
    g->n_conns--;
}

static void set_paused(tern_tunnel_conn *c, bool *flag, bool on)
{
    tern_tunnel *tn = c->tn;
    if (*flag == on)
        return;
    *flag = on;
    if (on) {
        if (tn->n_paused++ == 0 && !tn->stopping)
            uv_timer_start(&tn->poll_timer, on_poll, TERN_TUNNEL_POLL_MS, TERN_TUNNEL_POLL_MS);
    } else {
        tn->n_paused--;
    }
}

static void hold(tern_tunnel_conn *c)
{
    c->refs++;
}

static void release(tern_tunnel_conn *c)
{
    if (--c->refs > 0)
        return;
    tern_tunnel *tn = c->tn;
    set_paused(c, &c->up_paused, false);
    set_paused(c, &c->down_paused, false);
    group_unlink(c);
    if (c->clean)
        tn->ctr.closed_clean++;
    else
        tn->ctr.closed_reset++;
    tn->n_conns--;
    free(c->held);
    free(c);
}

static chunk *chunk_new(tern_tunnel_conn *c, size_t cap)
{
    chunk *k = malloc(sizeof(*k) + cap);
    if (k) {
        k->c = c;
        k->len = 0;
    }
    return k;
}

static chunk *chunk_of(char *data)
{
    return data ? (chunk *)(void *)(data - offsetof(chunk, data)) : NULL;
}

/* ---- closing ------------------------------------------------------------------ */

static void on_tcp_closed(uv_handle_t *h)
{
    release(h->data);
}

static void on_stream_closed(tern_stream *st)
{
    tern_tunnel_conn *c = tern_stream_get_data(st);
    tern_stream_set_data(st, NULL);
    release(c);
}

/* The abort: resets the stream and closes the socket (with RST if rst: the
 * data did not all arrive). */
static void conn_close(tern_tunnel_conn *c, bool rst)
{
    if (c->closing)
        return;
    c->closing = true;
    hold(c);
    free(c->held);
    c->held = NULL;
    set_paused(c, &c->up_paused, false);
    set_paused(c, &c->down_paused, false);
    if (c->st) {
        tern_stream *st = c->st;
        c->st = NULL;
        /* A reset even if both directions happened to end (the socket
         * failed after the last byte): a graceful close would leave the
         * peer's unacknowledged data to the transport's forgetting (see
         * maybe_finish), while a reset makes the peer drop it at once. It
         * cancels our queued writes: their callbacks run now. */
        (void)tern_stream_reset(st);
        if (tern_stream_close(st, on_stream_closed) < 0) {
            tern_stream_set_data(st, NULL);
            release(c);
        }
    }
    /* close_reset refuses a socket with a shutdown pending: a FIN then. */
    if (!rst || !c->connected || uv_tcp_close_reset(&c->tcp, on_tcp_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
    release(c);
}

static void conn_abort(tern_tunnel_conn *c, bool rst)
{
    conn_close(c, rst);
}

/* Both directions ended: the socket closes now, the stream after
 * TERN_TUNNEL_LINGER_MS. The transport forgets a stream once our own data
 * is acknowledged; if our last ACKs were lost, the peer's retransmissions
 * would then be dropped unanswered, leaving it with a segment in flight
 * until its dead-link limit ends the whole session (and, with a shared
 * congestion window at one segment after a timeout, stalling every other
 * stream meanwhile). Lingering keeps the stream answering, as TCP's
 * TIME_WAIT does. */
static void maybe_finish(tern_tunnel_conn *c)
{
    if (c->closing || !c->up_done || !c->down_done)
        return;
    tern_tunnel *tn = c->tn;
    c->clean = true;
    c->closing = true;
    set_paused(c, &c->up_paused, false);
    set_paused(c, &c->down_paused, false);
    uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
    if (!c->st)
        return;
    c->lingering = true;
    c->linger_until = uv_now(&tn->loop) + TERN_TUNNEL_LINGER_MS;
    if (tn->n_lingering++ == 0 && !tn->stopping)
        uv_timer_start(&tn->linger_timer, on_linger, TERN_TUNNEL_LINGER_TICK_MS,
                       TERN_TUNNEL_LINGER_TICK_MS);
}

static void end_linger(tern_tunnel_conn *c)
{
    if (!c->lingering)
        return;
    c->lingering = false;
    c->tn->n_lingering--;
}

/* ---- up: TCP -> stream ------------------------------------------------------- */

static void on_tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    chunk *k = chunk_new(h->data, TERN_TUNNEL_CHUNK);
    *buf = k ? uv_buf_init(k->data, TERN_TUNNEL_CHUNK) : uv_buf_init(NULL, 0);
}

static void on_up_written(tern_stream *st, int status, void *arg)
{
    (void)st;
    chunk *k = arg;
    tern_tunnel_conn *c = k->c;
    free(k);
    if (status < 0) {
        /* Reset or the session's end: that path closes the connection. */
        if (!c->closing && c->st)
            conn_abort(c, true);
    } else if (c->up_paused && !c->closing) {
        resume_up(c);
    }
    release(c);
}

static void on_tern_shutdown(tern_stream *st, int status, void *arg)
{
    (void)st;
    tern_tunnel_conn *c = arg;
    if (status == 0) {
        c->up_done = true;
        maybe_finish(c);
    } else if (!c->closing) {
        conn_abort(c, true);
    }
    release(c);
}

static void start_tern_shutdown(tern_tunnel_conn *c)
{
    if (c->tern_shut || !c->st)
        return;
    c->tern_shut = true;
    int rc = tern_stream_shutdown(c->st, on_tern_shutdown, c);
    if (rc < 0) {
        conn_abort(c, true);
        return;
    }
    hold(c);
}

static void pause_tcp(tern_tunnel_conn *c)
{
    if (c->tcp_reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->tcp_reading = false;
        c->tn->ctr.paused_tcp++;
    }
    set_paused(c, &c->up_paused, true);
}

/* Hands k to the stream; false if the connection was closed for it. */
static bool send_up(tern_tunnel_conn *c, chunk *k)
{
    uv_buf_t b = uv_buf_init(k->data, (unsigned)k->len);
    int rc = tern_stream_write(c->st, &b, 1, on_up_written, k);
    if (rc == TERN_ERR_WOULDBLOCK) {
        c->held = k;
        pause_tcp(c);
        return true;
    }
    if (rc < 0) {
        free(k);
        conn_abort(c, true);
        return false;
    }
    hold(c);
    if (tern_stream_write_queue_size(c->st) >= TERN_TUNNEL_QUEUE_HIGH)
        pause_tcp(c);
    return true;
}

static void on_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tern_tunnel_conn *c = s->data;
    chunk *k = chunk_of(buf->base);
    if (nread > 0 && c->st && !c->closing) {
        c->tn->ctr.bytes_in += (uint64_t)nread;
        k->len = (size_t)nread;
        send_up(c, k);
        return;
    }
    free(k);
    if (nread == 0 || c->closing)
        return;
    if (nread == UV_EOF) {
        uv_read_stop(s);
        c->tcp_reading = false;
        c->tcp_eof = true;
        /* Data refused earlier goes first; the shutdown follows it. */
        if (!c->held)
            start_tern_shutdown(c);
        return;
    }
    /* A reset (UV_ECONNRESET) or another error: the stream is reset. */
    conn_abort(c, false);
}

static void resume_up(tern_tunnel_conn *c)
{
    if (c->closing || !c->st)
        return;
    if (c->held) {
        chunk *k = c->held;
        uv_buf_t b = uv_buf_init(k->data, (unsigned)k->len);
        int rc = tern_stream_write(c->st, &b, 1, on_up_written, k);
        if (rc == TERN_ERR_WOULDBLOCK)
            return;
        c->held = NULL;
        if (rc < 0) {
            free(k);
            conn_abort(c, true);
            return;
        }
        hold(c);
    }
    if (c->tcp_eof) {
        set_paused(c, &c->up_paused, false);
        start_tern_shutdown(c);
        return;
    }
    if (tern_stream_write_queue_size(c->st) >= TERN_TUNNEL_QUEUE_LOW)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_tcp_alloc, on_tcp_read) < 0) {
        conn_abort(c, true);
        return;
    }
    c->tcp_reading = true;
    set_paused(c, &c->up_paused, false);
}

/* ---- down: stream -> TCP ----------------------------------------------------- */

static void on_stream_read(tern_stream *st, ssize_t nread, const uv_buf_t *buf);

static void on_stream_alloc(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    tern_tunnel_conn *c = tern_stream_get_data(st);
    chunk *k = c ? chunk_new(c, suggested) : NULL;
    if (!k) {
        /* Reading pauses; the poll timer starts it again. */
        *buf = uv_buf_init(NULL, 0);
        if (c)
            set_paused(c, &c->down_paused, true);
        return;
    }
    *buf = uv_buf_init(k->data, (unsigned)suggested);
}

static void resume_down(tern_tunnel_conn *c)
{
    if (c->closing || !c->st || c->tern_eof)
        return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >= TERN_TUNNEL_QUEUE_LOW)
        return;
    /* CLOSED: the stream was reset or its session ended while we were not
     * reading, which the transport does not report otherwise. */
    if (tern_stream_read_start(c->st, on_stream_alloc, on_stream_read) < 0) {
        conn_abort(c, true);
        return;
    }
    set_paused(c, &c->down_paused, false);
}

static void on_down_written(uv_write_t *req, int status)
{
    chunk *k = (chunk *)(void *)((char *)req - offsetof(chunk, req));
    tern_tunnel_conn *c = k->c;
    free(k);
    if (c->closing)
        return;
    if (status < 0)
        conn_abort(c, true);
    else if (c->down_paused)
        resume_down(c);
}

static void on_tcp_shutdown(uv_shutdown_t *req, int status)
{
    tern_tunnel_conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        conn_abort(c, true);
        return;
    }
    c->down_done = true;
    maybe_finish(c);
}

static void on_stream_read(tern_stream *st, ssize_t nread, const uv_buf_t *buf)
{
    tern_tunnel_conn *c = tern_stream_get_data(st);
    chunk *k = chunk_of(buf->base);
    if (!c || c->closing) {
        free(k);
        return;
    }
    tern_tunnel *tn = c->tn;
    if (nread > 0) {
        char *p = k->data;
        size_t n = (size_t)nread;
        if (c->need_hello) {
            if ((unsigned char)p[0] != TERN_TUNNEL_STREAM_HELLO) {
                free(k);
                tn->ctr.bad_hello++;
                conn_abort(c, true);
                return;
            }
            c->need_hello = false;
            p++;
            n--;
            if (n == 0) {
                free(k);
                return;
            }
        }
        tn->ctr.bytes_out += n;
        uv_buf_t b = uv_buf_init(p, (unsigned)n);
        if (uv_write(&k->req, (uv_stream_t *)&c->tcp, &b, 1, on_down_written) < 0) {
            free(k);
            conn_abort(c, true);
            return;
        }
        if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >= TERN_TUNNEL_QUEUE_HIGH) {
            tern_stream_read_stop(st);
            tn->ctr.paused_stream++;
            set_paused(c, &c->down_paused, true);
        }
        return;
    }
    free(k);
    if (nread == TERN_ERR_EOF && !c->need_hello) {
        c->tern_eof = true;
        c->tcp_shut = true;
        c->shutdown_req.data = c;
        if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_tcp_shutdown) < 0)
            conn_abort(c, true);
        return;
    }
    if (nread == TERN_ERR_EOF)
        tn->ctr.bad_hello++; /* a stream that ended before its hello */
    /* TERN_ERR_RESET, or the session's end. */
    conn_abort(c, true);
}

/* ---- starting ------------------------------------------------------------------ */

static tern_tunnel_conn *conn_new(tern_tunnel *tn)
{
    tern_tunnel_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (uv_tcp_init(&tn->loop, &c->tcp) < 0) {
        free(c);
        return NULL;
    }
    c->tn = tn;
    c->tcp.data = c;
    c->refs = 1; /* the TCP handle's, until its close callback */
    tn->n_conns++;
    return c;
}

static void splice(tern_tunnel_conn *c)
{
    (void)uv_tcp_nodelay(&c->tcp, 1);
    int rc = tern_stream_read_start(c->st, on_stream_alloc, on_stream_read);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, on_tcp_alloc, on_tcp_read);
    if (rc < 0) {
        conn_abort(c, true);
        return;
    }
    c->tcp_reading = true;
}

void tern_tunnel_conn_accept(tern_tunnel *tn)
{
    tern_tunnel_conn *c = conn_new(tn);
    if (!c) {
        tn->ctr.tcp_refused++;
        return;
    }
    c->connected = true;
    if (uv_accept((uv_stream_t *)&tn->listener, (uv_stream_t *)&c->tcp) < 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
        return;
    }
    tn->ctr.tcp_accepted++;
    if (tn->current && !tn->stopping) {
        tern_tunnel_conn_attach(c, tn->current);
    } else if (tn->waiting.n_conns < TERN_TUNNEL_WAITING_MAX && !tn->stopping) {
        /* Not read until a session takes it: TCP holds the client back. */
        group_link(&tn->waiting, c);
    } else {
        tn->ctr.tcp_refused++;
        conn_close(c, true);
    }
}

void tern_tunnel_conn_attach(tern_tunnel_conn *c, tern_tunnel_group *g)
{
    static char hello[1] = {TERN_TUNNEL_STREAM_HELLO};
    group_unlink(c);
    group_link(g, c);
    tern_stream *st;
    if (tern_stream_open(g->session, &st) < 0) {
        c->tn->ctr.tcp_refused++;
        conn_close(c, true);
        return;
    }
    c->st = st;
    hold(c); /* the stream's, until its close callback or the session's end */
    tern_stream_set_data(st, c);
    uv_buf_t b = uv_buf_init(hello, sizeof(hello));
    if (tern_stream_write(st, &b, 1, NULL, NULL) < 0) {
        conn_abort(c, true);
        return;
    }
    splice(c);
}

static void on_connected(uv_connect_t *req, int status)
{
    tern_tunnel_conn *c = req->data;
    tern_tunnel *tn = c->tn;
    if (c->closing)
        return;
    if (status < 0) {
        tn->ctr.connect_failed++;
        if (!tn->warned_connect) {
            char name[TERN_CLI_ADDR_MAX];
            if (tern_cli_format_addr((const struct sockaddr *)&tn->peer_addr, name, sizeof(name)) <
                0)
                snprintf(name, sizeof(name), "?");
            fprintf(stderr,
                    TERN_TUNNEL_PROG ": cannot connect to the target %s: %s (its streams are "
                                     "reset; warning once)\n",
                    name, uv_strerror(status));
            tn->warned_connect = true;
        }
        conn_close(c, false);
        return;
    }
    c->connected = true;
    tn->ctr.tcp_accepted++;
    splice(c);
}

void tern_tunnel_conn_from_stream(tern_tunnel_group *g, tern_stream *st)
{
    tern_tunnel *tn = g->tn;
    tern_tunnel_conn *c = conn_new(tn);
    if (!c) {
        (void)tern_stream_close(st, NULL);
        return;
    }
    group_link(g, c);
    c->st = st;
    hold(c);
    tern_stream_set_data(st, c);
    c->need_hello = true;
    c->connect_req.data = c;
    /* The stream is read once the target answers; until then its data
     * waits in the stream's receive window. */
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&tn->peer_addr,
                            on_connected);
    if (rc < 0)
        on_connected(&c->connect_req, rc);
}

void tern_tunnel_group_fail(tern_tunnel_group *g)
{
    while (g->conns) {
        tern_tunnel_conn *c = g->conns;
        group_unlink(c);
        hold(c);
        end_linger(c);
        if (c->st) {
            /* The session frees its streams without a close callback. */
            tern_stream_set_data(c->st, NULL);
            c->st = NULL;
            release(c);
        }
        conn_close(c, true);
        release(c);
    }
}

void tern_tunnel_group_adopt(tern_tunnel_group *to, tern_tunnel_group *from)
{
    while (from->conns)
        tern_tunnel_conn_attach(from->conns, to);
}

static void on_poll(uv_timer_t *t)
{
    tern_tunnel *tn = t->data;
    if (tn->n_paused == 0 || tn->stopping) {
        uv_timer_stop(t);
        return;
    }
    for (tern_tunnel_group *g = tn->groups; g; g = g->next) {
        tern_tunnel_conn *next;
        for (tern_tunnel_conn *c = g->conns; c; c = next) {
            /* Resuming one connection never frees another. */
            next = c->next;
            if (!c->up_paused && !c->down_paused)
                continue;
            hold(c);
            if (c->up_paused)
                resume_up(c);
            if (c->down_paused)
                resume_down(c);
            release(c);
        }
    }
}

static void on_linger(uv_timer_t *t)
{
    tern_tunnel *tn = t->data;
    if (tn->n_lingering == 0 || tn->stopping) {
        uv_timer_stop(t);
        return;
    }
    uint64_t now = uv_now(&tn->loop);
    for (tern_tunnel_group *g = tn->groups; g; g = g->next) {
        tern_tunnel_conn *next;
        for (tern_tunnel_conn *c = g->conns; c; c = next) {
            next = c->next;
            if (!c->lingering || c->linger_until > now)
                continue;
            end_linger(c);
            hold(c);
            tern_stream *st = c->st;
            c->st = NULL;
            /* Both directions ended: this close is graceful, not a reset. */
            if (st && tern_stream_close(st, on_stream_closed) < 0) {
                tern_stream_set_data(st, NULL);
                release(c);
            }
            release(c);
        }
    }
}
