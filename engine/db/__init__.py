"""The SQLite database: connection set-up, schema, the Writer's SQL, readers, checksums.

- `connect`: opening connections as a list of small named set-up steps
- `sql`: quoted identifiers and multi-row statements
- `schema`: declared tables, indexes, FTS and the engine's bookkeeping tables
- `writer`: `WriterCore`, everything the single Writer does with its connection
- `readers`: the pool of read-only connections lent to callers
- `checksum`: per-table checksums; `status`: status read from the file alone
- `faults`: which SQLite failures are waits (a lock held elsewhere, a full disk)
"""
