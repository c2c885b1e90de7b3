/* The child-process group behind tools/proc.h. */
#include "tools/proc.h"

#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/mem.h"

/* Formats a reason and hands it to the owner, who keeps the first. */
static void fail(tern_proc_group *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(tern_proc_group *g, const char *fmt, ...)
{
    char reason[TERN_PROC_REASON_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    g->cfg.cbs.fail(g->data, reason);
}

void tern_proc_close_handle(uv_handle_t *h)
{
    if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
        uv_close(h, NULL);
}

void tern_proc_arg(tern_proc_args *a, const char *s)
{
    if (a->n < TERN_PROC_ARGS_MAX)
        a->v[a->n] = (char *)s; /* uv_process_options_t wants char **; it writes none */
    a->n++;
    a->v[a->n < TERN_PROC_ARGS_MAX ? a->n : TERN_PROC_ARGS_MAX] = NULL;
}

void tern_proc_args_add(tern_proc_args *a, const char *const *list)
{
    for (; *list; list++)
        tern_proc_arg(a, *list);
}

int tern_proc_group_init(tern_proc_group *g, uv_loop_t *loop, const tern_proc_config *cfg,
                         const tern_mem *mem, void *data)
{
    if (!g || !loop || !cfg || cfg->n < 1 || cfg->n > TERN_PROC_MAX || !cfg->stdout_cap ||
        !cfg->cbs.fail || !cfg->cbs.progress || !cfg->cbs.done)
        return TERN_ERR_INVAL;
    memset(g, 0, sizeof(*g));
    g->loop = loop;
    g->cfg = *cfg;
    tern_mem_init(&g->mem, mem);
    g->data = data;
    for (size_t i = 0; i < cfg->n; i++)
        g->procs[i].group = g;
    uv_timer_init(loop, &g->kill_timer);
    g->kill_timer.data = g;
    return 0;
}

void tern_proc_set(tern_proc *p, const char *name, tern_proc_kind kind)
{
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->kind = kind;
}

/* ---- stopping --------------------------------------------------------------------- */

static void finish(tern_proc_group *g)
{
    if (g->finished)
        return;
    g->finished = true;
    tern_proc_close_handle((uv_handle_t *)&g->kill_timer);
    for (size_t i = 0; i < g->cfg.n; i++) {
        tern_proc_close_handle((uv_handle_t *)&g->procs[i].out);
        tern_proc_close_handle((uv_handle_t *)&g->procs[i].err);
        tern_proc_close_handle((uv_handle_t *)&g->procs[i].proc);
    }
    g->cfg.cbs.done(g->data);
}

/* Finishes once every child is reaped and has nothing more to say. */
static void check_done(tern_proc_group *g)
{
    if (!g->stopping)
        return;
    for (size_t i = 0; i < g->cfg.n; i++) {
        const tern_proc *p = &g->procs[i];
        if (p->spawned && (!p->exited || p->out_open || p->err_open))
            return;
    }
    finish(g);
}

static void on_kill_timer(uv_timer_t *t)
{
    tern_proc_group *g = t->data;
    if (g->killed_all) {
        finish(g); /* pipes held open by some grandchild: stop waiting */
        return;
    }
    g->killed_all = true;
    for (size_t i = 0; i < g->cfg.n; i++) {
        tern_proc *p = &g->procs[i];
        if (p->spawned && !p->exited) {
            p->killed = true;
            (void)uv_process_kill(&p->proc, SIGKILL);
            fail(g, "%s did not exit within %d ms of SIGTERM; killed", p->name,
                 TERN_PROC_KILL_AFTER_MS);
        }
    }
    uv_timer_start(&g->kill_timer, on_kill_timer, TERN_PROC_DRAIN_AFTER_MS, 0);
}

void tern_proc_group_stop(tern_proc_group *g)
{
    if (g->stopping)
        return;
    g->stopping = true;
    for (size_t i = 0; i < g->cfg.n; i++) {
        tern_proc *p = &g->procs[i];
        if (p->spawned && !p->exited)
            (void)uv_process_kill(&p->proc, SIGTERM);
    }
    uv_timer_start(&g->kill_timer, on_kill_timer, TERN_PROC_KILL_AFTER_MS, 0);
    check_done(g);
}

void tern_proc_group_free(tern_proc_group *g)
{
    for (size_t i = 0; i < TERN_PROC_MAX; i++) {
        if (g->procs[i].stdout_buf)
            tern_mem_free(&g->mem, g->procs[i].stdout_buf);
        g->procs[i].stdout_buf = NULL;
    }
}

/* ---- what the children say -------------------------------------------------------- */

uint16_t tern_proc_listen_port(const char *line)
{
    const char *a = strstr(line, "listening on ");
    if (!a)
        return 0;
    a += strlen("listening on ");
    size_t n = strcspn(a, " ,\n");
    const char *colon = NULL;
    for (const char *q = a; q < a + n; q++)
        if (*q == ':')
            colon = q;
    if (!colon || colon + 1 >= a + n || a + n - colon > 6)
        return 0;
    unsigned long port = 0;
    for (const char *q = colon + 1; q < a + n; q++) {
        if (*q < '0' || *q > '9')
            return 0;
        port = port * 10 + (unsigned long)(*q - '0');
    }
    return port >= 1 && port <= 65535 ? (uint16_t)port : 0;
}

static void on_line(tern_proc *p, const char *line)
{
    tern_proc_group *g = p->group;
    if (g->cfg.verbose)
        fprintf(stderr, "  [%s] %s\n", p->name, line);
    snprintf(p->last, sizeof(p->last), "%s", line);
    if (g->stopping || p->kind == TERN_PROC_FOREIGN)
        return;
    if (!p->ready && strstr(line, "listening on ")) {
        p->port = tern_proc_listen_port(line);
        if (!p->port) {
            fail(g, "%s: no port in its readiness line '%s'", p->name, line);
            return;
        }
        p->ready = true;
        g->cfg.cbs.progress(g->data);
        return;
    }
    if (p->kind != TERN_PROC_TUNNEL_CLIENT)
        return;
    if (strstr(line, "cannot connect to ")) {
        fail(g, "the tunnel client cannot reach the server through the proxy: '%s'", line);
    } else if (strstr(line, ": connected to ")) {
        p->connected = true;
        g->cfg.cbs.progress(g->data);
    } else if (strstr(line, "session to ") && strstr(line, " ended")) {
        fail(g, "the tunnel's session ended during the run: '%s'", line);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    tern_proc *p = h->data;
    *buf = uv_buf_init(p->rbuf, sizeof(p->rbuf));
}

static void end_line(tern_proc *p)
{
    p->line[p->line_len] = '\0';
    p->line_len = 0;
    on_line(p, p->line);
}

static void on_stderr(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tern_proc *p = s->data;
    if (nread < 0) {
        if (p->line_len)
            end_line(p); /* a last line without its newline */
        p->err_open = false;
        uv_close((uv_handle_t *)s, NULL);
        check_done(p->group);
        return;
    }
    for (ssize_t i = 0; i < nread; i++) {
        char ch = buf->base[i];
        if (ch == '\n')
            end_line(p);
        else if (p->line_len < sizeof(p->line) - 1)
            p->line[p->line_len++] = ch; /* longer lines are cut */
    }
}

static void on_stdout(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tern_proc *p = s->data;
    if (nread < 0) {
        p->out_open = false;
        uv_close((uv_handle_t *)s, NULL);
        check_done(p->group);
        return;
    }
    size_t room = p->group->cfg.stdout_cap - 1 - p->stdout_len;
    size_t n = (size_t)nread < room ? (size_t)nread : room; /* the rest is dropped */
    memcpy(p->stdout_buf + p->stdout_len, buf->base, n);
    p->stdout_len += n;
    p->stdout_buf[p->stdout_len] = '\0';
}

void tern_proc_describe_exit(const tern_proc *p, char *buf, size_t cap)
{
    if (p->term_signal)
        snprintf(buf, cap, "killed by signal %d", p->term_signal);
    else
        snprintf(buf, cap, "exit %" PRId64, p->status);
}

static void on_child_exit(uv_process_t *h, int64_t status, int term_signal)
{
    tern_proc *p = h->data;
    tern_proc_group *g = p->group;
    p->exited = true;
    p->status = status;
    p->term_signal = term_signal;
    uv_close((uv_handle_t *)h, NULL);
    char how[64];
    tern_proc_describe_exit(p, how, sizeof(how));
    bool clean = (status == 0 && term_signal == 0) ||
                 (p->kind == TERN_PROC_FOREIGN && term_signal == SIGTERM);
    if (!g->stopping)
        fail(g, "%s exited early (%s): '%s'", p->name, how, p->last);
    else if (!p->killed && !clean)
        fail(g, "%s ended badly after SIGTERM (%s): '%s'", p->name, how, p->last);
    check_done(g);
}

int tern_proc_spawn(tern_proc *p, const tern_proc_args *args)
{
    tern_proc_group *g = p->group;
    if (p->out.type != UV_UNKNOWN_HANDLE)
        return TERN_ERR_STATE; /* its pipes are in use, or closing */
    if (args->n < 1 || args->n > TERN_PROC_ARGS_MAX) {
        fail(g, "cannot start %s: %d arguments, at most %d", p->name, args->n, TERN_PROC_ARGS_MAX);
        return TERN_ERR_RANGE;
    }
    if (!p->stdout_buf)
        p->stdout_buf = tern_mem_calloc(&g->mem, g->cfg.stdout_cap, 1);
    if (!p->stdout_buf) {
        fail(g, "out of memory");
        return TERN_ERR_NOMEM;
    }
    uv_pipe_init(g->loop, &p->out, 0);
    uv_pipe_init(g->loop, &p->err, 0);
    p->out.data = p->err.data = p->proc.data = p;
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[1].data.stream = (uv_stream_t *)&p->out;
    stdio[2].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[2].data.stream = (uv_stream_t *)&p->err;
    uv_process_options_t po;
    memset(&po, 0, sizeof(po));
    po.exit_cb = on_child_exit;
    po.file = args->v[0];
    po.args = (char **)args->v;
    po.stdio = stdio;
    po.stdio_count = 3;
    int rc = uv_spawn(g->loop, &p->proc, &po);
    if (rc < 0) {
        /* The pipes were initialised: the stop closes them. */
        fail(g, "cannot start %s (%s): %s", p->name, args->v[0], uv_strerror(rc));
        return rc;
    }
    p->spawned = true;
    p->pid = p->proc.pid;
    p->out_open = p->err_open = true;
    uv_read_start((uv_stream_t *)&p->out, on_alloc, on_stdout);
    uv_read_start((uv_stream_t *)&p->err, on_alloc, on_stderr);
    return 0;
}

/* ---- paths ---------------------------------------------------------------------------- */

void tern_proc_join_path(char *out, size_t cap, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a > cap - 2)
        a = cap - 2;
    if (b > cap - 2 - a)
        b = cap - 2 - a;
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, name, b);
    out[a + 1 + b] = '\0';
}

int tern_proc_exe_dir(char *out, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0)
        return TERN_ERR_IO;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        return TERN_ERR_IO;
    *slash = '\0';
    return 0;
}
