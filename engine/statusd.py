"""The status endpoint over HTTP, on loopback unless configured.

- `GET /healthz`: 200 when the engine is steady, 503 with the reasons when not.
- `GET /status`: the engine's status as JSON.
- `GET /metrics`: the same status as Prometheus metrics, read at scrape time.
- `POST /tasks/NAME/ACTION`: pause, resume or cancel a task; answers the task as JSON.
- `POST /fts/restore`: restore deferred FTS triggers now; answers the FTS state as JSON.
- `POST /sync/SOURCE?mode=auto|full|incremental`: run a source now (joining a run under
  way) and answer the run as JSON once it has ended.

Errors are answered as JSON `{"error": ...}` and never printed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

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
    """Serves the engine's status from a background thread, one thread per request."""

    def __init__(self, host: str, port: int, *, status: Callable[[], dict[str, Any]],
                 health: Callable[[], tuple[bool, list[str]]],
                 control: Callable[[str, str], dict[str, Any]] | None = None,
                 fts_restore: Callable[[], dict[str, Any]] | None = None,
                 sync_run: Callable[[str, str], dict[str, Any]] | None = None,
                 mirror_reconcile: Callable[[], dict[str, Any]] | None = None,
                 mirror_retry: Callable[[], dict[str, Any]] | None = None) -> None:
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
            self._server = _QuietServer((host, port), self._handler())
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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply(server._get)

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length < 0:
                    self.close_connection = True
                    self._send(_json(400, {"error": "bad Content-Length"}))
                    return
                self.rfile.read(length)  # the body means nothing; read it to keep the stream clean
                self._reply(server._post, query=True)

            def _reply(self, route: Callable[[str], _Reply], query: bool = False) -> None:
                try:
                    reply = route(self.path if query else self.path.split("?", 1)[0])
                except Exception as exc:
                    reply = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
                self._send(reply)

            def _send(self, reply: _Reply) -> None:
                self.send_response(reply.code)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not news

        return Handler


def _not_found(path: str) -> _Reply:
    return _json(404, {"error": f"no such path {path}", "paths": list(PATHS)})


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

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
    yield GaugeMetricFamily(f"{PREFIX}mirror_waiting",
                            "1 while the mirror waits (its server, a locked database, a full "
                            "disk) and retries by itself.",
                            value=float(bool(mirror.get("waiting_for"))))
    quarantine = mirror.get("quarantine") or {}
    if quarantine.get("count") is not None:
        yield GaugeMetricFamily(f"{PREFIX}mirror_quarantined_rows",
                                "Rows the mirror could not send, kept off it until they change "
                                "or are retried.", value=quarantine["count"])
