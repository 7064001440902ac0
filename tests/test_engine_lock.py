"""One engine per database: a second one (in this process or another) is refused at start
with one line naming the running one, and the lock dies with the process that holds it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.db.lock import lock_path, read_holder
from sqlwarden.errors import DatabaseError, SchemaError
from sqlwarden.facade import Engine

from .conftest import count_rows, run_sqlwarden, sites_yaml, sqlwarden, wait_until

UNBUFFERED = {"PYTHONUNBUFFERED": "1"}


def with_status(tmp_path: Path, **overrides: object) -> str:
    return sites_yaml(tmp_path, **overrides) + "status:\n  enabled: true\n  port: 0\n"


def names_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@contextmanager
def serving(config_file: Path, database: Path) -> Iterator[subprocess.Popen[str]]:
    """`sqlwarden run` in another process, once it holds the lock and serves."""
    proc = sqlwarden("run", str(config_file), "--no-progress", env=UNBUFFERED)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("caught up; serving"):
                break
        else:
            raise AssertionError(f"the engine ended early: {proc.stderr and proc.stderr.read()}")
        holder = read_holder(lock_path(database)) or {}
        assert holder.get("pid") == proc.pid, holder
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def test_a_second_engine_in_the_same_process_is_refused_naming_the_first(
        tmp_path: Path) -> None:
    config = parse_config(with_status(tmp_path), file="test.yaml", base_dir=tmp_path)
    with Engine(config) as first:
        first.write_many("sites", [(1, "acme", "north", None, "2025-01-01T00:00:00Z")])
        with pytest.raises(DatabaseError) as refused:
            Engine(config).start()
        message = str(refused.value)
        assert message.startswith(f"another engine is running on database {config.database.path}")
        assert f"pid {os.getpid()} (this process)" in message and "since 20" in message
        assert f"status at {first.status_url}" in message
        assert "\n" not in message
        # The first goes on as if nothing happened.
        first.write_many("sites", [(2, "acme", "south", None, "2025-01-01T00:00:00Z")])
    # Once it has stopped, the next one starts.
    with Engine(config) as second:
        assert second.state == "running"
    assert count_rows(config.database.path, "sites") == 2


def test_a_refused_start_creates_no_file_and_changes_nothing(
        tmp_path: Path, make_config: Callable[..., Config]) -> None:
    running = make_config()
    # Its message log would go to a folder of its own: none may appear.
    other = make_config(log=tmp_path / "other" / "messages.jsonl")
    with Engine(running) as first:
        first.write_many("sites", [(1, "acme", "north", None, "2025-01-01T00:00:00Z")])
        before = names_under(tmp_path)
        with pytest.raises(DatabaseError, match="another engine is running"):
            Engine(other).start()
        assert names_under(tmp_path) == before
        assert not (tmp_path / "other").exists()
    assert count_rows(running.database.path, "sites") == 1


def test_a_second_sqlwarden_run_is_refused_with_one_line_while_the_first_runs(
        tmp_path: Path) -> None:
    config_file = tmp_path / "sqlwarden.yaml"
    config_file.write_text(with_status(tmp_path))
    database = tmp_path / "data" / "test.db"
    with serving(config_file, database) as first:
        wait_until(lambda: bool((read_holder(lock_path(database)) or {}).get("endpoint")),
                   what="the running engine's endpoint in its lock file")
        holder = read_holder(lock_path(database)) or {}
        second = run_sqlwarden("run", str(config_file), "--once", "--no-progress")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "another engine is running" in lines[0] and f"pid {first.pid}" in lines[0]
        assert f"status at {holder['endpoint']}" in lines[0]
        # Commands that only read keep working beside it.
        status = run_sqlwarden("status", str(config_file))
        assert status.returncode == 0, status.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    assert not lock_path(database).exists(), "a clean stop removes its lock file"


def test_a_lock_whose_holder_was_killed_does_not_stop_the_next_engine(
        tmp_path: Path) -> None:
    config_file = tmp_path / "sqlwarden.yaml"
    config_file.write_text(sites_yaml(tmp_path))
    database = tmp_path / "data" / "test.db"
    with serving(config_file, database) as first:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The file it left still names it; the lock itself went with the process.
    assert (read_holder(lock_path(database)) or {}).get("pid") == first.pid
    config = parse_config(config_file.read_text(), file=str(config_file), base_dir=tmp_path)
    with Engine(config) as engine:
        engine.write_many("sites", [(1, "acme", "north", None, "2025-01-01T00:00:00Z")])
        assert (read_holder(lock_path(database)) or {}).get("pid") == os.getpid()
    assert count_rows(database, "sites") == 1


def test_a_start_that_fails_for_another_reason_leaves_no_lock_behind(tmp_path: Path) -> None:
    text = sites_yaml(tmp_path).replace(
        "fts: [name, body]",
        "fts: {columns: [name, body], tokenize: unicode61 remove_diacritics 9}")
    config = parse_config(text, file="test.yaml", base_dir=tmp_path)
    with pytest.raises(SchemaError, match="SQLite refused the declared schema"):
        Engine(config).start()
    assert not lock_path(config.database.path).exists()
    assert not config.database.path.exists()


def test_a_database_reached_through_a_symlink_shares_the_lock_of_its_file(
        tmp_path: Path) -> None:
    real = tmp_path / "data" / "test.db"
    alias = tmp_path / "alias.db"
    real.parent.mkdir()
    alias.symlink_to(real)  # the file itself does not exist yet
    direct = parse_config(sites_yaml(tmp_path), file="b.yaml", base_dir=tmp_path)
    linked = parse_config(sites_yaml(tmp_path, db=alias), file="a.yaml", base_dir=tmp_path)
    for site, (first, second) in enumerate(((linked, direct), (direct, linked))):
        with Engine(first) as running:
            running.write_many("sites", [(site, "acme", "north", None, "2025-01-01T00:00:00Z")])
            with pytest.raises(DatabaseError) as refused:
                Engine(second).start()
            message = str(refused.value)
            assert message.startswith("another engine is running on database "
                                      f"{second.database.path}")
            assert f"lock: {real}.lock" in message
            if second is linked:
                assert f"(that is {real})" in message
            assert not Path(f"{alias}.lock").exists()
        # The user's symlink is left as it was, and no lock outlives its engine.
        assert alias.is_symlink() and os.readlink(alias) == str(real)
        assert not Path(f"{real}.lock").exists()
    assert count_rows(real, "sites") == 2


def test_a_linked_folder_and_its_target_share_one_lock_across_processes(
        tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").symlink_to(tmp_path / "data", target_is_directory=True)
    database = tmp_path / "data" / "test.db"
    config_file = tmp_path / "sqlwarden.yaml"
    config_file.write_text(sites_yaml(tmp_path))
    linked_file = tmp_path / "linked.yaml"
    linked_file.write_text(sites_yaml(tmp_path, db=tmp_path / "elsewhere" / "test.db",
                                      log=tmp_path / "linked.jsonl"))
    with serving(config_file, database) as first:
        second = run_sqlwarden("run", str(linked_file), "--once", "--no-progress")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "another engine is running" in lines[0] and f"pid {first.pid}" in lines[0]
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    assert (tmp_path / "elsewhere").is_symlink()
    assert not lock_path(database).exists()
