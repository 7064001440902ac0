"""Records to rows: the `Mapper`, the conversion to each column type, and `raw_text`.

A record is a JSON object; `Mapper.row` takes each declared field from it
(along a dotted path), converts it to its column's logical type, and raises
`RecordRejected` with the reason when it cannot. A rejected record is kept in
`_sw_rejects` as `raw_text`, cut to `RAW_KEEP` bytes.
"""

from __future__ import annotations

import base64
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlwarden.config import FieldMap, TableConfig
from sqlwarden.views import Row

#: Raw text kept of a rejected record.
RAW_KEEP = 64 * 1024
_INTEGER = re.compile(r"[+-]?\d+")
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?")
_STAMP = _TIMESTAMP.fullmatch


class RecordRejected(ValueError):
    """A record that cannot become a row, with the reason."""


#: SQLite's integers are signed 64-bit; a wider one cannot be bound.
INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1
_OUT_OF_RANGE = "an integer outside signed 64 bits"
#: SQLite would store inf as a REAL and nan as NULL: neither is data the source meant.
_NOT_FINITE = "a non-finite number (inf or nan)"


def _int64(value: int) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise ValueError(_OUT_OF_RANGE)


def _finite(value: float) -> float:
    if math.isfinite(value):
        return value
    raise ValueError(_NOT_FINITE)


def unstorable(value: Any) -> str | None:
    """Why SQLite cannot store `value` as it is (None when it can).

    The same rules as the converters, for values that reach the Writer
    unconverted (a fast-path row, the generator's rows); the Writer names
    the column with it when binding a row fails.
    """
    kind = type(value)
    if kind is int:
        return None if INT_MIN <= value <= INT_MAX else _OUT_OF_RANGE
    if kind is float:
        return None if math.isfinite(value) else _NOT_FINITE
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"text holding a lone surrogate (U+{ord(value[exc.start]):04X}), which "
                    "cannot be stored as UTF-8")
    return None


def _to_integer(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return _int64(value)
    if kind is float:
        if value.is_integer():
            return _int64(int(value))
        _finite(value)
        raise ValueError("expected an integer, not a fraction")
    if kind is str and _INTEGER.fullmatch(value.strip()):
        return _int64(int(value))
    raise ValueError("expected an integer")


def _to_real(value: Any) -> float:
    kind = type(value)
    if kind is float:
        result = value
    elif kind is int:
        result = float(_int64(value))
    elif kind is str:
        try:
            result = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    else:
        raise ValueError("expected a number")
    return _finite(result)


def _to_text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is int:
        return str(_int64(value))
    if kind is float:
        return str(_finite(value))
    raise ValueError("expected text")


def _to_boolean(value: Any) -> int:
    if type(value) is bool:
        return int(value)
    if type(value) is int and value in (0, 1):
        return int(value)
    if type(value) is str and value.lower() in ("true", "false", "0", "1"):
        return int(value.lower() in ("true", "1"))
    raise ValueError("expected true or false")


def _to_timestamp(value: Any) -> str:
    kind = type(value)
    if kind is str and _TIMESTAMP.fullmatch(value):
        return str(value)
    if kind is int or kind is float:
        _finite(value)
        try:
            moment = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("a timestamp out of range") from None
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if moment.microsecond:
            text += f".{moment.microsecond:06d}"
        return text + "Z"
    raise ValueError("expected an ISO-8601 timestamp or Unix seconds")


def _to_blob(value: Any) -> bytes:
    if type(value) is str:
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise ValueError("expected base64 text")


def _to_any(value: Any) -> Any:
    kind = type(value)
    if kind is bool:
        return int(value)
    if kind is int:
        return _int64(value)
    if kind is float:
        return _finite(value)
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        except ValueError:
            raise ValueError(f"it holds {_NOT_FINITE}") from None
        except RecursionError:
            raise ValueError("it is nested too deeply") from None
    return value


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "integer": _to_integer, "real": _to_real, "text": _to_text, "boolean": _to_boolean,
    "timestamp": _to_timestamp, "blob": _to_blob, "any": _to_any}
#: Python types that go into a column unchanged (a fast path; anything else is converted).
_EXACT = {"integer": int, "real": float, "text": str, "timestamp": str}


def with_column_defaults(fields: tuple[FieldMap, ...],
                         table: TableConfig | None) -> tuple[FieldMap, ...]:
    """`fields`, where an optional field without a default of its own takes its column's.

    A record without the value then stores what SQLite gives a row that leaves
    the column out, rather than a NULL that a NOT NULL column refuses.
    """
    if table is None:
        return fields
    defaults = {c.name: c.default for c in table.columns if c.default is not None}
    return tuple(replace(f, default=defaults[f.column])
                 if f.default is None and not f.required and f.column in defaults else f
                 for f in fields)


class Mapper:
    """Turns a record (a JSON object) into a row of the source's columns, or rejects it."""

    def __init__(self, fields: tuple[FieldMap, ...]) -> None:
        self.fields = fields
        self.columns = tuple(f.column for f in fields)
        self._converters = [CONVERTERS[f.type] for f in fields]
        # Fast path: flat fields whose values come with the exact type the column
        # takes are taken as they are, in one C-level getter call.
        flat = all(len(f.path) == 1 for f in fields)
        exact = [_EXACT.get(f.type) for f in fields]
        self._fast: Callable[[dict[str, Any]], Any] | None = None
        if flat and all(exact) and fields:
            self._fast = operator.itemgetter(*(f.path[0] for f in fields))
            self._exact = tuple(exact)
            self._single = len(fields) == 1
            self._stamps = [i for i, f in enumerate(fields) if f.type == "timestamp"]
            # The fast path still looks at reals: SQLite would store inf (and nan as
            # NULL). An int past 64 bits cannot be bound: the Writer rejects that row.
            self._reals = tuple(i for i, f in enumerate(fields) if f.type == "real")

    def row(self, record: Any) -> Row:
        """The row for `record`; raises `RecordRejected` with the reason."""
        if type(record) is not dict:
            raise RecordRejected("the record is not a JSON object")
        if self._fast is not None:
            try:
                values = self._fast(record)
            except KeyError:
                return self._slow(record)
            if self._single:
                values = (values,)
            if tuple(map(type, values)) == self._exact:
                for i in self._reals:
                    if values[i] - values[i] != 0.0:  # inf - inf and nan - nan are nan
                        return self._slow(record)
                stamps = self._stamps
                if not stamps:
                    return values
                if len(stamps) == 1:
                    if _STAMP(values[stamps[0]]) is not None:
                        return values
                elif all(_STAMP(values[i]) is not None for i in stamps):
                    return values
        return self._slow(record)

    def value(self, record: Any, column: str) -> Any:
        """What `record` gives `column`, converted; None when it gives nothing usable.

        For a rejected record: its key and cursor may still be readable when
        another field is what spoiled it.
        """
        for spec, convert in zip(self.fields, self._converters, strict=True):
            if spec.column != column:
                continue
            value: Any = record
            for key in spec.path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                return None
            try:
                return convert(value)
            except (ValueError, OverflowError, RecursionError):
                return None
        return None

    def _slow(self, record: dict[str, Any]) -> Row:
        row = []
        for spec, convert in zip(self.fields, self._converters, strict=True):
            value: Any = record
            for key in spec.path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                if spec.required:
                    raise RecordRejected(f"field {'.'.join(spec.path)!r} (column "
                                         f"{spec.column}) is missing")
                row.append(spec.default)
                continue
            try:
                row.append(convert(value))
            except (ValueError, OverflowError) as exc:
                raise RecordRejected(f"field {'.'.join(spec.path)!r} (column {spec.column}): "
                                     f"{exc}, got {_shown(value)}") from None
        return tuple(row)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return storable(text if len(text) <= 40 else text[:37] + "...")


def storable(text: str) -> str:
    """`text` with any lone surrogate written as its escape, so UTF-8 (and SQLite) holds it."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def key_text(values: Sequence[Any]) -> str:
    """A record's key as JSON text, whatever its values (a lone surrogate, a blob, inf)."""
    # ASCII escapes keep a lone surrogate storable; a blob is shown as hex.
    return json.dumps(list(values), default=lambda v: v.hex() if isinstance(v, bytes)
                      else repr(v))


def raw_text(raw: bytes | str, length: int | None = None) -> str:
    """A rejected record as text, cut to `RAW_KEEP` bytes with a note saying so.

    `length` is the whole record's size when `raw` is only its start.
    """
    # A lone surrogate (from JSON's \ud800 escape) is kept as that escape: UTF-8 cannot hold it.
    data = raw.encode("utf-8", "backslashreplace") if isinstance(raw, str) else raw
    length = len(data) if length is None else length
    keep = data[:RAW_KEEP].decode("utf-8", "replace")
    if length > RAW_KEEP:
        keep += f"...[{length:,} bytes in all; the first {RAW_KEEP:,} kept]"
    return keep
