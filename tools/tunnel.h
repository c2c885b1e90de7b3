/* tern-tunnel's insides, shared by tools/tunnel.c (the program: options,
 * keys, sessions, stats, signals) and tools/tunnel_pipe.c (one TCP
 * connection spliced to one tern stream).
 *
 * Each TCP connection is one stream, so a loss on one never stalls another.
 * The client's first byte on every stream is TERN_TUNNEL_STREAM_HELLO: a
 * stream is announced to the peer only by its first byte, and a protocol in
 * which the server speaks first would otherwise never reach the target. */
#ifndef TERN_TOOLS_TUNNEL_H
#define TERN_TOOLS_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "tern/tern.h"
#include "tools/tunnel_config.h"

#define TERN_TUNNEL_PROG "tern-tunnel"
#define TERN_TUNNEL_STREAM_HELLO 0x01

/* Backpressure marks, per connection and direction: reading the source
 * stops at HIGH bytes queued toward the sink and starts again below LOW. */
#define TERN_TUNNEL_QUEUE_HIGH (1U << 20)
#define TERN_TUNNEL_QUEUE_LOW (512U << 10)
/* How often paused connections look at their queue again: the transport
 * has no "drained" callback, and an acknowledgement shrinks the queue
 * without calling anyone. */
#define TERN_TUNNEL_POLL_MS 5
/* Bytes read from a TCP socket at a time. */
#define TERN_TUNNEL_CHUNK (64U << 10)
/* How long a stream stays open after both of its directions ended, before
 * tern_stream_close(): the peer may not have our last acknowledgements,
 * and a stream the transport has forgotten drops the peer's
 * retransmissions without answering them (see tools/tunnel_pipe.c). */
#define TERN_TUNNEL_LINGER_MS 3000U
#define TERN_TUNNEL_LINGER_TICK_MS 250U
/* TCP connections a client holds while it has no session. */
#define TERN_TUNNEL_WAITING_MAX 256

typedef struct tern_tunnel tern_tunnel;
typedef struct tern_tunnel_conn tern_tunnel_conn;

/* The connections of one session; the client's waiting room (session NULL)
 * holds those accepted while no session exists. */
typedef struct tern_tunnel_group {
    tern_tunnel *tn;
    tern_session *session;
    tern_tunnel_conn *conns;
    uint32_t n_conns;
    bool connected;                        /* client: the handshake finished */
    struct tern_tunnel_group *next, *prev; /* tn->groups (not the waiting room) */
} tern_tunnel_group;

typedef struct tern_tunnel_counters {
    uint64_t tcp_accepted;   /* client: from the listener; server: connected to the target */
    uint64_t tcp_refused;    /* client: no room (waiting room full, stream limit) */
    uint64_t connect_failed; /* server: the target refused or could not be reached */
    uint64_t bytes_in;       /* read from TCP sockets, into the tunnel */
    uint64_t bytes_out;      /* written to TCP sockets, out of the tunnel */
    uint64_t closed_clean;   /* both directions ended with FIN */
    uint64_t closed_reset;   /* ended otherwise (reset, error, session end) */
    uint64_t paused_tcp;     /* TCP reads stopped: the stream's queue was full */
    uint64_t paused_stream;  /* stream reads stopped: the socket's queue was full */
    uint64_t bad_hello;      /* server: a stream that did not start with the hello */
    uint64_t sessions_total; /* client: connects started; server: accepted */
} tern_tunnel_counters;

struct tern_tunnel {
    uv_loop_t loop;
    tern_tunnel_config cfg;
    tern_endpoint *ep;
    struct sockaddr_storage listen_addr, peer_addr; /* peer: --remote or --target */
    uv_tcp_t listener;                              /* client */
    uv_signal_t sigint, sigterm, sigusr1;
    uv_timer_t stats_timer, reconnect_timer, poll_timer, linger_timer;
    tern_tunnel_group waiting; /* client */
    tern_tunnel_group *groups;
    tern_tunnel_group *current; /* client: the session in use */
    uint32_t n_sessions, n_conns, n_paused, n_lingering;
    uint32_t backoff_ms;
    tern_tunnel_counters ctr;
    FILE *stats_json;
    uint64_t start_ms, last_stats_ms, last_in, last_out;
    bool stopping;
    bool warned_connect;
};

/* tunnel_pipe.c */

/* Client: accepts a connection on tn->listener and gives it a stream of
 * tn->current, or puts it in the waiting room (not read) while there is no
 * session, or refuses it (RST) when the room is full. */
void tern_tunnel_conn_accept(tern_tunnel *tn);
/* Client: opens a stream on g's session for c and starts both directions;
 * resets c if the stream cannot be opened. */
void tern_tunnel_conn_attach(tern_tunnel_conn *c, tern_tunnel_group *g);
/* Server: the peer opened st on g's session: connect to tn->peer_addr,
 * then splice. */
void tern_tunnel_conn_from_stream(tern_tunnel_group *g, tern_stream *st);
/* g's session ended (or the program stops): every connection in it is
 * reset, and taken out of g. */
void tern_tunnel_group_fail(tern_tunnel_group *g);
/* Moves every connection of from into to (the waiting room into a new
 * session) and attaches each. */
void tern_tunnel_group_adopt(tern_tunnel_group *to, tern_tunnel_group *from);
/* tn->poll_timer runs while a connection is paused, tn->linger_timer
 * while one lingers; the program initialises both (data = tn) and
 * tunnel_pipe.c starts and stops them. */

#endif /* TERN_TOOLS_TUNNEL_H */
