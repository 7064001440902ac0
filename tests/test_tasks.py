"""Chunked tasks: proven completion, honest failure, control, readiness, cheap progress."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from sqlwarden.cli import main
from sqlwarden.config import Config, TaskConfig, parse_config
from sqlwarden.endpoint_token import read_token, token_path
from sqlwarden.errors import ConfigError, NotReady, TaskConflict, UnknownTask
from sqlwarden.facade import Engine
from sqlwarden.protocol import ProgressEvent, WriterStatus
from sqlwarden.replay.read import iter_records

from .conftest import read_only, sqlwarden, table_digest, wait_until

TASKS_YAML = """\
database:
  path: {db}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
      last_seen: text
      name_norm: text
  events:
    columns:
      id: {{type: integer, primary_key: true}}
      item_id: {{type: integer, not_null: true, references: items.id}}
      at: {{type: text, not_null: true}}
    indexes:
      - [item_id, at]
  names:
    columns:
      name: {{type: text, primary_key: true}}
      first_item: {{type: integer, not_null: true}}
message_log:
  path: {log}
{extra}"""

#: Seed 002's backfill: the newest event of each item, for items that have one.
LAST_SEEN = "(SELECT max(e.at) FROM events e WHERE e.item_id = items.id)"
LAST_SEEN_WHERE = ("last_seen IS NULL AND EXISTS "
                   "(SELECT 1 FROM events e WHERE e.item_id = items.id)")
LAST_SEEN_UPDATE = f"UPDATE items SET last_seen = {LAST_SEEN} WHERE {LAST_SEEN_WHERE}"


def last_seen_task(**overrides: Any) -> TaskConfig:
    values: dict[str, Any] = {"name": "last_seen", "table": "items",
                              "updates": (("last_seen", LAST_SEEN),), "where": LAST_SEEN_WHERE,
                              "min_rows": 500, "max_rows": 500, "yield_ms": 0,
                              "provides": "items.last_seen"}
    values.update(overrides)
    return TaskConfig(**values)


def tasks_config(tmp_path: Path, extra: str = "") -> Config:
    text = TASKS_YAML.format(db=tmp_path / "data" / "t.db", log=tmp_path / "data" / "m.jsonl",
                             extra=extra)
    return parse_config(text, file="tasks.yaml", base_dir=tmp_path)


def item_rows(n: int) -> list[tuple[Any, ...]]:
    return [(i, f" Item {i % 97} ", None, None) for i in range(1, n + 1)]


def event_rows(n_items: int) -> list[tuple[Any, ...]]:
    """Three events per item, except every fifth item, which has none (an orphan)."""
    rows = []
    for i in range(1, n_items + 1):
        if i % 5 == 0:
            continue
        rows += [(3 * i + k, i, f"2025-{1 + (i + k) % 12:02d}-{1 + (i * k) % 28:02d}")
                 for k in range(3)]
    return rows


def populate(config: Config, items: int) -> None:
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("items", item_rows(items))
        engine.write_many("events", event_rows(items))


def task_row(config: Config, name: str, version: int = 1) -> dict[str, Any]:
    conn = read_only(config.database.path)
    try:
        cursor = conn.execute("SELECT * FROM _sw_tasks WHERE name = ? AND version = ?",
                              (name, version))
        row = cursor.fetchone()
        assert row is not None, f"no _sw_tasks row for {name}@{version}"
        names = [d[0] for d in cursor.getdescription()]
        return dict(zip(names, row, strict=True))
    finally:
        conn.close()


def scalar(config: Config, sql: str) -> Any:
    conn = read_only(config.database.path)
    try:
        return conn.execute(sql).get
    finally:
        conn.close()


def messages(config: Config, kind: str = "", message: str = "") -> list[dict[str, Any]]:
    return [r for r in iter_records(config.message_log_path)
            if (not kind or r["kind"] == kind) and (not message or r["message"] == message)]


def control_copy(config: Config, folder: Path) -> Path:
    """A copy of the (stopped) database with the backfill done as one UPDATE."""
    folder.mkdir()
    copy = folder / "control.db"
    shutil.copy(config.database.path, copy)
    conn = apsw.Connection(str(copy))
    conn.execute(LAST_SEEN_UPDATE)
    conn.close()
    return copy


@pytest.fixture
def small(tmp_path: Path) -> Config:
    config = tasks_config(tmp_path)
    populate(config, 5_000)
    return config


# --- completion -------------------------------------------------------------------------


def test_a_chunked_task_ends_identical_to_one_update_on_a_copy(tmp_path: Path) -> None:
    config = tasks_config(tmp_path)
    populate(config, 50_000)
    control = control_copy(config, tmp_path / "control")
    with Engine(config, tasks=[last_seen_task(max_rows=5_000)]) as engine:
        [view] = engine.tasks.wait(timeout=120)
    assert (view.status, view.processed, view.total) == ("done", 40_000, 40_000)
    assert table_digest(config.database.path, "items") == table_digest(control, "items")
    assert scalar(config, "SELECT count(*) FROM items WHERE last_seen IS NULL") == 10_000
    chunks = messages(config, "ask", "writer.chunk")
    assert len(chunks) >= 10, "the work was cut into chunks"
    row = task_row(config, "last_seen")
    assert (row["status"], row["rows_processed"], row["bound"], row["attempts"]) == (
        "done", 40_000, 50_000, 1)


def test_a_done_task_does_not_run_again_and_a_new_version_does(small: Config) -> None:
    with Engine(small, tasks=[last_seen_task()]) as engine:
        engine.tasks.wait(timeout=60)
    first = task_row(small, "last_seen")
    chunks_before = len(messages(small, "ask", "writer.chunk"))
    with Engine(small, tasks=[last_seen_task()]) as engine:
        [view] = engine.tasks.wait(timeout=60)
        assert view.status == "done"
        engine.write("UPDATE items SET last_seen = NULL WHERE id <= 100")
    assert len(messages(small, "ask", "writer.chunk")) == chunks_before
    assert task_row(small, "last_seen") == first
    with Engine(small, tasks=[last_seen_task(version=2)]) as engine:
        [view] = engine.tasks.wait(timeout=60)
    assert (view.version, view.status, view.processed) == (2, "done", 80)
    assert scalar(small, "SELECT count(*) FROM items WHERE id <= 100 AND last_seen IS NULL") == 20
    assert task_row(small, "last_seen", 1)["status"] == "done"


def test_rows_inserted_above_the_bound_during_the_run_do_not_keep_it_going(
        small: Config) -> None:
    engines: list[Engine] = []
    inserted = threading.Event()

    def normalise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not inserted.is_set():
            inserted.set()
            # Runs inside the chunk; queued now, committed before the next chunk.
            engines[0].write_many("items", [(i, "new", None, None)
                                            for i in range(5_001, 7_001)], wait=False)
        return [{"name_norm": row["name"].strip().lower()} for row in rows]

    task = TaskConfig(name="norm", table="items", call=normalise, reads=("name",),
                      writes=("name_norm",), where="name_norm IS NULL", min_rows=400,
                      max_rows=400, yield_ms=0)
    with Engine(small, tasks=[task]) as engine:
        engines.append(engine)
        [view] = engine.tasks.wait(timeout=60)
    assert (view.status, view.bound, view.processed) == ("done", 5_000, 5_000)
    assert scalar(small, "SELECT count(*) FROM items WHERE id > 5000") == 2_000
    assert scalar(small, "SELECT count(*) FROM items WHERE name_norm IS NULL") == 2_000
    assert len(messages(small, "ask", "writer.chunk")) == 13  # 12 full ranges, a short one


def test_a_task_whose_change_leaves_rows_eligible_fails_instead_of_claiming_done(
        small: Config) -> None:
    task = TaskConfig(name="noop", table="items", updates=(("name_norm", "NULL"),),
                      where="name_norm IS NULL", min_rows=1_000, max_rows=1_000, yield_ms=0)
    with Engine(small, tasks=[task]) as engine:
        [view] = engine.tasks.wait(timeout=60)
    assert view.status == "failed"
    assert "5,000 rows at or below key 5000 still match 'where' after 3 passes" in (
        view.error or "")
    assert task_row(small, "noop")["status"] == "failed"


def test_a_lookup_table_is_filled_by_a_sql_task(small: Config) -> None:
    task = TaskConfig(
        name="names", table="items",
        sql="INSERT INTO names (name, first_item) SELECT trim(name), min(id) FROM items "
            "WHERE id > :lo AND id <= :hi GROUP BY trim(name) ON CONFLICT (name) DO NOTHING",
        where="trim(name) NOT IN (SELECT name FROM names)", min_rows=300, max_rows=300,
        yield_ms=0, provides="names")
    with Engine(small, tasks=[task]) as engine:
        [view] = engine.tasks.wait(timeout=60)
        with engine.read(requires=["names"]) as conn:
            found = conn.execute("SELECT count(*), sum(first_item) FROM names").fetchone()
    assert view.status == "done"
    assert found == (97, sum(range(1, 98)))


# --- failure ----------------------------------------------------------------------------


BROKEN_KEYS = {2_345}


def normalise_unless_broken(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        if row["id"] in BROKEN_KEYS:
            raise ValueError(f"cannot normalise item {row['id']}")
    return [{"name_norm": row["name"].strip().lower()} for row in rows]


def norm_task() -> TaskConfig:
    return TaskConfig(name="norm", table="items", call=normalise_unless_broken,
                      reads=("name",), writes=("name_norm",), where="name_norm IS NULL",
                      min_rows=500, max_rows=500, yield_ms=0, provides="items.name_norm")


def test_a_callable_that_raises_on_one_row_fails_the_task_before_that_row(
        small: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    with Engine(small, tasks=[norm_task()]) as engine:
        [view] = engine.tasks.wait(timeout=60)
        assert view.status == "failed"
        assert "ValueError: cannot normalise item 2345" in (view.error or "")
        assert view.checkpoint == 2_000
        with pytest.raises(NotReady) as info, engine.read(requires=["items.name_norm"]):
            pass
        assert (info.value.name, info.value.processed, info.value.total) == (
            "items.name_norm", 2_000, 5_000)
        assert info.value.status == "failed"
        healthy, reasons = engine.health()
        assert not healthy and "task norm@1 failed" in reasons[0]
    row = task_row(small, "norm")
    assert (row["status"], row["checkpoint"], row["attempts"]) == ("failed", 2_000, 1)
    assert "2345" in row["error"]
    assert scalar(small, "SELECT max(id) FROM items WHERE name_norm IS NOT NULL") == 2_000
    # The next start retries from the checkpoint and counts the attempt.
    monkeypatch.setattr("tests.test_tasks.BROKEN_KEYS", set())
    with Engine(small, tasks=[norm_task()]) as engine:
        [view] = engine.tasks.wait(timeout=60)
        with engine.read(requires=["items.name_norm"]) as conn:
            assert conn.execute("SELECT count(*) FROM items WHERE name_norm IS NULL"
                                ).fetchone() == (0,)
    assert (view.status, view.attempts, view.processed) == ("done", 2, 3_000)
    starts = [c for c in messages(small, "ask", "writer.chunk") if c["fields"]["after"] == 2_000]
    assert len(starts) == 2, "the failed chunk, then the retry from the same checkpoint"


def test_a_task_whose_sql_does_not_compile_fails_and_the_others_still_run(
        tmp_path: Path) -> None:
    config = tasks_config(tmp_path, extra="""\
tasks:
  broken:
    table: items
    set: {name_norm: "lower(nonexistent_column)"}
  fine:
    table: items
    set: {name_norm: "lower(trim(name))"}
    where: name_norm IS NULL
  unimportable:
    table: items
    call: no_such_module.inside:normalise
    writes: [name_norm]
""")
    populate(config, 1_000)
    with Engine(config) as engine:
        views = {v.name: v for v in engine.tasks.wait(timeout=60)}
        assert engine.state == "running"
    assert views["fine"].status == "done"
    assert views["broken"].status == "failed"
    assert "the set SQL does not compile: no such column: nonexistent_column" in (
        views["broken"].error or "")
    assert views["unimportable"].status == "failed"
    assert "cannot import 'no_such_module.inside:normalise'" in (
        views["unimportable"].error or "")
    assert task_row(config, "broken")["status"] == "failed"


def test_a_task_declared_in_python_is_checked_like_one_in_yaml(small: Config) -> None:
    with pytest.raises(ConfigError, match=r"tasks\.x\.set: table 'items' has no column 'nme'"):
        Engine(small, tasks=[TaskConfig(name="x", table="items", updates=(("nme", "1"),))])
    with pytest.raises(ConfigError, match=r"exactly one of 'set', 'call' or 'sql'"):
        Engine(small, tasks=[TaskConfig(name="x", table="items")])


# --- control ----------------------------------------------------------------------------


@pytest.fixture
def slow_engine(small: Config) -> Iterator[Engine]:
    """A task that yields a minute after each chunk: caught between chunks at will."""
    task = last_seen_task(min_rows=1_000, max_rows=1_000, yield_ms=60_000)
    with Engine(small, tasks=[task]) as engine:
        # Sent to Progress: the start, then the first chunk's result.
        assert engine.wait_for_sent("progress", 2, timeout=60)
        yield engine


def test_cancel_between_chunks_leaves_partial_work_committed_and_visible(
        small: Config, slow_engine: Engine) -> None:
    view = slow_engine.tasks.cancel("last_seen")
    assert (view.status, view.processed, view.checkpoint) == ("cancelled", 800, 1_000)
    with slow_engine.read() as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE last_seen IS NOT NULL"
                            ).fetchone() == (800,)
    with pytest.raises(NotReady, match=r"items\.last_seen is not ready: cancelled, 800 of 4,000"
                       ), slow_engine.read(requires=["items.last_seen"]):
        pass
    assert task_row(small, "last_seen")["status"] == "cancelled"


def test_pause_and_resume_from_python(small: Config, slow_engine: Engine) -> None:
    assert slow_engine.tasks.pause("last_seen").status == "paused"
    assert task_row(small, "last_seen")["status"] == "paused"
    with pytest.raises(NotReady), slow_engine.read(requires=["last_seen"]):
        pass
    assert slow_engine.tasks.resume("last_seen").status == "running"
    assert task_row(small, "last_seen")["status"] == "running"
    with pytest.raises(UnknownTask, match="unknown task 'nope'"):
        slow_engine.tasks.pause("nope")
    slow_engine.tasks.cancel("last_seen")
    with pytest.raises(TaskConflict, match="only a running task can be paused"):
        slow_engine.tasks.pause("last_seen")


# --- the protocol -----------------------------------------------------------------------


class StepClock:
    """A clock that moves `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


def test_progress_is_saved_at_most_once_a_second_plus_the_terminal_write(
        small: Config) -> None:
    clock = StepClock(0.1)
    task = last_seen_task(min_rows=100, max_rows=100)
    with Engine(small, tasks=[task], progress_clock=clock) as engine:
        [view] = engine.tasks.wait(timeout=60)
        [progress] = engine.tasks.progress()
    assert view.status == "done"
    chunks = len(messages(small, "ask", "writer.chunk"))
    saves = messages(small, "ask", "writer.task_progress")
    assert chunks >= 50
    # One save may open the run; then one per elapsed second; then the terminal one.
    assert 3 <= len(saves) <= int(clock.now) + 2
    assert saves[-1]["fields"]["terminal"] is True
    assert sum(s["fields"]["terminal"] for s in saves) == 1
    assert len(messages(small, "reply", "writer.task_progress")) == len(saves)
    assert progress.persist_failures == 0
    assert task_row(small, "last_seen")["rate_rows_s"] > 0


def test_a_busy_foreground_writer_never_waits_behind_more_than_one_chunk(
        small: Config) -> None:
    stop = threading.Event()
    wrote = threading.Barrier(4)
    with Engine(small, tasks=[last_seen_task(min_rows=50, max_rows=50)],
                start_tasks=False) as engine:
        def foreground(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                engine.write("INSERT INTO names (name, first_item) VALUES (?, 1)",
                             (f"fg{n}-{i}",))
                if i == 1:
                    wrote.wait()

        writers = [threading.Thread(target=foreground, args=(n,)) for n in range(3)]
        for writer in writers:
            writer.start()
        try:
            wrote.wait(30)
            engine.tasks.start()
            [view] = engine.tasks.wait(timeout=120)
        finally:
            stop.set()
            for writer in writers:
                writer.join()
    assert view.status == "done"
    records = [r for r in messages(small) if "writer" in (r["sender"], r["receiver"])
               and r["message"] in ("writer.chunk", "writer.execute")]
    chunk_done = [r["seq"] for r in records if r["kind"] == "reply"
                  and r["message"] == "writer.chunk"]
    sent = {r["corr"]: r["seq"] for r in records if r["kind"] == "ask"
            and r["message"] == "writer.execute"}
    waits = [sum(sent[r["corr"]] < seq < r["seq"] for seq in chunk_done)
             for r in records if r["kind"] == "reply" and r["message"] == "writer.execute"]
    assert len(chunk_done) >= 80
    assert sum(w == 1 for w in waits) >= 10, "foreground writes came in while chunks ran"
    assert max(waits) == 1, "a foreground write waited behind two chunks"
    # Two chunks in a row only when no foreground write was queued: a write sent
    # before the second chunk was sent is handled before it.
    chunk_sent = {r["corr"]: r["seq"] for r in records if r["kind"] == "ask"
                  and r["message"] == "writer.chunk"}
    replies = [r for r in records if r["kind"] == "reply"]
    execute_spans = [(sent[r["corr"]], r["seq"]) for r in replies
                     if r["message"] == "writer.execute"]
    for before, after in itertools.pairwise(replies):
        if before["message"] == after["message"] == "writer.chunk":
            asked = chunk_sent[after["corr"]]
            assert not [span for span in execute_spans
                        if span[0] < asked and span[1] > after["seq"]], \
                "a queued foreground write waited while a second chunk ran"


# --- crash ------------------------------------------------------------------------------


SUBPROCESS_TASK = """\
tasks:
  last_seen:
    table: items
    set: {{last_seen: "{expr}"}}
    where: "{where}"
    min_rows: 200
    max_rows: 200
    yield_ms: 5
"""


def test_a_run_killed_mid_task_resumes_from_its_checkpoint_and_ends_identical(
        tmp_path: Path) -> None:
    config = tasks_config(tmp_path, extra=SUBPROCESS_TASK.format(expr=LAST_SEEN,
                                                                 where=LAST_SEEN_WHERE))
    populate(config, 50_000)
    control = control_copy(config, tmp_path / "control")
    path = tmp_path / "tasks.yaml"
    path.write_text(TASKS_YAML.format(db=config.database.path, log=config.message_log_path,
                                      extra=SUBPROCESS_TASK.format(expr=LAST_SEEN,
                                                                   where=LAST_SEEN_WHERE)))

    def checkpoint() -> int:
        try:
            value = scalar(config, "SELECT checkpoint FROM _sw_tasks WHERE name = 'last_seen'")
        except (apsw.Error, TypeError):
            return 0
        return int(value or 0)

    proc = sqlwarden("run", str(path), "--once", "--no-progress")
    try:
        wait_until(lambda: checkpoint() >= 10_000 or proc.poll() is not None,
                   what="the task to pass key 10000")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = checkpoint()
    assert 10_000 <= killed_at < 50_000, "killed mid-task"
    assert task_row(config, "last_seen")["status"] == "running"
    # Nothing past the checkpoint was written: the checkpoint is committed with its chunk.
    assert scalar(config, f"SELECT count(*) FROM items WHERE id > {killed_at} "
                          "AND last_seen IS NOT NULL") == 0
    again = sqlwarden("run", str(path), "--once", "--no-progress")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "task last_seen@1: done" in out
    row = task_row(config, "last_seen")
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert table_digest(config.database.path, "items") == table_digest(control, "items")
    resumed = [r for r in messages(config, "ask", "writer.chunk")
               if r["fields"]["after"] == killed_at]
    assert resumed, "the second run started at the checkpoint"


# --- the command line and the endpoint --------------------------------------------------


SLOW_TASK = SUBPROCESS_TASK.replace("min_rows: 200", "min_rows: 1000").replace(
    "max_rows: 200", "max_rows: 1000").replace("yield_ms: 5", "yield_ms: 60000") + """\
    provides: items.last_seen
status:
  enabled: true
  port: 0
"""


def test_the_cli_lists_and_controls_the_tasks_of_a_running_engine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = SLOW_TASK.format(expr=LAST_SEEN, where=LAST_SEEN_WHERE)
    config = tasks_config(tmp_path, extra=extra)
    populate(config, 5_000)
    path = tmp_path / "tasks.yaml"
    path.write_text(TASKS_YAML.format(db=config.database.path, log=config.message_log_path,
                                      extra=extra))
    proc = sqlwarden("run", str(path), "--no-progress", env={"PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: scalar(config, "SELECT checkpoint FROM _sw_tasks") == 1_000
                   if config.database.path.exists() and _has_tasks(config) else False,
                   what="the first chunk")
        assert main(["task", "list", str(path)]) == 0
        listed = capsys.readouterr().out
        assert "last_seen@1" in listed and "running" in listed and "800 of 4,000 rows" in listed
        assert main(["task", "pause", str(path), "last_seen"]) == 0
        assert capsys.readouterr().out == "task last_seen@1: paused, 800 rows done\n"
        assert task_row(config, "last_seen")["status"] == "paused"
        assert main(["status", str(path)]) == 0
        assert "last_seen@1  paused" in capsys.readouterr().out
        assert main(["task", "resume", str(path), "last_seen"]) == 0
        assert "running" in capsys.readouterr().out
        assert main(["task", "cancel", str(path), "last_seen"]) == 0
        assert capsys.readouterr().out == "task last_seen@1: cancelled, 800 rows done\n"
        assert main(["task", "pause", str(path), "last_seen"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "only a running task can be paused" in err
        assert main(["task", "cancel", str(path), "nosuch"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown task 'nosuch'" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert task_row(config, "last_seen")["status"] == "cancelled"
    # The engine is gone: control says so in one line, and listing still works.
    assert main(["task", "pause", str(path), "last_seen"]) == 1
    assert "no running engine" in capsys.readouterr().err
    assert main(["task", "list", str(path)]) == 0
    assert "cancelled" in capsys.readouterr().out


def _has_tasks(config: Config) -> bool:
    return bool(scalar(config, "SELECT count(*) FROM sqlite_master WHERE name = '_sw_tasks'"))


def test_healthz_is_503_while_a_required_task_runs_and_metrics_show_it(
        small: Config) -> None:
    config = dataclasses.replace(small, status=dataclasses.replace(small.status, enabled=True,
                                                                   port=0))
    task = last_seen_task(min_rows=1_000, max_rows=1_000, yield_ms=60_000)
    with Engine(config, tasks=[task]) as engine:
        assert engine.wait_for_sent("progress", 2, timeout=60)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{engine.status_url}/healthz", timeout=10)
        assert info.value.code == 503
        body = json.load(info.value)
        assert body["reasons"] == ["task last_seen@1 (provides items.last_seen) is running: "
                                   "800 of 4000 rows"]
        with urllib.request.urlopen(f"{engine.status_url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'sqlwarden_task_rows_processed{task="last_seen"} 800.0' in metrics
        assert 'sqlwarden_task_state{state="running",task="last_seen"} 1.0' in metrics
        token = read_token(token_path(config.database.path))
        request = urllib.request.Request(f"{engine.status_url}/tasks/last_seen/cancel",
                                         data=b"", method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["status"] == "cancelled"
        with urllib.request.urlopen(f"{engine.status_url}/healthz", timeout=10) as response:
            assert json.load(response) == {"ok": True, "reasons": []}


def test_a_text_key_is_walked_from_its_smallest_value(tmp_path: Path) -> None:
    config = parse_config(f"""\
database: {{path: {tmp_path / 'k.db'}}}
tables:
  tags:
    columns:
      code: {{type: text, primary_key: true}}
      label: text
tasks:
  upper_labels:
    table: tags
    set: {{label: "upper(label)"}}
    where: "label <> upper(label)"
    min_rows: 2
    max_rows: 2
""", file="k.yaml")
    # Keys that sort below the text '-Inf', where a numeric sentinel would land.
    codes = ["", " a", "#1", "+5", "-1", "-Inf", "A", "b", "zz"]
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("tags", [(code, f"label {i}") for i, code in enumerate(codes)])
        engine.tasks.start()
        [view] = engine.tasks.wait(timeout=60)
        with engine.read(requires=["upper_labels"]) as conn:
            labels = [row[0] for row in conn.execute("SELECT label FROM tags ORDER BY code")]
    assert (view.status, view.processed) == ("done", 9)
    assert labels == [f"LABEL {i}" for i in range(9)]


def test_a_progress_save_that_fails_is_counted_and_shown_not_swallowed(small: Config) -> None:
    with Engine(small) as engine:
        before = engine.messages_sent("writer")
        # Progress for a task with no row in _sw_tasks: the save changes nothing.
        engine.tell("progress", ProgressEvent(scope="task", name="ghost", version=1,
                                              processed=0, total=10, state="running"))
        assert engine.wait_for_sent("writer", before + 1, timeout=30)  # the save
        engine.ask("writer", WriterStatus())  # a barrier: the save has been answered
        [ghost] = [p for p in engine.tasks.progress() if p.name == "ghost"]
        status = engine.status()
    assert (ghost.persisted, ghost.persist_failures) == (0, 1)
    assert "no _sw_tasks row for ghost@1; progress not saved" in (ghost.last_persist_error or "")
    [failure] = status["failures"]["recent"]
    assert (failure["actor"], failure["message_kind"]) == ("progress", "writer.task_progress")
