/* Streams: libuv-shaped reliable byte streams, one ARQ engine each, so a
 * loss on one never stalls another. The end of a stream travels as a FIN
 * with the final size on the session's control engine; a reset as RESET. */
#include <string.h>

#include "transport/internal.h"

#define DEFAULT_PRIORITY 4U
#define DEFAULT_WEIGHT 8U
#define READ_SUGGESTED 65536U


int tern_stream_create(tern_session *s, uint32_t id, tern_stream **out)
{
    tern_endpoint *ep = s->ep;
    tern_stream *st = tern_mem_calloc(&ep->mem, 1, sizeof(*st));
    if (!st)
        return TERN_ERR_NOMEM;
    tern_kcp_mode mode =
        ep->cfg.security == TERN_SECURITY_KCP_COMPAT ? ep->cfg.kcp.mode : TERN_KCP_MODE_STREAM;
    int rc = tern_session_new_engine(s, id, mode, &st->kcp);
    if (rc < 0) {
        tern_mem_free(&ep->mem, st);
        return rc;
    }
    st->session = s;
    st->id = id;
    st->priority = DEFAULT_PRIORITY;
    st->weight = DEFAULT_WEIGHT;
    /* Appended, so the flush visits streams in the order they opened. */
    if (!s->streams) {
        s->streams = st;
    } else {
        tern_stream *last = s->streams;
        while (last->next)
            last = last->next;
        last->next = st;
        st->prev = last;
    }
    s->n_streams++;
    *out = st;
    return 0;
}

static void cancel_writes(tern_stream *st, int status)
{
    tern_endpoint *ep = st->session->ep;
    while (st->wq_head) {
        write_req *w = st->wq_head;
        st->wq_head = w->next;
        if (!st->wq_head)
            st->wq_tail = NULL;
        st->wq_bytes -= w->left;
        if (w->cb)
            w->cb(st, status, w->arg);
        tern_mem_free(&ep->mem, w);
    }
    if (st->shutdown_cb) {
        tern_shutdown_cb cb = st->shutdown_cb;
        st->shutdown_cb = NULL;
        cb(st, status, st->shutdown_arg);
    }
}

static void drop_engine(tern_stream *st)
{
    if (st->kcp)
        tern_session_retire_engine(st->session, st->kcp);
    tern_kcp_del(st->kcp);
    st->kcp = NULL;
}

void tern_stream_free(tern_stream *st)
{
    tern_session *s = st->session;
    tern_endpoint *ep = s->ep;
    cancel_writes(st, s->end_status < 0 ? s->end_status : TERN_ERR_CANCELED);
    drop_engine(st);
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    s->n_streams--;
    tern_ep_trace(ep, TERN_TRACE_STREAM_CLOSED, s, st->id, st->read_end);
    /* Still waiting for its close callback: the reaper must not see it. */
    for (tern_stream **p = &ep->reap_streams; st->in_reap && *p; p = &(*p)->reap_next) {
        if (*p == st) {
            *p = st->reap_next;
            break;
        }
    }
    if (st->close_cb && !st->reaped) {
        st->reaped = true;
        st->close_cb(st);
    }
    tern_mem_free(&ep->mem, st);
}

void tern_stream_pump(tern_stream *st, tern_ms now)
{
    /* Only the writes queued before this call: a write callback that writes
     * again (even zero bytes) must not keep this loop going forever. */
    write_req *last = st->wq_tail;
    bool last_done = false;
    while (st->wq_head && st->kcp && !last_done) {
        write_req *w = st->wq_head;
        last_done = w == last;
        while (w->index < w->nbufs) {
            const uv_buf_t *b = &w->bufs[w->index];
            size_t n = b->len - w->offset;
            if (n > READ_SUGGESTED)
                n = READ_SUGGESTED;
            if (n > 0) {
                int rc = tern_kcp_send(st->kcp, (const uint8_t *)b->base + w->offset, n, now);
                if (rc == TERN_ERR_WOULDBLOCK)
                    return;
                if (rc < 0) {
                    cancel_writes(st, rc);
                    return;
                }
            }
            w->offset += n;
            w->left -= n;
            st->wq_bytes -= n;
            st->sent_total += n;
            if (w->offset == b->len) {
                w->index++;
                w->offset = 0;
            }
        }
        st->wq_head = w->next;
        if (!st->wq_head)
            st->wq_tail = NULL;
        if (w->cb)
            w->cb(st, 0, w->arg);
        tern_mem_free(&st->session->ep->mem, w);
        if (st->session->state == SESSION_DEAD)
            return;
    }
    if (st->shut && !st->fin_sent && !st->wq_head && st->kcp &&
        st->session->ep->cfg.security != TERN_SECURITY_KCP_COMPAT) {
        if (tern_session_send_fin(st->session, st->id, st->sent_total, now) == 0)
            st->fin_sent = true;
    }
}

/* Reports the end of the read side once. A stream that ended while its
 * reading was stopped keeps the status until read_start asks again. */
static void tell_end(tern_stream *st)
{
    if (!st->read_end || st->end_told || !st->reading || !st->read_cb || st->app_closed)
        return;
    st->end_told = true;
    uv_buf_t none = uv_buf_init(NULL, 0);
    st->read_cb(st, st->read_end, &none);
}

static void end_read(tern_stream *st, int status)
{
    if (st->read_end)
        return;
    st->read_end = status;
    tell_end(st);
}

void tern_stream_deliver(tern_stream *st, tern_ms now)
{
    tern_session *s = st->session;
    bool drained = false;
    while (st->kcp && !st->read_end) {
        tern_ssize ready = tern_kcp_peek_size(st->kcp);
        if (ready < 0)
            break;
        if (st->app_closed) {
            /* Nobody will read it: let the peer's window move. */
            uint8_t sink[4096];
            (void)tern_kcp_recv(st->kcp, sink, sizeof(sink), now);
            drained = true;
            continue;
        }
        if (!st->reading)
            break;
        uv_buf_t buf = uv_buf_init(NULL, 0);
        size_t suggested = (size_t)ready > READ_SUGGESTED ? READ_SUGGESTED : (size_t)ready;
        if (suggested == 0)
            suggested = 1;
        st->alloc_cb(st, suggested, &buf);
        if (!buf.base || buf.len == 0) {
            st->reading = false;
            break;
        }
        tern_ssize n = tern_kcp_recv(st->kcp, buf.base, buf.len, now);
        if (n == TERN_ERR_NOBUFS) {
            /* Message mode (compatibility) and a buffer smaller than the
             * message: the application must offer more. */
            st->reading = false;
            st->read_cb(st, TERN_ERR_NOBUFS, &buf);
            break;
        }
        if (n < 0) {
            /* Not expected after peek_size. The read side ends with the
             * error, which carries the buffer back. */
            st->read_end = (int)n;
            st->end_told = true;
            st->read_cb(st, (ssize_t)n, &buf);
            break;
        }
        drained = true;
        st->read_total += (uint64_t)n;
        st->read_cb(st, (ssize_t)n, &buf);
        if (s->state == SESSION_DEAD || st->reaped)
            return;
    }
    if (st->fin_recv && st->read_total >= st->fin_size && !st->read_end &&
        (st->reading || st->app_closed))
        end_read(st, TERN_ERR_EOF);
    else
        tell_end(st);
    if (drained)
        tern_ep_mark_dirty(s);
}

void tern_stream_on_fin(tern_stream *st, uint64_t final_size, tern_ms now)
{
    if (st->fin_recv)
        return;
    st->fin_recv = true;
    st->fin_size = final_size;
    tern_stream_deliver(st, now);
    tern_stream_check_done(st, now);
}

void tern_stream_on_reset(tern_stream *st, int status, tern_ms now)
{
    (void)now;
    drop_engine(st);
    end_read(st, status);
    if (st->session->state != SESSION_DEAD)
        cancel_writes(st, status);
    tern_stream_check_done(st, now);
}

bool tern_stream_write_side_done(const tern_stream *st)
{
    if (!st->kcp)
        return true;
    const tern_session *s = st->session;
    bool control_clear = !s->control || tern_kcp_unacked_segments(s->control) == 0;
    return st->fin_sent && tern_kcp_unacked_segments(st->kcp) == 0 && control_clear;
}

void tern_stream_check_done(tern_stream *st, tern_ms now)
{
    (void)now;
    /* Backpressure released: the queue is down to half its bound. */
    if (st->want_drain && st->kcp &&
        tern_stream_write_queue_size(st) <= st->session->ep->cfg.stream_write_max / 2) {
        st->want_drain = false;
        if (st->drain_cb && !st->app_closed) {
            st->drain_cb(st);
            if (st->session->state == SESSION_DEAD || st->reaped)
                return;
        }
    }
    if (st->shutdown_cb && tern_stream_write_side_done(st)) {
        tern_shutdown_cb cb = st->shutdown_cb;
        st->shutdown_cb = NULL;
        cb(st, 0, st->shutdown_arg);
    }
    /* A stream the application closed gracefully is freed once the peer
     * has everything. */
    if (st->app_closed && !st->in_reap && tern_stream_write_side_done(st)) {
        st->in_reap = true;
        st->reap_next = st->session->ep->reap_streams;
        st->session->ep->reap_streams = st;
        tern_ep_mark_dirty(st->session);
    }
}

/* ---- public calls ---- */

static bool session_usable(const tern_session *s)
{
    return s->state == SESSION_OPEN || s->state == SESSION_CONNECTING ||
           s->state == SESSION_HALFOPEN;
}

int tern_stream_open(tern_session *s, tern_stream **out)
{
    if (!s || !out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!session_usable(s) || s->ep->cfg.security == TERN_SECURITY_KCP_COMPAT)
        return TERN_ERR_STATE;
    if (s->n_streams >= s->ep->cfg.max_streams)
        return TERN_ERR_LIMIT;
    if (s->next_stream_id > TERN_CONV_STREAM_MAX - 1)
        return TERN_ERR_LIMIT;
    int rc = tern_stream_create(s, s->next_stream_id, out);
    if (rc < 0)
        return rc;
    s->next_stream_id += 2;
    tern_ep_trace(s->ep, TERN_TRACE_STREAM_OPENED, s, (*out)->id, 0);
    return 0;
}

uint32_t tern_stream_id(const tern_stream *st)
{
    return st ? st->id : 0;
}

tern_session *tern_stream_session(const tern_stream *st)
{
    return st ? st->session : NULL;
}

void tern_stream_set_data(tern_stream *st, void *data)
{
    if (st)
        st->data = data;
}

void *tern_stream_get_data(const tern_stream *st)
{
    return st ? st->data : NULL;
}

int tern_stream_set_priority(tern_stream *st, uint8_t priority, uint16_t weight)
{
    if (!st || priority >= TERN_PRIORITY_LEVELS || weight < 1 || weight > 1000)
        return TERN_ERR_INVAL;
    st->priority = priority;
    st->weight = weight;
    return 0;
}

int tern_stream_read_start(tern_stream *st, tern_alloc_cb alloc_cb, tern_read_cb read_cb)
{
    if (!st || !alloc_cb || !read_cb)
        return TERN_ERR_INVAL;
    if (st->app_closed || (st->read_end && st->end_told))
        return TERN_ERR_CLOSED;
    st->alloc_cb = alloc_cb;
    st->read_cb = read_cb;
    st->reading = true;
    /* Data, or the news of an end that came while reading was stopped,
     * may already wait: deliver it from the loop, not from here. */
    tern_ep_mark_dirty(st->session);
    return 0;
}

int tern_stream_set_drain_cb(tern_stream *st, tern_drain_cb cb)
{
    if (!st)
        return TERN_ERR_INVAL;
    st->drain_cb = cb;
    return 0;
}

int tern_stream_read_stop(tern_stream *st)
{
    if (!st)
        return TERN_ERR_INVAL;
    st->reading = false;
    return 0;
}

int tern_stream_write(tern_stream *st, const uv_buf_t bufs[], unsigned nbufs, tern_write_cb cb,
                      void *arg)
{
    if (!st || (!bufs && nbufs > 0))
        return TERN_ERR_INVAL;
    tern_session *s = st->session;
    if (st->app_closed || !session_usable(s) || !st->kcp)
        return TERN_ERR_CLOSED;
    if (st->shut)
        return TERN_ERR_STATE;
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        if (!bufs[i].base && bufs[i].len > 0)
            return TERN_ERR_INVAL;
        total += bufs[i].len;
    }
    if (tern_stream_write_queue_size(st) >= s->ep->cfg.stream_write_max) {
        st->want_drain = true;
        return TERN_ERR_WOULDBLOCK;
    }
    write_req *w = tern_mem_alloc(&s->ep->mem, sizeof(*w) + nbufs * sizeof(uv_buf_t));
    if (!w)
        return TERN_ERR_NOMEM;
    w->next = NULL;
    w->cb = cb;
    w->arg = arg;
    w->nbufs = nbufs;
    w->index = 0;
    w->offset = 0;
    w->left = total;
    if (nbufs)
        memcpy(w->bufs, bufs, nbufs * sizeof(uv_buf_t));
    if (st->wq_tail)
        st->wq_tail->next = w;
    else
        st->wq_head = w;
    st->wq_tail = w;
    st->wq_bytes += total;
    tern_ep_mark_dirty(s);
    return 0;
}

size_t tern_stream_write_queue_size(const tern_stream *st)
{
    if (!st)
        return 0;
    return st->wq_bytes + (st->kcp ? tern_kcp_unacked_bytes(st->kcp) : 0);
}

int tern_stream_shutdown(tern_stream *st, tern_shutdown_cb cb, void *arg)
{
    if (!st)
        return TERN_ERR_INVAL;
    if (st->app_closed || !st->kcp)
        return TERN_ERR_CLOSED;
    if (st->shut)
        return TERN_ERR_STATE;
    st->shut = true;
    st->shutdown_cb = cb;
    st->shutdown_arg = arg;
    tern_ep_mark_dirty(st->session);
    return 0;
}

int tern_stream_reset(tern_stream *st)
{
    if (!st)
        return TERN_ERR_INVAL;
    if (st->app_closed)
        return TERN_ERR_CLOSED;
    tern_session *s = st->session;
    tern_ms now = tern_ep_now(s->ep);
    if (st->kcp && s->state != SESSION_DEAD && s->ep->cfg.security != TERN_SECURITY_KCP_COMPAT)
        (void)tern_session_send_reset(s, st->id, now);
    drop_engine(st);
    if (!st->read_end) {
        st->read_end = TERN_ERR_CANCELED;
        st->end_told = true; /* the application asked for it */
    }
    cancel_writes(st, TERN_ERR_CANCELED);
    return 0;
}

int tern_stream_close(tern_stream *st, tern_stream_close_cb cb)
{
    if (!st)
        return TERN_ERR_INVAL;
    if (st->app_closed)
        return TERN_ERR_CLOSED;
    tern_session *s = st->session;
    /* Closing without a shutdown, or before the peer's end of stream, is
     * an abort; after both, the stream lingers (invisibly) until the peer
     * acknowledged our last bytes. */
    if (st->kcp && (!st->shut || !st->read_end))
        (void)tern_stream_reset(st);
    st->app_closed = true;
    st->reading = false;
    st->close_cb = cb;
    if (!st->in_reap) {
        st->in_reap = true;
        st->reap_next = s->ep->reap_streams;
        s->ep->reap_streams = st;
    }
    tern_ep_mark_dirty(s);
    return 0;
}
