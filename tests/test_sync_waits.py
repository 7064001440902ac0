"""A sync run waits out another program holding the write lock past the busy timeout:
it says what it waits for, then finishes by itself with the rows a control run has."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.db.faults import LOCKED
from sqlwarden.errors import EngineStopped
from sqlwarden.facade import Engine

from .conftest import sqlwarden_running, table_digest, wait_until
from .support.device import LockHolder
from .test_sync_http import Upstream, stamp

BUSY_MS = 300

def release_after_twice_the_busy_timeout(holder: LockHolder) -> None:
    holder.hold_for(2 * BUSY_MS / 1000)
    holder.release()


@pytest.fixture
def holders() -> Iterator[list[LockHolder]]:
    started: list[LockHolder] = []
    yield started
    for holder in started:
        holder.kill()


def ndjson_config(tmp_path: Path, name: str) -> Config:
    return parse_config(f"""\
database: {{path: {tmp_path / name / 'test.db'}, busy_timeout_ms: {BUSY_MS}}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
sources:
  files:
    kind: ndjson
    path: {tmp_path / 'inbox'}
    table: items
    batch_rows: 100
    retries: []
message_log: {{path: {tmp_path / name / 'messages.jsonl'}}}
""", file="test.yaml", base_dir=tmp_path)


def http_config(tmp_path: Path, name: str, url: str) -> Config:
    return parse_config(http_yaml(tmp_path, name, url), file="test.yaml", base_dir=tmp_path)


def http_yaml(tmp_path: Path, name: str, url: str, *, status: bool = False) -> str:
    return f"""\
database: {{path: {tmp_path / name / 'test.db'}, busy_timeout_ms: {BUSY_MS}}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
      body: text
      updated: {{type: timestamp, not_null: true}}
sources:
  api:
    kind: http
    url: {url}
    table: items
    total_at: total
    page_size: 50
    retries: []
fts_deferral: {{enabled: false}}
status: {{enabled: {str(status).lower()}, port: 0}}
message_log: {{path: {tmp_path / name / 'messages.jsonl'}}}
"""


def waits_for(engine: Engine) -> str | None:
    (view,) = engine.sync.status()
    return view.waiting_for


def control(config: Config, source: str) -> str:
    with Engine(config) as engine:
        assert engine.sync.run(source, timeout=60).status == "ok"
    return table_digest(config.database.path, "items")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def test_a_run_that_cannot_record_its_start_waits_for_the_lock_and_then_runs(
        tmp_path: Path, holders: list[LockHolder]) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "a.ndjson").write_text("".join(
        json.dumps({"id": i, "name": f"item {i}"}) + "\n" for i in range(1, 501)))
    expected = control(ndjson_config(tmp_path, "control"), "files")
    config = ndjson_config(tmp_path, "data")
    with Engine(config) as engine:
        holders.append(holder := LockHolder(config.database.path))
        handle = engine.sync.run_later("files")
        wait_until(lambda: waits_for(engine) == LOCKED, what="the source to say it waits")
        steady, reasons = engine.health()
        assert not steady and f"source files waits: {LOCKED}" in reasons
        release_after_twice_the_busy_timeout(holder)
        run = handle.result(timeout=60)
        assert (run.status, run.rows, run.rejects, run.error) == ("ok", 500, 0, None)
        assert waits_for(engine) is None
        assert [r.status for r in engine.sync.history("files")] == ["ok"]
    assert table_digest(config.database.path, "items") == expected


def fill(upstream: Upstream) -> None:
    for i in range(1, 181):
        upstream.put(i, stamp(i))


def test_a_run_whose_batches_meet_the_lock_waits_and_ends_like_a_control(
        tmp_path: Path, upstream: Upstream, holders: list[LockHolder]) -> None:
    fill(upstream)
    expected = control(http_config(tmp_path, "control", upstream.url), "api")
    config = http_config(tmp_path, "data", upstream.url)
    with Engine(config) as engine:
        page = threading.Event()
        upstream.script.append(("hold", page))
        handle = engine.sync.run_later("api")
        # The run's start row is written before its first page is asked for.
        assert upstream.held.wait(30)
        holders.append(holder := LockHolder(config.database.path))
        page.set()
        wait_until(lambda: waits_for(engine) == LOCKED, what="the run to say it waits")
        release_after_twice_the_busy_timeout(holder)
        run = handle.result(timeout=60)
        assert (run.status, run.rows, run.error) == ("ok", 180, None)
        assert waits_for(engine) is None
    assert table_digest(config.database.path, "items") == expected


def test_a_stop_while_a_run_waits_ends_it_and_the_next_run_catches_up(
        tmp_path: Path, upstream: Upstream, holders: list[LockHolder]) -> None:
    fill(upstream)
    expected = control(http_config(tmp_path, "control", upstream.url), "api")
    config = http_config(tmp_path, "data", upstream.url)
    with Engine(config) as engine:
        page = threading.Event()
        upstream.script.append(("hold", page))
        handle = engine.sync.run_later("api")
        assert upstream.held.wait(30)
        holders.append(holder := LockHolder(config.database.path))
        page.set()
        wait_until(lambda: waits_for(engine) == LOCKED, what="the run to say it waits")
    # The engine stopped while the lock was still held: the wait did not hold it up.
    with pytest.raises(EngineStopped):
        handle.result(timeout=0)
    holder.release()
    with Engine(config) as engine:
        run = engine.sync.run("api", timeout=60)
        assert run.status == "ok"
    assert table_digest(config.database.path, "items") == expected


def health_reasons(config: Config) -> list[str]:
    """The reasons `/healthz` of the engine on `config`'s database gives (none yet: [])."""
    from sqlwarden.db.status import running_engine

    found = running_engine(config)
    if found is None:
        return []
    try:
        with urllib.request.urlopen(found[0] + "/healthz", timeout=5) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError:
        return []
    reasons: list[str] = json.loads(body)["reasons"]
    return reasons


def test_sync_now_blocks_while_the_lock_is_held_and_exits_0_once_it_goes(
        tmp_path: Path, upstream: Upstream, holders: list[LockHolder]) -> None:
    fill(upstream)
    expected = control(http_config(tmp_path, "control", upstream.url), "api")
    (tmp_path / "data").mkdir()
    yaml_path = tmp_path / "data" / "sw.yaml"
    yaml_path.write_text(http_yaml(tmp_path, "data", upstream.url, status=True))
    config = parse_config(yaml_path.read_text(), file=str(yaml_path), base_dir=tmp_path)
    page = threading.Event()
    upstream.script.append(("hold", page))
    with sqlwarden_running("sync", "now", str(yaml_path), "api", "--no-progress") as proc:
        assert upstream.held.wait(60)
        holders.append(holder := LockHolder(config.database.path))
        page.set()
        wait_until(lambda: f"source api waits: {LOCKED}" in health_reasons(config),
                   what="/healthz to say the source waits")
        release_after_twice_the_busy_timeout(holder)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "api: 180 rows in" in out and "caught up" in out
    assert table_digest(config.database.path, "items") == expected
