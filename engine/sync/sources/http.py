"""The HTTP reader: a paginated JSON API asked for the records changed `since` a cursor.

The cursor is inclusive (`MAX(updated)` of the stored rows); pages are walked
by number or by following a next-page link. Importing this module loads
`urllib.request`, and with it `ssl`: only code that builds an HTTP reader
imports it, so an engine without HTTP sources never pays for that.

The upstream is not trusted. A page is fetched by `fetch` (credentials only
to the configured origin, a wall-clock deadline, a size cap checked while the
bytes arrive, the stop flag looked at while waiting); here a run that pages in
a loop (a repeated page, a next link back, more than `max_pages`) fails.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from sqlwarden.config import HttpSourceConfig
from sqlwarden.protocol import Reject, TableRows
from sqlwarden.sync.sources.base import Backlog, Prepared, SourceError
from sqlwarden.sync.sources.fetch import (
    Limits,
    PageStopped,
    PageTimedOut,
    PageTooLarge,
    fetch,
    no_query,
    origin,
)
from sqlwarden.sync.sources.mapping import (
    RAW_KEEP,
    Mapper,
    RecordRejected,
    key_text,
    raw_text,
)

#: The longest `Retry-After` honoured: an upstream cannot park a source for longer.
MAX_RETRY_AFTER_S = 7 * 86_400.0


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (a number of seconds or an HTTP date).

    At most `MAX_RETRY_AFTER_S`: `Retry-After: 999...9` (a float's inf) must not
    reach the scheduler.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class TooDeep:
    """A record of a page nested too deeply to parse: its start and its length."""

    head: str
    length: int


#: What a skip over a JSON value looks for: a string's start or a bracket.
_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,\]}\s]|$")
_SPACE = re.compile(r"\s*")


def _skip(text: str, at: int) -> int:
    """The index after the JSON value starting at `at`, without recursing."""
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
    first = text[at]
    if first == '"':
        return int(scanstring(text, at + 1)[1])
    if first not in "[{":
        end = _SCALAR_END.search(text, at).start()  # type: ignore[union-attr]
        if end == at:
            raise ValueError("expected a value")
        return end
    depth = 0
    while True:
        found = _STRUCTURE.search(text, at)
        if found is None:
            raise ValueError("unterminated value")
        char, at = found.group(), found.start()
        if char == '"':
            at = scanstring(text, at + 1)[1]
            continue
        depth += 1 if char in "[{" else -1
        at += 1
        if depth == 0:
            return at


def _elements(text: str, at: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each element of the JSON array starting at `at`."""
    at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text[at] == "]":
        return
    while True:
        start = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        at = _skip(text, start)
        yield start, at
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text[at] == "]":
            return
        if text[at] != ",":
            raise ValueError("expected , or ]")
        at += 1


def _records_span(text: str, key: str | None) -> tuple[int, int]:
    """(start, end) of the page's record array: the body, or its member `key`."""
    at = _SPACE.match(text).end()  # type: ignore[union-attr]
    if key is None:
        if text[at] != "[":
            raise ValueError("expected a list")
        return at, _skip(text, at)
    if text[at] != "{":
        raise ValueError("expected an object")
    at += 1
    while True:
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text[at] != '"':
            raise ValueError("expected a key")
        name, at = scanstring(text, at + 1)
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text[at] != ":":
            raise ValueError("expected :")
        start = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
        at = _skip(text, start)
        if name == key and text[start] == "[":
            return start, at
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text[at] != ",":
            raise ValueError(f"no list at key {key!r}")
        at += 1


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
        #: Set by the run's pump to stop: a page being read ends at the next slice.
        self.stop = threading.Event()
        #: True once a stop ended a page: the run ends, recorded as stopped.
        self.stopped = False
        self._origin = origin(source.url)
        self._credentials = tuple((n, v) for n, v in source.headers
                                  if source.is_secret_header(n))
        self._headers = tuple((n, v) for n, v in source.headers
                              if not source.is_secret_header(n))
        if source.basic_auth is not None and not any(
                n.lower() == "authorization" for n, _ in self._credentials):
            pair = ":".join(source.basic_auth).encode()
            self._credentials += (("Authorization",
                                   "Basic " + base64.b64encode(pair).decode()),)
        #: Each page's body digest -> its page number: an upstream repeating itself loops.
        self._digests: dict[bytes, int] = {}
        self._visited: set[str] = set()

    def backlog(self) -> Backlog:
        """Fetch the first page; its total, when the API gives one, is the backlog."""
        url = self._page_url(1)
        try:
            self._first = (url, self._get(url, 1))
        except PageStopped:
            self.stopped = True
            return Backlog(None, "stopped before the first page came")
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
        where = f"page {page} of {no_query(s.url)}"
        if page > s.max_pages:
            raise SourceError(f"{where}: more pages than max_pages {s.max_pages:,}; the run "
                              "stopped (the API may be paging in a loop; raise max_pages if "
                              "it really has that many)", failure="fatal")
        self._visited.add(url)
        limits = Limits(deadline=time.monotonic() + s.timeout_s,
                        max_bytes=int(s.max_page_mb * 1024 * 1024), stop=self.stop)
        try:
            reply = fetch(url, self._headers, limits, credentials=self._credentials,
                          trusted=self._origin)
        except PageTimedOut:
            raise SourceError(f"{where}: timed out: the page took longer than timeout_s "
                              f"{s.timeout_s:g}s") from None
        except PageTooLarge:
            raise SourceError(f"{where}: page larger than {s.max_page_mb:g} MB (max_page_mb); "
                              "the run stopped", failure="fatal") from None
        except SourceError as exc:
            raise SourceError(f"{where}: {exc}", failure=exc.failure) from None
        if reply.status in (429, 403):
            wait = retry_after(reply.headers.get("retry-after"), self._wall())
            after = f"; Retry-After {wait:g}s" if wait is not None else ""
            raise SourceError(f"{where}: HTTP {reply.status} (rate limited{after})",
                              failure="rate_limited", retry_after_s=wait)
        if reply.status >= 500:
            raise SourceError(f"{where}: HTTP {reply.status}")
        if reply.status != 200:
            raise SourceError(f"{where}: HTTP {reply.status}", failure="fatal")
        digest = hashlib.sha256(reply.body).digest()
        if digest in self._digests:
            raise SourceError(f"{where}: the page repeats page {self._digests[digest]} "
                              "byte for byte; the run stopped (the API is paging in a loop)",
                              failure="fatal")
        self._digests[digest] = page
        try:
            body = json.loads(reply.body)
        except ValueError as exc:
            raise SourceError(f"{where}: the response is not valid JSON ({exc})") from None
        except RecursionError:
            # The decoder recurses once per level: a record nested past its depth
            # spoils the whole page. Cut the page into its records and parse each
            # alone, so that record is rejected and the others go in.
            body = self._split(reply.body, where)
        if s.total_at is not None and isinstance(body, dict) and self.total is None:
            total = body.get(s.total_at)
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                self.total = total
        return body

    def _split(self, data: bytes | bytearray, where: str) -> Any:
        """The page with each record parsed alone; one too deep to parse is `TooDeep`."""
        try:
            text = data.decode("utf-8")
            span = _records_span(text, self.source.records_at)
            records: list[Any] = []
            for start, end in _elements(text, span[0]):
                try:
                    records.append(json.loads(text[start:end]))
                except RecursionError:
                    records.append(TooDeep(text[start:start + RAW_KEEP], end - start))
            if self.source.records_at is None:
                return records
            body = json.loads(text[:span[0]] + "[]" + text[span[1]:])
            body[self.source.records_at] = records
            return body
        except (ValueError, IndexError, TypeError, RecursionError):
            raise SourceError(f"{where}: the response is not valid JSON (nested too deeply "
                              "to parse)", failure="fatal") from None

    def _records(self, body: Any, page: int) -> list[Any]:
        s = self.source
        records = body.get(s.records_at) if s.records_at and isinstance(body, dict) else body
        if not isinstance(records, list):
            at = f"key {s.records_at!r}" if s.records_at else "the response"
            raise SourceError(f"page {page} of {no_query(s.url)}: expected a list of records "
                              f"at {at}", failure="fatal")
        return records

    def _rejected(self, record: Any, position: str, reason: str) -> Reject:
        """The reject of a record the mapping refused, known by its key and cursor if they read.

        A record's place on a page shifts from run to run; its key does not, so a
        refetch meets the same reject and stores nothing new.
        """
        key = [self.mapper.value(record, column) for column in self.source.key]
        cursor = self.mapper.value(record, self.source.updated)
        return Reject(position=position, reason=reason,
                      raw=raw_text(json.dumps(record, ensure_ascii=False)),
                      record=key_text(key) if None not in key else "",
                      cursor=cursor if isinstance(cursor, (str, int, float)) else None)

    def batches(self) -> Iterator[Prepared]:
        try:
            yield from self._batches()
        except PageStopped:
            self.stopped = True
        if self.stopped:
            # An empty batch hands the pump the turn: it sees the stop and records
            # the run stopped, not caught up.
            yield Prepared()

    def _batches(self) -> Iterator[Prepared]:
        s = self.source
        if self.stopped:
            return
        page = 1
        url, body = self._first if self._first is not None else (
            self._page_url(1), self._get(self._page_url(1), 1))
        while True:
            records = self._records(body, page)
            batch = Prepared()
            rows = []
            items = []  # each row's place on the page, for a reject if the database refuses it
            for i, record in enumerate(records):
                if type(record) is TooDeep:
                    batch.rejects.append(Reject(
                        position=f"page {page} item {i}",
                        reason="not readable JSON: it is nested too deeply to parse",
                        raw=raw_text(record.head, record.length), record=""))
                    continue
                try:
                    rows.append(self.mapper.row(record))
                    items.append(i)
                except RecordRejected as exc:
                    batch.rejects.append(self._rejected(record, f"page {page} item {i}",
                                                        str(exc)))
            if rows:
                batch.tables.append(TableRows(table=s.table, columns=self.mapper.columns,
                                              key=s.key, rows=tuple(rows),
                                              origin=f"page {page} item ", offsets=tuple(items),
                                              updated=s.updated))
            yield batch
            if s.next_at is not None:
                link = body.get(s.next_at) if isinstance(body, dict) else None
                if not link:
                    return
                url = urllib.parse.urljoin(url, str(link)).partition("#")[0]
                if url in self._visited:
                    raise SourceError(f"page {page} of {no_query(s.url)}: its next link "
                                      f"goes back to a page already read ({no_query(url)});"
                                      " the run stopped (the API is paging in a loop)",
                                      failure="fatal")
            elif len(records) < s.page_size or not records:
                return
            else:
                url = self._page_url(page + 1)
            page += 1
            body = self._get(url, page)
