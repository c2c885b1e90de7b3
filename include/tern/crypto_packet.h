/* tern: encrypted DATA packets after a Noise handshake, sans-I/O.
 *
 * A tern_crypto_session holds one sending and one receiving key (from the
 * handshake's Split(): the initiator sends with the first half, the
 * responder with the second), a 64-bit packet counter per direction, and a
 * replay window for the receiving direction. Each packet is
 *
 *   type|phase (1) | receiver session id (4, LE) | counter (8, LE)
 *   | AEAD ciphertext of the payload | tag (16)
 *
 * with the whole 13-byte clear header as associated data and the counter as
 * the AEAD nonce, laid out as Noise lays out its nonces (docs/PROTOCOL.md,
 * "Encrypted DATA packets", has the layout byte by byte).
 *
 * Counters start at 0 and run on across rekeys; no counter is ever sealed
 * twice in a direction, and a session refuses to seal once they run out
 * (2^64 - 1 is reserved). The receiver accepts each counter at most once:
 * an RFC 6479 window of TERN_PACKET_REPLAY_WINDOW counters below the highest
 * seen, updated only after a packet has authenticated.
 *
 * Rekeying, without a round trip: each direction's key is replaced by
 * Noise's Rekey() of itself, k' = the first 32 bytes of
 * ENCRYPT(k, 2^64 - 1, empty ad, 32 zero bytes), and the key-phase bit of
 * the type byte flips. The sender rekeys on its own, before sealing, once
 * the key has sealed rekey_after_packets packets or was installed
 * rekey_after_ms ago (or when asked: tern_crypto_session_rekey()). The
 * receiver, seeing the other phase on a packet whose counter is at or above
 * the one that installed its current key, tries the next key; if the packet
 * authenticates it switches to that key and keeps the previous one for
 * old_key_grace_ms, for packets reordered across the switch. After that
 * grace, packets under the previous key fail with TERN_ERR_EXPIRED.
 *
 * A sender may rekey more than once while every packet of a generation is
 * lost (a partition), so the receiver keeps the keys of the next
 * TERN_PACKET_REKEY_LOOKAHEAD generations derived in advance. A packet
 * whose counter is above every counter opened so far (so it cannot be a
 * late packet of the current generation) and that fails under the key its
 * phase names first (the current key for the same phase, the next for the
 * other) gets one more try: two generations further (the current key + 2,
 * or + 3). So a packet costs at most two AEAD attempts, the second counted
 * in lookahead_tries. On success the receiver jumps to that generation
 * (rekeys_skipped counts the generations it jumped past), and the one just
 * before it becomes the previous key, with the usual grace; late packets of
 * older generations then fail to authenticate. A gap of more than
 * TERN_PACKET_REKEY_LOOKAHEAD generations is not bridged: every later
 * packet of that direction fails authentication until the session ends
 * (the transport's idle or dead-link timeout ends it). With the defaults
 * even a jump of two needs every packet of a whole generation lost: 120 s
 * of them (the time rekey; the transport pings every 5 s), or 2^22 AES-GCM
 * packets; the transport ends a session that hears nothing for 30 s first.
 * So the lookahead matters for shorter rekey settings and for senders that
 * send rarely and have no keepalive.
 *
 * Hard limits: a key that has sealed reject_after_packets packets, or that
 * was installed reject_after_ms ago, is never used again, by either side;
 * with automatic rekeying on (the default) they are reached only if the
 * rekey thresholds are set above them. A sender that hits one gets
 * TERN_ERR_EXPIRED: the session needs a new handshake.
 *
 * Forward secrecy: Rekey() is one-way, and the old key is wiped once
 * replaced (the receiver's after the grace), so a later key compromise does
 * not expose earlier packets. A compromise does expose later ones until the
 * next handshake.
 *
 * Time is the caller's tern_ms (common.h); nothing reads a clock. Objects
 * are not thread-safe. Errors every call may return besides those listed:
 * TERN_ERR_INVAL for a NULL handle or NULL buffer with a non-zero length. */
#ifndef TERN_CRYPTO_PACKET_H
#define TERN_CRYPTO_PACKET_H

#include <stdbool.h>

#include "common.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The type byte's low 7 bits name an encrypted DATA packet; its top bit is
 * the key phase. */
#define TERN_PACKET_TYPE_DATA 0x04U
#define TERN_PACKET_KEY_PHASE 0x80U
#define TERN_PACKET_HEADER_BYTES 13U /* type, receiver id, counter */
#define TERN_PACKET_OVERHEAD 29U     /* header + the 16-byte tag */
#define TERN_PACKET_MAX 65535U       /* a whole packet, header and tag included */
#define TERN_PACKET_PAYLOAD_MAX (TERN_PACKET_MAX - TERN_PACKET_OVERHEAD)
#define TERN_PACKET_REPLAY_WINDOW 4032U /* counters accepted below the highest */
/* Key generations the receiver can jump ahead by when every packet of the
 * ones between was lost. 3 is the most that two AEAD attempts per packet
 * reach (the same phase: + 0, then + 2; the other: + 1, then + 3). */
#define TERN_PACKET_REKEY_LOOKAHEAD 3U

/* The rekeying defaults (milliseconds, packets). The packet limits depend on
 * the AEAD: ChaCha20-Poly1305 has no practical confidentiality limit, so
 * WireGuard's 2^60 is used; AES-256-GCM follows RFC 9001, section 6.6 (at
 * most 2^23 packets per key), rekeying at half of that. */
#define TERN_PACKET_REKEY_AFTER_MS 120000U
#define TERN_PACKET_REJECT_AFTER_MS 180000U
#define TERN_PACKET_OLD_KEY_GRACE_MS 3000U
#define TERN_PACKET_CHACHA_REKEY_AFTER (UINT64_C(1) << 60)
#define TERN_PACKET_CHACHA_REJECT_AFTER (UINT64_C(1) << 61)
#define TERN_PACKET_AESGCM_REKEY_AFTER (UINT64_C(1) << 22)
#define TERN_PACKET_AESGCM_REJECT_AFTER (UINT64_C(1) << 23)

TERN_API size_t tern_packet_overhead(void);

/* The AEAD of raw keys (tern_crypto_session_new_from_keys()). A session made
 * from a handshake uses the handshake's. */
typedef enum tern_aead {
    TERN_AEAD_CHACHAPOLY = 0, /* ChaCha20-Poly1305 IETF */
    TERN_AEAD_AESGCM = 1      /* AES-256-GCM, where tern_crypto_aesgcm_available() */
} tern_aead;

/* Which library computes the packet AEAD. Both give the same bytes (tests
 * check each against the other); OpenSSL's, where tern was built with it
 * (TERN_OPENSSL), is the faster on x86-64. AUTO: OpenSSL if built in, else
 * libsodium. The handshake always uses libsodium. */
typedef enum tern_aead_impl {
    TERN_AEAD_IMPL_AUTO = 0,
    TERN_AEAD_IMPL_LIBSODIUM = 1,
    TERN_AEAD_IMPL_OPENSSL = 2
} tern_aead_impl;

/* Whether this build can use impl (AUTO and LIBSODIUM always). */
TERN_API bool tern_aead_impl_available(tern_aead_impl impl);

typedef struct tern_crypto_session tern_crypto_session;

typedef struct tern_crypto_session_config {
    /* This side's session id (the receiver id on packets sent to us) and the
     * peer's (written on packets we send). Chosen by the transport. */
    uint32_t local_id;
    uint32_t remote_id;
    /* Automatic rekey of the sending key: after this many packets (0: the
     * AEAD's default above; UINT64_MAX: never) or this long after the key
     * was installed (UINT64_MAX: never). */
    uint64_t rekey_after_packets;
    tern_ms rekey_after_ms;
    /* Hard limits per key, both directions (0 packets: the AEAD's
     * default above; UINT64_MAX: none). */
    uint64_t reject_after_packets;
    tern_ms reject_after_ms;
    /* How long the receiver keeps the previous key after switching. */
    tern_ms old_key_grace_ms;
    /* Which library seals and opens (UNSUPPORTED at creation if this build
     * lacks it). */
    tern_aead_impl aead_impl;
} tern_crypto_session_config;

/* The defaults: the ids 0, the limits above. */
TERN_API void tern_crypto_session_config_default(tern_crypto_session_config *cfg);

typedef struct tern_crypto_session_stats {
    uint64_t sealed;              /* packets sealed */
    uint64_t opened;              /* packets that authenticated and were delivered */
    uint64_t opened_old_key;      /* of those, under the previous key, in its grace */
    uint64_t auth_failures;       /* AEAD failures: tampered, forged, wrong key */
    uint64_t replays;             /* counters already accepted */
    uint64_t too_old;             /* counters behind the replay window */
    uint64_t expired;             /* packets under a key past its grace or hard limit,
                                     and seals refused at a hard limit */
    uint64_t malformed;           /* too short, wrong type, reserved counter */
    uint64_t wrong_id;            /* receiver id not ours */
    uint64_t rekeys_sent;         /* sending key replaced */
    uint64_t rekeys_received;     /* generations the receiving key moved on (a jump of k
                                     counts k), so equal to recv_key_generation */
    uint64_t rekeys_skipped;      /* of those, generations jumped past: no packet of
                                     theirs had opened (lost, or a partition) */
    uint64_t lookahead_tries;     /* second AEAD attempts, two generations ahead of
                                     the first key tried (see above) */
    uint64_t send_key_generation; /* rekeys of each direction so far */
    uint64_t recv_key_generation;
    uint64_t next_send_counter;
} tern_crypto_session_stats;

struct tern_noise;

/* A session from a handshake in state TERN_NOISE_SPLIT: calls
 * tern_noise_split() (after which only its hash and remote key remain) and
 * takes the keys; hs is not freed. The config is copied (NULL: defaults;
 * the ids then are 0). now: the time the keys are installed. mem: allocator
 * hooks, NULL for malloc/free (copied). Returns 0 and sets *out, or, with
 * *out set to NULL:
 *   TERN_ERR_STATE   hs is not ready to split (or already split);
 *   TERN_ERR_INVAL   a limit of 0 where only non-zero makes sense
 *                    (rekey_after_ms, reject_after_ms);
 *   TERN_ERR_NOMEM   the allocator failed (hs is then unchanged). */
TERN_API int tern_crypto_session_new(tern_crypto_session **out, struct tern_noise *hs,
                                     const tern_crypto_session_config *cfg, const tern_mem *mem,
                                     tern_ms now) TERN_WARN_UNUSED;

/* The same from raw 32-byte keys (from another key exchange, or tests).
 * The keys are copied; the caller wipes its own. Also TERN_ERR_UNSUPPORTED
 * for AES-GCM on a CPU without AES-NI, TERN_ERR_INVAL for another aead. */
TERN_API int tern_crypto_session_new_from_keys(tern_crypto_session **out, tern_aead aead,
                                               const uint8_t send_key[32],
                                               const uint8_t recv_key[32],
                                               const tern_crypto_session_config *cfg,
                                               const tern_mem *mem, tern_ms now) TERN_WARN_UNUSED;

/* Wipes every key, counter and window, then frees. NULL is allowed. */
TERN_API void tern_crypto_session_del(tern_crypto_session *s);

/* Seals payload into out as one DATA packet (rekeying first if a trigger
 * is due). out must not overlap payload. Returns the packet length,
 * payload_len + TERN_PACKET_OVERHEAD, or:
 *   TERN_ERR_MSGSIZE  payload_len exceeds TERN_PACKET_PAYLOAD_MAX;
 *   TERN_ERR_NOBUFS   out_cap is too small;
 *   TERN_ERR_EXPIRED  the sending key reached a hard limit, or the counters
 *                     ran out: nothing more can be sent, a new handshake
 *                     is needed.
 * On error nothing is consumed (no counter, no rekey). */
TERN_API tern_ssize tern_crypto_session_seal(tern_crypto_session *s, const uint8_t *payload,
                                             size_t payload_len, uint8_t *out, size_t out_cap,
                                             tern_ms now) TERN_WARN_UNUSED;

/* Opens one DATA packet into out (which must not overlap pkt). The header
 * is parsed and checked, the counter checked against the replay window,
 * then the payload authenticated (under at most two keys, see above); only
 * then is the counter recorded and, for a packet of a later key generation,
 * the receiving key switched. Returns the payload length, or:
 *   TERN_ERR_MSGSIZE    pkt_len exceeds TERN_PACKET_MAX;
 *   TERN_ERR_MALFORMED  shorter than TERN_PACKET_OVERHEAD, not a DATA type,
 *                       or the reserved counter 2^64 - 1;
 *   TERN_ERR_NOBUFS     out_cap is smaller than the payload;
 *   TERN_ERR_CONV       the receiver id is not this session's local_id;
 *   TERN_ERR_REPLAY     the counter was accepted before, or is behind the
 *                       window;
 *   TERN_ERR_EXPIRED    under the previous key after its grace, or under a
 *                       key past its hard limit (and not under the one two
 *                       generations ahead either);
 *   TERN_ERR_DECRYPT    authentication failed (tampered, forged, or under a
 *                       key this session does not have: a late packet of a
 *                       generation jumped past, or one more than
 *                       TERN_PACKET_REKEY_LOOKAHEAD generations ahead).
 * On any error the session is unchanged except its stats, and the bytes of
 * out the payload would have filled (up to out_cap) are zeroed. */
TERN_API tern_ssize tern_crypto_session_open(tern_crypto_session *s, const uint8_t *pkt,
                                             size_t pkt_len, uint8_t *out, size_t out_cap,
                                             tern_ms now) TERN_WARN_UNUSED;

/* Replaces the sending key now (the next packet carries the other phase).
 * Returns 0. */
TERN_API int tern_crypto_session_rekey(tern_crypto_session *s, tern_ms now);

/* Copies the counters into *out. */
TERN_API void tern_crypto_session_get_stats(const tern_crypto_session *s,
                                            tern_crypto_session_stats *out);

/* The receiver id of a DATA packet, without any key (for routing a
 * datagram to its session). Returns 0, or TERN_ERR_MALFORMED (too short or
 * not DATA). */
TERN_API int tern_packet_peek_receiver(const uint8_t *pkt, size_t pkt_len, uint32_t *id);

#ifdef __cplusplus
}
#endif
#endif /* TERN_CRYPTO_PACKET_H */
