"""The facade: start, stop, status endpoint, and what happens around them."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from sqlwarden.cli import main
from sqlwarden.config import Config, parse_config
from sqlwarden.errors import DatabaseError, EngineError, EngineStopped, SchemaError
from sqlwarden.facade import Engine

from .conftest import count_rows, run_sqlwarden, site_row, sites_yaml


def test_stopping_commits_writes_that_were_still_queued(config: Config) -> None:
    engine = Engine(config).start()
    futures = [engine.write_many("sites", [site_row(i)], wait=False) for i in range(1, 41)]
    engine.stop()
    assert [f.get(timeout=30).changes for f in futures] == [1] * 40
    assert count_rows(config.database.path, "sites") == 40
    assert engine.state == "stopped"


def test_a_stopped_engine_refuses_writes(config: Config) -> None:
    with Engine(config) as engine:
        pass
    with pytest.raises(EngineStopped, match="engine is not running"):
        engine.write("SELECT 1")


def test_an_engine_starts_once(config: Config) -> None:
    with Engine(config) as engine, pytest.raises(EngineError, match="cannot start: it is running"):
        engine.start()


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(
        tmp_path: Path, config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    path = config.database.path
    path.parent.mkdir(parents=True)
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match="is not a SQLite database"):
        Engine(config).start()
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(sites_yaml(tmp_path))
    assert main(["run", str(yaml_path), "--once"]) == 2
    assert "is not a SQLite database" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_the_status_endpoint_serves_health_and_status_on_loopback(tmp_path: Path) -> None:
    text = sites_yaml(tmp_path) + "status:\n  enabled: true\n  port: 0\n"
    config = parse_config(text, base_dir=tmp_path)
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        url = engine.status_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            assert json.load(response) == {"ok": True, "reasons": []}
        with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
            status = json.load(response)
        assert status["writer"]["rows_written"] == 1
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}/nothing", timeout=10)
        assert info.value.code == 404


def test_from_yaml_builds_an_engine_from_a_file(
        write_file: Callable[[str, str], Path], tmp_path: Path) -> None:
    path = write_file(sites_yaml(tmp_path), "c.yaml")
    with Engine.from_yaml(path) as engine:
        assert engine.write_many("sites", [site_row(1)]).changes == 1


def test_a_failed_start_prints_one_line_without_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("not a database\n" * 100)
    config = tmp_path / "c.yaml"
    config.write_text(f"database: {{path: {db}}}\n")
    done = run_sqlwarden("run", str(config), "--once")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "is not a SQLite database" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_schema_sqlite_refuses_leaves_no_new_database_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = sites_yaml(tmp_path).replace(
        "fts: [name, body]",
        "fts: {columns: [name, body], tokenize: unicode61 remove_diacritics 9}")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SQLite refused the declared schema" in err
    assert not (tmp_path / "data" / "test.db").exists()


def test_a_status_port_that_is_taken_is_a_clear_error_before_anything_is_created(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(sites_yaml(tmp_path) + f"status:\n  enabled: true\n  port: {port}\n")
        assert main(["run", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert not (tmp_path / "data" / "test.db").exists()


def test_an_existing_object_with_an_engine_trigger_name_is_refused(config: Config) -> None:
    config.database.path.parent.mkdir(parents=True)
    other = apsw.Connection(str(config.database.path))
    other.execute("CREATE TABLE sites_fts_ai (x)")
    other.close()
    with pytest.raises(SchemaError, match="'sites_fts_ai' exists in the database as a table"):
        Engine(config).start()
