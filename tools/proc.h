/* Child processes on a libuv loop, for the programs that run tern's tools
 * end to end (tern-demo, bench_tunnel): spawn each one with its stdout and
 * stderr on pipes, learn its port from its readiness line, and stop the
 * whole group on any exit path.
 *
 * A tool of ours says it is ready with a stderr line holding "listening on
 * HOST:PORT"; a tern-tunnel client then says ": connected to " once its
 * handshake is done. A foreign program (kcptun) prints neither: the owner
 * decides when it is ready, and dying of SIGTERM is its clean stop (Go
 * keeps the default action).
 *
 * Stopping: tern_proc_group_stop() sends SIGTERM to every child still
 * running and SIGKILL TERN_PROC_KILL_AFTER_MS later to any that did not
 * exit; once every child is reaped and its pipes have ended (or
 * TERN_PROC_DRAIN_AFTER_MS after the SIGKILL, when a grandchild holds a
 * pipe open) the group closes its handles and calls done. The owner closes
 * its own handles there, so that uv_run() returns.
 *
 * Failures go to the fail callback, one formatted reason each: a child that
 * could not start, exited before the stop, ended badly after SIGTERM or
 * had to be killed, a readiness line without a port, a tunnel client that
 * cannot reach its server or whose session ended. The owner keeps the
 * first reason and stops the group (a second stop is a no-op). */
#ifndef TERN_TOOLS_PROC_H
#define TERN_TOOLS_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tern/common.h"
#include "tern/error.h"

#define TERN_PROC_MAX 4               /* children in a group */
#define TERN_PROC_NAME_CAP 64         /* "tern-tunnel server" */
#define TERN_PROC_LINE_CAP 1024       /* one stderr line; longer ones are cut */
#define TERN_PROC_ARGS_MAX 47         /* arguments of one child, its path included */
#define TERN_PROC_KILL_AFTER_MS 3000  /* SIGTERM, then SIGKILL this much later */
#define TERN_PROC_DRAIN_AFTER_MS 1000 /* after SIGKILL, how long to wait for the pipes */
#define TERN_PROC_REASON_CAP 2048     /* a failure's reason, as given to fail */

typedef enum tern_proc_kind {
    TERN_PROC_LISTENER = 0,  /* ready at its "listening on HOST:PORT" line */
    TERN_PROC_TUNNEL_CLIENT, /* the same, then connected at ": connected to " */
    TERN_PROC_FOREIGN,       /* no lines read: the owner sets ready; SIGTERM is clean */
} tern_proc_kind;

typedef struct tern_proc_group tern_proc_group;

/* One child. The owner sets name and kind (tern_proc_set) and may set port,
 * ready and connected for a foreign one; the rest is read-only. */
typedef struct tern_proc {
    tern_proc_group *group;
    char name[TERN_PROC_NAME_CAP];
    tern_proc_kind kind;
    uv_process_t proc;
    uv_pipe_t out, err;
    bool spawned, exited, killed, out_open, err_open;
    int pid;
    int64_t status;  /* the exit status, once exited */
    int term_signal; /* the signal that ended it, or 0 */
    uint16_t port;   /* from the readiness line */
    bool ready, connected;
    char line[TERN_PROC_LINE_CAP]; /* the stderr line being read */
    size_t line_len;
    char last[TERN_PROC_LINE_CAP]; /* the last complete stderr line, for errors */
    char *stdout_buf;              /* stdout_cap bytes, NUL-terminated; NULL until spawned */
    size_t stdout_len;
    char rbuf[4096];
} tern_proc;

/* Each callback gets the owner's data (tern_proc_group_init). All required. */
typedef struct tern_proc_cbs {
    void (*fail)(void *data, const char *reason);
    void (*progress)(void *data); /* a child became ready or connected */
    void (*done)(void *data);     /* stopped: every handle of the group is closing */
} tern_proc_cbs;

typedef struct tern_proc_config {
    size_t n;          /* children, 1..TERN_PROC_MAX */
    size_t stdout_cap; /* bytes of each child's stdout kept (the rest is dropped), >= 1 */
    bool verbose;      /* copy every stderr line to ours as "  [name] line" */
    tern_proc_cbs cbs;
} tern_proc_config;

struct tern_proc_group {
    uv_loop_t *loop;
    tern_proc_config cfg;
    tern_mem mem;
    tern_proc procs[TERN_PROC_MAX];
    uv_timer_t kill_timer;
    bool stopping, killed_all, finished;
    void *data; /* the owner's */
};

/* A child's argument vector, built in place; the strings must outlive the
 * spawn. Arguments past TERN_PROC_ARGS_MAX are counted in n but not kept,
 * and tern_proc_spawn() then refuses the vector. */
typedef struct tern_proc_args {
    char *v[TERN_PROC_ARGS_MAX + 1]; /* NULL-terminated */
    int n;
} tern_proc_args;

void tern_proc_arg(tern_proc_args *a, const char *s);
/* Every string of a NULL-terminated list. */
void tern_proc_args_add(tern_proc_args *a, const char *const *list);

/* Sets up an empty group on loop (cfg copied, mem NULL for malloc/free);
 * allocates nothing. TERN_ERR_INVAL for NULL, n out of range, a zero
 * stdout_cap or a missing callback; the group is then unusable. */
int tern_proc_group_init(tern_proc_group *g, uv_loop_t *loop, const tern_proc_config *cfg,
                         const tern_mem *mem, void *data);
/* Names p (cut to TERN_PROC_NAME_CAP - 1 bytes) and says how it signals
 * readiness. Before its spawn. */
void tern_proc_set(tern_proc *p, const char *name, tern_proc_kind kind);
/* Starts p (one of the group's first n) with args (args->v[0] is the
 * program's path), stdin closed, stdout and stderr read by the group.
 * Returns 0, or a negative libuv or TERN_ERR_* code after calling fail:
 * TERN_ERR_NOMEM for the stdout buffer, TERN_ERR_RANGE for too many
 * arguments. TERN_ERR_STATE, without fail, if p was started before. */
int tern_proc_spawn(tern_proc *p, const tern_proc_args *args);
/* SIGTERM to every child still running, then as described above. Safe to
 * call again, and with nothing spawned (done is then called at once). */
void tern_proc_group_stop(tern_proc_group *g);
/* Frees the stdout buffers. After uv_run() has returned (the handles are
 * closed); a zeroed group is fine. */
void tern_proc_group_free(tern_proc_group *g);

/* Closes h unless it is all zeroes (never initialised) or closing already. */
void tern_proc_close_handle(uv_handle_t *h);

/* "exit N" or "killed by signal N". */
void tern_proc_describe_exit(const tern_proc *p, char *buf, size_t cap);
/* The port in "... listening on HOST:PORT[, (]...", or 0. */
uint16_t tern_proc_listen_port(const char *line);

/* out = dir + "/" + name, cut to cap (>= 2). */
void tern_proc_join_path(char *out, size_t cap, const char *dir, const char *name);
/* The directory holding this program, from /proc/self/exe. 0, or
 * TERN_ERR_IO. */
int tern_proc_exe_dir(char *out, size_t cap);

#endif /* TERN_TOOLS_PROC_H */
