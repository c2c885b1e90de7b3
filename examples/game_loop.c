/* game_loop: the network skeleton of a small real-time game, both roles in
 * one program.
 *
 *   game_loop server [--listen HOST:PORT] [--key FILE] [impairment]
 *   game_loop client --server-key KEY [--chat TEXT] [--duration MS] [impairment]
 *                    HOST:PORT [HOST:PORT ...]
 *
 * The server runs the simulation at a fixed 20 Hz tick (a uv_timer) and,
 * after each tick, sends every connected client a snapshot of the world on
 * an unreliable-sequenced channel. Clients send their input every tick on
 * an unreliable channel, and chat lines on a reliable-ordered channel; the
 * server broadcasts each chat line to everyone. The channel table and the
 * message formats are in game_protocol.h, which both roles share.
 *
 * The client plays itself (it walks in a square) and prints, every second,
 * the snapshot rate it gets, how many snapshots tern dropped as obsolete
 * (they arrived after a newer one), where it is and the round-trip time;
 * chat lines as they come; and a summary line when it leaves. Lines typed on
 * standard input (a terminal or a pipe) are sent as chat.
 *
 * Impairment, either role: tern can fake a bad network inside the endpoint
 * (tern_endpoint_config.impair_send / impair_recv), to try a game under lag
 * without any other tool. Each flag applies to each direction:
 *   --impair-loss 5%  --impair-delay 50ms  --impair-jitter 20ms  --impair-seed N
 *
 * Events and stats go to standard output, start-up and errors to standard
 * error. SIGINT or SIGTERM: the server closes every session and exits 0; the
 * client leaves gracefully (exit 0), as it does after --duration. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <tern/tern.h>

#include "game_protocol.h"

#define PROG "game_loop"
#define EXIT_USAGE 2
#define MAX_SERVERS 8
/* After a stall (a debugger, a suspended process) the simulation catches up
 * at most this many ticks at once, then skips ahead rather than spiral. */
#define MAX_CATCH_UP 5
#define STATUS_EVERY_MS 5000

/* ---- what both roles share ---- */

typedef struct options {
    /* server */
    const char *listen, *key_path;
    /* client */
    tern_public_key server_key;
    bool have_key;
    struct sockaddr_storage servers[MAX_SERVERS];
    size_t n_servers;
    const char *chat;
    unsigned long duration_ms; /* 0: until SIGINT */
    /* both */
    bool impair;
    tern_netsim_cfg impairment;
    unsigned long impair_seed;
} options;

static void format_addr(const struct sockaddr_storage *a, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)a;
        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)a;
        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
    }
}

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* The endpoint settings both roles use: defaults (Noise NK, fast3), the
 * shared channel table, and the optional impairment. */
static void configure(tern_endpoint_config *cfg, const options *o)
{
    tern_endpoint_config_default(cfg);
    game_configure_channels(cfg);
    if (o->impair) {
        /* Copied by tern_endpoint_new(); the same model for both
         * directions, each with its own random stream from the seed. */
        cfg->impair_send = &o->impairment;
        cfg->impair_recv = &o->impairment;
        cfg->impair_seed = o->impair_seed;
        fprintf(stderr,
                PROG ": impairment each way: %.1f%% loss, %u ms delay, 0-%u ms jitter "
                     "(seed %lu)\n",
                o->impairment.loss * 100.0, o->impairment.delay_ms, o->impairment.jitter_ms,
                o->impair_seed);
    }
}

/* The built-in impairment holds datagrams back for up to delay + jitter, and
 * closing an endpoint drops what it still holds, our goodbye included. So
 * with impairment on, both roles keep the endpoint open that much longer
 * after the sessions end (a real network would already carry them). */
static uint64_t impair_hold_ms(const options *o)
{
    return o->impair ? (uint64_t)o->impairment.delay_ms + o->impairment.jitter_ms + 20 : 0;
}

/* ======================================================================== */
/* ---- the server ---- */

typedef struct player {
    bool used;
    uint32_t id;
    tern_session *s;
    char addr[64];
    int32_t x_mm, y_mm;
    game_input input; /* the newest applied */
    bool have_input;
    uint64_t inputs, stale_inputs, malformed;
} player;

typedef struct game_server {
    const options *opt;
    uv_loop_t *loop;
    tern_endpoint *ep;
    uv_timer_t tick_timer;
    uv_signal_t sigint, sigterm;
    player players[GAME_MAX_PLAYERS];
    uint32_t next_id;
    uint32_t tick;
    uint64_t next_tick_at, next_status_at;
    uint64_t snapshots_sent, send_failed, refused;
    bool stopping;
} game_server;

static int32_t clamp_mm(int64_t v)
{
    return v < -GAME_WORLD_MM ? -GAME_WORLD_MM : v > GAME_WORLD_MM ? GAME_WORLD_MM : (int32_t)v;
}

/* One fixed step of the world: every player moves by its latest input. A
 * fixed step keeps the simulation the same whatever the timer's jitter. */
static void simulate(game_server *sv)
{
    for (int i = 0; i < GAME_MAX_PLAYERS; i++) {
        player *p = &sv->players[i];
        if (!p->used || !p->have_input)
            continue;
        p->x_mm = clamp_mm((int64_t)p->x_mm + p->input.move_x * GAME_SPEED_MM / 100);
        p->y_mm = clamp_mm((int64_t)p->y_mm + p->input.move_y * GAME_SPEED_MM / 100);
    }
}

/* The same world to everyone, with each client's own input_ack and id. */
static void send_snapshots(game_server *sv)
{
    game_snapshot snap;
    snap.tick = sv->tick;
    snap.n = 0;
    for (int i = 0; i < GAME_MAX_PLAYERS; i++) {
        const player *p = &sv->players[i];
        if (p->used)
            snap.ents[snap.n++] = (game_entity){.id = p->id, .x_mm = p->x_mm, .y_mm = p->y_mm};
    }
    uint8_t buf[GAME_SNAPSHOT_MAX];
    for (int i = 0; i < GAME_MAX_PLAYERS; i++) {
        player *p = &sv->players[i];
        if (!p->used)
            continue;
        snap.input_ack = p->input.seq;
        snap.you = p->id;
        size_t len = game_snapshot_encode(&snap, buf);
        /* Unreliable: sent in this loop iteration or never, so there is
         * no queue to fill; a failure is only counted. */
        if (tern_session_send(p->s, GAME_CH_SNAPSHOT, buf, len, 0) == 0)
            sv->snapshots_sent++;
        else
            sv->send_failed++;
    }
}

static void on_tick(uv_timer_t *t)
{
    game_server *sv = t->data;
    uint64_t now = uv_now(sv->loop);
    int steps = 0;
    while (sv->next_tick_at <= now && steps < MAX_CATCH_UP) {
        simulate(sv);
        sv->tick++;
        sv->next_tick_at += GAME_TICK_MS;
        steps++;
    }
    if (sv->next_tick_at <= now)
        sv->next_tick_at = now + GAME_TICK_MS;
    /* Only the newest state is worth sending, once per timer callback. */
    if (steps > 0)
        send_snapshots(sv);
    if (now >= sv->next_status_at) {
        int n = 0;
        for (int i = 0; i < GAME_MAX_PLAYERS; i++)
            n += sv->players[i].used;
        printf("server: tick %u, %d player(s), %llu snapshots sent, %llu failed\n", sv->tick, n,
               (unsigned long long)sv->snapshots_sent, (unsigned long long)sv->send_failed);
        sv->next_status_at = now + STATUS_EVERY_MS;
    }
    /* A one-shot timer aimed at the next tick's due time: a repeating
     * timer would drift by the time each callback takes. */
    uv_timer_start(t, on_tick, sv->next_tick_at - now, 0);
}

/* A chat line to every player (reliable: queued for each). */
static void broadcast_chat(game_server *sv, const char *text, size_t len)
{
    if (sv->stopping)
        return;
    printf("chat: %.*s\n", (int)len, text);
    for (int i = 0; i < GAME_MAX_PLAYERS; i++) {
        player *p = &sv->players[i];
        if (p->used && tern_session_send(p->s, GAME_CH_CHAT, text, len, 0) < 0)
            sv->send_failed++; /* WOULDBLOCK: that client stopped reading */
    }
}

static void on_player_input(player *p, const uint8_t *data, size_t len)
{
    game_input in;
    if (!game_input_decode(&in, data, len)) {
        p->malformed++;
        return;
    }
    /* Unreliable messages may arrive out of order: keep only newer ones
     * (serial-number comparison, so the counter may wrap). */
    if (p->have_input && (int32_t)(in.seq - p->input.seq) <= 0) {
        p->stale_inputs++;
        return;
    }
    p->input = in;
    p->have_input = true;
    p->inputs++;
}

static void on_player_chat(game_server *sv, player *p, const uint8_t *data, size_t len)
{
    if (len == 0 || len > GAME_CHAT_MAX) {
        p->malformed++;
        return;
    }
    char line[GAME_CHAT_MAX + 32];
    int n = snprintf(line, sizeof(line), "player %u: ", p->id);
    /* Never relay control characters to other players' terminals. */
    for (size_t i = 0; i < len; i++)
        line[(size_t)n + i] = data[i] < 0x20 || data[i] == 0x7f ? '?' : (char)data[i];
    broadcast_chat(sv, line, (size_t)n + len);
}

static void on_server_message(tern_session *s, uint32_t channel, const uint8_t *data, size_t len)
{
    player *p = tern_session_get_data(s);
    game_server *sv = tern_endpoint_get_data(tern_session_endpoint(s));
    if (channel == GAME_CH_INPUT)
        on_player_input(p, data, len);
    else if (channel == GAME_CH_CHAT)
        on_player_chat(sv, p, data, len);
    else
        p->malformed++; /* clients send no snapshots */
}

static void on_server_session_closed(tern_session *s, int status)
{
    player *p = tern_session_get_data(s);
    game_server *sv = tern_endpoint_get_data(tern_session_endpoint(s));
    /* EOF: the client closed the session gracefully; RESET: it aborted. */
    printf("player %u (%s) left: %s; %llu inputs, %llu stale, %llu malformed\n", p->id, p->addr,
           status == TERN_ERR_EOF     ? "closed by the client"
           : status == TERN_ERR_RESET ? "reset by the client"
                                      : tern_strerror(status),
           (unsigned long long)p->inputs, (unsigned long long)p->stale_inputs,
           (unsigned long long)p->malformed);
    p->used = false;
    p->s = NULL;
    char line[64];
    int n = snprintf(line, sizeof(line), "* player %u left", p->id);
    broadcast_chat(sv, line, (size_t)n);
}

static void on_server_accept(tern_endpoint *ep, tern_session *s)
{
    game_server *sv = tern_endpoint_get_data(ep);
    player *p = NULL;
    for (int i = 0; i < GAME_MAX_PLAYERS && !p; i++) {
        if (!sv->players[i].used)
            p = &sv->players[i];
    }
    if (!p) {
        /* Full: every bound is explicit, and what exceeds it is refused. */
        sv->refused++;
        (void)tern_session_abort(s);
        return;
    }
    memset(p, 0, sizeof(*p));
    p->used = true;
    p->s = s;
    p->id = ++sv->next_id;
    /* Spawn points along a line, so players do not start on each other. */
    p->x_mm = (int32_t)(p->id % 8) * 2000 - 7000;
    struct sockaddr_storage addr;
    if (tern_session_peer_addr(s, &addr) == 0)
        format_addr(&addr, p->addr, sizeof(p->addr));
    tern_session_set_data(s, p);
    tern_session_callbacks cbs = {.message_cb = on_server_message,
                                  .close_cb = on_server_session_closed};
    tern_session_set_callbacks(s, &cbs);
    printf("player %u joined from %s\n", p->id, p->addr);
    char line[64];
    int n = snprintf(line, sizeof(line), "* player %u joined", p->id);
    broadcast_chat(sv, line, (size_t)n);
}

static void server_close_all(uv_timer_t *t)
{
    game_server *sv = t->data;
    /* Closes the socket (and aborts any session left); with the timer and
     * signals closed too, nothing is left on the loop and uv_run() returns. */
    (void)tern_endpoint_close(sv->ep, NULL);
    uv_close((uv_handle_t *)&sv->tick_timer, NULL);
    uv_close((uv_handle_t *)&sv->sigint, NULL);
    uv_close((uv_handle_t *)&sv->sigterm, NULL);
}

static void on_server_signal(uv_signal_t *sig, int signum)
{
    game_server *sv = sig->data;
    if (sv->stopping)
        return;
    sv->stopping = true;
    fprintf(stderr, PROG ": %s: stopping at tick %u\n", signum == SIGINT ? "SIGINT" : "SIGTERM",
            sv->tick);
    /* Tell every player now (abort sends them a CLOSE), close the rest
     * once the impairment, if any, has let those out. The tick timer is
     * reused for that wait. */
    for (int i = 0; i < GAME_MAX_PLAYERS; i++) {
        if (sv->players[i].used)
            (void)tern_session_abort(sv->players[i].s);
    }
    uv_timer_start(&sv->tick_timer, server_close_all, impair_hold_ms(sv->opt), 0);
}

/* The server's key pair: read from path, or new (saved to path if given). */
static int load_or_create_key(const char *path, tern_keypair *kp)
{
    char err[512];
    struct stat sb;
    if (path && stat(path, &sb) == 0) {
        tern_key secret;
        bool insecure = false;
        if (tern_keyfile_read_secret(path, &secret, 0, &insecure, err, sizeof(err)) < 0) {
            fprintf(stderr, PROG ": %s\n", err);
            return -1;
        }
        if (insecure)
            fprintf(stderr, PROG ": warning: %s\n", err);
        tern_keypair_from_secret(kp, &secret);
        wipe(&secret, sizeof(secret));
        return 0;
    }
    if (path && errno != ENOENT) {
        fprintf(stderr, PROG ": cannot use key file %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (tern_keypair_generate(kp) < 0) {
        fprintf(stderr, PROG ": cannot generate a key\n");
        return -1;
    }
    if (path && tern_keyfile_write_secret(path, &kp->secret, 0, err, sizeof(err)) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return -1;
    }
    return 0;
}

static int run_server(const options *o)
{
    struct sockaddr_storage bind_addr;
    if (tern_sockaddr_parse(o->listen, &bind_addr) < 0) {
        fprintf(stderr, PROG ": invalid --listen '%s' (expected IP:PORT or [IPv6]:PORT)\n",
                o->listen);
        return EXIT_USAGE;
    }
    tern_keypair kp;
    if (load_or_create_key(o->key_path, &kp) < 0)
        return 1;
    tern_endpoint_config cfg;
    configure(&cfg, o);
    cfg.noise.static_key = &kp;
    cfg.max_sessions = GAME_MAX_PLAYERS * 2; /* room for half-open handshakes */

    game_server *sv = calloc(1, sizeof(*sv));
    uv_loop_t loop;
    if (!sv || uv_loop_init(&loop) != 0) {
        fprintf(stderr, PROG ": out of memory\n");
        free(sv);
        return 1;
    }
    sv->opt = o;
    sv->loop = &loop;
    int rc = tern_endpoint_new(&sv->ep, &loop, (const struct sockaddr *)&bind_addr, &cfg);
    tern_public_key pub = kp.pub;
    wipe(&kp, sizeof(kp)); /* the endpoint has its copy */
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot listen on %s: %s\n", o->listen, tern_strerror(rc));
        uv_loop_close(&loop);
        free(sv);
        return 1;
    }
    tern_endpoint_set_data(sv->ep, sv);
    (void)tern_endpoint_listen(sv->ep, on_server_accept);

    uv_timer_init(&loop, &sv->tick_timer);
    sv->tick_timer.data = sv;
    sv->next_tick_at = uv_now(&loop) + GAME_TICK_MS;
    sv->next_status_at = uv_now(&loop) + STATUS_EVERY_MS;
    uv_timer_start(&sv->tick_timer, on_tick, GAME_TICK_MS, 0);
    uv_signal_init(&loop, &sv->sigint);
    uv_signal_init(&loop, &sv->sigterm);
    sv->sigint.data = sv->sigterm.data = sv;
    uv_signal_start(&sv->sigint, on_server_signal, SIGINT);
    uv_signal_start(&sv->sigterm, on_server_signal, SIGTERM);

    char b64[TERN_KEY_BASE64_LEN + 1], addr[64];
    struct sockaddr_storage bound;
    tern_public_key_to_base64(&pub, b64);
    (void)tern_endpoint_local_addr(sv->ep, &bound);
    format_addr(&bound, addr, sizeof(addr));
    fprintf(stderr, PROG ": server public key %s\n", b64);
    fprintf(stderr, PROG ": server listening on %s, %d Hz\n", addr, GAME_TICK_HZ);
    fprintf(stderr, PROG ": try: " PROG " client --server-key %s %s\n", b64, addr);

    uv_run(&loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&loop) == 0 ? 0 : 1;
    free(sv);
    return rc;
}

/* ======================================================================== */
/* ---- the client ---- */

typedef struct game_client {
    const options *opt;
    uv_loop_t *loop;
    tern_endpoint *ep;
    tern_session *s;
    uv_timer_t input_timer, report_timer, leave_timer;
    uv_signal_t sigint, sigterm;
    /* Chat typed on standard input. */
    union {
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in;
    uv_handle_type in_kind;
    bool in_open;
    char in_buf[GAME_CHAT_MAX + 1];
    size_t in_len;

    uint32_t input_seq;
    game_snapshot last;
    bool have_snapshot;
    uint64_t snapshots, malformed, chat_lines;
    uint64_t snapshots_at_report, obsolete_at_report;
    uint64_t started, connected_at;
    bool connected, leaving, timers_open;
    int exit_code;
} game_client;

/* A bot's thumbstick: a square, one side every two seconds. */
static void bot_move(uint32_t seq, game_input *in)
{
    static const int8_t dirs[4][2] = {{100, 0}, {0, 100}, {-100, 0}, {0, -100}};
    unsigned side = (seq / (2 * GAME_TICK_HZ)) % 4;
    in->move_x = dirs[side][0];
    in->move_y = dirs[side][1];
}

static void on_input_timer(uv_timer_t *t)
{
    game_client *gc = t->data;
    game_input in = {.seq = ++gc->input_seq};
    bot_move(in.seq, &in);
    uint8_t buf[GAME_INPUT_BYTES];
    game_input_encode(&in, buf);
    /* Now or never; a lost input is replaced by the next one. */
    (void)tern_session_send(gc->s, GAME_CH_INPUT, buf, sizeof(buf), 0);
}

static void on_report_timer(uv_timer_t *t)
{
    game_client *gc = t->data;
    tern_session_stats st;
    tern_session_get_stats(gc->s, &st);
    int32_t x = 0, y = 0;
    for (uint16_t i = 0; gc->have_snapshot && i < gc->last.n; i++) {
        if (gc->last.ents[i].id == gc->last.you) {
            x = gc->last.ents[i].x_mm;
            y = gc->last.ents[i].y_mm;
        }
    }
    /* msgs_obsolete counts snapshots that arrived after a newer one and
     * were dropped by tern instead of being delivered late. */
    printf("tick %u | %llu snapshots/s | %llu obsolete (%llu in all) | %u players | "
           "you (%.1f, %.1f) m | %u inputs unacked | rtt %u ms\n",
           gc->last.tick, (unsigned long long)(gc->snapshots - gc->snapshots_at_report),
           (unsigned long long)(st.msgs_obsolete - gc->obsolete_at_report),
           (unsigned long long)st.msgs_obsolete, gc->last.n, x / 1000.0, y / 1000.0,
           gc->input_seq - gc->last.input_ack, st.srtt_ms);
    fflush(stdout);
    gc->snapshots_at_report = gc->snapshots;
    gc->obsolete_at_report = st.msgs_obsolete;
}

static void client_close_input(game_client *gc)
{
    if (!gc->in_open)
        return;
    if (gc->in_kind == UV_TTY)
        uv_tty_reset_mode();
    uv_close((uv_handle_t *)&gc->in, NULL);
    gc->in_open = false;
}

/* Leaves gracefully: queued chat still goes out, then close_cb(0). */
static void leave(game_client *gc)
{
    if (gc->leaving || !gc->s)
        return;
    gc->leaving = true;
    uv_timer_stop(&gc->input_timer);
    uv_timer_stop(&gc->report_timer);
    client_close_input(gc);
    if (gc->connected)
        (void)tern_session_close(gc->s);
    else
        (void)tern_session_abort(gc->s); /* still connecting: nothing to finish */
}

static void on_leave_timer(uv_timer_t *t)
{
    leave(t->data);
}

static void send_chat(game_client *gc, const char *text, size_t len)
{
    if (len == 0)
        return;
    if (len > GAME_CHAT_MAX)
        len = GAME_CHAT_MAX;
    int rc = tern_session_send(gc->s, GAME_CH_CHAT, text, len, 0);
    if (rc < 0)
        fprintf(stderr, PROG ": chat not sent: %s\n", tern_strerror(rc));
}

static void chat_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    game_client *gc = h->data;
    *buf = uv_buf_init(gc->in_buf + gc->in_len, (unsigned)(sizeof(gc->in_buf) - gc->in_len));
}

static void chat_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    game_client *gc = h->data;
    if (nread < 0) {
        client_close_input(gc); /* end of input: keep playing, stop reading */
        return;
    }
    gc->in_len += (size_t)nread;
    char *nl;
    while ((nl = memchr(gc->in_buf, '\n', gc->in_len)) != NULL) {
        size_t n = (size_t)(nl - gc->in_buf);
        send_chat(gc, gc->in_buf, n);
        memmove(gc->in_buf, nl + 1, gc->in_len - n - 1);
        gc->in_len -= n + 1;
    }
    if (gc->in_len == sizeof(gc->in_buf)) { /* too long: send what fits */
        send_chat(gc, gc->in_buf, GAME_CHAT_MAX);
        memmove(gc->in_buf, gc->in_buf + GAME_CHAT_MAX, gc->in_len - GAME_CHAT_MAX);
        gc->in_len -= GAME_CHAT_MAX;
    }
}

/* Chat from a terminal or a pipe; anything else (/dev/null, a file) is
 * left alone. */
static void client_open_input(game_client *gc)
{
    gc->in_kind = uv_guess_handle(0);
    int rc = -1;
    if (gc->in_kind == UV_TTY) {
        rc = uv_tty_init(gc->loop, &gc->in.tty, 0, 1);
    } else if (gc->in_kind == UV_NAMED_PIPE) {
        rc = uv_pipe_init(gc->loop, &gc->in.pipe, 0);
        if (rc == 0 && (rc = uv_pipe_open(&gc->in.pipe, 0)) < 0)
            uv_close((uv_handle_t *)&gc->in.pipe, NULL);
    }
    if (rc < 0)
        return;
    ((uv_handle_t *)&gc->in)->data = gc;
    gc->in_open = true;
    if (uv_read_start((uv_stream_t *)&gc->in, chat_alloc, chat_read) < 0)
        client_close_input(gc);
}

static void on_client_connect(tern_session *s, int status)
{
    game_client *gc = tern_session_get_data(s);
    if (status < 0) {
        fprintf(stderr, PROG ": could not connect: %s\n", tern_strerror(status));
        return; /* close_cb follows */
    }
    gc->connected = true;
    gc->connected_at = uv_now(gc->loop);
    struct sockaddr_storage peer;
    char addr[64] = "?";
    if (tern_session_peer_addr(s, &peer) == 0)
        format_addr(&peer, addr, sizeof(addr));
    fprintf(stderr, PROG ": connected to %s in %llu ms\n", addr,
            (unsigned long long)(gc->connected_at - gc->started));
    /* Unreliable messages can only leave once the session is open, so the
     * input clock starts here. */
    uv_timer_start(&gc->input_timer, on_input_timer, 0, GAME_TICK_MS);
    uv_timer_start(&gc->report_timer, on_report_timer, 1000, 1000);
    if (gc->opt->duration_ms)
        uv_timer_start(&gc->leave_timer, on_leave_timer, gc->opt->duration_ms, 0);
    if (gc->opt->chat)
        send_chat(gc, gc->opt->chat, strlen(gc->opt->chat));
    client_open_input(gc);
}

static void on_client_message(tern_session *s, uint32_t channel, const uint8_t *data, size_t len)
{
    game_client *gc = tern_session_get_data(s);
    if (channel == GAME_CH_SNAPSHOT) {
        game_snapshot snap;
        if (!game_snapshot_decode(&snap, data, len)) {
            gc->malformed++;
            return;
        }
        /* A real client would interpolate between the last two snapshots
         * and replay its inputs newer than snap.input_ack. */
        gc->last = snap;
        gc->have_snapshot = true;
        gc->snapshots++;
    } else if (channel == GAME_CH_CHAT) {
        gc->chat_lines++;
        /* Printed with %.*s: the text has no terminator. The server
         * replaced control characters already. */
        printf("chat: %.*s\n", (int)len, (const char *)data);
        fflush(stdout);
    } else {
        gc->malformed++;
    }
}

static void client_close_all(uv_timer_t *t)
{
    game_client *gc = t->data;
    (void)tern_endpoint_close(gc->ep, NULL);
    uv_close((uv_handle_t *)&gc->input_timer, NULL);
    uv_close((uv_handle_t *)&gc->report_timer, NULL);
    uv_close((uv_handle_t *)&gc->leave_timer, NULL);
    uv_close((uv_handle_t *)&gc->sigint, NULL);
    uv_close((uv_handle_t *)&gc->sigterm, NULL);
}

static void on_client_closed(tern_session *s, int status)
{
    game_client *gc = tern_session_get_data(s);
    uint64_t now = uv_now(gc->loop);
    if (gc->connected) {
        tern_session_stats st;
        tern_session_get_stats(s, &st);
        double secs = (double)(now - gc->connected_at) / 1000.0;
        printf("summary: snapshots=%llu obsolete=%llu malformed=%llu chat=%llu seconds=%.2f "
               "rtt_ms=%u\n",
               (unsigned long long)gc->snapshots, (unsigned long long)st.msgs_obsolete,
               (unsigned long long)gc->malformed, (unsigned long long)gc->chat_lines, secs,
               st.srtt_ms);
        fflush(stdout);
    }
    if (status != 0)
        fprintf(stderr, PROG ": session ended: %s\n", tern_strerror(status));
    gc->exit_code = gc->leaving && status == 0 ? 0 : 1;
    gc->s = NULL; /* freed after this returns */
    gc->leaving = true;
    uv_timer_stop(&gc->input_timer);
    uv_timer_stop(&gc->report_timer);
    client_close_input(gc);
    /* The endpoint closes once our CLOSE has left (see impair_hold_ms()). */
    uv_timer_start(&gc->leave_timer, client_close_all, impair_hold_ms(gc->opt), 0);
}

static void on_client_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    leave(sig->data);
}

static int run_client(const options *o)
{
    tern_endpoint_config cfg;
    configure(&cfg, o);
    cfg.noise.server_public = &o->server_key;
    cfg.handshake_timeout_ms = 2000; /* per address, then the next one */
    cfg.handshake_retry_ms = 250;

    game_client *gc = calloc(1, sizeof(*gc));
    uv_loop_t loop;
    if (!gc || uv_loop_init(&loop) != 0) {
        fprintf(stderr, PROG ": out of memory\n");
        free(gc);
        return 1;
    }
    gc->opt = o;
    gc->loop = &loop;
    gc->exit_code = 1;
    struct sockaddr_storage any;
    (void)tern_sockaddr_parse(o->servers[0].ss_family == AF_INET6 ? "[::]:0" : "0.0.0.0:0", &any);
    int rc = tern_endpoint_new(&gc->ep, &loop, (const struct sockaddr *)&any, &cfg);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot open a socket: %s\n", tern_strerror(rc));
        uv_loop_close(&loop);
        free(gc);
        return 1;
    }
    const struct sockaddr *addrs[MAX_SERVERS];
    for (size_t i = 0; i < o->n_servers; i++)
        addrs[i] = (const struct sockaddr *)&o->servers[i];
    tern_session_callbacks cbs = {.connect_cb = on_client_connect,
                                  .message_cb = on_client_message,
                                  .close_cb = on_client_closed};
    gc->started = uv_now(&loop);
    rc = tern_endpoint_connect(gc->ep, addrs, o->n_servers, 0, &cbs, &gc->s);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot connect: %s\n", tern_strerror(rc));
        (void)tern_endpoint_close(gc->ep, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        free(gc);
        return 1;
    }
    tern_session_set_data(gc->s, gc);

    uv_timer_t *timers[] = {&gc->input_timer, &gc->report_timer, &gc->leave_timer};
    for (size_t i = 0; i < 3; i++) {
        uv_timer_init(&loop, timers[i]);
        timers[i]->data = gc;
    }
    uv_signal_init(&loop, &gc->sigint);
    uv_signal_init(&loop, &gc->sigterm);
    gc->sigint.data = gc->sigterm.data = gc;
    uv_signal_start(&gc->sigint, on_client_signal, SIGINT);
    uv_signal_start(&gc->sigterm, on_client_signal, SIGTERM);

    char local[64], first[64];
    struct sockaddr_storage bound;
    (void)tern_endpoint_local_addr(gc->ep, &bound);
    format_addr(&bound, local, sizeof(local));
    format_addr(&o->servers[0], first, sizeof(first));
    fprintf(stderr, PROG ": client bound to %s, connecting to %s\n", local, first);

    uv_run(&loop, UV_RUN_DEFAULT);
    rc = gc->exit_code;
    if (uv_loop_close(&loop) != 0)
        rc = 1;
    free(gc);
    return rc;
}

/* ======================================================================== */
/* ---- command line ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " server [--listen HOST:PORT] [--key FILE] [impairment]\n"
               "       " PROG " client --server-key KEY [--chat TEXT] [--duration MS]\n"
               "                 [impairment] HOST:PORT [HOST:PORT ...]\n"
               "\n"
               "server:\n"
               "  -l, --listen HOST:PORT  numeric address (default 127.0.0.1:7778; port 0: any)\n"
               "  -k, --key FILE          private key, made and saved there if FILE is missing;\n"
               "                          without it a new key is made for this run\n"
               "client:\n"
               "  -k, --server-key KEY    the server's public key, base64 (the server prints it)\n"
               "  -c, --chat TEXT         say TEXT once connected\n"
               "  -d, --duration MS       leave after MS milliseconds (default: at SIGINT)\n"
               "impairment (each direction):\n"
               "      --impair-loss P     drop P%% of datagrams (\"5%%\" or \"5\")\n"
               "      --impair-delay MS   add MS of delay (\"50ms\", or \"50\")\n"
               "      --impair-jitter MS  add 0..MS more, at random (reorders datagrams)\n"
               "      --impair-seed N     the random seed (default 1)\n");
}

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, PROG ": %s '%s' (try --help)\n", msg, arg);
    return EXIT_USAGE;
}

/* "5%" or "5": a percentage from 0 to 100. */
static bool parse_percent(const char *text, double *out)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || (*end == '%' ? end[1] != '\0' : *end != '\0'))
        return false;
    if (!(v >= 0.0 && v <= 100.0)) /* also refuses NaN */
        return false;
    *out = v / 100.0;
    return true;
}

/* "50ms", "50" (milliseconds) or "2s": at most max milliseconds. */
static bool parse_ms(const char *text, unsigned long max, unsigned long *out)
{
    char *end;
    if (*text < '0' || *text > '9')
        return false;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno != 0)
        return false;
    if (strcmp(end, "s") == 0 && v <= max / 1000)
        v *= 1000;
    else if (*end != '\0' && strcmp(end, "ms") != 0)
        return false;
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* Returns -1 to go on, or the exit status. */
static int parse_args(int argc, char **argv, bool server, options *o)
{
    enum { OPT_LOSS = 256, OPT_DELAY, OPT_JITTER, OPT_SEED };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"key", required_argument, NULL, 'k'},
        {"server-key", required_argument, NULL, 'k'},
        {"chat", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"impair-loss", required_argument, NULL, OPT_LOSS},
        {"impair-delay", required_argument, NULL, OPT_DELAY},
        {"impair-jitter", required_argument, NULL, OPT_JITTER},
        {"impair-seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    unsigned long ms;
    char *end;
    int c, idx;

    o->listen = "127.0.0.1:7778";
    tern_netsim_cfg_default(&o->impairment);
    o->impair_seed = 1;
    opterr = 0;
    while ((idx = -1, c = getopt_long(argc, argv, ":l:k:c:d:h", opts, &idx)) != -1) {
        const char *name = idx >= 0 ? opts[idx].name : NULL;
        /* Each role takes only its own flags. */
        bool server_only = c == 'l' || (name && strcmp(name, "key") == 0);
        bool client_only = c == 'c' || c == 'd' || (name && strcmp(name, "server-key") == 0);
        if ((server && client_only) || (!server && server_only))
            return usage_error(server ? "not a server option:" : "not a client option:",
                               argv[optind - 1]);
        switch (c) {
        case 'l':
            o->listen = optarg;
            break;
        case 'k':
            if (server) {
                o->key_path = optarg;
            } else {
                if (tern_public_key_from_base64(&o->server_key, optarg, strlen(optarg)) < 0)
                    return usage_error("--server-key is not a base64 key:", optarg);
                o->have_key = true;
            }
            break;
        case 'c':
            if (strlen(optarg) == 0 || strlen(optarg) > GAME_CHAT_MAX)
                return usage_error("--chat wants 1 to 200 bytes, not", optarg);
            o->chat = optarg;
            break;
        case 'd':
            if (!parse_ms(optarg, 86400000UL, &o->duration_ms) || o->duration_ms == 0)
                return usage_error("--duration wants a time such as 1500ms or 10s, not", optarg);
            break;
        case OPT_LOSS:
            if (!parse_percent(optarg, &o->impairment.loss))
                return usage_error("--impair-loss wants a percentage such as 5%, not", optarg);
            o->impair = true;
            break;
        case OPT_DELAY:
        case OPT_JITTER:
            if (!parse_ms(optarg, 10000, &ms))
                return usage_error(c == OPT_DELAY ? "--impair-delay wants 0..10000 ms, not"
                                                  : "--impair-jitter wants 0..10000 ms, not",
                                   optarg);
            *(c == OPT_DELAY ? &o->impairment.delay_ms : &o->impairment.jitter_ms) = (uint32_t)ms;
            o->impair = true;
            break;
        case OPT_SEED:
            errno = 0;
            o->impair_seed = strtoul(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end || errno)
                return usage_error("--impair-seed wants a number, not", optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return usage_error("this option needs a value:", argv[optind - 1]);
        default:
            return usage_error("unknown option", argv[optind - 1]);
        }
    }
    if (server) {
        if (optind < argc)
            return usage_error("unexpected argument", argv[optind]);
        return -1;
    }
    if (!o->have_key) {
        fprintf(stderr, PROG ": client: --server-key is required (try --help)\n");
        return EXIT_USAGE;
    }
    if (optind == argc) {
        fprintf(stderr, PROG ": client: no server address given (try --help)\n");
        return EXIT_USAGE;
    }
    for (; optind < argc; optind++) {
        if (o->n_servers == MAX_SERVERS)
            return usage_error("too many addresses, from", argv[optind]);
        struct sockaddr_storage *a = &o->servers[o->n_servers];
        if (tern_sockaddr_parse(argv[optind], a) < 0)
            return usage_error("not a numeric IP:PORT address:", argv[optind]);
        if (a->ss_family != o->servers[0].ss_family)
            return usage_error("addresses must all be IPv4 or all IPv6:", argv[optind]);
        o->n_servers++;
    }
    return -1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    bool server = strcmp(argv[1], "server") == 0;
    if (!server && strcmp(argv[1], "client") != 0)
        return usage_error("unknown role (server or client):", argv[1]);
    options o;
    memset(&o, 0, sizeof(o));
    int rc = parse_args(argc - 1, argv + 1, server, &o);
    if (rc >= 0)
        return rc;
    /* Events as whole lines, even through a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (tern_crypto_init() < 0) {
        fprintf(stderr, PROG ": libsodium cannot start (no random source?)\n");
        return 1;
    }
    return server ? run_server(&o) : run_client(&o);
}
