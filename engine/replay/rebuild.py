"""Protocol messages rebuilt from the fields a log holds, and answers put in the log's form.

`Rebuilder` turns a record's logged fields back into the protocol dataclass
of its kind, guided by the dataclass's field types: lists become tuples,
`{"base64": ...}` becomes bytes, nested objects become nested dataclasses.
A summary the log wrote instead of a value (`{"items": n}` for a tuple, a
string cut short) raises `Summarised`; fields that do not fit raise
`Unreadable`. `as_logged` and `compared` give the answer of a re-executed
message in the form the log holds, and the parts of it a faithful replay
reproduces, so the two can be compared.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import re
import types
import typing
from typing import Any

from sqlwarden.msglog.log import STRING_SUMMARY_CHARS
from sqlwarden.protocol import (
    DeferFts,
    Execute,
    ExecuteBatch,
    Message,
    StartSyncRun,
    UpdateFtsDeferral,
    message_kinds,
)
from sqlwarden.redact import REDACTED
from sqlwarden.views import (
    ChunkResult,
    FtsDeferralView,
    FtsRestoreResult,
    SyncBatchResult,
    WriteResult,
)

_CUT_SHORT = re.compile(r"\.\.\.\((\d+) chars\)\Z")
_DML = frozenset({"insert", "update", "delete", "replace"})


# --- rebuilding messages ----------------------------------------------------------------


class Summarised(Exception):
    """A field holds the log's summary of a value, not the value."""


class Unreadable(Exception):
    """Logged fields that do not fit the message's dataclass."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Rebuilder:
    """Turns logged fields back into protocol messages, counting redacted values."""

    def __init__(self) -> None:
        self.redacted = 0
        self._kinds = message_kinds()

    def message(self, kind: str, fields: Any) -> Message:
        """The message of `kind` with `fields`; raises `Summarised` or `Unreadable`."""
        cls = self._kinds.get(kind)
        if cls is None:
            raise Unreadable(f"unknown message kind {kind!r}")
        message = self._dataclass(cls, fields)
        assert isinstance(message, Message)
        return message

    def _dataclass(self, cls: type, value: Any) -> Any:
        if not isinstance(value, dict):
            raise Unreadable(f"{cls.__name__}: expected an object, got {_shape(value)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise Unreadable(f"{cls.__name__} has no field {', '.join(unknown)} (a log from "
                              "a newer sqlwarden?)")
        hints = _hints(cls)
        try:
            return cls(**{name: self._value(item, hints[name], f"{cls.__name__}.{name}")
                          for name, item in value.items()})
        except TypeError as exc:  # a field without a default is missing
            raise Unreadable(str(exc)) from None

    def _value(self, value: Any, hint: Any, where: str) -> Any:
        if hint is Any:
            return self._plain(value, where)
        origin = typing.get_origin(hint)
        if origin is types.UnionType or origin is typing.Union:
            return self._union(value, typing.get_args(hint), where)
        if origin is tuple:
            return self._tuple(value, typing.get_args(hint), where)
        if dataclasses.is_dataclass(hint):
            return self._dataclass(hint, value)  # type: ignore[arg-type]
        if hint is type(None):
            if value is not None:
                raise Unreadable(f"{where}: expected null, got {_shape(value)}")
            return None
        if hint is bytes:
            return self._bytes(value, where)
        if hint is str:
            if not isinstance(value, str):
                raise Unreadable(f"{where}: expected a string, got {_shape(value)}")
            return self._text(value)
        if hint is bool:
            if not isinstance(value, bool):
                raise Unreadable(f"{where}: expected true or false, got {_shape(value)}")
            return value
        if hint is int or hint is float:
            allowed = (int,) if hint is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise Unreadable(f"{where}: expected a number, got {_shape(value)}")
            return value
        raise Unreadable(f"{where}: cannot rebuild a value of type {hint!r}")

    def _union(self, value: Any, options: tuple[Any, ...], where: str) -> Any:
        if value is None:
            if type(None) in options:
                return None
            raise Unreadable(f"{where}: null is not allowed here")
        if isinstance(value, dict):
            if bytes in options and set(value) == {"base64"}:
                return self._bytes(value, where)
            _refuse_summary(value)
            for option in options:
                if dataclasses.is_dataclass(option):
                    return self._dataclass(option, value)  # type: ignore[arg-type]
        if isinstance(value, list):
            for option in options:
                if typing.get_origin(option) is tuple:
                    return self._tuple(value, typing.get_args(option), where)
        for option in options:
            if option in (bool, int, float, str) and _fits(value, option):
                return self._value(value, option, where)
        raise Unreadable(f"{where}: {_shape(value)} fits none of the field's types")

    def _tuple(self, value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
        _refuse_summary(value)
        if not isinstance(value, list):
            raise Unreadable(f"{where}: expected a list, got {_shape(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self._value(item, args[0], where) for item in value)
        if len(args) != len(value):
            raise Unreadable(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(self._value(item, arg, where)
                     for item, arg in zip(value, args, strict=True))

    def _plain(self, value: Any, where: str) -> Any:
        """A value typed `Any`: lists become tuples, {"base64": ...} bytes."""
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, list):
            return tuple(self._plain(item, where) for item in value)
        if isinstance(value, dict):
            if set(value) == {"base64"}:
                return self._bytes(value, where)
            _refuse_summary(value)
            raise Unreadable(f"{where}: unexpected object {sorted(value)}")
        return value

    def _bytes(self, value: Any, where: str) -> bytes:
        if isinstance(value, dict) and set(value) == {"base64"} \
                and isinstance(value["base64"], str):
            try:
                return base64.b64decode(value["base64"], validate=True)
            except ValueError:
                pass
        raise Unreadable(f"{where}: expected {{\"base64\": ...}}, got {_shape(value)}")

    def _text(self, value: str) -> str:
        cut = _CUT_SHORT.search(value)
        if (cut is not None and cut.start() == STRING_SUMMARY_CHARS
                and int(cut.group(1)) > STRING_SUMMARY_CHARS):
            raise Summarised
        if REDACTED in value:
            self.redacted += 1
        return value


def _refuse_summary(value: Any) -> None:
    if isinstance(value, dict) and set(value) == {"items"} and type(value["items"]) is int:
        raise Summarised


def _fits(value: Any, option: type) -> bool:
    if isinstance(value, bool):
        return option is bool
    if option is float:
        return isinstance(value, (int, float))
    return isinstance(value, option)


def _shape(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- answers as the log holds them ------------------------------------------------------


def as_logged(value: Any) -> Any:
    """`value` in the JSON form `payload: full` logs it in (to compare with a record)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (tuple, list)):
        return [as_logged(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_logged(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def compared(message: Message, answer: Any) -> tuple[str, ...]:
    """The parts of an answer that a faithful replay reproduces exactly."""
    match answer:
        case ChunkResult():
            return ("last", "scanned", "processed", "exhausted")
        case SyncBatchResult():
            return ("rows", "rejects")
        case WriteResult() if isinstance(message, StartSyncRun):
            # The run's id: every batch of the run names it.
            return ("last_rowid",)
        case WriteResult() if _counts_changes(message):
            return ("changes",)
        case FtsRestoreResult() | FtsDeferralView():
            return ("tables",)
        case None if isinstance(message, (DeferFts, UpdateFtsDeferral)):
            return ("tables",)
        case _:
            return ()


def _counts_changes(message: Message) -> bool:
    # After a statement that is not INSERT, UPDATE or DELETE, SQLite's change
    # count is the last such statement's, which a group commit may not share.
    if isinstance(message, Execute):
        return _is_dml(message.sql)
    if isinstance(message, ExecuteBatch):
        return all(_is_dml(s.sql) for s in message.statements)
    return True


def _is_dml(sql: str) -> bool:
    words = sql.split(None, 1)
    return bool(words) and words[0].lower() in _DML
