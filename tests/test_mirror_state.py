"""The mirror without its actor: the state machine's decisions, and a reconcile step by step.

The machine is fed messages by hand and says what the next step does. The
session's reconcile is driven one step at a time against a real SQLite file
and the private MariaDB server, the way the actor drives it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, MirrorConfig, parse_config, parse_dsn
from sqlwarden.db.connect import open_writer
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.effects import After, Cancel, Effect, Fail, Reply, Tell
from sqlwarden.errors import MirrorError, MirrorUnavailable
from sqlwarden.mirror.session import MirrorSession
from sqlwarden.mirror.state import STEP, Job, MirrorState
from sqlwarden.protocol import (
    MirrorDown,
    MirrorStep,
    MirrorUp,
    ReconcileBegun,
    Reconciled,
    SaveMirrorRanges,
)
from sqlwarden.views import ReconcileView

from .support.mariadb import MirrorDb

MIRROR = MirrorConfig(dsn=parse_dsn("mysql://u:pw@127.0.0.1:3306/db"), tables=("items",),
                      scope="dev1", backoff_initial_s=1, backoff_max_s=4, poll_ms=200)


def step_of(effects: list[Effect]) -> int:
    """The token of the one step in `effects` (told now, or armed on the step timer)."""
    (step,) = [e.message for e in effects
               if isinstance(e, (Tell, After)) and isinstance(e.message, MirrorStep)]
    return step.token


def answers(effects: list[Effect]) -> dict[Any, Any]:
    return {e.waiter: e.result if isinstance(e, Reply) else e.error
            for e in effects if isinstance(e, (Reply, Fail))}


def connected() -> tuple[MirrorState, int]:
    """A machine that connected; returns it with the token of its next step."""
    state = MirrorState(MIRROR, wall=lambda: 1e9)
    assert state.step(step_of(state.boot())) == Job("connect")
    return state, step_of(state.up(MirrorUp(driver="C extension", server="10.11")))


def ended(number: int, *, verify: bool = False, error: str | None = None) -> Reconciled:
    return Reconciled(number=number, verify=verify, error=error, seconds=0.1)


def test_every_connect_runs_one_reconcile_then_the_outbox_is_drained() -> None:
    state, token = connected()
    assert state.view.state == "up"
    assert state.step(token) == Job("reconcile", 1)
    state.begun(ReconcileBegun(number=1))
    assert state.view.reconciling
    assert state.step(token) == Job("reconcile", 1)  # a range at a time, the same run
    token = step_of(state.reconciled(ended(1)))
    assert (state.view.reconciles, state.view.reconciling) == (1, False)
    assert state.step(token) == Job("drain")
    assert state.step(token - 1) is None  # a stale step does nothing


def test_asks_during_a_reconcile_share_it_and_an_ask_after_it_gets_the_next() -> None:
    state, token = connected()
    assert state.step(token) == Job("reconcile", 1)
    # Asked while number 1 runs: joined, and no step is added to the running loop.
    assert state.reconcile("a") == [] and state.reconcile("b") == []
    effects = state.reconciled(ended(1))
    assert set(answers(effects)) == {"a", "b"}
    assert all(isinstance(v, ReconcileView) and v.number == 1 for v in answers(effects).values())
    # An outbox poll is asleep: an ask wakes it at once, for reconcile number 2.
    token = step_of(effects)
    assert state.step(token) == Job("drain")
    sleeping = step_of(state.outbox_empty())
    woken = state.reconcile("c")
    assert Cancel(STEP) in woken and step_of(woken) > sleeping
    assert state.step(sleeping) is None and state.step(step_of(woken)) == Job("reconcile", 2)
    assert answers(state.reconciled(ended(2)))["c"].number == 2


def test_a_verify_first_sends_what_the_outbox_holds() -> None:
    state, token = connected()
    assert state.step(token) == Job("reconcile", 1)
    token = step_of(state.reconciled(ended(1)))
    state.verify("v")
    assert state.step(token) == Job("drain")
    token = step_of(state.go_on())  # the batch went; the next one
    assert state.step(token) == Job("drain")
    token = step_of(state.outbox_empty())  # nothing left: the verify itself
    assert state.step(token) == Job("verify", 1)
    effects = state.reconciled(ended(1, verify=True))
    assert answers(effects)["v"].verify and state.view.reconciles == 1


def test_a_verify_drains_afresh_after_a_reconcile_or_a_failure_came_first() -> None:
    state, token = connected()
    assert state.step(token) == Job("reconcile", 1)
    token = step_of(state.reconciled(ended(1)))
    state.verify("v")
    assert state.step(token) == Job("drain")
    token = step_of(state.outbox_empty())  # drained: the verify would be next ...
    state.reconcile("r")  # ... but a reconcile was asked for in between
    assert state.step(token) == Job("reconcile", 2)
    token = step_of(state.reconciled(ended(2)))
    assert state.step(token) == Job("drain")  # what changed meanwhile is sent first
    token = step_of(state.outbox_empty())
    state.down(state.failure(MirrorError("gone away", retryable=True)))  # fails the verify
    token = step_of(state.up(MirrorUp(driver="C extension", server="10.11")))
    assert state.step(token) == Job("reconcile", 3)
    state.verify("w")
    assert state.step(step_of(state.reconciled(ended(3)))) == Job("drain")


def test_an_unreachable_server_is_retried_with_doubling_backoff() -> None:
    state = MirrorState(MIRROR, wall=lambda: 1e9)
    token = step_of(state.boot())
    waits = []
    for _ in range(4):
        assert state.step(token) == Job("connect")
        down = state.failure(MirrorError("can't connect", errno=2003, retryable=True))
        assert isinstance(down, MirrorDown) and down.retryable
        effects = state.down(down)
        (timer,) = [e for e in effects if isinstance(e, After)]
        waits.append(timer.delay_s)
        token = step_of(effects)
    assert waits == [1, 2, 4, 4]
    assert (state.view.state, state.view.attempt) == ("down", 4)
    # Back: the backoff starts over and a reconcile is due.
    state.up(MirrorUp(driver="pure Python", server="10.11"))
    down = state.failure(MirrorError("gone away", retryable=True))
    assert (down.attempt, down.retry_in_s) == (1, 1)


def test_an_error_retrying_cannot_fix_waits_until_asked_and_fails_waiting_asks() -> None:
    state, token = connected()
    assert state.step(token) == Job("reconcile", 1)
    state.reconcile("joined")
    state.verify("verify")
    down = state.failure(MirrorError("access denied", errno=1045))
    effects = state.reconciled(ended(1, error="access denied")) + state.down(down)
    got = answers(effects)
    assert isinstance(got["joined"], MirrorError) and isinstance(got["verify"], MirrorError)
    assert state.view.state == "failed"
    assert not [e for e in effects if isinstance(e, (Tell, After))]  # no retry by itself
    # Asked again: a connect at once. An ask the next reconcile would serve fails while
    # the mirror cannot connect, saying when it would run.
    woken = state.reconcile("later")
    assert state.step(step_of(woken)) == Job("connect")
    effects = state.down(state.failure(MirrorError("access denied", errno=1045)))
    assert isinstance(answers(effects)["later"], MirrorUnavailable)


# --- a reconcile, step by step, against MariaDB -----------------------------------------


ITEMS_YAML = """\
database: {{path: {db}}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      label: text
mirror:
  dsn: {dsn}
  scope: dev1
  range_rows: 1000
message_log: {{enabled: false}}
status: {{enabled: false}}
"""


@pytest.fixture
def device(tmp_path: Path, mirror_db: MirrorDb) -> Iterator[tuple[Config, WriterCore]]:
    config = parse_config(ITEMS_YAML.format(db=tmp_path / "dev.db", dsn=mirror_db.dsn),
                          base_dir=tmp_path)
    conn = open_writer(config.database)
    apply_schema(conn, config)
    core = WriterCore(conn, config, clock=lambda: 0.0)
    conn.executemany("INSERT INTO items (id, label) VALUES (?, ?)",
                     [(i, f"item {i}") for i in range(1, 2501)])
    # As if the rows were there before the table was mirrored: no change is pending.
    conn.execute("DELETE FROM _sw_outbox")
    yield config, core
    conn.close()


def reconcile(config: Config, core: WriterCore) -> tuple[int, list[SaveMirrorRanges], Any]:
    """Drive one reconcile as the actor does: (units, requests, reports)."""
    session = MirrorSession(config)
    session.open()
    units, asked = 0, []
    steps = session.reconcile_steps()
    try:
        while True:
            request = next(steps)
            if request is None:
                units += 1
            else:  # the actor asks the Writer, and goes on once answered
                asked.append(request)
                (outcome,) = core.commit_group([request])
                assert not isinstance(outcome, BaseException), outcome
    except StopIteration as done:
        return units, asked, done.value
    finally:
        session.close()


def test_a_reconcile_goes_range_by_range_and_a_restart_in_sync_reads_nothing(
        device: tuple[Config, WriterCore], mirror_db: MirrorDb) -> None:
    config, core = device
    # An empty mirror is copied straight (2,500 rows are one commit), then SQLite's
    # side is stored as three ranges of at most range_rows.
    units, asked, (report,) = reconcile(config, core)
    assert (report.copied, report.sqlite_read) == (2500, 2500)
    (stored,) = asked
    assert [rows for _, rows, _ in stored.ranges] == [1000, 1000, 500]
    # Again, in sync: one step per stored range, and no row read from SQLite.
    units, asked, (report,) = reconcile(config, core)
    assert (units, report.ranges, report.sqlite_read, report.skipped) == (3, 3, 0, True)
    # Drift in the middle range: only that range is read and repaired.
    mirror_db.server.query("UPDATE items SET label = 'drift' WHERE sw_scope = 'dev1' AND "
                           "id = 1500", (), mirror_db.database)
    units, asked, (report,) = reconcile(config, core)
    assert (units, report.sqlite_read, report.copied, len(report.differing)) == (3, 1000, 1, 1)
