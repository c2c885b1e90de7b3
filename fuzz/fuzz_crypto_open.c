/* Encrypted DATA packets: tern_crypto_session_open() fed a mix of genuine
 * packets sealed by the peer, mutated copies of them, and arbitrary bytes,
 * while time passes and the sender rekeys.
 *
 * Two sessions from raw keys (a hash of the input): A seals, B opens (one
 * direction is all open() sees). The first input byte picks the AEAD and
 * the automatic rekey interval; then each record is an operation:
 *
 *   0  seal a payload (bytes from the input) with A and deliver it to B now
 *   1  deliver a mutated copy of a packet sealed earlier
 *   2  deliver arbitrary bytes (optionally behind a plausible header)
 *   3  advance time
 *   4  rekey A now
 *   5  deliver an earlier genuine packet again, unchanged (or late)
 *   6  seal a payload with A and lose it (op 5 may deliver it later)
 *
 * So B sees A's key move on by several generations with every packet of
 * some of them lost (ops 4 and 6), which its lookahead must bridge.
 *
 * Invariants: open() succeeds only for bytes identical to a genuine packet
 * that B has not accepted yet, and then returns exactly the payload sealed;
 * on failure the bytes of out the payload would have filled are zero and
 * B's receiving key and counts stay as they were; after a success B's key
 * generation is that of the highest counter accepted; a genuine packet
 * delivered at once, in order, at most TERN_PACKET_REKEY_LOOKAHEAD key
 * generations after the last one accepted, is accepted, and one further
 * ahead is refused; nothing leaks. */
#include "fuzz_common.h"

#include "tern/crypto.h"

#define MAX_SEALED 64
#define PAYLOAD_CAP 1200
#define PKT_CAP (PAYLOAD_CAP + TERN_PACKET_OVERHEAD)
#define ARB_CAP 1600
#define B_ID 0x5eed0001U

typedef struct sealed_pkt {
    uint8_t pkt[PKT_CAP];
    size_t len;
    uint8_t payload[PAYLOAD_CAP];
    size_t payload_len;
    uint64_t counter;
    uint64_t gen; /* A's send key generation that sealed it */
    int accepted;
} sealed_pkt;

static sealed_pkt sealed[MAX_SEALED];
static size_t n_sealed;
static int any_accepted;
static uint64_t last_acc_counter, last_acc_gen;

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)fuzz_le32(p) | (uint64_t)fuzz_le32(p + 4) << 32;
}

/* Delivers pkt to B and checks the outcome. Returns open()'s result. */
static tern_ssize deliver(tern_crypto_session *b, const uint8_t *pkt, size_t len, tern_ms now)
{
    static uint8_t out[ARB_CAP];
    tern_crypto_session_stats before, after;
    tern_crypto_session_get_stats(b, &before);
    memset(out, 0xaa, sizeof(out));
    tern_ssize r = tern_crypto_session_open(b, pkt, len, out, sizeof(out), now);
    tern_crypto_session_get_stats(b, &after);
    FUZZ_CHECK(after.rekeys_received == after.recv_key_generation &&
                   after.rekeys_skipped <= after.rekeys_received,
               "rekey counts %llu, %llu at generation %llu",
               (unsigned long long)after.rekeys_received, (unsigned long long)after.rekeys_skipped,
               (unsigned long long)after.recv_key_generation);
    if (r < 0)
        FUZZ_CHECK(after.recv_key_generation == before.recv_key_generation &&
                       after.opened == before.opened,
                   "a refused packet (%d) moved B from generation %llu to %llu", (int)r,
                   (unsigned long long)before.recv_key_generation,
                   (unsigned long long)after.recv_key_generation);
    if (r >= 0) {
        sealed_pkt *match = NULL;
        for (size_t i = 0; i < n_sealed; i++) {
            if (!sealed[i].accepted && sealed[i].len == len &&
                memcmp(sealed[i].pkt, pkt, len) == 0) {
                match = &sealed[i];
                break;
            }
        }
        FUZZ_CHECK(match != NULL, "open() accepted %zu bytes that are no unaccepted genuine packet",
                   len);
        FUZZ_CHECK((size_t)r == match->payload_len &&
                       memcmp(out, match->payload, match->payload_len) == 0,
                   "open() returned a payload other than the one sealed (counter %llu)",
                   (unsigned long long)match->counter);
        match->accepted = 1;
        if (!any_accepted || match->counter > last_acc_counter) {
            last_acc_counter = match->counter;
            last_acc_gen = match->gen;
        }
        any_accepted = 1;
        /* Counters grow with generations, so B is at the highest one's. */
        FUZZ_CHECK(after.recv_key_generation == last_acc_gen,
                   "B at generation %llu, the highest counter accepted is of %llu",
                   (unsigned long long)after.recv_key_generation, (unsigned long long)last_acc_gen);
    } else if (len >= TERN_PACKET_OVERHEAD && len <= TERN_PACKET_MAX) {
        size_t fill = len - TERN_PACKET_OVERHEAD;
        if (fill > sizeof(out))
            fill = sizeof(out);
        for (size_t i = 0; i < fill; i++)
            FUZZ_CHECK(out[i] == 0, "open() failed (%d) but left out[%zu] = 0x%02x", (int)r, i,
                       out[i]);
    }
    return r;
}

static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* The keys of one input: a hash of the whole input, so that they differ
 * from one input to the next. With fixed keys, libFuzzer learns genuine
 * packets from the comparisons in deliver() and offers one sealed for an
 * earlier input as "arbitrary bytes", where it is genuine again (and the
 * lookahead rightly accepts it two generations on). */
static void input_keys(const uint8_t *data, size_t size, uint8_t k1[32], uint8_t k2[32])
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < size; i++) {
        h ^= data[i];
        h *= UINT64_C(0x100000001b3);
    }
    for (int j = 0; j < 32; j++) {
        k1[j] = (uint8_t)(mix64(h + (uint64_t)(j / 8)) >> (8 * (j % 8)));
        k2[j] = (uint8_t)(mix64(~h + (uint64_t)(j / 8)) >> (8 * (j % 8)));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    static uint8_t k1[32], k2[32];
    static int init;
    if (!init) {
        if (tern_crypto_init() != 0)
            abort();
        init = 1;
    }
    input_keys(data, size, k1, k2);
    n_sealed = 0;
    any_accepted = 0;
    last_acc_counter = last_acc_gen = 0;

    uint8_t conf = fuzz_u8(&in);
    tern_aead aead = TERN_AEAD_CHACHAPOLY;
    if ((conf & 4) && tern_crypto_aesgcm_available())
        aead = TERN_AEAD_AESGCM;
    static const uint64_t rekey_after[4] = {0, 1, 3, 16};

    tern_crypto_session_config ca, cb;
    tern_crypto_session_config_default(&ca);
    tern_crypto_session_config_default(&cb);
    ca.local_id = 0xa11ce;
    ca.remote_id = B_ID;
    ca.rekey_after_packets = rekey_after[conf & 3];
    cb.local_id = B_ID;
    cb.remote_id = 0xa11ce;

    fuzz_alloc alloc_a = {0}, alloc_b = {0};
    tern_mem ma = fuzz_mem(&alloc_a), mb = fuzz_mem(&alloc_b);
    tern_ms now = 1000;
    tern_crypto_session *a = NULL, *b = NULL;
    FUZZ_CHECK(tern_crypto_session_new_from_keys(&a, aead, k1, k2, &ca, &ma, now) == 0, "new A");
    FUZZ_CHECK(tern_crypto_session_new_from_keys(&b, aead, k2, k1, &cb, &mb, now) == 0, "new B");

    static uint8_t arb[ARB_CAP];
    int ops = 0;
    while (!fuzz_empty(&in) && ops++ < 256) {
        uint8_t op = fuzz_u8(&in);
        switch (op % 7) {
        case 0:   /* seal and deliver */
        case 6: { /* seal and lose */
            if (n_sealed == MAX_SEALED)
                break;
            sealed_pkt *sp = &sealed[n_sealed];
            size_t want = fuzz_u16(&in) % (PAYLOAD_CAP + 1), got;
            const uint8_t *p = fuzz_bytes(&in, want, &got);
            memcpy(sp->payload, p, got);
            memset(sp->payload + got, (int)want & 0xff, want - got);
            sp->payload_len = want;
            tern_ssize r = tern_crypto_session_seal(a, sp->payload, want, sp->pkt, PKT_CAP, now);
            if (r < 0) {
                FUZZ_CHECK(r == TERN_ERR_EXPIRED, "seal failed: %d", (int)r);
                break;
            }
            FUZZ_CHECK((size_t)r == want + TERN_PACKET_OVERHEAD, "seal length %d", (int)r);
            tern_crypto_session_stats st;
            tern_crypto_session_get_stats(a, &st);
            sp->len = (size_t)r;
            sp->counter = le64(sp->pkt + 5);
            sp->gen = st.send_key_generation;
            sp->accepted = 0;
            n_sealed++;
            if (op % 7 == 6)
                break;
            uint64_t base = any_accepted ? last_acc_gen : 0;
            int in_order = !any_accepted || sp->counter > last_acc_counter;
            int expect_ok = in_order && sp->gen <= base + TERN_PACKET_REKEY_LOOKAHEAD;
            int expect_refused = in_order && sp->gen > base + TERN_PACKET_REKEY_LOOKAHEAD;
            tern_ssize o = deliver(b, sp->pkt, sp->len, now);
            FUZZ_CHECK(
                o >= 0 || !expect_ok,
                "genuine in-order packet (counter %llu, gen %llu, last gen %llu) refused: %d",
                (unsigned long long)sp->counter, (unsigned long long)sp->gen,
                (unsigned long long)last_acc_gen, (int)o);
            FUZZ_CHECK(o < 0 || !expect_refused,
                       "packet of gen %llu accepted with the last accepted of gen %llu, beyond "
                       "the lookahead",
                       (unsigned long long)sp->gen, (unsigned long long)last_acc_gen);
            break;
        }
        case 1: { /* a mutated copy */
            if (!n_sealed)
                break;
            const sealed_pkt *sp = &sealed[fuzz_u8(&in) % n_sealed];
            memcpy(arb, sp->pkt, sp->len);
            size_t len = fuzz_mutate(&in, arb, sp->len, ARB_CAP);
            deliver(b, arb, len, now);
            break;
        }
        case 2: { /* arbitrary bytes */
            uint8_t flags = fuzz_u8(&in);
            size_t want = fuzz_u16(&in) % ARB_CAP, got;
            const uint8_t *p = fuzz_bytes(&in, want, &got);
            memcpy(arb, p, got);
            if ((flags & 1) && got >= TERN_PACKET_HEADER_BYTES) {
                arb[0] = (uint8_t)(TERN_PACKET_TYPE_DATA | (flags & TERN_PACKET_KEY_PHASE));
                arb[1] = (uint8_t)B_ID;
                arb[2] = (uint8_t)(B_ID >> 8);
                arb[3] = (uint8_t)(B_ID >> 16);
                arb[4] = (uint8_t)(B_ID >> 24);
            }
            deliver(b, arb, got, now);
            break;
        }
        case 3: { /* time */
            static const tern_ms scale[4] = {1, 16, 256, 1024};
            now += (tern_ms)fuzz_u16(&in) * scale[fuzz_u8(&in) & 3];
            break;
        }
        case 4:
            FUZZ_CHECK(tern_crypto_session_rekey(a, now) == 0, "rekey");
            break;
        default: { /* an earlier genuine packet, unchanged */
            if (!n_sealed)
                break;
            const sealed_pkt *sp = &sealed[fuzz_u8(&in) % n_sealed];
            int was = sp->accepted;
            tern_ssize o = deliver(b, sp->pkt, sp->len, now);
            FUZZ_CHECK(!was || o == TERN_ERR_REPLAY, "replayed packet gave %d", (int)o);
            break;
        }
        }
    }

    tern_crypto_session_stats sb;
    tern_crypto_session_get_stats(b, &sb);
    uint64_t acc = 0;
    for (size_t i = 0; i < n_sealed; i++)
        acc += (uint64_t)sealed[i].accepted;
    FUZZ_CHECK(sb.opened == acc, "stats say %llu opened, %llu were", (unsigned long long)sb.opened,
               (unsigned long long)acc);
    tern_crypto_session_del(a);
    tern_crypto_session_del(b);
    FUZZ_CHECK(alloc_a.live_allocs == 0 && alloc_b.live_allocs == 0, "leak: %zu + %zu blocks",
               alloc_a.live_allocs, alloc_b.live_allocs);
    return 0;
}
