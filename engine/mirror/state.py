"""The mirror's state and decisions, as a state machine the Mirror actor feeds.

The actor owns the connection (`session`) and does the work one unit at a
time, each unit a `mirror.step` message: a connect, one range of a
reconcile or verify, or one outbox batch. This machine decides which unit
comes next and keeps what status shows:

- Connect while there is no connection; an unreachable server is a state
  (`down`), retried after a backoff that doubles up to `backoff_max_s`; an
  error retrying cannot fix (`failed`) waits until someone asks again.
- Every successful connect runs one reconcile, except a failover between
  `hosts` to a server that holds everything the mirror sent (`MirrorUp`
  says so, from the server's progress row) while no reconcile is owed: one
  was running, asked for or failed, or none has completed yet.
- With `hosts`, losing the connection in use tries the other hosts at once
  (one round, without a backoff); the backoff starts when a whole round
  failed, or after as many quick rounds as there are hosts without a
  batch or reconcile getting through (a host that accepts and then fails
  every time must not spin).
- Reconciles are single flight: an ask while one runs joins it (the same
  number, the same result); an ask while one is pending gets the next.
- A verify, and a reconcile asked for while the mirror is up, first send
  what the outbox holds (a bounded number of batches), so changes still on
  their way are not reported as drift (the reconcile a connect runs repairs
  them with the rest, as after an outage).
- Otherwise drain the outbox, and poll it every `poll_ms` while it is empty.
- A Writer request the mirror needs (deleting drained outbox rows, storing
  ranges, recording quarantined rows) that meets a wait (the database locked
  by another program, a full disk) is sent again after a doubling backoff
  (`resend`), before anything else and without leaving the server: the
  mirror goes on from where it stood, and `waiting_for` says why meanwhile.

The machine holds no connection and no thread: it is fed messages (asks,
and the outcomes the actor tells itself: `mirror.up`, `mirror.down`,
`mirror.reconcile_begun`, `mirror.reconciled`, `mirror.drained`) and
returns effects (`sqlwarden.effects`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlwarden.config import MirrorConfig
from sqlwarden.db.faults import backoff_s
from sqlwarden.effects import After, Cancel, Effects, Fail, Reply, Tell
from sqlwarden.errors import MirrorError, MirrorUnavailable
from sqlwarden.mirror.ranges import percentile
from sqlwarden.protocol import (
    MIRROR,
    Drained,
    MirrorDown,
    MirrorStep,
    MirrorUp,
    ReconcileBegun,
    Reconciled,
)
from sqlwarden.views import MirrorView, ReconcileView

log = logging.getLogger(__name__)

#: Outbox batches a verify (or an asked reconcile) sends first, so pending changes do not
#: count as drift.
VERIFY_DRAIN_BATCHES = 100
#: Drained changes the lag percentiles are taken over.
LAG_WINDOW = 5000
#: The timer of the next step (a poll of the outbox, or a reconnect).
STEP = "step"
#: What the mirror waits for while its server cannot be used and is retried.
SERVER_AWAY = "mirror server unavailable"


class ViewBoard:
    """The mirror's latest view, put up by its actor after every message it handles.

    Status reads it from any thread without asking the actor, so it is
    answered at once even while a step waits on the server (a connect to a
    host that does not answer, a statement held by a lock). Each view is a
    frozen value, and putting up a new one is one assignment.
    """

    def __init__(self) -> None:
        self.view: MirrorView | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """The unit of work a step does: `connect`, `reconcile`, `verify`, `drain`, or
    `resend` (the Writer request that waited)."""

    kind: str
    number: int = 0


class MirrorState:
    """What the mirror is doing, what it does next, and who waits for what."""

    def __init__(self, mirror: MirrorConfig, *, wall: Callable[[], float] = time.time) -> None:
        self.mirror = mirror
        self._wall = wall
        self.view = MirrorView(state="starting", server=mirror.where, scope=mirror.scope,
                               tables=mirror.tables)
        self._connected = False
        self._backoff = mirror.backoff_initial_s
        self._attempt = 0
        #: A reconcile was asked for (or a connect happened) and has not begun.
        self._pending = False
        #: Reconciles begun so far; the one running, if any, and whether it is a verify.
        self._started = 0
        self._running: tuple[int, bool] | None = None
        self._reconcile_waiters: dict[int, list[Any]] = {}
        self._verifies: deque[tuple[int, Any]] = deque()
        self._verify_ids = 0
        self._verify_drains = 0
        #: The pending reconcile was asked for while up: the outbox is sent first (counted
        #: in `_reconcile_drains`), so a change still on its way is not taken for drift.
        self._drain_first = False
        self._reconcile_drains = 0
        self._lags: deque[float] = deque(maxlen=LAG_WINDOW)
        #: Steps carry the token they were sent with; an older one is stale.
        self._token = 0
        #: No step is queued: the loop waits for a timer, or for someone to ask.
        self._sleeping = True
        #: A Writer request met a wait and is sent again (attempts so far).
        self._writer_waits = 0
        #: A reconcile must run at the next connect whatever the server holds: none has
        #: completed yet, or one was running, pending or failed when the connection went.
        self._owed = True
        #: The node of the last connection, and quick failovers since work last got through.
        self._last_node: str | None = None
        self._quick = 0

    # --- asks ---------------------------------------------------------------------------

    def boot(self) -> Effects:
        self._set(state="connecting")
        return self._wake()

    def reconcile(self, waiter: Any) -> Effects:
        """Single flight: join the reconcile running, or get the next one."""
        running = self._running
        if running is not None and not running[1] and not self._pending:
            number = running[0]
        else:
            if not self._pending:
                # Joining a connect's reconcile changes nothing; any other drains first.
                self._drain_first = self._connected
            self._pending = True
            number = self._started + 1
        self._reconcile_waiters.setdefault(number, []).append(waiter)
        return self._wake()

    def verify(self, waiter: Any) -> Effects:
        self._verify_ids += 1
        self._verifies.append((self._verify_ids, waiter))
        return self._wake()

    def stop(self, why: str = "the engine is stopping") -> Effects:
        """Refuse every ask still waiting: the mirror stops (`why`)."""
        waiting = [w for ws in self._reconcile_waiters.values() for w in ws]
        waiting += [w for _, w in self._verifies]
        self._reconcile_waiters.clear()
        self._verifies.clear()
        return [Fail(w, MirrorUnavailable(why)) for w in waiting]

    # --- the loop -----------------------------------------------------------------------

    def step(self, token: int) -> Job | None:
        """The unit of work for step `token`; None for a stale step."""
        if token != self._token:
            return None
        self._sleeping = False
        if self._writer_waits:
            return Job("resend")
        if not self._connected:
            return Job("connect")
        if self._running is not None:
            number, verify = self._running
            return Job("verify" if verify else "reconcile", number)
        if self._pending:
            if self._drain_first and self._reconcile_drains < VERIFY_DRAIN_BATCHES:
                self._reconcile_drains += 1
                return Job("drain")
            self._pending = self._drain_first = False
            self._reconcile_drains = 0
            self._started += 1
            self._running = (self._started, False)
            # A verify waiting behind this reconcile drains afresh after it.
            self._verify_drains = 0
            return Job("reconcile", self._started)
        if self._verifies:
            if self._verify_drains < VERIFY_DRAIN_BATCHES:
                self._verify_drains += 1
                return Job("drain")
            number, _ = self._verifies[0]
            self._running = (number, True)
            return Job("verify", number)
        return Job("drain")

    def go_on(self) -> Effects:
        """The unit is done and nothing was told: the next step, now."""
        return self._next_now()

    def outbox_empty(self) -> Effects:
        """A drain found nothing: a reconcile or verify waiting goes next, else poll again
        later."""
        if self._pending and self._drain_first:
            self._reconcile_drains = VERIFY_DRAIN_BATCHES
            return self._next_now()
        if self._verifies:
            self._verify_drains = VERIFY_DRAIN_BATCHES
            return self._next_now()
        return self._next_after(self.mirror.poll_ms / 1000)

    def failure(self, error: MirrorError, waiting_for: str | None = None) -> MirrorDown:
        """The connection failed or the work could not be done: what to tell, with the wait
        (`waiting_for`: what a retryable failure waits for, when not the server)."""
        was_connected = self._connected
        if self._pending or (self._running is not None and not self._running[1]):
            self._owed = True
        self._connected = False
        self._running = None
        self._writer_waits = 0
        self._verify_drains = 0  # the next verify drains afresh, once connected again
        self._reconcile_drains = 0
        self._attempt += 1
        wait = self._backoff if error.retryable else None
        hosts = len(self.mirror.hosts)
        if (error.retryable and was_connected and waiting_for is None and hosts
                and self._quick < hosts):
            # The server in use failed us: the other hosts are tried at once.
            self._quick += 1
            wait = 0.0
        elif error.retryable:
            self._backoff = min(self._backoff * 2, self.mirror.backoff_max_s)
        return MirrorDown(error=str(error), retryable=error.retryable, attempt=self._attempt,
                          retry_in_s=wait, started=self._started,
                          waiting_for=(waiting_for or SERVER_AWAY) if error.retryable else None,
                          errno=error.errno)

    def writer_waits(self, reason: str) -> Effects:
        """A Writer request met a wait (`reason`): send it again after a backoff."""
        self._writer_waits += 1
        if self._writer_waits == 1:
            log.warning("mirror waits: %s", reason)
        self._set(waiting_for=reason)
        return self._next_after(backoff_s(self._writer_waits))

    def writer_done(self) -> None:
        """A Writer request went through: whatever it waited for has gone."""
        if self._writer_waits:
            log.info("mirror: %s no more; going on", self.view.waiting_for)
            self._writer_waits = 0
            self._set(waiting_for=None)

    def applied(self, *, entries: int, upserts: int, deletes: int, upto_seq: int,
                changed_at: list[float]) -> Drained:
        """A drain batch is on the server: count it now, before its outbox rows go (so a
        status that sees the outbox empty sees these counts), and say what to tell once
        the Writer has deleted them."""
        now = self._wall()
        self._quick = 0
        self._lags.extend(max(0.0, (now - at) * 1000) for at in changed_at)
        ordered = sorted(self._lags)
        message = Drained(entries=entries, upserts=upserts, deletes=deletes, upto_seq=upto_seq,
                          lag_p50_ms=round(percentile(ordered, 0.50), 1),
                          lag_p99_ms=round(percentile(ordered, 0.99), 1),
                          lag_max_ms=round(ordered[-1], 1) if ordered else 0.0)
        self._set(drained_changes=self.view.drained_changes + entries,
                  drained_upserts=self.view.drained_upserts + upserts,
                  drained_deletes=self.view.drained_deletes + deletes, last_drain_at=now,
                  lag_p50_ms=message.lag_p50_ms, lag_p99_ms=message.lag_p99_ms,
                  lag_max_ms=message.lag_max_ms)
        return message

    # --- outcomes -----------------------------------------------------------------------

    def up(self, message: MirrorUp) -> Effects:
        self._connected = True
        self._backoff, self._attempt = self.mirror.backoff_initial_s, 0
        # One reconcile per successful connect, but none after a failover to a server
        # that holds all the mirror sent, unless one is owed anyway.
        self._pending = self._pending or message.reconcile or self._owed
        self._drain_first = False  # it repairs what the outbox holds with the rest
        moved = (self._last_node is not None and message.node is not None
                 and message.node != self._last_node)
        if message.node is not None:
            self._last_node = message.node
        self._set(state="up", driver=message.driver, server_version=message.server, error=None,
                  attempt=0, retry_at=None, waiting_for=None, errno=None, node=message.node,
                  failovers=self.view.failovers + int(moved))
        log.info("mirror: connected to %s (%s)%s", message.node or self.mirror.where,
                 message.driver, "" if self._pending else "; it holds everything sent, so "
                 "no reconcile is needed")
        return self._next_now()

    def retried(self, total: int) -> None:
        """The session has sent `total` transactions again after conflicts, so far."""
        if total != self.view.transaction_retries:
            self._set(transaction_retries=total)

    def down(self, message: MirrorDown) -> Effects:
        state = "down" if message.retryable else "failed"
        retry_at = (self._wall() + message.retry_in_s if message.retry_in_s is not None
                    else None)
        self._set(state=state, error=message.error, attempt=message.attempt,
                  retry_at=retry_at, reconciling=False, waiting_for=message.waiting_for,
                  errno=message.errno, node=None)
        if message.attempt == 1:
            log.warning("mirror %s: %s", state, message.error)
        effects: Effects = []
        # Asks waiting for a reconcile that has not begun cannot be served now.
        later = "when the server is back" if message.retryable else "once asked again"
        for number in [n for n in self._reconcile_waiters if n > message.started]:
            effects += [Fail(w, MirrorUnavailable(
                f"mirror is {state}: {message.error} (a reconcile runs {later})",
                errno=message.errno, retryable=message.retryable))
                for w in self._reconcile_waiters.pop(number)]
        verifies, self._verifies = self._verifies, deque()
        effects += [Fail(w, MirrorError(message.error)) for _, w in verifies]
        if message.retry_in_s is None:
            return [*effects, Cancel(STEP), *self._sleep()]
        return effects + self._next_after(message.retry_in_s)

    def begun(self, message: ReconcileBegun) -> Effects:
        if not message.verify:
            self._set(state="reconciling", reconciling=True)
        return []

    def reconciled(self, message: Reconciled) -> Effects:
        if self._running == (message.number, message.verify):
            self._running = None
        view = ReconcileView(number=message.number, verify=message.verify,
                             tables=message.tables, seconds=message.seconds,
                             error=message.error)
        if message.verify:
            self._verify_drains = 0
            waiters = [w for n, w in self._verifies if n == message.number]
            self._verifies = deque((n, w) for n, w in self._verifies if n != message.number)
            return [_answer(w, view) for w in waiters] + self._continue(message)
        if message.error is None:
            self._owed = self._pending  # one asked for meanwhile is still owed
            self._quick = 0
            self._set(reconciling=False, reconciles=self.view.reconciles + 1,
                      last_reconcile=view, state="up")
        else:
            self._set(reconciling=False, reconciles_failed=self.view.reconciles_failed + 1,
                      last_reconcile=view)
        effects = [_answer(w, view) for number in [n for n in self._reconcile_waiters
                                                   if n <= message.number]
                   for w in self._reconcile_waiters.pop(number)]
        return effects + self._continue(message)

    def drained(self, message: Drained) -> Effects:
        """The batch's outbox rows are deleted (it was counted when applied): go on."""
        return self._next_now()

    # --- plumbing -----------------------------------------------------------------------

    def _continue(self, message: Reconciled) -> Effects:
        # A failed run is followed by `mirror.down`, which decides when to try again.
        return [] if message.error is not None else self._next_now()

    def _set(self, **changes: Any) -> None:
        self.view = dataclasses.replace(self.view, **changes)

    def _wake(self) -> Effects:
        """Someone asked: a sleeping loop takes its next step now."""
        return [Cancel(STEP), *self._next_now()] if self._sleeping else []

    def _next_now(self) -> Effects:
        self._token += 1
        self._sleeping = False
        return [Tell(MIRROR, MirrorStep(token=self._token))]

    def _next_after(self, delay_s: float) -> Effects:
        self._token += 1
        self._sleeping = True
        return [After(delay_s, MirrorStep(token=self._token), STEP)]

    def _sleep(self) -> Effects:
        self._token += 1
        self._sleeping = True
        return []


def _answer(waiter: Any, view: ReconcileView) -> Reply | Fail:
    if view.error is not None:
        return Fail(waiter, MirrorError(view.error))
    return Reply(waiter, view)
