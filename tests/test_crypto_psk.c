/* Passphrase PSKs (crypto/psk.c): Argon2id is deterministic, bound to the
 * passphrase and to the protocol name, and an NNpsk0 handshake works with
 * PSKs derived on both sides. */
#include <criterion/criterion.h>
#include <string.h>
#include <time.h>

#include "tern/crypto.h"

#define PROTO "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

Test(psk, deterministic_and_bound_to_protocol)
{
    tern_key a, b, c, d;
    const char *pass = "correct horse battery staple";

    cr_assert_eq(tern_crypto_init(), 0);
    double t0 = now_s();
    cr_assert_eq(tern_psk_from_passphrase(&a, pass, strlen(pass), PROTO), 0);
    cr_log_info("one Argon2id derivation (INTERACTIVE): %.3f s", now_s() - t0);
    cr_assert_eq(tern_psk_from_passphrase(&b, pass, strlen(pass), PROTO), 0);
    cr_assert_eq(memcmp(a.b, b.b, 32), 0);

    cr_assert_eq(
        tern_psk_from_passphrase(&c, pass, strlen(pass), "Noise_NNpsk0_25519_AESGCM_BLAKE2b"), 0);
    cr_assert_neq(memcmp(a.b, c.b, 32), 0);
    cr_assert_eq(tern_psk_from_passphrase(&d, pass, strlen(pass) - 1, PROTO), 0);
    cr_assert_neq(memcmp(a.b, d.b, 32), 0);

    cr_assert_eq(tern_psk_from_passphrase(&d, pass, 0, PROTO), TERN_ERR_INVAL);
    cr_assert_eq(tern_psk_from_passphrase(&d, NULL, 3, PROTO), TERN_ERR_INVAL);
    cr_assert_eq(tern_psk_from_passphrase(&d, pass, 3, NULL), TERN_ERR_INVAL);
}

static int handshake(const tern_key *ipsk, const tern_key *rpsk)
{
    tern_noise_config cfg;
    tern_noise *i, *r;
    uint8_t m[256], p[64];
    int rc;

    tern_noise_config_default(&cfg);
    cfg.protocol = PROTO;
    cfg.initiator = true;
    cfg.psk = ipsk;
    cr_assert_eq(tern_noise_new(&i, &cfg, NULL), 0);
    cfg.initiator = false;
    cfg.psk = rpsk;
    cr_assert_eq(tern_noise_new(&r, &cfg, NULL), 0);
    tern_ssize n = tern_noise_write_message(i, NULL, 0, m, sizeof(m));
    cr_assert_gt(n, 0);
    tern_ssize got = tern_noise_read_message(r, m, (size_t)n, p, sizeof(p));
    rc = got < 0 ? (int)got : 0;
    tern_noise_del(i);
    tern_noise_del(r);
    return rc;
}

Test(psk, nnpsk0_with_derived_keys)
{
    tern_key a, b, c;
    cr_assert_eq(tern_crypto_init(), 0);
    cr_assert_eq(tern_psk_from_passphrase(&a, "hunter2", 7, PROTO), 0);
    cr_assert_eq(tern_psk_from_passphrase(&b, "hunter2", 7, PROTO), 0);
    cr_assert_eq(tern_psk_from_passphrase(&c, "hunter3", 7, PROTO), 0);
    cr_assert_eq(handshake(&a, &b), 0);
    cr_assert_eq(handshake(&a, &c), TERN_ERR_DECRYPT);
}
