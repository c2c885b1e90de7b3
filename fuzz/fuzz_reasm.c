/* One reassembler (transport/reasm.h) fed by an honest sender through a
 * lossy, duplicating, reordering network, with arbitrary and mutated
 * fragments mixed in. The fuzz input is a small program:
 *
 *   header   mode (unordered or sequenced), max_message, max_bytes,
 *            max_partial, timeout, dedup window, the first seq (maybe just
 *            before the 16-bit wrap), the sender's fragment size, an
 *            allocation index from which the allocator fails, and the clock
 *   ops      each one byte, then its operands:
 *     SEND   the sender splits its next message (length from the input,
 *            maybe skipping seqs ahead) into the network pool
 *     PUSH   a pool fragment is delivered, and kept or not for a later
 *            duplicate
 *     RAW    an arbitrary fragment for a seq in the sender's range
 *     MUTATE a pool fragment with its seq, index, count or length changed
 *     TICK   time moves forward; expire
 *
 * Every seq used stays within half the seq space of the first one, so that
 * "delivered at most once" and "sequenced means increasing" are exact. A
 * seq that ever saw a RAW or MUTATE fragment is tainted: its message may be
 * anything within bounds. Every other delivered message must be byte-exact
 * what the sender sent. Memory must stay within max_bytes plus what new()
 * allocated, and all of it must be freed by del().
 *
 * Built with -DTERN_FUZZ_TRACE, it prints the counters at the end, which
 * shows what an input exercises. */
#include "fuzz_common.h"

#include "tern/error.h"
#include "transport/reasm.h"

#define SPAN 32768U /* seqs used: base .. base + SPAN - 1 */
#define POOL 64     /* fragments in flight */
#define RAW_MAX 1500
#define MSG_MAX 24000
#define MAX_OPS 20000

enum { OP_SEND, OP_PUSH, OP_RAW, OP_MUTATE, OP_TICK, N_OPS };

typedef struct flight {
    uint16_t rel; /* seq - base */
    uint8_t idx, cnt;
} flight;

typedef struct harness {
    fuzz_in in;
    fuzz_alloc alloc;
    tern_reasm_config cfg;
    tern_reasm *r;
    size_t fixed; /* what new() allocated */
    tern_ms now;
    uint16_t base;
    size_t frag;      /* the sender's split size */
    uint32_t next;    /* the sender's next rel */
    int64_t last_rel; /* sequenced: the newest rel delivered */
    uint64_t pushes;
    flight pool[POOL];
    size_t pooled;
    uint32_t len[SPAN]; /* each sent message's length */
    uint8_t sent[SPAN], tainted[SPAN], delivered[SPAN];
    uint8_t msg[MSG_MAX];
} harness;

static harness H;

/* Message rel's bytes: cheap, and different for every message. */
static void fill(uint8_t *buf, size_t len, uint16_t rel)
{
    uint32_t k = (uint32_t)rel * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        k ^= k << 13;
        k ^= k >> 17;
        k ^= k << 5;
        buf[i] = (uint8_t)k;
    }
}

static uint8_t pieces(size_t len, size_t frag)
{
    return (uint8_t)(len <= frag ? 1 : (len + frag - 1) / frag);
}

static void check_state(harness *h)
{
    tern_reasm_stats s;
    tern_reasm_get_stats(h->r, &s);
    FUZZ_CHECK(s.held_bytes + s.spare_bytes <= h->cfg.max_bytes, "held %zu + spare %zu > %zu",
               s.held_bytes, s.spare_bytes, h->cfg.max_bytes);
    FUZZ_CHECK(h->alloc.live_bytes == h->fixed + s.held_bytes + s.spare_bytes,
               "allocator holds %zu, reasm accounts for %zu + %zu + %zu", h->alloc.live_bytes,
               h->fixed, s.held_bytes, s.spare_bytes);
    FUZZ_CHECK(s.held_partial <= h->cfg.max_partial, "%u partials", s.held_partial);
    FUZZ_CHECK(s.held_partial || !s.held_bytes, "%zu bytes held by no partial", s.held_bytes);
    FUZZ_CHECK(s.fragments == h->pushes, "fragments %llu, pushed %llu",
               (unsigned long long)s.fragments, (unsigned long long)h->pushes);
}

/* Pushes one fragment from an exact-size copy, so that ASan sees any read
 * past it, and checks what comes out. */
static void push(harness *h, uint16_t rel, uint8_t idx, uint8_t cnt, const uint8_t *data,
                 size_t len)
{
    uint8_t *frag = malloc(len ? len : 1);
    if (!frag)
        abort();
    if (len)
        memcpy(frag, data, len);
    uint16_t seq = (uint16_t)(h->base + rel);
    tern_reasm_stats before;
    tern_reasm_get_stats(h->r, &before);
    const uint8_t *out = (const uint8_t *)1;
    size_t out_len = 1;
    int rc = tern_reasm_push(h->r, seq, idx, cnt, frag, len, h->now, &out, &out_len);
    h->pushes++;
    FUZZ_CHECK(rc == 0 || rc == 1, "push returned %d", rc);
    if (rc == 0) {
        FUZZ_CHECK(out == NULL && out_len == 0, "no message, but *msg was set");
        /* An honest one-fragment message newer than all delivered is never
         * dropped (the unordered window starts at the newest delivered). */
        FUZZ_CHECK(h->tainted[rel] || cnt != 1 || len > h->cfg.max_message ||
                       (int64_t)rel <= h->last_rel,
                   "message rel %u (%zu bytes) dropped", rel, len);
    } else {
        FUZZ_CHECK(out != NULL, "a message at NULL");
        FUZZ_CHECK(out_len <= h->cfg.max_message, "%zu-byte message", out_len);
        if (cnt == 1)
            FUZZ_CHECK(out == frag && out_len == len, "a single fragment is not returned as is");
        if (!h->tainted[rel]) {
            FUZZ_CHECK(h->sent[rel], "rel %u delivered, never sent", rel);
            FUZZ_CHECK(out_len == h->len[rel], "rel %u: %zu bytes, sent %u", rel, out_len,
                       h->len[rel]);
            fill(h->msg, out_len, rel);
            FUZZ_CHECK(memcmp(out, h->msg, out_len) == 0, "rel %u: bytes differ", rel);
        }
        FUZZ_CHECK(!h->delivered[rel], "rel %u delivered twice", rel);
        h->delivered[rel] = 1;
        if (h->cfg.sequenced)
            FUZZ_CHECK((int64_t)rel > h->last_rel, "rel %u after %lld", rel,
                       (long long)h->last_rel);
        if ((int64_t)rel > h->last_rel)
            h->last_rel = rel;
        tern_reasm_stats after;
        tern_reasm_get_stats(h->r, &after);
        FUZZ_CHECK(after.delivered == before.delivered + 1, "delivered not counted");
    }
    free(frag);
    check_state(h);
}

/* The bytes of a pool fragment. */
static size_t piece(harness *h, const flight *f, uint8_t *buf)
{
    size_t total = h->len[f->rel];
    fill(h->msg, total, f->rel);
    size_t off = (size_t)f->idx * h->frag;
    size_t n = f->idx + 1U == f->cnt ? total - off : h->frag;
    memcpy(buf, h->msg + off, n);
    return n;
}

static void op_send(harness *h)
{
    uint16_t raw_len = fuzz_u16(&h->in);
    uint8_t skip = fuzz_u8(&h->in);
    if (skip >= 240)
        h->next += (uint32_t)(skip - 239U) * 64U; /* far enough to leave windows */
    if (h->next >= SPAN)
        return;
    size_t cap = h->frag * 255U < MSG_MAX ? h->frag * 255U : MSG_MAX;
    size_t len = raw_len % (cap + 1);
    uint16_t rel = (uint16_t)h->next++;
    h->sent[rel] = 1;
    h->len[rel] = (uint32_t)len;
    uint8_t cnt = pieces(len, h->frag);
    for (uint8_t i = 0; i < cnt && h->pooled < POOL; i++)
        h->pool[h->pooled++] = (flight){rel, i, cnt};
}

static void op_push(harness *h)
{
    uint8_t k = fuzz_u8(&h->in);
    uint8_t keep = fuzz_u8(&h->in);
    if (!h->pooled)
        return;
    size_t i = k % h->pooled;
    flight f = h->pool[i];
    if (!(keep & 1))
        h->pool[i] = h->pool[--h->pooled];
    static uint8_t buf[MSG_MAX];
    size_t n = piece(h, &f, buf);
    push(h, f.rel, f.idx, f.cnt, buf, n);
}

/* A rel in the sender's range, or a little ahead of it. */
static uint16_t near_rel(harness *h, uint16_t v)
{
    uint32_t rel = v % (h->next + 64U);
    return (uint16_t)(rel < SPAN ? rel : SPAN - 1U);
}

static void op_raw(harness *h)
{
    uint16_t rel = near_rel(h, fuzz_u16(&h->in));
    uint8_t idx = fuzz_u8(&h->in);
    uint8_t cnt = fuzz_u8(&h->in);
    size_t len = fuzz_u16(&h->in) % (RAW_MAX + 1U);
    static uint8_t buf[RAW_MAX];
    size_t got;
    const uint8_t *p = fuzz_bytes(&h->in, len, &got);
    memcpy(buf, p, got);
    memset(buf + got, 0, len - got);
    h->tainted[rel] = 1;
    push(h, rel, idx, cnt, buf, len);
}

static void op_mutate(harness *h)
{
    uint8_t k = fuzz_u8(&h->in);
    uint8_t what = fuzz_u8(&h->in);
    uint16_t val = fuzz_u16(&h->in);
    if (!h->pooled)
        return;
    flight f = h->pool[k % h->pooled];
    static uint8_t buf[MSG_MAX + 1];
    size_t n = piece(h, &f, buf);
    h->tainted[f.rel] = 1;
    switch (what % 5) {
    case 0:
        f.rel = near_rel(h, val);
        break;
    case 1:
        f.idx = (uint8_t)val;
        break;
    case 2:
        f.cnt = (uint8_t)val;
        break;
    case 3:
        n = n ? val % n : 0; /* shorter */
        break;
    default:
        buf[n++] = (uint8_t)val; /* one byte longer */
        break;
    }
    h->tainted[f.rel] = 1;
    push(h, f.rel, f.idx, f.cnt, buf, n);
}

static void op_tick(harness *h)
{
    h->now += fuzz_u16(&h->in);
    tern_ms next = tern_reasm_expire(h->r, h->now);
    tern_reasm_stats s;
    tern_reasm_get_stats(h->r, &s);
    FUZZ_CHECK(next > h->now, "expire says %llu at %llu", (unsigned long long)next,
               (unsigned long long)h->now);
    FUZZ_CHECK((next == UINT64_MAX) == (s.held_partial == 0), "next %llu with %u partials",
               (unsigned long long)next, s.held_partial);
    FUZZ_CHECK(next == UINT64_MAX || next <= h->now + h->cfg.timeout_ms,
               "a partial outlives its timeout");
    check_state(h);
}

static int setup(harness *h)
{
    fuzz_in *in = &h->in;
    uint8_t flags = fuzz_u8(in);
    tern_reasm_config *c = &h->cfg;
    tern_reasm_config_default(c);
    c->sequenced = flags & 1;
    c->max_message = 1U + fuzz_u16(in) % 20000U;
    c->max_bytes = c->max_message + fuzz_u16(in) % 40000U;
    c->max_partial = 1U + fuzz_u8(in) % 16U;
    c->timeout_ms = 1U + fuzz_u16(in) % 5000U;
    c->dedup_window = 1U + fuzz_u16(in) % TERN_REASM_MAX_DEDUP;
    h->base = fuzz_u16(in);
    h->frag = 1U + fuzz_u16(in) % 1200U;
    uint16_t fail_at = fuzz_u16(in);
    uint8_t fail_span = fuzz_u8(in);
    h->now = fuzz_u32(in);
    h->alloc.fail_at = fail_at;
    h->alloc.fail_span = fail_span;
    tern_mem mem = fuzz_mem(&h->alloc);
    int rc = tern_reasm_new(&h->r, c, &mem);
    if (rc) {
        FUZZ_CHECK(rc == TERN_ERR_NOMEM && h->alloc.failed, "new: %d", rc);
        FUZZ_CHECK(h->alloc.live_bytes == 0, "a failed new() leaks");
        return -1;
    }
    h->fixed = h->alloc.live_bytes;
    h->last_rel = -1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    harness *h = &H;
    memset(h, 0, sizeof(*h));
    h->in = (fuzz_in){data, size};
    if (setup(h))
        return 0;
    const uint8_t *out;
    size_t out_len;
    FUZZ_CHECK(tern_reasm_push(h->r, 0, 0, 1, NULL, 0, h->now, &out, &out_len) == TERN_ERR_INVAL,
               "NULL fragment accepted");
    for (int ops = 0; ops < MAX_OPS && !fuzz_empty(&h->in); ops++) {
        switch (fuzz_u8(&h->in) % N_OPS) {
        case OP_SEND:
            op_send(h);
            break;
        case OP_PUSH:
            op_push(h);
            break;
        case OP_RAW:
            op_raw(h);
            break;
        case OP_MUTATE:
            op_mutate(h);
            break;
        default:
            op_tick(h);
            break;
        }
    }
#ifdef TERN_FUZZ_TRACE
    tern_reasm_stats s;
    tern_reasm_get_stats(h->r, &s);
    fprintf(stderr,
            "fragments %llu delivered %llu duplicates %llu obsolete %llu malformed %llu "
            "too_big %llu evicted %llu timed_out %llu cap_dropped %llu\n",
            (unsigned long long)s.fragments, (unsigned long long)s.delivered,
            (unsigned long long)s.duplicates, (unsigned long long)s.obsolete,
            (unsigned long long)s.malformed, (unsigned long long)s.too_big,
            (unsigned long long)s.evicted, (unsigned long long)s.timed_out,
            (unsigned long long)s.cap_dropped);
#endif /* TERN_FUZZ_TRACE */
    tern_reasm_del(h->r);
    FUZZ_CHECK(h->alloc.live_bytes == 0 && h->alloc.live_allocs == 0, "%zu bytes leaked",
               h->alloc.live_bytes);
    return 0;
}
