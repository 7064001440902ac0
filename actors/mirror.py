"""The Mirror actor: owns the MySQL connection (through its worker) and the mirror's state.

All blocking I/O happens on the `MirrorWorker` thread. This actor keeps what
status shows, and answers reconcile and verify asks. Reconciles are single
flight: the worker numbers them, an ask is told which number it will get
(the one running, or the next), and every ask waiting for that number gets
the same result when its `mirror.reconciled` arrives.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Envelope
from sqlwarden.config import Config
from sqlwarden.errors import MirrorError, MirrorUnavailable, UnexpectedMessage
from sqlwarden.mirror.session import ACTOR, MirrorWorker
from sqlwarden.protocol import (
    Drained,
    Message,
    MirrorBoot,
    MirrorDown,
    MirrorStatus,
    MirrorUp,
    Reconcile,
    ReconcileBegun,
    Reconciled,
    Verify,
)
from sqlwarden.redact import Redactor
from sqlwarden.views import MirrorView, ReconcileView

log = logging.getLogger(__name__)


class MirrorActor(BaseActor):
    """Tracks the mirror's state; hands reconcile and verify work to its worker thread."""

    name = ACTOR

    def __init__(self, *, config: Config, wall: Callable[[], float] = time.time,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert config.mirror is not None
        self.config = config
        self.mirror = config.mirror
        self._wall = wall
        self._redactor = Redactor(config.secrets)
        self.worker: MirrorWorker | None = None
        self._reconcile_waiters: dict[int, list[Envelope]] = {}
        self._verify_waiters: dict[int, Envelope] = {}
        self._view = MirrorView(state="starting", server=self.mirror.dsn.where,
                                scope=self.mirror.scope, tables=self.mirror.tables)

    def setup(self) -> None:
        self.worker = MirrorWorker(
            self.config, redactor=self._redactor,
            tell=lambda to, m: self.bus.tell(self.name, to, m),
            ask=lambda m: self.bus.ask(self.name, "writer", m).get(timeout=120))

    def teardown(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for waiters in self._reconcile_waiters.values():
            for envelope in waiters:
                self.bus.fail(envelope, MirrorUnavailable("the engine is stopping"))
        for envelope in self._verify_waiters.values():
            self.bus.fail(envelope, MirrorUnavailable("the engine is stopping"))

    def _set(self, **changes: Any) -> None:
        self._view = dataclasses.replace(self._view, **changes)

    def handle(self, message: Message, envelope: Envelope) -> Any:
        assert self.worker is not None
        match message:
            case MirrorBoot():
                self._set(state="connecting")
                self.worker.start()
                return None
            case Reconcile():
                number = self.worker.request_reconcile()
                self._reconcile_waiters.setdefault(number, []).append(envelope)
                return DEFERRED
            case Verify():
                self._verify_waiters[self.worker.request_verify()] = envelope
                return DEFERRED
            case MirrorStatus():
                return self._view
            case MirrorUp(driver=driver, server=server):
                self._set(state="up", driver=driver, server_version=server, error=None,
                          attempt=0, retry_at=None)
                log.info("mirror: connected to %s (%s)", self.mirror.dsn.where, driver)
                return None
            case MirrorDown():
                self._down(message)
                return None
            case ReconcileBegun(verify=False):
                self._set(state="reconciling", reconciling=True)
                return None
            case ReconcileBegun():
                return None
            case Reconciled():
                self._reconciled(message)
                return None
            case Drained():
                self._set(drained_changes=self._view.drained_changes + message.entries,
                          drained_upserts=self._view.drained_upserts + message.upserts,
                          drained_deletes=self._view.drained_deletes + message.deletes,
                          last_drain_at=self._wall(), lag_p50_ms=message.lag_p50_ms,
                          lag_p99_ms=message.lag_p99_ms, lag_max_ms=message.lag_max_ms)
                return None
            case _:
                raise UnexpectedMessage(self.name, message)

    def _down(self, message: MirrorDown) -> None:
        state = "down" if message.retryable else "failed"
        retry_at = (self._wall() + message.retry_in_s if message.retry_in_s is not None
                    else None)
        self._set(state=state, error=message.error, attempt=message.attempt,
                  retry_at=retry_at, reconciling=False)
        if message.attempt == 1:
            log.warning("mirror %s: %s", state, message.error)
        # Asks waiting for a reconcile that has not started cannot be served now.
        later = "when the server is back" if message.retryable else "once asked again"
        for number in [n for n in self._reconcile_waiters if n > message.started]:
            for envelope in self._reconcile_waiters.pop(number):
                self.bus.fail(envelope, MirrorUnavailable(
                    f"mirror is {state}: {message.error} (a reconcile runs {later})"))

    def _reconciled(self, message: Reconciled) -> None:
        view = ReconcileView(number=message.number, verify=message.verify,
                             tables=message.tables, seconds=message.seconds,
                             error=message.error)
        if message.verify:
            envelope = self._verify_waiters.pop(message.number, None)
            if envelope is not None:
                self._answer(envelope, view)
            return
        self._set(reconciling=False, reconciles=self._view.reconciles + 1, last_reconcile=view,
                  state="up" if message.error is None else self._view.state)
        for number in [n for n in self._reconcile_waiters if n <= message.number]:
            for envelope in self._reconcile_waiters.pop(number):
                self._answer(envelope, view)

    def _answer(self, envelope: Envelope, view: ReconcileView) -> None:
        if view.error is not None:
            self.bus.fail(envelope, MirrorError(view.error))
        else:
            self.bus.reply(envelope, view)
