/* The Noise handshake's readers: tern_noise_read_message() fed arbitrary
 * bytes and mutated copies of the genuine message, as message 1 to the
 * responder and as message 2 to the initiator, for the patterns tern uses
 * (NK, IK, IKpsk2, NNpsk0; the first input byte picks one).
 *
 * Every key is fixed, ephemerals included (tern_noise_set_ephemeral()), so
 * the genuine messages are the same on every run. Each record of the input
 * is an operation on the message now expected:
 *
 *   0  deliver the genuine message (moves on to the next one)
 *   1  deliver the genuine message with a payload buffer too small
 *   2  deliver arbitrary bytes
 *   3  deliver a mutated copy of the genuine message
 *
 * and whatever messages are left once the input ends are delivered
 * genuinely. Invariants: every read of anything but the genuine bytes
 * fails, and zeroes the payload bytes it would have filled; a failed read
 * changes nothing, so the genuine message read after any number of failures
 * succeeds with the payload written; both sides end with the same handshake
 * hash and working transport ciphers; nothing leaks. */
#include "fuzz_common.h"

#include "crypto/noise_internal.h"
#include "tern/crypto.h"

#define MSG_CAP 1024
#define PAY_CAP 1024

typedef struct proto {
    const char *name;
    int init_s, resp_s, init_rs, psk;
} proto;

static const proto protos[] = {
    {"Noise_NK_25519_ChaChaPoly_BLAKE2b", 0, 1, 1, 0},
    {"Noise_IK_25519_ChaChaPoly_BLAKE2b", 1, 1, 1, 0},
    {"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b", 1, 1, 1, 1},
    {"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b", 0, 0, 0, 1},
};

static void no_random(uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    memset(buf, 0x42, len); /* never used for the ephemerals: they are fixed */
}

static tern_noise *make(const proto *p, int initiator, const tern_keypair *si,
                        const tern_keypair *sr, const tern_key *psk, const tern_key *e,
                        fuzz_alloc *alloc, tern_mem *mem)
{
    tern_noise_config cfg;
    tern_noise_config_default(&cfg);
    cfg.protocol = p->name;
    cfg.initiator = initiator != 0;
    static const uint8_t prologue[] = "tern fuzz";
    cfg.prologue = prologue;
    cfg.prologue_len = sizeof(prologue) - 1;
    if (initiator) {
        cfg.s = p->init_s ? si : NULL;
        cfg.rs = p->init_rs ? &sr->pub : NULL;
    } else {
        cfg.s = p->resp_s ? sr : NULL;
    }
    cfg.psk = p->psk ? psk : NULL;
    cfg.random = no_random;
    *mem = fuzz_mem(alloc);
    tern_noise *hs = NULL;
    int r = tern_noise_new(&hs, &cfg, mem);
    FUZZ_CHECK(r == 0, "tern_noise_new(%s): %d", p->name, r);
    FUZZ_CHECK(tern_noise_set_ephemeral(hs, e) == 0, "set_ephemeral");
    return hs;
}

static uint8_t payload[PAY_CAP];

/* Reads msg into hs and checks what a failed read must leave behind. */
static tern_ssize try_read(tern_noise *hs, const uint8_t *msg, size_t len, size_t cap,
                           size_t overhead)
{
    memset(payload, 0xaa, sizeof(payload));
    tern_ssize r = tern_noise_read_message(hs, msg, len, payload, cap);
    /* TERN_ERR_NOBUFS is refused before anything is written, and the
     * implementation leaves payload untouched then (crypto.h's "the bytes
     * the message would have filled are zeroed" does not say whether that
     * covers a buffer too small to be filled). */
    if (r < 0 && r != TERN_ERR_NOBUFS && len >= overhead) {
        size_t fill = len - overhead;
        if (fill > cap)
            fill = cap;
        for (size_t i = 0; i < fill; i++)
            FUZZ_CHECK(payload[i] == 0, "failed read (%d) left payload[%zu] = 0x%02x", (int)r, i,
                       payload[i]);
    }
    for (size_t i = cap; i < sizeof(payload); i++)
        FUZZ_CHECK(payload[i] == 0xaa, "read wrote payload[%zu] past cap %zu", i, cap);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    static tern_keypair si, sr;
    static tern_key psk, ei, er;
    static int init;
    if (!init) {
        if (tern_crypto_init() != 0)
            abort();
        tern_key k;
        for (int j = 0; j < 32; j++)
            k.b[j] = (uint8_t)(j + 1);
        tern_keypair_from_secret(&si, &k);
        for (int j = 0; j < 32; j++)
            k.b[j] = (uint8_t)(0x40 + j);
        tern_keypair_from_secret(&sr, &k);
        for (int j = 0; j < 32; j++) {
            psk.b[j] = (uint8_t)(0x99 ^ j);
            ei.b[j] = (uint8_t)(0x20 + 3 * j);
            er.b[j] = (uint8_t)(0xc0 - j);
        }
        init = 1;
    }
    const proto *p = &protos[fuzz_u8(&in) % (sizeof(protos) / sizeof(protos[0]))];

    fuzz_alloc alloc_i = {0}, alloc_r = {0};
    tern_mem mem_i, mem_r;
    tern_noise *hi = make(p, 1, &si, &sr, &psk, &ei, &alloc_i, &mem_i);
    tern_noise *hr = make(p, 0, &si, &sr, &psk, &er, &alloc_r, &mem_r);

    static const uint8_t pay1[] = "first payload, from the initiator";
    static const uint8_t pay2[] = "second";
    static uint8_t genuine[MSG_CAP], arb[MSG_CAP];
    int ops = 0;
    for (int msgno = 0; msgno < 2; msgno++) {
        tern_noise *writer = msgno == 0 ? hi : hr, *reader = msgno == 0 ? hr : hi;
        const uint8_t *pay = msgno == 0 ? pay1 : pay2;
        size_t pay_len = msgno == 0 ? sizeof(pay1) : sizeof(pay2);
        FUZZ_CHECK(tern_noise_next(writer) == TERN_NOISE_WRITE &&
                       tern_noise_next(reader) == TERN_NOISE_READ,
                   "message %d: wrong turn", msgno + 1);
        tern_ssize overhead = tern_noise_overhead(reader);
        FUZZ_CHECK(overhead > 0 && overhead == tern_noise_overhead(writer), "overhead %d",
                   (int)overhead);
        tern_ssize glen = tern_noise_write_message(writer, pay, pay_len, genuine, sizeof(genuine));
        FUZZ_CHECK(glen == overhead + (tern_ssize)pay_len, "write message %d: %d", msgno + 1,
                   (int)glen);

        int delivered = 0;
        while (!delivered) {
            uint8_t op = 0;
            if (!fuzz_empty(&in) && ops++ < 64)
                op = fuzz_u8(&in);
            switch (op % 4) {
            case 0:
                delivered = 1;
                break;
            case 1: { /* genuine, payload buffer too small */
                size_t cap = fuzz_u8(&in) % pay_len;
                tern_ssize r = try_read(reader, genuine, (size_t)glen, cap, (size_t)overhead);
                FUZZ_CHECK(r == TERN_ERR_NOBUFS, "genuine with cap %zu < %zu gave %d", cap,
                           pay_len, (int)r);
                break;
            }
            case 2: { /* arbitrary bytes */
                size_t want = fuzz_u16(&in) % MSG_CAP, got;
                const uint8_t *b = fuzz_bytes(&in, want, &got);
                memcpy(arb, b, got);
                tern_ssize r = try_read(reader, arb, got, PAY_CAP, (size_t)overhead);
                FUZZ_CHECK(r < 0 || ((tern_ssize)got == glen && memcmp(arb, genuine, got) == 0),
                           "message %d: %zu arbitrary bytes accepted", msgno + 1, got);
                if (r >= 0)
                    goto accepted;
                break;
            }
            default: { /* a mutated copy */
                memcpy(arb, genuine, (size_t)glen);
                size_t len = fuzz_mutate(&in, arb, (size_t)glen, sizeof(arb));
                tern_ssize r = try_read(reader, arb, len, PAY_CAP, (size_t)overhead);
                FUZZ_CHECK(r < 0 || ((tern_ssize)len == glen && memcmp(arb, genuine, len) == 0),
                           "message %d: mutated copy of %zd bytes accepted as %zu", msgno + 1,
                           glen, len);
                if (r >= 0)
                    goto accepted;
                break;
            }
            }
        }
        {
            tern_ssize r = try_read(reader, genuine, (size_t)glen, PAY_CAP, (size_t)overhead);
            FUZZ_CHECK(r >= 0, "message %d: genuine refused after failures: %d", msgno + 1,
                       (int)r);
        }
    accepted:
        FUZZ_CHECK(memcmp(payload, pay, pay_len) == 0, "message %d: payload differs", msgno + 1);
        if (msgno == 0 && p->init_s) {
            tern_public_key rs;
            FUZZ_CHECK(tern_noise_get_remote_static(hr, &rs) == 0 &&
                           memcmp(rs.b, si.pub.b, sizeof(rs.b)) == 0,
                       "responder learnt the wrong static key");
        }
    }

    FUZZ_CHECK(tern_noise_next(hi) == TERN_NOISE_SPLIT && tern_noise_next(hr) == TERN_NOISE_SPLIT,
               "handshake not complete");
    tern_hash h1, h2;
    FUZZ_CHECK(tern_noise_get_handshake_hash(hi, &h1) == 0 &&
                   tern_noise_get_handshake_hash(hr, &h2) == 0 && memcmp(h1.b, h2.b, 64) == 0,
               "handshake hashes differ");
    tern_cipher *is, *ir, *rsend, *rrecv;
    FUZZ_CHECK(tern_noise_split(hi, &is, &ir) == 0 && tern_noise_split(hr, &rsend, &rrecv) == 0,
               "split");
    uint8_t ct[64], pt[64];
    uint64_t nonce;
    tern_ssize n = tern_cipher_encrypt(is, NULL, 0, pay2, sizeof(pay2), ct, sizeof(ct), &nonce);
    FUZZ_CHECK(n > 0, "encrypt");
    FUZZ_CHECK(tern_cipher_decrypt(rrecv, nonce, NULL, 0, ct, (size_t)n, pt, sizeof(pt)) ==
                       (tern_ssize)sizeof(pay2) &&
                   memcmp(pt, pay2, sizeof(pay2)) == 0,
               "transport keys disagree");
    tern_cipher_del(is);
    tern_cipher_del(ir);
    tern_cipher_del(rsend);
    tern_cipher_del(rrecv);
    tern_noise_del(hi);
    tern_noise_del(hr);
    FUZZ_CHECK(alloc_i.live_allocs == 0 && alloc_r.live_allocs == 0, "leak: %zu + %zu blocks",
               alloc_i.live_allocs, alloc_r.live_allocs);
    return 0;
}
