/* Handshake rate limiting: token buckets in integer milli-tokens, one per
 * source in a fixed open-addressed table, plus one global bucket that says
 * when the server is under load. Load is sticky (WireGuard's idea): once the
 * global bucket runs dry, cookies stay required until it has not run dry
 * for load_cooldown_ms, so a flood cannot win DH by pausing for a refill.
 * A half-open table filled to 1/TERN_HALFOPEN_LOAD_DIV also counts as load,
 * so sources that cannot answer a cookie hold no more than that. Memory is
 * allocated once: a new source takes a free slot among the PROBE slots
 * after its hash, or evicts the stalest of them. The table's hash is keyed
 * (SipHash) so that no one can aim many addresses at the same slots. */
#include <sodium.h>
#include <string.h>

#include "common/mem.h"
#include "tern/crypto.h"

#define PROBE 8U
#define MILLI 1000U /* milli-tokens per token */
#define MAX_CAPACITY (1U << 24)
/* Longer than any bucket needs to refill; keeps elapsed * rate in range. */
#define MAX_ELAPSED 1000000000ULL

typedef struct entry {
    uint64_t hash;
    uint64_t tokens; /* milli-tokens */
    tern_ms last;
    tern_addr addr;
    bool used;
} entry;

typedef struct bucket {
    uint64_t tokens;
    tern_ms last;
} bucket;

struct tern_ratelimit {
    tern_mem mem;
    tern_ratelimit_config cfg;
    uint8_t hash_key[crypto_shorthash_KEYBYTES];
    uint32_t mask;
    entry *table;
    bucket load;
    tern_ms dry_at; /* when the load bucket last ran dry, if dry_seen */
    bool dry_seen;
    uint32_t halfopen_cookie_at; /* half-open handshakes from which cookies are required */
    tern_ratelimit_stats stats;
};

void tern_ratelimit_config_default(tern_ratelimit_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->per_source_rate = 20;
    cfg->per_source_burst = 5;
    cfg->capacity = 4096;
    cfg->load_rate = 1000;
    cfg->load_burst = 200;
    cfg->load_cooldown_ms = 1000;
    cfg->halfopen_max = 1024;
}

static void refill(uint64_t *tokens, tern_ms *last, tern_ms now, uint32_t rate, uint32_t burst)
{
    uint64_t cap = (uint64_t)burst * MILLI;
    uint64_t elapsed = now > *last ? now - *last : 0;

    if (elapsed > MAX_ELAPSED)
        elapsed = MAX_ELAPSED;
    /* rate tokens per second is rate milli-tokens per millisecond. */
    uint64_t add = elapsed * rate;
    *tokens = add >= cap - *tokens ? cap : *tokens + add;
    if (now > *last)
        *last = now;
}

static bool take(uint64_t *tokens)
{
    if (*tokens < MILLI)
        return false;
    *tokens -= MILLI;
    return true;
}

int tern_ratelimit_new(tern_ratelimit **out, const tern_ratelimit_config *cfg, const tern_mem *mem)
{
    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!cfg || !cfg->per_source_rate || !cfg->per_source_burst || !cfg->capacity ||
        cfg->capacity > MAX_CAPACITY || !cfg->load_rate || !cfg->load_burst)
        return TERN_ERR_INVAL;
    if (sodium_init() < 0)
        return TERN_ERR_UNSUPPORTED;

    uint32_t cap = 1;
    while (cap < cfg->capacity)
        cap <<= 1;

    tern_mem m;
    tern_mem_init(&m, mem);
    tern_ratelimit *rl = tern_mem_calloc(&m, 1, sizeof(*rl));
    if (!rl)
        return TERN_ERR_NOMEM;
    rl->table = tern_mem_calloc(&m, cap, sizeof(entry));
    if (!rl->table) {
        tern_mem_free(&m, rl);
        return TERN_ERR_NOMEM;
    }
    rl->mem = m;
    rl->cfg = *cfg;
    rl->mask = cap - 1;
    if (cfg->random)
        cfg->random(rl->hash_key, sizeof(rl->hash_key), cfg->random_user_data);
    else
        randombytes_buf(rl->hash_key, sizeof(rl->hash_key));
    rl->load.tokens = (uint64_t)cfg->load_burst * MILLI;
    rl->halfopen_cookie_at = cfg->halfopen_max / TERN_HALFOPEN_LOAD_DIV;
    if (rl->halfopen_cookie_at == 0)
        rl->halfopen_cookie_at = 1;
    rl->stats.capacity = cap;
    *out = rl;
    return 0;
}

void tern_ratelimit_del(tern_ratelimit *rl)
{
    if (!rl)
        return;
    tern_mem m = rl->mem;
    tern_mem_free(&m, rl->table);
    sodium_memzero(rl, sizeof(*rl));
    tern_mem_free(&m, rl);
}

static uint64_t addr_hash(const tern_ratelimit *rl, const tern_addr *a)
{
    uint8_t buf[1 + TERN_ADDR_MAX];
    uint8_t h[crypto_shorthash_BYTES];
    uint64_t v = 0;

    buf[0] = a->len;
    memcpy(buf + 1, a->bytes, a->len);
    crypto_shorthash(h, buf, 1U + a->len, rl->hash_key);
    for (unsigned i = 0; i < sizeof(h); i++)
        v |= (uint64_t)h[i] << (8 * i);
    return v;
}

static bool same_addr(const tern_addr *a, const tern_addr *b)
{
    return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

int tern_ratelimit_allow(tern_ratelimit *rl, const tern_addr *src, tern_ms now)
{
    if (!rl || !src || src->len > TERN_ADDR_MAX)
        return TERN_ERR_INVAL;

    const tern_ratelimit_config *c = &rl->cfg;
    uint64_t h = addr_hash(rl, src);
    uint32_t probe = rl->mask + 1 < PROBE ? rl->mask + 1 : PROBE;
    entry *hit = NULL, *free_slot = NULL, *stalest = NULL;

    for (uint32_t i = 0; i < probe; i++) {
        entry *e = &rl->table[(h + i) & rl->mask];
        if (!e->used) {
            if (!free_slot)
                free_slot = e;
            continue;
        }
        if (e->hash == h && same_addr(&e->addr, src)) {
            hit = e;
            break;
        }
        if (!stalest || e->last < stalest->last)
            stalest = e;
    }

    if (!hit) {
        if (free_slot) {
            hit = free_slot;
            rl->stats.tracked++;
        } else {
            hit = stalest;
            rl->stats.evictions++;
        }
        memset(hit, 0, sizeof(*hit));
        hit->used = true;
        hit->hash = h;
        hit->addr = *src;
        hit->tokens = (uint64_t)c->per_source_burst * MILLI;
        hit->last = now;
    }

    refill(&hit->tokens, &hit->last, now, c->per_source_rate, c->per_source_burst);
    if (!take(&hit->tokens)) {
        rl->stats.limited++;
        return TERN_ERR_RATE;
    }
    rl->stats.allowed++;
    return 0;
}

bool tern_ratelimit_under_load(tern_ratelimit *rl, tern_ms now)
{
    if (!rl)
        return true;
    rl->stats.load_checks++;
    refill(&rl->load.tokens, &rl->load.last, now, rl->cfg.load_rate, rl->cfg.load_burst);
    if (take(&rl->load.tokens))
        return false;
    rl->stats.under_load++;
    rl->dry_at = now > rl->dry_at ? now : rl->dry_at;
    rl->dry_seen = true;
    return true;
}

bool tern_ratelimit_cookies_required(tern_ratelimit *rl, tern_ms now)
{
    if (!rl)
        return true;
    if (rl->stats.halfopen >= rl->halfopen_cookie_at) {
        rl->stats.halfopen_load++;
        rl->stats.cookies_required++;
        return true;
    }
    /* An earlier now than the last dry time counts as no time passing. */
    if (rl->dry_seen && (now <= rl->dry_at || now - rl->dry_at < rl->cfg.load_cooldown_ms)) {
        rl->stats.cookies_required++;
        return true;
    }
    return false;
}

int tern_ratelimit_halfopen_acquire(tern_ratelimit *rl)
{
    if (!rl)
        return TERN_ERR_INVAL;
    if (rl->stats.halfopen >= rl->cfg.halfopen_max) {
        rl->stats.halfopen_refused++;
        return TERN_ERR_RATE;
    }
    rl->stats.halfopen++;
    return 0;
}

void tern_ratelimit_halfopen_release(tern_ratelimit *rl)
{
    if (rl && rl->stats.halfopen)
        rl->stats.halfopen--;
}

void tern_ratelimit_get_stats(const tern_ratelimit *rl, tern_ratelimit_stats *out)
{
    if (!out)
        return;
    if (!rl) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = rl->stats;
}
