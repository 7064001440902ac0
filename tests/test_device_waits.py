"""The engine outlives the device it lives on: another program holding the database's
write lock, and a full disk, are waits that say what they wait for and end by
themselves, at start and while a task, a sync run and the mirror work side by side.

The other program is a process of its own (Python's `sqlite3`): SQLite's locks are
POSIX locks, which never conflict within one process.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.db.faults import DISK_FULL, LOCKED
from sqlwarden.errors import EngineStopped
from sqlwarden.facade import Engine
from sqlwarden.futures import Timeout

from .conftest import count_rows, read_only, sqlwarden, sqlwarden_running, table_digest, wait_until
from .support import device
from .support.device import fill, held_write_lock
from .support.mariadb import MirrorDb
from .test_mirror import FAST, assert_mirror_equals_sqlite, boot_reconciled

BUSY_TIMEOUT_MS = 300
#: Long enough that the task is still under way when the lock is taken.
NUMS = 20_000
ITEMS = 3_000

DEVICE_YAML = """\
database: {{path: {db}, busy_timeout_ms: {busy}}}
tables:
  nums:
    columns:
      id: {{type: integer, primary_key: true}}
      x: integer
      note: text
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
tasks:
  double:
    table: nums
    set: {{x: "id * 2", note: "'n' || id"}}
    where: "x IS NULL"
    min_rows: 200
    max_rows: 200
    yield_ms: 20
sources:
  files:
    kind: ndjson
    path: {inbox}
    table: items
    batch_rows: 100
    retries: []
{mirror}message_log: {{path: {log}}}
"""


def device_yaml(db: Path, inbox: Path, log: Path, *, mirror: str = "") -> str:
    return DEVICE_YAML.format(db=db, busy=BUSY_TIMEOUT_MS, inbox=inbox, mirror=mirror, log=log)


def device_config(folder: Path, inbox: Path, *, dsn: str | None = None,
                  scope: str = "dev1") -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    mirror = ""
    if dsn is not None:
        options = "".join(f"  {key}: {value}\n" for key, value in FAST.items())
        mirror = f"mirror:\n  dsn: {dsn}\n  scope: {scope}\n{options}"
    text = device_yaml(folder / "device.db", inbox, folder / "messages.jsonl", mirror=mirror)
    return parse_config(text, file="device.yaml", base_dir=folder)


def small_disk_config(disk: Path, outside: Path) -> Config:
    """The device config with its database on `disk`, the records and the message log
    outside it."""
    text = device_yaml(disk / "device.db", outside / "inbox", outside / "messages.jsonl")
    return parse_config(text, file="device.yaml", base_dir=outside)


def write_inbox(inbox: Path, count: int = ITEMS, *, name: str = "a.ndjson",
                pad: int = 0) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_text("".join(
        json.dumps({"id": i, "name": f"item {i}" + "x" * pad}) + "\n"
        for i in range(1, count + 1)))


def populated(config: Config) -> Config:
    """`nums` filled for the task to change, nothing else run yet."""
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("nums", [(i, None, None) for i in range(1, NUMS + 1)])
    return config


def the_task(engine: Engine) -> Any:
    (view,) = engine.tasks.list()
    return view


class Watcher(device.Watcher):
    """Looks at the task, the source and the mirror on a thread, keeping what it saw."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.waiting_for: dict[str, set[str]] = {"task": set(), "source": set(),
                                                 "mirror": set()}
        self.states: set[str] = set()
        self.health: list[str] = []

    def look(self) -> None:
        task = the_task(self.engine)
        (source,) = self.engine.sync.status()
        mirror = self.engine.mirror.view()
        for name, view in (("task", task), ("source", source), ("mirror", mirror)):
            if view.waiting_for:
                self.waiting_for[name].add(view.waiting_for)
        self.states |= {f"task {task.status}", f"mirror {mirror.state}"}
        if source.last is not None:
            self.states.add(f"run {source.last.status}")
        if any(self.waiting_for.values()):
            self.health.extend(self.engine.health()[1])


def finish(engine: Engine, run: Any) -> tuple[Any, Any]:
    """Wait for the task, the run and the mirror to be done: (task view, run view)."""
    (task,) = engine.tasks.wait(timeout=120)
    result = run.result(timeout=120)
    wait_until(lambda: (view := engine.mirror.view()).state == "up"
               and view.waiting_for is None and not view.reconciling
               and _outbox(engine) == 0, what="the mirror to catch up")
    return task, result


def _outbox(engine: Engine) -> int:
    with engine.read() as conn:
        return int(conn.execute("SELECT count(*) FROM _sw_outbox").fetchone()[0])


def test_a_task_a_sync_run_and_the_mirror_wait_out_a_lock_and_end_like_a_control(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    inbox = tmp_path / "inbox"
    write_inbox(inbox)
    control = populated(device_config(tmp_path / "control", inbox, dsn=mirror_db.dsn,
                                      scope="ctl"))
    with Engine(control) as engine:
        task, run = finish(engine, engine.sync.run_later("files"))
        assert (task.status, run.status, run.rows) == ("done", "ok", ITEMS)

    config = populated(device_config(tmp_path / "held", inbox, dsn=mirror_db.dsn))
    with Engine(config) as engine, Watcher(engine) as watcher:
        boot_reconciled(engine)
        wait_until(lambda: the_task(engine).processed > 0, what="the task's first chunk")
        with held_write_lock(config.database.path) as holder:
            # Asked for while the lock is held: its start row waits for it.
            handle = engine.sync.run_later("files")
            wait_until(lambda: the_task(engine).waiting_for == LOCKED,
                       what="the task to say it waits for the lock")
            # The other program keeps the lock for twice the busy timeout.
            holder.hold_for(2 * BUSY_TIMEOUT_MS / 1000)
            watcher.look()
            assert the_task(engine).status == "running"
        task, run = finish(engine, handle)
        watcher.look()

    assert (task.status, task.error, task.waiting_for, task.processed) == (
        "done", None, None, NUMS)
    assert (run.status, run.rows, run.rejects, run.error) == ("ok", ITEMS, 0, None)
    assert LOCKED in watcher.waiting_for["task"] and LOCKED in watcher.waiting_for["source"]
    assert f"task double@1 waits: {LOCKED}" in watcher.health
    assert not any("failed" in state for state in watcher.states), watcher.states
    for table in ("nums", "items"):
        assert table_digest(config.database.path, table) == table_digest(
            control.database.path, table)
    assert assert_mirror_equals_sqlite(config.database.path, mirror_db, "nums", "dev1") == NUMS
    assert assert_mirror_equals_sqlite(config.database.path, mirror_db, "items",
                                       "dev1") == ITEMS
    assert assert_mirror_equals_sqlite(control.database.path, mirror_db, "items", "ctl") == ITEMS


# --- start ------------------------------------------------------------------------------


def simple_config(folder: Path) -> Config:
    """The device config without a mirror, its database made and filled."""
    inbox = folder / "inbox"
    write_inbox(inbox, 200)
    return populated(device_config(folder, inbox))


class Starting:
    """`engine.start(...)` on a thread of its own, keeping what it raised."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        self.engine = engine
        self.waits: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self._thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            self.engine.start(on_wait=self.waits.append, **kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self) -> None:
        assert self.done.wait(60), "start did not return"
        self._thread.join(timeout=30)


def database_files(config: Config) -> dict[str, bytes]:
    """The database file itself and the engine lock's, if any (the WAL and its index
    belong to the other program while it holds the lock)."""
    path = config.database.path
    return {p.name: p.read_bytes() for p in (path, Path(f"{path}.lock")) if p.exists()}


def test_start_waits_while_another_program_holds_the_lock_then_runs(tmp_path: Path) -> None:
    config = simple_config(tmp_path / "data")
    engine = Engine(config, start_tasks=False)
    try:
        with held_write_lock(config.database.path) as holder:
            starting = Starting(engine)
            wait_until(lambda: engine.waiting_for == LOCKED, what="start to say it waits")
            assert engine.state == "new" and not starting.done.is_set()
            holder.hold_for(2 * BUSY_TIMEOUT_MS / 1000)
        starting.join()
        assert starting.error is None
        # Said once when the wait began, not on every retry.
        assert starting.waits == [LOCKED]
        assert (engine.state, engine.waiting_for) == ("running", None)
        assert engine.sync.run("files", timeout=60).status == "ok"
        engine.write("INSERT INTO items (id, name) VALUES (?, ?)", (1000, "after the wait"))
    finally:
        engine.stop()
    assert count_rows(config.database.path, "items") == 201


def test_stopping_an_engine_while_its_start_waits_undoes_the_start(tmp_path: Path) -> None:
    config = simple_config(tmp_path / "data")
    before = database_files(config)
    engine = Engine(config)
    with held_write_lock(config.database.path):
        starting = Starting(engine)
        wait_until(lambda: engine.waiting_for == LOCKED, what="start to say it waits")
        engine.stop()  # from another thread than start's: returns once start is undone
        assert starting.done.is_set()
        starting.join()
        assert isinstance(starting.error, EngineStopped)
        assert engine.state == "stopped"
        assert database_files(config) == before
    # The engine lock went with it: the next engine starts.
    with Engine(config, start_tasks=False) as again:
        assert again.state == "running"


def test_a_start_given_a_timeout_gives_up_saying_what_it_waited_for(tmp_path: Path) -> None:
    config = simple_config(tmp_path / "data")
    before = database_files(config)
    engine = Engine(config)
    with held_write_lock(config.database.path):
        with pytest.raises(Timeout, match=LOCKED) as info:
            engine.start(timeout=2 * BUSY_TIMEOUT_MS / 1000)
        assert info.value.waiting_for == LOCKED
        assert database_files(config) == before
    assert engine.state == "stopped"


def test_a_start_that_meets_a_real_error_fails_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    config = device_config(folder, tmp_path / "inbox")
    config.database.path.write_bytes(b"not a database, only text " * 100)
    waits: list[str] = []
    with pytest.raises(Exception, match="not a SQLite database"):
        Engine(config).start(on_wait=waits.append)
    assert waits == []


def cli_config(folder: Path) -> Path:
    """A YAML file for `sqlwarden run`, with its database made and filled."""
    config = simple_config(folder)
    path = folder / "device.yaml"
    path.write_text(device_yaml(config.database.path, folder / "inbox",
                                folder / "messages.jsonl"))
    return path


def first_line(stream: Any, timeout_s: float = 60.0) -> str:
    """The next line of a subprocess's pipe, read on a thread so a silent one fails."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert lines, f"no line within {timeout_s}s"
    return lines[0]


def test_run_waits_for_a_lock_held_at_start_saying_so_once_then_runs(tmp_path: Path) -> None:
    yaml_path = cli_config(tmp_path / "data")
    database = tmp_path / "data" / "device.db"
    with held_write_lock(database) as holder:
        proc = sqlwarden("run", str(yaml_path), "--once", "--no-progress")
        try:
            assert first_line(proc.stderr) == f"sqlwarden: waiting: {LOCKED}\n"
            holder.hold_for(2 * BUSY_TIMEOUT_MS / 1000)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "waiting" not in err  # once, not per retry
    assert "files: 200 rows in" in out and "task double@1: done" in out
    assert count_rows(database, "items") == 200


def test_sigterm_while_run_waits_to_start_exits_0_and_changes_nothing(
        tmp_path: Path) -> None:
    yaml_path = cli_config(tmp_path / "data")
    folder = tmp_path / "data"
    database = folder / "device.db"
    before = database.read_bytes()
    with held_write_lock(database):
        with sqlwarden_running("run", str(yaml_path), "--once", "--no-progress") as proc:
            assert first_line(proc.stderr) == f"sqlwarden: waiting: {LOCKED}\n"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        assert "stop requested" in out and "summary" not in out
        assert database.read_bytes() == before
        assert not Path(f"{database}.lock").exists()
    conn = read_only(database)
    try:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM _sw_sync_runs").fetchone()[0] == 0
        assert conn.execute("SELECT x FROM nums WHERE id = 1").fetchone()[0] is None
    finally:
        conn.close()


# --- a full disk ------------------------------------------------------------------------


def test_a_sync_run_that_fills_the_disk_waits_and_ends_ok_once_space_is_freed(
        small_disk: Path, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", ITEMS, pad=300)
    config = small_disk_config(small_disk, tmp_path)
    filler = small_disk / "filler"
    with Engine(config, start_tasks=False) as engine:
        engine.checkpoint("truncate")
        fill(filler, leave_bytes=256 * 1024)
        handle = engine.sync.run_later("files")

        def source_waits() -> str | None:
            (view,) = engine.sync.status()
            return view.waiting_for

        wait_until(lambda: source_waits() == DISK_FULL, what="the source to say the disk is full")
        assert f"source files waits: {DISK_FULL}" in engine.health()[1]
        # What is in the table was committed in whole batches, none half-done.
        conn = read_only(config.database.path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        finally:
            conn.close()
        assert rows % 100 == 0 and rows < ITEMS
        (view,) = engine.sync.status()
        assert view.last is None or view.last.status != "failed"

        filler.unlink()
        run = handle.result(timeout=120)
        assert (run.status, run.rows, run.rejects, run.error) == ("ok", ITEMS, 0, None)
        assert source_waits() is None
    conn = read_only(config.database.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*), min(id), max(id) FROM items").fetchone() == (
            ITEMS, 1, ITEMS)
    finally:
        conn.close()


def test_a_start_on_a_full_disk_waits_and_creates_the_database_once_there_is_room(
        small_disk: Path, tmp_path: Path) -> None:
    config = small_disk_config(small_disk, tmp_path)
    filler = small_disk / "filler"
    fill(filler, leave_bytes=0)
    engine = Engine(config)
    try:
        starting = Starting(engine)
        wait_until(lambda: engine.waiting_for == DISK_FULL, what="start to say the disk is full")
        assert not starting.done.is_set()
        filler.unlink()
        starting.join()
        assert starting.error is None and starting.waits == [DISK_FULL]
        engine.write("INSERT INTO items (id, name) VALUES (?, ?)", (1, "room again"))
    finally:
        engine.stop()
    assert count_rows(config.database.path, "items") == 1


def test_an_fts_restore_at_boot_that_meets_a_lock_waits_and_is_no_failure() -> None:
    from sqlwarden.db.faults import backoff_s
    from sqlwarden.effects import After, Report, Request
    from sqlwarden.errors import WriteError
    from sqlwarden.protocol import FtsTick, RestoreFts

    from .test_fts_controller import RECORD, RESTORED, boot, replies

    fts, effects = boot(deferral=RECORD)
    (pending,) = [e for e in effects if isinstance(e, Request)]
    assert isinstance(pending.message, RestoreFts)
    now = 0.0
    for attempt in (1, 2):
        locked = WriteError(f"writer.restore_fts failed ({LOCKED}): database is locked",
                            message_kind="writer.restore_fts", waiting_for=LOCKED)
        effects = fts.answered(pending.context, None, locked, now)
        # A wait: nothing reported, nothing saved (that would meet the lock too).
        assert not [e for e in effects if isinstance(e, (Report, Request))]
        arm = [e for e in effects if isinstance(e, After)][-1]
        assert arm.delay_s == backoff_s(attempt)
        if attempt == 1:
            assert replies(effects) == {"boot": None}  # the start goes on meanwhile
        assert fts.view(now).waiting_for == LOCKED
        now += arm.delay_s
        (pending,) = [e for e in fts.handle(FtsTick(), None, now) if isinstance(e, Request)]
    fts.answered(pending.context, RESTORED, None, now)
    view = fts.view(now)
    assert (view.state, view.waiting_for, view.error) == ("live", None, None)
