/* examples/, run as programs (paths from CMake) on 127.0.0.1 with ports the
 * OS picks, which each program prints in its readiness line.
 *
 * echo_server and echo_client: --count lines on a stream, stdin through a
 * pipe (a line longer than the client's buffer, a last line without a
 * newline) on a stream and as messages, failover from a dead address, a key
 * file made on the first start and read on the second (same public key),
 * no server at all (exit 1), bad usage (exit 2). game_loop: two clients get
 * snapshots at about 20 Hz and each other's chat through the server's
 * broadcast; a client behind the built-in impairment still gets snapshots
 * and its chat back, and its goodbye reaches the server. Every client must
 * exit 0 having got back exactly what it sent; every server must exit 0 on
 * SIGTERM. Wall-clock bounds are wide. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tool_util.h"

#if !defined(TERN_ECHO_SERVER_BIN) || !defined(TERN_ECHO_CLIENT_BIN) || !defined(TERN_GAME_LOOP_BIN)
#error "the example programs' paths come from tests/CMakeLists.txt"
#endif /* TERN_*_BIN */

#define START_MS 5000
#define EXIT_MS 8000

/* ---- running programs ---------------------------------------------------- */

typedef tool_proc proc;

/* Starts bin with args (NULL-terminated). Standard input is a pipe the test
 * writes to if stdin_pipe, else /dev/null. */
static void spawn(proc *p, const char *bin, const char *const *args, bool stdin_pipe)
{
    tool_spawn(p, &(tool_cmd){.bin = bin, .args = args, .stdin_pipe = stdin_pipe});
}

static void expect_exit(proc *p, int status)
{
    int got = tool_wait_exit(p, EXIT_MS);
    cr_assert_eq(got, status, "%s exited %d, not %d\nstdout: %s\nstderr: %s", p->name, got, status,
                 p->out, p->err);
}

/* SIGTERM, then a server must exit 0. */
static void stop_server(proc *p)
{
    tool_stop(p, SIGTERM, EXIT_MS);
}

#define ARGS TOOL_ARGS

/* ---- servers ---------------------------------------------------------------- */

typedef struct server_info {
    char key[64];
    char addr[64]; /* 127.0.0.1:PORT */
} server_info;

/* The text after prefix on a line of text, up to the line's end or stop. */
static void after(const char *text, const char *prefix, char stop, char *out, size_t cap)
{
    const char *s = strstr(text, prefix);
    cr_assert_not_null(s, "no '%s' in: %s", prefix, text);
    s += strlen(prefix);
    size_t n = 0;
    while (s[n] && s[n] != '\n' && s[n] != stop && n + 1 < cap)
        n++;
    memcpy(out, s, n);
    out[n] = '\0';
}

static void start_echo_server(proc *p, server_info *si, const char *key_path)
{
    if (key_path)
        spawn(p, TERN_ECHO_SERVER_BIN, ARGS("--listen", "127.0.0.1:0", "--key", key_path), false);
    else
        spawn(p, TERN_ECHO_SERVER_BIN, ARGS("--listen", "127.0.0.1:0"), false);
    cr_assert(tool_wait_line(p, "echo_server: listening on ", START_MS), "not ready: %s", p->err);
    after(p->err, "echo_server: public key ", '\n', si->key, sizeof(si->key));
    after(p->err, "echo_server: listening on ", '\n', si->addr, sizeof(si->addr));
    cr_assert_eq(strlen(si->key), 44, "%s", si->key);
    cr_assert_eq(strncmp(si->addr, "127.0.0.1:", 10), 0, "%s", si->addr);
    cr_assert_neq(atoi(si->addr + 10), 0, "%s", si->addr);
}

static void start_game_server(proc *p, server_info *si)
{
    spawn(p, TERN_GAME_LOOP_BIN, ARGS("server", "--listen", "127.0.0.1:0"), false);
    cr_assert(tool_wait_line(p, "game_loop: server listening on ", START_MS), "not ready: %s",
              p->err);
    after(p->err, "game_loop: server public key ", '\n', si->key, sizeof(si->key));
    after(p->err, "game_loop: server listening on ", ',', si->addr, sizeof(si->addr));
    cr_assert_eq(strlen(si->key), 44, "%s", si->key);
    cr_assert_neq(atoi(si->addr + 10), 0, "%s", si->addr);
}

/* A loopback port nobody listens on. */
static void dead_address(char *out, size_t cap)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    snprintf(out, cap, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
    close(fd);
}

static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "write: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

/* ---- echo ------------------------------------------------------------------- */

Test(examples, echo_count_lines_come_back_exactly)
{
    proc srv, cli;
    server_info si;
    start_echo_server(&srv, &si, NULL);
    spawn(&cli, TERN_ECHO_CLIENT_BIN,
          ARGS("--server-key", si.key, "--count", "200", "--text", "the quick brown fox", si.addr),
          false);
    expect_exit(&cli, 0);
    char want[200 * 20 + 1];
    for (int i = 0; i < 200; i++)
        memcpy(want + i * 20, "the quick brown fox\n", 20);
    want[sizeof(want) - 1] = '\0';
    cr_assert_str_eq(cli.out, want);
    cr_assert_not_null(strstr(cli.err, "sent 4000 bytes (200 lines), 4000 came back, all of it"),
                       "%s", cli.err);
    /* The server saw the stream and the client's graceful close. */
    cr_assert(
        tool_wait_text(&srv, false, "left (closed by the client): 1 streams, 4000 bytes", 2000),
        "%s", srv.err);
    stop_server(&srv);
}

Test(examples, echo_stdin_on_a_stream_and_as_messages)
{
    proc srv, cli;
    server_info si;
    start_echo_server(&srv, &si, NULL);

    /* A short line, a line longer than the client's 4 KiB buffer (sent in
     * pieces), and a last line without a newline. */
    static char input[12000];
    size_t n = 0;
    n += (size_t)sprintf(input + n, "first line\n");
    for (int i = 0; i < 9000; i++)
        input[n++] = (char)('a' + i % 26);
    input[n++] = '\n';
    n += (size_t)sprintf(input + n, "no newline at the end");

    spawn(&cli, TERN_ECHO_CLIENT_BIN, ARGS("--server-key", si.key, si.addr), true);
    write_all(cli.in_fd, input, n);
    close(cli.in_fd);
    cli.in_fd = -1;
    expect_exit(&cli, 0);
    cr_assert_eq(cli.out_len, n, "got %zu bytes of %zu", cli.out_len, n);
    cr_assert_eq(memcmp(cli.out, input, n), 0);

    spawn(&cli, TERN_ECHO_CLIENT_BIN, ARGS("--messages", "--server-key", si.key, si.addr), true);
    write_all(cli.in_fd, "one\ntwo\nthree\n", 14);
    close(cli.in_fd);
    cli.in_fd = -1;
    expect_exit(&cli, 0);
    cr_assert_str_eq(cli.out, "one\ntwo\nthree\n");
    cr_assert(tool_wait_text(&srv, false, "0 streams, 0 bytes and 3 messages echoed", 2000), "%s",
              srv.err);
    stop_server(&srv);
}

Test(examples, echo_failover_and_a_key_file_kept_across_restarts)
{
    char dir[] = "/tmp/tern-examples-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char key_path[64];
    snprintf(key_path, sizeof(key_path), "%s/server.key", dir);

    proc srv, cli;
    server_info si, again;
    start_echo_server(&srv, &si, key_path);
    cr_assert_not_null(strstr(srv.err, "new private key saved to"), "%s", srv.err);
    struct stat sb;
    cr_assert_eq(stat(key_path, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0600, "mode %o", sb.st_mode & 0777);

    /* The first address does not answer: after 300 ms the client moves on. */
    char dead[32];
    dead_address(dead, sizeof(dead));
    int64_t t0 = tool_now_ms();
    spawn(&cli, TERN_ECHO_CLIENT_BIN,
          ARGS("--messages", "--count", "3", "--handshake-timeout", "300", "--server-key", si.key,
               dead, si.addr),
          false);
    expect_exit(&cli, 0);
    cr_assert_geq(tool_now_ms() - t0, 250, "moved on before the first address timed out");
    cr_assert_str_eq(cli.out, "hello, tern\nhello, tern\nhello, tern\n");
    char connected[96];
    snprintf(connected, sizeof(connected), "connected to %s", si.addr);
    cr_assert_not_null(strstr(cli.err, connected), "%s", cli.err);
    stop_server(&srv);

    /* The second start reads the key: clients keep the same public key. */
    start_echo_server(&srv, &again, key_path);
    cr_assert_not_null(strstr(srv.err, "private key read from"), "%s", srv.err);
    cr_assert_str_eq(again.key, si.key);
    stop_server(&srv);
    unlink(key_path);
    rmdir(dir);
}

Test(examples, echo_client_without_a_server_exits_1)
{
    char dead[32];
    dead_address(dead, sizeof(dead));
    proc cli;
    spawn(&cli, TERN_ECHO_CLIENT_BIN,
          ARGS("--count", "1", "--handshake-timeout", "200", "--server-key",
               "su4dYEaA1CcpeYruV/MCbdhrIrV5JPraHlzSancZI3U=", dead),
          false);
    expect_exit(&cli, 1);
    cr_assert_str_eq(cli.out, "");
    cr_assert_not_null(strstr(cli.err, "could not connect to any of 1 address(es): timed out"),
                       "%s", cli.err);
}

Test(examples, bad_usage_exits_2)
{
    static const char *const key = "su4dYEaA1CcpeYruV/MCbdhrIrV5JPraHlzSancZI3U=";
    struct {
        const char *bin;
        const char *const *args;
        const char *says;
    } cases[] = {
        {TERN_ECHO_CLIENT_BIN, ARGS("127.0.0.1:1"), "--server-key or --server-key-file"},
        {TERN_ECHO_CLIENT_BIN, ARGS("--server-key", "bogus", "127.0.0.1:1"), "'bogus'"},
        {TERN_ECHO_CLIENT_BIN, ARGS("--server-key", key, "localhost:1"), "'localhost:1'"},
        {TERN_ECHO_CLIENT_BIN, ARGS("--server-key", key, "--count", "0", "127.0.0.1:1"), "'0'"},
        {TERN_ECHO_CLIENT_BIN, ARGS("--server-key", key), "no server address"},
        {TERN_ECHO_SERVER_BIN, ARGS("--listen", "nowhere"), "'nowhere'"},
        {TERN_ECHO_SERVER_BIN, ARGS("--bogus"), "'--bogus'"},
        {TERN_GAME_LOOP_BIN, ARGS("referee"), "'referee'"},
        {TERN_GAME_LOOP_BIN,
         ARGS("client", "--server-key", key, "--impair-loss", "150%", "127.0.0.1:1"), "'150%'"},
        {TERN_GAME_LOOP_BIN,
         ARGS("client", "--server-key", key, "--impair-delay", "soon", "127.0.0.1:1"), "'soon'"},
        {TERN_GAME_LOOP_BIN, ARGS("server", "--chat", "hi"), "not a server option"},
        {TERN_GAME_LOOP_BIN, ARGS("client", "127.0.0.1:1"), "--server-key is required"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        proc p;
        spawn(&p, cases[i].bin, cases[i].args, false);
        expect_exit(&p, 2);
        cr_assert_str_eq(p.out, "", "case %zu", i);
        cr_assert_not_null(strstr(p.err, cases[i].says), "case %zu: %s", i, p.err);
        /* One line. */
        cr_assert_eq(strchr(p.err, '\n'), p.err + p.err_len - 1, "case %zu: %s", i, p.err);
    }
}

/* ---- game_loop ---------------------------------------------------------- */

typedef struct summary {
    unsigned long long snapshots, obsolete, malformed, chat;
} summary;

static summary parse_summary(const proc *p)
{
    summary s;
    const char *line = strstr(p->out, "summary: ");
    cr_assert_not_null(line, "no summary: %s\n%s", p->out, p->err);
    cr_assert_eq(sscanf(line, "summary: snapshots=%llu obsolete=%llu malformed=%llu chat=%llu",
                        &s.snapshots, &s.obsolete, &s.malformed, &s.chat),
                 4, "%s", line);
    return s;
}

Test(examples, game_snapshots_and_chat_broadcast)
{
    proc srv, a, b;
    server_info si;
    start_game_server(&srv, &si);

    /* b joins first and stays 2.5 s (reports at 1 s and 2 s); a joins, talks
     * and leaves after 1 s, so at least one of b's reports sees a. */
    spawn(&b, TERN_GAME_LOOP_BIN,
          ARGS("client", "--server-key", si.key, "--duration", "2500ms", si.addr), false);
    cr_assert(tool_wait_text(&b, false, "game_loop: client bound to 0.0.0.0:", START_MS), "%s",
              b.err);
    cr_assert(tool_wait_text(&b, false, "game_loop: connected to", START_MS), "%s", b.err);
    /* The server numbers players as it accepts them, which is on the
     * client's first data, not on its handshake: b must be player 1 before
     * a starts, or a loaded machine can let a in first. */
    cr_assert(tool_wait_text(&srv, true, "player 1 joined from", START_MS), "%s", srv.out);
    spawn(&a, TERN_GAME_LOOP_BIN,
          ARGS("client", "--server-key", si.key, "--chat", "hello from a", "--duration", "1s",
               si.addr),
          false);
    expect_exit(&a, 0);
    summary sa = parse_summary(&a);
    /* 20 Hz for 1 s; a wide margin for a loaded machine. */
    cr_assert_geq(sa.snapshots, 10, "%s", a.out);
    cr_assert_leq(sa.snapshots, 25, "%s", a.out);
    cr_assert_eq(sa.malformed, 0);
    cr_assert_not_null(strstr(a.out, "chat: player 2: hello from a"), "%s", a.out);
    cr_assert_not_null(strstr(a.out, " snapshots/s | "), "no per-second line: %s", a.out);

    expect_exit(&b, 0);
    summary sb = parse_summary(&b);
    cr_assert_geq(sb.snapshots, 20, "%s", b.out);
    cr_assert_not_null(strstr(b.out, "chat: * player 2 joined"), "%s", b.out);
    cr_assert_not_null(strstr(b.out, "chat: player 2: hello from a"), "%s", b.out);
    cr_assert_not_null(strstr(b.out, "chat: * player 2 left"), "%s", b.out);
    /* Two players in the world: b saw a's entity in the snapshots. */
    cr_assert_not_null(strstr(b.out, "| 2 players |"), "%s", b.out);

    stop_server(&srv);
    cr_assert_not_null(strstr(srv.out, "player 1 (127.0.0.1:"), "%s", srv.out);
    cr_assert_not_null(strstr(srv.out, "left: closed by the client"), "%s", srv.out);
}

Test(examples, game_under_impairment)
{
    proc srv, cli;
    server_info si;
    start_game_server(&srv, &si);
    spawn(&cli, TERN_GAME_LOOP_BIN,
          ARGS("client", "--server-key", si.key, "--impair-loss", "5%", "--impair-delay", "20ms",
               "--impair-jitter", "10ms", "--chat", "through the lag", "--duration", "1200",
               si.addr),
          false);
    expect_exit(&cli, 0);
    cr_assert_not_null(strstr(cli.err, "impairment each way: 5.0% loss, 20 ms delay"), "%s",
                       cli.err);
    summary s = parse_summary(&cli);
    cr_assert_geq(s.snapshots, 10, "%s", cli.out);
    /* Reliable chat gets through the loss. */
    cr_assert_not_null(strstr(cli.out, "chat: player 1: through the lag"), "%s", cli.out);
    /* The client's goodbye left before its endpoint closed (the impairment
     * delays it): the server hears of it, not just of a timeout. */
    cr_assert(tool_wait_text(&srv, true, "left: closed by the client", 2000), "%s", srv.out);
    stop_server(&srv);
}
