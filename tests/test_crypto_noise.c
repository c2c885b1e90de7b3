/* The Noise handshake: the published cacophony vectors replayed byte for
 * byte (tests/vectors/noise-25519-blake2b.json), then every way a handshake
 * must fail: tampered, truncated or oversized messages, wrong keys and PSKs,
 * low-order keys, calls out of order, allocator failures. White-box tests of
 * the symmetric layer use crypto/noise_internal.h. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "crypto/noise_internal.h"
#include "tern/crypto.h"

#define MAX_VECTORS 64
#define MAX_MESSAGES 16
#define BUF 1024

/* ---- the vector file ---- */

typedef struct side {
    bool has_s, has_rs, has_psk;
    tern_keypair s;
    tern_public_key rs;
    tern_key psk;
    tern_key e;
    uint8_t prologue[256];
    size_t prologue_len;
} side;

typedef struct message {
    uint8_t payload[BUF];
    size_t payload_len;
    uint8_t ct[BUF];
    size_t ct_len;
} message;

typedef struct vector {
    char name[128];
    side init, resp;
    tern_hash hash;
    message msg[MAX_MESSAGES];
    size_t n_msgs;
} vector;

/* The vectors live beside this source file; __FILE__ is the absolute path
 * CMake passes to the compiler, so this works from any build directory. */
static json_t *load_file(void)
{
    char path[4096];
    const char *src = __FILE__;
    const char *slash = strrchr(src, '/');
    int dir = slash ? (int)(slash - src + 1) : 0;
    snprintf(path, sizeof(path), "%.*svectors/noise-25519-blake2b.json", dir, src);

    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "%s:%d: %s", path, err.line, err.text);
    cr_assert(json_is_array(json_object_get(root, "vectors")), "%s: no \"vectors\" array", path);
    return root;
}

static size_t hex_decode(const char *field, const char *hex, uint8_t *out, size_t cap)
{
    size_t bin_len = 0;
    cr_assert_eq(sodium_hex2bin(out, cap, hex, strlen(hex), NULL, &bin_len, NULL), 0,
                 "%s: bad hex or longer than %zu bytes", field, cap);
    return bin_len;
}

/* A hex field of the object, or false if it is absent. */
static bool get_hex(json_t *obj, const char *field, uint8_t *out, size_t cap, size_t *len)
{
    json_t *j = json_object_get(obj, field);
    if (!j)
        return false;
    cr_assert(json_is_string(j), "%s is not a string", field);
    *len = hex_decode(field, json_string_value(j), out, cap);
    return true;
}

static bool get_key(json_t *obj, const char *field, uint8_t out[32])
{
    size_t len = 0;
    if (!get_hex(obj, field, out, 32, &len))
        return false;
    cr_assert_eq(len, 32, "%s: %zu bytes, not 32", field, len);
    return true;
}

static void load_side(json_t *o, const char *who, side *sd)
{
    char f[64];
    tern_key secret;

    memset(sd, 0, sizeof(*sd));
    snprintf(f, sizeof(f), "%s_prologue", who);
    if (!get_hex(o, f, sd->prologue, sizeof(sd->prologue), &sd->prologue_len))
        sd->prologue_len = 0;
    snprintf(f, sizeof(f), "%s_static", who);
    if (get_key(o, f, secret.b)) {
        cr_assert_eq(tern_keypair_from_secret(&sd->s, &secret), 0);
        sd->has_s = true;
    }
    snprintf(f, sizeof(f), "%s_remote_static", who);
    sd->has_rs = get_key(o, f, sd->rs.b);
    snprintf(f, sizeof(f), "%s_ephemeral", who);
    cr_assert(get_key(o, f, sd->e.b), "%s missing", f);
    snprintf(f, sizeof(f), "%s_psks", who);
    json_t *psks = json_object_get(o, f);
    if (psks) {
        cr_assert(json_is_array(psks) && json_array_size(psks) == 1,
                  "%s: one PSK expected (tern supports one psk modifier)", f);
        json_t *p = json_array_get(psks, 0);
        cr_assert(json_is_string(p));
        cr_assert_eq(hex_decode(f, json_string_value(p), sd->psk.b, 32), 32);
        sd->has_psk = true;
    }
}

static size_t vector_count(void)
{
    json_t *root = load_file();
    size_t n = json_array_size(json_object_get(root, "vectors"));
    json_decref(root);
    return n;
}

static void load_vector(size_t index, vector *v)
{
    json_t *root = load_file();
    json_t *o = json_array_get(json_object_get(root, "vectors"), index);
    cr_assert_not_null(o, "no vector %zu", index);

    memset(v, 0, sizeof(*v));
    const char *name = json_string_value(json_object_get(o, "protocol_name"));
    cr_assert_not_null(name, "vector %zu: no protocol_name", index);
    cr_assert_lt(strlen(name), sizeof(v->name));
    strcpy(v->name, name);
    load_side(o, "init", &v->init);
    load_side(o, "resp", &v->resp);
    size_t len = 0;
    cr_assert(get_hex(o, "handshake_hash", v->hash.b, sizeof(v->hash.b), &len));
    cr_assert_eq(len, sizeof(v->hash.b));

    json_t *msgs = json_object_get(o, "messages");
    cr_assert(json_is_array(msgs));
    v->n_msgs = json_array_size(msgs);
    cr_assert_leq(v->n_msgs, MAX_MESSAGES);
    for (size_t i = 0; i < v->n_msgs; i++) {
        json_t *m = json_array_get(msgs, i);
        cr_assert(get_hex(m, "payload", v->msg[i].payload, BUF, &v->msg[i].payload_len));
        cr_assert(get_hex(m, "ciphertext", v->msg[i].ct, BUF, &v->msg[i].ct_len));
    }
    json_decref(root);
}

static bool is_aesgcm(const char *name)
{
    return strstr(name, "_AESGCM_") != NULL;
}

static void init_crypto(void)
{
    cr_assert_eq(tern_crypto_init(), 0);
}

/* ---- the vector replay ---- */

static tern_noise *vector_side(const vector *v, const side *sd, bool initiator)
{
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = v->name;
    cfg.initiator = initiator;
    cfg.prologue = sd->prologue;
    cfg.prologue_len = sd->prologue_len;
    cfg.s = sd->has_s ? &sd->s : NULL;
    cfg.rs = sd->has_rs ? &sd->rs : NULL;
    cfg.psk = sd->has_psk ? &sd->psk : NULL;

    tern_noise *hs = NULL;
    int rc = tern_noise_new(&hs, &cfg, NULL);
    cr_assert_eq(rc, 0, "%s: tern_noise_new: %s", v->name, tern_strerror(rc));
    cr_assert_eq(tern_noise_set_ephemeral(hs, &sd->e), 0);
    return hs;
}

static void replay(const vector *v)
{
    tern_noise *ini = vector_side(v, &v->init, true);
    tern_noise *res = vector_side(v, &v->resp, false);
    uint8_t out[BUF], pt[BUF];
    size_t m = 0;

    /* The handshake: messages alternate, the initiator first. */
    for (; tern_noise_next(ini) != TERN_NOISE_SPLIT || tern_noise_next(res) != TERN_NOISE_SPLIT;
         m++) {
        cr_assert_lt(m, v->n_msgs, "%s: ran out of messages in the handshake", v->name);
        const message *msg = &v->msg[m];
        tern_noise *snd = m % 2 == 0 ? ini : res, *rcv = m % 2 == 0 ? res : ini;
        cr_assert_eq(tern_noise_next(snd), TERN_NOISE_WRITE, "%s: message %zu", v->name, m);
        cr_assert_eq(tern_noise_next(rcv), TERN_NOISE_READ, "%s: message %zu", v->name, m);
        cr_assert_eq((size_t)tern_noise_overhead(snd) + msg->payload_len, msg->ct_len);
        cr_assert_eq(tern_noise_overhead(rcv), tern_noise_overhead(snd));

        tern_ssize n =
            tern_noise_write_message(snd, msg->payload, msg->payload_len, out, sizeof(out));
        cr_assert_eq(n, (tern_ssize)msg->ct_len, "%s: message %zu: wrote %td, vector has %zu",
                     v->name, m, n, msg->ct_len);
        cr_assert_arr_eq(out, msg->ct, msg->ct_len, "%s: handshake message %zu differs", v->name,
                         m);
        n = tern_noise_read_message(rcv, out, (size_t)n, pt, sizeof(pt));
        cr_assert_eq(n, (tern_ssize)msg->payload_len, "%s: message %zu: read %td (%s)", v->name, m,
                     n, n < 0 ? tern_strerror((int)n) : "");
        cr_assert_arr_eq(pt, msg->payload, msg->payload_len, "%s: payload %zu differs", v->name, m);
    }

    tern_hash hi, hr;
    cr_assert_eq(tern_noise_get_handshake_hash(ini, &hi), 0);
    cr_assert_eq(tern_noise_get_handshake_hash(res, &hr), 0);
    cr_assert_arr_eq(hi.b, v->hash.b, sizeof(hi.b), "%s: initiator's handshake hash", v->name);
    cr_assert_arr_eq(hr.b, v->hash.b, sizeof(hr.b), "%s: responder's handshake hash", v->name);

    /* The peers learnt each other's static keys where the pattern sends them. */
    tern_public_key pk;
    if (v->init.has_s) {
        cr_assert_eq(tern_noise_get_remote_static(res, &pk), 0);
        cr_assert_arr_eq(pk.b, v->init.s.pub.b, sizeof(pk.b));
    }
    if (v->resp.has_s) {
        cr_assert_eq(tern_noise_get_remote_static(ini, &pk), 0);
        cr_assert_arr_eq(pk.b, v->resp.s.pub.b, sizeof(pk.b));
    }

    tern_cipher *i_send, *i_recv, *r_send, *r_recv;
    cr_assert_eq(tern_noise_split(ini, &i_send, &i_recv), 0);
    cr_assert_eq(tern_noise_split(res, &r_send, &r_recv), 0);
    cr_assert_eq(tern_noise_next(ini), TERN_NOISE_DONE);

    /* Transport messages: still alternating, each direction counting its
     * own nonces from 0. */
    uint64_t expect[2] = {0, 0};
    size_t transport = 0;
    for (; m < v->n_msgs; m++, transport++) {
        const message *msg = &v->msg[m];
        bool from_init = m % 2 == 0;
        tern_cipher *enc = from_init ? i_send : r_send, *dec = from_init ? r_recv : i_recv;
        uint64_t nonce = 99;
        tern_ssize n = tern_cipher_encrypt(enc, NULL, 0, msg->payload, msg->payload_len, out,
                                           sizeof(out), &nonce);
        cr_assert_eq(n, (tern_ssize)msg->ct_len, "%s: transport message %zu", v->name, m);
        cr_assert_arr_eq(out, msg->ct, msg->ct_len, "%s: transport message %zu differs", v->name,
                         m);
        cr_assert_eq(nonce, expect[from_init ? 0 : 1]++);
        n = tern_cipher_decrypt(dec, nonce, NULL, 0, out, (size_t)n, pt, sizeof(pt));
        cr_assert_eq(n, (tern_ssize)msg->payload_len, "%s: transport message %zu", v->name, m);
        cr_assert_arr_eq(pt, msg->payload, msg->payload_len);
    }
    cr_assert_gt(transport, 0, "%s: no transport messages in the vector", v->name);

    tern_cipher_del(i_send);
    tern_cipher_del(i_recv);
    tern_cipher_del(r_send);
    tern_cipher_del(r_recv);
    tern_noise_del(ini);
    tern_noise_del(res);
}

ParameterizedTestParameters(vectors, replay)
{
    static size_t index[MAX_VECTORS];
    size_t n = vector_count();
    if (n > MAX_VECTORS)
        n = MAX_VECTORS; /* vectors.file_is_complete fails then */
    for (size_t i = 0; i < n; i++)
        index[i] = i;
    return cr_make_param_array(size_t, index, n);
}

ParameterizedTest(size_t *index, vectors, replay)
{
    static vector v;
    init_crypto();
    load_vector(*index, &v);
    if (is_aesgcm(v.name) && !tern_crypto_aesgcm_available())
        cr_skip_test("%s: AES-GCM is not available on this CPU (no AES-NI/CLMUL); "
                     "vector skipped",
                     v.name);
    replay(&v);
}

Test(vectors, file_is_complete)
{
    json_t *root = load_file();
    const char *source = json_string_value(json_object_get(root, "source"));
    cr_assert(source && strstr(source, "cacophony"), "the file names its source");
    json_decref(root);

    static const char *const patterns[] = {"NN",     "NK",     "IK",     "XX",     "NNpsk0",
                                           "NNpsk2", "NKpsk0", "NKpsk2", "IKpsk1", "IKpsk2"};
    size_t n = vector_count();
    cr_assert_eq(n, 20, "%zu vectors", n);
    cr_assert_leq(n, MAX_VECTORS);
    bool seen[10][2] = {{false}};
    static vector v;
    for (size_t i = 0; i < n; i++) {
        load_vector(i, &v);
        for (size_t p = 0; p < 10; p++) {
            char name[128];
            for (int c = 0; c < 2; c++) {
                snprintf(name, sizeof(name), "Noise_%s_25519_%s_BLAKE2b", patterns[p],
                         c ? "AESGCM" : "ChaChaPoly");
                if (strcmp(name, v.name) == 0)
                    seen[p][c] = true;
            }
        }
    }
    for (size_t p = 0; p < 10; p++)
        for (int c = 0; c < 2; c++)
            cr_assert(seen[p][c], "no vector for %s with %s", patterns[p],
                      c ? "AESGCM" : "ChaChaPoly");
}

/* ---- handshakes with generated keys ---- */

/* Deterministic "randomness": BLAKE2b of a seed and a counter. */
typedef struct rng {
    uint64_t seed, counter;
} rng;

static void rng_fill(uint8_t *buf, size_t len, void *user_data)
{
    rng *r = user_data;
    uint8_t in[16];
    memcpy(in, &r->seed, 8);
    memcpy(in + 8, &r->counter, 8);
    r->counter++;
    cr_assert(len >= crypto_generichash_BYTES_MIN && len <= crypto_generichash_BYTES_MAX);
    crypto_generichash(buf, len, in, sizeof(in), NULL, 0);
}

static void rng_key(rng *r, uint8_t out[32])
{
    rng_fill(out, 32, r);
}

typedef struct keys {
    tern_keypair is, rs; /* the initiator's and the responder's static keys */
    tern_key psk;
} keys;

static void make_keys(keys *k, uint64_t seed)
{
    rng r = {seed, 1000};
    tern_key secret;
    rng_key(&r, secret.b);
    cr_assert_eq(tern_keypair_from_secret(&k->is, &secret), 0);
    rng_key(&r, secret.b);
    cr_assert_eq(tern_keypair_from_secret(&k->rs, &secret), 0);
    rng_key(&r, k->psk.b);
}

/* Which keys each side configures, from the pattern's letters: the first
 * names the initiator's static key (N none, X sent, I sent at once), the
 * second the responder's (N none, K known in advance, X sent). */
typedef struct roles {
    bool i_s, i_rs, r_s, psk;
} roles;

static roles roles_of(const char *proto)
{
    const char *p = proto + strlen("Noise_");
    roles ro;
    ro.i_s = p[0] == 'X' || p[0] == 'I';
    ro.i_rs = p[1] == 'K';
    ro.r_s = p[1] == 'K' || p[1] == 'X';
    ro.psk = strstr(proto, "psk") != NULL;
    return ro;
}

typedef struct pair {
    tern_noise *i, *r;
    rng ri, rr;
    keys k;
} pair;

static tern_noise *side_new(const char *proto, bool initiator, const tern_keypair *s,
                            const tern_public_key *rs, const tern_key *psk, rng *r,
                            const uint8_t *prologue, size_t prologue_len)
{
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = proto;
    cfg.initiator = initiator;
    cfg.s = s;
    cfg.rs = rs;
    cfg.psk = psk;
    cfg.random = rng_fill;
    cfg.random_user_data = r;
    cfg.prologue = prologue;
    cfg.prologue_len = prologue_len;
    tern_noise *hs = NULL;
    int rc = tern_noise_new(&hs, &cfg, NULL);
    cr_assert_eq(rc, 0, "%s: tern_noise_new(%s): %s", proto, initiator ? "initiator" : "responder",
                 tern_strerror(rc));
    return hs;
}

static const uint8_t prologue[] = "tern test";

/* Both sides of proto with keys from seed (the same seed gives the same
 * messages). */
static void pair_new(pair *p, const char *proto, uint64_t seed)
{
    roles ro = roles_of(proto);
    memset(p, 0, sizeof(*p));
    make_keys(&p->k, seed);
    p->ri = (rng){seed, 1};
    p->rr = (rng){seed, 2000000};
    p->i = side_new(proto, true, ro.i_s ? &p->k.is : NULL, ro.i_rs ? &p->k.rs.pub : NULL,
                    ro.psk ? &p->k.psk : NULL, &p->ri, prologue, sizeof(prologue));
    p->r = side_new(proto, false, ro.r_s ? &p->k.rs : NULL, NULL, ro.psk ? &p->k.psk : NULL, &p->rr,
                    prologue, sizeof(prologue));
}

static void pair_del(pair *p)
{
    tern_noise_del(p->i);
    tern_noise_del(p->r);
    p->i = p->r = NULL;
}

static tern_noise *sender(const pair *p, size_t m)
{
    return m % 2 == 0 ? p->i : p->r;
}

static tern_noise *receiver(const pair *p, size_t m)
{
    return m % 2 == 0 ? p->r : p->i;
}

static size_t payload_for(size_t m, uint8_t *out)
{
    return (size_t)snprintf((char *)out, 32, "payload %zu", m);
}

/* Message m written by its sender into out; returns its length. */
static size_t write_msg(const pair *p, size_t m, uint8_t *out, size_t cap)
{
    uint8_t pl[32];
    size_t pl_len = payload_for(m, pl);
    tern_ssize n = tern_noise_write_message(sender(p, m), pl, pl_len, out, cap);
    cr_assert_gt(n, 0, "write message %zu: %s", m, tern_strerror((int)n));
    return (size_t)n;
}

static void read_msg_ok(const pair *p, size_t m, const uint8_t *msg, size_t len)
{
    uint8_t pl[32], got[BUF];
    size_t pl_len = payload_for(m, pl);
    tern_ssize n = tern_noise_read_message(receiver(p, m), msg, len, got, sizeof(got));
    cr_assert_eq(n, (tern_ssize)pl_len, "read message %zu: %td (%s)", m, n,
                 n < 0 ? tern_strerror((int)n) : "");
    cr_assert_arr_eq(got, pl, pl_len);
}

/* Delivers messages [from, to) intact. */
static void advance(const pair *p, size_t from, size_t to)
{
    uint8_t msg[BUF];
    for (size_t m = from; m < to; m++)
        read_msg_ok(p, m, msg, write_msg(p, m, msg, sizeof(msg)));
}

static size_t n_messages(const char *proto)
{
    return strncmp(proto, "Noise_XX", 8) == 0 ? 3 : 2;
}

/* Both sides split; the ciphers carry messages both ways. */
static void check_transport(const pair *p)
{
    tern_hash hi, hr;
    cr_assert_eq(tern_noise_next(p->i), TERN_NOISE_SPLIT);
    cr_assert_eq(tern_noise_next(p->r), TERN_NOISE_SPLIT);
    cr_assert_eq(tern_noise_get_handshake_hash(p->i, &hi), 0);
    cr_assert_eq(tern_noise_get_handshake_hash(p->r, &hr), 0);
    cr_assert_arr_eq(hi.b, hr.b, sizeof(hi.b));

    tern_cipher *is, *ir, *rs, *rr;
    cr_assert_eq(tern_noise_split(p->i, &is, &ir), 0);
    cr_assert_eq(tern_noise_split(p->r, &rs, &rr), 0);
    for (int k = 0; k < 6; k++) {
        uint8_t pt[300], ct[400], back[300];
        uint8_t ad[5] = {1, 2, 3, 4, (uint8_t)k};
        memset(pt, 'a' + k, sizeof(pt));
        tern_cipher *enc = k % 2 ? rs : is, *dec = k % 2 ? ir : rr;
        uint64_t nonce;
        size_t len = (size_t)(k * 50);
        tern_ssize n = tern_cipher_encrypt(enc, ad, sizeof(ad), pt, len, ct, sizeof(ct), &nonce);
        cr_assert_eq(n, (tern_ssize)(len + TERN_CRYPTO_TAG_BYTES));
        cr_assert_eq(nonce, (uint64_t)(k / 2));
        n = tern_cipher_decrypt(dec, nonce, ad, sizeof(ad), ct, (size_t)n, back, sizeof(back));
        cr_assert_eq(n, (tern_ssize)len);
        cr_assert_arr_eq(back, pt, len);
    }
    tern_cipher_del(is);
    tern_cipher_del(ir);
    tern_cipher_del(rs);
    tern_cipher_del(rr);
}

static const char *const all_patterns[] = {"NN",     "NK",     "IK",     "XX",     "NNpsk0",
                                           "NNpsk2", "NKpsk0", "NKpsk2", "IKpsk1", "IKpsk2",
                                           "XXpsk3", "NKpsk1", "IKpsk0", "NNpsk1", "XXpsk0"};
#define N_PATTERNS (sizeof(all_patterns) / sizeof(all_patterns[0]))

static void proto_name(char *out, size_t cap, const char *pattern, bool aes)
{
    snprintf(out, cap, "Noise_%s_25519_%s_BLAKE2b", pattern, aes ? "AESGCM" : "ChaChaPoly");
}

Test(handshake, every_pattern_and_cipher_completes)
{
    init_crypto();
    for (int aes = 0; aes < 2; aes++) {
        if (aes && !tern_crypto_aesgcm_available()) {
            cr_log_warn("AES-GCM not available on this CPU; AESGCM handshakes not run");
            continue;
        }
        for (size_t i = 0; i < N_PATTERNS; i++) {
            char proto[80];
            proto_name(proto, sizeof(proto), all_patterns[i], aes);
            pair p;
            pair_new(&p, proto, 7 + i);
            advance(&p, 0, n_messages(proto));
            check_transport(&p);
            pair_del(&p);
        }
    }
}

Test(handshake, ik_responder_sees_the_client_key_before_answering)
{
    init_crypto();
    pair p;
    pair_new(&p, "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b", 3);
    tern_public_key pk;
    cr_assert_eq(tern_noise_get_remote_static(p.r, &pk), TERN_ERR_STATE);
    advance(&p, 0, 1);
    cr_assert_eq(tern_noise_get_remote_static(p.r, &pk), 0);
    cr_assert_arr_eq(pk.b, p.k.is.pub.b, sizeof(pk.b));
    cr_assert_eq(tern_noise_next(p.r), TERN_NOISE_WRITE);
    advance(&p, 1, 2);
    check_transport(&p);
    /* The key stays readable after the split; the hash too. */
    cr_assert_eq(tern_noise_get_remote_static(p.r, &pk), 0);
    cr_assert_arr_eq(pk.b, p.k.is.pub.b, sizeof(pk.b));
    tern_hash h;
    cr_assert_eq(tern_noise_get_handshake_hash(p.r, &h), 0);
    pair_del(&p);
}

Test(handshake, fresh_ephemerals_differ_between_handshakes)
{
    init_crypto();
    tern_keypair rs;
    cr_assert_eq(tern_keypair_generate(&rs), 0);
    uint8_t m1[BUF], m2[BUF];
    tern_ssize n1 = 0, n2 = 0;
    for (int k = 0; k < 2; k++) {
        tern_noise_config cfg;
        tern_noise_config_default(&cfg);
        cfg.protocol = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
        cfg.initiator = true;
        cfg.rs = &rs.pub;
        tern_noise *hs;
        cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), 0);
        tern_ssize n = tern_noise_write_message(hs, NULL, 0, k ? m2 : m1, BUF);
        cr_assert_eq(n, 48);
        *(k ? &n2 : &n1) = n;
        tern_noise_del(hs);
    }
    cr_assert_eq(n1, n2);
    cr_assert(memcmp(m1, m2, TERN_CRYPTO_PUBLIC_BYTES) != 0, "two handshakes, one ephemeral");
}

/* ---- tampering ---- */

/* Messages with no key yet carry their payload in clear and cannot be
 * authenticated on their own: the first message of NN and XX. (With a psk
 * modifier, "e" already mixes a key, so every message has a tag.) */
static bool in_clear(const char *proto, size_t m)
{
    return m == 0 && (strncmp(proto, "Noise_NN_", 9) == 0 || strncmp(proto, "Noise_XX_", 9) == 0);
}

static void check_wiped(const uint8_t *buf, size_t len, const char *what)
{
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(buf[i], 0, "%s: output byte %zu not wiped", what, i);
}

static void flip_every_bit(const char *proto)
{
    size_t nm = n_messages(proto);
    for (size_t m = 0; m < nm; m++) {
        uint8_t msg[BUF], bad[BUF], out[BUF];
        pair p;
        pair_new(&p, proto, 11);
        advance(&p, 0, m);
        size_t len = write_msg(&p, m, msg, sizeof(msg));
        size_t plen = len - (size_t)tern_noise_overhead(receiver(&p, m));

        if (!in_clear(proto, m)) {
            /* Every flip fails to authenticate, wipes the output and leaves
             * the receiver as it was, so the genuine message still works. */
            for (size_t bit = 0; bit < len * 8; bit++) {
                memcpy(bad, msg, len);
                bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                memset(out, 0xa5, sizeof(out));
                tern_ssize n = tern_noise_read_message(receiver(&p, m), bad, len, out, sizeof(out));
                cr_assert_eq(n, TERN_ERR_DECRYPT, "%s message %zu bit %zu: %td", proto, m, bit, n);
                check_wiped(out, plen, proto);
                cr_assert_eq(out[plen], 0xa5, "%s: wiped past the payload", proto);
                cr_assert_eq(tern_noise_next(receiver(&p, m)), TERN_NOISE_READ);
            }
            read_msg_ok(&p, m, msg, len);
            advance(&p, m + 1, nm);
            check_transport(&p);
            pair_del(&p);
            continue;
        }
        pair_del(&p);

        /* A message in clear is accepted with the flip, and the handshake
         * fails at the next message, which binds everything before it. */
        for (size_t bit = 0; bit < len * 8; bit++) {
            pair_new(&p, proto, 11);
            advance(&p, 0, m);
            cr_assert_eq(write_msg(&p, m, msg, sizeof(msg)), len);
            msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            tern_ssize n = tern_noise_read_message(receiver(&p, m), msg, len, out, sizeof(out));
            cr_assert_eq(n, (tern_ssize)plen, "%s message %zu bit %zu: %td", proto, m, bit, n);
            size_t len2 = write_msg(&p, m + 1, msg, sizeof(msg));
            memset(out, 0xa5, sizeof(out));
            n = tern_noise_read_message(receiver(&p, m + 1), msg, len2, out, sizeof(out));
            cr_assert_eq(n, TERN_ERR_DECRYPT, "%s message %zu bit %zu, next message: %td", proto, m,
                         bit, n);
            check_wiped(out, len2 - (size_t)tern_noise_overhead(receiver(&p, m + 1)), proto);
            pair_del(&p);
        }
    }
}

Test(tamper, a_flipped_bit_in_any_handshake_message_fails)
{
    init_crypto();
    for (size_t i = 0; i < 10; i++) {
        char proto[80];
        proto_name(proto, sizeof(proto), all_patterns[i], false);
        flip_every_bit(proto);
    }
    if (tern_crypto_aesgcm_available()) {
        flip_every_bit("Noise_NK_25519_AESGCM_BLAKE2b");
        flip_every_bit("Noise_IKpsk2_25519_AESGCM_BLAKE2b");
    }
}

static void truncate_and_extend(const char *proto)
{
    size_t nm = n_messages(proto);
    pair p;
    pair_new(&p, proto, 5);
    for (size_t m = 0; m < nm; m++) {
        uint8_t msg[BUF + 1], out[BUF];
        size_t len = write_msg(&p, m, msg, sizeof(msg) - 1);
        tern_noise *rcv = receiver(&p, m);
        size_t overhead = (size_t)tern_noise_overhead(rcv);
        for (size_t cut = 0; cut < len; cut++) {
            if (cut >= overhead && in_clear(proto, m))
                break; /* a shorter payload in clear is still a message */
            tern_ssize n = tern_noise_read_message(rcv, msg, cut, out, sizeof(out));
            cr_assert_eq(n, cut < overhead ? TERN_ERR_MALFORMED : TERN_ERR_DECRYPT,
                         "%s message %zu cut to %zu: %td", proto, m, cut, n);
            cr_assert_eq(tern_noise_next(rcv), TERN_NOISE_READ);
        }
        if (!in_clear(proto, m)) {
            msg[len] = 0;
            tern_ssize n = tern_noise_read_message(rcv, msg, len + 1, out, sizeof(out));
            cr_assert_eq(n, TERN_ERR_DECRYPT, "%s message %zu extended: %td", proto, m, n);
        }
        read_msg_ok(&p, m, msg, len);
    }
    check_transport(&p);
    pair_del(&p);
}

Test(tamper, truncated_or_extended_messages_fail_cleanly)
{
    init_crypto();
    for (size_t i = 0; i < N_PATTERNS; i++) {
        char proto[80];
        proto_name(proto, sizeof(proto), all_patterns[i], false);
        truncate_and_extend(proto);
    }
}

Test(tamper, no_payload_buffer_for_an_empty_payload)
{
    init_crypto();
    pair p;
    pair_new(&p, "Noise_NK_25519_ChaChaPoly_BLAKE2b", 2);
    uint8_t msg[BUF];
    tern_ssize n = tern_noise_write_message(p.i, NULL, 0, msg, sizeof(msg));
    cr_assert_eq(n, 48);
    msg[40] ^= 1;
    cr_assert_eq(tern_noise_read_message(p.r, msg, 48, NULL, 0), TERN_ERR_DECRYPT);
    msg[40] ^= 1;
    cr_assert_eq(tern_noise_read_message(p.r, msg, 48, NULL, 0), 0);
    pair_del(&p);
}

/* ---- wrong keys ---- */

/* The responder uses `other` for the field named by what; the handshake
 * must fail with TERN_ERR_DECRYPT at message fail_at. */
static void expect_failure_at(pair *p, size_t fail_at)
{
    advance(p, 0, fail_at);
    uint8_t msg[BUF], out[BUF];
    size_t len = write_msg(p, fail_at, msg, sizeof(msg));
    memset(out, 0xa5, sizeof(out));
    tern_ssize n = tern_noise_read_message(receiver(p, fail_at), msg, len, out, sizeof(out));
    cr_assert_eq(n, TERN_ERR_DECRYPT, "message %zu: %td", fail_at, n);
    check_wiped(out, len - (size_t)tern_noise_overhead(receiver(p, fail_at)), "wrong key");
}

static void wrong_psk(const char *proto, size_t fail_at)
{
    pair p;
    pair_new(&p, proto, 21);
    roles ro = roles_of(proto);
    tern_key other = p.k.psk;
    other.b[0] ^= 1;
    tern_noise_del(p.r);
    p.r = side_new(proto, false, ro.r_s ? &p.k.rs : NULL, NULL, &other, &p.rr, prologue,
                   sizeof(prologue));
    expect_failure_at(&p, fail_at);
    pair_del(&p);
}

Test(keys, wrong_psk_fails)
{
    init_crypto();
    wrong_psk("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b", 0);
    wrong_psk("Noise_NNpsk2_25519_ChaChaPoly_BLAKE2b", 1);
    wrong_psk("Noise_NKpsk0_25519_ChaChaPoly_BLAKE2b", 0);
    wrong_psk("Noise_NKpsk2_25519_ChaChaPoly_BLAKE2b", 1);
    wrong_psk("Noise_IKpsk1_25519_ChaChaPoly_BLAKE2b", 0);
    wrong_psk("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b", 1);
    wrong_psk("Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b", 2);
}

/* The initiator believes in a server key that the responder does not hold. */
static void wrong_server_key(const char *proto)
{
    pair p;
    pair_new(&p, proto, 31);
    roles ro = roles_of(proto);
    tern_keypair impostor;
    cr_assert_eq(tern_keypair_generate(&impostor), 0);
    tern_noise_del(p.r);
    p.r = side_new(proto, false, &impostor, NULL, ro.psk ? &p.k.psk : NULL, &p.rr, prologue,
                   sizeof(prologue));
    expect_failure_at(&p, 0);
    pair_del(&p);
}

Test(keys, wrong_responder_static_key_fails)
{
    init_crypto();
    wrong_server_key("Noise_NK_25519_ChaChaPoly_BLAKE2b");
    wrong_server_key("Noise_IK_25519_ChaChaPoly_BLAKE2b");
    wrong_server_key("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b");
    if (tern_crypto_aesgcm_available())
        wrong_server_key("Noise_NK_25519_AESGCM_BLAKE2b");
}

Test(keys, different_prologue_or_cipher_fails)
{
    init_crypto();
    const char *proto = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
    pair p;
    pair_new(&p, proto, 41);
    tern_noise_del(p.r);
    p.r = side_new(proto, false, &p.k.rs, NULL, NULL, &p.rr, (const uint8_t *)"other", 5);
    expect_failure_at(&p, 0);
    pair_del(&p);

    /* NN's first message is in clear; the second one catches it. */
    proto = "Noise_NN_25519_ChaChaPoly_BLAKE2b";
    pair_new(&p, proto, 41);
    tern_noise_del(p.r);
    p.r = side_new(proto, false, NULL, NULL, NULL, &p.rr, NULL, 0);
    expect_failure_at(&p, 1);
    pair_del(&p);
}

/* Encodings of low-order X25519 points (u = 0 and u = 1). */
static const uint8_t zero_point[32] = {0};
static const uint8_t one_point[32] = {1};

Test(keys, all_zero_or_low_order_public_keys_are_rejected)
{
    init_crypto();
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
    cfg.initiator = true;
    tern_public_key zero;
    memcpy(zero.b, zero_point, 32);
    cfg.rs = &zero;
    tern_noise *hs = (tern_noise *)1;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), TERN_ERR_BADKEY);
    cr_assert_null(hs);

    /* A server key of low order: the first DH gives zeros; nothing written. */
    tern_public_key one;
    memcpy(one.b, one_point, 32);
    cfg.rs = &one;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), 0);
    uint8_t msg[BUF], out[BUF];
    memset(msg, 0xa5, sizeof(msg));
    cr_assert_eq(tern_noise_write_message(hs, NULL, 0, msg, sizeof(msg)), TERN_ERR_BADKEY);
    check_wiped(msg, 48, "failed write");
    cr_assert_eq(tern_noise_next(hs), TERN_NOISE_WRITE);
    tern_noise_del(hs);

    /* Ephemeral keys in messages: zero is refused as it is read; a low-order
     * one fails at the first DH with it, whoever computes it. */
    const uint8_t *const bad[] = {zero_point, one_point};
    for (int b = 0; b < 2; b++) {
        pair p;
        pair_new(&p, "Noise_NK_25519_ChaChaPoly_BLAKE2b", 51);
        size_t len = write_msg(&p, 0, msg, sizeof(msg));
        memcpy(msg, bad[b], 32);
        cr_assert_eq(tern_noise_read_message(p.r, msg, len, out, sizeof(out)), TERN_ERR_BADKEY);
        pair_del(&p);

        pair_new(&p, "Noise_NN_25519_ChaChaPoly_BLAKE2b", 51);
        len = write_msg(&p, 0, msg, sizeof(msg));
        memcpy(msg, bad[b], 32);
        tern_ssize n = tern_noise_read_message(p.r, msg, len, out, sizeof(out));
        if (b == 0) {
            cr_assert_eq(n, TERN_ERR_BADKEY);
        } else {
            cr_assert_geq(n, 0);
            cr_assert_eq(tern_noise_write_message(p.r, NULL, 0, msg, sizeof(msg)), TERN_ERR_BADKEY);
            cr_assert_eq(tern_noise_next(p.r), TERN_NOISE_WRITE);
        }
        pair_del(&p);
    }

    tern_key out_key;
    tern_key sk = {{7}};
    cr_assert_eq(tern_noise_dh(&sk, &zero, &out_key), TERN_ERR_BADKEY);
    cr_assert_eq(tern_noise_dh(&sk, &one, &out_key), TERN_ERR_BADKEY);
}

/* ---- configuration ---- */

static int try_new(const char *proto, bool initiator, const tern_keypair *s,
                   const tern_public_key *rs, const tern_key *psk)
{
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = proto;
    cfg.initiator = initiator;
    cfg.s = s;
    cfg.rs = rs;
    cfg.psk = psk;
    tern_noise *hs = (tern_noise *)1;
    int rc = tern_noise_new(&hs, &cfg, NULL);
    if (rc < 0)
        cr_assert_null(hs);
    tern_noise_del(hs);
    return rc;
}

Test(config, keys_must_match_the_pattern)
{
    init_crypto();
    keys k;
    make_keys(&k, 61);
    const tern_keypair *s = &k.is;
    const tern_public_key *rs = &k.rs.pub;
    const tern_key *psk = &k.psk;
    const char *nk = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
    const char *ik = "Noise_IK_25519_ChaChaPoly_BLAKE2b";
    const char *xx = "Noise_XX_25519_ChaChaPoly_BLAKE2b";
    const char *nnpsk0 = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b";

    cr_assert_eq(try_new(nk, true, NULL, rs, NULL), 0);
    cr_assert_eq(try_new(nk, true, NULL, NULL, NULL), TERN_ERR_INVAL); /* no server key */
    cr_assert_eq(try_new(nk, true, s, rs, NULL), TERN_ERR_INVAL);      /* s unused */
    cr_assert_eq(try_new(nk, false, s, NULL, NULL), 0);
    cr_assert_eq(try_new(nk, false, NULL, NULL, NULL), TERN_ERR_INVAL);
    cr_assert_eq(try_new(nk, false, s, rs, NULL), TERN_ERR_INVAL); /* rs unused */
    cr_assert_eq(try_new(ik, true, s, rs, NULL), 0);
    cr_assert_eq(try_new(ik, true, NULL, rs, NULL), TERN_ERR_INVAL);
    cr_assert_eq(try_new(ik, false, s, NULL, NULL), 0);
    cr_assert_eq(try_new(xx, true, s, NULL, NULL), 0);
    cr_assert_eq(try_new(xx, true, s, rs, NULL), TERN_ERR_INVAL); /* XX pins no key */
    cr_assert_eq(try_new(nnpsk0, true, NULL, NULL, psk), 0);
    cr_assert_eq(try_new(nnpsk0, true, NULL, NULL, NULL), TERN_ERR_INVAL);
    cr_assert_eq(try_new(nk, true, NULL, rs, psk), TERN_ERR_INVAL); /* psk unused */

    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    tern_noise *hs = (tern_noise *)1;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), TERN_ERR_INVAL); /* no protocol */
    cr_assert_null(hs);
    cfg.protocol = "Noise_NN_25519_ChaChaPoly_BLAKE2b";
    cfg.prologue_len = 3;
    cr_assert_eq(tern_noise_new(&hs, &cfg, NULL), TERN_ERR_INVAL); /* NULL prologue */
    cr_assert_eq(tern_noise_new(NULL, &cfg, NULL), TERN_ERR_INVAL);
    cr_assert_eq(tern_noise_new(&hs, NULL, NULL), TERN_ERR_INVAL);
}

Test(config, unsupported_protocol_names)
{
    init_crypto();
    static const char *const names[] = {
        "",
        "Noise",
        "Noise_NN",
        "Noise_NN_25519_ChaChaPoly",
        "Noise_NN_448_ChaChaPoly_BLAKE2b",
        "Noise_NN_25519_ChaChaPoly_SHA256",
        "Noise_NN_25519_ChaChaPoly_BLAKE2s",
        "Noise_NN_25519_AES256_BLAKE2b",
        "Noise_KK_25519_ChaChaPoly_BLAKE2b",
        "Noise_N_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNN_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk3_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk4_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk0+psk2_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk00_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNfallback_25519_ChaChaPoly_BLAKE2b",
        "Noise_nn_25519_ChaChaPoly_BLAKE2b",
        "Noise_NN_25519_ChaChaPoly_BLAKE2b_",
        "Noise_NN_25519_ChaChaPoly_BLAKE2b_extra",
        "noise_NN_25519_ChaChaPoly_BLAKE2b",
        "Noise__25519_ChaChaPoly_BLAKE2b",
        "Noise_NN_25519_ChaChaPoly_BLAKE2b+this_name_is_far_too_long_to_be_accepted_at_all",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        cr_assert_eq(try_new(names[i], true, NULL, NULL, NULL), TERN_ERR_UNSUPPORTED, "\"%s\"",
                     names[i]);
    if (!tern_crypto_aesgcm_available())
        cr_assert_eq(try_new("Noise_NN_25519_AESGCM_BLAKE2b", true, NULL, NULL, NULL),
                     TERN_ERR_UNSUPPORTED);
}

/* ---- calls out of order ---- */

Test(order, calls_out_of_order_say_state)
{
    init_crypto();
    pair p;
    pair_new(&p, "Noise_NK_25519_ChaChaPoly_BLAKE2b", 71);
    uint8_t msg[BUF], out[BUF];
    tern_cipher *a = (tern_cipher *)1, *b = (tern_cipher *)1;
    tern_hash h;

    cr_assert_eq(tern_noise_next(p.i), TERN_NOISE_WRITE);
    cr_assert_eq(tern_noise_next(p.r), TERN_NOISE_READ);
    /* The responder speaks second; the initiator reads second. */
    cr_assert_eq(tern_noise_write_message(p.r, NULL, 0, msg, sizeof(msg)), TERN_ERR_STATE);
    cr_assert_eq(tern_noise_read_message(p.i, msg, 48, out, sizeof(out)), TERN_ERR_STATE);
    cr_assert_eq(tern_noise_split(p.i, &a, &b), TERN_ERR_STATE);
    cr_assert_null(a);
    cr_assert_null(b);
    cr_assert_eq(tern_noise_get_handshake_hash(p.i, &h), TERN_ERR_STATE);

    size_t len = write_msg(&p, 0, msg, sizeof(msg));
    /* Writing twice in a row. */
    cr_assert_eq(tern_noise_write_message(p.i, NULL, 0, msg + 100, 100), TERN_ERR_STATE);
    read_msg_ok(&p, 0, msg, len);
    /* Reading the same message twice. */
    cr_assert_eq(tern_noise_read_message(p.r, msg, len, out, sizeof(out)), TERN_ERR_STATE);
    /* The ephemeral is fixed once written. */
    tern_key e = {{1}};
    cr_assert_eq(tern_noise_set_ephemeral(p.i, &e), TERN_ERR_STATE);
    advance(&p, 1, 2);

    cr_assert_eq(tern_noise_next(p.i), TERN_NOISE_SPLIT);
    cr_assert_eq(tern_noise_overhead(p.i), TERN_ERR_STATE);
    cr_assert_eq(tern_noise_write_message(p.i, NULL, 0, msg, sizeof(msg)), TERN_ERR_STATE);
    cr_assert_eq(tern_noise_read_message(p.i, msg, len, out, sizeof(out)), TERN_ERR_STATE);
    cr_assert_eq(tern_noise_split(p.i, &a, &b), 0);
    cr_assert_eq(tern_noise_next(p.i), TERN_NOISE_DONE);
    tern_cipher *c = NULL, *d = NULL;
    cr_assert_eq(tern_noise_split(p.i, &c, &d), TERN_ERR_STATE);
    cr_assert_null(c);
    cr_assert_eq(tern_noise_get_handshake_hash(p.i, &h), 0);
    cr_assert_eq(tern_noise_write_message(p.i, NULL, 0, msg, sizeof(msg)), TERN_ERR_STATE);
    cr_assert_eq(tern_noise_set_ephemeral(p.i, &e), TERN_ERR_STATE);

    /* NN has no static keys to report. */
    tern_public_key pk;
    pair q;
    pair_new(&q, "Noise_NN_25519_ChaChaPoly_BLAKE2b", 72);
    advance(&q, 0, 2);
    cr_assert_eq(tern_noise_get_remote_static(q.i, &pk), TERN_ERR_STATE);
    pair_del(&q);

    tern_cipher_del(a);
    tern_cipher_del(b);
    pair_del(&p);
    tern_noise_del(NULL);
    tern_cipher_del(NULL);
    cr_assert_eq(tern_noise_overhead(NULL), TERN_ERR_INVAL);
}

/* ---- bounds ---- */

Test(bounds, message_size_limits)
{
    init_crypto();
    static uint8_t payload[70000], msg[70000], out[70000];
    memset(payload, 'x', sizeof(payload));
    pair p;
    pair_new(&p, "Noise_NN_25519_ChaChaPoly_BLAKE2b", 81);

    /* NN's first message: e (32) and a payload in clear. */
    cr_assert_eq(tern_noise_overhead(p.i), 32);
    size_t max = TERN_NOISE_MSG_MAX - 32;
    cr_assert_eq(tern_noise_write_message(p.i, payload, max + 1, msg, sizeof(msg)),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_noise_write_message(p.i, payload, max, msg, TERN_NOISE_MSG_MAX - 1),
                 TERN_ERR_NOBUFS);
    cr_assert_eq(tern_noise_write_message(p.i, NULL, 5, msg, sizeof(msg)), TERN_ERR_INVAL);
    cr_assert_eq(tern_noise_write_message(p.i, payload, 0, NULL, 100), TERN_ERR_INVAL);
    cr_assert_eq(tern_noise_next(p.i), TERN_NOISE_WRITE);
    tern_ssize n = tern_noise_write_message(p.i, payload, max, msg, sizeof(msg));
    cr_assert_eq(n, (tern_ssize)TERN_NOISE_MSG_MAX);

    cr_assert_eq(tern_noise_read_message(p.r, msg, TERN_NOISE_MSG_MAX + 1, out, sizeof(out)),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(tern_noise_read_message(p.r, msg, TERN_NOISE_MSG_MAX, out, max - 1),
                 TERN_ERR_NOBUFS);
    cr_assert_eq(tern_noise_read_message(p.r, NULL, 10, out, sizeof(out)), TERN_ERR_INVAL);
    n = tern_noise_read_message(p.r, msg, TERN_NOISE_MSG_MAX, out, max);
    cr_assert_eq(n, (tern_ssize)max);
    cr_assert_arr_eq(out, payload, max);

    /* The second: e (32) and an encrypted payload (+16). */
    cr_assert_eq(tern_noise_overhead(p.r), 48);
    max = TERN_NOISE_MSG_MAX - 48;
    cr_assert_eq(tern_noise_write_message(p.r, payload, max + 1, msg, sizeof(msg)),
                 TERN_ERR_MSGSIZE);
    n = tern_noise_write_message(p.r, payload, max, msg, sizeof(msg));
    cr_assert_eq(n, (tern_ssize)TERN_NOISE_MSG_MAX);
    n = tern_noise_read_message(p.i, msg, TERN_NOISE_MSG_MAX, out, sizeof(out));
    cr_assert_eq(n, (tern_ssize)max);
    cr_assert_arr_eq(out, payload, max);

    tern_cipher *is, *ir, *rs, *rr;
    cr_assert_eq(tern_noise_split(p.i, &is, &ir), 0);
    cr_assert_eq(tern_noise_split(p.r, &rs, &rr), 0);
    uint64_t nonce;
    max = TERN_NOISE_MSG_MAX - TERN_CRYPTO_TAG_BYTES;
    cr_assert_eq(tern_cipher_encrypt(is, NULL, 0, payload, max + 1, msg, sizeof(msg), &nonce),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(
        tern_cipher_encrypt(is, NULL, 0, payload, max, msg, TERN_NOISE_MSG_MAX - 1, &nonce),
        TERN_ERR_NOBUFS);
    n = tern_cipher_encrypt(is, NULL, 0, payload, max, msg, sizeof(msg), &nonce);
    cr_assert_eq(n, (tern_ssize)TERN_NOISE_MSG_MAX);
    cr_assert_eq(nonce, 0); /* the failed calls used no nonce */
    cr_assert_eq(tern_cipher_decrypt(rr, 0, NULL, 0, msg, TERN_NOISE_MSG_MAX + 1, out, sizeof(out)),
                 TERN_ERR_MSGSIZE);
    cr_assert_eq(
        tern_cipher_decrypt(rr, 0, NULL, 0, msg, TERN_CRYPTO_TAG_BYTES - 1, out, sizeof(out)),
        TERN_ERR_MALFORMED);
    cr_assert_eq(tern_cipher_decrypt(rr, 0, NULL, 0, msg, TERN_NOISE_MSG_MAX, out, max - 1),
                 TERN_ERR_NOBUFS);
    cr_assert_eq(
        tern_cipher_decrypt(rr, UINT64_MAX, NULL, 0, msg, TERN_NOISE_MSG_MAX, out, sizeof(out)),
        TERN_ERR_RANGE);
    n = tern_cipher_decrypt(rr, 0, NULL, 0, msg, TERN_NOISE_MSG_MAX, out, sizeof(out));
    cr_assert_eq(n, (tern_ssize)max);
    cr_assert_arr_eq(out, payload, max);

    tern_cipher_del(is);
    tern_cipher_del(ir);
    tern_cipher_del(rs);
    tern_cipher_del(rr);
    pair_del(&p);
}

/* ---- transport ciphers ---- */

static void cipher_pair(bool aes, tern_cipher **send, tern_cipher **recv, pair *p)
{
    char proto[80];
    proto_name(proto, sizeof(proto), "NN", aes);
    pair_new(p, proto, 91);
    advance(p, 0, 2);
    tern_cipher *unused_a, *unused_b;
    cr_assert_eq(tern_noise_split(p->i, send, &unused_a), 0);
    cr_assert_eq(tern_noise_split(p->r, &unused_b, recv), 0);
    tern_cipher_del(unused_a);
    tern_cipher_del(unused_b);
}

Test(cipher, tampering_wipes_and_in_place_works)
{
    init_crypto();
    for (int aes = 0; aes < 2; aes++) {
        if (aes && !tern_crypto_aesgcm_available())
            continue;
        tern_cipher *s, *r;
        pair p;
        cipher_pair(aes, &s, &r, &p);
        uint8_t buf[1200 + TERN_CRYPTO_TAG_BYTES], copy[sizeof(buf)], out[1200];
        uint8_t ad[13] = "header bytes";
        uint64_t nonce;

        /* In place, both ways. */
        for (size_t i = 0; i < 1200; i++)
            buf[i] = (uint8_t)i;
        tern_ssize n = tern_cipher_encrypt(s, ad, sizeof(ad), buf, 1200, buf, sizeof(buf), &nonce);
        cr_assert_eq(n, (tern_ssize)sizeof(buf));
        memcpy(copy, buf, sizeof(buf));
        n = tern_cipher_decrypt(r, nonce, ad, sizeof(ad), buf, sizeof(buf), buf, sizeof(buf));
        cr_assert_eq(n, 1200);
        for (size_t i = 0; i < 1200; i++)
            cr_assert_eq(buf[i], (uint8_t)i);

        /* Each tampering fails and wipes the plaintext. */
        for (int k = 0; k < 4; k++) {
            memcpy(buf, copy, sizeof(buf));
            uint64_t nn = nonce;
            uint8_t ad2[13];
            memcpy(ad2, ad, sizeof(ad));
            if (k == 0)
                buf[7] ^= 0x10; /* ciphertext */
            else if (k == 1)
                buf[sizeof(buf) - 1] ^= 1; /* tag */
            else if (k == 2)
                ad2[0] ^= 1; /* associated data */
            else
                nn = nonce + 1; /* another packet's nonce */
            memset(out, 0xa5, sizeof(out));
            n = tern_cipher_decrypt(r, nn, ad2, sizeof(ad2), buf, sizeof(buf), out, sizeof(out));
            cr_assert_eq(n, TERN_ERR_DECRYPT, "aes=%d case %d", aes, k);
            check_wiped(out, sizeof(out), "cipher");
        }
        /* The cipher keeps no replay record: the same packet opens again
         * (the replay window is the caller's). */
        n = tern_cipher_decrypt(r, nonce, ad, sizeof(ad), copy, sizeof(copy), out, sizeof(out));
        cr_assert_eq(n, 1200);

        /* An empty message is just a tag. */
        n = tern_cipher_encrypt(s, NULL, 0, NULL, 0, buf, TERN_CRYPTO_TAG_BYTES, &nonce);
        cr_assert_eq(n, (tern_ssize)TERN_CRYPTO_TAG_BYTES);
        cr_assert_eq(nonce, 1);
        cr_assert_eq(tern_cipher_decrypt(r, nonce, NULL, 0, buf, TERN_CRYPTO_TAG_BYTES, NULL, 0),
                     0);

        tern_cipher_del(s);
        tern_cipher_del(r);
        pair_del(&p);
    }
}

Test(cipher, nonces_run_out_at_two_to_the_64_minus_one)
{
    init_crypto();
    tern_cipher *s, *r;
    pair p;
    cipher_pair(false, &s, &r, &p);
    uint8_t buf[64];
    uint64_t nonce;
    s->cs.n = UINT64_MAX - 1;
    cr_assert_eq(tern_cipher_encrypt(s, NULL, 0, (const uint8_t *)"x", 1, buf, sizeof(buf), &nonce),
                 17);
    cr_assert_eq(nonce, UINT64_MAX - 1);
    cr_assert_eq(tern_cipher_decrypt(r, nonce, NULL, 0, buf, 17, buf + 32, 32), 1);
    cr_assert_eq(tern_cipher_encrypt(s, NULL, 0, (const uint8_t *)"x", 1, buf, sizeof(buf), &nonce),
                 TERN_ERR_RANGE);
    tern_cipher_del(s);
    tern_cipher_del(r);
    pair_del(&p);
}

/* ---- the symmetric layer ---- */

static void unhex(const char *hex, uint8_t *out, size_t len)
{
    cr_assert_eq(hex_decode("kat", hex, out, len), len);
}

/* Known answers from an independent HMAC (Python's hmac module with
 * hashlib.blake2b, whose block size is 128). */
Test(symmetric, hmac_blake2b_known_answers)
{
    init_crypto();
    uint8_t key[200], want[64], got[64];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)i;
    const char *fox = "The quick brown fox jumps over the lazy dog";

    unhex("92294f92c0dfb9b00ec9ae8bd94d7e7d8a036b885a499f149dfe2fd2199394aa"
          "af6b8894a1730cccb2cd050f9bcf5062a38b51b0dab33207f8ef35ae2c9df51b",
          want, 64);
    tern_noise_hmac((const uint8_t *)"key", 3, (const uint8_t *)fox, strlen(fox), got);
    cr_assert_arr_eq(got, want, 64);

    /* A 64-byte key (the size Noise uses) and empty data. */
    unhex("ea1896ab7c8319a824482f757c038b70089765501b1f8bdb78153d195915bd33"
          "0bde7a8c0fb6dbf3de09277662ba661fde80017dc277309eedfe05bdf5b27e18",
          want, 64);
    tern_noise_hmac(key, 64, NULL, 0, got);
    cr_assert_arr_eq(got, want, 64);

    /* A key longer than the block is hashed first. */
    unhex("a89c8fe242925db498b2ebfd80b718dd4b50fb5e8c558004c8680a7ae4e555a5"
          "09c4da2b0526f78479b7a01415bade321c93f2e7abc28e2d884c50ef596403fa",
          want, 64);
    tern_noise_hmac(key, 200, (const uint8_t *)"tern", 4, got);
    cr_assert_arr_eq(got, want, 64);
}

Test(symmetric, hkdf_is_noises_hmac_chain)
{
    init_crypto();
    tern_hash ck, o1, o2, o3;
    uint8_t ikm[32], temp[64], want[64], in[65];
    for (size_t i = 0; i < 64; i++)
        ck.b[i] = (uint8_t)(3 * i);
    memset(ikm, 9, sizeof(ikm));
    tern_noise_hkdf(&ck, ikm, sizeof(ikm), &o1, &o2, &o3);

    tern_noise_hmac(ck.b, 64, ikm, sizeof(ikm), temp);
    tern_noise_hmac(temp, 64, (const uint8_t *)"\x01", 1, want);
    cr_assert_arr_eq(o1.b, want, 64);
    memcpy(in, want, 64);
    in[64] = 2;
    tern_noise_hmac(temp, 64, in, 65, want);
    cr_assert_arr_eq(o2.b, want, 64);
    memcpy(in, want, 64);
    in[64] = 3;
    tern_noise_hmac(temp, 64, in, 65, want);
    cr_assert_arr_eq(o3.b, want, 64);

    /* An output may be ck itself (MixKey does that). */
    tern_hash ck2 = ck, t;
    tern_noise_hkdf(&ck2, ikm, sizeof(ikm), &ck2, &t, NULL);
    cr_assert_arr_eq(ck2.b, o1.b, 64);
    cr_assert_arr_eq(t.b, o2.b, 64);
}

Test(symmetric, nonce_layouts)
{
    uint8_t n[12];
    static const uint8_t le[12] = {0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1};
    static const uint8_t be[12] = {0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    tern_noise_nonce(TERN_NOISE_CHACHAPOLY, 0x0102030405060708u, n);
    cr_assert_arr_eq(n, le, 12);
    tern_noise_nonce(TERN_NOISE_AESGCM, 0x0102030405060708u, n);
    cr_assert_arr_eq(n, be, 12);
}

Test(symmetric, cipher_state_without_a_key_copies_and_counts_nothing)
{
    init_crypto();
    tern_noise_cs cs;
    tern_noise_cs_init(&cs, TERN_NOISE_CHACHAPOLY, NULL);
    uint8_t out[8];
    cr_assert_eq(tern_noise_cs_encrypt(&cs, NULL, 0, (const uint8_t *)"abcdefgh", 8, out), 0);
    cr_assert_arr_eq(out, "abcdefgh", 8);
    cr_assert_eq(cs.n, 0);

    tern_key k = {{42}};
    tern_noise_cs_init(&cs, TERN_NOISE_CHACHAPOLY, &k);
    cs.n = UINT64_MAX;
    uint8_t ct[24];
    cr_assert_eq(tern_noise_cs_encrypt(&cs, NULL, 0, (const uint8_t *)"abcdefgh", 8, ct),
                 TERN_ERR_RANGE);
    cr_assert_eq(tern_noise_cs_decrypt(&cs, NULL, 0, ct, sizeof(ct), out), TERN_ERR_RANGE);
}

Test(symmetric, long_protocol_names_are_hashed)
{
    init_crypto();
    char name[100];
    memset(name, 'n', sizeof(name));
    tern_noise_ss ss;
    uint8_t want[64];
    tern_noise_ss_init(&ss, name, sizeof(name), TERN_NOISE_CHACHAPOLY);
    crypto_generichash(want, 64, (const uint8_t *)name, sizeof(name), NULL, 0);
    cr_assert_arr_eq(ss.h.b, want, 64);
    cr_assert_arr_eq(ss.ck.b, want, 64);
    cr_assert_not(ss.cs.has_key);

    tern_noise_ss_init(&ss, name, 10, TERN_NOISE_CHACHAPOLY);
    memset(want, 0, sizeof(want));
    memset(want, 'n', 10);
    cr_assert_arr_eq(ss.h.b, want, 64);
}

/* ---- allocation failures ---- */

typedef struct budget {
    int left;
} budget;

static void *budget_malloc(size_t size, void *user_data)
{
    budget *b = user_data;
    if (b->left <= 0)
        return NULL;
    b->left--;
    return malloc(size);
}

static void budget_free(void *ptr, void *user_data)
{
    (void)user_data;
    free(ptr);
}

Test(alloc, failures_leave_nothing_behind)
{
    init_crypto();
    budget b = {0};
    tern_mem mem = {budget_malloc, budget_free, &b};
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = "Noise_NN_25519_ChaChaPoly_BLAKE2b";
    cfg.initiator = true;
    tern_noise *i = (tern_noise *)1, *r;
    cr_assert_eq(tern_noise_new(&i, &cfg, &mem), TERN_ERR_NOMEM);
    cr_assert_null(i);

    b.left = 1;
    cr_assert_eq(tern_noise_new(&i, &cfg, &mem), 0);
    cfg.initiator = false;
    cr_assert_eq(tern_noise_new(&r, &cfg, NULL), 0);
    uint8_t msg[BUF], out[BUF];
    tern_ssize n = tern_noise_write_message(i, NULL, 0, msg, sizeof(msg));
    cr_assert_eq(tern_noise_read_message(r, msg, (size_t)n, out, sizeof(out)), 0);
    n = tern_noise_write_message(r, NULL, 0, msg, sizeof(msg));
    cr_assert_eq(tern_noise_read_message(i, msg, (size_t)n, out, sizeof(out)), 0);

    /* Split needs two ciphers: with room for one it fails whole, and can
     * be retried. */
    tern_cipher *s = (tern_cipher *)1, *rc = (tern_cipher *)1;
    b.left = 1;
    cr_assert_eq(tern_noise_split(i, &s, &rc), TERN_ERR_NOMEM);
    cr_assert_null(s);
    cr_assert_null(rc);
    cr_assert_eq(tern_noise_next(i), TERN_NOISE_SPLIT);
    b.left = 2;
    cr_assert_eq(tern_noise_split(i, &s, &rc), 0);
    tern_cipher *s2, *r2;
    cr_assert_eq(tern_noise_split(r, &s2, &r2), 0);
    uint64_t nonce;
    n = tern_cipher_encrypt(s, NULL, 0, (const uint8_t *)"hi", 2, msg, sizeof(msg), &nonce);
    cr_assert_eq(tern_cipher_decrypt(r2, nonce, NULL, 0, msg, (size_t)n, out, sizeof(out)), 2);

    tern_cipher_del(s);
    tern_cipher_del(rc);
    tern_cipher_del(s2);
    tern_cipher_del(r2);
    tern_noise_del(i);
    tern_noise_del(r);
}

/* ---- odds and ends ---- */

Test(misc, error_names_and_sizes)
{
    cr_assert_str_eq(tern_strerror(TERN_ERR_DECRYPT), "authentication failed");
    cr_assert_str_eq(tern_err_name(TERN_ERR_STATE), "STATE");
    cr_assert_str_eq(tern_err_name(TERN_ERR_UNSUPPORTED), "UNSUPPORTED");
    cr_assert_str_eq(tern_err_name(TERN_ERR_BADKEY), "BADKEY");
    cr_assert_eq(tern_crypto_key_bytes(), 32);
    cr_assert_eq(tern_crypto_public_bytes(), 32);
    cr_assert_eq(tern_crypto_hash_bytes(), 64);
    cr_assert_eq(tern_crypto_tag_bytes(), 16);
    cr_assert_eq(tern_noise_msg_max(), 65535);
}

Test(misc, init_is_idempotent_and_keys_generate)
{
    for (int k = 0; k < 3; k++)
        cr_assert_eq(tern_crypto_init(), 0);
    tern_keypair a, b, c;
    cr_assert_eq(tern_keypair_generate(&a), 0);
    cr_assert_eq(tern_keypair_generate(&b), 0);
    cr_assert(memcmp(a.secret.b, b.secret.b, 32) != 0);
    cr_assert_eq(tern_keypair_from_secret(&c, &a.secret), 0);
    cr_assert_arr_eq(c.pub.b, a.pub.b, 32);
    /* secret may be the key pair's own field. */
    cr_assert_eq(tern_keypair_from_secret(&c, &c.secret), 0);
    cr_assert_arr_eq(c.pub.b, a.pub.b, 32);
}
