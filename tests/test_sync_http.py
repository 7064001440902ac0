"""The HTTP source against a real API on loopback: paging, cursor, retries, FTS."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import apsw
import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.errors import SyncBusy
from sqlwarden.facade import Engine

from .conftest import read_only, table_digest
from .support.loopback import LoopbackServer, send_json

WORDS = ("pump", "valve", "meter", "storm", "flood", "cable", "turbine", "gasket", "filter",
         "sensor", "alarm", "battery", "drift", "signal", "culvert", "reservoir")


class Upstream:
    """A paginated JSON API: `GET /items?since=&page=&limit=`, newest-changed last.

    Tests queue behaviours for the next requests in `script`: a status code
    (with headers), `malformed` JSON, or `("hold", event)` to keep a request
    open until the event is set (the server says so on `held`).
    """

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self.script: deque[Any] = deque()
        self.requests: list[dict[str, str]] = []
        self.held = threading.Event()
        self._lock = threading.Lock()
        self.server = LoopbackServer(self._serve)

    @property
    def url(self) -> str:
        return self.server.origin + "/items"

    def put(self, i: int, updated: str, text: str | None = None) -> None:
        body = text if text is not None else " ".join(WORDS[(i * k) % len(WORDS)]
                                                      for k in range(1, 6))
        with self._lock:
            self.records[i] = {"id": i, "name": f"item {i}", "body": body, "updated": updated}

    def rows(self) -> list[tuple[Any, ...]]:
        return sorted((r["id"], r["name"], r["body"], r["updated"])
                      for r in self.records.values())

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query))
        with self._lock:
            self.requests.append(query)
            action = self.script.popleft() if self.script else None
            matching = sorted((r for r in self.records.values()
                               if "since" not in query or r["updated"] >= query["since"]),
                              key=lambda r: (r["updated"], r["id"]))
        if isinstance(action, tuple) and action[0] == "hold":
            self.held.set()
            action[1].wait(30)
            action = None
        if isinstance(action, tuple) and isinstance(action[0], int):
            code, headers = action
            send_json(handler, code, b'{"error": "scripted"}', headers)
            return
        if action == "malformed":
            send_json(handler, 200, b'{"data": [{"id": 1, "name": ')
            return
        page, limit = int(query.get("page", 1)), int(query.get("limit", 50))
        data = matching[(page - 1) * limit:page * limit]
        send_json(handler, 200, json.dumps({"data": data, "total": len(matching)}).encode())

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def stamp(minute: int) -> str:
    return f"2026-03-{1 + minute // 1440:02d}T{minute // 60 % 24:02d}:{minute % 60:02d}:00Z"


def http_config(tmp_path: Path, url: str, *, name: str = "data", fts_enabled: bool = True,
                extra: str = "", threshold: int = 5000, timeout_s: float = 5,
                total: bool = True) -> Config:
    text = f"""\
database: {{path: {tmp_path / name / 'test.db'}}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
      body: text
      updated: {{type: timestamp, not_null: true}}
    indexes: [[updated]]
    fts: [name, body]
sources:
  api:
    kind: http
    url: {url}
    table: items
    updated: updated
    total_at: {"total" if total else "null"}
    page_size: 50
    retries: [50ms, 100ms]
    timeout_s: {timeout_s}
{extra}
fts_deferral: {{enabled: {str(fts_enabled).lower()}, threshold_rows: {threshold}}}
message_log: {{path: {tmp_path / name / 'messages.jsonl'}}}
"""
    return parse_config(text, file="test.yaml", base_dir=tmp_path)


def table_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.read() as conn:
        return list(conn.execute("SELECT id, name, body, updated FROM items ORDER BY id"))


def fill(upstream: Upstream, count: int, *, start: int = 1) -> None:
    for i in range(start, start + count):
        upstream.put(i, stamp(i))


def test_a_catch_up_pages_through_the_api_and_then_asks_since_the_newest_row(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 230)
    with Engine(http_config(tmp_path, upstream.url)) as engine:
        first = engine.sync.run("api")
        assert (first.status, first.mode, first.rows, first.rejects) == ("ok", "full", 230, 0)
        assert table_rows(engine) == upstream.rows()
        assert [q.get("page") for q in upstream.requests] == ["1", "2", "3", "4", "5"]
        assert all("since" not in q for q in upstream.requests)

        upstream.requests.clear()
        for i in (3, 100, 230):  # changed upstream: newer `updated`
            upstream.put(i, stamp(1000 + i), text="changed text")
        fill(upstream, 4, start=231)
        second = engine.sync.run("api")
        # Inclusive boundary: the newest stored row comes again, unchanged, and is not
        # counted as written.
        assert upstream.requests[0]["since"] == stamp(230)
        assert (second.status, second.mode, second.rows) == ("ok", "incremental", 7)
        assert table_rows(engine) == upstream.rows()
        history = engine.sync.history("api")
        assert [(r.id, r.mode, r.status, r.rows) for r in history] == [
            (second.id, "incremental", "ok", 7), (first.id, "full", "ok", 230)]


def test_a_row_that_appears_with_an_older_updated_is_repaired_by_the_full_refetch(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 120)
    config = http_config(tmp_path, upstream.url, extra="    full_every: 1d")
    with Engine(config) as engine:
        assert engine.sync.run("api").mode == "full"
        upstream.put(999, stamp(5))  # served late: older than the cursor
        incremental = engine.sync.run("api")
        assert incremental.mode == "incremental"
        assert 999 not in [row[0] for row in table_rows(engine)]
        # A day later, the next run is a full refetch. (The engine refuses writes to its
        # bookkeeping, so the clock is turned back from another connection.)
        other = apsw.Connection(str(config.database.path))
        other.execute("UPDATE _sw_sync_runs SET ended_at = ended_at - 86401 WHERE mode = 'full'")
        other.close()
        repaired = engine.sync.run("api")
        assert repaired.mode == "full" and repaired.status == "ok"
        assert table_rows(engine) == upstream.rows()


def test_a_429_skips_the_retries_and_honours_retry_after(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 20)
    upstream.script.append((429, {"Retry-After": "3600"}))
    with Engine(http_config(tmp_path, upstream.url)) as engine:
        run = engine.sync.run("api")
        assert run.status == "failed" and "HTTP 429" in (run.error or "")
        (view,) = engine.sync.wait("api")  # nothing pending: no retry was scheduled
        assert view.state == "idle" and view.next_reason is None
        assert view.not_before is not None and view.not_before >= time.time() + 3500
        assert len(engine.sync.history("api")) == 1 and len(upstream.requests) == 1
        with pytest.raises(SyncBusy, match="Retry-After"):
            engine.sync.run("api")


def test_server_errors_are_retried_with_backoff_until_the_run_succeeds(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 80)
    upstream.script.extend([(500, {}), (503, {})])
    with Engine(http_config(tmp_path, upstream.url)) as engine:
        first = engine.sync.run("api")
        assert first.status == "failed" and "HTTP 500" in (first.error or "")
        engine.sync.wait("api")
        runs = list(reversed(engine.sync.history("api")))
        assert [(r.status, r.reason, r.attempt) for r in runs] == [
            ("failed", "request", 1), ("failed", "retry", 2), ("ok", "retry", 3)]
        assert "HTTP 503" in (runs[1].error or "")
        assert table_rows(engine) == upstream.rows()


def test_a_malformed_page_fails_the_run_and_the_retry_goes_on_from_the_data(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 120)
    upstream.script.extend([None, "malformed"])  # page 1 fine, page 2 broken
    with Engine(http_config(tmp_path, upstream.url)) as engine:
        first = engine.sync.run("api")
        assert first.status == "failed" and first.rows == 50
        assert "page 2" in (first.error or "") and "not valid JSON" in (first.error or "")
        engine.sync.wait("api")
        retry = engine.sync.history("api")[0]
        assert retry.status == "ok" and retry.mode == "incremental"
        assert table_rows(engine) == upstream.rows()


def test_a_slow_page_holds_neither_the_actor_nor_the_writer_and_a_second_trigger_joins(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 120)
    release = threading.Event()
    upstream.script.extend([None, ("hold", release)])
    with Engine(http_config(tmp_path, upstream.url)) as engine:
        first = engine.sync.run_later("api")
        assert upstream.held.wait(10)
        (view,) = engine.sync.status()
        assert view.state == "running" and view.current is not None
        second = engine.sync.run_later("api")  # joins
        with pytest.raises(SyncBusy, match="running already"):
            engine.sync.run("api", join=False)
        assert engine.write("INSERT INTO items VALUES (5000, 'local', NULL, "
                            "'2020-01-01T00:00:00Z')").changes == 1
        release.set()
        one, two = first.result(10), second.result(10)
        assert one == two and one.status == "ok"
        assert len(engine.sync.history("api")) == 1


def test_a_page_slower_than_the_timeout_fails_the_run_and_is_retried(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 30)
    release = threading.Event()
    upstream.script.append(("hold", release))
    try:
        with Engine(http_config(tmp_path, upstream.url, timeout_s=0.3)) as engine:
            run = engine.sync.run("api")
            assert run.status == "failed" and "timed out" in (run.error or "")
            engine.sync.wait("api")
            assert engine.sync.history("api")[0].status == "ok"
            assert table_rows(engine) == upstream.rows()
    finally:
        release.set()


FTS_QUERIES = ("pump", "valve OR storm", "turbine AND gasket", '"pump valve"', "sens*",
               "name:item", "changed", "alarm NOT pump", "culvert", "reservoir drift")


def fts_answers(path: Path) -> list[list[int]]:
    conn = read_only(path)
    try:
        return [[r[0] for r in conn.execute(
            "SELECT rowid FROM items_fts WHERE items_fts MATCH ? ORDER BY rowid", (q,))]
            for q in FTS_QUERIES]
    finally:
        conn.close()


def test_fts_results_after_a_large_http_catch_up_equal_a_control_with_live_triggers(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 1500)
    paths = []
    for name, deferred in (("deferred", True), ("control", False)):
        config = http_config(tmp_path, upstream.url, name=name, fts_enabled=deferred,
                             threshold=300)
        with Engine(config) as engine:
            first = engine.sync.run("api")
            assert first.status == "ok"
            assert bool(first.fts_lease and first.fts_lease.deferred) is deferred
            # A second, smaller catch-up that changes and adds rows: restored incrementally.
            for i in range(1, 1500, 4):
                upstream.put(i, stamp(3000 + i), text=f"changed {WORDS[i % 7]} item")
            fill(upstream, 100, start=5001)
            second = engine.sync.run("api")
            assert second.status == "ok" and second.rows == 475
            if deferred:
                assert second.fts_after is not None and second.fts_after.state == "live"
                (restored,) = second.fts_after.last_restore.tables  # type: ignore[union-attr]
                assert restored.mode == "incremental"
            assert engine.fts.status().state == "live"
            assert table_rows(engine) == upstream.rows()
            # Put back what the loop above changed, for the control's turn.
            for i in range(1, 1500, 4):
                upstream.put(i, stamp(i))
            for i in range(5001, 5101):
                upstream.records.pop(i)
        paths.append(config.database.path)
    assert table_digest(paths[0], "items") == table_digest(paths[1], "items")
    deferred_answers, control_answers = fts_answers(paths[0]), fts_answers(paths[1])
    assert deferred_answers == control_answers
    assert all(deferred_answers[i] for i in (0, 1, 6)), "queries must find something"


def test_without_a_total_the_deferral_begins_once_the_records_read_pass_the_threshold(
        tmp_path: Path, upstream: Upstream) -> None:
    fill(upstream, 400)
    with Engine(http_config(tmp_path, upstream.url, threshold=120, total=False)) as engine:
        run = engine.sync.run("api")
        assert run.status == "ok" and run.rows == 400
        assert run.fts_lease is not None and run.fts_lease.deferred
        assert "150" in run.fts_lease.reason  # 3 pages of 50 read when it began
        assert engine.fts.status().state == "live"
    check = apsw.Connection(str(tmp_path / "data" / "test.db"))
    check.execute("INSERT INTO items_fts(items_fts, rank) VALUES ('integrity-check', 1)")
    assert check.execute("SELECT count(*) FROM items_fts WHERE items_fts MATCH 'item'").get \
        == 400
    check.close()


def test_the_password_in_headers_stays_out_of_history_and_status(
        tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cret-token-value")
    fill(upstream, 5)
    upstream.script.append((500, {}))
    config = http_config(tmp_path, upstream.url + "?api_key=${API_TOKEN}",
                         extra="    headers: {Authorization: 'Bearer ${API_TOKEN}'}")
    with Engine(config) as engine:
        run = engine.sync.run("api")
        assert run.status == "failed"
        text = json.dumps(engine.status(), default=str) + repr(engine.sync.history())
        assert "s3cret-token-value" not in text
        engine.sync.wait("api")
    log = (tmp_path / "data" / "messages.jsonl").read_text()
    assert "s3cret-token-value" not in log

