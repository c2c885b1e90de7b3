/* The classic KCP latency scenario, in virtual time: a client sends a small
 * message every period, the server echoes each one back as soon as it reads
 * it, and the client records each round trip. Shared by the latency
 * benchmark, the demo and the tests. */
#ifndef TERN_SIM_ECHO_H
#define TERN_SIM_ECHO_H

#include "tern/kcp.h"
#include "tern/netsim.h"

typedef struct tern_sim_echo_cfg {
    tern_kcp_settings kcp;      /* both peers */
    tern_netsim_cfg path;       /* each direction */
    uint64_t seed;
    uint32_t messages;          /* e.g. 1000 */
    uint32_t period_ms;         /* e.g. 20 */
    uint32_t message_bytes;     /* >= 8, e.g. 8 */
    tern_ms give_up_ms;         /* virtual time after the last send before failing */
} tern_sim_echo_cfg;

typedef struct tern_sim_echo_result {
    uint32_t echoed;            /* round trips completed, in order */
    double avg_ms;
    uint32_t p50_ms, p90_ms, p99_ms, max_ms;
    uint64_t client_datagrams;  /* datagrams the client sent (ikcp's test counts these) */
    uint64_t total_datagrams;   /* both directions */
    tern_kcp_stats client, server;
} tern_sim_echo_result;

/* 0, or a negative TERN_ERR_* (an echo out of order or corrupt is
 * TERN_ERR_MALFORMED; not all echoed in time is TERN_ERR_AGAIN). */
int tern_sim_echo_run(const tern_sim_echo_cfg *cfg, tern_sim_echo_result *out);

#endif /* TERN_SIM_ECHO_H */
