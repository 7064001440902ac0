"""The `sqlwarden` command, run as a user runs it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import apsw
import pytest

from sqlwarden.cli import main
from sqlwarden.db.schema import ENGINE_SCHEMA_VERSION

from .conftest import (
    ROOT,
    count_rows,
    read_only,
    run_sqlwarden,
    sqlwarden,
    table_digest,
    wait_until,
)

UNBUFFERED = {"PYTHONUNBUFFERED": "1"}


def demo_config(folder: Path, *, registry: int = 500, observations: int = 5000) -> Path:
    """The shipped demo config, with its data in `folder` and smaller sizes."""
    text = (ROOT / "configs" / "demo.yaml").read_text()
    for old, new in (("${SQLWARDEN_DATA:-../var}", str(folder)),
                     ("registry_rows: 20000", f"registry_rows: {registry}"),
                     ("observation_rows: 200000", f"observation_rows: {observations}"),
                     ("batch_rows: 2000", "batch_rows: 1000")):
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", [[], ["run"], ["check-config"], ["status"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sqlwarden")
    assert "CONFIG" in out or "COMMAND" in out


@pytest.mark.parametrize("argv", [[], ["run"], ["frobnicate", "x"], ["run", "c.yaml", "--fast"],
                                  ["status", "a.yaml", "b.yaml"]])
def test_bad_arguments_give_one_line_and_exit_2(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sqlwarden")


def test_status_of_a_database_that_does_not_exist_yet_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = demo_config(tmp_path)
    assert main(["status", str(path)]) == 2
    assert "does not exist (has the engine run yet?)" in capsys.readouterr().err
    assert not (tmp_path / "demo.db").exists()


def test_run_once_ingests_everything_and_a_second_run_adds_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = demo_config(tmp_path)
    assert main(["run", str(path), "--once", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "demo: 5,500 rows" in out and "caught up" in out
    assert "summary" in out and "rows/s" in out and "WAL" in out
    digest = table_digest(tmp_path / "demo.db", "observations")
    assert main(["run", str(path), "--once", "--no-progress"]) == 0
    assert "demo: 0 rows" in capsys.readouterr().out
    assert count_rows(tmp_path / "demo.db", "registry") == 500
    assert table_digest(tmp_path / "demo.db", "observations") == digest
    conn = read_only(tmp_path / "demo.db")
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("SELECT count(*) FROM registry_fts WHERE registry_fts MATCH 'site'") \
        .fetchall() == [(500,)]
    conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_status_works_while_another_process_serves_and_a_signal_stops_it_cleanly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: signal.Signals) -> None:
    path = demo_config(tmp_path)
    proc = sqlwarden("run", str(path), "--no-progress", env=UNBUFFERED)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("caught up; serving"):
                break
        else:
            raise AssertionError(f"the engine ended early: {proc.stderr.read()}")
        assert main(["status", str(path), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["tables"] == {"registry": {"rows": 500}, "observations": {"rows": 5000},
                                    "orgs": {"rows": 16}}
        assert {t["task"]: t["status"] for t in status["tasks"]} == {
            "registry_last_seen@1": "done", "observation_units@1": "done",
            "org_directory@1": "done"}
        assert status["database"]["schema_version"] == str(ENGINE_SCHEMA_VERSION)
        assert main(["status", str(path)]) == 0
        assert "5,000 rows" in capsys.readouterr().out
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping: stop requested" in out and "summary" in out
    assert "Traceback" not in err
    # A clean stop checkpoints and removes the WAL.
    assert not (tmp_path / "demo.db-wal").exists()


def test_a_run_killed_mid_ingest_loses_no_committed_row_and_the_next_run_finishes_the_same(
        tmp_path: Path) -> None:
    sizes = {"registry": 5_000, "observations": 150_000}
    control = demo_config(tmp_path / "control", **sizes)
    done = run_sqlwarden("run", str(control), "--once", "--no-progress")
    assert done.returncode == 0, done.stderr

    crashed = demo_config(tmp_path / "crashed", **sizes)
    db = tmp_path / "crashed" / "demo.db"
    proc = sqlwarden("run", str(crashed), "--once", "--no-progress")
    try:
        def committed() -> int:
            if not (tmp_path / "crashed" / "demo.db-wal").exists():
                return 0
            try:
                return count_rows(db, "observations")
            except apsw.Error:  # the schema may not be there yet
                return 0
        wait_until(lambda: committed() >= 30_000, what="30,000 committed observations")
        seen = committed()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    after_kill = count_rows(db, "observations")
    assert seen <= after_kill < sizes["observations"]

    again = run_sqlwarden("run", str(crashed), "--once", "--no-progress")
    assert again.returncode == 0, again.stderr
    for table, rows in sizes.items():
        assert count_rows(db, table) == rows
        assert table_digest(db, table) == table_digest(tmp_path / "control" / "demo.db", table)
    conn = read_only(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_an_internal_failure_exits_1_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = demo_config(tmp_path, registry=10, observations=10)
    assert main(["run", str(path), "--once", "--no-progress"]) == 0
    capsys.readouterr()
    damage = apsw.Connection(str(tmp_path / "demo.db"))
    damage.execute("DROP TABLE _sw_meta; CREATE TABLE _sw_meta (x)")
    damage.close()
    assert main(["status", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sqlwarden: internal error: ") and "SQLWARDEN_DEBUG" in err
