"""Supervision: an actor failing unexpectedly is rebuilt; the Writer failing stops the engine."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, ClassVar

import apsw
import pytest

from sqlwarden.actors.base import BaseActor
from sqlwarden.actors.bus import Bus, Envelope
from sqlwarden.config import Config, MessageLogConfig, parse_config
from sqlwarden.errors import EngineStopped, MirrorUnavailable, SyncBusy, UnexpectedMessage
from sqlwarden.facade import Engine
from sqlwarden.fts.deferral import read_deferral
from sqlwarden.futures import Future
from sqlwarden.msglog.log import NullMessageLog
from sqlwarden.protocol import Message, Reconcile, WaitTasks
from sqlwarden.replay.read import iter_records
from sqlwarden.scheduler import ManualScheduler
from sqlwarden.supervisor import Supervisor

from .conftest import GENERATOR_TABLES, count_rows, read_only, wait_until
from .support.mariadb import MirrorDb
from .test_mirror import assert_mirror_equals_sqlite
from .test_replay_check import check_in_a_subprocess, engine_config

SYNC_YAML = """\
database: {{path: {folder}/device.db}}
tables:
{generator_tables}sources:
  demo:
    kind: generator
    registry_table: registry
    observations_table: observations
    registry_rows: 2000
    observation_rows: 60000
    batch_rows: 500
    seed: 5
message_log: {{path: {folder}/messages.jsonl}}
"""


def sync_config(folder: Path) -> Config:
    return parse_config(SYNC_YAML.format(folder=folder, generator_tables=GENERATOR_TABLES),
                        file="sync.yaml", base_dir=folder)


def actor_ref(engine: Engine, name: str) -> Any:
    return {n: ref for n, ref, _ in engine._actors}[name]


def test_a_killed_sync_actor_is_restarted_and_the_next_sync_now_catches_up(
        tmp_path: Path) -> None:
    config = sync_config(tmp_path)
    with Engine(config) as engine:
        killed = actor_ref(engine, "sync")
        handle = engine.sync.run_later("demo")
        wait_until(lambda: any(p.scope == "sync" and p.processed > 0
                               for p in engine.tasks.progress()), what="the run to write rows")
        killed.stop()  # from outside, as a crash would: the engine did not ask for it
        with pytest.raises(EngineStopped):
            handle.result(timeout=60)  # its asker is answered, not left waiting
        wait_until(lambda: engine.supervisor.restarts().get("sync") == 1,
                   what="the supervisor to restart the sync actor")
        assert actor_ref(engine, "sync") is not killed
        assert_restarted_once(engine, "sync")

        run = engine.sync.run("demo")  # what `sync now` asks
        assert run.status == "ok"
        history = engine.sync.history("demo")
    assert [r.status for r in history] == ["ok", "stopped"]
    assert count_rows(config.database.path, "registry") == 2000
    assert count_rows(config.database.path, "observations") == 60000
    assert_logged_restart(config, "sync")


def test_a_writer_that_dies_still_stops_the_engine(tmp_path: Path) -> None:
    config = sync_config(tmp_path)
    engine = Engine(config, start_tasks=False)
    with engine:
        actor_ref(engine, "writer").stop()
        assert engine.wait() == ("fatal failure in writer: the writer actor was stopped "
                                 "without the engine asking")
        assert engine.state == "failed"
        assert engine.supervisor.restarts() == {}
    assert engine.state == "failed"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    kind: ClassVar[str] = "test.ping"
    how: str = "well"


class Probe(BaseActor):
    """An actor whose handler fails as it is asked to."""

    name = "probe"
    torn_down: ClassVar[threading.Event]

    def teardown(self) -> None:
        Probe.torn_down.set()

    def handle(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case Ping(how="well"):
                return "pong"
            case Ping(how="busy"):
                raise SyncBusy("busy now", source="x")
            case Ping(how="bug"):
                raise KeyError("a state the actor cannot trust")
            case _:
                raise UnexpectedMessage(self.name, message)


def start_probe(bus: Bus, supervisor: Supervisor, *, incarnation: int = 0) -> Any:
    """A Probe started and registered on `bus` as "probe"."""
    ready: Future[None] = Future()
    ref = Probe.start(bus=bus, supervisor=supervisor, scheduler=ManualScheduler(),
                      ready=ready, incarnation=incarnation)
    ready.get(timeout=10)
    bus.register("probe", ref)
    return ref


def test_a_handler_raising_something_unexpected_takes_its_actor_down_for_a_restart(
        tmp_path: Path) -> None:
    restarts: list[tuple[str, float]] = []
    asked = threading.Event()

    def restart(name: str, delay_s: float) -> None:
        restarts.append((name, delay_s))
        asked.set()

    supervisor = Supervisor()
    supervisor.on_restart = restart
    bus = Bus(NullMessageLog(MessageLogConfig(enabled=False), tmp_path / "log.jsonl"))
    Probe.torn_down = threading.Event()
    refs = [start_probe(bus, supervisor)]
    try:
        assert bus.ask("test", "probe", Ping()).get(timeout=10) == "pong"
        # A protocol error is an answer: the actor stays.
        with pytest.raises(SyncBusy):
            bus.ask("test", "probe", Ping(how="busy")).get(timeout=10)
        assert bus.ask("test", "probe", Ping()).get(timeout=10) == "pong"
        assert supervisor.failures() == () and not asked.is_set()

        with pytest.raises(KeyError):
            bus.ask("test", "probe", Ping(how="bug")).get(timeout=10)
        assert asked.wait(10)
        assert restarts == [("probe", 0.5)]
        assert Probe.torn_down.is_set()
        # Meanwhile an ask waits on the bus for the actor built in its place.
        waiting = bus.ask("test", "probe", Ping())
        assert bus.held("probe") == 1 and not waiting.done()
        [failure] = supervisor.failures()
        assert (failure.actor, failure.message_kind, failure.error_type) == (
            "probe", "test.ping", "KeyError")
        assert supervisor.restarting() == ("probe",)

        refs.append(start_probe(bus, supervisor, incarnation=1))
        assert waiting.get(timeout=10) == "pong"
        assert bus.held("probe") == 0
    finally:
        for ref in refs:
            if ref.is_alive():
                ref.stop()


def test_what_waits_for_an_actor_that_is_not_restarted_is_answered(tmp_path: Path) -> None:
    supervisor = Supervisor()
    supervisor.on_restart = lambda name, delay_s: None  # a restart that never comes
    bus = Bus(NullMessageLog(MessageLogConfig(enabled=False), tmp_path / "log.jsonl"))
    Probe.torn_down = threading.Event()
    probe = start_probe(bus, supervisor)
    try:
        with pytest.raises(KeyError):
            bus.ask("test", "probe", Ping(how="bug")).get(timeout=10)
        wait_until(lambda: not probe.is_alive(), what="the probe to go down")
        waiting = bus.ask("test", "probe", Ping())
        bus.release("probe", EngineStopped("engine"))  # what the engine does as it stops
        with pytest.raises(EngineStopped):
            waiting.get(timeout=10)
        with pytest.raises(EngineStopped):  # and from now on a send is refused at once
            bus.ask("test", "probe", Ping())
    finally:
        if probe.is_alive():
            probe.stop()


# --- each actor but the Writer, killed mid-work and rebuilt ------------------------------


def kill(engine: Engine, name: str) -> Any:
    """Stop actor `name` from outside, as a crash would, and wait for its successor."""
    killed = actor_ref(engine, name)
    before = engine.supervisor.restarts().get(name, 0)
    killed.stop()  # the engine did not ask for it
    wait_until(lambda: engine.supervisor.restarts().get(name, 0) == before + 1,
               what=f"the supervisor to restart the {name} actor")
    assert actor_ref(engine, name) is not killed
    return killed


def assert_restarted_once(engine: Engine, name: str) -> None:
    """Status shows the failure and the restart of `name`, and nothing else went down."""
    failures = engine.status()["failures"]
    assert failures["restarts"] == {name: 1}
    assert failures["restarting"] == []
    [down] = [f for f in failures["recent"] if f["actor"] == name]
    assert (down["error_type"], down["fatal"]) == ("ActorDied", False)
    assert down["restart_in_s"] > 0
    assert engine.state == "running"


def assert_logged_restart(config: Config, name: str) -> None:
    told = [(r["message"], r["fields"]) for r in iter_records(config.message_log_path)
            if r["sender"] == "supervisor"]
    assert [kind for kind, _ in told] == ["supervisor.actor_failed",
                                          "supervisor.actor_restarted"]
    assert told[0][1]["actor"] == name and told[0][1]["restarts"] == 1
    assert told[1][1] == {"actor": name, "restarts": 1}


def task_rows_wrong(path: Path) -> int:
    """Registry rows whose last_seen is not what the task sets (the latest observation)."""
    conn = read_only(path)
    try:
        return int(conn.execute(
            "SELECT count(*) FROM registry r WHERE r.last_seen IS NOT (SELECT max(o.observed_at) "
            "FROM observations o WHERE o.registry_id = r.id)").fetchone()[0])
    finally:
        conn.close()


def task_view(engine: Engine) -> Any:
    [view] = engine.tasks.list()
    return view


def test_a_killed_backfill_actor_resumes_its_task_from_the_checkpoint_and_ends_done(
        tmp_path: Path) -> None:
    config = engine_config(tmp_path, yield_ms=40)
    with Engine(config, start_tasks=False) as engine:
        assert engine.sync.run("demo").status == "ok"
        engine.tasks.start()
        waiting = engine.ask_later("backfill", WaitTasks())
        wait_until(lambda: task_view(engine).processed >= 200, what="the task to be under way")
        kill(engine, "backfill")
        with pytest.raises(EngineStopped):
            waiting.get(timeout=60)  # its asker is answered, not left waiting
        [done] = engine.tasks.wait(timeout=120)
        assert done.status == "done" and done.error is None
        assert_restarted_once(engine, "backfill")
    assert task_rows_wrong(config.database.path) == 0
    assert_logged_restart(config, "backfill")
    records = list(iter_records(config.message_log_path))
    restarted = next(r["seq"] for r in records if r["message"] == "supervisor.actor_restarted")
    committed = [r["fields"]["last"] for r in records if r["message"] == "writer.chunk"
                 and r["kind"] == "reply" and r["seq"] < restarted]
    resumed = next(r["fields"] for r in records if r["message"] == "writer.chunk"
                   and r["kind"] == "ask" and r["seq"] > restarted)
    # The successor goes on after the last chunk its predecessor committed, not from
    # the start; and the log keeps one chunk in flight at a time across the restart.
    assert committed and resumed["after"] == committed[-1]
    check_in_a_subprocess(config.message_log_path)


def test_a_killed_fts_controller_during_a_deferred_catch_up_leaves_no_trigger_dropped(
        tmp_path: Path) -> None:
    config = engine_config(tmp_path, observations=120_000)
    with Engine(config, start_tasks=False) as engine:
        triggers = trigger_names(config.database.path)
        assert {"registry_fts_ai", "registry_fts_ad", "registry_fts_au"} <= triggers
        handle = engine.sync.run_later("demo")
        wait_until(lambda: engine.fts.status().state == "deferred",
                   what="the catch-up to defer FTS upkeep")
        kill(engine, "fts")
        run = handle.result(timeout=120)  # its end, sent to the successor, is answered
        assert run.status == "ok", run
        view = engine.fts.status()
        assert (view.state, view.sources, view.error) == ("live", (), None)
        assert_restarted_once(engine, "fts")
    path = config.database.path
    assert trigger_names(path) == triggers
    conn = read_only(path)
    try:
        assert read_deferral(conn) is None
        assert conn.execute("SELECT count(*) FROM registry_fts WHERE registry_fts MATCH "
                            "'pump'").fetchone()[0] > 0
    finally:
        conn.close()
    check = apsw.Connection(str(path))  # FTS5's own check: the index matches the rows
    try:
        check.execute("INSERT INTO registry_fts(registry_fts, rank) VALUES "
                      "('integrity-check', 1)")
    finally:
        check.close()
    assert count_rows(path, "observations") == 120_000
    assert_logged_restart(config, "fts")
    ends = [r for r in iter_records(config.message_log_path) if r["message"] == "fts.end"]
    assert [r["kind"] for r in ends] == ["ask", "reply"]
    check_in_a_subprocess(config.message_log_path)


def trigger_names(path: Path) -> set[str]:
    conn = read_only(path)
    try:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    finally:
        conn.close()


def test_a_killed_mirror_answers_its_askers_and_its_successor_converges(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = engine_config(tmp_path, mirror_dsn=mirror_db.dsn)
    assert config.mirror is not None  # small ranges: a reconcile takes many steps
    config = dataclasses.replace(config, mirror=dataclasses.replace(config.mirror,
                                                                    range_rows=10))
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("notes", [(i, f"note {i}") for i in range(1, 20_001)])
        engine.mirror.reconcile(timeout=60)
        asked = engine.ask_later("mirror", Reconcile())
        wait_until(lambda: engine.mirror.view().reconciling, what="the reconcile to run")
        killed = actor_ref(engine, "mirror")
        killed.stop()  # in the middle of the reconcile it was asked for
        with pytest.raises(MirrorUnavailable, match="restarted"):
            asked.get(timeout=60)
        # Asked while it is down: kept for its successor, which answers with a result.
        held = engine.ask_later("mirror", Reconcile())
        engine.write_many("notes", [(i, f"note {i}") for i in range(20_001, 20_101)])
        wait_until(lambda: engine.supervisor.restarts().get("mirror") == 1,
                   what="the supervisor to restart the mirror actor")
        assert held.get(timeout=60).error is None
        assert engine.mirror.reconcile(timeout=60).in_sync
        assert engine.mirror.view().state == "up"
        assert_restarted_once(engine, "mirror")
        assert assert_mirror_equals_sqlite(engine, mirror_db, table="notes") == 20_100
    assert_logged_restart(config, "mirror")
    # The log says the cut reconcile ended, so the successor's is not a second one in flight.
    cut = [r["fields"]["number"] for r in iter_records(config.message_log_path)
           if r["message"] == "mirror.reconciled"
           and r["fields"].get("error") == "the mirror actor went down"]
    assert cut == [2]
    check_in_a_subprocess(config.message_log_path)


def test_a_killed_progress_actor_picks_up_the_progress_of_a_running_task(
        tmp_path: Path) -> None:
    config = engine_config(tmp_path, yield_ms=40)
    with Engine(config, start_tasks=False) as engine:
        assert engine.sync.run("demo").status == "ok"
        engine.tasks.start()
        wait_until(lambda: task_view(engine).processed >= 200, what="the task to be under way")
        kill(engine, "progress")
        at_restart = task_view(engine).processed
        # The successor hears the next chunks: progress shows them again, rate and all.
        wait_until(lambda: any(p.scope == "task" and p.processed > at_restart
                               and p.rate_rows_s for p in engine.tasks.progress()),
                   what="progress to resume")
        [done] = engine.tasks.wait(timeout=120)
        assert done.status == "done"
        [progress] = [p for p in engine.tasks.progress() if p.scope == "task"]
        assert (progress.state, progress.processed) == ("done", done.processed)
        assert progress.persisted >= 1 and progress.persist_failures == 0
        assert_restarted_once(engine, "progress")
    conn = read_only(config.database.path)
    try:
        rate, ended = conn.execute("SELECT rate_rows_s, ended_at FROM _sw_tasks").fetchone()
    finally:
        conn.close()
    assert rate is not None and ended is not None
    assert_logged_restart(config, "progress")
    # One save a second per task holds across the restart (rule 6).
    check_in_a_subprocess(config.message_log_path)
