/* The Noise handshake state machine (the specification's section 5.3, with
 * the psk modifier of section 9), sans-I/O, over the symmetric layer in
 * crypto/symmetric.c. Patterns come from one table: tokens per message and
 * pre-messages; a pskN modifier is applied to the table's tokens when the
 * handshake is created.
 *
 * Every message is processed on a copy of the state, committed only when the
 * whole message succeeded, so a failure never leaves a half-updated
 * handshake. Every function that holds secrets leaves through one `out:`
 * label that wipes them. */
#include <sodium.h>
#include <string.h>

#include "common/mem.h"
#include "crypto/noise_internal.h"

enum token { T_END = 0, T_E, T_S, T_EE, T_ES, T_SE, T_SS, T_PSK };
enum { MAX_MESSAGES = 3, MAX_TOKENS = 7 };

typedef struct pattern {
    const char *name;
    bool pre_init_s; /* -> s ... : the responder knows the initiator's key */
    bool pre_resp_s; /* <- s ... : the initiator knows the responder's key */
    uint8_t n_messages;
    uint8_t tokens[MAX_MESSAGES][MAX_TOKENS]; /* T_END-terminated */
} pattern;

/* Messages alternate initiator, responder, initiator. */
static const pattern patterns[] = {
    {"NN", false, false, 2, {{T_E}, {T_E, T_EE}}},
    {"NK", false, true, 2, {{T_E, T_ES}, {T_E, T_EE}}},
    {"IK", false, true, 2, {{T_E, T_ES, T_S, T_SS}, {T_E, T_EE, T_SE}}},
    {"XX", false, false, 3, {{T_E}, {T_E, T_EE, T_S, T_ES}, {T_S, T_SE}}},
};

struct tern_noise {
    tern_mem mem;
    tern_noise_ss ss;
    uint8_t tokens[MAX_MESSAGES][MAX_TOKENS + 1]; /* the pattern, psk applied */
    uint8_t n_messages;
    uint8_t next_msg; /* index of the next message to write or read */
    bool initiator;
    bool psk_mode; /* "e" also mixes the key (section 9.2) */
    bool split_done;
    bool has_s, has_e, has_rs, has_re, has_psk;
    bool e_fixed; /* tests: e set by tern_noise_set_ephemeral() */
    tern_keypair s, e;
    tern_public_key rs, re;
    tern_key psk;
    tern_random_fn random;
    void *random_user_data;
};

/* ---- library set-up, sizes, keys ---- */

int tern_crypto_init(void)
{
    return sodium_init() < 0 ? TERN_ERR_UNSUPPORTED : 0;
}

bool tern_crypto_aesgcm_available(void)
{
    return crypto_aead_aes256gcm_is_available() != 0;
}

size_t tern_crypto_key_bytes(void)
{
    return TERN_CRYPTO_KEY_BYTES;
}

size_t tern_crypto_public_bytes(void)
{
    return TERN_CRYPTO_PUBLIC_BYTES;
}

size_t tern_crypto_hash_bytes(void)
{
    return TERN_CRYPTO_HASH_BYTES;
}

size_t tern_crypto_tag_bytes(void)
{
    return TERN_CRYPTO_TAG_BYTES;
}

size_t tern_noise_msg_max(void)
{
    return TERN_NOISE_MSG_MAX;
}

int tern_keypair_from_secret(tern_keypair *kp, const tern_key *secret)
{
    if (!kp || !secret)
        return TERN_ERR_INVAL;
    memmove(kp->secret.b, secret->b, sizeof(kp->secret.b));
    /* Fails only for a scalar that clamps to zero, which X25519 cannot. */
    if (crypto_scalarmult_base(kp->pub.b, kp->secret.b) != 0)
        return TERN_ERR_BADKEY;
    return 0;
}

static void default_random(uint8_t *buf, size_t len, void *user_data)
{
    (void)user_data;
    randombytes_buf(buf, len);
}

int tern_keypair_generate(tern_keypair *kp)
{
    tern_key secret;
    int rc;

    if (!kp)
        return TERN_ERR_INVAL;
    rc = tern_crypto_init();
    if (rc < 0)
        goto out;
    default_random(secret.b, sizeof(secret.b), NULL);
    rc = tern_keypair_from_secret(kp, &secret);
out:
    sodium_memzero(&secret, sizeof(secret));
    return rc;
}

int tern_noise_dh(const tern_key *sk, const tern_public_key *pk, tern_key *out)
{
    /* libsodium returns -1 when the shared secret is all zeros. */
    if (crypto_scalarmult(out->b, sk->b, pk->b) != 0) {
        sodium_memzero(out, sizeof(*out));
        return TERN_ERR_BADKEY;
    }
    return 0;
}

/* ---- protocol names ---- */

static const pattern *find_pattern(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
        if (strlen(patterns[i].name) == len && memcmp(patterns[i].name, name, len) == 0)
            return &patterns[i];
    return NULL;
}

static bool field_is(const char *p, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(p, want, len) == 0;
}

/* Parses "Noise_<pattern>_25519_<cipher>_BLAKE2b" into hs's tokens and
 * cipher. 0 or TERN_ERR_UNSUPPORTED. */
static int parse_protocol(tern_noise *hs, const char *name, size_t name_len,
                          tern_noise_cipher *cipher, const pattern **pat_out)
{
    const char *field[5];
    size_t flen[5];
    size_t nf = 0;
    const char *start = name;

    for (size_t i = 0; i <= name_len; i++) {
        if (i == name_len || name[i] == '_') {
            if (nf == 5)
                return TERN_ERR_UNSUPPORTED;
            field[nf] = start;
            flen[nf] = (size_t)(name + i - start);
            nf++;
            start = name + i + 1;
        }
    }
    if (nf != 5 || !field_is(field[0], flen[0], "Noise") || !field_is(field[2], flen[2], "25519") ||
        !field_is(field[4], flen[4], "BLAKE2b"))
        return TERN_ERR_UNSUPPORTED;
    if (field_is(field[3], flen[3], "ChaChaPoly"))
        *cipher = TERN_NOISE_CHACHAPOLY;
    else if (field_is(field[3], flen[3], "AESGCM"))
        *cipher = TERN_NOISE_AESGCM;
    else
        return TERN_ERR_UNSUPPORTED;

    /* The pattern's name is its leading capitals; modifiers follow. */
    const char *p = field[1];
    size_t plen = flen[1], base = 0;
    while (base < plen && p[base] >= 'A' && p[base] <= 'Z')
        base++;
    const pattern *pat = find_pattern(p, base);
    if (!pat)
        return TERN_ERR_UNSUPPORTED;

    for (uint8_t m = 0; m < pat->n_messages; m++)
        memcpy(hs->tokens[m], pat->tokens[m], MAX_TOKENS);
    hs->n_messages = pat->n_messages;

    size_t i = base;
    if (i < plen) {
        /* Exactly one modifier, "pskN", with one digit N <= n_messages. */
        if (plen - i != 4 || memcmp(p + i, "psk", 3) != 0 || p[i + 3] < '0' || p[i + 3] > '9')
            return TERN_ERR_UNSUPPORTED;
        unsigned n = (unsigned)(p[i + 3] - '0');
        if (n > pat->n_messages)
            return TERN_ERR_UNSUPPORTED;
        uint8_t *t = hs->tokens[n == 0 ? 0 : n - 1];
        size_t count = 0;
        while (t[count] != T_END)
            count++;
        if (count + 2 > sizeof(hs->tokens[0])) /* room for psk and the end */
            return TERN_ERR_UNSUPPORTED;
        if (n == 0) {
            memmove(t + 1, t, count);
            t[0] = T_PSK;
        } else {
            t[count] = T_PSK;
        }
        t[count + 1] = T_END;
        hs->psk_mode = true;
    }
    *pat_out = pat;
    return 0;
}

/* Does the initiator (or the responder) send an "s" token in the pattern? */
static bool sends_static(const tern_noise *hs, bool initiator_side)
{
    for (uint8_t m = initiator_side ? 0 : 1; m < hs->n_messages; m += 2)
        for (const uint8_t *t = hs->tokens[m]; *t != T_END; t++)
            if (*t == T_S)
                return true;
    return false;
}

/* ---- creation ---- */

void tern_noise_config_default(tern_noise_config *cfg)
{
    if (cfg)
        memset(cfg, 0, sizeof(*cfg));
}

int tern_noise_new(tern_noise **out, const tern_noise_config *cfg, const tern_mem *mem)
{
    tern_noise *hs = NULL;
    const pattern *pat = NULL;
    tern_noise_cipher cipher = TERN_NOISE_CHACHAPOLY;
    int rc;

    if (!out)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (!cfg || !cfg->protocol || (!cfg->prologue && cfg->prologue_len))
        return TERN_ERR_INVAL;
    rc = tern_crypto_init();
    if (rc < 0)
        return rc;
    size_t name_len = strnlen(cfg->protocol, TERN_NOISE_NAME_MAX + 1);
    if (name_len > TERN_NOISE_NAME_MAX)
        return TERN_ERR_UNSUPPORTED;

    tern_mem m;
    tern_mem_init(&m, mem);
    hs = tern_mem_calloc(&m, 1, sizeof(*hs));
    if (!hs)
        return TERN_ERR_NOMEM;
    hs->mem = m;
    hs->initiator = cfg->initiator;
    hs->random = cfg->random ? cfg->random : default_random;
    hs->random_user_data = cfg->random ? cfg->random_user_data : NULL;

    rc = parse_protocol(hs, cfg->protocol, name_len, &cipher, &pat);
    if (rc < 0)
        goto out;
    if (cipher == TERN_NOISE_AESGCM && !crypto_aead_aes256gcm_is_available()) {
        rc = TERN_ERR_UNSUPPORTED;
        goto out;
    }

    /* Each key must be given exactly when the pattern uses it, so that a
     * key the caller meant to be checked is never silently ignored. */
    bool i_pre = hs->initiator ? pat->pre_init_s : pat->pre_resp_s;
    bool peer_pre = hs->initiator ? pat->pre_resp_s : pat->pre_init_s;
    bool need_s = i_pre || sends_static(hs, hs->initiator);
    rc = TERN_ERR_INVAL;
    if (need_s != (cfg->s != NULL) || peer_pre != (cfg->rs != NULL) ||
        hs->psk_mode != (cfg->psk != NULL))
        goto out;
    if (cfg->s) {
        /* The public half is recomputed, never trusted. */
        rc = tern_keypair_from_secret(&hs->s, &cfg->s->secret);
        if (rc < 0)
            goto out;
        hs->has_s = true;
    }
    if (cfg->rs) {
        rc = TERN_ERR_BADKEY;
        if (sodium_is_zero(cfg->rs->b, sizeof(cfg->rs->b)))
            goto out;
        hs->rs = *cfg->rs;
        hs->has_rs = true;
    }
    if (cfg->psk) {
        hs->psk = *cfg->psk;
        hs->has_psk = true;
    }

    /* InitializeSymmetric, MixHash(prologue), then the pre-messages: the
     * initiator's first, then the responder's. */
    tern_noise_ss_init(&hs->ss, cfg->protocol, name_len, cipher);
    tern_noise_ss_mix_hash(&hs->ss, cfg->prologue, cfg->prologue_len);
    if (pat->pre_init_s)
        tern_noise_ss_mix_hash(&hs->ss, hs->initiator ? hs->s.pub.b : hs->rs.b, TERN_NOISE_DHLEN);
    if (pat->pre_resp_s)
        tern_noise_ss_mix_hash(&hs->ss, hs->initiator ? hs->rs.b : hs->s.pub.b, TERN_NOISE_DHLEN);
    rc = 0;
out:
    if (rc < 0) {
        sodium_memzero(hs, sizeof(*hs));
        tern_mem_free(&m, hs);
        hs = NULL;
    }
    *out = hs;
    return rc;
}

void tern_noise_del(tern_noise *hs)
{
    if (!hs)
        return;
    tern_mem mem = hs->mem;
    sodium_memzero(hs, sizeof(*hs));
    tern_mem_free(&mem, hs);
}

int tern_noise_set_ephemeral(tern_noise *hs, const tern_key *secret)
{
    if (!hs || !secret)
        return TERN_ERR_INVAL;
    if (hs->has_e || hs->split_done)
        return TERN_ERR_STATE;
    int rc = tern_keypair_from_secret(&hs->e, secret);
    if (rc == 0)
        hs->e_fixed = true;
    return rc;
}

/* ---- state ---- */

tern_noise_step tern_noise_next(const tern_noise *hs)
{
    if (!hs || hs->split_done)
        return TERN_NOISE_DONE;
    if (hs->next_msg >= hs->n_messages)
        return TERN_NOISE_SPLIT;
    bool initiators_turn = hs->next_msg % 2 == 0;
    return initiators_turn == hs->initiator ? TERN_NOISE_WRITE : TERN_NOISE_READ;
}

/* Bytes the next message adds to its payload. The cipher has a key from the
 * first DH or psk on (or "e" in psk mode), and from then on every "s" and
 * the payload carry a tag. */
static size_t message_overhead(const tern_noise *hs)
{
    bool key = hs->ss.cs.has_key;
    size_t n = 0;

    for (const uint8_t *t = hs->tokens[hs->next_msg]; *t != T_END; t++) {
        switch (*t) {
        case T_E:
            n += TERN_NOISE_DHLEN;
            if (hs->psk_mode)
                key = true;
            break;
        case T_S:
            n += TERN_NOISE_DHLEN + (key ? TERN_CRYPTO_TAG_BYTES : 0);
            break;
        default:
            key = true;
            break;
        }
    }
    return n + (key ? TERN_CRYPTO_TAG_BYTES : 0);
}

tern_ssize tern_noise_overhead(const tern_noise *hs)
{
    if (!hs)
        return TERN_ERR_INVAL;
    tern_noise_step step = tern_noise_next(hs);
    if (step != TERN_NOISE_WRITE && step != TERN_NOISE_READ)
        return TERN_ERR_STATE;
    return (tern_ssize)message_overhead(hs);
}

/* ee, es, se, ss: MixKey(DH(...)). The token's first letter names the
 * initiator's key and the second the responder's; each side takes its own
 * private key from one and the peer's public key from the other. */
static const char dh_keys[][2] = {
    [T_EE] = {'e', 'e'}, [T_ES] = {'e', 's'}, [T_SE] = {'s', 'e'}, [T_SS] = {'s', 's'}};

static int mix_dh(tern_noise *w, uint8_t token)
{
    char mine = dh_keys[token][w->initiator ? 0 : 1];
    char theirs = dh_keys[token][w->initiator ? 1 : 0];
    const tern_keypair *local = mine == 'e' ? &w->e : &w->s;
    const tern_public_key *remote = theirs == 'e' ? &w->re : &w->rs;
    bool have = (mine == 'e' ? w->has_e : w->has_s) && (theirs == 'e' ? w->has_re : w->has_rs);
    tern_key shared;
    int rc;

    /* The table guarantees the keys; this only guards against a bad entry. */
    if (!have)
        return TERN_ERR_STATE;
    rc = tern_noise_dh(&local->secret, remote, &shared);
    if (rc < 0)
        goto out;
    tern_noise_ss_mix_key(&w->ss, shared.b, sizeof(shared.b));
out:
    sodium_memzero(&shared, sizeof(shared));
    return rc;
}

/* ---- messages ---- */

tern_ssize tern_noise_write_message(tern_noise *hs, const uint8_t *payload, size_t payload_len,
                                    uint8_t *out, size_t out_cap)
{
    tern_noise w; /* the working copy, committed on success */
    size_t pos = 0, total;
    tern_ssize rc = 0;

    if (!hs || (!payload && payload_len) || !out)
        return TERN_ERR_INVAL;
    if (tern_noise_next(hs) != TERN_NOISE_WRITE)
        return TERN_ERR_STATE;
    size_t overhead = message_overhead(hs);
    if (payload_len > TERN_NOISE_MSG_MAX - overhead)
        return TERN_ERR_MSGSIZE;
    total = overhead + payload_len;
    if (out_cap < total)
        return TERN_ERR_NOBUFS;

    w = *hs;
    for (const uint8_t *t = w.tokens[w.next_msg]; *t != T_END; t++) {
        switch (*t) {
        case T_E: /* e: a fresh ephemeral key, sent in clear */
            if (!w.e_fixed) {
                tern_key secret;
                w.random(secret.b, sizeof(secret.b), w.random_user_data);
                rc = tern_keypair_from_secret(&w.e, &secret);
                sodium_memzero(&secret, sizeof(secret));
                if (rc < 0)
                    goto out;
            }
            w.has_e = true;
            memcpy(out + pos, w.e.pub.b, TERN_NOISE_DHLEN);
            pos += TERN_NOISE_DHLEN;
            tern_noise_ss_mix_hash(&w.ss, w.e.pub.b, TERN_NOISE_DHLEN);
            if (w.psk_mode)
                tern_noise_ss_mix_key(&w.ss, w.e.pub.b, TERN_NOISE_DHLEN);
            break;
        case T_S: { /* s: our static key, encrypted once there is a key */
            size_t n = TERN_NOISE_DHLEN + (w.ss.cs.has_key ? TERN_CRYPTO_TAG_BYTES : 0);
            rc = tern_noise_ss_encrypt_and_hash(&w.ss, w.s.pub.b, TERN_NOISE_DHLEN, out + pos);
            if (rc < 0)
                goto out;
            pos += n;
            break;
        }
        case T_PSK:
            tern_noise_ss_mix_key_and_hash(&w.ss, w.psk.b, sizeof(w.psk.b));
            break;
        default: /* ee, es, se, ss */
            rc = mix_dh(&w, *t);
            if (rc < 0)
                goto out;
            break;
        }
    }
    /* The payload, encrypted once there is a key. */
    rc = tern_noise_ss_encrypt_and_hash(&w.ss, payload, payload_len, out + pos);
    if (rc < 0)
        goto out;
    pos += payload_len + (w.ss.cs.has_key ? TERN_CRYPTO_TAG_BYTES : 0);
    w.next_msg++;
    *hs = w;
    rc = (tern_ssize)pos;
out:
    if (rc < 0)
        sodium_memzero(out, total);
    sodium_memzero(&w, sizeof(w));
    return rc;
}

tern_ssize tern_noise_read_message(tern_noise *hs, const uint8_t *msg, size_t msg_len,
                                   uint8_t *payload, size_t payload_cap)
{
    tern_noise w; /* the working copy, committed on success */
    size_t pos = 0, plen;
    tern_ssize rc = 0;

    if (!hs || !msg || (!payload && payload_cap))
        return TERN_ERR_INVAL;
    if (tern_noise_next(hs) != TERN_NOISE_READ)
        return TERN_ERR_STATE;
    if (msg_len > TERN_NOISE_MSG_MAX)
        return TERN_ERR_MSGSIZE;
    size_t overhead = message_overhead(hs);
    if (msg_len < overhead)
        return TERN_ERR_MALFORMED;
    plen = msg_len - overhead;
    if (payload_cap < plen)
        return TERN_ERR_NOBUFS;

    w = *hs;
    for (const uint8_t *t = w.tokens[w.next_msg]; *t != T_END; t++) {
        switch (*t) {
        case T_E: /* e: the peer's ephemeral key, in clear */
            memcpy(w.re.b, msg + pos, TERN_NOISE_DHLEN);
            pos += TERN_NOISE_DHLEN;
            rc = TERN_ERR_BADKEY;
            if (sodium_is_zero(w.re.b, sizeof(w.re.b)))
                goto out;
            w.has_re = true;
            tern_noise_ss_mix_hash(&w.ss, w.re.b, TERN_NOISE_DHLEN);
            if (w.psk_mode)
                tern_noise_ss_mix_key(&w.ss, w.re.b, TERN_NOISE_DHLEN);
            break;
        case T_S: { /* s: the peer's static key, encrypted once there is a key */
            size_t n = TERN_NOISE_DHLEN + (w.ss.cs.has_key ? TERN_CRYPTO_TAG_BYTES : 0);
            rc = tern_noise_ss_decrypt_and_hash(&w.ss, msg + pos, n, w.rs.b);
            if (rc < 0)
                goto out;
            pos += n;
            rc = TERN_ERR_BADKEY;
            if (sodium_is_zero(w.rs.b, sizeof(w.rs.b)))
                goto out;
            w.has_rs = true;
            break;
        }
        case T_PSK:
            tern_noise_ss_mix_key_and_hash(&w.ss, w.psk.b, sizeof(w.psk.b));
            break;
        default: /* ee, es, se, ss */
            rc = mix_dh(&w, *t);
            if (rc < 0)
                goto out;
            break;
        }
    }
    /* The payload: the rest of the message. */
    uint8_t none[1];
    rc = tern_noise_ss_decrypt_and_hash(&w.ss, msg + pos, msg_len - pos, payload ? payload : none);
    if (rc < 0)
        goto out;
    w.next_msg++;
    *hs = w;
    rc = (tern_ssize)plen;
out:
    if (rc < 0 && payload)
        sodium_memzero(payload, plen);
    sodium_memzero(&w, sizeof(w));
    return rc;
}

/* ---- the end of the handshake ---- */

static tern_cipher *cipher_new(const tern_mem *mem, const tern_noise_cs *cs)
{
    tern_cipher *c = tern_mem_calloc(mem, 1, sizeof(*c));
    if (c) {
        c->mem = *mem;
        c->cs = *cs;
    }
    return c;
}

int tern_noise_split(tern_noise *hs, tern_cipher **send, tern_cipher **recv)
{
    tern_noise_cs c1, c2;
    tern_cipher *a = NULL, *b = NULL;
    int rc;

    if (!hs || !send || !recv)
        return TERN_ERR_INVAL;
    *send = *recv = NULL;
    if (tern_noise_next(hs) != TERN_NOISE_SPLIT)
        return TERN_ERR_STATE;

    tern_noise_ss_split(&hs->ss, &c1, &c2);
    /* c1 carries the initiator's messages. */
    a = cipher_new(&hs->mem, hs->initiator ? &c1 : &c2);
    b = cipher_new(&hs->mem, hs->initiator ? &c2 : &c1);
    rc = TERN_ERR_NOMEM;
    if (!a || !b) {
        tern_cipher_del(a);
        tern_cipher_del(b);
        goto out;
    }
    *send = a;
    *recv = b;

    /* Only the handshake hash and the peer's public key stay. */
    sodium_memzero(&hs->ss.cs, sizeof(hs->ss.cs));
    sodium_memzero(&hs->ss.ck, sizeof(hs->ss.ck));
    sodium_memzero(&hs->s, sizeof(hs->s));
    sodium_memzero(&hs->e, sizeof(hs->e));
    sodium_memzero(&hs->re, sizeof(hs->re));
    sodium_memzero(&hs->psk, sizeof(hs->psk));
    hs->has_s = hs->has_e = hs->has_re = hs->has_psk = hs->e_fixed = false;
    hs->split_done = true;
    rc = 0;
out:
    sodium_memzero(&c1, sizeof(c1));
    sodium_memzero(&c2, sizeof(c2));
    return rc;
}

int tern_noise_get_handshake_hash(const tern_noise *hs, tern_hash *out)
{
    if (!hs || !out)
        return TERN_ERR_INVAL;
    tern_noise_step step = tern_noise_next(hs);
    if (step != TERN_NOISE_SPLIT && step != TERN_NOISE_DONE)
        return TERN_ERR_STATE;
    *out = hs->ss.h;
    return 0;
}

int tern_noise_get_remote_static(const tern_noise *hs, tern_public_key *out)
{
    if (!hs || !out)
        return TERN_ERR_INVAL;
    if (!hs->has_rs)
        return TERN_ERR_STATE;
    *out = hs->rs;
    return 0;
}
