"""The base every actor shares: envelopes, replies, timers, effects and failure reports.

An actor's decisions live in a plain state machine that returns effects
(`sqlwarden.effects`); `perform` carries them out: messages through the bus,
answers to waiting asks, timers on the engine's one scheduler, failures to
the supervisor. What is left in an actor is routing and the connection it owns.

An actor that fails unexpectedly (a handler raises something that is not a
protocol error, see `supervisor.is_unexpected`, or it is stopped by anyone
but the engine) tears down and tells the supervisor it is down; the engine
then builds a new one. What others had sent it and it never handled waits
on the bus for that successor (`Bus.hold`); what it sent itself (timers,
outcomes) belonged to the state that went down and is refused. Every ask it
took and did not answer is answered as it stops (`unanswered`), so no asker
waits for an actor that is gone.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import pykka

from sqlwarden.actors.bus import Answer, Bus, Envelope
from sqlwarden.db.faults import wait_reason
from sqlwarden.effects import After, Cancel, Effect, Effects, Fail, Reply, Report, Request, Tell
from sqlwarden.errors import EngineStopped, UnexpectedMessage
from sqlwarden.futures import Future
from sqlwarden.protocol import Message
from sqlwarden.scheduler import Scheduler, Timer
from sqlwarden.supervisor import ActorDied, Supervisor, is_fatal, is_unexpected


class _Deferred:
    """Returned by a handler that will answer later through `Bus.reply`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Any = _Deferred()


class BaseActor(pykka.ThreadingActor):
    """Unwraps envelopes, times handlers, and reports what goes wrong.

    Subclasses set `name`, open their resources in `setup` (on the actor's
    thread), release them in `teardown`, and implement `handle` with a
    `match` whose last case raises `UnexpectedMessage`.
    """

    name: ClassVar[str] = ""
    #: How long stopping the engine waits for this actor to finish what it is doing
    #: (the Writer commits what is queued, which may be a lot).
    stop_timeout_s: ClassVar[float] = 120.0
    # A forgotten engine must not keep the interpreter from exiting.
    use_daemon_thread = True

    def __init__(self, *, bus: Bus, supervisor: Supervisor, scheduler: Scheduler,
                 ready: Future[None] | None = None, incarnation: int = 0) -> None:
        """`incarnation` counts the actors of this name built before this one (0 at the
        engine's start; a restart builds the next)."""
        super().__init__()
        self.bus = bus
        self.supervisor = supervisor
        self.scheduler = scheduler
        self.incarnation = incarnation
        self._ready = ready
        self._awaiting: dict[int, Callable[[Answer], None]] = {}
        #: Asks handled that were to be answered later (`DEFERRED`); pruned as answered.
        self._taken: deque[Envelope] = deque()
        self._taken_limit = 8
        self._timers: dict[str, Timer] = {}
        #: What took this actor down from inside (the error, and the message kind).
        self._crashed: tuple[BaseException, str] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def setup(self) -> None:
        """Open resources; runs on the actor's thread before any message."""

    def teardown(self) -> None:
        """Release resources; runs on the actor's thread after the last message."""

    def handle(self, message: Message, envelope: Envelope) -> Any:
        raise UnexpectedMessage(self.name, message)

    def unanswered(self, message: Message) -> Any:
        """The answer to an ask this actor took and had not answered when it stopped
        (runs on its thread, after `teardown`); raises the error to answer with instead.
        An actor whose askers can carry on without it answers them here."""
        raise EngineStopped(self.name)

    def on_start(self) -> None:
        try:
            self.setup()
        except Exception as exc:
            if wait_reason(exc) is None:
                # A wait (a lock another program holds, a full disk) is not a failure:
                # whoever starts the actor waits it out and says so.
                self.supervisor.report(self.name, "start", exc)
            if self._ready is not None:
                self._ready.set_exception(exc)
            # Stopping, not raising: pykka would log a traceback for what is
            # often the user's input (a file that is not a database, say).
            self.stop()
            return
        if self._ready is not None:
            self._ready.set(None)

    def on_stop(self) -> None:
        # Still on the bus: the engine did not ask for this stop (it takes an actor off
        # the bus first), so the actor is down and the supervisor decides what follows.
        down = self.bus.holds(self.name, self.actor_ref)
        error, kind = self._crashed or (ActorDied(
            f"the {self.name} actor was stopped without the engine asking"), "actor")
        self._cancel_timers()
        try:
            self.teardown()
        finally:
            self._refuse_queued(hold=down and self._restarted_after(error))
            self._answer_taken()
            if down:
                self.supervisor.actor_down(self.name, error, kind)
            elif self._crashed is not None:  # the engine is stopping anyway: just record it
                self.supervisor.report(self.name, self._crashed[1], self._crashed[0])

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        down = self.bus.holds(self.name, self.actor_ref)
        self._cancel_timers()
        try:
            self.teardown()  # its connections and threads go with it
        except Exception as error:
            self.supervisor.report(self.name, "teardown", error)
        if not isinstance(exc, BaseException):
            exc = ActorDied(f"the {self.name} actor died")
        self._refuse_queued(hold=down and self._restarted_after(exc))
        self._answer_taken()
        if down:
            self.supervisor.actor_down(self.name, exc)
        else:
            self.supervisor.report(self.name, "actor", exc)

    def _crash(self, error: BaseException, kind: str) -> None:
        """Stop now, skipping what is queued (it is answered): this actor's state cannot be
        trusted after `error`, and a fresh one is built from the database."""
        self._crashed = (error, kind)
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception as exc:  # a teardown that fails too: recorded, not raised again
            self.supervisor.report(self.name, "teardown", exc)

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _restarted_after(self, error: BaseException) -> bool:
        """Whether the supervisor builds a successor after `error` takes this actor down."""
        return self.supervisor.restartable(self.name) and not is_fatal(error)

    def _refuse_queued(self, *, hold: bool = False) -> None:
        """Leave the bus, then answer whatever is still queued, so no asker waits forever;
        with `hold`, what others sent waits on the bus for the successor instead."""
        refused: list[Envelope] = []

        def queued() -> Iterator[Envelope]:
            # Run by the bus under its lock, once nothing new can be queued here.
            while not self.actor_inbox.empty():
                item = self.actor_inbox.get().message
                if not isinstance(item, Envelope):
                    continue  # an answer to a request: this actor no longer needs it
                if hold and item.sender != self.name:
                    yield item
                else:  # its own timers and outcomes went down with its state
                    refused.append(item)

        if not (hold and self.bus.hold(self.name, self.actor_ref, queued())):
            # After unregistering nothing new can be queued: the bus sends under
            # the same lock.
            self.bus.unregister(self.name, self.actor_ref)
            hold = False
            refused.extend(queued())
        for item in refused:
            self.bus.received(item)
            self.bus.fail(item, EngineStopped(self.name))

    def _take(self, envelope: Envelope) -> None:
        """Keep an ask answered later, to answer it when this actor stops first."""
        self._prune_taken()
        if len(self._taken) >= self._taken_limit:
            self._taken = deque(e for e in self._taken if not e.answered)
            self._taken_limit = max(8, 2 * len(self._taken))
        self._taken.append(envelope)

    def _prune_taken(self) -> None:
        """Let go of the asks answered first: an answered envelope still holds its message
        (a sync batch's rows), which must not stay alive here until the next prune."""
        taken = self._taken
        while taken and taken[0].answered:
            taken.popleft()

    def _answer_taken(self) -> None:
        """Answer every ask taken and not answered yet (see `unanswered`)."""
        taken, self._taken = self._taken, deque()
        for envelope in taken:
            if envelope.answered:
                continue
            try:
                result = self.unanswered(envelope.message)
            except Exception as exc:
                self.bus.fail(envelope, exc)
            else:
                self.bus.reply(envelope, result)

    # --- effects and timers -------------------------------------------------------------

    def perform(self, effects: Iterable[Effect]) -> None:
        """Carry out what a state machine decided, in order (on this actor's thread)."""
        for effect in effects:
            match effect:
                case Tell(to=to, message=message):
                    with contextlib.suppress(EngineStopped):  # a stopped receiver needs nothing
                        self.bus.tell(self.name, to, message)
                case Request(to=to, message=message, context=context):
                    self._request_for_machine(to, message, context)
                case Reply(waiter=waiter, result=result):
                    self.bus.reply(waiter, result)
                case Fail(waiter=waiter, error=EngineStopped() as error):
                    self.bus.fail(waiter, error)  # stopping: nothing for the supervisor
                case Fail(waiter=waiter, error=error):
                    self.fail(waiter, error)
                case After(delay_s=delay, message=message, key=key):
                    self.later(key, delay, message)
                case Cancel(key=key):
                    self._disarm(key)
                case Report(kind=kind, error=error):
                    self.supervisor.report(self.name, kind, error)
                case _:
                    raise UnexpectedMessage(self.name, effect)

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        """The answer to a `Request` effect; actors with a state machine feed it there."""
        raise UnexpectedMessage(self.name, context)

    def _request_for_machine(self, to: str, message: Message, context: Any) -> None:
        def then(answer: Answer) -> None:
            self.perform(self.answered(context, answer.result, answer.error))

        try:
            self.request(to, message, then)
        except EngineStopped as exc:
            # Never sent: the machine learns it as the answer, so it does not wait for one.
            self.perform(self.answered(context, None, exc))

    def later(self, key: str, delay_s: float, message: Message) -> None:
        """In `delay_s` seconds, send `message` to this actor; replaces timer `key`."""
        self._disarm(key)

        def fire() -> None:
            with contextlib.suppress(EngineStopped):  # the engine stopped while it waited
                self.bus.tell(self.name, self.name, message)

        self._timers[key] = self.scheduler.call_later(delay_s, fire)

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    # --- messages -----------------------------------------------------------------------

    def request(self, receiver: str, message: Message,
                then: Callable[[Answer], None]) -> None:
        """Ask `receiver` without waiting; `then(answer)` runs on this actor's thread later."""
        corr = self.bus.request(self.name, receiver, message)
        self._awaiting[corr] = then

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Answer):
            then = self._awaiting.pop(message.corr, None)
            if then is None:
                return None
            try:
                then(message)
            except Exception as exc:
                if self._restartable(exc):
                    self._crash(exc, message.request.kind)
                else:
                    self.supervisor.report(self.name, message.request.kind, exc)
            return None
        if not isinstance(message, Envelope):
            self.supervisor.report(self.name, type(message).__name__,
                                   UnexpectedMessage(self.name, message))
            return None
        self.bus.received(message)
        try:
            result = self.handle(message.message, message)
        except Exception as exc:
            if self._restartable(exc):
                self.bus.fail(message, exc)  # the asker learns it; the supervisor hears below
                self._crash(exc, message.message.kind)
            else:
                self.fail(message, exc)
        else:
            if result is not DEFERRED:
                self.bus.reply(message, result)
            elif message.is_ask and not message.answered:
                self._take(message)
        self._prune_taken()
        return None

    def _restartable(self, error: BaseException) -> bool:
        return is_unexpected(error) and self.supervisor.restartable(self.name)

    def fail(self, envelope: Envelope, error: BaseException) -> None:
        """Hand `error` to the asker; report it when nobody else will see it."""
        self.bus.fail(envelope, error)
        # A wait passed on to an asker (a full disk SQLite reported as an I/O error,
        # say) is the asker's to wait out, not a broken database.
        if not envelope.is_ask or (is_fatal(error) and wait_reason(error) is None):
            self.supervisor.report(self.name, envelope.message.kind, error)
