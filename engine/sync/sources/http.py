"""The HTTP reader: a paginated JSON API asked for the records changed `since` a cursor.

The cursor is inclusive (`MAX(updated)` of the stored rows); pages are walked
by number or by following a next-page link. Importing this module loads
`urllib.request`, and with it `ssl`: only code that builds an HTTP reader
imports it, so an engine without HTTP sources never pays for that.

The upstream is not trusted. Requests go through `http.client` with redirects
followed here, so credentials reach only the configured origin; every page
has a wall-clock deadline and a size cap checked while its bytes arrive (the
status line and headers included), and the run's stop flag is looked at while
waiting; a run that pages in a loop (a repeated page, a next link back, more
than `max_pages`) fails.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import io
import json
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
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

#: How often a read blocked on the upstream looks at its deadline and the stop flag.
POLL_S = 0.2
#: A body is read this much at a time, the deadline, stop and size checked between.
CHUNK = 64 * 1024
#: Redirects one request follows before giving up.
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP reply, error statuses included (their body is not read); headers lowercased."""

    status: int
    body: bytes | bytearray
    headers: dict[str, str]


class PageStopped(Exception):
    """A stop request came while a page was read."""


class PageTimedOut(Exception):
    """The page's wall-clock limit (`timeout_s`) passed."""


class PageTooLarge(Exception):
    """The page is larger than `max_page_mb`."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one page may take: time (a wall-clock deadline), bytes, and a stop flag."""

    deadline: float  # time.monotonic()
    max_bytes: int
    stop: threading.Event

    def remaining(self) -> float:
        """Seconds left; raises when the deadline passed or a stop came."""
        if self.stop.is_set():
            raise PageStopped()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PageTimedOut()
        return left


class _GuardedRaw(io.RawIOBase):
    """A socket's bytes, each wait on them cut short by the page's deadline or a stop.

    A socket timeout bounds one recv only: an upstream sending a byte every
    half second would never trip it. Waiting in short slices and looking at
    the deadline and the stop flag between them bounds the whole page, the
    status line and headers included (http.client reads them through here).
    """

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        super().__init__()
        self._sock = sock
        self._limits = limits

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            self._sock.settimeout(min(self._limits.remaining(), POLL_S))
            try:
                return self._sock.recv_into(buffer)
            except TimeoutError:
                continue


class _GuardedSocket:
    """A connected socket whose reads go through `_GuardedRaw`; the rest is passed on."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self._sock = sock
        self._limits = limits

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_GuardedRaw(self._sock, self._limits))

    def close(self) -> None:
        # http.client closes the connection's socket as soon as the reply is known to
        # end with it, while the body is still to read: `_request` closes it after.
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Guarded(http.client.HTTPConnection):
    limits: Limits
    raw_sock: socket.socket | None = None

    def connect(self) -> None:
        super().connect()  # for HTTPS this is the TLS handshake too
        self.raw_sock = self.sock
        self.sock = _GuardedSocket(self.sock, self.limits)


class _GuardedHTTP(_Guarded):
    pass


class _GuardedHTTPS(_Guarded, http.client.HTTPSConnection):
    pass


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `url`, the default port filled in."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return (scheme, (parts.hostname or "").lower(),
            port if port is not None else (443 if scheme == "https" else 80))


def fetch(url: str, headers: Sequence[tuple[str, str]], limits: Limits, *,
          credentials: Sequence[tuple[str, str]] = (),
          trusted: tuple[str, str, int] | None = None) -> Response:
    """GET `url`, following redirects; an HTTP error status is returned, not raised.

    `credentials` (secret headers, Basic auth) go only to the `trusted`
    origin, and not at all once a redirect went to another one: a redirect is
    the upstream's word, and it must not be able to send our token elsewhere.
    Raises `PageTimedOut`, `PageStopped`, `PageTooLarge`, or `SourceError` for
    a network failure.
    """
    target = urllib.parse.urlsplit(url)
    if target.scheme.lower() not in ("http", "https") or not target.hostname:
        # A next link is the upstream's word too: file:, ftp: or no host is not fetched.
        raise SourceError(f"GET {_no_query(url)[:200]}: not an http(s) URL with a host",
                          failure="fatal")
    keep = trusted is not None and origin(url) == trusted
    for _ in range(MAX_REDIRECTS + 1):
        keep = keep and origin(url) == trusted
        sent = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate",
                "User-Agent": "sqlwarden", "Connection": "close"}
        for name, value in (*headers, *(credentials if keep else ())):
            for known in [k for k in sent if k.lower() == name.lower()]:
                del sent[known]
            sent[name] = value
        status, location, reply = _request(url, sent, limits)
        if status in _REDIRECTS and location:
            url = _redirected(url, location)
            continue
        return reply
    raise SourceError(f"GET {_no_query(url)}: more than {MAX_REDIRECTS} redirects",
                      failure="fatal")


def _redirected(url: str, location: str) -> str:
    """Where a redirect goes; only http(s), and without userinfo or fragment."""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location.strip()))
    if target.scheme.lower() not in ("http", "https") or not target.hostname:
        raise SourceError(f"GET {_no_query(url)}: a redirect to a {target.scheme or 'relative'}"
                          ": URL is not followed", failure="fatal")
    # Userinfo from the upstream is not ours to send; it is dropped with the fragment.
    netloc = target.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(target._replace(netloc=netloc, fragment=""))


def _proxy(url: str) -> tuple[str, int, dict[str, str]] | None:
    """The proxy the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`) names for `url`."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme.lower())
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    p = urllib.parse.urlsplit(proxy)
    head: dict[str, str] = {}
    if p.username is not None:
        pair = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        head["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return p.hostname or "", p.port or 8080, head


def _request(url: str, headers: dict[str, str],
             limits: Limits) -> tuple[int, str | None, Response]:
    """One GET: (status, Location, the reply with its body read within `limits`)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", origin(url)[2]
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    proxy = _proxy(url)
    timeout = limits.remaining()
    conn: _Guarded
    try:
        if parts.scheme.lower() == "https":
            conn = _GuardedHTTPS(proxy[0] if proxy else host, proxy[1] if proxy else port,
                                 timeout=timeout)
            if proxy:
                conn.set_tunnel(host, port, headers=proxy[2])
        elif proxy:
            conn = _GuardedHTTP(proxy[0], proxy[1], timeout=timeout)
            target = urllib.parse.urlunsplit(parts._replace(fragment=""))
            headers = {**headers, **proxy[2]}
        else:
            conn = _GuardedHTTP(host, port, timeout=timeout)
        conn.limits = limits
        try:
            conn.request("GET", target, headers=headers)
            reply = conn.getresponse()
            found = {k.lower(): v for k, v in reply.getheaders()}
            if reply.status != 200:
                # An error's or a redirect's body says nothing we use: it is not read.
                return reply.status, found.get("location"), Response(reply.status, b"", found)
            return 200, None, Response(200, _body(reply, found, limits), found)
        finally:
            conn.close()
            if conn.raw_sock is not None:
                conn.raw_sock.close()
    except (PageStopped, PageTimedOut, PageTooLarge):
        raise
    except TimeoutError:
        raise PageTimedOut() from None
    except (OSError, http.client.HTTPException) as exc:
        raise SourceError(f"GET {_no_query(url)} failed: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _body(reply: http.client.HTTPResponse, headers: dict[str, str],
          limits: Limits) -> bytearray:
    """The body, inflated, never holding more than `limits.max_bytes` + one chunk.

    A declared length past the limit is refused before reading; otherwise
    the bytes (inflated ones for gzip or deflate) are counted as they come.
    """
    length = headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limits.max_bytes:
        raise PageTooLarge()
    encoding = headers.get("content-encoding", "identity").strip().lower()
    inflate: Any = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a zlib or gzip header
    elif encoding not in ("identity", ""):
        raise SourceError(f"the response has Content-Encoding {encoding[:40]!r}, which is not "
                          "supported (gzip, deflate)", failure="fatal")
    body = bytearray()
    while True:
        limits.remaining()
        data = reply.read(CHUNK)
        if not data:
            break
        if inflate is None:
            body += data
        else:
            _inflate(inflate, data, body, limits.max_bytes)
        if len(body) > limits.max_bytes:
            raise PageTooLarge()
    if inflate is not None and not inflate.eof:
        raise SourceError("the response's compressed body is damaged (it ends early)")
    return body


def _inflate(inflate: Any, data: bytes, body: bytearray, max_bytes: int) -> None:
    """Inflate `data` onto `body`, at most one byte past `max_bytes` (a bomb stops there)."""
    try:
        while data and len(body) <= max_bytes:
            body += inflate.decompress(data, max_bytes + 1 - len(body))
            data = inflate.unconsumed_tail
    except zlib.error as exc:
        raise SourceError(f"the response's compressed body is damaged ({exc})") from None


def _no_query(url: str) -> str:
    return url.split("?", 1)[0]


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
        where = f"page {page} of {_no_query(s.url)}"
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
                    raise SourceError(f"page {page} of {_no_query(s.url)}: its next link "
                                      f"goes back to a page already read ({_no_query(url)});"
                                      " the run stopped (the API is paging in a loop)",
                                      failure="fatal")
            elif len(records) < s.page_size or not records:
                return
            else:
                url = self._page_url(page + 1)
            page += 1
            body = self._get(url, page)
