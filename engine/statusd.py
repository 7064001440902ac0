"""The status endpoint over HTTP, on loopback unless configured.

- `GET /healthz`: 200 when the engine is steady, 503 with the reasons when not.
- `GET /status`: the engine's status as JSON.
- `GET /metrics`: the same status as Prometheus metrics, read at scrape time.
- `POST /tasks/NAME/ACTION`: pause, resume or cancel a task; answers the task as JSON.
- `POST /fts/restore`: restore deferred FTS triggers now; answers the FTS state as JSON.
- `POST /sync/SOURCE?mode=auto|full|incremental`: run a source now (joining a run under
  way) and answer the run as JSON once it has ended.

Errors are answered as JSON `{"error": ...}` and never printed.

Every POST needs the engine's token (`sqlwarden.endpoint_token`), sent as
`Authorization: Bearer TOKEN` (the scheme in any case) or `X-Sqlwarden-Token:
TOKEN`; missing, wrong, or given twice it is 401 and nothing is done. A token
in the query string does not count. The GETs stay open: they only read.

Hostile clients are bounded: a body over `MAX_BODY_BYTES` is 413 and a chunked
one 411, both answered without reading it; the request line and headers may
take `MAX_HEAD_BYTES` (431 past it); each read waits at most `READ_TIMEOUT_S`
and the whole request must arrive within `REQUEST_DEADLINE_S` (a half-sent one
is dropped, or 408 mid-body); at most `MAX_CONNECTIONS` connections are
served at once, each on its own thread, and one more is answered 503 at once
and closed. One request per connection (HTTP/1.0), so nobody keeps a thread
by keeping a connection alive. Methods other than GET and POST are 405.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from sqlwarden.endpoint_token import same_token
from sqlwarden.errors import (
    EngineStopped,
    MirrorError,
    MirrorUnavailable,
    ServiceError,
    SyncBusy,
    TaskConflict,
    UnknownSource,
    UnknownTask,
)

PREFIX = "sqlwarden_"
#: How often the serving thread looks whether stop() was called.
STOP_POLL_S = 0.1
ACTIONS = ("pause", "resume", "cancel")
TASK_STATES = ("pending", "running", "paused", "done", "failed", "cancelled")
PATHS = ("GET /healthz", "GET /status", "GET /metrics",
         f"POST /tasks/NAME/{'|'.join(ACTIONS)}", "POST /fts/restore", "POST /sync/SOURCE",
         "POST /mirror/reconcile", "POST /mirror/retry")
#: The largest request body read (the bodies mean nothing; the CLI sends none).
MAX_BODY_BYTES = 64 * 1024
#: The most the request line and headers together may take.
MAX_HEAD_BYTES = 32 * 1024
#: How long one read of a request may wait for the next bytes.
READ_TIMEOUT_S = 10.0
#: How long a whole request (line, headers, body) may take to arrive.
REQUEST_DEADLINE_S = 20.0
#: After answering, how long and how much of what a client still sends is dropped unread.
LINGER_S = 1.0
LINGER_BYTES = 256 * 1024
#: Connections served at once; one more is answered 503 and closed.
MAX_CONNECTIONS = 32
#: Methods answered 405 (any other unknown one is 501, as `http.server` does).
REFUSED_METHODS = ("PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
MIRROR_STATES = ("starting", "connecting", "up", "reconciling", "down", "failed")
FTS_STATES = ("live", "deferred", "restoring", "restore_failed")
#: Writer counters exported as `sqlwarden_writer_<key>_total`, with their help text.
WRITER_COUNTERS = {
    "messages": "Messages the writer handled.",
    "transactions": "Transactions the writer committed.",
    "rows_written": "Rows the writer wrote.",
    "failed_messages": "Messages the writer failed to apply.",
    "checkpoints": "WAL checkpoints run.",
    "busy_checkpoints": "WAL checkpoints that gave up because the database was busy.",
}


class _Reply(NamedTuple):
    code: int
    body: bytes
    content_type: str


def _json(code: int, body: Any) -> _Reply:
    return _Reply(code, json.dumps(body, default=str).encode(), "application/json")


class StatusServer:
    """Serves the engine's status from a background thread, one thread per connection.

    `token` is what every POST must send; `token_file` (its path, never the
    token) is named in the 401 answer. The limits default to the module's.
    """

    def __init__(self, host: str, port: int, *, status: Callable[[], dict[str, Any]],
                 health: Callable[[], tuple[bool, list[str]]], token: str,
                 token_file: str | None = None,
                 control: Callable[[str, str], dict[str, Any]] | None = None,
                 fts_restore: Callable[[], dict[str, Any]] | None = None,
                 sync_run: Callable[[str, str], dict[str, Any]] | None = None,
                 mirror_reconcile: Callable[[], dict[str, Any]] | None = None,
                 mirror_retry: Callable[[], dict[str, Any]] | None = None,
                 max_connections: int | None = None, read_timeout_s: float | None = None,
                 request_deadline_s: float | None = None) -> None:
        if len(token) < 16:
            raise ValueError("the status endpoint needs a token of 16 characters or more")
        self._token = token.encode()
        self._token_file = token_file
        # Read at construction, not import: a test lowers them to see a timeout quickly.
        self._read_timeout_s = READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s
        self._request_deadline_s = (REQUEST_DEADLINE_S if request_deadline_s is None
                                    else request_deadline_s)
        self._status = status
        self._mirror_reconcile = mirror_reconcile
        self._mirror_retry = mirror_retry
        self._sync_run = sync_run
        self._health = health
        self._control = control
        self._fts_restore = fts_restore
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(StatusCollector(status))
        try:
            self._server = _BoundedServer((host, port), self._handler(),
                                          MAX_CONNECTIONS if max_connections is None
                                          else max_connections)
        except OSError as exc:
            raise ServiceError(f"the status endpoint cannot listen on {host}:{port}: "
                               f"{exc.strerror or exc} (change status.port or status.host)"
                               ) from None
        self._started = False
        # stop() waits up to one poll interval; the default half second adds up.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": STOP_POLL_S},
                                        name="sqlwarden-status", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def _get(self, path: str) -> _Reply:
        """Answers a GET; runs on the request's thread."""
        if path == "/healthz":
            ok, reasons = self._health()
            return _json(200 if ok else 503, {"ok": ok, "reasons": reasons})
        if path == "/status":
            return _json(200, self._status())
        if path == "/metrics":
            return _Reply(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        return _not_found(path)

    def _post(self, target: str) -> _Reply:
        """Answers a POST; runs on the request's thread."""
        path, _, query = target.partition("?")
        match path.split("/"):
            case ["", "sync", name] if name:
                mode = parse_qs(query).get("mode", ["auto"])[-1]
                return self._run_source(unquote(name), mode)
            case ["", "tasks", name, action] if name and action in ACTIONS:
                return self._control_task(unquote(name), action)
            case ["", "fts", "restore"]:
                if self._fts_restore is None:
                    return _json(503, {"error": "FTS control is not available"})
                try:
                    return _json(200, self._fts_restore())
                except EngineStopped as exc:
                    return _json(503, {"error": str(exc)})
            case ["", "mirror", "reconcile"]:
                return self._reconcile()
            case ["", "mirror", "retry"]:
                if self._mirror_retry is None:
                    return _json(503, {"error": "the mirror is not available"})
                try:
                    return _json(200, self._mirror_retry())
                except EngineStopped as exc:
                    return _json(503, {"error": str(exc)})
            case ["", "tasks", *_]:
                return _json(400, {"error": f"expected POST /tasks/NAME/ACTION with ACTION "
                                            f"one of {', '.join(ACTIONS)}; got {path}"})
            case _:
                return _not_found(path)

    def _run_source(self, name: str, mode: str) -> _Reply:
        if self._sync_run is None:
            return _json(503, {"error": "sources are not available"})
        try:
            return _json(200, self._sync_run(name, mode))
        except UnknownSource as exc:
            return _json(404, {"error": str(exc)})
        except (SyncBusy, ValueError) as exc:
            return _json(409 if isinstance(exc, SyncBusy) else 400, {"error": str(exc)})
        except EngineStopped as exc:
            return _json(503, {"error": str(exc)})

    def _reconcile(self) -> _Reply:
        if self._mirror_reconcile is None:
            return _json(503, {"error": "the mirror is not available"})
        try:
            return _json(200, self._mirror_reconcile())
        except MirrorUnavailable as exc:
            return _json(503, {"error": str(exc)})
        except MirrorError as exc:
            return _json(409 if "no enabled mirror" in str(exc) else 502, {"error": str(exc)})
        except EngineStopped as exc:
            return _json(503, {"error": str(exc)})

    def _control_task(self, name: str, action: str) -> _Reply:
        if self._control is None:
            return _json(503, {"error": "task control is not available"})
        try:
            return _json(200, self._control(name, action))
        except UnknownTask as exc:
            return _json(404, {"error": str(exc)})
        except TaskConflict as exc:
            return _json(409, {"error": str(exc)})
        except EngineStopped as exc:
            return _json(503, {"error": str(exc)})

    def authorized(self, headers: Any) -> bool:
        """Whether `headers` carry the token, as a bearer token or in our header; when given
        more than once, every copy must be it."""
        given: list[str] = []
        for value in headers.get_all("Authorization") or ():
            scheme, _, credentials = str(value).strip().partition(" ")
            # RFC 9110: the scheme is case-insensitive. Another scheme counts as a wrong token.
            given.append(credentials.strip() if scheme.lower() == "bearer" else "")
        given.extend(str(value).strip() for value in headers.get_all("X-Sqlwarden-Token") or ())
        return bool(given) and all(same_token(value.encode(), self._token)
                                   for value in given)

    def _unauthorized(self) -> _Reply:
        where = f" (in {self._token_file})" if self._token_file else ""
        return _json(401, {"error": "this needs the engine's token: send Authorization: Bearer "
                                    f"TOKEN with the token the engine wrote at start{where}"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Error answers before the request line was understood get a status line too.
            default_request_version = "HTTP/1.0"
            server_version = "sqlwarden"
            sys_version = ""
            timeout = server._read_timeout_s  # the socket's, until the reader takes over

            def setup(self) -> None:
                super().setup()
                # What an answer needs, for one given before the request line was read whole.
                self.command, self.requestline, self.request_version = "", "", "HTTP/1.0"
                # Our reader in place of the stream's own (closed: it holds the socket open).
                self.rfile.close()
                self._reader = _BoundedReader(
                    self.connection, read_timeout_s=server._read_timeout_s,
                    deadline=time.monotonic() + server._request_deadline_s,
                    limit=MAX_HEAD_BYTES)
                self.rfile = io.BufferedReader(self._reader)

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except _TooLarge:
                    self._send(_json(431, {"error": "the request line and headers are too "
                                                    f"large (at most {MAX_HEAD_BYTES} bytes)"}))
                except TimeoutError:
                    pass  # half-sent headers: nobody to answer; the connection and thread go
                self.close_connection = True  # one request per connection, however it went

            def finish(self) -> None:
                super().finish()
                self._linger()

            def _linger(self) -> None:
                """Stop sending, then drop what the client still sends, for a while and up to
                a bound: closing with unread bytes resets the connection, and the client
                would lose the answer (a 413 to a body it is still sending, say)."""
                deadline = time.monotonic() + LINGER_S
                left = LINGER_BYTES
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_WR)
                    while left > 0 and (wait := deadline - time.monotonic()) > 0:
                        self.connection.settimeout(wait)
                        got = self.connection.recv(min(left, 64 * 1024))
                        if not got:
                            break
                        left -= len(got)

            def do_GET(self) -> None:
                self._reply(server._get)

            def do_POST(self) -> None:
                refused = self._refuse_body()
                if refused is not None:
                    self._send(refused)
                    return
                if not server.authorized(self.headers):
                    self._send(server._unauthorized())
                    return
                length = int(self.headers.get("Content-Length") or 0)
                self._reader.allow(length)
                try:
                    self.rfile.read(length)  # the body means nothing; read to keep TCP calm
                except TimeoutError:
                    self._send(_json(408, {"error": "the request body did not arrive in time"}))
                    return
                self._reply(server._post, query=True)

            def _refuse_body(self) -> _Reply | None:
                """The answer to a body that is not read: chunked, unclear or too large."""
                if self.headers.get_all("Transfer-Encoding"):
                    return _json(411, {"error": "a chunked body is not accepted; send "
                                                f"Content-Length (at most {MAX_BODY_BYTES})"})
                lengths = {str(v).strip() for v in self.headers.get_all("Content-Length") or ()}
                if not lengths:
                    return None
                length = lengths.pop() if len(lengths) == 1 else ""
                if not (length.isascii() and length.isdigit() and len(length) <= 19):
                    return _json(400, {"error": "bad Content-Length"})
                if int(length) > MAX_BODY_BYTES:
                    return _json(413, {"error": f"the request body is too large (at most "
                                                f"{MAX_BODY_BYTES} bytes)"})
                return None

            def _refuse_method(self) -> None:
                self._send(_json(405, {"error": f"method {self.command} is not allowed; "
                                                "GET reads, POST controls"}),
                           allow="GET, POST")

            do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse_method
            do_TRACE = do_CONNECT = _refuse_method

            def _reply(self, route: Callable[[str], _Reply], query: bool = False) -> None:
                try:
                    reply = route(self.path if query else self.path.split("?", 1)[0])
                except Exception as exc:
                    reply = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
                self._send(reply)

            def _send(self, reply: _Reply, *, allow: str | None = None) -> None:
                # The reader may have shortened the socket's timeout to the deadline's rest.
                with contextlib.suppress(OSError):
                    self.connection.settimeout(server._read_timeout_s)
                self.send_response(reply.code)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                if reply.code == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="sqlwarden"')
                if allow is not None:
                    self.send_header("Allow", allow)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not news (and a request line may hold anything)

        return Handler


def _not_found(path: str) -> _Reply:
    return _json(404, {"error": f"no such path {path}", "paths": list(PATHS)})


class _TooLarge(Exception):
    """The request went past what the reader allows."""


class _BoundedReader(io.RawIOBase):
    """A request's socket, read within a byte limit and a deadline.

    Each read waits at most `read_timeout_s`, and none starts after
    `deadline` (a client dripping one byte at a time must not keep its thread
    for ever); past it `TimeoutError` is raised, past `limit` bytes `_TooLarge`.
    """

    def __init__(self, sock: socket.socket, *, read_timeout_s: float, deadline: float,
                 limit: int) -> None:
        super().__init__()
        self._sock = sock
        self._read_timeout_s = read_timeout_s
        self._deadline = deadline
        self._limit = limit
        self._read = 0

    def allow(self, more: int) -> None:
        """Let `more` bytes (a body of that length) be read past the headers' limit."""
        self._limit += more

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        room = self._limit - self._read
        if room <= 0:
            raise _TooLarge
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(min(self._read_timeout_s, left))
        with memoryview(buffer) as view:
            got = self._sock.recv_into(view[:room])
        self._read += got
        return got


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `limit` at once; one more is answered 503."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _turn_away(self, request: socket.socket) -> None:
        """Answer 503 on the accepting thread without waiting for anything, and close."""
        body = json.dumps({"error": "too many connections to the status endpoint; "
                                    "try again shortly"}).encode()
        head = (f"HTTP/1.0 503 {HTTPStatus(503).phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            request.setblocking(False)  # a full send buffer drops the answer, not the server
            request.send(head + body)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is its own business, not stderr's


class StatusCollector:
    """Turns the engine's status into Prometheus metrics at scrape time."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield GaugeMetricFamily(f"{PREFIX}up", "1 when the engine is running.",
                                value=float(status.get("state") == "running"))
        database = _section(status, "database")
        if "size_bytes" in database:
            yield GaugeMetricFamily(f"{PREFIX}database_bytes", "Size of the database file.",
                                    value=database["size_bytes"])
        if "wal_bytes" in database:
            yield GaugeMetricFamily(f"{PREFIX}wal_bytes", "Size of the WAL file.",
                                    value=database["wal_bytes"])
        writer = _section(status, "writer")
        for key, help_text in WRITER_COUNTERS.items():
            if key in writer:
                yield CounterMetricFamily(f"{PREFIX}writer_{key}", help_text, value=writer[key])
        # The facade reports the queue depth even when the writer does not answer.
        queue_depth = status.get("writer", {}).get("queue_depth")
        if queue_depth is not None:
            yield GaugeMetricFamily(f"{PREFIX}writer_queue_depth",
                                    "Messages waiting for the writer.", value=queue_depth)
        failures = _section(status, "failures")
        if "total" in failures:
            yield CounterMetricFamily(f"{PREFIX}failures", "Failures the supervisor recorded.",
                                      value=failures["total"])
        tasks = status.get("tasks")
        if isinstance(tasks, list):
            yield from _task_metrics(tasks)
        # Its "error" key is the last restore failure, not a missing answer.
        fts = status.get("fts")
        if isinstance(fts, dict) and "state" in fts:
            yield from _fts_metrics(fts)
        mirror = status.get("mirror")
        if isinstance(mirror, dict) and "state" in mirror:
            yield from _mirror_metrics(mirror)


def _section(status: dict[str, Any], key: str) -> dict[str, Any]:
    """The status section `key`, or {} when it is missing or only says what went wrong."""
    value = status.get(key)
    return value if isinstance(value, dict) and "error" not in value else {}


def _task_metrics(tasks: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per-task metrics labelled `task`; values a task does not know yet are left out."""
    gauges = {
        "processed": GaugeMetricFamily(f"{PREFIX}task_rows_processed",
                                       "Rows the task has processed.", labels=["task"]),
        "total": GaugeMetricFamily(f"{PREFIX}task_rows_eligible",
                                   "Rows the task expects to process.", labels=["task"]),
        "rate_rows_s": GaugeMetricFamily(f"{PREFIX}task_rate_rows_per_second",
                                         "Rows per second the task is processing.",
                                         labels=["task"]),
        "eta_s": GaugeMetricFamily(f"{PREFIX}task_eta_seconds",
                                   "Seconds until the task should be done.", labels=["task"]),
    }
    state = GaugeMetricFamily(f"{PREFIX}task_state", "1 for the state the task is in.",
                              labels=["task", "state"])
    save_failures = CounterMetricFamily(f"{PREFIX}task_progress_save_failures",
                                        "Times saving the task's progress failed.",
                                        labels=["task"])
    for task in tasks:
        name = str(task["name"])
        for key, gauge in gauges.items():
            if task.get(key) is not None:
                gauge.add_metric([name], task[key])
        for candidate in TASK_STATES:
            state.add_metric([name, candidate], float(task.get("status") == candidate))
        save_failures.add_metric([name], task.get("progress_save_failures") or 0)
    for family in (*gauges.values(), state, save_failures):
        if family.samples:
            yield family


def _fts_metrics(fts: dict[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily(f"{PREFIX}fts_state", "1 for the state FTS upkeep is in.",
                              labels=["state"])
    for candidate in FTS_STATES:
        state.add_metric([candidate], float(fts["state"] == candidate))
    yield state
    yield GaugeMetricFamily(f"{PREFIX}fts_deferred_tables",
                            "FTS tables whose triggers are deferred (their index is stale).",
                            value=len(fts.get("tables") or ()))
    yield GaugeMetricFamily(f"{PREFIX}fts_restore_attempts_failed",
                            "Failed restore attempts since the last success.",
                            value=fts.get("attempts") or 0)


def _mirror_metrics(mirror: dict[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily(f"{PREFIX}mirror_state", "1 for the state the mirror is in.",
                              labels=["state"])
    for candidate in MIRROR_STATES:
        state.add_metric([candidate], float(mirror["state"] == candidate))
    yield state
    outbox = mirror.get("outbox") or {}
    if outbox.get("depth") is not None:
        yield GaugeMetricFamily(f"{PREFIX}mirror_outbox_depth",
                                "Changes recorded locally and not yet on the mirror.",
                                value=outbox["depth"])
    if outbox.get("oldest_age_s") is not None:
        yield GaugeMetricFamily(f"{PREFIX}mirror_outbox_oldest_seconds",
                                "Age of the oldest change not yet on the mirror.",
                                value=outbox["oldest_age_s"])
    for key, name in (("lag_p50_ms", "p50"), ("lag_p99_ms", "p99")):
        if mirror.get(key) is not None:
            yield GaugeMetricFamily(f"{PREFIX}mirror_lag_{name}_seconds",
                                    f"{name} of the time from a change to its mirror commit, "
                                    "over the last drained changes.", value=mirror[key] / 1000)
    yield CounterMetricFamily(f"{PREFIX}mirror_drained_changes",
                              "Outbox changes written to the mirror.",
                              value=mirror.get("drained_changes") or 0)
    yield CounterMetricFamily(f"{PREFIX}mirror_reconciles", "Reconciles completed.",
                              value=mirror.get("reconciles") or 0)
    yield CounterMetricFamily(f"{PREFIX}mirror_reconciles_failed", "Reconciles that failed.",
                              value=mirror.get("reconciles_failed") or 0)
    yield CounterMetricFamily(f"{PREFIX}mirror_failovers",
                              "Times the mirror moved to another host after losing one.",
                              value=mirror.get("failovers") or 0)
    yield CounterMetricFamily(f"{PREFIX}mirror_transaction_retries",
                              "Mirror transactions sent again whole after a deadlock, a lock "
                              "wait timeout or a certification conflict.",
                              value=mirror.get("transaction_retries") or 0)
    if mirror.get("node"):
        node = GaugeMetricFamily(f"{PREFIX}mirror_node", "1 for the host the mirror uses.",
                                 labels=["node"])
        node.add_metric([str(mirror["node"])], 1.0)
        yield node
    yield GaugeMetricFamily(f"{PREFIX}mirror_waiting",
                            "1 while the mirror waits (its server, a locked database, a full "
                            "disk) and retries by itself.",
                            value=float(bool(mirror.get("waiting_for"))))
    quarantine = mirror.get("quarantine") or {}
    if quarantine.get("count") is not None:
        yield GaugeMetricFamily(f"{PREFIX}mirror_quarantined_rows",
                                "Rows the mirror could not send, kept off it until they change "
                                "or are retried.", value=quarantine["count"])
