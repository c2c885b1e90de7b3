/* Running a built program (tools/, examples/) from a Criterion test: start
 * it with its output captured, wait for a line it prints, stop it, reap it.
 * Output goes through pipes, which every wait here drains for every running
 * program so that none blocks on a full pipe, or into files (cmd.out_dir)
 * for a program that runs while the test is busy elsewhere. Every program
 * gets SIGKILL if the test process dies. Times are wall-clock milliseconds.
 * Built into tool_util.c, linked by the tests that use it
 * (tests/CMakeLists.txt). */
#ifndef TERN_TESTS_TOOL_UTIL_H
#define TERN_TESTS_TOOL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TOOL_TEXT_MAX 65536 /* output kept per stream; past it the stream is closed */
#define TOOL_ARGS_MAX 40
#define TOOL_PROCS_MAX 8 /* running at once */

/* A NULL-terminated argument list, in place. */
#define TOOL_ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

typedef struct tool_cmd {
    const char *bin;         /* the program's path */
    const char *const *args; /* after argv[0], NULL-terminated */
    const char *name;        /* in messages, and the output files' names; NULL: bin */
    const char *out_dir;     /* NULL: output through pipes; else NAME.out and NAME.err there */
    const char *env;         /* "NAME=value" to set for the program, or NULL */
    bool stdin_pipe;         /* standard input: a pipe the test writes (in_fd), else /dev/null */
} tool_cmd;

typedef struct tool_proc {
    const char *name;
    pid_t pid;
    bool reaped;
    int status;                        /* exit status once reaped; -1 if a signal ended it */
    int signal;                        /* the signal that ended it, or 0 */
    uint16_t port;                     /* from its readiness line (tool_start) */
    int in_fd;                         /* its standard input when a pipe, else -1 */
    int out_fd, err_fd;                /* pipes, -1 at end of file; always -1 with files */
    char out_path[256], err_path[256]; /* with files */
    char out[TOOL_TEXT_MAX], err[TOOL_TEXT_MAX];
    size_t out_len, err_len;
} tool_proc;

int64_t tool_now_ms(void);
void tool_sleep_ms(int ms);

/* Up to cap - 1 bytes of the file at path, NUL-terminated; "" if it cannot
 * be read. */
void tool_slurp(const char *path, char *buf, size_t cap);

/* A new directory /tmp/PREFIX-XXXXXX, its path into dir. */
void tool_make_dir(char *dir, size_t cap, const char *prefix);

/* "dir/name", in one of 8 buffers used in turn: a result lasts through the
 * next 7 calls. */
const char *tool_path(const char *dir, const char *name);

/* Starts cmd; p is running until tool_wait_exit, tool_stop or tool_kill. */
void tool_spawn(tool_proc *p, const tool_cmd *cmd);

/* tool_spawn, then waits up to ms for a whole line of stderr holding prefix
 * and sets p->port from the HOST:PORT after it. Fails the test if the
 * program exits first, stays silent or names no port. */
void tool_start(tool_proc *p, const tool_cmd *cmd, const char *prefix, int ms);

/* Whether needle shows in p's stdout (on_stdout) or stderr within ms; false
 * at once if p's output has ended without it. */
bool tool_wait_text(tool_proc *p, bool on_stdout, const char *needle, int ms);

/* Whether a whole line of p's stderr holding prefix shows within ms. */
bool tool_wait_line(tool_proc *p, const char *prefix, int ms);

/* Waits for p to exit, reads the rest of its output and returns its exit
 * status. Fails the test (after SIGKILL) if it is still running after ms,
 * or if a signal ended it. */
int tool_wait_exit(tool_proc *p, int ms);

/* Sends sig, then p must exit with status 0 within ms. */
void tool_stop(tool_proc *p, int sig, int ms);

/* SIGKILL and reap, asking nothing of how it ended. */
void tool_kill(tool_proc *p);

#endif /* TERN_TESTS_TOOL_UTIL_H */
