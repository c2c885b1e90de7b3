#include "kcp/codec.h"

#include "tern/kcp.h"

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void tern_kcp_hdr_encode(uint8_t *out, const tern_kcp_hdr *hdr)
{
    put32(out, hdr->conv);
    out[4] = hdr->cmd;
    out[5] = hdr->frg;
    out[6] = (uint8_t)hdr->wnd;
    out[7] = (uint8_t)(hdr->wnd >> 8);
    put32(out + 8, hdr->ts);
    put32(out + 12, hdr->sn);
    put32(out + 16, hdr->una);
    put32(out + 20, hdr->len);
}

void tern_kcp_hdr_decode(const uint8_t *in, tern_kcp_hdr *hdr)
{
    hdr->conv = tern_kcp_get32(in);
    hdr->cmd = in[4];
    hdr->frg = in[5];
    hdr->wnd = (uint16_t)(in[6] | in[7] << 8);
    hdr->ts = tern_kcp_get32(in + 8);
    hdr->sn = tern_kcp_get32(in + 12);
    hdr->una = tern_kcp_get32(in + 16);
    hdr->len = tern_kcp_get32(in + 20);
}

int tern_kcp_datagram_check(const uint8_t *pkt, size_t len, uint32_t conv)
{
    return tern_kcp_datagram_check_ext(pkt, len, conv, false);
}

int tern_kcp_datagram_check_ext(const uint8_t *pkt, size_t len, uint32_t conv, bool forward)
{
    const uint8_t last_cmd = forward ? TERN_KCP_CMD_FORWARD : TERN_KCP_CMD_WINS;
    if (!pkt || len < TERN_KCP_OVERHEAD)
        return TERN_ERR_MALFORMED;
    int segments = 0;
    bool foreign = false;
    size_t off = 0;
    while (off < len) {
        if (len - off < TERN_KCP_OVERHEAD)
            return TERN_ERR_MALFORMED;
        tern_kcp_hdr hdr;
        tern_kcp_hdr_decode(pkt + off, &hdr);
        off += TERN_KCP_OVERHEAD;
        if (hdr.cmd < TERN_KCP_CMD_PUSH || hdr.cmd > last_cmd)
            return TERN_ERR_MALFORMED;
        if (hdr.len > len - off)
            return TERN_ERR_MALFORMED;
        if (hdr.cmd != TERN_KCP_CMD_PUSH && hdr.len != 0)
            return TERN_ERR_MALFORMED;
        if (hdr.conv != conv)
            foreign = true;
        off += hdr.len;
        segments++;
    }
    /* A malformed datagram is reported as such even if its conv is wrong:
     * structure is checked first so the counters say what really happened. */
    return foreign ? TERN_ERR_CONV : segments;
}
