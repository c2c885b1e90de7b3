/* tern: shared definitions for every public header.
 *
 * Time: every entry point that needs the time takes a 64-bit monotonic
 * timestamp in milliseconds (tern_ms). tern never reads a clock itself.
 *
 * Memory: objects take an optional tern_mem; NULL means the C library's
 * malloc/free. The hooks are per object, never process-global. */
#ifndef TERN_COMMON_H
#define TERN_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TERN_STATIC)
#define TERN_API
#elif defined(TERN_BUILDING) && defined(__GNUC__)
#define TERN_API __attribute__((visibility("default")))
#else
#define TERN_API
#endif /* TERN_STATIC / TERN_BUILDING */

#if defined(__GNUC__)
#define TERN_WARN_UNUSED __attribute__((warn_unused_result))
#else
#define TERN_WARN_UNUSED
#endif /* __GNUC__ */

/* Milliseconds on a monotonic clock chosen by the caller. */
typedef uint64_t tern_ms;

/* Signed size: a byte count, or a negative TERN_ERR_* code. */
typedef ptrdiff_t tern_ssize;

/* A per-object allocator. malloc_fn must return memory aligned for any
 * type; free_fn accepts NULL. user_data is passed back untouched. */
typedef struct tern_mem {
    void *(*malloc_fn)(size_t size, void *user_data);
    void (*free_fn)(void *ptr, void *user_data);
    void *user_data;
} tern_mem;

#ifdef __cplusplus
}
#endif
#endif /* TERN_COMMON_H */
