#include "transport/wire.h"

/* Bytes of the frame at off, header included, or 0 if it is malformed or
 * runs past the end. */
static size_t frame_size(const uint8_t *p, size_t off, size_t len)
{
    size_t left = len - off;
    switch (p[off]) {
    case TERN_FRAME_KCP: {
        if (left < TERN_FRAME_KCP_HEADER)
            return 0;
        size_t n = tern_wire_get16(p + off + 1);
        if (n == 0 || n > left - TERN_FRAME_KCP_HEADER)
            return 0;
        return TERN_FRAME_KCP_HEADER + n;
    }
    case TERN_FRAME_UNREL: {
        if (left < TERN_FRAME_UNREL_HEADER)
            return 0;
        uint8_t index = p[off + 4], count = p[off + 5];
        size_t n = tern_wire_get16(p + off + 6);
        if (count == 0 || index >= count || n > left - TERN_FRAME_UNREL_HEADER)
            return 0;
        return TERN_FRAME_UNREL_HEADER + n;
    }
    case TERN_FRAME_PING:
    case TERN_FRAME_PONG:
        return left < 5 ? 0 : 5;
    case TERN_FRAME_CLOSE:
        return left < 3 ? 0 : 3;
    default:
        return 0;
    }
}

int tern_wire_frames_check(const uint8_t *payload, size_t len)
{
    size_t off = 0;
    int n = 0;
    while (off < len) {
        size_t size = frame_size(payload, off, len);
        if (size == 0 || n == 65535)
            return -1;
        off += size;
        n++;
    }
    return n;
}

void tern_wire_frame_next(const uint8_t *p, size_t *off, tern_frame *out)
{
    size_t o = *off;
    *out = (tern_frame){.type = p[o]};
    switch (p[o]) {
    case TERN_FRAME_KCP:
        out->len = tern_wire_get16(p + o + 1);
        out->data = p + o + TERN_FRAME_KCP_HEADER;
        *off = o + TERN_FRAME_KCP_HEADER + out->len;
        break;
    case TERN_FRAME_UNREL:
        out->channel = p[o + 1];
        out->seq = tern_wire_get16(p + o + 2);
        out->index = p[o + 4];
        out->count = p[o + 5];
        out->len = tern_wire_get16(p + o + 6);
        out->data = p + o + TERN_FRAME_UNREL_HEADER;
        *off = o + TERN_FRAME_UNREL_HEADER + out->len;
        break;
    case TERN_FRAME_PING:
    case TERN_FRAME_PONG:
        out->token = tern_wire_get32(p + o + 1);
        *off = o + 5;
        break;
    default: /* TERN_FRAME_CLOSE */
        out->reason = tern_wire_get16(p + o + 1);
        *off = o + 3;
        break;
    }
}
