"""Reading sources: records in, mapped rows and rejects out, one batch at a time.

A reader is plain code that runs on a run's own thread (see `engine.sync`).
It says how large its backlog is, then yields `Prepared` batches: rows per
table, the records it rejected and, for files, how far each file is read.
Nothing here writes to the database; the Writer applies each batch in one
transaction.

- `NdjsonReader`: a directory of `.ndjson`/`.jsonl` files in name order,
  from the byte each file was read to. A last line without its newline is
  left for the next run while the file is the newest (a writer may still
  be appending), and read as it is once a newer file exists.
- `HttpReader`: a paginated JSON API asked for records changed `since` the
  cursor (inclusive), by page numbers or by following a next-page link.
- `GeneratorReader`: the demo's deterministic rows.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import operator
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlwarden.config import (
    GENERATOR_COLUMNS,
    FieldMap,
    GeneratorSourceConfig,
    HttpSourceConfig,
    NdjsonSourceConfig,
)
from sqlwarden.protocol import FilePosition, Reject, TableRows
from sqlwarden.sync.sources.demo import DemoGenerator
from sqlwarden.views import Row

#: File names an ndjson source reads.
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
#: Bytes read from a file at a time.
READ_BLOCK = 1 << 20
#: Raw text kept of a rejected record.
RAW_KEEP = 64 * 1024
#: Bytes sampled to estimate the records in a file backlog.
SAMPLE_BYTES = 256 * 1024
_INTEGER = re.compile(r"[+-]?\d+")
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?")
_STAMP = _TIMESTAMP.fullmatch


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


# --- mapping ----------------------------------------------------------------------------


class RecordRejected(ValueError):
    """A record that cannot become a row, with the reason."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _to_integer(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is float and value.is_integer():
        return int(value)
    if kind is str and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise ValueError("expected an integer")


def _to_real(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        result = float(value)
    elif kind is str:
        try:
            result = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    else:
        raise ValueError("expected a number")
    if not math.isfinite(result):
        raise ValueError("expected a finite number")
    return result


def _to_text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is int or kind is float:
        return str(value)
    raise ValueError("expected text")


def _to_boolean(value: Any) -> int:
    if type(value) is bool:
        return int(value)
    if type(value) is int and value in (0, 1):
        return int(value)
    if type(value) is str and value.lower() in ("true", "false", "0", "1"):
        return int(value.lower() in ("true", "1"))
    raise ValueError("expected true or false")


def _to_timestamp(value: Any) -> str:
    kind = type(value)
    if kind is str and _TIMESTAMP.fullmatch(value):
        return str(value)
    if (kind is int or kind is float) and math.isfinite(value):
        moment = datetime.fromtimestamp(value, tz=UTC)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if moment.microsecond:
            text += f".{moment.microsecond:06d}"
        return text + "Z"
    raise ValueError("expected an ISO-8601 timestamp or Unix seconds")


def _to_blob(value: Any) -> bytes:
    if type(value) is str:
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise ValueError("expected base64 text")


def _to_any(value: Any) -> Any:
    if type(value) is bool:
        return int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "integer": _to_integer, "real": _to_real, "text": _to_text, "boolean": _to_boolean,
    "timestamp": _to_timestamp, "blob": _to_blob, "any": _to_any}
#: Python types that go into a column unchanged (a fast path; anything else is converted).
_EXACT = {"integer": int, "real": float, "text": str, "timestamp": str}


class Mapper:
    """Turns a record (a JSON object) into a row of the source's columns, or rejects it."""

    def __init__(self, fields: tuple[FieldMap, ...]) -> None:
        self.fields = fields
        self.columns = tuple(f.column for f in fields)
        self._converters = [CONVERTERS[f.type] for f in fields]
        # Fast path: flat fields whose values come with the exact type the column
        # takes are taken as they are, in one C-level getter call.
        flat = all(len(f.path) == 1 for f in fields)
        exact = [_EXACT.get(f.type) for f in fields]
        self._fast: Callable[[dict[str, Any]], Any] | None = None
        if flat and all(exact) and fields:
            self._fast = operator.itemgetter(*(f.path[0] for f in fields))
            self._exact = tuple(exact)
            self._single = len(fields) == 1
            self._stamps = [i for i, f in enumerate(fields) if f.type == "timestamp"]

    def row(self, record: Any) -> Row:
        """The row for `record`; raises `RecordRejected` with the reason."""
        if type(record) is not dict:
            raise RecordRejected("the record is not a JSON object")
        if self._fast is not None:
            try:
                values = self._fast(record)
            except KeyError:
                return self._slow(record)
            if self._single:
                values = (values,)
            if tuple(map(type, values)) == self._exact:
                stamps = self._stamps
                if not stamps:
                    return values
                if len(stamps) == 1:
                    if _STAMP(values[stamps[0]]) is not None:
                        return values
                elif all(_STAMP(values[i]) is not None for i in stamps):
                    return values
        return self._slow(record)

    def _slow(self, record: dict[str, Any]) -> Row:
        row = []
        for spec, convert in zip(self.fields, self._converters, strict=True):
            value: Any = record
            for key in spec.path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                if spec.required:
                    raise RecordRejected(f"field {'.'.join(spec.path)!r} (column "
                                         f"{spec.column}) is missing")
                row.append(spec.default)
                continue
            try:
                row.append(convert(value))
            except ValueError as exc:
                raise RecordRejected(f"field {'.'.join(spec.path)!r} (column {spec.column}): "
                                     f"{exc}, got {_shown(value)}") from None
        return tuple(row)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def raw_text(raw: bytes | str, length: int | None = None) -> str:
    """A rejected record as text, cut to `RAW_KEEP` bytes with a note saying so.

    `length` is the whole record's size when `raw` is only its start.
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    length = len(data) if length is None else length
    keep = data[:RAW_KEEP].decode("utf-8", "replace")
    if length > RAW_KEEP:
        keep += f"...[{length:,} bytes in all; the first {RAW_KEEP:,} kept]"
    return keep


# --- ndjson -----------------------------------------------------------------------------


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
                        self._line(data, offset, name, rows, batch, incomplete=True)
                        position = end
                    else:
                        at = 0
                        while at < len(data):
                            at = self._lines(data, at, offset, name, rows, batch, limit)
                            position = offset + at
                            if len(rows) >= limit or len(batch.rejects) >= limit:
                                self._close(batch, rows, name, start, position, size, False)
                                yield batch
                                batch, rows, start = Prepared(), [], position
                    if len(batch.rejects) >= limit:
                        self._close(batch, rows, name, start, position, size, False)
                        yield batch
                        batch, rows, start = Prepared(), [], position
            self._close(batch, rows, name, start, position, size, position == size)
            rows = []
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

    def _close(self, batch: Prepared, rows: list[Row], name: str, start: int, end: int,
               size: int, done: bool) -> None:
        """Add what was read of one file to `batch`: its rows and its new position."""
        if rows:
            batch.tables.append(TableRows(table=self.source.table, columns=self.mapper.columns,
                                          key=self.source.key, rows=tuple(rows)))
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
               batch: Prepared, limit: int) -> int:
        """Parse lines of `data` (file offset `offset`) from index `at` until `rows`
        holds `limit` rows; returns the index after the last line parsed."""
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            return self._lines_slowly(data, at, offset, name, rows, batch, limit)
        # ASCII: character and byte offsets agree, and one decode serves every line.
        scan = self._decoder.scan_once  # type: ignore[attr-defined]
        row_of = self.mapper.row
        append = rows.append
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
            except (StopIteration, ValueError, RecordRejected) as exc:
                line = data[at:newline]
                if line.strip():
                    self._reject_line(line, offset + at, name, rows, batch, exc)
            at = newline + 1
        return at

    def _lines_slowly(self, data: bytes, at: int, offset: int, name: str, rows: list[Row],
                      batch: Prepared, limit: int) -> int:
        while at < len(data) and len(rows) < limit:
            newline = data.index(b"\n", at)
            if newline - at > self.max_bytes:
                self._too_long(data[at:at + RAW_KEEP], newline - at, offset + at, name, batch)
            else:
                self._line(data[at:newline], offset + at, name, rows, batch)
            at = newline + 1
        return at

    def _line(self, line: bytes, offset: int, name: str, rows: list[Row], batch: Prepared,
              *, incomplete: bool = False) -> None:
        if not line.strip():
            return
        try:
            text = line.decode("utf-8")
            record = self._decoder.decode(text)
            rows.append(self.mapper.row(record))
        except (ValueError, RecordRejected) as exc:
            self._reject_line(line, offset, name, rows, batch, exc, incomplete=incomplete)

    def _reject_line(self, line: bytes, offset: int, name: str, rows: list[Row],
                     batch: Prepared, exc: BaseException, *, incomplete: bool = False) -> None:
        if not isinstance(exc, RecordRejected):
            # Parse again for the decoder's own message (the fast path's may be terse).
            try:
                record = self._decoder.decode(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                exc = RecordRejected(f"not UTF-8 text ({err.reason} at byte {err.start})")
            except ValueError as err:
                exc = RecordRejected(f"not valid JSON: {err}")
            else:
                try:
                    rows.append(self.mapper.row(record))
                    return
                except RecordRejected as err:
                    exc = err
        reason = str(exc)
        if incomplete:
            reason = f"the last line of a file that has no newline: {reason}"
        batch.rejects.append(Reject(position=f"{name}:{offset}", reason=reason,
                                    raw=raw_text(line)))


# --- http -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]


def fetch(url: str, headers: tuple[tuple[str, str], ...], timeout_s: float) -> Response:
    """GET `url`; an HTTP error status is returned, a network failure raises `SourceError`."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", **dict(headers)})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return Response(reply.status, reply.read(), dict(reply.headers.items()))
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return Response(exc.code, body, dict(exc.headers.items()) if exc.headers else {})
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"GET {_no_query(url)} failed: {reason}") from None


def _no_query(url: str) -> str:
    return url.split("?", 1)[0]


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class HttpReader:
    """Pages through `since=<cursor>` (or everything, for a full run), a page per batch."""

    def __init__(self, source: HttpSourceConfig, *, since: str | None,
                 wall: Callable[[], float] = time.time) -> None:
        self.source = source
        self.since = since
        self.mapper = Mapper(source.fields)
        self.note: str | None = None
        self.total: int | None = None
        self._wall = wall
        self._first: tuple[str, Any] | None = None

    def backlog(self) -> Backlog:
        """Fetch the first page; its total, when the API gives one, is the backlog."""
        url = self._page_url(1)
        self._first = (url, self._get(url, 1))
        if self.total is not None:
            return Backlog(self.total, f"{self.total:,} records upstream")
        return Backlog(None, "the API does not say how many records there are")

    def _page_url(self, page: int) -> str:
        s = self.source
        params: list[tuple[str, str]] = []
        if self.since is not None:
            params.append((s.since_param, self.since))
        if s.next_at is None:
            params.append((s.page_param, str(page)))
        if s.page_size_param:
            params.append((s.page_size_param, str(s.page_size)))
        joiner = "&" if urllib.parse.urlsplit(s.url).query else "?"
        return s.url + (joiner + urllib.parse.urlencode(params) if params else "")

    def _get(self, url: str, page: int) -> Any:
        s = self.source
        reply = fetch(url, s.headers, s.timeout_s)
        where = f"page {page} of {_no_query(s.url)}"
        if reply.status in (429, 403):
            wait = retry_after(reply.headers.get("Retry-After"), self._wall())
            after = f"; Retry-After {wait:g}s" if wait is not None else ""
            raise SourceError(f"{where}: HTTP {reply.status} (rate limited{after})",
                              failure="rate_limited", retry_after_s=wait)
        if reply.status >= 500:
            raise SourceError(f"{where}: HTTP {reply.status}")
        if reply.status != 200:
            raise SourceError(f"{where}: HTTP {reply.status}", failure="fatal")
        try:
            body = json.loads(reply.body)
        except ValueError as exc:
            raise SourceError(f"{where}: the response is not valid JSON ({exc})") from None
        if s.total_at is not None and isinstance(body, dict) and self.total is None:
            total = body.get(s.total_at)
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                self.total = total
        return body

    def _records(self, body: Any, page: int) -> list[Any]:
        s = self.source
        records = body.get(s.records_at) if s.records_at and isinstance(body, dict) else body
        if not isinstance(records, list):
            at = f"key {s.records_at!r}" if s.records_at else "the response"
            raise SourceError(f"page {page} of {_no_query(s.url)}: expected a list of records "
                              f"at {at}", failure="fatal")
        return records

    def batches(self) -> Iterator[Prepared]:
        s = self.source
        page = 1
        url, body = self._first if self._first is not None else (
            self._page_url(1), self._get(self._page_url(1), 1))
        while True:
            records = self._records(body, page)
            batch = Prepared()
            rows = []
            for i, record in enumerate(records):
                try:
                    rows.append(self.mapper.row(record))
                except RecordRejected as exc:
                    batch.rejects.append(Reject(
                        position=f"page {page} item {i}", reason=str(exc),
                        raw=raw_text(json.dumps(record, ensure_ascii=False))))
            if rows:
                batch.tables.append(TableRows(table=s.table, columns=self.mapper.columns,
                                              key=s.key, rows=tuple(rows)))
            yield batch
            if s.next_at is not None:
                link = body.get(s.next_at) if isinstance(body, dict) else None
                if not link:
                    return
                url = urllib.parse.urljoin(url, str(link))
            elif len(records) < s.page_size or not records:
                return
            else:
                url = self._page_url(page + 1)
            page += 1
            body = self._get(url, page)


# --- generator --------------------------------------------------------------------------


class GeneratorReader:
    """The demo's rows from the first id each table lacks (see `demo`)."""

    def __init__(self, source: GeneratorSourceConfig, cursor: tuple[int, int]) -> None:
        self.source = source
        self.gen = DemoGenerator(source)
        self.reg_done, self.obs_done = cursor
        self.note: str | None = None

    def backlog(self) -> Backlog:
        rows = ((self.source.registry_rows - self.reg_done)
                + (self.source.observation_rows - self.obs_done))
        return Backlog(rows, f"{rows:,} rows to generate")

    def batches(self) -> Iterator[Prepared]:
        s = self.source
        reg_cols = GENERATOR_COLUMNS["registry_table"]
        obs_cols = GENERATOR_COLUMNS["observations_table"]
        for first in range(self.obs_done + 1, s.observation_rows + 1, s.batch_rows):
            last = min(s.observation_rows, first + s.batch_rows - 1)
            batch = Prepared()
            # Registry rows go first, so every observation's reference exists.
            need = self.gen.registry_needed(last)
            if need > self.reg_done:
                batch.tables.append(TableRows(
                    table=s.registry_table, columns=reg_cols, key=("id",),
                    rows=tuple(self.gen.registry_row(i)
                               for i in range(self.reg_done + 1, need + 1))))
                self.reg_done = need
            batch.tables.append(TableRows(
                table=s.observations_table, columns=obs_cols, key=("id",),
                rows=tuple(self.gen.observation_row(j) for j in range(first, last + 1))))
            yield batch
        while self.reg_done < s.registry_rows:
            upper = min(s.registry_rows, self.reg_done + s.batch_rows)
            yield Prepared(tables=[TableRows(
                table=s.registry_table, columns=reg_cols, key=("id",),
                rows=tuple(self.gen.registry_row(i) for i in range(self.reg_done + 1,
                                                                   upper + 1)))])
            self.reg_done = upper


Reader = NdjsonReader | HttpReader | GeneratorReader

