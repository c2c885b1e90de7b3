/* bench_memory: what one engine costs in memory, measured through the
 * engine's own allocator hook (every byte it asks for, nothing estimated).
 *
 * Three states per window size: idle (created, nothing sent), light (a few
 * small messages exchanged and acknowledged, as in a game session between
 * updates) and busy (a window's worth of full segments in flight, the
 * peer's ACKs not yet in). Classic ikcp allocates its control block plus a
 * (mtu + 24) * 3 byte flush buffer up front: 272 + 4,272 = 4,544 bytes per
 * idle session with mtu 1400 on x86-64 (sizeof measured in a local harness;
 * see docs/BENCHMARKS.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common.h"
#include "tern/kcp.h"

typedef struct counter {
    size_t live, peak;
} counter;

/* Sizes are kept in a header so free() knows what it releases. */
static void *count_malloc(size_t n, void *ud)
{
    counter *c = ud;
    size_t *p = malloc(n + sizeof(size_t) * 2);
    if (!p)
        return NULL;
    p[0] = n;
    c->live += n;
    if (c->live > c->peak)
        c->peak = c->live;
    return p + 2;
}

static void count_free(void *ptr, void *ud)
{
    if (!ptr)
        return;
    size_t *p = (size_t *)ptr - 2;
    ((counter *)ud)->live -= p[0];
    free(p);
}

static int pump(tern_kcp *from, tern_kcp *to, tern_ms now)
{
    static uint8_t dgram[1500];
    tern_ssize n;
    while ((n = tern_kcp_write_pkt(from, dgram, sizeof(dgram), now)) > 0)
        if (tern_kcp_read_pkt(to, dgram, (size_t)n, now) != 0)
            return -1;
    return n < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *out_path = TERN_BENCH_RESULTS_DEFAULT;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out_path = argv[++i];
        } else if (!strcmp(argv[i], "--quick")) {
            /* already quick: nothing timed */
        } else {
            fprintf(stderr, "usage: bench_memory [--quick] [--out PATH]\n");
            return 2;
        }
    }
    FILE *out = tern_bench_results_open("bench_memory", out_path);
    if (!out)
        return 1;
    char date[32];
    tern_bench_utc_now(date, sizeof(date));
    static const uint32_t windows[] = {128, 1024, 8192};
    printf("Memory per engine, bytes requested through the allocator hook (mtu 1400):\n\n");
    printf("  %6s %8s %8s %10s\n", "window", "idle", "light", "busy");
    for (size_t w = 0; w < sizeof(windows) / sizeof(windows[0]); w++) {
        counter c = {0};
        tern_mem mem = {count_malloc, count_free, &c};
        tern_kcp_settings s;
        tern_kcp_settings_default(&s);
        s.snd_wnd = s.rcv_wnd = windows[w];
        s.snd_queue_max = (size_t)windows[w] * 1600 + (1u << 20);
        s.ack_nodelay = true;
        tern_kcp *a = NULL, *b = NULL;
        if (tern_kcp_new(&a, &s, NULL, NULL, &mem, 0) != 0 ||
            tern_kcp_new(&b, &s, NULL, NULL, NULL, 0) != 0) {
            fprintf(stderr, "bench_memory: tern_kcp_new failed\n");
            return 1;
        }
        size_t idle = c.live;
        uint8_t small[64] = {0}, got[1400];
        for (int i = 0; i < 8; i++) {
            if (tern_kcp_send(a, small, sizeof(small), (tern_ms)i) != 0 || pump(a, b, (tern_ms)i) ||
                pump(b, a, (tern_ms)i))
                return 1;
            while (tern_kcp_recv(b, got, sizeof(got), (tern_ms)i) >= 0)
                ;
        }
        size_t light = c.live;
        uint8_t full[1376] = {0};
        for (uint32_t i = 0; i < windows[w]; i++)
            if (tern_kcp_send(a, full, sizeof(full), 100) != 0)
                return 1;
        static uint8_t dgram[1500];
        while (tern_kcp_write_pkt(a, dgram, sizeof(dgram), 100) > 0)
            ;
        size_t busy = c.live;
        printf("  %6u %8zu %8zu %10zu\n", windows[w], idle, light, busy);
        fprintf(out,
                "{\"bench\":\"memory\",\"window\":%u,\"idle_bytes\":%zu,\"light_bytes\":%zu,"
                "\"busy_bytes\":%zu,\"date\":\"%s\"}\n",
                windows[w], idle, light, busy, date);
        tern_kcp_del(a);
        tern_kcp_del(b);
        if (c.live != 0) {
            fprintf(stderr, "bench_memory: %zu bytes not freed\n", c.live);
            return 1;
        }
    }
    printf("\nClassic ikcp requests 4544 bytes per idle session (a 272-byte control block\n"
           "and a 4272-byte flush buffer) before any traffic.\n");
    fclose(out);
    return 0;
}
