/* tern: error codes. Every fallible call returns 0 (or a byte count) on
 * success and one of these negative values on failure. */
#ifndef TERN_ERROR_H
#define TERN_ERROR_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, message): one table generates the enum, tern_strerror()
 * and tern_err_name(), so they can never disagree. Values are stable: add
 * new codes at the end. */
#define TERN_ERRNO_MAP(X)                                                     \
    X(INVAL, -1, "invalid argument")                                         \
    X(NOMEM, -2, "out of memory")                                            \
    X(AGAIN, -3, "resource temporarily unavailable")                         \
    X(WOULDBLOCK, -4, "send queue full")                                     \
    X(MSGSIZE, -5, "message too long")                                       \
    X(NOBUFS, -6, "buffer too small")                                        \
    X(MALFORMED, -7, "malformed datagram")                                   \
    X(CONV, -8, "conversation id mismatch")                                  \
    X(DEADLINK, -9, "peer unreachable (dead link)")                          \
    X(NOTFOUND, -10, "no such name")                                         \
    X(RANGE, -11, "value out of range")                                      \
    X(CLOSED, -12, "object is closed")                                       \
    X(DECRYPT, -13, "authentication failed")                                 \
    X(STATE, -14, "call out of order")                                       \
    X(UNSUPPORTED, -15, "not available on this machine")                     \
    X(BADKEY, -16, "invalid or weak public key")                             \
    X(REPLAY, -17, "replayed or too old packet")                             \
    X(EXPIRED, -18, "key expired")                                           \
    X(RATE, -19, "rate limited")                                             \
    X(COOKIE, -20, "cookie required")                                        \
    X(IO, -21, "file or I/O error")                                          \
    X(PERM, -22, "insecure file permissions")                                \
    X(TIMEDOUT, -23, "timed out")                                            \
    X(RESET, -24, "reset by peer")                                           \
    X(EOF, -25, "end of stream")                                             \
    X(LIMIT, -26, "limit reached")                                           \
    X(CANCELED, -27, "operation canceled")

typedef enum tern_errno {
#define TERN_ERR_ENUM_(name, value, msg) TERN_ERR_##name = (value),
    TERN_ERRNO_MAP(TERN_ERR_ENUM_)
#undef TERN_ERR_ENUM_
} tern_errno;

/* A static, human-readable message; "unknown error" for unknown codes. */
TERN_API const char *tern_strerror(int err);
/* The code's name without prefix ("WOULDBLOCK"); "UNKNOWN" if unknown. */
TERN_API const char *tern_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_ERROR_H */
