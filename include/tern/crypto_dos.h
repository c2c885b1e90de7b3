/* tern: denial-of-service defences for the handshake, key files and
 * passphrase PSKs. Sans-I/O like the rest of crypto/: addresses are opaque
 * bytes, time is a tern_ms passed in, randomness comes from a tern_random_fn
 * (NULL: libsodium's randombytes_buf()). Included by tern/crypto.h.
 *
 * ---- mac1, mac2 and cookies (the idea of WireGuard's, our own layout) ----
 *
 * Every handshake datagram the server may answer ends with two 16-byte
 * MACs, over the bytes before them:
 *
 *   ... handshake bytes ... | mac1 (16) | mac2 (16)
 *
 *   mac1 = BLAKE2b-128(key = BLAKE2b-256("mac1----" || S_pub), bytes before mac1)
 *   mac2 = BLAKE2b-128(key = cookie, bytes before mac2)  or 16 zero bytes
 *
 * where S_pub is the server's static public key. mac1 proves the sender
 * knows S_pub: a server checks it with one hash before any DH, and drops
 * what fails. mac2 proves the sender can receive at its source address:
 *
 *   cookie = BLAKE2b-128(key = secret, address bytes)
 *
 * where secret is a random 32-byte value the server replaces every
 * TERN_COOKIE_SECRET_MS (two minutes; the previous one stays valid until
 * the next replacement) and the address bytes include the port. A server
 * under load answers an initiation whose mac2 is not valid with a
 * COOKIE_REPLY instead of doing DH, and keeps no state for it:
 *
 *   COOKIE_REPLY  type (1) | receiver id (4, LE) | nonce (24) | sealed cookie (16 + 16)
 *   sealed = XChaCha20-Poly1305(key = BLAKE2b-256("cookie--" || S_pub),
 *                               nonce, ad = the mac1 of the initiation answered,
 *                               plaintext = cookie)
 *
 * 61 bytes (TERN_COOKIE_REPLY_BYTES). The client opens it with the mac1 it
 * sent last (so a reply to anything else, or forged by someone who does not
 * know S_pub, fails), and computes mac2 with the cookie on its retries for
 * TERN_COOKIE_CLIENT_TTL_MS.
 *
 * Amplification: the smallest initiation is type (1) + version (1) + sender
 * id (4) + Noise message 1 + 32 bytes of MACs; Noise message 1 is at least
 * 32 bytes (NN), 48 (NK, NNpsk0), 96 (IK), so an initiation is at least 70
 * bytes, 86 for NK, 134 for IK. A cookie reply is 61 bytes, and
 * tern_cookie_reply_write() refuses (TERN_ERR_MSGSIZE) to answer a request
 * shorter than its reply: a server never sends more bytes to an unproven
 * address than it received from it.
 *
 * ---- rate limiting ----
 *
 * tern_ratelimit: a token bucket per source address for handshakes, in a
 * fixed-size table (memory never grows with the number of sources: when the
 * few slots a source may use are taken, the stalest is evicted, and
 * counted), a global bucket that decides whether the server is "under load"
 * (then cookies are required), and a count of half-open handshakes with a
 * cap. Deterministic given the times passed in and the hash key.
 *
 * A server asks tern_ratelimit_cookies_required() first for each initiation
 * (mac1 already checked). Cookies are required while either holds:
 *   - the global bucket ran dry less than load_cooldown_ms ago ("under
 *     load" is sticky: a flood that pauses to let the bucket refill gets no
 *     DH for it);
 *   - half-open handshakes number halfopen_max / TERN_HALFOPEN_LOAD_DIV (at
 *     least 1) or more, so sources that cannot answer a cookie never hold
 *     more slots than that and cookie-proven clients find the rest free.
 * Otherwise it takes a token with tern_ratelimit_under_load(); none left
 * means under load from now. An initiation without a valid cookie that is
 * answered with a cookie is still charged to the bucket (under_load() again,
 * its answer unused): the bucket measures the rate of unproven initiations,
 * and one above load_rate keeps it dry and the server under load. One that
 * brings a valid cookie takes no global token: its address is proven, the
 * per-source bucket and the half-open cap bound it, and a flood that keeps
 * the bucket dry must not starve it.
 *
 * ---- key files ----
 *
 * A key file holds one line: the 32-byte key in standard base64 with
 * padding (44 characters, RFC 4648 section 4), then a newline, as
 * WireGuard's. Trailing white space is accepted when reading, nothing else.
 * Private keys and PSKs are written with mode 0600 (the file is created
 * with that mode, never readable by others, even briefly); reading one that
 * the group or others may read sets *insecure (or fails with TERN_ERR_PERM
 * in strict mode). See docs/KEYS.md.
 *
 * ---- passphrase PSKs ----
 *
 * tern_psk_from_passphrase(): Argon2id (crypto_pwhash, the INTERACTIVE
 * limits: 2 passes over 64 MiB, about 0.08 s on one core of the development
 * machine) over the passphrase, with a salt bound to the Noise protocol
 * name, so both sides of an NNpsk0 handshake derive the same PSK and a PSK
 * for one protocol is useless for another. */
#ifndef TERN_CRYPTO_DOS_H
#define TERN_CRYPTO_DOS_H

#include <stdbool.h>

#include "common.h"
#include "crypto.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_MAC_BYTES 16U  /* mac1, mac2 */
#define TERN_MACS_BYTES 32U /* mac1 || mac2, at the end of a message */
#define TERN_COOKIE_BYTES 16U
#define TERN_COOKIE_NONCE_BYTES 24U
/* type (1) | receiver id (4) | nonce (24) | cookie (16) | tag (16) */
#define TERN_COOKIE_REPLY_BYTES 61U
/* How often the server replaces its cookie secret. */
#define TERN_COOKIE_SECRET_MS 120000U
/* How long a client uses a cookie: less than the secret's lifetime, minus
 * a margin for the time the reply spent in flight. */
#define TERN_COOKIE_CLIENT_TTL_MS 115000U
/* Cookies are required once half-open handshakes reach halfopen_max / 8. */
#define TERN_HALFOPEN_LOAD_DIV 8U
/* The longest address: 16 bytes of IPv6 + 2 of port. */
#define TERN_ADDR_MAX 18U

TERN_API size_t tern_cookie_reply_bytes(void);

/* A source address as opaque bytes (for example the IP address then the
 * port, in network order): crypto/ never sees a socket. Two addresses are
 * the same exactly when their len and first len bytes are. */
typedef struct tern_addr {
    uint8_t len; /* at most TERN_ADDR_MAX */
    uint8_t bytes[TERN_ADDR_MAX];
} tern_addr;

/* ---- the client side of mac1/mac2 ---- */

typedef struct tern_cookie_client tern_cookie_client;

/* Creates the MAC state for talking to the server whose static public key
 * is *server (copied). mem: NULL for malloc/free. Returns 0, or
 * TERN_ERR_INVAL, TERN_ERR_NOMEM, TERN_ERR_UNSUPPORTED (libsodium failed to
 * initialise); *out is NULL on error. */
TERN_API int tern_cookie_client_new(tern_cookie_client **out, const tern_public_key *server,
                                    const tern_mem *mem) TERN_WARN_UNUSED;
/* Wipes and frees. NULL is allowed. */
TERN_API void tern_cookie_client_del(tern_cookie_client *c);

/* Fills the last TERN_MACS_BYTES of msg (msg_len counts them): mac1, then
 * mac2 if the client holds a cookie younger than TERN_COOKIE_CLIENT_TTL_MS,
 * else 16 zero bytes. Remembers mac1, to open the cookie reply that may
 * answer this message. Returns 0, or TERN_ERR_INVAL (msg_len <
 * TERN_MACS_BYTES). */
TERN_API int tern_cookie_client_add_macs(tern_cookie_client *c, uint8_t *msg, size_t msg_len,
                                         tern_ms now);

/* Reads a COOKIE_REPLY (all of it, type byte included; the caller has
 * matched its receiver id to this handshake, see tern_cookie_reply_peek()).
 * On success the cookie is kept for mac2 from now on. Returns 0, or:
 *   TERN_ERR_MALFORMED  len is not TERN_COOKIE_REPLY_BYTES;
 *   TERN_ERR_STATE      no message was sent with tern_cookie_client_add_macs(),
 *                       or its reply was already consumed (one per message);
 *   TERN_ERR_DECRYPT    not sealed for the last message sent: forged, for
 *                       another server, or answering an older message.
 * On error the client is unchanged. */
TERN_API int tern_cookie_client_consume(tern_cookie_client *c, const uint8_t *reply, size_t len,
                                        tern_ms now) TERN_WARN_UNUSED;

/* The receiver id of a COOKIE_REPLY (the sender id of the initiation it
 * answers). TERN_ERR_MALFORMED if len is not TERN_COOKIE_REPLY_BYTES. */
TERN_API int tern_cookie_reply_peek(const uint8_t *reply, size_t len, uint32_t *receiver_id);

/* ---- the server side ---- */

typedef struct tern_cookie_server tern_cookie_server;

typedef struct tern_cookie_stats {
    uint64_t mac1_bad;        /* dropped: mac1 wrong, or too short */
    uint64_t mac2_ok;         /* messages with a valid cookie */
    uint64_t mac2_bad;        /* mac2 required and missing or wrong */
    uint64_t replies;         /* cookie replies written */
    uint64_t replies_refused; /* not written: the request was shorter than the reply */
    uint64_t rotations;       /* cookie secrets replaced */
} tern_cookie_stats;

/* Creates the server's MAC and cookie state for its static public key
 * *server (copied). random: for the cookie secrets and reply nonces, NULL
 * for randombytes_buf(). now: the time the first secret is made. Returns 0,
 * or TERN_ERR_INVAL, TERN_ERR_NOMEM, TERN_ERR_UNSUPPORTED. */
TERN_API int tern_cookie_server_new(tern_cookie_server **out, const tern_public_key *server,
                                    tern_random_fn random, void *random_user_data, tern_ms now,
                                    const tern_mem *mem) TERN_WARN_UNUSED;
TERN_API void tern_cookie_server_del(tern_cookie_server *s);

/* Checks the MACs at the end of msg (msg_len counts them) from src: mac1
 * always, mac2 only when need_mac2. Stateless: nothing is stored per
 * client. The time taken depends only on what the sender knows: whether
 * mac2 is 16 zero bytes ("no cookie": refused unhashed), and for a valid
 * mac2 which secret its cookie was made under. Returns:
 *   0                   accept: do the handshake;
 *   TERN_ERR_DECRYPT    mac1 is wrong (or msg is too short): drop silently;
 *   TERN_ERR_COOKIE     mac2 was needed and is not valid for src under the
 *                       current or the previous secret: answer with
 *                       tern_cookie_reply_write(), do no DH. */
TERN_API int tern_cookie_server_check(tern_cookie_server *s, const uint8_t *msg, size_t msg_len,
                                      const tern_addr *src, bool need_mac2,
                                      tern_ms now) TERN_WARN_UNUSED;

/* Writes the COOKIE_REPLY to the message msg (whose mac1 is checked again
 * and used as associated data) from src into out, type byte first.
 * receiver_id: the sender id of msg. Returns TERN_COOKIE_REPLY_BYTES, or:
 *   TERN_ERR_DECRYPT  msg's mac1 is wrong;
 *   TERN_ERR_MSGSIZE  msg_len < TERN_COOKIE_REPLY_BYTES (the answer would
 *                     amplify: nothing is written);
 *   TERN_ERR_NOBUFS   out_cap < TERN_COOKIE_REPLY_BYTES;
 *   TERN_ERR_INVAL    src->len > TERN_ADDR_MAX. */
TERN_API tern_ssize tern_cookie_reply_write(tern_cookie_server *s, uint8_t type,
                                            uint32_t receiver_id, const uint8_t *msg,
                                            size_t msg_len, const tern_addr *src, tern_ms now,
                                            uint8_t *out, size_t out_cap) TERN_WARN_UNUSED;

/* Bytes a server sends to an unproven address in answer to a request of
 * request_len bytes: TERN_COOKIE_REPLY_BYTES, or 0 when it would not answer
 * (request shorter than the reply). Never more than request_len. */
TERN_API size_t tern_cookie_reply_len_for(size_t request_len);

TERN_API void tern_cookie_server_get_stats(const tern_cookie_server *s, tern_cookie_stats *out);

/* ---- rate limiting ---- */

typedef struct tern_ratelimit tern_ratelimit;

typedef struct tern_ratelimit_config {
    uint32_t per_source_rate;  /* handshakes per second per source (default 20) */
    uint32_t per_source_burst; /* bucket size per source (default 5) */
    uint32_t capacity;         /* sources tracked, rounded up to a power of two
                                * (default 4096; at most 1 << 24) */
    uint32_t load_rate;        /* handshakes per second, all sources, before the
                                * server is under load (default 1000) */
    uint32_t load_burst;       /* (default 200) */
    uint32_t load_cooldown_ms; /* cookies stay required this long after the global
                                * bucket last ran dry (default 1000; 0: only
                                * while it is dry) */
    uint32_t halfopen_max;     /* half-open handshakes at once (default 1024);
                                * from halfopen_max / TERN_HALFOPEN_LOAD_DIV
                                * of them, cookies are required */
    tern_random_fn random;     /* for the table's hash key; NULL: randombytes_buf() */
    void *random_user_data;
} tern_ratelimit_config;

typedef struct tern_ratelimit_stats {
    uint64_t allowed;          /* tern_ratelimit_allow() said yes */
    uint64_t limited;          /* ... said TERN_ERR_RATE */
    uint64_t evictions;        /* a tracked source pushed out for another */
    uint64_t load_checks;      /* tern_ratelimit_under_load() calls */
    uint64_t under_load;       /* ... that said true */
    uint64_t halfopen_refused; /* tern_ratelimit_halfopen_acquire() refusals */
    uint64_t cookies_required; /* tern_ratelimit_cookies_required() said true */
    uint64_t halfopen_load;    /* ... because of the half-open count */
    uint32_t tracked;          /* sources in the table now */
    uint32_t capacity;
    uint32_t halfopen; /* half-open handshakes now */
} tern_ratelimit_stats;

TERN_API void tern_ratelimit_config_default(tern_ratelimit_config *cfg);

/* Allocates the whole table now; it never grows. Returns 0, or
 * TERN_ERR_INVAL (a zero rate, burst or capacity, capacity above 1 << 24),
 * TERN_ERR_NOMEM, TERN_ERR_UNSUPPORTED. */
TERN_API int tern_ratelimit_new(tern_ratelimit **out, const tern_ratelimit_config *cfg,
                                const tern_mem *mem) TERN_WARN_UNUSED;
TERN_API void tern_ratelimit_del(tern_ratelimit *rl);

/* Takes one handshake token from src's bucket: 0, or TERN_ERR_RATE when it
 * is empty (TERN_ERR_INVAL for a bad address). Times must not go backwards
 * (an earlier now counts as no time passing). */
TERN_API int tern_ratelimit_allow(tern_ratelimit *rl, const tern_addr *src, tern_ms now);

/* Takes one token from the global bucket; true when there is none, that is
 * the server is under load and should require cookies (mac2). A true answer
 * also starts (or restarts) the load_cooldown_ms during which
 * tern_ratelimit_cookies_required() says true. NULL rl: true. */
TERN_API bool tern_ratelimit_under_load(tern_ratelimit *rl, tern_ms now);

/* Whether an initiation must bring a valid cookie before any DH, without
 * taking a token: true while the global bucket ran dry less than
 * load_cooldown_ms before now (an earlier now counts as no time passing),
 * or while half-open handshakes number halfopen_max / TERN_HALFOPEN_LOAD_DIV
 * (at least 1) or more. false: ask tern_ratelimit_under_load() next. NULL
 * rl: true. */
TERN_API bool tern_ratelimit_cookies_required(tern_ratelimit *rl, tern_ms now);

/* A half-open handshake starts (0) or is refused (TERN_ERR_RATE, at
 * halfopen_max); release it when it completes or is abandoned. */
TERN_API int tern_ratelimit_halfopen_acquire(tern_ratelimit *rl);
TERN_API void tern_ratelimit_halfopen_release(tern_ratelimit *rl);

TERN_API void tern_ratelimit_get_stats(const tern_ratelimit *rl, tern_ratelimit_stats *out);

/* ---- key files ---- */

/* 44 base64 characters (a NUL follows in the buffers below). */
#define TERN_KEY_BASE64_LEN 44U

/* Flags for tern_keyfile_*. */
#define TERN_KEYFILE_STRICT 1U    /* read: group/other access is TERN_ERR_PERM */
#define TERN_KEYFILE_OVERWRITE 2U /* write: replace an existing file (atomically) */

/* base64 of a key, NUL-terminated. key and out must not be NULL. */
TERN_API void tern_key_to_base64(const tern_key *key, char out[TERN_KEY_BASE64_LEN + 1]);
TERN_API void tern_public_key_to_base64(const tern_public_key *key,
                                        char out[TERN_KEY_BASE64_LEN + 1]);
/* Parses exactly TERN_KEY_BASE64_LEN canonical base64 characters (len must
 * be that). Returns 0 or TERN_ERR_INVAL (out untouched). */
TERN_API int tern_key_from_base64(tern_key *out, const char *s, size_t len) TERN_WARN_UNUSED;
TERN_API int tern_public_key_from_base64(tern_public_key *out, const char *s,
                                         size_t len) TERN_WARN_UNUSED;

/* Reads a private key or PSK file. err (may be NULL) receives a one-line
 * message naming the file on error, or the warning when *insecure is set.
 * Returns 0 (with *insecure set when the group or others may read the file;
 * insecure may be NULL), or:
 *   TERN_ERR_IO     the file cannot be opened or read, or is not a
 *                   regular file;
 *   TERN_ERR_INVAL  the content is not one base64 key;
 *   TERN_ERR_PERM   with TERN_KEYFILE_STRICT, the file is group/other accessible.
 * The key is wiped from every buffer but *out. */
TERN_API int tern_keyfile_read_secret(const char *path, tern_key *out, unsigned flags,
                                      bool *insecure, char *err, size_t err_cap) TERN_WARN_UNUSED;
/* Reads a public key file (no permission check). Errors as above. */
TERN_API int tern_keyfile_read_public(const char *path, tern_public_key *out, char *err,
                                      size_t err_cap) TERN_WARN_UNUSED;
/* Writes a private key or PSK file with mode 0600: created with O_EXCL, or
 * with TERN_KEYFILE_OVERWRITE written beside it and renamed over it.
 * Returns 0, or TERN_ERR_IO (exists without OVERWRITE, or any system
 * error; nothing is left behind), TERN_ERR_INVAL (NULL argument). */
TERN_API int tern_keyfile_write_secret(const char *path, const tern_key *key, unsigned flags,
                                       char *err, size_t err_cap) TERN_WARN_UNUSED;

/* ---- passphrase PSKs ---- */

/* The 16-byte salt: the first 16 bytes of BLAKE2b-512("tern psk salt" ||
 * protocol). */
#define TERN_PSK_SALT_BYTES 16U

/* *out = Argon2id(passphrase, salt(protocol)) with libsodium's INTERACTIVE
 * limits. protocol: the Noise protocol name both sides use. Returns 0, or
 * TERN_ERR_INVAL (NULL argument, empty passphrase), TERN_ERR_NOMEM (the 64
 * MiB could not be allocated), TERN_ERR_UNSUPPORTED. */
TERN_API int tern_psk_from_passphrase(tern_key *out, const char *passphrase, size_t len,
                                      const char *protocol) TERN_WARN_UNUSED;

#ifdef __cplusplus
}
#endif
#endif /* TERN_CRYPTO_DOS_H */
