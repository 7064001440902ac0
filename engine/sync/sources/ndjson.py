"""The ndjson reader: a directory of `.ndjson`/`.jsonl` files, resumable mid-file.

Files are read in name order, each from the byte the last run read it to
(`_sw_sync_files`, given as `FileState`s). A last line without its newline is
left for the next run while the file is the newest (a writer may still be
appending), and read as it is once a newer file exists. A line longer than
`max_record_mb` is rejected without being held in memory whole.

Only regular files inside the directory are read (see `list_inbox`): the
inbox is written by other programs, so a name in it may be a symlink to
`/proc/self/environ`, a FIFO that never answers or a device. Those are
skipped with a note in the run's history, never opened (`open_entry` opens
without following a link and without blocking, then checks what it got).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlwarden.config import NdjsonSourceConfig
from sqlwarden.protocol import FilePosition, Reject, TableRows
from sqlwarden.sync.sources.base import Backlog, Prepared, SourceError
from sqlwarden.sync.sources.mapping import RAW_KEEP, Mapper, RecordRejected, raw_text
from sqlwarden.views import Row

#: File names an ndjson source reads.
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
#: Bytes read from a file at a time.
READ_BLOCK = 1 << 20
#: Bytes sampled to estimate the records in a file backlog.
SAMPLE_BYTES = 256 * 1024


def _reject_constant(name: str) -> float:
    """The decoder's `parse_constant`: NaN and Infinity are Python's, not JSON's."""
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True, slots=True)
class FileState:
    """What `_sw_sync_files` says of one file."""

    position: int
    size: int
    done: bool


#: Skipped entries a run's note names one by one; past that it gives their count.
NOTED_SKIPS = 5

#: Opened without following a final symlink and without waiting for a FIFO's writer.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Skipped(Exception):
    """An inbox entry that is not read: `why` says what it is."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True, slots=True)
class InboxFile:
    """A file the source reads: its name in the inbox, the name opened, its size."""

    name: str
    #: The entry opened: `name`, or for a symlink to a sibling, the sibling's name.
    target: str
    size: int


@dataclass(frozen=True, slots=True)
class InboxListing:
    """What a listing of the inbox found: files to read and entries skipped (name, why)."""

    files: list[InboxFile]
    skipped: list[tuple[str, str]]


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return word
    return "of an unknown kind"


def _not_regular(mode: int) -> str:
    return f"not a regular file ({_kind(mode)})"


#: Characters a name must not hold: controls (a newline, an escape), format characters
#: (a right-to-left override), line and paragraph separators, and lone surrogates (bytes
#: that are not UTF-8).
_UNSHOWABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _showable(name: str) -> bool:
    return not any(unicodedata.category(c) in _UNSHOWABLE for c in name)


def shown_name(name: str) -> str:
    """`name` as it can be printed on one line: control and undecodable characters escaped."""
    return name if _showable(name) else ascii(name)[1:-1]


def _is_ndjson(name: str) -> bool:
    return name.endswith(NDJSON_SUFFIXES) and not name.startswith(".")


def list_inbox(directory: Path) -> InboxListing:
    """The files an ndjson source reads, in name order, and the entries it skips.

    Read: regular files, and a symlink to a regular file in the same directory
    whose name is not itself read (`data.ndjson -> data.current`; a link to a
    file read anyway would read its records twice). Skipped: everything else
    with the suffix, that is a symlink leaving the directory (or into a folder
    of it), a dangling or looping symlink, a FIFO, a socket, a device, a
    folder, and a name that is not printable UTF-8 (it would be stored and
    shown as the file's name). Nothing is opened here; `lstat` only.
    """
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        raise SourceError(f"the directory {directory} does not exist",
                          failure="fatal") from None
    except OSError as exc:
        raise SourceError(f"cannot list {directory}: {exc}") from None
    names = {e.name for e in entries if _is_ndjson(e.name)}
    real_dir = os.path.realpath(directory)
    files: list[InboxFile] = []
    skipped: list[tuple[str, str]] = []
    for entry in entries:
        name = entry.name
        if not _is_ndjson(name):
            continue
        try:
            name.encode("utf-8")
            if not _showable(name):
                raise Skipped("its name holds control characters; rename it")
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                files.append(InboxFile(name, name, info.st_size))
            elif stat.S_ISLNK(info.st_mode):
                files.append(_linked(directory, real_dir, name, names))
            else:
                raise Skipped(_not_regular(info.st_mode))
        except UnicodeEncodeError:
            skipped.append((name, "its name is not UTF-8; rename it"))
        except Skipped as skip:
            skipped.append((name, skip.why))
        except FileNotFoundError:
            continue  # removed since the listing: nothing to read
        except OSError as exc:
            skipped.append((name, f"cannot look at it: {exc.strerror or exc}"))
    return InboxListing(files, skipped)


def _linked(directory: Path, real_dir: str, name: str, names: set[str]) -> InboxFile:
    """The file a symlink in the inbox stands for; raises `Skipped` unless it is a
    regular file in the same directory that is not read under its own name."""
    real = os.path.realpath(directory / name)
    if real == real_dir:
        raise Skipped("a symlink to the inbox itself")
    if real.startswith(real_dir + os.sep) and os.path.dirname(real) != real_dir:
        raise Skipped("a symlink into a folder of the inbox (only files beside it are read)")
    if os.path.dirname(real) != real_dir:
        raise Skipped("a symlink leaving the inbox")
    target = os.path.basename(real)
    try:
        info = os.stat(real, follow_symlinks=False)
    except FileNotFoundError:
        raise Skipped("a dangling symlink") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Skipped("a symlink loop") from None
        raise
    if stat.S_ISLNK(info.st_mode):
        raise Skipped("a symlink loop")  # realpath stops where it meets a loop
    if not stat.S_ISREG(info.st_mode):
        raise Skipped(f"a symlink to something that is {_not_regular(info.st_mode)}")
    if target in names:
        raise Skipped(f"another name for {shown_name(target)}, which is read as itself")
    return InboxFile(name, target, info.st_size)


def open_entry(directory: Path, entry: InboxFile) -> BinaryIO:
    """`entry` opened for reading; raises `Skipped` if it is no longer a regular file.

    Opened relative to the directory, without following a symlink and with
    O_NONBLOCK (a FIFO put there since the listing cannot block the run), and
    checked with `fstat` on what was opened, so a swap after the listing
    cannot make the run read something else.
    """
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(f"cannot open {directory}: {exc.strerror or exc}") from None
    try:
        fd = os.open(entry.target, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Skipped("removed since the directory was listed") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Skipped("it became a symlink after the directory was listed") from None
        raise Skipped(f"cannot open it: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Skipped(f"{_not_regular(mode)} when opened")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def ndjson_files(directory: Path) -> list[Path]:
    """The files an ndjson source reads, in name order (entries skipped are left out)."""
    return [directory / f.name for f in list_inbox(directory).files]


def skip_note(directory: Path, skipped: list[tuple[str, str]]) -> str | None:
    """One line naming the skipped entries (at most `NOTED_SKIPS` of them by name)."""
    if not skipped:
        return None
    folder = shown_name(directory.name)
    parts = [f"skipped {folder}/{shown_name(name)}: {why}" for name, why in
             skipped[:NOTED_SKIPS]]
    if len(skipped) > NOTED_SKIPS:
        parts.append(f"and {len(skipped) - NOTED_SKIPS:,} more entries of {folder} skipped")
    return "; ".join(parts)


class NdjsonReader:
    """Reads new lines of every file in the directory, resuming where the last run stopped."""

    def __init__(self, source: NdjsonSourceConfig, states: dict[str, FileState]) -> None:
        self.source = source
        self.states = states
        self.mapper = Mapper(source.fields)
        self.max_bytes = int(source.max_record_mb * 1024 * 1024)
        self.note: str | None = None
        self._decoder = json.JSONDecoder(parse_constant=_reject_constant)
        #: The newest file of the directory that is read, as of the last listing.
        self._newest: str | None = None
        #: Entries skipped in this run (name: why), noted once each in the run's note.
        self._skipped: dict[str, str] = {}
        #: Why the run left a last line for the next one, if it did.
        self._waiting: str | None = None

    def _skip(self, name: str, why: str) -> None:
        self._skipped.setdefault(name, why)
        self._renote()

    def _renote(self) -> None:
        skipped = skip_note(self.source.path, list(self._skipped.items()))
        self.note = "; ".join(n for n in (self._waiting, skipped) if n) or None

    def _pending(self) -> list[tuple[InboxFile, int, int]]:
        """(file, position, size) of every file with bytes not yet read."""
        pending = []
        listing = list_inbox(self.source.path)
        for name, why in listing.skipped:
            self._skip(name, why)
        listed = listing.files
        self._newest = listed[-1].name if listed else None
        for entry in listed:
            state = self.states.get(entry.name)
            position = state.position if state is not None else 0
            size = entry.size
            if size < position:
                raise SourceError(f"{shown_name(entry.name)} shrank to {size:,} bytes but "
                                  f"{position:,} bytes of it were read already; a file must "
                                  "only grow (move a replaced file aside under a new name)",
                                  failure="fatal")
            if size > position or state is None:
                pending.append((entry, position, size))
        return pending

    def backlog(self) -> Backlog:
        pending = self._pending()
        total = sum(size - position for _, position, size in pending)
        if not total:
            return Backlog(0, "no new bytes")
        # Records per byte from a sample where reading starts.
        entry, position, size = next(p for p in pending if p[2] > p[1])
        try:
            with open_entry(self.source.path, entry) as f:
                f.seek(position)
                sample = f.read(min(SAMPLE_BYTES, size - position))
        except Skipped as skip:
            self._skip(entry.name, skip.why)
            sample = b""  # the estimate falls back to a record per byte
        lines = max(1, sample.count(b"\n"))
        rows = math.ceil(total * lines / max(1, len(sample)))
        return Backlog(rows, f"{total:,} new bytes in {len(pending)} file(s), about "
                             f"{rows:,} records")

    def batches(self) -> Iterator[Prepared]:
        """Batches of at most `batch_rows` rows; each carries the positions it reached."""
        limit = self.source.batch_rows
        pending = self._pending()
        batch = Prepared()
        rows: list[Row] = []
        # The byte offset of each row's line, for a reject if the database refuses it.
        offsets: list[int] = []
        for entry, start, size in pending:
            name = entry.name
            try:
                opened = open_entry(self.source.path, entry)
            except Skipped as skip:
                # Swapped for something else since the listing: left for the next run.
                self._skip(name, skip.why)
                continue
            # Newest in the directory, not among the files with new bytes: an older
            # file's last line is as complete as it will be even if the newer ones
            # have nothing new.
            newest = name == self._newest
            position = start
            with opened as f:
                f.seek(start)
                for kind, data, offset, end, length in self._blocks(f, start, newest, name):
                    if kind == "toolong":
                        self._too_long(data, length, offset, name, batch)
                        position = end
                    elif kind == "last":
                        self._line(data, offset, name, rows, offsets, batch, incomplete=True)
                        position = end
                    else:
                        at = 0
                        while at < len(data):
                            at = self._lines(data, at, offset, name, rows, offsets, batch,
                                             limit)
                            position = offset + at
                            if len(rows) >= limit or len(batch.rejects) >= limit:
                                self._close(batch, rows, offsets, name, start, position, size,
                                            False)
                                yield batch
                                batch, rows, offsets, start = Prepared(), [], [], position
                    if len(batch.rejects) >= limit:
                        self._close(batch, rows, offsets, name, start, position, size, False)
                        yield batch
                        batch, rows, offsets, start = Prepared(), [], [], position
            self._close(batch, rows, offsets, name, start, position, size, position == size)
            rows, offsets = [], []
        if batch.files:
            yield batch

    def _too_long(self, head: bytes, length: int, offset: int, name: str,
                  batch: Prepared) -> None:
        """Reject a line of `length` bytes past `max_record_mb`; `head` is its start."""
        batch.rejects.append(Reject(
            position=f"{name}:{offset}",
            reason=(f"the record is longer than max_record_mb "
                    f"({self.source.max_record_mb:g} MB): {length:,} bytes"),
            raw=raw_text(head, length)))

    def _close(self, batch: Prepared, rows: list[Row], offsets: list[int], name: str,
               start: int, end: int, size: int, done: bool) -> None:
        """Add what was read of one file to `batch`: its rows and its new position."""
        if rows:
            batch.tables.append(TableRows(table=self.source.table, columns=self.mapper.columns,
                                          key=self.source.key, rows=tuple(rows),
                                          origin=f"{name}:", offsets=tuple(offsets)))
        batch.files.append(FilePosition(file=name, start=start, end=end, size=size, done=done))

    def _blocks(self, f: Any, position: int, newest: bool,
                name: str) -> Iterator[tuple[str, bytes, int, int, int]]:
        """(kind, data, offset, end, length) from the file: `lines` blocks of whole
        lines, `toolong` for a line past `max_record_mb` (data is its start, at most
        `RAW_KEEP` bytes; length is the whole line's, without its newline), `last`
        for a final line without a newline that is not waited on."""
        carry = b""  # the line being read (only its head, past the limit)
        line_at = position  # file offset of the line being read
        line_len = 0
        skipping = False  # inside an over-long line, looking for its end
        while block := f.read(READ_BLOCK):
            if skipping:
                cut = block.find(b"\n")
                if cut < 0:
                    line_len += len(block)
                    continue
                line_len += cut
                yield "toolong", carry, line_at, line_at + line_len + 1, line_len
                line_at += line_len + 1
                carry, line_len, skipping = b"", 0, False
                block = block[cut + 1:]
                if not block:
                    continue
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield "lines", data[:cut], line_at, line_at + cut, cut
                line_at += cut
                carry = data[cut:]
            else:
                carry = data
            line_len = len(carry)
            if line_len > self.max_bytes:
                skipping, carry = True, carry[:RAW_KEEP]
        if not (carry or skipping):
            return
        if newest:
            self._waiting = (f"waiting on an incomplete last line in {shown_name(name)} "
                             f"({line_len:,} bytes at byte {line_at:,})")
            self._renote()
        elif skipping:
            yield "toolong", carry, line_at, line_at + line_len, line_len
        else:
            # A newer file exists: this line is as complete as it will be.
            yield "last", carry, line_at, line_at + line_len, line_len

    def _lines(self, data: bytes, at: int, offset: int, name: str, rows: list[Row],
               offsets: list[int], batch: Prepared, limit: int) -> int:
        """Parse lines of `data` (file offset `offset`) from index `at` until `rows`
        holds `limit` rows; returns the index after the last line parsed."""
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            return self._lines_slowly(data, at, offset, name, rows, offsets, batch, limit)
        # ASCII: character and byte offsets agree, and one decode serves every line.
        scan = self._decoder.scan_once  # type: ignore[attr-defined]
        row_of = self.mapper.row
        append = rows.append
        mark = offsets.append
        find = text.find
        max_bytes = self.max_bytes
        end_of_block = len(text)
        while at < end_of_block and len(rows) < limit:
            newline = find("\n", at)
            if newline - at > max_bytes:
                self._too_long(data[at:at + RAW_KEEP], newline - at, offset + at, name, batch)
                at = newline + 1
                continue
            try:
                record, end = scan(text, at)
                if end != newline and text[end:newline].strip():
                    raise ValueError("extra data after the record")
                append(row_of(record))
                mark(offset + at)
            except (StopIteration, ValueError, RecordRejected, RecursionError) as exc:
                line = data[at:newline]
                if line.strip():
                    self._reject_line(line, offset + at, name, rows, offsets, batch, exc)
            at = newline + 1
        return at

    def _lines_slowly(self, data: bytes, at: int, offset: int, name: str, rows: list[Row],
                      offsets: list[int], batch: Prepared, limit: int) -> int:
        while at < len(data) and len(rows) < limit:
            newline = data.index(b"\n", at)
            if newline - at > self.max_bytes:
                self._too_long(data[at:at + RAW_KEEP], newline - at, offset + at, name, batch)
            else:
                self._line(data[at:newline], offset + at, name, rows, offsets, batch)
            at = newline + 1
        return at

    def _line(self, line: bytes, offset: int, name: str, rows: list[Row], offsets: list[int],
              batch: Prepared, *, incomplete: bool = False) -> None:
        if not line.strip():
            return
        try:
            text = line.decode("utf-8")
            record = self._decoder.decode(text)
            rows.append(self.mapper.row(record))
            offsets.append(offset)
        except (ValueError, RecordRejected, RecursionError) as exc:
            self._reject_line(line, offset, name, rows, offsets, batch, exc,
                              incomplete=incomplete)

    def _reject_line(self, line: bytes, offset: int, name: str, rows: list[Row],
                     offsets: list[int], batch: Prepared, exc: BaseException, *,
                     incomplete: bool = False) -> None:
        if not isinstance(exc, RecordRejected):
            # Parse again for the decoder's own message (the fast path's may be terse).
            try:
                record = self._decoder.decode(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                exc = RecordRejected(f"not UTF-8 text ({err.reason} at byte {err.start})")
            except ValueError as err:
                exc = RecordRejected(f"not valid JSON: {err}")
            except RecursionError:
                # The decoder recurses once per level; the line is refused, not the reader.
                exc = RecordRejected("not readable JSON: it is nested too deeply to parse")
            else:
                try:
                    rows.append(self.mapper.row(record))
                    offsets.append(offset)
                    return
                except RecordRejected as err:
                    exc = err
        reason = str(exc)
        if incomplete:
            reason = f"the last line of a file that has no newline: {reason}"
        batch.rejects.append(Reject(position=f"{name}:{offset}", reason=reason,
                                    raw=raw_text(line)))
