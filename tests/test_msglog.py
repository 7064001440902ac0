"""The message log: every message recorded, asks paired with answers, secrets kept out."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, MessageLogConfig
from sqlwarden.errors import UnexpectedMessage, WriteError
from sqlwarden.facade import Engine
from sqlwarden.msglog.log import MessageLog, log_files
from sqlwarden.protocol import Execute, Message
from sqlwarden.redact import REDACTED, Redactor
from sqlwarden.replay.check import Checker
from sqlwarden.replay.read import Damaged, iter_records, read_records

from .conftest import count_rows, site_row


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Nonsense(Message):
    kind = "test.nonsense"


def records(config: Config) -> list[dict[str, Any]]:
    return list(iter_records(config.message_log_path))


def test_every_ask_has_exactly_one_reply_or_error(config: Config) -> None:
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(i) for i in range(1, 30)])
        for i in range(30, 40):
            engine.write_many("sites", [site_row(i)], wait=False)
        with pytest.raises(WriteError):
            engine.write("INSERT INTO nowhere VALUES (1)")
        with pytest.raises(UnexpectedMessage):
            engine.ask("writer", Nonsense())
        engine.checkpoint()
        engine.status()
    log = records(config)
    asks = Counter(r["corr"] for r in log if r["kind"] == "ask")
    answers = Counter(r["corr"] for r in log if r["kind"] in ("reply", "error"))
    assert len(asks) >= 14
    assert set(asks.values()) == {1}
    assert answers == asks + Counter({r["corr"]: 1 for r in log if r["kind"] == "tell"})
    errors = [r for r in log if r["kind"] == "error"]
    assert {e["message"] for e in errors} == {"writer.execute", "test.nonsense"}
    assert all(e["error"]["type"] for e in errors)


def test_a_record_carries_who_what_when_and_how_long(config: Config) -> None:
    with Engine(config) as engine:
        engine.write("INSERT INTO sites (id, org, name, updated_at) VALUES (?, ?, ?, ?)",
                     (1, "acme", "north", "t"))
    ask, reply = [r for r in records(config) if r["message"] == "writer.execute"]
    assert ask["kind"] == "ask" and reply["kind"] == "reply"
    assert (ask["sender"], ask["receiver"]) == ("facade", "writer")
    assert (reply["sender"], reply["receiver"]) == ("writer", "facade")
    assert ask["corr"] == reply["corr"] and ask["seq"] < reply["seq"]
    # A summary says how many values were bound, never what they were.
    assert ask["fields"]["params"] == {"items": 4}
    assert ask["fields"]["sql"].startswith("INSERT INTO sites")
    assert reply["fields"] == {"changes": 1, "last_rowid": 1}
    assert reply["duration_ms"] >= 0 and "duration_ms" not in ask
    assert ask["ts"].endswith("+00:00") and ask["run"] == reply["run"]


def test_rows_are_summarised_unless_full_payload_is_configured(
        make_config: Callable[..., Config]) -> None:
    rows = [site_row(i) for i in range(1, 21)]
    for payload, expected in (("summary", {"items": 20}), ("full", [list(r) for r in rows])):
        config = make_config(payload=payload)
        with Engine(config) as engine:
            engine.write_many("sites", rows)
            engine.write("DELETE FROM sites")
        [insert] = [r for r in records(config) if r["message"] == "writer.insert_rows"
                    and r["kind"] == "ask" and r["run"] == records(config)[-1]["run"]]
        assert insert["fields"]["rows"] == expected


def test_sequence_numbers_continue_across_runs(config: Config) -> None:
    for _ in range(2):
        with Engine(config) as engine:
            engine.write_many("sites", [site_row(len(records(config)) + 1)])
    seqs = [r["seq"] for r in records(config)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({r["run"] for r in records(config)}) == 2


def test_the_log_rotates_by_size_and_reads_back_in_order(tmp_path: Path) -> None:
    config = MessageLogConfig(max_mb=0.01, backups=2)
    path = tmp_path / "log.jsonl"
    log = MessageLog(config, path)
    log.start()
    for i in range(400):
        log.record("tell", "a", "b", "x.y", Execute(sql="SELECT " + "9" * 50, params=(i,)), i)
    log.close()
    files = log_files(path)
    assert [f.name for f in files] == ["log.jsonl.2", "log.jsonl.1", "log.jsonl"]
    assert all(f.stat().st_size <= int(0.01 * 1024 * 1024) for f in files)
    seqs = [r["seq"] for r in iter_records(path)]
    assert seqs == list(range(seqs[0], 401))
    assert seqs[0] > 1


def test_rotated_files_can_be_compressed_and_are_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = MessageLog(MessageLogConfig(max_mb=0.01, backups=3, compress=True), path)
    log.start()
    for i in range(400):
        log.record("tell", "a", "b", "x.y", Execute(sql="SELECT " + "9" * 50, params=(i,)), i)
    log.close()
    assert log.write_errors == 0
    files = log_files(path)
    assert [f.name for f in files] == ["log.jsonl.3.gz", "log.jsonl.2.gz", "log.jsonl.1.gz",
                                       "log.jsonl"]
    assert not list(tmp_path.glob("*.partial"))
    seqs = [r["seq"] for r in read_records(files) if isinstance(r, dict)]
    assert seqs == list(range(seqs[0], 401))

    # A stop in the middle of compressing leaves the plain file whole beside a partial
    # .gz: the plain one is read, once, and the next run cleans up.
    with gzip.open(files[2], "rb") as packed:
        plain = packed.read()
    files[2].with_suffix("").write_bytes(plain)
    files[2].with_name("log.jsonl.1.gz.partial").write_bytes(b"cut")
    assert [f.name for f in log_files(path)] == ["log.jsonl.3.gz", "log.jsonl.2.gz",
                                                 "log.jsonl.1", "log.jsonl"]
    again = [r["seq"] for r in read_records(log_files(path)) if isinstance(r, dict)]
    assert again == seqs
    log = MessageLog(MessageLogConfig(max_mb=0.01, backups=3, compress=True), path)
    log.start()
    log.record("tell", "a", "b", "x.y", None, 1)
    log.close()
    assert not list(tmp_path.glob("*.partial"))
    assert [r["seq"] for r in read_records(log_files(path)) if isinstance(r, dict)][-1] == 401


def test_a_rotation_that_fails_does_not_stop_the_log(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    path = folder / "log.jsonl"
    log = MessageLog(MessageLogConfig(max_mb=0.01, backups=2), path)
    log.start()
    execute = Execute(sql="SELECT " + "9" * 50, params=())
    for i in range(50):
        log.record("tell", "a", "b", "x.y", execute, i)
    assert log.flush()
    shutil.rmtree(folder)  # the rotations that come now cannot rename or reopen
    for i in range(400):
        log.record("tell", "a", "b", "x.y", execute, i)
    assert log.flush()
    assert log.write_errors > 0
    folder.mkdir()
    last = log.record("tell", "a", "b", "x.y", None, 0)
    assert log.flush()
    log.close()
    assert [r["seq"] for r in iter_records(path)][-1] == last


def test_a_compressed_file_cut_short_by_a_power_loss_does_not_stop_the_next_start(
        tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = b"".join(json.dumps({"seq": seq}).encode() + b"\n" for seq in range(1, 2001))
    packed = gzip.compress(lines)
    path.with_name("log.jsonl.1.gz").write_bytes(packed[:len(packed) // 2])
    path.write_bytes(b"")
    log = MessageLog(MessageLogConfig(), path)
    log.start()
    seq = log.record("tell", "a", "b", "x.y", None, 1)
    log.close()
    assert 1 < seq <= 2001  # after the last record that could be read


def test_a_record_cut_short_by_a_crash_is_skipped_but_others_are_not(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    whole = {"ts": "2026-01-01T00:00:00.000000+00:00", "run": "r", "kind": "tell",
             "sender": "a", "receiver": "b", "message": "x.y", "fields": {}, "corr": 1}
    path.write_text(json.dumps({"seq": 1, **whole}) + "\n" + '{"seq": 2, "ki')
    assert [r["seq"] for r in iter_records(path)] == [1]
    path.write_text('{"seq": 1\n' + json.dumps({"seq": 2, **whole}) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:1: not a JSON record"):
        list(iter_records(path))


def test_a_run_after_a_crash_continues_the_sequence_even_after_a_large_record(
        tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    first = MessageLog(MessageLogConfig(payload="full"), path)
    first.start()
    first.record("ask", "a", "writer", "writer.execute", Execute(sql="SELECT 1", params=()), 1)
    # Full payloads: one record of a few hundred rows is longer than any fixed tail.
    first.record("ask", "a", "writer", "writer.execute",
                 Execute(sql="SELECT ?", params=("x" * 200_000,)), 2)
    first.close()
    with path.open("ab") as handle:  # the crash: a record cut short
        handle.write(b'{"seq": 3, "ts": "2026')

    second = MessageLog(MessageLogConfig(payload="full"), path)
    second.start()
    second.record("tell", "a", "b", "x.y", None, 1)
    second.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == b'{"seq": 3, "ts": "2026'  # ended, so the next record is whole
    assert [json.loads(line)["seq"] for line in (lines[0], lines[1], lines[3])] == [1, 2, 3]


@pytest.mark.parametrize("payload", ["summary", "full"])
def test_secrets_never_reach_the_log(make_config: Callable[..., Config], payload: str) -> None:
    secret = "hunter2-very-secret"
    config = dataclasses.replace(make_config(payload=payload), secrets=frozenset({secret}))
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1, body=f"password is {secret}")])
        engine.write("UPDATE sites SET body = ? WHERE id = 1",
                     (f"mysql://bob:{secret}@db.example/x",))
        with pytest.raises(WriteError):
            engine.write(f"INSERT INTO {secret} VALUES (1)")
        status = json.dumps(engine.status())
    text = "".join(p.read_text() for p in log_files(config.message_log_path))
    assert secret not in text and secret not in status
    assert REDACTED in text
    if payload == "full":
        assert f"password is {REDACTED}" in text and f"mysql://bob:{REDACTED}@" in text


def test_redaction_covers_values_keys_and_url_passwords() -> None:
    redactor = Redactor(["s3cr3t"])
    assert redactor.text("token s3cr3t here") == f"token {REDACTED} here"
    assert redactor.text("mysql://app:pw@host:3306/db") == f"mysql://app:{REDACTED}@host:3306/db"
    assert redactor.value("password", "anything") == REDACTED
    assert redactor.value("name", "plain") == "plain"


class Holdup:
    """A payload whose summary waits for `release`: the log thread is held up by it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def __repr__(self) -> str:
        self.reached.set()
        self.release.wait(30)
        return "holdup"


def test_a_full_queue_holds_senders_back_then_drops_and_counts_and_memory_stays_bounded(
        tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = MessageLog(MessageLogConfig(), path, capacity=8, block_s=0.05)
    log.start()
    holdup = Holdup()
    log.record("tell", "a", "b", "x.y", holdup, 0)
    assert holdup.reached.wait(30)
    sent = [log.record("tell", "a", "b", "x.y", None, i) for i in range(1, 21)]
    stats = log.stats()
    assert stats["queued"] == stats["capacity"] == 8
    assert stats["dropped"] == 12 and stats["blocked"] == 12
    holdup.release.set()
    assert log.flush()
    last = log.record("tell", "a", "b", "x.y", None, 21)
    log.close()
    written = [r["seq"] for r in iter_records(path)]
    # What was queued is written; what found no room is missing, and replay says so.
    assert written == [1, *sent[:8], last]
    checker = Checker()
    for record in read_records(log_files(path)):
        assert not isinstance(record, Damaged)
        checker.add(record)
    checker.finish()
    assert checker.counts[7] == 1
    assert "12 record(s) missing" in "\n".join(checker.lines())


def test_a_full_disk_under_the_log_is_counted_and_shown_and_logging_resumes_once_freed(
        small_log_disk: Path, make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(log=small_log_disk / "messages.jsonl")
    filler = small_log_disk / "filler"
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(i) for i in range(1, 11)])
        assert engine._log is not None and engine._log.flush()
        # The filesystem fills up, to the byte.
        with open(filler, "wb", buffering=0) as out, pytest.raises(OSError):
            while True:
                out.write(b"\0" * 4096)
        for i in range(11, 61):
            engine.write_many("sites", [site_row(i)])
        assert engine._log.flush()
        full = engine.status()["message_log"]
        assert count_rows(config.database.path, "sites") == 60  # the engine went on
        assert full["write_errors"] > 0
        assert full["waiting_for"] == "disk full"
        assert full["last_write_error"].startswith("disk full: ")
        assert "message log waits: disk full" in engine.health()[1]  # and /healthz
        assert engine.state == "running"

        filler.unlink()
        last = engine.write_many("sites", [site_row(61)])
        assert last.changes == 1
        assert engine._log.flush()
        freed = engine.status()["message_log"]
        assert freed["waiting_for"] is None
        assert not [r for r in engine.health()[1] if r.startswith("message log")]
    assert count_rows(config.database.path, "sites") == 61
    lines = list(read_records(log_files(config.message_log_path)))
    assert not [line for line in lines if isinstance(line, Damaged)]  # no torn line
    inserts = [r for r in lines if isinstance(r, dict) and r["message"] == "writer.insert_rows"
               and r["kind"] == "ask"]
    # The first inserts and the one after the space came back are there; those in
    # between are counted as lost.
    assert len(inserts) < 61
    assert inserts[-1]["seq"] > inserts[0]["seq"]
    assert inserts[-1]["fields"]["rows"] == {"items": 1}
    last_seq = max(r["seq"] for r in lines if isinstance(r, dict))
    assert last_seq > inserts[-1]["seq"]  # and everything after it, to the stop
