/* tern: the ARQ engine (classic-KCP wire format), sans-I/O.
 *
 * The engine never touches a socket, a clock or a random source. The caller:
 *   1. feeds every received datagram to tern_kcp_read_pkt(),
 *   2. moves application data with tern_kcp_send() / tern_kcp_recv(),
 *   3. calls tern_kcp_write_pkt() until it returns 0 and sends each datagram,
 *   4. sleeps until tern_kcp_get_expiry(), then calls tern_kcp_handle_expiry()
 *      and goes back to step 3.
 * Every call takes `now`, a monotonic time in milliseconds (tern_ms), which
 * must never go backwards across calls on one engine.
 *
 * An engine is not thread-safe; use one engine from one thread at a time.
 * The wire format is documented byte by byte in docs/PROTOCOL.md. */
#ifndef TERN_KCP_H
#define TERN_KCP_H

#include <stdbool.h>

#include "common.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The classic KCP segment header: conv(4) cmd(1) frg(1) wnd(2) ts(4) sn(4)
 * una(4) len(4), little-endian. */
#define TERN_KCP_OVERHEAD 24
/* A message may span at most this many segments (frg is one byte). */
#define TERN_KCP_MAX_FRAGMENTS 255
#define TERN_KCP_MTU_MIN 50
#define TERN_KCP_MTU_MAX 65507
#define TERN_KCP_WND_MAX 32768

typedef struct tern_kcp tern_kcp;

typedef enum tern_kcp_mode {
    /* Each tern_kcp_send() is delivered as one tern_kcp_recv() message. */
    TERN_KCP_MODE_MESSAGE = 0,
    /* A byte stream: sends are coalesced into full segments, reads return
     * whatever bytes are available. frg is always 0 on the wire. */
    TERN_KCP_MODE_STREAM = 1
} tern_kcp_mode;

typedef enum tern_kcp_backoff {
    TERN_KCP_BACKOFF_X2 = 0,  /* each timeout doubles the segment's RTO */
    TERN_KCP_BACKOFF_X1_5 = 1 /* each timeout multiplies it by 1.5 */
} tern_kcp_backoff;

typedef enum tern_kcp_preset {
    /* kcptun's modes: nodelay/interval/resend/nc = 0/40/2/1, 0/30/2/1,
     * 1/20/2/1, 1/10/2/1. */
    TERN_KCP_PRESET_NORMAL = 0,
    TERN_KCP_PRESET_FAST,
    TERN_KCP_PRESET_FAST2,
    TERN_KCP_PRESET_FAST3,
    /* Lowest latency: 5 ms granularity and ACK delay, fast retransmit after
     * one skip, early retransmit, more bundling. Costs more datagrams. */
    TERN_KCP_PRESET_TURBO
} tern_kcp_preset;

typedef enum tern_kcp_loss_kind {
    TERN_KCP_LOSS_FAST = 0,    /* detected by skipping ACKs or early retransmit */
    TERN_KCP_LOSS_TIMEOUT = 1  /* detected by the retransmission timer */
} tern_kcp_loss_kind;

/* Congestion control. The engine asks the controller whether bytes may enter
 * the network and tells it about sends, ACKs and losses. Several engines may
 * share one controller state (one per network path, so that streams of one
 * session share the path fairly), which is why the state is passed
 * separately (tern_kcp_settings.cc_state) and why the controller, not the
 * engine, keeps the count of bytes in flight: every engine sharing it
 * reports into the same count. */
typedef struct tern_kcp_cc_ops {
    const char *name;
    size_t state_size;
    /* Called once when an engine allocates its own state. mss in bytes. */
    void (*init)(void *state, uint32_t mss, tern_ms now);
    /* May `bytes` more be put in flight now? */
    bool (*can_send)(const void *state, uint64_t bytes);
    /* bytes were put in flight (a first transmission or a resend). */
    void (*on_sent)(void *state, uint64_t bytes, tern_ms now);
    /* acked: bytes newly acknowledged; released: how many of those were
     * still in flight (a segment declared lost left the flight then);
     * sent_at: when the newest acknowledged transmission was sent. */
    void (*on_ack)(void *state, uint64_t acked, uint64_t released, tern_ms sent_at, tern_ms now);
    /* A segment sent at sent_at was declared lost; its bytes leave the
     * flight. */
    void (*on_loss)(void *state, tern_kcp_loss_kind kind, uint64_t bytes, tern_ms sent_at,
                    tern_ms now);
    /* bytes leave the flight unacknowledged and not lost: the engine that
     * sent them is being deleted. */
    void (*on_discard)(void *state, uint64_t bytes);
    /* For stats: the window in bytes and the slow-start threshold,
     * UINT64_MAX when there is none. */
    uint64_t (*cwnd)(const void *state);
    uint64_t (*ssthresh)(const void *state);
} tern_kcp_cc_ops;

/* "none" (no congestion window, KCP's nc=1) or "reno" (NewReno-style:
 * byte-counted slow start and congestion avoidance, halve once per loss
 * episode on fast loss, one MSS after a timeout). NULL if unknown. */
TERN_API const tern_kcp_cc_ops *tern_kcp_cc_find(const char *name);

typedef struct tern_kcp_settings {
    uint32_t conv;            /* conversation id; both peers must agree */
    tern_kcp_mode mode;
    uint32_t mtu;             /* largest datagram written, header included */
    uint32_t snd_wnd;         /* segments in flight at most */
    uint32_t rcv_wnd;         /* segments: at most this many deliverable and unread, plus
                               * this many held out of order (as classic KCP) */
    uint32_t interval_ms;     /* clock granularity: the least margin the RTO keeps above
                               * the smoothed RTT (KCP's interval) */
    uint32_t ack_delay_ms;    /* the longest a lone ACK waits for data to ride on */
    uint32_t rto_initial_ms;  /* RTO before the first RTT sample */
    uint32_t rto_min_ms;      /* floor of the computed RTO */
    uint32_t rto_max_ms;      /* ceiling of the RTO, backoff included */
    tern_kcp_backoff backoff;
    uint32_t fast_resend;     /* skipping ACKs that trigger fast retransmit; 0: off */
    uint32_t fast_limit;      /* transmissions after which fast retransmit stops; 0: no limit */
    bool early_retransmit;    /* time-based loss detection (RACK-like) */
    bool ack_nodelay;         /* send ACKs at once, ignoring ack_delay_ms */
    /* Redundant data bundling for thin streams: while few segments are in
     * flight, the spare room of a datagram that is sent anyway carries
     * copies of up to this many payload bytes of unacknowledged segments, so
     * that one lost datagram is repaired by the next instead of a round
     * trip later. Costs bytes, never datagrams. 0: off. */
    uint32_t bundle_bytes;
    uint32_t dead_link;       /* transmissions of one segment that declare the link dead */
    uint32_t probe_min_ms;    /* first zero-window probe delay (then x1.5) */
    uint32_t probe_max_ms;
    size_t snd_queue_max;     /* memory held by unsent + unacked segments before send
                               * says WOULDBLOCK (segment buffers and headers counted) */
    const tern_kcp_cc_ops *cc; /* NULL: "none" */
    /* Shared controller state, initialised and owned by the caller. NULL: the
     * engine allocates and initialises its own. */
    void *cc_state;
    /* Message mode only (TERN_ERR_INVAL in stream mode). Reliable-unordered
     * delivery: tern_kcp_recv() returns a message as soon as all of its
     * fragments are in and the message before it is known to have ended,
     * without waiting for earlier messages; each message exactly once.
     * Receiver-side only: what goes on the wire (ACKs, una, wnd) is the same
     * as without it, so the peer needs nothing. Because a classic segment
     * says how many fragments follow it but not how many came before, a
     * message directly after a gap waits until the segment before it (or a
     * FORWARD past the gap) arrives; every later message goes ahead. The
     * receive window is accounted as without it: wnd counts the sequence
     * numbers from the oldest one not yet read to rcv_nxt, and a message
     * read early above rcv_nxt holds its place (no memory) until rcv_nxt
     * passes it. See docs/PROTOCOL.md, "Native extensions". */
    bool unordered;
    /* Message mode only. Enables the FORWARD command (cmd 85, not classic
     * KCP) that tern_kcp_send_deadline() needs: the sender tells the
     * receiver which sequence numbers it abandoned. Both peers must enable
     * it; an engine without it drops a datagram holding a FORWARD as
     * malformed, like any unknown command. */
    bool forward;
} tern_kcp_settings;

/* Fills *s with the "fast3" preset, conv 0, message mode, mtu 1400, windows
 * 128/256, 4 MiB send queue, RTO 200 ms initial and 60 s maximum, dead link
 * after 20 transmissions, no congestion control, ordered delivery and no
 * FORWARD (the classic wire format). */
TERN_API void tern_kcp_settings_default(tern_kcp_settings *s);
/* Applies a preset: interval, ack_delay, rto_min, backoff, fast_resend,
 * early_retransmit and bundle_bytes; clears ack_nodelay and raises
 * rto_initial to rto_min if below it. Leaves conv, mode, mtu, windows and
 * bounds as they are. TERN_ERR_INVAL for an unknown preset. */
TERN_API int tern_kcp_settings_preset(tern_kcp_settings *s, tern_kcp_preset preset);
/* "normal", "fast", "fast2", "fast3", "turbo" -> preset; TERN_ERR_NOTFOUND. */
TERN_API int tern_kcp_preset_from_name(const char *name, tern_kcp_preset *out);
/* Sets one knob by name from text, as config files and flags do: "preset",
 * "conv", "mode" (message|stream), "mtu", "snd_wnd", "rcv_wnd", "interval",
 * "rto_initial", "rto_min", "rto_max", "backoff" (x2|x1.5), "fast_resend",
 * "fast_limit", "early_retransmit", "ack_nodelay" (0|1|true|false),
 * "ack_delay", "bundle_bytes",
 * "dead_link", "probe_min", "probe_max", "snd_queue_max", "cc" (none|reno),
 * "unordered" and "forward" (booleans).
 * Returns TERN_ERR_NOTFOUND for an unknown name, TERN_ERR_INVAL for a value
 * that does not parse, TERN_ERR_RANGE for one outside that knob's own range;
 * *s is unchanged on error. Relations between knobs (rto_min <= rto_initial
 * <= rto_max, ...) are checked by tern_kcp_settings_check() and
 * tern_kcp_new(), so knobs may be set in any order. */
TERN_API int tern_kcp_settings_set(tern_kcp_settings *s, const char *name, const char *value);
/* 0 if every field is within range, else TERN_ERR_RANGE / TERN_ERR_INVAL. */
TERN_API int tern_kcp_settings_check(const tern_kcp_settings *s);

typedef struct tern_kcp_callbacks {
    /* Optional. Called once when a segment reaches settings.dead_link
     * transmissions, or that many window probes go unanswered; afterwards
     * send and write_pkt return TERN_ERR_DEADLINK. */
    void (*dead_link)(tern_kcp *kcp, void *user_data);
} tern_kcp_callbacks;

/* Creates an engine. settings and callbacks are copied; mem (NULL: malloc)
 * must outlive the engine, as must settings->cc_state if set.
 * TERN_ERR_RANGE/INVAL for bad settings, TERN_ERR_NOMEM. */
TERN_API int tern_kcp_new(tern_kcp **out, const tern_kcp_settings *settings,
                          const tern_kcp_callbacks *callbacks, void *user_data,
                          const tern_mem *mem, tern_ms now) TERN_WARN_UNUSED;
/* Frees the engine and everything queued in it. NULL is allowed. */
TERN_API void tern_kcp_del(tern_kcp *kcp);
TERN_API void *tern_kcp_user_data(const tern_kcp *kcp);

/* Queues data (copied). Message mode: one message (possibly empty), at most
 * tern_kcp_max_message() bytes, else TERN_ERR_MSGSIZE and nothing is queued.
 * Stream mode: all bytes or none; an empty send does nothing. Returns 0,
 * TERN_ERR_WOULDBLOCK if the send side would hold more than snd_queue_max
 * bytes of memory (segments with their headers; nothing queued),
 * TERN_ERR_NOMEM (nothing queued), or TERN_ERR_DEADLINK once dead. */
TERN_API int tern_kcp_send(tern_kcp *kcp, const void *data, size_t len, tern_ms now);
/* As tern_kcp_send() in message mode, but the message is abandoned if it is
 * not wholly acknowledged by `deadline` (absolute, on the clock of `now`;
 * UINT64_MAX: never, exactly tern_kcp_send(), in either mode). An abandoned
 * message is never sent or resent again and its memory is released at once
 * (stats.expired_msgs, expired_segs); the receiver is told to skip it with a
 * FORWARD, and never delivers part of it (it may still deliver all of it if
 * every fragment had already arrived). Expiry runs in
 * tern_kcp_handle_expiry() and in tern_kcp_write_pkt(), and
 * tern_kcp_get_expiry() accounts for the earliest deadline, so a deadline
 * already past expires the message before anything of it is sent.
 * Deadlines need not be in send order. Returns what tern_kcp_send() returns
 * (TERN_ERR_WOULDBLOCK also counts a small per-message record against
 * snd_queue_max), or TERN_ERR_UNSUPPORTED for a finite deadline in stream
 * mode or without settings.forward. */
TERN_API int tern_kcp_send_deadline(tern_kcp *kcp, const void *data, size_t len, tern_ms deadline,
                                    tern_ms now);
TERN_API size_t tern_kcp_max_message(const tern_kcp *kcp);

/* Copies received data into buf. Message mode: one whole message, or
 * TERN_ERR_NOBUFS (nothing consumed) if cap is smaller than it. Stream mode:
 * up to cap bytes. Returns the byte count, or TERN_ERR_AGAIN if nothing is
 * ready. */
TERN_API tern_ssize tern_kcp_recv(tern_kcp *kcp, void *buf, size_t cap, tern_ms now);
/* Size of the next message (message mode) or of the bytes ready (stream
 * mode), or TERN_ERR_AGAIN. */
TERN_API tern_ssize tern_kcp_peek_size(const tern_kcp *kcp);

/* Processes one received datagram (not retained). The whole datagram is
 * validated first: on TERN_ERR_MALFORMED (shorter than a header, a length
 * past the end, bytes left over, an unknown command (FORWARD counts as one
 * unless settings.forward), a payload on a non-PUSH segment) or
 * TERN_ERR_CONV (a segment for another conversation) nothing changes but a
 * counter (and the engine's clock, which follows now). Data the engine
 * cannot hold (out of window, out of memory) is dropped, counted where it
 * says so in the stats, and not acknowledged. */
TERN_API int tern_kcp_read_pkt(tern_kcp *kcp, const uint8_t *pkt, size_t len, tern_ms now);

/* Writes at most one datagram (ACKs, probes, a FORWARD, new and
 * retransmitted data, several segments packed up to min(cap, mtu)) into
 * dest and returns its length; 0 when nothing is due now. cap must be at
 * least mtu, else TERN_ERR_NOBUFS. TERN_ERR_DEADLINK once dead. */
TERN_API tern_ssize tern_kcp_write_pkt(tern_kcp *kcp, uint8_t *dest, size_t cap, tern_ms now);

/* When the engine next needs handle_expiry + write_pkt; UINT64_MAX if never
 * (until new input or data). May be <= now, meaning "now". */
TERN_API tern_ms tern_kcp_get_expiry(const tern_kcp *kcp);
/* Runs the timers that are due (message deadlines, retransmission and
 * early-retransmit deadlines, window probes). Returns 0, or
 * TERN_ERR_DEADLINK. Call write_pkt afterwards: it also sends ACKs whose
 * delay has run out. */
TERN_API int tern_kcp_handle_expiry(tern_kcp *kcp, tern_ms now);

/* True once the link was declared dead. */
TERN_API bool tern_kcp_is_dead(const tern_kcp *kcp);
/* Payload bytes still waiting to be sent or acknowledged. */
TERN_API size_t tern_kcp_unacked_bytes(const tern_kcp *kcp);
/* Segments still waiting to be sent or acknowledged (an empty message is a
 * segment with no bytes): 0 means everything sent was acknowledged. */
TERN_API size_t tern_kcp_unacked_segments(const tern_kcp *kcp);

typedef struct tern_kcp_stats {
    uint64_t datagrams_sent, datagrams_recv;
    uint64_t segs_sent, segs_recv;          /* every segment, any command */
    uint64_t bytes_sent, bytes_recv;        /* payload bytes of PUSH segments */
    uint64_t acks_sent, acks_recv;
    uint64_t probes_sent;                   /* WASK and WINS */
    uint64_t retrans_timeout, retrans_fast, retrans_early;
    uint64_t lost;                          /* segments declared lost, any detector */
    uint64_t spurious;                      /* fast/early retransmissions proven needless */
    uint64_t bundled;                       /* redundant copies sent (bundle_bytes) */
    uint64_t dup_segs;                      /* PUSH segments received twice */
    uint64_t out_of_window;                 /* PUSH segments beyond the receive window */
    uint64_t malformed;                     /* datagrams dropped as malformed */
    uint64_t oversize_msgs;                 /* messages dropped for not fitting rcv_wnd */
    uint64_t conv_mismatch;                 /* datagrams dropped for another conv */
    uint64_t msgs_sent, msgs_recv;
    uint64_t expired_msgs;                  /* messages abandoned at their deadline */
    uint64_t expired_segs;                  /* their segments released unacknowledged */
    uint64_t forwards_sent, forwards_recv;  /* FORWARD segments */
    uint64_t forwarded_skipped;             /* sequence numbers skipped, never received */
    uint64_t forwarded_dropped;             /* received fragments of abandoned messages dropped */
    uint32_t srtt_ms, rttvar_ms, rto_ms;    /* srtt 0 until the first sample */
    uint64_t cwnd_bytes, ssthresh_bytes;    /* UINT64_MAX if unlimited */
    uint64_t in_flight_bytes;
    uint32_t in_flight_segs;
    uint32_t resend_segs;                   /* declared lost, waiting to be sent again */
    uint32_t snd_queue_segs;                /* waiting for the window */
    size_t snd_queue_bytes;                 /* unsent + unacked */
    uint32_t rcv_buf_segs;                  /* received, not yet deliverable */
    uint32_t rcv_queue_segs;                /* deliverable, not yet read */
    uint32_t rmt_wnd;                       /* the peer's last advertised window */
} tern_kcp_stats;

TERN_API void tern_kcp_get_stats(const tern_kcp *kcp, tern_kcp_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* TERN_KCP_H */
