/* Numeric socket addresses from text, for configs and tools. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "transport/internal.h"

static int parse_port(const char *s, uint16_t *out)
{
    if (!*s)
        return TERN_ERR_INVAL;
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || v > 65535 || s[0] == '-' || s[0] == '+')
        return TERN_ERR_INVAL;
    *out = htons((uint16_t)v);
    return 0;
}

int tern_sockaddr_parse(const char *text, struct sockaddr_storage *out)
{
    if (!text || !out)
        return TERN_ERR_INVAL;
    memset(out, 0, sizeof(*out));
    char host[64];
    const char *port;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':' || (size_t)(close - text - 1) >= sizeof(host))
            return TERN_ERR_INVAL;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        port = close + 2;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return TERN_ERR_INVAL;
        return parse_port(port, &a->sin6_port);
    }
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof(host))
        return TERN_ERR_INVAL;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    struct sockaddr_in *a = (struct sockaddr_in *)out;
    a->sin_family = AF_INET;
    if (host[0] == '\0')
        a->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return TERN_ERR_INVAL;
    return parse_port(colon + 1, &a->sin_port);
}

/* How many bytes of sa to copy into a sockaddr_storage. sa is AF_INET or
 * AF_INET6: connect checks the addresses it is given, udp.c makes no other. */
size_t tern_ep_addr_len(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}
