"""Answers that arrive later: sqlwarden's own future, and the timeout it raises.

An actor resolves a `Future` from its own thread; whoever asked waits on it
with `get`. The actor library underneath never shows through: a caller sees
this class and `Timeout`, whatever carries the messages.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from sqlwarden.errors import EngineError

T = TypeVar("T")


class Timeout(EngineError, TimeoutError):
    """No answer came within the time the caller was willing to wait."""

    retryable = True


class Future(Generic[T]):
    """A value or an error that one thread sets once and others wait for."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        """Resolve with `value`; the first resolution wins."""
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def set_exception(self, error: BaseException) -> None:
        """Resolve with `error`, which `get` raises; the first resolution wins."""
        if not self._done.is_set():
            self._error = error
            self._done.set()

    def done(self) -> bool:
        """True once a value or an error is set."""
        return self._done.is_set()

    def get(self, timeout: float | None = None) -> T:
        """The value, once set; raises the error set instead, or `Timeout`."""
        if not self._done.wait(timeout):
            raise Timeout(f"no answer within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set, possibly to None
