/* Two engines joined by two simulated links, in virtual time. Shared by the
 * tests, the benchmarks and the demo; not part of the installed API.
 *
 * The application drives it: it sends and receives on the engines between
 * calls to tern_sim_pair_advance(), which moves the virtual clock to the next
 * event (or to `limit`) and does everything due then: delivers datagrams,
 * runs the engines' timers and writes their output into the links. */
#ifndef TERN_SIM_PAIR_H
#define TERN_SIM_PAIR_H

#include <stdbool.h>

#include "tern/kcp.h"
#include "tern/netsim.h"

typedef struct tern_sim_pair tern_sim_pair;

enum { TERN_SIM_A = 0, TERN_SIM_B = 1 };

/* a and b configure the two engines, a_to_b and b_to_a the two directions.
 * The links are seeded from seed (a_to_b with seed, b_to_a with a value
 * derived from it). Time starts at start_ms. */
int tern_sim_pair_new(tern_sim_pair **out, const tern_kcp_settings *a, const tern_kcp_settings *b,
                      const tern_netsim_cfg *a_to_b, const tern_netsim_cfg *b_to_a, uint64_t seed,
                      tern_ms start_ms);
void tern_sim_pair_del(tern_sim_pair *pair);

tern_kcp *tern_sim_pair_engine(tern_sim_pair *pair, int side);
tern_netsim_link *tern_sim_pair_link(tern_sim_pair *pair, int from_side);
tern_ms tern_sim_pair_now(const tern_sim_pair *pair);

/* Writes whatever both engines have to send now into the links (call it
 * after tern_kcp_send() so data leaves without waiting for the next advance). */
int tern_sim_pair_flush(tern_sim_pair *pair);

/* Moves the clock to min(next event, limit), but never backwards, and
 * processes everything due: delivers datagrams (read_pkt), runs due timers
 * (handle_expiry) and flushes. Returns the new time. An engine error other
 * than a counted drop is returned as a negative value through *err if err is
 * not NULL. */
tern_ms tern_sim_pair_advance(tern_sim_pair *pair, tern_ms limit, int *err);

/* Seals every datagram with a checksum that the receiving side verifies and
 * strips, dropping (and counting) any that fail: a stand-in for the AEAD of
 * the crypto layer, which plain KCP lacks, so that runs with corruption can
 * still demand byte-exact delivery. Off by default. */
void tern_sim_pair_set_integrity(tern_sim_pair *pair, bool on);
uint64_t tern_sim_pair_integrity_drops(const tern_sim_pair *pair);

/* Wraps every datagram between an engine and its link, as the crypto layer
 * does between the engine and the socket: seal(user, side, ...) turns what
 * engine `side` wrote (in, len) into what its link carries (into out, at
 * most len + TERN_SIM_WRAP_MAX bytes); open(user, side, ...) turns what the
 * link delivers to engine `side` back into what that engine reads. Each
 * returns the output length; a negative open drops the datagram and counts
 * it (tern_sim_pair_wrap_drops()), a negative seal is reported as an error
 * by flush/advance. sim/ knows nothing of crypto: the soak tests plug the
 * real AEAD in here. NULL, NULL: off (the default). With the integrity
 * checksum on as well, it covers the sealed datagram. */
#define TERN_SIM_WRAP_MAX 64
typedef tern_ssize (*tern_sim_wrap_fn)(void *user, int side, const uint8_t *in, size_t len,
                                       uint8_t *out, size_t cap, tern_ms now);
void tern_sim_pair_set_wrap(tern_sim_pair *pair, tern_sim_wrap_fn seal, tern_sim_wrap_fn open,
                            void *user);
uint64_t tern_sim_pair_wrap_drops(const tern_sim_pair *pair);

/* Datagrams each side has written so far. */
uint64_t tern_sim_pair_datagrams(const tern_sim_pair *pair, int from_side);

#endif /* TERN_SIM_PAIR_H */
