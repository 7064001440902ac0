"""Every error the engine raises on purpose descends from `EngineError`.

Only the CLI turns these into exit codes and one-line messages; everything
else raises them with structured fields so callers can decide.
"""

from __future__ import annotations

from pathlib import Path


class EngineError(Exception):
    """Root of the engine's errors."""

    #: Trying the same thing again later may succeed.
    retryable: bool = False
    #: The user's input (config, arguments, records) is at fault, not the engine.
    user_error: bool = False
    #: For a transient fault, what it waits for, in status's words ("disk full",
    #: "database locked by another process"; see `sqlwarden.db.faults`).
    waiting_for: str | None = None


class ConfigError(EngineError):
    """The configuration is invalid; names the file, line and key path."""

    user_error = True

    def __init__(
        self, message: str, *, file: Path | str | None = None, line: int | None = None,
        path: str = "",
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.path = path
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            where += f": {self.path}"
        return f"{where}: {self.message}"


class SchemaError(EngineError):
    """The declared schema cannot be applied safely to the existing database."""

    user_error = True

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None):
        self.table = table
        self.column = column
        super().__init__(message)


class DatabaseError(EngineError):
    """The database file cannot be opened or is not usable."""

    user_error = True

    def __init__(self, message: str, *, path: Path | str | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(message)


class ServiceError(EngineError):
    """A service the engine runs cannot start (the status port is taken, say)."""

    user_error = True


class WriteError(EngineError):
    """A write message failed; nothing it asked for was committed."""

    def __init__(
        self, message: str, *, message_kind: str, sqlite_error: str | None = None,
        retryable: bool = False, waiting_for: str | None = None,
    ) -> None:
        self.message_kind = message_kind
        self.sqlite_error = sqlite_error
        self.retryable = retryable or waiting_for is not None
        self.waiting_for = waiting_for
        super().__init__(message)


class BadRowError(WriteError):
    """A row handed to a bulk write has the wrong shape."""

    user_error = True

    def __init__(self, message: str, *, message_kind: str, row_index: int) -> None:
        self.row_index = row_index
        super().__init__(message, message_kind=message_kind)


class UnexpectedMessage(EngineError):
    """An actor received a message kind it does not handle."""

    def __init__(self, actor: str, message: object) -> None:
        self.actor = actor
        self.kind = getattr(message, "kind", type(message).__name__)
        super().__init__(f"{actor} does not handle {self.kind!r}")


class EngineStopped(EngineError):
    """The engine (or the actor a message was meant for) is not running."""

    retryable = True

    def __init__(self, receiver: str) -> None:
        self.receiver = receiver
        super().__init__(f"{receiver} is not running")


class TaskError(EngineError):
    """A chunked task cannot run or a chunk of it failed; the task is marked failed."""

    def __init__(self, message: str, *, task: str) -> None:
        self.task = task
        super().__init__(message)


class UnknownTask(TaskError):
    """A control or wait named a task that is not declared."""

    user_error = True


class TaskConflict(TaskError):
    """A control action does not apply to the task's state (pausing a done task, say)."""

    user_error = True


class FtsError(EngineError):
    """An FTS deferral or restore that cannot be done, or an unknown FTS table."""


class NotReady(EngineError):
    """A read requires a task that is not done yet, or an FTS index that is stale;
    answering would give partial data."""

    retryable = True

    def __init__(self, name: str, processed: int, total: int | None, *,
                 status: str = "pending", detail: str | None = None) -> None:
        self.name = name
        self.processed = processed
        self.total = total
        self.status = status
        of = f" of {total:,}" if total is not None else ""
        super().__init__(f"{name} is not ready: {status}, "
                         f"{detail if detail is not None else f'{processed:,}{of} rows done'}")


class SyncError(EngineError):
    """A source run cannot go on, or a batch of it was refused."""

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        super().__init__(message)


class UnknownSource(SyncError):
    """A request named a source that is not declared."""

    user_error = True


class SyncBusy(SyncError):
    """A run was asked for while the source runs already, without joining it."""

    user_error = True


class MirrorError(EngineError):
    """The MySQL mirror failed: the server refused, went away, or its data does not fit.

    `retryable` errors (the server is unreachable, restarting or busy) are
    retried with backoff; the others stop the mirror until it is asked again.
    """

    def __init__(self, message: str, *, errno: int | None = None, retryable: bool = False,
                 table: str | None = None) -> None:
        self.errno = errno
        self.retryable = retryable
        self.table = table
        super().__init__(message)


class MirrorUnavailable(MirrorError):
    """A reconcile was asked for while the mirror cannot reach its server."""


class ReplayError(EngineError):
    """A message log that cannot be read as asked (missing file, bad filter value)."""

    user_error = True
