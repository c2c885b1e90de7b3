/* game_protocol.h: what a game's client and server must agree on, in one
 * header that both include. game_loop.c holds both roles in one program for
 * the sake of a short example; a real game builds two programs from this
 * same header.
 *
 * The channel table. tern sends a channel's number, not its kind, so both
 * peers must configure the same table (same count, same kinds, in the same
 * order); game_configure_channels() is the one place it is written:
 *
 *   0 GAME_CH_SNAPSHOT  server -> client  UNRELIABLE_SEQUENCED  world state, 20 Hz
 *   1 GAME_CH_INPUT     client -> server  UNRELIABLE            input, 20 Hz
 *   2 GAME_CH_CHAT      both ways         RELIABLE_ORDERED      chat lines
 *
 * Why these kinds: a snapshot is stale once a newer one exists, so it is
 * never resent and a late one is dropped (counted as msgs_obsolete) rather
 * than shown after a newer one. Inputs are sent every tick, so a lost one is
 * soon replaced; resending it would only add delay. Chat must arrive, whole
 * and in order, however late.
 *
 * The messages, byte by byte, all integers little-endian, written and read
 * by hand (never memcpy a struct onto the wire: padding, byte order and
 * type sizes differ between compilers and machines):
 *
 *   snapshot  tick (u32) | input_ack (u32) | you (u32) | n (u16)
 *             | n x entity: id (u32) | x_mm (i32) | y_mm (i32)
 *   input     seq (u32) | move_x (i8) | move_y (i8)
 *   chat      1..GAME_CHAT_MAX bytes of UTF-8 text, no terminator
 *
 * input_ack is the newest input seq the server has applied for the client
 * the snapshot is sent to, and you is that client's entity id: a client
 * that predicts its own movement replays its inputs after input_ack. A
 * snapshot of GAME_MAX_PLAYERS entities is 14 + 12 x 32 = 398 bytes: it
 * fits one datagram, so losing a datagram costs one snapshot, not more
 * (tern splits larger messages, and an unreliable message is lost whole if
 * any of its pieces is). */
#ifndef TERN_EXAMPLES_GAME_PROTOCOL_H
#define TERN_EXAMPLES_GAME_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tern/tern.h>

enum { GAME_CH_SNAPSHOT = 0, GAME_CH_INPUT = 1, GAME_CH_CHAT = 2, GAME_N_CHANNELS = 3 };

#define GAME_TICK_HZ 20
#define GAME_TICK_MS (1000 / GAME_TICK_HZ)
#define GAME_MAX_PLAYERS 32
#define GAME_CHAT_MAX 200
#define GAME_SNAPSHOT_HEADER 14U
#define GAME_ENTITY_BYTES 12U
#define GAME_SNAPSHOT_MAX (GAME_SNAPSHOT_HEADER + GAME_ENTITY_BYTES * GAME_MAX_PLAYERS)
#define GAME_INPUT_BYTES 6U

/* The world is a square, +-GAME_WORLD_MM on each axis. */
#define GAME_WORLD_MM 50000
/* Full speed, in millimetres per tick (5 m/s). */
#define GAME_SPEED_MM 250

typedef struct game_entity {
    uint32_t id;
    int32_t x_mm, y_mm;
} game_entity;

typedef struct game_snapshot {
    uint32_t tick;
    uint32_t input_ack;
    uint32_t you;
    uint16_t n;
    game_entity ents[GAME_MAX_PLAYERS];
} game_snapshot;

typedef struct game_input {
    uint32_t seq;
    int8_t move_x, move_y; /* -100..100: percent of full speed */
} game_input;

/* Sets the channel table (and the timeouts a game wants) in an endpoint
 * config that tern_endpoint_config_default() filled. */
static inline void game_configure_channels(tern_endpoint_config *cfg)
{
    cfg->n_channels = GAME_N_CHANNELS;
    /* Priority 0 is served first when the link is busy: inputs, then
     * snapshots, then chat. Weights only matter between equal priorities. */
    cfg->channels[GAME_CH_SNAPSHOT] = (tern_channel_config){
        .kind = TERN_CHANNEL_UNRELIABLE_SEQUENCED, .priority = 1, .weight = 1};
    cfg->channels[GAME_CH_INPUT] =
        (tern_channel_config){.kind = TERN_CHANNEL_UNRELIABLE, .priority = 0, .weight = 1};
    cfg->channels[GAME_CH_CHAT] =
        (tern_channel_config){.kind = TERN_CHANNEL_RELIABLE_ORDERED, .priority = 2, .weight = 1};
    /* Both sides talk 20 times a second, so silence means trouble sooner
     * than the 30 s default. */
    cfg->idle_timeout_ms = 10000;
}

/* ---- little-endian helpers ---- */

static inline void game_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void game_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint16_t game_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t game_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Two's complement on the wire; converted without implementation-defined
 * casts of out-of-range values. */
static inline uint32_t game_i32_to_wire(int32_t v)
{
    return v >= 0 ? (uint32_t)v : ~(uint32_t)(-(v + 1));
}

static inline int32_t game_i32_from_wire(uint32_t v)
{
    return v <= INT32_MAX ? (int32_t)v : -(int32_t)(~v) - 1;
}

static inline int8_t game_i8_from_wire(uint8_t v)
{
    return v <= INT8_MAX ? (int8_t)v : (int8_t)(-(int)(uint8_t)~v - 1);
}

/* ---- the messages ---- */

/* Writes s into out (at least GAME_SNAPSHOT_MAX bytes); returns the length. */
static inline size_t game_snapshot_encode(const game_snapshot *s, uint8_t *out)
{
    uint16_t n = s->n <= GAME_MAX_PLAYERS ? s->n : GAME_MAX_PLAYERS;
    game_put_u32(out, s->tick);
    game_put_u32(out + 4, s->input_ack);
    game_put_u32(out + 8, s->you);
    game_put_u16(out + 12, n);
    uint8_t *p = out + GAME_SNAPSHOT_HEADER;
    for (uint16_t i = 0; i < n; i++, p += GAME_ENTITY_BYTES) {
        game_put_u32(p, s->ents[i].id);
        game_put_u32(p + 4, game_i32_to_wire(s->ents[i].x_mm));
        game_put_u32(p + 8, game_i32_to_wire(s->ents[i].y_mm));
    }
    return (size_t)(p - out);
}

/* Reads a snapshot; false (and *s unspecified) unless len is exactly what
 * the header announces. Everything from the network is checked before use. */
static inline bool game_snapshot_decode(game_snapshot *s, const uint8_t *p, size_t len)
{
    if (len < GAME_SNAPSHOT_HEADER)
        return false;
    s->tick = game_get_u32(p);
    s->input_ack = game_get_u32(p + 4);
    s->you = game_get_u32(p + 8);
    s->n = game_get_u16(p + 12);
    if (s->n > GAME_MAX_PLAYERS || len != GAME_SNAPSHOT_HEADER + (size_t)s->n * GAME_ENTITY_BYTES)
        return false;
    p += GAME_SNAPSHOT_HEADER;
    for (uint16_t i = 0; i < s->n; i++, p += GAME_ENTITY_BYTES) {
        s->ents[i].id = game_get_u32(p);
        s->ents[i].x_mm = game_i32_from_wire(game_get_u32(p + 4));
        s->ents[i].y_mm = game_i32_from_wire(game_get_u32(p + 8));
    }
    return true;
}

static inline void game_input_encode(const game_input *in, uint8_t out[GAME_INPUT_BYTES])
{
    game_put_u32(out, in->seq);
    out[4] = (uint8_t)in->move_x;
    out[5] = (uint8_t)in->move_y;
}

static inline bool game_input_decode(game_input *in, const uint8_t *p, size_t len)
{
    if (len != GAME_INPUT_BYTES)
        return false;
    in->seq = game_get_u32(p);
    in->move_x = game_i8_from_wire(p[4]);
    in->move_y = game_i8_from_wire(p[5]);
    /* Out of range is malformed, not clamped: a well-behaved client never
     * sends it. */
    return in->move_x >= -100 && in->move_x <= 100 && in->move_y >= -100 && in->move_y <= 100;
}

#endif /* TERN_EXAMPLES_GAME_PROTOCOL_H */
