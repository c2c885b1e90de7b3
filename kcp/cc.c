/* Congestion controllers behind tern_kcp_cc_ops. The engine only calls the
 * ops, so a CUBIC or BBR is one more table here, not a change to the engine.
 * A controller keeps the bytes in flight itself, so that several engines
 * sharing one state (one path) are limited together. */
#include <string.h>

#include "tern/kcp.h"

/* "none": KCP's nc=1, only the windows limit. Stateless. */

static void none_init(void *state, uint32_t mss, tern_ms now)
{
    (void)state, (void)mss, (void)now;
}

static bool none_can_send(const void *state, uint64_t bytes)
{
    (void)state, (void)bytes;
    return true;
}

static void none_on_sent(void *state, uint64_t bytes, tern_ms now)
{
    (void)state, (void)bytes, (void)now;
}

static void none_on_ack(void *state, uint64_t acked, uint64_t released, tern_ms sent_at,
                        tern_ms now)
{
    (void)state, (void)acked, (void)released, (void)sent_at, (void)now;
}

static void none_on_loss(void *state, tern_kcp_loss_kind kind, uint64_t bytes, tern_ms sent_at,
                         tern_ms now)
{
    (void)state, (void)kind, (void)bytes, (void)sent_at, (void)now;
}

static void none_on_discard(void *state, uint64_t bytes)
{
    (void)state, (void)bytes;
}

static uint64_t none_unlimited(const void *state)
{
    (void)state;
    return UINT64_MAX;
}

static const tern_kcp_cc_ops cc_none = {
    .name = "none",
    .state_size = 0,
    .init = none_init,
    .can_send = none_can_send,
    .on_sent = none_on_sent,
    .on_ack = none_on_ack,
    .on_loss = none_on_loss,
    .on_discard = none_on_discard,
    .cwnd = none_unlimited,
    .ssthresh = none_unlimited,
};

/* NewReno in the manner of RFC 5681 / RFC 9002: byte-counted growth, one
 * reduction per loss episode (a loss of a segment sent before the episode
 * began belongs to it and does not reduce again), no growth from ACKs of
 * segments sent before the episode began, one MSS after a timeout. */
typedef struct reno {
    uint64_t cwnd;
    uint64_t ssthresh;
    uint64_t in_flight;
    uint64_t acked_in_avoidance;
    uint32_t mss;
    bool had_episode;
    tern_ms recovery_start;
} reno;

static void reno_init(void *state, uint32_t mss, tern_ms now)
{
    (void)now;
    reno *r = state;
    memset(r, 0, sizeof(*r));
    r->mss = mss;
    /* RFC 6928's initial window: 10 segments, capped near 14600 bytes. */
    uint64_t iw = (uint64_t)mss * 10;
    uint64_t cap = mss * 2 > 14600 ? (uint64_t)mss * 2 : 14600;
    r->cwnd = iw < cap ? iw : cap;
    r->ssthresh = UINT64_MAX;
}

static bool reno_can_send(const void *state, uint64_t bytes)
{
    const reno *r = state;
    return r->in_flight == 0 || r->in_flight + bytes <= r->cwnd;
}

static void leave_flight(reno *r, uint64_t bytes)
{
    r->in_flight = bytes < r->in_flight ? r->in_flight - bytes : 0;
}

static void reno_on_sent(void *state, uint64_t bytes, tern_ms now)
{
    (void)now;
    ((reno *)state)->in_flight += bytes;
}

static bool in_episode(const reno *r, tern_ms sent_at)
{
    return r->had_episode && sent_at <= r->recovery_start;
}

static void reno_on_ack(void *state, uint64_t acked, uint64_t released, tern_ms sent_at,
                        tern_ms now)
{
    (void)now;
    reno *r = state;
    leave_flight(r, released);
    if (in_episode(r, sent_at))
        return;
    if (r->cwnd < r->ssthresh) {
        r->cwnd += acked;
        return;
    }
    r->acked_in_avoidance += acked;
    while (r->acked_in_avoidance >= r->cwnd) {
        r->acked_in_avoidance -= r->cwnd;
        r->cwnd += r->mss;
    }
}

static void reno_on_loss(void *state, tern_kcp_loss_kind kind, uint64_t bytes, tern_ms sent_at,
                         tern_ms now)
{
    reno *r = state;
    leave_flight(r, bytes);
    if (in_episode(r, sent_at))
        return;
    uint64_t floor = (uint64_t)r->mss * 2;
    r->ssthresh = r->cwnd / 2 > floor ? r->cwnd / 2 : floor;
    r->cwnd = kind == TERN_KCP_LOSS_TIMEOUT ? r->mss : r->ssthresh;
    r->acked_in_avoidance = 0;
    r->had_episode = true;
    r->recovery_start = now;
}

static void reno_on_discard(void *state, uint64_t bytes)
{
    leave_flight(state, bytes);
}

static uint64_t reno_cwnd(const void *state)
{
    return ((const reno *)state)->cwnd;
}

static uint64_t reno_ssthresh(const void *state)
{
    return ((const reno *)state)->ssthresh;
}

static const tern_kcp_cc_ops cc_reno = {
    .name = "reno",
    .state_size = sizeof(reno),
    .init = reno_init,
    .can_send = reno_can_send,
    .on_sent = reno_on_sent,
    .on_ack = reno_on_ack,
    .on_loss = reno_on_loss,
    .on_discard = reno_on_discard,
    .cwnd = reno_cwnd,
    .ssthresh = reno_ssthresh,
};

const tern_kcp_cc_ops *tern_kcp_cc_find(const char *name)
{
    static const tern_kcp_cc_ops *const all[] = {&cc_none, &cc_reno};
    if (!name)
        return NULL;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(all[i]->name, name) == 0)
            return all[i];
    return NULL;
}
