"""FTS5 tables as a database has them: their kind and the triggers that keep them in step.

`find_indexes` reads `sqlite_master`: every FTS5 table, what kind it is
(external content, contentless, or holding its own copy of the text), and
the triggers that maintain it, whoever created them (this engine, another
tool, a person). A trigger that does more than index (it writes other
tables) is never taken for FTS upkeep, so deferral never drops it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import apsw

#: Objects the controller creates while a table is deferred start with this.
CAPTURE_PREFIX = "_sw_fts_"

_ID = r'(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[A-Za-z_][\w$]*)'
_TRIGGER_HEAD = re.compile(
    rf"\s*CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?:{_ID}\s*\.\s*)?{_ID}\s+(?:(?:BEFORE|AFTER|INSTEAD\s+OF)\s+)?"
    rf"(?P<event>DELETE|INSERT|UPDATE(?:\s+OF\s+{_ID}(?:\s*,\s*{_ID})*)?)\s+"
    rf"ON\s+(?:{_ID}\s*\.\s*)?{_ID}\s*", re.IGNORECASE)
# Tokens of a trigger body: string literals (skipped), identifiers, anything else.
_TOKENS = re.compile(rf"'(?:[^']|'')*'|(?P<id>{_ID})|\S", re.IGNORECASE)
_WRITE_VERBS = {"insert", "replace", "delete", "update"}


# --- what a database has ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    name: str
    table: str
    event: str  # insert, delete or update
    sql: str

    @property
    def body(self) -> str:
        """Everything after `ON <table>` (comments removed): FOR EACH ROW, WHEN and the
        BEGIN..END block. Empty when the header could not be read."""
        text = strip_comments(self.sql)
        match = _TRIGGER_HEAD.match(text)
        return text[match.end():] if match else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsIndex:
    """One FTS5 table and the triggers that maintain it."""

    name: str
    #: `external` (content=), `contentless` (content='') or `own` (it stores the text).
    kind: str
    source: str | None
    triggers: tuple[Trigger, ...]
    #: Why its triggers cannot be deferred, if they cannot.
    problem: str | None = None
    #: The source table has a rowid, so changed rows can be found by rowid.
    has_rowid: bool = True
    #: External content whose one insert trigger copies the columns as they are, so
    #: FTS5's own 'rebuild' gives exactly what the triggers would.
    plain: bool = False
    #: The `content=` table (None: none given; "" for contentless).
    content: str | None = None
    #: `content_rowid=` as written (None: the rowid).
    content_rowid: str | None = None
    #: The indexed columns as declared, `UNINDEXED` kept (`"note UNINDEXED"`).
    columns: tuple[str, ...] = ()
    #: `tokenize=` as written (None: FTS5's default, unicode61).
    tokenize: str | None = None

    @property
    def incremental(self) -> bool:
        """Changed rows can be re-indexed alone: there are insert and delete triggers."""
        events = {t.event for t in self.triggers}
        return self.has_rowid and {"insert", "delete"} <= events


def find_indexes(conn: apsw.Connection) -> tuple[FtsIndex, ...]:
    """Every FTS5 table in the main database, with its maintaining triggers."""
    fts_tables = [(name, sql) for name, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
        "AND sql LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name")
        if _module(sql) == "fts5"]
    # Creation order (rowid): SQLite fires the newest trigger first, so the
    # snapshot must recreate them in the order they were made.
    triggers = [Trigger(name=name, table=tbl, event=trigger_event(sql), sql=sql)
                for name, tbl, sql in conn.execute(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
                    "ORDER BY rowid")
                if not name.lower().startswith(CAPTURE_PREFIX)]
    return tuple(_index(conn, name, sql, triggers) for name, sql in fts_tables)


def _index(conn: apsw.Connection, name: str, sql: str, triggers: list[Trigger]) -> FtsIndex:
    args = _fts_args(sql)
    options = _fts_options(args)
    content = options.get("content")
    kind = "own" if content is None else "contentless" if content == "" else "external"
    mine: list[Trigger] = []
    problem = None
    for trigger in triggers:
        if not trigger.event:
            # A header this module cannot read: never leave it live beside a
            # deferral, nor drop what it cannot recreate faithfully.
            if name.lower() in _written_tables(strip_comments(trigger.sql)) and problem is None:
                problem = f"trigger {trigger.name} could not be read"
            continue
        written = _written_tables(trigger.body)
        if name.lower() not in written:
            continue
        mine.append(trigger)
        others = written - {name.lower()}
        if others and problem is None:
            problem = (f"trigger {trigger.name} also writes to {', '.join(sorted(others))}; "
                       "dropping it would lose more than index updates")
    sources = sorted({t.table for t in mine})
    source = sources[0] if len(sources) == 1 else None
    if problem is None:
        if not mine:
            problem = "no triggers maintain it"
        elif len(sources) > 1:
            problem = f"it is maintained from several tables ({', '.join(sources)})"
        elif not any(t.event == "insert" for t in mine):
            problem = "no insert trigger maintains it, so it could not be rebuilt"
    has_rowid = True
    if source is not None:
        row = conn.execute("SELECT type, wr FROM pragma_table_list WHERE schema = 'main' "
                           "AND name = ?", (source,)).fetchone()
        if row is None or row[0] != "table":
            problem = problem or f"its triggers are on {source}, which is not an ordinary table"
        else:
            has_rowid = not row[1]
    inserts = [t for t in mine if t.event == "insert"]
    plain = (kind == "external" and source is not None and content is not None
             and content.lower() == source.lower() and len(inserts) == 1
             and copied_columns(inserts[0].body, name,
                                rowid_names(conn, source, options.get("content_rowid")))
             is not None)
    columns = tuple(" ".join(_unquote(word) for word in arg.split())
                    for arg in args if "=" not in arg and arg.strip())
    return FtsIndex(name=name, kind=kind, source=source, triggers=tuple(mine), problem=problem,
                    has_rowid=has_rowid, plain=plain, content=content,
                    content_rowid=options.get("content_rowid"), columns=columns,
                    tokenize=options.get("tokenize"))


_ROWID_NAMES = ("rowid", "oid", "_rowid_")


def rowid_names(conn: apsw.Connection, table: str, content_rowid: str | None) -> set[str]:
    """Lower-cased names under which a row of `table` gives the FTS rowid: `content_rowid`
    and, when that is the rowid or its INTEGER PRIMARY KEY alias, every name of the rowid."""
    wanted = (content_rowid or "rowid").lower()
    pk = [(name, kind) for name, kind, key in conn.execute(
        "SELECT name, type, pk FROM pragma_table_info(?)", (table,)) if key]
    alias = pk[0][0].lower() if len(pk) == 1 and pk[0][1].upper() == "INTEGER" else None
    if wanted in _ROWID_NAMES or wanted == alias:
        return {*_ROWID_NAMES, *([alias] if alias else [])}
    return {wanted}


_PLAIN_INSERT = re.compile(
    rf"\s*(?:FOR\s+EACH\s+ROW\s+)?BEGIN\s+INSERT\s+INTO\s+(?:{_ID}\s*\.\s*)?(?P<fts>{_ID})"
    rf"\s*\((?P<cols>[^()]*)\)\s*VALUES\s*\((?P<vals>[^()]*)\)\s*;\s*END\s*$",
    re.IGNORECASE)


def copied_columns(body: str, fts: str, rowids: set[str]) -> tuple[str, ...] | None:
    """The columns (lower-cased) an insert trigger of the shape `BEGIN INSERT INTO fts
    (rowid, a, b) VALUES (new.<id>, new.a, new.b); END` copies (no WHEN, nothing
    computed: the shape whose index FTS5's 'rebuild' reproduces); None for any other
    shape. `rowids` are the names the row's FTS rowid may be read by."""
    match = _PLAIN_INSERT.match(body)
    if match is None or _unquote(match["fts"]).lower() != fts.lower():
        return None
    cols = [_unquote(c.strip()).lower() for c in match["cols"].split(",")]
    vals = [v.strip() for v in match["vals"].split(",")]
    if len(cols) != len(vals) or "rowid" not in cols:
        return None
    for col, val in zip(cols, vals, strict=True):
        prefix, dot, name = val.partition(".")
        if prefix.strip().lower() != "new" or not dot:
            return None
        read = _unquote(name.strip()).lower()
        if read not in (rowids if col == "rowid" else {col}):
            return None
    return tuple(c for c in cols if c != "rowid")


def _module(sql: str) -> str | None:
    match = re.search(r"\bUSING\s+(\w+)", sql, re.IGNORECASE)
    return match.group(1).lower() if match else None


def _fts_args(sql: str) -> list[str]:
    """The arguments of `CREATE VIRTUAL TABLE ... USING fts5(...)`, as written."""
    using = re.search(r"\bUSING\s+\w+\s*\(", sql, re.IGNORECASE)
    if using is None:
        return []
    args, depth, quote_char, current = [], 0, "", ""
    for ch in sql[using.end():]:
        if quote_char:
            current += ch
            if ch == quote_char:
                quote_char = ""
        elif ch in "'\"`[":
            quote_char = "]" if ch == "[" else ch
            current += ch
        elif ch == "(":
            depth += 1
            current += ch
        elif ch == ")" and depth == 0:
            break
        elif ch == ")":
            depth -= 1
            current += ch
        elif ch == "," and depth == 0:
            args.append(current)
            current = ""
        else:
            current += ch
    args.append(current)
    return args


def _fts_options(args: list[str]) -> dict[str, str]:
    """The `key=value` arguments among `args`, keys lower-cased, values unquoted."""
    options = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq:
            options[key.strip().lower()] = _unquote(value.strip())
    return options


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in "'\"`[":
        inner = text[1:-1]
        return inner.replace(text[0] * 2, text[0]) if text[0] != "[" else inner
    return text


def trigger_event(sql: str) -> str:
    """`insert`, `update` or `delete`: what fires a trigger ("" when it cannot be read)."""
    match = _TRIGGER_HEAD.match(strip_comments(sql))
    return match.group("event").split()[0].lower() if match else ""


_COMMENTS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])"""
                       r"|--[^\n]*|/\*.*?(?:\*/|$)", re.DOTALL)


def strip_comments(sql: str) -> str:
    """`sql` with its comments replaced by a space; literals and quoted names kept."""
    return _COMMENTS.sub(lambda m: m.group(1) or " ", sql)


def _written_tables(body: str) -> set[str]:
    """Tables a trigger body inserts into, deletes from or updates."""
    # (lower-cased identifier, or "" for a literal or punctuation, raw text)
    tokens = [(_unquote(m.group("id")).lower() if m.group("id") else "", m.group(0))
              for m in _TOKENS.finditer(body)]
    out = set()
    for i, (word, _) in enumerate(tokens):
        if word not in _WRITE_VERBS:
            continue
        j = i + 1
        # INSERT OR IGNORE INTO t / DELETE FROM t / UPDATE OR ABORT t
        while j < len(tokens) and tokens[j][0] in ("or", "rollback", "abort", "fail", "ignore",
                                                   "replace", "into", "from"):
            j += 1
        if j + 2 < len(tokens) and tokens[j + 1][1] == "." and tokens[j + 2][0]:
            j += 2  # schema-qualified
        if j < len(tokens) and tokens[j][0]:
            out.add(tokens[j][0])
    return out


def scalar(conn: apsw.Connection, sql: str, *params: Any) -> Any:
    """The first column of the first row (None when there is none)."""
    row = conn.execute(sql, params).fetchone()
    return row[0] if row is not None else None


