/* Session establishment: HANDSHAKE_INIT, HANDSHAKE_RESP and COOKIE_REPLY.
 *
 *   client                                   server
 *   INIT (sender id, Noise msg 1, mac1, mac2) ->
 *                                            mac1 ok? under load and no valid
 *                                            mac2 -> COOKIE_REPLY
 *                                            per-source rate, half-open limit
 *                                            Noise read (DH), allow-list
 *   <- RESP (sender id, receiver id, Noise msg 2)      session half-open
 *   DATA (first frames: a PING)               ->       session open, accept_cb
 *
 * The server spends DH only on an INIT whose mac1 proves knowledge of its
 * public key (or PSK), and when under load only on one that also echoes a
 * cookie bound to the source address. Under load is sticky (for the
 * ratelimit's load_cooldown_ms after the global bucket last ran dry) and
 * also holds while the half-open table is an eighth full, so spoofed
 * sources get at most the detection burst of DH and of half-open slots
 * (see tern/crypto_dos.h). Before the first DATA proves the
 * client owns its address, the server sends it at most one RESP or COOKIE
 * per INIT, each smaller than the INIT: amplification below one. Plaintext
 * sessions run the same exchange with no Noise message. */
#include <sodium.h>
#include <string.h>

#include "crypto/cookie_internal.h"
#include "crypto/packet_internal.h"
#include "transport/internal.h"

#define NOISE_RESP_BYTES 48U /* e, empty payload + tag: every pattern we offer */

size_t tern_ep_noise_init_bytes(const tern_endpoint *ep)
{
    if (ep->cfg.security != TERN_SECURITY_NOISE)
        return 0;
    /* e, then for IK the encrypted static key (32 + 16), then the empty
     * payload's tag. */
    const char *p = ep->cfg.noise.pattern;
    return (strncmp(p, "IK", 2) == 0) ? 96U : 48U;
}

static size_t resp_noise_bytes(const tern_endpoint *ep)
{
    return ep->cfg.security == TERN_SECURITY_NOISE ? NOISE_RESP_BYTES : 0;
}

static bool pattern_is(const tern_endpoint *ep, const char *name)
{
    return strcmp(ep->cfg.noise.pattern, name) == 0;
}

int tern_ep_new_noise(tern_endpoint *ep, bool initiator, tern_noise **out)
{
    tern_noise_config nc;
    tern_noise_config_default(&nc);
    nc.protocol = ep->protocol;
    nc.initiator = initiator;
    static const uint8_t prologue[] = "tern/1";
    nc.prologue = prologue;
    nc.prologue_len = sizeof(prologue) - 1;
    bool ik = pattern_is(ep, "IK") || pattern_is(ep, "IKpsk2");
    bool nk = pattern_is(ep, "NK");
    if (initiator) {
        if (ik)
            nc.s = &ep->static_key;
        if (ik || nk)
            nc.rs = &ep->server_public;
    } else if (ik || nk) {
        nc.s = &ep->static_key;
    }
    if (ep->has_psk)
        nc.psk = &ep->psk;
    return tern_noise_new(out, &nc, &ep->mem);
}

/* ---- client ---- */

int tern_ep_client_send_init(tern_session *s, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    int rc = tern_cookie_client_add_macs(s->cookie, s->hs_msg, TERN_WIRE_INIT_BYTES, now);
    if (rc < 0)
        return rc;
    tern_ep_send_raw(ep, s->hs_msg, TERN_WIRE_INIT_BYTES, (const struct sockaddr *)&s->peer);
    s->stats.dgrams_out++;
    s->stats.bytes_out += TERN_WIRE_INIT_BYTES;
    return 0;
}

/* Starts (or restarts, with a fresh ephemeral key) the handshake with the
 * current server address. */
int tern_ep_client_start(tern_session *s, tern_ms now)
{
    tern_endpoint *ep = s->ep;
    memcpy(&s->peer, &s->addrs[s->addr_index], sizeof(s->peer));
    tern_noise_del(s->hs);
    s->hs = NULL;
    memset(s->hs_msg, 0, sizeof(s->hs_msg));
    s->hs_msg[0] = TERN_WIRE_INIT;
    s->hs_msg[1] = TERN_WIRE_VERSION;
    tern_wire_put32(s->hs_msg + 2, s->local_id);
    if (ep->cfg.security == TERN_SECURITY_NOISE) {
        int rc = tern_ep_new_noise(ep, true, &s->hs);
        if (rc < 0)
            return rc;
        tern_ssize n = tern_noise_write_message(s->hs, NULL, 0, s->hs_msg + TERN_WIRE_INIT_HEADER,
                                                TERN_WIRE_NOISE_MAX);
        if (n < 0)
            return (int)n;
    }
    if (!s->cookie) {
        int rc = tern_cookie_client_new(&s->cookie, &ep->mac_key, &ep->mem);
        if (rc < 0)
            return rc;
    }
    s->hs_len = TERN_WIRE_INIT_BYTES;
    s->hs_retry_ms = ep->cfg.handshake_retry_ms;
    s->hs_retry_at = now + s->hs_retry_ms;
    s->hs_deadline = now + ep->cfg.handshake_timeout_ms;
    tern_ep_reschedule(s);
    return tern_ep_client_send_init(s, now);
}

int tern_ep_client_next_address(tern_session *s, tern_ms now)
{
    if (s->addr_index + 1 >= s->n_addrs)
        return TERN_ERR_TIMEDOUT;
    s->addr_index++;
    tern_ep_trace(s->ep, TERN_TRACE_PATH_CHANGE, s, (int64_t)s->addr_index, 0);
    return tern_ep_client_start(s, now);
}

static bool same_addr(const struct sockaddr *a, const struct sockaddr_storage *b)
{
    tern_addr x, y;
    tern_ep_addr_bytes(a, &x);
    tern_ep_addr_bytes((const struct sockaddr *)b, &y);
    return x.len == y.len && memcmp(x.bytes, y.bytes, x.len) == 0;
}

void tern_ep_handle_resp(tern_endpoint *ep, const uint8_t *p, size_t len,
                         const struct sockaddr *from, tern_ms now)
{
    if (len != TERN_WIRE_RESP_HEADER + resp_noise_bytes(ep)) {
        ep->stats.drop_malformed++;
        return;
    }
    uint32_t sender = tern_wire_get32(p + 1);
    tern_session *s = tern_map_get(&ep->by_id, tern_wire_get32(p + 5));
    if (!s || !s->is_client || s->state != SESSION_CONNECTING || !same_addr(from, &s->peer) ||
        sender == 0) {
        ep->stats.drop_unknown_session++;
        return;
    }
    s->remote_id = sender;
    if (ep->cfg.security == TERN_SECURITY_NOISE) {
        tern_ssize n = tern_noise_read_message(s->hs, p + TERN_WIRE_RESP_HEADER,
                                               len - TERN_WIRE_RESP_HEADER, NULL, 0);
        if (n < 0) {
            /* A forged or mangled answer: wait for the real one. The
             * handshake state is spent, so start over with a new key. */
            ep->stats.drop_auth++;
            s->stats.drop_auth++;
            (void)tern_ep_client_start(s, now);
            return;
        }
        tern_crypto_session_config cc;
        tern_crypto_session_config_default(&cc);
        cc.local_id = s->local_id;
        cc.remote_id = s->remote_id;
        if (tern_noise_get_remote_static(s->hs, &s->peer_key) == 0)
            s->has_peer_key = true;
        cc.aead_impl = ep->cfg.aead_impl;
        int rc = tern_crypto_session_new(&s->crypto, s->hs, &cc, &ep->mem, now);
        if (rc == 0)
            tern_packet_share_aead(s->crypto, &ep->seal_aead, &ep->open_aead);
        tern_noise_del(s->hs);
        s->hs = NULL;
        if (rc < 0) {
            tern_session_end(s, rc, 0, now);
            return;
        }
    }
    s->stats.dgrams_in++;
    s->stats.bytes_in += len;
    tern_session_established(s, now);
    if (s->state != SESSION_DEAD)
        tern_ep_reschedule(s);
}

void tern_ep_handle_cookie(tern_endpoint *ep, const uint8_t *p, size_t len,
                           const struct sockaddr *from, tern_ms now)
{
    uint32_t id;
    if (tern_cookie_reply_peek(p, len, &id) < 0) {
        ep->stats.drop_malformed++;
        return;
    }
    tern_session *s = tern_map_get(&ep->by_id, id);
    if (!s || !s->is_client || s->state != SESSION_CONNECTING || !same_addr(from, &s->peer)) {
        ep->stats.drop_unknown_session++;
        return;
    }
    if (tern_cookie_client_consume(s->cookie, p, len, now) < 0) {
        ep->stats.drop_auth++;
        return;
    }
    /* Answer at once with the cookie in mac2. */
    (void)tern_ep_client_send_init(s, now);
}

/* ---- server ---- */

static bool peer_allowed(const tern_endpoint *ep, const tern_public_key *key)
{
    if (!ep->allowed)
        return true;
    for (size_t i = 0; i < ep->n_allowed; i++) {
        if (sodium_memcmp(ep->allowed[i].b, key->b, sizeof(key->b)) == 0)
            return true;
    }
    return false;
}

static uint32_t fresh_id(tern_endpoint *ep)
{
    for (;;) {
        uint32_t id = randombytes_random();
        if (id != 0 && !tern_map_get(&ep->by_id, id))
            return id;
    }
}

void tern_ep_handle_init(tern_endpoint *ep, const uint8_t *p, size_t len,
                         const struct sockaddr *from, tern_ms now)
{
    ep->stats.bytes_recv_unvalidated += len;
    if (!ep->listening || ep->closing) {
        ep->stats.drop_unknown_session++;
        return;
    }
    if (len != TERN_WIRE_INIT_BYTES || p[1] != TERN_WIRE_VERSION) {
        ep->stats.drop_malformed++;
        return;
    }
    uint32_t sender = tern_wire_get32(p + 2);
    if (sender == 0) {
        ep->stats.drop_malformed++;
        return;
    }
    tern_addr src;
    tern_ep_addr_bytes(from, &src);

    /* 1. mac1: costs a hash, rules out anyone who does not know the key. */
    tern_cookie_msg cm; /* mac1's verdict, for mac2 and the reply: one hash each */
    int rc = tern_cookie_server_mac1(ep->cookie_server, &cm, p, len, &src);
    if (rc < 0) {
        ep->stats.drop_auth++;
        return;
    }
    /* A repeated INIT of a handshake in progress gets the same RESP. */
    uint64_t key = tern_ep_hash_key(ep, from, sender, 'I');
    tern_session *dup = tern_map_get(&ep->by_key, key);
    if (dup) {
        if (dup->state == SESSION_HALFOPEN && dup->hs_len > 0) {
            tern_ep_send_raw(ep, dup->hs_msg, dup->hs_len, from);
            ep->stats.bytes_sent_unvalidated += dup->hs_len;
        }
        return;
    }
    /* 2. Under load, only initiations that echo a cookie proving the
     * source address go on; the others get a cookie and cost no state. A
     * token is taken only when cookies are not already required: a proven
     * INIT must not compete with a flood for the global bucket. */
    bool charged = false, proven = false;
    bool need_cookie = tern_ratelimit_cookies_required(ep->ratelimit, now);
    if (!need_cookie) {
        need_cookie = tern_ratelimit_under_load(ep->ratelimit, now);
        charged = true;
    }
    if (need_cookie) {
        rc = tern_cookie_server_mac2(ep->cookie_server, &cm, now);
        if (rc == TERN_ERR_COOKIE) {
            /* Unproven demand drains the bucket even while cookies are
             * required, so a flood above load_rate keeps the server under
             * load for as long as it lasts. */
            if (!charged)
                (void)tern_ratelimit_under_load(ep->ratelimit, now);
            uint8_t reply[TERN_COOKIE_REPLY_BYTES];
            tern_ssize n = tern_cookie_server_reply(ep->cookie_server, &cm, TERN_WIRE_COOKIE,
                                                    sender, now, reply, sizeof(reply));
            if (n > 0) {
                tern_ep_send_raw(ep, reply, (size_t)n, from);
                ep->stats.cookies_sent++;
                ep->stats.bytes_sent_unvalidated += (uint64_t)n;
            }
            return;
        }
        if (rc < 0) {
            ep->stats.drop_auth++;
            return;
        }
        proven = true;
    }
    /* 3. Per source, then the global caps. */
    if (tern_ratelimit_allow(ep->ratelimit, &src, now) < 0) {
        ep->stats.drop_ratelimited++;
        return;
    }
    if (ep->n_sessions >= ep->cfg.max_sessions) {
        ep->stats.drop_limit++;
        ep->stats.sessions_refused++;
        return;
    }
    if (tern_ratelimit_halfopen_acquire(ep->ratelimit) < 0) {
        ep->stats.drop_limit++;
        ep->stats.sessions_refused++;
        return;
    }
    tern_session *s;
    if (tern_session_create(ep, false, &s) < 0) {
        tern_ratelimit_halfopen_release(ep->ratelimit);
        return;
    }
    s->halfopen_held = true;
    ep->n_halfopen++;
    s->state = SESSION_HALFOPEN;
    s->remote_id = sender;
    s->local_id = fresh_id(ep);
    s->hs_started = now;
    s->hs_deadline = now + ep->cfg.handshake_timeout_ms;
    memcpy(&s->peer, from, tern_ep_addr_len(from));
    s->peer_addr = src;

    /* 4. The DH work, counted by whether the source proved its address. */
    if (proven)
        ep->stats.handshakes_cookie++;
    else
        ep->stats.handshakes_unproven++;
    uint8_t *resp = s->hs_msg;
    resp[0] = TERN_WIRE_RESP;
    tern_wire_put32(resp + 1, s->local_id);
    tern_wire_put32(resp + 5, sender);
    if (ep->cfg.security == TERN_SECURITY_NOISE) {
        size_t n1 = tern_ep_noise_init_bytes(ep);
        tern_noise *hs = NULL;
        rc = tern_ep_new_noise(ep, false, &hs);
        if (rc == 0 && tern_noise_read_message(hs, p + TERN_WIRE_INIT_HEADER, n1, NULL, 0) < 0)
            rc = TERN_ERR_DECRYPT;
        if (rc == 0 && tern_noise_get_remote_static(hs, &s->peer_key) == 0) {
            s->has_peer_key = true;
            if (!peer_allowed(ep, &s->peer_key))
                rc = TERN_ERR_PERM;
        }
        tern_ssize n2 = 0;
        if (rc == 0) {
            n2 = tern_noise_write_message(hs, NULL, 0, resp + TERN_WIRE_RESP_HEADER,
                                          NOISE_RESP_BYTES);
            if (n2 < 0)
                rc = (int)n2;
        }
        if (rc == 0) {
            tern_crypto_session_config cc;
            tern_crypto_session_config_default(&cc);
            cc.local_id = s->local_id;
            cc.remote_id = sender;
            cc.aead_impl = ep->cfg.aead_impl;
            rc = tern_crypto_session_new(&s->crypto, hs, &cc, &ep->mem, now);
            if (rc == 0)
                tern_packet_share_aead(s->crypto, &ep->seal_aead, &ep->open_aead);
        }
        tern_noise_del(hs);
        if (rc < 0) {
            if (rc == TERN_ERR_PERM)
                ep->stats.drop_peer_refused++;
            else
                ep->stats.drop_auth++;
            s->state = SESSION_DEAD;
            tern_ratelimit_halfopen_release(ep->ratelimit);
            s->halfopen_held = false;
            ep->n_halfopen--;
            tern_session_destroy(s);
            return;
        }
        s->hs_len = TERN_WIRE_RESP_HEADER + (size_t)n2;
    } else {
        s->hs_len = TERN_WIRE_RESP_HEADER;
    }
    if (tern_map_put(&ep->by_id, s->local_id, s) < 0 || tern_map_put(&ep->by_key, key, s) < 0) {
        tern_map_del(&ep->by_id, s->local_id);
        s->state = SESSION_DEAD;
        tern_ratelimit_halfopen_release(ep->ratelimit);
        s->halfopen_held = false;
        ep->n_halfopen--;
        tern_session_destroy(s);
        return;
    }
    s->by_key = key;
    tern_ep_trace(ep, TERN_TRACE_SESSION_OPENED, s, 0, 0);
    tern_ep_send_raw(ep, resp, s->hs_len, from);
    ep->stats.bytes_sent_unvalidated += s->hs_len;
    tern_ep_reschedule(s);
}
