/* tern-perf's internals shared by its files: the endpoint options both
 * sides take, the channel table both sides must agree on, the control
 * messages and the data message layout.
 *
 * Wire protocol (tern-perf's own, over a tern session):
 *   channel 0 (reliable ordered)    control: one JSON object per message
 *       client -> server  {"type":"request", "v":1, "mode":..., ...}
 *       server -> client  {"type":"accept", ...} or {"type":"error","message":...}
 *       client -> server  {"type":"done"}                (latency, game)
 *       server -> client  {"type":"result", ...}         (every mode)
 *   channel 1 (reliable ordered), 2 (unreliable sequenced), 3 (unreliable):
 *       data messages, echoed verbatim by the server. Each starts with the
 *       sequence number and the client's send time (uv_hrtime, ns), both
 *       u64 in the client's byte order (only the client reads them back),
 *       then zero padding up to --size.
 *   throughput: one stream carries the bulk data, opened by the client
 *       (client -> server) or by the server (--reverse); the sender shuts it
 *       down after --time and the receiver answers with its own shutdown. */
#ifndef TERN_TOOLS_PERF_H
#define TERN_TOOLS_PERF_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "tern/tern.h"
#include "tools/cli.h"

#define TERN_PERF_PROG "tern-perf"
#define TERN_PERF_EXIT_RUNTIME 1
#define TERN_PERF_EXIT_USAGE TERN_CLI_EXIT_USAGE
#define TERN_PERF_PROTO_VERSION 1
#define TERN_PERF_DEFAULT_PORT 5201
/* The passphrase when --psk is not given. perf is a measurement tool: this
 * keeps a quick run a one-liner, and --psk makes it private. */
#define TERN_PERF_DEFAULT_PSK "tern-perf"
/* A control message larger than this is refused, not parsed. */
#define TERN_PERF_CONTROL_MAX 4096
/* seq (8) and send time (8). */
#define TERN_PERF_DATA_HEADER 16
#define TERN_PERF_TIME_MAX_MS (UINT64_C(24) * 3600 * 1000)

enum {
    TERN_PERF_CH_CONTROL = 0,
    TERN_PERF_CH_RELIABLE = 1,
    TERN_PERF_CH_SEQUENCED = 2,
    TERN_PERF_CH_UNRELIABLE = 3,
    TERN_PERF_N_CHANNELS = 4
};

typedef enum tern_perf_mode {
    TERN_PERF_THROUGHPUT = 0,
    TERN_PERF_LATENCY = 1,
    TERN_PERF_GAME = 2
} tern_perf_mode;

typedef enum tern_perf_cipher {
    TERN_PERF_CHACHAPOLY = 0,
    TERN_PERF_AESGCM = 1,
    TERN_PERF_PLAINTEXT = 2
} tern_perf_cipher;

/* Endpoint options, the same on both sides. */
typedef struct tern_perf_net {
    tern_perf_cipher cipher;
    const char *psk; /* passphrase */
    tern_kcp_preset preset;
    const char *cc; /* "none" or "reno" */
    uint32_t mtu;
} tern_perf_net;

/* The long options tern_perf_net_option() handles, for getopt_long tables. */
enum {
    TERN_PERF_OPT_CIPHER = 1000,
    TERN_PERF_OPT_PSK,
    TERN_PERF_OPT_PRESET,
    TERN_PERF_OPT_CC,
    TERN_PERF_OPT_MTU,
};
#define TERN_PERF_NET_LONGOPTS                                     \
    {"cipher", required_argument, NULL, TERN_PERF_OPT_CIPHER},     \
        {"psk", required_argument, NULL, TERN_PERF_OPT_PSK},       \
        {"preset", required_argument, NULL, TERN_PERF_OPT_PRESET}, \
        {"cc", required_argument, NULL, TERN_PERF_OPT_CC},         \
    {                                                              \
        "mtu", required_argument, NULL, TERN_PERF_OPT_MTU          \
    }
/* Their lines for --help. */
#define TERN_PERF_NET_HELP                                                                     \
    "  --cipher NAME          chachapoly (default), aesgcm, or none (plaintext: no\n"          \
    "                         encryption, no authentication); Noise NNpsk0 otherwise\n"        \
    "  --psk PASSPHRASE       the shared passphrase (default \"" TERN_PERF_DEFAULT_PSK "\")\n" \
    "  --preset NAME          normal, fast, fast2, fast3 (default) or turbo\n"                 \
    "  --cc NAME              congestion control: reno (default) or none\n"                    \
    "  --mtu BYTES            largest UDP payload, 576..65507 (default 1400)\n"

void tern_perf_net_default(tern_perf_net *net);
/* Handles one of the options above. Returns 0, or prints a one-line error
 * naming the flag and the value and returns TERN_PERF_EXIT_USAGE. */
int tern_perf_net_option(tern_perf_net *net, int opt, const char *flag, const char *arg);
const char *tern_perf_cipher_name(tern_perf_cipher c);
const char *tern_perf_preset_name(tern_kcp_preset p);
const char *tern_perf_mode_name(tern_perf_mode m);
int tern_perf_mode_from_name(const char *name, tern_perf_mode *out);

/* The endpoint configuration for net: security, the NNpsk0 PSK derived into
 * *psk (which must outlive the call only: the endpoint copies it), the
 * kcp preset and cc, the MTU and the channel table. Returns 0 or a
 * TERN_ERR_* code (UNSUPPORTED: AES-GCM without CPU support). */
int tern_perf_endpoint_config(const tern_perf_net *net, tern_endpoint_config *cfg, tern_key *psk);

/* Sends obj (consumed) as a control message. */
int tern_perf_send_control(tern_session *s, json_t *obj);
/* Parses a control message: a JSON object with a string "type", or NULL
 * (too long, not JSON, no type). */
json_t *tern_perf_parse_control(const uint8_t *data, size_t len, const char **type);
/* A member as an unsigned integer, or def if missing or not one. */
uint64_t tern_perf_json_u64(const json_t *obj, const char *key, uint64_t def);

/* CPU time used by this process so far, in seconds. */
typedef struct tern_perf_cpu {
    double user_s, system_s;
} tern_perf_cpu;
void tern_perf_cpu_now(tern_perf_cpu *out);
/* {"user_s":..,"system_s":..,"percent":..} for the time since *start over
 * wall_s seconds. */
json_t *tern_perf_cpu_json(const tern_perf_cpu *start, double wall_s);

/* The session counters a report gives, as a JSON object. tern sums the
 * counters of the session's live engines only, so a stream's are gone once
 * it is freed: callers snapshot them (tern_session_get_stats) while the
 * stream is still open. */
json_t *tern_perf_session_json(const tern_session_stats *snap);
/* Retransmitted segments per data segment sent (0 if none sent). */
double tern_perf_retransmit_ratio(const tern_session_stats *st);

/* Whether a bulk sender may write more to its stream. tern bounds a
 * stream's queue at stream_write_max (4 MiB), which on a slow path is many
 * seconds of data still to drain after --time. So tern-perf keeps only
 * TERN_PERF_UNSENT_MAX bytes waiting for the send window: written and not
 * yet taken by the engine (pending: the writes whose callback has not run)
 * plus the engine's segments waiting for the window (from the session's
 * counters, at most mtu bytes each). In flight is up to the window. */
#define TERN_PERF_UNSENT_MAX (256U << 10)
bool tern_perf_may_write(const tern_session *s, uint64_t pending, uint32_t mtu);

/* Subcommands. */
int tern_perf_server_main(int argc, char **argv);
int tern_perf_client_main(int argc, char **argv);

#endif /* TERN_TOOLS_PERF_H */
