/* Wire compatibility with classic KCP (skywind3000/kcp's ikcp.c), checked
 * against datagrams that ikcp itself wrote: the text files in
 * tests/vectors/ikcp/. They are data captured from a local harness (see their
 * headers); no ikcp code is part of this repository or of this test.
 *
 * Every ikcp datagram is decoded field by field, fed to our engine, and what
 * the engine does with it (delivery, ACKs, windows, probes) is checked. Where
 * a vector is a datagram tern wrote and fed to ikcp (tern_* names), the test
 * checks that tern still writes exactly those bytes, so that ikcp's recorded
 * answers stay answers to what we send. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "kcp/codec.h"
#include "tern/kcp.h"

#define CONV 0x01020304u
#define MTU 1400
#define MSS (MTU - TERN_KCP_OVERHEAD)
#define MAX_VECTORS 64
#define MAX_DGRAM 2048

/* ---- vector files ---- */

typedef struct vector {
    char name[64];
    uint8_t bytes[MAX_DGRAM];
    size_t len;
} vector;

typedef struct vector_file {
    vector v[MAX_VECTORS];
    size_t n;
} vector_file;

/* The vectors live beside this source file: tests/vectors/ikcp/. __FILE__ is
 * the absolute path CMake passes to the compiler, so this works from any
 * build directory. */
static void vector_path(char *out, size_t cap, const char *file)
{
    const char *src = __FILE__;
    const char *slash = strrchr(src, '/');
    int dir = slash ? (int)(slash - src + 1) : 0;
    snprintf(out, cap, "%.*svectors/ikcp/%s", dir, src, file);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static void load(vector_file *f, const char *file)
{
    char path[4096];
    vector_path(path, sizeof(path), file);
    FILE *fp = fopen(path, "r");
    cr_assert_not_null(fp, "cannot open %s (vectors are found through __FILE__)", path);
    memset(f, 0, sizeof(*f));
    static char line[2 * MAX_DGRAM + 128];
    int lineno = 0;
    while (fgets(line, sizeof(line), fp)) {
        lineno++;
        size_t len = strlen(line);
        cr_assert(len > 0 && line[len - 1] == '\n', "%s:%d: line too long or unterminated", file,
                  lineno);
        line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        char *colon = strstr(line, ": ");
        cr_assert_not_null(colon, "%s:%d: expected 'name: hex'", file, lineno);
        cr_assert_lt(f->n, (size_t)MAX_VECTORS, "%s: too many vectors", file);
        vector *v = &f->v[f->n];
        size_t name_len = (size_t)(colon - line);
        cr_assert(name_len > 0 && name_len < sizeof(v->name), "%s:%d: bad name", file, lineno);
        memcpy(v->name, line, name_len);
        for (size_t i = 0; i < f->n; i++)
            cr_assert_str_neq(f->v[i].name, v->name, "%s:%d: duplicate name", file, lineno);
        const char *hex = colon + 2;
        size_t digits = strlen(hex);
        cr_assert(digits > 0 && digits % 2 == 0 && digits / 2 <= MAX_DGRAM, "%s:%d: %zu hex digits",
                  file, lineno, digits);
        for (size_t i = 0; i < digits / 2; i++) {
            int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
            cr_assert(hi >= 0 && lo >= 0, "%s:%d: not lowercase hex", file, lineno);
            v->bytes[i] = (uint8_t)(hi << 4 | lo);
        }
        v->len = digits / 2;
        f->n++;
    }
    fclose(fp);
    cr_assert_gt(f->n, 0, "%s holds no vectors", file);
}

static const vector *get(const vector_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->v[i].name, name) == 0)
            return &f->v[i];
    cr_assert_fail("no vector named %s", name);
    return NULL;
}

static vector_file vf_push, vf_ack, vf_probe, vf_stream;

static void load_all(void)
{
    load(&vf_push, "push.txt");
    load(&vf_ack, "ack.txt");
    load(&vf_probe, "probe.txt");
    load(&vf_stream, "stream.txt");
}

/* ---- segments ---- */

typedef struct seg_view {
    tern_kcp_hdr h;
    const uint8_t *payload;
} seg_view;

/* Splits a datagram into its segments; asserts the count. */
static void split(const uint8_t *d, size_t len, seg_view *out, size_t want)
{
    size_t off = 0, n = 0;
    while (off < len) {
        cr_assert_leq(off + TERN_KCP_OVERHEAD, len, "truncated header");
        cr_assert_lt(n, want, "more than %zu segments", want);
        tern_kcp_hdr_decode(d + off, &out[n].h);
        out[n].payload = d + off + TERN_KCP_OVERHEAD;
        off += TERN_KCP_OVERHEAD + out[n].h.len;
        cr_assert_leq(off, len, "payload past the end");
        n++;
    }
    cr_assert_eq(n, want, "%zu segments, expected %zu", n, want);
}

static void expect_hdr(const tern_kcp_hdr *h, uint8_t cmd, uint8_t frg, uint16_t wnd, uint32_t ts,
                       uint32_t sn, uint32_t una, uint32_t len)
{
    cr_assert_eq(h->conv, CONV, "conv 0x%08x", h->conv);
    cr_assert_eq(h->cmd, cmd, "cmd %u, expected %u", h->cmd, cmd);
    cr_assert_eq(h->frg, frg, "frg %u, expected %u", h->frg, frg);
    cr_assert_eq(h->wnd, wnd, "wnd %u, expected %u", h->wnd, wnd);
    cr_assert_eq(h->ts, ts, "ts %u, expected %u", h->ts, ts);
    cr_assert_eq(h->sn, sn, "sn %u, expected %u", h->sn, sn);
    cr_assert_eq(h->una, una, "una %u, expected %u", h->una, una);
    cr_assert_eq(h->len, len, "len %u, expected %u", h->len, len);
}

/* byte i of the 3000-byte message the capture harness sent */
static uint8_t pattern(size_t i)
{
    return (uint8_t)(i * 7 + 1);
}

/* ---- our engine ---- */

static tern_kcp *engine(tern_kcp_mode mode, uint32_t rcv_wnd, bool ack_nodelay, tern_ms now)
{
    tern_kcp_settings s;
    tern_kcp_settings_default(&s);
    s.conv = CONV;
    s.mode = mode;
    if (rcv_wnd)
        s.rcv_wnd = rcv_wnd;
    s.ack_nodelay = ack_nodelay;
    tern_kcp *k = NULL;
    cr_assert_eq(tern_kcp_new(&k, &s, NULL, NULL, NULL, now), 0);
    return k;
}

static void feed(tern_kcp *k, const vector *v, tern_ms now)
{
    int rc = tern_kcp_read_pkt(k, v->bytes, v->len, now);
    cr_assert_eq(rc, 0, "read_pkt(%s): %s", v->name, tern_strerror(rc));
}

static size_t write1(tern_kcp *k, uint8_t *out, tern_ms now)
{
    tern_ssize n = tern_kcp_write_pkt(k, out, MAX_DGRAM, now);
    cr_assert_geq(n, 0, "write_pkt: %s", tern_strerror((int)n));
    return (size_t)n;
}

static void expect_bytes(const uint8_t *got, size_t n, const vector *v)
{
    cr_assert_eq(n, v->len, "%zu bytes written, %s has %zu", n, v->name, v->len);
    cr_assert_arr_eq(got, v->bytes, n, "bytes differ from %s", v->name);
}

static tern_kcp_stats stats(const tern_kcp *k)
{
    tern_kcp_stats st;
    tern_kcp_get_stats(k, &st);
    return st;
}

/* ---- the vector files themselves ---- */

Test(vectors, every_datagram_is_well_formed_classic_kcp)
{
    load_all();
    const vector_file *files[] = {&vf_push, &vf_ack, &vf_probe, &vf_stream};
    size_t total = 0;
    for (size_t f = 0; f < 4; f++) {
        for (size_t i = 0; i < files[f]->n; i++) {
            const vector *v = &files[f]->v[i];
            int segs = tern_kcp_datagram_check(v->bytes, v->len, CONV);
            cr_assert_gt(segs, 0, "%s: %s", v->name, tern_strerror(segs));
            cr_assert_leq(v->len, (size_t)MTU, "%s exceeds the mtu", v->name);
            cr_assert_eq(tern_kcp_datagram_check(v->bytes, v->len, CONV + 1), TERN_ERR_CONV);
            /* Our encoder writes every header exactly as ikcp did. */
            size_t off = 0;
            while (off < v->len) {
                tern_kcp_hdr h;
                uint8_t again[TERN_KCP_OVERHEAD];
                tern_kcp_hdr_decode(v->bytes + off, &h);
                tern_kcp_hdr_encode(again, &h);
                cr_assert_arr_eq(again, v->bytes + off, TERN_KCP_OVERHEAD, "%s: header at %zu",
                                 v->name, off);
                off += TERN_KCP_OVERHEAD + h.len;
            }
            total++;
        }
    }
    cr_assert_eq(total, 25, "%zu vectors", total);
}

/* ---- decoding ikcp's datagrams, field by field ---- */

Test(decode, ikcp_push_hello)
{
    load_all();
    const vector *v = get(&vf_push, "ikcp_push_hello");
    seg_view s[1];
    split(v->bytes, v->len, s, 1);
    cr_assert_eq(v->len, 29);
    expect_hdr(&s[0].h, TERN_KCP_CMD_PUSH, 0, 256, 1000, 0, 0, 5);
    cr_assert_arr_eq(s[0].payload, "hello", 5);
    /* The retransmission differs in ts alone (bytes 8..11). */
    const vector *r = get(&vf_push, "ikcp_push_hello_rtx");
    split(r->bytes, r->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_PUSH, 0, 256, 1200, 0, 0, 5);
    cr_assert_eq(r->len, v->len);
    cr_assert_arr_eq(r->bytes, v->bytes, 8);
    cr_assert_arr_eq(r->bytes + 12, v->bytes + 12, v->len - 12);
}

Test(decode, ikcp_fragments_count_down)
{
    load_all();
    static const char *names[] = {"ikcp_push_3000_1", "ikcp_push_3000_2", "ikcp_push_3000_3"};
    static const uint32_t lens[] = {MSS, MSS, 3000 - 2 * MSS};
    size_t off = 0;
    for (uint32_t i = 0; i < 3; i++) {
        const vector *v = get(&vf_push, names[i]);
        seg_view s[1];
        split(v->bytes, v->len, s, 1);
        cr_assert_eq(v->len, TERN_KCP_OVERHEAD + lens[i]);
        expect_hdr(&s[0].h, TERN_KCP_CMD_PUSH, (uint8_t)(2 - i), 256, 1000, i, 0, lens[i]);
        for (uint32_t j = 0; j < lens[i]; j++)
            cr_assert_eq(s[0].payload[j], pattern(off + j), "%s byte %u", names[i], j);
        off += lens[i];
    }
    cr_assert_eq(off, 3000);
}

Test(decode, ikcp_acks)
{
    load_all();
    seg_view s[3];
    const vector *v = get(&vf_ack, "ikcp_ack_hello");
    split(v->bytes, v->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_ACK, 0, 255, 1000, 0, 1, 0);
    v = get(&vf_ack, "ikcp_ack_hello_rcvwnd128");
    split(v->bytes, v->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_ACK, 0, 127, 1000, 0, 1, 0);
    /* ikcp acknowledges the bundled copy of sn 0 as well, echoing its ts. */
    v = get(&vf_ack, "ikcp_ack_bundled");
    split(v->bytes, v->len, s, 3);
    expect_hdr(&s[0].h, TERN_KCP_CMD_ACK, 0, 254, 1000, 0, 2, 0);
    expect_hdr(&s[1].h, TERN_KCP_CMD_ACK, 0, 254, 1005, 1, 2, 0);
    expect_hdr(&s[2].h, TERN_KCP_CMD_ACK, 0, 254, 1005, 0, 2, 0);
    v = get(&vf_ack, "ikcp_ack_three");
    split(v->bytes, v->len, s, 3);
    for (uint32_t i = 0; i < 3; i++)
        expect_hdr(&s[i].h, TERN_KCP_CMD_ACK, 0, 256, 2000, i, 3, 0);
}

Test(decode, ikcp_probes)
{
    load_all();
    seg_view s[3];
    const vector *v = get(&vf_probe, "ikcp_wask");
    split(v->bytes, v->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_WASK, 0, 256, 0, 0, 0, 0);
    /* ikcp writes ACK, WASK and WINS from one reused header: a WASK after
     * ACKs in the same flush carries the last ACK's ts and sn. */
    v = get(&vf_probe, "ikcp_ack_wask");
    split(v->bytes, v->len, s, 3);
    expect_hdr(&s[0].h, TERN_KCP_CMD_ACK, 0, 254, 8005, 0, 2, 0);
    expect_hdr(&s[1].h, TERN_KCP_CMD_ACK, 0, 254, 8005, 1, 2, 0);
    expect_hdr(&s[2].h, TERN_KCP_CMD_WASK, 0, 254, 8005, 1, 2, 0);
    v = get(&vf_probe, "ikcp_wins_wnd0");
    split(v->bytes, v->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_WINS, 0, 0, 0, 0, 256, 0);
    v = get(&vf_probe, "ikcp_wins_reopen");
    split(v->bytes, v->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_WINS, 0, 256, 0, 0, 256, 0);
}

Test(decode, ikcp_stream_segments)
{
    load_all();
    static const char *names[] = {"ikcp_stream_1", "ikcp_stream_2", "ikcp_stream_3",
                                  "ikcp_stream_tail"};
    static const uint32_t lens[] = {MSS, MSS, 3005 - 2 * MSS, 4};
    static const uint32_t ts[] = {1000, 1000, 1000, 1010};
    uint8_t stream[3009];
    memcpy(stream, "hello", 5);
    for (size_t i = 0; i < 3000; i++)
        stream[5 + i] = pattern(i);
    memcpy(stream + 3005, "tail", 4);
    size_t off = 0;
    for (uint32_t i = 0; i < 4; i++) {
        const vector *v = get(&vf_stream, names[i]);
        seg_view s[1];
        split(v->bytes, v->len, s, 1);
        /* Stream mode: frg is 0 on every segment. */
        expect_hdr(&s[0].h, TERN_KCP_CMD_PUSH, 0, 256, ts[i], i, 0, lens[i]);
        cr_assert_arr_eq(s[0].payload, stream + off, lens[i], "%s", names[i]);
        off += lens[i];
    }
    cr_assert_eq(off, sizeof(stream));
}

/* ---- our engine on ikcp's datagrams ---- */

/* The tern_* inputs the captures fed to ikcp are still what tern writes; the
 * first of them is also byte for byte what ikcp wrote for the same send. */
Test(engine, writes_the_bytes_ikcp_was_given)
{
    load_all();
    uint8_t out[MAX_DGRAM];
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    cr_assert_eq(tern_kcp_send(k, "hello", 5, 1000), 0);
    size_t n = write1(k, out, 1000);
    expect_bytes(out, n, get(&vf_ack, "tern_push_hello"));
    expect_bytes(out, n, get(&vf_push, "ikcp_push_hello"));
    cr_assert_eq(tern_kcp_send(k, "world", 5, 1005), 0);
    n = write1(k, out, 1005);
    expect_bytes(out, n, get(&vf_ack, "tern_push_world_bundled"));
    cr_assert_eq(stats(k).bundled, 1);
    tern_kcp_del(k);

    k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 2000);
    cr_assert_eq(tern_kcp_send(k, "a", 1, 2000), 0);
    cr_assert_eq(tern_kcp_send(k, "bb", 2, 2000), 0);
    cr_assert_eq(tern_kcp_send(k, "ccc", 3, 2000), 0);
    n = write1(k, out, 2000);
    expect_bytes(out, n, get(&vf_ack, "tern_push_three"));
    cr_assert_eq(write1(k, out, 2000), 0);
    tern_kcp_del(k);
}

Test(engine, delivers_ikcp_message_and_ignores_its_retransmission)
{
    load_all();
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    feed(k, get(&vf_push, "ikcp_push_hello"), 1010);
    char buf[64];
    cr_assert_eq(tern_kcp_peek_size(k), 5);
    cr_assert_eq(tern_kcp_recv(k, buf, sizeof(buf), 1010), 5);
    cr_assert_arr_eq(buf, "hello", 5);
    tern_kcp_stats st = stats(k);
    cr_assert_eq(st.msgs_recv, 1);
    cr_assert_eq(st.bytes_recv, 5);
    cr_assert_eq(st.rmt_wnd, 256, "ikcp's advertised window taken");
    feed(k, get(&vf_push, "ikcp_push_hello_rtx"), 1210);
    cr_assert_eq(tern_kcp_recv(k, buf, sizeof(buf), 1210), TERN_ERR_AGAIN, "delivered once");
    st = stats(k);
    cr_assert_eq(st.dup_segs, 1);
    cr_assert_eq(st.msgs_recv, 1);
    cr_assert_eq(st.malformed + st.conv_mismatch + st.out_of_window, 0);
    tern_kcp_del(k);
}

static void reassemble(const int order[3])
{
    static const char *names[] = {"ikcp_push_3000_1", "ikcp_push_3000_2", "ikcp_push_3000_3"};
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    static uint8_t buf[4000];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tern_kcp_recv(k, buf, sizeof(buf), 1010), TERN_ERR_AGAIN,
                     "message complete after %d of 3 fragments", i);
        feed(k, get(&vf_push, names[order[i]]), 1010);
    }
    cr_assert_eq(tern_kcp_peek_size(k), 3000);
    cr_assert_eq(tern_kcp_recv(k, buf, sizeof(buf), 1010), 3000);
    for (size_t i = 0; i < 3000; i++)
        cr_assert_eq(buf[i], pattern(i), "byte %zu", i);
    cr_assert_eq(tern_kcp_recv(k, buf, sizeof(buf), 1010), TERN_ERR_AGAIN);
    tern_kcp_stats st = stats(k);
    cr_assert_eq(st.msgs_recv, 1);
    cr_assert_eq(st.segs_recv, 3);
    cr_assert_eq(st.bytes_recv, 3000);
    tern_kcp_del(k);
}

Test(engine, reassembles_ikcp_fragments_in_any_order)
{
    load_all();
    static const int orders[][3] = {{0, 1, 2}, {2, 1, 0}, {1, 2, 0}, {0, 2, 1}};
    for (size_t i = 0; i < sizeof(orders) / sizeof(orders[0]); i++)
        reassemble(orders[i]);
}

Test(engine, stream_mode_takes_ikcp_byte_stream)
{
    load_all();
    static const char *names[] = {"ikcp_stream_1", "ikcp_stream_2", "ikcp_stream_3",
                                  "ikcp_stream_tail"};
    tern_kcp *k = engine(TERN_KCP_MODE_STREAM, 0, false, 1000);
    for (int i = 0; i < 4; i++)
        feed(k, get(&vf_stream, names[i]), 1010);
    cr_assert_eq(tern_kcp_peek_size(k), 3009);
    /* Read in odd-sized pieces across segment boundaries. */
    static uint8_t got[3009];
    size_t have = 0;
    while (have < sizeof(got)) {
        size_t want = sizeof(got) - have < 7 ? sizeof(got) - have : 7;
        tern_ssize n = tern_kcp_recv(k, got + have, want, 1010);
        cr_assert_gt(n, 0);
        have += (size_t)n;
    }
    cr_assert_arr_eq(got, "hello", 5);
    for (size_t i = 0; i < 3000; i++)
        cr_assert_eq(got[5 + i], pattern(i), "byte %zu", 5 + i);
    cr_assert_arr_eq(got + 3005, "tail", 4);
    cr_assert_eq(tern_kcp_recv(k, got, sizeof(got), 1010), TERN_ERR_AGAIN);
    tern_kcp_del(k);

    /* A message-mode engine sees ikcp's stream segments (frg 0 each) as one
     * message per segment: the mode is not on the wire. */
    k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    for (int i = 0; i < 4; i++)
        feed(k, get(&vf_stream, names[i]), 1010);
    static const tern_ssize sizes[] = {MSS, MSS, 3005 - 2 * MSS, 4};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(tern_kcp_recv(k, got, sizeof(got), 1010), sizes[i]);
    tern_kcp_del(k);
}

/* Mirror cases: ikcp read tern_push_hello and wrote ikcp_ack_hello; tern
 * reads ikcp_push_hello (the same bytes) and must write the same ACK. */
Test(engine, our_ack_for_ikcp_push_is_ikcp_s_ack)
{
    load_all();
    uint8_t out[MAX_DGRAM];
    seg_view ours[1], theirs[1];
    const vector *push = get(&vf_push, "ikcp_push_hello");
    cr_assert_arr_eq(push->bytes, get(&vf_ack, "tern_push_hello")->bytes, push->len);

    /* Default settings: rcv_wnd 256 like the captured ikcp; the ACK waits
     * ack_delay (20 ms) for data to ride on, then goes alone. */
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    feed(k, push, 1000);
    cr_assert_eq(write1(k, out, 1000), 0, "a lone ACK waits for ack_delay");
    cr_assert_eq(tern_kcp_get_expiry(k), 1020);
    cr_assert_eq(tern_kcp_handle_expiry(k, 1020), 0);
    size_t n = write1(k, out, 1020);
    /* Identical bytes: conv, ACK, frg 0, wnd 256 - 1 unread, ts echoed (not
     * our clock), sn 0, una 1, len 0. ikcp's flush time does not show. */
    expect_bytes(out, n, get(&vf_ack, "ikcp_ack_hello"));
    cr_assert_eq(write1(k, out, 1020), 0);
    tern_kcp_del(k);

    /* ikcp_create()'s defaults have rcv_wnd 128. Against that capture every
     * field matches but wnd: 255 (our rcv_wnd 256 - 1 unread) against 127
     * (ikcp's 128 - 1). That is the only legitimate difference. */
    k = engine(TERN_KCP_MODE_MESSAGE, 0, true, 1000);
    feed(k, push, 1000);
    n = write1(k, out, 1000);
    const vector *v128 = get(&vf_ack, "ikcp_ack_hello_rcvwnd128");
    split(out, n, ours, 1);
    split(v128->bytes, v128->len, theirs, 1);
    cr_assert_eq(n, v128->len);
    cr_assert_eq(ours[0].h.conv, theirs[0].h.conv);
    cr_assert_eq(ours[0].h.cmd, theirs[0].h.cmd);
    cr_assert_eq(ours[0].h.frg, theirs[0].h.frg);
    cr_assert_eq(ours[0].h.ts, theirs[0].h.ts);
    cr_assert_eq(ours[0].h.sn, theirs[0].h.sn);
    cr_assert_eq(ours[0].h.una, theirs[0].h.una);
    cr_assert_eq(ours[0].h.len, theirs[0].h.len);
    cr_assert_eq(ours[0].h.wnd, 255);
    cr_assert_eq(theirs[0].h.wnd, 127);
    tern_kcp_del(k);

    /* With rcv_wnd 128 ourselves, the bytes are identical again. */
    k = engine(TERN_KCP_MODE_MESSAGE, 128, true, 1000);
    feed(k, push, 1000);
    n = write1(k, out, 1000);
    expect_bytes(out, n, v128);
    tern_kcp_del(k);
}

Test(engine, ikcp_ack_acknowledges_our_push)
{
    load_all();
    uint8_t out[MAX_DGRAM];
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    cr_assert_eq(tern_kcp_send(k, "hello", 5, 1000), 0);
    expect_bytes(out, write1(k, out, 1000), get(&vf_ack, "tern_push_hello"));
    tern_kcp_stats st = stats(k);
    cr_assert_eq(st.in_flight_segs, 1);
    cr_assert_eq(tern_kcp_unacked_bytes(k), 5);
    feed(k, get(&vf_ack, "ikcp_ack_hello"), 1010);
    st = stats(k);
    cr_assert_eq(st.in_flight_segs, 0);
    cr_assert_eq(st.in_flight_bytes, 0);
    cr_assert_eq(tern_kcp_unacked_bytes(k), 0);
    cr_assert_eq(st.acks_recv, 1);
    cr_assert_eq(st.srtt_ms, 10, "RTT = 1010 - echoed ts 1000");
    cr_assert_eq(st.rmt_wnd, 255);
    cr_assert_eq(tern_kcp_get_expiry(k), UINT64_MAX, "nothing left to time");
    cr_assert_eq(write1(k, out, 1010), 0);
    tern_kcp_del(k);
}

/* ikcp acknowledges a bundled copy like any PUSH: three ACKs for two
 * segments. The extra one finds nothing to acknowledge and does no harm. */
Test(engine, ikcp_acks_for_a_bundled_copy)
{
    load_all();
    uint8_t out[MAX_DGRAM];
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 1000);
    cr_assert_eq(tern_kcp_send(k, "hello", 5, 1000), 0);
    expect_bytes(out, write1(k, out, 1000), get(&vf_ack, "tern_push_hello"));
    cr_assert_eq(tern_kcp_send(k, "world", 5, 1005), 0);
    expect_bytes(out, write1(k, out, 1005), get(&vf_ack, "tern_push_world_bundled"));
    feed(k, get(&vf_ack, "ikcp_ack_bundled"), 1010);
    tern_kcp_stats st = stats(k);
    cr_assert_eq(st.acks_recv, 3);
    cr_assert_eq(st.in_flight_segs, 0);
    cr_assert_eq(tern_kcp_unacked_bytes(k), 0);
    cr_assert_eq(st.spurious, 0, "a copy is not a retransmission");
    cr_assert_eq(st.lost, 0);
    /* One RTT sample per datagram. The echoes are 1000 (sn 0) and 1005 (sn 1),
     * so 10 or 5 ms. Today it is 10: the first ACK's una (2) already takes
     * sn 1 out of flight, so the second ACK, whose echo is newer, hits
     * nothing. */
    cr_assert(st.srtt_ms == 10 || st.srtt_ms == 5, "srtt %u", st.srtt_ms);
    cr_assert_eq(st.rmt_wnd, 254);
    tern_kcp_del(k);

    k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 2000);
    cr_assert_eq(tern_kcp_send(k, "a", 1, 2000), 0);
    cr_assert_eq(tern_kcp_send(k, "bb", 2, 2000), 0);
    cr_assert_eq(tern_kcp_send(k, "ccc", 3, 2000), 0);
    expect_bytes(out, write1(k, out, 2000), get(&vf_ack, "tern_push_three"));
    feed(k, get(&vf_ack, "ikcp_ack_three"), 2010);
    st = stats(k);
    cr_assert_eq(st.acks_recv, 3);
    cr_assert_eq(tern_kcp_unacked_bytes(k), 0);
    cr_assert_eq(st.srtt_ms, 10);
    cr_assert_eq(st.rmt_wnd, 256);
    tern_kcp_del(k);
}

/* ---- window probing ---- */

/* Replays the capture: tern with rcv_wnd 1 takes ikcp's "hello" without
 * reading it; ikcp, told wnd 0, probes after 7 s; tern answers. */
Test(probe, replay_of_ikcp_probing_tern)
{
    load_all();
    uint8_t out[MAX_DGRAM];
    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 1, true, 1000);
    feed(k, get(&vf_push, "ikcp_push_hello"), 1000);
    expect_bytes(out, write1(k, out, 1000), get(&vf_probe, "tern_ack_wnd0"));

    /* ikcp's WASK: tern answers with a WINS in its next datagram. Compared
     * with ikcp's own WINS (ikcp_wins_wnd0) the layout is the same; ts
     * differs by design (we write our clock, ikcp whatever its reused header
     * holds), and wnd and una are each side's own receive state. */
    feed(k, get(&vf_probe, "ikcp_wask"), 8010);
    size_t n = write1(k, out, 8010);
    expect_bytes(out, n, get(&vf_probe, "tern_wins_wnd0"));
    seg_view ours[1], theirs[1];
    split(out, n, ours, 1);
    const vector *iw = get(&vf_probe, "ikcp_wins_wnd0");
    split(iw->bytes, iw->len, theirs, 1);
    expect_hdr(&ours[0].h, TERN_KCP_CMD_WINS, 0, 0, 8010, 0, 1, 0);
    cr_assert_eq(ours[0].h.cmd, theirs[0].h.cmd);
    cr_assert_eq(ours[0].h.frg, theirs[0].h.frg);
    cr_assert_eq(ours[0].h.sn, theirs[0].h.sn);
    cr_assert_eq(ours[0].h.len, theirs[0].h.len);
    cr_assert_eq(ours[0].h.wnd, theirs[0].h.wnd, "both windows shut in these captures");
    cr_assert_eq(write1(k, out, 8010), 0, "one WINS per WASK");
    cr_assert_eq(stats(k).probes_sent, 1);

    /* Reading reopens the window: an unsolicited WINS, as ikcp's own
     * "recover" does (ikcp_wins_reopen). */
    char buf[16];
    cr_assert_eq(tern_kcp_recv(k, buf, sizeof(buf), 8015), 5);
    cr_assert_arr_eq(buf, "hello", 5);
    expect_bytes(out, write1(k, out, 8015), get(&vf_probe, "tern_wins_reopen"));
    cr_assert_eq(stats(k).probes_sent, 2);
    tern_kcp_del(k);

    /* Second capture: ACKs and the WASK in one ikcp datagram. The WASK's ts
     * and sn are leftovers of the last ACK; we ignore them, take both ACKs
     * and answer the WASK. */
    k = engine(TERN_KCP_MODE_MESSAGE, 1, true, 1000);
    feed(k, get(&vf_push, "ikcp_push_hello"), 1000);
    expect_bytes(out, write1(k, out, 1000), get(&vf_probe, "tern_ack_wnd0"));
    cr_assert_eq(tern_kcp_send(k, "p1", 2, 8005), 0);
    cr_assert_eq(tern_kcp_send(k, "p2", 2, 8005), 0);
    expect_bytes(out, write1(k, out, 8005), get(&vf_probe, "tern_push_p1p2"));
    cr_assert_eq(stats(k).in_flight_segs, 2);
    feed(k, get(&vf_probe, "ikcp_ack_wask"), 8010);
    tern_kcp_stats st = stats(k);
    cr_assert_eq(st.in_flight_segs, 0);
    cr_assert_eq(tern_kcp_unacked_bytes(k), 0);
    cr_assert_eq(st.acks_recv, 2);
    cr_assert_eq(st.srtt_ms, 5);
    cr_assert_eq(st.rmt_wnd, 254);
    n = write1(k, out, 8010);
    split(out, n, ours, 1);
    expect_hdr(&ours[0].h, TERN_KCP_CMD_WINS, 0, 0, 8010, 0, 1, 0);
    tern_kcp_del(k);
}

/* ikcp's WINS shuts and reopens our sending; our WASK (recorded as the
 * capture's input) has the layout ikcp answered. */
Test(probe, ikcp_wins_drives_our_remote_window)
{
    load_all();
    uint8_t out[MAX_DGRAM];
    seg_view s[1];
    const vector *tw = get(&vf_probe, "tern_wask");
    split(tw->bytes, tw->len, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_WASK, 0, 256, 3520, 0, 0, 0);

    tern_kcp *k = engine(TERN_KCP_MODE_MESSAGE, 0, false, 3000);
    /* una 256 in ikcp's WINS is beyond anything this engine sent: ignored. */
    feed(k, get(&vf_probe, "ikcp_wins_wnd0"), 3000);
    cr_assert_eq(stats(k).rmt_wnd, 0);
    cr_assert_eq(tern_kcp_send(k, "queued", 6, 3000), 0);
    cr_assert_eq(write1(k, out, 3000), 0, "nothing new may leave into a shut window");
    cr_assert_eq(tern_kcp_get_expiry(k), 3500, "probe after probe_min");
    cr_assert_eq(tern_kcp_handle_expiry(k, 3500), 0);
    size_t n = write1(k, out, 3500);
    split(out, n, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_WASK, 0, 256, 3500, 0, 0, 0);
    cr_assert_eq(write1(k, out, 3500), 0);

    feed(k, get(&vf_probe, "ikcp_wins_reopen"), 3540);
    cr_assert_eq(stats(k).rmt_wnd, 256);
    n = write1(k, out, 3540);
    split(out, n, s, 1);
    expect_hdr(&s[0].h, TERN_KCP_CMD_PUSH, 0, 256, 3540, 0, 0, 6);
    cr_assert_arr_eq(s[0].payload, "queued", 6);
    tern_kcp_del(k);
}
