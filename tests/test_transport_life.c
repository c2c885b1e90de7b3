/* Session lifecycles over loopback: failover, timeouts, wrong keys,
 * limits, graceful close and abort, garbage and spoofed datagrams. */
#include <stdlib.h>
#include <unistd.h>

#include "transport_util.h"

typedef struct life {
    int accepted, server_closes, server_close_status;
    int connects, connect_status, client_closes, client_close_status;
    tern_session *server_session;
    int msgs;
} life;

static life L;

static void on_msg(tern_session *s, uint32_t ch, const uint8_t *d, size_t n)
{
    (void)s;
    (void)ch;
    (void)d;
    (void)n;
    L.msgs++;
}

static void srv_close(tern_session *s, int status)
{
    (void)s;
    L.server_closes++;
    L.server_close_status = status;
}

static void srv_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    L.accepted++;
    L.server_session = s;
    tern_session_callbacks cbs = {.close_cb = srv_close, .message_cb = on_msg};
    tern_session_set_callbacks(s, &cbs);
}

static void cli_connect(tern_session *s, int status)
{
    (void)s;
    L.connects++;
    L.connect_status = status;
}

static void cli_close(tern_session *s, int status)
{
    (void)s;
    L.client_closes++;
    L.client_close_status = status;
}

static const tern_session_callbacks client_cbs = {
    .connect_cb = cli_connect, .close_cb = cli_close, .message_cb = on_msg};

static tern_keypair server_kp;

static void nk(tern_endpoint_config *srv, tern_endpoint_config *cli)
{
    cr_assert_eq(tern_crypto_init(), 0);
    cr_assert_eq(tern_keypair_generate(&server_kp), 0);
    tern_endpoint_config_default(srv);
    tern_endpoint_config_default(cli);
    srv->noise.static_key = &server_kp;
    cli->noise.server_public = &server_kp.pub;
    srv->n_channels = cli->n_channels = 1;
    srv->channels[0] = cli->channels[0] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .weight = 1};
}

static bool client_done(void *arg)
{
    (void)arg;
    return L.connects > 0;
}

static bool client_closed(void *arg)
{
    (void)arg;
    return L.client_closes > 0;
}

static bool both_closed(void *arg)
{
    (void)arg;
    return L.client_closes > 0 && L.server_closes > 0;
}

/* Both endpoints on a fresh loop, the callbacks' record cleared. */
static void open_pair(tu_pair *p, const tern_endpoint_config *scfg,
                      const tern_endpoint_config *ccfg)
{
    memset(&L, 0, sizeof(L));
    tu_pair_open(p, scfg, ccfg);
}

/* open_pair with nk's configs, unchanged. */
static void open_nk_pair(tu_pair *p)
{
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    open_pair(p, &scfg, &ccfg);
}

/* The server listens, the client connects, and the handshake succeeds: the
 * client's session. */
static tern_session *connect_pair(tu_pair *p)
{
    tern_session *s = tu_pair_connect(p, srv_accept, &client_cbs, client_done, NULL);
    cr_assert_eq(L.connect_status, 0);
    return s;
}

/* The server listens, the client connects, and the handshake times out. */
static void connect_refused(tu_pair *p)
{
    cr_assert_eq(tern_endpoint_listen(p->srv, srv_accept), 0);
    (void)tu_connect(p->cli, p->srv, &client_cbs);
    cr_assert(tu_run_until(&p->loop, client_closed, NULL, 3000));
    cr_assert_eq(L.connect_status, TERN_ERR_TIMEDOUT);
}

/* A port nobody listens on: bind a UDP socket, note its port, close it. */
static struct sockaddr_storage dead_address(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    tern_endpoint *ep = tu_endpoint(&loop, &cfg);
    struct sockaddr_storage a = tu_local(ep);
    tern_endpoint *eps[] = {ep};
    tu_close_all(&loop, eps, 1);
    return a;
}

Test(life, failover_to_second_address)
{
    struct sockaddr_storage dead = dead_address();
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    ccfg.handshake_timeout_ms = 300;
    ccfg.handshake_retry_ms = 100;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    cr_assert_eq(tern_endpoint_listen(p.srv, srv_accept), 0);
    struct sockaddr_storage live = tu_local(p.srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&dead,
                                      (const struct sockaddr *)&live};
    tern_session *s;
    uint64_t t0 = uv_now(&p.loop);
    cr_assert_eq(tern_endpoint_connect(p.cli, addrs, 2, 0, &client_cbs, &s), 0);
    cr_assert(tu_run_until(&p.loop, client_done, NULL, 3000));
    cr_assert_eq(L.connect_status, 0);
    cr_assert_geq(uv_now(&p.loop) - t0, 250, "moved on before the first address timed out");
    struct sockaddr_storage peer;
    cr_assert_eq(tern_session_peer_addr(s, &peer), 0);
    cr_assert_eq(((struct sockaddr_in *)&peer)->sin_port, ((struct sockaddr_in *)&live)->sin_port);
    tu_pair_close(&p);
}

Test(life, handshake_timeout_reports_once)
{
    memset(&L, 0, sizeof(L));
    struct sockaddr_storage dead = dead_address();
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    ccfg.handshake_timeout_ms = 200;
    ccfg.handshake_retry_ms = 50;
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&dead};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &client_cbs, &s), 0);
    cr_assert(tu_run_until(&loop, client_closed, NULL, 3000));
    cr_assert_eq(L.connects, 1);
    cr_assert_eq(L.connect_status, TERN_ERR_TIMEDOUT);
    cr_assert_eq(L.client_closes, 1);
    cr_assert_eq(L.client_close_status, TERN_ERR_TIMEDOUT);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(cli, &es);
    cr_assert_eq(es.sessions_timed_out, 1);
    /* Retransmitted INITs: 200 ms at 50, 100 ms backoff -> at least 3. */
    cr_assert_geq(es.dgrams_out, 3);
    tern_endpoint *eps[] = {cli};
    tu_close_all(&loop, eps, 1);
}

Test(life, wrong_server_key_never_connects)
{
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    tern_keypair other;
    cr_assert_eq(tern_keypair_generate(&other), 0);
    ccfg.noise.server_public = &other.pub;
    ccfg.handshake_timeout_ms = 300;
    ccfg.handshake_retry_ms = 50;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    connect_refused(&p);
    cr_assert_eq(L.accepted, 0);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(p.srv, &es);
    /* mac1 is keyed by the server's public key: dropped before any DH. */
    cr_assert_geq(es.drop_auth, 1);
    cr_assert_eq(es.sessions_now, 0);
    cr_assert_eq(es.bytes_sent_unvalidated, 0);
    tu_pair_close(&p);
}

Test(life, ik_allow_list_refuses_unknown_client)
{
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    tern_keypair client_kp, allowed_kp;
    cr_assert_eq(tern_keypair_generate(&client_kp), 0);
    cr_assert_eq(tern_keypair_generate(&allowed_kp), 0);
    scfg.noise.pattern = ccfg.noise.pattern = "IK";
    ccfg.noise.static_key = &client_kp;
    scfg.noise.allowed_peers = &allowed_kp.pub;
    scfg.noise.n_allowed_peers = 1;
    ccfg.handshake_timeout_ms = 300;
    ccfg.handshake_retry_ms = 100;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    connect_refused(&p);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(p.srv, &es);
    cr_assert_geq(es.drop_peer_refused, 1);
    cr_assert_eq(es.sessions_now, 0);
    tu_pair_close(&p);
}

static bool accepted(void *arg)
{
    (void)arg;
    return L.accepted > 0;
}

Test(life, graceful_close_delivers_queued_messages)
{
    tu_pair p;
    open_nk_pair(&p);
    tern_session *s = connect_pair(&p);
    for (int i = 0; i < 200; i++)
        cr_assert_eq(tern_session_send(s, 0, "hello", 5, 0), 0);
    cr_assert_eq(tern_session_close(s), 0);
    cr_assert_eq(tern_session_close(s), TERN_ERR_STATE);
    cr_assert_eq(tern_session_send(s, 0, "late", 4, 0), TERN_ERR_CLOSED);
    cr_assert(tu_run_until(&p.loop, both_closed, NULL, 5000));
    cr_assert_eq(L.msgs, 200, "queued messages delivered before the close");
    cr_assert_eq(L.client_close_status, 0);
    cr_assert_eq(L.server_close_status, TERN_ERR_EOF, "a graceful close reads as EOF");
    cr_assert_eq(L.client_closes, 1);
    cr_assert_eq(L.server_closes, 1);
    tu_pair_close(&p);
}

Test(life, abort_tells_the_peer)
{
    tu_pair p;
    open_nk_pair(&p);
    tern_session *s = connect_pair(&p);
    cr_assert(tu_run_until(&p.loop, accepted, NULL, 3000));
    cr_assert_eq(tern_session_abort(s), 0);
    cr_assert_eq(tern_session_abort(s), TERN_ERR_STATE);
    cr_assert(tu_run_until(&p.loop, both_closed, NULL, 3000));
    cr_assert_eq(L.client_close_status, TERN_ERR_CANCELED);
    cr_assert_eq(L.server_close_status, TERN_ERR_RESET);
    tu_pair_close(&p);
}

Test(life, idle_timeout_and_keepalive)
{
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    /* The client pings every 100 ms, so an idle session stays up past the
     * server's 400 ms idle timeout... */
    ccfg.keepalive_ms = 100;
    scfg.keepalive_ms = 0;
    scfg.idle_timeout_ms = 400;
    ccfg.idle_timeout_ms = 400;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    connect_pair(&p);
    cr_assert(tu_run_until(&p.loop, accepted, NULL, 3000));
    cr_assert_not(tu_run_until(&p.loop, client_closed, NULL, 1200), "keepalive failed");
    /* ...and once the client's endpoint is gone, the server times out. */
    cr_assert_eq(tern_endpoint_close(p.cli, NULL), 0);
    p.cli = NULL;
    L.client_closes = 1;
    uint64_t t0 = uv_now(&p.loop);
    cr_assert(tu_run_until(&p.loop, both_closed, NULL, 3000));
    cr_assert_eq(L.server_close_status, TERN_ERR_RESET, "the endpoint close sent CLOSE");
    (void)t0;
    tu_pair_close(&p);
}

Test(life, silent_peer_times_out)
{
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    scfg.keepalive_ms = ccfg.keepalive_ms = 0;
    scfg.idle_timeout_ms = 300;
    ccfg.idle_timeout_ms = 60000;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    connect_pair(&p);
    uint64_t t0 = uv_now(&p.loop);
    cr_assert(tu_run_until(&p.loop, accepted, NULL, 3000));
    bool server_closed_fn(void *arg);
    while (L.server_closes == 0 && uv_now(&p.loop) - t0 < 3000)
        uv_run(&p.loop, UV_RUN_ONCE);
    cr_assert_eq(L.server_closes, 1);
    cr_assert_eq(L.server_close_status, TERN_ERR_TIMEDOUT);
    cr_assert_geq(uv_now(&p.loop) - t0, 250);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(p.srv, &es);
    cr_assert_eq(es.sessions_timed_out, 1);
    tu_pair_close(&p);
}

Test(life, session_limit_refuses_and_counts)
{
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    scfg.max_sessions = 2;
    ccfg.handshake_timeout_ms = 400;
    ccfg.handshake_retry_ms = 100;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    cr_assert_eq(tern_endpoint_listen(p.srv, srv_accept), 0);
    for (int i = 0; i < 3; i++)
        (void)tu_connect(p.cli, p.srv, &client_cbs);
    uint64_t t0 = uv_now(&p.loop);
    while (L.connects < 3 && uv_now(&p.loop) - t0 < 3000)
        uv_run(&p.loop, UV_RUN_ONCE);
    cr_assert_eq(L.connects, 3);
    cr_assert_eq(L.accepted, 2);
    cr_assert_eq(L.client_closes, 1, "the third timed out");
    tern_endpoint_stats es;
    tern_endpoint_get_stats(p.srv, &es);
    cr_assert_geq(es.sessions_refused, 1);
    cr_assert_eq(es.sessions_now, 2);
    tu_pair_close(&p);
}

/* Garbage of every shape at a server with a live session: dropped and
 * counted, the session unharmed. */
Test(life, garbage_is_counted_not_fatal)
{
    tu_pair p;
    open_nk_pair(&p);
    tern_session *s = connect_pair(&p);
    cr_assert(tu_run_until(&p.loop, accepted, NULL, 3000));
    struct sockaddr_storage to = tu_local(p.srv);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    uint8_t junk[1500];
    srand(7);
    for (int i = 0; i < 2000; i++) {
        /* In bursts the socket buffer holds, so every one is seen. */
        if (i % 50 == 0) {
            for (int k = 0; k < 20; k++)
                uv_run(&p.loop, UV_RUN_NOWAIT);
        }
        size_t n = (size_t)(rand() % (int)sizeof(junk)) + 1;
        for (size_t j = 0; j < n; j++)
            junk[j] = (uint8_t)rand();
        junk[0] = (uint8_t)(i % 8); /* every type byte, and unknown ones */
        if (i % 3 == 0 && n >= 13) {
            /* DATA aimed at the live session's id: must fail to open. */
            junk[0] = 0x04;
            uint32_t id = tern_session_id(L.server_session);
            memcpy(junk + 1, &id, 4);
        }
        (void)sendto(fd, junk, n, 0, (const struct sockaddr *)&to, sizeof(struct sockaddr_in));
    }
    close(fd);
    for (int i = 0; i < 50; i++)
        uv_run(&p.loop, UV_RUN_NOWAIT);
    cr_assert_eq(tern_session_send(s, 0, "still here", 10, 0), 0);
    uint64_t t0 = uv_now(&p.loop);
    while (L.msgs < 1 && uv_now(&p.loop) - t0 < 2000)
        uv_run(&p.loop, UV_RUN_ONCE);
    cr_assert_eq(L.msgs, 1, "the live session still works");
    tern_endpoint_stats es;
    tern_endpoint_get_stats(p.srv, &es);
    uint64_t drops = es.drop_malformed + es.drop_auth + es.drop_unknown_session;
    cr_assert_geq(drops, 1900, "drops counted: %llu", (unsigned long long)drops);
    cr_assert_eq(es.sessions_now, 1);
    cr_assert_eq(L.server_closes, 0);
    tu_pair_close(&p);
}

Test(life, wrong_psk_never_connects)
{
    cr_assert_eq(tern_crypto_init(), 0);
    tern_key psk_a, psk_b;
    memset(psk_a.b, 1, sizeof(psk_a.b));
    memset(psk_b.b, 2, sizeof(psk_b.b));
    tern_endpoint_config scfg, ccfg;
    tern_endpoint_config_default(&scfg);
    tern_endpoint_config_default(&ccfg);
    scfg.noise.pattern = ccfg.noise.pattern = "NNpsk0";
    scfg.noise.psk = &psk_a;
    ccfg.noise.psk = &psk_b;
    ccfg.handshake_timeout_ms = 300;
    ccfg.handshake_retry_ms = 50;
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    connect_refused(&p);
    cr_assert_eq(L.accepted, 0);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(p.srv, &es);
    /* mac1 is keyed by the PSK's hash: no DH for a wrong PSK either. */
    cr_assert_geq(es.drop_auth, 1);
    cr_assert_eq(es.bytes_sent_unvalidated, 0);
    tu_pair_close(&p);
}

Test(life, aesgcm_sessions_when_available)
{
    if (!tern_crypto_aesgcm_available()) {
        cr_skip_test("AES-GCM is not available on this CPU");
    }
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    scfg.noise.cipher = ccfg.noise.cipher = "AESGCM";
    tu_pair p;
    open_pair(&p, &scfg, &ccfg);
    tern_session *s = connect_pair(&p);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(tern_session_send(s, 0, "aes", 3, 0), 0);
    uint64_t t0 = uv_now(&p.loop);
    while (L.msgs < 10 && uv_now(&p.loop) - t0 < 2000)
        uv_run(&p.loop, UV_RUN_ONCE);
    cr_assert_eq(L.msgs, 10);
    tu_pair_close(&p);
}

Test(life, bad_configs_are_refused)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sockaddr_storage any = tu_addr("127.0.0.1:0");
    tern_endpoint *ep = NULL;
    tern_endpoint_config cfg;
    tern_endpoint_config_default(&cfg);
    /* Noise with no key at all. */
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                 TERN_ERR_INVAL);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    cfg.mtu = 100;
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                 TERN_ERR_RANGE);
    tern_endpoint_config_default(&cfg);
    cfg.noise.pattern = "XX";
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                 TERN_ERR_UNSUPPORTED);
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    cfg.n_channels = 1;
    cfg.channels[0].weight = 0;
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                 TERN_ERR_RANGE);
    cfg.channels[0].weight = 1;
    cfg.reassembly_max = cfg.message_max - 1;
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                 TERN_ERR_RANGE);
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    cfg.aead_impl = (tern_aead_impl)9;
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                 TERN_ERR_INVAL);
    if (!tern_aead_impl_available(TERN_AEAD_IMPL_OPENSSL)) {
        cfg.aead_impl = TERN_AEAD_IMPL_OPENSSL;
        cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&any, &cfg),
                     TERN_ERR_UNSUPPORTED);
    }
    cr_assert_null(ep);
    /* A port already taken is an I/O error, not a crash. */
    tern_endpoint_config_default(&cfg);
    cfg.security = TERN_SECURITY_PLAINTEXT;
    tern_endpoint *a = tu_endpoint(&loop, &cfg);
    struct sockaddr_storage taken = tu_local(a);
    cr_assert_eq(tern_endpoint_new(&ep, &loop, (const struct sockaddr *)&taken, &cfg), TERN_ERR_IO);
    cr_assert_eq(tern_sockaddr_parse("1.2.3.4", &any), TERN_ERR_INVAL);
    cr_assert_eq(tern_sockaddr_parse("[::1]:99999", &any), TERN_ERR_INVAL);
    cr_assert_eq(tern_sockaddr_parse("[::1]:80", &any), 0);
    cr_assert_eq(tern_sockaddr_parse(":80", &any), 0);
    tern_endpoint *eps[] = {a};
    tu_close_all(&loop, eps, 1);
}

Test(life, dead_link_ends_the_session_with_its_own_code)
{
    memset(&L, 0, sizeof(L));
    tu_pair p;
    uv_loop_init(&p.loop);
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    ccfg.kcp.dead_link = 4;
    ccfg.idle_timeout_ms = 60000;
    ccfg.keepalive_ms = 0;
    /* Everything the client sends from 200 ms on is lost. */
    tern_netsim_cfg cut;
    tern_netsim_cfg_default(&cut);
    tern_ms t0 = uv_now(&p.loop);
    cut.n_partitions = 1;
    cut.partitions[0] = (tern_netsim_partition){t0 + 200, UINT64_MAX};
    ccfg.impair_send = &cut;
    p.srv = tu_endpoint(&p.loop, &scfg);
    p.cli = tu_endpoint(&p.loop, &ccfg);
    tern_session *s = connect_pair(&p);
    tu_run_to(&p.loop, t0 + 250);
    cr_assert_eq(tern_session_send(s, 0, "lost", 4, 0), 0);
    cr_assert(tu_run_until(&p.loop, client_closed, NULL, 20000));
    cr_assert_eq(L.client_close_status, TERN_ERR_DEADLINK);
    tu_pair_close(&p);
}

Test(life, ipv6_loopback)
{
    memset(&L, 0, sizeof(L));
    tu_pair p = {.srv = NULL, .cli = NULL};
    uv_loop_init(&p.loop);
    tern_endpoint_config scfg, ccfg;
    nk(&scfg, &ccfg);
    struct sockaddr_storage any6 = tu_addr("[::1]:0");
    int rc = tern_endpoint_new(&p.srv, &p.loop, (const struct sockaddr *)&any6, &scfg);
    if (rc == TERN_ERR_IO) {
        uv_loop_close(&p.loop);
        cr_skip_test("no IPv6 loopback here");
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(tern_endpoint_new(&p.cli, &p.loop, (const struct sockaddr *)&any6, &ccfg), 0);
    struct sockaddr_storage to = tu_local(p.srv);
    cr_assert_eq(to.ss_family, AF_INET6);
    tern_session *s = connect_pair(&p);
    cr_assert_eq(tern_session_send(s, 0, "six", 3, 0), 0);
    uint64_t start = uv_now(&p.loop);
    while (L.msgs < 1 && uv_now(&p.loop) - start < 2000)
        uv_run(&p.loop, UV_RUN_ONCE);
    cr_assert_eq(L.msgs, 1);
    char line[256];
    tern_trace_event ev = {.kind = TERN_TRACE_CLOSED, .peer = (const struct sockaddr *)&to};
    cr_assert_gt(tern_trace_format_json(&ev, line, sizeof(line)), 0);
    cr_assert(strstr(line, "[::1]:") != NULL, "%s", line);
    cr_assert_eq(tern_trace_format_json(&ev, line, 10), TERN_ERR_NOBUFS);
    tu_pair_close(&p);
}
