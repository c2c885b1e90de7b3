/* A session: one peer. It turns frames into engine input and engine output
 * into DATA packets, keeps the peer alive, and ends with one status. */
#include <string.h>

#include "transport/internal.h"

#define PUSH_CMD 81U
#define KCP_HEADER 24U

static void engine_dead(tern_kcp *kcp, void *user)
{
    (void)kcp;
    tern_session *s = user;
    tern_session_end(s, TERN_ERR_DEADLINK, TERN_CLOSE_ERROR, tern_ep_now(s->ep));
}

size_t tern_session_payload_max(const tern_session *s)
{
    const tern_endpoint *ep = s->ep;
    switch (ep->cfg.security) {
    case TERN_SECURITY_NOISE:
        return ep->cfg.mtu - TERN_PACKET_OVERHEAD;
    case TERN_SECURITY_PLAINTEXT:
        return ep->cfg.mtu - TERN_WIRE_PLAIN_HEADER;
    default:
        return ep->cfg.mtu;
    }
}

int tern_session_new_engine_ex(tern_session *s, uint32_t conv, tern_kcp_mode mode,
                               bool unordered, tern_kcp **out)
{
    tern_endpoint *ep = s->ep;
    tern_kcp_settings ks = ep->cfg.kcp;
    ks.conv = conv;
    ks.mode = mode;
    /* Native message engines (control, channels) speak FORWARD, so that a
     * message with a deadline can be abandoned; streams and compat engines
     * stay classic. */
    bool native = ep->cfg.security != TERN_SECURITY_KCP_COMPAT;
    ks.forward = native && mode == TERN_KCP_MODE_MESSAGE;
    ks.unordered = native && unordered;
    /* A compat engine's datagram is the whole UDP payload; a native one
     * travels in a KCP frame inside a DATA payload. */
    size_t mtu = tern_session_payload_max(s);
    if (ep->cfg.security != TERN_SECURITY_KCP_COMPAT)
        mtu -= TERN_FRAME_KCP_HEADER;
    ks.mtu = (uint32_t)mtu;
    ks.cc = s->cc;
    ks.cc_state = s->cc_state;
    tern_kcp_callbacks cbs = {.dead_link = engine_dead};
    return tern_kcp_new(out, &ks, &cbs, s, &ep->mem, tern_ep_now(ep));
}

int tern_session_new_engine(tern_session *s, uint32_t conv, tern_kcp_mode mode, tern_kcp **out)
{
    return tern_session_new_engine_ex(s, conv, mode, false, out);
}

int tern_session_create(tern_endpoint *ep, bool is_client, tern_session **out)
{
    tern_session *s = tern_mem_calloc(&ep->mem, 1, sizeof(*s));
    if (!s)
        return TERN_ERR_NOMEM;
    s->ep = ep;
    s->is_client = is_client;
    s->heap_index = SIZE_MAX;
    s->wake = UINT64_MAX;
    s->pace_wake = UINT64_MAX;
    s->next_stream_id = is_client ? 1 : 2;
    s->peer_base = is_client ? 2 : 1;
    tern_ms now = tern_ep_now(ep);
    s->last_recv = s->last_send = now;
    s->cc = ep->cfg.kcp.cc ? ep->cfg.kcp.cc : tern_kcp_cc_find("none");
    if (s->cc->state_size > 0) {
        s->cc_state = tern_mem_calloc(&ep->mem, 1, s->cc->state_size);
        if (!s->cc_state) {
            tern_mem_free(&ep->mem, s);
            return TERN_ERR_NOMEM;
        }
        size_t mss = tern_session_payload_max(s) - TERN_FRAME_KCP_HEADER - KCP_HEADER;
        s->cc->init(s->cc_state, (uint32_t)mss, now);
    }
    int rc = tern_channels_init(s);
    if (rc < 0) {
        tern_mem_free(&ep->mem, s->cc_state);
        tern_mem_free(&ep->mem, s);
        return rc;
    }
    s->next = ep->sessions;
    if (ep->sessions)
        ep->sessions->prev = s;
    ep->sessions = s;
    ep->n_sessions++;
    *out = s;
    return 0;
}

void tern_session_destroy(tern_session *s)
{
    tern_endpoint *ep = s->ep;
    while (s->streams)
        tern_stream_free(s->streams);
    tern_channels_free(s);
    tern_session_retire_engine(s, s->control);
    tern_kcp_del(s->control);
    tern_noise_del(s->hs);
    tern_crypto_session_del(s->crypto);
    tern_cookie_client_del(s->cookie);
    tern_mem_free(&ep->mem, s->cc_state);
    tern_mem_free(&ep->mem, s->addrs);
    if (s->prev)
        s->prev->next = s->next;
    else if (ep->sessions == s)
        ep->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    ep->n_sessions--;
    tern_mem_free(&ep->mem, s);
}

tern_stream *tern_session_find_stream(const tern_session *s, uint32_t id)
{
    for (tern_stream *st = s->streams; st; st = st->next) {
        if (st->id == id)
            return st;
    }
    return NULL;
}

/* ---- output ---- */

typedef struct out_buf {
    tern_session *s;
    uint8_t *p;
    size_t len, cap;
    tern_ms now;
} out_buf;

static void emit(out_buf *o)
{
    if (o->len == 0)
        return;
    tern_session *s = o->s;
    tern_endpoint *ep = s->ep;
    uint8_t *dgram = ep->scratch;
    tern_ssize n;
    if (ep->cfg.security == TERN_SECURITY_NOISE) {
        n = tern_crypto_session_seal(s->crypto, o->p, o->len, dgram, sizeof(ep->scratch), o->now);
        if (n < 0) {
            /* A key past its hard limit: the session cannot go on. */
            o->len = 0;
            tern_session_end(s, (int)n, TERN_CLOSE_ERROR, o->now);
            return;
        }
    } else {
        dgram[0] = TERN_WIRE_PLAIN;
        tern_wire_put32(dgram + 1, s->remote_id);
        memcpy(dgram + TERN_WIRE_PLAIN_HEADER, o->p, o->len);
        n = (tern_ssize)(o->len + TERN_WIRE_PLAIN_HEADER);
    }
    tern_ep_send_raw(ep, dgram, (size_t)n, (const struct sockaddr *)&s->peer);
    s->stats.dgrams_out++;
    s->stats.bytes_out += (uint64_t)n;
    s->last_send = o->now;
    o->len = 0;
}

static uint8_t *reserve(out_buf *o, size_t n)
{
    if (o->len + n > o->cap)
        emit(o);
    uint8_t *r = o->p + o->len;
    o->len += n;
    return r;
}

/* Drains one engine into KCP frames; returns whether it wrote anything.
 * max_dgrams bounds how many datagrams it may take this round (weights). */
/* Refills the pacing bucket; the rate follows the controller's window and
 * the path's smallest RTT. */
static void pace_refill(tern_session *s, tern_ms now)
{
    s->pace_wake = UINT64_MAX;
    uint64_t cwnd = s->cc && s->cc_state && s->cc->cwnd ? s->cc->cwnd(s->cc_state) : UINT64_MAX;
    uint32_t srtt = 0;
    if (cwnd != UINT64_MAX) {
        for (const tern_stream *st = s->streams; st; st = st->next) {
            if (!st->kcp)
                continue;
            tern_kcp_stats k;
            tern_kcp_get_stats(st->kcp, &k);
            if (k.srtt_ms && (!srtt || k.srtt_ms < srtt))
                srtt = k.srtt_ms;
        }
    }
    if (cwnd == UINT64_MAX || srtt == 0) {
        s->pace_rate = 0;
        return;
    }
    s->pace_rate = cwnd * 1000U * 5U / 4U / srtt;
    int64_t burst = (int64_t)(s->pace_rate * 5U / 1000U);
    int64_t floor_burst = (int64_t)(10 * tern_session_payload_max(s));
    if (burst < floor_burst)
        burst = floor_burst;
    if (now > s->pace_last)
        s->pace_tokens += (int64_t)(s->pace_rate * (now - s->pace_last) / 1000U);
    s->pace_last = now;
    if (s->pace_tokens > burst)
        s->pace_tokens = burst;
}

static bool drain_engine(out_buf *o, tern_kcp *kcp, size_t max_dgrams)
{
    tern_session *s = o->s;
    uint8_t tmp[TERN_PACKET_MAX];
    bool any = false;
    for (size_t i = 0; i < max_dgrams; i++) {
        if (s->pace_rate && s->pace_tokens <= 0) {
            /* Come back when the bucket holds a datagram again. */
            uint64_t wait = ((uint64_t)(-s->pace_tokens) + tern_session_payload_max(s)) * 1000U /
                            s->pace_rate;
            s->pace_wake = o->now + (wait ? wait : 1);
            break;
        }
        tern_ssize n = tern_kcp_write_pkt(kcp, tmp, sizeof(tmp), o->now);
        if (n <= 0)
            break;
        any = true;
        if (s->pace_rate)
            s->pace_tokens -= n;
        uint8_t *f = reserve(o, TERN_FRAME_KCP_HEADER + (size_t)n);
        f[0] = TERN_FRAME_KCP;
        tern_wire_put16(f + 1, (uint16_t)n);
        memcpy(f + TERN_FRAME_KCP_HEADER, tmp, (size_t)n);
    }
    return any;
}

static void flush_compat(tern_session *s, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    tern_stream *st = s->streams;
    if (!st)
        return;
    tern_stream_pump(st, now);
    for (;;) {
        tern_ssize n = tern_kcp_write_pkt(st->kcp, ep->scratch, sizeof(ep->scratch), now);
        if (n <= 0)
            break;
        tern_ep_send_raw(ep, ep->scratch, (size_t)n, (const struct sockaddr *)&s->peer);
        s->stats.dgrams_out++;
        s->stats.bytes_out += (uint64_t)n;
        s->last_send = now;
    }
}

static void trace_engine_changes(tern_session *s)
{
    if (!s->ep->trace)
        return;
    tern_session_stats st;
    tern_session_get_stats(s, &st);
    uint64_t retrans = st.kcp.retrans_fast + st.kcp.retrans_timeout + st.kcp.retrans_early;
    if (retrans != s->kcp_retrans_seen)
        tern_ep_trace(s->ep, TERN_TRACE_RETRANSMIT, s, 0, (int64_t)(retrans - s->kcp_retrans_seen));
    if (st.kcp.lost != s->kcp_lost_seen)
        tern_ep_trace(s->ep, TERN_TRACE_LOSS, s, 0, (int64_t)(st.kcp.lost - s->kcp_lost_seen));
    s->kcp_retrans_seen = retrans;
    s->kcp_lost_seen = st.kcp.lost;
    if (s->cc && s->cc_state && s->cc->cwnd) {
        uint64_t cwnd = s->cc->cwnd(s->cc_state);
        if (cwnd != s->last_cwnd) {
            s->last_cwnd = cwnd;
            tern_ep_trace(s->ep, TERN_TRACE_CWND, s, (int64_t)cwnd,
                          (int64_t)s->cc->ssthresh(s->cc_state));
        }
    }
}

void tern_session_flush(tern_session *s, tern_ms now)
{
    if (s->state != SESSION_OPEN && s->state != SESSION_LINGER)
        return;
    tern_endpoint *ep = s->ep;
    if (ep->cfg.security == TERN_SECURITY_KCP_COMPAT) {
        flush_compat(s, now);
        return;
    }
    /* Moving queued writes into engines may call write callbacks, which may
     * write again: do it before the shared payload buffer is in use. */
    for (tern_stream *st = s->streams; st; st = st->next)
        tern_stream_pump(st, now);
    if (s->state == SESSION_DEAD)
        return;

    pace_refill(s, now);
    out_buf o = {.s = s, .p = ep->payload, .cap = tern_session_payload_max(s), .now = now};
    if (s->pong_due) {
        uint8_t *f = reserve(&o, 5);
        f[0] = TERN_FRAME_PONG;
        tern_wire_put32(f + 1, s->pong_token);
        s->pong_due = false;
    }
    if (s->ping_pending) {
        uint8_t *f = reserve(&o, 5);
        f[0] = TERN_FRAME_PING;
        tern_wire_put32(f + 1, s->ping_token);
        s->ping_sent_at = now;
        s->ping_pending = false;
        s->stats.pings_sent++;
    }
    if (s->control)
        drain_engine(&o, s->control, SIZE_MAX);
    /* Priority levels in order; inside a level, rounds in which each
     * engine may send up to its weight in datagrams (weighted round robin
     * over what the shared congestion window lets out). */
    for (unsigned prio = 0; prio < TERN_PRIORITY_LEVELS; prio++) {
        bool more = true;
        while (more && s->state != SESSION_DEAD) {
            more = false;
            for (uint32_t c = 0; c < ep->cfg.n_channels; c++) {
                channel *ch = &s->channels[c];
                if (ch->kcp && ch->cfg.priority == prio)
                    more |= drain_engine(&o, ch->kcp, ch->cfg.weight);
            }
            for (tern_stream *st = s->streams; st; st = st->next) {
                if (st->kcp && st->priority == prio)
                    more |= drain_engine(&o, st->kcp, st->weight);
            }
        }
    }
    if (s->state == SESSION_DEAD)
        return;
    emit(&o);
    trace_engine_changes(s);
}

/* Sends one unreliable message now, in as many datagrams as it takes. */
int tern_session_send_unreliable(tern_session *s, uint32_t ch, const uint8_t *data, size_t len,
                                 tern_ms now)
{
    tern_endpoint *ep = s->ep;
    size_t cap = tern_session_payload_max(s);
    size_t frag = cap - TERN_FRAME_UNREL_HEADER;
    size_t count = len == 0 ? 1 : (len + frag - 1) / frag;
    if (count > 255)
        return TERN_ERR_MSGSIZE;
    channel *c = &s->channels[ch];
    uint16_t seq = c->next_seq++;
    /* Its own buffer: a message callback may send while a flush is being
     * built in ep->payload. */
    uint8_t buf[TERN_PACKET_MAX];
    for (size_t i = 0; i < count; i++) {
        size_t off = i * frag;
        size_t n = len - off < frag ? len - off : frag;
        if (len == 0)
            n = 0;
        out_buf o = {.s = s, .p = buf, .cap = cap, .now = now};
        uint8_t *f = reserve(&o, TERN_FRAME_UNREL_HEADER + n);
        f[0] = TERN_FRAME_UNREL;
        f[1] = (uint8_t)ch;
        tern_wire_put16(f + 2, seq);
        f[4] = (uint8_t)i;
        f[5] = (uint8_t)count;
        tern_wire_put16(f + 6, (uint16_t)n);
        if (n)
            memcpy(f + TERN_FRAME_UNREL_HEADER, data + off, n);
        emit(&o);
        if (s->state == SESSION_DEAD)
            return TERN_ERR_CLOSED;
    }
    (void)ep;
    s->stats.msgs_sent++;
    return 0;
}

/* ---- input ---- */

static int control_send(tern_session *s, const uint8_t *msg, size_t len, tern_ms now)
{
    if (!s->control) {
        int rc = tern_session_new_engine(s, TERN_CONV_CONTROL, TERN_KCP_MODE_MESSAGE, &s->control);
        if (rc < 0)
            return rc;
    }
    int rc = tern_kcp_send(s->control, msg, len, now);
    /* A failed send (the control queue full) is retried by whoever asked,
     * at the next flush an ACK or a timer brings; marking the session
     * dirty for it would spin the loop. */
    if (rc == 0)
        tern_ep_mark_dirty(s);
    return rc;
}

int tern_session_send_fin(tern_session *s, uint32_t id, uint64_t size, tern_ms now)
{
    uint8_t m[TERN_CTRL_FIN_BYTES];
    m[0] = TERN_CTRL_FIN;
    tern_wire_put32(m + 1, id);
    tern_wire_put64(m + 5, size);
    return control_send(s, m, sizeof(m), now);
}

int tern_session_send_reset(tern_session *s, uint32_t id, tern_ms now)
{
    uint8_t m[TERN_CTRL_RESET_BYTES];
    m[0] = TERN_CTRL_RESET;
    tern_wire_put32(m + 1, id);
    return control_send(s, m, sizeof(m), now);
}

static bool peer_opens(const tern_session *s, uint32_t id)
{
    /* Clients open odd ids, servers even ones. */
    return s->is_client ? (id % 2 == 0) : (id % 2 == 1);
}

static bool peer_seen(const tern_session *s, uint32_t id)
{
    if (id < s->peer_base)
        return true;
    uint32_t k = (id - s->peer_base) / 2;
    if (k >= TERN_PEER_SEEN_WORDS * 64)
        return false;
    return (s->peer_seen[k / 64] >> (k % 64)) & 1U;
}

/* Drops the n lowest ids of the window (peer_base and up) in one pass:
 * O(words), whatever n is, so an id far ahead costs what a near one does. */
static void shift_seen(tern_session *s, uint64_t n)
{
    const uint64_t span = TERN_PEER_SEEN_WORDS * 64U;
    if (n >= span) {
        memset(s->peer_seen, 0, sizeof(s->peer_seen));
    } else {
        unsigned words = (unsigned)(n / 64), bits = (unsigned)(n % 64);
        for (unsigned w = 0; w < TERN_PEER_SEEN_WORDS; w++) {
            unsigned from = w + words;
            uint64_t lo = from < TERN_PEER_SEEN_WORDS ? s->peer_seen[from] : 0;
            uint64_t hi = from + 1 < TERN_PEER_SEEN_WORDS ? s->peer_seen[from + 1] : 0;
            s->peer_seen[w] = bits ? (lo >> bits) | (hi << (64 - bits)) : lo;
        }
    }
    s->peer_base += (uint32_t)(2 * n);
}

static void mark_seen(tern_session *s, uint32_t id)
{
    if (id < s->peer_base)
        return;
    const uint64_t span = TERN_PEER_SEEN_WORDS * 64U;
    uint64_t k = (id - s->peer_base) / 2;
    /* An id too far ahead: the ids skipped over count as opened and gone. */
    if (k >= span) {
        shift_seen(s, k - span + 1);
        k = span - 1;
    }
    s->peer_seen[k / 64] |= UINT64_C(1) << (k % 64);
    /* Slide past the run of seen ids at the bottom. */
    while (s->peer_seen[0] & 1U) {
        uint64_t run = s->peer_seen[0] == UINT64_MAX
                           ? 64U
                           : (uint64_t)__builtin_ctzll(~s->peer_seen[0]);
        shift_seen(s, run);
    }
}

/* A stream the peer opened, made on its first sign of life: its first
 * segment, or a FIN that overtook it (the control engine and the stream's
 * engine are independent). NULL if refused (then the peer is told). */
static tern_stream *accept_peer_stream(tern_session *s, uint32_t id, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    mark_seen(s, id);
    if (s->n_streams >= ep->cfg.max_streams || !s->cbs.stream_cb) {
        (void)tern_session_send_reset(s, id, now);
        return NULL;
    }
    tern_stream *st;
    if (tern_stream_create(s, id, &st) < 0)
        return NULL;
    tern_ep_trace(ep, TERN_TRACE_STREAM_OPENED, s, id, 0);
    s->cbs.stream_cb(s, st);
    if (s->state == SESSION_DEAD || st->reaped || !st->kcp)
        return NULL;
    return st;
}

static bool opens_new_stream(const tern_session *s, uint32_t id)
{
    return id != 0 && id <= TERN_CONV_STREAM_MAX && peer_opens(s, id) && !peer_seen(s, id);
}

static void control_deliver(tern_session *s, tern_ms now)
{
    uint8_t m[64];
    for (;;) {
        tern_ssize n = tern_kcp_recv(s->control, m, sizeof(m), now);
        if (n == TERN_ERR_NOBUFS) {
            /* Too long to be ours: skip it. */
            uint8_t big[TERN_PACKET_MAX];
            (void)tern_kcp_recv(s->control, big, sizeof(big), now);
            s->stats.drop_malformed++;
            continue;
        }
        if (n < 0)
            break;
        if (n == TERN_CTRL_FIN_BYTES && m[0] == TERN_CTRL_FIN) {
            uint32_t id = tern_wire_get32(m + 1);
            tern_stream *st = tern_session_find_stream(s, id);
            if (!st && opens_new_stream(s, id))
                st = accept_peer_stream(s, id, now);
            if (st)
                tern_stream_on_fin(st, tern_wire_get64(m + 5), now);
        } else if (n == TERN_CTRL_RESET_BYTES && m[0] == TERN_CTRL_RESET) {
            uint32_t id = tern_wire_get32(m + 1);
            tern_stream *st = tern_session_find_stream(s, id);
            /* Reset before we saw it: remember it as opened and gone. */
            if (!st && opens_new_stream(s, id))
                mark_seen(s, id);
            if (st)
                tern_stream_on_reset(st, TERN_ERR_RESET, now);
        } else {
            s->stats.drop_malformed++;
        }
        if (s->state == SESSION_DEAD)
            return;
    }
}

/* Whether a KCP frame carries the first segment (sn 0) of its stream: only
 * that may open a stream, so stray segments of a closed stream cannot bring
 * it back to life. */
static bool has_first_segment(const uint8_t *p, size_t len)
{
    size_t off = 0;
    while (len - off >= KCP_HEADER) {
        uint32_t sn = tern_wire_get32(p + off + 12);
        uint32_t n = tern_wire_get32(p + off + 20);
        if (p[off + 4] == PUSH_CMD && sn == 0)
            return true;
        if (n > len - off - KCP_HEADER)
            break;
        off += KCP_HEADER + n;
    }
    return false;
}

static void kcp_frame(tern_session *s, const tern_frame *f, tern_ms now)
{
    if (f->len < 4) {
        s->stats.drop_malformed++;
        return;
    }
    uint32_t conv = tern_wire_get32(f->data);
    if (conv == TERN_CONV_CONTROL) {
        if (!s->control &&
            tern_session_new_engine(s, TERN_CONV_CONTROL, TERN_KCP_MODE_MESSAGE, &s->control) < 0)
            return;
        if (tern_kcp_read_pkt(s->control, f->data, f->len, now) < 0)
            s->stats.drop_malformed++;
        control_deliver(s, now);
        return;
    }
    if (conv >= TERN_CONV_CHANNEL_BASE) {
        uint32_t ch = conv - TERN_CONV_CHANNEL_BASE;
        if (tern_channel_engine_for_input(s, ch) < 0) {
            s->stats.drop_malformed++;
            return;
        }
        if (tern_kcp_read_pkt(s->channels[ch].kcp, f->data, f->len, now) < 0)
            s->stats.drop_malformed++;
        tern_channel_deliver(s, ch, now);
        return;
    }
    tern_stream *st = tern_session_find_stream(s, conv);
    if (!st) {
        if (conv > TERN_CONV_STREAM_MAX) {
            s->stats.drop_malformed++;
            return;
        }
        if (!peer_opens(s, conv)) {
            /* One of ours, already freed: the peer is still retransmitting
             * to it (our last ACKs were lost). Tell it to stop, or it keeps
             * its share of the session's window forever. */
            if (conv != 0 && conv < s->next_stream_id)
                (void)tern_session_send_reset(s, conv, now);
            else
                s->stats.drop_malformed++;
            return;
        }
        if (peer_seen(s, conv)) {
            /* A stream already closed: tell the peer to stop sending. */
            (void)tern_session_send_reset(s, conv, now);
            return;
        }
        if (!has_first_segment(f->data, f->len)) {
            /* Its first segment was lost: it comes again. */
            s->stats.drop_malformed++;
            return;
        }
        st = accept_peer_stream(s, conv, now);
        if (!st)
            return;
    }
    if (!st->kcp)
        return;
    if (tern_kcp_read_pkt(st->kcp, f->data, f->len, now) < 0)
        s->stats.drop_malformed++;
    tern_stream_deliver(st, now);
    if (s->state != SESSION_DEAD && !st->reaped)
        tern_stream_check_done(st, now);
}

static bool all_acked(const tern_session *s)
{
    if (s->control && tern_kcp_unacked_segments(s->control) > 0)
        return false;
    for (uint32_t c = 0; c < s->ep->cfg.n_channels; c++) {
        if (s->channels[c].kcp && tern_kcp_unacked_segments(s->channels[c].kcp) > 0)
            return false;
    }
    for (const tern_stream *st = s->streams; st; st = st->next) {
        if (st->wq_bytes > 0 || (st->kcp && tern_kcp_unacked_segments(st->kcp) > 0))
            return false;
    }
    return true;
}

void tern_session_input(tern_session *s, const uint8_t *payload, size_t len, tern_ms now)
{
    if (tern_wire_frames_check(payload, len) < 0) {
        s->stats.drop_malformed++;
        s->ep->stats.drop_malformed++;
        return;
    }
    s->last_recv = now;
    if (s->state == SESSION_HALFOPEN)
        tern_session_established(s, now);
    size_t off = 0;
    while (off < len && s->state != SESSION_DEAD) {
        tern_frame f;
        tern_wire_frame_next(payload, &off, &f);
        switch (f.type) {
        case TERN_FRAME_KCP:
            kcp_frame(s, &f, now);
            break;
        case TERN_FRAME_UNREL:
            tern_channel_unrel_input(s, &f, now);
            break;
        case TERN_FRAME_PING:
            s->pong_due = true;
            s->pong_token = f.token;
            break;
        case TERN_FRAME_PONG:
            if (s->ping_sent_at && f.token == s->ping_token) {
                uint64_t rtt = now - s->ping_sent_at;
                s->srtt_ms = s->srtt_ms ? (uint32_t)((s->srtt_ms * 7 + rtt) / 8) : (uint32_t)rtt;
                s->ping_sent_at = 0;
            }
            break;
        case TERN_FRAME_CLOSE:
            /* The peer's reason, as the status: a graceful close reads as
             * the end of the session, anything else as a reset. */
            tern_session_end(s, f.reason == TERN_CLOSE_GRACEFUL ? TERN_ERR_EOF : TERN_ERR_RESET,
                             0, now);
            return;
        default:
            break;
        }
    }
    if (s->state == SESSION_DEAD)
        return;
    /* A graceful close ends as soon as the last ACK is in. */
    if (s->state == SESSION_LINGER && all_acked(s)) {
        tern_session_end(s, 0, TERN_CLOSE_GRACEFUL, now);
        return;
    }
    tern_ep_mark_dirty(s);
    tern_ep_reschedule(s);
}

void tern_session_compat_input(tern_session *s, const uint8_t *pkt, size_t len, tern_ms now)
{
    tern_stream *st = s->streams;
    if (!st || !st->kcp)
        return;
    if (tern_kcp_read_pkt(st->kcp, pkt, len, now) < 0) {
        s->stats.drop_malformed++;
        s->ep->stats.drop_malformed++;
        return;
    }
    s->last_recv = now;
    tern_stream_deliver(st, now);
    if (s->state == SESSION_DEAD)
        return;
    tern_ep_mark_dirty(s);
    tern_ep_reschedule(s);
}

/* ---- time ---- */

static tern_ms min_ms(tern_ms a, tern_ms b)
{
    return a < b ? a : b;
}

tern_ms tern_session_next_wake(const tern_session *s)
{
    const tern_endpoint *ep = s->ep;
    tern_ms t = UINT64_MAX;
    switch (s->state) {
    case SESSION_CONNECTING:
        return min_ms(s->hs_retry_at, s->hs_deadline);
    case SESSION_HALFOPEN:
        return s->hs_deadline;
    case SESSION_DEAD:
        return UINT64_MAX;
    default:
        break;
    }
    if (s->control)
        t = min_ms(t, tern_kcp_get_expiry(s->control));
    for (uint32_t c = 0; c < ep->cfg.n_channels; c++) {
        if (s->channels[c].kcp)
            t = min_ms(t, tern_kcp_get_expiry(s->channels[c].kcp));
    }
    for (const tern_stream *st = s->streams; st; st = st->next) {
        if (st->kcp)
            t = min_ms(t, tern_kcp_get_expiry(st->kcp));
    }
    if (ep->cfg.keepalive_ms && ep->cfg.security != TERN_SECURITY_KCP_COMPAT)
        t = min_ms(t, s->last_send + ep->cfg.keepalive_ms);
    if (ep->cfg.idle_timeout_ms)
        t = min_ms(t, s->last_recv + ep->cfg.idle_timeout_ms);
    if (s->state == SESSION_LINGER)
        t = all_acked(s) ? 0 : min_ms(t, s->linger_deadline);
    t = min_ms(t, s->pace_wake);
    return min_ms(t, tern_channels_wake(s));
}


void tern_session_on_timer(tern_session *s, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    switch (s->state) {
    case SESSION_CONNECTING:
        if (now >= s->hs_deadline) {
            if (tern_ep_client_next_address(s, now) < 0) {
                ep->stats.sessions_timed_out++;
                tern_session_end(s, TERN_ERR_TIMEDOUT, 0, now);
            }
        } else if (now >= s->hs_retry_at) {
            s->hs_retry_ms *= 2;
            s->hs_retry_at = now + s->hs_retry_ms;
            (void)tern_ep_client_send_init(s, now);
        }
        break;
    case SESSION_HALFOPEN:
        if (now >= s->hs_deadline) {
            ep->stats.sessions_timed_out++;
            tern_session_end(s, TERN_ERR_TIMEDOUT, 0, now);
        }
        break;
    case SESSION_OPEN:
    case SESSION_LINGER:
        if (ep->cfg.idle_timeout_ms && now >= s->last_recv + ep->cfg.idle_timeout_ms) {
            ep->stats.sessions_timed_out++;
            tern_session_end(s, TERN_ERR_TIMEDOUT, TERN_CLOSE_TIMEOUT, now);
            break;
        }
        if (s->state == SESSION_LINGER && (all_acked(s) || now >= s->linger_deadline)) {
            tern_session_end(s, 0, TERN_CLOSE_GRACEFUL, now);
            break;
        }
        (void)tern_channels_expire(s, now);
        if (s->control)
            (void)tern_kcp_handle_expiry(s->control, now);
        for (uint32_t c = 0; c < ep->cfg.n_channels && s->state != SESSION_DEAD; c++) {
            if (s->channels[c].kcp)
                (void)tern_kcp_handle_expiry(s->channels[c].kcp, now);
        }
        for (tern_stream *st = s->streams; st && s->state != SESSION_DEAD; st = st->next) {
            if (st->kcp)
                (void)tern_kcp_handle_expiry(st->kcp, now);
        }
        if (s->state == SESSION_DEAD)
            break;
        if (ep->cfg.keepalive_ms && ep->cfg.security != TERN_SECURITY_KCP_COMPAT &&
            now >= s->last_send + ep->cfg.keepalive_ms) {
            s->ping_pending = true;
            s->ping_token++;
        }
        tern_session_flush(s, now);
        break;
    default:
        break;
    }
}

/* ---- life and death ---- */

void tern_session_established(tern_session *s, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    if (s->halfopen_held) {
        tern_ratelimit_halfopen_release(ep->ratelimit);
        s->halfopen_held = false;
        ep->n_halfopen--;
    }
    s->state = SESSION_OPEN;
    s->last_recv = s->last_send = now;
    tern_ep_trace(ep, TERN_TRACE_HANDSHAKE_DONE, s, (int64_t)(now - s->hs_started), 0);
    if (s->is_client) {
        ep->stats.sessions_connected++;
        s->connect_reported = true;
        if (s->cbs.connect_cb)
            s->cbs.connect_cb(s, 0);
        /* The server keeps the session half-open until it hears from us. */
        if (s->state == SESSION_OPEN) {
            s->ping_pending = true;
            s->ping_token++;
            tern_ep_mark_dirty(s);
        }
    } else {
        ep->stats.sessions_accepted++;
        s->accepted = true;
        if (ep->accept_cb)
            ep->accept_cb(ep, s);
    }
}

void tern_session_end(tern_session *s, int status, uint16_t wire_reason, tern_ms now)
{
    if (s->state == SESSION_DEAD)
        return;
    tern_endpoint *ep = s->ep;
    bool was_open = s->state == SESSION_OPEN || s->state == SESSION_LINGER;
    /* Dead first: a CLOSE that fails to seal must not end it again. */
    s->state = SESSION_DEAD;
    s->end_status = status;
    bool peer_closed = status == TERN_ERR_RESET || status == TERN_ERR_EOF;
    if (was_open && !peer_closed && ep->cfg.security != TERN_SECURITY_KCP_COMPAT) {
        /* Twice: a lost CLOSE costs the peer an idle timeout. */
        for (int i = 0; i < 2; i++) {
            uint8_t buf[8];
            out_buf o = {.s = s, .p = buf, .cap = sizeof(buf), .now = now};
            uint8_t *f = reserve(&o, 3);
            f[0] = TERN_FRAME_CLOSE;
            tern_wire_put16(f + 1, wire_reason);
            emit(&o);
        }
    }
    if (s->halfopen_held) {
        tern_ratelimit_halfopen_release(ep->ratelimit);
        s->halfopen_held = false;
        ep->n_halfopen--;
    }
    tern_ep_session_gone(s);
}

/* ---- public calls ---- */

void tern_session_set_callbacks(tern_session *s, const tern_session_callbacks *cbs)
{
    if (s && cbs)
        s->cbs = *cbs;
}

void tern_session_set_data(tern_session *s, void *data)
{
    if (s)
        s->data = data;
}

void *tern_session_get_data(const tern_session *s)
{
    return s ? s->data : NULL;
}

tern_endpoint *tern_session_endpoint(const tern_session *s)
{
    return s ? s->ep : NULL;
}

int tern_session_peer_addr(const tern_session *s, struct sockaddr_storage *out)
{
    if (!s || !out)
        return TERN_ERR_INVAL;
    *out = s->peer;
    return 0;
}

int tern_session_peer_key(const tern_session *s, tern_public_key *out)
{
    if (!s || !out)
        return TERN_ERR_INVAL;
    if (!s->has_peer_key)
        return TERN_ERR_NOTFOUND;
    *out = s->peer_key;
    return 0;
}

uint32_t tern_session_id(const tern_session *s)
{
    return s ? s->local_id : 0;
}

int tern_session_close(tern_session *s)
{
    if (!s)
        return TERN_ERR_INVAL;
    if (s->state == SESSION_DEAD || s->state == SESSION_LINGER)
        return TERN_ERR_STATE;
    tern_ms now = tern_ep_now(s->ep);
    if (s->state != SESSION_OPEN) {
        tern_session_end(s, TERN_ERR_CANCELED, 0, now);
        return 0;
    }
    s->state = SESSION_LINGER;
    s->linger_deadline = now + s->ep->cfg.linger_ms;
    for (tern_stream *st = s->streams; st; st = st->next) {
        if (!st->shut)
            (void)tern_stream_shutdown(st, NULL, NULL);
    }
    tern_ep_mark_dirty(s);
    tern_ep_reschedule(s);
    return 0;
}

int tern_session_abort(tern_session *s)
{
    if (!s)
        return TERN_ERR_INVAL;
    if (s->state == SESSION_DEAD)
        return TERN_ERR_STATE;
    tern_session_end(s, TERN_ERR_CANCELED, TERN_CLOSE_ABORT, tern_ep_now(s->ep));
    return 0;
}

static void add_counters(tern_kcp_stats *sum, const tern_kcp_stats *kp)
{
    const tern_kcp_stats k = *kp;
    sum->datagrams_sent += k.datagrams_sent;
    sum->datagrams_recv += k.datagrams_recv;
    sum->segs_sent += k.segs_sent;
    sum->segs_recv += k.segs_recv;
    sum->bytes_sent += k.bytes_sent;
    sum->bytes_recv += k.bytes_recv;
    sum->acks_sent += k.acks_sent;
    sum->acks_recv += k.acks_recv;
    sum->probes_sent += k.probes_sent;
    sum->retrans_timeout += k.retrans_timeout;
    sum->retrans_fast += k.retrans_fast;
    sum->retrans_early += k.retrans_early;
    sum->lost += k.lost;
    sum->spurious += k.spurious;
    sum->bundled += k.bundled;
    sum->dup_segs += k.dup_segs;
    sum->out_of_window += k.out_of_window;
    sum->malformed += k.malformed;
    sum->oversize_msgs += k.oversize_msgs;
    sum->conv_mismatch += k.conv_mismatch;
    sum->msgs_sent += k.msgs_sent;
    sum->msgs_recv += k.msgs_recv;
    sum->expired_msgs += k.expired_msgs;
    sum->expired_segs += k.expired_segs;
    sum->forwards_sent += k.forwards_sent;
    sum->forwards_recv += k.forwards_recv;
    sum->forwarded_skipped += k.forwarded_skipped;
    sum->forwarded_dropped += k.forwarded_dropped;
}

/* Live engines add their gauges too: the smallest RTT (the path's), and
 * sums of what is in flight and queued. */
static void add_kcp_stats(tern_kcp_stats *sum, const tern_kcp *kcp)
{
    tern_kcp_stats k;
    tern_kcp_get_stats(kcp, &k);
    add_counters(sum, &k);
    if (k.srtt_ms && (!sum->srtt_ms || k.srtt_ms < sum->srtt_ms)) {
        sum->srtt_ms = k.srtt_ms;
        sum->rttvar_ms = k.rttvar_ms;
        sum->rto_ms = k.rto_ms;
    }
    sum->cwnd_bytes = k.cwnd_bytes;
    sum->ssthresh_bytes = k.ssthresh_bytes;
    sum->in_flight_bytes += k.in_flight_bytes;
    sum->in_flight_segs += k.in_flight_segs;
    sum->resend_segs += k.resend_segs;
    sum->snd_queue_segs += k.snd_queue_segs;
    sum->snd_queue_bytes += k.snd_queue_bytes;
    sum->rcv_buf_segs += k.rcv_buf_segs;
    sum->rcv_queue_segs += k.rcv_queue_segs;
    if (k.rmt_wnd > sum->rmt_wnd)
        sum->rmt_wnd = k.rmt_wnd;
}

void tern_session_retire_engine(tern_session *s, tern_kcp *kcp)
{
    if (!kcp)
        return;
    tern_kcp_stats k;
    tern_kcp_get_stats(kcp, &k);
    add_counters(&s->retired, &k);
}

void tern_session_get_stats(const tern_session *s, tern_session_stats *out)
{
    if (!s || !out)
        return;
    *out = s->stats;
    memset(&out->kcp, 0, sizeof(out->kcp));
    add_counters(&out->kcp, &s->retired);
    if (s->control)
        add_kcp_stats(&out->kcp, s->control);
    for (uint32_t c = 0; c < s->ep->cfg.n_channels; c++) {
        if (s->channels[c].kcp)
            add_kcp_stats(&out->kcp, s->channels[c].kcp);
    }
    for (const tern_stream *st = s->streams; st; st = st->next) {
        if (st->kcp)
            add_kcp_stats(&out->kcp, st->kcp);
    }
    out->streams_open = s->n_streams;
    out->msgs_expired = out->kcp.expired_msgs;
    out->pacing_rate = s->pace_rate;
    out->srtt_ms = s->srtt_ms ? s->srtt_ms : out->kcp.srtt_ms;
    if (s->cc && s->cc_state && s->cc->cwnd) {
        out->kcp.cwnd_bytes = s->cc->cwnd(s->cc_state);
        out->kcp.ssthresh_bytes = s->cc->ssthresh(s->cc_state);
    }
    if (s->crypto) {
        tern_crypto_session_stats cs;
        tern_crypto_session_get_stats(s->crypto, &cs);
        out->drop_auth = cs.auth_failures + cs.expired + cs.wrong_id;
        out->drop_replay = cs.replays + cs.too_old;
    }
}
