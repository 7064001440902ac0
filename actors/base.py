"""The base every actor shares: envelope handling, replies and failure reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pykka

from sqlwarden.actors.bus import Answer, Bus, Envelope
from sqlwarden.errors import EngineStopped, UnexpectedMessage
from sqlwarden.futures import Future
from sqlwarden.protocol import Message
from sqlwarden.supervisor import Supervisor, is_fatal


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
    # A forgotten engine must not keep the interpreter from exiting.
    use_daemon_thread = True

    def __init__(self, *, bus: Bus, supervisor: Supervisor,
                 ready: Future[None] | None = None) -> None:
        super().__init__()
        self.bus = bus
        self.supervisor = supervisor
        self._ready = ready
        self._awaiting: dict[int, Callable[[Answer], None]] = {}

    # --- lifecycle ----------------------------------------------------------------------

    def setup(self) -> None:
        """Open resources; runs on the actor's thread before any message."""

    def teardown(self) -> None:
        """Release resources; runs on the actor's thread after the last message."""

    def handle(self, message: Message, envelope: Envelope) -> Any:
        raise UnexpectedMessage(self.name, message)

    def on_start(self) -> None:
        try:
            self.setup()
        except Exception as exc:
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
        try:
            self.teardown()
        finally:
            self._refuse_queued()

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, BaseException):
            self.supervisor.report(self.name, "actor", exc)
        self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Leave the bus, then answer whatever is still queued, so no asker waits forever."""
        # After unregistering nothing new can be queued: the bus sends under
        # the same lock.
        self.bus.unregister(self.name)
        while not self.actor_inbox.empty():
            item = self.actor_inbox.get().message
            if isinstance(item, Envelope):
                self.bus.received(item)
                self.bus.fail(item, EngineStopped(self.name))

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
            self.fail(message, exc)
        else:
            if result is not DEFERRED:
                self.bus.reply(message, result)
        return None

    def fail(self, envelope: Envelope, error: BaseException) -> None:
        """Hand `error` to the asker; report it when nobody else will see it."""
        self.bus.fail(envelope, error)
        if not envelope.is_ask or is_fatal(error):
            self.supervisor.report(self.name, envelope.message.kind, error)
