/* Helpers shared by the engine tests that drive two engines by hand: a wire
 * per direction that holds datagrams until the test delivers (or drops)
 * them, engines made from tweaked default settings, and messages that carry
 * their id and let the receiver check every byte. */
#ifndef TERN_TESTS_KCP_PAIR_UTIL_H
#define TERN_TESTS_KCP_PAIR_UTIL_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tern/kcp.h"

#define KP_MSS 1376u /* a segment's payload under the default settings */
#define KP_WIRE_MAX 512
#define KP_MSG_MAX (16 * KP_MSS) /* the largest message kp_drain reads */

/* Datagrams written by one engine, not yet delivered to the other. */
typedef struct kp_wire {
    uint8_t pkt[KP_WIRE_MAX][1500];
    size_t len[KP_WIRE_MAX];
    size_t n;
} kp_wire;

/* An engine on conv 7 with the default settings, changed by tweak if set. */
static inline tern_kcp *kp_make(void (*tweak)(tern_kcp_settings *))
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.conv = 7;
    if (tweak)
        tweak(&s);
    tern_kcp *k = NULL;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, NULL, 0), 0);
    return k;
}

/* Everything k has to say now goes onto w; returns the datagram count. */
static inline size_t kp_collect(tern_kcp *k, kp_wire *w, tern_ms now)
{
    size_t got = 0;
    for (;;) {
        cr_assert_lt(w->n, KP_WIRE_MAX);
        tern_ssize n = tern_kcp_write_pkt(k, w->pkt[w->n], sizeof(w->pkt[0]), now);
        cr_assert_geq(n, 0, "write_pkt: %s", tern_strerror((int)n));
        if (n == 0)
            return got;
        w->len[w->n++] = (size_t)n;
        got++;
    }
}

/* Delivers w's datagrams to k except those whose index is in drop (a list
 * ended by SIZE_MAX, or NULL), then empties w. */
static inline void kp_deliver(kp_wire *w, tern_kcp *k, tern_ms now, const size_t *drop)
{
    for (size_t i = 0; i < w->n; i++) {
        bool skip = false;
        for (const size_t *d = drop; d && *d != SIZE_MAX; d++)
            skip |= *d == i;
        if (!skip)
            cr_assert_eq(tern_kcp_read_pkt(k, w->pkt[i], w->len[i], now), 0);
    }
    w->n = 0;
}

/* Everything on w is lost. */
static inline void kp_drop_all(kp_wire *w)
{
    w->n = 0;
}

/* Both ways until neither side has anything to say, at time now. */
static inline void kp_exchange(tern_kcp *a, tern_kcp *b, kp_wire *ab, kp_wire *ba, tern_ms now)
{
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(tern_kcp_handle_expiry(a, now), 0);
        cr_assert_eq(tern_kcp_handle_expiry(b, now), 0);
        size_t n = kp_collect(a, ab, now);
        kp_deliver(ab, b, now, NULL);
        n += kp_collect(b, ba, now);
        kp_deliver(ba, a, now, NULL);
        if (n == 0)
            return;
    }
}

/* Message id: len bytes, the first four holding id, the rest a pattern of
 * id, so that a torn, mixed or partial message shows. */
static inline void kp_msg_fill(uint8_t *buf, size_t len, uint32_t id)
{
    for (size_t j = 0; j < len; j++)
        buf[j] = (uint8_t)(id * 31 + j * 7);
    if (len >= 4)
        memcpy(buf, &id, 4);
}

static inline bool kp_msg_ok(const uint8_t *buf, size_t len, uint32_t *id)
{
    if (len < 4)
        return false;
    memcpy(id, buf, 4);
    for (size_t j = 4; j < len; j++)
        if (buf[j] != (uint8_t)(*id * 31 + j * 7))
            return false;
    return true;
}

/* Reads every ready message of b into ids[], checking each; returns how
 * many. */
static inline size_t kp_drain(tern_kcp *b, uint32_t *ids, size_t max, tern_ms now)
{
    static uint8_t buf[KP_MSG_MAX];
    size_t n = 0;
    tern_ssize got;
    while ((got = tern_kcp_recv(b, buf, sizeof(buf), now)) >= 0) {
        cr_assert_lt(n, max);
        cr_assert(kp_msg_ok(buf, (size_t)got, &ids[n]), "message %zu corrupt (%td bytes)", n, got);
        n++;
    }
    cr_assert_eq(got, TERN_ERR_AGAIN);
    return n;
}

#endif /* TERN_TESTS_KCP_PAIR_UTIL_H */
