/* Passphrase PSKs for NNpsk0: Argon2id with a salt bound to the protocol
 * name. The INTERACTIVE limits (2 passes over 64 MiB) keep a connect fast
 * (about 0.08 s on the development machine) while each guess still costs
 * that much memory and time; a deployment that wants more should use a
 * random PSK from a key file instead of a passphrase. */
#include <sodium.h>
#include <string.h>

#include "crypto/noise_internal.h"
#include "tern/crypto.h"

static const char salt_label[] = "tern psk salt";

_Static_assert(TERN_PSK_SALT_BYTES == crypto_pwhash_SALTBYTES, "Argon2id salt length");

int tern_psk_from_passphrase(tern_key *out, const char *passphrase, size_t len,
                             const char *protocol)
{
    uint8_t h[TERN_NOISE_HASHLEN];
    uint8_t key[TERN_CRYPTO_KEY_BYTES];
    int rc = TERN_ERR_NOMEM;

    if (!out || !passphrase || !len || !protocol)
        return TERN_ERR_INVAL;
    if (sodium_init() < 0)
        return TERN_ERR_UNSUPPORTED;
    /* salt = BLAKE2b-512("tern psk salt" || protocol)[0..16) */
    tern_noise_hash((const uint8_t *)salt_label, sizeof(salt_label) - 1, (const uint8_t *)protocol,
                    strlen(protocol), h);
    if (crypto_pwhash(key, sizeof(key), passphrase, len, h, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                      crypto_pwhash_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13) != 0)
        goto out;
    memcpy(out->b, key, sizeof(key));
    rc = 0;
out:
    sodium_memzero(key, sizeof(key));
    sodium_memzero(h, sizeof(h));
    return rc;
}
