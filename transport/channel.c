/* Message channels. Reliable kinds ride an engine of their own (conv
 * TERN_CONV_CHANNEL_BASE + channel) in message mode; unreliable kinds are
 * UNREL frames, fragmented by the sender and put back together by a
 * bounded reassembler. Engines and reassemblers are made on first use, so
 * an idle session pays nothing for its channels. */
#include <string.h>

#include "transport/internal.h"

static bool is_reliable(tern_channel_kind kind)
{
    return kind == TERN_CHANNEL_RELIABLE_ORDERED || kind == TERN_CHANNEL_RELIABLE_UNORDERED;
}

int tern_channels_init(tern_session *s)
{
    const tern_endpoint *ep = s->ep;
    for (uint32_t c = 0; c < ep->cfg.n_channels; c++)
        s->channels[c].cfg = ep->cfg.channels[c];
    return 0;
}

void tern_channels_free(tern_session *s)
{
    for (uint32_t c = 0; c < TERN_CHANNELS_MAX; c++) {
        tern_session_retire_engine(s, s->channels[c].kcp);
        tern_kcp_del(s->channels[c].kcp);
        tern_reasm_del(s->channels[c].reasm);
        s->channels[c].kcp = NULL;
        s->channels[c].reasm = NULL;
    }
}

static int channel_engine(tern_session *s, uint32_t ch)
{
    channel *c = &s->channels[ch];
    if (c->kcp)
        return 0;
    return tern_session_new_engine_ex(s, TERN_CONV_CHANNEL_BASE + ch, TERN_KCP_MODE_MESSAGE,
                                      c->cfg.kind == TERN_CHANNEL_RELIABLE_UNORDERED, &c->kcp);
}

void tern_channel_deliver(tern_session *s, uint32_t ch, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    channel *c = &s->channels[ch];
    while (c->kcp && s->state != SESSION_DEAD) {
        tern_ssize size = tern_kcp_peek_size(c->kcp);
        if (size < 0)
            break;
        if ((size_t)size > ep->cfg.message_max) {
            /* The peer broke the agreed limit: drop it, whole. */
            uint8_t *big = tern_mem_alloc(&ep->mem, (size_t)size);
            if (big) {
                (void)tern_kcp_recv(c->kcp, big, (size_t)size, now);
                tern_mem_free(&ep->mem, big);
            }
            s->stats.drop_malformed++;
            if (!big)
                break;
            continue;
        }
        tern_ssize n = tern_kcp_recv(c->kcp, ep->msgbuf, ep->cfg.message_max, now);
        if (n < 0)
            break;
        s->stats.msgs_recv++;
        if (s->cbs.message_cb)
            s->cbs.message_cb(s, ch, ep->msgbuf, (size_t)n);
    }
    tern_ep_mark_dirty(s);
}

void tern_channel_unrel_input(tern_session *s, const tern_frame *f, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    if (f->channel >= ep->cfg.n_channels || is_reliable(s->channels[f->channel].cfg.kind)) {
        s->stats.drop_malformed++;
        return;
    }
    channel *c = &s->channels[f->channel];
    if (!c->reasm) {
        tern_reasm_config rc;
        tern_reasm_config_default(&rc);
        rc.sequenced = c->cfg.kind == TERN_CHANNEL_UNRELIABLE_SEQUENCED;
        rc.max_message = ep->cfg.message_max;
        rc.max_bytes = ep->cfg.reassembly_max;
        if (tern_reasm_new(&c->reasm, &rc, &ep->mem) < 0) {
            s->stats.drop_malformed++;
            return;
        }
        c->reasm_wake = UINT64_MAX;
    }
    tern_reasm_stats before;
    tern_reasm_get_stats(c->reasm, &before);
    const uint8_t *msg;
    size_t len;
    int done = tern_reasm_push(c->reasm, f->seq, f->index, f->count, f->data, f->len, now, &msg,
                               &len);
    if (done <= 0) {
        tern_reasm_stats after;
        tern_reasm_get_stats(c->reasm, &after);
        s->stats.msgs_obsolete += after.obsolete - before.obsolete;
        c->reasm_wake = tern_reasm_expire(c->reasm, now);
        return;
    }
    s->stats.msgs_recv++;
    if (s->cbs.message_cb)
        s->cbs.message_cb(s, f->channel, msg, len);
    /* Only after the callback: expiring ends msg's validity. */
    if (c->reasm)
        c->reasm_wake = tern_reasm_expire(c->reasm, now);
}

tern_ms tern_channels_expire(tern_session *s, tern_ms now)
{
    for (uint32_t ch = 0; ch < s->ep->cfg.n_channels; ch++) {
        channel *c = &s->channels[ch];
        if (c->reasm && c->reasm_wake <= now)
            c->reasm_wake = tern_reasm_expire(c->reasm, now);
    }
    return tern_channels_wake(s);
}

tern_ms tern_channels_wake(const tern_session *s)
{
    tern_ms t = UINT64_MAX;
    for (uint32_t ch = 0; ch < s->ep->cfg.n_channels; ch++) {
        const channel *c = &s->channels[ch];
        if (c->reasm && c->reasm_wake < t)
            t = c->reasm_wake;
    }
    return t;
}

int tern_session_send(tern_session *s, uint32_t ch, const void *data, size_t len,
                      uint32_t deadline_ms)
{
    if (!s || (!data && len > 0))
        return TERN_ERR_INVAL;
    tern_endpoint *ep = s->ep;
    if (ep->cfg.security == TERN_SECURITY_KCP_COMPAT)
        return TERN_ERR_STATE;
    if (s->state == SESSION_DEAD || s->state == SESSION_LINGER)
        return TERN_ERR_CLOSED;
    if (ch >= ep->cfg.n_channels)
        return TERN_ERR_RANGE;
    if (len > ep->cfg.message_max)
        return TERN_ERR_MSGSIZE;
    tern_ms now = tern_ep_now(ep);
    channel *c = &s->channels[ch];
    if (!is_reliable(c->cfg.kind)) {
        /* Unreliable: now or never. Before the handshake is done there is
         * nowhere to send it. */
        if (s->state != SESSION_OPEN)
            return TERN_ERR_STATE;
        return tern_session_send_unreliable(s, ch, data, len, now);
    }
    int rc = channel_engine(s, ch);
    if (rc < 0)
        return rc;
    /* Late equals useless: past its deadline the message is dropped rather
     * than retransmitted, and the peer told to skip it (FORWARD). */
    tern_ms deadline = deadline_ms ? now + deadline_ms : UINT64_MAX;
    rc = tern_kcp_send_deadline(c->kcp, data, len, deadline, now);
    if (rc < 0)
        return rc;
    s->stats.msgs_sent++;
    tern_ep_mark_dirty(s);
    return 0;
}

/* A reliable channel's engine for input: made on the peer's first
 * segment. */
int tern_channel_engine_for_input(tern_session *s, uint32_t ch)
{
    if (ch >= s->ep->cfg.n_channels || !is_reliable(s->channels[ch].cfg.kind))
        return TERN_ERR_RANGE;
    return channel_engine(s, ch);
}
