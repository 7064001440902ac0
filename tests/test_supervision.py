"""Supervision: an actor failing unexpectedly is rebuilt; the Writer failing stops the engine."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sqlwarden.actors.base import BaseActor
from sqlwarden.actors.bus import Bus, Envelope
from sqlwarden.config import Config, MessageLogConfig, parse_config
from sqlwarden.errors import EngineStopped, SyncBusy, UnexpectedMessage
from sqlwarden.facade import Engine
from sqlwarden.futures import Future
from sqlwarden.msglog.log import NullMessageLog
from sqlwarden.protocol import Message
from sqlwarden.replay.read import iter_records
from sqlwarden.scheduler import ManualScheduler
from sqlwarden.supervisor import Supervisor

from .conftest import GENERATOR_TABLES, count_rows, wait_until

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

        status = engine.status()
        assert status["failures"]["restarts"] == {"sync": 1}
        assert status["failures"]["restarting"] == []
        [down] = [f for f in status["failures"]["recent"] if f["actor"] == "sync"]
        assert down["error_type"] == "ActorDied" and down["restart_in_s"] > 0
        assert not down["fatal"]
        assert engine.state == "running"

        run = engine.sync.run("demo")  # what `sync now` asks
        assert run.status == "ok"
        history = engine.sync.history("demo")
    assert [r.status for r in history] == ["ok", "stopped"]
    assert count_rows(config.database.path, "registry") == 2000
    assert count_rows(config.database.path, "observations") == 60000
    told = [(r["message"], r["fields"]) for r in iter_records(config.message_log_path)
            if r["sender"] == "supervisor"]
    assert [kind for kind, _ in told] == ["supervisor.actor_failed",
                                          "supervisor.actor_restarted"]
    assert told[0][1]["actor"] == "sync" and told[0][1]["restarts"] == 1
    assert told[1][1] == {"actor": "sync", "restarts": 1}


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
    ready: Future[None] = Future()
    ref = Probe.start(bus=bus, supervisor=supervisor, scheduler=ManualScheduler(), ready=ready)
    ready.get(timeout=10)
    bus.register("probe", ref)
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
        with pytest.raises(EngineStopped):
            bus.ask("test", "probe", Ping())
        [failure] = supervisor.failures()
        assert (failure.actor, failure.message_kind, failure.error_type) == (
            "probe", "test.ping", "KeyError")
        assert supervisor.restarting() == ("probe",)
    finally:
        if ref.is_alive():
            ref.stop()
