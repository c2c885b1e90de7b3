/* TCP load through a tunnel on loopback, for tern-demo and bench_tunnel:
 * the target behind the tunnel server (a bulk sink and an echo server) and
 * the applications in front of the tunnel client (a bulk sender and a
 * prober), all on one libuv loop.
 *
 *   bulk   --TCP--> tunnel client ... tunnel server --TCP--> sink
 *   probes --TCP--> tunnel client ... tunnel server --TCP--> echo
 *
 * The first byte of a connection tells the target what it is: 'B' is
 * followed by the bulk length (8 bytes, big-endian) and that many bytes of
 * seeded xorshift data, checksummed (64-bit FNV-1a) at both ends; 'E' by
 * probes of TERN_TCPLOAD_PROBE_SIZE bytes (sequence number, send time in
 * uv_hrtime() nanoseconds, a pattern) that the target echoes back and the
 * prober checks, each round trip going into rtt in milliseconds. The
 * target takes two connections at the most.
 *
 * Every failure (a connection that ends or cannot be made, corrupted or
 * extra data, a probe echoed wrong or twice) goes to the fail callback as
 * one reason; the owner keeps the first and stops everything, this load
 * with tern_tcpload_stop(), and closes it with tern_tcpload_close() when
 * the rest of its handles go. */
#ifndef TERN_TOOLS_TCPLOAD_H
#define TERN_TOOLS_TCPLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tern/common.h"
#include "tern/error.h"
#include "tools/perf_stats.h"

#define TERN_TCPLOAD_CHUNK (64U << 10) /* bulk bytes per TCP write, and the read buffer */
#define TERN_TCPLOAD_CHUNKS 4          /* bulk writes in flight */
#define TERN_TCPLOAD_PROBE_SIZE 64     /* bytes per probe */
#define TERN_TCPLOAD_REASON_CAP 512    /* a failure's reason, as given to fail */

typedef enum tern_tcpload_kind { TERN_TCPLOAD_BULK = 0, TERN_TCPLOAD_PROBES } tern_tcpload_kind;

typedef struct tern_tcpload tern_tcpload;

/* Each callback gets the owner's data (tern_tcpload_init). */
typedef struct tern_tcpload_cbs {
    /* Required: a step failed. */
    void (*fail)(void *data, const char *reason);
    /* Required: the last bulk byte reached the sink (at t_bulk1), or the
     * last probe came back. bulk_done or probes_done is set first if it all
     * checked out; if not, fail follows. */
    void (*ended)(void *data);
    /* Optional: a connection to the tunnel client is up (for the bulk one,
     * at t_bulk0), before it sends anything. */
    void (*connected)(void *data);
    /* Optional: n bulk bytes reached the sink at now (uv_hrtime()). */
    void (*received)(void *data, size_t n, uint64_t now);
} tern_tcpload_cbs;

typedef struct tern_tcpload_config {
    uint64_t bulk_bytes; /* the bulk transfer, >= 1 */
    uint64_t seed;       /* of the bulk data */
    uint64_t probes;     /* probes to send, 0 for none */
    uint64_t rate;       /* probes per second, 1..1000 when there are probes */
    tern_tcpload_cbs cbs;
} tern_tcpload_config;

/* A connection the target accepted. */
typedef struct tern_tcpload_conn {
    tern_tcpload *l;
    uv_tcp_t tcp;
    bool used;
    char kind;      /* its first byte: 'B' or 'E'; 0 before it */
    uint8_t hdr[8]; /* bulk: the length, big-endian */
    size_t hdr_len;
} tern_tcpload_conn;

typedef struct tern_tcpload_chunk {
    uv_write_t req; /* first: the write callback casts back */
    tern_tcpload *l;
    uint8_t buf[TERN_TCPLOAD_CHUNK];
} tern_tcpload_chunk;

/* The owner reads the counters and flags; the rest is the load's own. */
struct tern_tcpload {
    uv_loop_t *loop;
    tern_tcpload_config cfg;
    tern_mem mem;
    void *data; /* the owner's */
    bool stopping;

    /* the target */
    uv_tcp_t sink;
    uint16_t sink_port; /* after tern_tcpload_listen() */
    tern_tcpload_conn conns[2];

    /* bulk */
    uv_tcp_t bulk_tcp;
    uv_connect_t bulk_connect;
    uv_write_t bulk_hdr_req;
    uint8_t bulk_hdr[9];
    tern_tcpload_chunk chunks[TERN_TCPLOAD_CHUNKS];
    uint64_t bulk_queued, bulk_got;
    uint64_t sum_sent, sum_got; /* FNV-1a of what was sent, of what the sink got */
    uint64_t prng;
    uint64_t t_bulk0, t_bulk1; /* uv_hrtime() of the connection, of the last byte in */
    bool bulk_started, bulk_done;

    /* probes */
    uv_tcp_t probe_tcp;
    uv_connect_t probe_connect;
    uv_write_t probe_hdr_req;
    uv_timer_t probe_timer;
    uint64_t probes_sent, probes_got, t_probe0;
    bool probes_started, probes_done;
    uint8_t probe_rx[TERN_TCPLOAD_PROBE_SIZE];
    size_t probe_rx_len;
    uint8_t *probe_seen; /* one byte per probe */
    tern_perf_stats rtt; /* round trips, ms */

    uint8_t rbuf[TERN_TCPLOAD_CHUNK]; /* every TCP read lands here and is consumed at once */
};

/* Sets up the load on loop (cfg copied, mem NULL for malloc/free). 0;
 * TERN_ERR_INVAL for NULL, a zero bulk_bytes, a rate out of range or a
 * missing required callback (the load is then unusable); TERN_ERR_NOMEM,
 * after which the load is still to be closed and freed. */
int tern_tcpload_init(tern_tcpload *l, uv_loop_t *loop, const tern_tcpload_config *cfg,
                      const tern_mem *mem, void *data);
/* Starts the target on 127.0.0.1 on a port of the system's choosing, in
 * sink_port. 0, or a negative libuv code after calling fail;
 * TERN_ERR_STATE, without fail, if it was started before. */
int tern_tcpload_listen(tern_tcpload *l);
/* Connects the bulk sender or the prober to 127.0.0.1:port and runs it to
 * its end. 0, or a negative libuv code after calling fail; TERN_ERR_STATE
 * if it was started already, TERN_ERR_INVAL for probes when there are none
 * (neither calls fail). */
int tern_tcpload_start(tern_tcpload *l, tern_tcpload_kind kind, uint16_t port);
/* Sends nothing more; a connection that ends is no longer a failure. Safe
 * to call again. */
void tern_tcpload_stop(tern_tcpload *l);
/* Closes every handle (the loop then finishes them). */
void tern_tcpload_close(tern_tcpload *l);
/* Frees the probe memory. After uv_run() has returned; a zeroed load is
 * fine. */
void tern_tcpload_free(tern_tcpload *l);

#endif /* TERN_TOOLS_TCPLOAD_H */
