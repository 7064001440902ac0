"""What the mirror bench works on: the device's config, its made-up `registry` rows, the
base and peer SQLite files, and the server's tables, reached with a plain connection.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config
from sqlwarden.facade import Engine

from .common import bench_fail, filling, make_config, remove_database
from .corpus import EPOCH, EQUIPMENT, STEP_S, Corpus

MIRROR_YAML = """
database:
  path: {path}
tables:
  registry:
    columns:
      id: {{type: integer, primary_key: true}}
      org: text
      name: text
      body: text
      updated_at: timestamp
      score: real{mirror}
message_log: {{enabled: false}}
status: {{enabled: false}}
"""
MIRROR_SECTION_YAML = """
mirror:
  dsn: {dsn}
  scope: {scope}
  batch_rows: {batch}
  range_rows: {range_rows}
  poll_ms: {poll_ms}"""
MIRROR_TABLE = "registry"
MIRROR_COLUMNS = ("id", "org", "name", "body", "updated_at", "score")
MIRROR_SCOPE = "bench-device"
MIRROR_BATCH = 1_000
MIRROR_RANGE_ROWS = 10_000
MIRROR_POLL_MS = 100
#: The database and user the mirror writes to; the raw loop writes to `RAW_TABLE` there,
#: the peer to its own database (it names its table after SQLite's).
MIRROR_DATABASE = "bench"
MIRROR_USER = "bench"
RAW_TABLE = "registry_raw"
PEER_DATABASE = "bench_peer"
MIRROR_SEED = 6
MIRROR_BODY_WORDS = 24
MIRROR_BODY_BYTES = (100, 150)
MIRROR_ORGS = 40
#: The share of rows without a score.
SCORE_NULL_SHARE = 0.02


def mirror_fail(message: str) -> SystemExit:
    return bench_fail("mirror", message)


def mirror_config(path: Path, dsn: str | None = None) -> Config:
    """The `registry` table; mirrored to `dsn` when given (its password comes from
    $SW_MYSQL_PASSWORD when the config is parsed)."""
    mirror = "" if dsn is None else MIRROR_SECTION_YAML.format(
        dsn=dsn, scope=MIRROR_SCOPE, batch=MIRROR_BATCH, range_rows=MIRROR_RANGE_ROWS,
        poll_ms=MIRROR_POLL_MS)
    return make_config(MIRROR_YAML, path, mirror=mirror)


def iso_micro(at: float) -> str:
    """`at` (Unix seconds) as ISO-8601 UTC text with microseconds."""
    whole = int(at)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            + f".{int((at - whole) * 1_000_000):06d}Z")


def registry_row(rng: random.Random, row_id: int, words: Sequence[str],
                 at: float) -> tuple[Any, ...]:
    """(id, org, name, body, updated_at, score): a body of 100 to 150 bytes cut from
    `words`, `at` with microseconds, a score with a full double's digits (or NULL)."""
    return (row_id, f"org-{rng.randrange(MIRROR_ORGS):02d}", f"{rng.choice(EQUIPMENT)} {row_id}",
            " ".join(words)[:rng.randint(*MIRROR_BODY_BYTES)], iso_micro(at),
            None if rng.random() < SCORE_NULL_SHARE else rng.uniform(-50.0, 1_000.0))


def registry_rows(corpus: Corpus, count: int) -> Iterator[tuple[Any, ...]]:
    """Rows with ids 1..count, 12 s apart from 2026-01-01; the same every time."""
    rng = random.Random(MIRROR_SEED)
    for row_id, words in enumerate(corpus.word_rows(rng, count, MIRROR_BODY_WORDS), start=1):
        yield registry_row(rng, row_id, words, EPOCH + row_id * STEP_S + rng.random())


def build_mirror_base(path: Path, rows: int) -> dict[str, Any]:
    """The device's database: the engine makes the schema from a config without the mirror
    section (so no outbox triggers and no outbox rows), raw apsw fills it in one
    transaction, then it is checkpointed and closed."""
    started = time.perf_counter()
    with filling(path, mirror_config(path)) as conn:
        conn.executemany(f"INSERT INTO {MIRROR_TABLE} ({', '.join(MIRROR_COLUMNS)}) "
                         "VALUES (?, ?, ?, ?, ?, ?)", registry_rows(Corpus(), rows))
        (shortest, mean, longest, no_score), = conn.execute(
            f"SELECT min(length(body)), avg(length(body)), max(length(body)), "
            f"sum(score IS NULL) FROM {MIRROR_TABLE}")
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 1),
            "mb": round(path.stat().st_size / 1024 / 1024, 1),
            "body_bytes": {"min": shortest, "mean": round(mean, 1), "max": longest},
            "null_scores": no_score}


def build_peer_db(base: Path, path: Path, rows: int) -> None:
    """A fresh SQLite file holding only the table (as the engine declared it) and its
    first `rows` rows by id: what the peer tool copies."""
    remove_database(path)
    conn = apsw.Connection(str(path))
    try:
        conn.execute("ATTACH ? AS base", (str(base),))
        (sql,), = conn.execute("SELECT sql FROM base.sqlite_master WHERE type = 'table' "
                               "AND name = ?", (MIRROR_TABLE,))
        conn.execute(sql)
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO main.{MIRROR_TABLE} SELECT * FROM base.{MIRROR_TABLE} "
                     "ORDER BY id LIMIT ?", (rows,))
        conn.execute("COMMIT")
        conn.execute("DETACH base")
    finally:
        conn.close()


def bench_mysql(config: Config, *, autocommit: bool) -> Any:
    """A plain mysql.connector connection to the mirror's database, as user code opens it
    (the C extension where there is one: the package loaded the driver first)."""
    import mysql.connector

    assert config.mirror is not None
    dsn = config.mirror.dsn
    return mysql.connector.connect(host=dsn.host, port=dsn.port, user=dsn.user,
                                   password=dsn.password, database=dsn.database,
                                   charset="utf8mb4", collation="utf8mb4_bin",
                                   autocommit=autocommit)


def mirror_totals(config: Config, table: str = MIRROR_TABLE) -> tuple[int, int]:
    """(rows, sum of sw_digest) of this scope's rows in `table` on the server."""
    conn = bench_mysql(config, autocommit=True)
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT COUNT(*), COALESCE(SUM(sw_digest), 0) FROM `{table}` "
                       "WHERE sw_scope = %s", (MIRROR_SCOPE,))
        (count, digest), = cursor.fetchall()
        cursor.close()
    finally:
        conn.close()
    return int(count), int(digest)


def sqlite_rows(engine: Engine) -> int:
    with engine.read() as conn:
        (count,), = conn.execute(f"SELECT count(*) FROM {MIRROR_TABLE}")
    return int(count)


def table_check_dict(view: Any) -> dict[str, Any]:
    """The one table's TableCheck of a ReconcileView, as JSON."""
    (table,) = view.tables
    return {"number": view.number, "seconds": view.seconds, "sqlite_rows": table.sqlite_rows,
            "mirror_rows": table.mirror_rows, "ranges": table.ranges,
            "differing": table.differing, "copied": table.copied, "deleted": table.deleted,
            "skipped": table.skipped, "sqlite_read": table.sqlite_read}


def reset_mirror_server(server: Any, config: Config) -> None:
    """Empty mirror, raw and peer tables: the mirror's table is dropped (the engine makes
    it), the raw one made like it, and the peer's database made anew."""
    from sqlwarden.mirror.dialect import create_table_sql

    assert config.mirror is not None
    server.query(f"DROP TABLE IF EXISTS `{MIRROR_TABLE}`, `{RAW_TABLE}`",
                 database=MIRROR_DATABASE)
    raw = replace(config.table(MIRROR_TABLE), name=RAW_TABLE)
    server.query(create_table_sql(raw, config.mirror), database=MIRROR_DATABASE)
    server.query(f"DROP DATABASE IF EXISTS `{PEER_DATABASE}`")
    server.query(f"CREATE DATABASE `{PEER_DATABASE}` CHARACTER SET utf8mb4 "
                 "COLLATE utf8mb4_bin")
