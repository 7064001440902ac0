"""HTTP sources against hostile upstreams on loopback (issue 17, point 2).

Each case is an upstream that misbehaves the way an attacker's or a broken
API would: redirects that try to carry the token elsewhere, pagination that
never ends, pages that drip or never stop growing, compressed bombs. Each
asserts what a user notices: `sync now`'s exit code and its words, the run in
`sync history`, how many requests the upstream got, which headers it saw, and
that the test's secret is nowhere (outputs, files, the database).
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from .conftest import count_rows, sqlwarden, wait_until
from .support.hostile import (
    SECRET,
    Ran,
    assert_no_secret,
    assert_refused,
    run_bounded,
    snapshot,
)
from .support.loopback import LoopbackServer, send_json

MiB = 1024 * 1024
#: The size of the hostile big pages (the issue's case: 805 MiB peak before the guard).
BIG = 256 * MiB
#: What the engine may hold at its peak while refusing a big page.
PEAK_MB = 150

Handler = BaseHTTPRequestHandler


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the upstream got: its path and its header lines as they came."""

    path: str
    headers: str


class Upstream:
    """A loopback HTTP server whose every GET is answered by `serve(upstream, handler)`."""

    def __init__(self, serve: Callable[[Upstream, Handler], None], *,
                 http11: bool = False) -> None:
        self.seen: list[Seen] = []
        self.body_bytes = 0  # body bytes the upstream managed to write
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._serve = serve
        self.server = LoopbackServer(self._get, http11=http11)

    def _get(self, handler: Handler) -> None:
        with self._lock:
            self.seen.append(Seen(handler.path, "".join(
                f"{k}: {v}\n" for k, v in handler.headers.items())))
        # The engine hanging up mid-page is what several cases are about.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._serve(self, handler)

    @property
    def origin(self) -> str:
        return self.server.origin

    @property
    def url(self) -> str:
        return self.origin + "/items"

    def write(self, handler: Handler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        with self._lock:
            self.body_bytes += len(data)

    def close(self) -> None:
        self.closing.set()
        self.server.close()


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def start(serve: Callable[[Upstream, Handler], None], **kwargs: Any) -> Upstream:
        started.append(Upstream(serve, **kwargs))
        return started[-1]

    yield start
    for upstream in started:
        upstream.close()


def record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item {i}", "updated": f"2026-03-01T00:{i % 60:02d}:00Z"}


def one_page(upstream: Upstream, handler: Handler) -> None:
    """A good API with one short page: the run ends `ok` when it gets there."""
    send_json(handler, 200, json.dumps({"data": [record(1)]}).encode())


CONFIG = """\
database: {{path: {data}/test.db}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
      updated: {{type: timestamp, not_null: true}}
sources:
  api:
    kind: http
    url: {url}
    table: items
    updated: updated
    page_size: 2
    retries: []
    timeout_s: {timeout_s}
{extra}
message_log: {{path: {data}/messages.jsonl}}
"""

#: The environment of every run: the secret is the token, the API key and the URL password.
ENV = {"API_TOKEN": SECRET, "DEVICE_KEY": SECRET, "PW": SECRET}
TOKEN_HEADERS = ("    headers: {Authorization: 'Bearer ${API_TOKEN}', "
                 "X-Device-Key: '${DEVICE_KEY}'}\n"
                 "    secret_headers: [X-Device-Key]")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a user sees after `sync now`: the command, and the run in `sync history`."""

    now: Ran
    run: dict[str, Any]
    history: str


def sync_now(tmp_path: Path, url: str, *, extra: str = "", timeout_s: float = 5) -> Outcome:
    data = tmp_path / "data"
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(data=data, url=url, timeout_s=timeout_s, extra=extra))
    now = run_bounded("sync", "now", config, "api", "--no-progress", env=ENV)
    shown = run_bounded("sync", "history", config, env=ENV)
    listed = run_bounded("sync", "history", config, "--json", env=ENV)
    assert shown.returncode == 0 and listed.returncode == 0, shown.stderr + listed.stderr
    runs = json.loads(listed.stdout)["runs"]
    assert len(runs) == 1, runs
    outcome = Outcome(now, runs[0], shown.stdout + listed.stdout)
    assert "Traceback" not in now.stderr + now.stdout, now.stderr
    assert_no_secret(SECRET, texts=[now.stdout, now.stderr, outcome.history],
                     under=[tmp_path], databases=[data / "test.db"])
    return outcome


def assert_failed(outcome: Outcome, *words: str) -> None:
    """The run failed with a reason holding `words`; `sync now` said so and exited 1."""
    assert outcome.now.returncode == 1, (outcome.now.stdout, outcome.now.stderr[-2000:])
    assert outcome.run["status"] == "failed", outcome.run
    for word in words:
        assert word in outcome.run["error"], (word, outcome.run["error"])
        assert word in outcome.now.stdout, (word, outcome.now.stdout)
        assert word in outcome.history


def assert_ok(outcome: Outcome, rows: int) -> None:
    assert outcome.now.returncode == 0, (outcome.now.stdout, outcome.now.stderr[-2000:])
    assert outcome.run["status"] == "ok" and outcome.run["rows"] == rows, outcome.run


def credentials_in(seen: Seen) -> bool:
    basic = base64.b64encode(f"reader:{SECRET}".encode()).decode()
    return SECRET in seen.headers or basic in seen.headers or "authorization" in \
        seen.headers.lower() or "x-device-key" in seen.headers.lower()


# --- credentials and redirects -------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_to_another_origin_never_receives_the_token_or_the_api_key(
        tmp_path: Path, upstreams: Callable[..., Upstream], code: int) -> None:
    other = upstreams(one_page)
    first = upstreams(lambda up, h: send_json(h, code, headers={"Location": other.url}))
    outcome = sync_now(tmp_path, first.url, extra=TOKEN_HEADERS)
    assert_ok(outcome, 1)
    assert len(first.seen) == 1 and credentials_in(first.seen[0])
    assert len(other.seen) == 1 and not credentials_in(other.seen[0])


def test_a_same_origin_redirect_keeps_the_token(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    def serve(up: Upstream, h: Handler) -> None:
        if h.path.startswith("/old"):
            send_json(h, 301, headers={"Location": "/items"})
        else:
            one_page(up, h)

    upstream = upstreams(serve)
    outcome = sync_now(tmp_path, upstream.origin + "/old", extra=TOKEN_HEADERS)
    assert_ok(outcome, 1)
    assert [s.path for s in upstream.seen] == ["/old?page=1&limit=2", "/items"]
    assert all(SECRET in s.headers for s in upstream.seen)


def test_a_password_in_the_url_is_basic_auth_for_its_origin_and_never_follows_a_redirect(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    other = upstreams(one_page)
    first = upstreams(lambda up, h: send_json(h, 302, headers={"Location": other.url}))
    url = first.url.replace("http://", "http://reader:${PW}@")
    outcome = sync_now(tmp_path, url)
    assert_ok(outcome, 1)
    basic = base64.b64encode(f"reader:{SECRET}".encode()).decode()
    assert f"Authorization: Basic {basic}" in first.seen[0].headers
    assert not credentials_in(other.seen[0])


def test_a_password_in_the_url_stays_out_of_a_failed_run(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 500))
    outcome = sync_now(tmp_path, upstream.url.replace("http://", "http://reader:${PW}@"))
    assert_failed(outcome, "HTTP 500", upstream.url)
    assert len(upstream.seen) == 1 and credentials_in(upstream.seen[0])


def test_a_next_link_to_another_origin_never_receives_the_token(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    other = upstreams(lambda up, h: send_json(h, 200, b'{"data": [], "next": null}'))
    first = upstreams(lambda up, h: send_json(h, 200, json.dumps(
        {"data": [record(1), record(2)], "next": other.url + "?page=2"}).encode()))
    outcome = sync_now(tmp_path, first.url, extra=TOKEN_HEADERS + "\n    next_at: next")
    assert_ok(outcome, 2)
    assert credentials_in(first.seen[0]) and not credentials_in(other.seen[0])


def test_a_redirect_loop_fails_the_run_after_a_few_hops(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 302, headers={"Location": h.path}))
    outcome = sync_now(tmp_path, upstream.url, extra=TOKEN_HEADERS)
    assert_failed(outcome, "more than 5 redirects")
    assert len(upstream.seen) == 6


def test_a_redirect_to_a_file_url_is_not_followed(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 302, headers={"Location": "file:///etc/passwd"}))
    outcome = sync_now(tmp_path, upstream.url, extra=TOKEN_HEADERS)
    assert_failed(outcome, "a redirect to a file: URL is not followed")
    assert count_rows(tmp_path / "data" / "test.db", "items") == 0


# --- endless pagination --------------------------------------------------------------


def test_an_api_with_a_full_page_forever_stops_at_max_pages(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    def serve(up: Upstream, h: Handler) -> None:
        page = len(up.seen)  # every page new and full: only the limit ends it
        send_json(h, 200, json.dumps({"data": [record(2 * page), record(2 * page + 1)]}).encode())

    upstream = upstreams(serve)
    outcome = sync_now(tmp_path, upstream.url, extra="    max_pages: 5")
    assert_failed(outcome, "max_pages 5")
    assert len(upstream.seen) == 5
    assert count_rows(tmp_path / "data" / "test.db", "items") == 10


def test_an_api_that_repeats_its_page_fails_the_run_on_the_second_request(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 200, json.dumps(
        {"data": [record(1), record(2)]}).encode()))
    outcome = sync_now(tmp_path, upstream.url)
    assert_failed(outcome, "repeats page 1")
    assert len(upstream.seen) == 2


def test_a_next_link_to_itself_fails_the_run_at_once(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    def serve(up: Upstream, h: Handler) -> None:
        send_json(h, 200, json.dumps({"data": [record(len(up.seen))], "next": h.path}).encode())

    upstream = upstreams(serve)
    outcome = sync_now(tmp_path, upstream.url, extra="    next_at: next")
    assert_failed(outcome, "already read")
    assert len(upstream.seen) == 1


def test_next_links_that_go_round_in_a_circle_fail_the_run(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    def serve(up: Upstream, h: Handler) -> None:
        back = "/items?limit=2" if h.path.startswith("/second") else "/second"
        send_json(h, 200, json.dumps({"data": [record(len(up.seen))], "next": back}).encode())

    upstream = upstreams(serve)
    outcome = sync_now(tmp_path, upstream.url, extra="    next_at: next")
    assert_failed(outcome, "already read")
    assert [s.path for s in upstream.seen] == ["/items?limit=2", "/second"]


# --- slow pages and stops ------------------------------------------------------------


def drip(up: Upstream, h: Handler) -> None:
    """Headers at once, then a byte of JSON whitespace every half second, forever."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    while not up.closing.is_set():
        up.write(h, b" ")
        up.closing.wait(0.5)


def drip_headers(up: Upstream, h: Handler) -> None:
    """The status line itself, one byte every half second."""
    for byte in b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[]":
        if up.closing.wait(0.5):
            return
        up.write(h, bytes([byte]))


@pytest.mark.parametrize("serve", [drip, drip_headers], ids=["body", "headers"])
def test_an_upstream_that_drips_times_out_at_timeout_s_for_the_whole_page(
        tmp_path: Path, upstreams: Callable[..., Upstream],
        serve: Callable[[Upstream, Handler], None]) -> None:
    upstream = upstreams(serve)
    outcome = sync_now(tmp_path, upstream.url, timeout_s=1)
    assert_failed(outcome, "timed out", "timeout_s 1s")
    assert len(upstream.seen) == 1
    # A byte every half second for the whole page: the page got nowhere near its end.
    assert upstream.body_bytes < 20


def test_sigterm_while_the_upstream_drips_stops_sync_now_mid_page_with_exit_0(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(drip)
    data = tmp_path / "data"
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(data=data, url=upstream.url, timeout_s=600,
                                    extra=TOKEN_HEADERS))
    proc = sqlwarden("sync", "now", str(config), "api", "--no-progress", env=ENV)
    try:
        wait_until(lambda: upstream.body_bytes >= 2, what="the page to start dripping")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "stopped" in out
    history = run_bounded("sync", "history", config, "--json", env=ENV)
    (run,) = json.loads(history.stdout)["runs"]
    assert run["status"] == "stopped" and run["error"] is None, run
    assert len(upstream.seen) == 1
    assert_no_secret(SECRET, texts=[out, err, history.stdout], under=[tmp_path],
                     databases=[data / "test.db"])


# --- pages too large for memory ------------------------------------------------------


def big_with_length(up: Upstream, h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(BIG))
    h.end_headers()
    spaces(up, h)


def big_without_length(up: Upstream, h: Handler) -> None:
    h.send_response(200)  # HTTP/1.0: the body ends when the connection does
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    spaces(up, h)


def big_chunked(up: Upstream, h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b" " * MiB
    up.write(h, b"1\r\n[\r\n")
    for _ in range(BIG // MiB):
        up.write(h, b"%x\r\n%s\r\n" % (len(chunk), chunk))
    up.write(h, b"1\r\n]\r\n0\r\n\r\n")


def spaces(up: Upstream, h: Handler) -> None:
    """A valid JSON list padded to BIG bytes with whitespace."""
    up.write(h, b"[")
    chunk = b" " * MiB
    for _ in range(BIG // MiB - 1):
        up.write(h, chunk)
    up.write(h, b"]")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """BIG bytes of a JSON list (whitespace) gzipped to a few hundred KiB."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [pack.compress(b"[")]
    chunk = b" " * MiB
    parts += [pack.compress(chunk) for _ in range(BIG // MiB)]
    parts.append(pack.compress(b"]") + pack.flush())
    return b"".join(parts)


@pytest.mark.parametrize("serve,http11", [
    pytest.param(big_with_length, False, id="content-length"),
    pytest.param(big_without_length, False, id="until-close"),
    pytest.param(big_chunked, True, id="chunked"),
])
def test_a_256_mib_page_fails_the_run_at_max_page_mb_in_bounded_memory(
        tmp_path: Path, upstreams: Callable[..., Upstream],
        serve: Callable[[Upstream, Handler], None], http11: bool) -> None:
    upstream = upstreams(serve, http11=http11)
    outcome = sync_now(tmp_path, upstream.url, extra="    memory_limit_mb: 64")
    assert_failed(outcome, "page larger than 8 MB")  # an eighth of memory_limit_mb
    assert outcome.now.peak_mb < PEAK_MB, outcome.now.peak_mb
    assert len(upstream.seen) == 1
    # Reading stopped at the limit: the rest of the page was never taken.
    assert upstream.body_bytes < BIG // 2


def test_a_page_of_small_objects_under_16_mb_is_refused_with_a_low_memory_limit(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    # 15 MB of `{}`s parses to far more than 64 MB: the default page cap follows the
    # memory limit down (an eighth of it), so the page is never parsed.
    body = b'{"data": [' + b"{}," * (5 * 1024 * 1024) + b"{}]}"
    upstream = upstreams(lambda up, h: send_json(h, 200, body))
    outcome = sync_now(tmp_path, upstream.url, extra="    memory_limit_mb: 64")
    assert_failed(outcome, "page larger than 8 MB")
    assert outcome.now.peak_mb < PEAK_MB, outcome.now.peak_mb


def test_a_gzip_bomb_page_fails_at_max_page_mb_counting_inflated_bytes(
        tmp_path: Path, upstreams: Callable[..., Upstream], bomb: bytes) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 200, bomb, {"Content-Encoding": "gzip"}))
    outcome = sync_now(tmp_path, upstream.url, extra="    max_page_mb: 4")
    assert_failed(outcome, "page larger than 4 MB")
    assert outcome.now.peak_mb < PEAK_MB, outcome.now.peak_mb
    assert "gzip" in upstream.seen[0].headers  # the engine asked for compression


def test_a_gzipped_page_within_the_limit_is_read(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    body = zlib.compress(json.dumps({"data": [record(1)]}).encode())  # deflate (zlib)
    upstream = upstreams(lambda up, h: send_json(h, 200, body, {"Content-Encoding": "deflate"}))
    assert_ok(sync_now(tmp_path, upstream.url), 1)


def test_a_damaged_gzip_page_fails_the_run_with_one_reason(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 200, b"\x1f\x8b\x08\x00garbage",
                                            {"Content-Encoding": "gzip"}))
    assert_failed(sync_now(tmp_path, upstream.url), "compressed body is damaged")


# --- the HTTP source's config ---------------------------------------------------------


@pytest.mark.parametrize("lines,key,words", [
    pytest.param("    max_pages: 0", "sources.api.max_pages", "at least 1", id="max-pages-0"),
    pytest.param("    max_pages: 99999999999", "sources.api.max_pages", "at most",
                 id="max-pages-huge"),
    pytest.param("    max_page_mb: .nan", "sources.api.max_page_mb", "finite",
                 id="max-page-mb-nan"),
    pytest.param("    max_page_mb: 99999", "sources.api.max_page_mb", "at most",
                 id="max-page-mb-huge"),
    pytest.param("    secret_headers: ['X Key']", "sources.api.secret_headers",
                 "not a header name", id="secret-header-with-a-space"),
    pytest.param("    headers: {X-Key: \"${API_TOKEN}\\r\\nX-Evil: 1\"}", "sources.api.headers",
                 "line break", id="header-value-with-a-line-break"),
])
def test_a_bad_http_setting_is_one_line_naming_its_key_and_exit_2(
        tmp_path: Path, lines: str, key: str, words: str) -> None:
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "data", url="http://127.0.0.1:9/items",
                                    timeout_s=5, extra=lines))
    before = snapshot(tmp_path)
    done = run_bounded("check-config", config, env=ENV)
    line = assert_refused(done, 2, "sw.yaml", key, words)
    assert snapshot(tmp_path) == before
    assert_no_secret(SECRET, texts=[line, done.stdout])


@pytest.mark.parametrize("url", [
    pytest.param("http://reader:${PW}@127.0.0.1:99999/items", id="port-out-of-range"),
    pytest.param("http://reader:${PW}@/items", id="no-host"),
    pytest.param("http://reader:${PW}@127.0.0.1:x/items", id="port-not-a-number"),
])
def test_a_bad_url_with_a_password_is_refused_without_showing_the_password(
        tmp_path: Path, url: str) -> None:
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "data", url=url, timeout_s=5, extra=""))
    before = snapshot(tmp_path)
    done = run_bounded("check-config", config, env=ENV)
    line = assert_refused(done, 2, "sources.api.url", "[redacted]")
    assert snapshot(tmp_path) == before
    assert_no_secret(SECRET, texts=[line, done.stdout])


@pytest.mark.parametrize("password", [
    pytest.param(f"12/{SECRET}", id="slash-after-digits"),
    pytest.param(f"{SECRET}#frag", id="hash"),
    pytest.param(f"{SECRET}?q", id="question-mark"),
])
def test_a_password_that_would_split_the_host_part_is_refused_not_sent_elsewhere(
        tmp_path: Path, password: str) -> None:
    # Read naively, "http://reader:12/pw@host/" is host "reader", port 12: the password
    # would go in a request line to a host named "reader".
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "data",
                                    url="http://reader:${PW}@127.0.0.1:9/items",
                                    timeout_s=5, extra=""))
    before = snapshot(tmp_path)
    for command in ("check-config", "run"):
        done = run_bounded(command, config, env={**ENV, "PW": password})
        line = assert_refused(done, 2, "sources.api.url", "percent-encode")
        assert snapshot(tmp_path) == before
        assert_no_secret(SECRET, texts=[line, done.stdout])


def test_a_next_link_to_a_file_url_is_not_fetched(
        tmp_path: Path, upstreams: Callable[..., Upstream]) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 200, json.dumps(
        {"data": [record(1)], "next": "file:///etc/passwd"}).encode()))
    outcome = sync_now(tmp_path, upstream.url, extra=TOKEN_HEADERS + "\n    next_at: next")
    assert_failed(outcome, "not an http(s) URL")
    assert len(upstream.seen) == 1


@pytest.mark.parametrize("value", [
    pytest.param("9" * 400, id="seconds-past-a-float"),
    pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", id="date-in-year-9999"),
])
def test_a_retry_after_of_centuries_parks_the_source_for_a_week_at_most(
        tmp_path: Path, upstreams: Callable[..., Upstream], value: str) -> None:
    upstream = upstreams(lambda up, h: send_json(h, 429, headers={"Retry-After": value}))
    outcome = sync_now(tmp_path, upstream.url)
    assert_failed(outcome, "HTTP 429 (rate limited; Retry-After 604800s)")
    assert len(upstream.seen) == 1
