/* A hash map from 64-bit keys to pointers: open addressing with linear
 * probing and backward-shift deletion, so lookups never walk tombstones.
 * Keys are session ids (random) or keyed hashes, so no further mixing of
 * hostile input is needed beyond what the caller did. Key 0 is reserved. */
#ifndef TERN_TRANSPORT_MAP_H
#define TERN_TRANSPORT_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "tern/common.h"

typedef struct tern_map_slot {
    uint64_t key; /* 0: empty */
    void *value;
} tern_map_slot;

typedef struct tern_map {
    tern_map_slot *slots;
    size_t mask; /* capacity - 1, capacity a power of two */
    size_t count;
    const tern_mem *mem;
} tern_map;

void tern_map_init(tern_map *m, const tern_mem *mem);
void tern_map_free(tern_map *m);
void *tern_map_get(const tern_map *m, uint64_t key);
/* 0, TERN_ERR_NOMEM, or TERN_ERR_INVAL for key 0 or a key already present. */
int tern_map_put(tern_map *m, uint64_t key, void *value);
/* Removes key; returns its value or NULL. */
void *tern_map_del(tern_map *m, uint64_t key);

#endif /* TERN_TRANSPORT_MAP_H */
