"""`sqlwarden replay --check`: logs written by real engines pass it, and hand-made logs
that break one protocol rule each are reported with that rule and its sequence numbers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine
from sqlwarden.protocol import Reconcile
from sqlwarden.replay.read import iter_records

from .conftest import GENERATOR_TABLES, LAST_SEEN_TASK, count_rows, run_sqlwarden
from .support.mariadb import MirrorDb
from .test_replay import HandLog, replay

Record = dict[str, Any]

#: Mirror polling and reconnects as quick as the engine allows.
FAST_MIRROR = """\
  poll_ms: 20
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
  connect_timeout_s: 5
"""

ENGINE_YAML = """\
database: {{path: {folder}/device.db}}
tables:
{generator_tables}  notes:
    columns:
      id: {{type: integer, primary_key: true}}
      body: text
tasks:
{last_seen_task}    min_rows: 50
    max_rows: 50
    yield_ms: {yield_ms}
sources:
  demo:
    kind: generator
    registry_rows: {registry}
    observation_rows: {observations}
    batch_rows: 500
    seed: 3
fts_deferral: {{threshold_rows: 100}}
message_log:
  path: {folder}/messages.jsonl
  max_mb: {max_mb}
  backups: 200
{mirror}"""


def engine_config(folder: Path, *, registry: int = 2000, observations: int = 6000,
                  yield_ms: int = 0, max_mb: float = 64, mirror_dsn: str | None = None) -> Config:
    """A device: a generator source into an FTS-indexed registry, a chunked backfill task
    on it, a notes table for foreground writes and, with `mirror_dsn`, its mirror."""
    mirror = "" if mirror_dsn is None else (
        f"mirror:\n  dsn: {mirror_dsn}\n  scope: dev1\n  tables: [notes]\n{FAST_MIRROR}")
    text = ENGINE_YAML.format(generator_tables=GENERATOR_TABLES,
                              last_seen_task=LAST_SEEN_TASK, folder=folder,
                              registry=registry, observations=observations,
                              yield_ms=yield_ms, max_mb=max_mb, mirror=mirror)
    return parse_config(text, file="device.yaml", base_dir=folder)


def ingest_and_backfill(engine: Engine, first_note: int,
                        during_task: Callable[[], None] = lambda: None) -> int:
    """Catch the source up, then run the task to done while writing notes in the
    foreground; returns the next note id."""
    run = engine.sync.run("demo")
    assert run.status == "ok", run
    engine.tasks.start()
    note = first_note
    while True:
        engine.write("INSERT INTO notes (id, body) VALUES (?, ?)", (note, f"note {note}"))
        note += 1
        if note - first_note == 5:
            during_task()
        views = engine.tasks.list()
        if views and all(v.status != "running" and v.status != "pending" for v in views):
            break
    assert [(v.name, v.status) for v in views] == [("last_seen", "done")]
    return note


def check_in_a_subprocess(log: Path) -> list[str]:
    """`sqlwarden replay LOG --check` as a user runs it; exits 0 saying no violations."""
    done = run_sqlwarden("replay", str(log), "--check", timeout_s=60)
    assert done.stderr == ""
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("no violations in "), lines
    assert lines[-1].endswith(" records (rules 1, 2, 3, 4, 6, 7 checked)")
    return lines


def answered(records: list[Record], message: str, **fields: Any) -> list[Record]:
    """The replies to `message` whose logged fields include `fields`."""
    return [r for r in records if r["kind"] == "reply" and r["message"] == message
            and all(r["fields"].get(k) == v for k, v in fields.items())]


def sent(records: list[Record], message: str) -> list[Record]:
    return [r for r in records if r["kind"] in ("ask", "tell") and r["message"] == message]


# --- logs of real engine runs -----------------------------------------------------------


def test_the_log_of_an_engine_that_ingests_backfills_defers_fts_and_mirrors_passes_the_check(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = engine_config(tmp_path, yield_ms=20, mirror_dsn=mirror_db.dsn)
    with Engine(config, start_tasks=False) as engine:
        reconciles: list[Any] = []
        note = ingest_and_backfill(
            engine, 1, lambda: reconciles.append(engine.ask_later("mirror", Reconcile())))
        asked = reconciles[0].get(timeout=30)
        assert asked.error is None
        assert engine.mirror.reconcile(timeout=30).in_sync
    assert count_rows(config.database.path, "registry") == 2000
    notes = note - 1
    ((mirrored,),) = mirror_db.server.query("SELECT count(*) FROM notes WHERE sw_scope = 'dev1'",
                                            database=mirror_db.database)
    assert mirrored == notes

    log = config.message_log_path
    records = list(iter_records(log))
    lines = check_in_a_subprocess(log)
    assert lines[-1].startswith(f"no violations in {len(records):,} records")
    # What the check was about is in the log: chunks with foreground writes among
    # them, a deferral and its restore, reconciles, and the mirror's drain.
    chunks = sent(records, "writer.chunk")
    assert len(chunks) >= 30
    in_flight, writes_during_chunks = None, 0
    for record in records:
        if record["message"] == "writer.chunk":
            in_flight = record["corr"] if record["kind"] == "ask" else None
        elif record["message"] == "writer.execute" and record["kind"] == "ask" and in_flight:
            writes_during_chunks += 1
    assert writes_during_chunks >= 10, "foreground writes came in while chunks ran"
    assert len(sent(records, "writer.execute")) == notes
    defers = [r for r in answered(records, "writer.fts_defer") if r["fields"].get("sources")]
    restores = [r for r in answered(records, "writer.fts_restore") if r["fields"].get("tables")]
    assert len(defers) == len(restores) == 1 and defers[0]["seq"] < restores[0]["seq"]
    assert len(sent(records, "mirror.reconcile_begun")) >= 2  # the boot's and the one asked
    assert answered(records, "mirror.reconcile")
    assert len(answered(records, "writer.outbox_drained")) >= 1
    saves = sent(records, "writer.task_progress")
    assert saves and saves[-1]["fields"]["terminal"] is True


def test_two_runs_appending_to_one_rotating_log_pass_the_check_and_every_record_counts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = engine_config(tmp_path, registry=1000, observations=3000, max_mb=0.02)
    with Engine(config, start_tasks=False) as engine:
        note = ingest_and_backfill(engine, 1)
    with Engine(config) as engine:
        for start in range(note, note + 200, 20):
            engine.write_many("notes", [(i, f"second run {i}") for i in range(start, start + 20)])
        engine.write("DELETE FROM notes WHERE id % 2 = 0")
        assert engine.sync.run("demo").status == "ok"
    log = config.message_log_path
    files = sorted(log.parent.glob("messages.jsonl*"))
    assert len(files) >= 4, "the log rotated into several files"
    lines = sum(len(f.read_bytes().splitlines()) for f in files)

    check_in_a_subprocess(log)
    code, out, err = replay(capsys, log, "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["files"][-1] == str(log) and len(summary["files"]) == len(files)
    assert (summary["records"], summary["first_seq"], summary["last_seq"]) == (lines, 1, lines)
    assert summary["damaged"] == 0
    assert len(summary["runs"]) == 2
    assert sum(run["records"] for run in summary["runs"].values()) == lines


def test_a_run_after_a_crash_that_tore_the_last_line_loses_only_that_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = engine_config(tmp_path, registry=100, observations=300)
    with Engine(config, start_tasks=False) as engine:
        engine.write("INSERT INTO notes (id, body) VALUES (1, 'before the crash')")
    log = config.message_log_path
    first_run = len(list(iter_records(log)))
    with log.open("ab") as handle:  # a crash in the middle of writing a record
        handle.write(b'{"seq":' + str(first_run + 1).encode() + b',"ts":"2026-0')
    with Engine(config, start_tasks=False) as engine:
        engine.write("INSERT INTO notes (id, body) VALUES (2, 'after the restart')")
        second_run = engine.run_id

    code, out, err = replay(capsys, log, "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["damaged"] == 1
    # The second run numbers on from the last whole record; every one of its records counts.
    assert summary["runs"][second_run]["first_seq"] == first_run + 1
    assert summary["records"] == summary["last_seq"]

    code, out, err = replay(capsys, log, "--check")
    assert err == ""
    violations = [line for line in out.splitlines() if line.startswith("rule ")]
    assert len(violations) == 1, out
    assert violations[0].startswith(f"rule 7 (everything logged) at seq {first_run}: "
                                    "damaged line skipped: ")


class StepClock:
    """A clock that moves `step_s` seconds each time it is read (as in test_tasks.py)."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step_s
            return self.now


def test_a_log_written_with_an_injected_progress_clock_passes_the_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The Progress actor limits saves to one a second by the clock it is given; each
    # save's `at` field is read from the wall clock. When the two disagree (an injected
    # clock here; a wall clock stepped back by NTP on a device) the log must still pass.
    config = engine_config(tmp_path, registry=1000, observations=3000)
    with Engine(config, start_tasks=False, progress_clock=StepClock(0.1)) as engine:
        ingest_and_backfill(engine, 1)
    records = list(iter_records(config.message_log_path))
    assert len(sent(records, "writer.task_progress")) >= 3, "saves between the first and last"
    code, out, err = replay(capsys, config.message_log_path, "--check")
    assert err == ""
    assert code == 0, out


# --- hand-made logs ---------------------------------------------------------------------


def valid_log() -> HandLog:
    """A small log that keeps every rule while doing what each rule is about."""
    log = HandLog()
    log.call("facade", "writer", "writer.meta", {"key": "run_id", "value": "run1"})
    log.call("fts", "writer", "writer.fts_inspect",
             reply={"tables": {"items": 1}, "deferral": None})
    log.relay("mirror", "mirror.up", {"driver": "c-ext", "server": "MariaDB 11"})
    log.relay("mirror", "mirror.reconcile_begun", {"number": 1, "verify": False})
    log.call("mirror", "writer", "writer.mirror_ranges", {"table": "notes"})
    log.relay("mirror", "mirror.reconciled", {"number": 1, "verify": False})
    # A catch-up large enough to defer FTS upkeep, and its restore.
    log.call("sync", "fts", "fts.begin", {"source": "demo", "backlog_rows": 9000})
    log.call("fts", "writer", "writer.fts_defer", {"sources": [["demo", 9000]]},
             reply={"sources": {"items": 1}, "tables": ["registry_fts"]})
    for rows in (500, 500):
        log.call("sync", "writer", "writer.sync_batch", {"source": "demo", "rows": rows})
    log.call("fts", "writer", "writer.fts_restore", {"rebuild_share": 0.95},
             reply={"tables": {"items": 1}, "duration_ms": 3.5})
    log.call("sync", "fts", "fts.end", {"source": "demo"})
    # A task: a foreground write queued during the first chunk runs before the second.
    first = log.ask("backfill", "writer", "writer.chunk", {"task": "last_seen", "rows": 50})
    write = log.ask("facade", "writer", "writer.execute", {"sql": "INSERT INTO notes"})
    log.answer(first, {"rows": 50})
    log.answer(write, {"changes": 1})
    log.call("backfill", "writer", "writer.chunk", {"task": "last_seen", "rows": 50})
    # Progress saved a second apart, the terminal save right after, then the first save
    # of the task's next run (resumed after a cancel, say) straight away.
    for at_s, terminal in ((1000.0, False), (1001.2, False), (1001.3, True), (1001.31, False)):
        log.call("progress", "writer", "writer.task_progress",
                 {"task": "last_seen", "version": 1, "at": at_s, "terminal": terminal})
    # The live mirror path.
    drained = log.ask("mirror", "writer", "writer.outbox_drained", {"table": "notes"})
    log.answer(drained, {"changes": 1})
    log.relay("mirror", "mirror.drained", {"entries": 1})
    return log


Expected = tuple[int, tuple[int, ...]]


def write_to_another_actor(log: HandLog) -> Expected:
    corr = log.ask("sync", "fts", "writer.execute", {"sql": "DELETE FROM notes"})
    seq = log.seq
    log.answer(corr, {"changes": 1})
    return 1, (seq,)


def two_overlapping_reconciles(log: HandLog) -> Expected:
    log.relay("mirror", "mirror.reconcile_begun", {"number": 2, "verify": False})
    first = log.seq - 1
    log.relay("mirror", "mirror.reconcile_begun", {"number": 3, "verify": False})
    second = log.seq - 1
    log.relay("mirror", "mirror.reconciled", {"number": 3})
    log.relay("mirror", "mirror.reconciled", {"number": 2})
    return 4, (first, second)


def a_write_waiting_between_two_chunks(log: HandLog) -> Expected:
    first = log.ask("backfill", "writer", "writer.chunk", {"task": "t", "rows": 50})
    write = log.ask("facade", "writer", "writer.execute", {"sql": "INSERT INTO notes"})
    waiting = log.seq
    log.answer(first, {"rows": 50})
    second = log.ask("backfill", "writer", "writer.chunk", {"task": "t", "rows": 50})
    second_sent = log.seq
    second_done = log.answer(second, {"rows": 50})
    log.answer(write, {"changes": 1})
    return 2, (waiting, second_sent, second_done)


def two_chunks_in_flight(log: HandLog) -> Expected:
    first = log.ask("backfill", "writer", "writer.chunk", {"task": "t", "rows": 50})
    first_sent = log.seq
    second = log.ask("backfill", "writer", "writer.chunk", {"task": "t", "rows": 50})
    second_sent = log.seq
    log.answer(first, {"rows": 50})
    log.answer(second, {"rows": 50})
    return 2, (first_sent, second_sent)


def an_unanswered_ask(log: HandLog) -> Expected:
    log.ask("facade", "writer", "writer.execute", {"sql": "INSERT INTO notes"})
    seq = log.seq
    log.call("facade", "mirror", "mirror.status")
    return 7, (seq,)


def a_sequence_gap(log: HandLog) -> Expected:
    before = log.seq
    log.skip_seq()
    log.call("facade", "writer", "writer.execute", {"sql": "INSERT INTO notes"})
    return 7, (before, before + 2)


def an_answer_to_nothing(log: HandLog) -> Expected:
    seq = log.record("reply", "writer", "facade", "writer.execute", 999, {"changes": 1},
                     duration_ms=0.5)
    return 7, (seq,)


def progress_saved_twice_within_a_second(log: HandLog) -> Expected:
    log.call("progress", "writer", "writer.task_progress",
             {"task": "other", "version": 2, "at": 2000.0, "terminal": False})
    first = log.seq - 1
    log.call("progress", "writer", "writer.task_progress",
             {"task": "other", "version": 2, "at": 2000.4, "terminal": False})
    return 6, (first, log.seq - 1)


def fts_deferred_twice_without_a_restore(log: HandLog) -> Expected:
    seqs = []
    for _ in range(2):
        log.call("fts", "writer", "writer.fts_defer", {"sources": [["demo", 9000]]},
                 reply={"sources": {"items": 1}, "tables": ["registry_fts"]})
        seqs.append(log.seq)
    return 3, (seqs[0], seqs[1])


def fts_restored_without_a_deferral(log: HandLog) -> Expected:
    log.call("fts", "writer", "writer.fts_restore", {"rebuild_share": 0.95},
             reply={"tables": {"items": 1}, "duration_ms": 2.0})
    return 3, (log.seq,)


VIOLATIONS = [
    pytest.param(write_to_another_actor, id="a-write-sent-to-another-actor"),
    pytest.param(two_overlapping_reconciles, id="two-overlapping-reconciles"),
    pytest.param(a_write_waiting_between_two_chunks, id="a-write-waiting-between-two-chunks"),
    pytest.param(two_chunks_in_flight, id="two-chunks-in-flight"),
    pytest.param(an_unanswered_ask, id="an-unanswered-ask"),
    pytest.param(a_sequence_gap, id="a-sequence-gap"),
    pytest.param(an_answer_to_nothing, id="an-answer-to-nothing"),
    pytest.param(progress_saved_twice_within_a_second, id="progress-saved-twice-in-a-second"),
    pytest.param(fts_deferred_twice_without_a_restore, id="fts-deferred-twice"),
    pytest.param(fts_restored_without_a_deferral, id="fts-restored-without-a-deferral"),
]

RULE_NAMES = {1: "single writer", 2: "bounded chunks", 3: "atomic deferral",
              4: "single flight", 6: "cheap progress", 7: "everything logged"}


def assert_one_violation(capsys: pytest.CaptureFixture[str], path: Path, rule: int,
                         seqs: tuple[int, ...], records: int) -> str:
    """`--check` exits 1 and reports exactly one violation: `rule` at `seqs`."""
    code, out, err = replay(capsys, path, "--check")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    where = ", ".join(str(s) for s in seqs)
    reported = [line for line in lines if line.startswith("rule ")]
    assert len(reported) == 1, out
    assert reported[0].startswith(f"rule {rule} ({RULE_NAMES[rule]}) at seq {where}: "), out
    assert lines[-1] == f"1 violation in {records:,} records (rule {rule}: 1)"
    code, out, err = replay(capsys, path, "--check", "--json")
    assert (code, err) == (1, "")
    result = json.loads(out)
    assert (result["violations"], result["per_rule"]) == (1, {str(rule): 1})
    assert result["shown"][0]["seqs"] == list(seqs)
    return reported[0]


def test_the_valid_hand_made_log_passes_the_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = valid_log()
    path = log.write(tmp_path / "messages.jsonl")
    code, out, err = replay(capsys, path, "--check")
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"no violations in {len(log.records)} records "
                                "(rules 1, 2, 3, 4, 6, 7 checked)"]
    kinds = Counter(r["message"] for r in log.records)
    for kind in ("writer.chunk", "writer.execute", "writer.fts_defer", "writer.fts_restore",
                 "mirror.reconcile_begun", "writer.task_progress", "writer.outbox_drained"):
        assert kinds[kind] >= 2, kind


@pytest.mark.parametrize("violate", VIOLATIONS)
def test_a_log_breaking_one_rule_is_reported_with_that_rule_and_its_sequence_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        violate: Callable[[HandLog], Expected]) -> None:
    log = valid_log()
    rule, seqs = violate(log)
    path = log.write(tmp_path / "messages.jsonl")
    assert_one_violation(capsys, path, rule, seqs, len(log.records))


def test_a_torn_last_line_is_one_violation_naming_its_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = valid_log()
    path = log.write(tmp_path / "messages.jsonl")
    size = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(b'{"seq":' + str(log.seq + 1).encode() + b',"ts":"2026-03-01T12')
    line = assert_one_violation(capsys, path, 7, (log.seq,), len(log.records))
    assert line.endswith(f"damaged line skipped: {path}:{len(log.records) + 1} (byte {size}): "
                         f"torn last line (cut short by a crash?) (after seq {log.seq})")


def test_violations_in_rotated_files_are_reported_with_their_sequence_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = valid_log()
    rule, seqs = write_to_another_actor(log)
    half = len(log.records) // 2
    log.write(tmp_path / "messages.jsonl.1", log.records[:half])
    path = log.write(tmp_path / "messages.jsonl", log.records[half:])
    assert_one_violation(capsys, path, rule, seqs, len(log.records))
