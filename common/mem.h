/* Allocation through an object's tern_mem, defaulting to malloc/free. */
#ifndef TERN_COMMON_MEM_H
#define TERN_COMMON_MEM_H

#include "tern/common.h"

/* Copies *user (or the default hooks if user is NULL) into *out. */
void tern_mem_init(tern_mem *out, const tern_mem *user);
void *tern_mem_alloc(const tern_mem *mem, size_t size);
void *tern_mem_calloc(const tern_mem *mem, size_t count, size_t size);
void tern_mem_free(const tern_mem *mem, void *ptr);

#endif /* TERN_COMMON_MEM_H */
