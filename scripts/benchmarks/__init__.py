"""Benchmarks for sqlwarden. Each prints a table and writes JSON (under var/bench/ unless
--json says otherwise); `scripts/bench NAME --help` documents one, its JSON keys included.

    scripts/bench ingest [--rows N] [--batch N] [--repeat N] [--json PATH]
    scripts/bench backfill [--parents N] [--children N] [--repeat N] [--json PATH]
                           [--target-ms X] [--yield-ms Y]
    scripts/bench fts [--large-rows N] [--base-rows N] [--small-rows N] [--batch N]
                      [--repeat N] [--json PATH] [--workdir DIR]
    scripts/bench fts-share [--total N] [--shares S,S,...] [--batch N] [--repeat N]
                            [--json PATH] [--workdir DIR]
    scripts/bench sync [--rows N] [--files N] [--batch N] [--repeat N] [--json PATH]
                       [--workdir DIR]
    scripts/bench mirror [--rows N] [--ingest-seconds S] [--peer-rows N] [--repeat N]
                         [--json PATH] [--workdir DIR]
    scripts/bench fleet [--devices N] [--rate R] [--seconds S] [--kill-after S]
                        [--json PATH] [--workdir DIR]
    scripts/bench replay [--records N] [--repeat N] [--json PATH] [--workdir DIR]

Where each lives, in scripts/benchmarks/ (the package `benchmarks`):

    ingest     ingest.py      Engine.write_many against raw apsw executemany
    backfill   backfill.py    a chunked backfill task against one UPDATE, under a
                              steady foreground writer
    fts        fts.py         a catch-up into an FTS-indexed table, triggers live
                              against FTS deferral
    fts-share  fts_share.py   restore by rebuild against incremental at several shares
                              of the table changed (on fts.py's runs)
    sync       sync.py        an ndjson source through engine.sync.run against the apsw
                              loop a user writes, with and without FTS
    mirror     mirror.py      the MySQL mirror against a private MariaDB; with
                              mirror_setup.py (config, rows, files, server tables) and
                              mirror_cases.py (the engine, raw and peer cases)
    fleet      fleet.py       N engine processes, each its own scope, mirroring into a
                              3-node Galera cluster (a node killed mid-run) and into
                              one MariaDB; each device is fleet_device.py's process
    replay     replay.py      sqlwarden replay over a generated busy engine's log; the
                              log from replay_log.py, on replay_sim.py (records, clock,
                              Writer, Progress) and replay_source.py (source, FTS)

Shared: cli.py (the argparse main, run by `python -m benchmarks`), common.py (failures,
configs and fixture databases, work folders, best runs, cases in their own processes,
peak memory), corpus.py (the made-up text) and fts_checks.py (what an FTS index must
answer after a run).

scripts/bench runs `python -m benchmarks` from the repository root with scripts/ on
PYTHONPATH (the repository is on the path too: the mirror imports
`tests.support.mariadb`, the fleet `tests.support.galera`). `_sync_case`, `_mirror_case`
and `_fleet_device` are hidden sub-commands: sync and mirror run each case through them
in a fresh interpreter, fleet each device.
"""

from __future__ import annotations

# Before anything else is imported, here or in any module of the package: the MySQL
# connector's C extension loads only if its bundled OpenSSL is loaded before Python's
# `ssl` or `hashlib` (through `_hashlib`) loads the system's under the same names (see
# sqlwarden.mirror.driver). Too late, the mirror and the raw case run in pure Python.
# The package's own import runs first under `python -m benchmarks`, in the bench and in
# each case's process.
from sqlwarden.mirror.driver import load_driver

load_driver()
