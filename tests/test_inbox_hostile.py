"""Hostile ndjson inboxes: only regular files inside the directory are read.

Each case puts one hostile entry beside a good file and runs `sqlwarden sync
now` in a subprocess whose environment holds the MySQL password (`SECRET`).
The good file is ingested, the entry is named in the run's history, nothing
outside the inbox is read (the secret is in no table, log or output), the
inbox is left as it was, and the run exits 0: a skipped entry is a note, not
a failure. A record quoting the secret is rejected with the secret redacted.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sqlwarden.config import parse_config
from sqlwarden.facade import Engine
from sqlwarden.redact import Redactor
from sqlwarden.sync.sources.mapping import RAW_KEEP
from sqlwarden.sync.sources.ndjson import (
    NOTED_SKIPS,
    InboxFile,
    Skipped,
    list_inbox,
    open_entry,
)

from .conftest import count_rows, read_only
from .support.hostile import SECRET, assert_no_secret, run_bounded, snapshot

CONFIG = """\
database: {{path: {root}/data/test.db}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
sources:
  files:
    kind: ndjson
    path: {root}/inbox
    table: items
mirror:
  dsn: mysql://sqlwarden:${{SW_MYSQL_PASSWORD}}@127.0.0.1:1/fleet
  scope: dev-1
  enabled: false
message_log: {{path: {root}/data/messages.jsonl}}
"""

ENV = {"SW_MYSQL_PASSWORD": SECRET}

#: The good file every case has: three records.
GOOD = 3


def lines(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config, inbox, outside): a good inbox file, and a folder beside the inbox
    whose file holds the secret (read by mistake, it would show in the database)."""
    inbox = tmp_path / "inbox"
    outside = tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / "a.ndjson").write_text(lines(*({"id": i, "name": f"good {i}"}
                                            for i in range(1, GOOD + 1))))
    (outside / "secret.ndjson").write_text(lines({"id": 900, "name": SECRET}) +
                                           f"not json {SECRET}\n")
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    return config, inbox, outside


# --- the hostile entries ----------------------------------------------------------------


def link(name: str, target: str | Path) -> Callable[[Path, Path], None]:
    def make(inbox: Path, outside: Path) -> None:
        (inbox / name).symlink_to(str(target).format(outside=outside))
    return make


def fifo(inbox: Path, outside: Path) -> None:
    os.mkfifo(inbox / "p.ndjson")


def fifo_outside(inbox: Path, outside: Path) -> None:
    os.mkfifo(outside / "pipe")
    (inbox / "p.ndjson").symlink_to(outside / "pipe")


def fifo_beside(inbox: Path, outside: Path) -> None:
    os.mkfifo(inbox / "pipe")
    (inbox / "p.ndjson").symlink_to("pipe")


def unix_socket(inbox: Path, outside: Path) -> None:
    # Bound by a relative name: a socket's path is limited to 108 bytes.
    here = Path.cwd()
    os.chdir(inbox)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("s.ndjson")
        sock.close()  # the socket file stays
    finally:
        os.chdir(here)


def folder(inbox: Path, outside: Path) -> None:
    (inbox / "x.ndjson").mkdir()
    (inbox / "x.ndjson" / "inner.ndjson").write_text(lines({"id": 700, "name": "inner"}))


def named(name: str | bytes) -> Callable[[Path, Path], None]:
    def make(inbox: Path, outside: Path) -> None:
        path = os.path.join(os.fsencode(inbox), os.fsencode(name))
        with open(path, "wb") as f:
            f.write(lines({"id": 600, "name": "oddly named"}).encode())
    return make


def loop_of_two(inbox: Path, outside: Path) -> None:
    (inbox / "l1.ndjson").symlink_to("l2.ndjson")
    (inbox / "l2.ndjson").symlink_to("l1.ndjson")


def into_subfolder(inbox: Path, outside: Path) -> None:
    (inbox / "sub").mkdir()
    (inbox / "sub" / "x.data").write_text(lines({"id": 800, "name": "deep"}))
    (inbox / "deep.ndjson").symlink_to("sub/x.data")


def hard_link_outside(inbox: Path, outside: Path) -> None:
    (outside / "shared.data").write_text(lines({"id": 500, "name": "linked"},
                                               {"id": 501, "name": "linked"}))
    os.link(outside / "shared.data", inbox / "shared.ndjson")


def sibling_link(inbox: Path, outside: Path) -> None:
    (inbox / "live.current").write_text(lines({"id": 400, "name": "live"},
                                              {"id": 401, "name": "live"}))
    (inbox / "live.ndjson").symlink_to("live.current")


def many_fifos(inbox: Path, outside: Path) -> None:
    for i in range(40):
        os.mkfifo(inbox / f"p{i:02d}.ndjson")


def secret_records(inbox: Path, outside: Path) -> None:
    (inbox / "b.ndjson").write_text(
        f"not json at all: {SECRET}\n"
        + lines({"id": SECRET, "name": "a refused field"},
                {"id": 10, "name": "after the bad ones"}))


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Path], None]
    #: What `sync history` shows of the run's note ("" when it has none).
    note: str
    rows: int = GOOD


CASES = {
    "symlink to /proc/self/environ": Case(
        link("env.ndjson", "/proc/self/environ"),
        "skipped inbox/env.ndjson: a symlink leaving the inbox"),
    "symlink to a file in another folder": Case(
        link("out.ndjson", "{outside}/secret.ndjson"),
        "skipped inbox/out.ndjson: a symlink leaving the inbox"),
    "relative symlink out through ..": Case(
        link("rel.ndjson", "../outside/secret.ndjson"),
        "skipped inbox/rel.ndjson: a symlink leaving the inbox"),
    "symlink to ..": Case(link("up.ndjson", ".."),
                          "skipped inbox/up.ndjson: a symlink leaving the inbox"),
    "symlink to the inbox itself": Case(
        link("self.ndjson", "."), "skipped inbox/self.ndjson: a symlink to the inbox itself"),
    "symlink to itself": Case(link("loop.ndjson", "loop.ndjson"),
                              "skipped inbox/loop.ndjson: a symlink loop"),
    "two symlinks to each other": Case(
        loop_of_two, "skipped inbox/l1.ndjson: a symlink loop; "
                     "skipped inbox/l2.ndjson: a symlink loop"),
    "dangling symlink": Case(link("gone.ndjson", "missing.data"),
                             "skipped inbox/gone.ndjson: a dangling symlink"),
    "dangling symlink out of the inbox": Case(
        link("far.ndjson", "/nonexistent/sqlwarden/x.ndjson"),
        "skipped inbox/far.ndjson: a symlink leaving the inbox"),
    "FIFO": Case(fifo, "skipped inbox/p.ndjson: not a regular file (a FIFO)"),
    "symlink to a FIFO in another folder": Case(
        fifo_outside, "skipped inbox/p.ndjson: a symlink leaving the inbox"),
    "symlink to a FIFO beside it": Case(
        fifo_beside,
        "skipped inbox/p.ndjson: a symlink to something that is not a regular file (a FIFO)"),
    "symlink to /dev/zero": Case(link("zero.ndjson", "/dev/zero"),
                                 "skipped inbox/zero.ndjson: a symlink leaving the inbox"),
    "unix socket": Case(unix_socket, "skipped inbox/s.ndjson: not a regular file (a socket)"),
    "folder named x.ndjson": Case(
        folder, "skipped inbox/x.ndjson: not a regular file (a directory)"),
    "symlink into a folder of the inbox": Case(
        into_subfolder, "skipped inbox/deep.ndjson: a symlink into a folder of the inbox"),
    "name with a newline": Case(
        named("bad\nname.ndjson"),
        "skipped inbox/bad\\nname.ndjson: its name holds control characters; rename it"),
    "name with a terminal escape": Case(
        named("\x1b[31mred.ndjson"),
        "skipped inbox/\\x1b[31mred.ndjson: its name holds control characters"),
    "name with a right-to-left override": Case(
        named("evil\u202egnp.ndjson"),
        "skipped inbox/evil\\u202egnp.ndjson: its name holds control characters"),
    "name that is not UTF-8": Case(
        named(b"caf\xe9.ndjson"), "skipped inbox/caf\\udce9.ndjson: its name is not UTF-8"),
    "symlink to a file read as itself": Case(
        link("dup.ndjson", "a.ndjson"),
        "skipped inbox/dup.ndjson: another name for a.ndjson, which is read as itself"),
    "forty FIFOs": Case(
        many_fifos, f"and {40 - NOTED_SKIPS} more entries of inbox skipped"),
    # Read, by design: a regular file inside the inbox, whatever else names it.
    "hard link to a file in another folder": Case(hard_link_outside, "", rows=GOOD + 2),
    "symlink to a file beside it under another name": Case(sibling_link, "", rows=GOOD + 2),
    "records quoting the password": Case(secret_records, "", rows=GOOD + 1),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_hostile_inbox_entry_is_skipped_with_a_note_and_the_good_files_still_load(
        tmp_path: Path, case: Case) -> None:
    config, inbox, outside = setup(tmp_path)
    case.make(inbox, outside)
    before = snapshot(tmp_path)

    # A FIFO or a device read by mistake would hang here or grow without end.
    done = run_bounded("-v", "sync", "now", config, "files", "--no-progress", env=ENV,
                       timeout_s=90)
    assert done.returncode == 0, done.stderr[-2000:]
    history = run_bounded("sync", "history", config, env=ENV, timeout_s=60)
    assert history.returncode == 0, history.stderr[-2000:]

    for ran in (done, history):
        assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr[-2000:]
    db = tmp_path / "data" / "test.db"
    assert count_rows(db, "items") == case.rows
    run_line = next(line for line in history.stdout.splitlines()[1:] if " files " in line)
    if case.note:
        assert case.note in run_line, run_line
        assert case.note in done.stdout  # `sync now` says it too
        # Bounded: five entries by name at most, whatever the inbox holds.
        assert len(run_line) < 1000
    else:
        assert "skipped" not in run_line, run_line
    # Nothing in the inbox or beside it was created, changed or removed (the database
    # folder is the engine's own).
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("data")}
    assert after == before
    assert_no_secret(SECRET, texts=[done.stdout, done.stderr, history.stdout, history.stderr],
                     under=[tmp_path / "data"], databases=[db])


def test_a_record_quoting_the_password_is_rejected_with_the_password_redacted(
        tmp_path: Path) -> None:
    config, inbox, outside = setup(tmp_path)
    secret_records(inbox, outside)
    done = run_bounded("-v", "sync", "now", config, "files", "--no-progress", env=ENV,
                       timeout_s=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 records rejected" in done.stdout
    history = run_bounded("sync", "history", config, env=ENV, timeout_s=60)
    db = tmp_path / "data" / "test.db"
    conn = read_only(db)
    try:
        rejects = list(conn.execute("SELECT position, reason, raw FROM _sw_rejects ORDER BY id"))
    finally:
        conn.close()
    assert rejects == [
        ("b.ndjson:0", "not valid JSON: Expecting value: line 1 column 1 (char 0)",
         "not json at all: [redacted]"),
        ("b.ndjson:37", "field 'id' (column id): expected an integer, got '[redacted]'",
         '{"id": "[redacted]", "name": "a refused field"}'),
    ]
    assert count_rows(db, "items") == GOOD + 1
    assert_no_secret(SECRET, texts=[done.stdout, done.stderr, history.stdout, history.stderr],
                     under=[tmp_path / "data"], databases=[db])


def test_a_record_cut_through_the_password_keeps_no_part_of_it(tmp_path: Path) -> None:
    # A rejected record is kept to its first 64 KiB; here the cut falls 6 characters
    # into the password, which would leave them behind.
    config, inbox, _ = setup(tmp_path)
    pad = "x" * (RAW_KEEP - len("not json: ") - 6)
    (inbox / "b.ndjson").write_text(f"not json: {pad}{SECRET} and more\n")
    done = run_bounded("sync", "now", config, "files", "--no-progress", env=ENV, timeout_s=90)
    assert done.returncode == 0, done.stderr[-2000:]
    db = tmp_path / "data" / "test.db"
    conn = read_only(db)
    try:
        (raw,) = conn.execute("SELECT raw FROM _sw_rejects").fetchone()
    finally:
        conn.close()
    assert raw.startswith(f"not json: {pad[:100]}")
    assert f"{pad}[redacted]...[" in raw  # the cut's part of it went
    assert SECRET[:6] not in raw.replace(pad, "")
    assert_no_secret(SECRET, texts=[done.stdout, done.stderr], databases=[db])


def test_a_secret_written_as_json_escapes_it_is_redacted_too() -> None:
    secret = 'pa"ss\\word-7f3a'
    redactor = Redactor([secret])
    quoted = json.dumps({"password_was": secret})  # as an HTTP reject's text stores it
    assert secret not in redactor.text(quoted)
    assert redactor.text(quoted) == '{"password_was": "[redacted]"}'


def test_every_run_notes_a_skipped_entry_once_and_the_next_good_file_still_loads(
        tmp_path: Path) -> None:
    config, inbox, _ = setup(tmp_path)
    (inbox / "env.ndjson").symlink_to("/proc/self/environ")
    os.mkfifo(inbox / "p.ndjson")
    first = run_bounded("sync", "now", config, "files", "--no-progress", env=ENV, timeout_s=90)
    (inbox / "b.ndjson").write_text(lines({"id": 20, "name": "later"}))
    second = run_bounded("sync", "now", config, "files", "--no-progress", env=ENV, timeout_s=90)
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert count_rows(tmp_path / "data" / "test.db", "items") == GOOD + 1
    history = run_bounded("sync", "history", config, env=ENV, timeout_s=60)
    runs = [line for line in history.stdout.splitlines()[1:] if " files " in line]
    assert len(runs) == 2
    for line in runs:
        assert line.count("env.ndjson") == 1 and line.count("p.ndjson") == 1, line
    assert_no_secret(SECRET, texts=[first.stdout, second.stdout, history.stdout],
                     under=[tmp_path / "data"], databases=[tmp_path / "data" / "test.db"])


def test_an_inbox_of_only_hostile_entries_is_an_ok_run_with_a_note(tmp_path: Path) -> None:
    config, inbox, _ = setup(tmp_path)
    (inbox / "a.ndjson").unlink()
    (inbox / "env.ndjson").symlink_to("/proc/self/environ")
    (inbox / "zero.ndjson").symlink_to("/dev/zero")
    done = run_bounded("sync", "now", config, "files", "--no-progress", env=ENV, timeout_s=90)
    assert done.returncode == 0, done.stderr
    assert "files: 0 rows" in done.stdout and "caught up" in done.stdout
    assert "skipped inbox/env.ndjson: a symlink leaving the inbox" in done.stdout
    assert_no_secret(SECRET, texts=[done.stdout, done.stderr], under=[tmp_path / "data"],
                     databases=[tmp_path / "data" / "test.db"])


# --- swaps between the listing and the open ---------------------------------------------


def opened_in_thread(inbox: Path, entry: InboxFile) -> BaseException | None:
    """What `open_entry` raised (None if it opened), from a thread that must not block."""
    outcome: list[BaseException | None] = []

    def go() -> None:
        try:
            open_entry(inbox, entry).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "opening the entry blocked"
    return outcome[0]


def test_a_file_that_becomes_a_fifo_after_the_listing_is_skipped_without_blocking(
        tmp_path: Path) -> None:
    _, inbox, _ = setup(tmp_path)
    [entry] = list_inbox(inbox).files
    (inbox / "a.ndjson").unlink()
    os.mkfifo(inbox / "a.ndjson")
    raised = opened_in_thread(inbox, entry)
    assert isinstance(raised, Skipped)
    assert raised.why == "not a regular file (a FIFO) when opened"


def test_a_file_that_becomes_a_symlink_out_after_the_listing_is_not_followed(
        tmp_path: Path) -> None:
    _, inbox, outside = setup(tmp_path)
    [entry] = list_inbox(inbox).files
    (inbox / "a.ndjson").unlink()
    (inbox / "a.ndjson").symlink_to(outside / "secret.ndjson")
    raised = opened_in_thread(inbox, entry)
    assert isinstance(raised, Skipped)
    assert raised.why == "it became a symlink after the directory was listed"


def test_a_sibling_symlink_retargeted_out_after_the_listing_still_opens_the_sibling(
        tmp_path: Path) -> None:
    _, inbox, outside = setup(tmp_path)
    (inbox / "a.ndjson").rename(inbox / "a.current")
    (inbox / "a.ndjson").symlink_to("a.current")
    [entry] = list_inbox(inbox).files
    (inbox / "a.ndjson").unlink()
    (inbox / "a.ndjson").symlink_to(outside / "secret.ndjson")
    with open_entry(inbox, entry) as f:
        assert SECRET.encode() not in f.read()


# --- logs -------------------------------------------------------------------------------


def test_engine_logs_have_the_config_secrets_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    config_path, _, _ = setup(tmp_path)
    monkeypatch.setenv("SW_MYSQL_PASSWORD", SECRET)
    config = parse_config(config_path.read_text(), file=str(config_path), base_dir=tmp_path)
    assert SECRET in config.secrets
    engine = Engine(config)
    caplog.set_level(logging.INFO)
    try:
        raise ConnectionError(f"login refused for password {SECRET}")
    except ConnectionError:
        logging.getLogger("sqlwarden.sync.pump").warning("upstream said %s", SECRET,
                                                         exc_info=True)
    logging.getLogger("sqlwarden.mirror.session").info(f"dsn mysql://u:{SECRET}@h/db")
    assert SECRET not in caplog.text
    assert "upstream said [redacted]" in caplog.text
    assert "login refused for password [redacted]" in caplog.text
    del engine


def test_a_library_logger_is_redacted_by_the_handler_the_cli_set_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_path, _, _ = setup(tmp_path)
    monkeypatch.setenv("SW_MYSQL_PASSWORD", SECRET)
    config = parse_config(config_path.read_text(), file=str(config_path), base_dir=tmp_path)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # as the CLI's, set up before the engine
    logging.getLogger().addHandler(handler)
    try:
        engine = Engine(config)
        # Neither a `sqlwarden.*` logger nor one that existed: only the handler sees it.
        logging.getLogger(f"some.driver.{tmp_path.name}").warning("connect with %s", SECRET)
        del engine
    finally:
        logging.getLogger().removeHandler(handler)
    assert "connect with [redacted]" in stream.getvalue()
    assert SECRET not in stream.getvalue()
