"""The one send path: every message between actors, and from the facade, goes here.

The bus wraps a message in an `Envelope` (sender, receiver, correlation id and,
for an ask, the future the answer goes to), appends it to the message log and
puts it in the receiver's pykka inbox. Replies come back through `reply` and
`fail`, which log exactly one `reply` or `error` record per handled message.
Because the receiver resolves the future itself, it may answer later than
the handler returns: that is how the Writer commits a group of writes at once.

While an actor that went down waits for its restart, the bus holds what is
sent to it (and what was queued for it from others) and hands it to the
actor built in its place, in order; when no restart comes, each held ask is
answered with the error that says why. Senders never lose a message to a
restart, and nobody waits forever.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pykka

from sqlwarden.errors import EngineStopped
from sqlwarden.futures import Future
from sqlwarden.msglog.log import MessageLog
from sqlwarden.protocol import Message

#: Messages held for an actor waiting for its restart; past this many, sends are refused
#: (an actor that cannot be rebuilt must not take the engine's memory with it).
MAX_HELD = 100_000


@dataclass(slots=True, eq=False)
class Envelope:
    """A message in transit, with what is needed to answer it and log it."""

    message: Message
    sender: str
    receiver: str
    corr: int
    reply_to: Future[Any] | None
    started_ns: int = 0
    #: For a `Bus.request`: the actor whose inbox gets the `Answer`.
    answer_to: str | None = None
    #: A `reply` or an `error` was given (each message is answered once).
    answered: bool = False

    @property
    def is_ask(self) -> bool:
        return self.reply_to is not None or self.answer_to is not None


@dataclass(slots=True, frozen=True)
class Answer:
    """The answer to a `Bus.request`, delivered to the requester's inbox.

    It is not logged again: the receiver's `reply` or `error` record, with
    the same correlation id, already is the answer in the message log.
    """

    corr: int
    request: Message
    result: Any = None
    error: BaseException | None = None


class Bus:
    """Routes envelopes to registered actors and logs every step."""

    def __init__(self, log: MessageLog, *, clock_ns: Any = time.perf_counter_ns) -> None:
        self._log = log
        self._clock_ns = clock_ns
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._depth: Counter[str] = Counter()
        self._sent: Counter[str] = Counter()
        #: What is sent to an actor that waits for its restart, by its name.
        self._held: dict[str, deque[Envelope]] = {}
        #: Requests (`request`) each actor sent that have not been answered yet.
        self._asking: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._corr = itertools.count(1)

    def register(self, name: str, ref: pykka.ActorRef[Any], *,
                 first: tuple[str, Message] | None = None) -> None:
        """Messages to `name` go to `ref` from now on, starting with those held for it;
        `first` (sender, message) is told before them (what a successor recovers with)."""
        dead: list[Envelope] = []
        with self._lock:
            self._refs[name] = ref
            if first is not None:
                self._put("tell", Envelope(first[1], first[0], name, next(self._corr), None))
            for envelope in self._held.pop(name, ()):
                try:
                    ref.tell(envelope)
                except pykka.ActorDeadError:  # gone already: its own stop answers the rest
                    dead.append(envelope)
        self._unsent(dead, EngineStopped(name))

    def hold(self, name: str, ref: pykka.ActorRef[Any], queued: Iterable[Envelope] = ()) -> bool:
        """`ref` went down and is restarted: keep what is sent to `name` for its successor,
        after `queued` (what others had sent it that it never handled).

        Returns False (and holds nothing) when `ref` is no longer the actor of `name`.
        """
        with self._lock:
            if self._refs.get(name) is not ref:
                return False
            del self._refs[name]
            held = self._held.setdefault(name, deque())
            held.extendleft(reversed(list(queued)))
            return True

    def release(self, name: str | None, error: BaseException) -> None:
        """No restart comes for `name` (None: for any actor): answer what is held with
        `error`, and refuse what is sent to it from now on."""
        with self._lock:
            names = list(self._held) if name is None else [name]
            held = [e for n in names for e in self._held.pop(n, ())]
        self._unsent(held, error)

    def _unsent(self, envelopes: Iterable[Envelope], error: BaseException) -> None:
        """Answer messages that never reached a receiver with `error`."""
        for envelope in envelopes:
            with self._lock:
                self._depth[envelope.receiver] -= 1
            self.fail(envelope, error)

    def held(self, name: str) -> int:
        """Messages kept for `name` while it waits for its restart."""
        with self._lock:
            return len(self._held.get(name, ()))

    def wait_answered(self, name: str, timeout: float | None = None) -> bool:
        """Block until every request `name` sent has been answered; False on timeout.

        A restarted actor is built only then: an answer its predecessor waited
        for (a chunk, a deferral) is in the database before the successor reads it.
        """
        with self._queued:
            return self._queued.wait_for(lambda: self._asking[name] <= 0, timeout)

    def unregister(self, name: str, ref: pykka.ActorRef[Any] | None = None) -> None:
        """Refuse further messages to `name`; those already queued stay queued.

        With `ref`, only if `name` is still that actor: an actor that went down
        never takes its restarted successor off the bus.
        """
        with self._lock:
            if ref is None or self._refs.get(name) is ref:
                self._refs.pop(name, None)

    def holds(self, name: str, ref: pykka.ActorRef[Any]) -> bool:
        """Whether `ref` is the actor messages to `name` go to (the engine has not taken
        it off the bus to stop it)."""
        with self._lock:
            return self._refs.get(name) is ref

    def note(self, sender: str, receiver: str, message: Message) -> None:
        """Log `message` as told, without delivering it: what the supervisor decided."""
        with self._lock:
            self._log.record("tell", sender, receiver, message.kind, message, next(self._corr))

    def depth(self, name: str) -> int:
        """Messages sent to `name` that it has not started handling yet."""
        return self._depth[name]

    def sent(self, name: str) -> int:
        """Messages sent to `name` since the bus was made."""
        return self._sent[name]

    def wait_for_sent(self, name: str, count: int, timeout: float | None = None) -> bool:
        """Block until `count` messages in all were sent to `name`; False on timeout."""
        with self._queued:
            return self._queued.wait_for(lambda: self._sent[name] >= count, timeout)

    def tell(self, sender: str, receiver: str, message: Message) -> None:
        """Send without waiting."""
        self._send("tell", Envelope(message, sender, receiver, next(self._corr), None))

    def ask(self, sender: str, receiver: str, message: Message) -> Future[Any]:
        """Send and return the future the receiver will resolve."""
        future: Future[Any] = Future()
        self._send("ask", Envelope(message, sender, receiver, next(self._corr), future))
        return future

    def request(self, sender: str, receiver: str, message: Message) -> int:
        """Send an ask whose answer comes back to `sender`'s inbox as an `Answer`.

        This is how one actor asks another without blocking its handler.
        Returns the correlation id the answer will carry.
        """
        corr = next(self._corr)
        self._send("ask", Envelope(message, sender, receiver, corr, None, answer_to=sender))
        return corr

    def _send(self, kind: str, envelope: Envelope) -> None:
        with self._lock:
            self._put(kind, envelope)

    def _put(self, kind: str, envelope: Envelope) -> None:
        """Log `envelope` and queue it for its receiver (or hold it); under the lock."""
        ref = self._refs.get(envelope.receiver)
        held = self._held.get(envelope.receiver) if ref is None else None
        if ref is None and (held is None or len(held) >= MAX_HELD):
            raise EngineStopped(envelope.receiver)
        self._log.record(kind, envelope.sender, envelope.receiver, envelope.message.kind,
                         envelope.message, envelope.corr)
        self._depth[envelope.receiver] += 1
        self._sent[envelope.receiver] += 1
        if envelope.answer_to is not None:
            self._asking[envelope.answer_to] += 1
        self._queued.notify_all()
        if held is not None:  # its successor gets it
            held.append(envelope)
            return
        assert ref is not None
        try:
            ref.tell(envelope)
        except pykka.ActorDeadError:
            self._depth[envelope.receiver] -= 1
            if envelope.answer_to is not None:
                self._asking[envelope.answer_to] -= 1
            error = EngineStopped(envelope.receiver)
            self._log.record("error", envelope.receiver, envelope.sender, envelope.message.kind,
                             None, envelope.corr, duration_ms=0.0, error=error)
            raise error from None

    def received(self, envelope: Envelope) -> None:
        """The receiver starts handling `envelope` (called on its thread)."""
        envelope.started_ns = self._clock_ns()
        with self._lock:
            self._depth[envelope.receiver] -= 1

    def reply(self, envelope: Envelope, result: Any) -> None:
        """Handling ended well; answer an ask and log the outcome."""
        envelope.answered = True
        self._log.record("reply", envelope.receiver, envelope.sender, envelope.message.kind,
                         result, envelope.corr, duration_ms=self._elapsed_ms(envelope))
        if envelope.reply_to is not None:
            envelope.reply_to.set(result)
        if envelope.answer_to is not None:
            self._deliver(envelope, Answer(envelope.corr, envelope.message, result=result))

    def fail(self, envelope: Envelope, error: BaseException) -> None:
        """Handling raised; hand the error to an asker and log it."""
        envelope.answered = True
        self._log.record("error", envelope.receiver, envelope.sender, envelope.message.kind,
                         None, envelope.corr, duration_ms=self._elapsed_ms(envelope),
                         error=error)
        if envelope.reply_to is not None:
            envelope.reply_to.set_exception(error)
        if envelope.answer_to is not None:
            self._deliver(envelope, Answer(envelope.corr, envelope.message, error=error))

    def _deliver(self, envelope: Envelope, answer: Answer) -> None:
        # A requester that has stopped no longer needs its answer (a successor built in
        # its place does not know the request, and leaves it).
        with self._lock:
            self._asking[envelope.answer_to or ""] -= 1
            self._queued.notify_all()
            ref = self._refs.get(envelope.answer_to or "")
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(answer)

    def _elapsed_ms(self, envelope: Envelope) -> float:
        if not envelope.started_ns:
            return 0.0
        return (self._clock_ns() - envelope.started_ns) / 1e6
