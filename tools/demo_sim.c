/* tern-demo --sim: the ARQ engine alone, through the network simulator in
 * virtual time. Runs the classic KCP latency test (an 8-byte echo every
 * 20 ms over a path losing 5% each way with 30-60 ms one-way delay) for each
 * preset side by side, then a bulk stream transfer per congestion setting.
 * Needs neither sockets nor crypto, so it is also the whole of tern-demo in
 * a build without crypto/ (TERN_DEMO_SIM_MAIN). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/echo.h"
#include "sim/pair.h"
#include "tern/tern.h"
#include "tools/demo.h"

static const char *const presets[] = {"normal", "fast", "fast2", "fast3", "turbo"};

static int latency_table(void)
{
    printf("Latency under loss: 1000 echoes of 8 bytes every 20 ms; 5%% loss each way,\n"
           "one-way delay 30-60 ms (virtual time, seed 1).\n\n");
    printf("  %-7s %8s %6s %6s %6s %6s %12s %12s %8s\n", "preset", "avg ms", "p50", "p90", "p99",
           "max", "client dgram", "retransmits", "bundled");
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        tern_sim_echo_cfg cfg;
        memset(&cfg, 0, sizeof(cfg));
        tern_kcp_settings_default(&cfg.kcp);
        if (tern_kcp_settings_set(&cfg.kcp, "preset", presets[i]) != 0)
            return 1;
        tern_netsim_cfg_default(&cfg.path);
        cfg.path.loss = 0.05;
        cfg.path.delay_ms = 30;
        cfg.path.jitter_ms = 30;
        cfg.seed = 1;
        cfg.messages = 1000;
        cfg.period_ms = 20;
        cfg.message_bytes = 8;
        cfg.give_up_ms = 60000;
        tern_sim_echo_result r;
        int rc = tern_sim_echo_run(&cfg, &r);
        if (rc) {
            fprintf(stderr, "tern-demo: %s: %s\n", presets[i], tern_strerror(rc));
            return 1;
        }
        uint64_t retrans = r.client.retrans_fast + r.client.retrans_early +
                           r.client.retrans_timeout + r.server.retrans_fast +
                           r.server.retrans_early + r.server.retrans_timeout;
        uint64_t bundled = r.client.bundled + r.server.bundled;
        printf("  %-7s %8.1f %6u %6u %6u %6u %12llu %12llu %8llu\n", presets[i], r.avg_ms, r.p50_ms,
               r.p90_ms, r.p99_ms, r.max_ms, (unsigned long long)r.client_datagrams,
               (unsigned long long)retrans, (unsigned long long)bundled);
    }
    return 0;
}

typedef struct bulk_case {
    const char *cc;
    uint32_t window;
    double loss;
} bulk_case;

/* One 8 MiB stream transfer; prints a row, returns 0 if every byte arrived
 * in order (checked with a running checksum). */
static int bulk_transfer(const bulk_case *c)
{
    const size_t total = 8u << 20;
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.mode = TERN_KCP_MODE_STREAM;
    s.snd_wnd = c->window;
    s.rcv_wnd = c->window;
    s.cc = tern_kcp_cc_find(c->cc);
    tern_netsim_cfg path;
    tern_netsim_cfg_default(&path);
    path.loss = c->loss;
    path.delay_ms = 20;
    path.rate_bytes_per_s = 12500000; /* 100 Mbit/s */
    path.queue_bytes = 256 * 1024;
    tern_sim_pair *pair = NULL;
    if (tern_sim_pair_new(&pair, &s, &s, &path, &path, 7, 0) != 0)
        return 1;
    tern_kcp *a = tern_sim_pair_engine(pair, TERN_SIM_A);
    tern_kcp *b = tern_sim_pair_engine(pair, TERN_SIM_B);
    static uint8_t chunk[16384], got[65536];
    size_t sent = 0, received = 0;
    uint64_t sum_sent = 0, sum_got = 0;
    while (received < total) {
        tern_ms now = tern_sim_pair_now(pair);
        while (sent < total) {
            size_t n = total - sent < sizeof(chunk) ? total - sent : sizeof(chunk);
            for (size_t i = 0; i < n; i++)
                chunk[i] = (uint8_t)((sent + i) * 2654435761u >> 13);
            if (tern_kcp_send(a, chunk, n, now) != 0)
                break;
            for (size_t i = 0; i < n; i++)
                sum_sent = sum_sent * 31 + chunk[i];
            sent += n;
        }
        tern_ssize n;
        while ((n = tern_kcp_recv(b, got, sizeof(got), now)) > 0) {
            for (tern_ssize i = 0; i < n; i++)
                sum_got = sum_got * 31 + got[i];
            received += (size_t)n;
        }
        int err = tern_sim_pair_flush(pair);
        if (!err)
            tern_sim_pair_advance(pair, now + 1000, &err);
        if (err || now > 600000) {
            fprintf(stderr, "tern-demo: bulk transfer failed: %s\n", tern_strerror(err));
            tern_sim_pair_del(pair);
            return 1;
        }
    }
    tern_kcp_stats st;
    tern_kcp_get_stats(a, &st);
    double secs = (double)tern_sim_pair_now(pair) / 1000.0;
    printf("  %-5s %6u %5.1f%% %8.2f %9.1f %7llu %5llu %5llu %7llu %6u  %s\n", c->cc, c->window,
           c->loss * 100, secs, (double)total * 8 / secs / 1e6, (unsigned long long)st.retrans_fast,
           (unsigned long long)st.retrans_early, (unsigned long long)st.retrans_timeout,
           (unsigned long long)st.bundled, st.srtt_ms, sum_sent == sum_got ? "ok" : "MISMATCH");
    tern_sim_pair_del(pair);
    return sum_sent == sum_got ? 0 : 1;
}

static int bulk_table(void)
{
    static const bulk_case cases[] = {
        {"none", 512, 0.0},
        {"none", 512, 0.01},
        {"reno", 1024, 0.0},
        {"reno", 1024, 0.001},
    };
    printf("\nBulk stream: 8 MiB over a 100 Mbit/s bottleneck (256 KiB queue), 40 ms RTT,\n"
           "fast3 preset, stream mode. 'none' is KCP's nc=1: the window alone limits.\n\n");
    printf("  %-5s %6s %6s %8s %9s %7s %5s %5s %7s %6s  %s\n", "cc", "window", "loss", "seconds",
           "Mbit/s", "fast", "early", "rto", "bundled", "srtt", "data");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (bulk_transfer(&cases[i]) != 0)
            return 1;
    return 0;
}

int tern_demo_sim_run(void)
{
    printf("tern %s demo: the ARQ engine through a simulated lossy network\n\n",
           TERN_VERSION_STRING);
    if (latency_table() != 0 || bulk_table() != 0)
        return 1;
    return 0;
}

#ifdef TERN_DEMO_SIM_MAIN
int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
        printf("tern-demo %s\n", TERN_VERSION_STRING);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--sim"))
        return tern_demo_sim_run();
    if (argc > 1) {
        FILE *f = strcmp(argv[1], "--help") && strcmp(argv[1], "-h") ? stderr : stdout;
        fprintf(f, "usage: tern-demo [--sim] [--version]\n"
                   "Runs the tern engine through the network simulator and prints latency and\n"
                   "throughput. This build has no crypto/, so no transport and no tunnel.\n");
        return f == stdout ? 0 : 2;
    }
    return tern_demo_sim_run();
}
#endif /* TERN_DEMO_SIM_MAIN */
