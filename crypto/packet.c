/* Encrypted DATA packets over the keys of a Noise handshake: framing, the
 * replay window, and rekeying by Noise's Rekey() with a key-phase bit. The
 * layout and the rules are in include/tern/crypto_packet.h and
 * docs/PROTOCOL.md ("Encrypted DATA packets"). */
#include <sodium.h>
#include <string.h>

#include "common/mem.h"
#include "crypto/noise_internal.h"
#include "crypto/packet_internal.h"
#include "crypto/replay.h"
#include "tern/crypto.h"

#define HDR TERN_PACKET_HEADER_BYTES
#define TAG TERN_CRYPTO_TAG_BYTES
#define OVERHEAD TERN_PACKET_OVERHEAD
#define LOOKAHEAD TERN_PACKET_REKEY_LOOKAHEAD

/* Two attempts per packet: the key its phase names first, then the one two
 * generations further. That reaches 3 ahead at most; 1 is the old rule. */
_Static_assert(LOOKAHEAD >= 1 && LOOKAHEAD <= 3, "the lookahead is 1, 2 or 3 generations");

/* One key and when it was installed; used counts packets sealed (sending)
 * or opened (receiving) under it. */
typedef struct key_slot {
    tern_key k;
    tern_ms installed;
    uint64_t used;
} key_slot;

struct tern_crypto_session {
    tern_mem mem;
    tern_crypto_session_config cfg;
    tern_noise_cipher cipher;

    /* Sending: the key of generation send_gen (its phase is the low bit). */
    key_slot tx;
    uint64_t send_gen;
    uint64_t next_counter;

    /* Receiving: the key of generation recv_gen, the keys of generations
     * recv_gen + 1 .. + LOOKAHEAD (derived in advance: ahead[j] is
     * recv_gen + 1 + j), and the predecessor of rx while in its grace.
     * switch_counter is the counter of the packet that installed rx: the
     * other phase below it means the previous key, at or above it a later
     * one. */
    key_slot rx;
    tern_key ahead[LOOKAHEAD];
    tern_key rx_prev;
    bool has_prev;
    tern_ms prev_until;
    uint64_t recv_gen;
    uint64_t switch_counter;
    tern_replay window;

    /* Where seal and open run: own_* unless the owner shares its pair. */
    tern_aead_ctx own_seal, own_open;
    tern_aead_ctx *seal_aead, *open_aead;

    tern_crypto_session_stats stats;
};

size_t tern_packet_overhead(void)
{
    return OVERHEAD;
}

void tern_crypto_session_config_default(tern_crypto_session_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->rekey_after_packets = 0; /* the AEAD's default */
    cfg->rekey_after_ms = TERN_PACKET_REKEY_AFTER_MS;
    cfg->reject_after_packets = 0;
    cfg->reject_after_ms = TERN_PACKET_REJECT_AFTER_MS;
    cfg->old_key_grace_ms = TERN_PACKET_OLD_KEY_GRACE_MS;
}

/* ---- little-endian fields ---- */

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- keys ---- */

/* Noise's Rekey(k): the first 32 bytes of ENCRYPT(k, 2^64 - 1, "", zeros).
 * in and out may be the same key. */
static void rekey(tern_noise_cipher c, const tern_key *in, tern_key *out)
{
    uint8_t zeros[TERN_CRYPTO_KEY_BYTES] = {0};
    uint8_t block[TERN_CRYPTO_KEY_BYTES + TAG];

    /* Cannot fail: the key is set and the AEAD was available at creation. */
    (void)tern_noise_aead_seal(c, in, UINT64_MAX, NULL, 0, zeros, sizeof(zeros), block);
    memcpy(out->b, block, sizeof(out->b));
    sodium_memzero(block, sizeof(block));
}

static bool elapsed(tern_ms now, tern_ms since, tern_ms limit)
{
    return limit != UINT64_MAX && now >= since && now - since >= limit;
}

static bool past_hard_limit(const tern_crypto_session *s, const key_slot *k, tern_ms now)
{
    return k->used >= s->cfg.reject_after_packets ||
           elapsed(now, k->installed, s->cfg.reject_after_ms);
}

/* Makes k the current receiving key and derives the LOOKAHEAD after it.
 * k must not point into s->ahead (which is rewritten). */
static void install_rx(tern_crypto_session *s, const tern_key *k, tern_ms now)
{
    s->rx.k = *k;
    s->rx.installed = now;
    s->rx.used = 0;
    sodium_memzero(s->ahead, sizeof(s->ahead));
    rekey(s->cipher, &s->rx.k, &s->ahead[0]);
    for (unsigned j = 1; j < LOOKAHEAD; j++)
        rekey(s->cipher, &s->ahead[j - 1], &s->ahead[j]);
}

/* The receiving key step generations after the current one (0: current). */
static const tern_key *rx_key(const tern_crypto_session *s, unsigned step)
{
    return step == 0 ? &s->rx.k : &s->ahead[step - 1];
}

static void drop_prev(tern_crypto_session *s)
{
    sodium_memzero(&s->rx_prev, sizeof(s->rx_prev));
    s->has_prev = false;
}

/* ---- life cycle ---- */

static int fill_config(tern_crypto_session_config *dst, const tern_crypto_session_config *src,
                       tern_noise_cipher c)
{
    if (src)
        *dst = *src;
    else
        tern_crypto_session_config_default(dst);
    if (dst->rekey_after_ms == 0 || dst->reject_after_ms == 0)
        return TERN_ERR_INVAL;
    if (dst->aead_impl != TERN_AEAD_IMPL_AUTO && dst->aead_impl != TERN_AEAD_IMPL_LIBSODIUM &&
        dst->aead_impl != TERN_AEAD_IMPL_OPENSSL)
        return TERN_ERR_INVAL;
    if (!tern_aead_impl_available(dst->aead_impl))
        return TERN_ERR_UNSUPPORTED;
    bool aes = c == TERN_NOISE_AESGCM;
    if (dst->rekey_after_packets == 0)
        dst->rekey_after_packets =
            aes ? TERN_PACKET_AESGCM_REKEY_AFTER : TERN_PACKET_CHACHA_REKEY_AFTER;
    if (dst->reject_after_packets == 0)
        dst->reject_after_packets =
            aes ? TERN_PACKET_AESGCM_REJECT_AFTER : TERN_PACKET_CHACHA_REJECT_AFTER;
    return 0;
}

/* Allocates a session with its config; keys come later (session_keys()). */
static int session_alloc(tern_crypto_session **out, tern_noise_cipher c,
                         const tern_crypto_session_config *cfg, const tern_mem *mem)
{
    tern_crypto_session_config conf;
    tern_mem m;
    int rc = fill_config(&conf, cfg, c);
    if (rc < 0)
        return rc;

    tern_mem_init(&m, mem);
    tern_crypto_session *s = tern_mem_calloc(&m, 1, sizeof(*s));
    if (!s)
        return TERN_ERR_NOMEM;
    s->mem = m;
    s->cfg = conf;
    s->cipher = c;
    /* Cannot fail: fill_config() checked the choice. */
    (void)tern_aead_ctx_init(&s->own_seal, conf.aead_impl);
    (void)tern_aead_ctx_init(&s->own_open, conf.aead_impl);
    s->seal_aead = &s->own_seal;
    s->open_aead = &s->own_open;
    tern_replay_init(&s->window);
    *out = s;
    return 0;
}

static void session_keys(tern_crypto_session *s, const tern_key *send, const tern_key *recv,
                         tern_ms now)
{
    s->tx.k = *send;
    s->tx.installed = now;
    install_rx(s, recv, now);
}

int tern_crypto_session_new(tern_crypto_session **out, tern_noise *hs,
                            const tern_crypto_session_config *cfg, const tern_mem *mem, tern_ms now)
{
    tern_cipher *send = NULL, *recv = NULL;
    tern_crypto_session *s = NULL;
    int rc;

    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!hs)
        return TERN_ERR_INVAL;
    if (tern_noise_next(hs) != TERN_NOISE_SPLIT)
        return TERN_ERR_STATE;
    /* Everything that can fail comes before the split consumes the
     * handshake (the split itself fails atomically). */
    rc = session_alloc(&s, TERN_NOISE_CHACHAPOLY, cfg, mem);
    if (rc < 0)
        return rc;
    rc = tern_noise_split(hs, &send, &recv);
    if (rc < 0) {
        tern_crypto_session_del(s);
        return rc;
    }
    /* The cipher is the handshake's; the packet defaults depend on it. */
    if (send->cs.cipher != TERN_NOISE_CHACHAPOLY) {
        s->cipher = send->cs.cipher;
        (void)fill_config(&s->cfg, cfg, s->cipher);
    }
    /* split() already picked the halves by role: send is ours. */
    session_keys(s, &send->cs.k, &recv->cs.k, now);
    tern_cipher_del(send);
    tern_cipher_del(recv);
    *out = s;
    return 0;
}

int tern_crypto_session_new_from_keys(tern_crypto_session **out, tern_aead aead,
                                      const uint8_t send_key[32], const uint8_t recv_key[32],
                                      const tern_crypto_session_config *cfg, const tern_mem *mem,
                                      tern_ms now)
{
    tern_key send, recv;
    tern_noise_cipher c;
    int rc;

    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!send_key || !recv_key)
        return TERN_ERR_INVAL;
    if (aead == TERN_AEAD_CHACHAPOLY)
        c = TERN_NOISE_CHACHAPOLY;
    else if (aead == TERN_AEAD_AESGCM)
        c = TERN_NOISE_AESGCM;
    else
        return TERN_ERR_INVAL;
    if (c == TERN_NOISE_AESGCM && !tern_crypto_aesgcm_available())
        return TERN_ERR_UNSUPPORTED;

    rc = session_alloc(out, c, cfg, mem);
    if (rc < 0)
        return rc;
    memcpy(send.b, send_key, sizeof(send.b));
    memcpy(recv.b, recv_key, sizeof(recv.b));
    session_keys(*out, &send, &recv, now);
    sodium_memzero(&send, sizeof(send));
    sodium_memzero(&recv, sizeof(recv));
    return 0;
}

void tern_crypto_session_del(tern_crypto_session *s)
{
    if (!s)
        return;
    tern_mem mem = s->mem;
    tern_aead_ctx_clear(&s->own_seal);
    tern_aead_ctx_clear(&s->own_open);
    sodium_memzero(s, sizeof(*s));
    tern_mem_free(&mem, s);
}

/* ---- sending ---- */

void tern_packet_set_next_counter(tern_crypto_session *s, uint64_t next)
{
    s->next_counter = next;
}

void tern_packet_share_aead(tern_crypto_session *s, tern_aead_ctx *seal, tern_aead_ctx *open)
{
    s->seal_aead = seal;
    s->open_aead = open;
}

static void rekey_tx(tern_crypto_session *s, tern_ms now)
{
    rekey(s->cipher, &s->tx.k, &s->tx.k);
    s->tx.installed = now;
    s->tx.used = 0;
    s->send_gen++;
    s->stats.rekeys_sent++;
}

int tern_crypto_session_rekey(tern_crypto_session *s, tern_ms now)
{
    if (!s)
        return TERN_ERR_INVAL;
    rekey_tx(s, now);
    return 0;
}

tern_ssize tern_crypto_session_seal(tern_crypto_session *s, const uint8_t *payload,
                                    size_t payload_len, uint8_t *out, size_t out_cap, tern_ms now)
{
    if (!s || !out || (!payload && payload_len))
        return TERN_ERR_INVAL;
    if (payload_len > TERN_PACKET_PAYLOAD_MAX)
        return TERN_ERR_MSGSIZE;
    if (out_cap < payload_len + OVERHEAD)
        return TERN_ERR_NOBUFS;
    if (s->next_counter == UINT64_MAX) {
        s->stats.expired++;
        return TERN_ERR_EXPIRED;
    }

    /* Rekey when due, so that the hard limit is reached only when
     * automatic rekeying is off or set beyond it. */
    bool due = s->tx.used >= s->cfg.rekey_after_packets ||
               elapsed(now, s->tx.installed, s->cfg.rekey_after_ms);
    /* The key this packet would use: a fresh one when a rekey is due. */
    uint64_t used = due ? 0 : s->tx.used;
    tern_ms installed = due ? now : s->tx.installed;
    if (used >= s->cfg.reject_after_packets || elapsed(now, installed, s->cfg.reject_after_ms)) {
        s->stats.expired++;
        return TERN_ERR_EXPIRED;
    }
    if (due)
        rekey_tx(s, now);

    uint64_t n = s->next_counter;
    out[0] = (uint8_t)(TERN_PACKET_TYPE_DATA | ((s->send_gen & 1U) ? TERN_PACKET_KEY_PHASE : 0U));
    put_le32(out + 1, s->cfg.remote_id);
    put_le64(out + 5, n);
    int rc = tern_aead_ctx_seal(s->seal_aead, s->cipher, &s->tx.k, n, out, HDR, payload,
                                payload_len, out + HDR);
    if (rc < 0) {
        sodium_memzero(out, payload_len + OVERHEAD);
        return rc;
    }
    s->next_counter++;
    s->tx.used++;
    s->stats.sealed++;
    return (tern_ssize)(payload_len + OVERHEAD);
}

/* ---- receiving ---- */

int tern_packet_peek_receiver(const uint8_t *pkt, size_t pkt_len, uint32_t *id)
{
    if (!pkt || !id)
        return TERN_ERR_INVAL;
    if (pkt_len < OVERHEAD || (pkt[0] & ~TERN_PACKET_KEY_PHASE) != TERN_PACKET_TYPE_DATA)
        return TERN_ERR_MALFORMED;
    *id = get_le32(pkt + 1);
    return 0;
}

static tern_ssize fail(uint8_t *out, size_t wipe, tern_ssize rc)
{
    if (wipe)
        sodium_memzero(out, wipe);
    return rc;
}

/* One AEAD attempt; on failure the pt_len bytes of out are zero. */
static int open_with(tern_crypto_session *s, const tern_key *k, uint64_t n, const uint8_t *pkt,
                     size_t pkt_len, uint8_t *out, size_t pt_len)
{
    uint8_t none[1];
    return tern_aead_ctx_open(s->open_aead, s->cipher, k, n, pkt, HDR, pkt + HDR, pkt_len - HDR,
                              pt_len ? out : none);
}

/* A packet under the key step generations ahead authenticated (counter n):
 * that key becomes the current one, the one just before it the previous
 * one, for packets reordered across the switch. The generations in between
 * (step > 1) had no packet through; theirs would now fail. */
static void advance_rx(tern_crypto_session *s, unsigned step, uint64_t n, tern_ms now)
{
    tern_key cur = *rx_key(s, step);
    drop_prev(s);
    s->rx_prev = *rx_key(s, step - 1);
    s->has_prev = true;
    s->prev_until = now + s->cfg.old_key_grace_ms;
    if (s->prev_until < now) /* a grace of "forever" */
        s->prev_until = UINT64_MAX;
    install_rx(s, &cur, now);
    sodium_memzero(&cur, sizeof(cur));
    s->recv_gen += step;
    s->switch_counter = n;
    s->stats.rekeys_received += step;
    s->stats.rekeys_skipped += step - 1U;
}

tern_ssize tern_crypto_session_open(tern_crypto_session *s, const uint8_t *pkt, size_t pkt_len,
                                    uint8_t *out, size_t out_cap, tern_ms now)
{
    if (!s || !pkt || (!out && out_cap))
        return TERN_ERR_INVAL;
    if (pkt_len > TERN_PACKET_MAX)
        return TERN_ERR_MSGSIZE;
    size_t pt_len = pkt_len >= OVERHEAD ? pkt_len - OVERHEAD : 0;
    /* What is zeroed on failure: the bytes the payload would have filled. */
    size_t wipe = pt_len < out_cap ? pt_len : out_cap;

    uint32_t id;
    if (tern_packet_peek_receiver(pkt, pkt_len, &id) < 0) {
        s->stats.malformed++;
        return fail(out, wipe, TERN_ERR_MALFORMED);
    }
    if (out_cap < pt_len)
        return fail(out, wipe, TERN_ERR_NOBUFS);
    if (pt_len && !out)
        return TERN_ERR_INVAL;
    if (id != s->cfg.local_id) {
        s->stats.wrong_id++;
        return fail(out, wipe, TERN_ERR_CONV);
    }

    uint64_t n = get_le64(pkt + 5);
    switch (tern_replay_check(&s->window, n)) {
    case TERN_REPLAY_OK:
        break;
    case TERN_REPLAY_DUPLICATE:
        s->stats.replays++;
        return fail(out, wipe, TERN_ERR_REPLAY);
    case TERN_REPLAY_TOO_OLD:
        s->stats.too_old++;
        return fail(out, wipe, TERN_ERR_REPLAY);
    case TERN_REPLAY_RESERVED:
    default:
        s->stats.malformed++;
        return fail(out, wipe, TERN_ERR_MALFORMED);
    }

    /* The previous key's grace is a hard stop. */
    if (s->has_prev && now >= s->prev_until)
        drop_prev(s);

    /* Key choice: the previous key, or the current one moved on by step
     * generations, then (further != 0) once more by further. Every counter
     * of a later generation is above all those opened so far (counters run
     * on across rekeys), so only such a counter earns the second try: a
     * late packet of the current generation costs one attempt, as does any
     * other failure below the highest counter. */
    unsigned phase = (pkt[0] & TERN_PACKET_KEY_PHASE) ? 1U : 0U;
    bool above_all = n >= s->window.top;
    bool previous = false, expired = false;
    unsigned step = 0, further = 0;
    if (phase == (s->recv_gen & 1U)) {
        further = 2;
        /* A packet under the current key has expired, but one two keys
         * ahead may still come (the current key aged while none came). */
        expired = past_hard_limit(s, &s->rx, now);
    } else if (n < s->switch_counter) {
        previous = true;
        expired = !s->has_prev;
    } else {
        step = 1;
        further = 3;
    }
    if (!above_all || further > LOOKAHEAD)
        further = 0;
    if (expired && !further) {
        s->stats.expired++;
        return fail(out, wipe, TERN_ERR_EXPIRED);
    }

    int rc = TERN_ERR_DECRYPT;
    if (!expired)
        rc = open_with(s, previous ? &s->rx_prev : rx_key(s, step), n, pkt, pkt_len, out, pt_len);
    if (rc < 0 && further) {
        s->stats.lookahead_tries++;
        rc = open_with(s, rx_key(s, further), n, pkt, pkt_len, out, pt_len);
        if (rc == 0)
            step = further;
    }
    if (rc < 0) {
        if (expired)
            s->stats.expired++;
        else
            s->stats.auth_failures++;
        return fail(out, wipe, expired ? TERN_ERR_EXPIRED : TERN_ERR_DECRYPT);
    }

    /* Authentic: only now does the session change. */
    (void)tern_replay_commit(&s->window, n);
    if (step)
        advance_rx(s, step, n, now);
    if (previous)
        s->stats.opened_old_key++;
    else
        s->rx.used++;
    s->stats.opened++;
    return (tern_ssize)pt_len;
}

void tern_crypto_session_get_stats(const tern_crypto_session *s, tern_crypto_session_stats *out)
{
    if (!s || !out)
        return;
    *out = s->stats;
    out->send_key_generation = s->send_gen;
    out->recv_key_generation = s->recv_gen;
    out->next_send_counter = s->next_counter;
}
