/* tern-keygen: make and print keys for tern's key files (docs/KEYS.md).
 *
 *   tern-keygen genkey [-o FILE] [-f]   a new private key
 *   tern-keygen pubkey [-i FILE]        the public key of a private key
 *   tern-keygen genpsk [-o FILE] [-f]   a new random pre-shared key
 *
 * Subcommands are dispatched from a table. Errors are one line on stderr,
 * "tern-keygen: ...", with exit status 1 (2 for a usage error). */
#include <errno.h>
#include <getopt.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tern/tern.h>

#define PROG "tern-keygen"
#define EXIT_USAGE 2

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [--help] [--version] COMMAND [OPTIONS]\n"
               "\n"
               "Commands:\n"
               "  genkey [-o FILE] [-f]  write a new private key (base64, one line) to FILE\n"
               "                         (created with mode 0600) or to standard output\n"
               "  pubkey [-i FILE]       read a private key from FILE or standard input and\n"
               "                         print its public key\n"
               "  genpsk [-o FILE] [-f]  write a new random pre-shared key, like genkey\n"
               "\n"
               "Options:\n"
               "  -o, --output FILE      write to FILE instead of standard output\n"
               "  -f, --force            replace FILE if it exists\n"
               "  -i, --input FILE       read from FILE instead of standard input\n"
               "  -h, --help             show this help and exit\n"
               "  -V, --version          show the version and exit\n"
               "\n"
               "Example: " PROG " genkey -o server.key && " PROG " pubkey -i server.key\n");
}

static int fail(const char *cmd, const char *msg)
{
    if (cmd)
        fprintf(stderr, PROG ": %s: %s\n", cmd, msg);
    else
        fprintf(stderr, PROG ": %s\n", msg);
    return 1;
}

/* One line for a bad flag; getopt's own messages are off (opterr = 0). cmd
 * is NULL for the flags before the command. */
static int bad_option(const char *cmd, char **argv, int c)
{
    const char *arg = argv[optind - 1];
    char where[32] = "";

    if (cmd)
        snprintf(where, sizeof(where), "%s: ", cmd);
    if (c == ':')
        fprintf(stderr, PROG ": %soption '%s' needs an argument (try '" PROG " --help')\n", where,
                arg);
    else if (optopt)
        fprintf(stderr, PROG ": %sunknown option '-%c' (try '" PROG " --help')\n", where, optopt);
    else
        fprintf(stderr, PROG ": %sunknown option '%s' (try '" PROG " --help')\n", where, arg);
    return EXIT_USAGE;
}

static int extra_args(const char *cmd, int argc, char **argv)
{
    if (optind < argc) {
        fprintf(stderr, PROG ": %s: unexpected argument '%s' (try '" PROG " --help')\n", cmd,
                argv[optind]);
        return EXIT_USAGE;
    }
    return 0;
}

/* genkey and genpsk: 32 random bytes (a private key is clamped by X25519
 * itself, so any 32 bytes will do, as for a PSK). */
static int generate(const char *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *output = NULL;
    unsigned flags = 0;
    int c;

    while ((c = getopt_long(argc, argv, ":o:fh", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            output = optarg;
            break;
        case 'f':
            flags |= TERN_KEYFILE_OVERWRITE;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return bad_option(cmd, argv, c);
        }
    }
    int rc = extra_args(cmd, argc, argv);
    if (rc)
        return rc;

    tern_keypair kp;
    if (tern_keypair_generate(&kp) != 0)
        return fail(cmd, "no usable random source");

    if (output) {
        char err[512];
        rc = tern_keyfile_write_secret(output, &kp.secret, flags, err, sizeof(err));
        sodium_memzero(&kp, sizeof(kp));
        return rc ? fail(cmd, err) : 0;
    }

    struct stat st;
    if (fstat(STDOUT_FILENO, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077))
        fprintf(stderr,
                PROG ": %s: warning: writing a secret key to a file others can read "
                     "(use -o FILE, or umask 077)\n",
                cmd);
    char b64[TERN_KEY_BASE64_LEN + 1];
    tern_key_to_base64(&kp.secret, b64);
    sodium_memzero(&kp, sizeof(kp));
    rc = printf("%s\n", b64) < 0 || fflush(stdout) != 0;
    sodium_memzero(b64, sizeof(b64));
    return rc ? fail(cmd, "cannot write to standard output") : 0;
}

static int read_stdin_key(tern_key *key)
{
    char buf[130];
    size_t len = fread(buf, 1, sizeof(buf), stdin);
    int rc = -1;

    if (ferror(stdin) || len == sizeof(buf))
        goto out;
    /* One key and white space around it, nothing else. */
    size_t start = 0, end = len;
    while (start < end && strchr(" \t\r\n", buf[start]))
        start++;
    while (end > start && strchr(" \t\r\n", buf[end - 1]))
        end--;
    if (tern_key_from_base64(key, buf + start, end - start) == 0)
        rc = 0;
out:
    sodium_memzero(buf, sizeof(buf));
    return rc;
}

static int cmd_pubkey(const char *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"input", required_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *input = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            input = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return bad_option(cmd, argv, c);
        }
    }
    int rc = extra_args(cmd, argc, argv);
    if (rc)
        return rc;

    tern_key secret;
    if (input) {
        char err[512];
        bool insecure = false;
        rc = tern_keyfile_read_secret(input, &secret, 0, &insecure, err, sizeof(err));
        if (rc)
            return fail(cmd, err);
        if (insecure)
            fprintf(stderr, PROG ": %s: %s\n", cmd, err);
    } else if (read_stdin_key(&secret) != 0) {
        return fail(cmd, "standard input is not a key (expected 44 base64 characters)");
    }

    tern_keypair kp;
    tern_keypair_from_secret(&kp, &secret);
    sodium_memzero(&secret, sizeof(secret));
    char b64[TERN_KEY_BASE64_LEN + 1];
    tern_public_key_to_base64(&kp.pub, b64);
    sodium_memzero(&kp, sizeof(kp));
    if (printf("%s\n", b64) < 0 || fflush(stdout) != 0)
        return fail(cmd, "cannot write to standard output");
    return 0;
}

typedef struct command {
    const char *name;
    int (*run)(const char *name, int argc, char **argv);
} command;

static const command commands[] = {
    {"genkey", generate},
    {"genpsk", generate},
    {"pubkey", cmd_pubkey},
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;

    opterr = 0;
    /* "+": stop at the command name; its own flags are parsed after it. */
    while ((c = getopt_long(argc, argv, "+:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(PROG " %s\n", TERN_VERSION_STRING);
            return 0;
        default:
            return bad_option(NULL, argv, c);
        }
    }
    if (optind >= argc) {
        fprintf(stderr, PROG ": no command given (try '" PROG " --help')\n");
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(name, commands[i].name) == 0) {
            if (tern_crypto_init() != 0)
                return fail(name, "libsodium failed to initialise");
            int sub_argc = argc - optind;
            char **sub_argv = argv + optind;
            optind = 1; /* restart getopt on the command's own arguments */
            return commands[i].run(name, sub_argc, sub_argv);
        }
    }
    fprintf(stderr, PROG ": unknown command '%s' (try '" PROG " --help')\n", name);
    return EXIT_USAGE;
}
