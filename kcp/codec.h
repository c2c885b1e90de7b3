/* The classic KCP segment codec: a pure function of bytes, no engine state,
 * so it can be tested against vectors and fuzzed on its own. */
#ifndef TERN_KCP_CODEC_H
#define TERN_KCP_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    TERN_KCP_CMD_PUSH = 81, /* data */
    TERN_KCP_CMD_ACK = 82,  /* acknowledges one segment, echoing its ts */
    TERN_KCP_CMD_WASK = 83, /* window probe: "tell me your window" */
    TERN_KCP_CMD_WINS = 84, /* window announcement */
    /* Native extension (tern_kcp_settings.forward): "I no longer send any sn
     * below the one in this segment's sn field". Not classic KCP. */
    TERN_KCP_CMD_FORWARD = 85
};

typedef struct tern_kcp_hdr {
    uint32_t conv;
    uint8_t cmd;
    uint8_t frg;
    uint16_t wnd;
    uint32_t ts;
    uint32_t sn;
    uint32_t una;
    uint32_t len;
} tern_kcp_hdr;

/* Writes the 24-byte header; out must have room for TERN_KCP_OVERHEAD. */
void tern_kcp_hdr_encode(uint8_t *out, const tern_kcp_hdr *hdr);
/* Reads a 24-byte header without checking it. */
void tern_kcp_hdr_decode(const uint8_t *in, tern_kcp_hdr *hdr);

/* Checks a whole datagram: one or more segments, each with a known command,
 * the expected conv, a payload that fits, and no payload on ACK/WASK/WINS;
 * no bytes left over. Returns the number of segments (>= 1), or
 * TERN_ERR_MALFORMED, or TERN_ERR_CONV if well-formed but for another conv. */
int tern_kcp_datagram_check(const uint8_t *pkt, size_t len, uint32_t conv);
/* The same, also accepting FORWARD segments (no payload) when forward is
 * set: what an engine with tern_kcp_settings.forward reads. */
int tern_kcp_datagram_check_ext(const uint8_t *pkt, size_t len, uint32_t conv, bool forward);

/* A little-endian 32-bit field, for walking a checked datagram quickly. */
static inline uint32_t tern_kcp_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Serial-number arithmetic on the wire's 32-bit sn and ts: a - b as a signed
 * distance, correct across wraparound while |a - b| < 2^31. */
static inline int32_t tern_kcp_diff32(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b);
}

#endif /* TERN_KCP_CODEC_H */
