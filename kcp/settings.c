/* Settings: defaults, named presets, and every knob settable by name. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tern/kcp.h"

typedef struct preset_row {
    const char *name;
    uint32_t interval_ms;
    uint32_t ack_delay_ms;
    uint32_t rto_min_ms;
    tern_kcp_backoff backoff;
    uint32_t fast_resend;
    bool early_retransmit;
    uint32_t bundle_bytes;
} preset_row;

/* kcptun's nodelay=0 modes keep ikcp's 100 ms RTO floor and doubling; its
 * nodelay=1 modes use a 30 ms floor and x1.5. Early retransmit and bundling
 * are ours: the first only fires where a later segment already got through,
 * the second only fills room in datagrams that leave anyway. fast3 lets a
 * lone ACK wait 20 ms, a game tick, so that it usually rides on the next
 * message instead of costing a datagram of its own. */
static const preset_row presets[] = {
    [TERN_KCP_PRESET_NORMAL] = {"normal", 40, 40, 100, TERN_KCP_BACKOFF_X2, 2, false, 0},
    [TERN_KCP_PRESET_FAST] = {"fast", 30, 30, 100, TERN_KCP_BACKOFF_X2, 2, false, 0},
    [TERN_KCP_PRESET_FAST2] = {"fast2", 20, 20, 30, TERN_KCP_BACKOFF_X1_5, 2, true, 256},
    [TERN_KCP_PRESET_FAST3] = {"fast3", 10, 20, 30, TERN_KCP_BACKOFF_X1_5, 2, true, 256},
    [TERN_KCP_PRESET_TURBO] = {"turbo", 5, 5, 20, TERN_KCP_BACKOFF_X1_5, 1, true, 512},
};
#define N_PRESETS (sizeof(presets) / sizeof(presets[0]))

void tern_kcp_settings_default(tern_kcp_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->conv = 0;
    s->mode = TERN_KCP_MODE_MESSAGE;
    s->mtu = 1400;
    s->snd_wnd = 128;
    s->rcv_wnd = 256;
    s->rto_initial_ms = 200;
    s->rto_max_ms = 60000;
    s->fast_limit = 5;
    s->dead_link = 20;
    s->probe_min_ms = 500;
    s->probe_max_ms = 60000;
    s->snd_queue_max = 4u << 20;
    s->cc = NULL;
    s->cc_state = NULL;
    (void)tern_kcp_settings_preset(s, TERN_KCP_PRESET_FAST3);
}

int tern_kcp_settings_preset(tern_kcp_settings *s, tern_kcp_preset preset)
{
    if (!s || (unsigned)preset >= N_PRESETS)
        return TERN_ERR_INVAL;
    const preset_row *p = &presets[preset];
    s->interval_ms = p->interval_ms;
    s->ack_delay_ms = p->ack_delay_ms;
    s->rto_min_ms = p->rto_min_ms;
    s->backoff = p->backoff;
    s->fast_resend = p->fast_resend;
    s->early_retransmit = p->early_retransmit;
    s->bundle_bytes = p->bundle_bytes;
    s->ack_nodelay = false;
    if (s->rto_initial_ms < s->rto_min_ms)
        s->rto_initial_ms = s->rto_min_ms;
    return 0;
}

int tern_kcp_preset_from_name(const char *name, tern_kcp_preset *out)
{
    if (!name || !out)
        return TERN_ERR_INVAL;
    for (size_t i = 0; i < N_PRESETS; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            *out = (tern_kcp_preset)i;
            return 0;
        }
    }
    return TERN_ERR_NOTFOUND;
}

int tern_kcp_settings_check(const tern_kcp_settings *s)
{
    if (!s)
        return TERN_ERR_INVAL;
    if (s->mode != TERN_KCP_MODE_MESSAGE && s->mode != TERN_KCP_MODE_STREAM)
        return TERN_ERR_INVAL;
    if (s->backoff != TERN_KCP_BACKOFF_X2 && s->backoff != TERN_KCP_BACKOFF_X1_5)
        return TERN_ERR_INVAL;
    if (s->mtu < TERN_KCP_MTU_MIN || s->mtu > TERN_KCP_MTU_MAX)
        return TERN_ERR_RANGE;
    if (s->snd_wnd < 1 || s->snd_wnd > TERN_KCP_WND_MAX)
        return TERN_ERR_RANGE;
    if (s->rcv_wnd < 1 || s->rcv_wnd > TERN_KCP_WND_MAX)
        return TERN_ERR_RANGE;
    if (s->interval_ms < 1 || s->interval_ms > 5000 || s->ack_delay_ms > 5000)
        return TERN_ERR_RANGE;
    if (s->rto_min_ms < 1 || s->rto_max_ms < s->rto_min_ms || s->rto_max_ms > 600000)
        return TERN_ERR_RANGE;
    if (s->rto_initial_ms < s->rto_min_ms || s->rto_initial_ms > s->rto_max_ms)
        return TERN_ERR_RANGE;
    if (s->dead_link < 1 || s->dead_link > 65535)
        return TERN_ERR_RANGE;
    if (s->fast_resend > 65535 || s->fast_limit > 65535)
        return TERN_ERR_RANGE;
    if (s->probe_min_ms < 1 || s->probe_max_ms < s->probe_min_ms)
        return TERN_ERR_RANGE;
    if (s->snd_queue_max < s->mtu)
        return TERN_ERR_RANGE;
    if (s->cc_state && !s->cc)
        return TERN_ERR_INVAL;
    /* Both work on message boundaries, which a byte stream does not have. */
    if ((s->unordered || s->forward) && s->mode != TERN_KCP_MODE_MESSAGE)
        return TERN_ERR_INVAL;
    return 0;
}

static int parse_u64(const char *text, uint64_t max, uint64_t *out)
{
    if (!text || !*text || *text == '-' || *text == '+' || *text == ' ')
        return TERN_ERR_INVAL;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (*end != '\0')
        return TERN_ERR_INVAL;
    if (errno == ERANGE || v > max)
        return TERN_ERR_RANGE;
    *out = v;
    return 0;
}

static int parse_bool(const char *text, bool *out)
{
    if (!text)
        return TERN_ERR_INVAL;
    if (!strcmp(text, "1") || !strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on"))
        *out = true;
    else if (!strcmp(text, "0") || !strcmp(text, "false") || !strcmp(text, "no") ||
             !strcmp(text, "off"))
        *out = false;
    else
        return TERN_ERR_INVAL;
    return 0;
}

typedef enum knob_kind { KNOB_U32, KNOB_SIZE, KNOB_BOOL } knob_kind;

typedef struct knob {
    const char *name;
    knob_kind kind;
    size_t offset;
    uint64_t min, max; /* this field's own range; relations are checked by tern_kcp_new */
} knob;

#define KNOB(n, k, field, lo, hi) {n, k, offsetof(tern_kcp_settings, field), lo, hi}
static const knob knobs[] = {
    KNOB("conv", KNOB_U32, conv, 0, UINT32_MAX),
    KNOB("mtu", KNOB_U32, mtu, TERN_KCP_MTU_MIN, TERN_KCP_MTU_MAX),
    KNOB("snd_wnd", KNOB_U32, snd_wnd, 1, TERN_KCP_WND_MAX),
    KNOB("rcv_wnd", KNOB_U32, rcv_wnd, 1, TERN_KCP_WND_MAX),
    KNOB("interval", KNOB_U32, interval_ms, 1, 5000),
    KNOB("ack_delay", KNOB_U32, ack_delay_ms, 0, 5000),
    KNOB("bundle_bytes", KNOB_U32, bundle_bytes, 0, TERN_KCP_MTU_MAX),
    KNOB("rto_initial", KNOB_U32, rto_initial_ms, 1, 600000),
    KNOB("rto_min", KNOB_U32, rto_min_ms, 1, 600000),
    KNOB("rto_max", KNOB_U32, rto_max_ms, 1, 600000),
    KNOB("fast_resend", KNOB_U32, fast_resend, 0, 65535),
    KNOB("fast_limit", KNOB_U32, fast_limit, 0, 65535),
    KNOB("dead_link", KNOB_U32, dead_link, 1, 65535),
    KNOB("probe_min", KNOB_U32, probe_min_ms, 1, 600000),
    KNOB("probe_max", KNOB_U32, probe_max_ms, 1, 600000),
    KNOB("snd_queue_max", KNOB_SIZE, snd_queue_max, TERN_KCP_MTU_MIN, SIZE_MAX),
    KNOB("early_retransmit", KNOB_BOOL, early_retransmit, 0, 1),
    KNOB("ack_nodelay", KNOB_BOOL, ack_nodelay, 0, 1),
    KNOB("unordered", KNOB_BOOL, unordered, 0, 1),
    KNOB("forward", KNOB_BOOL, forward, 0, 1),
};
#undef KNOB

/* Knobs that are words rather than numbers. */
static int set_word(tern_kcp_settings *s, const char *name, const char *value)
{
    if (!strcmp(name, "preset")) {
        tern_kcp_preset p;
        int rc = tern_kcp_preset_from_name(value, &p);
        return rc == TERN_ERR_NOTFOUND ? TERN_ERR_INVAL : (rc ? rc : tern_kcp_settings_preset(s, p));
    }
    if (!strcmp(name, "mode")) {
        if (!strcmp(value, "message"))
            s->mode = TERN_KCP_MODE_MESSAGE;
        else if (!strcmp(value, "stream"))
            s->mode = TERN_KCP_MODE_STREAM;
        else
            return TERN_ERR_INVAL;
        return 0;
    }
    if (!strcmp(name, "backoff")) {
        if (!strcmp(value, "x2") || !strcmp(value, "2"))
            s->backoff = TERN_KCP_BACKOFF_X2;
        else if (!strcmp(value, "x1.5") || !strcmp(value, "1.5"))
            s->backoff = TERN_KCP_BACKOFF_X1_5;
        else
            return TERN_ERR_INVAL;
        return 0;
    }
    if (!strcmp(name, "cc")) {
        const tern_kcp_cc_ops *ops = tern_kcp_cc_find(value);
        if (!ops)
            return TERN_ERR_INVAL;
        s->cc = ops;
        s->cc_state = NULL;
        return 0;
    }
    return TERN_ERR_NOTFOUND;
}

static int set_knob(tern_kcp_settings *s, const char *name, const char *value)
{
    int rc = set_word(s, name, value);
    if (rc != TERN_ERR_NOTFOUND)
        return rc;
    for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
        const knob *k = &knobs[i];
        if (strcmp(k->name, name) != 0)
            continue;
        char *field = (char *)s + k->offset;
        uint64_t v;
        bool b;
        switch (k->kind) {
        case KNOB_U32:
            if ((rc = parse_u64(value, k->max, &v)) != 0)
                return rc;
            if (v < k->min)
                return TERN_ERR_RANGE;
            *(uint32_t *)(void *)field = (uint32_t)v;
            return 0;
        case KNOB_SIZE:
            if ((rc = parse_u64(value, k->max, &v)) != 0)
                return rc;
            if (v < k->min)
                return TERN_ERR_RANGE;
            *(size_t *)(void *)field = (size_t)v;
            return 0;
        case KNOB_BOOL:
            if ((rc = parse_bool(value, &b)) != 0)
                return rc;
            *(bool *)(void *)field = b;
            return 0;
        }
    }
    return TERN_ERR_NOTFOUND;
}

int tern_kcp_settings_set(tern_kcp_settings *s, const char *name, const char *value)
{
    if (!s || !name || !value)
        return TERN_ERR_INVAL;
    /* Work on a copy so that a failed call leaves *s untouched. */
    tern_kcp_settings copy = *s;
    int rc = set_knob(&copy, name, value);
    if (rc)
        return rc;
    *s = copy;
    return 0;
}
