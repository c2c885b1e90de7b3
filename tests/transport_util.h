/* Helpers shared by the loopback transport tests: endpoints on 127.0.0.1,
 * a loop runner with a deadline, and deterministic payloads. */
#ifndef TERN_TESTS_TRANSPORT_UTIL_H
#define TERN_TESTS_TRANSPORT_UTIL_H

#include <criterion/criterion.h>
#include <string.h>

#include "tern/tern.h"

static inline struct sockaddr_storage tu_addr(const char *text)
{
    struct sockaddr_storage a;
    cr_assert_eq(tern_sockaddr_parse(text, &a), 0, "parse %s", text);
    return a;
}

static inline tern_endpoint *tu_endpoint(uv_loop_t *loop, const tern_endpoint_config *cfg)
{
    struct sockaddr_storage any = tu_addr("127.0.0.1:0");
    tern_endpoint *ep = NULL;
    int rc = tern_endpoint_new(&ep, loop, (const struct sockaddr *)&any, cfg);
    cr_assert_eq(rc, 0, "endpoint_new: %s", tern_strerror(rc));
    return ep;
}

static inline struct sockaddr_storage tu_local(const tern_endpoint *ep)
{
    struct sockaddr_storage a;
    cr_assert_eq(tern_endpoint_local_addr(ep, &a), 0);
    return a;
}

typedef bool (*tu_done_fn)(void *arg);

static void tu_timer_noop(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until done(arg) or timeout_ms; returns whether done. */
static inline bool tu_run_until(uv_loop_t *loop, tu_done_fn done, void *arg, uint64_t timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    /* A periodic tick so the loop wakes up to re-check done(). */
    uv_timer_start(&tick, tu_timer_noop, 5, 5);
    uint64_t end = uv_now(loop) + timeout_ms;
    bool ok = false;
    while (!(ok = done(arg)) && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static inline bool tu_never(void *arg)
{
    (void)arg;
    return false;
}

/* Runs the loop (waking at least every 5 ms) until its clock reaches at. */
static inline void tu_run_to(uv_loop_t *loop, uint64_t at)
{
    if (uv_now(loop) < at)
        (void)tu_run_until(loop, tu_never, NULL, at - uv_now(loop));
}

/* cli opens a session to srv's address with cbs; the loop is not run (srv
 * must listen for the handshake to end well). Returns the client's session. */
static inline tern_session *tu_connect(tern_endpoint *cli, const tern_endpoint *srv,
                                       const tern_session_callbacks *cbs)
{
    struct sockaddr_storage to = tu_local(srv);
    const struct sockaddr *addrs[] = {(const struct sockaddr *)&to};
    tern_session *s = NULL;
    int rc = tern_endpoint_connect(cli, addrs, 1, 0, cbs, &s);
    cr_assert_eq(rc, 0, "endpoint_connect: %s", tern_strerror(rc));
    return s;
}

/* Closes the endpoints and runs the loop until every handle is gone. */
static inline void tu_close_all(uv_loop_t *loop, tern_endpoint **eps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (eps[i])
            cr_assert_eq(tern_endpoint_close(eps[i], NULL), 0);
    }
    for (int i = 0; i < 1000 && uv_run(loop, UV_RUN_NOWAIT) != 0; i++)
        ;
    cr_assert_eq(uv_loop_close(loop), 0, "handles left open on the loop");
}

/* A server and a client endpoint on 127.0.0.1, on a loop of their own. */
typedef struct tu_pair {
    uv_loop_t loop;
    tern_endpoint *srv, *cli;
} tu_pair;

static inline void tu_pair_open(tu_pair *p, const tern_endpoint_config *scfg,
                                const tern_endpoint_config *ccfg)
{
    cr_assert_eq(uv_loop_init(&p->loop), 0);
    p->srv = tu_endpoint(&p->loop, scfg);
    p->cli = tu_endpoint(&p->loop, ccfg);
}

/* srv listens with accept_cb, cli connects with cbs, and the loop runs until
 * connected(arg) (the client's connect_cb ran) or 3 s pass, which fails the
 * test. Whether the handshake succeeded is the caller's to check. */
static inline tern_session *tu_pair_connect(tu_pair *p, tern_accept_cb accept_cb,
                                            const tern_session_callbacks *cbs, tu_done_fn connected,
                                            void *arg)
{
    cr_assert_eq(tern_endpoint_listen(p->srv, accept_cb), 0);
    tern_session *s = tu_connect(p->cli, p->srv, cbs);
    cr_assert(tu_run_until(&p->loop, connected, arg, 3000), "the handshake did not end in 3 s");
    return s;
}

/* Closes the endpoints still open (one closed already is NULL) and the
 * loop. */
static inline void tu_pair_close(tu_pair *p)
{
    tern_endpoint *eps[] = {p->cli, p->srv};
    tu_close_all(&p->loop, eps, 2);
}

static inline uint8_t tu_byte(uint64_t i, uint32_t seed)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
    x ^= x >> 29;
    return (uint8_t)(x * 0xBF58476D1CE4E5B9ULL >> 56);
}

#endif /* TERN_TESTS_TRANSPORT_UTIL_H */
