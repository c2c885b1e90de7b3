/* tern: the libuv transport. One UDP socket on the application's own loop
 * serves many sessions; each session carries several independent reliable
 * byte streams and a fixed set of message channels.
 *
 *   endpoint ── one socket, one timer, sessions found by session id
 *     session ── one peer: handshake, keys, liveness, congestion control
 *       stream ── a reliable byte stream with its own ARQ engine
 *       channel ── messages: reliable ordered/unordered, unreliable,
 *                  unreliable-sequenced, optional per-message deadline
 *
 * Threading: every call on an endpoint and on what it owns must be made on
 * the thread running its loop. Callbacks run on that loop.
 *
 * Lifetime, libuv style: handles are opaque and owned by tern. A handle stays
 * valid until its close callback has returned (sessions: close_cb in
 * tern_session_callbacks; streams: the cb given to tern_stream_close(), or
 * the stream's close notification when its session ends); tern frees it
 * afterwards. When a call that takes a callback returns an error, that
 * callback is never called.
 *
 * Buffers: data passed to tern_stream_write() stays owned by the caller and
 * must stay valid until its write callback; data passed to
 * tern_session_send() is copied before the call returns. Buffers handed to
 * callbacks are valid only during the callback unless a callback says
 * otherwise. */
#ifndef TERN_TRANSPORT_H
#define TERN_TRANSPORT_H

#include <stdbool.h>
#include <uv.h>

#include "common.h"
#include "crypto.h"
#include "error.h"
#include "kcp.h"
#include "netsim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_endpoint tern_endpoint;
typedef struct tern_session tern_session;
typedef struct tern_stream tern_stream;

/* ---- configuration ---- */

typedef enum tern_security {
    /* Noise handshake (pattern below), AEAD on every packet. The default. */
    TERN_SECURITY_NOISE = 0,
    /* tern's own handshake (session ids, cookies, liveness) with no
     * encryption and no authentication: explicit opt-in for trusted
     * networks and measurements. */
    TERN_SECURITY_PLAINTEXT = 1,
    /* Classic KCP on the wire, nothing else: no handshake, sessions keyed by
     * (address, conv), one stream per session whose id is the conv. Talks
     * to ikcp and kcp-go (without FEC and crypto). Endpoint-wide. */
    TERN_SECURITY_KCP_COMPAT = 2
} tern_security;

typedef enum tern_channel_kind {
    TERN_CHANNEL_RELIABLE_ORDERED = 0,
    TERN_CHANNEL_RELIABLE_UNORDERED = 1,
    TERN_CHANNEL_UNRELIABLE = 2,
    /* A newer message makes older undelivered ones obsolete. */
    TERN_CHANNEL_UNRELIABLE_SEQUENCED = 3
} tern_channel_kind;

#define TERN_CHANNELS_MAX 16
#define TERN_PRIORITY_LEVELS 8

typedef struct tern_channel_config {
    tern_channel_kind kind;
    uint8_t priority; /* 0 (highest) .. TERN_PRIORITY_LEVELS-1 */
    uint16_t weight;  /* share among equal priorities, 1..1000 */
} tern_channel_config;

/* How the Noise handshake is set up. Which keys are needed follows the
 * pattern:
 *   "NK"      client knows server_public; server has static_key.
 *   "IK"      both have static_key; client knows server_public; the
 *             server may restrict clients to allowed_peers.
 *   "IKpsk2"  as IK, plus psk on both sides.
 *   "NNpsk0"  psk only (derive it from a passphrase with tern_psk_derive()).
 *   "XX"      both have static_key, neither knows the other in advance;
 *             use allowed_peers (or the handshake callback) to decide.
 * All pointers are copied when the endpoint is created. */
typedef struct tern_noise_setup {
    const char *pattern;            /* NULL: "NK" */
    const char *cipher;             /* "ChaChaPoly" (NULL) or "AESGCM" */
    const tern_keypair *static_key;
    const tern_public_key *server_public;
    const tern_key *psk;
    const tern_public_key *allowed_peers; /* server: NULL accepts any */
    size_t n_allowed_peers;
} tern_noise_setup;

typedef struct tern_endpoint_config {
    tern_security security;
    tern_noise_setup noise;
    /* Which library seals and opens DATA packets (AUTO: OpenSSL when tern was
     * built with it); UNSUPPORTED if this build lacks the one named. */
    tern_aead_impl aead_impl;

    /* The template for every stream's and reliable channel's engine: the
     * preset, windows, RTO bounds, queue bound and so on. conv, mode and mtu
     * are set by the session. cc names the session's congestion controller
     * ("none" or "reno"); it is shared by all engines of a session. */
    tern_kcp_settings kcp;
    uint32_t mtu;                 /* largest UDP payload sent (default 1400) */

    uint32_t max_sessions;        /* established + half-open (default 4096) */
    uint32_t max_streams;         /* open streams per session (default 256) */
    size_t stream_write_max;      /* bytes queued by tern_stream_write() per stream
                                   * before it says WOULDBLOCK (default 4 MiB) */
    size_t message_max;           /* largest channel message (default 64 KiB) */
    size_t reassembly_max;        /* bytes in partial unreliable messages per
                                   * channel (default 256 KiB) */
    uint32_t n_channels;          /* 0..TERN_CHANNELS_MAX; both peers must agree */
    tern_channel_config channels[TERN_CHANNELS_MAX];

    uint32_t handshake_timeout_ms; /* per server address when connecting (default 5000) */
    uint32_t handshake_retry_ms;   /* first retransmission of a handshake (default 500) */
    uint32_t keepalive_ms;         /* ping an idle session (default 5000; 0: never) */
    uint32_t idle_timeout_ms;      /* nothing heard for this long ends it (default 30000) */
    uint32_t linger_ms;            /* graceful close waits this long for ACKs (default 5000) */

    /* Denial-of-service limits for the server side (see crypto_dos.h). */
    tern_ratelimit_config ratelimit;

    /* Socket. sndbuf/rcvbuf: bytes (default 4 MiB, capped by the kernel's
     * net.core.[rw]mem_max), 0: leave the OS default. */
    int sndbuf, rcvbuf;
    int dscp;                     /* 0..63, -1: leave (default -1) */
    bool v6only;

    /* Built-in impairment for trying a game under bad networks (off when
     * NULL; copied). Seeded by impair_seed. */
    const tern_netsim_cfg *impair_send;
    const tern_netsim_cfg *impair_recv;
    uint64_t impair_seed;

    const tern_mem *mem;          /* NULL: malloc; must outlive the endpoint */
} tern_endpoint_config;

/* Defaults: Noise NK with ChaChaPoly (keys still to be set), the kcp
 * defaults with the "fast3" preset and no congestion window (as classic
 * KCP and kcptun: the send window is the limit), the limits listed above, no
 * channels. */
TERN_API void tern_endpoint_config_default(tern_endpoint_config *cfg);

/* ---- events ---- */

/* Why a session ended (the status of close_cb): 0 for a local close that
 * completed, or one of TERN_ERR_TIMEDOUT (idle timeout or handshake
 * timeout), TERN_ERR_DEADLINK (data unacknowledged too long), TERN_ERR_EOF
 * (the peer closed gracefully), TERN_ERR_RESET (the peer aborted, timed out
 * or failed), TERN_ERR_CANCELED (aborted locally or the endpoint closed),
 * TERN_ERR_DECRYPT / TERN_ERR_EXPIRED (keys). */

typedef struct tern_session_callbacks {
    /* Client side: the handshake finished (status 0) or failed (status <
     * 0, and close_cb follows). */
    void (*connect_cb)(tern_session *s, int status);
    /* The peer opened a stream. The application may start reading it now;
     * it is closed by tern_stream_close() like any other. Optional: without
     * it, peer-opened streams are reset. */
    void (*stream_cb)(tern_session *s, tern_stream *st);
    /* A message on a channel; data valid during the call. */
    void (*message_cb)(tern_session *s, uint32_t channel, const uint8_t *data, size_t len);
    /* The session is gone (status above); it is freed after this returns. */
    void (*close_cb)(tern_session *s, int status);
} tern_session_callbacks;

/* A server: a new session finished its handshake. Set its callbacks with
 * tern_session_set_callbacks() inside this call (or close it). */
typedef void (*tern_accept_cb)(tern_endpoint *ep, tern_session *s);

/* Structured events for logs and qlog-style traces. */
typedef enum tern_trace_kind {
    TERN_TRACE_SESSION_OPENED = 0, /* handshake started (a = 1 if we are the client) */
    TERN_TRACE_HANDSHAKE_DONE,     /* a = milliseconds it took */
    TERN_TRACE_RETRANSMIT,         /* a = stream id, b = segments resent this tick */
    TERN_TRACE_LOSS,               /* a = stream id, b = segments declared lost */
    TERN_TRACE_CWND,               /* a = new cwnd bytes, b = ssthresh */
    TERN_TRACE_PATH_CHANGE,        /* the peer's address changed */
    TERN_TRACE_STREAM_OPENED,      /* a = stream id */
    TERN_TRACE_STREAM_CLOSED,      /* a = stream id, b = status */
    TERN_TRACE_CLOSED              /* a = status */
} tern_trace_kind;

typedef struct tern_trace_event {
    tern_trace_kind kind;
    tern_ms time;
    uint32_t session_id;       /* the local id, 0 if none yet */
    int64_t a, b;
    const struct sockaddr *peer; /* may be NULL */
} tern_trace_event;

typedef void (*tern_trace_cb)(tern_endpoint *ep, const tern_trace_event *ev, void *user);

/* The event's name ("session_opened", ...). */
TERN_API const char *tern_trace_kind_name(tern_trace_kind kind);
/* Writes the event as one JSON object and a newline into buf (NUL
 * terminated); returns its length or TERN_ERR_NOBUFS. */
TERN_API tern_ssize tern_trace_format_json(const tern_trace_event *ev, char *buf, size_t cap);

/* ---- endpoint ---- */

/* Creates an endpoint with a UDP socket bound to bind_addr (port 0: any) on
 * loop. cfg is copied. TERN_ERR_INVAL / RANGE for a bad config, BADKEY,
 * NOMEM, IO (the socket could not be bound). */
TERN_API int tern_endpoint_new(tern_endpoint **out, uv_loop_t *loop,
                               const struct sockaddr *bind_addr,
                               const tern_endpoint_config *cfg) TERN_WARN_UNUSED;
/* Closes every session (abort, the peer is told), then the socket and the
 * timer; cb runs once all of it is done, then the endpoint is freed. cb may
 * be NULL. Calling it twice is TERN_ERR_CLOSED. */
TERN_API int tern_endpoint_close(tern_endpoint *ep, void (*cb)(tern_endpoint *ep));
TERN_API int tern_endpoint_local_addr(const tern_endpoint *ep, struct sockaddr_storage *out);
TERN_API void tern_endpoint_set_data(tern_endpoint *ep, void *data);
TERN_API void *tern_endpoint_get_data(const tern_endpoint *ep);
TERN_API void tern_endpoint_set_trace(tern_endpoint *ep, tern_trace_cb cb, void *user);

/* Accepts sessions from now on. TERN_ERR_STATE if already listening. */
TERN_API int tern_endpoint_listen(tern_endpoint *ep, tern_accept_cb cb);

/* Starts a handshake with the first of n server addresses, moving to the
 * next when one does not answer within handshake_timeout_ms. *out is valid
 * at once (streams may be opened and messages queued before the handshake
 * completes); cbs->connect_cb reports the outcome, then cbs->close_cb when
 * it ends. Compatibility mode: conv is the stream's id, there is no
 * handshake, and the session's one stream is handed to stream_cb on the
 * next loop iteration, just before connect_cb (a server gets it through
 * stream_cb after accept_cb). */
TERN_API int tern_endpoint_connect(tern_endpoint *ep, const struct sockaddr *const *addrs,
                                   size_t n, uint32_t conv, const tern_session_callbacks *cbs,
                                   tern_session **out) TERN_WARN_UNUSED;

typedef struct tern_endpoint_stats {
    uint64_t dgrams_in, dgrams_out, bytes_in, bytes_out;
    uint64_t sessions_accepted, sessions_connected, sessions_refused, sessions_timed_out;
    uint64_t sessions_closed;
    uint32_t sessions_now, halfopen_now;
    /* datagrams dropped, by reason */
    uint64_t drop_malformed;      /* unknown type, too short, bad frame */
    uint64_t drop_unknown_session;
    uint64_t drop_auth;           /* failed AEAD, replay, bad mac1 */
    uint64_t drop_ratelimited;
    uint64_t drop_limit;          /* session or half-open limit */
    uint64_t drop_peer_refused;   /* not on the allow-list, handshake failed */
    uint64_t cookies_sent;
    uint64_t send_failed;         /* the socket refused a datagram */
    uint64_t bytes_sent_unvalidated; /* to addresses not yet proven */
    uint64_t bytes_recv_unvalidated; /* from them */
    /* Responder handshakes started (with Noise: the DH) for initiations
     * whose cookie was not checked (the server was not under load), and
     * for those that brought a valid one. */
    uint64_t handshakes_unproven;
    uint64_t handshakes_cookie;
} tern_endpoint_stats;

TERN_API void tern_endpoint_get_stats(const tern_endpoint *ep, tern_endpoint_stats *out);

/* ---- session ---- */

TERN_API void tern_session_set_callbacks(tern_session *s, const tern_session_callbacks *cbs);
TERN_API void tern_session_set_data(tern_session *s, void *data);
TERN_API void *tern_session_get_data(const tern_session *s);
TERN_API tern_endpoint *tern_session_endpoint(const tern_session *s);
/* The peer's current address (it may change: NAT rebinding). */
TERN_API int tern_session_peer_addr(const tern_session *s, struct sockaddr_storage *out);
/* The peer's static public key (Noise patterns that have one). NOTFOUND. */
TERN_API int tern_session_peer_key(const tern_session *s, tern_public_key *out);
TERN_API uint32_t tern_session_id(const tern_session *s);

/* Sends a message on a channel (copied). Reliable channels queue it
 * (WOULDBLOCK past the engine's queue bound); unreliable ones send it in
 * this loop iteration or never. deadline_ms: for reliable channels, drop
 * the message instead of retransmitting it once this many ms have passed
 * (0: no deadline). TERN_ERR_MSGSIZE, RANGE (no such channel), CLOSED,
 * STATE (compatibility mode has no channels). */
TERN_API int tern_session_send(tern_session *s, uint32_t channel, const void *data, size_t len,
                               uint32_t deadline_ms);

/* Graceful close: stops accepting writes, waits (at most linger_ms) until
 * every stream's queued data is acknowledged, tells the peer, then calls
 * close_cb with 0. STATE if already closing. */
TERN_API int tern_session_close(tern_session *s);
/* Drops everything now, tells the peer, close_cb(TERN_ERR_CANCELED) on
 * the next loop iteration. */
TERN_API int tern_session_abort(tern_session *s);

typedef struct tern_session_stats {
    uint64_t dgrams_in, dgrams_out, bytes_in, bytes_out;
    uint64_t drop_auth, drop_malformed, drop_replay;
    uint64_t msgs_sent, msgs_recv;
    uint64_t msgs_expired;        /* reliable messages abandoned at their deadline
                                   * (also kcp.expired_msgs) */
    uint64_t msgs_obsolete;       /* unreliable-sequenced messages superseded */
    uint64_t pings_sent, path_changes;
    uint32_t streams_open;
    uint32_t srtt_ms;             /* from pings and the engines, 0 until known */
    uint64_t pacing_rate;         /* bytes/s the session paces at under a congestion
                                   * window (1.25 cwnd / srtt); 0: not pacing */
    /* Every engine's counters, summed, freed engines included; gauges over
     * live engines: srtt/rttvar/rto the smallest RTT's, in-flight and queue
     * sizes summed, cwnd/ssthresh the session's controller, rmt_wnd the
     * largest. */
    tern_kcp_stats kcp;
} tern_session_stats;

TERN_API void tern_session_get_stats(const tern_session *s, tern_session_stats *out);

/* ---- streams ---- */

/* libuv's shapes: alloc_cb gives a buffer of at most suggested bytes (base
 * NULL or len 0: no memory, reading pauses until read_start again); read_cb
 * gets nread > 0 bytes in buf, or TERN_ERR_EOF (the peer shut down its
 * side), TERN_ERR_RESET (the peer reset the stream), or the session's end
 * status; after a negative nread the callback is not called again. Every
 * buffer alloc_cb gave comes back through read_cb, with data or with the
 * status that ends reading. */
typedef void (*tern_alloc_cb)(tern_stream *st, size_t suggested, uv_buf_t *buf);
typedef void (*tern_read_cb)(tern_stream *st, ssize_t nread, const uv_buf_t *buf);
/* status 0 once every byte was handed to the engine (not yet acknowledged),
 * or a negative code if the stream or session ended first. */
typedef void (*tern_write_cb)(tern_stream *st, int status, void *arg);
typedef void (*tern_shutdown_cb)(tern_stream *st, int status, void *arg);
typedef void (*tern_stream_close_cb)(tern_stream *st);
/* The write queue went down to half of stream_write_max after a write said
 * WOULDBLOCK: write again. */
typedef void (*tern_drain_cb)(tern_stream *st);

/* Opens a stream to the peer. LIMIT (max_streams), STATE (closing,
 * compatibility mode). The peer learns of it with its first byte. */
TERN_API int tern_stream_open(tern_session *s, tern_stream **out) TERN_WARN_UNUSED;
TERN_API uint32_t tern_stream_id(const tern_stream *st);
TERN_API tern_session *tern_stream_session(const tern_stream *st);
TERN_API void tern_stream_set_data(tern_stream *st, void *data);
TERN_API void *tern_stream_get_data(const tern_stream *st);
/* priority 0 (highest) .. TERN_PRIORITY_LEVELS-1; weight 1..1000. */
TERN_API int tern_stream_set_priority(tern_stream *st, uint8_t priority, uint16_t weight);

/* An end that came while reading was stopped (the peer's reset, say) is
 * kept: the next read_start reports it to read_cb from the loop. CLOSED
 * once the end was reported, after the application's own reset, or after
 * close. */
TERN_API int tern_stream_read_start(tern_stream *st, tern_alloc_cb alloc_cb, tern_read_cb read_cb);
TERN_API int tern_stream_read_stop(tern_stream *st);
/* Queues the bytes of bufs (not copied: they must stay valid until cb).
 * WOULDBLOCK if the stream already holds stream_write_max bytes (nothing
 * queued, cb not called), STATE after shutdown, CLOSED. */
TERN_API int tern_stream_write(tern_stream *st, const uv_buf_t bufs[], unsigned nbufs,
                               tern_write_cb cb, void *arg);
/* Called once each time the queue drains after a WOULDBLOCK (NULL: none). */
TERN_API int tern_stream_set_drain_cb(tern_stream *st, tern_drain_cb cb);
/* Bytes written and not yet acknowledged by the peer: the backpressure
 * gauge. */
TERN_API size_t tern_stream_write_queue_size(const tern_stream *st);
/* After queued writes: the peer reads TERN_ERR_EOF after the last byte. cb
 * once the end-of-stream is acknowledged. */
TERN_API int tern_stream_shutdown(tern_stream *st, tern_shutdown_cb cb, void *arg);
/* Resets the stream: queued data is dropped, the peer reads
 * TERN_ERR_RESET, pending write callbacks get TERN_ERR_CANCELED. */
TERN_API int tern_stream_reset(tern_stream *st);
/* Stops reading, resets the stream unless it already ended both ways, and
 * frees it after cb (on a later loop iteration). */
TERN_API int tern_stream_close(tern_stream *st, tern_stream_close_cb cb);

/* ---- addresses ---- */

/* Numeric "1.2.3.4:80", "[::1]:80" or ":80" (IPv4 wildcard) into *out.
 * TERN_ERR_INVAL. No name resolution. */
TERN_API int tern_sockaddr_parse(const char *text, struct sockaddr_storage *out);

#ifdef __cplusplus
}
#endif
#endif /* TERN_TRANSPORT_H */
