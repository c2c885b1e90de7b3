/* Child programs for the tool and example tests: see tool_util.h. */
#include "tool_util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Every program not yet reaped, so that a wait on one drains them all. */
static tool_proc *running[TOOL_PROCS_MAX];
static size_t n_running;

int64_t tool_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tool_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void tool_slurp(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

void tool_make_dir(char *dir, size_t cap, const char *prefix)
{
    int n = snprintf(dir, cap, "/tmp/%s-XXXXXX", prefix);
    cr_assert(n > 0 && (size_t)n < cap, "%s: name too long", prefix);
    cr_assert_not_null(mkdtemp(dir), "%s: %s", dir, strerror(errno));
}

const char *tool_path(const char *dir, const char *name)
{
    static char buf[8][256];
    static unsigned next;
    char *p = buf[next++ % 8];
    int n = snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
    cr_assert(n > 0 && (size_t)n < sizeof(buf[0]), "path too long: %s/%s", dir, name);
    return p;
}

static bool uses_files(const tool_proc *p)
{
    return p->out_path[0] != '\0';
}

/* Whether all p will ever write is in p->out and p->err. */
static bool output_ended(const tool_proc *p)
{
    return uses_files(p) ? p->reaped : p->out_fd < 0 && p->err_fd < 0;
}

static void record(tool_proc *p, int st)
{
    p->reaped = true;
    p->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    p->signal = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
}

static bool try_reap(tool_proc *p)
{
    int st;
    if (!p->reaped && waitpid(p->pid, &st, WNOHANG) == p->pid)
        record(p, st);
    return p->reaped;
}

static void reap_now(tool_proc *p)
{
    int st;
    if (!p->reaped && waitpid(p->pid, &st, 0) == p->pid)
        record(p, st);
}

/* With files: what p wrote so far (and whether it exited first, so that a
 * program that has exited has all of its output read). */
static void refresh(tool_proc *p)
{
    if (!uses_files(p))
        return;
    try_reap(p);
    tool_slurp(p->out_path, p->out, sizeof(p->out));
    tool_slurp(p->err_path, p->err, sizeof(p->err));
    p->out_len = strlen(p->out);
    p->err_len = strlen(p->err);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* p is done with: its descriptors closed, out of the running list. */
static void forget(tool_proc *p)
{
    for (size_t i = 0; i < n_running; i++) {
        if (running[i] == p) {
            close_fd(&p->in_fd);
            close_fd(&p->out_fd);
            close_fd(&p->err_fd);
            running[i] = running[--n_running];
            return;
        }
    }
}

static void set_cloexec(int fd)
{
    if (fd >= 0)
        cr_assert_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
}

static int open_output(char *path, size_t cap, const tool_cmd *cmd, const char *ext)
{
    cr_assert_not_null(cmd->name, "output files are named after the program's name");
    int n = snprintf(path, cap, "%s/%s.%s", cmd->out_dir, cmd->name, ext);
    cr_assert(n > 0 && (size_t)n < cap, "path too long: %s", cmd->out_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    return fd;
}

void tool_spawn(tool_proc *p, const tool_cmd *cmd)
{
    char *argv[TOOL_ARGS_MAX + 2];
    int argc = 0;
    argv[argc++] = (char *)cmd->bin;
    for (; cmd->args[argc - 1]; argc++) {
        cr_assert_lt(argc, TOOL_ARGS_MAX);
        argv[argc] = (char *)cmd->args[argc - 1];
    }
    argv[argc] = NULL;

    forget(p); /* a test may start a program again in the same tool_proc */
    memset(p, 0, sizeof(*p));
    p->name = cmd->name ? cmd->name : cmd->bin;
    p->status = -1;
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    if (cmd->stdin_pipe) {
        cr_assert_eq(pipe(in), 0);
    } else {
        in[0] = open("/dev/null", O_RDONLY);
        cr_assert_geq(in[0], 0);
    }
    if (cmd->out_dir) {
        out[1] = open_output(p->out_path, sizeof(p->out_path), cmd, "out");
        err[1] = open_output(p->err_path, sizeof(p->err_path), cmd, "err");
    } else {
        cr_assert_eq(pipe(out), 0);
        cr_assert_eq(pipe(err), 0);
    }
    /* No later child may inherit these: an inherited write end would keep
     * a program from ever seeing the end of its input, or the test the end
     * of a program's output. dup2 clears the flag on 0, 1 and 2. */
    int fds[] = {in[0], in[1], out[0], out[1], err[0], err[1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        set_cloexec(fds[i]);
    cr_assert_lt(n_running, TOOL_PROCS_MAX);
    pid_t parent = getpid();
    p->pid = fork();
    cr_assert_geq(p->pid, 0);
    if (p->pid == 0) {
        /* Never outlive the test, whatever happens to it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        if (cmd->env) {
            char kv[256];
            snprintf(kv, sizeof(kv), "%s", cmd->env);
            char *eq = strchr(kv, '=');
            if (eq) {
                *eq = '\0';
                setenv(kv, eq + 1, 1);
            }
        }
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    p->in_fd = in[1];
    p->out_fd = out[0];
    p->err_fd = err[0];
    running[n_running++] = p;
}

static void drain(int *fd, char *buf, size_t *len)
{
    ssize_t n = read(*fd, buf + *len, TOOL_TEXT_MAX - 1 - *len);
    if (n > 0)
        *len += (size_t)n;
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) || *len == TOOL_TEXT_MAX - 1)
        close_fd(fd);
    buf[*len] = '\0';
}

/* Reads what the running programs wrote to their pipes, waiting up to ms. */
static void poll_all(int ms)
{
    struct pollfd fds[2 * TOOL_PROCS_MAX];
    char *bufs[2 * TOOL_PROCS_MAX];
    size_t *lens[2 * TOOL_PROCS_MAX];
    int *fdp[2 * TOOL_PROCS_MAX];
    nfds_t n = 0;
    for (size_t i = 0; i < n_running; i++) {
        tool_proc *p = running[i];
        if (p->out_fd >= 0) {
            fds[n] = (struct pollfd){p->out_fd, POLLIN, 0};
            bufs[n] = p->out, lens[n] = &p->out_len, fdp[n++] = &p->out_fd;
        }
        if (p->err_fd >= 0) {
            fds[n] = (struct pollfd){p->err_fd, POLLIN, 0};
            bufs[n] = p->err, lens[n] = &p->err_len, fdp[n++] = &p->err_fd;
        }
    }
    if (n == 0) {
        tool_sleep_ms(ms);
        return;
    }
    int rc = poll(fds, n, ms);
    if (rc < 0 && errno == EINTR)
        return;
    cr_assert_geq(rc, 0);
    for (nfds_t i = 0; i < n; i++) {
        if (fds[i].revents)
            drain(fdp[i], bufs[i], lens[i]);
    }
}

typedef bool (*seen_fn)(const tool_proc *p, const void *arg);

/* Waits up to ms for seen(p, arg); false once p's output ended without. */
static bool wait_for(tool_proc *p, seen_fn seen, const void *arg, int ms)
{
    int64_t end = tool_now_ms() + ms;
    for (;;) {
        refresh(p);
        if (seen(p, arg))
            return true;
        if (output_ended(p) || tool_now_ms() >= end)
            return false;
        poll_all(10);
    }
}

typedef struct text_arg {
    bool on_stdout;
    const char *needle;
} text_arg;

static bool text_seen(const tool_proc *p, const void *arg)
{
    const text_arg *t = arg;
    return strstr(t->on_stdout ? p->out : p->err, t->needle) != NULL;
}

bool tool_wait_text(tool_proc *p, bool on_stdout, const char *needle, int ms)
{
    text_arg t = {on_stdout, needle};
    return wait_for(p, text_seen, &t, ms);
}

static bool line_seen(const tool_proc *p, const void *arg)
{
    const char *s = strstr(p->err, arg);
    return s && strchr(s, '\n');
}

bool tool_wait_line(tool_proc *p, const char *prefix, int ms)
{
    return wait_for(p, line_seen, prefix, ms);
}

/* The port of the HOST:PORT after prefix in text (ended by a space, a comma
 * or the line's end), or 0 if there is none. */
static uint16_t port_after(const char *text, const char *prefix)
{
    const char *a = strstr(text, prefix);
    if (!a)
        return 0;
    a += strlen(prefix);
    size_t n = strcspn(a, " ,\n");
    const char *colon = NULL;
    for (const char *q = a; q < a + n; q++) {
        if (*q == ':')
            colon = q;
    }
    unsigned port = 0;
    if (!colon || sscanf(colon + 1, "%u", &port) != 1 || port > 65535)
        return 0;
    return (uint16_t)port;
}

void tool_start(tool_proc *p, const tool_cmd *cmd, const char *prefix, int ms)
{
    tool_spawn(p, cmd);
    if (!tool_wait_line(p, prefix, ms)) {
        bool exited = output_ended(p);
        tool_kill(p);
        cr_assert_fail("%s %s before its readiness line (status %d); stderr: %s", p->name,
                       exited ? "exited" : "was still silent", p->status, p->err);
    }
    p->port = port_after(p->err, prefix);
    cr_assert_neq(p->port, 0, "%s: no port in its readiness line; stderr: %s", p->name, p->err);
}

int tool_wait_exit(tool_proc *p, int ms)
{
    int64_t end = tool_now_ms() + ms;
    bool killed = false;
    while (!try_reap(p)) {
        if (tool_now_ms() >= end) {
            kill(p->pid, SIGKILL);
            reap_now(p);
            killed = true;
            break;
        }
        /* Once its pipes have ended it is about to exit: look often. */
        poll_all(!uses_files(p) && output_ended(p) ? 1 : 5);
    }
    /* What it wrote last. Its pipes end with it, unless something it
     * started still holds them: give that a second, no more. */
    int64_t tail = tool_now_ms() + 1000;
    while ((p->out_fd >= 0 || p->err_fd >= 0) && tool_now_ms() < tail)
        poll_all(20);
    refresh(p);
    forget(p);
    cr_assert_not(killed, "%s did not exit in %d ms\nstdout: %s\nstderr: %s", p->name, ms, p->out,
                  p->err);
    cr_assert_eq(p->signal, 0, "%s died of signal %d\nstdout: %s\nstderr: %s", p->name, p->signal,
                 p->out, p->err);
    return p->status;
}

void tool_stop(tool_proc *p, int sig, int ms)
{
    cr_assert_eq(kill(p->pid, sig), 0, "%s: %s", p->name, strerror(errno));
    int status = tool_wait_exit(p, ms);
    cr_assert_eq(status, 0, "%s exited %d after signal %d; stderr: %s", p->name, status, sig,
                 p->err);
}

void tool_kill(tool_proc *p)
{
    if (!p->reaped) {
        cr_assert_eq(kill(p->pid, SIGKILL), 0, "%s: %s", p->name, strerror(errno));
        reap_now(p);
    }
    refresh(p);
    forget(p);
}
