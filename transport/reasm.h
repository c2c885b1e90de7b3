/* Reassembly of one unreliable channel's fragmented messages: the receive
 * side of the UNRELIABLE and UNRELIABLE_SEQUENCED message channels. Sans-I/O:
 * fragments and the time go in, whole messages come out. Not installed.
 *
 * A message bigger than one datagram travels as `count` fragments (1..255)
 * under one 16-bit per-channel sequence number `seq`; every fragment but the
 * last has the same length (the sender splits at a fixed size), the last is
 * 1..that many bytes. A message of one fragment may be empty.
 *
 * Semantics:
 * - UNRELIABLE (sequenced = false): each message at most once, in any
 *   order. The seqs delivered in the last dedup_window behind the newest
 *   delivered one are remembered, so network duplicates are dropped. A
 *   fragment further behind than that is delivered only if a partial message
 *   for its seq is already held (that proves the message was not delivered);
 *   otherwise it cannot be told from an old duplicate and is dropped as
 *   obsolete.
 * - UNRELIABLE_SEQUENCED (sequenced = true): only messages newer than the
 *   newest delivered; a fragment of any other is obsolete, and when a message
 *   completes, every partial message older than it is dropped (obsolete).
 *
 * Memory: at most max_bytes in message buffers, plus the fixed state
 * allocated by tern_reasm_new() (max_partial slots and, for UNRELIABLE, a
 * bitmap of dedup_window bits rounded up to a power of two). A slot keeps
 * its buffer after its message is done, for the next one, so steady traffic
 * allocates nothing; those spare buffers count towards max_bytes too and are
 * freed first when room is needed. */
#ifndef TERN_TRANSPORT_REASM_H
#define TERN_TRANSPORT_REASM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/common.h"

#define TERN_REASM_MAX_PARTIAL 256U /* max_partial's ceiling: a slot lookup is a linear scan */
#define TERN_REASM_MAX_DEDUP 32768U /* dedup_window's ceiling: half the 16-bit seq space */

typedef struct tern_reasm tern_reasm;

typedef struct tern_reasm_config {
    bool sequenced;        /* UNRELIABLE_SEQUENCED semantics */
    size_t max_message;    /* largest reassembled message (default 64 KiB); bigger -> dropped,
                              counted (too_big); 1..max_bytes */
    size_t max_bytes;      /* bytes of message buffers held at once (default 256 KiB) */
    uint32_t max_partial;  /* partial messages held at once (default 8, at most
                              TERN_REASM_MAX_PARTIAL); the oldest is evicted */
    tern_ms timeout_ms;    /* a partial message older than this is dropped (default 2000, >= 1) */
    uint32_t dedup_window; /* UNRELIABLE: recently delivered seqs remembered to drop network
                              duplicates (default 1024, 1..TERN_REASM_MAX_DEDUP; unused when
                              sequenced) */
} tern_reasm_config;

/* Counters. duplicates, obsolete, malformed, too_big and cap_dropped count
 * fragments refused on arrival; obsolete also counts each partial message
 * dropped because a newer one completed (sequenced). evicted and timed_out
 * count partial messages dropped. A partial dropped because a later fragment
 * showed its group inconsistent or too big is not counted again: that
 * fragment was (malformed or too_big). */
typedef struct tern_reasm_stats {
    uint64_t delivered;   /* whole messages returned by tern_reasm_push() */
    uint64_t fragments;   /* fragments fed (calls that were not TERN_ERR_INVAL) */
    uint64_t duplicates;  /* a fragment already held, or of a message delivered recently */
    uint64_t obsolete;    /* sequenced: not newer than the newest delivered; unordered:
                             behind the dedup window with no partial held */
    uint64_t malformed;   /* count 0, index >= count, an empty fragment of a multi-fragment
                             message, or inconsistent with its group */
    uint64_t too_big;     /* the message would exceed max_message */
    uint64_t evicted;     /* partials dropped to make room (max_partial, max_bytes) */
    uint64_t timed_out;   /* partials dropped by tern_reasm_expire() */
    uint64_t cap_dropped; /* no room without evicting something newer, or out of memory */
    size_t held_bytes;    /* buffer bytes of the partial messages held now */
    uint32_t held_partial;
    size_t spare_bytes; /* buffer bytes kept for reuse; held_bytes + spare_bytes <= max_bytes */
} tern_reasm_stats;

/* Fills *cfg with the defaults above (UNRELIABLE). */
void tern_reasm_config_default(tern_reasm_config *cfg);

/* Creates a reassembler. cfg is copied (NULL: the defaults); mem NULL means
 * malloc/free. Returns 0, TERN_ERR_INVAL (out NULL), TERN_ERR_RANGE (a
 * config value outside the bounds above) or TERN_ERR_NOMEM. */
int tern_reasm_new(tern_reasm **out, const tern_reasm_config *cfg, const tern_mem *mem);

/* Frees everything, including the buffer of the last message returned. NULL is fine. */
void tern_reasm_del(tern_reasm *r);

/* Feeds one fragment of message seq: fragment index of count, len bytes at
 * frag. Returns:
 *   1  a message is complete: *msg and *msg_len describe it. A message of one
 *      fragment points straight into frag (zero copy); otherwise *msg points
 *      into an internal buffer valid until the next push, expire or del.
 *   0  the fragment was kept, or dropped and counted (see tern_reasm_stats);
 *      *msg is NULL and *msg_len 0.
 *   TERN_ERR_INVAL  r, frag, msg or msg_len is NULL; nothing counted.
 * now is the caller's monotonic time; it starts a new partial message's timeout. */
int tern_reasm_push(tern_reasm *r, uint16_t seq, uint8_t index, uint8_t count, const uint8_t *frag,
                    size_t len, tern_ms now, const uint8_t **msg, size_t *msg_len);

/* Drops the partial messages whose timeout has passed (started at or before
 * now - timeout_ms). Returns the earliest time a remaining one will time out,
 * UINT64_MAX if none: call again then. A push may start a new partial, so
 * call this after a push (once the message it returned is used) to learn
 * the new time. r NULL: UINT64_MAX. */
tern_ms tern_reasm_expire(tern_reasm *r, tern_ms now);

/* Copies the counters into *out (zeros if r is NULL). */
void tern_reasm_get_stats(const tern_reasm *r, tern_reasm_stats *out);

#endif /* TERN_TRANSPORT_REASM_H */
