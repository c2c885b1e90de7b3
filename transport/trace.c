/* Trace events as JSON lines, in the spirit of QUIC's qlog. */
#include <arpa/inet.h>
#include <stdio.h>

#include "transport/internal.h"

static const char *const names[] = {
    [TERN_TRACE_SESSION_OPENED] = "session_opened",
    [TERN_TRACE_HANDSHAKE_DONE] = "handshake_done",
    [TERN_TRACE_RETRANSMIT] = "retransmit",
    [TERN_TRACE_LOSS] = "loss",
    [TERN_TRACE_CWND] = "cwnd",
    [TERN_TRACE_PATH_CHANGE] = "path_change",
    [TERN_TRACE_STREAM_OPENED] = "stream_opened",
    [TERN_TRACE_STREAM_CLOSED] = "stream_closed",
    [TERN_TRACE_CLOSED] = "closed",
};

const char *tern_trace_kind_name(tern_trace_kind kind)
{
    if ((unsigned)kind >= sizeof(names) / sizeof(names[0]) || !names[kind])
        return "unknown";
    return names[kind];
}

tern_ssize tern_trace_format_json(const tern_trace_event *ev, char *buf, size_t cap)
{
    if (!ev || !buf)
        return TERN_ERR_INVAL;
    char peer[INET6_ADDRSTRLEN + 8] = "";
    if (ev->peer && ev->peer->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ev->peer;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(peer, sizeof(peer), "%s:%u", ip, ntohs(a->sin_port));
    } else if (ev->peer && ev->peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ev->peer;
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(peer, sizeof(peer), "[%s]:%u", ip, ntohs(a->sin6_port));
    }
    int n = snprintf(buf, cap,
                     "{\"time\":%llu,\"event\":\"%s\",\"session\":%lu,\"a\":%lld,\"b\":%lld,"
                     "\"peer\":\"%s\"}\n",
                     (unsigned long long)ev->time, tern_trace_kind_name(ev->kind),
                     (unsigned long)ev->session_id, (long long)ev->a, (long long)ev->b, peer);
    if (n < 0 || (size_t)n >= cap)
        return TERN_ERR_NOBUFS;
    return n;
}
