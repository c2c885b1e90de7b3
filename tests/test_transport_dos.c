/* Denial of service at a live server: floods of handshake initiations,
 * well-formed (right mac1, fresh ephemeral keys) and not, from addresses
 * that never answer. The server must never send an unproven address more
 * bytes than it received from it, must spend DH only where the policy
 * allows, must not grow state for sources that never complete, and must
 * keep serving its live session; and a real client that arrives during a
 * spoofed flood from many addresses must still get in, through a cookie. */
#include <stdlib.h>
#include <unistd.h>

#include "transport/wire.h"
#include "transport_util.h"

static tern_keypair server_kp;

static int accepted, connected, msgs;

static void on_msg(tern_session *s, uint32_t ch, const uint8_t *d, size_t n)
{
    (void)s;
    (void)ch;
    (void)d;
    (void)n;
    msgs++;
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    accepted++;
    tern_session_callbacks cbs = {.message_cb = on_msg};
    tern_session_set_callbacks(s, &cbs);
}

static void on_connect(tern_session *s, int status)
{
    (void)s;
    if (status == 0)
        connected++;
}

static bool is_connected(void *arg)
{
    (void)arg;
    return connected > 0;
}

/* A well-formed INIT: a real Noise NK first message and a valid mac1,
 * exactly as a client would send, so the server cannot tell it from one
 * until it does the DH or asks for a cookie. */
static size_t forge_init(uint8_t out[TERN_WIRE_INIT_BYTES], uint32_t sender)
{
    memset(out, 0, TERN_WIRE_INIT_BYTES);
    out[0] = TERN_WIRE_INIT;
    out[1] = TERN_WIRE_VERSION;
    tern_wire_put32(out + 2, sender);
    tern_noise_config nc;
    tern_noise_config_default(&nc);
    nc.protocol = "Noise_NK_25519_ChaChaPoly_BLAKE2b";
    nc.initiator = true;
    static const uint8_t prologue[] = "tern/1";
    nc.prologue = prologue;
    nc.prologue_len = 6;
    nc.rs = &server_kp.pub;
    tern_noise *hs;
    cr_assert_eq(tern_noise_new(&hs, &nc, NULL), 0);
    tern_ssize n = tern_noise_write_message(hs, NULL, 0, out + TERN_WIRE_INIT_HEADER, 128);
    cr_assert_gt(n, 0);
    tern_noise_del(hs);
    tern_cookie_client *cc;
    cr_assert_eq(tern_cookie_client_new(&cc, &server_kp.pub, NULL), 0);
    cr_assert_eq(tern_cookie_client_add_macs(cc, out, TERN_WIRE_INIT_BYTES, 0), 0);
    tern_cookie_client_del(cc);
    return TERN_WIRE_INIT_BYTES;
}

typedef struct flood_result {
    tern_endpoint_stats es;
    uint64_t replies_bytes; /* what reached the flooding socket */
    uint64_t sent_bytes;
} flood_result;

/* Sends n initiations (a mix of forged-valid, truncated and garbage) from
 * fd, interleaved with loop turns, and reads whatever comes back. */
static void flood(uv_loop_t *loop, tern_endpoint *srv, int fd, int n, flood_result *r)
{
    struct sockaddr_storage to = tu_local(srv);
    uint8_t pkt[TERN_WIRE_INIT_BYTES];
    for (int i = 0; i < n; i++) {
        size_t len = forge_init(pkt, (uint32_t)i + 1);
        if (i % 7 == 3)
            len = 100; /* truncated */
        if (i % 11 == 5)
            pkt[50] ^= 1; /* mac1 now wrong */
        ssize_t w =
            sendto(fd, pkt, len, 0, (const struct sockaddr *)&to, sizeof(struct sockaddr_in));
        cr_assert_eq(w, (ssize_t)len);
        r->sent_bytes += len;
        if (i % 20 == 0) {
            for (int k = 0; k < 5; k++)
                uv_run(loop, UV_RUN_NOWAIT);
            uint8_t back[2048];
            ssize_t got;
            while ((got = recv(fd, back, sizeof(back), MSG_DONTWAIT)) > 0)
                r->replies_bytes += (uint64_t)got;
        }
    }
    for (int k = 0; k < 20; k++)
        uv_run(loop, UV_RUN_NOWAIT);
    uint8_t back[2048];
    ssize_t got;
    while ((got = recv(fd, back, sizeof(back), MSG_DONTWAIT)) > 0)
        r->replies_bytes += (uint64_t)got;
    tern_endpoint_get_stats(srv, &r->es);
}

static bool no_sessions(void *arg)
{
    tern_endpoint_stats es;
    tern_endpoint_get_stats(arg, &es);
    return es.sessions_now == 0;
}

static int flooder(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_storage any = tu_addr("127.0.0.1:0");
    cr_assert_eq(bind(fd, (const struct sockaddr *)&any, sizeof(struct sockaddr_in)), 0);
    return fd;
}

static void server_config(tern_endpoint_config *cfg)
{
    cr_assert_eq(tern_crypto_init(), 0);
    cr_assert_eq(tern_keypair_generate(&server_kp), 0);
    tern_endpoint_config_default(cfg);
    cfg->noise.static_key = &server_kp;
    cfg->handshake_timeout_ms = 200;
    cfg->n_channels = 1;
    cfg->channels[0] = (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .weight = 1};
}

/* A real client of a server set up by server_config(). */
static void client_config(tern_endpoint_config *cfg, const tern_endpoint_config *srv)
{
    tern_endpoint_config_default(cfg);
    cfg->noise.server_public = &server_kp.pub;
    cfg->n_channels = 1;
    cfg->channels[0] = srv->channels[0];
}

Test(dos, amplification_below_one_not_under_load)
{
    accepted = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    server_config(&cfg);
    /* A generous per-source budget so RESPs (the larger answer) do go out. */
    cfg.ratelimit.per_source_rate = 1000;
    cfg.ratelimit.per_source_burst = 1000;
    /* And room below the half-open count that would require cookies. */
    cfg.ratelimit.halfopen_max = 4096;
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, on_accept), 0);
    int fd = flooder();
    flood_result r = {0};
    flood(&loop, srv, fd, 300, &r);
    close(fd);
    cr_assert_gt(r.es.bytes_sent_unvalidated, 0, "the server answered nothing at all");
    cr_assert_leq(r.es.bytes_sent_unvalidated, r.es.bytes_recv_unvalidated);
    cr_assert_leq(r.replies_bytes, r.sent_bytes, "amplification: %llu out for %llu in",
                  (unsigned long long)r.replies_bytes, (unsigned long long)r.sent_bytes);
    cr_assert_eq(accepted, 0, "no session without the client's first DATA");
    cr_assert_geq(r.es.drop_auth + r.es.drop_malformed, 60, "bad mac1 and truncated dropped");
    /* Half-open sessions expire: no state stays behind. */
    cr_assert(tu_run_until(&loop, no_sessions, srv, 2000));
    tern_endpoint_stats es;
    tern_endpoint_get_stats(srv, &es);
    cr_assert_eq(es.sessions_now, 0);
    cr_assert_eq(es.halfopen_now, 0);
    cr_assert_gt(es.handshakes_unproven, 0);
    cr_assert_eq(es.handshakes_cookie, 0, "nothing here had a cookie");
    tern_endpoint *eps[] = {srv};
    tu_close_all(&loop, eps, 1);
}

Test(dos, under_load_cookies_only_no_state_live_session_served)
{
    accepted = connected = msgs = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    server_config(&cfg);
    /* Under load after 5 handshakes: from then on only cookie-validated
     * initiations cost a DH. */
    cfg.ratelimit.load_rate = 1;
    cfg.ratelimit.load_burst = 5;
    cfg.ratelimit.per_source_rate = 1000;
    cfg.ratelimit.per_source_burst = 1000;
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, on_accept), 0);

    /* A live session first. */
    tern_endpoint_config ccfg;
    client_config(&ccfg, &cfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session *live;
    tern_session_callbacks cbs = {.connect_cb = on_connect};
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &live), 0);
    cr_assert(tu_run_until(&loop, is_connected, NULL, 3000));

    int fd = flooder();
    flood_result r = {0};
    flood(&loop, srv, fd, 400, &r);
    close(fd);
    cr_assert_gt(r.es.cookies_sent, 100, "under load, initiations get cookies");
    cr_assert_leq(r.es.bytes_sent_unvalidated, r.es.bytes_recv_unvalidated);
    cr_assert_leq(r.replies_bytes, r.sent_bytes);
    /* DH was done at most for the handshakes before the load threshold;
     * the flood allocated no lasting state. */
    cr_assert_leq(r.es.halfopen_now, 6);
    cr_assert_leq(r.es.handshakes_unproven, 5, "the live session's and the burst's");
    cr_assert_eq(r.es.handshakes_cookie, 0);

    /* A real client still gets in under load: cookie, then handshake. */
    tern_session *second;
    connected = 0;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &second), 0);
    cr_assert(tu_run_until(&loop, is_connected, NULL, 3000), "no way in under load");
    tern_endpoint_stats es;
    tern_endpoint_get_stats(srv, &es);
    cr_assert_eq(es.handshakes_cookie, 1, "the second client came in through a cookie");
    cr_assert_eq(es.handshakes_unproven, r.es.handshakes_unproven);

    /* And the live session still works. */
    cr_assert_eq(tern_session_send(live, 0, "ping", 4, 0), 0);
    uint64_t t0 = uv_now(&loop);
    while (msgs == 0 && uv_now(&loop) - t0 < 2000)
        uv_run(&loop, UV_RUN_ONCE);
    cr_assert_eq(msgs, 1);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}

Test(dos, per_source_rate_limit_counts)
{
    accepted = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config cfg;
    server_config(&cfg);
    cfg.ratelimit.per_source_rate = 1;
    cfg.ratelimit.per_source_burst = 3;
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, on_accept), 0);
    int fd = flooder();
    flood_result r = {0};
    flood(&loop, srv, fd, 100, &r);
    close(fd);
    cr_assert_geq(r.es.drop_ratelimited, 50);
    cr_assert_leq(r.es.halfopen_now, 4);
    tern_endpoint *eps[] = {srv};
    tu_close_all(&loop, eps, 1);
}

/* ---- the lockout: a spoofed flood from many addresses ---- */

#define SPOOF_SOURCES 64
#define SPOOF_POOL 16
#define SPOOF_RATE 2000     /* INITs per second */
#define SPOOF_MS 2000       /* the flood's length */
#define SPOOF_CLIENT_AT 600 /* ms into the flood when the real client starts */

/* A flooder on the server's loop: SPOOF_RATE valid-mac1 INITs per second,
 * each from the next of SPOOF_SOURCES sockets bound to 127.3.0.x (all of
 * 127/8 is local on Linux), never answering. Each INIT is one of a pool of
 * real Noise first messages with a fresh sender id and mac1, so the server
 * cannot tell it from a client's. */
typedef struct spoof {
    int fds[SPOOF_SOURCES];
    uint8_t pool[SPOOF_POOL][TERN_WIRE_INIT_BYTES];
    tern_cookie_client *mac;
    struct sockaddr_storage to;
    tern_endpoint *srv;
    uv_timer_t timer;
    uint64_t start, sent;
    uint32_t next_id;
    uint32_t halfopen_peak;
    uint64_t got_resp, got_cookie;
} spoof;

static void spoof_drain(spoof *f)
{
    uint8_t back[256];
    for (int i = 0; i < SPOOF_SOURCES; i++) {
        ssize_t got;
        while ((got = recv(f->fds[i], back, sizeof(back), MSG_DONTWAIT)) > 0) {
            if (back[0] == TERN_WIRE_RESP)
                f->got_resp++;
            else if (back[0] == TERN_WIRE_COOKIE)
                f->got_cookie++;
        }
    }
}

static void spoof_tick(uv_timer_t *t)
{
    spoof *f = t->data;
    uint64_t el = uv_now(t->loop) - f->start;
    if (el > SPOOF_MS)
        el = SPOOF_MS;
    /* Catch up on the schedule, so a slow loop turn does not lower the rate. */
    uint64_t due = el * SPOOF_RATE / 1000;
    while (f->sent < due) {
        uint8_t pkt[TERN_WIRE_INIT_BYTES];
        memcpy(pkt, f->pool[f->sent % SPOOF_POOL], sizeof(pkt));
        tern_wire_put32(pkt + 2, ++f->next_id);
        cr_assert_eq(tern_cookie_client_add_macs(f->mac, pkt, sizeof(pkt), 0), 0);
        int fd = f->fds[f->sent % SPOOF_SOURCES];
        ssize_t w = sendto(fd, pkt, sizeof(pkt), 0, (const struct sockaddr *)&f->to,
                           sizeof(struct sockaddr_in));
        cr_assert_eq(w, (ssize_t)sizeof(pkt));
        f->sent++;
    }
    spoof_drain(f);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(f->srv, &es);
    if (es.halfopen_now > f->halfopen_peak)
        f->halfopen_peak = es.halfopen_now;
    if (el >= SPOOF_MS)
        uv_timer_stop(t);
}

static void spoof_start(spoof *f, uv_loop_t *loop, tern_endpoint *srv)
{
    memset(f, 0, sizeof(*f));
    f->srv = srv;
    f->to = tu_local(srv);
    for (int i = 0; i < SPOOF_SOURCES; i++) {
        char text[32];
        snprintf(text, sizeof(text), "127.3.0.%d:0", i + 1);
        struct sockaddr_storage a = tu_addr(text);
        f->fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        cr_assert_geq(f->fds[i], 0);
        cr_assert_eq(bind(f->fds[i], (const struct sockaddr *)&a, sizeof(struct sockaddr_in)), 0,
                     "bind %s", text);
    }
    for (uint32_t k = 0; k < SPOOF_POOL; k++)
        (void)forge_init(f->pool[k], k + 1);
    cr_assert_eq(tern_cookie_client_new(&f->mac, &server_kp.pub, NULL), 0);
    f->next_id = 1000;
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    f->start = uv_now(loop);
    uv_timer_start(&f->timer, spoof_tick, 0, 5);
}

static void spoof_stop(spoof *f)
{
    uv_timer_stop(&f->timer);
    uv_close((uv_handle_t *)&f->timer, NULL);
    for (int i = 0; i < SPOOF_SOURCES; i++)
        close(f->fds[i]);
    tern_cookie_client_del(f->mac);
}

static int lockout_status;
static uint64_t lockout_connected_at;
static uv_loop_t *lockout_loop;

static void lockout_connect(tern_session *s, int status)
{
    (void)s;
    lockout_status = status;
    lockout_connected_at = uv_now(lockout_loop);
}

static bool lockout_done(void *arg)
{
    (void)arg;
    return lockout_status != 1;
}

/* Before the sticky load and the half-open threshold, a flood like this one
 * filled the half-open table with spoofed sources (DH for each, held for
 * the handshake timeout) and a client arriving during it was refused at the
 * cap until it timed out. */
Test(dos, spoofed_flood_does_not_lock_out_a_real_client)
{
    accepted = 0;
    lockout_status = 1;
    uv_loop_t loop;
    uv_loop_init(&loop);
    lockout_loop = &loop;
    tern_endpoint_config cfg;
    server_config(&cfg);
    /* Spoofed half-open sessions live through the whole flood. */
    cfg.handshake_timeout_ms = 5000;
    /* The default policy otherwise, with a table the old policy would fill
     * in about 0.1 s: cookies from 256 / 8 = 32 half-open handshakes. */
    cfg.ratelimit.halfopen_max = 256;
    tern_endpoint *srv = tu_endpoint(&loop, &cfg);
    cr_assert_eq(tern_endpoint_listen(srv, on_accept), 0);

    tern_endpoint_config ccfg;
    client_config(&ccfg, &cfg);
    /* It must get in while the flood still runs. */
    ccfg.handshake_timeout_ms = SPOOF_MS - SPOOF_CLIENT_AT - 200;
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);

    spoof *f = calloc(1, sizeof(*f));
    cr_assert_not_null(f);
    spoof_start(f, &loop, srv);
    tu_run_to(&loop, f->start + SPOOF_CLIENT_AT);
    cr_assert_gt(f->sent, SPOOF_RATE * SPOOF_CLIENT_AT / 1000 / 2, "the flood is running");

    tern_session_callbacks cbs = {.connect_cb = lockout_connect};
    (void)tu_connect(cli, srv, &cbs);
    cr_assert(tu_run_until(&loop, lockout_done, NULL, SPOOF_MS));
    cr_assert_eq(lockout_status, 0, "the client was locked out: %s", tern_strerror(lockout_status));
    cr_assert_lt(lockout_connected_at, f->start + SPOOF_MS, "connected only after the flood");
    tu_run_to(&loop, f->start + SPOOF_MS + 20);
    spoof_drain(f);

    tern_endpoint_stats es;
    tern_endpoint_get_stats(srv, &es);
    uint32_t bound = cfg.ratelimit.halfopen_max / TERN_HALFOPEN_LOAD_DIV;
    if (cfg.ratelimit.load_burst < bound)
        bound = cfg.ratelimit.load_burst;
    cr_assert_geq(f->sent, SPOOF_RATE * SPOOF_MS / 1000 * 9 / 10);
    cr_assert_gt(es.cookies_sent, f->sent / 2, "the flood got cookies");
    cr_assert_leq(es.handshakes_unproven, bound, "DH for %llu unproven INITs, bound %u",
                  (unsigned long long)es.handshakes_unproven, bound);
    cr_assert_eq(f->got_resp, es.handshakes_unproven, "every DH for the flood answered it");
    cr_assert_geq(es.handshakes_cookie, 1, "the client came in through a cookie");
    cr_assert_leq(f->halfopen_peak, bound + 1, "half-open peak %u", f->halfopen_peak);
    cr_assert_eq(es.sessions_accepted, 1, "only the real client");
    cr_assert_eq(accepted, 1);
    cr_assert_eq(es.drop_limit, 0, "nothing refused at the half-open cap");
    spoof_stop(f);
    free(f);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}
