#include "sim/echo.h"

#include <stdlib.h>
#include <string.h>

#include "sim/pair.h"

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof(v));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Percentile by nearest rank over sorted samples. */
static uint32_t rank(const uint32_t *sorted, uint32_t n, double pct)
{
    size_t i = (size_t)(pct / 100.0 * n + 0.999999);
    if (i < 1)
        i = 1;
    if (i > n)
        i = n;
    return sorted[i - 1];
}

int tern_sim_echo_run(const tern_sim_echo_cfg *cfg, tern_sim_echo_result *out)
{
    if (!cfg || !out || cfg->message_bytes < 8 || cfg->message_bytes > 65536 || !cfg->period_ms)
        return TERN_ERR_INVAL;
    memset(out, 0, sizeof(*out));
    tern_sim_pair *pair = NULL;
    int rc = tern_sim_pair_new(&pair, &cfg->kcp, &cfg->kcp, &cfg->path, &cfg->path, cfg->seed, 0);
    if (rc)
        return rc;
    uint32_t *rtts = calloc(cfg->messages ? cfg->messages : 1, sizeof(uint32_t));
    uint8_t *msg = malloc(cfg->message_bytes);
    uint8_t *buf = malloc(cfg->message_bytes);
    if (!rtts || !msg || !buf) {
        rc = TERN_ERR_NOMEM;
        goto out;
    }
    tern_kcp *client = tern_sim_pair_engine(pair, TERN_SIM_A);
    tern_kcp *server = tern_sim_pair_engine(pair, TERN_SIM_B);
    memset(msg, 0xab, cfg->message_bytes);
    uint32_t sent = 0;
    tern_ms next_send = 0;
    tern_ms deadline = (tern_ms)cfg->messages * cfg->period_ms + cfg->give_up_ms;
    while (out->echoed < cfg->messages) {
        tern_ms now = tern_sim_pair_now(pair);
        if (now > deadline) {
            rc = TERN_ERR_AGAIN;
            goto out;
        }
        if (sent < cfg->messages && now >= next_send) {
            put_u32(msg, sent);
            put_u32(msg + 4, (uint32_t)now);
            if ((rc = tern_kcp_send(client, msg, cfg->message_bytes, now)) != 0)
                goto out;
            sent++;
            next_send += cfg->period_ms;
        }
        tern_ssize n;
        while ((n = tern_kcp_recv(server, buf, cfg->message_bytes, now)) > 0)
            if ((rc = tern_kcp_send(server, buf, (size_t)n, now)) != 0)
                goto out;
        while ((n = tern_kcp_recv(client, buf, cfg->message_bytes, now)) > 0) {
            if ((uint32_t)n != cfg->message_bytes || get_u32(buf) != out->echoed) {
                rc = TERN_ERR_MALFORMED;
                goto out;
            }
            rtts[out->echoed++] = (uint32_t)now - get_u32(buf + 4);
        }
        if ((rc = tern_sim_pair_flush(pair)) != 0)
            goto out;
        tern_ms limit = sent < cfg->messages ? next_send : deadline + 1;
        int err = 0;
        tern_sim_pair_advance(pair, limit, &err);
        if (err) {
            rc = err;
            goto out;
        }
    }
    uint64_t sum = 0;
    for (uint32_t i = 0; i < out->echoed; i++)
        sum += rtts[i];
    qsort(rtts, out->echoed, sizeof(uint32_t), cmp_u32);
    if (out->echoed) {
        out->avg_ms = (double)sum / out->echoed;
        out->p50_ms = rank(rtts, out->echoed, 50);
        out->p90_ms = rank(rtts, out->echoed, 90);
        out->p99_ms = rank(rtts, out->echoed, 99);
        out->max_ms = rtts[out->echoed - 1];
    }
    out->client_datagrams = tern_sim_pair_datagrams(pair, TERN_SIM_A);
    out->total_datagrams = out->client_datagrams + tern_sim_pair_datagrams(pair, TERN_SIM_B);
    tern_kcp_get_stats(client, &out->client);
    tern_kcp_get_stats(server, &out->server);
    rc = 0;
out:
    free(rtts);
    free(msg);
    free(buf);
    tern_sim_pair_del(pair);
    return rc;
}
