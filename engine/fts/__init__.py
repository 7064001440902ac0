"""FTS5 upkeep: which FTS tables a database has and the triggers that keep them in step
(`indexes`), deferring and restoring those triggers around bulk catch-ups (`deferral`),
and the policy that decides when (`controller`)."""
