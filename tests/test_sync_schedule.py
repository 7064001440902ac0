"""The sync schedule as a plain state machine: when each source runs, whatever the wall clock.

No actor and no thread: the tests feed the schedule the Writer's answers (the
real `WriterCore` on a real database) and the pump's reports by hand, and
look at the timers and requests it asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, SourceConfig, parse_config
from sqlwarden.db.connect import open_reader, open_writer
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.effects import After, Effect, Reply, Request
from sqlwarden.errors import SyncBusy
from sqlwarden.protocol import (
    EndSyncRun,
    Message,
    PumpEnded,
    ReapSyncRuns,
    StartSyncRun,
    SyncTick,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync.runs import RunPlan
from sqlwarden.sync.schedule import SyncSchedule

#: When the last run ended, by the wall clock of the run that recorded it.
ENDED_AT = 1_780_000_000.0
HOUR = 3600.0

INBOX_YAML = """\
database: {{path: {db}}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: text
sources:
  files:
    kind: ndjson
    path: {inbox}
    table: items
    every: 1h
    retries: [30s, 2m]
message_log: {{enabled: false}}
status: {{enabled: false}}
"""


class Bench:
    """A schedule over a real database whose last run of `files` ended at ENDED_AT."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "inbox").mkdir()
        self.config: Config = parse_config(INBOX_YAML.format(db=tmp_path / "db.sqlite",
                                                             inbox=tmp_path / "inbox"),
                                           base_dir=tmp_path)
        conn = open_writer(self.config.database)
        apply_schema(conn, self.config)
        self.core = WriterCore(conn, self.config, clock=lambda: 0.0)
        self.write(StartSyncRun(source="files", mode="full", reason="schedule", attempt=1,
                                engine_run="gone", started_at=ENDED_AT - 5))
        self.write(EndSyncRun(run=1, status="ok", ended_at=ENDED_AT))
        self.reader = open_reader(self.config.database)
        self.wall = ENDED_AT
        self.launched: list[tuple[SourceConfig, int, RunPlan]] = []
        self.schedule = SyncSchedule(self.config.sources, run_id="run2", reader=self.reader,
                                     launch=self.launch, redactor=Redactor(),
                                     wall=lambda: self.wall)

    def write(self, message: Message) -> Any:
        (outcome,) = self.core.commit_group([message])
        assert not isinstance(outcome, BaseException), outcome
        return outcome

    def launch(self, source: SourceConfig, run: int, plan: RunPlan) -> str | None:
        self.launched.append((source, run, plan))
        return None

    def answer(self, effects: list[Effect], now: float) -> list[Effect]:
        """Answer every request to the Writer with the real WriterCore; the rest, in order."""
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Request):
                result = self.write(effect.message)
                out += self.answer(self.schedule.answered(effect.context, result, None, now),
                                   now)
            else:
                out.append(effect)
        return out

    def boot(self, now: float = 0.0) -> list[Effect]:
        (reap,) = [e for e in self.schedule.boot("booted") if isinstance(e, Request)]
        assert isinstance(reap.message, ReapSyncRuns)
        return self.answer([reap], now)

    def close(self) -> None:
        self.reader.close()
        self.core.conn.close()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = Bench(tmp_path)
    yield made
    made.close()


def timers(effects: list[Effect]) -> list[After]:
    return [e for e in effects if isinstance(e, After)]


def test_the_next_run_is_every_after_the_last_completion(bench: Bench) -> None:
    bench.wall = ENDED_AT + 600  # ten minutes after the last run ended
    (timer,) = timers(bench.boot(now=50.0))
    assert timer.delay_s == pytest.approx(HOUR - 600)
    (view,) = bench.schedule.views(now=50.0)
    assert view.next_run_at == ENDED_AT + HOUR and view.next_reason == "schedule"


def test_a_wall_clock_behind_the_last_run_cannot_postpone_the_schedule(bench: Bench) -> None:
    # A device without a real-time clock boots believing it is 1970.
    bench.wall = 0.0
    (timer,) = timers(bench.boot(now=50.0))
    assert timer.delay_s == HOUR  # never more than `every`, not 56 years
    (view,) = bench.schedule.views(now=50.0)
    assert view.next_run_at == HOUR


def test_a_wall_clock_jump_after_arming_moves_no_deadline(bench: Bench) -> None:
    bench.wall = ENDED_AT + 600
    (timer,) = timers(bench.boot(now=0.0))
    assert isinstance(timer.message, SyncTick)
    # The clock learns the date (a day on) before the timer fires; the deadline is a
    # point on the monotonic clock, so the tick comes when it was due, and runs.
    bench.wall += 86_400
    (view,) = bench.schedule.views(now=10.0)
    assert view.next_run_at == pytest.approx(bench.wall + timer.delay_s - 10.0)
    effects = bench.schedule.tick("files", timer.message.token, now=timer.delay_s)
    (start,) = [e.message for e in effects if isinstance(e, Request)]
    assert isinstance(start, StartSyncRun) and start.reason == "schedule"
    # A tick from a timer re-armed since is stale.
    assert bench.schedule.tick("files", timer.message.token - 1, now=timer.delay_s) == []


def test_a_request_while_a_source_runs_joins_that_run_or_is_refused(bench: Bench) -> None:
    bench.boot()
    bench.answer(bench.schedule.run("files", "auto", True, "first", now=1.0), 1.0)
    # The run's row is written, then its reading is launched.
    assert [(s.name, run) for s, run, _ in bench.launched] == [("files", 2)]
    assert bench.schedule.run("files", "auto", True, "second", now=2.0) == []
    with pytest.raises(SyncBusy, match=r"source files is running already \(run 2"):
        bench.schedule.run("files", "auto", False, "third", now=3.0)
    # The run ends: its row gets the outcome, both asks get the run, the next is armed.
    effects = bench.answer(bench.schedule.pump_ended(
        PumpEnded(source="files", run=2, rows=3, rejects=0)), now=4.0)
    answered = {e.waiter: e.result for e in effects if isinstance(e, Reply)}
    assert set(answered) == {"first", "second"}
    assert (answered["first"].status, answered["first"].rows) == ("ok", 3)
    (timer,) = timers(effects)
    assert timer.delay_s == pytest.approx(HOUR)


def test_a_failed_run_is_retried_after_each_retry_wait_then_waits_for_its_schedule(
        bench: Bench) -> None:
    bench.boot()
    waits = []
    for run in (2, 3, 4):
        bench.answer(bench.schedule.run("files", "auto", True, f"ask {run}", now=0.0), 0.0)
        effects = bench.answer(bench.schedule.pump_ended(PumpEnded(
            source="files", run=run, rows=0, rejects=0, error="connection reset",
            failure="retry")), now=0.0)
        waits.append(timers(effects)[0].delay_s)
    # The retries from config, then back to `every` after the run's end.
    assert waits == [30.0, 120.0, pytest.approx(HOUR)]
    (view,) = bench.schedule.views(now=0.0)
    assert view.last is not None and view.last.error == "connection reset"
