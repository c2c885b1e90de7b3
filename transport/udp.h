/* The transport's UDP layer: one socket on a caller's libuv loop, with
 * batched receive (recvmmsg through libuv), batched send (sendmmsg, and one
 * UDP_SEGMENT send per run of equal-size datagrams to one destination),
 * explicit bounds, counters, and built-in impairment through the network
 * model of tern/netsim.h. Internal: not installed.
 *
 * Calling pattern. tern_udp_open() binds and starts receiving; every
 * datagram read is handed to the recv callback. tern_udp_send() (or
 * tern_udp_send_reserve() + tern_udp_send_commit()) only queues: the queue
 * leaves in batches when tern_udp_flush() is called and, without being asked,
 * once per loop iteration from a uv_prepare (before the loop blocks: catches
 * what timers and the application queued) and a uv_check (after I/O: catches
 * what receive callbacks queued). tern_udp_close() is asynchronous, like
 * uv_close().
 *
 * Every call must come from the loop's thread. Errors are negative TERN_ERR_*
 * codes; the libuv (negative errno) error behind the last failure is kept for
 * tern_udp_last_uv_error(). */
#ifndef TERN_TRANSPORT_UDP_H
#define TERN_TRANSPORT_UDP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "tern/common.h"
#include "tern/netsim.h"

/* The largest UDP payload over IPv4 (65535 - 20 - 8). */
#define TERN_UDP_MAX_DATAGRAM 65507u
#define TERN_UDP_DEFAULT_MAX_DATAGRAM 2048u
#define TERN_UDP_DEFAULT_RECV_BATCH 32u
#define TERN_UDP_MAX_RECV_BATCH 256u
#define TERN_UDP_DEFAULT_SEND_QUEUE 4096u
#define TERN_UDP_MAX_SEND_QUEUE 1048576u

typedef struct tern_udp tern_udp;

/* One received datagram. data (len bytes, possibly 0) and from are valid only
 * during the call. now = uv_now(loop). The callback may send, flush or close
 * the socket; after a close no further datagram is delivered. */
typedef void (*tern_udp_recv_fn)(void *user, const uint8_t *data, size_t len,
                                 const struct sockaddr *from, tern_ms now);

typedef struct tern_udp_config {
    int sndbuf, rcvbuf;    /* SO_SNDBUF / SO_RCVBUF bytes; 0 = leave the OS default.
                              If the OS caps the value (net.core.*mem_max), the
                              privileged SO_*BUFFORCE is tried, silently */
    int dscp;              /* 0..63 into IP_TOS / IPV6_TCLASS; -1 = leave */
    unsigned recv_batch;   /* datagrams per recvmmsg (default 32, at most 256);
                              libuv 1.44 reads at most 20 per call, whatever is asked */
    size_t max_datagram;   /* largest datagram sent or received (default 2048;
                              at most 65507); larger received ones are dropped
                              and counted in recv_truncated */
    size_t send_queue_max; /* datagrams queued for the next flush before sends are
                              dropped and counted (default 4096, at most 2^20) */
    bool gso;              /* use UDP_SEGMENT when the kernel offers it (default true) */
    bool v6only;           /* for IPv6 binds: no IPv4-mapped traffic */
    /* Built-in impairment, off when NULL: applied to every datagram sent
     * (impair_send) / received (impair_recv) through the simulator's model
     * (tern_netsim_link), in real time (uv_now), seeded by impair_seed.
     * Delayed datagrams are released by this layer's one uv_timer. The
     * configurations are copied. */
    const tern_netsim_cfg *impair_send;
    const tern_netsim_cfg *impair_recv;
    uint64_t impair_seed;
    /* Test hook: called for every received datagram before delivery (after
     * impairment); return false to drop it (counted in filtered). */
    bool (*filter)(void *filter_user, const uint8_t *data, size_t len, const struct sockaddr *from);
    void *filter_user;
} tern_udp_config;

typedef struct tern_udp_stats {
    uint64_t dgrams_in, bytes_in;   /* read from the socket (before impairment) */
    uint64_t dgrams_delivered;      /* handed to the recv callback */
    uint64_t dgrams_out, bytes_out; /* accepted by the kernel */
    uint64_t send_syscalls;         /* sendmmsg calls, failed ones included */
    uint64_t recv_batches;          /* recvmmsg (or recvmsg) calls that returned data */
    uint64_t gso_sends;             /* messages sent with UDP_SEGMENT */
    uint64_t send_errors;           /* datagrams the kernel refused (not EAGAIN) */
    uint64_t send_dropped;          /* queue full: refused by send/reserve, or no room
                                       for a datagram the send impairment released */
    uint64_t send_blocked;          /* flushes that stopped at EAGAIN/ENOBUFS, kept queued */
    uint64_t recv_errors;           /* read errors reported by libuv */
    uint64_t recv_truncated;        /* datagrams larger than max_datagram, dropped */
    uint64_t filtered;              /* dropped by the filter hook */
    uint64_t impair_errors;         /* datagrams the impairment could not hold (NOMEM) */
    tern_netsim_stats impair_send_stats, impair_recv_stats;
} tern_udp_stats;

/* Fills the defaults above (no impairment, no filter). */
void tern_udp_config_default(tern_udp_config *cfg);

/* Opens a socket of bind->sa_family (AF_INET or AF_INET6), applies the
 * buffer sizes and DSCP, binds it (port 0 = ephemeral) and starts receiving.
 * Returns 0 and sets *out, or:
 *   TERN_ERR_INVAL  NULL argument, unknown family, config value out of range;
 *   TERN_ERR_RANGE  an impairment configuration fails tern_netsim_cfg_check;
 *   TERN_ERR_NOMEM  allocation failed;
 *   TERN_ERR_IO     the OS refused (address in use, no such address, ...).
 * On failure *out is NULL and nothing is left to close by the caller: if the
 * failure came after libuv handles were created, they are closed on the loop
 * and the memory is freed when the loop next runs its close callbacks.
 * cfg NULL means defaults; mem NULL means malloc/free. */
int tern_udp_open(tern_udp **out, uv_loop_t *loop, const struct sockaddr *bind,
                  const tern_udp_config *cfg, tern_udp_recv_fn recv, void *user,
                  const tern_mem *mem) TERN_WARN_UNUSED;
/* As tern_udp_open(), and when uv_err is not NULL stores the libuv error
 * behind a failure there (0 on success or when the failure was not libuv's),
 * since no object exists to ask. */
int tern_udp_open_ex(tern_udp **out, uv_loop_t *loop, const struct sockaddr *bind,
                     const tern_udp_config *cfg, tern_udp_recv_fn recv, void *user,
                     const tern_mem *mem, int *uv_err) TERN_WARN_UNUSED;

/* The bound address. 0, TERN_ERR_INVAL, or TERN_ERR_IO (uv error kept). */
int tern_udp_local_addr(const tern_udp *u, struct sockaddr_storage *out);

/* Queues a copy of one datagram (len 0 allowed) to `to`. An AF_INET
 * destination on a dual-stack IPv6 socket is sent IPv4-mapped. Returns 0, or:
 *   TERN_ERR_MSGSIZE    len > max_datagram;
 *   TERN_ERR_INVAL      NULL data with len > 0, NULL `to`, port 0, or a family
 *                       the socket cannot reach;
 *   TERN_ERR_WOULDBLOCK the queue is full (the datagram is dropped and counted);
 *   TERN_ERR_NOMEM      the queue (or the impairment) could not grow;
 *   TERN_ERR_CLOSED     after tern_udp_close().
 * With impair_send, the datagram is offered to the impairment instead and
 * joins the queue when the model releases it. */
int tern_udp_send(tern_udp *u, const uint8_t *data, size_t len, const struct sockaddr *to);

/* Build a datagram in place: reserve returns max_datagram writable bytes, or
 * NULL if the queue is full (counted as a drop), closed, or out of memory.
 * Calling it again before commit returns the same space. commit queues the
 * first len bytes for `to`, with tern_udp_send()'s errors, plus
 * TERN_ERR_STATE if nothing is reserved. Any commit, failed or not, ends the
 * reservation. */
uint8_t *tern_udp_send_reserve(tern_udp *u);
int tern_udp_send_commit(tern_udp *u, size_t len, const struct sockaddr *to);

/* Sends everything queued now (and whatever the send impairment has due).
 * Returns 0; TERN_ERR_AGAIN if the socket buffer filled and datagrams stay
 * queued (retried on the next loop iteration, within 1 ms); TERN_ERR_CLOSED
 * after close. Datagrams the kernel refuses are counted in send_errors, not
 * returned. */
int tern_udp_flush(tern_udp *u);

/* Flushes (best effort), stops receiving, drops what the impairment still
 * holds and closes every libuv handle; cb(arg), if not NULL, is called once
 * when all are closed, after which the memory is freed. Until then u stays
 * valid and every call on it fails with TERN_ERR_CLOSED (or returns NULL /
 * -1); after cb, u must not be used. NULL u or a second close is ignored
 * (the first close's cb still runs once). May be called from the recv
 * callback: no datagram is delivered after it. */
void tern_udp_close(tern_udp *u, void (*cb)(void *arg), void *arg);

void tern_udp_get_stats(const tern_udp *u, tern_udp_stats *out);
/* The libuv error (negative errno) behind the last failure, or 0. */
int tern_udp_last_uv_error(const tern_udp *u);
/* Whether runs are sent with UDP_SEGMENT now: false if cfg.gso was false, the
 * kernel lacks it, or it was refused once (EIO/EINVAL) and turned off. */
bool tern_udp_gso_active(const tern_udp *u);
/* The OS socket, for socket options this layer does not cover; -1 if closed. */
int tern_udp_fileno(const tern_udp *u);

/* Test hook (the session_input fuzz harness): tap(tap_user, ...) sees every
 * datagram about to be queued, after its destination passed the checks;
 * returning false swallows it (reported as sent, nothing reaches the
 * socket). NULL removes it. Not for applications. */
typedef bool (*tern_udp_tap_fn)(void *tap_user, const uint8_t *data, size_t len,
                                const struct sockaddr *to);
void tern_udp_set_send_tap(tern_udp *u, tern_udp_tap_fn tap, void *tap_user);

#endif /* TERN_TRANSPORT_UDP_H */
