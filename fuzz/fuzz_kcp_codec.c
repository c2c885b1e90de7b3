/* The codec on its own: tern_kcp_datagram_check() on arbitrary bytes, with
 * the conv it must expect taken from the first four bytes of the input.
 *
 * It is compared against a reference walk written here from
 * docs/PROTOCOL.md. When the codec accepts a datagram, every header is
 * decoded and checked: the segments tile the datagram exactly, every cmd is
 * 81..84, only PUSH carries a payload, every conv is ours, and encoding a
 * decoded header gives back the same 24 bytes. */
#include "fuzz_common.h"

#include "kcp/codec.h"
#include "tern/kcp.h"

/* The reference: the number of segments, -1 if malformed, -2 if
 * well-formed but some segment is for another conv. */
static int reference_check(const uint8_t *pkt, size_t len, uint32_t conv)
{
    if (len < TERN_KCP_OVERHEAD)
        return -1;
    int segments = 0;
    int foreign = 0;
    size_t off = 0;
    while (off != len) {
        if (len - off < TERN_KCP_OVERHEAD)
            return -1;
        const uint8_t *h = pkt + off;
        uint8_t cmd = h[4];
        uint32_t seg_len = fuzz_le32(h + 20);
        if (cmd < 81 || cmd > 84)
            return -1;
        off += TERN_KCP_OVERHEAD;
        if (seg_len > len - off)
            return -1;
        if (cmd != 81 && seg_len != 0)
            return -1;
        if (fuzz_le32(h) != conv)
            foreign = 1;
        off += seg_len;
        segments++;
    }
    return foreign ? -2 : segments;
}

static void check_round_trip(const uint8_t *in)
{
    tern_kcp_hdr h;
    tern_kcp_hdr_decode(in, &h);
    FUZZ_CHECK(h.conv == fuzz_le32(in) && h.cmd == in[4] && h.frg == in[5] &&
                   h.wnd == (uint16_t)(in[6] | in[7] << 8) && h.ts == fuzz_le32(in + 8) &&
                   h.sn == fuzz_le32(in + 12) && h.una == fuzz_le32(in + 16) &&
                   h.len == fuzz_le32(in + 20),
               "decode disagrees with the documented little-endian layout");
    uint8_t out[TERN_KCP_OVERHEAD];
    memset(out, 0x5a, sizeof(out));
    tern_kcp_hdr_encode(out, &h);
    FUZZ_CHECK(memcmp(out, in, TERN_KCP_OVERHEAD) == 0, "encode(decode(x)) != x");
}

static void check_accepted(const uint8_t *pkt, size_t len, uint32_t conv, int segments)
{
    size_t off = 0;
    int seen = 0;
    while (off < len) {
        FUZZ_CHECK(len - off >= TERN_KCP_OVERHEAD, "accepted a datagram with a partial header");
        tern_kcp_hdr h;
        tern_kcp_hdr_decode(pkt + off, &h);
        check_round_trip(pkt + off);
        FUZZ_CHECK(h.cmd >= TERN_KCP_CMD_PUSH && h.cmd <= TERN_KCP_CMD_WINS, "cmd %u accepted",
                   h.cmd);
        FUZZ_CHECK(h.cmd == TERN_KCP_CMD_PUSH || h.len == 0, "cmd %u with len %u accepted",
                   h.cmd, h.len);
        FUZZ_CHECK(h.conv == conv, "conv %08x accepted, expected %08x", h.conv, conv);
        off += TERN_KCP_OVERHEAD;
        FUZZ_CHECK(h.len <= len - off, "segment %d overruns the datagram", seen);
        off += h.len;
        seen++;
    }
    FUZZ_CHECK(off == len, "segment lengths add up to %zu, datagram is %zu", off, len);
    FUZZ_CHECK(seen == segments, "codec said %d segments, there are %d", segments, seen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint32_t conv = fuzz_le32(data);
    const uint8_t *pkt = data + 4;
    size_t len = size - 4;

    int got = tern_kcp_datagram_check(pkt, len, conv);
    int want = reference_check(pkt, len, conv);
    if (want >= 1) {
        FUZZ_CHECK(got == want, "codec says %d, reference says %d segments", got, want);
        check_accepted(pkt, len, conv, got);
    } else if (want == -2) {
        FUZZ_CHECK(got == TERN_ERR_CONV, "codec says %d, reference says CONV", got);
        /* Well-formed for the conv of its first segment or not at all. */
        int first = tern_kcp_datagram_check(pkt, len, fuzz_le32(pkt));
        FUZZ_CHECK(first == TERN_ERR_CONV || first >= 1, "codec says %d for the first conv",
                   first);
        if (first >= 1)
            check_accepted(pkt, len, fuzz_le32(pkt), first);
    } else {
        FUZZ_CHECK(got == TERN_ERR_MALFORMED, "codec says %d, reference says MALFORMED", got);
    }
    /* Structure is judged before conv: a malformed datagram is malformed for
     * every conv. */
    int other = tern_kcp_datagram_check(pkt, len, conv ^ 0x80000001u);
    FUZZ_CHECK((other == TERN_ERR_MALFORMED) == (got == TERN_ERR_MALFORMED),
               "malformed for one conv (%d) but not another (%d)", got, other);
    /* Every header decodes and re-encodes the same, valid or not. */
    for (size_t off = 0; off + TERN_KCP_OVERHEAD <= len; off += TERN_KCP_OVERHEAD)
        check_round_trip(pkt + off);
    return 0;
}
