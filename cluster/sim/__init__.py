"""`cpn sim`'s simulated world: virtual time, a lossy network, faults and the oracles.

The whole cluster (the router core and N shard cores) runs in one process on one
virtual clock, with every random choice drawn from seeded generators, so that a seed
replays a run byte for byte (docs/simulation.md). This package holds the parts of the
world that do not depend on the cores' API: the schedule, the network, the fault menu,
the token ledger, the trace and the draw of a work-queue outcome.
"""
