/* The impairment model behind include/tern/netsim.h.
 *
 * Every offered datagram passes the same stages in the same order:
 *   partition -> Gilbert-Elliott burst loss -> independent loss ->
 *   bottleneck queue -> delay + jitter (+ reorder hold) -> duplication ->
 *   corruption (per copy),
 * and every random decision is drawn from the link's own generator, so a
 * seed replays exactly. Held datagrams wait in a binary min-heap ordered by
 * (due time in ms, offer sequence), which keeps same-time datagrams in the
 * order they were offered. */
#include "tern/netsim.h"

#include <stdbool.h>
#include <string.h>

#include "common/mem.h"

#define DEFAULT_QUEUE_BYTES 65536u
#define DEFAULT_MAX_PENDING 65536u
#define HEAP_INITIAL_CAP 16u
#define US_PER_MS UINT64_C(1000)
#define US_PER_S UINT64_C(1000000)
/* Above this a datagram serialises in far less than a nanosecond; capping
 * keeps the fixed-point bottleneck arithmetic clear of overflow. */
#define RATE_MAX UINT64_C(1000000000000000)

/* xoshiro256** (Blackman and Vigna), seeded through splitmix64 so that any
 * seed, zero included, gives a well-mixed non-zero state. */
typedef struct rng {
    uint64_t s[4];
} rng;

typedef struct held {
    tern_ms due_ms;
    uint64_t seq; /* breaks ties so equal due times leave in offer order */
    size_t len;
    uint8_t *data;
} held;

struct tern_netsim_link {
    tern_mem mem;
    tern_netsim_cfg cfg;
    uint64_t rate;        /* cfg rate, capped at RATE_MAX; 0: no bottleneck */
    uint64_t queue_bytes; /* defaults resolved */
    uint32_t max_pending;
    rng rng;
    bool ge_bad;
    /* The model's clock: a send with an earlier `now` counts as this, so the
     * bottleneck never sees time run backwards. */
    tern_ms latest_ms;
    /* The bottleneck is busy until free_us + free_frac / rate microseconds;
     * keeping the fraction exact stops rounding from piling up when many
     * small datagrams each take less than a microsecond. */
    uint64_t free_us;
    uint64_t free_frac;
    uint64_t next_seq;
    uint64_t in_order_due_us; /* jitter_keeps_order: the latest copy not held back */
    held *heap;
    uint32_t heap_len;
    uint32_t heap_cap;
    tern_netsim_stats stats;
};

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with the full 53 bits of a double. */
static double rng_unit(rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, bound), bound > 0, without modulo bias. */
static uint64_t rng_below(rng *r, uint64_t bound)
{
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t x = rng_next(r);
        if (x >= threshold)
            return x % bound;
    }
}

/* Certain outcomes draw nothing, so a clean link stays cheap and turning a
 * feature off does not consume randomness. */
static bool rng_chance(rng *r, double p)
{
    if (p <= 0.0)
        return false;
    if (p >= 1.0)
        return true;
    return rng_unit(r) < p;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t ms_to_us(tern_ms ms)
{
    return ms > UINT64_MAX / US_PER_MS ? UINT64_MAX : ms * US_PER_MS;
}

static bool probability_ok(double p)
{
    /* Written so that NaN fails too. */
    return p >= 0.0 && p <= 1.0;
}

void tern_netsim_cfg_default(tern_netsim_cfg *cfg)
{
    if (cfg)
        memset(cfg, 0, sizeof(*cfg));
}

int tern_netsim_cfg_check(const tern_netsim_cfg *cfg)
{
    if (!cfg)
        return TERN_ERR_INVAL;
    const double probabilities[] = {cfg->loss,        cfg->ge_p_good_bad, cfg->ge_p_bad_good,
                                    cfg->ge_loss_bad, cfg->reorder,       cfg->duplicate,
                                    cfg->corrupt};
    for (size_t i = 0; i < sizeof(probabilities) / sizeof(probabilities[0]); i++) {
        if (!probability_ok(probabilities[i]))
            return TERN_ERR_RANGE;
    }
    if (cfg->n_partitions > TERN_NETSIM_MAX_PARTITIONS)
        return TERN_ERR_RANGE;
    for (uint32_t i = 0; i < cfg->n_partitions; i++) {
        if (cfg->partitions[i].start_ms > cfg->partitions[i].end_ms)
            return TERN_ERR_RANGE;
    }
    return 0;
}

int tern_netsim_link_new(tern_netsim_link **out, const tern_netsim_cfg *cfg, uint64_t seed,
                         const tern_mem *mem)
{
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    int rc = tern_netsim_cfg_check(cfg);
    if (rc < 0)
        return rc;

    tern_mem m;
    tern_mem_init(&m, mem);
    tern_netsim_link *link = tern_mem_calloc(&m, 1, sizeof(*link));
    if (!link)
        return TERN_ERR_NOMEM;
    link->mem = m;
    link->cfg = *cfg;
    link->rate = cfg->rate_bytes_per_s > RATE_MAX ? RATE_MAX : cfg->rate_bytes_per_s;
    link->queue_bytes = cfg->queue_bytes ? cfg->queue_bytes : DEFAULT_QUEUE_BYTES;
    link->max_pending = cfg->max_pending ? cfg->max_pending : DEFAULT_MAX_PENDING;
    rng_seed(&link->rng, seed);
    *out = link;
    return 0;
}

void tern_netsim_link_del(tern_netsim_link *link)
{
    if (!link)
        return;
    for (uint32_t i = 0; i < link->heap_len; i++)
        tern_mem_free(&link->mem, link->heap[i].data);
    tern_mem_free(&link->mem, link->heap);
    tern_mem_free(&link->mem, link);
}

static bool held_before(const held *a, const held *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void heap_sift_up(held *heap, uint32_t i)
{
    held item = heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!held_before(&item, &heap[parent]))
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
}

static void heap_sift_down(held *heap, uint32_t len, uint32_t i)
{
    held item = heap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= len)
            break;
        if (child + 1 < len && held_before(&heap[child + 1], &heap[child]))
            child++;
        if (!held_before(&heap[child], &item))
            break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = item;
}

/* Makes room for `need` held datagrams, doubling but never past max_pending
 * (callers check that bound first). */
static int heap_reserve(tern_netsim_link *link, uint32_t need)
{
    if (need <= link->heap_cap)
        return 0;
    uint64_t cap = link->heap_cap ? (uint64_t)link->heap_cap * 2 : HEAP_INITIAL_CAP;
    if (cap < need)
        cap = need;
    if (cap > link->max_pending)
        cap = link->max_pending;
    held *grown = tern_mem_calloc(&link->mem, (size_t)cap, sizeof(*grown));
    if (!grown)
        return TERN_ERR_NOMEM;
    if (link->heap_len)
        memcpy(grown, link->heap, link->heap_len * sizeof(*grown));
    tern_mem_free(&link->mem, link->heap);
    link->heap = grown;
    link->heap_cap = (uint32_t)cap;
    return 0;
}

static bool in_partition(const tern_netsim_cfg *cfg, tern_ms now)
{
    for (uint32_t i = 0; i < cfg->n_partitions; i++) {
        if (now >= cfg->partitions[i].start_ms && now < cfg->partitions[i].end_ms)
            return true;
    }
    return false;
}

/* One Gilbert-Elliott step: move between states first, then a datagram met
 * in the bad state is lost with ge_loss_bad. */
static bool burst_lost(tern_netsim_link *link)
{
    const tern_netsim_cfg *cfg = &link->cfg;
    if (cfg->ge_p_good_bad <= 0.0)
        return false;
    if (link->ge_bad) {
        if (rng_chance(&link->rng, cfg->ge_p_bad_good))
            link->ge_bad = false;
    } else if (rng_chance(&link->rng, cfg->ge_p_good_bad)) {
        link->ge_bad = true;
    }
    return link->ge_bad && rng_chance(&link->rng, cfg->ge_loss_bad);
}

static bool bottleneck_idle(const tern_netsim_link *link, uint64_t now_us)
{
    return link->free_us < now_us || (link->free_us == now_us && link->free_frac == 0);
}

/* Bytes accepted by the bottleneck and not yet serialised at now_us, rounded
 * up. Admission keeps this at most queue_bytes, so the product stays small. */
static uint64_t bottleneck_backlog(const tern_netsim_link *link, uint64_t now_us)
{
    if (bottleneck_idle(link, now_us))
        return 0;
    uint64_t scaled = (link->free_us - now_us) * link->rate + link->free_frac;
    return scaled / US_PER_S + (scaled % US_PER_S != 0);
}

/* Queues len bytes behind what the bottleneck already holds and returns the
 * microsecond (rounded up) at which their last bit leaves. */
static uint64_t bottleneck_commit(tern_netsim_link *link, uint64_t now_us, size_t len)
{
    if (bottleneck_idle(link, now_us)) {
        link->free_us = now_us;
        link->free_frac = 0;
    }
    link->free_frac += (uint64_t)len * US_PER_S;
    link->free_us = sat_add(link->free_us, link->free_frac / link->rate);
    link->free_frac %= link->rate;
    return sat_add(link->free_us, link->free_frac != 0);
}

/* Draws one copy's jitter, reorder hold and corruption, and holds it. The
 * heap has room: the caller reserved it. */
static void schedule_copy(tern_netsim_link *link, uint8_t *data, size_t len, uint64_t sent_us)
{
    const tern_netsim_cfg *cfg = &link->cfg;
    uint64_t extra_ms = cfg->delay_ms;
    if (cfg->jitter_ms)
        extra_ms += rng_below(&link->rng, (uint64_t)cfg->jitter_ms + 1);
    uint64_t due_us = sat_add(sent_us, extra_ms * US_PER_MS);
    if (cfg->jitter_keeps_order) {
        if (due_us < link->in_order_due_us)
            due_us = link->in_order_due_us;
        link->in_order_due_us = due_us;
    }
    /* A reorder hold comes on top and does not delay what follows. */
    if (rng_chance(&link->rng, cfg->reorder)) {
        due_us = sat_add(due_us, (uint64_t)cfg->reorder_ms * US_PER_MS);
        link->stats.reordered++;
    }
    if (rng_chance(&link->rng, cfg->corrupt)) {
        uint64_t bit = rng_below(&link->rng, (uint64_t)len * 8);
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        link->stats.corrupted++;
    }
    tern_ms due_ms = due_us / US_PER_MS + (due_us % US_PER_MS != 0);
    /* UINT64_MAX is how tern_netsim_link_next() says "nothing pending". */
    if (due_ms == UINT64_MAX)
        due_ms = UINT64_MAX - 1;

    uint32_t i = link->heap_len++;
    link->heap[i] = (held){.due_ms = due_ms, .seq = link->next_seq++, .len = len, .data = data};
    heap_sift_up(link->heap, i);
}

static uint8_t *copy_datagram(tern_netsim_link *link, const uint8_t *pkt, size_t len)
{
    uint8_t *copy = tern_mem_alloc(&link->mem, len);
    if (copy)
        memcpy(copy, pkt, len);
    return copy;
}

/* Runs one datagram through the stages. A drop is counted and returns 0;
 * TERN_ERR_NOMEM leaves the link exactly as it was, so a retry replays the
 * same trace. */
static int offer(tern_netsim_link *link, const uint8_t *pkt, size_t len, tern_ms now)
{
    const tern_netsim_cfg *cfg = &link->cfg;
    tern_netsim_stats *st = &link->stats;
    const rng rng_before = link->rng;
    const bool ge_before = link->ge_bad;

    if (in_partition(cfg, now)) {
        st->lost_partition++;
        return 0;
    }
    if (burst_lost(link)) {
        st->lost_burst++;
        return 0;
    }
    if (rng_chance(&link->rng, cfg->loss)) {
        st->lost_random++;
        return 0;
    }
    uint64_t now_us = ms_to_us(now);
    if (link->rate && bottleneck_backlog(link, now_us) + (uint64_t)len > link->queue_bytes) {
        st->lost_queue++;
        return 0;
    }
    /* Checked before the bottleneck commits, so a datagram we cannot hold
     * does not occupy the wire. */
    if (link->heap_len >= link->max_pending) {
        st->lost_overflow++;
        return 0;
    }

    bool duplicate = rng_chance(&link->rng, cfg->duplicate);
    bool duplicate_fits = duplicate && link->heap_len + 1 < link->max_pending;
    uint8_t *first = copy_datagram(link, pkt, len);
    uint8_t *second = duplicate_fits ? copy_datagram(link, pkt, len) : NULL;
    if (!first || (duplicate_fits && !second) ||
        heap_reserve(link, link->heap_len + 1 + (duplicate_fits ? 1u : 0u)) < 0) {
        tern_mem_free(&link->mem, first);
        tern_mem_free(&link->mem, second);
        link->rng = rng_before;
        link->ge_bad = ge_before;
        return TERN_ERR_NOMEM;
    }

    uint64_t sent_us = link->rate ? bottleneck_commit(link, now_us, len) : now_us;
    schedule_copy(link, first, len, sent_us);
    if (duplicate) {
        st->duplicated++;
        if (second)
            schedule_copy(link, second, len, sent_us);
        else
            st->lost_overflow++;
    }
    return 0;
}

int tern_netsim_link_send(tern_netsim_link *link, const uint8_t *pkt, size_t len, tern_ms now)
{
    if (!link || !pkt || len == 0 || len > (size_t)PTRDIFF_MAX)
        return TERN_ERR_INVAL;
    if (now < link->latest_ms)
        now = link->latest_ms;
    int rc = offer(link, pkt, len, now);
    if (rc < 0)
        return rc;
    link->latest_ms = now;
    link->stats.offered++;
    link->stats.bytes_offered += len;
    return 0;
}

tern_ms tern_netsim_link_next(const tern_netsim_link *link)
{
    if (!link || link->heap_len == 0)
        return UINT64_MAX;
    return link->heap[0].due_ms;
}

tern_ssize tern_netsim_link_recv(tern_netsim_link *link, uint8_t *buf, size_t cap, tern_ms now)
{
    if (!link)
        return TERN_ERR_INVAL;
    if (link->heap_len == 0 || link->heap[0].due_ms > now)
        return 0;
    held top = link->heap[0];
    if (top.len > cap)
        return TERN_ERR_NOBUFS;
    if (!buf)
        return TERN_ERR_INVAL;

    memcpy(buf, top.data, top.len);
    tern_mem_free(&link->mem, top.data);
    link->heap_len--;
    if (link->heap_len) {
        link->heap[0] = link->heap[link->heap_len];
        heap_sift_down(link->heap, link->heap_len, 0);
    }
    link->stats.delivered++;
    link->stats.bytes_delivered += top.len;
    return (tern_ssize)top.len;
}

void tern_netsim_link_get_stats(const tern_netsim_link *link, tern_netsim_stats *out)
{
    if (!out)
        return;
    if (!link) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = link->stats;
}
