/* tern-netsim: the impairment model (include/tern/netsim.h) as a real-time
 * UDP proxy, to put loss, delay, jitter, reordering, duplication,
 * corruption and a bottleneck between any UDP client and server.
 *
 *   client --up--> [listen socket] -> flow -> [flow socket] --up--> server
 *   client <-down- [listen socket] <- flow <- [flow socket] <-down- server
 *
 * Each client source address gets a flow: its own upstream socket (so the
 * server sees one source port per client, like a NAT) and two model links,
 * up and down, seeded from --seed and the flow's index, so a run replays
 * given the same arrival order. Datagrams wait inside the links; one timer
 * fires at the earliest delivery over all flows, which sit in a min-heap
 * keyed by their next delivery. Time is uv_now() (monotonic ms) since start.
 * Every bound is explicit: --max-clients flows (extra clients' datagrams
 * are dropped and counted), --idle-timeout, --max-pending datagrams per
 * link and --max-held bytes over all links. Counters come out every
 * --stats-interval on stderr and once more, as a table or JSON, on stdout at
 * SIGINT/SIGTERM, after which every handle is closed and the process exits
 * 0. Bad flags exit 2, runtime errors 1. */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "tern/netsim.h"
#include "tern/tern.h"
#include "tools/cli.h"

#define PROG "tern-netsim"
#define EXIT_RUNTIME 1
#define EXIT_USAGE TERN_CLI_EXIT_USAGE
/* Larger than any UDP payload, so neither a read nor a delivery truncates. */
#define DGRAM_MAX 65536
#define DEFAULT_MAX_CLIENTS 1024
#define MAX_CLIENTS_LIMIT 65536
#define DEFAULT_IDLE_MS 60000
#define DEFAULT_MAX_PENDING 4096
#define MAX_PENDING_LIMIT 1000000
#define DEFAULT_MAX_HELD (UINT64_C(64) << 20)
/* Socket buffers: the OS default (208 KiB) overflows under one window-sized
 * burst and would add drops the model did not choose. The kernel caps the
 * request at net.core.[rw]mem_max. */
#define DEFAULT_SOCKBUF (UINT64_C(4) << 20)
#define DEFAULT_REORDER_MS 20
#define DEFAULT_SEED 1
#define NO_TIME UINT64_MAX

enum { UP = 0, DOWN = 1 };
static const char *const dir_names[2] = {"up", "down"};

/* ---- Options ------------------------------------------------------------ */

typedef enum imp_kind {
    KIND_PERCENT,
    KIND_DURATION,
    KIND_RATE,
    KIND_SIZE,
    KIND_BURST,
    KIND_ORDER
} imp_kind;

typedef enum imp_id {
    IMP_LOSS,
    IMP_DELAY,
    IMP_JITTER,
    IMP_JITTER_ORDER,
    IMP_REORDER,
    IMP_REORDER_DELAY,
    IMP_DUP,
    IMP_CORRUPT,
    IMP_RATE,
    IMP_QUEUE,
    IMP_BURST_LOSS,
    N_IMP
} imp_id;

typedef struct impairment {
    const char *name;
    imp_kind kind;
} impairment;

static const impairment impairments[N_IMP] = {
    [IMP_LOSS] = {"loss", KIND_PERCENT},
    [IMP_DELAY] = {"delay", KIND_DURATION},
    [IMP_JITTER] = {"jitter", KIND_DURATION},
    [IMP_JITTER_ORDER] = {"jitter-order", KIND_ORDER},
    [IMP_REORDER] = {"reorder", KIND_PERCENT},
    [IMP_REORDER_DELAY] = {"reorder-delay", KIND_DURATION},
    [IMP_DUP] = {"dup", KIND_PERCENT},
    [IMP_CORRUPT] = {"corrupt", KIND_PERCENT},
    [IMP_RATE] = {"rate", KIND_RATE},
    [IMP_QUEUE] = {"queue", KIND_SIZE},
    [IMP_BURST_LOSS] = {"burst-loss", KIND_BURST},
};

static const char *const kind_expect[] = {
    [KIND_PERCENT] = "a percentage such as 5% or a fraction such as 0.05",
    [KIND_DURATION] = "a duration such as 40ms or 1.5s",
    [KIND_RATE] = "a rate such as 10mbit or 2MB (bytes/s)",
    [KIND_SIZE] = "a size such as 64k or 4096",
    [KIND_BURST] = "P_GB,P_BG,LOSS_BAD, three percentages such as 1%,30%,50%",
    [KIND_ORDER] = "keep or any",
};

/* Where a flag applies: --NAME to both directions, --up-NAME and
 * --down-NAME to one, overriding --NAME whatever their order. */
enum { SCOPE_BOTH, SCOPE_UP, SCOPE_DOWN, N_SCOPES };
static const char *const scope_prefix[N_SCOPES] = {"", "up-", "down-"};

typedef struct imp_value {
    bool set;
    double p[3]; /* a probability; the three Gilbert-Elliott ones */
    uint64_t n;  /* milliseconds, bytes/s or bytes */
} imp_value;

enum {
    OPT_LISTEN = 256,
    OPT_FORWARD,
    OPT_SEED,
    OPT_STATS_INTERVAL,
    OPT_JSON,
    OPT_MAX_CLIENTS,
    OPT_IDLE_TIMEOUT,
    OPT_MAX_PENDING,
    OPT_MAX_HELD,
    OPT_SOCKBUF,
    OPT_IMP_BASE = 512, /* + imp_id * N_SCOPES + scope */
};

typedef struct options {
    struct sockaddr_storage listen_addr, forward_addr;
    bool have_listen, have_forward;
    tern_netsim_cfg cfg[2];
    uint64_t seed;
    uint64_t stats_ms, idle_ms;
    uint32_t max_clients, max_pending;
    uint64_t max_held;
    uint64_t sockbuf;
    bool json;
} options;

static void usage(FILE *f)
{
    fputs("usage: " PROG " --listen [HOST]:PORT --forward HOST:PORT [OPTIONS]\n"
          "\n"
          "A UDP proxy that impairs the datagrams it forwards. Each client source address\n"
          "gets its own upstream socket and its own seeded up (client->server) and down\n"
          "(server->client) links.\n"
          "\n"
          "Addresses:\n"
          "  --listen ADDR          where clients send: HOST:PORT, [IPv6]:PORT, or :PORT for\n"
          "                         0.0.0.0:PORT; port 0 picks a free one (printed)\n"
          "  --forward ADDR         the server, HOST:PORT or [IPv6]:PORT\n"
          "\n"
          "Impairments (both directions; --up-NAME or --down-NAME sets one direction and\n"
          "overrides --NAME, e.g. --loss 1% --down-loss 0):\n"
          "  --loss P               independent loss\n"
          "  --burst-loss P_GB,P_BG,LOSS_BAD\n"
          "                         Gilbert-Elliott bursts: good->bad and bad->good per\n"
          "                         datagram, and the loss while bad\n"
          "  --delay D              one-way delay\n"
          "  --jitter D             extra delay, uniform in [0, D]\n"
          "  --jitter-order O       any (default): each datagram draws its jitter alone, so\n"
          "                         datagrams closer than D reorder, as with netem; keep:\n"
          "                         jitter is queueing delay and never reorders\n"
          "  --reorder P            hold a datagram back by --reorder-delay (default 20ms)\n"
          "  --reorder-delay D\n"
          "  --dup P                deliver a second copy\n"
          "  --corrupt P            flip one random bit\n"
          "  --rate R               bottleneck rate (default: unlimited)\n"
          "  --queue S              bottleneck queue; datagrams that do not fit are dropped\n"
          "                         (default 64k)\n"
          "\n"
          "  P: 5% or 0.05 (a bare number >= 1 is a percentage: 1 = 1%, 0.5 = 50%)\n"
          "  D: 40ms, 1.5s, 1m (bare: ms)\n"
          "  R: 10mbit, 500kbit, 1gbit (bits/s), 2MB, 1000 (bytes/s; k, M, G are 1000s)\n"
          "  S: 64k, 1M, 4096 (bytes; k, M, G are 1024s)\n"
          "\n"
          "Other options:\n"
          "  --seed N               random seed (default 1); a run replays given the same\n"
          "                         arrival order\n"
          "  --max-clients N        flows at once (default 1024); other clients' datagrams are\n"
          "                         dropped and counted as refused\n"
          "  --idle-timeout D       close a flow idle this long (default 60s; 0: never)\n"
          "  --max-pending N        datagrams held per link before drops (default 4096)\n"
          "  --max-held S           bytes held over all links before drops (default 64M)\n"
          "  --sockbuf S            send and receive buffer of every socket (default 4M)\n"
          "  --stats-interval D     print counters to stderr every D (default 0: never)\n"
          "  --json                 counters as JSON objects instead of text\n"
          "  -h, --help             show this help and exit\n"
          "  -V, --version          show the version and exit\n"
          "\n"
          "On SIGINT or SIGTERM it prints the final counters to stdout and exits 0.\n"
          "\n"
          "Example: " PROG " --listen :40000 --forward 127.0.0.1:29900 --loss 5% --delay 40ms\n",
          f);
}

static int bad_value(const char *flag, const char *value, int rc, const char *expect)
{
    fprintf(stderr, PROG ": invalid value '%s' for --%s: %s (expected %s)\n", value, flag,
            tern_strerror(rc), expect);
    return EXIT_USAGE;
}

static int parse_duration32(const char *text, uint64_t *out)
{
    int rc = tern_cli_parse_duration_ms(text, out);
    if (rc == 0 && *out > UINT32_MAX)
        rc = TERN_ERR_RANGE;
    return rc;
}

/* "P_GB,P_BG,LOSS_BAD": exactly three probabilities. */
static int parse_burst(const char *text, double p[3])
{
    char buf[96];
    size_t len = strlen(text);
    if (len >= sizeof(buf))
        return TERN_ERR_INVAL;
    memcpy(buf, text, len + 1);
    char *part = buf;
    for (int i = 0; i < 3; i++) {
        char *comma = strchr(part, ',');
        if ((i < 2) != (comma != NULL))
            return TERN_ERR_INVAL;
        if (comma)
            *comma = '\0';
        int rc = tern_cli_parse_percent(part, &p[i]);
        if (rc < 0)
            return rc;
        part = comma + 1;
    }
    return 0;
}

static int parse_impairment(imp_id id, const char *text, imp_value *v)
{
    int rc;
    switch (impairments[id].kind) {
    case KIND_PERCENT:
        rc = tern_cli_parse_percent(text, &v->p[0]);
        break;
    case KIND_DURATION:
        rc = parse_duration32(text, &v->n);
        break;
    case KIND_RATE:
        rc = tern_cli_parse_rate(text, &v->n);
        break;
    case KIND_SIZE:
        rc = tern_cli_parse_size(text, &v->n);
        if (rc == 0 && v->n > UINT32_MAX)
            rc = TERN_ERR_RANGE;
        break;
    case KIND_BURST:
        rc = parse_burst(text, v->p);
        break;
    case KIND_ORDER:
        rc = 0;
        if (strcmp(text, "keep") == 0)
            v->n = 1;
        else if (strcmp(text, "any") == 0)
            v->n = 0;
        else
            rc = TERN_ERR_INVAL;
        break;
    default:
        rc = TERN_ERR_INVAL;
    }
    if (rc == 0)
        v->set = true;
    return rc;
}

static void apply_impairment(tern_netsim_cfg *cfg, imp_id id, const imp_value *v)
{
    switch (id) {
    case IMP_LOSS:
        cfg->loss = v->p[0];
        break;
    case IMP_DELAY:
        cfg->delay_ms = (uint32_t)v->n;
        break;
    case IMP_JITTER:
        cfg->jitter_ms = (uint32_t)v->n;
        break;
    case IMP_JITTER_ORDER:
        cfg->jitter_keeps_order = v->n != 0;
        break;
    case IMP_REORDER:
        cfg->reorder = v->p[0];
        break;
    case IMP_REORDER_DELAY:
        cfg->reorder_ms = (uint32_t)v->n;
        break;
    case IMP_DUP:
        cfg->duplicate = v->p[0];
        break;
    case IMP_CORRUPT:
        cfg->corrupt = v->p[0];
        break;
    case IMP_RATE:
        cfg->rate_bytes_per_s = v->n;
        break;
    case IMP_QUEUE:
        cfg->queue_bytes = (uint32_t)v->n;
        break;
    case IMP_BURST_LOSS:
        cfg->ge_p_good_bad = v->p[0];
        cfg->ge_p_bad_good = v->p[1];
        cfg->ge_loss_bad = v->p[2];
        break;
    default:
        break;
    }
}

#define N_FIXED_OPTS 12
#define N_OPTS (N_FIXED_OPTS + N_IMP * N_SCOPES + 1)

/* The long options: the fixed ones, then --NAME, --up-NAME and --down-NAME
 * for every impairment, generated so that the three can never drift. */
static void build_long_options(struct option *opts, char names[N_IMP][N_SCOPES][32])
{
    static const struct option fixed[N_FIXED_OPTS] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"forward", required_argument, NULL, OPT_FORWARD},
        {"seed", required_argument, NULL, OPT_SEED},
        {"stats-interval", required_argument, NULL, OPT_STATS_INTERVAL},
        {"json", no_argument, NULL, OPT_JSON},
        {"max-clients", required_argument, NULL, OPT_MAX_CLIENTS},
        {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
        {"max-pending", required_argument, NULL, OPT_MAX_PENDING},
        {"max-held", required_argument, NULL, OPT_MAX_HELD},
        {"sockbuf", required_argument, NULL, OPT_SOCKBUF},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
    };
    size_t n = 0;
    for (size_t i = 0; i < N_FIXED_OPTS; i++)
        opts[n++] = fixed[i];
    for (int id = 0; id < N_IMP; id++) {
        for (int scope = 0; scope < N_SCOPES; scope++) {
            snprintf(names[id][scope], sizeof(names[id][scope]), "%s%s", scope_prefix[scope],
                     impairments[id].name);
            opts[n++] = (struct option){names[id][scope], required_argument, NULL,
                                        OPT_IMP_BASE + id * N_SCOPES + scope};
        }
    }
    opts[n] = (struct option){NULL, 0, NULL, 0};
}

static int bad_option(char **argv, int c)
{
    const char *arg = argv[optind - 1];
    if (c == ':')
        fprintf(stderr, PROG ": option '%s' needs a value (try '" PROG " --help')\n", arg);
    else if (optopt && optopt < OPT_LISTEN)
        fprintf(stderr, PROG ": unknown option '-%c' (try '" PROG " --help')\n", optopt);
    else
        fprintf(stderr, PROG ": unknown option '%s' (try '" PROG " --help')\n", arg);
    return EXIT_USAGE;
}

/* Returns -1 to go on, or the exit status (0 after --help or --version). */
static int parse_args(int argc, char **argv, options *opt)
{
    struct option longopts[N_OPTS];
    char names[N_IMP][N_SCOPES][32];
    imp_value values[N_SCOPES][N_IMP];
    uint64_t n;
    int c, idx, rc;

    build_long_options(longopts, names);
    memset(values, 0, sizeof(values));
    memset(opt, 0, sizeof(*opt));
    opt->seed = DEFAULT_SEED;
    opt->idle_ms = DEFAULT_IDLE_MS;
    opt->max_clients = DEFAULT_MAX_CLIENTS;
    opt->max_pending = DEFAULT_MAX_PENDING;
    opt->max_held = DEFAULT_MAX_HELD;
    opt->sockbuf = DEFAULT_SOCKBUF;

    opterr = 0;
    while ((idx = -1, c = getopt_long(argc, argv, ":hV", longopts, &idx)) != -1) {
        const char *flag = idx >= 0 ? longopts[idx].name : "";
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(PROG " %s\n", TERN_VERSION_STRING);
            return 0;
        case OPT_LISTEN:
        case OPT_FORWARD: {
            bool listen = c == OPT_LISTEN;
            rc = tern_cli_parse_hostport(optarg, listen ? &opt->listen_addr : &opt->forward_addr,
                                         NULL);
            if (rc < 0)
                return bad_value(flag, optarg, rc,
                                 listen ? "[HOST]:PORT or [IPv6]:PORT"
                                        : "HOST:PORT or [IPv6]:PORT");
            if (listen)
                opt->have_listen = true;
            else
                opt->have_forward = true;
            break;
        }
        case OPT_SEED:
            rc = tern_cli_parse_u64(optarg, 0, UINT64_MAX, &opt->seed);
            if (rc < 0)
                return bad_value(flag, optarg, rc, "an unsigned integer");
            break;
        case OPT_STATS_INTERVAL:
        case OPT_IDLE_TIMEOUT:
            rc = tern_cli_parse_duration_ms(optarg, &n);
            if (rc < 0)
                return bad_value(flag, optarg, rc, kind_expect[KIND_DURATION]);
            if (c == OPT_STATS_INTERVAL)
                opt->stats_ms = n;
            else
                opt->idle_ms = n;
            break;
        case OPT_JSON:
            opt->json = true;
            break;
        case OPT_MAX_CLIENTS:
            rc = tern_cli_parse_u64(optarg, 1, MAX_CLIENTS_LIMIT, &n);
            if (rc < 0)
                return bad_value(flag, optarg, rc, "an integer from 1 to 65536");
            opt->max_clients = (uint32_t)n;
            break;
        case OPT_MAX_PENDING:
            rc = tern_cli_parse_u64(optarg, 1, MAX_PENDING_LIMIT, &n);
            if (rc < 0)
                return bad_value(flag, optarg, rc, "an integer from 1 to 1000000");
            opt->max_pending = (uint32_t)n;
            break;
        case OPT_MAX_HELD:
            rc = tern_cli_parse_size(optarg, &opt->max_held);
            if (rc < 0)
                return bad_value(flag, optarg, rc, kind_expect[KIND_SIZE]);
            break;
        case OPT_SOCKBUF:
            rc = tern_cli_parse_size(optarg, &opt->sockbuf);
            if (rc == 0 && (opt->sockbuf == 0 || opt->sockbuf > INT32_MAX))
                rc = TERN_ERR_RANGE;
            if (rc < 0)
                return bad_value(flag, optarg, rc, kind_expect[KIND_SIZE]);
            break;
        default:
            if (c >= OPT_IMP_BASE && c < OPT_IMP_BASE + N_IMP * N_SCOPES) {
                imp_id id = (imp_id)((c - OPT_IMP_BASE) / N_SCOPES);
                int scope = (c - OPT_IMP_BASE) % N_SCOPES;
                rc = parse_impairment(id, optarg, &values[scope][id]);
                if (rc < 0)
                    return bad_value(flag, optarg, rc, kind_expect[impairments[id].kind]);
                break;
            }
            return bad_option(argv, c);
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (try '" PROG " --help')\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!opt->have_listen || !opt->have_forward) {
        fprintf(stderr, PROG ": --%s is required (try '" PROG " --help')\n",
                opt->have_listen ? "forward" : "listen");
        return EXIT_USAGE;
    }

    for (int dir = UP; dir <= DOWN; dir++) {
        tern_netsim_cfg *cfg = &opt->cfg[dir];
        tern_netsim_cfg_default(cfg);
        cfg->reorder_ms = DEFAULT_REORDER_MS;
        cfg->max_pending = opt->max_pending;
        int scope = dir == UP ? SCOPE_UP : SCOPE_DOWN;
        for (int id = 0; id < N_IMP; id++) {
            if (values[SCOPE_BOTH][id].set)
                apply_impairment(cfg, (imp_id)id, &values[SCOPE_BOTH][id]);
            if (values[scope][id].set)
                apply_impairment(cfg, (imp_id)id, &values[scope][id]);
        }
        /* Each value was range-checked on its own; this is the model's word. */
        rc = tern_netsim_cfg_check(cfg);
        if (rc < 0) {
            fprintf(stderr, PROG ": the %s link's settings are invalid: %s\n", dir_names[dir],
                    tern_strerror(rc));
            return EXIT_USAGE;
        }
    }
    return -1;
}

/* ---- The proxy ---------------------------------------------------------- */

typedef struct proxy proxy;

typedef struct flow {
    proxy *px;
    uv_udp_t sock; /* connected to --forward; memory is freed in its close callback */
    struct sockaddr_storage client;
    tern_netsim_link *link[2];
    uint64_t held_bytes; /* this flow's share of proxy.held_bytes */
    tern_ms last_active;
    uint32_t heap_pos;
    struct flow *hash_next;
    struct flow *lru_prev, *lru_next; /* least recently active first */
} flow;

/* What the proxy itself drops, beside the model's own counters. */
typedef struct dir_counters {
    uint64_t send_errors; /* the kernel refused it on the way out (full buffer, ICMP) */
    uint64_t recv_errors;
    uint64_t dropped_invalid; /* empty or truncated: the model carries neither */
    uint64_t dropped_nomem;
    uint64_t dropped_budget; /* --max-held reached */
} dir_counters;

struct proxy {
    uv_loop_t *loop;
    options opt;
    uv_udp_t listen;
    uv_timer_t deliver_timer, idle_timer, stats_timer;
    uv_signal_t sigint, sigterm;
    tern_ms t0;
    tern_ms armed_due; /* what deliver_timer is set for; NO_TIME if stopped */
    flow **buckets;
    uint32_t bucket_mask;
    flow **heap; /* every open flow, by its next delivery */
    uint32_t heap_len;
    flow *lru_head, *lru_tail;
    uint32_t open, open_at_stop;
    uint64_t total, refused;
    uint64_t held_bytes; /* in every link, against --max-held */
    bool warned_open_error;
    bool stopping;
    tern_netsim_stats closed[2]; /* from flows already closed */
    dir_counters ctr[2];
    uint8_t in[DGRAM_MAX];
    uint8_t out[DGRAM_MAX];
};

static tern_ms now_rel(const proxy *px)
{
    return uv_now(px->loop) - px->t0;
}

/* Each link gets its own stream: the seed, flow index and direction mixed
 * through a 64-bit finaliser, so neighbouring seeds or flows never share
 * (or shift) a generator sequence. */
static uint64_t link_seed(uint64_t seed, uint64_t index, int dir)
{
    uint64_t z = seed ^ ((index * 2 + (uint64_t)dir + 1) * UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 33)) * UINT64_C(0xff51afd7ed558ccd);
    z = (z ^ (z >> 33)) * UINT64_C(0xc4ceb9fe1a85ec53);
    return z ^ (z >> 33);
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return false;
    if (b->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)(const void *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)(const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)(const void *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)(const void *)b;
    return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static uint32_t addr_hash(const struct sockaddr *sa)
{
    const uint8_t *p;
    size_t len;
    uint16_t port;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
        p = (const uint8_t *)&sin->sin_addr;
        len = sizeof(sin->sin_addr);
        port = sin->sin_port;
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;
        p = (const uint8_t *)&sin6->sin6_addr;
        len = sizeof(sin6->sin6_addr);
        port = sin6->sin6_port;
    }
    uint32_t h = 2166136261u ^ port;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h ^ (h >> 16);
}

static flow *flow_find(proxy *px, const struct sockaddr *sa)
{
    for (flow *f = px->buckets[addr_hash(sa) & px->bucket_mask]; f; f = f->hash_next) {
        if (same_addr(&f->client, sa))
            return f;
    }
    return NULL;
}

static tern_ms flow_due(const flow *f)
{
    tern_ms up = tern_netsim_link_next(f->link[UP]);
    tern_ms down = tern_netsim_link_next(f->link[DOWN]);
    return up < down ? up : down;
}

/* The flow heap: each flow knows its slot, so a flow whose due time moved
 * is re-placed in O(log n). Keys are recomputed from the links, so they are
 * never stale. */
static void heap_set(proxy *px, uint32_t i, flow *f)
{
    px->heap[i] = f;
    f->heap_pos = i;
}

static void heap_fix(proxy *px, flow *f)
{
    uint32_t i = f->heap_pos;
    tern_ms due = flow_due(f);
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (flow_due(px->heap[parent]) <= due)
            break;
        heap_set(px, i, px->heap[parent]);
        i = parent;
    }
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= px->heap_len)
            break;
        tern_ms child_due = flow_due(px->heap[child]);
        if (child + 1 < px->heap_len) {
            tern_ms right = flow_due(px->heap[child + 1]);
            if (right < child_due) {
                child++;
                child_due = right;
            }
        }
        if (due <= child_due)
            break;
        heap_set(px, i, px->heap[child]);
        i = child;
    }
    heap_set(px, i, f);
}

static void heap_remove(proxy *px, flow *f)
{
    uint32_t i = f->heap_pos;
    flow *last = px->heap[--px->heap_len];
    if (last != f) {
        heap_set(px, i, last);
        heap_fix(px, last);
    }
}

static void lru_unlink(proxy *px, flow *f)
{
    if (f->lru_prev)
        f->lru_prev->lru_next = f->lru_next;
    else
        px->lru_head = f->lru_next;
    if (f->lru_next)
        f->lru_next->lru_prev = f->lru_prev;
    else
        px->lru_tail = f->lru_prev;
    f->lru_prev = f->lru_next = NULL;
}

static void lru_append(proxy *px, flow *f)
{
    f->lru_prev = px->lru_tail;
    f->lru_next = NULL;
    if (px->lru_tail)
        px->lru_tail->lru_next = f;
    else
        px->lru_head = f;
    px->lru_tail = f;
}

static void touch(proxy *px, flow *f, tern_ms now)
{
    f->last_active = now;
    lru_unlink(px, f);
    lru_append(px, f);
}

static void on_deliver(uv_timer_t *timer);

/* Keeps deliver_timer set for the earliest delivery over every flow. */
static void arm_deliver(proxy *px)
{
    if (px->stopping)
        return;
    tern_ms due = px->heap_len ? flow_due(px->heap[0]) : NO_TIME;
    if (due == px->armed_due)
        return;
    px->armed_due = due;
    if (due == NO_TIME) {
        uv_timer_stop(&px->deliver_timer);
        return;
    }
    tern_ms now = now_rel(px);
    uv_timer_start(&px->deliver_timer, on_deliver, due > now ? due - now : 0, 0);
}

static void on_idle(uv_timer_t *timer);

static void arm_idle(proxy *px, tern_ms now)
{
    if (px->stopping || px->opt.idle_ms == 0 || !px->lru_head)
        return;
    tern_ms due = px->lru_head->last_active + px->opt.idle_ms;
    uv_timer_start(&px->idle_timer, on_idle, due > now ? due - now : 0, 0);
}

static void stats_add(tern_netsim_stats *acc, const tern_netsim_stats *s)
{
    acc->offered += s->offered;
    acc->delivered += s->delivered;
    acc->bytes_offered += s->bytes_offered;
    acc->bytes_delivered += s->bytes_delivered;
    acc->lost_random += s->lost_random;
    acc->lost_burst += s->lost_burst;
    acc->lost_partition += s->lost_partition;
    acc->lost_queue += s->lost_queue;
    acc->lost_overflow += s->lost_overflow;
    acc->duplicated += s->duplicated;
    acc->corrupted += s->corrupted;
    acc->reordered += s->reordered;
}

static uint64_t lost_total(const tern_netsim_stats *s)
{
    return s->lost_random + s->lost_burst + s->lost_partition + s->lost_queue + s->lost_overflow;
}

/* Every offered datagram and every duplicate is delivered, lost, or still
 * held. */
static uint64_t in_flight(const tern_netsim_stats *s)
{
    uint64_t in = s->offered + s->duplicated, out = s->delivered + lost_total(s);
    return in > out ? in - out : 0;
}

static uint64_t held_datagrams(const tern_netsim_link *link)
{
    tern_netsim_stats st;
    tern_netsim_link_get_stats(link, &st);
    return in_flight(&st);
}

static void on_flow_closed(uv_handle_t *handle)
{
    free(handle->data);
}

/* Folds the flow's counters into the totals and closes it; its memory goes
 * in the socket's close callback. */
static void flow_close(proxy *px, flow *f)
{
    for (int dir = UP; dir <= DOWN; dir++) {
        tern_netsim_stats st;
        tern_netsim_link_get_stats(f->link[dir], &st);
        stats_add(&px->closed[dir], &st);
        tern_netsim_link_del(f->link[dir]);
        f->link[dir] = NULL;
    }
    flow **pp = &px->buckets[addr_hash((const struct sockaddr *)&f->client) & px->bucket_mask];
    while (*pp != f)
        pp = &(*pp)->hash_next;
    *pp = f->hash_next;
    lru_unlink(px, f);
    heap_remove(px, f);
    px->held_bytes -= f->held_bytes;
    px->open--;
    uv_close((uv_handle_t *)&f->sock, on_flow_closed);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    proxy *px = handle->loop->data;
    /* One buffer serves every socket: each datagram is copied into its link
     * before the next read. */
    *buf = uv_buf_init((char *)px->in, sizeof(px->in));
}

/* Counts what the model cannot carry; true if the datagram may go on. */
static bool datagram_ok(proxy *px, int dir, ssize_t nread, const struct sockaddr *addr,
                        unsigned flags)
{
    if (nread < 0) {
        px->ctr[dir].recv_errors++;
        return false;
    }
    if (!addr) /* nothing more to read */
        return false;
    if (nread == 0 || (flags & UV_UDP_PARTIAL)) {
        px->ctr[dir].dropped_invalid++;
        return false;
    }
    return !px->stopping;
}

static void offer(proxy *px, flow *f, int dir, const uint8_t *data, size_t len)
{
    tern_ms now = now_rel(px);
    /* Room for a duplicate too, so the budget holds whatever the link
     * decides. */
    if (px->held_bytes + 2 * (uint64_t)len > px->opt.max_held) {
        px->ctr[dir].dropped_budget++;
    } else {
        uint64_t before = held_datagrams(f->link[dir]);
        if (tern_netsim_link_send(f->link[dir], data, len, now) < 0)
            px->ctr[dir].dropped_nomem++;
        uint64_t added = (held_datagrams(f->link[dir]) - before) * len;
        f->held_bytes += added;
        px->held_bytes += added;
    }
    touch(px, f, now);
    heap_fix(px, f);
    arm_deliver(px);
}

static void on_server_recv(uv_udp_t *sock, ssize_t nread, const uv_buf_t *buf,
                           const struct sockaddr *addr, unsigned flags)
{
    flow *f = sock->data;
    proxy *px = f->px;
    if (datagram_ok(px, DOWN, nread, addr, flags))
        offer(px, f, DOWN, (const uint8_t *)buf->base, (size_t)nread);
}

static void warn_open_error(proxy *px, const struct sockaddr *client, int err)
{
    if (px->warned_open_error)
        return;
    px->warned_open_error = true;
    char name[TERN_CLI_ADDR_MAX];
    if (tern_cli_format_addr(client, name, sizeof(name)) < 0)
        snprintf(name, sizeof(name), "?");
    fprintf(stderr, PROG ": cannot open a flow for %s: %s (counted as refused; warning once)\n",
            name, err ? uv_strerror(err) : "out of memory");
}

/* A new client: an upstream socket connected to the server (so replies from
 * anyone else are ignored) and its two links. NULL if refused. */
/* Best effort: a refused size leaves the OS default. */
static void size_buffers(uv_udp_t *sock, uint64_t bytes)
{
    int v = (int)bytes;
    (void)uv_recv_buffer_size((uv_handle_t *)sock, &v);
    v = (int)bytes;
    (void)uv_send_buffer_size((uv_handle_t *)sock, &v);
}

static flow *flow_open(proxy *px, const struct sockaddr *client)
{
    if (px->open >= px->opt.max_clients)
        return NULL;
    flow *f = calloc(1, sizeof(*f));
    if (!f) {
        warn_open_error(px, client, 0);
        return NULL;
    }
    f->px = px;
    memcpy(&f->client, client,
           client->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    for (int dir = UP; dir <= DOWN; dir++) {
        if (tern_netsim_link_new(&f->link[dir], &px->opt.cfg[dir],
                                 link_seed(px->opt.seed, px->total, dir), NULL) < 0) {
            tern_netsim_link_del(f->link[UP]);
            free(f);
            warn_open_error(px, client, 0);
            return NULL;
        }
    }
    int rc = uv_udp_init(px->loop, &f->sock);
    if (rc < 0) {
        tern_netsim_link_del(f->link[UP]);
        tern_netsim_link_del(f->link[DOWN]);
        free(f);
        warn_open_error(px, client, rc);
        return NULL;
    }
    f->sock.data = f;
    rc = uv_udp_connect(&f->sock, (const struct sockaddr *)&px->opt.forward_addr);
    if (rc == 0) {
        size_buffers(&f->sock, px->opt.sockbuf);
        rc = uv_udp_recv_start(&f->sock, on_alloc, on_server_recv);
    }
    if (rc < 0) {
        tern_netsim_link_del(f->link[UP]);
        tern_netsim_link_del(f->link[DOWN]);
        uv_close((uv_handle_t *)&f->sock, on_flow_closed);
        warn_open_error(px, client, rc);
        return NULL;
    }

    uint32_t b = addr_hash(client) & px->bucket_mask;
    f->hash_next = px->buckets[b];
    px->buckets[b] = f;
    f->last_active = now_rel(px);
    lru_append(px, f);
    f->heap_pos = px->heap_len++;
    px->heap[f->heap_pos] = f;
    heap_fix(px, f);
    px->open++;
    px->total++;
    if (px->open == 1)
        arm_idle(px, f->last_active);
    return f;
}

static void on_client_recv(uv_udp_t *sock, ssize_t nread, const uv_buf_t *buf,
                           const struct sockaddr *addr, unsigned flags)
{
    proxy *px = sock->data;
    if (!datagram_ok(px, UP, nread, addr, flags))
        return;
    flow *f = flow_find(px, addr);
    if (!f)
        f = flow_open(px, addr);
    if (!f) {
        px->refused++;
        return;
    }
    offer(px, f, UP, (const uint8_t *)buf->base, (size_t)nread);
}

/* Sends everything due on both of a flow's links. A send the kernel refuses
 * is dropped and counted, as a router would. */
static void deliver_flow(proxy *px, flow *f, tern_ms now)
{
    for (int dir = UP; dir <= DOWN; dir++) {
        tern_ssize n;
        /* out is larger than any datagram a link holds, so NOBUFS cannot
         * happen and every due datagram leaves. */
        while ((n = tern_netsim_link_recv(f->link[dir], px->out, sizeof(px->out), now)) > 0) {
            f->held_bytes -= (uint64_t)n;
            px->held_bytes -= (uint64_t)n;
            uv_buf_t b = uv_buf_init((char *)px->out, (unsigned)n);
            int rc = dir == UP
                         ? uv_udp_try_send(&f->sock, &b, 1, NULL)
                         : uv_udp_try_send(&px->listen, &b, 1, (const struct sockaddr *)&f->client);
            if (rc < 0)
                px->ctr[dir].send_errors++;
        }
    }
}

static void on_deliver(uv_timer_t *timer)
{
    proxy *px = timer->data;
    tern_ms now = now_rel(px);
    px->armed_due = NO_TIME;
    while (px->heap_len && flow_due(px->heap[0]) <= now) {
        flow *f = px->heap[0];
        deliver_flow(px, f, now);
        heap_fix(px, f);
        if (flow_due(f) <= now) /* cannot happen (see deliver_flow); never spin */
            break;
    }
    arm_deliver(px);
}

/* Closes flows idle for idle_ms, oldest first. A flow still holding
 * datagrams is not idle: it is moved to the back instead. */
static void on_idle(uv_timer_t *timer)
{
    proxy *px = timer->data;
    tern_ms now = now_rel(px);
    while (px->lru_head && now - px->lru_head->last_active >= px->opt.idle_ms) {
        flow *f = px->lru_head;
        if (flow_due(f) != NO_TIME)
            touch(px, f, now);
        else
            flow_close(px, f);
    }
    arm_idle(px, now);
    arm_deliver(px);
}

/* ---- Counters ----------------------------------------------------------- */

static void totals(const proxy *px, tern_netsim_stats out[2])
{
    out[UP] = px->closed[UP];
    out[DOWN] = px->closed[DOWN];
    for (const flow *f = px->lru_head; f; f = f->lru_next) {
        for (int dir = UP; dir <= DOWN; dir++) {
            tern_netsim_stats st;
            tern_netsim_link_get_stats(f->link[dir], &st);
            stats_add(&out[dir], &st);
        }
    }
}

typedef struct counter {
    const char *name;
    uint64_t value;
} counter;

#define N_COUNTERS 19

static void dir_counters_list(const tern_netsim_stats *s, const dir_counters *c,
                              counter out[N_COUNTERS])
{
    const counter list[N_COUNTERS] = {
        {"offered", s->offered},
        {"delivered", s->delivered},
        {"lost", lost_total(s)},
        {"lost_random", s->lost_random},
        {"lost_burst", s->lost_burst},
        {"lost_partition", s->lost_partition},
        {"lost_queue", s->lost_queue},
        {"lost_overflow", s->lost_overflow},
        {"duplicated", s->duplicated},
        {"corrupted", s->corrupted},
        {"reordered", s->reordered},
        {"in_flight", in_flight(s)},
        {"bytes_offered", s->bytes_offered},
        {"bytes_delivered", s->bytes_delivered},
        {"send_errors", c->send_errors},
        {"recv_errors", c->recv_errors},
        {"dropped_invalid", c->dropped_invalid},
        {"dropped_nomem", c->dropped_nomem},
        {"dropped_budget", c->dropped_budget},
    };
    memcpy(out, list, sizeof(list));
}

static void print_json(const proxy *px, FILE *f, uint32_t open)
{
    tern_netsim_stats st[2];
    totals(px, st);
    fprintf(f,
            "{\"elapsed_ms\":%" PRIu64 ",\"flows\":{\"open\":%" PRIu32 ",\"total\":%" PRIu64
            ",\"refused\":%" PRIu64 "}",
            now_rel(px), open, px->total, px->refused);
    for (int dir = UP; dir <= DOWN; dir++) {
        counter list[N_COUNTERS];
        dir_counters_list(&st[dir], &px->ctr[dir], list);
        fprintf(f, ",\"%s\":{", dir_names[dir]);
        for (int i = 0; i < N_COUNTERS; i++)
            fprintf(f, "%s\"%s\":%" PRIu64, i ? "," : "", list[i].name, list[i].value);
        fputc('}', f);
    }
    fputs("}\n", f);
    fflush(f);
}

static void print_table(const proxy *px, FILE *f, uint32_t open)
{
    tern_netsim_stats st[2];
    totals(px, st);
    counter up[N_COUNTERS], down[N_COUNTERS];
    dir_counters_list(&st[UP], &px->ctr[UP], up);
    dir_counters_list(&st[DOWN], &px->ctr[DOWN], down);
    fprintf(f, "%-16s %22s %22s\n", "", "up (client->server)", "down (server->client)");
    for (int i = 0; i < N_COUNTERS; i++)
        fprintf(f, "%-16s %22" PRIu64 " %22" PRIu64 "\n", up[i].name, up[i].value, down[i].value);
    fprintf(f, "flows: %" PRIu32 " open, %" PRIu64 " total, %" PRIu64 " refused datagrams\n", open,
            px->total, px->refused);
    fflush(f);
}

static void on_stats(uv_timer_t *timer)
{
    proxy *px = timer->data;
    if (px->opt.json) {
        print_json(px, stderr, px->open);
        return;
    }
    tern_netsim_stats st[2];
    totals(px, st);
    fprintf(stderr, PROG ": %.1fs flows %" PRIu32 " open %" PRIu64 " total %" PRIu64 " refused",
            (double)now_rel(px) / 1000.0, px->open, px->total, px->refused);
    for (int dir = UP; dir <= DOWN; dir++) {
        const tern_netsim_stats *s = &st[dir];
        fprintf(stderr,
                "; %s offered %" PRIu64 " delivered %" PRIu64 " lost %" PRIu64 " dup %" PRIu64
                " corrupt %" PRIu64 " reordered %" PRIu64 " send_errors %" PRIu64,
                dir_names[dir], s->offered, s->delivered, lost_total(s), s->duplicated,
                s->corrupted, s->reordered, px->ctr[dir].send_errors);
    }
    fputc('\n', stderr);
}

/* ---- Start and stop ------------------------------------------------------ */

/* Closes every handle; uv_run then returns once their callbacks ran. */
static void stop(proxy *px)
{
    if (px->stopping)
        return;
    px->stopping = true;
    px->open_at_stop = px->open;
    while (px->lru_head)
        flow_close(px, px->lru_head);
    uv_close((uv_handle_t *)&px->listen, NULL);
    uv_close((uv_handle_t *)&px->deliver_timer, NULL);
    uv_close((uv_handle_t *)&px->idle_timer, NULL);
    uv_close((uv_handle_t *)&px->stats_timer, NULL);
    uv_close((uv_handle_t *)&px->sigint, NULL);
    uv_close((uv_handle_t *)&px->sigterm, NULL);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    stop(sig->data);
}

/* One line per direction naming each impairment in force, "none" if none. */
static void describe(const tern_netsim_cfg *c, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
#define DESCRIBE(...)                                        \
    do {                                                     \
        if (n < cap) {                                       \
            int w = snprintf(buf + n, cap - n, __VA_ARGS__); \
            n += w > 0 ? (size_t)w : 0;                      \
        }                                                    \
    } while (0)
    if (c->loss > 0.0)
        DESCRIBE(" loss %g%%", c->loss * 100.0);
    if (c->ge_p_good_bad > 0.0)
        DESCRIBE(" burst-loss %g%%,%g%%,%g%%", c->ge_p_good_bad * 100.0, c->ge_p_bad_good * 100.0,
                 c->ge_loss_bad * 100.0);
    if (c->delay_ms)
        DESCRIBE(" delay %" PRIu32 "ms", c->delay_ms);
    if (c->jitter_ms)
        DESCRIBE(" jitter %" PRIu32 "ms%s", c->jitter_ms,
                 c->jitter_keeps_order ? " (keeps order)" : "");
    if (c->reorder > 0.0)
        DESCRIBE(" reorder %g%% (+%" PRIu32 "ms)", c->reorder * 100.0, c->reorder_ms);
    if (c->duplicate > 0.0)
        DESCRIBE(" dup %g%%", c->duplicate * 100.0);
    if (c->corrupt > 0.0)
        DESCRIBE(" corrupt %g%%", c->corrupt * 100.0);
    if (c->rate_bytes_per_s)
        DESCRIBE(" rate %" PRIu64 " B/s queue %" PRIu32 " B", c->rate_bytes_per_s,
                 c->queue_bytes ? c->queue_bytes : 65536u);
#undef DESCRIBE
    if (n == 0)
        snprintf(buf, cap, " none");
}

/* Lets every allowed flow have its socket: the default soft limit (often
 * 1024) is below --max-clients' default plus our own descriptors. */
static void raise_fd_limit(uint32_t max_clients)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)max_clients + 64;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
}

static int start(proxy *px)
{
    char listen_name[TERN_CLI_ADDR_MAX], forward_name[TERN_CLI_ADDR_MAX];
    int rc = uv_udp_bind(&px->listen, (const struct sockaddr *)&px->opt.listen_addr, 0);
    if (rc == 0) {
        size_buffers(&px->listen, px->opt.sockbuf);
        rc = uv_udp_recv_start(&px->listen, on_alloc, on_client_recv);
    }
    if (rc == 0)
        rc = uv_signal_start(&px->sigint, on_signal, SIGINT);
    if (rc == 0)
        rc = uv_signal_start(&px->sigterm, on_signal, SIGTERM);
    if (rc == 0 && px->opt.stats_ms)
        rc = uv_timer_start(&px->stats_timer, on_stats, px->opt.stats_ms, px->opt.stats_ms);
    if (tern_cli_format_addr((const struct sockaddr *)&px->opt.forward_addr, forward_name,
                             sizeof(forward_name)) < 0)
        snprintf(forward_name, sizeof(forward_name), "?");
    if (rc < 0) {
        if (tern_cli_format_addr((const struct sockaddr *)&px->opt.listen_addr, listen_name,
                                 sizeof(listen_name)) < 0)
            snprintf(listen_name, sizeof(listen_name), "?");
        fprintf(stderr, PROG ": cannot listen on %s: %s\n", listen_name, uv_strerror(rc));
        return EXIT_RUNTIME;
    }

    /* The bound address, so that port 0 shows the port the kernel chose. */
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    if (uv_udp_getsockname(&px->listen, (struct sockaddr *)&bound, &len) != 0 ||
        tern_cli_format_addr((const struct sockaddr *)&bound, listen_name, sizeof(listen_name)) < 0)
        snprintf(listen_name, sizeof(listen_name), "?");
    char desc[512];
    for (int dir = UP; dir <= DOWN; dir++) {
        describe(&px->opt.cfg[dir], desc, sizeof(desc));
        fprintf(stderr, PROG ": %s:%s\n", dir_names[dir], desc);
    }
    /* Last, and only once the socket is bound and reading: tests and
     * scripts wait for this line. */
    fprintf(stderr, PROG ": listening on %s, forwarding to %s\n", listen_name, forward_name);
    fflush(stderr);
    return 0;
}

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 16;
    while (p < n)
        p *= 2;
    return p;
}

int main(int argc, char **argv)
{
    proxy *px = calloc(1, sizeof(*px));
    if (!px) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_RUNTIME;
    }
    int status = parse_args(argc, argv, &px->opt);
    if (status >= 0) {
        free(px);
        return status;
    }

    uint32_t nbuckets = pow2_at_least(px->opt.max_clients);
    px->buckets = calloc(nbuckets, sizeof(*px->buckets));
    px->heap = calloc(px->opt.max_clients, sizeof(*px->heap));
    if (!px->buckets || !px->heap) {
        fprintf(stderr, PROG ": out of memory\n");
        free(px->buckets);
        free(px->heap);
        free(px);
        return EXIT_RUNTIME;
    }
    px->bucket_mask = nbuckets - 1;
    px->armed_due = NO_TIME;
    raise_fd_limit(px->opt.max_clients);

    px->loop = uv_default_loop();
    px->loop->data = px; /* on_alloc serves flow sockets and the listener alike */
    px->t0 = uv_now(px->loop);
    /* Every handle exists from here on, so stop() can close them all
     * whatever start() managed. uv_udp_init only fails on out-of-memory
     * for the socket, which start() then reports through the bind. */
    uv_udp_init(px->loop, &px->listen);
    uv_timer_init(px->loop, &px->deliver_timer);
    uv_timer_init(px->loop, &px->idle_timer);
    uv_timer_init(px->loop, &px->stats_timer);
    uv_signal_init(px->loop, &px->sigint);
    uv_signal_init(px->loop, &px->sigterm);
    px->listen.data = px->deliver_timer.data = px->idle_timer.data = px->stats_timer.data = px;
    px->sigint.data = px->sigterm.data = px;

    status = start(px);
    if (status != 0)
        stop(px);
    uv_run(px->loop, UV_RUN_DEFAULT);
    if (status == 0) {
        if (px->opt.json)
            print_json(px, stdout, px->open_at_stop);
        else
            print_table(px, stdout, px->open_at_stop);
    }
    if (uv_loop_close(px->loop) != 0 && status == 0) {
        fprintf(stderr, PROG ": handles left open at exit\n");
        status = EXIT_RUNTIME;
    }
    free(px->buckets);
    free(px->heap);
    free(px);
    return status;
}
