/* The endpoint: one UDP socket, one timer, every session. It demultiplexes
 * datagrams by their type and session id, runs the sessions that are due
 * from a heap keyed by their next deadline, and flushes what they produced
 * once per loop iteration. */
#include <sodium.h>
#include <string.h>

#include "transport/internal.h"

tern_ms tern_ep_now(const tern_endpoint *ep)
{
    return uv_now(ep->loop);
}

void tern_ep_addr_bytes(const struct sockaddr *sa, tern_addr *out)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        memcpy(out->bytes, &a->sin6_addr, 16);
        memcpy(out->bytes + 16, &a->sin6_port, 2);
        out->len = 18;
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        memcpy(out->bytes, &a->sin_addr, 4);
        memcpy(out->bytes + 4, &a->sin_port, 2);
        out->len = 6;
    }
}

uint64_t tern_ep_hash_key(const tern_endpoint *ep, const struct sockaddr *addr, uint32_t id,
                          uint8_t kind)
{
    tern_addr a;
    tern_ep_addr_bytes(addr, &a);
    uint8_t in[TERN_ADDR_MAX + 5];
    memcpy(in, a.bytes, a.len);
    tern_wire_put32(in + a.len, id);
    in[a.len + 4] = kind;
    uint8_t h[crypto_shorthash_BYTES];
    /* Keyed (SipHash), so a flood cannot aim at one bucket. */
    crypto_shorthash(h, in, a.len + 5U, ep->hash_key);
    uint64_t k = tern_wire_get64(h);
    return k ? k : 1;
}

/* ---- trace ---- */

void tern_ep_trace(tern_endpoint *ep, tern_trace_kind kind, const tern_session *s, int64_t a,
                   int64_t b)
{
    if (!ep->trace)
        return;
    tern_trace_event ev = {
        .kind = kind,
        .time = tern_ep_now(ep),
        .session_id = s ? s->local_id : 0,
        .a = a,
        .b = b,
        .peer = s ? (const struct sockaddr *)&s->peer : NULL,
    };
    ep->trace(ep, &ev, ep->trace_user);
}

/* ---- the timer heap ---- */

static void heap_swap(tern_endpoint *ep, size_t i, size_t j)
{
    tern_session *t = ep->heap[i];
    ep->heap[i] = ep->heap[j];
    ep->heap[j] = t;
    ep->heap[i]->heap_index = i;
    ep->heap[j]->heap_index = j;
}

static void heap_up(tern_endpoint *ep, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (ep->heap[parent]->wake <= ep->heap[i]->wake)
            break;
        heap_swap(ep, i, parent);
        i = parent;
    }
}

static void heap_down(tern_endpoint *ep, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < ep->heap_len && ep->heap[l]->wake < ep->heap[m]->wake)
            m = l;
        if (r < ep->heap_len && ep->heap[r]->wake < ep->heap[m]->wake)
            m = r;
        if (m == i)
            break;
        heap_swap(ep, i, m);
        i = m;
    }
}

static void heap_remove(tern_endpoint *ep, tern_session *s)
{
    size_t i = s->heap_index;
    if (i == SIZE_MAX)
        return;
    ep->heap_len--;
    if (i != ep->heap_len) {
        ep->heap[i] = ep->heap[ep->heap_len];
        ep->heap[i]->heap_index = i;
        heap_down(ep, i);
        heap_up(ep, i);
    }
    s->heap_index = SIZE_MAX;
}

static void on_timer(uv_timer_t *t);

void tern_ep_heap_remove(tern_session *s)
{
    heap_remove(s->ep, s);
}

static void arm_timer(tern_endpoint *ep)
{
    if (ep->closing)
        return;
    if (ep->heap_len == 0) {
        uv_timer_stop(&ep->timer);
        ep->timer_at = UINT64_MAX;
        return;
    }
    tern_ms at = ep->heap[0]->wake;
    if (at == ep->timer_at && uv_is_active((uv_handle_t *)&ep->timer))
        return;
    tern_ms now = tern_ep_now(ep);
    ep->timer_at = at;
    uv_timer_start(&ep->timer, on_timer, at > now ? at - now : 0, 0);
}

void tern_ep_reschedule(tern_session *s)
{
    tern_endpoint *ep = s->ep;
    tern_ms wake = tern_session_next_wake(s);
    if (wake == UINT64_MAX) {
        heap_remove(ep, s);
    } else if (s->heap_index == SIZE_MAX) {
        if (ep->heap_len == ep->heap_cap) {
            size_t cap = ep->heap_cap ? ep->heap_cap * 2 : 64;
            tern_session **h = tern_mem_alloc(&ep->mem, cap * sizeof(*h));
            if (!h)
                return; /* it runs again when input arrives */
            if (ep->heap_len)
                memcpy(h, ep->heap, ep->heap_len * sizeof(*h));
            tern_mem_free(&ep->mem, ep->heap);
            ep->heap = h;
            ep->heap_cap = cap;
        }
        s->wake = wake;
        s->heap_index = ep->heap_len;
        ep->heap[ep->heap_len++] = s;
        heap_up(ep, s->heap_index);
    } else if (wake != s->wake) {
        s->wake = wake;
        heap_down(ep, s->heap_index);
        heap_up(ep, s->heap_index);
    }
    arm_timer(ep);
}

/* ---- the per-iteration work ---- */

static void start_idle(tern_endpoint *ep);

void tern_ep_mark_dirty(tern_session *s)
{
    if (s->dirty || s->state == SESSION_DEAD)
        return;
    s->dirty = true;
    s->dirty_next = s->ep->dirty;
    s->ep->dirty = s;
    start_idle(s->ep);
}

void tern_ep_session_gone(tern_session *s)
{
    tern_endpoint *ep = s->ep;
    tern_map_del(&ep->by_id, s->local_id);
    if (s->by_key && tern_map_get(&ep->by_key, s->by_key) == s)
        tern_map_del(&ep->by_key, s->by_key);
    heap_remove(ep, s);
    /* Off the list of sessions to flush, or the reaper would free it while
     * it is still linked there. A session in the batch run_dirty() is
     * working through is not on that list: the batch skips the dead, and
     * the reaper runs after it. Cutting dirty_next without unlinking would
     * lose every session after it in the list. */
    for (tern_session **p = &ep->dirty; s->dirty && *p; p = &(*p)->dirty_next) {
        if (*p == s) {
            *p = s->dirty_next;
            s->dirty_next = NULL;
            s->dirty = false;
            break;
        }
    }
    s->next_dead = ep->reap;
    ep->reap = s;
    ep->stats.sessions_closed++;
    tern_ep_trace(ep, TERN_TRACE_CLOSED, s, s->end_status, 0);
    start_idle(ep);
}

static void notify_session_end(tern_session *s)
{
    int status = s->end_status;
    for (tern_stream *st = s->streams; st; st = st->next) {
        if (!st->read_end) {
            st->read_end = status < 0 ? status : TERN_ERR_CANCELED;
            if (st->reading && st->read_cb && !st->app_closed) {
                st->end_told = true;
                uv_buf_t none = uv_buf_init(NULL, 0);
                st->read_cb(st, st->read_end, &none);
            }
        }
    }
    if (s->is_client && !s->connect_reported) {
        s->connect_reported = true;
        if (s->cbs.connect_cb)
            s->cbs.connect_cb(s, status < 0 ? status : TERN_ERR_CANCELED);
    }
    if ((s->is_client || s->accepted) && s->cbs.close_cb)
        s->cbs.close_cb(s, status);
}

void tern_ep_reap(tern_endpoint *ep)
{
    while (ep->reap_streams) {
        tern_stream *st = ep->reap_streams;
        ep->reap_streams = st->reap_next;
        st->reap_next = NULL;
        st->in_reap = false;
        /* Queued writes still owe their callbacks: the close callback
         * comes last, once they are in the engine (check_done brings the
         * stream back here). */
        bool writes_owed = st->wq_head && st->kcp && st->session->state != SESSION_DEAD;
        if (!st->reaped && !writes_owed) {
            st->reaped = true;
            if (st->close_cb)
                st->close_cb(st);
        }
        /* After a graceful close it lingers until the peer has it all. */
        if (!writes_owed &&
            (!st->kcp || tern_stream_write_side_done(st) || st->session->state == SESSION_DEAD))
            tern_stream_free(st);
    }
    while (ep->reap) {
        tern_session *s = ep->reap;
        ep->reap = s->next_dead;
        notify_session_end(s);
        tern_session_destroy(s);
    }
}

static void run_dirty(tern_endpoint *ep)
{
    tern_ms now = tern_ep_now(ep);
    /* Flushing may dirty other sessions (callbacks write): loop until calm,
     * but never more than a few rounds in one iteration. */
    for (int round = 0; round < 4 && (ep->dirty || ep->reap_streams || ep->reap); round++) {
        /* This round flushes the sessions dirty when it starts. One that
         * its own flush dirties again (a retry that keeps failing) waits for
         * the next round or iteration, instead of spinning here forever. */
        tern_session *batch = ep->dirty;
        ep->dirty = NULL;
        while (batch) {
            tern_session *s = batch;
            batch = s->dirty_next;
            s->dirty_next = NULL;
            s->dirty = false;
            if (s->state == SESSION_DEAD)
                continue;
            if (s->is_client && s->state == SESSION_OPEN && !s->connect_reported) {
                s->connect_reported = true;
                /* Compatibility mode: the one stream is announced like a
                 * peer's, just before the connection. */
                if (ep->cfg.security == TERN_SECURITY_KCP_COMPAT && s->streams &&
                    s->cbs.stream_cb) {
                    s->cbs.stream_cb(s, s->streams);
                    if (s->state == SESSION_DEAD)
                        continue;
                }
                if (s->cbs.connect_cb)
                    s->cbs.connect_cb(s, 0);
                if (s->state == SESSION_DEAD)
                    continue;
            }
            for (tern_stream *st = s->streams; st && s->state != SESSION_DEAD; st = st->next)
                tern_stream_deliver(st, now);
            if (s->state == SESSION_DEAD)
                continue;
            tern_session_flush(s, now);
            if (s->state != SESSION_DEAD) {
                for (tern_stream *st = s->streams; st && s->state != SESSION_DEAD;) {
                    tern_stream *next = st->next;
                    tern_stream_check_done(st, now);
                    st = next;
                }
            }
            if (s->state != SESSION_DEAD)
                tern_ep_reschedule(s);
        }
        tern_ep_reap(ep);
    }
    tern_udp_flush(ep->udp);
}

void tern_ep_on_check(uv_check_t *h)
{
    tern_endpoint *ep = h->data;
    run_dirty(ep);
    if (!ep->dirty && !ep->reap && !ep->reap_streams)
        uv_idle_stop(&ep->idle);
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* only there to keep the loop from blocking while work waits */
}

static void start_idle(tern_endpoint *ep)
{
    if (!ep->closing && !uv_is_active((uv_handle_t *)&ep->idle))
        uv_idle_start(&ep->idle, on_idle);
}

static void on_timer(uv_timer_t *t)
{
    tern_endpoint *ep = t->data;
    tern_ms now = tern_ep_now(ep);
    ep->timer_at = UINT64_MAX;
    /* Only the sessions that are due, earliest first. */
    while (ep->heap_len > 0 && ep->heap[0]->wake <= now) {
        tern_session *s = ep->heap[0];
        heap_remove(ep, s);
        tern_session_on_timer(s, now);
        if (s->state != SESSION_DEAD) {
            s->wake = UINT64_MAX;
            tern_ep_reschedule(s);
            /* Still due now (a deadline the timer handler could not move):
             * leave it for the next turn instead of spinning here. */
            if (s->heap_index != SIZE_MAX && s->wake <= now) {
                s->wake = now + 1;
                heap_down(ep, s->heap_index);
            }
        }
    }
    run_dirty(ep);
    arm_timer(ep);
}

void tern_ep_send_raw(tern_endpoint *ep, const uint8_t *data, size_t len,
                      const struct sockaddr *to)
{
    if (tern_udp_send(ep->udp, data, len, to) < 0) {
        ep->stats.send_failed++;
        return;
    }
    ep->stats.dgrams_out++;
    ep->stats.bytes_out += len;
}

/* ---- receive ---- */


static void path_check(tern_session *s, const struct sockaddr *from)
{
    tern_addr a;
    tern_ep_addr_bytes(from, &a);
    if (a.len == s->peer_addr.len && memcmp(a.bytes, s->peer_addr.bytes, a.len) == 0)
        return;
    /* Only after the packet authenticated (or, in plaintext, named the
     * session's random id): a NAT rebinding keeps the session. */
    memcpy(&s->peer, from, tern_ep_addr_len(from));
    s->peer_addr = a;
    s->stats.path_changes++;
    tern_ep_trace(s->ep, TERN_TRACE_PATH_CHANGE, s, 0, 0);
}

static void handle_data(tern_endpoint *ep, const uint8_t *p, size_t len,
                        const struct sockaddr *from, tern_ms now)
{
    uint32_t id;
    bool noise = ep->cfg.security == TERN_SECURITY_NOISE;
    if (noise) {
        if (tern_packet_peek_receiver(p, len, &id) < 0) {
            ep->stats.drop_malformed++;
            return;
        }
    } else {
        if (len < TERN_WIRE_PLAIN_HEADER) {
            ep->stats.drop_malformed++;
            return;
        }
        id = tern_wire_get32(p + 1);
    }
    tern_session *s = tern_map_get(&ep->by_id, id);
    if (!s || s->state == SESSION_CONNECTING || s->state == SESSION_DEAD) {
        ep->stats.drop_unknown_session++;
        return;
    }
    const uint8_t *payload;
    size_t plen;
    if (noise) {
        tern_ssize n = tern_crypto_session_open(s->crypto, p, len, ep->inbuf, sizeof(ep->inbuf), now);
        if (n < 0) {
            ep->stats.drop_auth++;
            return;
        }
        payload = ep->inbuf;
        plen = (size_t)n;
    } else {
        payload = p + TERN_WIRE_PLAIN_HEADER;
        plen = len - TERN_WIRE_PLAIN_HEADER;
    }
    s->stats.dgrams_in++;
    s->stats.bytes_in += len;
    if (s->state != SESSION_HALFOPEN)
        path_check(s, from);
    tern_session_input(s, payload, plen, now);
}

static bool compat_valid(const uint8_t *p, size_t len, uint32_t conv)
{
    size_t off = 0;
    if (len < 24)
        return false;
    while (off < len) {
        if (len - off < 24 || tern_wire_get32(p + off) != conv)
            return false;
        uint8_t cmd = p[off + 4];
        uint32_t n = tern_wire_get32(p + off + 20);
        if (cmd < 81 || cmd > 84 || n > len - off - 24)
            return false;
        off += 24 + n;
    }
    return true;
}

static void handle_compat(tern_endpoint *ep, const uint8_t *p, size_t len,
                          const struct sockaddr *from, tern_ms now)
{
    uint32_t conv = len >= 4 ? tern_wire_get32(p) : 0;
    if (!compat_valid(p, len, conv)) {
        ep->stats.drop_malformed++;
        return;
    }
    uint64_t key = tern_ep_hash_key(ep, from, conv, 'C');
    tern_session *s = tern_map_get(&ep->by_key, key);
    if (s && s->compat_conv == conv) {
        s->stats.dgrams_in++;
        s->stats.bytes_in += len;
        tern_session_compat_input(s, p, len, now);
        return;
    }
    if (!ep->listening || ep->closing) {
        ep->stats.drop_unknown_session++;
        return;
    }
    if (ep->n_sessions >= ep->cfg.max_sessions) {
        ep->stats.drop_limit++;
        ep->stats.sessions_refused++;
        return;
    }
    if (tern_session_create(ep, false, &s) < 0)
        return;
    s->compat_conv = conv;
    s->local_id = conv;
    memcpy(&s->peer, from, tern_ep_addr_len(from));
    tern_ep_addr_bytes(from, &s->peer_addr);
    tern_stream *st;
    if (tern_stream_create(s, conv, &st) < 0 || tern_map_put(&ep->by_key, key, s) < 0) {
        tern_session_destroy(s);
        return;
    }
    s->by_key = key;
    s->state = SESSION_OPEN;
    s->accepted = true;
    ep->stats.sessions_accepted++;
    tern_ep_trace(ep, TERN_TRACE_SESSION_OPENED, s, 0, 0);
    if (ep->accept_cb)
        ep->accept_cb(ep, s);
    if (s->state == SESSION_DEAD)
        return;
    if (s->cbs.stream_cb)
        s->cbs.stream_cb(s, st);
    if (s->state == SESSION_DEAD)
        return;
    s->stats.dgrams_in++;
    s->stats.bytes_in += len;
    tern_session_compat_input(s, p, len, now);
}

void tern_ep_on_datagram(void *user, const uint8_t *p, size_t len, const struct sockaddr *from,
                        tern_ms now)
{
    tern_endpoint *ep = user;
    ep->stats.dgrams_in++;
    ep->stats.bytes_in += len;
    if (ep->closing || len == 0) {
        ep->stats.drop_malformed += len == 0;
        return;
    }
    if (ep->cfg.security == TERN_SECURITY_KCP_COMPAT) {
        handle_compat(ep, p, len, from, now);
        return;
    }
    uint8_t type = p[0] & 0x7F;
    switch (type) {
    case TERN_WIRE_INIT:
        tern_ep_handle_init(ep, p, len, from, now);
        break;
    case TERN_WIRE_RESP:
        tern_ep_handle_resp(ep, p, len, from, now);
        break;
    case TERN_WIRE_COOKIE:
        tern_ep_handle_cookie(ep, p, len, from, now);
        break;
    case TERN_WIRE_DATA:
        if (ep->cfg.security == TERN_SECURITY_NOISE)
            handle_data(ep, p, len, from, now);
        else
            ep->stats.drop_malformed++;
        break;
    case TERN_WIRE_PLAIN:
        if (ep->cfg.security == TERN_SECURITY_PLAINTEXT && p[0] == TERN_WIRE_PLAIN)
            handle_data(ep, p, len, from, now);
        else
            ep->stats.drop_malformed++;
        break;
    default:
        ep->stats.drop_malformed++;
        break;
    }
}
