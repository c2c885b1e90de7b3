/* Helpers shared by the fuzz harnesses: an invariant check that aborts (so
 * libFuzzer reports it and the replay fails), a reader that turns the fuzz
 * input into numbers, and an allocator that counts what the engine holds and
 * fails on request. Header-only: each harness is one translation unit. */
#ifndef TERN_FUZZ_COMMON_H
#define TERN_FUZZ_COMMON_H

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant: if it does not hold, say which and abort. */
#define FUZZ_CHECK(cond, ...)                                                     \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* The input read from the front (the program) and from the back (a second,
 * independent stream of choices), as libFuzzer's FuzzedDataProvider does.
 * Reads past the end return zeros. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t len;
} fuzz_in;

static inline int fuzz_empty(const fuzz_in *in)
{
    return in->len == 0;
}

static inline uint8_t fuzz_u8(fuzz_in *in)
{
    if (!in->len)
        return 0;
    in->len--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(fuzz_in *in)
{
    uint16_t lo = fuzz_u8(in);
    return (uint16_t)(lo | (uint16_t)(fuzz_u8(in) << 8));
}

static inline uint32_t fuzz_u32(fuzz_in *in)
{
    uint32_t lo = fuzz_u16(in);
    return lo | (uint32_t)fuzz_u16(in) << 16;
}

static inline uint8_t fuzz_back_u8(fuzz_in *in)
{
    if (!in->len)
        return 0;
    in->len--;
    return in->p[in->len];
}

/* Takes up to n bytes from the front; *got says how many. */
static inline const uint8_t *fuzz_bytes(fuzz_in *in, size_t n, size_t *got)
{
    const uint8_t *p = in->p;
    if (n > in->len)
        n = in->len;
    in->p += n;
    in->len -= n;
    *got = n;
    return p;
}

static inline uint32_t fuzz_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Mutates buf[0..len) (len >= 1) in one of four ways chosen by the input —
 * flip a bit, overwrite a byte, truncate, append a byte (if cap allows) —
 * and returns the new length. Reads kind, position and value in that order,
 * so corpora keep their meaning. */
static inline size_t fuzz_mutate(fuzz_in *in, uint8_t *buf, size_t len, size_t cap)
{
    uint8_t kind = fuzz_u8(in);
    size_t pos = fuzz_u16(in) % len;
    uint8_t val = fuzz_u8(in);
    switch (kind % 4) {
    case 0:
        buf[pos] ^= (uint8_t)(1U << (val & 7));
        break;
    case 1:
        buf[pos] = val;
        break;
    case 2:
        len = pos;
        break;
    default:
        if (len < cap)
            buf[len++] = val;
        break;
    }
    return len;
}

/* ---- counting allocator ---- */

typedef struct fuzz_alloc {
    size_t live_allocs, live_bytes, peak_bytes;
    uint64_t calls;     /* allocations asked for, failed ones included */
    uint64_t fail_at;   /* 1-based call index that fails; 0: none */
    uint64_t fail_span; /* how many calls from fail_at fail */
    uint64_t failed;
} fuzz_alloc;

/* Each block carries its size in a header the size of the strictest
 * alignment, so the pointer handed out stays suitably aligned. */
typedef union fuzz_block {
    size_t size;
    max_align_t align;
} fuzz_block;

static inline void *fuzz_malloc(size_t size, void *user_data)
{
    fuzz_alloc *a = user_data;
    a->calls++;
    if (a->fail_at && a->calls >= a->fail_at && a->calls - a->fail_at < a->fail_span) {
        a->failed++;
        return NULL;
    }
    if (size > SIZE_MAX - sizeof(fuzz_block))
        return NULL;
    fuzz_block *b = malloc(sizeof(fuzz_block) + size);
    if (!b)
        return NULL;
    b->size = size;
    a->live_allocs++;
    a->live_bytes += size;
    if (a->live_bytes > a->peak_bytes)
        a->peak_bytes = a->live_bytes;
    /* Garbage, not zeros: the engine must not rely on fresh memory. */
    memset(b + 1, 0xa5, size);
    return b + 1;
}

static inline void fuzz_free(void *ptr, void *user_data)
{
    fuzz_alloc *a = user_data;
    if (!ptr)
        return;
    fuzz_block *b = (fuzz_block *)ptr - 1;
    FUZZ_CHECK(a->live_allocs > 0 && a->live_bytes >= b->size, "free without a live allocation");
    a->live_allocs--;
    a->live_bytes -= b->size;
    free(b);
}

static inline tern_mem fuzz_mem(fuzz_alloc *a)
{
    tern_mem m = {fuzz_malloc, fuzz_free, a};
    return m;
}

static inline uint64_t fuzz_pow2_at_least(uint64_t v, uint64_t floor)
{
    uint64_t p = floor;
    while (p < v)
        p <<= 1;
    return p;
}

#endif /* TERN_FUZZ_COMMON_H */
