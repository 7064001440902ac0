"""Shared fixtures: real SQLite files in tmp_path, engines stopped after each test."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pykka
import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine

from .support import galera as galera_support
from .support.device import NoTmpfs, mounted_tmpfs
from .support.galera import GaleraCluster, GaleraDb
from .support.mariadb import MariaDB, MirrorDb, available

ROOT = Path(__file__).resolve().parent.parent


#: The two tables the generator source fills, as lines under `tables:` (registry
#: with an FTS index on name and body). A config template takes it through a
#: `{generator_tables}` field.
GENERATOR_TABLES = """\
  registry:
    columns:
      id: {type: integer, primary_key: true}
      org: {type: text, not_null: true}
      name: {type: text, not_null: true}
      body: text
      updated_at: {type: timestamp, not_null: true}
      last_seen: timestamp
    fts: [name, body]
  observations:
    columns:
      id: {type: integer, primary_key: true}
      registry_id: {type: integer, not_null: true, references: registry.id}
      observed_at: {type: timestamp, not_null: true}
      value: real
      unit: {type: text, not_null: true}
"""

#: A chunked task over GENERATOR_TABLES, as lines under `tasks:` (without chunk
#: sizes: a template adds its own keys right after it). Taken through `{last_seen_task}`.
LAST_SEEN_TASK = """\
  last_seen:
    table: registry
    set:
      last_seen: "(SELECT max(o.observed_at) FROM observations o WHERE o.registry_id = registry.id)"
    where: >-
      last_seen IS NULL
      AND EXISTS (SELECT 1 FROM observations o WHERE o.registry_id = registry.id)
"""

#: A small schema with an FTS table, an index and a foreign key.
SITES_YAML = """\
database:
  path: {db}
  busy_timeout_ms: {busy_timeout_ms}
  wal_threshold_mb: {wal_threshold_mb}
tables:
  sites:
    columns:
      id: {{type: integer, primary_key: true}}
      org: {{type: text, not_null: true}}
      name: {{type: text, not_null: true}}
      body: text
      updated_at: {{type: timestamp, not_null: true}}
    indexes:
      - [org, updated_at]
    fts: [name, body]
  readings:
    columns:
      id: {{type: integer, primary_key: true}}
      site_id: {{type: integer, not_null: true, references: sites.id}}
      value: real
      note: text
message_log:
  path: {log}
  payload: {payload}
"""


def sites_yaml(tmp_path: Path, **overrides: Any) -> str:
    values: dict[str, Any] = {"db": tmp_path / "data" / "test.db",
                              "log": tmp_path / "data" / "messages.jsonl",
                              "busy_timeout_ms": 5000, "wal_threshold_mb": 64,
                              "payload": "summary"}
    values.update(overrides)
    return SITES_YAML.format(**values)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(sites_yaml(tmp_path), file="test.yaml", base_dir=tmp_path)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        return parse_config(sites_yaml(tmp_path, **overrides), file="test.yaml",
                            base_dir=tmp_path)
    return make


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    with Engine(config) as running:
        yield running


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "sqlwarden.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


@pytest.fixture(autouse=True)
def no_actor_left_running() -> Iterator[None]:
    """Every test must stop what it started."""
    yield
    alive = pykka.ActorRegistry.get_all()
    if alive:
        pykka.ActorRegistry.stop_all()
        pytest.fail(f"actors still running after the test: {alive}")


def site_row(i: int, *, org: str = "acme", body: str | None = None) -> tuple[Any, ...]:
    return (i, org, f"site {i}", body if body is not None else f"pump station number {i}",
            f"2025-01-01T00:00:{i % 60:02d}Z")


def read_only(path: Path) -> apsw.Connection:
    """A test's own read-only look at a database file."""
    return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)


def count_rows(path: Path, table: str) -> int:
    conn = read_only(path)
    try:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    finally:
        conn.close()


def table_digest(path: Path, table: str) -> str:
    """A hash of every row in key order: equal digests mean equal contents."""
    conn = read_only(path)
    try:
        digest = hashlib.sha256()
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
            digest.update(repr(row).encode())
        return digest.hexdigest()
    finally:
        conn.close()


def files_under(path: Path) -> dict[str, bytes]:
    """Every file below `path` with its content, to prove nothing changed."""
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def sqlwarden(*args: str, env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[str]:
    """Start the `sqlwarden` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "sqlwarden", *args], cwd=ROOT,
                            env=full_env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


@contextlib.contextmanager
def sqlwarden_running(*args: str, **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """`sqlwarden ARGS` in a subprocess for the block; killed at its end if still running."""
    proc = sqlwarden(*args, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_sqlwarden(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `sqlwarden` command to completion."""
    return subprocess.run([sys.executable, "-m", "sqlwarden", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 60.0,
               what: str = "condition") -> None:
    """Wait for a subprocess's observable state (there is no future to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def kill_driver_when(driver: str, *args: str | Path, ready: Callable[[], bool], what: str,
                     timeout_s: float = 60.0) -> None:
    """Run `python -m tests.support.DRIVER ARGS`, wait until `ready()`, then SIGKILL it.

    Fails, with the driver's last words, if it ends before that.
    """
    proc = subprocess.Popen([sys.executable, "-m", f"tests.support.{driver}",
                             *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def ready_while_running() -> bool:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the driver ended before the kill: {err[-2000:]}")
        return ready()

    try:
        wait_until(ready_while_running, timeout_s=timeout_s, what=what)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# -- a private MariaDB server for the mirror's tests (tests/support/mariadb.py) --------------------


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    try:
        with mounted_tmpfs(where, size) as mounted:
            yield mounted
    except NoTmpfs as exc:
        if _ci():
            pytest.fail(f"{exc}; CI=true needs this test to run", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs mounted for the test (as root), unmounted after it."""
    yield from _tmpfs(tmp_path / "small", "3m")


@pytest.fixture
def small_log_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs for a message log alone, mounted for the test (as root)."""
    yield from _tmpfs(tmp_path / "logfs", "1m")


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """One private server for the whole session; skipped where MariaDB is missing, but a
    failure under CI=true (where scripts/test installs it)."""
    problem = available()
    server: MariaDB | None = None
    if problem is None:
        server = MariaDB(tmp_path_factory.mktemp("mariadb"))
        try:
            server.start()
        except (RuntimeError, OSError) as exc:
            problem = f"the test MariaDB server did not start: {exc}"
    if problem is not None or server is None:
        if _ci():
            pytest.fail(f"MariaDB is needed under CI=true: {problem}", pytrace=False)
        pytest.skip(f"no MariaDB: {problem}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mirror_db(mariadb: MariaDB, monkeypatch: pytest.MonkeyPatch) -> Iterator[MirrorDb]:
    """A fresh database and user (random password, in $SW_MYSQL_PASSWORD) for one test."""
    if not mariadb.running:  # an earlier test stopped it and did not bring it back
        mariadb.start()
    name = f"sw_t{secrets.token_hex(6)}"
    password = secrets.token_hex(16)
    mariadb.create_database(name, name, password)
    monkeypatch.setenv("SW_MYSQL_PASSWORD", password)
    yield MirrorDb(server=mariadb, database=name, user=name, password=password,
                   dsn=mariadb.dsn(name, name))
    with contextlib.suppress(Exception):  # the server may be down after a crash test
        mariadb.drop_database(name, name)


# -- a private 3-node Galera cluster (tests/support/galera.py) ------------------------------------


@pytest.fixture(scope="session")
def galera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaleraCluster]:
    """One private 3-node cluster for the whole session, started on first use; skipped where
    Galera is missing, but a failure under CI=true (where scripts/test installs it)."""
    problem = galera_support.available()
    cluster: GaleraCluster | None = None
    if problem is None:
        cluster = GaleraCluster(tmp_path_factory.mktemp("galera"))
        try:
            cluster.start()
        except (RuntimeError, OSError) as exc:
            problem = f"the test Galera cluster did not start: {exc}"
    if problem is not None or cluster is None:
        if _ci():
            pytest.fail(f"a Galera cluster is needed under CI=true: {problem}", pytrace=False)
        pytest.skip(f"no Galera cluster: {problem}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def galera_db(galera: GaleraCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[GaleraDb]:
    """A fresh database and user on the cluster (random password, in $SW_MYSQL_PASSWORD),
    with every node up and synced first: a node an earlier test killed is started again."""
    for node in galera.nodes:
        if not node.running:
            node.start()
    galera.wait_synced(galera.size)
    name = f"sw_g{secrets.token_hex(6)}"
    password = secrets.token_hex(16)
    galera.create_database(name, name, password)
    monkeypatch.setenv("SW_MYSQL_PASSWORD", password)
    yield GaleraDb(cluster=galera, database=name, user=name, password=password,
                   dsn=galera.dsn(name, name), hosts=galera.hosts)
    with contextlib.suppress(Exception):  # no node may be up after a crash test
        galera.drop_database(name, name)
