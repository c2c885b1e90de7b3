/* tern-demo's parts: tools/demo.c runs tern-tunnel through tern-netsim on
 * loopback (the default), tools/demo_sim.c the engine alone through the
 * simulator (--sim). */
#ifndef TERN_TOOLS_DEMO_H
#define TERN_TOOLS_DEMO_H

/* Prints the simulator's latency table (every preset side by side) and its
 * bulk transfer table to stdout. Returns the exit status: 0, or 1 after a
 * one-line error on stderr. */
int tern_demo_sim_run(void);

#endif /* TERN_TOOLS_DEMO_H */
