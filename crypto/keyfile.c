/* Key files: one line of standard base64 (44 characters) and a newline,
 * as WireGuard's (see tern/crypto_dos.h and docs/KEYS.md). Secret files are
 * created with mode 0600 by open() itself, so they are never readable by
 * others, not even between creation and a chmod. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern/crypto.h"

#define B64 TERN_KEY_BASE64_LEN
/* More than a key line with generous trailing white space: anything longer
 * is not a key file. */
#define READ_MAX 128U

_Static_assert(B64 + 1 == sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL),
               "base64 length of a key");

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
set_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || !cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

static void encode(const uint8_t key[32], char out[B64 + 1])
{
    sodium_bin2base64(out, B64 + 1, key, 32, sodium_base64_VARIANT_ORIGINAL);
}

void tern_key_to_base64(const tern_key *key, char out[TERN_KEY_BASE64_LEN + 1])
{
    encode(key->b, out);
}

void tern_public_key_to_base64(const tern_public_key *key, char out[TERN_KEY_BASE64_LEN + 1])
{
    encode(key->b, out);
}

/* Exactly 44 characters of canonical base64: decoding them and encoding
 * again gives the same text (so the unused low bits of the last character
 * are zero and there is one spelling per key). */
static int decode(uint8_t out[32], const char *s, size_t len)
{
    uint8_t bin[32];
    char again[B64 + 1];
    size_t bin_len = 0;
    const char *end = NULL;
    int rc = TERN_ERR_INVAL;

    if (!s || len != B64 || sodium_init() < 0)
        return TERN_ERR_INVAL;
    if (sodium_base642bin(bin, sizeof(bin), s, len, NULL, &bin_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        bin_len != sizeof(bin) || end != s + len)
        goto out;
    encode(bin, again);
    if (sodium_memcmp(again, s, B64) != 0)
        goto out;
    memcpy(out, bin, sizeof(bin));
    rc = 0;
out:
    sodium_memzero(bin, sizeof(bin));
    sodium_memzero(again, sizeof(again));
    return rc;
}

int tern_key_from_base64(tern_key *out, const char *s, size_t len)
{
    return out ? decode(out->b, s, len) : TERN_ERR_INVAL;
}

int tern_public_key_from_base64(tern_public_key *out, const char *s, size_t len)
{
    return out ? decode(out->b, s, len) : TERN_ERR_INVAL;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Reads and parses path into out[32]; *mode gets the file's mode. */
static int read_key(const char *path, uint8_t out[32], mode_t *mode, char *err, size_t cap)
{
    char buf[READ_MAX + 1];
    size_t len = 0;
    int rc = TERN_ERR_IO;

    if (!path)
        return TERN_ERR_INVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        set_err(err, cap, "%s: %s", path, strerror(errno));
        return TERN_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_err(err, cap, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, cap, "%s: not a regular file", path);
        goto out;
    }
    *mode = st.st_mode;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            set_err(err, cap, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf))
            break;
    }
    rc = TERN_ERR_INVAL;
    if (len > READ_MAX) {
        set_err(err, cap, "%s: too long for a key file (one line of %u base64 characters)", path,
                B64);
        goto out;
    }
    size_t key_len = 0;
    while (key_len < len && !is_space(buf[key_len]))
        key_len++;
    for (size_t i = key_len; i < len; i++) {
        if (!is_space(buf[i])) {
            set_err(err, cap, "%s: not a key file (expected one line of %u base64 characters)",
                    path, B64);
            goto out;
        }
    }
    if (decode(out, buf, key_len) != 0) {
        set_err(err, cap, "%s: not a valid key (expected %u base64 characters, got %zu)", path, B64,
                key_len);
        goto out;
    }
    rc = 0;
out:
    sodium_memzero(buf, sizeof(buf));
    close(fd);
    return rc;
}

int tern_keyfile_read_secret(const char *path, tern_key *out, unsigned flags, bool *insecure,
                             char *err, size_t err_cap)
{
    uint8_t key[32];
    mode_t mode = 0;

    if (insecure)
        *insecure = false;
    if (!path || !out)
        return TERN_ERR_INVAL;
    int rc = read_key(path, key, &mode, err, err_cap);
    if (rc != 0)
        goto out;
    if (mode & (S_IRWXG | S_IRWXO)) {
        unsigned m = (unsigned)(mode & 07777);
        if (flags & TERN_KEYFILE_STRICT) {
            set_err(err, err_cap, "%s: private key is accessible by group or others (mode %04o)",
                    path, m);
            rc = TERN_ERR_PERM;
            goto out;
        }
        set_err(err, err_cap,
                "%s: warning: private key is accessible by group or others (mode %04o); "
                "chmod 600 it",
                path, m);
        if (insecure)
            *insecure = true;
    }
    memcpy(out->b, key, sizeof(key));
out:
    sodium_memzero(key, sizeof(key));
    return rc;
}

int tern_keyfile_read_public(const char *path, tern_public_key *out, char *err, size_t err_cap)
{
    mode_t mode = 0;
    if (!path || !out)
        return TERN_ERR_INVAL;
    return read_key(path, out->b, &mode, err, err_cap);
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int tern_keyfile_write_secret(const char *path, const tern_key *key, unsigned flags, char *err,
                              size_t err_cap)
{
    char line[B64 + 2];
    char tmp[PATH_MAX];
    const char *created = path; /* the file to remove if anything fails */
    int rc = TERN_ERR_IO;
    int fd;

    if (!path || !key || sodium_init() < 0)
        return TERN_ERR_INVAL;
    if (flags & TERN_KEYFILE_OVERWRITE) {
        /* Write beside the target, then rename over it: readers see the
         * old key or the new one, never half a file. mkstemp() creates
         * with mode 0600. */
        if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp)) {
            set_err(err, err_cap, "%s: path too long", path);
            return TERN_ERR_IO;
        }
        fd = mkstemp(tmp);
        created = tmp;
    } else {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    }
    if (fd < 0) {
        set_err(err, err_cap, "%s: %s", path, strerror(errno));
        return TERN_ERR_IO;
    }
    encode(key->b, line);
    line[B64] = '\n';
    line[B64 + 1] = '\0';
    /* The umask can only have removed bits; make the mode exactly 0600. */
    if (fchmod(fd, 0600) != 0 || write_all(fd, line, B64 + 1) != 0 || fsync(fd) != 0) {
        set_err(err, err_cap, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(created);
        goto out;
    }
    if (close(fd) != 0) {
        set_err(err, err_cap, "%s: %s", path, strerror(errno));
        unlink(created);
        goto out;
    }
    if (created != path && rename(tmp, path) != 0) {
        set_err(err, err_cap, "%s: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    sodium_memzero(line, sizeof(line));
    return rc;
}
