/* The packet path's two AEAD libraries (crypto/aead_ctx.c): OpenSSL's EVP,
 * where tern was built with it, must give libsodium's bytes exactly, open
 * what libsodium sealed and the other way round, in place or not, across
 * key and direction changes on one context; reject every tampered byte and
 * leave no plaintext behind; and whole sessions with one library on each
 * side must talk across rekeys. Tests that need OpenSSL skip without it. */
#include <criterion/criterion.h>
#include <sodium.h>
#include <string.h>

#include "crypto/aead_ctx.h"
#include "crypto/packet_internal.h"
#include "tern/crypto.h"

#define MAXLEN 2048

static const size_t lengths[] = {0, 1, 15, 16, 17, 63, 64, 65, 255, 1200, 1400, MAXLEN};

static void need_openssl(void)
{
    if (!tern_aead_impl_available(TERN_AEAD_IMPL_OPENSSL))
        cr_skip_test("built without OpenSSL (TERN_OPENSSL)");
}

/* The ciphers both libraries can run here: libsodium's AES-GCM needs
 * AES-NI. */
static size_t ciphers(tern_noise_cipher out[2])
{
    size_t n = 0;
    out[n++] = TERN_NOISE_CHACHAPOLY;
    if (tern_crypto_aesgcm_available())
        out[n++] = TERN_NOISE_AESGCM;
    return n;
}

static void fill(uint8_t *p, size_t len, uint8_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seed * 31U + i * 7U);
}

Test(aead_ctx, availability_and_bad_choices)
{
    cr_assert(tern_aead_impl_available(TERN_AEAD_IMPL_AUTO));
    cr_assert(tern_aead_impl_available(TERN_AEAD_IMPL_LIBSODIUM));
    cr_assert_not(tern_aead_impl_available((tern_aead_impl)9));
    tern_aead_ctx c;
    cr_assert_eq(tern_aead_ctx_init(&c, (tern_aead_impl)9), TERN_ERR_INVAL);
    cr_assert_eq(tern_aead_ctx_init(&c, TERN_AEAD_IMPL_AUTO), 0);
    cr_assert_eq(c.impl, tern_aead_impl_available(TERN_AEAD_IMPL_OPENSSL)
                             ? TERN_AEAD_IMPL_OPENSSL
                             : TERN_AEAD_IMPL_LIBSODIUM);
    tern_aead_ctx_clear(&c);
    if (!tern_aead_impl_available(TERN_AEAD_IMPL_OPENSSL))
        cr_assert_eq(tern_aead_ctx_init(&c, TERN_AEAD_IMPL_OPENSSL), TERN_ERR_UNSUPPORTED);

    uint8_t k[32] = {1};
    tern_crypto_session_config cfg;
    tern_crypto_session_config_default(&cfg);
    tern_crypto_session *s = NULL;
    cfg.aead_impl = (tern_aead_impl)9;
    cr_assert_eq(tern_crypto_session_new_from_keys(&s, TERN_AEAD_CHACHAPOLY, k, k, &cfg, NULL, 0),
                 TERN_ERR_INVAL);
    cr_assert_null(s);
}

Test(aead_ctx, openssl_gives_libsodiums_bytes_and_each_opens_the_other)
{
    need_openssl();
    tern_noise_cipher cs[2];
    size_t nc = ciphers(cs);
    tern_aead_ctx ossl_seal, ossl_open;
    cr_assert_eq(tern_aead_ctx_init(&ossl_seal, TERN_AEAD_IMPL_OPENSSL), 0);
    cr_assert_eq(tern_aead_ctx_init(&ossl_open, TERN_AEAD_IMPL_OPENSSL), 0);
    static uint8_t pt[MAXLEN], a[MAXLEN + 16], b[MAXLEN + 16], back[MAXLEN];
    uint8_t ad[13];
    for (size_t ci = 0; ci < nc; ci++) {
        for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++) {
            size_t len = lengths[li];
            tern_key k;
            fill(k.b, sizeof(k.b), (uint8_t)(li + 10 * ci));
            fill(pt, len, (uint8_t)li);
            fill(ad, sizeof(ad), (uint8_t)(li + 1));
            uint64_t n = (uint64_t)li * 0x0102030405ULL;
            cr_assert_eq(tern_noise_aead_seal(cs[ci], &k, n, ad, sizeof(ad), pt, len, a), 0);
            cr_assert_eq(tern_aead_ctx_seal(&ossl_seal, cs[ci], &k, n, ad, sizeof(ad), pt, len, b),
                         0);
            cr_assert_eq(memcmp(a, b, len + 16), 0, "cipher %d, %zu bytes: the bytes differ",
                         (int)cs[ci], len);
            /* libsodium opens OpenSSL's; OpenSSL opens libsodium's. */
            cr_assert_eq(tern_noise_aead_open(cs[ci], &k, n, ad, sizeof(ad), b, len + 16, back), 0);
            cr_assert_eq(memcmp(back, pt, len), 0);
            memset(back, 0xEE, sizeof(back));
            cr_assert_eq(
                tern_aead_ctx_open(&ossl_open, cs[ci], &k, n, ad, sizeof(ad), a, len + 16, back), 0);
            cr_assert_eq(memcmp(back, pt, len), 0);
            /* In place, both ways. */
            memcpy(b, pt, len);
            cr_assert_eq(tern_aead_ctx_seal(&ossl_seal, cs[ci], &k, n, ad, sizeof(ad), b, len, b),
                         0);
            cr_assert_eq(memcmp(a, b, len + 16), 0);
            cr_assert_eq(
                tern_aead_ctx_open(&ossl_open, cs[ci], &k, n, ad, sizeof(ad), b, len + 16, b), 0);
            cr_assert_eq(memcmp(b, pt, len), 0);
        }
    }
    /* OpenSSL did the work: a silent fallback would give the same bytes. */
    cr_assert_not_null(ossl_seal.evp);
    cr_assert(ossl_seal.has_key && ossl_seal.loaded_enc == 1);
    cr_assert(ossl_open.has_key && ossl_open.loaded_enc == 0);
    tern_aead_ctx_clear(&ossl_seal);
    tern_aead_ctx_clear(&ossl_open);
    cr_assert_null(ossl_seal.evp);
    cr_assert_not(ossl_seal.has_key);
}

Test(aead_ctx, every_tampered_byte_fails_and_leaves_no_plaintext)
{
    need_openssl();
    tern_noise_cipher cs[2];
    size_t nc = ciphers(cs);
    tern_aead_ctx c;
    cr_assert_eq(tern_aead_ctx_init(&c, TERN_AEAD_IMPL_OPENSSL), 0);
    enum { LEN = 100 };
    uint8_t pt[LEN], ct[LEN + 16], bad[LEN + 16], out[LEN], ad[13];
    uint8_t zeros[LEN] = {0};
    for (size_t ci = 0; ci < nc; ci++) {
        tern_key k;
        fill(k.b, sizeof(k.b), 3);
        fill(pt, LEN, 4);
        fill(ad, sizeof(ad), 5);
        cr_assert_eq(tern_noise_aead_seal(cs[ci], &k, 9, ad, sizeof(ad), pt, LEN, ct), 0);
        for (size_t i = 0; i < sizeof(ct); i++) {
            memcpy(bad, ct, sizeof(ct));
            bad[i] ^= 0x01;
            memset(out, 0xAA, sizeof(out));
            cr_assert_eq(tern_aead_ctx_open(&c, cs[ci], &k, 9, ad, sizeof(ad), bad, sizeof(bad), out),
                         TERN_ERR_DECRYPT, "byte %zu", i);
            cr_assert_eq(memcmp(out, zeros, LEN), 0, "plaintext left after byte %zu failed", i);
        }
        for (size_t i = 0; i < sizeof(ad); i++) {
            ad[i] ^= 0x80;
            cr_assert_eq(tern_aead_ctx_open(&c, cs[ci], &k, 9, ad, sizeof(ad), ct, sizeof(ct), out),
                         TERN_ERR_DECRYPT);
            ad[i] ^= 0x80;
        }
        /* The wrong counter, then the right one: the context recovers. */
        cr_assert_eq(tern_aead_ctx_open(&c, cs[ci], &k, 10, ad, sizeof(ad), ct, sizeof(ct), out),
                     TERN_ERR_DECRYPT);
        cr_assert_eq(tern_aead_ctx_open(&c, cs[ci], &k, 9, ad, sizeof(ad), ct, sizeof(ct), out), 0);
        cr_assert_eq(memcmp(out, pt, LEN), 0);
        cr_assert_eq(tern_aead_ctx_open(&c, cs[ci], &k, 9, ad, sizeof(ad), ct, 15, out),
                     TERN_ERR_MALFORMED);
    }
    tern_aead_ctx_clear(&c);
}

/* One context, keys and ciphers and directions changing under it, as the
 * transport's shared contexts see when sessions interleave. */
Test(aead_ctx, one_context_follows_key_cipher_and_direction_changes)
{
    need_openssl();
    tern_noise_cipher cs[2];
    size_t nc = ciphers(cs);
    tern_aead_ctx c;
    cr_assert_eq(tern_aead_ctx_init(&c, TERN_AEAD_IMPL_OPENSSL), 0);
    tern_key keys[3];
    for (int i = 0; i < 3; i++)
        fill(keys[i].b, sizeof(keys[i].b), (uint8_t)(40 + i));
    uint8_t pt[300] = {0}, want[316], got[316], back[300];
    for (unsigned step = 0; step < 60; step++) {
        tern_noise_cipher cipher = cs[step % nc];
        const tern_key *k = &keys[(step * 7U) % 3U];
        size_t len = 1 + (step * 13U) % sizeof(pt);
        fill(pt, len, (uint8_t)step);
        cr_assert_eq(tern_noise_aead_seal(cipher, k, step, pt, 5, pt, len, want), 0);
        if (step % 2 == 0) {
            cr_assert_eq(tern_aead_ctx_seal(&c, cipher, k, step, pt, 5, pt, len, got), 0);
            cr_assert_eq(memcmp(got, want, len + 16), 0, "step %u", step);
        } else {
            cr_assert_eq(tern_aead_ctx_open(&c, cipher, k, step, pt, 5, want, len + 16, back), 0,
                         "step %u", step);
            cr_assert_eq(memcmp(back, pt, len), 0);
        }
    }
    tern_aead_ctx_clear(&c);
}

/* Sessions with one library on each side, rekeying every 50 packets. */
Test(aead_ctx, sessions_across_libraries_talk_across_rekeys)
{
    need_openssl();
    tern_aead aeads[2] = {TERN_AEAD_CHACHAPOLY, TERN_AEAD_AESGCM};
    size_t n_aeads = tern_crypto_aesgcm_available() ? 2 : 1;
    for (size_t ai = 0; ai < n_aeads; ai++) {
        uint8_t k1[32], k2[32];
        fill(k1, sizeof(k1), 1);
        fill(k2, sizeof(k2), 2);
        tern_crypto_session_config ca, cb;
        tern_crypto_session_config_default(&ca);
        tern_crypto_session_config_default(&cb);
        ca.local_id = cb.remote_id = 7;
        cb.local_id = ca.remote_id = 8;
        ca.rekey_after_packets = cb.rekey_after_packets = 50;
        ca.aead_impl = TERN_AEAD_IMPL_OPENSSL;
        cb.aead_impl = TERN_AEAD_IMPL_LIBSODIUM;
        tern_crypto_session *a = NULL, *b = NULL;
        cr_assert_eq(tern_crypto_session_new_from_keys(&a, aeads[ai], k1, k2, &ca, NULL, 0), 0);
        cr_assert_eq(tern_crypto_session_new_from_keys(&b, aeads[ai], k2, k1, &cb, NULL, 0), 0);
        uint8_t msg[600], pkt[700], out[700];
        for (unsigned i = 0; i < 400; i++) {
            size_t len = (i * 37U) % sizeof(msg);
            fill(msg, len, (uint8_t)i);
            tern_crypto_session *from = i % 2 ? a : b, *to = i % 2 ? b : a;
            tern_ssize n = tern_crypto_session_seal(from, msg, len, pkt, sizeof(pkt), i);
            cr_assert_gt(n, 0);
            tern_ssize m = tern_crypto_session_open(to, pkt, (size_t)n, out, sizeof(out), i);
            cr_assert_eq(m, (tern_ssize)len, "packet %u: %lld", i, (long long)m);
            cr_assert_eq(memcmp(out, msg, len), 0);
        }
        tern_crypto_session_stats sa, sb;
        tern_crypto_session_get_stats(a, &sa);
        tern_crypto_session_get_stats(b, &sb);
        cr_assert_geq(sa.rekeys_sent, 3);
        cr_assert_geq(sb.rekeys_received, 3);
        cr_assert_eq(sa.auth_failures + sb.auth_failures, 0);
        tern_crypto_session_del(a);
        tern_crypto_session_del(b);
    }
}
