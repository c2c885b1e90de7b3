/* tern-tunnel: a TCP tunnel over tern, for the kcptun use case.
 *
 *   app --TCP--> tern-tunnel client ==tern (UDP)==> tern-tunnel server --TCP--> target
 *
 * The client listens on TCP and keeps one session to the server (connected
 * at start, reconnected with backoff when it dies); every accepted
 * connection becomes one stream of that session. The server accepts
 * sessions and connects every stream its peers open to the target. The
 * splicing itself is tools/tunnel_pipe.c; the options are
 * tools/tunnel_config.c.
 *
 * Exit status: 0 after SIGINT/SIGTERM (or --help/--version), 2 for a usage
 * error (flags, config file), 1 for a runtime failure (keys that cannot be
 * read, a port in use). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/cli.h"
#include "tools/tunnel.h"

#define PROG TERN_TUNNEL_PROG
#define EXIT_RUNTIME 1
#define EXIT_USAGE TERN_CLI_EXIT_USAGE
#define NNPSK0_PROTOCOL "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b"
#define PASSPHRASE_MAX 4096
#define BACKOFF_MIN_MS 500U
#define BACKOFF_MAX_MS 30000U
#define MAX_STREAMS 1024U
#define ERR_MAX 1024

/* ---- usage ---------------------------------------------------------------- */

static void usage(FILE *f, tern_tunnel_role role)
{
    bool client = role == TERN_TUNNEL_CLIENT;
    fprintf(f,
            "usage: " PROG " %s -l ADDR %s [OPTIONS]\n"
            "\n"
            "%s"
            "\n"
            "Addresses (HOST:PORT, [IPv6]:PORT, or :PORT for 0.0.0.0:PORT):\n"
            "%s"
            "\n"
            "Security (one of; no key material at all is an error):\n"
            "  --key-file FILE         our private key (base64, from tern-keygen genkey)\n"
            "  --peer-key KEY|FILE     %s\n"
            "%s"
            "  --psk-file FILE         a passphrase shared by both ends (first line) -> NNpsk0\n"
            "  --psk-env VAR           the passphrase in environment variable VAR -> NNpsk0\n"
            "  --insecure              no encryption, no authentication (trusted networks only)\n"
            "\n"
            "Tuning (kcptun's names):\n"
            "  --mode M                normal, fast, fast2, fast3 (default) or turbo\n"
            "  --mtu N                 largest UDP payload, 576..65507 (default 1400)\n"
            "  --sndwnd N, --rcvwnd N  send and receive windows in segments, 1..32768\n"
            "  --dscp N                DSCP of outgoing datagrams, 0..63\n"
            "  --sockbuf SIZE          UDP socket send and receive buffers (e.g. 4M)\n"
            "  --keepalive SECONDS     ping an idle session (default 5); a session silent for\n"
            "                          4 keepalives is dead (0: no pings, no timeout)\n"
            "  --cc none|reno          congestion control (default reno)\n"
            "%s"
            "\n"
            "Other options:\n"
            "  -c, --config FILE       read options from a JSON object, keys named as the long\n"
            "                          flags ({\"listen\": \":29900\", \"mtu\": 1350}); flags win\n"
            "  --stats-interval N      a status line on stderr every N seconds (0: never)\n"
            "  --stats-json FILE       append the status as JSON lines to FILE\n"
            "  -h, --help              show this help and exit\n"
            "  -V, --version           show the version and exit\n"
            "\n"
            "SIGUSR1 prints every counter to stderr; SIGINT or SIGTERM closes and exits 0.\n"
            "\n"
            "Example: %s\n",
            client ? "client" : "server", client ? "-r SERVER:PORT" : "-t TARGET:PORT",
            client ? "Listens on TCP; every connection becomes one stream of one tern session to\n"
                     "the server (reconnected with backoff if it dies).\n"
                   : "Accepts tern sessions; every stream a client opens becomes one TCP\n"
                     "connection to the target.\n",
            client ? "  -l, --listen ADDR       where applications connect (TCP)\n"
                     "  -r, --remote ADDR       the tern-tunnel server (UDP)\n"
                   : "  -l, --listen ADDR       where clients send (UDP)\n"
                     "  -t, --target ADDR       where streams are connected to (TCP)\n",
            client ? "the server's public key (NK; IK with --key-file)"
                   : "a client's public key that may connect (IK)",
            client ? "" : "  --allow-key KEY         another allowed client key (IK; repeatable)\n",
            client ? "  --handshake-timeout S   give up a handshake after S seconds (default 5)\n"
                   : "",
            client ? PROG " client -l 127.0.0.1:12948 -r 203.0.113.7:29900 --peer-key KEY"
                   : PROG " server -l :29900 -t 127.0.0.1:22 --key-file server.key");
}

static int run_client(int argc, char **argv);
static int run_server(int argc, char **argv);

static const tern_cli_command commands[] = {
    {"client", run_client, "listen on TCP, carry each connection to the server"},
    {"server", run_server, "accept tunnels, connect each stream to the target"},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void version(void)
{
    printf(PROG " %s\n", TERN_VERSION_STRING);
}

/* ---- keys ------------------------------------------------------------------- */

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

typedef struct keys {
    tern_keypair kp;
    tern_public_key peer;
    tern_key psk;
    tern_public_key *allowed;
    size_t n_allowed;
} keys;

static int load_public(const tern_tunnel_config *c, tern_public_key *out)
{
    if (c->peer_key_inline) {
        *out = c->peer_public;
        return 0;
    }
    char err[ERR_MAX];
    if (tern_keyfile_read_public(c->peer_key, out, err, sizeof(err)) != 0) {
        fprintf(stderr, PROG ": --peer-key: %s\n", err);
        return -1;
    }
    return 0;
}

static int load_secret(const char *path, tern_keypair *kp)
{
    char err[ERR_MAX];
    bool insecure = false;
    tern_key secret;
    if (tern_keyfile_read_secret(path, &secret, 0, &insecure, err, sizeof(err)) != 0) {
        fprintf(stderr, PROG ": --key-file: %s\n", err);
        return -1;
    }
    if (insecure)
        fprintf(stderr, PROG ": %s\n", err); /* err says "warning: ..." */
    int rc = tern_keypair_from_secret(kp, &secret);
    wipe(&secret, sizeof(secret));
    if (rc != 0) {
        fprintf(stderr, PROG ": --key-file: '%s' does not hold a usable private key: %s\n", path,
                tern_strerror(rc));
        return -1;
    }
    return 0;
}

/* The passphrase: the first line of --psk-file, or $VAR. 1 for a usage
 * error, -1 for a runtime one. */
static int load_passphrase(const tern_tunnel_config *c, char *buf, size_t cap, size_t *len)
{
    if (tern_tunnel_config_has(c, TERN_TUNNEL_OPT_PSK_ENV)) {
        const char *v = getenv(c->psk_env);
        if (!v || !v[0]) {
            fprintf(stderr, PROG ": --psk-env: environment variable %s is %s\n", c->psk_env,
                    v ? "empty" : "not set");
            return 1;
        }
        *len = strlen(v);
        if (*len >= cap) {
            fprintf(stderr, PROG ": --psk-env: the passphrase in %s is too long\n", c->psk_env);
            return 1;
        }
        memcpy(buf, v, *len + 1);
        return 0;
    }
    int fd = open(c->psk_file, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, PROG ": --psk-file: cannot read '%s': %s\n", c->psk_file,
                fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (sb.st_mode & 077)
        fprintf(stderr, PROG ": warning: '%s' may be read by others (mode %03o); chmod 600 it\n",
                c->psk_file, (unsigned)(sb.st_mode & 0777));
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0) {
        fprintf(stderr, PROG ": --psk-file: cannot read '%s': %s\n", c->psk_file, strerror(errno));
        return -1;
    }
    buf[n] = '\0';
    *len = strcspn(buf, "\r\n");
    buf[*len] = '\0';
    if (*len == 0) {
        fprintf(stderr, PROG ": --psk-file: '%s' holds no passphrase on its first line\n",
                c->psk_file);
        return -1;
    }
    return 0;
}

/* Reads what the chosen security needs into k and points ep at it. 0, or
 * an exit status. */
static int load_keys(const tern_tunnel_config *c, keys *k, tern_endpoint_config *ep)
{
    bool client = c->role == TERN_TUNNEL_CLIENT;
    if (c->security == TERN_TUNNEL_SEC_PLAINTEXT) {
        ep->security = TERN_SECURITY_PLAINTEXT;
        return 0;
    }
    if (tern_crypto_init() != 0) {
        fprintf(stderr, PROG ": the crypto library cannot start\n");
        return EXIT_RUNTIME;
    }
    ep->security = TERN_SECURITY_NOISE;
    if (c->security == TERN_TUNNEL_SEC_NNPSK0) {
        char pass[PASSPHRASE_MAX];
        size_t len = 0;
        int rc = load_passphrase(c, pass, sizeof(pass), &len);
        if (rc != 0) {
            wipe(pass, sizeof(pass));
            return rc > 0 ? EXIT_USAGE : EXIT_RUNTIME;
        }
        rc = tern_psk_from_passphrase(&k->psk, pass, len, NNPSK0_PROTOCOL);
        wipe(pass, sizeof(pass));
        if (rc != 0) {
            fprintf(stderr, PROG ": cannot derive the PSK: %s\n", tern_strerror(rc));
            return EXIT_RUNTIME;
        }
        ep->noise.pattern = "NNpsk0";
        ep->noise.psk = &k->psk;
        return 0;
    }
    bool ik = c->security == TERN_TUNNEL_SEC_IK;
    ep->noise.pattern = ik ? "IK" : "NK";
    if (tern_tunnel_config_has(c, TERN_TUNNEL_OPT_KEY_FILE)) {
        if (load_secret(c->key_file, &k->kp) != 0)
            return EXIT_RUNTIME;
        ep->noise.static_key = &k->kp;
    }
    bool have_peer = tern_tunnel_config_has(c, TERN_TUNNEL_OPT_PEER_KEY);
    if (have_peer && load_public(c, &k->peer) != 0)
        return EXIT_RUNTIME;
    if (client) {
        ep->noise.server_public = &k->peer;
        return 0;
    }
    /* The server: --peer-key and every --allow-key are the clients it
     * accepts. */
    size_t n = c->allow.n + (have_peer ? 1 : 0);
    if (n > 0) {
        k->allowed = calloc(n, sizeof(*k->allowed));
        if (!k->allowed) {
            fprintf(stderr, PROG ": out of memory\n");
            return EXIT_RUNTIME;
        }
        memcpy(k->allowed, c->allow.keys, c->allow.n * sizeof(*k->allowed));
        if (have_peer)
            k->allowed[c->allow.n] = k->peer;
        k->n_allowed = n;
        ep->noise.allowed_peers = k->allowed;
        ep->noise.n_allowed_peers = n;
    }
    return 0;
}

/* ---- stats ------------------------------------------------------------------- */

typedef struct snapshot {
    uint32_t sessions, streams;
    uint64_t elapsed_ms;
    double rate_in, rate_out; /* TCP payload bytes/s since the last snapshot */
    uint32_t srtt_ms;         /* mean over sessions that have one */
    uint64_t segs_sent, retrans, lost;
    double retrans_ratio, loss_ratio;
    tern_endpoint_stats ep;
} snapshot;

static void take_snapshot(tern_tunnel *tn, snapshot *sn, bool advance)
{
    memset(sn, 0, sizeof(*sn));
    uint64_t now = uv_now(&tn->loop);
    sn->elapsed_ms = now - tn->start_ms;
    sn->sessions = tn->n_sessions;
    sn->streams = tn->n_conns;
    uint64_t dt = now - tn->last_stats_ms;
    if (dt > 0) {
        sn->rate_in = (double)(tn->ctr.bytes_in - tn->last_in) * 1000.0 / (double)dt;
        sn->rate_out = (double)(tn->ctr.bytes_out - tn->last_out) * 1000.0 / (double)dt;
    }
    if (advance) {
        tn->last_stats_ms = now;
        tn->last_in = tn->ctr.bytes_in;
        tn->last_out = tn->ctr.bytes_out;
    }
    uint64_t srtt_sum = 0, srtt_n = 0;
    for (tern_tunnel_group *g = tn->groups; g; g = g->next) {
        tern_session_stats ss;
        tern_session_get_stats(g->session, &ss);
        if (ss.srtt_ms) {
            srtt_sum += ss.srtt_ms;
            srtt_n++;
        }
        sn->segs_sent += ss.kcp.segs_sent;
        sn->retrans += ss.kcp.retrans_timeout + ss.kcp.retrans_fast + ss.kcp.retrans_early;
        sn->lost += ss.kcp.lost;
    }
    sn->srtt_ms = srtt_n ? (uint32_t)(srtt_sum / srtt_n) : 0;
    if (sn->segs_sent) {
        sn->retrans_ratio = (double)sn->retrans / (double)sn->segs_sent;
        sn->loss_ratio = (double)sn->lost / (double)sn->segs_sent;
    }
    if (tn->ep)
        tern_endpoint_get_stats(tn->ep, &sn->ep);
}

static void human_rate(double bps, char *buf, size_t cap)
{
    if (bps >= 1e6)
        snprintf(buf, cap, "%.2f MB/s", bps / 1e6);
    else if (bps >= 1e3)
        snprintf(buf, cap, "%.1f kB/s", bps / 1e3);
    else
        snprintf(buf, cap, "%.0f B/s", bps);
}

static void write_stats_json(tern_tunnel *tn, const snapshot *sn, const char *event)
{
    if (!tn->stats_json)
        return;
    json_t *o = json_object();
    json_t *tcp = json_object();
    json_t *udp = json_object();
    if (!o || !tcp || !udp) {
        json_decref(o);
        json_decref(tcp);
        json_decref(udp);
        return;
    }
    json_object_set_new(o, "event", json_string(event));
    json_object_set_new(o, "role", json_string(tern_tunnel_role_name(tn->cfg.role)));
    json_object_set_new(o, "security", json_string(tern_tunnel_security_name(tn->cfg.security)));
    json_object_set_new(o, "elapsed_ms", json_integer((json_int_t)sn->elapsed_ms));
    json_object_set_new(o, "sessions", json_integer(sn->sessions));
    json_object_set_new(o, "streams", json_integer(sn->streams));
    json_object_set_new(o, "srtt_ms", json_integer(sn->srtt_ms));
    json_object_set_new(o, "retrans_ratio", json_real(sn->retrans_ratio));
    json_object_set_new(o, "loss_ratio", json_real(sn->loss_ratio));
    json_object_set_new(tcp, "accepted", json_integer((json_int_t)tn->ctr.tcp_accepted));
    json_object_set_new(tcp, "refused", json_integer((json_int_t)tn->ctr.tcp_refused));
    json_object_set_new(tcp, "connect_failed", json_integer((json_int_t)tn->ctr.connect_failed));
    json_object_set_new(tcp, "bytes_in", json_integer((json_int_t)tn->ctr.bytes_in));
    json_object_set_new(tcp, "bytes_out", json_integer((json_int_t)tn->ctr.bytes_out));
    json_object_set_new(tcp, "rate_in", json_real(sn->rate_in));
    json_object_set_new(tcp, "rate_out", json_real(sn->rate_out));
    json_object_set_new(tcp, "closed_clean", json_integer((json_int_t)tn->ctr.closed_clean));
    json_object_set_new(tcp, "closed_reset", json_integer((json_int_t)tn->ctr.closed_reset));
    json_object_set_new(o, "tcp", tcp);
    json_object_set_new(udp, "dgrams_in", json_integer((json_int_t)sn->ep.dgrams_in));
    json_object_set_new(udp, "dgrams_out", json_integer((json_int_t)sn->ep.dgrams_out));
    json_object_set_new(udp, "bytes_in", json_integer((json_int_t)sn->ep.bytes_in));
    json_object_set_new(udp, "bytes_out", json_integer((json_int_t)sn->ep.bytes_out));
    json_object_set_new(udp, "drop_auth", json_integer((json_int_t)sn->ep.drop_auth));
    json_object_set_new(o, "udp", udp);
    if (json_dumpf(o, tn->stats_json, JSON_COMPACT) == 0)
        fputc('\n', tn->stats_json);
    fflush(tn->stats_json);
    json_decref(o);
}

static void on_stats(uv_timer_t *t)
{
    tern_tunnel *tn = t->data;
    snapshot sn;
    take_snapshot(tn, &sn, true);
    char in[32], out[32];
    human_rate(sn.rate_in, in, sizeof(in));
    human_rate(sn.rate_out, out, sizeof(out));
    fprintf(stderr,
            PROG ": %.1fs sessions %" PRIu32 " streams %" PRIu32 " in %s out %s srtt %" PRIu32
                 " ms retrans %.2f%% loss %.2f%%\n",
            (double)sn.elapsed_ms / 1000.0, sn.sessions, sn.streams, in, out, sn.srtt_ms,
            sn.retrans_ratio * 100.0, sn.loss_ratio * 100.0);
    write_stats_json(tn, &sn, "interval");
}

#define ROW(name, v) fprintf(stderr, "  %-24s %" PRIu64 "\n", name, (uint64_t)(v))

/* SIGUSR1: everything we count, on stderr. */
static void dump_counters(tern_tunnel *tn)
{
    snapshot sn;
    take_snapshot(tn, &sn, false);
    const tern_tunnel_counters *c = &tn->ctr;
    fprintf(stderr, PROG ": counters after %.1fs (%s, %s)\n", (double)sn.elapsed_ms / 1000.0,
            tern_tunnel_role_name(tn->cfg.role), tern_tunnel_security_name(tn->cfg.security));
    fprintf(stderr, " tunnel\n");
    ROW("sessions_now", tn->n_sessions);
    ROW("sessions_total", c->sessions_total);
    ROW("streams_now", tn->n_conns);
    ROW("tcp_accepted", c->tcp_accepted);
    ROW("tcp_refused", c->tcp_refused);
    ROW("connect_failed", c->connect_failed);
    ROW("bytes_in", c->bytes_in);
    ROW("bytes_out", c->bytes_out);
    ROW("closed_clean", c->closed_clean);
    ROW("closed_reset", c->closed_reset);
    ROW("paused_tcp", c->paused_tcp);
    ROW("paused_stream", c->paused_stream);
    ROW("bad_hello", c->bad_hello);
    const tern_endpoint_stats *e = &sn.ep;
    fprintf(stderr, " endpoint\n");
    ROW("dgrams_in", e->dgrams_in);
    ROW("dgrams_out", e->dgrams_out);
    ROW("bytes_in", e->bytes_in);
    ROW("bytes_out", e->bytes_out);
    ROW("sessions_accepted", e->sessions_accepted);
    ROW("sessions_connected", e->sessions_connected);
    ROW("sessions_refused", e->sessions_refused);
    ROW("sessions_timed_out", e->sessions_timed_out);
    ROW("sessions_closed", e->sessions_closed);
    ROW("drop_malformed", e->drop_malformed);
    ROW("drop_unknown_session", e->drop_unknown_session);
    ROW("drop_auth", e->drop_auth);
    ROW("drop_ratelimited", e->drop_ratelimited);
    ROW("drop_limit", e->drop_limit);
    ROW("drop_peer_refused", e->drop_peer_refused);
    ROW("cookies_sent", e->cookies_sent);
    ROW("send_failed", e->send_failed);
    for (tern_tunnel_group *g = tn->groups; g; g = g->next) {
        tern_session_stats s;
        tern_session_get_stats(g->session, &s);
        struct sockaddr_storage peer;
        char name[TERN_CLI_ADDR_MAX] = "?";
        if (tern_session_peer_addr(g->session, &peer) == 0)
            (void)tern_cli_format_addr((const struct sockaddr *)&peer, name, sizeof(name));
        fprintf(stderr, " session %" PRIu32 " (%s, %" PRIu32 " connections)\n",
                tern_session_id(g->session), name, g->n_conns);
        ROW("dgrams_in", s.dgrams_in);
        ROW("dgrams_out", s.dgrams_out);
        ROW("bytes_in", s.bytes_in);
        ROW("bytes_out", s.bytes_out);
        ROW("drop_auth", s.drop_auth);
        ROW("drop_malformed", s.drop_malformed);
        ROW("drop_replay", s.drop_replay);
        ROW("pings_sent", s.pings_sent);
        ROW("path_changes", s.path_changes);
        ROW("streams_open", s.streams_open);
        ROW("srtt_ms", s.srtt_ms);
        ROW("segs_sent", s.kcp.segs_sent);
        ROW("segs_recv", s.kcp.segs_recv);
        ROW("retrans_timeout", s.kcp.retrans_timeout);
        ROW("retrans_fast", s.kcp.retrans_fast);
        ROW("retrans_early", s.kcp.retrans_early);
        ROW("lost", s.kcp.lost);
        ROW("spurious", s.kcp.spurious);
        ROW("dup_segs", s.kcp.dup_segs);
        ROW("cwnd_bytes", s.kcp.cwnd_bytes);
        ROW("in_flight_bytes", s.kcp.in_flight_bytes);
        ROW("snd_queue_bytes", s.kcp.snd_queue_bytes);
        ROW("resend_segs", s.kcp.resend_segs);
        ROW("rcv_buf_segs", s.kcp.rcv_buf_segs);
        ROW("rcv_queue_segs", s.kcp.rcv_queue_segs);
        ROW("rmt_wnd", s.kcp.rmt_wnd);
        ROW("probes_sent", s.kcp.probes_sent);
        ROW("out_of_window", s.kcp.out_of_window);
    }
    write_stats_json(tn, &sn, "sigusr1");
}

#undef ROW

/* ---- sessions ----------------------------------------------------------------- */

static tern_tunnel_group *group_new(tern_tunnel *tn, tern_session *s)
{
    tern_tunnel_group *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->tn = tn;
    g->session = s;
    g->next = tn->groups;
    if (tn->groups)
        tn->groups->prev = g;
    tn->groups = g;
    tn->n_sessions++;
    tn->ctr.sessions_total++;
    tern_session_set_data(s, g);
    return g;
}

/* The session is gone: its connections are reset, its group freed. */
static void group_end(tern_tunnel_group *g)
{
    tern_tunnel *tn = g->tn;
    tern_tunnel_group_fail(g);
    if (g->prev)
        g->prev->next = g->next;
    else
        tn->groups = g->next;
    if (g->next)
        g->next->prev = g->prev;
    if (tn->current == g)
        tn->current = NULL;
    tn->n_sessions--;
    free(g);
}

static void peer_name(const tern_tunnel *tn, char *buf, size_t cap)
{
    if (tern_cli_format_addr((const struct sockaddr *)&tn->peer_addr, buf, cap) < 0)
        snprintf(buf, cap, "?");
}

static void client_connect(tern_tunnel *tn);

static void on_reconnect(uv_timer_t *t)
{
    client_connect(t->data);
}

static void schedule_reconnect(tern_tunnel *tn)
{
    if (tn->stopping)
        return;
    uint32_t wait = tn->backoff_ms;
    tn->backoff_ms = tn->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : tn->backoff_ms * 2;
    uv_timer_start(&tn->reconnect_timer, on_reconnect, wait, 0);
}

static void on_client_connected(tern_session *s, int status)
{
    tern_tunnel_group *g = tern_session_get_data(s);
    tern_tunnel *tn = g->tn;
    char name[TERN_CLI_ADDR_MAX];
    peer_name(tn, name, sizeof(name));
    if (status == 0) {
        g->connected = true;
        tn->backoff_ms = BACKOFF_MIN_MS;
        fprintf(stderr, PROG ": connected to %s (%s)\n", name,
                tern_tunnel_security_name(tn->cfg.security));
    } else if (!tn->stopping) {
        fprintf(stderr, PROG ": cannot connect to %s: %s; retrying in %.1fs\n", name,
                tern_strerror(status), (double)tn->backoff_ms / 1000.0);
    }
}

static void on_client_closed(tern_session *s, int status)
{
    tern_tunnel_group *g = tern_session_get_data(s);
    tern_tunnel *tn = g->tn;
    if (g->connected && !tn->stopping) {
        char name[TERN_CLI_ADDR_MAX];
        peer_name(tn, name, sizeof(name));
        fprintf(stderr,
                PROG ": session to %s ended (%s), %" PRIu32 " connections reset; "
                     "reconnecting in %.1fs\n",
                name, tern_strerror(status), g->n_conns, (double)tn->backoff_ms / 1000.0);
    }
    bool was_current = tn->current == g;
    group_end(g);
    if (was_current)
        schedule_reconnect(tn);
}

static void client_connect(tern_tunnel *tn)
{
    if (tn->stopping || tn->current)
        return;
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&tn->peer_addr};
    tern_session_callbacks cbs = {.connect_cb = on_client_connected, .close_cb = on_client_closed};
    tern_session *s;
    int rc = tern_endpoint_connect(tn->ep, addrs, 1, 0, &cbs, &s);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot start a session: %s; retrying in %.1fs\n", tern_strerror(rc),
                (double)tn->backoff_ms / 1000.0);
        schedule_reconnect(tn);
        return;
    }
    tern_tunnel_group *g = group_new(tn, s);
    if (!g) {
        /* Out of memory: no callbacks (they would find no group), try later. */
        tern_session_callbacks none = {0};
        tern_session_set_callbacks(s, &none);
        (void)tern_session_abort(s);
        schedule_reconnect(tn);
        return;
    }
    tn->current = g;
    /* Streams may open before the handshake ends: the waiting room goes in. */
    tern_tunnel_group_adopt(g, &tn->waiting);
}

static void on_tcp_connection(uv_stream_t *server, int status)
{
    tern_tunnel *tn = server->data;
    if (status < 0) {
        fprintf(stderr, PROG ": accept: %s\n", uv_strerror(status));
        return;
    }
    tern_tunnel_conn_accept(tn);
}

static void on_server_stream(tern_session *s, tern_stream *st)
{
    tern_tunnel_conn_from_stream(tern_session_get_data(s), st);
}

static void on_server_closed(tern_session *s, int status)
{
    (void)status;
    group_end(tern_session_get_data(s));
}

static void on_accept(tern_endpoint *ep, tern_session *s)
{
    tern_tunnel *tn = tern_endpoint_get_data(ep);
    if (tn->stopping || !group_new(tn, s)) {
        (void)tern_session_abort(s);
        return;
    }
    tern_session_callbacks cbs = {.stream_cb = on_server_stream, .close_cb = on_server_closed};
    tern_session_set_callbacks(s, &cbs);
}

/* ---- start and stop ------------------------------------------------------------ */

static void close_handle(uv_handle_t *h)
{
    if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
        uv_close(h, NULL);
}

static void stop(tern_tunnel *tn)
{
    if (tn->stopping)
        return;
    if (tn->stats_json) {
        snapshot sn;
        take_snapshot(tn, &sn, true);
        write_stats_json(tn, &sn, "exit");
    }
    tn->stopping = true;
    close_handle((uv_handle_t *)&tn->sigint);
    close_handle((uv_handle_t *)&tn->sigterm);
    close_handle((uv_handle_t *)&tn->sigusr1);
    close_handle((uv_handle_t *)&tn->stats_timer);
    close_handle((uv_handle_t *)&tn->reconnect_timer);
    close_handle((uv_handle_t *)&tn->poll_timer);
    close_handle((uv_handle_t *)&tn->linger_timer);
    if (tn->cfg.role == TERN_TUNNEL_CLIENT)
        close_handle((uv_handle_t *)&tn->listener);
    tern_tunnel_group_fail(&tn->waiting);
    /* Every session is aborted; their close callbacks reset what is left. */
    if (tn->ep) {
        (void)tern_endpoint_close(tn->ep, NULL);
        tn->ep = NULL;
    }
}

static void on_signal(uv_signal_t *sig, int signum)
{
    tern_tunnel *tn = sig->data;
    if (signum == SIGUSR1)
        dump_counters(tn);
    else
        stop(tn);
}

static int start_signals(tern_tunnel *tn)
{
    uv_signal_t *sigs[] = {&tn->sigint, &tn->sigterm, &tn->sigusr1};
    const int nums[] = {SIGINT, SIGTERM, SIGUSR1};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&tn->loop, sigs[i]);
        sigs[i]->data = tn;
        int rc = uv_signal_start(sigs[i], on_signal, nums[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Names in --listen, --remote and --target are resolved here. */
static int resolve(const char *flag, const char *text, struct sockaddr_storage *out)
{
    int rc = tern_cli_parse_hostport(text, out, NULL);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot use '%s' for --%s: %s\n", text, flag, tern_strerror(rc));
        return EXIT_USAGE;
    }
    return 0;
}

static int start_client(tern_tunnel *tn)
{
    char name[TERN_CLI_ADDR_MAX];
    uv_tcp_init(&tn->loop, &tn->listener);
    tn->listener.data = tn;
    int rc = uv_tcp_bind(&tn->listener, (const struct sockaddr *)&tn->listen_addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&tn->listener, 128, on_tcp_connection);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot listen on %s: %s\n", tn->cfg.listen, uv_strerror(rc));
        return EXIT_RUNTIME;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    if (uv_tcp_getsockname(&tn->listener, (struct sockaddr *)&bound, &len) != 0 ||
        tern_cli_format_addr((const struct sockaddr *)&bound, name, sizeof(name)) < 0)
        snprintf(name, sizeof(name), "?");
    char remote[TERN_CLI_ADDR_MAX];
    peer_name(tn, remote, sizeof(remote));
    client_connect(tn);
    /* Last, once the socket listens: tests and scripts wait for this line. */
    fprintf(stderr, PROG ": client listening on %s, remote %s (%s)\n", name, remote,
            tern_tunnel_security_name(tn->cfg.security));
    return 0;
}

static int start_server(tern_tunnel *tn)
{
    char name[TERN_CLI_ADDR_MAX], target[TERN_CLI_ADDR_MAX];
    int rc = tern_endpoint_listen(tn->ep, on_accept);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot listen: %s\n", tern_strerror(rc));
        return EXIT_RUNTIME;
    }
    struct sockaddr_storage bound;
    if (tern_endpoint_local_addr(tn->ep, &bound) != 0 ||
        tern_cli_format_addr((const struct sockaddr *)&bound, name, sizeof(name)) < 0)
        snprintf(name, sizeof(name), "?");
    peer_name(tn, target, sizeof(target));
    fprintf(stderr, PROG ": server listening on %s (%s), target %s\n", name,
            tern_tunnel_security_name(tn->cfg.security), target);
    return 0;
}

/* The UDP socket: the server's on --listen; the client's on an ephemeral
 * port of the remote's family. */
static int open_endpoint(tern_tunnel *tn, const tern_endpoint_config *ecfg)
{
    struct sockaddr_storage bind_addr;
    const char *any = tn->peer_addr.ss_family == AF_INET6 ? "[::]:0" : "0.0.0.0:0";
    if (tn->cfg.role == TERN_TUNNEL_SERVER)
        bind_addr = tn->listen_addr;
    else if (tern_sockaddr_parse(any, &bind_addr) != 0)
        return EXIT_RUNTIME;
    int rc = tern_endpoint_new(&tn->ep, &tn->loop, (const struct sockaddr *)&bind_addr, ecfg);
    if (rc < 0) {
        if (tn->cfg.role == TERN_TUNNEL_SERVER)
            fprintf(stderr, PROG ": cannot listen on %s: %s\n", tn->cfg.listen, tern_strerror(rc));
        else
            fprintf(stderr, PROG ": cannot open a UDP socket: %s\n", tern_strerror(rc));
        return EXIT_RUNTIME;
    }
    tern_endpoint_set_data(tn->ep, tn);
    return 0;
}

static int run(tern_tunnel *tn, keys *k)
{
    tern_tunnel_config *c = &tn->cfg;
    bool client = c->role == TERN_TUNNEL_CLIENT;
    int rc = resolve("listen", c->listen, &tn->listen_addr);
    if (rc == 0)
        rc = resolve(client ? "remote" : "target", client ? c->remote : c->target, &tn->peer_addr);
    if (rc != 0)
        return rc;

    tern_endpoint_config ecfg;
    tern_endpoint_config_default(&ecfg);
    ecfg.max_streams = MAX_STREAMS;
    if (tern_tunnel_config_apply(c, &ecfg) != 0) {
        fprintf(stderr, PROG ": the tuning options are inconsistent\n");
        return EXIT_USAGE;
    }
    rc = load_keys(c, k, &ecfg);
    if (rc != 0)
        return rc;
    if (tern_tunnel_config_has(c, TERN_TUNNEL_OPT_STATS_JSON)) {
        tn->stats_json = fopen(c->stats_json, "a");
        if (!tn->stats_json) {
            fprintf(stderr, PROG ": --stats-json: cannot open '%s': %s\n", c->stats_json,
                    strerror(errno));
            return EXIT_RUNTIME;
        }
    }

    tn->start_ms = tn->last_stats_ms = uv_now(&tn->loop);
    tn->backoff_ms = BACKOFF_MIN_MS;
    tn->waiting.tn = tn;
    uv_timer_init(&tn->loop, &tn->stats_timer);
    uv_timer_init(&tn->loop, &tn->reconnect_timer);
    uv_timer_init(&tn->loop, &tn->poll_timer);
    uv_timer_init(&tn->loop, &tn->linger_timer);
    tn->stats_timer.data = tn->reconnect_timer.data = tn->poll_timer.data = tn;
    tn->linger_timer.data = tn;
    rc = start_signals(tn);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot catch signals: %s\n", uv_strerror(rc));
        return EXIT_RUNTIME;
    }
    rc = open_endpoint(tn, &ecfg);
    if (rc == 0)
        rc = client ? start_client(tn) : start_server(tn);
    if (rc == 0 && c->stats_interval_s)
        uv_timer_start(&tn->stats_timer, on_stats, c->stats_interval_s * 1000ULL,
                       c->stats_interval_s * 1000ULL);
    return rc;
}

static int run_role(tern_tunnel_role role, int argc, char **argv)
{
    tern_tunnel *tn = calloc(1, sizeof(*tn));
    keys *k = calloc(1, sizeof(*k));
    if (!tn || !k) {
        free(tn);
        free(k);
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    char err[ERR_MAX];
    int status = 0;
    int rc = tern_tunnel_config_resolve(&tn->cfg, role, argc, argv, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, PROG ": %s: %s (try '" PROG " %s --help')\n", tern_tunnel_role_name(role),
                err, tern_tunnel_role_name(role));
        status = EXIT_USAGE;
    } else if (tn->cfg.help) {
        usage(stdout, role);
    } else if (tn->cfg.version) {
        version();
    } else if (uv_loop_init(&tn->loop) != 0) {
        fprintf(stderr, PROG ": cannot start the event loop\n");
        status = EXIT_RUNTIME;
    } else {
        status = run(tn, k);
        /* On a failure, close what was opened and let the loop finish it. */
        if (status != 0)
            stop(tn);
        uv_run(&tn->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&tn->loop) != 0)
            fprintf(stderr, PROG ": warning: handles left open at exit\n");
    }
    if (tn->stats_json)
        fclose(tn->stats_json);
    free(k->allowed);
    wipe(k, sizeof(*k));
    free(k);
    free(tn);
    return status;
}

static int run_client(int argc, char **argv)
{
    return run_role(TERN_TUNNEL_CLIENT, argc, argv);
}

static int run_server(int argc, char **argv)
{
    return run_role(TERN_TUNNEL_SERVER, argc, argv);
}

int main(int argc, char **argv)
{
    /* A write to a socket its peer closed must fail with EPIPE, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        version();
        return 0;
    }
    return tern_cli_dispatch(argc, argv, commands, N_COMMANDS, PROG);
}
