"""`sqlwarden replay LOG --timeline` and `--follow`: one line per record.

`timeline_line` writes a record as one line; `follow` tails the live file
like `tail -f`, reading it in blocks and following it through rotations.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlwarden.errors import ReplayError
from sqlwarden.msglog.log import file_last_seq
from sqlwarden.msglog.log import log_files as rotated_files
from sqlwarden.replay.read import (
    MAX_LINE_BYTES,
    Damaged,
    Record,
    cut,
    first_seq,
    parse_line,
    read_records,
    too_long,
)

_FOLLOW_BLOCK = 1 << 20
_ARROWS = {"tell": "->", "ask": "=>", "reply": "<-", "error": "<!"}
_FIELD_CHARS = 160


def timeline_line(record: Record) -> str:
    """One record as a line: time, seq, run, what went where, fields, duration."""
    kind = record["kind"]
    ts = str(record.get("ts", ""))
    clock = ts[11:26] if len(ts) >= 26 else ts
    fields = record.get("fields") or {}
    text = cut(json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str),
               _FIELD_CHARS)
    line = (f"{clock} {record['seq']:>8} {kind:<5} {record.get('sender', '?'):>9} "
            f"{_ARROWS.get(kind, '--')} {record.get('receiver', '?'):<9} "
            f"{record.get('message', '?')} #{record.get('corr')}")
    if kind in ("reply", "error") and record.get("duration_ms") is not None:
        line += f" {record['duration_ms']:.3f}ms"
    if kind == "error":
        error = record.get("error") or {}
        return f"{line} {error.get('type')}: {error.get('message')}"
    return f"{line} {text}" if fields else line


def follow(base: Path, emit: Callable[[Record | Damaged], None], *, last: int = 10,
           poll_s: float = 0.2, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Like `tail -f`: the last `last` records of the live file, then each new one.

    The file is read in blocks, so memory stays small whatever its size. On a
    rotation (the name now holds another, new file) the old file is read to
    its end first, then the new one from its start. Runs until `should_stop()`
    or Ctrl-C.
    """
    if not base.exists():
        raise ReplayError(f"{base}: no such message log")
    tail: deque[Record | Damaged] = deque(maxlen=last)
    reader = _LineReader(base)
    shown = 0  # the last seq emitted

    def show(item: Record | Damaged) -> None:
        nonlocal shown
        if isinstance(item, dict):
            shown = max(shown, item["seq"])
        emit(item)

    try:
        for item in reader.items():
            tail.append(item)
        for item in tail:
            show(item)
        while not should_stop():
            fresh = False
            for item in reader.items():
                show(item)
                fresh = True
            if fresh:
                continue
            if reader.replaced():
                for item in reader.items():  # what the old file got before it moved
                    show(item)
                reader.close()
                # Files rotated in and out since (more than one rotation between looks).
                for item in read_records(_newer_rotated(base, shown)):
                    if not isinstance(item, dict) or item["seq"] > shown:
                        show(item)
                reader = _LineReader(base)
                continue
            time.sleep(poll_s)
    finally:
        reader.close()


def _newer_rotated(base: Path, shown: int) -> list[Path]:
    """Rotated files of `base` that hold records after seq `shown`, oldest first."""
    newer: list[Path] = []
    for file in reversed(rotated_files(base)[:-1] if base.exists() else rotated_files(base)):
        last = file_last_seq(file)
        if last is not None and last <= shown:
            break  # this one and every older one was shown
        newer.insert(0, file)
        first = first_seq(file)
        if first is None or first <= shown:
            break
    return newer


class _LineReader:
    """Whole lines appended to one open file, read in blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.inode = os.fstat(self.handle.fileno()).st_ino
        self.pending = b""
        self.number = 0
        #: Inside a line longer than `MAX_LINE_BYTES`: read past up to its newline.
        self.skipping = False

    def items(self) -> Iterator[Record | Damaged]:
        while True:
            block = self.handle.read(_FOLLOW_BLOCK)
            if not block:
                return
            if self.skipping:
                cut = block.find(b"\n")
                if cut < 0:
                    continue
                block, self.skipping = block[cut + 1:], False
            *lines, self.pending = (self.pending + block).split(b"\n")
            for raw in lines:
                self.number += 1
                item = parse_line(raw, str(self.path), self.number, split=True)
                if item is not None:
                    yield item
            if len(self.pending) > MAX_LINE_BYTES:
                # A line that never ends (or is far too long) is not kept growing.
                self.number += 1
                self.pending, self.skipping = b"", True
                yield Damaged(str(self.path), self.number, self.handle.tell(), too_long(),
                              None)

    def replaced(self) -> bool:
        """Whether the name now holds another file (rotated) or a shorter one (truncated)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # between the rename and the new file; look again later
        return now.st_ino != self.inode or now.st_size < self.handle.tell()

    def close(self) -> None:
        self.handle.close()
