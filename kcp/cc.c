/* Congestion controllers behind tern_kcp_cc_ops. The engine only calls the
 * ops, so a CUBIC or BBR is one more table here, not a change to the engine. */
#include <string.h>

#include "tern/kcp.h"

static uint64_t none_cwnd(const void *state)
{
    (void)state;
    return UINT64_MAX;
}

static void none_init(void *state, uint32_t mss, tern_ms now)
{
    (void)state, (void)mss, (void)now;
}

static void none_on_ack(void *state, uint64_t bytes, tern_ms sent_at, uint64_t in_flight,
                        tern_ms now)
{
    (void)state, (void)bytes, (void)sent_at, (void)in_flight, (void)now;
}

static void none_on_loss(void *state, tern_kcp_loss_kind kind, uint64_t bytes, tern_ms sent_at,
                         uint64_t in_flight, tern_ms now)
{
    (void)state, (void)kind, (void)bytes, (void)sent_at, (void)in_flight, (void)now;
}

static const tern_kcp_cc_ops cc_none = {
    .name = "none",
    .state_size = 0,
    .init = none_init,
    .cwnd = none_cwnd,
    .ssthresh = none_cwnd,
    .on_ack = none_on_ack,
    .on_loss = none_on_loss,
};

/* NewReno in the manner of RFC 5681 / RFC 9002: byte-counted growth, one
 * reduction per loss episode (a loss of a segment sent before the episode
 * began belongs to it and does not reduce again), no growth from ACKs of
 * segments sent before the episode began. */
typedef struct reno {
    uint64_t cwnd;
    uint64_t ssthresh;
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

static uint64_t reno_cwnd(const void *state)
{
    return ((const reno *)state)->cwnd;
}

static uint64_t reno_ssthresh(const void *state)
{
    return ((const reno *)state)->ssthresh;
}

static bool in_episode(const reno *r, tern_ms sent_at)
{
    return r->had_episode && sent_at <= r->recovery_start;
}

static void reno_on_ack(void *state, uint64_t bytes, tern_ms sent_at, uint64_t in_flight,
                        tern_ms now)
{
    (void)in_flight, (void)now;
    reno *r = state;
    if (in_episode(r, sent_at))
        return;
    if (r->cwnd < r->ssthresh) {
        r->cwnd += bytes;
        return;
    }
    r->acked_in_avoidance += bytes;
    while (r->acked_in_avoidance >= r->cwnd) {
        r->acked_in_avoidance -= r->cwnd;
        r->cwnd += r->mss;
    }
}

static void reno_on_loss(void *state, tern_kcp_loss_kind kind, uint64_t bytes, tern_ms sent_at,
                         uint64_t in_flight, tern_ms now)
{
    (void)bytes, (void)in_flight;
    reno *r = state;
    if (in_episode(r, sent_at))
        return;
    uint64_t floor = (uint64_t)r->mss * 2;
    r->ssthresh = r->cwnd / 2 > floor ? r->cwnd / 2 : floor;
    r->cwnd = kind == TERN_KCP_LOSS_TIMEOUT ? r->mss : r->ssthresh;
    r->acked_in_avoidance = 0;
    r->had_episode = true;
    r->recovery_start = now;
}

static const tern_kcp_cc_ops cc_reno = {
    .name = "reno",
    .state_size = sizeof(reno),
    .init = reno_init,
    .cwnd = reno_cwnd,
    .ssthresh = reno_ssthresh,
    .on_ack = reno_on_ack,
    .on_loss = reno_on_loss,
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
