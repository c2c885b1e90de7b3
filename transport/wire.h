/* The native datagram kinds and the frames inside DATA packets, as
 * docs/PROTOCOL.md ("Sessions") lays them out. Pure functions: nothing here
 * knows about sessions or sockets. */
#ifndef TERN_TRANSPORT_WIRE_H
#define TERN_TRANSPORT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/crypto_packet.h"

/* The first byte of every native datagram (its low 7 bits; the top bit is
 * the key phase of encrypted DATA). */
enum {
    TERN_WIRE_INIT = 0x01,
    TERN_WIRE_RESP = 0x02,
    TERN_WIRE_COOKIE = 0x03,
    TERN_WIRE_DATA = TERN_PACKET_TYPE_DATA, /* 0x04, encrypted */
    TERN_WIRE_PLAIN = 0x05
};

#define TERN_WIRE_VERSION 1U
/* HANDSHAKE_INIT: type, version, sender id, then the Noise message, zero
 * padding up to TERN_WIRE_INIT_BYTES - 32, mac1, mac2. Every INIT has the
 * same size, larger than any answer the server may send to an unproven
 * address (RESP, COOKIE_REPLY): amplification factor below one. */
#define TERN_WIRE_INIT_BYTES 192U
#define TERN_WIRE_INIT_HEADER 6U
/* HANDSHAKE_RESP: type, sender id, receiver id, Noise message, mac1, mac2. */
#define TERN_WIRE_RESP_HEADER 9U
#define TERN_WIRE_MACS 32U
/* The longest Noise message either side puts in INIT/RESP (IK's first:
 * e, s+tag, empty payload+tag). */
#define TERN_WIRE_NOISE_MAX (TERN_WIRE_INIT_BYTES - TERN_WIRE_INIT_HEADER - TERN_WIRE_MACS)
/* PLAIN_DATA: type, receiver id, frames. */
#define TERN_WIRE_PLAIN_HEADER 5U

/* Frames, several per DATA payload. */
enum {
    TERN_FRAME_KCP = 0x01,   /* len(2) | KCP segments of one conv */
    TERN_FRAME_UNREL = 0x02, /* channel(1) seq(2) index(1) count(1) len(2) | bytes */
    TERN_FRAME_PING = 0x03,  /* token(4) */
    TERN_FRAME_PONG = 0x04,  /* token(4) */
    TERN_FRAME_CLOSE = 0x05  /* reason(2) */
};
#define TERN_FRAME_KCP_HEADER 3U
#define TERN_FRAME_UNREL_HEADER 8U

/* Control messages, carried reliably on the control engine (conv 0). */
enum {
    TERN_CTRL_FIN = 0x01,   /* stream id(4) final size(8) */
    TERN_CTRL_RESET = 0x02  /* stream id(4) */
};
#define TERN_CTRL_FIN_BYTES 13U
#define TERN_CTRL_RESET_BYTES 5U

/* CLOSE reasons on the wire. */
enum {
    TERN_CLOSE_GRACEFUL = 0,
    TERN_CLOSE_ABORT = 1,
    TERN_CLOSE_TIMEOUT = 2,
    TERN_CLOSE_ERROR = 3
};

/* Conversations: 0 is the control engine, odd ids are streams the client
 * opened, even ones the server's; reliable channels sit at the top. */
#define TERN_CONV_CONTROL 0U
#define TERN_CONV_CHANNEL_BASE 0xFFFFFF00U
#define TERN_CONV_STREAM_MAX 0x7FFFFFFFU

static inline void tern_wire_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void tern_wire_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void tern_wire_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t tern_wire_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t tern_wire_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t tern_wire_get64(const uint8_t *p)
{
    return (uint64_t)tern_wire_get32(p) | ((uint64_t)tern_wire_get32(p + 4) << 32);
}

/* One decoded frame. */
typedef struct tern_frame {
    uint8_t type;
    uint8_t channel, index, count; /* UNREL */
    uint16_t seq;                  /* UNREL */
    uint16_t reason;               /* CLOSE */
    uint32_t token;                /* PING, PONG */
    const uint8_t *data;           /* KCP, UNREL */
    size_t len;
} tern_frame;

/* Checks that payload is a well-formed sequence of frames: every frame
 * known, every length inside the payload, UNREL index < count. Returns the
 * number of frames, or -1. Nothing is delivered from a payload that fails:
 * the whole datagram is validated before any state changes. */
int tern_wire_frames_check(const uint8_t *payload, size_t len);
/* Decodes the frame at *off (after tern_wire_frames_check() passed) and
 * advances *off. */
void tern_wire_frame_next(const uint8_t *payload, size_t *off, tern_frame *out);

#endif /* TERN_TRANSPORT_WIRE_H */
