/* The ARQ engine: classic KCP on the wire, selective repeat with per-segment
 * ACKs plus cumulative UNA, RFC 6298 RTO, fast and early (RACK-like)
 * retransmit, flow control with zero-window probing, pluggable congestion
 * control. Sans-I/O: see include/tern/kcp.h for the calling pattern.
 *
 * Cost model. Segments in flight sit in a ring indexed by sequence number, so
 * an ACK or UNA finds its segment in O(1). Retransmission deadlines live in a
 * binary heap, so timers cost O(log window) and nothing walks the whole send
 * buffer. In-flight segments are also kept in transmission order; an ACK
 * batch only visits the segments sent before the newest one it acknowledged
 * that are still unacknowledged (the holes), which is what loss detection
 * needs. Segment buffers come from per-engine free lists by size class, so
 * steady traffic does no malloc.
 *
 * Native extensions (off by default, docs/PROTOCOL.md "Native extensions").
 * Unordered delivery keeps the ordered machinery (rcv_nxt, una, wnd) and
 * adds a queue of complete messages; a message read before rcv_nxt reaches
 * it leaves a marker in its ring slots. Message deadlines live in their own
 * heap of small per-message records; an abandoned sequence number keeps a
 * marker in the send ring until the peer's una passes it, and the FORWARD
 * position (the first message the sender still cares about) only moves
 * forward, scanning each sequence number about once. */
#include <string.h>

#include "common/mem.h"
#include "kcp/codec.h"
#include "kcp/engine_internal.h"
#include "tern/kcp.h"

/* SEG_READY: received, the first segment of a complete message waiting in
 * the unordered receiver's ready queue. */
enum { SEG_QUEUED = 0, SEG_IN_FLIGHT, SEG_LOST, SEG_RECEIVED, SEG_READY };
enum { LOST_TIMEOUT = 0, LOST_FAST, LOST_EARLY };
enum { PROBE_ASK = 1, PROBE_TELL = 2 };
enum { N_CLASSES = 3, UNPOOLED = 0xff };
/* A receiver holding this many unsent ACKs sends them without waiting for
 * ack_delay, so a bulk sender's ACK clock keeps ticking. */
enum { ACK_EVERY = 16 };
/* Bundling is for thin streams (RDB's notion): with more than this many
 * segments in flight the stream is bulk and copies would only add load. */
enum { BUNDLE_THIN_SEGS = 16 };
#define NOT_IN_HEAP UINT32_MAX
/* First size of the deadline heap, in records. */
#define RING_MIN_DMSG 16u
#define NEVER UINT64_MAX

typedef struct seg seg;
typedef struct dmsg dmsg;
struct seg {
    seg *prev, *next;     /* the one list it is on: queued, in flight or lost */
    uint64_t tx_order;    /* order of its latest transmission */
    tern_ms first_sent, last_sent, deadline;
    uint32_t sn;
    uint32_t len;
    uint32_t cap;         /* payload capacity */
    uint32_t consumed;    /* stream-mode reads already taken from it */
    uint32_t rto;         /* this segment's RTO, backed off by its timeouts */
    uint32_t skips;       /* ACK batches for later transmissions since its last send */
    uint32_t heap_index;
    uint16_t xmit;
    uint16_t blind_xmit; /* sent before the peer's window was known, not the oldest */
    uint8_t frg;
    uint8_t pool_class;
    uint8_t state;
    uint8_t lost_kind;
    bool early_deadline;  /* deadline pulled in by early retransmit */
    dmsg *msg;            /* the deadline record of its message, or NULL */
    uint8_t data[];
};

/* Ring markers, never freed or written: a sequence number the sender
 * abandoned (until the peer's una passes it), and a received segment
 * already read out of order (until rcv_nxt passes it). Both stand where a
 * segment would, so "is this sequence number taken" stays one load. */
static seg abandoned_mark;
static seg delivered_mark;
#define ABANDONED (&abandoned_mark)
#define DELIVERED (&delivered_mark)

/* A message sent with a deadline. Its segments are consecutive: the sent
 * ones from first_sn, the others at first_queued in the send queue. */
struct dmsg {
    tern_ms deadline;
    seg *first_queued; /* its first unsent segment, NULL once all were sent */
    dmsg *next_free;
    uint32_t first_sn; /* valid once sent > 0 */
    uint32_t heap_index;
    uint16_t count, sent, acked;
};

typedef struct seg_list {
    seg *head, *tail;
    uint32_t count;
} seg_list;

/* The deadline sits beside the pointer so that sifting never touches the
 * (cold) segment it points to. */
typedef struct heap_entry {
    tern_ms deadline;
    seg *s;
} heap_entry;

typedef struct pending_ack {
    uint32_t sn, ts;
} pending_ack;

/* What one datagram's ACKs and UNA acknowledged, applied after the loop. */
typedef struct ack_batch {
    uint64_t bytes;
    uint64_t released; /* of those, bytes that were still in flight */
    uint64_t newest_order; /* the newest transmission known delivered, 0 if none */
    tern_ms newest_sent;
    bool have_rtt;
    uint32_t rtt_echo; /* the newest ts echoed by an ACK that hit a segment */
} ack_batch;

struct tern_kcp {
    tern_kcp_settings cfg;
    tern_kcp_callbacks cb;
    void *user_data;
    tern_mem mem;
    uint32_t mss;
    size_t max_message;
    bool cc_limits; /* false for "none": skip the call per segment */
    tern_ms now;

    seg *free_segs[N_CLASSES];
    uint32_t class_cap[N_CLASSES];
    size_t pool_bytes; /* held in the free lists, at most snd_queue_max */

    /* Send side. */
    seg_list snd_queue; /* not yet sent */
    seg_list in_flight; /* sent, unacknowledged, in transmission order */
    seg_list lost;      /* declared lost, waiting to be sent again */
    seg **snd_ring;     /* [snd_una, snd_nxt) by sn; NULL once acknowledged */
    uint32_t snd_mask;
    heap_entry *heap;   /* in-flight segments by deadline */
    uint32_t heap_len;
    uint32_t snd_una, snd_nxt;
    uint32_t rmt_wnd;
    uint32_t rmt_wnd_una; /* the una that came with rmt_wnd */
    bool rmt_wnd_known;
    size_t snd_mem;           /* charged against snd_queue_max */
    size_t snd_payload;       /* payload bytes unsent or unacknowledged */
    uint64_t in_flight_bytes; /* payload bytes of in-flight segments */
    uint64_t tx_counter;

    /* Message deadlines (tern_kcp_send_deadline) and FORWARD. */
    dmsg **dheap; /* records by deadline */
    uint32_t dheap_len, dheap_cap;
    dmsg *free_dmsgs;
    uint8_t *snd_end;       /* forward only: beside snd_ring, 1 where a message ends */
    uint32_t snd_skip;      /* sequence numbers of a cut message still to consume */
    uint32_t snd_abandoned; /* ABANDONED marks in the send ring */
    uint32_t fwd_pos;       /* F: the first message not known done; >= snd_una */
    uint32_t fwd_sent;      /* the F of the last FORWARD sent */
    tern_ms fwd_sent_at;    /* ... and when it was sent */
    uint32_t fwd_rto;
    uint32_t fwd_sends;       /* FORWARDs since the peer's una last moved */
    bool fwd_after_abandoned; /* the message just before fwd_pos was abandoned */
    tern_ms fwd_due;          /* NEVER unless a FORWARD is owed */

    /* RTT, in 1/8 ms so that the RFC 6298 gains do not truncate to zero. */
    bool have_rtt;
    uint64_t srtt8, rttvar8;
    uint32_t min_rtt;
    uint32_t rto;
    uint32_t reorder_mult;       /* early retransmit's reorder window, in min_rtt/4 */
    uint32_t batches_since_spurious;

    const tern_kcp_cc_ops *cc;
    void *cc_state;
    bool cc_owned;

    /* Receive side. [rcv_read, rcv_nxt) is deliverable (at most rcv_wnd),
     * up to rcv_wnd past it are out-of-order holds. */
    seg **rcv_ring;
    uint32_t rcv_mask;
    uint32_t rcv_read, rcv_nxt;
    uint32_t rcv_held;       /* segments held beyond rcv_nxt */
    uint32_t rcv_discard;    /* fragments of an oversize message still to drop */
    size_t rcv_ready_bytes;  /* deliverable bytes not yet read */
    seg_list rcv_ready;      /* unordered: first segments of complete messages */
    /* forward: a FORWARD could only be applied in part, and the run of
     * segments at rcv_nxt belongs to an abandoned message: drop it up to
     * its end as rcv_nxt passes it. */
    bool rcv_orphan;
    uint32_t last_adv_wnd;

    pending_ack *acks;
    uint32_t ack_head, ack_count, ack_alloc, ack_cap; /* pending: [ack_head, +ack_count) */
    tern_ms ack_due;

    uint8_t probe_flags;
    uint32_t probes_unanswered;
    tern_ms probe_due;
    uint32_t probe_wait;

    bool dead, dead_reported;
    tern_kcp_stats st;
};

/* ---- small helpers ---- */

static tern_ms min_ms(tern_ms a, tern_ms b)
{
    return a < b ? a : b;
}

static uint32_t clamp_u32(uint64_t v, uint32_t lo, uint32_t hi)
{
    return v < lo ? lo : v > hi ? hi : (uint32_t)v;
}

static void advance_clock(tern_kcp *k, tern_ms now)
{
    if (now > k->now)
        k->now = now;
}

/* ---- lists ---- */

static void list_append(seg_list *l, seg *s)
{
    s->next = NULL;
    s->prev = l->tail;
    if (l->tail)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
    l->count++;
}

static void list_remove(seg_list *l, seg *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        l->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        l->tail = s->prev;
    s->prev = s->next = NULL;
    l->count--;
}

static void list_insert_before(seg_list *l, seg *at, seg *s)
{
    s->next = at;
    s->prev = at->prev;
    if (at->prev)
        at->prev->next = s;
    else
        l->head = s;
    at->prev = s;
    l->count++;
}

/* Lost segments wait in sequence order, so the oldest goes out first: it is
 * what holds up delivery, and when a congestion window lets only one
 * segment through, the one that keeps failing keeps being retried and the
 * dead-link count can reach its threshold. Losses are usually declared in
 * order, so this is an append. */
static void lost_insert(tern_kcp *k, seg *s)
{
    seg_list *l = &k->lost;
    if (!l->tail || tern_kcp_diff32(s->sn, l->tail->sn) > 0) {
        list_append(l, s);
        return;
    }
    seg *at = l->head;
    while (tern_kcp_diff32(at->sn, s->sn) < 0)
        at = at->next;
    list_insert_before(l, at, s);
}

static seg *list_pop(seg_list *l)
{
    seg *s = l->head;
    if (s)
        list_remove(l, s);
    return s;
}

/* ---- segment pool ---- */

static size_t seg_charge(const seg *s)
{
    return sizeof(seg) + s->cap;
}

static size_t class_charge(const tern_kcp *k, uint32_t len)
{
    for (int c = 0; c < N_CLASSES; c++)
        if (len <= k->class_cap[c])
            return sizeof(seg) + k->class_cap[c];
    return sizeof(seg) + len;
}

static seg *seg_alloc(tern_kcp *k, uint32_t len)
{
    seg *s = NULL;
    uint8_t cls = UNPOOLED;
    uint32_t cap = len;
    for (uint8_t c = 0; c < N_CLASSES; c++) {
        if (len <= k->class_cap[c]) {
            cls = c;
            cap = k->class_cap[c];
            break;
        }
    }
    if (cls != UNPOOLED && k->free_segs[cls]) {
        s = k->free_segs[cls];
        k->free_segs[cls] = s->next;
        k->pool_bytes -= sizeof(seg) + cap;
    } else {
        s = tern_mem_alloc(&k->mem, sizeof(seg) + cap);
        if (!s)
            return NULL;
    }
    memset(s, 0, sizeof(*s));
    s->cap = cap;
    s->len = len;
    s->pool_class = cls;
    s->heap_index = NOT_IN_HEAP;
    return s;
}

/* The free lists keep what steady traffic recycles, but never more than the
 * send queue's own bound: traffic of changing sizes would otherwise leave a
 * full queue's worth idle in every size class. */
static void seg_free(tern_kcp *k, seg *s)
{
    size_t charge = seg_charge(s);
    if (s->pool_class == UNPOOLED || k->pool_bytes + charge > k->cfg.snd_queue_max) {
        tern_mem_free(&k->mem, s);
        return;
    }
    k->pool_bytes += charge;
    s->next = k->free_segs[s->pool_class];
    k->free_segs[s->pool_class] = s;
}

/* ---- timer heap, keyed by deadline ---- */

static void heap_place(tern_kcp *k, uint32_t i, heap_entry e)
{
    k->heap[i] = e;
    e.s->heap_index = i;
}

static void heap_sift_up(tern_kcp *k, uint32_t i)
{
    heap_entry e = k->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (k->heap[parent].deadline <= e.deadline)
            break;
        heap_place(k, i, k->heap[parent]);
        i = parent;
    }
    heap_place(k, i, e);
}

static void heap_sift_down(tern_kcp *k, uint32_t i)
{
    heap_entry e = k->heap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= k->heap_len)
            break;
        if (child + 1 < k->heap_len && k->heap[child + 1].deadline < k->heap[child].deadline)
            child++;
        if (e.deadline <= k->heap[child].deadline)
            break;
        heap_place(k, i, k->heap[child]);
        i = child;
    }
    heap_place(k, i, e);
}

static void heap_push(tern_kcp *k, seg *s)
{
    uint32_t i = k->heap_len++;
    heap_place(k, i, (heap_entry){s->deadline, s});
    heap_sift_up(k, i);
}

static void heap_remove(tern_kcp *k, seg *s)
{
    uint32_t i = s->heap_index;
    s->heap_index = NOT_IN_HEAP;
    heap_entry last = k->heap[--k->heap_len];
    if (i == k->heap_len)
        return;
    heap_place(k, i, last);
    heap_sift_up(k, i);
    heap_sift_down(k, last.s->heap_index);
}

/* The deadline only ever moves earlier here. */
static void heap_deadline_earlier(tern_kcp *k, seg *s, tern_ms deadline)
{
    s->deadline = deadline;
    k->heap[s->heap_index].deadline = deadline;
    heap_sift_up(k, s->heap_index);
}

/* ---- message deadlines: records in a heap of their own ---- */

static void dheap_place(tern_kcp *k, uint32_t i, dmsg *m)
{
    k->dheap[i] = m;
    m->heap_index = i;
}

static void dheap_sift_up(tern_kcp *k, uint32_t i)
{
    dmsg *m = k->dheap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (k->dheap[parent]->deadline <= m->deadline)
            break;
        dheap_place(k, i, k->dheap[parent]);
        i = parent;
    }
    dheap_place(k, i, m);
}

static void dheap_sift_down(tern_kcp *k, uint32_t i)
{
    dmsg *m = k->dheap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= k->dheap_len)
            break;
        if (child + 1 < k->dheap_len && k->dheap[child + 1]->deadline < k->dheap[child]->deadline)
            child++;
        if (m->deadline <= k->dheap[child]->deadline)
            break;
        dheap_place(k, i, k->dheap[child]);
        i = child;
    }
    dheap_place(k, i, m);
}

/* The caller made room (dmsg_alloc). */
static void dheap_push(tern_kcp *k, dmsg *m)
{
    uint32_t i = k->dheap_len++;
    dheap_place(k, i, m);
    dheap_sift_up(k, i);
}

static void dheap_remove(tern_kcp *k, dmsg *m)
{
    uint32_t i = m->heap_index;
    dmsg *last = k->dheap[--k->dheap_len];
    if (i == k->dheap_len)
        return;
    dheap_place(k, i, last);
    dheap_sift_up(k, i);
    dheap_sift_down(k, last->heap_index);
}

/* Room in the heap for one more record, and the record itself (from the
 * free list when it has one: a deadline per game message must not mean a
 * malloc per message). */
static dmsg *dmsg_alloc(tern_kcp *k)
{
    if (k->dheap_len == k->dheap_cap) {
        uint32_t n = k->dheap_cap ? k->dheap_cap * 2 : RING_MIN_DMSG;
        dmsg **heap = tern_mem_alloc(&k->mem, n * sizeof(dmsg *));
        if (!heap)
            return NULL;
        if (k->dheap_len)
            memcpy(heap, k->dheap, k->dheap_len * sizeof(dmsg *));
        tern_mem_free(&k->mem, k->dheap);
        k->dheap = heap;
        k->dheap_cap = n;
    }
    dmsg *m = k->free_dmsgs;
    if (m) {
        k->free_dmsgs = m->next_free;
        k->pool_bytes -= sizeof(dmsg);
    } else if ((m = tern_mem_alloc(&k->mem, sizeof(dmsg))) == NULL) {
        return NULL;
    }
    memset(m, 0, sizeof(*m));
    return m;
}

/* Takes a record out of the heap and frees it, once no segment of its
 * message is left to point at it. */
static void dmsg_release(tern_kcp *k, dmsg *m)
{
    dheap_remove(k, m);
    k->snd_mem -= sizeof(dmsg);
    if (k->pool_bytes + sizeof(dmsg) > k->cfg.snd_queue_max) {
        tern_mem_free(&k->mem, m);
        return;
    }
    k->pool_bytes += sizeof(dmsg);
    m->next_free = k->free_dmsgs;
    k->free_dmsgs = m;
}

/* ---- RTT and RTO (RFC 6298) ---- */

static uint32_t srtt_ms(const tern_kcp *k)
{
    return (uint32_t)(k->srtt8 / 8);
}

static void rtt_sample(tern_kcp *k, uint32_t rtt)
{
    uint64_t r8 = (uint64_t)rtt * 8;
    if (!k->have_rtt) {
        k->have_rtt = true;
        k->srtt8 = r8;
        k->rttvar8 = r8 / 2;
        k->min_rtt = rtt;
    } else {
        uint64_t delta = k->srtt8 > r8 ? k->srtt8 - r8 : r8 - k->srtt8;
        k->rttvar8 = (3 * k->rttvar8 + delta) / 4;
        k->srtt8 = (7 * k->srtt8 + r8) / 8;
        if (rtt < k->min_rtt)
            k->min_rtt = rtt;
    }
    /* RFC 6298 with KCP's interval as the clock granularity, plus the
     * longest the peer may hold an ACK (RFC 9002's max_ack_delay; we assume
     * the peer runs our settings): a late ACK is not a lost segment. */
    uint64_t var = k->rttvar8 * 4 / 8;
    uint64_t peer_ack_delay = k->cfg.ack_nodelay ? 0 : k->cfg.ack_delay_ms;
    uint64_t rto = k->srtt8 / 8 + (var > k->cfg.interval_ms ? var : k->cfg.interval_ms) +
                   peer_ack_delay;
    k->rto = clamp_u32(rto, k->cfg.rto_min_ms, k->cfg.rto_max_ms);
}

/* How long after a later-sent segment was acknowledged an earlier one may
 * still be merely reordered. Starts at a quarter of the minimum RTT and
 * grows each time a retransmission proves spurious (RFC 8985's idea). */
static tern_ms reorder_window(const tern_kcp *k)
{
    uint64_t base = k->have_rtt ? k->min_rtt : k->rto;
    uint64_t w = base * k->reorder_mult / 4;
    uint64_t cap = k->have_rtt ? srtt_ms(k) : k->rto;
    if (w > cap)
        w = cap;
    return w ? w : 1;
}

/* ---- windows ---- */

static uint32_t rcv_unused_wnd(const tern_kcp *k)
{
    uint32_t used = k->rcv_nxt - k->rcv_read;
    uint32_t free_wnd = used < k->cfg.rcv_wnd ? k->cfg.rcv_wnd - used : 0;
    return free_wnd > UINT16_MAX ? UINT16_MAX : free_wnd;
}

/* The congestion window covers retransmissions as well as new data: resent
 * segments sent past it into a full queue would only be lost again. */
static bool cwnd_allows(const tern_kcp *k, const seg *s)
{
    return !k->cc_limits || k->cc->can_send(k->cc_state, s->len);
}

static uint32_t send_wnd(const tern_kcp *k)
{
    return k->cfg.snd_wnd < k->rmt_wnd ? k->cfg.snd_wnd : k->rmt_wnd;
}

static bool can_send_new(const tern_kcp *k)
{
    const seg *s = k->snd_queue.head;
    /* The numbers of a message cut short come first (consume_skips). */
    if (!s || k->snd_skip)
        return false;
    if (k->snd_nxt - k->snd_una >= send_wnd(k))
        return false;
    return cwnd_allows(k, s);
}

/* A resend past the peer's window would be dropped unacknowledged and only
 * bring the dead link closer: it waits, and the window is probed. */
static bool can_resend(const tern_kcp *k, const seg *s)
{
    return s->sn - k->snd_una < send_wnd(k) && cwnd_allows(k, s);
}

/* Every entry point that can kill the link ends here, so the callback
 * fires once whichever way death came (a segment's sends or the probes). */
static void report_dead(tern_kcp *k)
{
    if (k->dead && !k->dead_reported) {
        k->dead_reported = true;
        if (k->cb.dead_link)
            k->cb.dead_link(k, k->user_data);
    }
}

static void update_probe_timer(tern_kcp *k, tern_ms now)
{
    if (k->rmt_wnd != 0 || (!k->snd_queue.head && !k->lost.head && !k->snd_skip)) {
        k->probe_due = NEVER;
        k->probe_wait = 0;
        return;
    }
    if (k->probe_due == NEVER) {
        k->probe_wait = k->cfg.probe_min_ms;
        k->probe_due = now + k->probe_wait;
    } else if (now >= k->probe_due) {
        k->probe_flags |= PROBE_ASK;
        /* A peer that answers no probe at all is as gone as one that
         * acknowledges nothing. */
        if (++k->probes_unanswered >= k->cfg.dead_link) {
            k->dead = true;
            report_dead(k);
        }
        uint64_t next = (uint64_t)k->probe_wait + k->probe_wait / 2;
        k->probe_wait = clamp_u32(next, k->cfg.probe_min_ms, k->cfg.probe_max_ms);
        k->probe_due = now + k->probe_wait;
    }
}

/* ---- growable rings ---- */

enum { RING_MIN = 16 };

static uint32_t grown_cap(uint32_t cap, uint32_t need)
{
    uint32_t c = cap ? cap : RING_MIN;
    while (c < need)
        c <<= 1;
    return c;
}

/* Makes room for `need` sequence numbers from snd_una; the timer heap never
 * holds more than that, so it grows alongside. */
static int grow_snd(tern_kcp *k, uint32_t need)
{
    uint32_t cap = k->snd_ring ? k->snd_mask + 1 : 0;
    if (need <= cap)
        return 0;
    uint32_t ncap = grown_cap(cap, need);
    seg **ring = tern_mem_calloc(&k->mem, ncap, sizeof(seg *));
    heap_entry *heap = tern_mem_calloc(&k->mem, ncap, sizeof(heap_entry));
    uint8_t *end = k->cfg.forward ? tern_mem_calloc(&k->mem, ncap, 1) : NULL;
    if (!ring || !heap || (k->cfg.forward && !end)) {
        tern_mem_free(&k->mem, ring);
        tern_mem_free(&k->mem, heap);
        tern_mem_free(&k->mem, end);
        return TERN_ERR_NOMEM;
    }
    for (uint32_t sn = k->snd_una; sn != k->snd_nxt; sn++) {
        ring[sn & (ncap - 1)] = k->snd_ring[sn & k->snd_mask];
        if (end)
            end[sn & (ncap - 1)] = k->snd_end[sn & k->snd_mask];
    }
    if (k->heap_len)
        memcpy(heap, k->heap, k->heap_len * sizeof(heap_entry));
    tern_mem_free(&k->mem, k->snd_ring);
    tern_mem_free(&k->mem, k->heap);
    tern_mem_free(&k->mem, k->snd_end);
    k->snd_ring = ring;
    k->heap = heap;
    k->snd_end = end;
    k->snd_mask = ncap - 1;
    return 0;
}

/* Makes room for `need` sequence numbers from rcv_read. */
static int grow_rcv(tern_kcp *k, uint32_t need)
{
    uint32_t cap = k->rcv_ring ? k->rcv_mask + 1 : 0;
    if (need <= cap)
        return 0;
    uint32_t ncap = grown_cap(cap, need);
    seg **ring = tern_mem_calloc(&k->mem, ncap, sizeof(seg *));
    if (!ring)
        return TERN_ERR_NOMEM;
    for (uint32_t i = 0; i < cap; i++) {
        uint32_t sn = k->rcv_read + i;
        ring[sn & (ncap - 1)] = k->rcv_ring[sn & k->rcv_mask];
    }
    tern_mem_free(&k->mem, k->rcv_ring);
    k->rcv_ring = ring;
    k->rcv_mask = ncap - 1;
    return 0;
}

/* Makes room to append one pending ACK: first by moving the pending ones
 * to the front (write_pkt takes from the front without moving the rest),
 * then by doubling up to ack_cap. */
static int grow_acks(tern_kcp *k)
{
    if (k->ack_head + k->ack_count < k->ack_alloc)
        return 0;
    if (k->ack_head) {
        memmove(k->acks, k->acks + k->ack_head, k->ack_count * sizeof(pending_ack));
        k->ack_head = 0;
        if (k->ack_count < k->ack_alloc)
            return 0;
    }
    if (k->ack_alloc >= k->ack_cap)
        return TERN_ERR_NOBUFS;
    uint32_t n = k->ack_alloc ? k->ack_alloc * 2 : RING_MIN;
    if (n > k->ack_cap)
        n = k->ack_cap;
    pending_ack *acks = tern_mem_alloc(&k->mem, n * sizeof(pending_ack));
    if (!acks)
        return TERN_ERR_NOMEM;
    if (k->ack_count)
        memcpy(acks, k->acks, k->ack_count * sizeof(pending_ack));
    tern_mem_free(&k->mem, k->acks);
    k->acks = acks;
    k->ack_alloc = n;
    return 0;
}

static size_t compute_max_message(const tern_kcp *k)
{
    size_t per_seg = sizeof(seg) + k->mss;
    /* A deadline message also holds its record. */
    size_t budget = k->cfg.snd_queue_max;
    if (k->cfg.forward)
        budget = budget > sizeof(dmsg) ? budget - sizeof(dmsg) : 0;
    size_t fit = budget / per_seg;
    if (k->cfg.mode == TERN_KCP_MODE_MESSAGE && fit > TERN_KCP_MAX_FRAGMENTS)
        fit = TERN_KCP_MAX_FRAGMENTS;
    return fit * k->mss;
}

/* ---- creation ---- */

int tern_kcp_new(tern_kcp **out, const tern_kcp_settings *settings,
                 const tern_kcp_callbacks *callbacks, void *user_data, const tern_mem *mem,
                 tern_ms now)
{
    if (!out || !settings)
        return TERN_ERR_INVAL;
    *out = NULL;
    int rc = tern_kcp_settings_check(settings);
    if (rc)
        return rc;
    tern_mem m;
    tern_mem_init(&m, mem);
    tern_kcp *k = tern_mem_calloc(&m, 1, sizeof(*k));
    if (!k)
        return TERN_ERR_NOMEM;
    k->mem = m;
    k->cfg = *settings;
    if (callbacks)
        k->cb = *callbacks;
    k->user_data = user_data;
    k->mss = settings->mtu - TERN_KCP_OVERHEAD;
    k->now = now;
    k->class_cap[0] = k->mss < 128 ? k->mss : 128;
    k->class_cap[1] = k->mss < 512 ? k->mss : 512;
    k->class_cap[2] = k->mss;

    /* The rings and the ACK array start empty and grow on demand up to the
     * windows: an idle engine costs its struct and nothing more. */
    k->ack_cap = settings->rcv_wnd + 64;

    k->cc = settings->cc ? settings->cc : tern_kcp_cc_find("none");
    if (settings->cc_state) {
        k->cc_state = settings->cc_state;
    } else if (k->cc->state_size) {
        k->cc_state = tern_mem_calloc(&m, 1, k->cc->state_size);
        k->cc_owned = true;
    }
    if (k->cc->state_size && !k->cc_state) {
        tern_kcp_del(k);
        return TERN_ERR_NOMEM;
    }
    if (k->cc_owned)
        k->cc->init(k->cc_state, k->mss, now);
    k->cc_limits = k->cc != tern_kcp_cc_find("none");
    k->max_message = compute_max_message(k);

    /* Until the peer says, assume its window is like ours, as classic KCP
     * does; what a smaller real window drops is not held against the link
     * (see transmit()). */
    k->rmt_wnd = settings->rcv_wnd;
    k->rto = settings->rto_initial_ms;
    k->reorder_mult = 1;
    k->ack_due = NEVER;
    k->probe_due = NEVER;
    k->fwd_due = NEVER;
    k->last_adv_wnd = settings->rcv_wnd;
    *out = k;
    return 0;
}

static void free_list(tern_kcp *k, seg_list *l)
{
    seg *s;
    while ((s = list_pop(l)) != NULL)
        seg_free(k, s);
}

void tern_kcp_del(tern_kcp *k)
{
    if (!k)
        return;
    /* A shared controller must forget what this engine had in flight. */
    if (k->cc && k->in_flight_bytes)
        k->cc->on_discard(k->cc_state, k->in_flight_bytes);
    free_list(k, &k->snd_queue);
    free_list(k, &k->in_flight);
    free_list(k, &k->lost);
    if (k->rcv_ring) {
        for (uint32_t i = 0; i <= k->rcv_mask; i++)
            if (k->rcv_ring[i] && k->rcv_ring[i] != DELIVERED)
                seg_free(k, k->rcv_ring[i]);
    }
    for (uint32_t i = 0; i < k->dheap_len; i++)
        tern_mem_free(&k->mem, k->dheap[i]);
    while (k->free_dmsgs) {
        dmsg *next = k->free_dmsgs->next_free;
        tern_mem_free(&k->mem, k->free_dmsgs);
        k->free_dmsgs = next;
    }
    for (int c = 0; c < N_CLASSES; c++) {
        seg *s = k->free_segs[c];
        while (s) {
            seg *next = s->next;
            tern_mem_free(&k->mem, s);
            s = next;
        }
    }
    if (k->cc_owned)
        tern_mem_free(&k->mem, k->cc_state);
    tern_mem_free(&k->mem, k->snd_ring);
    tern_mem_free(&k->mem, k->snd_end);
    tern_mem_free(&k->mem, k->heap);
    tern_mem_free(&k->mem, k->dheap);
    tern_mem_free(&k->mem, k->rcv_ring);
    tern_mem_free(&k->mem, k->acks);
    tern_mem m = k->mem;
    tern_mem_free(&m, k);
}

void *tern_kcp_user_data(const tern_kcp *k)
{
    return k ? k->user_data : NULL;
}

/* ---- application send ---- */

size_t tern_kcp_max_message(const tern_kcp *k)
{
    return k ? k->max_message : 0;
}

static void queue_segment(tern_kcp *k, seg *s)
{
    s->state = SEG_QUEUED;
    list_append(&k->snd_queue, s);
    k->snd_mem += seg_charge(s);
    k->snd_payload += s->len;
}

/* Every queued or unacknowledged segment is guaranteed a ring slot (up to
 * the send window) when it is queued, so sending later never allocates. The
 * numbers a message cut short still has to use up count too. */
static int reserve_snd(tern_kcp *k, size_t more)
{
    uint64_t need = (uint64_t)(k->snd_nxt - k->snd_una) + k->snd_skip + k->snd_queue.count + more;
    if (need > k->cfg.snd_wnd)
        need = k->cfg.snd_wnd;
    if (k->snd_ring && need <= (uint64_t)k->snd_mask + 1)
        return 0;
    return grow_snd(k, (uint32_t)need);
}

static int send_message(tern_kcp *k, const uint8_t *data, size_t len, tern_ms deadline)
{
    uint32_t count = len == 0 ? 1 : (uint32_t)((len + k->mss - 1) / k->mss);
    size_t charge = deadline == NEVER ? 0 : sizeof(dmsg);
    for (uint32_t i = 0; i < count; i++) {
        size_t part = len - (size_t)i * k->mss;
        charge += class_charge(k, (uint32_t)(part < k->mss ? part : k->mss));
    }
    if (k->snd_mem + charge > k->cfg.snd_queue_max)
        return TERN_ERR_WOULDBLOCK;
    if (reserve_snd(k, count) != 0)
        return TERN_ERR_NOMEM;
    /* Allocate every fragment (and the deadline record) before queueing
     * any: a message is sent whole or not at all. */
    seg_list parts = {0};
    for (uint32_t i = 0; i < count; i++) {
        size_t off = (size_t)i * k->mss;
        uint32_t part = (uint32_t)(len - off < k->mss ? len - off : k->mss);
        seg *s = seg_alloc(k, part);
        if (!s) {
            free_list(k, &parts);
            return TERN_ERR_NOMEM;
        }
        if (part)
            memcpy(s->data, data + off, part);
        s->frg = (uint8_t)(count - 1 - i);
        list_append(&parts, s);
    }
    dmsg *m = NULL;
    if (deadline != NEVER) {
        if ((m = dmsg_alloc(k)) == NULL) {
            free_list(k, &parts);
            return TERN_ERR_NOMEM;
        }
        m->deadline = deadline;
        m->count = (uint16_t)count;
        m->first_queued = parts.head;
        k->snd_mem += sizeof(dmsg);
        dheap_push(k, m);
    }
    seg *s;
    while ((s = list_pop(&parts)) != NULL) {
        s->msg = m;
        queue_segment(k, s);
    }
    k->st.msgs_sent++;
    return 0;
}

static int send_stream(tern_kcp *k, const uint8_t *data, size_t len)
{
    seg *tail = k->snd_queue.tail;
    size_t room = tail ? tail->cap - tail->len : 0;
    size_t rest = len > room ? len - room : 0;
    size_t new_segs = (rest + k->mss - 1) / k->mss;
    if (k->snd_mem + new_segs * (sizeof(seg) + k->mss) > k->cfg.snd_queue_max)
        return TERN_ERR_WOULDBLOCK;
    if (reserve_snd(k, new_segs) != 0)
        return TERN_ERR_NOMEM;
    seg_list fresh = {0};
    for (size_t i = 0; i < new_segs; i++) {
        seg *s = seg_alloc(k, k->mss);
        if (!s) {
            free_list(k, &fresh);
            return TERN_ERR_NOMEM;
        }
        s->len = 0;
        list_append(&fresh, s);
    }
    size_t taken = len < room ? len : room;
    if (taken) {
        memcpy(tail->data + tail->len, data, taken);
        tail->len += (uint32_t)taken;
        k->snd_payload += taken;
    }
    seg *s;
    while ((s = list_pop(&fresh)) != NULL) {
        uint32_t part = (uint32_t)(len - taken < k->mss ? len - taken : k->mss);
        memcpy(s->data, data + taken, part);
        s->len = part;
        taken += part;
        queue_segment(k, s);
    }
    return 0;
}

int tern_kcp_send(tern_kcp *k, const void *data, size_t len, tern_ms now)
{
    if (!k || (!data && len))
        return TERN_ERR_INVAL;
    advance_clock(k, now);
    if (k->dead)
        return TERN_ERR_DEADLINK;
    if (len > k->max_message)
        return TERN_ERR_MSGSIZE;
    int rc;
    if (k->cfg.mode == TERN_KCP_MODE_MESSAGE)
        rc = send_message(k, data, len, NEVER);
    else
        rc = len ? send_stream(k, data, len) : 0;
    update_probe_timer(k, k->now);
    return rc;
}

int tern_kcp_send_deadline(tern_kcp *k, const void *data, size_t len, tern_ms deadline, tern_ms now)
{
    if (deadline == NEVER)
        return tern_kcp_send(k, data, len, now);
    if (!k || (!data && len))
        return TERN_ERR_INVAL;
    /* Without FORWARD the receiver could never learn to skip the message. */
    if (k->cfg.mode != TERN_KCP_MODE_MESSAGE || !k->cfg.forward)
        return TERN_ERR_UNSUPPORTED;
    advance_clock(k, now);
    if (k->dead)
        return TERN_ERR_DEADLINK;
    if (len > k->max_message)
        return TERN_ERR_MSGSIZE;
    int rc = send_message(k, data, len, deadline);
    update_probe_timer(k, k->now);
    return rc;
}

/* ---- application receive ---- */

static seg *rcv_slot(const tern_kcp *k, uint32_t sn)
{
    return k->rcv_ring[sn & k->rcv_mask];
}

/* The segment at sn if it still holds data: not empty, not DELIVERED. */
static seg *rcv_data(const tern_kcp *k, uint32_t sn)
{
    seg *s = rcv_slot(k, sn);
    return s == DELIVERED ? NULL : s;
}

/* Empties sn's slot, freeing what it held. */
static void rcv_drop(tern_kcp *k, uint32_t sn)
{
    seg **slot = &k->rcv_ring[sn & k->rcv_mask];
    seg *s = *slot;
    if (s && s != DELIVERED) {
        if (s->state == SEG_READY)
            list_remove(&k->rcv_ready, s);
        seg_free(k, s);
    }
    *slot = NULL;
}

/* Nothing is left to read at a DELIVERED mark or at a sequence number a
 * FORWARD skipped, so rcv_read moves past them at once: the slot at
 * rcv_read holds data whenever anything is deliverable. The classic engine
 * has neither, and this costs it one test. */
static void release_head(tern_kcp *k)
{
    while (k->rcv_read != k->rcv_nxt && !rcv_data(k, k->rcv_read))
        rcv_drop(k, k->rcv_read++);
}

/* Moves held segments that are now in order into the deliverable range,
 * which holds at most rcv_wnd unread segments (marks and skipped sequence
 * numbers included until rcv_read passes them). */
static void advance_rcv_nxt(tern_kcp *k)
{
    seg *s;
    while (k->rcv_held && k->rcv_nxt - k->rcv_read < k->cfg.rcv_wnd &&
           (s = rcv_slot(k, k->rcv_nxt)) != NULL) {
        k->rcv_held--;
        if (k->rcv_orphan) {
            /* The rest of a message abandoned past where a FORWARD could
             * reach: dropped up to its last fragment. */
            if (s == DELIVERED || s->frg == 0)
                k->rcv_orphan = false;
            if (s != DELIVERED)
                k->st.forwarded_dropped++;
            rcv_drop(k, k->rcv_nxt);
        } else {
            k->rcv_ready_bytes += s->len;
        }
        k->rcv_nxt++;
        release_head(k);
    }
}

/* Message mode: the segments from rcv_read up to the first with frg == 0,
 * after the tail of a dropped oversize message that is still to be
 * discarded, so that peek and recv agree (recv discards that tail first,
 * after which there is nothing to skip). */
static tern_ssize message_size(const tern_kcp *k, uint32_t *segments)
{
    uint32_t sn = k->rcv_read;
    uint32_t discard = k->rcv_discard;
    while (discard && sn != k->rcv_nxt) {
        const seg *s = rcv_data(k, sn);
        if (s)
            discard = s->frg == 0 ? 0 : discard - 1;
        sn++;
    }
    if (discard)
        return TERN_ERR_AGAIN;
    size_t size = 0;
    for (uint32_t first = sn; sn != k->rcv_nxt; sn++) {
        const seg *s = rcv_data(k, sn);
        if (!s)
            return TERN_ERR_AGAIN; /* a FORWARD never leaves a gap inside a message */
        size += s->len;
        if (s->frg == 0) {
            *segments = sn - first + 1;
            return (tern_ssize)size;
        }
    }
    return TERN_ERR_AGAIN;
}

/* Unordered: the size of the ready message that starts with f, all of
 * whose segments are held (check_ready made sure). */
static size_t ready_size(const tern_kcp *k, const seg *f, uint32_t *segments)
{
    size_t size = 0;
    uint32_t sn = f->sn;
    for (;; sn++) {
        const seg *s = rcv_slot(k, sn);
        size += s->len;
        if (s->frg == 0)
            break;
    }
    *segments = sn - f->sn + 1;
    return size;
}

tern_ssize tern_kcp_peek_size(const tern_kcp *k)
{
    if (!k)
        return TERN_ERR_INVAL;
    if (k->cfg.mode == TERN_KCP_MODE_STREAM)
        return k->rcv_ready_bytes ? (tern_ssize)k->rcv_ready_bytes : TERN_ERR_AGAIN;
    uint32_t segments;
    if (k->cfg.unordered)
        return k->rcv_ready.head ? (tern_ssize)ready_size(k, k->rcv_ready.head, &segments)
                                 : TERN_ERR_AGAIN;
    return message_size(k, &segments);
}

/* Whether a message starts at sn, as far as the receiver can know: the
 * segment before it ended a message (or was read as part of one), or sn is
 * the oldest unread with no oversize tail to drop first, or a FORWARD
 * validated what follows a skipped sequence number. A segment says how many
 * fragments follow it but not how many came before, so after a gap nothing
 * is known until the gap fills. */
static bool starts_message(const tern_kcp *k, uint32_t sn)
{
    if (sn == k->rcv_read)
        return k->rcv_discard == 0 && !(k->rcv_orphan && sn == k->rcv_nxt);
    const seg *p = rcv_slot(k, sn - 1);
    if (p)
        return p == DELIVERED || p->frg == 0;
    if (tern_kcp_diff32(sn, k->rcv_nxt) > 0)
        return false; /* not received yet */
    return sn != k->rcv_nxt || !k->rcv_orphan;
}

static void queue_ready(tern_kcp *k, seg *first)
{
    if (first->state == SEG_READY)
        return;
    first->state = SEG_READY;
    list_append(&k->rcv_ready, first);
}

/* frg is one byte: no message has more segments than this. */
enum { MSG_SEGS_MAX = 256 };

/* Unordered: queues the message holding sn if it is complete now. Walks at
 * most one message each way, so a segment costs O(1) in the window. */
static void check_ready(tern_kcp *k, uint32_t sn)
{
    uint32_t cap = k->rcv_ring ? k->rcv_mask + 1 : 0;
    if (tern_kcp_diff32(sn, k->rcv_read) < 0 || sn - k->rcv_read >= cap || !rcv_data(k, sn))
        return;
    uint32_t first = sn;
    while (first != k->rcv_read) {
        const seg *p = rcv_data(k, first - 1);
        if (!p || p->frg == 0)
            break;
        if (sn - first + 1 >= MSG_SEGS_MAX)
            return;
        first--;
    }
    if (!starts_message(k, first))
        return;
    for (uint32_t last = sn; rcv_slot(k, last)->frg != 0;) {
        last++;
        if (last - first >= MSG_SEGS_MAX || last - k->rcv_read >= cap || !rcv_data(k, last))
            return;
    }
    queue_ready(k, rcv_slot(k, first));
}

static void after_read(tern_kcp *k)
{
    release_head(k);
    advance_rcv_nxt(k);
    /* The peer stopped sending because we said our window was full; tell it
     * at once that there is room again rather than wait for its probe. */
    if (k->last_adv_wnd == 0 && rcv_unused_wnd(k) > 0)
        k->probe_flags |= PROBE_TELL;
}

/* Drops the arrived tail of a message that was too large for the window. */
static void discard_oversize_tail(tern_kcp *k)
{
    bool dropped = false;
    while (k->rcv_discard && k->rcv_read != k->rcv_nxt) {
        seg *s = rcv_data(k, k->rcv_read);
        if (s) {
            k->rcv_discard = s->frg == 0 ? 0 : k->rcv_discard - 1;
            k->rcv_ready_bytes -= s->len;
        }
        rcv_drop(k, k->rcv_read++);
        dropped = true;
    }
    if (dropped)
        after_read(k);
}

static tern_ssize recv_message(tern_kcp *k, uint8_t *buf, size_t cap)
{
    discard_oversize_tail(k);
    uint32_t segments = 0;
    tern_ssize size;
    uint32_t first = k->rcv_read;
    if (!k->cfg.unordered) {
        size = message_size(k, &segments);
    } else if (k->rcv_ready.head) {
        first = k->rcv_ready.head->sn;
        size = (tern_ssize)ready_size(k, k->rcv_ready.head, &segments);
    } else {
        size = TERN_ERR_AGAIN;
    }
    if (size == TERN_ERR_AGAIN) {
        /* A full window holding no message end can never complete: the peer
         * sent a message larger than our window. Drop it so the stream moves
         * on, and say so. (Unordered, the message at rcv_read then fills the
         * whole window: anything complete in it would be ready.) */
        if (k->rcv_nxt - k->rcv_read < k->cfg.rcv_wnd)
            return TERN_ERR_AGAIN;
        uint8_t frg = 0;
        while (k->rcv_read != k->rcv_nxt) {
            const seg *s = rcv_data(k, k->rcv_read);
            if (s) {
                frg = s->frg;
                k->rcv_ready_bytes -= s->len;
            }
            rcv_drop(k, k->rcv_read++);
        }
        /* Its remaining fragments must not surface as a message of their
         * own: the last one dropped says how many are still to come. */
        k->rcv_discard = frg;
        k->st.oversize_msgs++;
        after_read(k);
        return TERN_ERR_MSGSIZE;
    }
    if ((size_t)size > cap)
        return TERN_ERR_NOBUFS;
    size_t off = 0;
    for (uint32_t i = 0; i < segments; i++) {
        uint32_t sn = first + i;
        const seg *s = rcv_slot(k, sn);
        if (s->len)
            memcpy(buf + off, s->data, s->len);
        off += s->len;
        if (tern_kcp_diff32(sn, k->rcv_nxt) < 0)
            k->rcv_ready_bytes -= s->len;
        rcv_drop(k, sn);
        /* Read ahead of rcv_nxt (unordered): the mark keeps the sequence
         * number taken, so a copy is a duplicate and rcv_nxt can pass. */
        if (k->cfg.unordered)
            k->rcv_ring[sn & k->rcv_mask] = DELIVERED;
    }
    k->st.msgs_recv++;
    after_read(k);
    return size;
}

/* Stream mode: an empty segment carries nothing to read, so nothing would
 * ever consume it; a peer sending them could fill and wedge the window. */
static void release_empty_stream_head(tern_kcp *k)
{
    /* Until none is left at the head: the room released lets more become
     * deliverable, and that may begin with an empty one again. */
    bool released = true;
    while (released) {
        released = false;
        while (k->rcv_read != k->rcv_nxt && rcv_slot(k, k->rcv_read)->len == 0) {
            rcv_drop(k, k->rcv_read++);
            released = true;
        }
        if (released)
            after_read(k);
    }
}

static tern_ssize recv_stream(tern_kcp *k, uint8_t *buf, size_t cap)
{
    release_empty_stream_head(k);
    if (!k->rcv_ready_bytes)
        return TERN_ERR_AGAIN;
    size_t off = 0;
    while (off < cap && k->rcv_read != k->rcv_nxt) {
        seg *s = rcv_slot(k, k->rcv_read);
        size_t avail = s->len - s->consumed;
        size_t n = avail < cap - off ? avail : cap - off;
        if (n)
            memcpy(buf + off, s->data + s->consumed, n);
        off += n;
        s->consumed += (uint32_t)n;
        if (s->consumed == s->len)
            rcv_drop(k, k->rcv_read++);
    }
    k->rcv_ready_bytes -= off;
    after_read(k);
    /* Empty segments now at the head would otherwise wait for the next
     * recv, and the window room they hold would make peek_size() report
     * less than that recv returns. */
    release_empty_stream_head(k);
    return (tern_ssize)off;
}

tern_ssize tern_kcp_recv(tern_kcp *k, void *buf, size_t cap, tern_ms now)
{
    if (!k || (!buf && cap))
        return TERN_ERR_INVAL;
    advance_clock(k, now);
    if (k->cfg.mode == TERN_KCP_MODE_MESSAGE)
        return recv_message(k, buf, cap);
    return recv_stream(k, buf, cap);
}

/* ---- loss detection ---- */

static uint32_t backed_off(const tern_kcp *k, uint32_t rto)
{
    uint64_t r =
        k->cfg.backoff == TERN_KCP_BACKOFF_X2 ? (uint64_t)rto * 2 : (uint64_t)rto + rto / 2;
    return clamp_u32(r, k->cfg.rto_min_ms, k->cfg.rto_max_ms);
}

static void declare_lost(tern_kcp *k, seg *s, uint8_t kind, tern_ms now)
{
    heap_remove(k, s);
    list_remove(&k->in_flight, s);
    k->in_flight_bytes -= s->len;
    s->state = SEG_LOST;
    s->lost_kind = kind;
    lost_insert(k, s);
    k->st.lost++;
    if (kind == LOST_TIMEOUT)
        s->rto = backed_off(k, s->rto);
    k->cc->on_loss(k->cc_state, kind == LOST_TIMEOUT ? TERN_KCP_LOSS_TIMEOUT : TERN_KCP_LOSS_FAST,
                   s->len, s->last_sent, now);
}

/* Segments sent before the newest transmission just acknowledged, and still
 * not acknowledged, were skipped: fast retransmit counts skips, early retransmit
 * gives them a reorder window's grace after the time the newest one took. */
static void detect_losses(tern_kcp *k, const ack_batch *b, tern_ms now)
{
    tern_ms rack_rtt = now - b->newest_sent;
    tern_ms grace = reorder_window(k);
    seg *s = k->in_flight.head;
    while (s && s->tx_order < b->newest_order) {
        seg *next = s->next;
        s->skips++;
        bool fast_allowed = k->cfg.fast_limit == 0 || s->xmit <= k->cfg.fast_limit;
        if (k->cfg.fast_resend && s->skips >= k->cfg.fast_resend && fast_allowed) {
            declare_lost(k, s, LOST_FAST, now);
        } else if (k->cfg.early_retransmit) {
            tern_ms when = s->last_sent + rack_rtt + grace;
            if (when <= now)
                declare_lost(k, s, LOST_EARLY, now);
            else if (when < s->deadline) {
                s->early_deadline = true;
                heap_deadline_earlier(k, s, when);
            }
        }
        s = next;
    }
}

/* ---- message deadlines and FORWARD: the sender's side ---- */

/* Gives up what is left of a message whose deadline passed. */
static void expire_msg(tern_kcp *k, dmsg *m)
{
    uint32_t segs = 0;
    if (m->first_queued) {
        /* Unsent fragments are freed. If some of the message went out, its
         * sequence numbers are still consumed (snd_skip), or the next message
         * would continue the fragments the peer may already hold. Only the
         * message at the head of the queue can be partly sent. */
        uint32_t unsent = (uint32_t)(m->count - m->sent);
        seg *s = m->first_queued;
        for (uint32_t i = 0; i < unsent; i++) {
            seg *next = s->next;
            list_remove(&k->snd_queue, s);
            k->snd_mem -= seg_charge(s);
            k->snd_payload -= s->len;
            seg_free(k, s);
            s = next;
        }
        if (m->sent)
            k->snd_skip += unsent;
        segs += unsent;
    }
    for (uint32_t i = 0; i < m->sent; i++) {
        uint32_t sn = m->first_sn + i;
        if (tern_kcp_diff32(sn, k->snd_una) < 0)
            continue;
        seg **slot = &k->snd_ring[sn & k->snd_mask];
        seg *s = *slot;
        if (!s || s == ABANDONED)
            continue; /* acknowledged */
        if (s->state == SEG_IN_FLIGHT) {
            /* The application gave up on it, which says nothing about the
             * path: it leaves the flight without a loss signal (a real loss
             * was already reported when a timer or the ACKs declared it). */
            heap_remove(k, s);
            list_remove(&k->in_flight, s);
            k->in_flight_bytes -= s->len;
            k->cc->on_discard(k->cc_state, s->len);
        } else {
            list_remove(&k->lost, s);
        }
        k->snd_mem -= seg_charge(s);
        k->snd_payload -= s->len;
        seg_free(k, s);
        *slot = ABANDONED;
        k->snd_abandoned++;
        segs++;
    }
    dmsg_release(k, m);
    k->st.expired_msgs++;
    k->st.expired_segs += segs;
}

static void expire_due(tern_kcp *k, tern_ms now)
{
    while (k->dheap_len && k->dheap[0]->deadline <= now)
        expire_msg(k, k->dheap[0]);
}

/* Numbers the rest of a message cut short, as the window allows, marking
 * each abandoned: nothing is sent, the FORWARD covers them. */
static void consume_skips(tern_kcp *k)
{
    while (k->snd_skip && k->snd_nxt - k->snd_una < send_wnd(k) &&
           k->snd_nxt - k->snd_una <= k->snd_mask) {
        uint32_t i = k->snd_nxt++ & k->snd_mask;
        k->snd_ring[i] = ABANDONED;
        k->snd_end[i] = --k->snd_skip == 0;
        k->snd_abandoned++;
    }
}

static bool forward_pending(const tern_kcp *k)
{
    return tern_kcp_diff32(k->fwd_pos, k->snd_una) > 0;
}

/* Moves F (fwd_pos) past every message that is done: abandoned, or wholly
 * acknowledged. F is a message boundary, except right after the numbered
 * part of a message cut short (see below). It stops at a message still in
 * play, and at a wholly acknowledged message right after an abandoned one
 * until the peer's una reaches it: below F the peer drops a run of
 * fragments that follows a gap, as it cannot tell a message from the tail
 * of the abandoned one. Each call looks at one message again at most, so it
 * costs O(1) in the window. */
static void fwd_scan(tern_kcp *k)
{
    if (!k->snd_abandoned || tern_kcp_diff32(k->snd_una, k->fwd_pos) > 0) {
        /* Everything below snd_una is acknowledged or skipped by the peer. */
        k->fwd_pos = k->snd_una;
        k->fwd_after_abandoned = false;
        if (!k->snd_abandoned)
            return;
    }
    while (k->fwd_pos != k->snd_nxt) {
        bool abandoned = false, live = false;
        uint32_t sn = k->fwd_pos;
        for (;;) {
            if (sn == k->snd_nxt) {
                /* The rest of this message is not numbered yet. If it is the
                 * message cut short, F may stop inside it: nothing of it will
                 * ever be sent from here on, and the peer must release its
                 * window before the rest can be numbered (consume_skips). */
                if (k->snd_skip) {
                    k->fwd_pos = sn;
                    k->fwd_after_abandoned = true;
                }
                return;
            }
            uint32_t i = sn++ & k->snd_mask;
            if (k->snd_ring[i] == ABANDONED)
                abandoned = true;
            else if (k->snd_ring[i])
                live = true;
            if (k->snd_end[i])
                break;
        }
        if (!abandoned && (live || (k->fwd_after_abandoned && forward_pending(k))))
            return;
        k->fwd_pos = sn;
        k->fwd_after_abandoned = abandoned;
    }
}

/* After anything that may move F. A FORWARD is owed at once when one
 * becomes owed, or when the peer has answered the last one and F has moved
 * on since; otherwise the FORWARD timer (fwd_rto, backed off like a
 * segment's) repeats it until the peer's una reaches F. */
static void fwd_update(tern_kcp *k)
{
    consume_skips(k);
    fwd_scan(k);
    if (!forward_pending(k)) {
        k->fwd_due = NEVER;
        return;
    }
    if (k->fwd_due == NEVER || tern_kcp_diff32(k->snd_una, k->fwd_sent) >= 0) {
        k->fwd_rto = k->rto;
        k->fwd_due = min_ms(k->fwd_due, k->now);
    }
}

/* ---- input ---- */

/* latest: the ACK is known to be for the segment's latest transmission.
 * An ACK for an older one (the original of a segment since resent) must not
 * make everything sent in between look skipped. */
static void ack_segment(tern_kcp *k, seg *s, ack_batch *b, bool latest)
{
    if (s->state == SEG_IN_FLIGHT) {
        heap_remove(k, s);
        list_remove(&k->in_flight, s);
        k->in_flight_bytes -= s->len;
        b->released += s->len;
    } else {
        list_remove(&k->lost, s);
    }
    b->bytes += s->len;
    if (latest && s->tx_order > b->newest_order) {
        b->newest_order = s->tx_order;
        b->newest_sent = s->last_sent;
    }
    /* Wholly acknowledged: its deadline no longer matters. */
    if (s->msg && ++s->msg->acked == s->msg->count)
        dmsg_release(k, s->msg);
    k->snd_mem -= seg_charge(s);
    k->snd_payload -= s->len;
    k->snd_ring[s->sn & k->snd_mask] = NULL;
    seg_free(k, s);
}

static void shrink_snd_window(tern_kcp *k)
{
    while (k->snd_una != k->snd_nxt && !k->snd_ring[k->snd_una & k->snd_mask])
        k->snd_una++;
}

static void apply_una(tern_kcp *k, uint32_t una, ack_batch *b)
{
    /* An UNA beyond what we sent acknowledges nothing real: ignore it. */
    if (tern_kcp_diff32(una, k->snd_una) <= 0 || tern_kcp_diff32(una, k->snd_nxt) > 0)
        return;
    for (uint32_t sn = k->snd_una; sn != una; sn++) {
        seg *s = k->snd_ring[sn & k->snd_mask];
        /* The peer has skipped (or received) what we abandoned. */
        if (s == ABANDONED) {
            k->snd_ring[sn & k->snd_mask] = NULL;
            k->snd_abandoned--;
            continue;
        }
        /* UNA does not say which send got through; only a segment sent
         * once is unambiguous. */
        if (s)
            ack_segment(k, s, b, s->xmit == 1);
    }
    k->snd_una = una;
    shrink_snd_window(k);
}

static void apply_ack(tern_kcp *k, const tern_kcp_hdr *h, ack_batch *b)
{
    k->st.acks_recv++;
    if (tern_kcp_diff32(h->sn, k->snd_una) < 0 || tern_kcp_diff32(h->sn, k->snd_nxt) >= 0)
        return;
    seg *s = k->snd_ring[h->sn & k->snd_mask];
    if (!s || s == ABANDONED)
        return;
    uint32_t now32 = (uint32_t)k->now;
    bool latest = s->xmit == 1;
    /* Take RTT only from an echo of one of this segment's own sends. */
    if (tern_kcp_diff32(now32, h->ts) >= 0 && tern_kcp_diff32(h->ts, (uint32_t)s->first_sent) >= 0) {
        latest = tern_kcp_diff32(h->ts, (uint32_t)s->last_sent) >= 0;
        if (!b->have_rtt || tern_kcp_diff32(h->ts, b->rtt_echo) > 0) {
            b->have_rtt = true;
            b->rtt_echo = h->ts;
        }
        /* The echo names an earlier send than the latest: the original got
         * through and our fast/early retransmission was spurious, so the
         * path reorders more than we allowed for. */
        if (s->xmit > 1 && s->lost_kind != LOST_TIMEOUT &&
            tern_kcp_diff32(h->ts, (uint32_t)s->last_sent) < 0) {
            k->st.spurious++;
            if (k->reorder_mult < 4)
                k->reorder_mult++;
            k->batches_since_spurious = 0;
        }
    }
    ack_segment(k, s, b, latest);
    shrink_snd_window(k);
}

static void queue_ack(tern_kcp *k, uint32_t sn, uint32_t ts)
{
    if (grow_acks(k) != 0) {
        /* Cumulative UNA in every segment still covers what is dropped here. */
        k->ack_due = k->now;
        return;
    }
    if (k->ack_count == 0)
        k->ack_due = k->now + (k->cfg.ack_nodelay ? 0 : k->cfg.ack_delay_ms);
    k->acks[k->ack_head + k->ack_count++] = (pending_ack){sn, ts};
    if (k->ack_count >= ACK_EVERY)
        k->ack_due = k->now;
}

static void accept_data(tern_kcp *k, const tern_kcp_hdr *h, const uint8_t *payload)
{
    int32_t offset = tern_kcp_diff32(h->sn, k->rcv_read);
    if (offset < 0) {
        /* Already delivered: the peer missed our ACK or bundled a copy. The
         * UNA of any segment we send covers it, so only make sure one goes. */
        k->st.dup_segs++;
        if (k->ack_count == 0)
            queue_ack(k, h->sn, h->ts);
        return;
    }
    /* Classic KCP accepts up to rcv_wnd past rcv_nxt, not past rcv_read:
     * a classic sender that pairs a newer una with an older, larger wnd
     * (reordering) sends a little past our advertised edge, and refusing
     * that stalls it for seconds of backed-off retransmissions. So the
     * receive side holds at most rcv_wnd deliverable unread segments plus
     * rcv_wnd out of order. (A FORWARD can leave more than rcv_wnd between
     * rcv_read and rcv_nxt; the second test keeps the 2 x rcv_wnd bound
     * then, and is implied by the first otherwise.) */
    if (tern_kcp_diff32(h->sn, k->rcv_nxt) >= (int32_t)k->cfg.rcv_wnd ||
        (uint32_t)offset >= 2 * k->cfg.rcv_wnd) {
        k->st.out_of_window++;
        return;
    }
    if (grow_rcv(k, (uint32_t)offset + 1) != 0)
        return; /* not acknowledged: the peer will send it again */
    seg **slot = &k->rcv_ring[h->sn & k->rcv_mask];
    if (tern_kcp_diff32(h->sn, k->rcv_nxt) < 0 || *slot) {
        k->st.dup_segs++;
        queue_ack(k, h->sn, h->ts);
        return;
    }
    seg *s = seg_alloc(k, h->len);
    if (!s)
        return; /* not acknowledged: the peer will send it again */
    if (h->len)
        memcpy(s->data, payload, h->len);
    s->sn = h->sn;
    s->frg = k->cfg.mode == TERN_KCP_MODE_STREAM ? 0 : h->frg;
    s->state = SEG_RECEIVED;
    *slot = s;
    k->st.bytes_recv += h->len;
    queue_ack(k, h->sn, h->ts);
    k->rcv_held++;
    advance_rcv_nxt(k);
    if (k->cfg.unordered) {
        /* This segment may complete its message, or, ending one, tell
         * where the next begins. */
        check_ready(k, h->sn);
        if (h->frg == 0)
            check_ready(k, h->sn + 1);
    }
}

/* Frees the received segments in [from, to): fragments of a message the
 * sender abandoned. apply_forward() counted each in rcv_ready_bytes. */
static void drop_run(tern_kcp *k, uint32_t from, uint32_t to)
{
    for (uint32_t sn = from; sn != to; sn++) {
        const seg *s = rcv_data(k, sn);
        if (!s)
            continue;
        k->rcv_ready_bytes -= s->len;
        k->st.forwarded_dropped++;
        rcv_drop(k, sn);
    }
}

/* FORWARD(f): the sender will never send any sn below f again, and a
 * message starts at f. Every sn below f not received is skipped. A message
 * that lost a fragment that way is dropped whole, with what of it had
 * arrived: both a run of fragments cut short by a skipped sn (or by f) and a
 * run right after a skipped sn, up to its first frg 0, since its beginning
 * may be what was lost. The sender makes sure no message it still cares
 * about sits in such a place (fwd_scan). Complete messages stay.
 *
 * rcv_nxt moves to f, but never more than rcv_wnd past where it was nor
 * 2 x rcv_wnd past rcv_read (the receive side's memory bound); then the run
 * at the new rcv_nxt, unless a message ended just before it, is the rest of
 * an abandoned one (rcv_orphan), and the peer repeats the FORWARD for the
 * remainder. Each sequence number is walked over once. */
static void apply_forward(tern_kcp *k, uint32_t f)
{
    k->st.forwards_recv++;
    /* The sender repeats it until our una reaches f: tell it at once. */
    k->probe_flags |= PROBE_TELL;
    if (tern_kcp_diff32(f, k->rcv_nxt) <= 0)
        return;
    uint32_t wnd = k->cfg.rcv_wnd;
    uint32_t limit = k->rcv_nxt + wnd;
    if (tern_kcp_diff32(limit, k->rcv_read + 2 * wnd) > 0)
        limit = k->rcv_read + 2 * wnd;
    uint32_t to = tern_kcp_diff32(f, limit) > 0 ? limit : f;
    if (to == k->rcv_nxt || grow_rcv(k, to - k->rcv_read) != 0)
        return; /* no room yet, or no memory: the peer repeats it */
    /* Begin with the message still open at the end of the deliverable
     * range, if any. */
    uint32_t sn = k->rcv_nxt;
    while (sn != k->rcv_read) {
        const seg *p = rcv_data(k, sn - 1);
        if (!p || p->frg == 0)
            break;
        sn--;
    }
    uint32_t run = sn;                  /* first segment of the open run */
    bool known = starts_message(k, sn); /* ... and whether a message starts there */
    bool ended = known;                 /* a message ended just before sn */
    for (; sn != to; sn++) {
        seg *s = rcv_slot(k, sn);
        bool held = tern_kcp_diff32(sn, k->rcv_nxt) >= 0;
        if (held && s)
            k->rcv_held--;
        if (!s || s == DELIVERED) {
            if (!s)
                k->st.forwarded_skipped++;
            drop_run(k, run, sn);
            run = sn + 1;
            known = ended = s == DELIVERED;
            continue;
        }
        if (held)
            k->rcv_ready_bytes += s->len;
        ended = s->frg == 0;
        if (!ended)
            continue;
        if (!known)
            drop_run(k, run, sn + 1);
        else if (k->cfg.unordered)
            queue_ready(k, rcv_slot(k, run));
        run = sn + 1;
        known = true;
    }
    drop_run(k, run, to);
    k->rcv_nxt = to;
    k->rcv_discard = 0;
    k->rcv_orphan = to != f && !ended;
    release_head(k);
    advance_rcv_nxt(k);
    if (k->cfg.unordered)
        check_ready(k, to);
}

int tern_kcp_read_pkt(tern_kcp *k, const uint8_t *pkt, size_t len, tern_ms now)
{
    if (!k || !pkt)
        return TERN_ERR_INVAL;
    advance_clock(k, now);
    int check = tern_kcp_datagram_check_ext(pkt, len, k->cfg.conv, k->cfg.forward);
    if (check == TERN_ERR_CONV) {
        k->st.conv_mismatch++;
        return check;
    }
    if (check < 0) {
        k->st.malformed++;
        return check;
    }
    k->st.datagrams_recv++;
    k->probes_unanswered = 0;
    uint32_t held_before = k->rcv_held;
    uint32_t una_before = k->snd_una;
    ack_batch b = {0};
    /* Every ACK first, then the rest: a datagram's ACKs all carry an UNA
     * that usually covers the others, and applied in order the first UNA
     * would remove the segments whose newer echoed ts make the best RTT
     * sample. */
    for (size_t off = 0; off < len;) {
        if (pkt[off + 4] == TERN_KCP_CMD_ACK) {
            tern_kcp_hdr h;
            tern_kcp_hdr_decode(pkt + off, &h);
            apply_ack(k, &h, &b);
        }
        off += TERN_KCP_OVERHEAD + tern_kcp_get32(pkt + off + 20);
    }
    for (size_t off = 0; off < len;) {
        tern_kcp_hdr h;
        tern_kcp_hdr_decode(pkt + off, &h);
        off += TERN_KCP_OVERHEAD;
        k->st.segs_recv++;
        /* A reordered old segment carries an old window: una + wnd only
         * means something with the newest una. */
        if (!k->rmt_wnd_known || tern_kcp_diff32(h.una, k->rmt_wnd_una) >= 0) {
            k->rmt_wnd = h.wnd;
            k->rmt_wnd_una = h.una;
            k->rmt_wnd_known = true;
        }
        apply_una(k, h.una, &b);
        if (h.cmd == TERN_KCP_CMD_PUSH)
            accept_data(k, &h, pkt + off);
        else if (h.cmd == TERN_KCP_CMD_WASK)
            k->probe_flags |= PROBE_TELL;
        else if (h.cmd == TERN_KCP_CMD_FORWARD)
            apply_forward(k, h.sn);
        /* WINS: its wnd was taken above. */
        off += h.len;
    }
    /* This datagram left data waiting behind a hole (a bundled copy later in
     * it may have filled one): tell the sender at once, loss detection
     * feeds on exactly that. */
    if (k->rcv_held > held_before && k->ack_count)
        k->ack_due = k->now;
    if (b.have_rtt)
        rtt_sample(k, (uint32_t)tern_kcp_diff32((uint32_t)k->now, b.rtt_echo));
    if (b.bytes)
        k->cc->on_ack(k->cc_state, b.bytes, b.released, b.newest_sent, k->now);
    if (b.newest_order) {
        detect_losses(k, &b, k->now);
        /* Forget old evidence of reordering slowly, so one burst of it does
         * not slow loss detection for the rest of the connection. */
        if (++k->batches_since_spurious >= 1024 && k->reorder_mult > 1) {
            k->reorder_mult--;
            k->batches_since_spurious = 0;
        }
    }
    if (k->cfg.mode == TERN_KCP_MODE_MESSAGE)
        discard_oversize_tail(k);
    else
        release_empty_stream_head(k);
    if (k->cfg.forward) {
        /* The peer's una moved: it is there and takes our FORWARDs. */
        if (k->snd_una != una_before)
            k->fwd_sends = 0;
        fwd_update(k);
        /* The peer talks but has not taken F a round trip after our last
         * FORWARD: that one was lost. Repeat it now, not on a timer backed
         * off through an outage that is evidently over. At most once per
         * round trip. */
        tern_ms rtt = k->have_rtt ? srtt_ms(k) + reorder_window(k) : k->rto;
        if (k->fwd_due != NEVER && k->fwd_due > k->now && k->now - k->fwd_sent_at >= rtt) {
            k->fwd_due = k->now;
            k->fwd_rto = k->rto;
        }
    }
    update_probe_timer(k, k->now);
    return 0;
}

/* ---- output ---- */

static void transmit(tern_kcp *k, seg *s, tern_ms now)
{
    if (s->xmit == 0) {
        s->first_sent = now;
        s->rto = k->rto;
        k->st.bytes_sent += s->len;
    } else if (s->lost_kind == LOST_TIMEOUT) {
        k->st.retrans_timeout++;
    } else if (s->lost_kind == LOST_FAST) {
        k->st.retrans_fast++;
    } else {
        k->st.retrans_early++;
    }
    if (s->xmit < UINT16_MAX)
        s->xmit++;
    s->last_sent = now;
    s->tx_order = ++k->tx_counter;
    s->deadline = now + s->rto;
    s->early_deadline = false;
    s->skips = 0;
    s->state = SEG_IN_FLIGHT;
    list_append(&k->in_flight, s);
    k->in_flight_bytes += s->len;
    k->cc->on_sent(k->cc_state, s->len, now);
    heap_push(k, s);
    /* Before the peer's window is known, sends past the oldest segment may
     * overrun a window smaller than guessed and be dropped through no fault
     * of the path; only the oldest one's sends are sure to count. */
    if (!k->rmt_wnd_known && s->sn != k->snd_una && s->blind_xmit < UINT16_MAX)
        s->blind_xmit++;
    if (s->xmit - s->blind_xmit >= (int)k->cfg.dead_link)
        k->dead = true;
}

static size_t put_segment(tern_kcp *k, uint8_t *out, uint8_t cmd, uint8_t frg, uint16_t wnd,
                          uint32_t ts, uint32_t sn, const uint8_t *payload, uint32_t len)
{
    tern_kcp_hdr h = {k->cfg.conv, cmd, frg, wnd, ts, sn, k->rcv_nxt, len};
    tern_kcp_hdr_encode(out, &h);
    if (len)
        memcpy(out + TERN_KCP_OVERHEAD, payload, len);
    k->st.segs_sent++;
    return TERN_KCP_OVERHEAD + len;
}

/* The next data segment to send, without taking it: a lost one first, then
 * new data if the windows allow. */
static seg *next_data(const tern_kcp *k)
{
    if (k->lost.head)
        return can_resend(k, k->lost.head) ? k->lost.head : NULL;
    return can_send_new(k) ? k->snd_queue.head : NULL;
}

static void take_data(tern_kcp *k, seg *s)
{
    if (s->state == SEG_LOST) {
        list_remove(&k->lost, s);
        return;
    }
    list_remove(&k->snd_queue, s);
    s->sn = k->snd_nxt++;
    k->snd_ring[s->sn & k->snd_mask] = s;
    if (k->snd_end)
        k->snd_end[s->sn & k->snd_mask] = s->frg == 0;
    dmsg *m = s->msg;
    if (m) {
        /* A message leaves from the head of the queue in order, so what is
         * left of it unsent starts at the new head. */
        if (m->sent++ == 0)
            m->first_sn = s->sn;
        m->first_queued = m->sent < m->count ? k->snd_queue.head : NULL;
    }
}

/* Fills spare room with copies of segments sent before this datagram and
 * still unacknowledged, oldest first: the oldest is the one most likely to
 * hold up delivery if lost. A copy is not a transmission: it changes no
 * timer or counter of the segment, only the ts its ACK may echo. */
static size_t bundle_copies(tern_kcp *k, uint8_t *out, size_t room, uint64_t sent_before,
                            uint16_t wnd, uint32_t now32)
{
    if (!k->cfg.bundle_bytes || k->in_flight.count > BUNDLE_THIN_SEGS)
        return 0;
    size_t used = 0;
    uint32_t budget = k->cfg.bundle_bytes;
    for (seg *s = k->in_flight.head; s && s->tx_order <= sent_before; s = s->next) {
        if (s->len > budget || TERN_KCP_OVERHEAD + s->len > room - used)
            continue;
        used += put_segment(k, out + used, TERN_KCP_CMD_PUSH, s->frg, wnd, now32, s->sn, s->data,
                            s->len);
        budget -= s->len;
        k->st.bundled++;
    }
    return used;
}

tern_ssize tern_kcp_write_pkt(tern_kcp *k, uint8_t *dest, size_t cap, tern_ms now)
{
    if (!k || !dest)
        return TERN_ERR_INVAL;
    advance_clock(k, now);
    now = k->now;
    if (k->dead)
        return TERN_ERR_DEADLINK;
    if (cap < k->cfg.mtu)
        return TERN_ERR_NOBUFS;
    /* Nothing whose deadline has passed may leave. */
    if (k->dheap_len && k->dheap[0]->deadline <= now) {
        expire_due(k, now);
        fwd_update(k);
    }
    seg *data = next_data(k);
    bool acks_due = k->ack_count && k->ack_due <= now;
    bool forward_now = k->fwd_due <= now;
    if (!data && !k->probe_flags && !acks_due && !forward_now)
        return 0;

    size_t limit = k->cfg.mtu;
    size_t off = 0;
    uint16_t wnd = (uint16_t)rcv_unused_wnd(k);
    uint32_t now32 = (uint32_t)now;

    /* ACKs ride first, whether due or not: they are cheapest now. */
    uint32_t written = 0;
    while (written < k->ack_count && off + TERN_KCP_OVERHEAD <= limit) {
        const pending_ack *a = &k->acks[k->ack_head + written++];
        off += put_segment(k, dest + off, TERN_KCP_CMD_ACK, 0, wnd, a->ts, a->sn, NULL, 0);
        k->st.acks_sent++;
    }
    if (written) {
        k->ack_count -= written;
        k->ack_head = k->ack_count ? k->ack_head + written : 0;
        k->ack_due = k->ack_count ? now : NEVER;
    }
    if ((k->probe_flags & PROBE_ASK) && off + TERN_KCP_OVERHEAD <= limit) {
        off += put_segment(k, dest + off, TERN_KCP_CMD_WASK, 0, wnd, now32, 0, NULL, 0);
        k->probe_flags &= (uint8_t)~PROBE_ASK;
        k->st.probes_sent++;
    }
    if ((k->probe_flags & PROBE_TELL) && off + TERN_KCP_OVERHEAD <= limit) {
        off += put_segment(k, dest + off, TERN_KCP_CMD_WINS, 0, wnd, now32, 0, NULL, 0);
        k->probe_flags &= (uint8_t)~PROBE_TELL;
        k->st.probes_sent++;
    }
    /* Ahead of the data, so that the receiver reads it first and what
     * follows F lands inside its window. Repeated on its own timer, and
     * counted towards dead_link like a segment's transmissions: a peer
     * that never takes it (forward off) would otherwise stall us quietly. */
    if (forward_now && off + TERN_KCP_OVERHEAD <= limit) {
        off += put_segment(k, dest + off, TERN_KCP_CMD_FORWARD, 0, wnd, now32, k->fwd_pos, NULL, 0);
        k->fwd_sent = k->fwd_pos;
        k->fwd_sent_at = now;
        k->fwd_due = now + k->fwd_rto;
        k->fwd_rto = backed_off(k, k->fwd_rto);
        k->st.forwards_sent++;
        if (++k->fwd_sends >= k->cfg.dead_link)
            k->dead = true;
    }
    uint64_t sent_before = k->tx_counter;
    while ((data = next_data(k)) != NULL && off + TERN_KCP_OVERHEAD + data->len <= limit) {
        take_data(k, data);
        off += put_segment(k, dest + off, TERN_KCP_CMD_PUSH, data->frg, wnd, now32, data->sn,
                           data->data, data->len);
        transmit(k, data, now);
    }
    off += bundle_copies(k, dest + off, limit - off, sent_before, wnd, now32);
    k->last_adv_wnd = wnd;
    k->st.datagrams_sent++;
    report_dead(k);
    return (tern_ssize)off;
}

/* ---- timers ---- */

tern_ms tern_kcp_get_expiry(const tern_kcp *k)
{
    if (!k || k->dead)
        return NEVER;
    if (k->probe_flags || next_data(k))
        return k->now;
    tern_ms t = k->ack_count ? k->ack_due : NEVER;
    if (k->heap_len)
        t = min_ms(t, k->heap[0].deadline);
    if (k->dheap_len)
        t = min_ms(t, k->dheap[0]->deadline);
    t = min_ms(t, k->fwd_due);
    return min_ms(t, k->probe_due);
}

int tern_kcp_handle_expiry(tern_kcp *k, tern_ms now)
{
    if (!k)
        return TERN_ERR_INVAL;
    advance_clock(k, now);
    if (k->dead)
        return TERN_ERR_DEADLINK;
    /* Expired messages first: nothing of them is to be declared lost. */
    expire_due(k, k->now);
    while (k->heap_len && k->heap[0].deadline <= k->now) {
        seg *s = k->heap[0].s;
        declare_lost(k, s, s->early_deadline ? LOST_EARLY : LOST_TIMEOUT, k->now);
    }
    if (k->cfg.forward)
        fwd_update(k);
    update_probe_timer(k, k->now);
    return k->dead ? TERN_ERR_DEADLINK : 0;
}

/* ---- introspection ---- */

bool tern_kcp_is_dead(const tern_kcp *k)
{
    return k && k->dead;
}

size_t tern_kcp_unacked_bytes(const tern_kcp *k)
{
    return k ? k->snd_payload : 0;
}

size_t tern_kcp_unacked_segments(const tern_kcp *k)
{
    return k ? (size_t)k->snd_queue.count + k->in_flight.count + k->lost.count : 0;
}

void tern_kcp_get_stats(const tern_kcp *k, tern_kcp_stats *out)
{
    if (!k || !out)
        return;
    *out = k->st;
    out->srtt_ms = srtt_ms(k);
    out->rttvar_ms = (uint32_t)(k->rttvar8 / 8);
    out->rto_ms = k->rto;
    out->cwnd_bytes = k->cc->cwnd(k->cc_state);
    out->ssthresh_bytes = k->cc->ssthresh(k->cc_state);
    out->in_flight_bytes = k->in_flight_bytes;
    out->in_flight_segs = k->in_flight.count;
    out->resend_segs = k->lost.count;
    out->snd_queue_segs = k->snd_queue.count;
    out->snd_queue_bytes = k->snd_payload;
    out->rcv_buf_segs = k->rcv_held;
    out->rcv_queue_segs = k->rcv_nxt - k->rcv_read;
    out->rmt_wnd = k->rmt_wnd;
}

/* ---- test hooks (kcp/engine_internal.h) ---- */

int tern_kcp_test_set_sequence(tern_kcp *k, uint32_t snd_nxt, uint32_t rcv_nxt)
{
    if (!k || k->snd_nxt != k->snd_una || k->snd_queue.head || k->rcv_read != k->rcv_nxt ||
        k->rcv_held || k->tx_counter)
        return TERN_ERR_INVAL;
    k->snd_una = k->snd_nxt = snd_nxt;
    k->fwd_pos = k->fwd_sent = snd_nxt;
    k->rcv_read = k->rcv_nxt = rcv_nxt;
    return 0;
}
