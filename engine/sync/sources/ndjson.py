"""The ndjson reader: a directory of `.ndjson`/`.jsonl` files, resumable mid-file.

Files are read in name order, each from the byte the last run read it to
(`_sw_sync_files`, given as `FileState`s). A last line without its newline is
left for the next run while the file is the newest (a writer may still be
appending), and read as it is once a newer file exists. A line longer than
`max_record_mb` is rejected without being held in memory whole.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def ndjson_files(directory: Path) -> list[Path]:
    """The files an ndjson source reads, in name order."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        raise SourceError(f"the directory {directory} does not exist",
                          failure="fatal") from None
    except OSError as exc:
        raise SourceError(f"cannot list {directory}: {exc}") from None
    return [Path(e.path) for e in entries
            if e.name.endswith(NDJSON_SUFFIXES) and not e.name.startswith(".")
            and e.is_file()]


class NdjsonReader:
    """Reads new lines of every file in the directory, resuming where the last run stopped."""

    def __init__(self, source: NdjsonSourceConfig, states: dict[str, FileState]) -> None:
        self.source = source
        self.states = states
        self.mapper = Mapper(source.fields)
        self.max_bytes = int(source.max_record_mb * 1024 * 1024)
        self.note: str | None = None
        self._decoder = json.JSONDecoder(parse_constant=_reject_constant)
        #: The newest file of the directory (read or not), as of the last listing.
        self._newest: str | None = None

    def _pending(self) -> list[tuple[Path, int, int]]:
        """(file, position, size) of every file with bytes not yet read."""
        pending = []
        listed = ndjson_files(self.source.path)
        self._newest = listed[-1].name if listed else None
        for path in listed:
            state = self.states.get(path.name)
            position = state.position if state is not None else 0
            size = path.stat().st_size
            if size < position:
                raise SourceError(f"{path.name} shrank to {size:,} bytes but {position:,} bytes "
                                  "of it were read already; a file must only grow (move a "
                                  "replaced file aside under a new name)", failure="fatal")
            if size > position or state is None:
                pending.append((path, position, size))
        return pending

    def backlog(self) -> Backlog:
        pending = self._pending()
        total = sum(size - position for _, position, size in pending)
        if not total:
            return Backlog(0, "no new bytes")
        # Records per byte from a sample where reading starts.
        path, position, size = next(p for p in pending if p[2] > p[1])
        with path.open("rb") as f:
            f.seek(position)
            sample = f.read(min(SAMPLE_BYTES, size - position))
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
        for path, start, size in pending:
            name = path.name
            # Newest in the directory, not among the files with new bytes: an older
            # file's last line is as complete as it will be even if the newer ones
            # have nothing new.
            newest = name == self._newest
            position = start
            with path.open("rb") as f:
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
            self.note = (f"waiting on an incomplete last line in {name} ({line_len:,} bytes at "
                         f"byte {line_at:,})")
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
