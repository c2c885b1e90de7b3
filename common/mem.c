#include "mem.h"

#include <stdlib.h>
#include <string.h>

static void *default_malloc(size_t size, void *user_data)
{
    (void)user_data;
    return malloc(size);
}

static void default_free(void *ptr, void *user_data)
{
    (void)user_data;
    free(ptr);
}

void tern_mem_init(tern_mem *out, const tern_mem *user)
{
    if (user && user->malloc_fn && user->free_fn) {
        *out = *user;
        return;
    }
    out->malloc_fn = default_malloc;
    out->free_fn = default_free;
    out->user_data = NULL;
}

void *tern_mem_alloc(const tern_mem *mem, size_t size)
{
    return mem->malloc_fn(size ? size : 1, mem->user_data);
}

void *tern_mem_calloc(const tern_mem *mem, size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    void *p = tern_mem_alloc(mem, count * size);
    if (p)
        memset(p, 0, count * size);
    return p;
}

void tern_mem_free(const tern_mem *mem, void *ptr)
{
    if (ptr)
        mem->free_fn(ptr, mem->user_data);
}
