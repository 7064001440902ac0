"""Fetching one page from an upstream that is not trusted.

Requests go through `http.client`, with redirects followed here, so
credentials (the headers a source marks secret, the URL's user and password)
reach only the configured origin. Every page has a wall-clock deadline and a
size cap checked while its bytes arrive (the status line and headers
included, compressed bodies counted inflated), and the run's stop flag is
looked at between reads. Importing this loads `http.client` and, through
`urllib.request`, `ssl`: only the HTTP reader imports it.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlwarden.sync.sources.base import SourceError

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
        raise SourceError(f"GET {no_query(url)[:200]}: not an http(s) URL with a host",
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
    raise SourceError(f"GET {no_query(url)}: more than {MAX_REDIRECTS} redirects",
                      failure="fatal")


def _redirected(url: str, location: str) -> str:
    """Where a redirect goes; only http(s), and without userinfo or fragment."""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location.strip()))
    if target.scheme.lower() not in ("http", "https") or not target.hostname:
        raise SourceError(f"GET {no_query(url)}: a redirect to a {target.scheme or 'relative'}"
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
        raise SourceError(f"GET {no_query(url)} failed: {_why(exc)}") from None


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


def no_query(url: str) -> str:
    return url.split("?", 1)[0]
