/* tern: a deterministic network impairment model.
 *
 * One direction of a path ("link"): datagrams offered at a time come out
 * later, or never, according to a seeded model of loss (independent and
 * Gilbert-Elliott bursts), delay and jitter, reordering, duplication, bit
 * corruption, a rate-limited bottleneck with a byte-bounded queue, and
 * scheduled partitions. The same configuration and seed always give the same
 * trace for the same offered datagrams and times. It reads no clock: the
 * caller passes `now` (milliseconds), in virtual time (tests, benchmarks) or
 * real time (the impairment proxy, the endpoint's built-in impairment). */
#ifndef TERN_NETSIM_H
#define TERN_NETSIM_H

#include <stdbool.h>

#include "common.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_NETSIM_MAX_PARTITIONS 8

typedef struct tern_netsim_partition {
    tern_ms start_ms; /* everything offered in [start_ms, end_ms) is dropped */
    tern_ms end_ms;
} tern_netsim_partition;

typedef struct tern_netsim_cfg {
    double loss;              /* independent loss probability, 0..1 */
    /* Gilbert-Elliott burst loss, evaluated per datagram: in the good state
     * move to bad with p_good_bad; in the bad state move back with
     * p_bad_good and lose with loss_bad. p_good_bad = 0 disables it. */
    double ge_p_good_bad, ge_p_bad_good, ge_loss_bad;
    uint32_t delay_ms;        /* base one-way delay */
    uint32_t jitter_ms;       /* extra delay uniform in [0, jitter_ms] */
    /* false: each datagram draws its jitter alone, so jitter also reorders
     * (datagrams closer than jitter_ms swap places). true: jitter is
     * queueing delay, as on most paths: a datagram never leaves before the
     * one offered ahead of it, and only `reorder` reorders. */
    bool jitter_keeps_order;
    double reorder;           /* probability of holding a datagram back by reorder_ms */
    uint32_t reorder_ms;
    double duplicate;         /* probability of delivering a second copy */
    double corrupt;           /* probability of flipping one random bit */
    uint64_t rate_bytes_per_s; /* bottleneck serialisation rate; 0: unlimited */
    uint32_t queue_bytes;     /* bottleneck queue; datagrams that do not fit are dropped; 0: 64 KiB */
    uint32_t max_pending;     /* datagrams held at once before drops; 0: 65536 */
    uint32_t n_partitions;
    tern_netsim_partition partitions[TERN_NETSIM_MAX_PARTITIONS];
} tern_netsim_cfg;

typedef struct tern_netsim_stats {
    uint64_t offered, delivered, bytes_offered, bytes_delivered;
    uint64_t lost_random, lost_burst, lost_partition, lost_queue, lost_overflow;
    uint64_t duplicated, corrupted, reordered;
} tern_netsim_stats;

typedef struct tern_netsim_link tern_netsim_link;

/* Zeroes *cfg: a perfect link with no delay. */
TERN_API void tern_netsim_cfg_default(tern_netsim_cfg *cfg);
/* TERN_ERR_RANGE if a probability is outside 0..1 or partitions overlap
 * badly (start > end), TERN_ERR_INVAL for NULL. */
TERN_API int tern_netsim_cfg_check(const tern_netsim_cfg *cfg);

TERN_API int tern_netsim_link_new(tern_netsim_link **out, const tern_netsim_cfg *cfg,
                                  uint64_t seed, const tern_mem *mem) TERN_WARN_UNUSED;
TERN_API void tern_netsim_link_del(tern_netsim_link *link);

/* Offers a datagram (copied) at time now. Returns 0 whether it is kept or
 * dropped (drops are counted); TERN_ERR_NOMEM; TERN_ERR_INVAL for len 0. */
TERN_API int tern_netsim_link_send(tern_netsim_link *link, const uint8_t *pkt, size_t len,
                                   tern_ms now);
/* Time of the next delivery, or UINT64_MAX if nothing is pending. */
TERN_API tern_ms tern_netsim_link_next(const tern_netsim_link *link);
/* Pops the earliest datagram due at or before now into buf and returns its
 * length; 0 if none is due; TERN_ERR_NOBUFS (datagram kept) if cap is too
 * small. Datagrams due at the same time come out in the order offered. */
TERN_API tern_ssize tern_netsim_link_recv(tern_netsim_link *link, uint8_t *buf, size_t cap,
                                          tern_ms now);
TERN_API void tern_netsim_link_get_stats(const tern_netsim_link *link, tern_netsim_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* TERN_NETSIM_H */
