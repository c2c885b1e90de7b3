/* Endpoint configuration, creation, connect, listen and the asynchronous
 * close. */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "transport/internal.h"

void tern_endpoint_config_default(tern_endpoint_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->security = TERN_SECURITY_NOISE;
    tern_kcp_settings_default(&cfg->kcp);
    /* Classic KCP and kcptun run without a congestion window (nc=1): the
     * send window is the limit. "reno" is one setting away. */
    cfg->kcp.cc = tern_kcp_cc_find("none");
    cfg->mtu = 1400;
    cfg->max_sessions = 4096;
    cfg->max_streams = 256;
    cfg->stream_write_max = 4U << 20;
    cfg->message_max = 64U << 10;
    cfg->reassembly_max = 256U << 10;
    cfg->handshake_timeout_ms = 5000;
    cfg->handshake_retry_ms = 500;
    cfg->keepalive_ms = 5000;
    cfg->idle_timeout_ms = 30000;
    cfg->linger_ms = 5000;
    tern_ratelimit_config_default(&cfg->ratelimit);
    /* The OS default (208 KiB on Linux) drops bursts of a 1024-segment
     * window even on loopback; the kernel caps what it grants at
     * net.core.rmem_max / wmem_max. */
    cfg->sndbuf = cfg->rcvbuf = 4 << 20;
    cfg->dscp = -1;
}

static const char *const patterns[] = {"NK", "IK", "IKpsk2", "NNpsk0"};

static int check_config(const tern_endpoint_config *cfg)
{
    if (cfg->security > TERN_SECURITY_KCP_COMPAT)
        return TERN_ERR_INVAL;
    if (cfg->mtu < 576 || cfg->mtu > 65507)
        return TERN_ERR_RANGE;
    if (cfg->n_channels > TERN_CHANNELS_MAX || cfg->max_sessions == 0 || cfg->max_streams == 0 ||
        cfg->message_max == 0 || cfg->message_max > (16U << 20) || cfg->handshake_timeout_ms == 0 ||
        cfg->handshake_retry_ms == 0 || cfg->stream_write_max == 0 ||
        cfg->reassembly_max < cfg->message_max)
        return TERN_ERR_RANGE;
    if (cfg->dscp > 63)
        return TERN_ERR_RANGE;
    if (cfg->aead_impl != TERN_AEAD_IMPL_AUTO && cfg->aead_impl != TERN_AEAD_IMPL_LIBSODIUM &&
        cfg->aead_impl != TERN_AEAD_IMPL_OPENSSL)
        return TERN_ERR_INVAL;
    if (!tern_aead_impl_available(cfg->aead_impl))
        return TERN_ERR_UNSUPPORTED;
    for (uint32_t c = 0; c < cfg->n_channels; c++) {
        const tern_channel_config *ch = &cfg->channels[c];
        if (ch->kind > TERN_CHANNEL_UNRELIABLE_SEQUENCED || ch->priority >= TERN_PRIORITY_LEVELS ||
            ch->weight < 1 || ch->weight > 1000)
            return TERN_ERR_RANGE;
    }
    tern_kcp_settings ks = cfg->kcp;
    ks.mtu = cfg->mtu - TERN_PACKET_OVERHEAD - TERN_FRAME_KCP_HEADER;
    int rc = tern_kcp_settings_check(&ks);
    if (rc < 0)
        return rc;
    if (cfg->security != TERN_SECURITY_NOISE)
        return 0;
    const tern_noise_setup *n = &cfg->noise;
    const char *pattern = n->pattern ? n->pattern : "NK";
    bool known = false;
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
        known |= strcmp(pattern, patterns[i]) == 0;
    if (!known)
        return TERN_ERR_UNSUPPORTED;
    if (n->cipher && strcmp(n->cipher, "ChaChaPoly") != 0 && strcmp(n->cipher, "AESGCM") != 0)
        return TERN_ERR_UNSUPPORTED;
    if (n->cipher && strcmp(n->cipher, "AESGCM") == 0 && !tern_crypto_aesgcm_available())
        return TERN_ERR_UNSUPPORTED;
    bool psk = strstr(pattern, "psk") != NULL;
    if (psk != (n->psk != NULL))
        return TERN_ERR_INVAL;
    if (strcmp(pattern, "NNpsk0") != 0 && !n->static_key && !n->server_public)
        return TERN_ERR_INVAL;
    if (n->n_allowed_peers > 0 && !n->allowed_peers)
        return TERN_ERR_INVAL;
    return 0;
}

/* The key mac1 is made with: the server's public key when clients know it,
 * a hash of the PSK for NNpsk0 (so only PSK holders get past mac1), and a
 * published constant in plaintext (which then only checks integrity). */
static void derive_mac_key(tern_endpoint *ep)
{
    static const char plain_label[] = "tern plaintext mac1";
    static const char psk_label[] = "tern psk mac1";
    if (ep->cfg.security == TERN_SECURITY_NOISE && ep->has_psk &&
        strcmp(ep->cfg.noise.pattern, "NNpsk0") == 0) {
        crypto_generichash(ep->mac_key.b, sizeof(ep->mac_key.b), ep->psk.b, sizeof(ep->psk.b),
                           (const uint8_t *)psk_label, sizeof(psk_label) - 1);
    } else if (ep->cfg.security == TERN_SECURITY_NOISE && ep->has_server_public) {
        ep->mac_key = ep->server_public;
    } else if (ep->cfg.security == TERN_SECURITY_NOISE && ep->has_static) {
        ep->mac_key = ep->static_key.pub;
    } else {
        crypto_generichash(ep->mac_key.b, sizeof(ep->mac_key.b), (const uint8_t *)plain_label,
                           sizeof(plain_label) - 1, NULL, 0);
    }
}

static int copy_keys(tern_endpoint *ep, const tern_endpoint_config *cfg)
{
    const tern_noise_setup *n = &cfg->noise;
    ep->cfg.noise.pattern = n->pattern ? n->pattern : "NK";
    ep->cfg.noise.cipher = n->cipher ? n->cipher : "ChaChaPoly";
    /* The config's strings must not dangle: point at our own constants. */
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
        if (strcmp(ep->cfg.noise.pattern, patterns[i]) == 0)
            ep->cfg.noise.pattern = patterns[i];
    }
    ep->cfg.noise.cipher = strcmp(ep->cfg.noise.cipher, "AESGCM") == 0 ? "AESGCM" : "ChaChaPoly";
    snprintf(ep->protocol, sizeof(ep->protocol), "Noise_%s_25519_%s_BLAKE2b",
             ep->cfg.noise.pattern, ep->cfg.noise.cipher);
    if (n->static_key) {
        ep->static_key = *n->static_key;
        ep->has_static = true;
    }
    if (n->server_public) {
        ep->server_public = *n->server_public;
        ep->has_server_public = true;
    }
    if (n->psk) {
        ep->psk = *n->psk;
        ep->has_psk = true;
    }
    if (n->n_allowed_peers > 0) {
        ep->allowed = tern_mem_calloc(&ep->mem, n->n_allowed_peers, sizeof(*ep->allowed));
        if (!ep->allowed)
            return TERN_ERR_NOMEM;
        memcpy(ep->allowed, n->allowed_peers, n->n_allowed_peers * sizeof(*ep->allowed));
        ep->n_allowed = n->n_allowed_peers;
    }
    ep->cfg.noise.static_key = NULL;
    ep->cfg.noise.server_public = NULL;
    ep->cfg.noise.psk = NULL;
    ep->cfg.noise.allowed_peers = NULL;
    derive_mac_key(ep);
    return 0;
}

static void free_endpoint(tern_endpoint *ep)
{
    tern_mem mem = ep->mem;
    tern_map_free(&ep->by_id);
    tern_map_free(&ep->by_key);
    tern_mem_free(&mem, ep->heap);
    tern_mem_free(&mem, ep->allowed);
    tern_mem_free(&mem, ep->msgbuf);
    tern_cookie_server_del(ep->cookie_server);
    tern_ratelimit_del(ep->ratelimit);
    tern_aead_ctx_clear(&ep->seal_aead);
    tern_aead_ctx_clear(&ep->open_aead);
    sodium_memzero(&ep->static_key, sizeof(ep->static_key));
    sodium_memzero(&ep->psk, sizeof(ep->psk));
    sodium_memzero(ep->hash_key, sizeof(ep->hash_key));
    tern_mem_free(&mem, ep);
}

int tern_endpoint_new(tern_endpoint **out, uv_loop_t *loop, const struct sockaddr *bind_addr,
                      const tern_endpoint_config *cfg)
{
    if (!out || !loop || !bind_addr || !cfg)
        return TERN_ERR_INVAL;
    *out = NULL;
    if (bind_addr->sa_family != AF_INET && bind_addr->sa_family != AF_INET6)
        return TERN_ERR_INVAL;
    int rc = check_config(cfg);
    if (rc < 0)
        return rc;
    if (tern_crypto_init() < 0)
        return TERN_ERR_UNSUPPORTED;
    tern_mem mem;
    tern_mem_init(&mem, cfg->mem);
    tern_endpoint *ep = tern_mem_calloc(&mem, 1, sizeof(*ep));
    if (!ep)
        return TERN_ERR_NOMEM;
    ep->mem = mem;
    ep->loop = loop;
    ep->cfg = *cfg;
    ep->cfg.mem = NULL;
    ep->timer_at = UINT64_MAX;
    tern_map_init(&ep->by_id, &ep->mem);
    tern_map_init(&ep->by_key, &ep->mem);
    /* Cannot fail: check_config() checked the choice. */
    (void)tern_aead_ctx_init(&ep->seal_aead, cfg->aead_impl);
    (void)tern_aead_ctx_init(&ep->open_aead, cfg->aead_impl);
    randombytes_buf(ep->hash_key, sizeof(ep->hash_key));
    rc = copy_keys(ep, cfg);
    if (rc == 0 && ep->cfg.security == TERN_SECURITY_NOISE) {
        /* Check the keys now rather than at the first handshake. */
        tern_noise *probe = NULL;
        bool server_side = ep->has_static && !ep->has_server_public;
        rc = tern_ep_new_noise(ep, !server_side, &probe);
        tern_noise_del(probe);
    }
    if (rc == 0) {
        ep->msgbuf = tern_mem_alloc(&ep->mem, ep->cfg.message_max);
        rc = ep->msgbuf ? 0 : TERN_ERR_NOMEM;
    }
    if (rc == 0)
        rc = tern_cookie_server_new(&ep->cookie_server, &ep->mac_key, NULL, NULL, uv_now(loop),
                                    &ep->mem);
    if (rc == 0)
        rc = tern_ratelimit_new(&ep->ratelimit, &ep->cfg.ratelimit, &ep->mem);
    if (rc < 0) {
        free_endpoint(ep);
        return rc;
    }
    tern_udp_config uc;
    tern_udp_config_default(&uc);
    uc.sndbuf = cfg->sndbuf;
    uc.rcvbuf = cfg->rcvbuf;
    uc.dscp = cfg->dscp;
    uc.v6only = cfg->v6only;
    uc.max_datagram = cfg->mtu < 1500 ? 1500 : cfg->mtu;
    if (cfg->impair_send) {
        ep->impair_send = *cfg->impair_send;
        uc.impair_send = &ep->impair_send;
    }
    if (cfg->impair_recv) {
        ep->impair_recv = *cfg->impair_recv;
        uc.impair_recv = &ep->impair_recv;
    }
    ep->cfg.impair_send = uc.impair_send;
    ep->cfg.impair_recv = uc.impair_recv;
    uc.impair_seed = cfg->impair_seed;
    rc = tern_udp_open(&ep->udp, loop, bind_addr, &uc, tern_ep_on_datagram, ep, &ep->mem);
    if (rc < 0) {
        free_endpoint(ep);
        return rc;
    }
    uv_timer_init(loop, &ep->timer);
    uv_check_init(loop, &ep->check);
    uv_idle_init(loop, &ep->idle);
    ep->timer.data = ep->check.data = ep->idle.data = ep;
    uv_check_start(&ep->check, tern_ep_on_check);
    ep->handles_open = 4; /* udp, timer, check, idle */
    *out = ep;
    return 0;
}

int tern_endpoint_local_addr(const tern_endpoint *ep, struct sockaddr_storage *out)
{
    if (!ep || !out)
        return TERN_ERR_INVAL;
    return tern_udp_local_addr(ep->udp, out);
}

void tern_endpoint_set_data(tern_endpoint *ep, void *data)
{
    if (ep)
        ep->data = data;
}

void *tern_endpoint_get_data(const tern_endpoint *ep)
{
    return ep ? ep->data : NULL;
}

void tern_endpoint_set_trace(tern_endpoint *ep, tern_trace_cb cb, void *user)
{
    if (!ep)
        return;
    ep->trace = cb;
    ep->trace_user = user;
}

int tern_endpoint_listen(tern_endpoint *ep, tern_accept_cb cb)
{
    if (!ep || !cb)
        return TERN_ERR_INVAL;
    if (ep->closing)
        return TERN_ERR_CLOSED;
    if (ep->listening)
        return TERN_ERR_STATE;
    if (ep->cfg.security == TERN_SECURITY_NOISE && strcmp(ep->cfg.noise.pattern, "NNpsk0") != 0 &&
        !ep->has_static)
        return TERN_ERR_INVAL;
    ep->listening = true;
    ep->accept_cb = cb;
    return 0;
}

int tern_endpoint_connect(tern_endpoint *ep, const struct sockaddr *const *addrs, size_t n,
                          uint32_t conv, const tern_session_callbacks *cbs, tern_session **out)
{
    if (!ep || !addrs || n == 0 || n > 64 || !out)
        return TERN_ERR_INVAL;
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!addrs[i] || (addrs[i]->sa_family != AF_INET && addrs[i]->sa_family != AF_INET6))
            return TERN_ERR_INVAL;
    }
    if (ep->closing)
        return TERN_ERR_CLOSED;
    bool compat = ep->cfg.security == TERN_SECURITY_KCP_COMPAT;
    if (ep->cfg.security == TERN_SECURITY_NOISE && strcmp(ep->cfg.noise.pattern, "NNpsk0") != 0 &&
        !ep->has_server_public)
        return TERN_ERR_INVAL;
    if (ep->n_sessions >= ep->cfg.max_sessions)
        return TERN_ERR_LIMIT;
    tern_session *s;
    int rc = tern_session_create(ep, true, &s);
    if (rc < 0)
        return rc;
    if (cbs)
        s->cbs = *cbs;
    s->addrs = tern_mem_calloc(&ep->mem, n, sizeof(*s->addrs));
    if (!s->addrs) {
        tern_session_destroy(s);
        return TERN_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        memcpy(&s->addrs[i], addrs[i], tern_ep_addr_len(addrs[i]));
    s->n_addrs = n;
    tern_ms now = tern_ep_now(ep);
    s->hs_started = now;
    if (compat) {
        memcpy(&s->peer, &s->addrs[0], sizeof(s->peer));
        tern_ep_addr_bytes((const struct sockaddr *)&s->peer, &s->peer_addr);
        s->compat_conv = conv;
        s->local_id = conv;
        uint64_t key = tern_ep_hash_key(ep, (const struct sockaddr *)&s->peer, conv, 'C');
        tern_stream *st;
        if (tern_map_get(&ep->by_key, key)) {
            tern_session_destroy(s);
            return TERN_ERR_STATE;
        }
        rc = tern_stream_create(s, conv, &st);
        if (rc == 0)
            rc = tern_map_put(&ep->by_key, key, s);
        if (rc < 0) {
            tern_session_destroy(s);
            return rc;
        }
        s->by_key = key;
        s->state = SESSION_OPEN;
        tern_ep_trace(ep, TERN_TRACE_SESSION_OPENED, s, 1, 0);
        /* connect_cb runs from the loop, as for a handshake. */
        tern_ep_mark_dirty(s);
        *out = s;
        return 0;
    }
    do {
        s->local_id = randombytes_random();
    } while (s->local_id == 0 || tern_map_get(&ep->by_id, s->local_id));
    rc = tern_map_put(&ep->by_id, s->local_id, s);
    if (rc < 0) {
        tern_session_destroy(s);
        return rc;
    }
    s->state = SESSION_CONNECTING;
    tern_ep_trace(ep, TERN_TRACE_SESSION_OPENED, s, 1, 0);
    rc = tern_ep_client_start(s, now);
    if (rc < 0) {
        tern_map_del(&ep->by_id, s->local_id);
        tern_ep_heap_remove(s);
        tern_session_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    tern_endpoint *ep = h->data;
    if (--ep->handles_open > 0)
        return;
    tern_ep_reap(ep);
    if (ep->close_cb)
        ep->close_cb(ep);
    free_endpoint(ep);
}

static void on_udp_closed(void *arg)
{
    tern_endpoint *ep = arg;
    if (--ep->handles_open > 0)
        return;
    tern_ep_reap(ep);
    if (ep->close_cb)
        ep->close_cb(ep);
    free_endpoint(ep);
}

int tern_endpoint_close(tern_endpoint *ep, void (*cb)(tern_endpoint *ep))
{
    if (!ep)
        return TERN_ERR_INVAL;
    if (ep->closing)
        return TERN_ERR_CLOSED;
    tern_ms now = tern_ep_now(ep);
    /* Tell every peer, while the socket is still there. */
    for (tern_session *s = ep->sessions; s; s = s->next) {
        if (s->state != SESSION_DEAD)
            tern_session_end(s, TERN_ERR_CANCELED, TERN_CLOSE_ABORT, now);
    }
    tern_udp_flush(ep->udp);
    ep->closing = true;
    ep->close_cb = cb;
    uv_timer_stop(&ep->timer);
    uv_idle_stop(&ep->idle);
    uv_check_stop(&ep->check);
    uv_close((uv_handle_t *)&ep->timer, on_handle_closed);
    uv_close((uv_handle_t *)&ep->check, on_handle_closed);
    uv_close((uv_handle_t *)&ep->idle, on_handle_closed);
    tern_udp_close(ep->udp, on_udp_closed, ep);
    return 0;
}

void tern_endpoint_get_stats(const tern_endpoint *ep, tern_endpoint_stats *out)
{
    if (!ep || !out)
        return;
    *out = ep->stats;
    out->sessions_now = ep->n_sessions;
    out->halfopen_now = ep->n_halfopen;
    tern_ratelimit_stats rs;
    tern_ratelimit_get_stats(ep->ratelimit, &rs);
    out->drop_ratelimited = ep->stats.drop_ratelimited;
}
