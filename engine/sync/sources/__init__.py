"""Reading sources: records in, mapped rows and rejects out, one batch at a time.

- `base`: what every reader shares: `Prepared` batches, the `Backlog`,
  `SourceError` (how a run fails) and the `Reader` protocol.
- `mapping`: the `Mapper` from a record to a row of the declared columns,
  the conversion to each column type, and `raw_text` for rejects.
- `ndjson`: `NdjsonReader`, a directory of `.ndjson`/`.jsonl` files.
- `http`: `HttpReader`, a paginated JSON API. It loads `urllib.request`
  (and `ssl`), so it is imported only where an HTTP reader is built.
- `generator`: `GeneratorReader`, the demo's rows; `demo` makes them.

Nothing is imported here, so loading one reader loads no other.
"""
