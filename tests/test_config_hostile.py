"""Hostile configs: each is refused with one line naming file, line and key path, exit 2,
nothing created, changed or removed, and memory bounded.

Every case runs the real command in a subprocess (`run_bounded`), the way a
user (or an attacker on the device) would hand the engine a file.
"""

from __future__ import annotations

import os
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from sqlwarden.config import load_config, parse_config
from sqlwarden.errors import ConfigError
from sqlwarden.facade import Engine

from .support.hostile import assert_refused, run_bounded, snapshot

#: Commands that read a config and must refuse a hostile one alike.
COMMANDS = (("check-config",), ("run", "--once", "--no-progress"))

#: Enough for the command to start and refuse; far too little to expand a bomb.
SMALL_MB = 300

TABLE = """\
database:
  path: data.db
tables:
  t:
    columns: {id: integer, v: integer}
    primary_key: id
"""


def billion_laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return TABLE + "\n".join(lines) + "\n"


def nested_blocks(levels: int) -> str:
    body = "".join("  " * i + "a:\n" for i in range(levels))
    return TABLE + "progress:\n" + textwrap.indent(body + "  " * levels + "b: 1\n", "  ")


#: name -> (config text, words the one line must hold). Each is refused by
#: `check-config` and by `run` alike.
HOSTILE_TEXTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alias bomb (billion laughs)": (billion_laughs(), ("more than 100,000 values",)),
    "a mapping holding its own alias": (
        "database: &d\n  path: data.db\n  again: *d\n",
        (":3:", "database.again", "recursive structure")),
    "a list holding its own alias": (
        TABLE + "  u: &u\n    columns: [*u]\n    primary_key: id\n",
        ("tables.u.columns[0]", "recursive structure")),
    "a merge key naming a scalar": (
        "database:\n  <<: 5\n  path: data.db\n",
        (":2:", "database", "merge key")),
    "700 levels of flow mappings": (
        TABLE + "progress: " + "{a: " * 700 + "1" + "}" * 700 + "\n",
        (":7:", "nesting deeper than 64 levels")),
    "100,000 [ characters": (TABLE + "tasks: " + "[" * 100_000 + "\n",
                             (":7:", "nesting deeper than 64 levels")),
    "600 levels of block mappings": (nested_blocks(600), ("nesting deeper than 64 levels",)),
    "an alias nesting deeper than the limit": (
        TABLE + "x: &x " + "[" * 40 + "1" + "]" * 40 + "\n" + "y: " + "[" * 40 + "*x"
        + "]" * 40 + "\n", ("nesting deeper than 64 levels",)),
    "target_ms: .nan": (
        TABLE + "tasks:\n  t1:\n    table: t\n    set: {v: v + 1}\n    target_ms: .nan\n",
        (":11:", "tasks.t1.target_ms", "finite", ".nan")),
    "yield_ms: -.inf": (
        TABLE + "tasks:\n  t1:\n    table: t\n    set: {v: v + 1}\n    yield_ms: -.inf\n",
        (":11:", "tasks.t1.yield_ms", "finite", "-.inf")),
    "wal_threshold_mb: .inf": ("database:\n  path: data.db\n  wal_threshold_mb: .inf\n",
                               (":3:", "database.wal_threshold_mb", "finite")),
    "max_age_s: .nan": ("database: {path: data.db}\nfts_deferral:\n  max_age_s: .nan\n",
                        (":3:", "fts_deferral.max_age_s", "finite")),
    "threshold_rows past 64 bits": (
        "database: {path: data.db}\nfts_deferral:\n  threshold_rows: 99999999999999999999999\n",
        (":3:", "fts_deferral.threshold_rows", "at most")),
    "max_age_s past its range": (
        "database: {path: data.db}\nfts_deferral:\n  max_age_s: 1.0e+300\n",
        (":3:", "fts_deferral.max_age_s", "at most")),
    "a column default of .nan": (
        "database: {path: data.db}\ntables:\n  t:\n    columns:\n      id: integer\n"
        "      v: {type: real, default: .nan}\n    primary_key: id\n",
        (":6:", "tables.t.columns.v.default", "finite")),
    "every: 99999999999999999999999d": (
        TABLE + "sources:\n  s:\n    kind: ndjson\n    path: inbox\n    table: t\n"
        "    every: \"99999999999999999999999d\"\n",
        (":12:", "sources.s.every", "at most 366d")),
    "every: .inf": (
        TABLE + "sources:\n  s:\n    kind: ndjson\n    path: inbox\n    table: t\n"
        "    every: .inf\n", (":12:", "sources.s.every", "at most")),
    "retries: [.nan]": (
        TABLE + "sources:\n  s:\n    kind: ndjson\n    path: inbox\n    table: t\n"
        "    retries: [1s, .nan]\n", (":12:", "sources.s.retries[1]", "duration")),
    "a field default of .inf": (
        TABLE + "sources:\n  s:\n    kind: ndjson\n    path: inbox\n    table: t\n"
        "    fields:\n      id: id\n      v: {from: v, default: .inf}\n",
        (":14:", "sources.s.fields.v.default", "finite")),
    "a database path holding a NUL": ('database:\n  path: "data\\0.db"\n',
                                      (":2:", "database.path", "NUL character")),
    "a message log path holding a NUL": (
        'database: {path: data.db}\nmessage_log:\n  path: "log\\0.jsonl"\n',
        (":3:", "message_log.path", "NUL character")),
    "an inbox path holding a NUL": (
        TABLE + 'sources:\n  s:\n    kind: ndjson\n    path: "in\\0box"\n    table: t\n',
        (":10:", "sources.s.path", "NUL character")),
    "a deep list from the environment": (
        "database:\n  path: data.db\n  busy_timeout_ms: ${DEEP}\n",
        (":3:", "database.busy_timeout_ms", "expected an integer")),
}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name", list(HOSTILE_TEXTS))
def test_a_hostile_config_is_one_line_exit_2_and_nothing_created(
        tmp_path: Path, name: str, command: tuple[str, ...]) -> None:
    text, words = HOSTILE_TEXTS[name]
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "hostile.yaml"
    config.write_text(text)
    before = snapshot(tmp_path)
    done = run_bounded(*command, config, env={"DEEP": "[" * 100_000},
                       address_space_mb=SMALL_MB if command[0] == "check-config" else None,
                       timeout_s=60)
    assert_refused(done, 2, f"{config}:", *words)
    assert snapshot(tmp_path) == before
    assert done.peak_mb < 200, done.peak_mb


def test_a_merge_key_takes_the_keys_written_beside_it_first(tmp_path: Path) -> None:
    config = parse_config(
        "database:\n  <<: [&base {path: base.db, journal_mode: delete, readers: 2}]\n"
        "  journal_mode: wal\n", file="merge.yaml", base_dir=tmp_path)
    assert config.database.path == tmp_path / "base.db"
    assert (config.database.journal_mode, config.database.readers) == ("wal", 2)


def test_a_shared_anchor_is_still_accepted(tmp_path: Path) -> None:
    config = parse_config(TABLE + "  u:\n    columns: &cols {id: integer, v: integer}\n"
                          "    primary_key: id\n  w:\n    columns: *cols\n    primary_key: id\n",
                          file="anchors.yaml", base_dir=tmp_path)
    assert [t.name for t in config.tables] == ["t", "u", "w"]


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_folder(path: Path) -> Path:
    path.mkdir()
    return path


def make_huge(path: Path) -> Path:
    with path.open("wb") as out:  # 50 MB of one YAML comment line after another
        block = b"# " + b"x" * 1022 + b"\n"
        for _ in range(50 * 1024):
            out.write(block)
    return path


def make_just_over_the_cap(path: Path) -> Path:
    path.write_text("database: {path: data.db}\n" + "#" * (1024 * 1024) + "\n")
    return path


NOT_A_CONFIG_FILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "/dev/zero": (lambda _: Path("/dev/zero"), "not a regular file"),
    "a FIFO": (make_fifo, "not a regular file"),
    "a folder": (make_folder, "not a regular file"),
    "a 50 MB file": (make_huge, "larger than 1 MiB"),
    "a file just over 1 MiB": (make_just_over_the_cap, "larger than 1 MiB"),
}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name", list(NOT_A_CONFIG_FILE))
def test_what_is_not_a_small_regular_file_is_refused_before_it_is_read(
        tmp_path: Path, name: str, command: tuple[str, ...]) -> None:
    make, words = NOT_A_CONFIG_FILE[name]
    config = make(tmp_path / "config.yaml")
    before = snapshot(tmp_path)
    done = run_bounded(*command, config, address_space_mb=SMALL_MB, timeout_s=60)
    assert_refused(done, 2, f"{config}:", words)
    assert snapshot(tmp_path) == before
    assert done.peak_mb < 100, done.peak_mb


# --- paths: the user's links are never removed, replaced or followed out ------------------

def link_to_a_missing_folder(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "data.db").symlink_to(tmp_path / "gone" / "real.db")
    return "database:\n  path: data.db\n", tmp_path / "data.db"


def a_loop_as_the_database(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "data.db").symlink_to(tmp_path / "data.db")
    return "database:\n  path: data.db\n", tmp_path / "data.db"


def a_loop_on_the_way(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return "database:\n  path: a/data.db\n", tmp_path / "a"


def a_link_as_the_lock_file(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "precious.txt").write_text("keep me\n")
    (tmp_path / "data.db.lock").symlink_to(tmp_path / "precious.txt")
    return "database:\n  path: data.db\n", tmp_path / "data.db.lock"


def a_link_as_the_default_message_log(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "precious.txt").write_text("keep me\n")
    (tmp_path / "data.db.messages.jsonl").symlink_to(tmp_path / "precious.txt")
    return "database:\n  path: data.db\n", tmp_path / "data.db.messages.jsonl"


def a_link_as_the_message_log(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "precious.txt").write_text("keep me\n")
    (tmp_path / "log.jsonl").symlink_to(tmp_path / "precious.txt")
    return ("database:\n  path: data.db\nmessage_log:\n  path: log.jsonl\n",
            tmp_path / "log.jsonl")


LINKS: dict[str, tuple[Callable[[Path], tuple[str, Path]], tuple[str, ...]]] = {
    "a database link to a missing folder": (link_to_a_missing_folder,
                                            (":2:", "database.path", "does not exist")),
    "a database path that is a loop": (a_loop_as_the_database,
                                       (":2:", "database.path", "loop of symbolic links")),
    "a database inside a loop of links": (a_loop_on_the_way,
                                          (":2:", "database.path", "loop of symbolic links")),
    "a link at the lock file": (a_link_as_the_lock_file,
                                (":2:", "database.path", "lock file", "symbolic link")),
    "a link at the default message log": (a_link_as_the_default_message_log,
                                          (":1:", "database", "symbolic link")),
    "a link at the message log": (a_link_as_the_message_log,
                                  (":4:", "message_log.path", "symbolic link")),
}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name", list(LINKS))
def test_a_link_that_leads_nowhere_or_out_is_refused_and_left_as_it_was(
        tmp_path: Path, name: str, command: tuple[str, ...]) -> None:
    make, words = LINKS[name]
    text, link = make(tmp_path)
    target = os.readlink(link)
    config = tmp_path / "config.yaml"
    config.write_text(text)
    before = snapshot(tmp_path)
    done = run_bounded(*command, config, timeout_s=60)
    assert_refused(done, 2, f"{config}:", *words)
    assert snapshot(tmp_path) == before
    assert link.is_symlink() and os.readlink(link) == target


def test_a_refused_start_through_a_link_to_a_file_to_come_keeps_the_link(
        tmp_path: Path) -> None:
    # Used as it is: the database would be made where the link points. SQLite refuses
    # the schema, and the start takes back only the file it made, never the link.
    (tmp_path / "data.db").symlink_to(tmp_path / "real.db")
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: data.db\ntables:\n  t:\n"
                      "    columns: {id: integer, body: text}\n    primary_key: id\n"
                      "    fts: {columns: [body], tokenize: unicode61 remove_diacritics 9}\n")
    before = snapshot(tmp_path)
    done = run_bounded("run", "--once", "--no-progress", config, timeout_s=60)
    assert_refused(done, 2, "SQLite refused the declared schema")
    assert snapshot(tmp_path) == before
    assert os.readlink(tmp_path / "data.db") == str(tmp_path / "real.db")


# --- a refused start leaves no file behind ------------------------------------------------

def test_a_start_refused_on_a_file_that_is_not_a_database_leaves_no_message_log(
        tmp_path: Path) -> None:
    (tmp_path / "data.db").write_bytes(b"not a database, just some text\n" * 10)
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: data.db\n")
    before = snapshot(tmp_path)
    done = run_bounded("run", "--once", "--no-progress", config, timeout_s=60)
    assert_refused(done, 2, "is not a SQLite database")
    assert snapshot(tmp_path) == before


def test_a_start_refused_by_another_engine_creates_and_changes_nothing(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    holder_log = tmp_path / "holder.jsonl"
    config = data / "config.yaml"
    config.write_text("database:\n  path: data.db\n")
    holder = parse_config(f"database:\n  path: data.db\nmessage_log:\n  path: {holder_log}\n",
                          file="holder.yaml", base_dir=data)
    with Engine(holder):
        before = snapshot(data)
        done = run_bounded("run", "--once", "--no-progress", config, timeout_s=60)
        assert_refused(done, 2, "another engine is running")
        assert snapshot(data) == before
    assert not (data / "data.db.messages.jsonl").exists()


# --- call: targets resolve the same way for check-config and run --------------------------

CALL_CONFIG = TABLE + """\
tasks:
  double:
    table: t
    call: {call}
    reads: [v]
    writes: [v]
"""


def write_call_config(folder: Path, call: str) -> Path:
    (folder / "doubling.py").write_text(
        "def double(rows):\n    return [{'v': row['v'] * 2} for row in rows]\n")
    config = folder / "config.yaml"
    config.write_text(CALL_CONFIG.replace("{call}", call))
    return config


def test_a_call_module_beside_the_config_resolves_for_check_config_and_run(
        tmp_path: Path) -> None:
    config = write_call_config(tmp_path, "doubling:double")
    # Both run from the repository root, where no `doubling` module is.
    checked = run_bounded("check-config", config, timeout_s=60)
    assert checked.returncode == 0, checked.stderr
    assert f"{config}: OK" in checked.stdout
    # A first run makes the table (its task finds no row); a row comes, and version 2
    # of the task doubles it.
    first = run_bounded("run", "--once", "--no-progress", config, timeout_s=120)
    assert first.returncode == 0, first.stderr
    assert "task double@1: done" in first.stdout
    conn = apsw.Connection(str(tmp_path / "data.db"))
    try:
        conn.execute("INSERT INTO t VALUES (1, 21)")
    finally:
        conn.close()
    config.write_text(CALL_CONFIG.replace("{call}", "doubling:double").replace(
        "    table: t\n    call", "    table: t\n    version: 2\n    call"))
    second = run_bounded("run", "--once", "--no-progress", config, timeout_s=120)
    assert second.returncode == 0, second.stderr
    assert "task double@2: done, 1 rows changed" in second.stdout
    conn = apsw.Connection(str(tmp_path / "data.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]
    finally:
        conn.close()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(("call", "words"), [
    ("missing_module:double", ("ModuleNotFoundError", "missing_module")),
    ("doubling:missing", ("AttributeError", "missing")),
    ("doubling:__doc__", ("is not callable",)),
], ids=["a missing module", "a missing function", "not callable"])
def test_a_call_that_cannot_be_imported_is_one_line_at_its_key(
        tmp_path: Path, call: str, words: tuple[str, ...], command: tuple[str, ...]) -> None:
    config = write_call_config(tmp_path, call)
    before = snapshot(tmp_path)
    done = run_bounded(*command, config, timeout_s=60)
    assert_refused(done, 2, f"{config}:10:", "tasks.double.call", *words)
    assert snapshot(tmp_path) == before


def test_load_config_imports_calls_only_when_asked(tmp_path: Path) -> None:
    config = write_call_config(tmp_path, "not_imported_anywhere:f")
    assert load_config(config).tasks[0].call_from == tmp_path
    with pytest.raises(ConfigError, match=r"tasks\.double\.call: cannot import"):
        load_config(config, import_calls=True)


def test_imports_of_calls_from_two_threads_both_resolve(tmp_path: Path) -> None:
    from sqlwarden.config.tasks import import_call

    write_call_config(tmp_path, "doubling:double")
    found: list[object] = []
    threads = [threading.Thread(target=lambda: found.append(
        import_call("doubling:double", tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 4 and all(callable(f) for f in found)
    assert str(tmp_path) not in __import__("sys").path
