/* bench_udp_raw: how many datagrams per second loopback UDP moves on one core,
 * by system call style, and what transport/udp.c costs on top.
 *
 * One thread, one receiving socket and one sending socket on 127.0.0.1,
 * 1200-byte datagrams (--size), each mode for a fixed time (--seconds). Every
 * round the sender sends a burst and the receiver drains its socket, so
 * loopback (which delivers inside the send call) never overflows the 4 MiB
 * receive buffer and delivered equals sent:
 *   sendto    32 x sendto(2), then recvfrom(2) until EAGAIN;
 *   mmsg      one sendmmsg(2) of 32, then recvmmsg(2) of 32 until drained;
 *   gso       one sendmsg(2) with UDP_SEGMENT carrying as many segments as fit
 *             in one 65507-byte UDP payload (54 of 1200 B; 64 is the kernel's
 *             limit on older kernels, but 64 x 1200 B exceeds the IPv4 length
 *             field), then recvmmsg of 32 until drained;
 *   tern_udp  two tern_udp sockets on one libuv loop: each iteration a
 *             uv_idle queues 32 datagrams (reserve + commit), the layer
 *             flushes them (one GSO message) and libuv reads them back with
 *             recvmmsg; at most 256 in flight;
 *   tern_udp_nogso  the same with cfg.gso = false (one sendmmsg of 32).
 * Reported: delivered datagrams/s and payload MB/s (10^6 B) of wall time, and
 * the ratio of tern_udp to mmsg. Results: a table on stdout, one JSON object
 * per mode appended to the results file. */
#define _GNU_SOURCE /* sendmmsg, recvmmsg, SO_RCVBUFFORCE */

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "bench/common.h"
#include "tern/error.h"
#include "transport/udp.h"

#define PROG "bench_udp_raw"
#define BATCH 32u
#define GSO_SEGS_MAX 64u
#define WINDOW 256u
#define RCVBUF (4 << 20)
#define SIZE_MIN 16u
#define SIZE_MAX_ 8192u
#define N_MODES 5

typedef struct result {
    const char *mode;
    bool ran, ok;
    char why[160];
    uint64_t sent, delivered, bytes;
    uint64_t send_calls, recv_calls;
    double secs;
    unsigned segs; /* datagrams per send call where fixed */
} result;

static void fail(result *r, const char *what)
{
    r->ok = false;
    snprintf(r->why, sizeof(r->why), "%s: %s", what, strerror(errno));
}

/* A receiving socket bound to 127.0.0.1:0 with a 4 MiB buffer, and a sending
 * one. Both non-blocking. */
static int open_pair(int *tx, int *rx, struct sockaddr_in *to, result *r)
{
    *tx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    *rx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (*tx < 0 || *rx < 0) {
        fail(r, "socket");
        return -1;
    }
    int buf = RCVBUF;
    if (setsockopt(*rx, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf)) != 0) {
        fail(r, "SO_RCVBUF");
        return -1;
    }
    (void)setsockopt(*rx, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf));
    memset(to, 0, sizeof(*to));
    to->sin_family = AF_INET;
    to->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*to);
    if (bind(*rx, (struct sockaddr *)to, sizeof(*to)) != 0 ||
        getsockname(*rx, (struct sockaddr *)to, &len) != 0) {
        fail(r, "bind");
        return -1;
    }
    return 0;
}

static void close_pair(int tx, int rx)
{
    if (tx >= 0)
        close(tx);
    if (rx >= 0)
        close(rx);
}

/* Counts one received datagram; a wrong length breaks the run. */
static bool take(result *r, ssize_t n, size_t size)
{
    if (n < 0 || (size_t)n != size) {
        r->ok = false;
        snprintf(r->why, sizeof(r->why), "received %zd bytes, want %zu", n, size);
        return false;
    }
    r->delivered++;
    r->bytes += (uint64_t)n;
    return true;
}

static bool would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS;
}

/* ---- (a) one datagram per call ---- */

static void run_sendto(size_t size, double secs, result *r)
{
    int tx = -1, rx = -1;
    struct sockaddr_in to;
    static uint8_t buf[SIZE_MAX_], rbuf[SIZE_MAX_ + 1];
    r->segs = 1;
    if (open_pair(&tx, &rx, &to, r) == 0) {
        double t0 = tern_bench_now_s(), t = t0;
        while (r->ok && t - t0 < secs) {
            for (unsigned k = 0; k < BATCH; k++) {
                r->send_calls++;
                ssize_t n = sendto(tx, buf, size, 0, (struct sockaddr *)&to, sizeof(to));
                if (n < 0 && would_block())
                    break;
                if (n < 0) {
                    fail(r, "sendto");
                    break;
                }
                r->sent++;
            }
            for (;;) {
                struct sockaddr_in from;
                socklen_t fl = sizeof(from);
                r->recv_calls++;
                ssize_t n = recvfrom(rx, rbuf, sizeof(rbuf), 0, (struct sockaddr *)&from, &fl);
                if (n < 0 && would_block())
                    break;
                if (!take(r, n, size))
                    break;
            }
            t = tern_bench_now_s();
        }
        r->secs = t - t0;
    }
    close_pair(tx, rx);
}

/* ---- (b) and (c): sendmmsg of 32, or one GSO send; recvmmsg of 32 ---- */

typedef struct mmsg_rx {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in from[BATCH];
    uint8_t *bufs;
} mmsg_rx;

static int mmsg_rx_init(mmsg_rx *m, size_t size)
{
    m->bufs = malloc((size_t)BATCH * (size + 1));
    if (!m->bufs)
        return -1;
    for (unsigned k = 0; k < BATCH; k++) {
        m->iov[k].iov_base = m->bufs + (size_t)k * (size + 1);
        m->iov[k].iov_len = size + 1; /* a longer datagram would show as such */
    }
    return 0;
}

/* recvmmsg until a call returns fewer than BATCH (drained) or EAGAIN. */
static void drain_mmsg(int rx, mmsg_rx *m, size_t size, result *r)
{
    for (;;) {
        for (unsigned k = 0; k < BATCH; k++) {
            memset(&m->msgs[k].msg_hdr, 0, sizeof(m->msgs[k].msg_hdr));
            m->msgs[k].msg_hdr.msg_iov = &m->iov[k];
            m->msgs[k].msg_hdr.msg_iovlen = 1;
            m->msgs[k].msg_hdr.msg_name = &m->from[k];
            m->msgs[k].msg_hdr.msg_namelen = sizeof(m->from[k]);
        }
        r->recv_calls++;
        int n = recvmmsg(rx, m->msgs, BATCH, 0, NULL);
        if (n < 0 && would_block())
            return;
        if (n < 0) {
            fail(r, "recvmmsg");
            return;
        }
        for (int k = 0; k < n; k++)
            if (!take(r, (ssize_t)m->msgs[k].msg_len, size))
                return;
        if ((unsigned)n < BATCH)
            return;
    }
}

static void run_mmsg(size_t size, double secs, result *r)
{
    int tx = -1, rx = -1;
    struct sockaddr_in to;
    static uint8_t buf[SIZE_MAX_];
    mmsg_rx m = {0};
    struct mmsghdr out[BATCH];
    struct iovec iov = {buf, size};
    r->segs = BATCH;
    if (mmsg_rx_init(&m, size) == 0 && open_pair(&tx, &rx, &to, r) == 0) {
        double t0 = tern_bench_now_s(), t = t0;
        while (r->ok && t - t0 < secs) {
            for (unsigned k = 0; k < BATCH; k++) {
                memset(&out[k], 0, sizeof(out[k]));
                out[k].msg_hdr.msg_name = &to;
                out[k].msg_hdr.msg_namelen = sizeof(to);
                out[k].msg_hdr.msg_iov = &iov;
                out[k].msg_hdr.msg_iovlen = 1;
            }
            r->send_calls++;
            int n = sendmmsg(tx, out, BATCH, 0);
            if (n < 0 && !would_block()) {
                fail(r, "sendmmsg");
                break;
            }
            if (n > 0)
                r->sent += (uint64_t)n;
            drain_mmsg(rx, &m, size, r);
            t = tern_bench_now_s();
        }
        r->secs = t - t0;
    } else if (!m.bufs) {
        fail(r, "malloc");
    }
    free(m.bufs);
    close_pair(tx, rx);
}

static void run_gso(size_t size, double secs, result *r)
{
    int tx = -1, rx = -1;
    struct sockaddr_in to;
    mmsg_rx m = {0};
    unsigned segs = (unsigned)(TERN_UDP_MAX_DATAGRAM / size);
    if (segs > GSO_SEGS_MAX)
        segs = GSO_SEGS_MAX;
    r->segs = segs;
    uint8_t *buf = calloc(segs, size);
    if (!buf || mmsg_rx_init(&m, size) != 0) {
        fail(r, "malloc");
    } else if (segs < 2) {
        r->ran = false;
        snprintf(r->why, sizeof(r->why), "datagrams of %zu B leave no room for 2 segments", size);
    } else if (open_pair(&tx, &rx, &to, r) == 0) {
        int v = 0;
        socklen_t vl = sizeof(v);
        if (getsockopt(tx, SOL_UDP, UDP_SEGMENT, &v, &vl) != 0) {
            r->ran = false;
            snprintf(r->why, sizeof(r->why), "no UDP_SEGMENT on this kernel");
        }
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(uint16_t))];
        } cm;
        struct iovec iov = {buf, (size_t)segs * size};
        double t0 = tern_bench_now_s(), t = t0;
        while (r->ran && r->ok && t - t0 < secs) {
            struct msghdr h;
            memset(&h, 0, sizeof(h));
            memset(&cm, 0, sizeof(cm));
            h.msg_name = &to;
            h.msg_namelen = sizeof(to);
            h.msg_iov = &iov;
            h.msg_iovlen = 1;
            h.msg_control = cm.buf;
            h.msg_controllen = sizeof(cm.buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t gso_size = (uint16_t)size;
            memcpy(CMSG_DATA(c), &gso_size, sizeof(gso_size));
            r->send_calls++;
            ssize_t n = sendmsg(tx, &h, 0);
            if (n < 0 && !would_block()) {
                fail(r, "sendmsg UDP_SEGMENT");
                break;
            }
            if (n > 0)
                r->sent += segs;
            drain_mmsg(rx, &m, size, r);
            t = tern_bench_now_s();
        }
        r->secs = t - t0;
    }
    free(buf);
    free(m.bufs);
    close_pair(tx, rx);
}

/* ---- (d) through transport/udp.c ---- */

typedef struct tern_run {
    uv_loop_t loop;
    uv_idle_t idle;
    uv_timer_t stop;
    tern_udp *tx, *rx;
    struct sockaddr_storage to;
    size_t size;
    uint64_t queued, t0_ns, t1_ns;
    result *r;
    bool stopped;
} tern_run;

static void tern_on_rx(void *user, const uint8_t *data, size_t len, const struct sockaddr *from,
                       tern_ms now)
{
    tern_run *t = user;
    (void)data;
    (void)from;
    (void)now;
    if (!t->stopped)
        (void)take(t->r, (ssize_t)len, t->size);
}

static void tern_on_idle(uv_idle_t *h)
{
    tern_run *t = h->data;
    if (t->queued - t->r->delivered > WINDOW - BATCH)
        return;
    for (unsigned k = 0; k < BATCH; k++) {
        uint8_t *p = tern_udp_send_reserve(t->tx);
        if (!p)
            break;
        memcpy(p, &t->queued, sizeof(t->queued));
        if (tern_udp_send_commit(t->tx, t->size, (const struct sockaddr *)&t->to) != 0)
            break;
        t->queued++;
    }
}

static void tern_on_stop(uv_timer_t *h)
{
    tern_run *t = h->data;
    t->t1_ns = uv_hrtime();
    t->stopped = true;
    tern_udp_stats ts, rs;
    tern_udp_get_stats(t->tx, &ts);
    tern_udp_get_stats(t->rx, &rs);
    t->r->sent = ts.dgrams_out;
    t->r->send_calls = ts.send_syscalls;
    t->r->recv_calls = rs.recv_batches;
    if (ts.send_errors || ts.send_dropped) {
        t->r->ok = false;
        snprintf(t->r->why, sizeof(t->r->why),
                 "tern_udp: %" PRIu64 " send errors, %" PRIu64 " dropped", ts.send_errors,
                 ts.send_dropped);
    }
    uv_close((uv_handle_t *)&t->idle, NULL);
    uv_close((uv_handle_t *)&t->stop, NULL);
    tern_udp_close(t->tx, NULL, NULL);
    tern_udp_close(t->rx, NULL, NULL);
}

static void run_tern(size_t size, double secs, bool gso, result *r)
{
    tern_run t;
    memset(&t, 0, sizeof(t));
    t.size = size;
    t.r = r;
    r->segs = BATCH;
    if (uv_loop_init(&t.loop) != 0) {
        fail(r, "uv_loop_init");
        return;
    }
    tern_udp_config rc, sc;
    tern_udp_config_default(&rc);
    rc.rcvbuf = RCVBUF;
    tern_udp_config_default(&sc);
    sc.gso = gso;
    struct sockaddr_in any;
    uv_ip4_addr("127.0.0.1", 0, &any);
    int rc1 =
        tern_udp_open(&t.rx, &t.loop, (const struct sockaddr *)&any, &rc, tern_on_rx, &t, NULL);
    int rc2 = rc1 ? rc1
                  : tern_udp_open(&t.tx, &t.loop, (const struct sockaddr *)&any, &sc, tern_on_rx,
                                  &t, NULL);
    if (rc1 || rc2 || tern_udp_local_addr(t.rx, &t.to) != 0) {
        r->ok = false;
        snprintf(r->why, sizeof(r->why), "tern_udp_open: %s", tern_strerror(rc1 ? rc1 : rc2));
        tern_udp_close(t.rx, NULL, NULL);
        tern_udp_close(t.tx, NULL, NULL);
    } else {
        if (gso && !tern_udp_gso_active(t.tx))
            snprintf(r->why, sizeof(r->why), "GSO not available: plain sendmmsg");
        uv_idle_init(&t.loop, &t.idle);
        t.idle.data = &t;
        uv_idle_start(&t.idle, tern_on_idle);
        uv_timer_init(&t.loop, &t.stop);
        t.stop.data = &t;
        uv_update_time(&t.loop);
        uv_timer_start(&t.stop, tern_on_stop, (uint64_t)(secs * 1000.0), 0);
        t.t0_ns = uv_hrtime();
    }
    uv_run(&t.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&t.loop) != 0 && r->ok) {
        r->ok = false;
        snprintf(r->why, sizeof(r->why), "a libuv handle was left open");
    }
    r->secs = (double)(t.t1_ns - t.t0_ns) / 1e9;
}

/* ---- output ---- */

static double pps(const result *r)
{
    return r->secs > 0 ? (double)r->delivered / r->secs : 0.0;
}

static void print_row(const result *r, size_t size)
{
    if (!r->ran) {
        printf("%-15s skipped: %s\n", r->mode, r->why);
        return;
    }
    if (!r->ok) {
        printf("%-15s FAILED: %s\n", r->mode, r->why);
        return;
    }
    printf("%-15s %12" PRIu64 " %10.3f %9.1f %6u %10.1f %10.1f%s%s\n", r->mode, r->delivered,
           pps(r) / 1e6, pps(r) * (double)size / 1e6, r->segs,
           r->send_calls ? (double)r->sent / (double)r->send_calls : 0.0,
           r->recv_calls ? (double)r->delivered / (double)r->recv_calls : 0.0,
           r->why[0] ? "  note: " : "", r->why);
}

static void write_json(FILE *f, const result *r, size_t size, double secs, double ratio, bool quick)
{
    char date[32];
    tern_bench_utc_now(date, sizeof(date));
    fprintf(f,
            "{\"bench\":\"udp_raw\",\"mode\":\"%s\",\"dgram_size\":%zu,\"seconds\":%.3f,"
            "\"ran\":%s,\"ok\":%s,\"sent\":%" PRIu64 ",\"delivered\":%" PRIu64
            ",\"pkts_per_s\":%.0f,\"mb_per_s\":%.2f,\"dgrams_per_send_call\":%.2f,"
            "\"dgrams_per_recv_call\":%.2f,\"wall_s\":%.4f,",
            r->mode, size, secs, r->ran ? "true" : "false", r->ok ? "true" : "false", r->sent,
            r->delivered, pps(r), pps(r) * (double)size / 1e6,
            r->send_calls ? (double)r->sent / (double)r->send_calls : 0.0,
            r->recv_calls ? (double)r->delivered / (double)r->recv_calls : 0.0, r->secs);
    if (ratio > 0)
        fprintf(f, "\"ratio_vs_mmsg\":%.3f,", ratio);
    fprintf(f, "\"quick\":%s,\"date\":\"%s\"}\n", quick ? "true" : "false", date);
    fflush(f);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s [--quick] [--seconds S] [--size N] [--out PATH]\n"
            "Loopback UDP on one core, per mode: sendto, sendmmsg/recvmmsg (32), GSO,\n"
            "and transport/udp.c (tern_udp, with and without GSO).\n"
            "  --quick      0.2 s per mode (CI smoke run)\n"
            "  --seconds S  time per mode (default 2)\n"
            "  --size N     datagram bytes, %u..%u (default 1200)\n"
            "  --out PATH   JSON-lines results file to append to (default %s)\n",
            PROG, SIZE_MIN, SIZE_MAX_, TERN_BENCH_RESULTS_DEFAULT);
}

int main(int argc, char **argv)
{
    const char *out_path = TERN_BENCH_RESULTS_DEFAULT;
    bool quick = false, secs_given = false;
    double secs = 2.0;
    uint64_t size = 1200;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "--quick")) {
            quick = true;
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
        } else if (!strcmp(a, "--seconds")) {
            rc = tern_bench_parse_double(PROG, a, v, 0.05, 600.0, &secs);
            secs_given = true;
        } else if (!strcmp(a, "--size")) {
            rc = tern_bench_parse_u64(PROG, a, v, SIZE_MIN, SIZE_MAX_, &size);
        } else {
            usage(stderr);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (quick && !secs_given)
        secs = 0.2;
    FILE *out = tern_bench_results_open(PROG, out_path);
    if (!out)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    printf("%s: loopback, one thread, %" PRIu64 "-byte datagrams, %.2f s per mode;\n"
           "delivered datagrams/s of wall time, payload MB = 10^6 B.\n\n",
           PROG, size, secs);
    printf("%-15s %12s %10s %9s %6s %10s %10s\n", "mode", "delivered", "Mpkt/s", "MB/s", "burst",
           "dg/send", "dg/recv");
    result res[N_MODES] = {
        {.mode = "sendto"},   {.mode = "mmsg"},           {.mode = "gso"},
        {.mode = "tern_udp"}, {.mode = "tern_udp_nogso"},
    };
    for (int m = 0; m < N_MODES; m++) {
        res[m].ran = res[m].ok = true;
        switch (m) {
        case 0:
            run_sendto((size_t)size, secs, &res[m]);
            break;
        case 1:
            run_mmsg((size_t)size, secs, &res[m]);
            break;
        case 2:
            run_gso((size_t)size, secs, &res[m]);
            break;
        case 3:
            run_tern((size_t)size, secs, true, &res[m]);
            break;
        default:
            run_tern((size_t)size, secs, false, &res[m]);
            break;
        }
        print_row(&res[m], (size_t)size);
    }
    double base = res[1].ok ? pps(&res[1]) : 0.0;
    int failed = 0;
    for (int m = 0; m < N_MODES; m++) {
        double ratio = m >= 3 && base > 0 && res[m].ok ? pps(&res[m]) / base : 0.0;
        write_json(out, &res[m], (size_t)size, secs, ratio, quick);
        failed += res[m].ran && !res[m].ok;
    }
    printf("\ntern_udp / mmsg:       %.2fx\ntern_udp_nogso / mmsg: %.2fx\n",
           base > 0 ? pps(&res[3]) / base : 0.0, base > 0 ? pps(&res[4]) / base : 0.0);
    fclose(out);
    if (failed)
        fprintf(stderr, PROG ": %d mode(s) failed\n", failed);
    return failed ? 1 : 0;
}
