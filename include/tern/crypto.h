/* tern: session security. The Noise Protocol Framework's handshake, sans-I/O,
 * over libsodium: DH 25519, cipher ChaChaPoly or AESGCM, hash BLAKE2b.
 *
 * A handshake (tern_noise) is a state machine fed and drained by the caller,
 * like the engine: it never touches a socket or a clock. Each side calls
 * tern_noise_write_message() when tern_noise_next() says TERN_NOISE_WRITE
 * and sends the bytes it wrote as one message; it hands each message that
 * arrives to tern_noise_read_message() when tern_noise_next() says
 * TERN_NOISE_READ. When it says TERN_NOISE_SPLIT, tern_noise_split() gives
 * the two transport ciphers (one per direction).
 *
 * Supported protocol names: "Noise_<P>_25519_<C>_BLAKE2b" where C is
 * "ChaChaPoly" or "AESGCM" (only where the CPU has AES-NI and CLMUL; see
 * tern_crypto_aesgcm_available()) and P is one of these patterns, with at
 * most one pskN modifier (psk0 before the first token of message 1, pskN
 * after the last token of message N):
 *
 *   NN:           -> e                    <- e, ee
 *   NK:  <- s ... -> e, es                <- e, ee
 *   IK:  <- s ... -> e, es, s, ss         <- e, ee, se
 *   XX:           -> e                    <- e, ee, s, es      -> s, se
 *
 * What tern uses: NK (clients know the server's key; players stay anonymous),
 * IK and IKpsk2 (mutual authentication; the responder checks the client's
 * key with tern_noise_get_remote_static() before answering) and NNpsk0 (a
 * shared passphrase). The vectors the tests replay also cover XX, NNpsk2,
 * NKpsk0, NKpsk2 and IKpsk1.
 *
 * Payloads: a payload is as confidential as the keys mixed in before it
 * (NN's and XX's first payloads are in clear), and anyone who saw a first
 * message can replay it to the responder, so its payload must not be taken
 * as fresh (bind a login token to the handshake hash, or act on it only
 * once the initiator has spoken under the transport keys).
 *
 * Failure is atomic: a write or read that fails leaves the handshake exactly
 * as it was, so a forged or corrupted datagram cannot kill a handshake in
 * progress; the caller decides whether to wait for another message or to
 * give up (tern_noise_del()).
 *
 * Secrets are wiped (sodium_memzero) when they are no longer needed: the
 * ephemeral and chaining keys after tern_noise_split(), everything in
 * tern_noise_del() and tern_cipher_del(). Objects are not thread-safe; use
 * each from one thread at a time.
 *
 * Errors every call may return besides those listed: TERN_ERR_INVAL for a
 * NULL handle or NULL buffer with a non-zero length. */
#ifndef TERN_CRYPTO_H
#define TERN_CRYPTO_H

#include <stdbool.h>

#include "common.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes, also as functions (for bindings). */
#define TERN_CRYPTO_KEY_BYTES 32U    /* a private key, a PSK, a symmetric key */
#define TERN_CRYPTO_PUBLIC_BYTES 32U /* an X25519 public key */
#define TERN_CRYPTO_HASH_BYTES 64U   /* BLAKE2b-512: the handshake hash */
#define TERN_CRYPTO_TAG_BYTES 16U    /* what each AEAD ciphertext adds */
/* The largest Noise message, handshake or transport, tag included. */
#define TERN_NOISE_MSG_MAX 65535U
/* The longest protocol name accepted. */
#define TERN_NOISE_NAME_MAX 64U

TERN_API size_t tern_crypto_key_bytes(void);
TERN_API size_t tern_crypto_public_bytes(void);
TERN_API size_t tern_crypto_hash_bytes(void);
TERN_API size_t tern_crypto_tag_bytes(void);
TERN_API size_t tern_noise_msg_max(void);

/* Keys are fixed-size arrays wrapped in structs, so that a private key, a
 * public key and a hash cannot be passed for one another. */
typedef struct tern_key {
    uint8_t b[TERN_CRYPTO_KEY_BYTES];
} tern_key;

typedef struct tern_public_key {
    uint8_t b[TERN_CRYPTO_PUBLIC_BYTES];
} tern_public_key;

typedef struct tern_hash {
    uint8_t b[TERN_CRYPTO_HASH_BYTES];
} tern_hash;

typedef struct tern_keypair {
    tern_key secret;
    tern_public_key pub;
} tern_keypair;

/* Initialises libsodium (sodium_init()). Call it once before any other
 * tern_crypto/tern_noise/tern_cipher/tern_keypair function; calling it again,
 * from any thread, is harmless (sodium_init() is thread-safe and
 * idempotent). tern_noise_new() and tern_keypair_generate() call it too, as
 * a safety net. Returns 0, or TERN_ERR_UNSUPPORTED if libsodium cannot
 * initialise (no usable random source). */
TERN_API int tern_crypto_init(void) TERN_WARN_UNUSED;

/* Whether "AESGCM" protocol names can be used on this CPU. Needs
 * tern_crypto_init() first (it returns false otherwise). */
TERN_API bool tern_crypto_aesgcm_available(void);

/* A new X25519 key pair from libsodium's random source. Returns 0, or
 * TERN_ERR_UNSUPPORTED (see tern_crypto_init()). */
TERN_API int tern_keypair_generate(tern_keypair *kp) TERN_WARN_UNUSED;

/* kp->pub computed from *secret, which is copied into kp->secret (secret
 * and &kp->secret may be the same). Returns 0. */
TERN_API int tern_keypair_from_secret(tern_keypair *kp, const tern_key *secret);

/* Fills buf with len cryptographically secure random bytes; must not fail.
 * Used for ephemeral keys. */
typedef void (*tern_random_fn)(uint8_t *buf, size_t len, void *user_data);

/* ---- the handshake ---- */

typedef struct tern_noise tern_noise;
typedef struct tern_cipher tern_cipher;

typedef struct tern_noise_config {
    /* The full Noise protocol name, e.g. "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b". */
    const char *protocol;
    bool initiator;
    /* Bound into the handshake hash; both sides must use the same bytes.
     * May be NULL when prologue_len is 0. Copied only into the hash. */
    const uint8_t *prologue;
    size_t prologue_len;
    /* This side's static key pair: required exactly when the pattern uses
     * one for this side (the initiator in IK and XX, the responder in NK,
     * IK and XX), else must be NULL. Copied. */
    const tern_keypair *s;
    /* The peer's static public key known in advance: required exactly when
     * the pattern has it as a pre-message (the initiator in NK and IK), else
     * must be NULL. Copied. */
    const tern_public_key *rs;
    /* The pre-shared key: required exactly for psk patterns. Copied. */
    const tern_key *psk;
    /* Randomness for ephemeral keys. NULL: libsodium's randombytes_buf(). */
    tern_random_fn random;
    void *random_user_data;
} tern_noise_config;

/* Fills *cfg with zeros and NULLs; set at least protocol. */
TERN_API void tern_noise_config_default(tern_noise_config *cfg);

/* Creates a handshake. The config is copied; nothing in it needs to outlive
 * the call. mem: allocator hooks, NULL for malloc/free (copied).
 * Returns 0 and sets *out, or, with *out set to NULL:
 *   TERN_ERR_INVAL        a NULL argument, a key missing or given that the
 *                         pattern does not use, prologue NULL with a length;
 *   TERN_ERR_UNSUPPORTED  a protocol name this build does not know (another
 *                         DH, cipher, hash or pattern, more than one psk
 *                         modifier), AESGCM on a CPU without AES-NI, or
 *                         libsodium failing to initialise;
 *   TERN_ERR_BADKEY       rs is all zeros;
 *   TERN_ERR_NOMEM        the allocator failed. */
TERN_API int tern_noise_new(tern_noise **out, const tern_noise_config *cfg,
                            const tern_mem *mem) TERN_WARN_UNUSED;

/* Wipes and frees the handshake. NULL is allowed. */
TERN_API void tern_noise_del(tern_noise *hs);

typedef enum tern_noise_step {
    TERN_NOISE_WRITE = 0, /* this side writes the next message */
    TERN_NOISE_READ = 1,  /* this side waits for the peer's next message */
    TERN_NOISE_SPLIT = 2, /* the handshake is complete: call tern_noise_split() */
    TERN_NOISE_DONE = 3   /* split already; only the hash and remote key remain */
} tern_noise_step;

/* What the handshake expects next (TERN_NOISE_DONE for NULL). */
TERN_API tern_noise_step tern_noise_next(const tern_noise *hs);

/* Bytes the next message adds to its payload (keys and tags), so that a
 * message is overhead + payload bytes long. TERN_ERR_STATE after the last
 * message. */
TERN_API tern_ssize tern_noise_overhead(const tern_noise *hs);

/* Writes the next handshake message, carrying payload (which is encrypted
 * once the pattern has established a key, and sent in clear before that:
 * NN's and XX's first message, for instance), into out. out must not
 * overlap payload. Returns the message length, or:
 *   TERN_ERR_STATE    it is not this side's turn to write (see tern_noise_next());
 *   TERN_ERR_MSGSIZE  the message would exceed TERN_NOISE_MSG_MAX;
 *   TERN_ERR_NOBUFS   out_cap is smaller than the message;
 *   TERN_ERR_BADKEY   a DH gave the all-zero output (the peer's key is of
 *                     low order).
 * On error the handshake is unchanged and out holds no message (bytes that
 * were written are zeroed again). */
TERN_API tern_ssize tern_noise_write_message(tern_noise *hs, const uint8_t *payload,
                                             size_t payload_len, uint8_t *out,
                                             size_t out_cap) TERN_WARN_UNUSED;

/* Reads the peer's next handshake message and writes its payload into
 * payload (which must not overlap msg). Returns the payload length, or:
 *   TERN_ERR_STATE      it is not this side's turn to read;
 *   TERN_ERR_MSGSIZE    msg_len exceeds TERN_NOISE_MSG_MAX;
 *   TERN_ERR_MALFORMED  msg_len is shorter than this message's keys and tags;
 *   TERN_ERR_NOBUFS     payload_cap is smaller than the payload;
 *   TERN_ERR_BADKEY     a public key in it is all zeros or of low order;
 *   TERN_ERR_DECRYPT    authentication failed: a wrong static key or PSK,
 *                       a different prologue or protocol, or a tampered
 *                       message.
 * On error the handshake is unchanged and the bytes of payload the message
 * would have filled are zeroed (except on TERN_ERR_NOBUFS, found before
 * anything is decrypted, which leaves payload untouched). */
TERN_API tern_ssize tern_noise_read_message(tern_noise *hs, const uint8_t *msg, size_t msg_len,
                                            uint8_t *payload, size_t payload_cap) TERN_WARN_UNUSED;

/* After the last message: the transport ciphers, *send for this side's
 * messages and *recv for the peer's, allocated with the handshake's tern_mem
 * (free each with tern_cipher_del()). Wipes the handshake's remaining
 * secrets; tern_noise_next() then says TERN_NOISE_DONE. Returns 0, or
 * TERN_ERR_STATE before the last message or after a split, TERN_ERR_NOMEM
 * (the handshake is then unchanged and split may be retried). */
TERN_API int tern_noise_split(tern_noise *hs, tern_cipher **send,
                              tern_cipher **recv) TERN_WARN_UNUSED;

/* The handshake hash, which identifies this handshake (for channel binding).
 * TERN_ERR_STATE before the last message. */
TERN_API int tern_noise_get_handshake_hash(const tern_noise *hs, tern_hash *out);

/* The peer's static public key, once known: given in the config, or read
 * from the peer's message (an IK responder has it after reading message 1,
 * before it writes message 2, so it can refuse a key not on its allow-list).
 * TERN_ERR_STATE while not known, or for a pattern in which the peer has
 * none. */
TERN_API int tern_noise_get_remote_static(const tern_noise *hs, tern_public_key *out);

/* ---- transport ciphers (Noise CipherState) ---- */

/* Encrypts pt with the next nonce of this direction (0, 1, 2, ...), and
 * stores the nonce used in *nonce, which the receiver needs (it goes on the
 * wire as the packet counter). A nonce is never used twice. ad is
 * authenticated, not encrypted (may be NULL when ad_len is 0). out may be pt
 * (in place) but must not otherwise overlap it. Returns pt_len +
 * TERN_CRYPTO_TAG_BYTES, or:
 *   TERN_ERR_MSGSIZE  pt_len + tag exceeds TERN_NOISE_MSG_MAX;
 *   TERN_ERR_NOBUFS   out_cap is too small;
 *   TERN_ERR_RANGE    the nonces are exhausted (2^64 - 1 messages sent):
 *                     a new handshake is needed. */
TERN_API tern_ssize tern_cipher_encrypt(tern_cipher *c, const uint8_t *ad, size_t ad_len,
                                        const uint8_t *pt, size_t pt_len, uint8_t *out,
                                        size_t out_cap, uint64_t *nonce) TERN_WARN_UNUSED;

/* Decrypts a message sent with nonce. The cipher keeps no record of nonces
 * seen: rejecting replays is the caller's job (a replay window checked after
 * this call succeeds). out may be ct (in place) but must not otherwise
 * overlap it. Returns ct_len - TERN_CRYPTO_TAG_BYTES, or:
 *   TERN_ERR_MSGSIZE    ct_len exceeds TERN_NOISE_MSG_MAX;
 *   TERN_ERR_MALFORMED  ct_len is shorter than the tag;
 *   TERN_ERR_NOBUFS     out_cap is too small;
 *   TERN_ERR_RANGE      nonce is 2^64 - 1, which no sender uses;
 *   TERN_ERR_DECRYPT    authentication failed; the ct_len - tag bytes of
 *                       out are zeroed. */
TERN_API tern_ssize tern_cipher_decrypt(tern_cipher *c, uint64_t nonce, const uint8_t *ad,
                                        size_t ad_len, const uint8_t *ct, size_t ct_len,
                                        uint8_t *out, size_t out_cap) TERN_WARN_UNUSED;

/* Wipes and frees the cipher. NULL is allowed. */
TERN_API void tern_cipher_del(tern_cipher *c);

#ifdef __cplusplus
}
#endif

#include "crypto_dos.h"
#include "crypto_packet.h"
#endif /* TERN_CRYPTO_H */
