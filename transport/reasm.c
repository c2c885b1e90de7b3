/* Reassembly for the unreliable channels (transport/reasm.h).
 *
 * Each partial message lives in one of max_partial slots allocated up
 * front. A slot's buffer holds fragment i at offset i * frag_len, so the
 * finished message is already contiguous and is returned in place. Until a
 * non-last fragment has told frag_len, a last fragment that came first waits
 * at offset 0 and moves into place when the buffer is sized. A slot keeps its
 * buffer when its message ends (delivered, dropped or evicted), so the next
 * message of a similar size needs no allocation; r->alloc_bytes counts every
 * buffer, live or spare, and never exceeds max_bytes. */
#include "transport/reasm.h"

#include <string.h>

#include "common/mem.h"
#include "tern/error.h"

#define NEVER UINT64_MAX
#define INDEX_WORDS 4U /* one bit per possible fragment index, 0..254 */

typedef struct partial {
    uint8_t *buf; /* NULL or cap bytes; kept while the slot is idle */
    size_t cap;
    size_t frag_len; /* every non-last fragment's length; 0 until one arrived */
    size_t tail_len; /* the last fragment's length, once have_tail */
    tern_ms deadline;
    uint64_t born; /* creation order: the unordered mode's age */
    uint64_t have[INDEX_WORDS];
    uint16_t seq;
    uint8_t count; /* fragments in the message; 0 marks an idle slot */
    uint8_t received;
    bool have_tail;
} partial;

struct tern_reasm {
    tern_mem mem;
    tern_reasm_config cfg;
    partial *slots;
    uint64_t *seen; /* unordered: seqs delivered in the window, bit (seq & seen_mask) */
    uint32_t seen_mask;
    uint16_t top; /* the newest seq delivered, once have_top */
    bool have_top;
    uint64_t next_born;
    size_t alloc_bytes; /* every slot's buffer, live or spare */
    tern_reasm_stats st;
};

/* The one place for 16-bit serial arithmetic: a is newer than b iff
 * (int16_t)(a - b) > 0, written without the implementation-defined
 * conversion to a signed type. */
static bool seq_newer(uint16_t a, uint16_t b)
{
    uint16_t d = (uint16_t)(a - b);
    return d != 0 && d < 0x8000U;
}

static bool bit_get(const uint64_t *bits, uint32_t i)
{
    return (bits[i >> 6] >> (i & 63U)) & 1U;
}

static void bit_set(uint64_t *bits, uint32_t i)
{
    bits[i >> 6] |= UINT64_C(1) << (i & 63U);
}

static void bit_clear(uint64_t *bits, uint32_t i)
{
    bits[i >> 6] &= ~(UINT64_C(1) << (i & 63U));
}

/* ---- configuration ---- */

void tern_reasm_config_default(tern_reasm_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->sequenced = false;
    cfg->max_message = 64U * 1024U;
    cfg->max_bytes = 256U * 1024U;
    cfg->max_partial = 8;
    cfg->timeout_ms = 2000;
    cfg->dedup_window = 1024;
}

static int config_check(const tern_reasm_config *c)
{
    /* A message that could never fit in max_bytes would be a silent hole. */
    if (c->max_message < 1 || c->max_bytes < c->max_message)
        return TERN_ERR_RANGE;
    if (c->max_partial < 1 || c->max_partial > TERN_REASM_MAX_PARTIAL)
        return TERN_ERR_RANGE;
    if (c->timeout_ms < 1)
        return TERN_ERR_RANGE;
    if (!c->sequenced && (c->dedup_window < 1 || c->dedup_window > TERN_REASM_MAX_DEDUP))
        return TERN_ERR_RANGE;
    return 0;
}

int tern_reasm_new(tern_reasm **out, const tern_reasm_config *cfg, const tern_mem *mem)
{
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    tern_reasm_config c;
    if (cfg)
        c = *cfg;
    else
        tern_reasm_config_default(&c);
    int rc = config_check(&c);
    if (rc)
        return rc;

    tern_mem m;
    tern_mem_init(&m, mem);
    tern_reasm *r = tern_mem_calloc(&m, 1, sizeof(*r));
    if (!r)
        return TERN_ERR_NOMEM;
    r->mem = m;
    r->cfg = c;
    r->slots = tern_mem_calloc(&m, c.max_partial, sizeof(partial));
    if (!r->slots) {
        tern_reasm_del(r);
        return TERN_ERR_NOMEM;
    }
    if (!c.sequenced) {
        /* A power of two at least the window, so seq & mask picks the bit
         * and no two seqs inside the window share one. */
        uint32_t bits = 64;
        while (bits < c.dedup_window)
            bits <<= 1;
        r->seen = tern_mem_calloc(&m, bits / 64U, sizeof(uint64_t));
        if (!r->seen) {
            tern_reasm_del(r);
            return TERN_ERR_NOMEM;
        }
        r->seen_mask = bits - 1U;
    }
    *out = r;
    return 0;
}

void tern_reasm_del(tern_reasm *r)
{
    if (!r)
        return;
    if (r->slots)
        for (uint32_t i = 0; i < r->cfg.max_partial; i++)
            tern_mem_free(&r->mem, r->slots[i].buf);
    tern_mem_free(&r->mem, r->slots);
    tern_mem_free(&r->mem, r->seen);
    tern_mem m = r->mem;
    tern_mem_free(&m, r);
}

void tern_reasm_get_stats(const tern_reasm *r, tern_reasm_stats *out)
{
    if (!out)
        return;
    if (!r) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = r->st;
    out->spare_bytes = r->alloc_bytes - r->st.held_bytes;
}

/* ---- slots ---- */

static partial *find(tern_reasm *r, uint16_t seq)
{
    for (uint32_t i = 0; i < r->cfg.max_partial; i++)
        if (r->slots[i].count && r->slots[i].seq == seq)
            return &r->slots[i];
    return NULL;
}

/* Whether a should give way before b: in sequenced mode the older message
 * is worth less, otherwise the one started first. */
static bool ranks_below(const tern_reasm *r, const partial *a, const partial *b)
{
    if (r->cfg.sequenced)
        return seq_newer(b->seq, a->seq);
    return a->born < b->born;
}

/* The live partial that gives way first, among those ranking below self
 * (all of them if self is NULL). */
static partial *lowest(tern_reasm *r, const partial *self)
{
    partial *best = NULL;
    for (uint32_t i = 0; i < r->cfg.max_partial; i++) {
        partial *p = &r->slots[i];
        if (!p->count || p == self || (self && !ranks_below(r, p, self)))
            continue;
        if (!best || ranks_below(r, p, best))
            best = p;
    }
    return best;
}

static void slot_start(tern_reasm *r, partial *p, uint16_t seq, uint8_t count, tern_ms now)
{
    p->seq = seq;
    p->count = count;
    p->received = 0;
    p->frag_len = 0;
    p->tail_len = 0;
    p->have_tail = false;
    memset(p->have, 0, sizeof(p->have));
    p->born = r->next_born++;
    p->deadline = now > NEVER - r->cfg.timeout_ms ? NEVER : now + r->cfg.timeout_ms;
    r->st.held_partial++;
    r->st.held_bytes += p->cap;
}

/* Ends p's partial message; its buffer stays as the slot's spare. */
static void slot_end(tern_reasm *r, partial *p)
{
    r->st.held_partial--;
    r->st.held_bytes -= p->cap;
    p->count = 0;
}

static void slot_free_buf(tern_reasm *r, partial *p)
{
    if (p->count)
        r->st.held_bytes -= p->cap;
    tern_mem_free(&r->mem, p->buf);
    r->alloc_bytes -= p->cap;
    p->buf = NULL;
    p->cap = 0;
}

/* Frees spares, then evicts partials ranking below self (oldest first),
 * until need more bytes fit under max_bytes. Changes nothing if they cannot
 * be made to fit. */
static bool make_room(tern_reasm *r, const partial *self, size_t need)
{
    if (need > r->cfg.max_bytes)
        return false;
    size_t limit = r->cfg.max_bytes - need;
    if (r->alloc_bytes <= limit)
        return true;
    size_t freeable = 0;
    for (uint32_t i = 0; i < r->cfg.max_partial; i++) {
        const partial *p = &r->slots[i];
        if (p != self && (!p->count || ranks_below(r, p, self)))
            freeable += p->cap;
    }
    if (r->alloc_bytes - freeable > limit)
        return false;
    for (uint32_t i = 0; i < r->cfg.max_partial && r->alloc_bytes > limit; i++) {
        partial *p = &r->slots[i];
        if (p != self && !p->count)
            slot_free_buf(r, p);
    }
    while (r->alloc_bytes > limit) {
        partial *victim = lowest(r, self);
        slot_end(r, victim);
        slot_free_buf(r, victim);
        r->st.evicted++;
    }
    return true;
}

/* Gives live p a buffer of at least need bytes. A last fragment held alone
 * at offset 0 moves to tail_off. False if the room cannot be had. */
static bool slot_reserve(tern_reasm *r, partial *p, size_t need, size_t tail_off)
{
    if (p->cap >= need) {
        if (p->have_tail)
            memmove(p->buf + tail_off, p->buf, p->tail_len);
        return true;
    }
    /* Nothing to keep: give the old buffer back before asking for room. */
    if (!p->have_tail)
        slot_free_buf(r, p);
    if (!make_room(r, p, need))
        return false;
    uint8_t *buf = tern_mem_alloc(&r->mem, need);
    if (!buf)
        return false;
    if (p->have_tail) {
        memcpy(buf + tail_off, p->buf, p->tail_len);
        slot_free_buf(r, p);
    }
    p->buf = buf;
    p->cap = need;
    r->alloc_bytes += need;
    r->st.held_bytes += need;
    return true;
}

/* A slot for a new partial message of seq: an idle one whose spare already
 * fits need, else any idle one, else the lowest-ranking live one is evicted,
 * unless the new message itself ranks lower (NULL). */
static partial *pick_slot(tern_reasm *r, uint16_t seq, size_t need)
{
    partial *fit = NULL, *idle = NULL;
    for (uint32_t i = 0; i < r->cfg.max_partial; i++) {
        partial *p = &r->slots[i];
        if (p->count)
            continue;
        if (p->cap >= need && (!fit || p->cap < fit->cap))
            fit = p;
        if (!idle || p->cap < idle->cap)
            idle = p;
    }
    if (fit)
        return fit;
    if (idle)
        return idle;
    partial *victim = lowest(r, NULL);
    if (r->cfg.sequenced && seq_newer(victim->seq, seq))
        return NULL;
    slot_end(r, victim);
    r->st.evicted++;
    return victim;
}

/* ---- which seqs are wanted ---- */

/* Whether a fragment of seq may be used; counts it if not. p is the partial
 * held for seq, if any. */
static bool seq_wanted(tern_reasm *r, uint16_t seq, const partial *p)
{
    if (!r->have_top || seq_newer(seq, r->top))
        return true;
    if (r->cfg.sequenced) {
        r->st.obsolete++;
        return false;
    }
    uint16_t behind = (uint16_t)(r->top - seq);
    if (behind < r->cfg.dedup_window) {
        if (!bit_get(r->seen, seq & r->seen_mask))
            return true;
        r->st.duplicates++;
        return false;
    }
    /* Too old to be in the window: only a held partial proves the message
     * was never delivered (no partial is started for a seq that was). */
    if (p)
        return true;
    r->st.obsolete++;
    return false;
}

static void mark_delivered(tern_reasm *r, uint16_t seq)
{
    r->st.delivered++;
    if (r->cfg.sequenced) {
        r->top = seq;
        r->have_top = true;
        /* Older partials can no longer be delivered. */
        for (uint32_t i = 0; i < r->cfg.max_partial; i++) {
            partial *p = &r->slots[i];
            if (p->count && !seq_newer(p->seq, seq)) {
                slot_end(r, p);
                r->st.obsolete++;
            }
        }
        return;
    }
    if (!r->have_top) {
        r->top = seq;
        r->have_top = true;
    } else if (seq_newer(seq, r->top)) {
        /* Each seq entering the window starts clear: whatever shared its
         * bit is now behind the window. */
        uint32_t steps = (uint16_t)(seq - r->top);
        if (steps > r->seen_mask)
            memset(r->seen, 0, ((size_t)r->seen_mask + 1U) / 8U);
        else
            for (uint32_t i = 1; i <= steps; i++)
                bit_clear(r->seen, (uint32_t)(uint16_t)(r->top + i) & r->seen_mask);
        r->top = seq;
    } else if ((uint16_t)(r->top - seq) >= r->cfg.dedup_window) {
        return; /* delivered from behind the window: nothing to remember */
    }
    bit_set(r->seen, seq & r->seen_mask);
}

/* ---- fragments ---- */

static int deliver(tern_reasm *r, partial *p, const uint8_t **msg, size_t *msg_len)
{
    *msg = p->buf;
    *msg_len = (size_t)(p->count - 1U) * p->frag_len + p->tail_len;
    /* The buffer stays with the idle slot, untouched until the next call. */
    slot_end(r, p);
    mark_delivered(r, p->seq);
    return 1;
}

static int start_partial(tern_reasm *r, uint16_t seq, uint8_t index, uint8_t count,
                         const uint8_t *frag, size_t len, tern_ms now)
{
    size_t max = r->cfg.max_message;
    bool last = index == count - 1U;
    size_t need;
    if (last) {
        /* Every other fragment is at least this long. */
        if (len > max / count) {
            r->st.too_big++;
            return 0;
        }
        need = len;
    } else {
        /* The last fragment has at least one byte. */
        if (count - 1U > (max - 1U) / len) {
            r->st.too_big++;
            return 0;
        }
        size_t body = (size_t)(count - 1U) * len;
        need = body + (len < max - body ? len : max - body);
    }
    partial *p = pick_slot(r, seq, need);
    if (!p) {
        r->st.cap_dropped++;
        return 0;
    }
    slot_start(r, p, seq, count, now);
    if (!slot_reserve(r, p, need, 0)) {
        slot_end(r, p);
        r->st.cap_dropped++;
        return 0;
    }
    if (last) {
        memcpy(p->buf, frag, len);
        p->tail_len = len;
        p->have_tail = true;
    } else {
        p->frag_len = len;
        memcpy(p->buf + (size_t)index * len, frag, len);
    }
    bit_set(p->have, index);
    p->received = 1;
    return 0;
}

/* A fragment of the message p holds (count already agrees). */
static int add_fragment(tern_reasm *r, partial *p, uint8_t index, const uint8_t *frag, size_t len,
                        const uint8_t **msg, size_t *msg_len)
{
    if (bit_get(p->have, index)) {
        r->st.duplicates++;
        return 0;
    }
    size_t max = r->cfg.max_message;
    size_t others = (size_t)(p->count - 1U);
    if (index == p->count - 1U) {
        /* A partial without frag_len holds only this last fragment, caught
         * above as a duplicate: frag_len is known here. */
        if (len > p->frag_len) {
            r->st.malformed++;
            slot_end(r, p);
            return 0;
        }
        if (others * p->frag_len > max - len) {
            r->st.too_big++;
            slot_end(r, p);
            return 0;
        }
        memcpy(p->buf + others * p->frag_len, frag, len);
        p->tail_len = len;
        p->have_tail = true;
    } else {
        if (!p->frag_len) {
            /* The first non-last fragment, after the last one: now the
             * size is known exactly, and the last one moves into place. */
            if (len < p->tail_len) {
                r->st.malformed++;
                slot_end(r, p);
                return 0;
            }
            if (others > (max - p->tail_len) / len) {
                r->st.too_big++;
                slot_end(r, p);
                return 0;
            }
            if (!slot_reserve(r, p, others * len + p->tail_len, others * len)) {
                r->st.cap_dropped++;
                slot_end(r, p);
                return 0;
            }
            p->frag_len = len;
        } else if (len != p->frag_len) {
            r->st.malformed++;
            slot_end(r, p);
            return 0;
        }
        memcpy(p->buf + (size_t)index * len, frag, len);
    }
    bit_set(p->have, index);
    if (++p->received == p->count)
        return deliver(r, p, msg, msg_len);
    return 0;
}

int tern_reasm_push(tern_reasm *r, uint16_t seq, uint8_t index, uint8_t count, const uint8_t *frag,
                    size_t len, tern_ms now, const uint8_t **msg, size_t *msg_len)
{
    if (!r || !frag || !msg || !msg_len)
        return TERN_ERR_INVAL;
    *msg = NULL;
    *msg_len = 0;
    r->st.fragments++;
    /* The fragment on its own first: a sender never makes an empty piece
     * of a split message. */
    if (count == 0 || index >= count || (count > 1 && len == 0)) {
        r->st.malformed++;
        return 0;
    }
    partial *p = find(r, seq);
    if (!seq_wanted(r, seq, p))
        return 0;
    if (p && p->count != count) {
        r->st.malformed++;
        slot_end(r, p);
        return 0;
    }
    if (count == 1) {
        if (len > r->cfg.max_message) {
            r->st.too_big++;
            return 0;
        }
        mark_delivered(r, seq);
        *msg = frag;
        *msg_len = len;
        return 1;
    }
    if (p)
        return add_fragment(r, p, index, frag, len, msg, msg_len);
    return start_partial(r, seq, index, count, frag, len, now);
}

tern_ms tern_reasm_expire(tern_reasm *r, tern_ms now)
{
    if (!r)
        return NEVER;
    tern_ms next = NEVER;
    for (uint32_t i = 0; i < r->cfg.max_partial; i++) {
        partial *p = &r->slots[i];
        if (!p->count)
            continue;
        if (now >= p->deadline) {
            slot_end(r, p);
            r->st.timed_out++;
        } else if (p->deadline < next) {
            next = p->deadline;
        }
    }
    return next;
}
