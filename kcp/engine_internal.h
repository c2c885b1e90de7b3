/* Engine hooks for white-box tests only; not part of the installed API. */
#ifndef TERN_KCP_ENGINE_INTERNAL_H
#define TERN_KCP_ENGINE_INTERNAL_H

#include "tern/kcp.h"

/* Moves a fresh engine's sequence numbers (as if that many segments had
 * already been exchanged), so tests can run across the 2^32 wrap. Only valid
 * before anything was sent or received. */
int tern_kcp_test_set_sequence(tern_kcp *kcp, uint32_t snd_nxt, uint32_t rcv_nxt);

#endif /* TERN_KCP_ENGINE_INTERNAL_H */
