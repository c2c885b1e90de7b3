/* What tern-perf's client and server share: endpoint options and
 * configuration, control messages, CPU time and session counters. */
#include <string.h>
#include <sys/resource.h>

#include "tools/perf.h"

void tern_perf_net_default(tern_perf_net *net)
{
    memset(net, 0, sizeof(*net));
    net->cipher = TERN_PERF_CHACHAPOLY;
    net->psk = TERN_PERF_DEFAULT_PSK;
    net->preset = TERN_KCP_PRESET_FAST3;
    net->cc = "reno";
    net->mtu = 1400;
}

static int bad_value(const char *flag, const char *value, const char *why, const char *expect)
{
    fprintf(stderr, TERN_PERF_PROG ": invalid value '%s' for --%s: %s (expected %s)\n", value, flag,
            why, expect);
    return TERN_PERF_EXIT_USAGE;
}

int tern_perf_net_option(tern_perf_net *net, int opt, const char *flag, const char *arg)
{
    uint64_t n;
    int rc;
    switch (opt) {
    case TERN_PERF_OPT_CIPHER:
        if (strcmp(arg, "chachapoly") == 0)
            net->cipher = TERN_PERF_CHACHAPOLY;
        else if (strcmp(arg, "aesgcm") == 0)
            net->cipher = TERN_PERF_AESGCM;
        else if (strcmp(arg, "none") == 0)
            net->cipher = TERN_PERF_PLAINTEXT;
        else
            return bad_value(flag, arg, "unknown cipher", "chachapoly, aesgcm or none");
        return 0;
    case TERN_PERF_OPT_PSK:
        if (arg[0] == '\0')
            return bad_value(flag, arg, "empty passphrase", "a non-empty passphrase");
        net->psk = arg;
        return 0;
    case TERN_PERF_OPT_PRESET:
        if (tern_kcp_preset_from_name(arg, &net->preset) < 0)
            return bad_value(flag, arg, "unknown preset", "normal, fast, fast2, fast3 or turbo");
        return 0;
    case TERN_PERF_OPT_CC:
        if (!tern_kcp_cc_find(arg))
            return bad_value(flag, arg, "unknown congestion control", "none or reno");
        net->cc = arg;
        return 0;
    case TERN_PERF_OPT_MTU:
        rc = tern_cli_parse_u64(arg, 576, 65507, &n);
        if (rc < 0)
            return bad_value(flag, arg, tern_strerror(rc), "an integer from 576 to 65507");
        net->mtu = (uint32_t)n;
        return 0;
    default:
        return bad_value(flag, arg, "unknown option", "a known option");
    }
}

const char *tern_perf_cipher_name(tern_perf_cipher c)
{
    switch (c) {
    case TERN_PERF_CHACHAPOLY:
        return "chachapoly";
    case TERN_PERF_AESGCM:
        return "aesgcm";
    case TERN_PERF_PLAINTEXT:
        return "none";
    }
    return "?";
}

const char *tern_perf_preset_name(tern_kcp_preset p)
{
    static const char *const names[] = {"normal", "fast", "fast2", "fast3", "turbo"};
    return (unsigned)p < sizeof(names) / sizeof(names[0]) ? names[p] : "?";
}

static const char *const mode_names[] = {"throughput", "latency", "game"};

const char *tern_perf_mode_name(tern_perf_mode m)
{
    return (unsigned)m < sizeof(mode_names) / sizeof(mode_names[0]) ? mode_names[m] : "?";
}

int tern_perf_mode_from_name(const char *name, tern_perf_mode *out)
{
    for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++) {
        if (name && strcmp(name, mode_names[i]) == 0) {
            *out = (tern_perf_mode)i;
            return 0;
        }
    }
    return TERN_ERR_NOTFOUND;
}

int tern_perf_endpoint_config(const tern_perf_net *net, tern_endpoint_config *cfg, tern_key *psk)
{
    tern_endpoint_config_default(cfg);
    int rc = tern_kcp_settings_preset(&cfg->kcp, net->preset);
    if (rc < 0)
        return rc;
    cfg->kcp.cc = tern_kcp_cc_find(net->cc);
    if (!cfg->kcp.cc)
        return TERN_ERR_NOTFOUND;
    cfg->mtu = net->mtu;

    static const tern_channel_kind kinds[TERN_PERF_N_CHANNELS] = {
        [TERN_PERF_CH_CONTROL] = TERN_CHANNEL_RELIABLE_ORDERED,
        [TERN_PERF_CH_RELIABLE] = TERN_CHANNEL_RELIABLE_ORDERED,
        [TERN_PERF_CH_SEQUENCED] = TERN_CHANNEL_UNRELIABLE_SEQUENCED,
        [TERN_PERF_CH_UNRELIABLE] = TERN_CHANNEL_UNRELIABLE,
    };
    for (uint32_t c = 0; c < TERN_PERF_N_CHANNELS; c++) {
        /* Control first, so a result is never queued behind echoes. */
        cfg->channels[c] = (tern_channel_config){
            .kind = kinds[c], .priority = c == TERN_PERF_CH_CONTROL ? 0 : 1, .weight = 1};
    }
    cfg->n_channels = TERN_PERF_N_CHANNELS;

    if (net->cipher == TERN_PERF_PLAINTEXT) {
        cfg->security = TERN_SECURITY_PLAINTEXT;
        return 0;
    }
    rc = tern_crypto_init();
    if (rc < 0)
        return rc;
    bool aes = net->cipher == TERN_PERF_AESGCM;
    if (aes && !tern_crypto_aesgcm_available())
        return TERN_ERR_UNSUPPORTED;
    cfg->security = TERN_SECURITY_NOISE;
    cfg->noise.pattern = "NNpsk0";
    cfg->noise.cipher = aes ? "AESGCM" : "ChaChaPoly";
    /* The salt is bound to the protocol name, so it must match the
     * endpoint's: Noise_NNpsk0_25519_<cipher>_BLAKE2b. */
    const char *protocol =
        aes ? "Noise_NNpsk0_25519_AESGCM_BLAKE2b" : "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b";
    rc = tern_psk_from_passphrase(psk, net->psk, strlen(net->psk), protocol);
    if (rc < 0)
        return rc;
    cfg->noise.psk = psk;
    return 0;
}

int tern_perf_send_control(tern_session *s, json_t *obj)
{
    if (!obj)
        return TERN_ERR_NOMEM;
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!text)
        return TERN_ERR_NOMEM;
    int rc = tern_session_send(s, TERN_PERF_CH_CONTROL, text, strlen(text), 0);
    free(text);
    return rc;
}

json_t *tern_perf_parse_control(const uint8_t *data, size_t len, const char **type)
{
    if (len == 0 || len > TERN_PERF_CONTROL_MAX)
        return NULL;
    json_error_t err;
    json_t *obj = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &err);
    if (!obj)
        return NULL;
    const char *t = json_string_value(json_object_get(obj, "type"));
    if (!json_is_object(obj) || !t) {
        json_decref(obj);
        return NULL;
    }
    *type = t;
    return obj;
}

uint64_t tern_perf_json_u64(const json_t *obj, const char *key, uint64_t def)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return def;
    return (uint64_t)json_integer_value(v);
}

static double tv_seconds(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

void tern_perf_cpu_now(tern_perf_cpu *out)
{
    struct rusage ru;
    memset(out, 0, sizeof(*out));
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        out->user_s = tv_seconds(&ru.ru_utime);
        out->system_s = tv_seconds(&ru.ru_stime);
    }
}

json_t *tern_perf_cpu_json(const tern_perf_cpu *start, double wall_s)
{
    tern_perf_cpu now;
    tern_perf_cpu_now(&now);
    double user = now.user_s - start->user_s, sys = now.system_s - start->system_s;
    double pct = wall_s > 0 ? (user + sys) / wall_s * 100.0 : 0.0;
    return json_pack("{s:f, s:f, s:f}", "user_s", user, "system_s", sys, "percent", pct);
}

double tern_perf_retransmit_ratio(const tern_session_stats *st)
{
    const tern_kcp_stats *k = &st->kcp;
    uint64_t retrans = k->retrans_timeout + k->retrans_fast + k->retrans_early;
    /* Data segments: every segment less the ACKs and window probes. */
    uint64_t other = k->acks_sent + k->probes_sent;
    uint64_t data = k->segs_sent > other ? k->segs_sent - other : 0;
    return data ? (double)retrans / (double)data : 0.0;
}

json_t *tern_perf_session_json(const tern_session_stats *snap)
{
    const tern_session_stats st = *snap;
    const tern_kcp_stats *k = &st.kcp;
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "srtt_ms", json_integer(st.srtt_ms));
    json_object_set_new(o, "dgrams_out", json_integer((json_int_t)st.dgrams_out));
    json_object_set_new(o, "dgrams_in", json_integer((json_int_t)st.dgrams_in));
    json_object_set_new(o, "bytes_out", json_integer((json_int_t)st.bytes_out));
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)st.bytes_in));
    json_object_set_new(o, "segs_sent", json_integer((json_int_t)k->segs_sent));
    json_object_set_new(o, "retrans_timeout", json_integer((json_int_t)k->retrans_timeout));
    json_object_set_new(o, "retrans_fast", json_integer((json_int_t)k->retrans_fast));
    json_object_set_new(o, "retrans_early", json_integer((json_int_t)k->retrans_early));
    json_object_set_new(o, "lost", json_integer((json_int_t)k->lost));
    json_object_set_new(o, "retransmit_ratio", json_real(tern_perf_retransmit_ratio(&st)));
    json_object_set_new(o, "msgs_expired", json_integer((json_int_t)st.msgs_expired));
    json_object_set_new(o, "msgs_obsolete", json_integer((json_int_t)st.msgs_obsolete));
    json_object_set_new(o, "drop_auth", json_integer((json_int_t)st.drop_auth));
    return o;
}

bool tern_perf_may_write(const tern_session *s, uint64_t pending, uint32_t mtu)
{
    tern_session_stats st;
    tern_session_get_stats(s, &st);
    uint64_t waiting = pending + (uint64_t)st.kcp.snd_queue_segs * mtu;
    return waiting < TERN_PERF_UNSENT_MAX;
}
