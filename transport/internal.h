/* The transport's shared structures. Only the transport sources include this. */
#ifndef TERN_TRANSPORT_INTERNAL_H
#define TERN_TRANSPORT_INTERNAL_H

#include <stdbool.h>

#include "common/mem.h"
#include "crypto/aead_ctx.h"
#include "tern/transport.h"
#include "transport/map.h"
#include "transport/reasm.h"
#include "transport/udp.h"
#include "transport/wire.h"

#define TERN_PEER_SEEN_WORDS 16U /* 1024 ids ahead of the lowest unseen one */

typedef enum session_state {
    SESSION_CONNECTING = 0, /* client: INIT sent, waiting for RESP */
    SESSION_HALFOPEN,       /* server: RESP sent, waiting for the first DATA */
    SESSION_OPEN,
    SESSION_LINGER,         /* graceful close: waiting for ACKs */
    SESSION_DEAD            /* ended; freed by the endpoint's reaper */
} session_state;

typedef struct write_req {
    struct write_req *next;
    tern_write_cb cb;
    void *arg;
    unsigned nbufs, index;
    size_t offset;      /* into bufs[index] */
    size_t left;        /* bytes not yet in the engine */
    uv_buf_t bufs[];
} write_req;

struct tern_stream {
    tern_session *session;
    tern_stream *next, *prev;       /* the session's list */
    tern_stream *reap_next;
    uint32_t id;
    tern_kcp *kcp;
    uint8_t priority;
    uint16_t weight;
    void *data;

    tern_alloc_cb alloc_cb;
    tern_read_cb read_cb;
    bool reading;

    write_req *wq_head, *wq_tail;
    size_t wq_bytes;                /* bytes of queued writes not in the engine */
    uint64_t sent_total;            /* bytes handed to the engine */
    uint64_t read_total;            /* bytes delivered to read_cb */

    bool shut;                      /* shutdown asked: no more writes */
    bool fin_sent;
    tern_shutdown_cb shutdown_cb;
    void *shutdown_arg;
    bool fin_recv;
    uint64_t fin_size;
    int read_end;                   /* 0, or how the read side ended */
    bool end_told;                  /* read_end reached read_cb (or the app caused it) */

    bool app_closed;                /* the application let go of it */
    bool reaped;                    /* close_cb ran (or will not) */
    bool in_reap;                   /* on ep->reap_streams */
    bool want_drain;                /* a write said WOULDBLOCK: call drain_cb */
    tern_drain_cb drain_cb;
    tern_stream_close_cb close_cb;
};

typedef struct channel {
    tern_channel_config cfg;
    tern_kcp *kcp;         /* reliable kinds */
    tern_reasm *reasm;     /* unreliable kinds */
    uint16_t next_seq;     /* unreliable kinds: the next message's seq */
    tern_ms reasm_wake;    /* when a partial message next times out */
} channel;

struct tern_session {
    tern_endpoint *ep;
    tern_session *next, *prev;     /* the endpoint's list of every session */
    tern_session *dirty_next;      /* the endpoint's list of sessions to flush */
    tern_session *next_dead;       /* the endpoint's reap list */
    bool dirty;
    session_state state;
    bool is_client;
    bool accepted;                 /* server: accept_cb ran */
    bool connect_reported;         /* client: connect_cb ran */
    int end_status;
    uint16_t close_reason;         /* the CLOSE frame to send, if any */
    bool send_close;

    uint32_t local_id, remote_id;
    uint64_t by_key;               /* key in ep->by_key (dedup or compat), 0: none */
    uint32_t compat_conv;
    struct sockaddr_storage peer;
    tern_addr peer_addr;           /* peer as bytes, for cookies and rate limits */
    bool has_peer_key;
    tern_public_key peer_key;

    /* Client: every server address, and the one being tried. */
    struct sockaddr_storage *addrs;
    size_t n_addrs, addr_index;

    tern_noise *hs;
    tern_crypto_session *crypto;
    tern_cookie_client *cookie;
    bool halfopen_held;
    uint8_t hs_msg[TERN_WIRE_INIT_BYTES]; /* the INIT (client) or RESP (server) to repeat */
    size_t hs_len;
    tern_ms hs_started, hs_retry_at, hs_retry_ms, hs_deadline;

    tern_ms last_recv, last_send, linger_deadline;
    uint32_t ping_token;
    tern_ms ping_sent_at;
    bool ping_pending;
    bool pong_due;
    uint32_t pong_token;
    uint32_t srtt_ms;

    const tern_kcp_cc_ops *cc;
    void *cc_state;
    /* Pacing (only under a congestion window): a token bucket filled at
     * 1.25 x cwnd / srtt, so a window leaves spread over the round trip
     * instead of in one burst. */
    uint64_t pace_rate;            /* bytes per second, 0: not pacing */
    int64_t pace_tokens;
    tern_ms pace_last, pace_wake;  /* pace_wake: UINT64_MAX unless blocked */
    uint64_t last_cwnd;
    tern_kcp *control;
    channel channels[TERN_CHANNELS_MAX];
    tern_stream *streams;
    uint32_t n_streams;
    uint32_t next_stream_id;       /* the next id this side opens */
    /* Which stream ids the peer has opened: every id below peer_base, and
     * those marked in peer_seen (bit k: peer_base + 2k). Streams may be
     * first heard of out of order, so "the highest id" is not enough. */
    uint32_t peer_base;
    uint64_t peer_seen[TERN_PEER_SEEN_WORDS];

    size_t heap_index;             /* in ep->heap, SIZE_MAX if not queued */
    tern_ms wake;

    tern_session_callbacks cbs;
    void *data;
    tern_session_stats stats;
    tern_kcp_stats retired;        /* counters of engines already freed */
    uint64_t kcp_retrans_seen, kcp_lost_seen;
};

struct tern_endpoint {
    uv_loop_t *loop;
    tern_endpoint_config cfg;
    tern_mem mem;
    tern_udp *udp;
    uv_timer_t timer;
    uv_check_t check;
    uv_idle_t idle;                /* keeps the loop from blocking while work is queued */
    int handles_open;
    tern_ms timer_at;

    /* Copies of what cfg pointed to. */
    tern_keypair static_key;
    bool has_static;
    tern_public_key server_public;
    bool has_server_public;
    tern_key psk;
    bool has_psk;
    tern_public_key *allowed;
    size_t n_allowed;
    tern_netsim_cfg impair_send, impair_recv;
    char protocol[TERN_NOISE_NAME_MAX];
    tern_public_key mac_key;       /* keys mac1 */

    tern_map by_id;                /* local session id -> session */
    tern_map by_key;               /* (address, id or conv) -> session */
    uint8_t hash_key[16];          /* siphash key for by_key */
    tern_session **heap;
    size_t heap_len, heap_cap;
    tern_session *sessions;
    tern_session *dirty;
    tern_session *reap;            /* dead sessions to free */
    tern_stream *reap_streams;
    uint32_t n_sessions, n_halfopen;

    tern_cookie_server *cookie_server;
    tern_ratelimit *ratelimit;
    tern_accept_cb accept_cb;
    bool listening;
    bool closing;
    void (*close_cb)(tern_endpoint *ep);

    tern_trace_cb trace;
    void *trace_user;
    void *data;
    tern_endpoint_stats stats;

    uint8_t *msgbuf;               /* message_max bytes, for delivering channel messages */
    uint8_t payload[TERN_PACKET_MAX];  /* a flush builds a DATA payload here */
    uint8_t inbuf[TERN_PACKET_MAX];    /* an opened DATA payload */
    uint8_t scratch[TERN_PACKET_MAX];
    /* Every session seals and opens through these (tern_packet_share_aead()):
     * one pair of keyed AEAD contexts for the endpoint, not one per session. */
    tern_aead_ctx seal_aead, open_aead;
};

/* addr.c */
size_t tern_ep_addr_len(const struct sockaddr *sa);

/* endpoint.c */
tern_ms tern_ep_now(const tern_endpoint *ep);
void tern_ep_mark_dirty(tern_session *s);
void tern_ep_reschedule(tern_session *s);
void tern_ep_send_raw(tern_endpoint *ep, const uint8_t *data, size_t len,
                      const struct sockaddr *to);
void tern_ep_trace(tern_endpoint *ep, tern_trace_kind kind, const tern_session *s, int64_t a,
                   int64_t b);
void tern_ep_session_gone(tern_session *s);
void tern_ep_heap_remove(tern_session *s);
void tern_ep_reap(tern_endpoint *ep);
void tern_ep_on_check(uv_check_t *h);
void tern_ep_on_datagram(void *user, const uint8_t *p, size_t len, const struct sockaddr *from,
                         tern_ms now);
void tern_ep_addr_bytes(const struct sockaddr *sa, tern_addr *out);
uint64_t tern_ep_hash_key(const tern_endpoint *ep, const struct sockaddr *addr, uint32_t id,
                          uint8_t kind);

/* handshake.c */
int tern_ep_new_noise(tern_endpoint *ep, bool initiator, tern_noise **out);
size_t tern_ep_noise_init_bytes(const tern_endpoint *ep);
int tern_ep_client_start(tern_session *s, tern_ms now);
int tern_ep_client_send_init(tern_session *s, tern_ms now);
int tern_ep_client_next_address(tern_session *s, tern_ms now);
void tern_ep_handle_init(tern_endpoint *ep, const uint8_t *p, size_t len,
                         const struct sockaddr *from, tern_ms now);
void tern_ep_handle_resp(tern_endpoint *ep, const uint8_t *p, size_t len,
                         const struct sockaddr *from, tern_ms now);
void tern_ep_handle_cookie(tern_endpoint *ep, const uint8_t *p, size_t len,
                           const struct sockaddr *from, tern_ms now);

/* session.c */
int tern_session_create(tern_endpoint *ep, bool is_client, tern_session **out);
void tern_session_destroy(tern_session *s);
void tern_session_input(tern_session *s, const uint8_t *payload, size_t len, tern_ms now);
void tern_session_compat_input(tern_session *s, const uint8_t *pkt, size_t len, tern_ms now);
void tern_session_flush(tern_session *s, tern_ms now);
void tern_session_on_timer(tern_session *s, tern_ms now);
tern_ms tern_session_next_wake(const tern_session *s);
void tern_session_retire_engine(tern_session *s, tern_kcp *kcp);
void tern_session_end(tern_session *s, int status, uint16_t wire_reason, tern_ms now);
void tern_session_established(tern_session *s, tern_ms now);
size_t tern_session_payload_max(const tern_session *s);
int tern_session_new_engine(tern_session *s, uint32_t conv, tern_kcp_mode mode, tern_kcp **out);
int tern_session_new_engine_ex(tern_session *s, uint32_t conv, tern_kcp_mode mode,
                               bool unordered, tern_kcp **out);
tern_stream *tern_session_find_stream(const tern_session *s, uint32_t id);
int tern_session_send_fin(tern_session *s, uint32_t id, uint64_t size, tern_ms now);
int tern_session_send_reset(tern_session *s, uint32_t id, tern_ms now);

/* stream.c */
int tern_stream_create(tern_session *s, uint32_t id, tern_stream **out);
void tern_stream_pump(tern_stream *st, tern_ms now);
void tern_stream_deliver(tern_stream *st, tern_ms now);
void tern_stream_on_fin(tern_stream *st, uint64_t final_size, tern_ms now);
void tern_stream_on_reset(tern_stream *st, int status, tern_ms now);
void tern_stream_check_done(tern_stream *st, tern_ms now);
void tern_stream_free(tern_stream *st);
bool tern_stream_write_side_done(const tern_stream *st);
int tern_session_send_unreliable(tern_session *s, uint32_t ch, const uint8_t *data, size_t len,
                                 tern_ms now);

/* channel.c */
int tern_channels_init(tern_session *s);
void tern_channels_free(tern_session *s);
void tern_channel_deliver(tern_session *s, uint32_t ch, tern_ms now);
int tern_channel_engine_for_input(tern_session *s, uint32_t ch);
tern_ms tern_channels_expire(tern_session *s, tern_ms now);
tern_ms tern_channels_wake(const tern_session *s);
void tern_channel_unrel_input(tern_session *s, const tern_frame *f, tern_ms now);

#endif /* TERN_TRANSPORT_INTERNAL_H */
