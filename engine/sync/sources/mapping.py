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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlwarden.config import FieldMap
from sqlwarden.views import Row

#: Raw text kept of a rejected record.
RAW_KEEP = 64 * 1024
_INTEGER = re.compile(r"[+-]?\d+")
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?")
_STAMP = _TIMESTAMP.fullmatch


class RecordRejected(ValueError):
    """A record that cannot become a row, with the reason."""


def _to_integer(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is float and value.is_integer():
        return int(value)
    if kind is str and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise ValueError("expected an integer")


def _to_real(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        result = float(value)
    elif kind is str:
        try:
            result = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    else:
        raise ValueError("expected a number")
    if not math.isfinite(result):
        raise ValueError("expected a finite number")
    return result


def _to_text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is int or kind is float:
        return str(value)
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
    if (kind is int or kind is float) and math.isfinite(value):
        moment = datetime.fromtimestamp(value, tz=UTC)
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
    if type(value) is bool:
        return int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "integer": _to_integer, "real": _to_real, "text": _to_text, "boolean": _to_boolean,
    "timestamp": _to_timestamp, "blob": _to_blob, "any": _to_any}
#: Python types that go into a column unchanged (a fast path; anything else is converted).
_EXACT = {"integer": int, "real": float, "text": str, "timestamp": str}


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
                stamps = self._stamps
                if not stamps:
                    return values
                if len(stamps) == 1:
                    if _STAMP(values[stamps[0]]) is not None:
                        return values
                elif all(_STAMP(values[i]) is not None for i in stamps):
                    return values
        return self._slow(record)

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
            except ValueError as exc:
                raise RecordRejected(f"field {'.'.join(spec.path)!r} (column {spec.column}): "
                                     f"{exc}, got {_shown(value)}") from None
        return tuple(row)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def raw_text(raw: bytes | str, length: int | None = None) -> str:
    """A rejected record as text, cut to `RAW_KEEP` bytes with a note saying so.

    `length` is the whole record's size when `raw` is only its start.
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    length = len(data) if length is None else length
    keep = data[:RAW_KEEP].decode("utf-8", "replace")
    if length > RAW_KEEP:
        keep += f"...[{length:,} bytes in all; the first {RAW_KEEP:,} kept]"
    return keep
