"""Opening SQLite connections: setup is a list of small named functions.

Only `open_writer` opens the database read-write, and only the Writer actor
calls it; everything else reads through `open_reader`. `open_scratch` makes a
new private database (`sqlwarden replay --reexecute` rebuilds a device's
state in one), never an existing file.

The engine's connections wait for another program's lock through `BusyWait`
(as long as `busy_timeout_ms`, like SQLite's own busy timeout) rather than
SQLite's timeout, so that a stopping engine stops waiting at once: a stop
must not sit out the busy timeout once for every write it still makes.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import apsw

from sqlwarden.config import DatabaseConfig
from sqlwarden.errors import DatabaseError

Setup = Callable[[apsw.Connection, DatabaseConfig], None]

#: The delays of SQLite's own busy handler, capped lower: a stop is seen within 50 ms.
_BUSY_DELAYS_S = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05)


class BusyWait:
    """A busy handler: retries a lock held elsewhere for up to `timeout_ms`, as SQLite's
    busy timeout does, and gives up at once when `give_up()` becomes true.

    It sleeps with `time.sleep`, which lets go of the GIL: SQLite's own timeout
    sleeps with the GIL held when apsw's caller keeps it, freezing every other
    thread of the process for the whole timeout (see `transaction`).
    """

    __slots__ = ("_give_up", "_since", "_timeout_s")

    def __init__(self, timeout_ms: int, give_up: Callable[[], bool]) -> None:
        self._timeout_s = timeout_ms / 1000
        self._give_up = give_up
        self._since = 0.0

    def __call__(self, prior: int) -> bool:
        """True: try the lock again; False: SQLite answers SQLITE_BUSY."""
        now = time.monotonic()
        if prior == 0:  # a new wait (SQLite counts the calls for one lock)
            self._since = now
        left = self._timeout_s - (now - self._since)
        if left <= 0 or self._give_up():
            return False
        time.sleep(min(_BUSY_DELAYS_S[min(prior, len(_BUSY_DELAYS_S) - 1)], left))
        return not self._give_up()


#: The `BusyWait` each connection opened with one has, to put back after `no_busy_wait`.
_busy_waits: weakref.WeakKeyDictionary[apsw.Connection, BusyWait] = (
    weakref.WeakKeyDictionary())


def wait_while_busy(give_up: Callable[[], bool]) -> Setup:
    """A setup step installing a `BusyWait` that gives up once `give_up()` is true."""
    def set_busy_wait(conn: apsw.Connection, db: DatabaseConfig) -> None:
        handler = _busy_waits[conn] = BusyWait(db.busy_timeout_ms, give_up)
        conn.set_busy_handler(handler)

    return set_busy_wait


@contextmanager
def no_busy_wait(conn: apsw.Connection) -> Iterator[None]:
    """Inside the block a lock held elsewhere is SQLITE_BUSY at once; after it the
    connection waits as it did before."""
    handler = _busy_waits.get(conn)
    timeout_ms = None if handler is not None else int(conn.pragma("busy_timeout"))
    conn.set_busy_timeout(0)
    try:
        yield
    finally:
        if handler is not None:
            conn.set_busy_handler(handler)
        else:
            conn.set_busy_timeout(timeout_ms or 0)


def set_journal_mode(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """WAL lets readers work while the writer writes."""
    mode = conn.pragma("journal_mode", db.journal_mode)
    if str(mode).lower() != db.journal_mode:
        raise DatabaseError(f"cannot set journal_mode={db.journal_mode} (got {mode})",
                            path=db.path)


def set_synchronous(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """NORMAL is durable across application crashes in WAL mode and far cheaper than FULL."""
    conn.pragma("synchronous", db.synchronous)


def set_busy_timeout(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """Wait for other processes' locks instead of failing at once."""
    conn.set_busy_timeout(db.busy_timeout_ms)


def use_immediate_transactions(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """Any `with conn:` also takes the write lock at BEGIN (the engine uses `transaction`)."""
    conn.transaction_mode = "IMMEDIATE"


def disable_autocheckpoint(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """The Writer checkpoints itself; an automatic one stalls a random commit."""
    conn.pragma("wal_autocheckpoint", 0)


def limit_wal_file(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """After a checkpoint resets the WAL, cut the file back to the threshold."""
    conn.pragma("journal_size_limit", int(db.wal_threshold_mb * 1024 * 1024))


def enable_recursive_triggers(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """Else `INSERT OR REPLACE` skips delete triggers and FTS indexes keep stale rows."""
    conn.pragma("recursive_triggers", True)


def enable_foreign_keys(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """Declared references are enforced, not decorative."""
    conn.pragma("foreign_keys", True)


def disable_double_quoted_strings(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """A misspelt "column" must be an error, not a string literal."""
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)


def enable_defensive(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """SQL sent to the engine cannot write FTS5's shadow tables or the raw schema and pages."""
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)


def disable_extension_loading(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """No SQL sent to the engine may load native code into it."""
    conn.enable_load_extension(False)


def refuse_writes(conn: apsw.Connection, db: DatabaseConfig) -> None:
    """Belt and braces on top of the read-only open flag."""
    conn.pragma("query_only", True)


WRITER_SETUP: tuple[Setup, ...] = (
    set_busy_timeout,
    set_journal_mode,
    set_synchronous,
    use_immediate_transactions,
    disable_autocheckpoint,
    limit_wal_file,
    enable_recursive_triggers,
    enable_foreign_keys,
    disable_double_quoted_strings,
    enable_defensive,
    disable_extension_loading,
)

READER_SETUP: tuple[Setup, ...] = (
    set_busy_timeout,
    refuse_writes,
    disable_double_quoted_strings,
)


def _with_busy_wait(setup: tuple[Setup, ...],
                    give_up: Callable[[], bool] | None) -> tuple[Setup, ...]:
    """`setup` with its busy timeout replaced by a `BusyWait` giving up on `give_up()`."""
    if give_up is None:
        return setup
    return tuple(wait_while_busy(give_up) if step is set_busy_timeout else step
                 for step in setup)


def open_writer(db: DatabaseConfig, *,
                give_up: Callable[[], bool] | None = None) -> apsw.Connection:
    """Open the one read-write connection (the Writer actor's), creating the file.

    `give_up()` true (the engine stops) ends any wait for a lock held elsewhere at
    once: the write fails with SQLITE_BUSY, as it would after the busy timeout.
    """
    db.path.parent.mkdir(parents=True, exist_ok=True)
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    return _open(db, flags, _with_busy_wait(WRITER_SETUP, give_up))


def open_scratch(db: DatabaseConfig) -> apsw.Connection:
    """Create a new database at `db.path` and open it read-write; refuses an existing file."""
    if Path(db.path).exists():
        raise DatabaseError(f"{db.path} already exists; a scratch database must be new",
                            path=db.path)
    db.path.parent.mkdir(parents=True, exist_ok=True)
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    return _open(db, flags, WRITER_SETUP)


def open_reader(db: DatabaseConfig, *,
                give_up: Callable[[], bool] | None = None) -> apsw.Connection:
    """Open a read-only connection; the database must exist. `give_up` as for the writer."""
    if not Path(db.path).exists():
        raise DatabaseError(f"database {db.path} does not exist (has the engine run yet?)",
                            path=db.path)
    return _open(db, apsw.SQLITE_OPEN_READONLY, _with_busy_wait(READER_SETUP, give_up))


def open_peek(db: DatabaseConfig) -> apsw.Connection:
    """Open a query-only connection for a command that looks and goes; the file must exist.

    A connection opened read-only on a WAL database leaves the `-wal` and `-shm`
    files it made behind (only a connection that may write checkpoints and removes
    them when it is the last to close). So this one opens read-write without
    create, with `query_only` on, and a command that only looked leaves the folder
    as it found it. A file it may not write is opened read-only instead. Only for
    the engine's own statements: user SQL could turn `query_only` off.
    """
    if not Path(db.path).exists():
        raise DatabaseError(f"database {db.path} does not exist (has the engine run yet?)",
                            path=db.path)
    if not os.access(db.path, os.W_OK) or not os.access(Path(db.path).parent, os.W_OK):
        return _open(db, apsw.SQLITE_OPEN_READONLY, READER_SETUP)
    return _open(db, apsw.SQLITE_OPEN_READWRITE, READER_SETUP)


def _open(db: DatabaseConfig, flags: int, setup: tuple[Setup, ...]) -> apsw.Connection:
    try:
        conn = apsw.Connection(str(db.path), flags=flags)
    except apsw.Error as exc:
        raise DatabaseError(f"cannot open database {db.path}: {exc}", path=db.path) from exc
    try:
        for step in setup:
            step(conn, db)
        # Fails here, not later, when the file is not a database.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except apsw.NotADBError as exc:
        conn.close()
        raise DatabaseError(f"{db.path} is not a SQLite database", path=db.path) from exc
    except apsw.Error as exc:
        conn.close()
        raise DatabaseError(f"cannot set up database {db.path}: {exc}", path=db.path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def new_database_undone_on_error(path: Path) -> Iterator[None]:
    """If the block fails, remove the database file and folders it created.

    A start that fails on bad input (a schema SQLite refuses) must leave
    nothing behind; an existing database is never touched by this. Only what
    the block made goes: the files SQLite makes beside the real file (a
    symbolic link naming a file still to be made is resolved first, and the
    link itself is the user's and stays), each removed only if it was not
    there before and is still the regular file made meanwhile.
    """
    real = Path(os.path.realpath(path))
    created_dirs = []
    folder = real.parent
    while not os.path.lexists(folder):
        created_dirs.append(folder)
        folder = folder.parent
    names = [Path(f"{real}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    before = {name for name in names if os.path.lexists(name)}
    try:
        yield
    except BaseException:
        if real not in before:
            for name in names:
                if name not in before and name.is_file() and not name.is_symlink():
                    name.unlink(missing_ok=True)
            for folder in created_dirs:
                with suppress(OSError):
                    folder.rmdir()
        raise


def file_size(path: str | Path) -> int:
    """Size of a file in bytes; 0 when it does not exist."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def variable_limit(conn: apsw.Connection) -> int:
    """The connection's real limit of bound variables per statement."""
    return int(conn.limit(apsw.SQLITE_LIMIT_VARIABLE_NUMBER, -1))


# The engine's own transaction statements carry a marker: apsw caches prepared
# statements by their text, and a sender's plain "COMMIT" must be prepared
# anew, where the Writer's authorizer refuses it, instead of reusing these.
_BEGIN = "BEGIN IMMEDIATE -- sqlwarden"
_COMMIT = "COMMIT -- sqlwarden"
_ROLLBACK = "ROLLBACK -- sqlwarden"


@contextmanager
def transaction(conn: apsw.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back if the block raises.

    Not apsw's `with conn:`: in apsw 3.54 its BEGIN keeps the GIL while
    SQLite's busy handler sleeps, which froze every thread of the process
    for the whole busy timeout when another process held the write lock
    (seen in tests). Statements run through `execute` release the GIL, and
    a `BusyWait` lets go of it while it sleeps either way.
    """
    conn.execute(_BEGIN)
    try:
        yield
        conn.execute(_COMMIT)
    except BaseException:
        if conn.in_transaction:
            conn.execute(_ROLLBACK)
        raise


@contextmanager
def savepoint(conn: apsw.Connection, name: str = "sw_message") -> Iterator[None]:
    """A nested all-or-nothing step inside the current transaction."""
    conn.execute(f"SAVEPOINT {name} -- sqlwarden")
    try:
        yield
    except BaseException:
        # The statement may have ended the whole transaction (and the savepoint).
        if conn.in_transaction:
            conn.execute(f"ROLLBACK TO {name} -- sqlwarden")
            conn.execute(f"RELEASE {name} -- sqlwarden")
        raise
    conn.execute(f"RELEASE {name} -- sqlwarden")
