"""The status endpoint over real HTTP, with fake status, health and control callables."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sqlwarden.errors import EngineStopped, TaskConflict, UnknownTask
from sqlwarden.statusd import StatusServer

#: The token the servers here are started with; every POST sends it unless a test says not.
TOKEN = "test-token-0123456789abcdef"


def task(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "x", "version": 1, "table": "sites", "status": "running", "processed": 250,
        "total": 1000, "checkpoint": 250, "bound": 1000, "attempts": 1, "error": None,
        "waiting": None, "provides": None, "rate_rows_s": 50.0, "eta_s": 15.0,
        "progress_saved": 3, "progress_save_failures": 0, "last_progress_save_error": None}
    values.update(overrides)
    return values


def running_status() -> dict[str, Any]:
    return {
        "state": "running",
        "database": {"path": "/data/test.db", "size_bytes": 4096, "wal_bytes": 8192},
        "writer": {"messages": 7, "transactions": 5, "rows_written": 40, "failed_messages": 1,
                   "wal_frames": 2, "wal_file_bytes": 8192, "checkpoints": 3,
                   "forced_checkpoints": 0, "busy_checkpoints": 1, "queue_depth": 2},
        "tasks": [task(), task(name="y", status="paused", total=None, rate_rows_s=None,
                               eta_s=None, progress_save_failures=2)],
        "failures": {"total": 4, "recent": []},
    }


@dataclass
class Fakes:
    """What the server is handed, and what it asked the engine to do."""

    status: dict[str, Any] = field(default_factory=running_status)
    health: tuple[bool, list[str]] = (True, [])
    error: Exception | None = None
    status_error: Exception | None = None
    controls: list[tuple[str, str]] = field(default_factory=list)

    def read_status(self) -> dict[str, Any]:
        if self.status_error is not None:
            raise self.status_error
        return self.status

    def control(self, name: str, action: str) -> dict[str, Any]:
        self.controls.append((name, action))
        if self.error is not None:
            raise self.error
        return task(name=name, status="paused")


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def serve(fakes: Fakes) -> Iterator[Callable[..., str]]:
    """Starts a server on a free loopback port and returns its URL; stops it afterwards."""
    servers: list[StatusServer] = []

    def start(*, control: bool = True) -> str:
        server = StatusServer("127.0.0.1", 0, status=fakes.read_status,
                              health=lambda: fakes.health, token=TOKEN,
                              control=fakes.control if control else None)
        servers.append(server)
        server.start()
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def url(serve: Callable[..., str]) -> str:
    return serve()


def fetch(url: str, *, method: str = "GET", body: bytes | None = None
          ) -> tuple[int, str, str]:
    """(status code, content type, body) of a request, whether it succeeded or not."""
    headers = {"Authorization": f"Bearer {TOKEN}"} if method == "POST" else {}
    request = urllib.request.Request(url, method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def post(url: str, body: bytes = b"") -> tuple[int, Any]:
    code, _, text = fetch(url, method="POST", body=body)
    return code, json.loads(text)


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The /metrics samples by name and sorted labels."""
    code, content_type, text = fetch(f"{url}/metrics")
    assert code == 200
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_healthz_is_ok_while_the_engine_is_steady(url: str) -> None:
    code, _, text = fetch(f"{url}/healthz")
    assert (code, json.loads(text)) == (200, {"ok": True, "reasons": []})


def test_healthz_is_503_with_the_reasons_when_the_engine_is_not_steady(
        fakes: Fakes, url: str) -> None:
    fakes.health = (False, ["task x@1 failed: disk full"])
    code, _, text = fetch(f"{url}/healthz")
    assert (code, json.loads(text)) == (503, {"ok": False,
                                              "reasons": ["task x@1 failed: disk full"]})


def test_status_is_the_engines_status_as_json(fakes: Fakes, url: str) -> None:
    code, content_type, text = fetch(f"{url}/status")
    assert (code, content_type) == (200, "application/json")
    assert json.loads(text) == fakes.status


def test_metrics_show_the_database_the_writer_and_failures(url: str) -> None:
    seen = samples(url)
    assert seen[("sqlwarden_up", ())] == 1
    assert seen[("sqlwarden_database_bytes", ())] == 4096
    assert seen[("sqlwarden_wal_bytes", ())] == 8192
    assert seen[("sqlwarden_writer_messages_total", ())] == 7
    assert seen[("sqlwarden_writer_transactions_total", ())] == 5
    assert seen[("sqlwarden_writer_rows_written_total", ())] == 40
    assert seen[("sqlwarden_writer_failed_messages_total", ())] == 1
    assert seen[("sqlwarden_writer_checkpoints_total", ())] == 3
    assert seen[("sqlwarden_writer_busy_checkpoints_total", ())] == 1
    assert seen[("sqlwarden_writer_queue_depth", ())] == 2
    assert seen[("sqlwarden_failures_total", ())] == 4


def test_metrics_show_each_tasks_progress_and_leave_out_what_it_does_not_know(url: str) -> None:
    seen = samples(url)
    x, y = (("task", "x"),), (("task", "y"),)
    assert seen[("sqlwarden_task_rows_processed", x)] == 250
    assert seen[("sqlwarden_task_rows_eligible", x)] == 1000
    assert seen[("sqlwarden_task_rate_rows_per_second", x)] == 50
    assert seen[("sqlwarden_task_eta_seconds", x)] == 15
    assert seen[("sqlwarden_task_progress_save_failures_total", y)] == 2
    assert ("sqlwarden_task_rows_eligible", y) not in seen
    assert ("sqlwarden_task_rate_rows_per_second", y) not in seen
    assert ("sqlwarden_task_eta_seconds", y) not in seen


def test_metrics_mark_the_state_each_task_is_in(url: str) -> None:
    states = {(dict(labels)["task"], dict(labels)["state"]): value
              for (name, labels), value in samples(url).items()
              if name == "sqlwarden_task_state"}
    assert {key for key, value in states.items() if value == 1} == {("x", "running"),
                                                                    ("y", "paused")}
    assert len(states) == 12


def test_metrics_are_read_at_scrape_time(fakes: Fakes, url: str) -> None:
    assert samples(url)[("sqlwarden_writer_rows_written_total", ())] == 40
    fakes.status["writer"]["rows_written"] = 41
    assert samples(url)[("sqlwarden_writer_rows_written_total", ())] == 41


def test_metrics_leave_out_sections_that_could_not_be_read(fakes: Fakes, url: str) -> None:
    fakes.status = {"state": "stopping", "writer": {"error": "no answer within 2.0s (busy)",
                                                    "queue_depth": 9},
                    "tasks": {"error": "backfill is not running"}}
    assert samples(url) == {("sqlwarden_up", ()): 0, ("sqlwarden_writer_queue_depth", ()): 9}


def test_pausing_a_task_answers_the_task_after_the_action(fakes: Fakes, url: str) -> None:
    code, body = post(f"{url}/tasks/x/pause")
    assert (code, body["name"], body["status"]) == (200, "x", "paused")
    assert fakes.controls == [("x", "pause")]


def test_a_request_body_is_ignored(fakes: Fakes, url: str) -> None:
    code, _ = post(f"{url}/tasks/x/resume", body=b'{"please": "ignore me"}')
    assert code == 200
    assert fakes.controls == [("x", "resume")]


def test_an_unknown_task_is_404_with_the_message(fakes: Fakes, url: str) -> None:
    fakes.error = UnknownTask("no task named 'nope' (known: x, y)", task="nope")
    assert post(f"{url}/tasks/nope/cancel") == (404, {"error": "no task named 'nope' "
                                                               "(known: x, y)"})


def test_an_action_the_tasks_state_does_not_allow_is_409(fakes: Fakes, url: str) -> None:
    fakes.error = TaskConflict("x is done; it cannot be paused", task="x")
    assert post(f"{url}/tasks/x/pause") == (409, {"error": "x is done; it cannot be paused"})


@pytest.mark.parametrize("path", ["/tasks/x/explode", "/tasks/x", "/tasks//pause",
                                  "/tasks/x/pause/now"])
def test_a_malformed_task_path_is_400_and_nothing_is_done(
        fakes: Fakes, url: str, path: str) -> None:
    code, body = post(f"{url}{path}")
    assert code == 400
    assert "expected POST /tasks/NAME/ACTION" in body["error"]
    assert fakes.controls == []


def test_task_control_is_503_when_the_engine_offers_none(serve: Callable[..., str]) -> None:
    url = serve(control=False)
    assert post(f"{url}/tasks/x/pause") == (503, {"error": "task control is not available"})


def test_task_control_is_503_while_the_engine_is_stopped(fakes: Fakes, url: str) -> None:
    fakes.error = EngineStopped("backfill")
    assert post(f"{url}/tasks/x/pause") == (503, {"error": "backfill is not running"})


def test_an_unexpected_error_is_500_with_its_message_and_no_traceback(
        fakes: Fakes, url: str, capfd: pytest.CaptureFixture[str]) -> None:
    fakes.error = RuntimeError("the cat sat on the keyboard")
    assert post(f"{url}/tasks/x/pause") == (500, {"error": "RuntimeError: the cat sat on "
                                                           "the keyboard"})
    assert capfd.readouterr().err == ""


def test_a_scrape_while_status_fails_is_500_with_the_error_and_no_traceback(
        fakes: Fakes, url: str, capfd: pytest.CaptureFixture[str]) -> None:
    fakes.status_error = OSError("disk on fire")
    code, _, text = fetch(f"{url}/metrics")
    assert (code, json.loads(text)) == (500, {"error": "OSError: disk on fire"})
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_unknown_path_is_404_with_the_paths_there_are(url: str, method: str) -> None:
    code, _, text = fetch(f"{url}/nothing", method=method, body=b"" if method == "POST" else None)
    assert code == 404
    assert json.loads(text)["paths"] == ["GET /healthz", "GET /status", "GET /metrics",
                                         "POST /tasks/NAME/pause|resume|cancel",
                                         "POST /fts/restore", "POST /sync/SOURCE",
                                         "POST /mirror/reconcile", "POST /mirror/retry"]
