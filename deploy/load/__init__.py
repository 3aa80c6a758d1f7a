"""``clawstream load``: an open-loop, seeded load generator and fault injector for a running
stack, and the report that judges the run against the seed's bar (``report``)."""
