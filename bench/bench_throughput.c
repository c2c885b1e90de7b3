/* bench_throughput: how many messages per second of CPU the engine moves.
 *
 * Two engines on one core, joined by two fixed rings of datagram buffers (no
 * netsim, no malloc per datagram), with independent per-datagram loss drawn
 * from a seeded xorshift in each direction. Virtual time advances 1 ms per
 * round; each round:
 *   1. the sender queues messages, each carrying its index, while fewer
 *      than 2 x window segments are unacknowledged (the backpressure rule
 *      KCP applications use, as kcp-go's Write waits on WaitSnd()), until
 *      tern_kcp_send() says WOULDBLOCK or a per-round cap;
 *   2. sender: handle_expiry, then write_pkt until 0, each datagram into the
 *      ring unless the loss draw drops it;
 *   3. receiver: read_pkt every datagram in the ring;
 *   4. receiver: tern_kcp_recv until AGAIN, checking each message's index;
 *   5. receiver: handle_expiry + write_pkt (its ACKs, ack_nodelay) into the
 *      other ring, with loss;
 *   6. sender: read_pkt every ACK datagram.
 * Wall-clock time over the whole run gives messages/s and payload MB/s
 * (10^6 bytes); each cell is run several times and the fastest kept. Each run
 * is a forked child so that its peak RSS is its own. Results: a table on
 * stdout, one JSON object per cell appended to the results file. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/common.h"
#include "tern/kcp.h"

#define PROG "bench_throughput"
#define MTU 1400
/* Datagrams a ring holds. When one fills, the peer reads it out before the
 * writer goes on: within one round the reader does nothing else in between,
 * so this is the same as an unbounded ring, with memory that does not grow
 * with the window. */
#define RING_SLOTS 256
/* Rounds without a delivered message after which the run counts as stuck. */
#define STALL_MS 60000
#define MAX_REPEATS 16

/* ---- seeded randomness for the loss draws ---- */

/* xorshift64* (Vigna): tiny, fast, and good enough to decide drops. */
typedef struct rng {
    uint64_t s;
} rng;

static void rng_seed(rng *r, uint64_t seed)
{
    /* splitmix64 step: any seed, 0 included, gives a nonzero state. */
    uint64_t z = seed + UINT64_C(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    r->s = z ? z : 1;
}

static uint64_t rng_next(rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * UINT64_C(0x2545f4914f6cdd1d);
}

/* ---- one direction: a ring of datagram buffers with loss on entry ---- */

typedef struct ring {
    uint8_t *buf; /* RING_SLOTS * MTU bytes */
    uint32_t len[RING_SLOTS];
    uint32_t head, count;
    rng rng;
    uint64_t drop_below; /* a draw below this drops the datagram */
    uint64_t written, dropped;
} ring;

static int ring_init(ring *r, double loss, uint64_t seed)
{
    memset(r, 0, sizeof(*r));
    r->buf = malloc((size_t)RING_SLOTS * MTU);
    rng_seed(&r->rng, seed);
    /* loss < 1 (checked by the caller), so this fits in 64 bits. */
    r->drop_below = (uint64_t)(loss * 18446744073709551616.0);
    return r->buf ? 0 : TERN_ERR_NOMEM;
}

static void ring_free(ring *r)
{
    free(r->buf);
    r->buf = NULL;
}

/* Hands every datagram in the ring to the engine at the other end. */
static int ring_deliver(ring *r, tern_kcp *to, tern_ms now)
{
    while (r->count) {
        int rc = tern_kcp_read_pkt(to, r->buf + (size_t)r->head * MTU, r->len[r->head], now);
        if (rc < 0)
            return rc;
        r->head = (r->head + 1) % RING_SLOTS;
        r->count--;
    }
    return 0;
}

/* Writes everything `from` has to send now straight into the ring's free
 * slot (no copy); a dropped datagram's slot is simply reused. */
static int ring_fill(ring *r, tern_kcp *from, tern_kcp *to, tern_ms now)
{
    for (;;) {
        if (r->count == RING_SLOTS) {
            int rc = ring_deliver(r, to, now);
            if (rc < 0)
                return rc;
        }
        uint32_t slot = (r->head + r->count) % RING_SLOTS;
        tern_ssize n = tern_kcp_write_pkt(from, r->buf + (size_t)slot * MTU, MTU, now);
        if (n <= 0)
            return (int)n;
        r->written++;
        if (rng_next(&r->rng) < r->drop_below) {
            r->dropped++;
            continue;
        }
        r->len[slot] = (uint32_t)n;
        r->count++;
    }
}

/* ---- one cell of the matrix ---- */

typedef struct cell_cfg {
    uint32_t msg_size;
    uint32_t window;
    double loss_pct;
    uint64_t messages;
    uint64_t burst; /* messages offered per round at most; 0: 2 * window */
    uint64_t seed;
} cell_cfg;

/* Fixed-size, so a child can hand it to its parent through a pipe. */
typedef struct cell_result {
    int rc;       /* 0, or a TERN_ERR_* (or -100 for a stall) */
    char why[96]; /* what went wrong, if rc != 0 */
    uint64_t messages;
    double wall_s;
    uint64_t sim_ms;
    long peak_rss_kb;
    uint64_t retrans_fast, retrans_early, retrans_timeout;
    uint64_t lost; /* segments the sender declared lost */
    uint64_t dgrams_data, dgrams_ack;
    uint64_t dropped_data, dropped_ack;
    uint32_t srtt_ms;
    /* Filled by measure_cell() in the parent: every repetition's rate. */
    uint32_t runs;
    double run_mps[MAX_REPEATS];
} cell_result;

enum { ERR_STALL = -100, ERR_VERIFY = -101 };

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, sizeof(v));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static double mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int make_engine(tern_kcp **out, const cell_cfg *c)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    int rc = tern_kcp_settings_preset(&s, TERN_KCP_PRESET_FAST3);
    if (rc)
        return rc;
    s.mtu = MTU;
    s.ack_nodelay = true; /* ACKs leave every round, as an ikcp_flush per ms would send them */
    s.snd_wnd = c->window;
    s.rcv_wnd = c->window;
    /* Large enough that the window, not the queue bound, limits the sender. */
    s.snd_queue_max = (size_t)c->window * 2 * 1500 + (1u << 20);
    return tern_kcp_new(out, &s, NULL, NULL, NULL, 0);
}

static void fail(cell_result *r, int rc, const char *what)
{
    r->rc = rc;
    snprintf(r->why, sizeof(r->why), "%s: %s", what,
             rc == ERR_STALL    ? "no progress"
             : rc == ERR_VERIFY ? "message out of order or corrupt"
                                : tern_strerror(rc));
}

static void run_cell(const cell_cfg *c, cell_result *r)
{
    memset(r, 0, sizeof(*r));
    tern_kcp *snd = NULL, *rcv = NULL;
    ring a2b, b2a;
    double loss = c->loss_pct / 100.0;
    uint8_t *msg = calloc(1, c->msg_size);
    uint8_t *got = malloc(c->msg_size);
    int rc = ring_init(&a2b, loss, c->seed);
    int rc2 = ring_init(&b2a, loss, c->seed ^ UINT64_C(0x5bd1e9955bd1e995));
    if (!msg || !got || rc || rc2) {
        fail(r, TERN_ERR_NOMEM, "setup");
        goto out;
    }
    if ((rc = make_engine(&snd, c)) != 0 || (rc = make_engine(&rcv, c)) != 0) {
        fail(r, rc, "tern_kcp_new");
        goto out;
    }
    uint64_t burst = c->burst ? c->burst : 2 * (uint64_t)c->window;
    uint64_t sent = 0, received = 0;
    tern_ms now = 0, last_progress = 0;
    double t0 = mono_seconds();
    while (received < c->messages) {
        for (uint64_t i = 0; i < burst && sent < c->messages &&
                            tern_kcp_unacked_segments(snd) < 2 * (uint64_t)c->window;
             i++) {
            /* The index at both ends: a lost, reordered, truncated or
             * misassembled message cannot pass the check. */
            put_u64(msg, sent);
            put_u64(msg + c->msg_size - 8, sent);
            rc = tern_kcp_send(snd, msg, c->msg_size, now);
            if (rc == TERN_ERR_WOULDBLOCK)
                break;
            if (rc) {
                fail(r, rc, "tern_kcp_send");
                goto out;
            }
            sent++;
        }
        if ((rc = tern_kcp_handle_expiry(snd, now)) != 0 ||
            (rc = ring_fill(&a2b, snd, rcv, now)) != 0 ||
            (rc = ring_deliver(&a2b, rcv, now)) != 0) {
            fail(r, rc, "data direction");
            goto out;
        }
        tern_ssize n;
        while ((n = tern_kcp_recv(rcv, got, c->msg_size, now)) > 0) {
            if ((size_t)n != c->msg_size || get_u64(got) != received ||
                get_u64(got + c->msg_size - 8) != received) {
                fail(r, ERR_VERIFY, "tern_kcp_recv");
                goto out;
            }
            received++;
            last_progress = now;
        }
        if (n != TERN_ERR_AGAIN) {
            fail(r, (int)n, "tern_kcp_recv");
            goto out;
        }
        if ((rc = tern_kcp_handle_expiry(rcv, now)) != 0 ||
            (rc = ring_fill(&b2a, rcv, snd, now)) != 0 ||
            (rc = ring_deliver(&b2a, snd, now)) != 0) {
            fail(r, rc, "ack direction");
            goto out;
        }
        if (now - last_progress > STALL_MS) {
            fail(r, ERR_STALL, "transfer");
            goto out;
        }
        now++;
    }
    r->wall_s = mono_seconds() - t0;
    r->messages = received;
    r->sim_ms = now;
    tern_kcp_stats st;
    tern_kcp_get_stats(snd, &st);
    r->retrans_fast = st.retrans_fast;
    r->retrans_early = st.retrans_early;
    r->retrans_timeout = st.retrans_timeout;
    r->lost = st.lost;
    r->srtt_ms = st.srtt_ms;
    r->dgrams_data = a2b.written;
    r->dgrams_ack = b2a.written;
    r->dropped_data = a2b.dropped;
    r->dropped_ack = b2a.dropped;
out:
    tern_kcp_del(snd);
    tern_kcp_del(rcv);
    ring_free(&a2b);
    ring_free(&b2a);
    free(msg);
    free(got);
    /* Peak RSS of this process: the whole cell, engines and rings included. */
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        r->peak_rss_kb = ru.ru_maxrss;
}

/* Runs the cell in a child so that ru_maxrss (a high-water mark for the whole
 * process) belongs to this cell alone. */
static void run_cell_forked(const cell_cfg *c, cell_result *r)
{
    memset(r, 0, sizeof(*r));
    int fds[2];
    if (pipe(fds) != 0) {
        fail(r, TERN_ERR_NOMEM, "pipe");
        return;
    }
    fflush(NULL); /* the child must not flush the parent's buffered output again */
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        fail(r, TERN_ERR_NOMEM, "fork");
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        cell_result mine;
        run_cell(c, &mine);
        ssize_t w = write(fds[1], &mine, sizeof(mine));
        _exit(w == (ssize_t)sizeof(mine) ? 0 : 1);
    }
    close(fds[1]);
    size_t have = 0;
    while (have < sizeof(*r)) {
        ssize_t n = read(fds[0], (char *)r + have, sizeof(*r) - have);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (have != sizeof(*r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        memset(r, 0, sizeof(*r));
        r->rc = TERN_ERR_INVAL;
        if (WIFSIGNALED(status))
            snprintf(r->why, sizeof(r->why), "cell process killed by signal %d", WTERMSIG(status));
        else
            snprintf(r->why, sizeof(r->why), "cell process failed (status 0x%x)", (unsigned)status);
    }
}

static double msgs_per_s(const cell_result *r)
{
    return r->wall_s > 0 ? (double)r->messages / r->wall_s : 0.0;
}

/* Best of `repeats` runs: on a shared machine interference only ever slows a
 * run down, so the fastest is the closest to the engine's own cost. The
 * spread of the others is kept to show how noisy the machine was. */
static void measure_cell(const cell_cfg *c, uint32_t repeats, bool no_fork, cell_result *best)
{
    double mps[MAX_REPEATS];
    long rss = 0;
    for (uint32_t i = 0; i < repeats; i++) {
        cell_result r;
        if (no_fork)
            run_cell(c, &r);
        else
            run_cell_forked(c, &r);
        if (r.rc) {
            *best = r;
            return;
        }
        mps[i] = msgs_per_s(&r);
        if (i == 0 || mps[i] > msgs_per_s(best))
            *best = r;
        if (r.peak_rss_kb > rss)
            rss = r.peak_rss_kb;
    }
    best->peak_rss_kb = rss;
    best->runs = repeats;
    memcpy(best->run_mps, mps, repeats * sizeof(mps[0]));
}

/* (fastest - slowest) / fastest over the repetitions, in percent. */
static double spread_pct(const cell_result *r)
{
    double lo = r->run_mps[0], hi = r->run_mps[0];
    for (uint32_t i = 1; i < r->runs; i++) {
        lo = r->run_mps[i] < lo ? r->run_mps[i] : lo;
        hi = r->run_mps[i] > hi ? r->run_mps[i] : hi;
    }
    return hi > 0 ? (hi - lo) / hi * 100.0 : 0.0;
}

/* ---- the ikcp reference and the targets ---- */

/* Classic ikcp v1.7 (nodelay 1/10/2/1, mtu 1400) in exactly this setup on
 * this machine class, messages/s: the project's reference figures, not
 * measured by this program. */
typedef struct ikcp_ref {
    uint32_t msg_size, window;
    double at_0, at_5; /* loss 0% and 5% */
} ikcp_ref;

static const ikcp_ref ikcp_refs[] = {
    {1024, 128, 1.98e6, 1.89e6}, {64, 128, 5.97e6, 5.40e6},    {1024, 1024, 1.18e6, 1.57e6},
    {64, 1024, 6.18e6, 3.56e6},  {1024, 8192, 0.85e6, 0.37e6}, {64, 8192, 6.99e6, 0.74e6},
};

/* 0 if this cell has no reference figure. */
static double ikcp_reference(uint32_t msg_size, uint32_t window, double loss_pct)
{
    for (size_t i = 0; i < sizeof(ikcp_refs) / sizeof(ikcp_refs[0]); i++) {
        const ikcp_ref *e = &ikcp_refs[i];
        if (e->msg_size == msg_size && e->window == window)
            return loss_pct == 0.0 ? e->at_0 : loss_pct == 5.0 ? e->at_5 : 0.0;
    }
    return 0.0;
}

/* At least 1.5x ikcp everywhere, 4x in the window-8192 cells with loss. */
static double target_ratio(uint32_t window, double loss_pct)
{
    return window == 8192 && loss_pct > 0.0 ? 4.0 : 1.5;
}

/* ---- output ---- */

static void print_header(void)
{
    printf("%5s %6s %5s %9s %8s %7s %8s %8s %7s %6s %9s %7s %7s\n", "size", "window", "loss",
           "messages", "Mmsg/s", "spread", "MB/s", "ikcp M/s", "ratio", "target", "retrans",
           "sim ms", "rss KB");
}

static void print_row(const cell_cfg *c, const cell_result *r)
{
    if (r->rc) {
        printf("%5u %6u %4.1f%%  FAILED: %s\n", c->msg_size, c->window, c->loss_pct, r->why);
        return;
    }
    double mps = msgs_per_s(r);
    double ref = ikcp_reference(c->msg_size, c->window, c->loss_pct);
    char ref_txt[16] = "-", ratio_txt[16] = "-", target_txt[16] = "-";
    if (ref > 0) {
        double ratio = mps / ref, want = target_ratio(c->window, c->loss_pct);
        snprintf(ref_txt, sizeof(ref_txt), "%.2f", ref / 1e6);
        snprintf(ratio_txt, sizeof(ratio_txt), "%.2fx", ratio);
        snprintf(target_txt, sizeof(target_txt), "%s%.1fx", ratio >= want ? " " : "!", want);
    }
    printf("%5u %6u %4.1f%% %9" PRIu64 " %8.3f %6.1f%% %8.1f %8s %7s %6s %9" PRIu64 " %7" PRIu64
           " %7ld\n",
           c->msg_size, c->window, c->loss_pct, r->messages, mps / 1e6, spread_pct(r),
           mps * c->msg_size / 1e6, ref_txt, ratio_txt, target_txt,
           r->retrans_fast + r->retrans_early + r->retrans_timeout, r->sim_ms, r->peak_rss_kb);
}

static void write_json(FILE *f, const cell_cfg *c, const cell_result *r, bool quick)
{
    char date[32];
    tern_bench_utc_now(date, sizeof(date));
    double mps = msgs_per_s(r);
    double ref = ikcp_reference(c->msg_size, c->window, c->loss_pct);
    fprintf(f,
            "{\"bench\":\"throughput\",\"msg_size\":%u,\"window\":%u,\"loss_pct\":%g,"
            "\"msgs_per_s\":%.0f,\"mb_per_s\":%.2f,\"peak_rss_kb\":%ld,"
            "\"ok\":%s,\"messages\":%" PRIu64 ",\"wall_s\":%.4f,\"sim_ms\":%" PRIu64 ","
            "\"retransmits\":%" PRIu64 ",\"retrans_fast\":%" PRIu64 ",\"retrans_early\":%" PRIu64
            ",\"retrans_timeout\":%" PRIu64 ",\"lost_declared\":%" PRIu64 ","
            "\"datagrams_data\":%" PRIu64 ",\"datagrams_ack\":%" PRIu64 ","
            "\"dropped_data\":%" PRIu64 ",\"dropped_ack\":%" PRIu64 ",",
            c->msg_size, c->window, c->loss_pct, mps, mps * c->msg_size / 1e6, r->peak_rss_kb,
            r->rc ? "false" : "true", r->messages, r->wall_s, r->sim_ms,
            r->retrans_fast + r->retrans_early + r->retrans_timeout, r->retrans_fast,
            r->retrans_early, r->retrans_timeout, r->lost, r->dgrams_data, r->dgrams_ack,
            r->dropped_data, r->dropped_ack);
    if (ref > 0)
        fprintf(f, "\"ikcp_ref_msgs_per_s\":%.0f,\"ratio_vs_ikcp\":%.3f,", ref, mps / ref);
    fprintf(f, "\"repeats\":%u,\"msgs_per_s_runs\":[", r->runs);
    for (uint32_t i = 0; i < r->runs; i++)
        fprintf(f, "%s%.0f", i ? "," : "", r->run_mps[i]);
    fprintf(f, "],");
    fprintf(f,
            "\"preset\":\"fast3\",\"ack_nodelay\":true,\"mtu\":%u,\"seed\":%" PRIu64
            ",\"quick\":%s,\"date\":\"%s\"}\n",
            MTU, c->seed, quick ? "true" : "false", date);
    fflush(f);
}

/* ---- the matrix and its targets ---- */

static const uint32_t sizes[] = {64, 1024};
static const uint32_t windows[] = {128, 1024, 8192};
static const double losses[] = {0.0, 5.0};
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))
#define N_WINDOWS (sizeof(windows) / sizeof(windows[0]))
#define N_LOSSES (sizeof(losses) / sizeof(losses[0]))

/* Messages per cell: roughly 0.5-1 s of wall time each at the target rates. */
static uint64_t default_messages(uint32_t msg_size, bool quick)
{
    uint64_t n = msg_size <= 256 ? 16000000 : 6000000;
    return quick ? n / 100 : n;
}

/* Prints the target list; returns how many targets were missed. */
static int check_targets(const cell_result res[N_SIZES][N_WINDOWS][N_LOSSES])
{
    int missed = 0;
    printf("\nTargets:\n");
    for (size_t s = 0; s < N_SIZES; s++) {
        for (size_t w = 0; w < N_WINDOWS; w++) {
            for (size_t l = 0; l < N_LOSSES; l++) {
                const cell_result *r = &res[s][w][l];
                double ref = ikcp_reference(sizes[s], windows[w], losses[l]);
                double want = target_ratio(windows[w], losses[l]);
                double ratio = r->rc ? 0.0 : msgs_per_s(r) / ref;
                bool ok = ratio >= want;
                missed += !ok;
                printf("  %-7s %4u B, window %4u, loss %g%%: %.2fx ikcp (want >= %.1fx)\n",
                       ok ? "met" : "MISSED", sizes[s], windows[w], losses[l], ratio, want);
            }
        }
    }
    /* Window 8192 must cost no more than 20% against window 128. */
    for (size_t s = 0; s < N_SIZES; s++) {
        for (size_t l = 0; l < N_LOSSES; l++) {
            const cell_result *small = &res[s][0][l], *big = &res[s][N_WINDOWS - 1][l];
            double rel = small->rc || big->rc ? 0.0 : msgs_per_s(big) / msgs_per_s(small);
            bool ok = rel >= 0.8;
            missed += !ok;
            printf("  %-7s %4u B, loss %g%%: window 8192 at %.0f%% of window 128 (want >= 80%%)\n",
                   ok ? "met" : "MISSED", sizes[s], losses[l], rel * 100.0);
        }
    }
    return missed;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: %s [--quick] [--out PATH] [--messages N] [--repeat N] [--burst N]\n"
        "          [--seed N] [--no-fork] [--window N --size N --loss PCT]\n"
        "Runs the throughput matrix (64 and 1024 B x windows 128/1024/8192 x loss 0/5%%),\n"
        "or one cell if --window, --size or --loss is given (defaults 128, 1024, 0).\n"
        "  --quick      1/100 of the messages, one run per cell (CI smoke run)\n"
        "  --out PATH   JSON-lines results file to append to (default %s)\n"
        "  --messages N messages per cell (default 16M for <= 256 B, else 6M)\n"
        "  --repeat N   runs per cell, the fastest reported (default 3)\n"
        "  --burst N    messages offered per simulated ms at most (default 2 * window)\n"
        "  --seed N     loss seed (default 1)\n"
        "  --no-fork    run cells in this process (for profilers; peak RSS is then cumulative)\n",
        PROG, TERN_BENCH_RESULTS_DEFAULT);
}

int main(int argc, char **argv)
{
    const char *out_path = TERN_BENCH_RESULTS_DEFAULT;
    bool quick = false, single = false, no_fork = false;
    uint64_t window = 128, size = 1024, messages = 0, burst = 0, seed = 1, repeats = 0;
    double loss = 0.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "--quick")) {
            quick = true;
            continue;
        }
        if (!strcmp(a, "--no-fork")) {
            no_fork = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--out")) {
            out_path = v;
        } else if (!strcmp(a, "--window")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, TERN_KCP_WND_MAX, &window);
            single = true;
        } else if (!strcmp(a, "--size")) {
            /* Both index copies must fit, and one segment carries it (the
             * matrix sizes fit one mss). */
            rc = tern_bench_parse_u64(PROG, a, v, 16, MTU - TERN_KCP_OVERHEAD, &size);
            single = true;
        } else if (!strcmp(a, "--loss")) {
            rc = tern_bench_parse_double(PROG, a, v, 0.0, 50.0, &loss);
            single = true;
        } else if (!strcmp(a, "--messages")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, UINT64_MAX / 2, &messages);
        } else if (!strcmp(a, "--repeat")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, MAX_REPEATS, &repeats);
        } else if (!strcmp(a, "--burst")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, UINT32_MAX, &burst);
        } else if (!strcmp(a, "--seed")) {
            rc = tern_bench_parse_u64(PROG, a, v, 0, UINT64_MAX, &seed);
        } else {
            usage(stderr);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (!repeats)
        repeats = quick ? 1 : 3;
    FILE *out = tern_bench_results_open(PROG, out_path);
    if (!out)
        return 1;
    /* Each row as it completes, even into a pipe: cells take seconds. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    printf("%s: two engines, fast3 + ack_nodelay, mtu %u, 1 ms rounds, loss each way;\n"
           "messages/s of wall time, fastest of %" PRIu64 " runs (spread: slowest vs fastest);\n"
           "payload MB = 10^6 B; ikcp = classic ikcp v1.7 reference figures (not measured\n"
           "here); ratio = ours / ikcp; target marked ! if missed.\n\n",
           PROG, MTU, repeats);
    print_header();
    int failed = 0;
    if (single) {
        cell_cfg c = {(uint32_t)size, (uint32_t)window,
                      loss,           messages ? messages : default_messages((uint32_t)size, quick),
                      burst,          seed};
        cell_result r;
        measure_cell(&c, (uint32_t)repeats, no_fork, &r);
        print_row(&c, &r);
        write_json(out, &c, &r, quick);
        failed = r.rc != 0;
    } else {
        static cell_result res[N_SIZES][N_WINDOWS][N_LOSSES];
        for (size_t s = 0; s < N_SIZES; s++) {
            for (size_t w = 0; w < N_WINDOWS; w++) {
                for (size_t l = 0; l < N_LOSSES; l++) {
                    cell_cfg c = {
                        sizes[s],  windows[w],
                        losses[l], messages ? messages : default_messages(sizes[s], quick),
                        burst,     seed};
                    cell_result *r = &res[s][w][l];
                    measure_cell(&c, (uint32_t)repeats, no_fork, r);
                    print_row(&c, r);
                    write_json(out, &c, r, quick);
                    failed += r->rc != 0;
                }
            }
        }
        int missed = check_targets(res);
        printf("\n%d of %zu targets missed%s.\n", missed,
               N_SIZES * N_WINDOWS * N_LOSSES + N_SIZES * N_LOSSES,
               quick ? " (--quick: too short to judge)" : "");
    }
    fclose(out);
    if (failed)
        fprintf(stderr, PROG ": %d cell(s) failed\n", failed);
    /* Missed targets are information, not failure: only a broken run fails. */
    return failed ? 1 : 0;
}
