"""What every reader shares: the batch it yields, its backlog, and how a run fails.

A reader is plain code that runs on a run's own thread (see `sqlwarden.sync`).
It says how large its backlog is, then yields `Prepared` batches: rows per
table, the records it rejected and, for files, how far each file is read.
Nothing here writes to the database; the Writer applies each batch in one
transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sqlwarden.protocol import FilePosition, Reject, TableRows


class SourceError(Exception):
    """A run cannot go on; `failure` says whether retrying can help.

    `retry`: worth retrying (a network error, a 5xx, a malformed page).
    `rate_limited`: the upstream asked us to wait (`retry_after_s`); no retries.
    `fatal`: retrying cannot help (a 404, a file that shrank, a rejected record
    under `on_reject: fail`); the next scheduled run tries again.
    """

    def __init__(self, message: str, *, failure: str = "retry",
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.failure = failure
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class Prepared:
    """One batch, ready to send: rows per table, rejects and file positions."""

    tables: list[TableRows] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    files: list[FilePosition] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(t.rows) for t in self.tables)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a run has before it: records (estimated from bytes for files), if known."""

    rows: int | None
    detail: str


class Reader(Protocol):
    """A run's source of batches (`NdjsonReader`, `HttpReader`, `GeneratorReader`)."""

    #: A remark on how the run ended (say, a last line left for the next run), shown with it.
    note: str | None

    def backlog(self) -> Backlog:
        """What the run has before it; called once, before `batches`."""
        ...

    def batches(self) -> Iterator[Prepared]:
        """The run's batches, in the order they must be applied."""
        ...
