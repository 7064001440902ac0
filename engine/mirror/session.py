"""What the mirror does over its two connections, as plain code the Mirror actor runs.

`MirrorSession` holds one MySQL connection and one read-only SQLite
connection. It creates the mirror tables, drains the outbox, and reconciles
or verifies whole tables:

- Drain: the oldest `batch_rows` outbox rows and the current rows of their
  keys are read in one SQLite read transaction; a key whose row exists is
  upserted, one whose row is gone is deleted, all in one MySQL transaction.
  The caller then asks the Writer to delete the outbox rows up to the
  batch's last sequence number. A key changed again meanwhile got a new,
  higher sequence number, so it stays pending. A crash anywhere repeats a
  batch, which the upserts and deletes make harmless.
- Quarantine: a row the mirror cannot hold, or the server refuses, is set
  aside alone (`quarantine`); the batch commits without it, and the caller
  records it through the Writer with the outbox rows it drains.
- Reconcile and verify: `reconcile_steps` compares every table range by
  range (`reconcile`), one step at a time, so the actor answers status, stop
  and other requests between ranges.

Every statement to the server names this engine's scope value, so engines
sharing a central database never read or touch each other's rows.

Several hosts (`hosts:` in the config): `open` tries them in order, from the
one after a host it lost, and uses the first that answers and is ready
(`nodes.readiness`). A host refusing the login stops the round: that is the
config's fault on every host. Each drain transaction also records its batch
in the server's progress row (`nodes.PROGRESS_TABLE`), so after a failover
`holds_all` tells whether the server reached holds every batch this run saw
committed (then no reconcile is needed).

Conflicts: a transaction that loses to another (a deadlock, a lock wait
timeout, Galera's certification conflict on COMMIT) is rolled back and sent
again whole on the same connection after a short doubling wait (`retrying`):
a drain batch is never sent in part, and only a transaction that keeps
losing gives the connection up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw

from sqlwarden.config import Config, MirrorConfig, TableConfig
from sqlwarden.config.mirror import split_host
from sqlwarden.db.schema import OUTBOX_TABLE
from sqlwarden.errors import MirrorError
from sqlwarden.mirror.dialect import (
    CONFLICT_BUDGET_S,
    CONFLICT_TRIES,
    LOGIN_ERRNOS,
    Literals,
    conflict_wait_s,
    connect,
    create_table_sql,
    delete_statements,
    expected_columns,
    index_sql,
    is_conflict,
    mq,
    mysql_error,
)
from sqlwarden.mirror.driver import driver_name
from sqlwarden.mirror.local import (
    StoredRanges,
    has_table,
    open_mirror_reader,
    outbox_depth,
    rows_by_keys,
    snapshot,
)
from sqlwarden.mirror.nodes import (
    PROGRESS_TABLE,
    Identity,
    holds_progress,
    progress_params,
    progress_table_sql,
    progress_upsert_sql,
    readiness,
)
from sqlwarden.mirror.quarantine import Quarantined, Refused, RowSender, row_key
from sqlwarden.mirror.ranges import (
    Key,
    TableReport,
    key_of,
    table_check,
)
from sqlwarden.mirror.reconcile import Reconciler, Step
from sqlwarden.protocol import Message
from sqlwarden.redact import Redactor

__all__ = ["DrainBatch", "MirrorSession", "outbox_depth", "table_check"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DrainBatch:
    """Outbox rows read in one snapshot, with the current rows of their keys."""

    upto_seq: int
    entries: int
    #: table -> rows that exist now (upserted) and keys that do not (deleted)
    upserts: dict[str, list[tuple[Any, ...]]]
    deletes: dict[str, list[Key]]
    #: when each drained change was recorded (Unix seconds)
    changed_at: list[float]
    #: (table, ord) of stored ranges with a digest that hold drained keys
    stale_ranges: tuple[tuple[str, int], ...] = ()
    #: keys whose rows SQLite cannot hand over as text (not valid UTF-8)
    unreadable: tuple[Refused, ...] = ()


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """What a drain batch left out (quarantined) and which quarantined keys it sent."""

    refused: list[Refused]
    #: (table, key) of keys that were quarantined and are now on the server (or deleted)
    released: list[tuple[str, Key]]


class MirrorSession:
    """One MySQL connection and one SQLite reader, used from a single thread."""

    def __init__(self, config: Config, *, redactor: Redactor | None = None,
                 on_progress: Progress | None = None,
                 on_retry: Callable[[int], None] | None = None) -> None:
        """`on_retry(total)` is called each time a transaction is sent again after a
        conflict (`retrying`), while the step that sends it goes on."""
        if config.mirror is None:
            raise MirrorError("the config has no mirror section")
        self.config = config
        self.mirror: MirrorConfig = config.mirror
        self.tables = [config.table(name) for name in self.mirror.tables]
        self.redactor = redactor or Redactor(config.secrets)
        self.on_progress = on_progress
        self.on_retry = on_retry
        self.conn: Any = None
        self.reader: apsw.Connection | None = None
        self.stored: StoredRanges | None = None
        self.literals: Literals | None = None
        self.driver = driver_name()
        self.server_version = ""
        #: Mirror tables not on the server (only when opened with `create=False`).
        self.missing: set[str] = set()
        self.quarantined = Quarantined()
        #: The "host:port" connected to (None while not connected, or through a socket).
        self.node: str | None = None
        #: What the last connection reached (known with `hosts` only).
        self.identity: Identity | None = None
        #: The server connected to holds every batch this run saw committed, so this
        #: connect needs no reconcile (only ever True after a failover with `hosts`).
        self.holds_all = False
        #: This run, as the server's progress row names it (no `secrets`: see `driver`).
        self.run = os.urandom(16).hex()
        #: The last outbox sequence number of the last batch the server acknowledged.
        self.acked_seq: int | None = None
        #: Transactions sent again whole after a conflict, since this session was made.
        self.retries = 0
        #: Where in `hosts` the next connect starts.
        self._start = 0

    @property
    def where(self) -> str:
        if self.mirror.hosts and self.node is not None:
            return f"{self.mirror.dsn.user}@{self.node}/{self.mirror.dsn.database}"
        return self.mirror.where

    def error(self, exc: BaseException, what: str) -> MirrorError:
        return mysql_error(exc, where=f"mirror {self.where}: {what}", redactor=self.redactor)

    # --- connection ---------------------------------------------------------------------

    def open(self, *, create: bool = True) -> None:
        """Connect, and create (or with `create=False` only look for) the mirror tables.

        Raises `MirrorError`. Tables missing without `create` are taken as empty.
        """
        identity = None
        if self.mirror.hosts:
            try:
                identity = self._connect_any()
            except MirrorError:
                self.close()
                raise
        else:
            dsn = self.mirror.dsn
            try:
                self.conn = connect(dsn, timeout_s=self.mirror.connect_timeout_s)
                self.server_version = str(self.conn.server_info)
            except Exception as exc:
                self.close()
                raise self.error(exc, "connect") from None
            self.node = None if dsn.socket else host_port(dsn.host, dsn.port)
        self.literals = Literals(self.conn)
        try:
            self.ensure_tables(create=create)
        except Exception as exc:
            error = self.error(exc, "creating the mirror tables")
            self.close(lost=error.retryable)
            raise error from None
        if self.reader is None:
            self.reader = open_mirror_reader(self.config)
        self.stored = StoredRanges(self.reader)
        self.quarantined = Quarantined.load(self.reader, self.tables)
        self.holds_all = False
        if identity is not None:
            previous, self.identity = self.identity, identity
            if previous is not None and previous.same_as(identity):
                self.holds_all = self._holds_acked(identity)

    def _connect_any(self) -> Identity:
        """Connect to the first of `hosts` (from where the last round left off) that
        answers and is ready; returns what it is. Raises `MirrorError`."""
        hosts = self.mirror.hosts
        problems: list[str] = []
        last: MirrorError | None = None
        #: The first refusal from a host that answered (a login, a database it lacks): one
        #: node's (say one restored without the users) must not keep the others from being
        #: tried.
        refused: Exception | None = None
        unready = False
        for i in range(len(hosts)):
            where = hosts[(self._start + i) % len(hosts)]
            host, port = split_host(where)
            dsn = dataclasses.replace(self.mirror.dsn, host=host, port=port, socket=None)
            conn: Any = None
            try:
                conn = connect(dsn, timeout_s=self.mirror.connect_timeout_s)
                not_ready, identity = readiness(functools.partial(_query, conn))
                conn.commit()
            except Exception as exc:
                _close(conn)
                error = mysql_error(exc, redactor=self.redactor)
                if not error.retryable or error.errno in LOGIN_ERRNOS:
                    refused = refused or exc
                else:
                    last = error
                    # A server error (1040, 1047, 1203 ...) is a host that answered and
                    # cannot serve now; a client one (2003 ...) is a host that did not.
                    unready = unready or (error.errno is not None and error.errno < 2000)
                problems.append(f"{where}: {error}")
                continue
            if not_ready is not None:
                _close(conn)
                unready = True
                problems.append(f"{where}: {not_ready}")
                continue
            self.conn, self.node, self._start = conn, where, hosts.index(where)
            self.server_version = str(conn.server_info)
            log.info("mirror: using %s", where)
            return identity
        self._start = 0  # every host failed: the next round tries them in order again
        if refused is not None and not unready:
            # Every host that answered refused the login or the database, the others did
            # not answer: the config is at fault (state `failed`), as with one server.
            raise mysql_error(refused, where=f"mirror {self.mirror.where}: connect",
                              redactor=self.redactor) from None
        raise MirrorError(f"mirror {self.mirror.where}: no host can be used: "
                          + "; ".join(problems), errno=last.errno if last else None,
                          retryable=True)

    def _holds_acked(self, identity: Identity) -> bool:
        """Whether the server reached holds every batch this run saw committed."""
        if self.acked_seq is None:
            return True  # nothing drained yet (a reconcile in flight is owed anyway)
        try:
            holds = holds_progress(self.query, identity, scope=self.mirror.scope, run=self.run,
                                   seq=self.acked_seq)
            self.conn.commit()
        except Exception as exc:
            error = self.error(exc, "reading the mirror's progress")
            self.close(lost=error.retryable)
            raise error from None
        log.info("mirror: %s %s every batch acknowledged before the failover", self.node,
                 "holds" if holds else "does not hold")
        return holds

    def close(self, *, lost: bool = False) -> None:
        """Close both connections; `lost`: the server failed us, so the next connect starts
        with the host after it."""
        if lost and self.node is not None and self.node in self.mirror.hosts:
            self._start = (self.mirror.hosts.index(self.node) + 1) % len(self.mirror.hosts)
        self.node = None
        conn, self.conn = self.conn, None
        _close(conn)
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()

    def cursor(self) -> Any:
        return self.conn.cursor()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return _query(self.conn, sql, params)

    def rollback(self) -> None:
        with contextlib.suppress(Exception):  # gone: the server rolled back for us
            self.conn.rollback()

    def retrying(self, attempt: Callable[[], T], what: str, *,
                 failed: BaseException | None = None) -> T:
        """`attempt()` (statements ending with their COMMIT); after a conflict it is rolled
        back and run again whole, after a doubling wait, at most `CONFLICT_TRIES` times in
        all and within `CONFLICT_BUDGET_S`. `failed`: the conflict a first try already met.
        Other errors propagate."""
        tries = 0
        error = failed
        deadline = time.monotonic() + CONFLICT_BUDGET_S
        while True:
            if error is not None:
                tries += 1
                if (not is_conflict(error) or tries >= CONFLICT_TRIES
                        or time.monotonic() > deadline):
                    raise error
                self.rollback()
                self.retries += 1
                if self.on_retry is not None:
                    self.on_retry(self.retries)
                wait = conflict_wait_s(tries)
                log.info("mirror: %s lost to another transaction (MySQL error %s); sending it "
                         "again whole in %.2fs", what, getattr(error, "errno", None), wait)
                # The same connection: a conflict says nothing about the server's health.
                time.sleep(wait)
            try:
                return attempt()
            except Exception as exc:
                error = exc

    def ensure_tables(self, *, create: bool = True) -> None:
        self.missing = set()
        if create and self.mirror.hosts and not self.query(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_NAME = %s", (self.mirror.dsn.database, PROGRESS_TABLE)):
            self.query(progress_table_sql())
        for table in self.tables:
            found = self._columns(table)
            if create and not found:
                # Only when missing: on Galera even a CREATE ... IF NOT EXISTS that finds
                # the table is replicated to every node as DDL, on every connect.
                self.query(create_table_sql(table, self.mirror))
                found = self._columns(table)
            want = expected_columns(table, self.mirror)
            if not found and not create:
                self.missing.add(table.name)
                continue
            if [c.lower() for c in found] != [c.lower() for c in want]:
                raise MirrorError(
                    f"mirror table {table.name} has columns ({', '.join(found)}) but the "
                    f"config needs ({', '.join(want)}); alter or drop it on the server",
                    table=table.name)
            if create and table.indexes:
                self._add_indexes(table)
        self.conn.commit()

    def _columns(self, table: TableConfig) -> list[str]:
        return [r[0] for r in self.query(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (self.mirror.dsn.database, table.name))]

    def _add_indexes(self, table: TableConfig) -> None:
        """Declared secondary indexes a mirror table made earlier lacks, added now."""
        have = {str(r[0]).lower() for r in self.query(
            "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (self.mirror.dsn.database, table.name))}
        for index in table.indexes:
            if index.name.lower() not in have:
                log.info("mirror: adding index %s to %s", index.name, table.name)
                # IF NOT EXISTS: another device of the fleet may add it at the same time.
                self.query(f"ALTER TABLE {mq(table.name)} ADD "
                           + index_sql(table, self.mirror, index).replace(
                               "INDEX ", "INDEX IF NOT EXISTS ", 1))

    def has_outbox(self) -> bool:
        """Whether the database has an outbox yet (an older engine's may not)."""
        assert self.reader is not None
        return has_table(self.reader, OUTBOX_TABLE)

    # --- drain --------------------------------------------------------------------------

    def read_batch(self) -> DrainBatch | None:
        """The oldest outbox rows and their current rows, or None when nothing is pending."""
        assert self.reader is not None and self.stored is not None
        by_name = {t.name: t for t in self.tables}
        with snapshot(self.reader):
            pending = list(self.reader.execute(
                f"SELECT seq, tbl, k, at FROM {OUTBOX_TABLE} ORDER BY seq LIMIT ?",
                (self.mirror.batch_rows,)))
            if not pending:
                return None
            keys: dict[str, list[Key]] = {}
            for _, name, stored, _ in pending:
                table = by_name.get(name)
                if table is not None:  # a table no longer mirrored: nothing to send
                    keys.setdefault(name, []).append(key_of(table, stored))
            upserts: dict[str, list[tuple[Any, ...]]] = {}
            deletes: dict[str, list[Key]] = {}
            stale: list[tuple[str, int]] = []
            unreadable: list[Refused] = []
            for name, wanted in keys.items():
                table = by_name[name]
                rows, bad = self._current_rows(table, wanted)
                unreadable.extend(bad)
                key = row_key(table)
                present = {key(row) for row in rows} | {r.key for r in bad}
                upserts[name] = rows
                deletes[name] = [k for k in wanted if k not in present]
                stale.extend((name, i) for i in self.stored.holding(table, wanted))
        return DrainBatch(upto_seq=pending[-1][0], entries=len(pending), upserts=upserts,
                          deletes=deletes, changed_at=[row[3] for row in pending],
                          stale_ranges=tuple(stale), unreadable=tuple(unreadable))

    def _current_rows(self, table: TableConfig, keys: list[Key]
                      ) -> tuple[list[tuple[Any, ...]], list[Refused]]:
        """The rows of `keys` that exist, and the keys whose row cannot be read as text."""
        assert self.reader is not None
        try:
            return rows_by_keys(self.reader, table, keys), []
        except UnicodeDecodeError:
            pass  # another program stored bytes as TEXT: find the rows one by one
        rows: list[tuple[Any, ...]] = []
        bad: list[Refused] = []
        for key in keys:
            try:
                rows.extend(rows_by_keys(self.reader, table, [key]))
            except UnicodeDecodeError as exc:
                bad.append(Refused(table.name, key, f"text that is not valid UTF-8 ({exc})"))
        return rows, bad

    def apply_batch(self, batch: DrainBatch) -> DrainOutcome:
        """Write one drain batch to the server in one transaction, all but the rows the
        mirror cannot hold: those are taken off the mirror and returned to quarantine."""
        assert self.literals is not None
        try:
            outcome = self.retrying(lambda: self._send_batch(batch), "a drain batch")
        except Exception as exc:
            self.rollback()
            raise self.error(exc, "drain") from None
        self.acked_seq = batch.upto_seq
        for entry in outcome.refused:
            self.quarantined.add(entry.table, entry.key)
            log.warning("mirror: quarantined %s key %.100r: %s", entry.table,
                        entry.key[0] if len(entry.key) == 1 else entry.key, entry.reason)
        for name, key in outcome.released:
            self.quarantined.discard(name, key)
        return outcome

    def _send_batch(self, batch: DrainBatch) -> DrainOutcome:
        """One try of a drain batch's transaction, from its first statement to COMMIT."""
        assert self.literals is not None
        outcome = DrainOutcome(refused=list(batch.unreadable), released=[])
        cursor = self.cursor()
        try:
            for table in self.tables:
                name = table.name
                deletes = batch.deletes.get(name, [])
                for sql in delete_statements(table, self.mirror, self.literals, deletes,
                                             self.mirror.batch_rows):
                    cursor.execute(sql)
                rows = batch.upserts.get(name, [])
                sender = RowSender(table, self.mirror, self.literals, self.mirror.batch_rows)
                refused = sender.upsert(cursor, rows)
                gone = [r.key for r in (*batch.unreadable, *refused) if r.table == name]
                # An older version on the mirror would pass for the row: take it off.
                for sql in delete_statements(table, self.mirror, self.literals, gone,
                                             self.mirror.batch_rows):
                    cursor.execute(sql)
                outcome.refused.extend(refused)
                held = self.quarantined.of(name)
                if held:
                    out = set(gone)
                    outcome.released.extend(
                        (name, k) for k in (*deletes, *map(sender.key, rows))
                        if k in held and k not in out)
            if self.mirror.hosts:
                # In the same transaction: the row proves the batch is on the server.
                cursor.execute(progress_upsert_sql(),
                               progress_params(self.mirror.scope, self.run, batch.upto_seq))
            self.conn.commit()
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        return outcome

    # --- reconcile and verify -----------------------------------------------------------

    def reconcile(self, *, apply: bool = True,
                  on_request: Callable[[Message], None] | None = None
                  ) -> list[TableReport]:
        """The whole reconcile (or with `apply=False` verify) at once; `on_request`
        applies what it needs the Writer to (without it nothing is stored)."""
        steps = self.reconcile_steps(apply=apply)
        try:
            while True:
                request = next(steps)
                if request is not None and on_request is not None:
                    on_request(request)
        except StopIteration as done:
            reports: list[TableReport] = done.value
            return reports

    def reconcile_steps(self, *, apply: bool = True
                        ) -> Generator[Step, None, list[TableReport]]:
        """Compare every mirrored table, one range per step; with `apply`, make the mirror
        equal SQLite. Returns a report per table; raises `MirrorError`."""
        return Reconciler(self).steps(apply=apply)

    def has_rows(self, table: TableConfig) -> bool:
        """Whether the mirror holds any row of `table` for this scope."""
        if table.name in self.missing:
            return False
        return bool(self.query(
            f"SELECT 1 FROM {mq(table.name)} WHERE {mq(self.mirror.scope_column)} = %s LIMIT 1",
            (self.mirror.scope,)))

    def progress(self, name: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(name, done, total)


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _query(conn: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """One statement on `conn`; its rows (none for a statement that returns none)."""
    cursor = conn.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return list(cursor.fetchall()) if cursor.with_rows else []
    finally:
        cursor.close()


def _close(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):  # a dead connection has nothing to close
            conn.close()
