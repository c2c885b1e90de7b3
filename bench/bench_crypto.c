/* bench_crypto: what tern's crypto layer costs on one core, beside libsodium
 * alone in the same run.
 *
 *   aead       one packet of --size bytes (default 1200) sealed by one
 *              tern_crypto_session and opened by its peer, for each cipher
 *              (ChaChaPoly; AESGCM where the CPU has AES-NI); beside the
 *              libsodium calls our packets are made of
 *              (crypto_aead_chacha20poly1305_ietf_encrypt/decrypt,
 *              crypto_aead_aes256gcm_encrypt/decrypt) on the same payload
 *              with the same 13 bytes of associated data. The difference is
 *              our framing: header, counters, rekey checks, replay window.
 *              For AES-GCM also the precomputed-key calls (_afternm), which
 *              skip the key schedule that every non-precomputed call runs.
 *   handshake  full Noise NK and IK handshakes, both sides in memory, from
 *              tern_noise_new() to a tern_crypto_session per side, checked
 *              by one packet sealed by the initiator and opened by the
 *              responder; then the responder's part alone (what a server
 *              does per INIT: read message 1, write message 2, make the
 *              session), timed over a batch of message 1s made beforehand
 *              and checked afterwards by their initiators; beside X25519
 *              itself (crypto_scalarmult).
 *   mac1       tern_cookie_server_check() on a 192-byte INIT with a good
 *              mac1 and with a bad one: the first check a server makes,
 *              before any DH.
 *   cookie     a server's whole work per valid-mac1 INIT under load, as
 *              transport/handshake.c does it: mac1, mac2 (refused), the
 *              cookie reply; with mac2 zero (a client without a cookie) and
 *              junk (a flood's choice), a new source address per INIT, and a
 *              previous secret in place. Through the public calls
 *              (tern_cookie_server_check() twice, tern_cookie_reply_write())
 *              and through the once-only internal ones the transport uses.
 *
 * Each figure is the fastest of --rounds slices (default 5), ours and
 * libsodium's slices interleaved so both see the same machine: on a shared
 * machine interference only slows a slice down. Every packet opened is
 * compared with what was sealed, every handshake's two sides must agree; a
 * mismatch fails the run. Timing is reported, never judged. */
#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common.h"
#include "crypto/cookie_internal.h"
#include "tern/crypto.h"
#include "transport/wire.h"

#define PROG "bench_crypto"
#define SIZE_MIN 16u
#define SIZE_MAX_ 8192u

/* The machine every result is stamped with. */
static tern_bench_machine host;

/* ---- timing: an operation run in slices, the fastest slice kept ---- */

#define CHUNK 64u      /* operations timed between two clock reads */
#define HS_BATCH CHUNK /* message 1s made (untimed) for one chunk of responders */
#define N_HS 8         /* rows of the handshake table */

/* One unit of work; false when what it produced is wrong. */
typedef bool (*op_fn)(void *ctx);

typedef struct op {
    op_fn run;
    op_fn prep; /* optional, untimed, before each chunk */
    void *ctx;
} op;

typedef struct timing {
    double best;  /* operations per second, fastest slice */
    uint64_t ops; /* over every slice */
    bool ok;
} timing;

static void slice(const op *o, double secs, timing *t)
{
    uint64_t n = 0;
    double el = 0;
    while (t->ok && el < secs) {
        if (o->prep && !o->prep(o->ctx)) {
            t->ok = false;
            break;
        }
        double t0 = tern_bench_now_s();
        for (unsigned i = 0; i < CHUNK; i++) {
            if (!o->run(o->ctx)) {
                t->ok = false;
                break;
            }
        }
        el += tern_bench_now_s() - t0;
        n += CHUNK;
    }
    t->ops += n;
    if (t->ok && el > 0 && (double)n / el > t->best)
        t->best = (double)n / el;
}

/* Runs the operations' slices interleaved: a0 b0 c0 a1 b1 c1 ... */
static void race(const op *ops, timing *ts, int n, double secs, int rounds)
{
    for (int i = 0; i < n; i++)
        ts[i] = (timing){.ok = true};
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++)
            slice(&ops[i], secs / rounds, &ts[i]);
}

/* ---- AEAD per packet ---- */

typedef struct aead_ctx {
    size_t size;
    uint8_t *pt, *ct, *back;
    /* ours */
    tern_crypto_session *a, *b;
    /* libsodium alone */
    uint8_t key[32];
    uint8_t ad[TERN_PACKET_HEADER_BYTES];
    uint64_t n;
    crypto_aead_aes256gcm_state gcm;
} aead_ctx;

static bool op_ours(void *arg)
{
    aead_ctx *c = arg;
    tern_ssize n = tern_crypto_session_seal(c->a, c->pt, c->size, c->ct, c->size + 64, 0);
    if (n < 0)
        return false;
    tern_ssize m = tern_crypto_session_open(c->b, c->ct, (size_t)n, c->back, c->size, 0);
    return m == (tern_ssize)c->size && memcmp(c->back, c->pt, c->size) == 0;
}

/* The nonce as Noise lays out a counter: 4 zero bytes, then 8. */
static void nonce12(uint8_t *nonce, uint64_t n)
{
    memset(nonce, 0, 4);
    memcpy(nonce + 4, &n, 8);
}

static bool op_chacha(void *arg)
{
    aead_ctx *c = arg;
    uint8_t nonce[12];
    unsigned long long clen = 0, plen = 0;
    nonce12(nonce, c->n++);
    memcpy(c->ad + 5, &c->n, 8);
    if (crypto_aead_chacha20poly1305_ietf_encrypt(c->ct, &clen, c->pt, c->size, c->ad,
                                                  sizeof(c->ad), NULL, nonce, c->key) != 0)
        return false;
    if (crypto_aead_chacha20poly1305_ietf_decrypt(c->back, &plen, NULL, c->ct, clen, c->ad,
                                                  sizeof(c->ad), nonce, c->key) != 0)
        return false;
    return plen == c->size && memcmp(c->back, c->pt, c->size) == 0;
}

static bool op_gcm(void *arg)
{
    aead_ctx *c = arg;
    uint8_t nonce[12];
    unsigned long long clen = 0, plen = 0;
    nonce12(nonce, c->n++);
    memcpy(c->ad + 5, &c->n, 8);
    if (crypto_aead_aes256gcm_encrypt(c->ct, &clen, c->pt, c->size, c->ad, sizeof(c->ad), NULL,
                                      nonce, c->key) != 0)
        return false;
    if (crypto_aead_aes256gcm_decrypt(c->back, &plen, NULL, c->ct, clen, c->ad, sizeof(c->ad),
                                      nonce, c->key) != 0)
        return false;
    return plen == c->size && memcmp(c->back, c->pt, c->size) == 0;
}

static bool op_gcm_afternm(void *arg)
{
    aead_ctx *c = arg;
    uint8_t nonce[12];
    unsigned long long clen = 0, plen = 0;
    nonce12(nonce, c->n++);
    memcpy(c->ad + 5, &c->n, 8);
    if (crypto_aead_aes256gcm_encrypt_afternm(c->ct, &clen, c->pt, c->size, c->ad, sizeof(c->ad),
                                              NULL, nonce, &c->gcm) != 0)
        return false;
    if (crypto_aead_aes256gcm_decrypt_afternm(c->back, &plen, NULL, c->ct, clen, c->ad,
                                              sizeof(c->ad), nonce, &c->gcm) != 0)
        return false;
    return plen == c->size && memcmp(c->back, c->pt, c->size) == 0;
}

typedef struct opts {
    bool quick;
    double secs;
    int rounds;
    size_t size;
} opts;

static void aead_json(FILE *out, const opts *o, const char *cipher, const char *impl,
                      const timing *t, double ratio)
{
    fprintf(out,
            "{\"bench\":\"crypto\",\"mode\":\"aead\",\"cipher\":\"%s\",\"impl\":\"%s\","
            "\"payload_bytes\":%zu,\"ok\":%s,\"packets_per_s\":%.0f,\"mb_per_s\":%.2f,"
            "\"ns_per_packet\":%.1f,\"packets\":%" PRIu64 ",\"rounds\":%d,",
            cipher, impl, o->size, t->ok ? "true" : "false", t->best,
            t->best * (double)o->size / 1e6, t->best > 0 ? 1e9 / t->best : 0.0, t->ops, o->rounds);
    if (ratio > 0)
        fprintf(out, "\"overhead_vs_libsodium\":%.4f,", ratio);
    tern_bench_json_stamp(out, &host, o->quick);
}

static int aead(const opts *o, FILE *out)
{
    int failed = 0;
    printf("== AEAD: a %zu-byte payload sealed and opened (one packet each way counts once),\n"
           "   one core; fastest of %d interleaved slices of %.2f s; MB/s = 10^6 B of payload.\n\n",
           o->size, o->rounds, o->secs / o->rounds);
    printf("%-11s %-26s %12s %9s %9s %10s\n", "cipher", "implementation", "packets/s", "MB/s",
           "ns/pkt", "overhead");
    for (int k = 0; k < 2; k++) {
        bool gcm = k == 1;
        const char *cipher = gcm ? "aesgcm" : "chachapoly";
        if (gcm && !tern_crypto_aesgcm_available()) {
            printf("%-11s skipped: no AES-NI on this CPU\n", cipher);
            continue;
        }
        aead_ctx c;
        memset(&c, 0, sizeof(c));
        c.size = o->size;
        c.pt = malloc(c.size);
        c.ct = malloc(c.size + 64);
        c.back = malloc(c.size);
        uint8_t k1[32], k2[32];
        randombytes_buf(k1, sizeof(k1));
        randombytes_buf(k2, sizeof(k2));
        memcpy(c.key, k1, sizeof(c.key));
        c.ad[0] = TERN_PACKET_TYPE_DATA;
        tern_aead which = gcm ? TERN_AEAD_AESGCM : TERN_AEAD_CHACHAPOLY;
        tern_crypto_session_config ca, cb;
        tern_crypto_session_config_default(&ca);
        tern_crypto_session_config_default(&cb);
        ca.local_id = cb.remote_id = 1;
        ca.remote_id = cb.local_id = 2;
        bool ok = c.pt && c.ct && c.back &&
                  tern_crypto_session_new_from_keys(&c.a, which, k1, k2, &ca, NULL, 0) == 0 &&
                  tern_crypto_session_new_from_keys(&c.b, which, k2, k1, &cb, NULL, 0) == 0;
        if (gcm && ok)
            ok = crypto_aead_aes256gcm_beforenm(&c.gcm, c.key) == 0;
        if (!ok) {
            printf("%-11s FAILED: setup\n", cipher);
            failed++;
        } else {
            randombytes_buf(c.pt, c.size);
            /* Separate counters: the same context serves every op. */
            aead_ctx c2 = c, c3 = c;
            op ops[3] = {{op_ours, NULL, &c},
                         {gcm ? op_gcm : op_chacha, NULL, &c2},
                         {op_gcm_afternm, NULL, &c3}};
            timing t[3];
            race(ops, t, gcm ? 3 : 2, o->secs, o->rounds);
            const char *names[3] = {"tern_crypto_session",
                                    gcm ? "libsodium aes256gcm" : "libsodium chacha20poly1305",
                                    "libsodium aes256gcm_afternm"};
            for (int i = 0; i < (gcm ? 3 : 2); i++) {
                /* Ours against the same libsodium calls we make (not afternm). */
                double ratio = i == 0 && t[1].best > 0 ? t[1].best / t[0].best : 0.0;
                char ov[16] = "-";
                if (i == 0 && ratio > 0)
                    snprintf(ov, sizeof(ov), "%+.1f%%", (ratio - 1.0) * 100.0);
                if (t[i].ok)
                    printf("%-11s %-26s %12.0f %9.1f %9.1f %10s\n", cipher, names[i], t[i].best,
                           t[i].best * (double)c.size / 1e6, 1e9 / t[i].best, ov);
                else
                    printf("%-11s %-26s FAILED: a packet did not come back as sealed\n", cipher,
                           names[i]);
                failed += !t[i].ok;
                aead_json(out, o, cipher,
                          i == 0   ? "tern"
                          : i == 1 ? "libsodium"
                                   : "libsodium_afternm",
                          &t[i], ratio);
            }
            tern_crypto_session_stats st;
            tern_crypto_session_get_stats(c.b, &st);
            if (st.auth_failures || st.replays || st.malformed) {
                printf("%-11s FAILED: the receiving session counted errors\n", cipher);
                failed++;
            }
        }
        tern_crypto_session_del(c.a);
        tern_crypto_session_del(c.b);
        free(c.pt);
        free(c.ct);
        free(c.back);
        sodium_memzero(k1, sizeof(k1));
        sodium_memzero(k2, sizeof(k2));
    }
    printf("\n");
    return failed;
}

/* ---- handshakes ---- */

typedef struct hs_ctx {
    const char *protocol;
    bool ik;
    const tern_keypair *server, *client;
    /* server side alone: a batch of message 1s and their initiators */
    tern_noise *init[HS_BATCH];
    uint8_t m1[HS_BATCH][TERN_WIRE_NOISE_MAX];
    size_t m1_len[HS_BATCH];
    uint8_t m2[HS_BATCH][TERN_WIRE_NOISE_MAX];
    size_t m2_len[HS_BATCH];
    tern_crypto_session *resp_cs[HS_BATCH];
    unsigned next;
    bool batch_ok;
    /* X25519 reference */
    uint8_t dh_out[32], dh_scalar[32], dh_point[32];
} hs_ctx;

static const uint8_t prologue[] = "tern/1";

static int new_side(hs_ctx *c, bool initiator, tern_noise **out)
{
    tern_noise_config nc;
    tern_noise_config_default(&nc);
    nc.protocol = c->protocol;
    nc.initiator = initiator;
    nc.prologue = prologue;
    nc.prologue_len = sizeof(prologue) - 1;
    if (initiator) {
        nc.rs = &c->server->pub;
        if (c->ik)
            nc.s = c->client;
    } else {
        nc.s = c->server;
    }
    return tern_noise_new(out, &nc, NULL);
}

/* The initiator seals one packet, the responder must open it. */
static bool sessions_agree(tern_crypto_session *ini, tern_crypto_session *resp)
{
    uint8_t pt[32] = "the handshake produced one key", pkt[64 + TERN_PACKET_OVERHEAD], back[64];
    tern_ssize n = tern_crypto_session_seal(ini, pt, sizeof(pt), pkt, sizeof(pkt), 0);
    return n > 0 &&
           tern_crypto_session_open(resp, pkt, (size_t)n, back, sizeof(back), 0) ==
               (tern_ssize)sizeof(pt) &&
           memcmp(back, pt, sizeof(pt)) == 0;
}

static bool op_full(void *arg)
{
    hs_ctx *c = arg;
    tern_noise *i = NULL, *r = NULL;
    tern_crypto_session *ics = NULL, *rcs = NULL;
    uint8_t m1[TERN_WIRE_NOISE_MAX], m2[TERN_WIRE_NOISE_MAX];
    bool ok = false;
    if (new_side(c, true, &i) != 0 || new_side(c, false, &r) != 0)
        goto out;
    tern_ssize n1 = tern_noise_write_message(i, NULL, 0, m1, sizeof(m1));
    if (n1 < 0 || tern_noise_read_message(r, m1, (size_t)n1, NULL, 0) != 0)
        goto out;
    tern_ssize n2 = tern_noise_write_message(r, NULL, 0, m2, sizeof(m2));
    if (n2 < 0 || tern_noise_read_message(i, m2, (size_t)n2, NULL, 0) != 0)
        goto out;
    if (tern_crypto_session_new(&ics, i, NULL, NULL, 0) != 0 ||
        tern_crypto_session_new(&rcs, r, NULL, NULL, 0) != 0)
        goto out;
    ok = sessions_agree(ics, rcs);
out:
    tern_crypto_session_del(ics);
    tern_crypto_session_del(rcs);
    tern_noise_del(i);
    tern_noise_del(r);
    return ok;
}

/* Makes HS_BATCH initiators and their message 1s (not timed). */
static bool batch_prepare(hs_ctx *c)
{
    for (unsigned k = 0; k < HS_BATCH; k++) {
        if (new_side(c, true, &c->init[k]) != 0)
            return false;
        tern_ssize n = tern_noise_write_message(c->init[k], NULL, 0, c->m1[k], sizeof(c->m1[k]));
        if (n < 0)
            return false;
        c->m1_len[k] = (size_t)n;
    }
    c->next = 0;
    return true;
}

/* The initiators finish and check the responders' sessions (not timed). */
static bool batch_check(hs_ctx *c)
{
    bool ok = true;
    for (unsigned k = 0; k < HS_BATCH; k++) {
        tern_crypto_session *ics = NULL;
        if (k < c->next) {
            ok = ok && tern_noise_read_message(c->init[k], c->m2[k], c->m2_len[k], NULL, 0) == 0 &&
                 tern_crypto_session_new(&ics, c->init[k], NULL, NULL, 0) == 0 &&
                 sessions_agree(ics, c->resp_cs[k]);
        }
        tern_crypto_session_del(ics);
        tern_crypto_session_del(c->resp_cs[k]);
        c->resp_cs[k] = NULL;
        tern_noise_del(c->init[k]);
        c->init[k] = NULL;
    }
    c->next = 0;
    return ok;
}

/* Before each chunk of responders: the last batch checked, a new one made. */
static bool responder_prep(void *arg)
{
    hs_ctx *c = arg;
    if (c->next < HS_BATCH && c->init[0])
        return true; /* fresh from the first batch_prepare() */
    if (!batch_check(c) || !batch_prepare(c)) {
        c->batch_ok = false;
        return false;
    }
    return true;
}

/* What a server does per INIT: read message 1, write message 2, keys. */
static bool op_responder(void *arg)
{
    hs_ctx *c = arg;
    if (c->next == HS_BATCH)
        return false; /* the prep hook refills the batch before every chunk */
    unsigned k = c->next;
    tern_noise *r = NULL;
    bool ok = false;
    if (new_side(c, false, &r) == 0 &&
        tern_noise_read_message(r, c->m1[k], c->m1_len[k], NULL, 0) == 0) {
        tern_ssize n = tern_noise_write_message(r, NULL, 0, c->m2[k], sizeof(c->m2[k]));
        if (n > 0) {
            c->m2_len[k] = (size_t)n;
            ok = tern_crypto_session_new(&c->resp_cs[k], r, NULL, NULL, 0) == 0;
        }
    }
    tern_noise_del(r);
    c->next++;
    return ok;
}

static bool op_x25519(void *arg)
{
    hs_ctx *c = arg;
    if (crypto_scalarmult(c->dh_out, c->dh_scalar, c->dh_point) != 0)
        return false;
    c->dh_scalar[0] ^= c->dh_out[0]; /* a new scalar each time, from the last output */
    return true;
}

/* A key pair's public half: what every ephemeral key costs, and what
 * tern_noise_new() spends recomputing a static key's public half. */
static bool op_x25519_base(void *arg)
{
    hs_ctx *c = arg;
    if (crypto_scalarmult_base(c->dh_out, c->dh_scalar) != 0)
        return false;
    c->dh_scalar[0] ^= c->dh_out[0];
    return true;
}

/* ---- mac1 ---- */

typedef struct mac_ctx {
    tern_cookie_server *server;
    uint8_t good[TERN_WIRE_INIT_BYTES], bad[TERN_WIRE_INIT_BYTES];
    tern_addr src;
} mac_ctx;

static bool op_mac_good(void *arg)
{
    mac_ctx *c = arg;
    return tern_cookie_server_check(c->server, c->good, sizeof(c->good), &c->src, false, 0) == 0;
}

static bool op_mac_bad(void *arg)
{
    mac_ctx *c = arg;
    return tern_cookie_server_check(c->server, c->bad, sizeof(c->bad), &c->src, false, 0) ==
           TERN_ERR_DECRYPT;
}

/* ---- the cookie path: a server's whole work per valid-mac1 INIT under load ---- */

#define N_COOKIE_SRC 256u /* spoofed sources the INITs cycle through */

typedef struct cookie_ctx {
    tern_cookie_server *server;
    uint8_t msg[TERN_WIRE_INIT_BYTES]; /* good mac1; mac2 zero or junk */
    uint8_t reply[TERN_COOKIE_REPLY_BYTES];
    tern_addr src;
    unsigned next;
} cookie_ctx;

/* The time every call is made at: one rotation after the server was made,
 * so a previous secret exists as on any server up for two minutes. */
#define COOKIE_NOW ((tern_ms)TERN_COOKIE_SECRET_MS)

/* A fresh spoofed source per INIT, as in a flood. */
static const tern_addr *next_src(cookie_ctx *c)
{
    c->next = (c->next + 1) % N_COOKIE_SRC;
    c->src.bytes[3] = (uint8_t)c->next;
    return &c->src;
}

/* As transport/handshake.c called it before the once-only path: mac1,
 * mac2 under load, the reply. */
static bool op_cookie_api(void *arg)
{
    cookie_ctx *c = arg;
    const tern_addr *src = next_src(c);
    tern_cookie_server *s = c->server;
    const size_t len = sizeof(c->msg);
    return tern_cookie_server_check(s, c->msg, len, src, false, COOKIE_NOW) == 0 &&
           tern_cookie_server_check(s, c->msg, len, src, true, COOKIE_NOW) == TERN_ERR_COOKIE &&
           tern_cookie_reply_write(s, TERN_WIRE_COOKIE, 1, c->msg, len, src, COOKIE_NOW, c->reply,
                                   sizeof(c->reply)) == (tern_ssize)TERN_COOKIE_REPLY_BYTES;
}

/* As transport/handshake.c calls it now: mac1 once, its verdict passed on. */
static bool op_cookie_once(void *arg)
{
    cookie_ctx *c = arg;
    tern_cookie_server *s = c->server;
    tern_cookie_msg m;
    return tern_cookie_server_mac1(s, &m, c->msg, sizeof(c->msg), next_src(c)) == 0 &&
           tern_cookie_server_mac2(s, &m, COOKIE_NOW) == TERN_ERR_COOKIE &&
           tern_cookie_server_reply(s, &m, TERN_WIRE_COOKIE, 1, COOKIE_NOW, c->reply,
                                    sizeof(c->reply)) == (tern_ssize)TERN_COOKIE_REPLY_BYTES;
}

static void rate_json(FILE *out, const opts *o, const char *mode, const char *what, const timing *t,
                      double ratio_name_val, const char *ratio_name)
{
    fprintf(out,
            "{\"bench\":\"crypto\",\"mode\":\"%s\",\"what\":\"%s\",\"ok\":%s,\"per_s\":%.0f,"
            "\"us_each\":%.3f,\"count\":%" PRIu64 ",\"rounds\":%d,",
            mode, what, t->ok ? "true" : "false", t->best, t->best > 0 ? 1e6 / t->best : 0.0,
            t->ops, o->rounds);
    if (ratio_name)
        fprintf(out, "\"%s\":%.2f,", ratio_name, ratio_name_val);
    tern_bench_json_stamp(out, &host, o->quick);
}

static int handshakes(const opts *o, FILE *out)
{
    int failed = 0;
    tern_keypair server, client;
    if (tern_keypair_generate(&server) != 0 || tern_keypair_generate(&client) != 0)
        return 1;
    hs_ctx *c = calloc(4, sizeof(*c));
    if (!c)
        return 1;
    const char *protos[2] = {"Noise_NK_25519_ChaChaPoly_BLAKE2b",
                             "Noise_IK_25519_ChaChaPoly_BLAKE2b"};
    for (int k = 0; k < 4; k++) {
        c[k].protocol = protos[k % 2];
        c[k].ik = k % 2 == 1;
        c[k].server = &server;
        c[k].client = &client;
        c[k].batch_ok = true;
    }
    randombytes_buf(c[0].dh_scalar, 32);
    crypto_scalarmult_base(c[0].dh_point, c[0].dh_scalar);
    randombytes_buf(c[1].dh_scalar, 32);
    bool prepared = batch_prepare(&c[2]) && batch_prepare(&c[3]);

    mac_ctx m;
    memset(&m, 0, sizeof(m));
    tern_cookie_client *cc = NULL;
    randombytes_buf(m.good, sizeof(m.good));
    m.src.len = 6;
    memcpy(m.src.bytes, "\x7f\x00\x00\x01\x13\x88", 6);
    bool mac_ok = tern_cookie_server_new(&m.server, &server.pub, NULL, NULL, 0, NULL) == 0 &&
                  tern_cookie_client_new(&cc, &server.pub, NULL) == 0 &&
                  tern_cookie_client_add_macs(cc, m.good, sizeof(m.good), 0) == 0;
    memcpy(m.bad, m.good, sizeof(m.bad));
    m.bad[10] ^= 1;
    tern_cookie_client_del(cc);

    if (!prepared || !mac_ok) {
        fprintf(stderr, PROG ": handshake or cookie setup failed\n");
        failed++;
    } else {
        op ops[N_HS] = {{op_full, NULL, &c[0]},
                        {op_full, NULL, &c[1]},
                        {op_responder, responder_prep, &c[2]},
                        {op_responder, responder_prep, &c[3]},
                        {op_x25519, NULL, &c[0]},
                        {op_x25519_base, NULL, &c[1]},
                        {op_mac_good, NULL, &m},
                        {op_mac_bad, NULL, &m}};
        timing t[N_HS];
        race(ops, t, N_HS, o->secs, o->rounds);
        for (int k = 2; k < 4; k++) {
            bool ok = batch_check(&c[k]);
            if (!ok || !c[k].batch_ok) {
                t[k].ok = false;
            }
        }
        const char *what[N_HS] = {"NK full (both sides)",       "IK full (both sides)",
                                  "NK responder alone",         "IK responder alone",
                                  "X25519 (crypto_scalarmult)", "X25519 base (scalarmult_base)",
                                  "mac1 check, good mac1",      "mac1 check, bad mac1"};
        const char *keys[N_HS] = {"nk_full", "ik_full",     "nk_responder", "ik_responder",
                                  "x25519",  "x25519_base", "mac1_good",    "mac1_bad"};
        printf("== handshakes and the first check: one core, fastest of %d interleaved slices;\n"
               "   in units of one X25519 (crypto_scalarmult) on the same core.\n\n",
               o->rounds);
        printf("%-30s %12s %10s %10s\n", "operation", "per second", "us each", "x X25519");
        double dh = t[4].ok ? t[4].best : 0.0;
        for (int i = 0; i < N_HS; i++) {
            double in_dh = dh > 0 && t[i].best > 0 ? dh / t[i].best : 0.0;
            if (t[i].ok)
                printf("%-30s %12.0f %10.2f %10.3f\n", what[i], t[i].best, 1e6 / t[i].best, in_dh);
            else
                printf("%-30s FAILED: the two sides did not agree\n", what[i]);
            failed += !t[i].ok;
            rate_json(out, o, i < 6 ? "handshake" : "mac1", keys[i], &t[i], in_dh,
                      in_dh > 0 ? "x25519_units" : NULL);
        }
        tern_cookie_stats cs;
        tern_cookie_server_get_stats(m.server, &cs);
        printf("\n(mac1 counted %" PRIu64 " bad ones, as expected for the bad-mac1 loop.)\n\n",
               cs.mac1_bad);
    }
    for (int k = 2; k < 4; k++)
        (void)batch_check(&c[k]);
    tern_cookie_server_del(m.server);
    free(c);
    sodium_memzero(&server, sizeof(server));
    sodium_memzero(&client, sizeof(client));
    return failed;
}

/* Rows of the cookie-path table: the mac2 an INIT carries (zero: what a
 * client without a cookie sends; junk: what a flood may send instead). */
static bool cookie_setup(cookie_ctx *c, const tern_keypair *server, bool junk_mac2)
{
    tern_cookie_client *cc = NULL;
    memset(c, 0, sizeof(*c));
    randombytes_buf(c->msg, sizeof(c->msg));
    c->src.len = 6;
    memcpy(c->src.bytes, "\xc6\x33\x64\x00\x13\x88", 6);
    bool ok = tern_cookie_server_new(&c->server, &server->pub, NULL, NULL, 0, NULL) == 0 &&
              tern_cookie_client_new(&cc, &server->pub, NULL) == 0 &&
              tern_cookie_client_add_macs(cc, c->msg, sizeof(c->msg), 0) == 0;
    tern_cookie_client_del(cc);
    if (ok && junk_mac2)
        randombytes_buf(c->msg + sizeof(c->msg) - TERN_MAC_BYTES, TERN_MAC_BYTES);
    return ok;
}

static int cookie_path(const opts *o, FILE *out)
{
    enum { N = 4 };
    const char *what[N] = {"public calls, mac2 zero", "public calls, mac2 junk",
                           "once-only, mac2 zero", "once-only, mac2 junk"};
    const char *keys[N] = {"cookie_api_zero", "cookie_api_junk", "cookie_once_zero",
                           "cookie_once_junk"};
    tern_keypair server;
    cookie_ctx *c = calloc(N, sizeof(*c));
    int failed = 0;
    if (!c || tern_keypair_generate(&server) != 0) {
        free(c);
        return 1;
    }
    bool ok = true;
    for (int i = 0; i < N; i++)
        ok = ok && cookie_setup(&c[i], &server, i % 2 == 1);
    if (!ok) {
        fprintf(stderr, PROG ": cookie setup failed\n");
        failed++;
    } else {
        op ops[N] = {{op_cookie_api, NULL, &c[0]},
                     {op_cookie_api, NULL, &c[1]},
                     {op_cookie_once, NULL, &c[2]},
                     {op_cookie_once, NULL, &c[3]}};
        timing t[N];
        race(ops, t, N, o->secs, o->rounds);
        printf("== the cookie path: a server's work per valid-mac1 INIT under load (mac1,\n"
               "   mac2, cookie reply), one core, fastest of %d interleaved slices.\n\n",
               o->rounds);
        printf("%-30s %12s %10s\n", "operation", "per second", "ns each");
        for (int i = 0; i < N; i++) {
            if (t[i].ok)
                printf("%-30s %12.0f %10.0f\n", what[i], t[i].best, 1e9 / t[i].best);
            else
                printf("%-30s FAILED: a check or reply gave the wrong result\n", what[i]);
            failed += !t[i].ok;
            rate_json(out, o, "cookie_path", keys[i], &t[i], 0, NULL);
        }
        printf("\n");
    }
    for (int i = 0; i < N; i++)
        tern_cookie_server_del(c[i].server);
    free(c);
    sodium_memzero(&server, sizeof(server));
    return failed;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s [--quick] [--mode M] [--seconds S] [--rounds N] [--size N] [--out PATH]\n"
            "AEAD per packet through tern_crypto_session beside libsodium alone, Noise\n"
            "handshakes per second, the mac1 check and the cookie path, on one core.\n"
            "  --quick      a short smoke run (CI)\n"
            "  --mode M     all (default), aead, handshake or cookie\n"
            "  --seconds S  time per figure (default 3)\n"
            "  --rounds N   interleaved slices per figure, fastest kept (default 5)\n"
            "  --size N     payload bytes per packet, %u..%u (default 1200)\n"
            "  --out PATH   JSON-lines results file to append to (default %s)\n",
            PROG, SIZE_MIN, SIZE_MAX_, TERN_BENCH_RESULTS_DEFAULT);
}

int main(int argc, char **argv)
{
    const char *out_path = TERN_BENCH_RESULTS_DEFAULT;
    opts o = {.secs = 3.0, .rounds = 5, .size = 1200};
    bool secs_given = false;
    const char *mode = "all";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        uint64_t u = 0;
        if (!strcmp(a, "--quick")) {
            o.quick = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--out")) {
            out_path = v;
        } else if (!strcmp(a, "--mode")) {
            mode = v;
            if (strcmp(v, "all") && strcmp(v, "aead") && strcmp(v, "handshake") &&
                strcmp(v, "cookie")) {
                fprintf(stderr, PROG ": --mode: all, aead, handshake or cookie, not %s\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seconds")) {
            rc = tern_bench_parse_double(PROG, a, v, 0.01, 600.0, &o.secs);
            secs_given = true;
        } else if (!strcmp(a, "--rounds")) {
            rc = tern_bench_parse_u64(PROG, a, v, 1, 100, &u);
            o.rounds = (int)u;
        } else if (!strcmp(a, "--size")) {
            rc = tern_bench_parse_u64(PROG, a, v, SIZE_MIN, SIZE_MAX_, &u);
            o.size = (size_t)u;
        } else {
            usage(stderr);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (o.quick && !secs_given)
        o.secs = 0.15;
    if (tern_crypto_init() != 0) {
        fprintf(stderr, PROG ": libsodium did not initialise\n");
        return 1;
    }
    FILE *out = tern_bench_results_open(PROG, out_path);
    if (!out)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    tern_bench_machine_init(&host);
    double load[3];
    tern_bench_loadavg(load);
    printf("%s: %ld CPUs (%s), kernel %s, libsodium %s, load average %.2f %.2f %.2f%s\n\n", PROG,
           host.nproc, host.cpu, host.kernel, sodium_version_string(), load[0], load[1], load[2],
           o.quick ? ", quick run" : "");
    bool all = !strcmp(mode, "all");
    int failed = 0;
    if (all || !strcmp(mode, "aead"))
        failed += aead(&o, out);
    if (all || !strcmp(mode, "handshake"))
        failed += handshakes(&o, out);
    if (all || !strcmp(mode, "cookie"))
        failed += cookie_path(&o, out);
    fclose(out);
    if (failed)
        fprintf(stderr, PROG ": %d result(s) failed\n", failed);
    return failed ? 1 : 0;
}
