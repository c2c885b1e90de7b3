/* Key files (crypto/keyfile.c): base64 round trips, the 0600 mode whatever
 * the umask, O_EXCL and atomic overwrite, every malformed file rejected
 * with TERN_ERR_INVAL and a message naming it, missing files, and the
 * warning (or strict refusal) for a key others can read. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern/crypto.h"

static char dir[64];

static void setup(void)
{
    cr_assert_eq(tern_crypto_init(), 0);
    strcpy(dir, "/tmp/tern-keyfile-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(keyfile, .init = setup, .fini = teardown);

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static void put(const char *path, const char *content, mode_t mode)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(content, f);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(chmod(path, mode), 0);
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    return st.st_mode & 07777;
}

Test(keyfile, base64_round_trip)
{
    tern_key k, back;
    tern_public_key pk, pback;
    char b64[TERN_KEY_BASE64_LEN + 1];

    for (int i = 0; i < 32; i++)
        k.b[i] = (uint8_t)(i * 7 + 1);
    tern_key_to_base64(&k, b64);
    cr_assert_eq(strlen(b64), 44U);
    cr_assert_eq(b64[43], '=');
    cr_assert_eq(tern_key_from_base64(&back, b64, 44), 0);
    cr_assert_eq(memcmp(k.b, back.b, 32), 0);

    memcpy(pk.b, k.b, 32);
    tern_public_key_to_base64(&pk, b64);
    cr_assert_eq(tern_public_key_from_base64(&pback, b64, 44), 0);
    cr_assert_eq(memcmp(pk.b, pback.b, 32), 0);

    /* Wrong lengths, bad characters, URL-safe alphabet, no padding, and a
     * non-canonical last character (unused bits set). */
    cr_assert_eq(tern_key_from_base64(&back, b64, 43), TERN_ERR_INVAL);
    cr_assert_eq(tern_key_from_base64(&back, NULL, 44), TERN_ERR_INVAL);
    char bad[45];
    memcpy(bad, b64, 45);
    bad[5] = '*';
    cr_assert_eq(tern_key_from_base64(&back, bad, 44), TERN_ERR_INVAL);
    memcpy(bad, b64, 45);
    bad[43] = 'A';
    cr_assert_eq(tern_key_from_base64(&back, bad, 44), TERN_ERR_INVAL);
    const char *zeros = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const char *noncanon = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=";
    cr_assert_eq(tern_key_from_base64(&back, zeros, 44), 0);
    cr_assert_eq(tern_key_from_base64(&back, noncanon, 44), TERN_ERR_INVAL);
    const char *urlsafe = "____________________________________________";
    cr_assert_eq(tern_key_from_base64(&back, urlsafe, 44), TERN_ERR_INVAL);
}

Test(keyfile, write_read_mode_0600)
{
    char path[128], err[256] = "";
    tern_keypair kp;
    tern_key back;
    bool insecure = true;

    cr_assert_eq(tern_keypair_generate(&kp), 0);
    path_of(path, sizeof(path), "a.key");
    mode_t old = umask(0); /* the file must be 0600 even so */
    int rc = tern_keyfile_write_secret(path, &kp.secret, 0, err, sizeof(err));
    umask(old);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(mode_of(path), 0600);

    /* The format: one line of 44 characters. */
    char buf[64] = {0};
    FILE *f = fopen(path, "r");
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    cr_assert_eq(n, 45U);
    cr_assert_eq(buf[44], '\n');

    cr_assert_eq(
        tern_keyfile_read_secret(path, &back, TERN_KEYFILE_STRICT, &insecure, err, sizeof(err)), 0);
    cr_assert_not(insecure);
    cr_assert_eq(memcmp(back.b, kp.secret.b, 32), 0);

    /* Exists: refused without the flag, replaced atomically with it. */
    tern_keypair kp2;
    cr_assert_eq(tern_keypair_generate(&kp2), 0);
    cr_assert_eq(tern_keyfile_write_secret(path, &kp2.secret, 0, err, sizeof(err)), TERN_ERR_IO);
    cr_assert(strstr(err, path) != NULL, "%s", err);
    cr_assert_eq(tern_keyfile_read_secret(path, &back, 0, NULL, err, sizeof(err)), 0);
    cr_assert_eq(memcmp(back.b, kp.secret.b, 32), 0);
    chmod(path, 0644);
    cr_assert_eq(
        tern_keyfile_write_secret(path, &kp2.secret, TERN_KEYFILE_OVERWRITE, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_eq(mode_of(path), 0600);
    cr_assert_eq(tern_keyfile_read_secret(path, &back, 0, NULL, err, sizeof(err)), 0);
    cr_assert_eq(memcmp(back.b, kp2.secret.b, 32), 0);

    /* Nothing left beside it. */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "test $(ls -A '%s' | wc -l) -eq 1", dir);
    cr_assert_eq(system(cmd), 0);

    /* A directory that does not exist. */
    path_of(path, sizeof(path), "no/such/dir.key");
    cr_assert_eq(tern_keyfile_write_secret(path, &kp.secret, 0, err, sizeof(err)), TERN_ERR_IO);
    cr_assert_eq(
        tern_keyfile_write_secret(path, &kp.secret, TERN_KEYFILE_OVERWRITE, err, sizeof(err)),
        TERN_ERR_IO);
}

Test(keyfile, malformed_rejected_with_message)
{
    static const char *const bad[] = {
        "",
        "\n",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",   /* 43 */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", /* 45 */
        /* two lines (parenthesised: one string on purpose) */
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
         "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= x\n",
        " AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA#AAAAAAAAA=\n",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",
        "-----BEGIN PRIVATE KEY-----\n",
    };
    char path[128], err[256];
    tern_key k;
    path_of(path, sizeof(path), "bad.key");

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put(path, bad[i], 0600);
        err[0] = '\0';
        cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, NULL, err, sizeof(err)), TERN_ERR_INVAL,
                     "case %zu", i);
        cr_assert(strstr(err, path) != NULL, "case %zu: %s", i, err);
        cr_assert_null(strchr(err, '\n'), "one line: %s", err);
    }
    /* Far too long. */
    char big[4096];
    memset(big, 'A', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    put(path, big, 0600);
    cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, NULL, err, sizeof(err)), TERN_ERR_INVAL);

    /* White space after the key is fine (CRLF, no newline, spaces). */
    put(path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", 0600);
    cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, NULL, err, sizeof(err)), 0);
    put(path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 0600);
    cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, NULL, err, sizeof(err)), 0);

    /* Missing file, a directory. */
    path_of(path, sizeof(path), "missing.key");
    cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, NULL, err, sizeof(err)), TERN_ERR_IO);
    cr_assert(strstr(err, "missing.key") != NULL, "%s", err);
    cr_assert_eq(tern_keyfile_read_secret(dir, &k, 0, NULL, err, sizeof(err)), TERN_ERR_IO);
    tern_public_key pk;
    cr_assert_eq(tern_keyfile_read_public(path, &pk, err, sizeof(err)), TERN_ERR_IO);
    /* NULL err is fine. */
    cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, NULL, NULL, 0), TERN_ERR_IO);
}

Test(keyfile, insecure_permissions)
{
    char path[128], err[256];
    tern_key k;
    tern_public_key pk;
    bool insecure = false;
    path_of(path, sizeof(path), "open.key");

    static const mode_t modes[] = {0640, 0604, 0644, 0660, 0610};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        put(path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", modes[i]);
        insecure = false;
        err[0] = '\0';
        cr_assert_eq(tern_keyfile_read_secret(path, &k, 0, &insecure, err, sizeof(err)), 0);
        cr_assert(insecure, "mode %o", modes[i]);
        cr_assert(strstr(err, "warning") != NULL, "%s", err);
        cr_assert_eq(
            tern_keyfile_read_secret(path, &k, TERN_KEYFILE_STRICT, &insecure, err, sizeof(err)),
            TERN_ERR_PERM);
        /* A public key may be readable by anyone. */
        cr_assert_eq(tern_keyfile_read_public(path, &pk, err, sizeof(err)), 0);
    }
    put(path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 0400);
    cr_assert_eq(
        tern_keyfile_read_secret(path, &k, TERN_KEYFILE_STRICT, &insecure, err, sizeof(err)), 0);
    cr_assert_not(insecure);
}
