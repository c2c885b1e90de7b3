/* tern-keygen, run as a program: the binary is found beside this test's
 * build directory (<build>/tests/../tools/tern-keygen, from /proc/self/exe).
 * genkey writes a 0600 file whose public key (pubkey) matches
 * tern_keypair_from_secret(); bad input, unknown commands and flags fail
 * with a one-line error and a non-zero status; --help exits 0. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tern/crypto.h"

static char dir[64];
static char tool[PATH_MAX + 32];

static void setup(void)
{
    cr_assert_eq(tern_crypto_init(), 0);
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert_gt(n, 0);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    cr_assert_not_null(slash);
    *slash = '\0';
    snprintf(tool, sizeof(tool), "%s/../tools/tern-keygen", self);
    cr_assert_eq(access(tool, X_OK), 0, "%s not built", tool);
    strcpy(dir, "/tmp/tern-keygen-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(keygen, .init = setup, .fini = teardown);

typedef struct result {
    int status;
    char out[4096];
    char err[4096];
} result;

static void slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Runs tern-keygen with args (NULL-terminated) and in as standard input. */
static void run(result *r, const char *in, const char *const *args)
{
    char in_path[128], out_path[128], err_path[128];
    snprintf(in_path, sizeof(in_path), "%s/.stdin", dir);
    snprintf(out_path, sizeof(out_path), "%s/.stdout", dir);
    snprintf(err_path, sizeof(err_path), "%s/.stderr", dir);
    FILE *f = fopen(in_path, "w");
    cr_assert_not_null(f);
    fputs(in ? in : "", f);
    fclose(f);

    char *argv[16];
    int argc = 0;
    argv[argc++] = tool;
    for (; args[argc - 1] && argc < 15; argc++)
        argv[argc] = (char *)args[argc - 1];
    argv[argc] = NULL;

    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int i = open(in_path, O_RDONLY);
        /* 0600 so that genkey's warning about readable output stays quiet. */
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (i < 0 || o < 0 || e < 0 || chdir(dir) != 0)
            _exit(127);
        dup2(i, 0);
        dup2(o, 1);
        dup2(e, 2);
        execv(tool, argv);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st));
    r->status = WEXITSTATUS(st);
    slurp(out_path, r->out, sizeof(r->out));
    slurp(err_path, r->err, sizeof(r->err));
}

#define RUN(r, in, ...) run((r), (in), (const char *const[]){__VA_ARGS__, NULL})

/* A failure: non-zero status, nothing on stdout, exactly one line on
 * stderr starting with the program's name. */
static void assert_one_line_error(const result *r)
{
    cr_assert_neq(r->status, 0);
    cr_assert_eq(r->out[0], '\0', "stdout: %s", r->out);
    cr_assert_eq(strncmp(r->err, "tern-keygen: ", 13), 0, "stderr: %s", r->err);
    char *nl = strchr(r->err, '\n');
    cr_assert_not_null(nl);
    cr_assert_eq(nl[1], '\0', "more than one line: %s", r->err);
}

Test(keygen, genkey_file_0600_pubkey_matches)
{
    result r;
    char path[128];
    snprintf(path, sizeof(path), "%s/server.key", dir);

    RUN(&r, NULL, "genkey", "-o", "server.key");
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0600);

    tern_key secret;
    bool insecure = true;
    char err[256];
    cr_assert_eq(
        tern_keyfile_read_secret(path, &secret, TERN_KEYFILE_STRICT, &insecure, err, sizeof(err)),
        0, "%s", err);
    tern_keypair kp;
    tern_keypair_from_secret(&kp, &secret);
    char want[TERN_KEY_BASE64_LEN + 2];
    tern_public_key_to_base64(&kp.pub, want);
    strcat(want, "\n");

    /* pubkey from the file and from standard input. */
    RUN(&r, NULL, "pubkey", "-i", "server.key");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, want);
    char line[64];
    slurp(path, line, sizeof(line));
    RUN(&r, line, "pubkey");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, want);
    cr_assert_str_eq(r.err, "");

    /* genkey refuses to replace it, and does with --force. */
    RUN(&r, NULL, "genkey", "-o", "server.key");
    assert_one_line_error(&r);
    RUN(&r, NULL, "genkey", "--output", "server.key", "--force");
    cr_assert_eq(r.status, 0, "%s", r.err);
    RUN(&r, NULL, "pubkey", "--input", "server.key");
    cr_assert_eq(r.status, 0);
    cr_assert_str_neq(r.out, want);
}

Test(keygen, genkey_genpsk_stdout)
{
    result r;
    tern_key k;

    RUN(&r, NULL, "genkey");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(strlen(r.out), 45U);
    cr_assert_eq(tern_key_from_base64(&k, r.out, 44), 0);
    char first[64];
    strcpy(first, r.out);
    RUN(&r, NULL, "genpsk");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(strlen(r.out), 45U);
    cr_assert_eq(tern_key_from_base64(&k, r.out, 44), 0);
    cr_assert_str_neq(r.out, first);
}

Test(keygen, bad_input_rejected)
{
    result r;
    RUN(&r, "not a key\n", "pubkey");
    assert_one_line_error(&r);
    RUN(&r, "", "pubkey");
    assert_one_line_error(&r);
    RUN(&r, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "pubkey");
    assert_one_line_error(&r);
    RUN(&r, NULL, "pubkey", "-i", "missing.key");
    assert_one_line_error(&r);
    cr_assert(strstr(r.err, "missing.key") != NULL, "%s", r.err);
    RUN(&r, NULL, "genkey", "-o", "no/such/dir/x.key");
    assert_one_line_error(&r);
}

Test(keygen, usage_errors_and_help)
{
    result r;
    RUN(&r, NULL, "frobnicate");
    assert_one_line_error(&r);
    cr_assert(strstr(r.err, "frobnicate") != NULL);
    RUN(&r, NULL, "genkey", "--frob");
    assert_one_line_error(&r);
    cr_assert(strstr(r.err, "--frob") != NULL);
    RUN(&r, NULL, "genkey", "-x");
    assert_one_line_error(&r);
    RUN(&r, NULL, "genkey", "-o");
    assert_one_line_error(&r);
    RUN(&r, NULL, "genkey", "extra");
    assert_one_line_error(&r);
    RUN(&r, NULL, "--bogus");
    assert_one_line_error(&r);
    run(&r, NULL, (const char *const[]){NULL});
    assert_one_line_error(&r);

    RUN(&r, NULL, "--help");
    cr_assert_eq(r.status, 0);
    cr_assert(strstr(r.out, "usage: tern-keygen") != NULL);
    RUN(&r, NULL, "genkey", "--help");
    cr_assert_eq(r.status, 0);
    RUN(&r, NULL, "--version");
    cr_assert_eq(r.status, 0);
    cr_assert_eq(strncmp(r.out, "tern-keygen ", 12), 0);
}
