"""FTS5 upkeep: finding FTS tables and their triggers, deferring and restoring
them around bulk catch-ups (`deferral`), and the policy that decides when."""
