"""Every message actors exchange, as frozen dataclasses with stable dotted kinds.

Kinds are what the message log records and what the replay tool reads, so a
kind is never renamed; messages evolve by adding fields with defaults. Fields
hold tuples and other immutable values, never lists or dicts, so a message can
be read from another thread (the message log's) after it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

#: SQLite values as bound parameters.
SqlValue = None | int | float | str | bytes
Row = tuple[SqlValue, ...]

_KINDS: dict[str, type[Message]] = {}


class Message:
    """Base of all messages; subclasses set a unique dotted `kind`."""

    __slots__ = ()
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if not kind or "." not in kind:
            raise TypeError(f"{cls.__name__} needs a dotted kind such as 'writer.execute'")
        if kind in _KINDS and _KINDS[kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"message kind {kind!r} is already used by {_KINDS[kind].__name__}")
        _KINDS[kind] = cls


def message_kinds() -> dict[str, type[Message]]:
    """All registered message kinds."""
    return dict(_KINDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """One SQL statement and its bound parameters (a value, not a message)."""

    sql: str
    params: Row = ()


# --- Writer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute(Message):
    """Run one statement in its own transaction (or a group commit)."""

    kind: ClassVar[str] = "writer.execute"
    sql: str
    params: Row = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteBatch(Message):
    """Run several statements; all of them commit or none does."""

    kind: ClassVar[str] = "writer.batch"
    statements: tuple[Statement, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class InsertRows(Message):
    """Insert rows into a declared table with multi-row statements."""

    kind: ClassVar[str] = "writer.insert_rows"
    table: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UpsertRows(Message):
    """Insert rows, updating the non-key columns of rows whose key exists."""

    kind: ClassVar[str] = "writer.upsert_rows"
    table: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(Message):
    """Run a WAL checkpoint now: `passive`, `full`, `restart` or `truncate`."""

    kind: ClassVar[str] = "writer.checkpoint"
    mode: str = "passive"


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStatus(Message):
    """Ask the Writer for its counters and WAL state."""

    kind: ClassVar[str] = "writer.status"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleCheck(Message):
    """Sent by the Writer's idle timer: checkpoint if no write came meanwhile."""

    kind: ClassVar[str] = "writer.idle_check"


#: Messages the Writer may commit together in one transaction.
FOREGROUND_WRITES = (Execute, ExecuteBatch, InsertRows, UpsertRows)


# --- replies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteResult:
    """What a write changed; returned once it is committed."""

    changes: int
    last_rowid: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointResult:
    """The outcome of a checkpoint; `busy` when readers kept it from finishing."""

    mode: str
    wal_frames: int
    checkpointed_frames: int
    wal_file_bytes: int
    busy: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterState:
    """The Writer's counters, for status and for tests that count."""

    messages: int
    transactions: int
    rows_written: int
    failed_messages: int
    wal_frames: int
    wal_file_bytes: int
    wal_threshold_bytes: int
    checkpoints: int
    forced_checkpoints: int
    busy_checkpoints: int
    page_size: int
    variable_limit: int
