"""`At`: one value of the parsed YAML document with its key path, and typed getters.

Every section reads its keys through `At`, so a wrong value fails the same way
wherever it is: a `ConfigError` that names the file, the line and the dotted
key path, and says what was expected and what was found. Also here: `optional`
(a key's value or its default), `converted` (the values of a section's keys
at once), `hint` (a "did you mean" for a misspelt name) and durations (`30s`,
`2m`, `8h`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlwarden.config.yamldoc import Document, KeyPath
from sqlwarden.db.sql import is_identifier
from sqlwarden.errors import ConfigError

#: What a name from the config may look like (see `sqlwarden.db.sql.is_identifier`).
NAME_RULES = ("use letters, digits and underscores, start with a letter or underscore, at most "
              "64 characters, and no 'sqlite_' or '_sw_' prefix")
#: The largest integer any setting takes: what SQLite stores in 64 bits.
MAX_INTEGER = 2**63 - 1
#: The largest number any setting takes; each setting has a range of its own within it.
MAX_NUMBER = 1e15
#: The longest duration any setting takes (a year).
MAX_DURATION_S = 366 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def hint(word: str, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when one of `options` is close to `word`, else ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def optional(keys: Mapping[str, At], key: str, convert: Callable[[At], Any],
             default: Any) -> Any:
    """`convert` of the value at `key` when the mapping has it, else `default`."""
    return convert(keys[key]) if key in keys else default


def converted(keys: Mapping[str, At],
              convert: Mapping[str, Callable[[At], Any]]) -> dict[str, Any]:
    """`convert[key]` of each key in `keys`, by key, converted in `convert`'s order.

    A key that is not there is left out, so a dataclass built from the result
    keeps its own default for it: a section reads as a table of its keys.
    """
    return {key: convert_one(keys[key]) for key, convert_one in convert.items() if key in keys}


def _seconds_text(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{kind} {'.nan' if math.isnan(value) else ('-' if value < 0 else '') + '.inf'}"
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return f"{kind} {shown}"
    return kind


class At:
    """A value in the document with its key path; typed accessors raise `ConfigError`."""

    __slots__ = ("doc", "path", "value")

    def __init__(self, doc: Document, path: KeyPath, value: Any) -> None:
        self.doc = doc
        self.path = path
        self.value = value

    def error(self, message: str) -> ConfigError:
        return self.doc.error(self.path, message)

    def child(self, key: str | int) -> At:
        value = None
        if isinstance(self.value, dict):
            value = self.value.get(key)
        elif isinstance(self.value, list) and isinstance(key, int):
            value = self.value[key]
        return At(self.doc, (*self.path, key), value)

    def _expect(self, what: str) -> ConfigError:
        return self.error(f"expected {what}, got {_describe(self.value)}")

    def mapping(self, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, At]:
        if not isinstance(self.value, dict):
            raise self._expect("a mapping")
        allowed = tuple(allowed)
        for key in self.value:
            if key not in allowed:
                raise self.child(key).error(
                    f"unknown key {key!r}{hint(key, allowed)}; expected one of: "
                    + ", ".join(allowed))
        for key in required:
            if key not in self.value:
                raise self.error(f"missing required key {key!r}")
        return {key: self.child(key) for key in self.value}

    def mapping_value(self, key: str) -> At | None:
        if not isinstance(self.value, dict):
            raise self._expect("a mapping")
        return self.child(key) if key in self.value else None

    def named_items(self, what: str) -> list[tuple[str, At]]:
        """Entries of a mapping whose keys are identifiers (`tables`, `columns`)."""
        if not isinstance(self.value, dict):
            raise self._expect(f"a mapping of {what} names to their settings")
        seen: dict[str, str] = {}
        items = []
        for key in self.value:
            at = self.child(key)
            if not is_identifier(key):
                raise at.error(f"{what} name {key!r} is not allowed: {NAME_RULES}")
            if key.lower() in seen:
                raise at.error(f"{what} name {key!r} differs from {seen[key.lower()]!r} only "
                               "in case; SQL names are case-insensitive")
            seen[key.lower()] = key
            items.append((key, at))
        return items

    def sequence(self) -> list[At]:
        if not isinstance(self.value, list):
            raise self._expect("a list")
        return [self.child(i) for i in range(len(self.value))]

    def string(self) -> str:
        if not isinstance(self.value, str):
            raise self._expect("text")
        return self.value

    def identifier(self, what: str) -> str:
        value = self.string()
        if not is_identifier(value):
            raise self.error(f"{what} {value!r} is not allowed: {NAME_RULES}")
        return value

    def column_names(self, known: list[str]) -> tuple[str, ...]:
        values = [self.value] if isinstance(self.value, str) else self.value
        if not isinstance(values, list) or not values:
            raise self._expect("a column name or a non-empty list of column names")
        names: list[str] = []
        for i, name in enumerate(values):
            at = self if isinstance(self.value, str) else self.child(i)
            if not isinstance(name, str):
                raise at._expect("a column name")
            if name not in known:
                raise at.error(f"unknown column {name!r}{hint(name, known)}")
            if name in names:
                raise at.error(f"column {name!r} is listed twice")
            names.append(name)
        return tuple(names)

    def integer(self, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer in [minimum, maximum]; never past what SQLite stores (64 bits)."""
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self._expect("an integer")
        self._within("an integer", -MAX_INTEGER if minimum is None else minimum,
                     MAX_INTEGER if maximum is None else min(maximum, MAX_INTEGER))
        return self.value

    def number(self, minimum: float | None = None, maximum: float | None = None) -> float:
        """A finite number in [minimum, maximum]: `.nan` and `.inf` are refused everywhere."""
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise self._expect("a number")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise self.error(f"expected a finite number, got {_describe(self.value)}")
        self._within("a number", -MAX_NUMBER if minimum is None else minimum,
                     MAX_NUMBER if maximum is None else min(maximum, MAX_NUMBER))
        return float(self.value)

    def _within(self, what: str, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and self.value < minimum:
            raise self.error(f"expected {what} of at least {minimum}, got {self.value}")
        if maximum is not None and self.value > maximum:
            raise self.error(f"expected {what} of at most {maximum}, got {self.value}")

    def duration(self, minimum: float = 0.0, maximum: float = MAX_DURATION_S) -> float:
        """Seconds, from a number or text such as `500ms`, `30s`, `2m`, `8h` or `1d`;
        finite and at most `maximum` (a year unless less), so a timer can always be set."""
        value = self.value
        if isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if match is None:
                raise self.error(f"expected a duration such as 30s, 2m, 8h or 1d, got "
                                 f"{_describe(value)}")
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        elif isinstance(value, float) and math.isnan(value):
            raise self.error(f"expected a duration, got {_describe(value)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value) if abs(value) <= MAX_NUMBER else math.inf
        else:
            raise self._expect("a duration (seconds, or text such as 30s, 2m, 8h)")
        shown = _describe(value)
        if seconds < minimum:
            raise self.error(f"expected a duration of at least {minimum:g}s, got {shown}")
        maximum = min(maximum, MAX_DURATION_S)
        if seconds > maximum:
            raise self.error(f"expected a duration of at most {_seconds_text(maximum)}, got "
                             f"{shown}")
        return seconds

    def scalar(self) -> str | int | float:
        if isinstance(self.value, bool) or not isinstance(self.value, (str, int, float)):
            raise self._expect("text or a number")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise self.error(f"expected a finite number, got {_describe(self.value)}")
        if isinstance(self.value, int) and abs(self.value) > MAX_INTEGER:
            raise self.error(f"expected an integer SQLite can store (64 bits), got "
                             f"{_describe(self.value)}")
        return self.value

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self._expect("true or false")
        return self.value

    def choice(self, options: tuple[str, ...]) -> str:
        if not isinstance(self.value, str) or self.value.lower() not in options:
            shown = _describe(self.value)
            suggestion = hint(self.value, options) if isinstance(self.value, str) else ""
            raise self.error(f"expected one of {', '.join(options)}; got {shown}{suggestion}")
        return self.value.lower()
