/* Two engines over two simulated links, driven in virtual time. */
#include "sim/pair.h"

#include <stdbool.h>
#include <stdlib.h>

struct tern_sim_pair {
    tern_kcp *engine[2];
    tern_netsim_link *link[2]; /* link[side] carries what engine[side] writes */
    tern_ms now;
    uint64_t datagrams[2];
    bool integrity;
    uint64_t integrity_drops;
    tern_sim_wrap_fn seal, open;
    void *wrap_user;
    uint64_t wrap_drops;
    /* One datagram in transit between a link and an engine: no allocation
     * per datagram, and big enough for any mtu an engine may use plus the
     * integrity checksum. wbuf holds its wrapped form. */
    uint8_t buf[TERN_KCP_MTU_MAX + 8];
    uint8_t wbuf[TERN_KCP_MTU_MAX + TERN_SIM_WRAP_MAX + 8];
};

/* FNV-1a: each step is a bijection of the state, so any single changed byte
 * (and so any flipped bit) always changes the result. */
static uint64_t checksum(const uint8_t *p, size_t n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void tern_sim_pair_set_integrity(tern_sim_pair *pair, bool on)
{
    if (pair)
        pair->integrity = on;
}

uint64_t tern_sim_pair_integrity_drops(const tern_sim_pair *pair)
{
    return pair ? pair->integrity_drops : 0;
}

void tern_sim_pair_set_wrap(tern_sim_pair *pair, tern_sim_wrap_fn seal, tern_sim_wrap_fn open,
                            void *user)
{
    if (!pair)
        return;
    pair->seal = seal;
    pair->open = open;
    pair->wrap_user = user;
}

uint64_t tern_sim_pair_wrap_drops(const tern_sim_pair *pair)
{
    return pair ? pair->wrap_drops : 0;
}

/* Keeps the first failure: later ones are usually its consequences. */
static void note_error(int *first, int rc)
{
    if (rc < 0 && *first == 0)
        *first = rc;
}

static bool valid_side(int side)
{
    return side == TERN_SIM_A || side == TERN_SIM_B;
}

static int other_side(int side)
{
    return side == TERN_SIM_A ? TERN_SIM_B : TERN_SIM_A;
}

int tern_sim_pair_new(tern_sim_pair **out, const tern_kcp_settings *a, const tern_kcp_settings *b,
                      const tern_netsim_cfg *a_to_b, const tern_netsim_cfg *b_to_a, uint64_t seed,
                      tern_ms start_ms)
{
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    tern_sim_pair *pair = calloc(1, sizeof(*pair));
    if (!pair)
        return TERN_ERR_NOMEM;
    pair->now = start_ms;

    /* NULL settings or link configuration mean the defaults: a default
     * engine, a perfect link. */
    tern_kcp_settings defaults;
    tern_kcp_settings_default(&defaults);
    tern_netsim_cfg perfect;
    tern_netsim_cfg_default(&perfect);
    const tern_kcp_settings *settings[2] = {a ? a : &defaults, b ? b : &defaults};
    const tern_netsim_cfg *links[2] = {a_to_b ? a_to_b : &perfect, b_to_a ? b_to_a : &perfect};
    /* The two directions must not mirror each other's randomness. */
    const uint64_t seeds[2] = {seed, seed ^ UINT64_C(0x9e3779b97f4a7c15)};
    const tern_kcp_callbacks no_callbacks = {0};

    int rc = 0;
    for (int side = 0; side < 2 && rc == 0; side++) {
        rc = tern_kcp_new(&pair->engine[side], settings[side], &no_callbacks, pair, NULL, start_ms);
        if (rc == 0)
            rc = tern_netsim_link_new(&pair->link[side], links[side], seeds[side], NULL);
    }
    if (rc < 0) {
        tern_sim_pair_del(pair);
        return rc;
    }
    *out = pair;
    return 0;
}

void tern_sim_pair_del(tern_sim_pair *pair)
{
    if (!pair)
        return;
    for (int side = 0; side < 2; side++) {
        tern_kcp_del(pair->engine[side]);
        tern_netsim_link_del(pair->link[side]);
    }
    free(pair);
}

tern_kcp *tern_sim_pair_engine(tern_sim_pair *pair, int side)
{
    return pair && valid_side(side) ? pair->engine[side] : NULL;
}

tern_netsim_link *tern_sim_pair_link(tern_sim_pair *pair, int from_side)
{
    return pair && valid_side(from_side) ? pair->link[from_side] : NULL;
}

tern_ms tern_sim_pair_now(const tern_sim_pair *pair)
{
    return pair ? pair->now : 0;
}

uint64_t tern_sim_pair_datagrams(const tern_sim_pair *pair, int from_side)
{
    return pair && valid_side(from_side) ? pair->datagrams[from_side] : 0;
}

int tern_sim_pair_flush(tern_sim_pair *pair)
{
    if (!pair)
        return TERN_ERR_INVAL;
    int err = 0;
    for (int side = 0; side < 2; side++) {
        for (;;) {
            tern_ssize n =
                tern_kcp_write_pkt(pair->engine[side], pair->buf, sizeof(pair->buf) - 8, pair->now);
            if (n <= 0) {
                note_error(&err, (int)n);
                break;
            }
            pair->datagrams[side]++;
            uint8_t *out = pair->buf;
            if (pair->seal) {
                n = pair->seal(pair->wrap_user, side, pair->buf, (size_t)n, pair->wbuf,
                               sizeof(pair->wbuf) - 8, pair->now);
                if (n < 0) {
                    note_error(&err, (int)n);
                    continue;
                }
                out = pair->wbuf;
            }
            if (pair->integrity) {
                put64(out + n, checksum(out, (size_t)n));
                n += 8;
            }
            note_error(&err, tern_netsim_link_send(pair->link[side], out, (size_t)n, pair->now));
        }
    }
    return err;
}

/* Hands every datagram due on from_side's link to the other engine. */
static void deliver_due(tern_sim_pair *pair, int from_side, int *err)
{
    int to_side = other_side(from_side);
    tern_kcp *to = pair->engine[to_side];
    /* Wrapped datagrams arrive in wbuf and are opened into buf. */
    uint8_t *in = pair->open ? pair->wbuf : pair->buf;
    size_t in_cap = pair->open ? sizeof(pair->wbuf) : sizeof(pair->buf);
    for (;;) {
        tern_ssize n = tern_netsim_link_recv(pair->link[from_side], in, in_cap, pair->now);
        if (n <= 0) {
            /* NOBUFS would mean a datagram larger than any engine writes:
             * report it rather than spin on it. */
            note_error(err, (int)n);
            return;
        }
        if (pair->integrity) {
            if (n < 8 || get64(in + n - 8) != checksum(in, (size_t)n - 8)) {
                pair->integrity_drops++;
                continue;
            }
            n -= 8;
        }
        if (pair->open) {
            n = pair->open(pair->wrap_user, to_side, in, (size_t)n, pair->buf, sizeof(pair->buf),
                           pair->now);
            if (n < 0) {
                pair->wrap_drops++;
                continue;
            }
        }
        int rc = tern_kcp_read_pkt(to, pair->buf, (size_t)n, pair->now);
        /* The link corrupts on purpose; the engine counts what it rejects. */
        if (rc == TERN_ERR_MALFORMED || rc == TERN_ERR_CONV)
            continue;
        note_error(err, rc);
    }
}

static tern_ms min_ms(tern_ms a, tern_ms b)
{
    return a < b ? a : b;
}

tern_ms tern_sim_pair_advance(tern_sim_pair *pair, tern_ms limit, int *err)
{
    int first_err = 0;
    if (!pair) {
        if (err)
            *err = TERN_ERR_INVAL;
        return 0;
    }

    tern_ms next = limit;
    for (int side = 0; side < 2; side++) {
        next = min_ms(next, tern_netsim_link_next(pair->link[side]));
        next = min_ms(next, tern_kcp_get_expiry(pair->engine[side]));
    }
    /* An expiry already in the past means "now"; so does a limit behind us. */
    if (next > pair->now)
        pair->now = next;

    for (int side = 0; side < 2; side++)
        deliver_due(pair, side, &first_err);
    for (int side = 0; side < 2; side++) {
        if (tern_kcp_get_expiry(pair->engine[side]) <= pair->now)
            note_error(&first_err, tern_kcp_handle_expiry(pair->engine[side], pair->now));
    }
    note_error(&first_err, tern_sim_pair_flush(pair));

    if (err)
        *err = first_err;
    return pair->now;
}
