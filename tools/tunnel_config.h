/* tern-tunnel's option model: what a client or a server was asked to do,
 * from its flags and from a JSON config file (-c FILE), then checked as a
 * whole. Pure functions: nothing here prints, exits, resolves a name or
 * opens a file, except tern_tunnel_config_load_file(), which reads the one
 * config file it is given. Key files are named here and read by the tool.
 *
 * Order of use:
 *   tern_tunnel_config_init(&cli, role);
 *   tern_tunnel_config_parse_argv(&cli, argc, argv, ...)     flags
 *   if cli names -c FILE:
 *     tern_tunnel_config_init(&file, role);
 *     tern_tunnel_config_load_file(&file, cli.config_file, ...)  or _parse_json()
 *     tern_tunnel_config_merge(&file, &cli)                  flags win
 *   tern_tunnel_config_validate(&result, ...)               security, requirements
 *   tern_tunnel_config_apply(&result, &endpoint_config)     tuning
 * tern_tunnel_config_resolve() does all but the last.
 *
 * Errors are negative TERN_ERR_* codes with a one-line message in err (no
 * program name, no newline) naming the flag or key and the value:
 *   TERN_ERR_INVAL   a usage error: unknown flag or key, a wrong type, a bad
 *                    or missing value, malformed JSON, conflicting options
 *   TERN_ERR_IO      the config file cannot be read
 * The tool exits 2 for either. */
#ifndef TERN_TOOLS_TUNNEL_CONFIG_H
#define TERN_TOOLS_TUNNEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/tern.h"

typedef enum tern_tunnel_role { TERN_TUNNEL_CLIENT = 0, TERN_TUNNEL_SERVER = 1 } tern_tunnel_role;

/* What validate() chose from the key options. */
typedef enum tern_tunnel_security {
    TERN_TUNNEL_SEC_UNSET = 0,
    TERN_TUNNEL_SEC_NK,       /* client: --peer-key; server: --key-file */
    TERN_TUNNEL_SEC_IK,       /* client: both; server: --key-file and --peer-key/--allow-key */
    TERN_TUNNEL_SEC_NNPSK0,   /* --psk-file or --psk-env (a passphrase) */
    TERN_TUNNEL_SEC_PLAINTEXT /* --insecure */
} tern_tunnel_security;

/* Every option, one bit each in tern_tunnel_config.set. */
typedef enum tern_tunnel_opt {
    TERN_TUNNEL_OPT_LISTEN = 0,
    TERN_TUNNEL_OPT_REMOTE, /* client only */
    TERN_TUNNEL_OPT_TARGET, /* server only */
    TERN_TUNNEL_OPT_KEY_FILE,
    TERN_TUNNEL_OPT_PEER_KEY,
    TERN_TUNNEL_OPT_PSK_FILE,
    TERN_TUNNEL_OPT_PSK_ENV,
    TERN_TUNNEL_OPT_ALLOW_KEY, /* server only */
    TERN_TUNNEL_OPT_INSECURE,
    TERN_TUNNEL_OPT_MODE,
    TERN_TUNNEL_OPT_MTU,
    TERN_TUNNEL_OPT_SNDWND,
    TERN_TUNNEL_OPT_RCVWND,
    TERN_TUNNEL_OPT_DSCP,
    TERN_TUNNEL_OPT_SOCKBUF,
    TERN_TUNNEL_OPT_KEEPALIVE,
    TERN_TUNNEL_OPT_CC,
    TERN_TUNNEL_OPT_HANDSHAKE_TIMEOUT, /* client only */
    TERN_TUNNEL_OPT_STATS_INTERVAL,
    TERN_TUNNEL_OPT_STATS_JSON,
    TERN_TUNNEL_OPT_CONFIG, /* -c: a flag only, never a key */
    TERN_TUNNEL_OPT_COUNT
} tern_tunnel_opt;

#define TERN_TUNNEL_ADDR_MAX 256  /* "host:port" text, NUL included */
#define TERN_TUNNEL_PATH_MAX 1024 /* file names, and --peer-key (a key or a file) */
#define TERN_TUNNEL_NAME_MAX 128  /* environment variable names */
#define TERN_TUNNEL_CC_MAX 16
#define TERN_TUNNEL_ALLOW_MAX 64 /* --allow-key entries */

#define TERN_TUNNEL_MTU_MIN 576U
#define TERN_TUNNEL_MTU_MAX 65507U
#define TERN_TUNNEL_SOCKBUF_MAX (1ULL << 30)
#define TERN_TUNNEL_KEEPALIVE_MAX 3600U
#define TERN_TUNNEL_HANDSHAKE_MAX 600U
#define TERN_TUNNEL_STATS_MAX 86400U

typedef struct tern_tunnel_allow {
    size_t n;
    tern_public_key keys[TERN_TUNNEL_ALLOW_MAX];
} tern_tunnel_allow;

typedef struct tern_tunnel_config {
    tern_tunnel_role role;
    uint64_t set;       /* 1 << tern_tunnel_opt for each option given */
    bool help, version; /* -h / -V seen: nothing else was checked */

    char listen[TERN_TUNNEL_ADDR_MAX];
    char remote[TERN_TUNNEL_ADDR_MAX];
    char target[TERN_TUNNEL_ADDR_MAX];
    char key_file[TERN_TUNNEL_PATH_MAX];
    char peer_key[TERN_TUNNEL_PATH_MAX]; /* base64 public key or a file holding one */
    char psk_file[TERN_TUNNEL_PATH_MAX];
    char psk_env[TERN_TUNNEL_NAME_MAX];
    tern_tunnel_allow allow;
    bool insecure;
    tern_kcp_preset mode;
    uint32_t mtu, sndwnd, rcvwnd, dscp;
    uint64_t sockbuf;
    uint32_t keepalive_s, handshake_timeout_s, stats_interval_s;
    char cc[TERN_TUNNEL_CC_MAX];
    char stats_json[TERN_TUNNEL_PATH_MAX];
    char config_file[TERN_TUNNEL_PATH_MAX];

    /* Filled by validate(). */
    tern_tunnel_security security;
    bool peer_key_inline; /* peer_key was a base64 key, decoded here */
    tern_public_key peer_public;
} tern_tunnel_config;

/* Defaults: nothing set, mode "fast3", mtu 1400, the transport's windows,
 * keepalive 5 s, handshake timeout 5 s, cc "reno", no stats. */
void tern_tunnel_config_init(tern_tunnel_config *c, tern_tunnel_role role);

bool tern_tunnel_config_has(const tern_tunnel_config *c, tern_tunnel_opt opt);
/* The long flag's name without dashes, which is also its config key. */
const char *tern_tunnel_opt_name(tern_tunnel_opt opt);
const char *tern_tunnel_role_name(tern_tunnel_role role);
/* "NK", "IK", "NNpsk0", "plaintext"; "unset". */
const char *tern_tunnel_security_name(tern_tunnel_security sec);

/* The subcommand's arguments, argv[0] being its name. Uses getopt_long
 * (state reset first, no messages of its own). Sets help or version and
 * returns 0 at once when it meets -h or -V. Flags of the other role are
 * unknown. */
int tern_tunnel_config_parse_argv(tern_tunnel_config *c, int argc, char **argv, char *err,
                                  size_t cap);

/* A JSON object of options, keys named as the long flags; origin names it
 * in messages (a file name, "<config>"). text need not be NUL-terminated.
 * Types: strings for addresses, names, files and keys, "allow-key" a string
 * or an array of strings, "insecure" a boolean, numbers as JSON integers,
 * "sockbuf" an integer or a size string ("4M"). Unknown keys, the other
 * role's keys, wrong types, duplicate keys and trailing garbage are errors. */
int tern_tunnel_config_parse_json(tern_tunnel_config *c, const char *text, size_t len,
                                  const char *origin, char *err, size_t cap);

/* Reads path (at most 1 MiB) and parses it as above. TERN_ERR_IO if it
 * cannot be read. */
int tern_tunnel_config_load_file(tern_tunnel_config *c, const char *path, char *err, size_t cap);

/* Every option set in over replaces base's (a repeated --allow-key list
 * replaces the file's list as a whole). help, version and the validate()
 * results are not merged. */
void tern_tunnel_config_merge(tern_tunnel_config *base, const tern_tunnel_config *over);

/* Required options (listen; remote for a client, target for a server),
 * address syntax (HOST:PORT, [V6]:PORT, :PORT; not resolved), and the
 * security rules:
 *   --insecure                 plaintext, and no key option with it
 *   --psk-file | --psk-env     NNpsk0 (one of them, no key files with it)
 *   client --peer-key [--key-file]           NK [IK]
 *   server --key-file [--peer-key|--allow-key] NK [IK]
 *   none of them               an error that names --insecure
 * Sets security, and peer_public when --peer-key is a base64 key. */
int tern_tunnel_config_validate(tern_tunnel_config *c, char *err, size_t cap);

/* argv, then the config file it names (if any), merged, then validated,
 * into *out. Returns 0 (check out->help / out->version) or an error. */
int tern_tunnel_config_resolve(tern_tunnel_config *out, tern_tunnel_role role, int argc,
                               char **argv, char *err, size_t cap);

/* The tuning options onto an endpoint config (already defaulted by
 * tern_endpoint_config_default()): preset, mtu, windows, dscp, socket
 * buffers, keepalive (the idle timeout is 4 keepalives; 0 turns off both),
 * congestion control and the
 * handshake timeout. Security and keys are the tool's. TERN_ERR_INVAL for a
 * setting the transport would refuse. */
int tern_tunnel_config_apply(const tern_tunnel_config *c, tern_endpoint_config *ep);

#endif /* TERN_TOOLS_TUNNEL_CONFIG_H */
