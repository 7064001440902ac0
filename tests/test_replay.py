"""`sqlwarden replay`: the summary, filters, timeline, rotated and compressed files,
damaged lines, --follow and bad input, on message logs written by hand."""

from __future__ import annotations

import gzip
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from sqlwarden.cli import main

from .conftest import sqlwarden

Record = dict[str, Any]

#: The hand-made logs begin at this moment.
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}


def at(seconds: float) -> str:
    """A time `seconds` after START, written as the message log writes times."""
    return (START + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


class HandLog:
    """A message log written by hand, numbered and shaped as the engine writes one.

    Record number `seq` is stamped `seq * step_s` seconds after START (plus any
    `pause`), so a test knows every record's time.
    """

    def __init__(self, run: str = "run1", *, step_s: float = 0.01) -> None:
        self.records: list[Record] = []
        self.run = run
        self.step_s = step_s
        self.next_seq = 1
        self._pauses_s = 0.0
        self._corr = itertools.count(1)
        self._open: dict[int, Record] = {}

    @property
    def seq(self) -> int:
        """The sequence number of the last record."""
        return int(self.records[-1]["seq"])

    def record(self, kind: str, sender: str, receiver: str, message: str, corr: int,
               fields: dict[str, Any] | None = None, **extra: Any) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.records.append({"seq": seq, "ts": at(seq * self.step_s + self._pauses_s),
                             "run": self.run, "kind": kind, "sender": sender,
                             "receiver": receiver, "message": message, "fields": fields or {},
                             "corr": corr, **extra})
        return seq

    def ask(self, sender: str, receiver: str, message: str,
            fields: dict[str, Any] | None = None) -> int:
        """Log an ask; returns its correlation id."""
        return self._send("ask", sender, receiver, message, fields)

    def tell(self, sender: str, receiver: str, message: str,
             fields: dict[str, Any] | None = None) -> int:
        """Log a tell; returns its correlation id."""
        return self._send("tell", sender, receiver, message, fields)

    def _send(self, kind: str, sender: str, receiver: str, message: str,
              fields: dict[str, Any] | None) -> int:
        corr = next(self._corr)
        self.record(kind, sender, receiver, message, corr, fields)
        self._open[corr] = self.records[-1]
        return corr

    def answer(self, corr: int, fields: dict[str, Any] | None = None, *,
               duration_ms: float = 0.5, error: tuple[str, str] | None = None) -> int:
        """Log the reply (or, with `error`, the error) to message `corr`; returns its seq."""
        sent = self._open.pop(corr)
        extra: dict[str, Any] = {"duration_ms": duration_ms}
        if error is not None:
            extra["error"] = {"type": error[0], "message": error[1]}
        return self.record("error" if error else "reply", sent["receiver"], sent["sender"],
                           sent["message"], corr, None if error else fields, **extra)

    def call(self, sender: str, receiver: str, message: str,
             fields: dict[str, Any] | None = None, reply: dict[str, Any] | None = None, *,
             duration_ms: float = 0.5) -> int:
        """An ask and its reply; returns the correlation id."""
        corr = self.ask(sender, receiver, message, fields)
        self.answer(corr, reply, duration_ms=duration_ms)
        return corr

    def relay(self, actor: str, message: str, fields: dict[str, Any] | None = None) -> int:
        """A tell an actor sends itself (from its worker thread) and its handling."""
        corr = self.tell(actor, actor, message, fields)
        self.answer(corr)
        return corr

    def pause(self, seconds: float) -> None:
        """Records from now on are stamped `seconds` later."""
        self._pauses_s += seconds

    def skip_seq(self) -> None:
        """Leave a sequence number out, as a lost record would."""
        self.next_seq += 1

    def new_run(self, run: str) -> None:
        """A new engine run appends: sequence numbers go on, correlation ids restart."""
        self.run = run
        self._corr = itertools.count(1)
        self._open.clear()

    def write(self, path: Path, records: list[Record] | None = None) -> Path:
        """Write `records` (all by default) as JSON lines to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(as_lines(self.records if records is None else records))
        return path


def as_lines(records: list[Record]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                    for r in records)


def replay(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """`sqlwarden replay ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(["replay", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def summary_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> dict[str, Any]:
    code, out, err = replay(capsys, *args, "--json")
    assert (code, err) == (0, "")
    result: dict[str, Any] = json.loads(out)
    return result


def timeline_seqs(capsys: pytest.CaptureFixture[str], *args: str | Path) -> list[int]:
    code, out, err = replay(capsys, *args, "--timeline")
    assert (code, err) == (0, "")
    return [int(line.split()[1]) for line in out.splitlines()]


# --- the summary ------------------------------------------------------------------------

#: Handling times are kept in buckets 1/100 of a decade wide: exact to about 2.3%.
EXACT_TO = 0.025
UNIQUE = ("IntegrityError", "UNIQUE constraint failed: items.id")
ERRORED_WRITES = (17, 42, 77)


def known_log() -> HandLog:
    """100 writes handled in 1..100 ms (three fail), 10 chunks of 20 ms (the last fails)
    and 5 progress events of 0.01 ms: 230 records, 30 ms apart."""
    log = HandLog(step_s=0.03)
    for i in range(1, 101):
        corr = log.ask("facade", "writer", "writer.execute",
                       {"sql": "INSERT INTO items VALUES (?, ?)", "params": {"items": 2}})
        if i in ERRORED_WRITES:
            log.answer(corr, duration_ms=float(i), error=UNIQUE)
        else:
            log.answer(corr, {"changes": 1, "last_rowid": i}, duration_ms=float(i))
    for i in range(10):
        corr = log.ask("backfill", "writer", "writer.chunk",
                       {"task": "last_seen", "version": 1, "after": i * 100, "rows": 100})
        if i == 9:
            log.answer(corr, duration_ms=20.0, error=("TaskError", "no such column: x"))
        else:
            log.answer(corr, {"rows": 100}, duration_ms=20.0)
    for _ in range(5):
        corr = log.tell("backfill", "progress", "progress.event", {"task": "last_seen"})
        log.answer(corr, duration_ms=0.01)
    return log


def test_the_summary_counts_records_span_actors_kinds_percentiles_and_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = known_log()
    path = log.write(tmp_path / "messages.jsonl")
    summary = summary_json(capsys, path)
    assert summary["files"] == [str(path)]
    assert (summary["records"], summary["first_seq"], summary["last_seq"]) == (230, 1, 230)
    assert (summary["first_ts"], summary["last_ts"]) == (at(0.03), at(6.9))
    assert summary["span_s"] == pytest.approx(6.87)
    assert list(summary["runs"]) == ["run1"]
    assert summary["actors"] == {
        "backfill": {"sent": 15, "received": 0, "handled": 0, "errors": 0},
        "facade": {"sent": 100, "received": 0, "handled": 0, "errors": 0},
        "progress": {"sent": 0, "received": 5, "handled": 5, "errors": 0},
        "writer": {"sent": 0, "received": 110, "handled": 110, "errors": 4},
    }
    kinds = summary["messages"]
    assert set(kinds) == {"writer.execute", "writer.chunk", "progress.event"}
    counts = {kind: (k["sent"], k["asks"], k["replies"], k["errors"]) for kind, k in kinds.items()}
    assert counts == {"writer.execute": (100, 100, 97, 3), "writer.chunk": (10, 10, 9, 1),
                      "progress.event": (5, 0, 5, 0)}
    assert kinds["writer.execute"]["p50_ms"] == pytest.approx(50, rel=EXACT_TO)
    assert kinds["writer.execute"]["p99_ms"] == pytest.approx(99, rel=EXACT_TO)
    assert kinds["writer.chunk"]["p50_ms"] == pytest.approx(20, rel=EXACT_TO)
    assert kinds["writer.chunk"]["p99_ms"] == pytest.approx(20, rel=EXACT_TO)
    assert kinds["progress.event"]["p50_ms"] == pytest.approx(0.01, rel=EXACT_TO)
    assert summary["errors"] == [
        {"message": "writer.execute", "type": "IntegrityError", "count": 3},
        {"message": "writer.chunk", "type": "TaskError", "count": 1}]
    error_seqs = [r["seq"] for r in log.records if r["kind"] == "error"]
    assert [e["seq"] for e in summary["error_examples"]] == error_seqs
    assert summary["error_examples"][0]["error"] == {"type": UNIQUE[0], "message": UNIQUE[1]}
    assert (summary["damaged"], summary["damaged_examples"]) == (0, [])


def test_the_summary_text_shows_the_same_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = known_log().write(tmp_path / "messages.jsonl")
    code, out, err = replay(capsys, path)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"log: {path}"
    assert lines[1] == f"230 records, seq 1..230, {at(0.03)} .. {at(6.9)} (6.870 s), 1 run"
    actors = table_after(lines, "actor")
    assert actors == {"backfill": ["15", "0", "0", "0"], "facade": ["100", "0", "0", "0"],
                      "progress": ["0", "5", "5", "0"], "writer": ["0", "110", "110", "4"]}
    # message  sent  asks  errors  p50 ms  p99 ms, most sent first
    rows = table_after(lines, "message")
    assert list(rows) == ["writer.execute", "writer.chunk", "progress.event"]
    sent, asks, errors, p50, p99 = rows["writer.execute"]
    assert (sent, asks, errors) == ("100", "100", "3")
    assert float(p50) == pytest.approx(50, rel=EXACT_TO)
    assert float(p99) == pytest.approx(99, rel=EXACT_TO)
    assert rows["writer.chunk"][:3] == ["10", "10", "1"]
    assert float(rows["writer.chunk"][3]) == pytest.approx(20, rel=EXACT_TO)
    assert rows["progress.event"][:3] == ["5", "0", "0"]
    assert rows["progress.event"][3] == "0.010"
    assert "errors: 4" in lines
    assert "        3  writer.execute  IntegrityError" in lines
    assert "        1  writer.chunk  TaskError" in lines
    first_error = ERRORED_WRITES[0] * 2
    assert f"  seq {first_error}: writer.execute: IntegrityError: {UNIQUE[1]}" in lines
    assert not any(line.startswith("damaged") for line in lines)


def table_after(lines: list[str], heading: str) -> dict[str, list[str]]:
    """The rows of the table whose heading line starts with `heading`, in order."""
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [heading])
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if not line:
            break
        name, *cells = line.split()
        rows[name] = cells
    return rows


def test_an_empty_log_says_no_records_and_no_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"")
    code, out, err = replay(capsys, path)
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"log: {path}", "no records", "", "errors: none"]


# --- filters ----------------------------------------------------------------------------


def two_runs() -> HandLog:
    """Two engine runs, a record a second: writes, chunks, a catch-up, a mirror
    reconcile and drain; the second run begins at seq 25."""
    log = HandLog("r1", step_s=1.0)
    log.call("facade", "writer", "writer.meta", {"key": "run_id", "value": "r1"})
    log.call("sync", "fts", "fts.begin", {"source": "demo", "backlog_rows": 9000})
    for i in range(3):
        log.call("sync", "writer", "writer.sync_batch", {"source": "demo", "rows": 500 + i})
    log.relay("mirror", "mirror.reconcile_begun", {"number": 1, "verify": False})
    log.call("mirror", "writer", "writer.outbox_drained", {"table": "notes", "upto_seq": 4})
    log.relay("mirror", "mirror.reconciled", {"number": 1, "verify": False})
    log.call("backfill", "writer", "writer.chunk", {"task": "last_seen", "rows": 50})
    log.call("facade", "writer", "writer.execute", {"sql": "INSERT INTO notes"})
    log.call("backfill", "writer", "writer.chunk", {"task": "last_seen", "rows": 50})
    log.call("sync", "fts", "fts.end", {"source": "demo"})
    assert log.seq == 24
    log.new_run("r2")
    log.call("facade", "writer", "writer.meta", {"key": "run_id", "value": "r2"})
    for i in range(2):
        log.call("backfill", "writer", "writer.chunk", {"task": "last_seen", "rows": 50 + i})
        log.call("facade", "writer", "writer.execute", {"sql": "INSERT INTO notes"})
    log.call("mirror", "writer", "writer.outbox_drained", {"table": "notes", "upto_seq": 9})
    return log


def _sent_by_or_to(*actors: str) -> Callable[[Record], bool]:
    return lambda r: r["sender"] in actors or r["receiver"] in actors


FILTERS: list[Any] = [
    pytest.param(["--actor", "mirror"], _sent_by_or_to("mirror"), id="actor"),
    pytest.param(["--actor", "fts", "--actor", "facade"], _sent_by_or_to("fts", "facade"),
                 id="two-actors"),
    pytest.param(["--kind", "writer.chunk"], lambda r: r["message"] == "writer.chunk",
                 id="exact-kind"),
    pytest.param(["--kind", "mirror"], lambda r: r["message"].startswith("mirror."),
                 id="kind-prefix"),
    pytest.param(["--kind", "fts", "--kind", "writer.meta"],
                 lambda r: r["message"] in ("fts.begin", "fts.end", "writer.meta"),
                 id="two-kinds"),
    pytest.param(["--since", "2026-03-01T12:00:10", "--until", "2026-03-01T12:00:20"],
                 lambda r: 10 <= r["seq"] <= 20, id="since-until"),
    pytest.param(["--since", "2026-03-01T13:00:30+01:00"], lambda r: r["seq"] >= 30,
                 id="since-in-another-zone"),
    pytest.param(["--until", "2026-03-01T12:00:05.5Z"], lambda r: r["seq"] <= 5,
                 id="until-in-utc"),
    pytest.param(["--corr", "3"], lambda r: r["corr"] == 3, id="corr"),
    pytest.param(["--run", "r2"], lambda r: r["run"] == "r2", id="run"),
    pytest.param(["--run", "r1", "--kind", "writer"],
                 lambda r: r["run"] == "r1" and r["message"].startswith("writer."),
                 id="run-and-kind"),
]


@pytest.mark.parametrize(("args", "wanted"), FILTERS)
def test_each_filter_narrows_the_summary_and_the_timeline_to_the_same_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        wanted: Callable[[Record], bool]) -> None:
    log = two_runs()
    path = log.write(tmp_path / "messages.jsonl")
    expected = [r for r in log.records if wanted(r)]
    assert 0 < len(expected) < len(log.records), "the filter must leave some out"
    summary = summary_json(capsys, path, *args)
    assert summary["records"] == len(expected)
    assert (summary["first_seq"], summary["last_seq"]) == (expected[0]["seq"],
                                                          expected[-1]["seq"])
    assert set(summary["messages"]) == {r["message"] for r in expected}
    assert set(summary["runs"]) == {r["run"] for r in expected}
    assert timeline_seqs(capsys, path, *args) == [r["seq"] for r in expected]


def test_the_corr_filter_shows_one_message_and_its_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = two_runs()
    path = log.write(tmp_path / "messages.jsonl")
    code, out, err = replay(capsys, path, "--timeline", "--corr", "3", "--run", "r1")
    assert (code, err) == (0, "")
    ask, reply = out.splitlines()
    assert "sync => writer" in ask and "writer.sync_batch #3" in ask
    assert "writer <- sync" in reply and "writer.sync_batch #3 0.500ms" in reply


def test_a_filter_that_matches_nothing_shows_no_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = two_runs().write(tmp_path / "messages.jsonl")
    code, out, err = replay(capsys, path, "--actor", "nobody")
    assert (code, err) == (0, "")
    assert "no records" in out.splitlines()
    assert timeline_seqs(capsys, path, "--kind", "backfill") == []


# --- the timeline -----------------------------------------------------------------------


def test_the_timeline_prints_one_line_per_record_in_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = HandLog(step_s=0.25)
    write = log.ask("facade", "writer", "writer.execute", {"sql": "DELETE FROM items"})
    log.answer(write, {"changes": 3, "last_rowid": 0}, duration_ms=1.25)
    failed = log.ask("facade", "writer", "writer.execute", {"sql": "INSERT"})
    log.answer(failed, duration_ms=0.75, error=UNIQUE)
    log.relay("mirror", "mirror.up", {"driver": "c-ext", "server": "MariaDB"})
    path = log.write(tmp_path / "messages.jsonl")
    code, out, err = replay(capsys, path, "--timeline")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == len(log.records) == 6
    assert [int(line.split()[1]) for line in lines] == [1, 2, 3, 4, 5, 6]
    words = [" ".join(line.split()) for line in lines]
    assert words[0] == ('12:00:00.250000 1 ask facade => writer writer.execute #1 '
                        '{"sql":"DELETE FROM items"}')
    assert words[1] == ('12:00:00.500000 2 reply writer <- facade writer.execute #1 1.250ms '
                        '{"changes":3,"last_rowid":0}')
    assert words[3] == ("12:00:01.000000 4 error writer <! facade writer.execute #2 0.750ms "
                        "IntegrityError: UNIQUE constraint failed: items.id")
    assert words[4] == ('12:00:01.250000 5 tell mirror -> mirror mirror.up #3 '
                        '{"driver":"c-ext","server":"MariaDB"}')
    assert words[5] == "12:00:01.500000 6 reply mirror <- mirror mirror.up #3 0.500ms"


def test_damaged_lines_go_to_stderr_and_the_timeline_skips_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = HandLog()
    for _ in range(3):
        log.call("facade", "writer", "writer.execute", {"sql": "INSERT"})
    good = as_lines(log.records).splitlines(keepends=True)
    garbage, not_a_record, torn = b"not json at all\n", b'{"hello": "world"}\n', b'{"seq":7,"ts'
    data = [*good[:2], garbage, *good[2:4], not_a_record, *good[4:], torn]
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"".join(data))

    def where(line: bytes) -> str:
        number = data.index(line)
        return f"{path}:{number + 1} (byte {sum(len(d) for d in data[:number])})"

    code, out, err = replay(capsys, path, "--timeline")
    assert code == 0
    assert [int(line.split()[1]) for line in out.splitlines()] == [1, 2, 3, 4, 5, 6]
    assert err.splitlines() == [
        f"damaged line skipped: {where(garbage)}: not a JSON record (after seq 2)",
        f"damaged line skipped: {where(not_a_record)}: not a message record (a key is "
        "missing or of the wrong type) (after seq 4)",
        f"damaged line skipped: {where(torn)}: torn last line (cut short by a crash?) "
        "(after seq 6)"]


# --- files ------------------------------------------------------------------------------


def rotated_log(folder: Path, names: tuple[str, str, str] = ("messages.jsonl.2.gz",
                                                            "messages.jsonl.1",
                                                            "messages.jsonl")) -> HandLog:
    """30 records over three files, oldest first in `names` (a .gz name is compressed)."""
    log = HandLog()
    for _ in range(15):
        log.call("facade", "writer", "writer.execute", {"sql": "INSERT"})
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        data = as_lines(log.records[i * 10:(i + 1) * 10])
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return log


@pytest.mark.parametrize("given", [
    pytest.param(["messages.jsonl"], id="the-base-file"),
    pytest.param(["messages.jsonl.1", "messages.jsonl", "messages.jsonl.2.gz"],
                 id="files-listed-out-of-order"),
    pytest.param(["messages.jsonl.2.gz", "messages.jsonl.1", "messages.jsonl"],
                 id="files-listed-oldest-first"),
])
def test_rotated_and_compressed_files_are_read_in_sequence_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], given: list[str]) -> None:
    rotated_log(tmp_path)
    paths = [tmp_path / name for name in given]
    summary = summary_json(capsys, *paths)
    assert summary["files"] == [str(tmp_path / n) for n in ("messages.jsonl.2.gz",
                                                            "messages.jsonl.1",
                                                            "messages.jsonl")]
    assert (summary["records"], summary["first_seq"], summary["last_seq"]) == (30, 1, 30)
    assert summary["messages"]["writer.execute"]["sent"] == 15
    assert timeline_seqs(capsys, *paths) == list(range(1, 31))
    code, out, err = replay(capsys, *paths, "--check")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith("no violations in 30 records")


def test_rotated_files_alone_are_read_without_the_live_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rotated_log(tmp_path)
    given = (tmp_path / "messages.jsonl.1", tmp_path / "messages.jsonl.2.gz")
    assert timeline_seqs(capsys, *given) == list(range(1, 21))
    code, out, _ = replay(capsys, *given)
    assert code == 0
    assert out.splitlines()[0] == f"log: {tmp_path / 'messages.jsonl.1'} (+1 more)"


def test_files_are_ordered_by_their_first_record_whatever_their_numbers_say(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rotated_log(tmp_path, names=("messages.jsonl.1.gz", "messages.jsonl.7", "messages.jsonl"))
    assert timeline_seqs(capsys, tmp_path / "messages.jsonl") == list(range(1, 31))


def test_a_torn_last_line_is_reported_with_its_position_and_skipped_in_summary_and_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = HandLog()
    for _ in range(4):
        log.call("facade", "writer", "writer.execute", {"sql": "INSERT"})
    path = log.write(tmp_path / "messages.jsonl")
    size = path.stat().st_size
    with path.open("ab") as handle:  # what a crash in the middle of a write leaves
        handle.write(b'{"seq":9,"ts":"2026-03-01T12:00:00.09')
    where = f"{path}:9 (byte {size}): torn last line (cut short by a crash?) (after seq 8)"

    code, out, err = replay(capsys, path)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].startswith("8 records, seq 1..8, ")
    assert lines[-2:] == ["damaged lines: 1 (skipped)", f"  {where}"]

    summary = summary_json(capsys, path)
    assert (summary["records"], summary["damaged"]) == (8, 1)
    assert summary["damaged_examples"] == [where]

    code, out, err = replay(capsys, path, "--check")
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        f"rule 7 (everything logged) at seq 8: damaged line skipped: {where}",
        "1 violation in 8 records (rule 7: 1)"]


# --- follow -----------------------------------------------------------------------------


class Lines:
    """The lines a subprocess prints, read on a thread so a test can wait with a deadline."""

    def __init__(self, stream: IO[str], ended: Callable[[], str]) -> None:
        self._ended = ended
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def take(self, count: int, timeout_s: float = 15.0) -> list[str]:
        """The next `count` lines; fails when they have not come within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        got: list[str] = []
        while len(got) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout_s}s waiting for line "
                                     f"{len(got) + 1} of {count}; got {got}") from None
            if line is None:
                raise AssertionError(f"the output ended after {got}: {self._ended()}")
            got.append(line)
        return got

    def join(self) -> None:
        self._thread.join(timeout=10)


def seqs_of(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines]


def test_follow_prints_the_last_records_then_new_ones_across_a_rotation(
        tmp_path: Path) -> None:
    log = HandLog()
    for _ in range(15):
        log.call("facade", "writer", "writer.execute", {"sql": "INSERT"})
    path = log.write(tmp_path / "messages.jsonl")

    def add(count: int) -> list[Record]:
        for _ in range(count):
            log.call("backfill", "writer", "writer.chunk", {"task": "t", "rows": 10})
        return log.records[-2 * count:]

    proc = sqlwarden("replay", str(path), "--follow", env=UNBUFFERED, bufsize=1)
    assert proc.stdout is not None and proc.stderr is not None
    stderr = proc.stderr
    lines = Lines(proc.stdout, lambda: f"exit {proc.wait()}, stderr {stderr.read()!r}")
    try:
        shown = lines.take(10)
        assert seqs_of(shown) == list(range(21, 31))
        assert all("writer.execute" in line for line in shown)

        with path.open("ab") as handle:
            handle.write(as_lines(add(2)))
        assert seqs_of(lines.take(4)) == [31, 32, 33, 34]

        # The engine rotates: the last records to the old file, which is renamed
        # to .1, then a new file.
        with path.open("ab") as handle:
            handle.write(as_lines(add(1)))
        path.rename(tmp_path / "messages.jsonl.1")
        path.write_bytes(as_lines(add(2)))
        after = lines.take(6)
        assert seqs_of(after) == [35, 36, 37, 38, 39, 40]
        assert all("writer.chunk" in line for line in after)

        with path.open("ab") as handle:
            handle.write(as_lines(add(1)))
        assert seqs_of(lines.take(2)) == [41, 42]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        lines.join()
    err = stderr.read()
    stderr.close()
    proc.stdout.close()
    assert err == ""


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(["{tmp}/nothing/messages.jsonl"], "{tmp}/nothing/messages.jsonl: no such "
                 "message log", id="missing-log"),
    pytest.param(["{log}", "--since", "yesterday"], "--since 'yesterday': not a time",
                 id="bad-since"),
    pytest.param(["{log}", "--until", "2026-13-01"], "--until '2026-13-01': not a time",
                 id="bad-until"),
    pytest.param(["{log}", "--check", "--actor", "writer"], "--check and --reexecute read the "
                 "whole log; drop the filters", id="check-with-a-filter"),
    pytest.param(["{log}", "--check", "--since", "2026-03-01"], "drop the filters",
                 id="check-with-since"),
    pytest.param(["{log}", "{log}.1", "--follow"], "--follow takes one LOG",
                 id="follow-with-two-logs"),
    pytest.param(["{tmp}/nothing.jsonl", "--follow"], "nothing.jsonl: no such message log",
                 id="follow-a-missing-log"),
    pytest.param(["{log}", "--timeline", "--check"], "not allowed with argument",
                 id="two-modes"),
    pytest.param(["{log}", "--corr", "seven"], "is not a whole number", id="bad-corr"),
    pytest.param([], "the following arguments are required: LOG", id="no-log"),
])
def test_bad_input_gives_exit_2_and_one_line_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        says: str) -> None:
    rotated_log(tmp_path)
    values = {"tmp": str(tmp_path), "log": str(tmp_path / "messages.jsonl")}
    code, out, err = replay(capsys, *(a.format(**values) for a in args))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sqlwarden")
    assert says.format(**values) in err
    assert "Traceback" not in err


def test_replay_help_shows_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sqlwarden replay")
    for option in ("LOG", "--actor", "--kind", "--since", "--until", "--corr", "--run",
                   "--timeline", "--follow", "--check", "--json"):
        assert option in out, option


def test_records_with_a_key_of_the_wrong_type_are_damaged_lines_not_crashes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = HandLog()
    log.call("facade", "writer", "writer.execute", {"sql": "INSERT"})
    good = log.records[:]
    bad = [{**good[1], "duration_ms": "5"}, {**good[1], "error": "boom", "kind": "error"},
           {**good[0], "fields": [1]}, {**good[0], "corr": [1]}, {**good[0], "run": 7}]
    path = tmp_path / "messages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*good, *bad]))
    code, out, err = replay(capsys, path)
    assert (code, err) == (0, "")
    assert f"damaged lines: {len(bad)} (skipped)" in out
    assert "2 records" in out
    code, out, err = replay(capsys, path, "--timeline")
    assert code == 0 and len(out.splitlines()) == 2
    assert err.count("not a message record") == len(bad)
    code, out, err = replay(capsys, path, "--check")
    assert code == 1 and err == ""
    assert out.count("not a message record") == len(bad)


def test_a_timeline_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    log = HandLog()
    for i in range(3000):  # far more than a pipe holds
        log.call("facade", "writer", "writer.execute", {"sql": f"INSERT {i}"})
    path = log.write(tmp_path / "messages.jsonl")
    process = sqlwarden("replay", str(path), "--timeline")
    assert process.stdout is not None and process.stderr is not None
    assert " 1 ask " in process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    err = process.stderr.read()
    assert process.wait(timeout=60) == 0
    assert err == ""


def test_follow_shows_every_record_when_the_log_rotated_twice_between_looks(
        tmp_path: Path) -> None:
    from sqlwarden.replay.timeline import follow

    log = HandLog()
    for i in range(30):
        log.call("facade", "writer", "writer.execute", {"sql": f"INSERT {i}"})
    path = tmp_path / "messages.jsonl"
    first, second, third = log.records[:20], log.records[20:40], log.records[40:]
    log.write(path, first)

    def rotate(then: list[Record]) -> None:
        if path.with_name("messages.jsonl.1").exists():
            path.with_name("messages.jsonl.1").rename(path.with_name("messages.jsonl.2"))
        path.rename(path.with_name("messages.jsonl.1"))
        log.write(path, then)

    seen: list[int] = []
    looks = itertools.count()

    def between_looks() -> bool:
        # Called before each look at the file: the second look finds two rotations done.
        if next(looks) == 1:
            rotate(second)
            rotate(third)
        return bool(seen) and seen[-1] == 60

    follow(path, lambda item: seen.append(item["seq"]) if isinstance(item, dict) else None,
           poll_s=0, should_stop=between_looks)
    assert seen == list(range(11, 61))


def test_a_rotated_file_compressed_while_the_log_is_read_is_still_read(
        tmp_path: Path) -> None:
    from sqlwarden.replay.read import log_files, read_records

    log = HandLog()
    for i in range(20):
        log.call("facade", "writer", "writer.execute", {"sql": f"INSERT {i}"})
    path = tmp_path / "messages.jsonl"
    rotated = path.with_name("messages.jsonl.1")
    log.write(rotated, log.records[:20])
    log.write(path, log.records[20:])
    files = log_files([path])
    assert files == [rotated, path]
    # The engine compresses .1 after it was listed and before it is opened.
    with gzip.open(rotated.with_name("messages.jsonl.1.gz"), "wb") as packed:
        packed.write(rotated.read_bytes())
    rotated.unlink()
    assert [r["seq"] for r in read_records(files)] == list(range(1, 41))
