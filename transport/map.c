#include "transport/map.h"

#include <string.h>

#include "common/mem.h"
#include "tern/error.h"

void tern_map_init(tern_map *m, const tern_mem *mem)
{
    memset(m, 0, sizeof(*m));
    m->mem = mem;
}

void tern_map_free(tern_map *m)
{
    tern_mem_free(m->mem, m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->count = 0;
}

/* Spreads sequential keys (test ids, conv numbers) over the table. */
static size_t slot_of(const tern_map *m, uint64_t key)
{
    key ^= key >> 33;
    key *= UINT64_C(0xff51afd7ed558ccd);
    key ^= key >> 33;
    return (size_t)key & m->mask;
}

void *tern_map_get(const tern_map *m, uint64_t key)
{
    if (!m->slots || key == 0)
        return NULL;
    for (size_t i = slot_of(m, key);; i = (i + 1) & m->mask) {
        if (m->slots[i].key == key)
            return m->slots[i].value;
        if (m->slots[i].key == 0)
            return NULL;
    }
}

static int grow(tern_map *m)
{
    size_t cap = m->slots ? (m->mask + 1) * 2 : 16;
    tern_map_slot *slots = tern_mem_calloc(m->mem, cap, sizeof(*slots));
    if (!slots)
        return TERN_ERR_NOMEM;
    tern_map old = *m;
    m->slots = slots;
    m->mask = cap - 1;
    if (old.slots) {
        for (size_t i = 0; i <= old.mask; i++) {
            if (old.slots[i].key == 0)
                continue;
            size_t j = slot_of(m, old.slots[i].key);
            while (m->slots[j].key != 0)
                j = (j + 1) & m->mask;
            m->slots[j] = old.slots[i];
        }
        tern_mem_free(m->mem, old.slots);
    }
    return 0;
}

int tern_map_put(tern_map *m, uint64_t key, void *value)
{
    if (key == 0)
        return TERN_ERR_INVAL;
    /* At most half full keeps probe sequences short. */
    if (!m->slots || (m->count + 1) * 2 > m->mask + 1) {
        int rc = grow(m);
        if (rc < 0)
            return rc;
    }
    size_t i = slot_of(m, key);
    for (; m->slots[i].key != 0; i = (i + 1) & m->mask) {
        if (m->slots[i].key == key)
            return TERN_ERR_INVAL;
    }
    m->slots[i].key = key;
    m->slots[i].value = value;
    m->count++;
    return 0;
}

void *tern_map_del(tern_map *m, uint64_t key)
{
    if (!m->slots || key == 0)
        return NULL;
    size_t i = slot_of(m, key);
    while (m->slots[i].key != key) {
        if (m->slots[i].key == 0)
            return NULL;
        i = (i + 1) & m->mask;
    }
    void *value = m->slots[i].value;
    /* Backward shift: pull later members of the probe run into the hole
     * when their home slot allows it. */
    size_t hole = i;
    for (size_t j = (i + 1) & m->mask; m->slots[j].key != 0; j = (j + 1) & m->mask) {
        size_t home = slot_of(m, m->slots[j].key);
        size_t dist_hole = (hole - home) & m->mask;
        size_t dist_j = (j - home) & m->mask;
        if (dist_hole < dist_j) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole].key = 0;
    m->slots[hole].value = NULL;
    m->count--;
    return value;
}
