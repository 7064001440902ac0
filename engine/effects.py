"""What a state machine asks its actor to do, as plain values.

The engine's decisions (when a task's next chunk goes, when FTS upkeep is
deferred and restored, when a source runs, what the mirror does next) are
plain classes: a test feeds one a message or the answer to an earlier
request and gets back a list of these effects, with no actor and no thread.
The actor that owns the machine performs them (see `BaseActor.perform`):

- `Tell`: send a message, answer not wanted
- `Request`: ask another actor; its answer comes back to the machine with
  `context`, on the owning actor's thread, as a call like
  `answered(context, result, error)`
- `Reply` / `Fail`: answer a `waiter`, the opaque handle of an earlier ask
- `After`: (re)arm the timer named `key`: in `delay_s` seconds the actor
  sends itself `message`; `Cancel` disarms it
- `Report`: hand an error to the supervisor, for status
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlwarden.protocol import Message


@dataclass(frozen=True, slots=True)
class Tell:
    """Send `message` to `to` without waiting."""

    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class Request:
    """Ask `to`; the answer comes back to the machine with `context`."""

    to: str
    message: Message
    context: Any = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the ask behind `waiter` with `result`."""

    waiter: Any
    result: Any = None


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer the ask behind `waiter` with `error`."""

    waiter: Any
    error: BaseException


@dataclass(frozen=True, slots=True)
class After:
    """In `delay_s` seconds the actor sends itself `message`; replaces timer `key`."""

    delay_s: float
    message: Message
    key: str = ""


@dataclass(frozen=True, slots=True)
class Cancel:
    """Disarm timer `key` (nothing happens if it is not armed)."""

    key: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    """Hand `error` to the supervisor, recorded against message kind `kind`."""

    kind: str
    error: BaseException


Effect = Tell | Request | Reply | Fail | After | Cancel | Report
Effects = list[Effect]
