"""The mirror without its actor: the state machine's decisions, and a reconcile step by step.

The machine is fed messages by hand and says what the next step does. The
session's reconcile is driven one step at a time against a real SQLite file
and the private MariaDB server, the way the actor drives it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
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
    Drained,
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
    # What the outbox holds goes first, so a change on its way is not taken for drift.
    assert state.step(sleeping) is None and state.step(step_of(woken)) == Job("drain")
    assert state.step(step_of(state.outbox_empty())) == Job("reconcile", 2)
    assert answers(state.reconciled(ended(2)))["c"].number == 2


def test_a_reconcile_asked_while_up_first_sends_what_the_outbox_holds() -> None:
    state, token = connected()
    # Asks that join a connect's reconcile change nothing: it repairs the outbox's keys.
    state.reconcile("boot")
    assert state.step(token) == Job("reconcile", 1)
    token = step_of(state.reconciled(ended(1)))
    assert state.step(token) == Job("drain")
    state.reconcile("r")  # asked while a batch is on its way: it is sent first
    token = step_of(state.go_on())
    assert state.step(token) == Job("drain")
    token = step_of(state.go_on())
    assert state.step(token) == Job("drain")
    token = step_of(state.outbox_empty())  # nothing left: the reconcile itself
    assert state.step(token) == Job("reconcile", 2)
    token = step_of(state.reconciled(ended(2)))
    assert state.step(token) == Job("drain")


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
    assert state.step(token) == Job("drain")  # (which drains first too)
    assert state.step(step_of(state.outbox_empty())) == Job("reconcile", 2)
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


def test_completed_and_failed_reconciles_are_counted_apart() -> None:
    state, token = connected()
    assert state.step(token) == Job("reconcile", 1)
    state.reconciled(ended(1))
    state.down(state.failure(MirrorError("gone away", retryable=True)))
    state.up(MirrorUp(driver="C extension", server="10.11"))
    state.reconciled(ended(2, error="gone away again"))
    state.reconciled(ended(1, verify=True, error="a verify is no reconcile"))
    assert (state.view.reconciles, state.view.reconciles_failed) == (1, 1)


def test_a_writer_request_that_waits_is_sent_again_with_backoff_and_says_why() -> None:
    state, token = connected()
    assert state.step(token) == Job("reconcile", 1)
    token = step_of(state.reconciled(ended(1)))
    assert state.step(token) == Job("drain")
    delays = []
    for _ in range(3):  # the batch is on the server; deleting its outbox rows waits
        effects = state.writer_waits("database locked by another process")
        (timer,) = [e for e in effects if isinstance(e, After)]
        delays.append(timer.delay_s)
        assert state.step(timer.message.token) == Job("resend")
    assert delays == [0.5, 1.0, 2.0]
    assert (state.view.state, state.view.waiting_for) == ("up", "database locked by another "
                                                                "process")
    # An ask meanwhile wakes the loop: the held request goes first, then the reconcile.
    sleeping = step_of(state.writer_waits("database locked by another process"))
    woken = state.reconcile("r")
    assert state.step(sleeping) is None and state.step(step_of(woken)) == Job("resend")
    state.writer_done()
    assert state.view.waiting_for is None
    assert state.step(step_of(state.go_on())) == Job("drain")  # what is left, first
    assert state.step(step_of(state.outbox_empty())) == Job("reconcile", 2)
    assert answers(state.reconciled(ended(2)))["r"].number == 2


class Loop:
    """Runs the machine as the Mirror actor does (one message at a time, effects carried
    out in order, the Writer answering later), with outcomes drawn from `rng`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.state = MirrorState(MIRROR, wall=lambda: 1e9)
        self.mailbox: deque[Any] = deque()
        self.timer: MirrorStep | None = None
        self.run: Job | None = None  # the reconcile or verify under way (the actor's)
        self.asked: list[str] = []
        self.answers: dict[str, list[Any]] = {}
        self.calm = False  # once calm, everything succeeds
        self.after_write: Callable[[], None] = lambda: None  # what follows the request
        self.perform(self.state.boot())

    def perform(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Tell(message=message):
                    self.mailbox.append(message)
                case After(message=MirrorStep() as message):
                    self.timer = message
                case Cancel():
                    self.timer = None
                case Reply(waiter=waiter) | Fail(waiter=waiter):
                    self.answers.setdefault(waiter, []).append(effect)
                case _:
                    raise AssertionError(f"unexpected effect {effect}")

    def ask(self) -> None:
        waiter = f"ask{len(self.asked)}"
        self.asked.append(waiter)
        self.perform(self.state.reconcile(waiter) if self.rng.random() < 0.7
                     else self.state.verify(waiter))

    def chance(self, p: float) -> bool:
        return not self.calm and self.rng.random() < p

    def handle(self, message: Any) -> None:
        match message:
            case MirrorStep(token=token):
                job = self.state.step(token)
                if job is not None:
                    self.do(job)
            case ("writer", then):  # the Writer's answer to a request
                if self.chance(0.2):
                    self.perform(self.state.writer_waits("disk full"))
                elif self.chance(0.1):
                    self.fail(retryable=True)
                else:
                    self.state.writer_done()
                    then()
            case MirrorUp():
                self.perform(self.state.up(message))
            case MirrorDown():
                self.perform(self.state.down(message))
            case ReconcileBegun():
                self.perform(self.state.begun(message))
            case Reconciled():
                self.perform(self.state.reconciled(message))
            case Drained():
                self.perform(self.state.drained(message))

    def do(self, job: Job) -> None:
        if job.kind == "connect":
            if self.chance(0.3):
                self.fail(retryable=self.rng.random() < 0.8)
            else:
                self.mailbox.append(MirrorUp(driver="C extension", server="10.11"))
        elif job.kind == "resend":
            self.mailbox.append(("writer", self.after_write))
        elif job.kind == "drain":
            if self.calm or self.rng.random() < 0.3:
                self.perform(self.state.outbox_empty())
            elif self.chance(0.1):
                self.fail(retryable=True)
            else:
                drained = self.state.applied(entries=1, upserts=1, deletes=0, upto_seq=1,
                                             changed_at=[1e9])
                self.after_write = lambda: self.mailbox.append(drained)
                self.mailbox.append(("writer", self.after_write))
        else:
            if self.run is None:
                self.run = job
                self.mailbox.append(ReconcileBegun(number=job.number,
                                                   verify=job.kind == "verify"))
            if self.chance(0.15):
                self.fail(retryable=self.rng.random() < 0.7)
            elif self.calm or self.rng.random() < 0.4:
                self.run = None
                self.mailbox.append(ended(job.number, verify=job.kind == "verify"))
            elif self.rng.random() < 0.5:
                self.after_write = lambda: self.perform(self.state.go_on())
                self.mailbox.append(("writer", self.after_write))
            else:
                self.perform(self.state.go_on())

    def fail(self, *, retryable: bool) -> None:
        run, self.run = self.run, None
        if run is not None:
            self.mailbox.append(ended(run.number, verify=run.kind == "verify", error="boom"))
        self.mailbox.append(self.state.failure(MirrorError("boom", retryable=retryable)))

    def turn(self) -> bool:
        """One message, or the timer when nothing is queued; False when idle."""
        if self.mailbox:
            self.handle(self.mailbox.popleft())
        elif self.timer is not None:
            self.mailbox.append(self.timer)
            self.timer = None
        else:
            return False
        return True

    def waiting(self) -> list[str]:
        return [w for w in self.asked if w not in self.answers]


@pytest.mark.parametrize("seed", range(300))
def test_no_ask_is_left_waiting_whatever_order_outcomes_and_asks_arrive_in(seed: int) -> None:
    loop = Loop(random.Random(seed))
    for _ in range(200):
        if loop.rng.random() < 0.15:
            loop.ask()  # an ask lands between any two messages
        else:
            loop.turn()
    # Every ask gets exactly one answer once things go well...
    loop.calm = True
    for _ in range(5000):
        if not loop.waiting() and not loop.mailbox:
            break
        if not loop.turn() and loop.waiting():
            # Sleeping with asks unanswered: only a mirror that failed for good may,
            # and it must have answered them.
            break
    assert not loop.waiting(), (f"left waiting: {loop.waiting()} in state "
                                f"{loop.state.view.state}")
    assert all(len(a) == 1 for a in loop.answers.values())


@pytest.mark.parametrize("seed", range(100))
def test_stopping_at_any_moment_answers_every_ask_once(seed: int) -> None:
    loop = Loop(random.Random(seed))
    for _ in range(loop.rng.randrange(1, 150)):
        if loop.rng.random() < 0.2:
            loop.ask()
        else:
            loop.turn()
    loop.perform(loop.state.stop())
    assert not loop.waiting()
    assert all(len(a) == 1 for a in loop.answers.values())


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
