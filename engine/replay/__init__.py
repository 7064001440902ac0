"""`sqlwarden replay`: a message log read back, checked, drawn and re-executed.

- `read`: the log's files in order, records and damaged lines, filters, and
  the small helpers the reports share.
- `summary`: counts per run, actor and message kind; handling-time percentiles.
- `timeline`: one line per record (`--timeline`), and `follow` (`--follow`).
- `check`: the protocol rules checked on a log (`--check`).
- `spans`, `html`: the swimlane page (`--html`); `spans` pairs records into
  spans and counts them in a first pass, `html` writes the page from the
  files in `assets/` (head, styles, script).
- `rebuild`, `reexecute`, `reexecute_result`: re-execution (`--reexecute`);
  messages rebuilt from logged fields, re-applied to a fresh database, and
  the result compared with the live database.
"""
