/* The transport over real loopback sockets: handshakes in every security
 * mode, streams end to end (echo, end of stream, reset), channels of every
 * kind, close semantics. */
#include <stdlib.h>

#include "transport_util.h"

typedef struct echo_server {
    int streams, eofs, sessions, closed;
    int last_close_status;
    uint64_t bytes;
} echo_server;

typedef struct client_state {
    tern_stream *st;
    uint64_t to_send, sent, received;
    uint32_t seed;
    int connect_status;
    bool connected, eof, shutdown_done, bad_byte;
    int close_status, closes, read_error;
    uint8_t *chunk;
    size_t chunk_len;
    int writes_pending;
    int msgs[TERN_CHANNELS_MAX];
    uint64_t msg_bytes[TERN_CHANNELS_MAX];
} client_state;

static echo_server server;
static client_state client;

static void alloc_cb(tern_stream *st, size_t suggested, uv_buf_t *buf)
{
    (void)st;
    buf->base = malloc(suggested);
    buf->len = suggested;
}

static void free_write(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)status;
    free(arg);
}

static void server_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    if (n > 0) {
        server.bytes += (uint64_t)n;
        uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
        cr_assert_eq(tern_stream_write(st, &out, 1, free_write, buf->base), 0);
        return;
    }
    free(buf->base);
    if (n == TERN_ERR_EOF) {
        server.eofs++;
        cr_assert_eq(tern_stream_shutdown(st, NULL, NULL), 0);
    }
}

static void server_stream(tern_session *s, tern_stream *st)
{
    (void)s;
    server.streams++;
    cr_assert_eq(tern_stream_read_start(st, alloc_cb, server_read), 0);
}

static void server_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    /* Echo every message back on its channel. */
    cr_assert_eq(tern_session_send(s, ch, data, len, 0), 0);
}

static void server_close(tern_session *s, int status)
{
    (void)s;
    server.closed++;
    server.last_close_status = status;
}

static void server_accept(tern_endpoint *ep, tern_session *s)
{
    (void)ep;
    server.sessions++;
    tern_session_callbacks cbs = {
        .stream_cb = server_stream, .message_cb = server_message, .close_cb = server_close};
    tern_session_set_callbacks(s, &cbs);
}

static void client_read(tern_stream *st, ssize_t n, const uv_buf_t *buf)
{
    (void)st;
    if (n > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if ((uint8_t)buf->base[i] != tu_byte(client.received + (uint64_t)i, client.seed))
                client.bad_byte = true;
        }
        client.received += (uint64_t)n;
    } else if (n == TERN_ERR_EOF) {
        client.eof = true;
    } else {
        client.read_error = (int)n;
    }
    free(buf->base);
}

static void pump_client(void);

static void client_wrote(tern_stream *st, int status, void *arg)
{
    (void)st;
    cr_assert_eq(status, 0);
    free(arg);
    client.writes_pending--;
    pump_client();
}

static void client_shutdown(tern_stream *st, int status, void *arg)
{
    (void)st;
    (void)arg;
    cr_assert_eq(status, 0);
    client.shutdown_done = true;
}

/* Keeps a few writes in flight until to_send bytes are written. */
static void pump_client(void)
{
    while (client.sent < client.to_send && client.writes_pending < 4) {
        size_t n = client.to_send - client.sent < 65536 ? (size_t)(client.to_send - client.sent)
                                                         : 65536;
        uint8_t *p = malloc(n);
        for (size_t i = 0; i < n; i++)
            p[i] = tu_byte(client.sent + i, client.seed);
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int rc = tern_stream_write(client.st, &b, 1, client_wrote, p);
        if (rc == TERN_ERR_WOULDBLOCK) {
            free(p);
            return;
        }
        cr_assert_eq(rc, 0, "write: %s", tern_strerror(rc));
        client.sent += n;
        client.writes_pending++;
    }
    if (client.sent == client.to_send && client.writes_pending == 0 && !client.shutdown_done)
        (void)tern_stream_shutdown(client.st, client_shutdown, NULL);
}

static void client_connect(tern_session *s, int status)
{
    (void)s;
    client.connect_status = status;
    client.connected = status == 0;
}

static void client_close(tern_session *s, int status)
{
    (void)s;
    client.closes++;
    client.close_status = status;
}

static void client_message(tern_session *s, uint32_t ch, const uint8_t *data, size_t len)
{
    (void)s;
    (void)data;
    client.msgs[ch]++;
    client.msg_bytes[ch] += len;
}

static bool echo_done(void *arg)
{
    (void)arg;
    return client.eof && client.shutdown_done;
}

static bool connected(void *arg)
{
    (void)arg;
    return client.connected || client.connect_status < 0;
}

static tern_keypair server_kp, client_kp;
static tern_key psk;

static void setup_keys(void)
{
    cr_assert_eq(tern_crypto_init(), 0);
    cr_assert_eq(tern_keypair_generate(&server_kp), 0);
    cr_assert_eq(tern_keypair_generate(&client_kp), 0);
    for (size_t i = 0; i < sizeof(psk.b); i++)
        psk.b[i] = (uint8_t)(i * 7 + 1);
}

/* Which library each side seals and opens with, and the cipher. */
static tern_aead_impl srv_aead, cli_aead;
static const char *cipher_name;

static void configs(tern_security sec, const char *pattern, tern_endpoint_config *srv,
                    tern_endpoint_config *cli)
{
    tern_endpoint_config_default(srv);
    tern_endpoint_config_default(cli);
    srv->security = cli->security = sec;
    srv->aead_impl = srv_aead;
    cli->aead_impl = cli_aead;
    srv->noise.cipher = cli->noise.cipher = cipher_name;
    srv->noise.pattern = cli->noise.pattern = pattern;
    if (sec == TERN_SECURITY_NOISE) {
        if (strcmp(pattern, "NNpsk0") == 0) {
            srv->noise.psk = cli->noise.psk = &psk;
        } else {
            srv->noise.static_key = &server_kp;
            cli->noise.server_public = &server_kp.pub;
            if (strncmp(pattern, "IK", 2) == 0)
                cli->noise.static_key = &client_kp;
            if (strcmp(pattern, "IKpsk2") == 0)
                srv->noise.psk = cli->noise.psk = &psk;
        }
    }
}

static void run_echo(tern_security sec, const char *pattern, uint64_t bytes)
{
    memset(&server, 0, sizeof(server));
    memset(&client, 0, sizeof(client));
    setup_keys();
    client.to_send = bytes;
    client.seed = 42;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    configs(sec, pattern, &scfg, &ccfg);
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    cr_assert_eq(tern_endpoint_listen(srv, server_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {.connect_cb = client_connect, .close_cb = client_close};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &s), 0);
    cr_assert(tu_run_until(&loop, connected, NULL, 5000), "handshake did not finish");
    cr_assert_eq(client.connect_status, 0, "connect: %s", tern_strerror(client.connect_status));
    cr_assert_eq(tern_stream_open(s, &client.st), 0);
    cr_assert_eq(tern_stream_read_start(client.st, alloc_cb, client_read), 0);
    pump_client();
    cr_assert(tu_run_until(&loop, echo_done, NULL, 20000),
              "echo incomplete: sent %llu received %llu eof %d shutdown %d server eofs %d",
              (unsigned long long)client.sent, (unsigned long long)client.received, client.eof,
              client.shutdown_done, server.eofs);
    cr_assert_eq(client.received, bytes);
    cr_assert_not(client.bad_byte, "corrupted echo");
    cr_assert_eq(server.streams, 1);
    cr_assert_eq(server.eofs, 1);
    cr_assert_eq(server.sessions, 1);
    tern_endpoint_stats es;
    tern_endpoint_get_stats(srv, &es);
    cr_assert_eq(es.sessions_accepted, 1);
    cr_assert_eq(es.drop_auth, 0);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
    cr_assert_eq(client.closes, 1, "client close_cb once");
    cr_assert_eq(client.close_status, TERN_ERR_CANCELED);
    cr_assert_eq(server.closed, 1, "server close_cb once");
}

Test(transport, echo_plaintext)
{
    run_echo(TERN_SECURITY_PLAINTEXT, NULL, 1 << 20);
}

Test(transport, echo_noise_nk)
{
    run_echo(TERN_SECURITY_NOISE, "NK", 1 << 20);
}

Test(transport, echo_noise_ik)
{
    run_echo(TERN_SECURITY_NOISE, "IK", 256 << 10);
}

Test(transport, echo_noise_ikpsk2)
{
    run_echo(TERN_SECURITY_NOISE, "IKpsk2", 256 << 10);
}

Test(transport, echo_noise_nnpsk0)
{
    run_echo(TERN_SECURITY_NOISE, "NNpsk0", 256 << 10);
}

/* OpenSSL on one side, libsodium on the other, each way round, with every
 * cipher both can run here. */
Test(transport, echo_across_aead_libraries)
{
    if (!tern_aead_impl_available(TERN_AEAD_IMPL_OPENSSL))
        cr_skip_test("built without OpenSSL (TERN_OPENSSL)");
    const char *ciphers[] = {"ChaChaPoly", "AESGCM"};
    size_t n = tern_crypto_aesgcm_available() ? 2 : 1;
    for (size_t c = 0; c < n; c++) {
        cipher_name = ciphers[c];
        srv_aead = TERN_AEAD_IMPL_OPENSSL;
        cli_aead = TERN_AEAD_IMPL_LIBSODIUM;
        run_echo(TERN_SECURITY_NOISE, "NK", 256 << 10);
        srv_aead = TERN_AEAD_IMPL_LIBSODIUM;
        cli_aead = TERN_AEAD_IMPL_OPENSSL;
        run_echo(TERN_SECURITY_NOISE, "NK", 256 << 10);
    }
}

static bool messages_done(void *arg)
{
    int want = *(int *)arg;
    for (int c = 0; c < 4; c++) {
        if (client.msgs[c] < want)
            return false;
    }
    return true;
}

Test(transport, channels_every_kind)
{
    memset(&server, 0, sizeof(server));
    memset(&client, 0, sizeof(client));
    setup_keys();
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_endpoint_config scfg, ccfg;
    configs(TERN_SECURITY_NOISE, "NK", &scfg, &ccfg);
    const tern_channel_kind kinds[] = {TERN_CHANNEL_RELIABLE_ORDERED,
                                       TERN_CHANNEL_RELIABLE_UNORDERED, TERN_CHANNEL_UNRELIABLE,
                                       TERN_CHANNEL_UNRELIABLE_SEQUENCED};
    for (int c = 0; c < 4; c++) {
        scfg.channels[c] = ccfg.channels[c] =
            (tern_channel_config){.kind = kinds[c], .priority = (uint8_t)c, .weight = 1};
    }
    scfg.n_channels = ccfg.n_channels = 4;
    tern_endpoint *srv = tu_endpoint(&loop, &scfg);
    tern_endpoint *cli = tu_endpoint(&loop, &ccfg);
    cr_assert_eq(tern_endpoint_listen(srv, server_accept), 0);
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session_callbacks cbs = {
        .connect_cb = client_connect, .close_cb = client_close, .message_cb = client_message};
    tern_session *s;
    cr_assert_eq(tern_endpoint_connect(cli, addrs, 1, 0, &cbs, &s), 0);
    /* Unreliable messages cannot leave before the handshake. */
    cr_assert_eq(tern_session_send(s, 2, "x", 1, 0), TERN_ERR_STATE);
    cr_assert_eq(tern_session_send(s, 4, "x", 1, 0), TERN_ERR_RANGE);
    cr_assert(tu_run_until(&loop, connected, NULL, 5000));
    int want = 20;
    static uint8_t big[3000];
    for (int i = 0; i < want; i++) {
        for (uint32_t c = 0; c < 4; c++) {
            /* Every fifth message spans three datagrams. */
            size_t len = i % 5 == 0 ? sizeof(big) : (size_t)(10 + i);
            cr_assert_eq(tern_session_send(s, c, big, len, 0), 0, "channel %u", c);
        }
    }
    cr_assert_eq(tern_session_send(s, 0, big, scfg.message_max + 1, 0), TERN_ERR_MSGSIZE);
    cr_assert(tu_run_until(&loop, messages_done, &want, 5000), "messages: %d %d %d %d",
              client.msgs[0], client.msgs[1], client.msgs[2], client.msgs[3]);
    uint64_t expect = 0;
    for (int i = 0; i < want; i++)
        expect += i % 5 == 0 ? sizeof(big) : (uint64_t)(10 + i);
    for (int c = 0; c < 4; c++)
        cr_assert_eq(client.msg_bytes[c], expect, "channel %d bytes", c);
    tern_endpoint *eps[] = {cli, srv};
    tu_close_all(&loop, eps, 2);
}
