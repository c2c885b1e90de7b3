/* tern-perf: an iperf3-style measurement tool over tern.
 *
 *   tern-perf server [-l :5201]                    serve tests
 *   tern-perf client HOST:PORT --mode MODE [...]   run one test
 *
 * Modes: throughput (a bulk stream, either way), latency (request/response
 * at a fixed rate on a message channel) and game (N sessions sending small
 * messages on an unreliable-sequenced and a reliable channel). See
 * docs/TOOLS.md and perf.h for the protocol. */
#include <string.h>

#include "tools/perf.h"

static const tern_cli_command commands[] = {
    {"server", tern_perf_server_main, "serve tests (each client says what to measure)"},
    {"client", tern_perf_client_main, "run a throughput, latency or game test against a server"},
};

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf(TERN_PERF_PROG " %s\n", TERN_VERSION_STRING);
        return 0;
    }
    return tern_cli_dispatch(argc, argv, commands, sizeof(commands) / sizeof(commands[0]),
                             TERN_PERF_PROG);
}
