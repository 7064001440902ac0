"""The HTTP reader: a paginated JSON API asked for the records changed `since` a cursor.

The cursor is inclusive (`MAX(updated)` of the stored rows); pages are walked
by number or by following a next-page link. Importing this module loads
`urllib.request`, and with it `ssl`: only code that builds an HTTP reader
imports it, so an engine without HTTP sources never pays for that.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from sqlwarden.config import HttpSourceConfig
from sqlwarden.protocol import Reject, TableRows
from sqlwarden.sync.sources.base import Backlog, Prepared, SourceError
from sqlwarden.sync.sources.mapping import (
    RAW_KEEP,
    Mapper,
    RecordRejected,
    key_text,
    raw_text,
)


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP reply, error statuses included."""

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

    def _split(self, data: bytes, where: str) -> Any:
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
            raise SourceError(f"page {page} of {_no_query(s.url)}: expected a list of records "
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
        s = self.source
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
                url = urllib.parse.urljoin(url, str(link))
            elif len(records) < s.page_size or not records:
                return
            else:
                url = self._page_url(page + 1)
            page += 1
            body = self._get(url, page)
