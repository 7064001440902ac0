"""The message log: one JSON line per message, appended by a dedicated thread.

Senders call `MessageLog.record()`, which only numbers the record and queues
it; messages are immutable, so the log thread can summarise, redact and
serialise them later without holding anyone up. Files rotate by size
(`messages.jsonl`, `messages.jsonl.1`, ... oldest last); `engine.replay`
reads them back in order.

The queue is bounded (`capacity` records): when the log thread falls behind,
a sender waits for room (at most `block_s`, counted as `blocked`); past that
the record is dropped and counted (`dropped`), and its sequence number is
left unused, so `replay --check` shows the gap. The log never takes the
engine down: an append that fails (a full disk, say) is undone to the last
whole line, its records are counted in `write_errors`, `waiting_for` says
why ("disk full"), and appending resumes by itself once it succeeds again.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import glob
import gzip
import itertools
import json
import os
import queue
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlwarden.config import MessageLogConfig
from sqlwarden.db.faults import wait_reason
from sqlwarden.redact import Redactor

#: Record kinds: a message sent without or with a reply expected, and how its
#: handling ended. Every handled message gets exactly one `reply` or `error`.
RECORD_KINDS = ("tell", "ask", "reply", "error")

#: Message fields that hold values bound to SQL; never logged in summary mode.
BOUND_VALUE_FIELDS = frozenset({"params", "rows"})
#: In summary mode a longer string is cut to this many characters plus "...(N chars)".
STRING_SUMMARY_CHARS = 200
_TAIL_BLOCK = 65536
_PARTIAL = ".partial"
_SEQUENCE_SUMMARY_ITEMS = 8
#: Records the queue holds before senders wait (each keeps its message alive).
QUEUE_CAPACITY = 10_000
#: How long a sender waits for room in a full queue before its record is dropped.
BLOCK_S = 2.0


class _Entry(NamedTuple):
    seq: int
    ts: float
    kind: str
    sender: str
    receiver: str
    message_kind: str
    payload: Any
    corr: int
    duration_ms: float | None
    error: BaseException | None


class MessageLog:
    """Appends message records to a rotating JSON-lines file from one thread."""

    def __init__(self, config: MessageLogConfig, path: Path, *, redactor: Redactor | None = None,
                 clock: Any = time.time, run: str | None = None,
                 capacity: int = QUEUE_CAPACITY, block_s: float = BLOCK_S) -> None:
        self._config = config
        self._path = path
        self._redactor = redactor or Redactor()
        self._clock = clock
        self._full = config.payload == "full"
        self._max_bytes = max(1024, int(config.max_mb * 1024 * 1024))
        self.capacity = capacity
        self._block_s = block_s
        self._queue: queue.Queue[_Entry] = queue.Queue(maxsize=capacity)
        # Flush and stop requests go beside the records, so they never wait for room.
        self._controls: queue.SimpleQueue[threading.Event | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        #: The engine's run id, also stored with the task rows it writes.
        self._run = run or os.urandom(4).hex()
        self._thread: threading.Thread | None = None
        self._compressor: threading.Thread | None = None
        self._file: Any = None
        #: Bytes of whole lines in the current file; a failed append is cut back to it.
        self._size = 0
        #: Lines serialised and not yet appended, and how many records they hold.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        #: Records that could not be appended (or serialised), and the last reason.
        self.write_errors = 0
        self.last_write_error: str | None = None
        #: What appending waits for while it fails ("disk full"); None once it works.
        self.waiting_for: str | None = None
        #: Sends that found the queue full and waited, and records dropped after waiting.
        self.blocked = 0
        self.dropped = 0
        self._accepting = False
        #: The file this log made (device, inode) and the folders made for it, so a
        #: refused start can take back what it made and nothing else (`discard_created`).
        self._created: tuple[int, int] | None = None
        self._created_dirs: list[Path] = []

    @property
    def path(self) -> Path:
        return self._path

    @property
    def queued(self) -> int:
        """Records waiting for the log thread (each keeps its message alive)."""
        return self._queue.qsize()

    def stats(self) -> dict[str, Any]:
        """The queue and the appends, as status shows them."""
        return {"enabled": True, "queued": self.queued, "capacity": self.capacity,
                "blocked": self.blocked,
                "dropped": self.dropped, "write_errors": self.write_errors,
                "last_write_error": self.last_write_error, "waiting_for": self.waiting_for}

    def start(self) -> None:
        """Open the file and start the log thread; sequence numbers continue the file's."""
        folder = self._path.parent
        while not os.path.lexists(folder):
            self._created_dirs.append(folder)
            folder = folder.parent
        self._path.parent.mkdir(parents=True, exist_ok=True)
        for partial in self._path.parent.glob(f"{glob.escape(self._path.name)}.*{_PARTIAL}"):
            partial.unlink()  # a compression cut short by a stop; its plain file is there
        self._seq = itertools.count(_last_seq(self._path) + 1)
        try:
            self._open()
        except OSError as exc:  # a full disk, say: the log thread tries again
            self._failed(exc, 0)
        self._thread = threading.Thread(target=self._run_loop, name="sqlwarden-msglog",
                                        daemon=True)
        self._accepting = True
        self._thread.start()

    def record(self, kind: str, sender: str, receiver: str, message_kind: str, payload: Any,
               corr: int, *, duration_ms: float | None = None,
               error: BaseException | None = None) -> int:
        """Queue one record; returns its sequence number. Called from any thread.

        Waits (at most `block_s`) while the queue is full; a record that still
        finds no room is dropped and counted, never queued without bound.
        """
        # Numbered and queued under one lock, so the file is in sequence order.
        with self._lock:
            seq = next(self._seq)
            entry = _Entry(seq, self._clock(), kind, sender, receiver, message_kind,
                           payload, corr, duration_ms, error)
            if not self._accepting:  # closed (or never started): nobody would write it
                self.dropped += 1
                return seq
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                self.blocked += 1
                try:
                    self._queue.put(entry, timeout=self._block_s)
                except queue.Full:
                    self.dropped += 1
                    return seq
        self._wake.set()
        return seq

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything recorded so far is written to the file."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._controls.put(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file."""
        with self._lock:
            self._accepting = False
        if self._thread is not None:
            self._controls.put(None)
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self._wait_compressor()

    # --- log thread ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        while True:
            self._wake.wait()
            # Cleared before draining: whatever is queued after this sets it again.
            self._wake.clear()
            stop = False
            # Everything queued by now, so one append covers many records.
            while True:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                try:
                    self._write(entry)
                except Exception as exc:  # the log thread must outlive any one record
                    self._failed(exc, 1)
            try:
                self._append()
            except Exception as exc:
                self._failed(exc, 0)
            while True:
                try:
                    control = self._controls.get_nowait()
                except queue.Empty:
                    break
                if control is None:
                    stop = True
                else:
                    control.set()
            if stop:
                return

    def _write(self, entry: _Entry) -> None:
        """Serialise one record into the pending lines, rotating first if it would not fit."""
        try:
            line = json.dumps(self._to_record(entry), ensure_ascii=False,
                              separators=(",", ":"), default=str) + "\n"
        except Exception as exc:  # a value that cannot be shown; the others go on
            self.write_errors += 1
            self.last_write_error = f"{type(exc).__name__}: {exc}"
            return
        data = line.encode("utf-8")
        if self._size + self._pending_bytes and \
                self._size + self._pending_bytes + len(data) > self._max_bytes:
            self._append()
            try:
                if self._file is None or self._file.closed:
                    self._open()
                if self._size:
                    self._rotate()
            except OSError as exc:
                self._failed(exc, 0)
        self._pending.append(data)
        self._pending_bytes += len(data)

    def _append(self) -> None:
        """Append the pending lines in one go; on failure cut the file back to whole lines."""
        if not self._pending:
            return
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        data = memoryview(b"".join(lines))
        try:
            if self._file is None or self._file.closed:
                self._open()  # it could not be (re)opened before; try again
            written = 0
            while written < len(data):
                written += self._file.write(data[written:]) or 0
        except (OSError, ValueError) as exc:  # ValueError: a file closed under it
            self._cut_back()
            self._failed(exc, len(lines))
            return
        self._size += len(data)
        self.waiting_for = None

    def _cut_back(self) -> None:
        """Undo a partial append, so the next record starts on a line of its own."""
        try:
            if self._file is not None and not self._file.closed:
                os.ftruncate(self._file.fileno(), self._size)
        except OSError:
            # It stays torn: a reader skips the cut line (and says so).
            self._file.close()

    def _failed(self, exc: BaseException, records: int) -> None:
        self.write_errors += records
        reason = wait_reason(exc, path=self._path)
        self.waiting_for = reason
        text = f"{type(exc).__name__}: {exc}"
        self.last_write_error = f"{reason}: {text}" if reason else text

    def _to_record(self, entry: _Entry) -> dict[str, Any]:
        record: dict[str, Any] = {
            "seq": entry.seq,
            "ts": datetime.fromtimestamp(entry.ts, UTC).isoformat(timespec="microseconds"),
            "run": self._run,
            "kind": entry.kind,
            "sender": entry.sender,
            "receiver": entry.receiver,
            "message": entry.message_kind,
            "fields": self._fields(entry.payload),
            "corr": entry.corr,
        }
        if entry.duration_ms is not None:
            record["duration_ms"] = round(entry.duration_ms, 3)
        if entry.error is not None:
            record["error"] = {"type": type(entry.error).__name__,
                               "message": self._redactor.text(str(entry.error))}
        return record

    def _fields(self, payload: Any) -> Any:
        if payload is None:
            return {}
        if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
            return {f.name: self._field(f.name, getattr(payload, f.name))
                    for f in dataclasses.fields(payload)}
        return {"value": self._value(payload)}

    def _field(self, name: str, value: Any) -> Any:
        # Bound values are the sender's data (tokens, personal data): a summary
        # says how many there are; only `payload: full` records them.
        if not self._full and name in BOUND_VALUE_FIELDS and isinstance(value, tuple):
            return {"items": len(value)}
        return self._redactor.value(name, self._value(value))

    def _value(self, value: Any, depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            value = self._redactor.text(value)
            if not self._full and len(value) > STRING_SUMMARY_CHARS:
                return value[:STRING_SUMMARY_CHARS] + f"...({len(value)} chars)"
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            return ({"base64": base64.b64encode(raw).decode("ascii")} if self._full
                    else f"<{len(raw)} bytes>")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if depth > 3:
                return f"<{type(value).__name__}>"
            return {f.name: self._field(f.name, getattr(value, f.name))
                    for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            if self._full:
                return [self._value(v, depth + 1) for v in value]
            if len(value) <= _SEQUENCE_SUMMARY_ITEMS and all(
                    _plain(v) or (isinstance(v, tuple) and len(v) <= _SEQUENCE_SUMMARY_ITEMS
                                  and all(_plain(w) for w in v)) for v in value):
                # Short, and plain values or short tuples of them (name/value pairs
                # such as a task's saved fields): shown as they are.
                return [self._value(v, depth + 1) for v in value]
            return {"items": len(value)}
        if isinstance(value, dict):
            return {str(k): self._redactor.value(str(k), self._value(v, depth + 1))
                    for k, v in value.items()}
        return self._redactor.text(repr(value))

    def discard_created(self) -> None:
        """Remove the file and folders this log made, once closed: a refused start leaves
        nothing behind. A file that was there before, or that the path no longer names
        (it was rotated, or replaced), is left alone."""
        if self._thread is not None:
            return  # still open: `close` first
        if self._created is not None:
            with contextlib.suppress(OSError):
                now = os.lstat(self._path)
                if (now.st_dev, now.st_ino) == self._created:
                    self._path.unlink()
            self._created = None
        for folder in self._created_dirs:
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created_dirs = []

    def _open(self) -> None:
        # Never through a symbolic link (the config refuses one; this is for one put there
        # since): the log appends to, renames and removes its files.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self._path, flags)
        except FileNotFoundError:
            fd = os.open(self._path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            if self._created is None and self._thread is None:  # made by this start
                info = os.fstat(fd)
                self._created = (info.st_dev, info.st_ino)
        # Unbuffered: each append is one write the log controls, and can cut back.
        self._file = open(fd, "ab", buffering=0, closefd=True)  # noqa: SIM115 - kept open
        self._size = self._file.seek(0, os.SEEK_END)
        if self._size and not _ends_with_newline(self._path):
            # A line torn by a crash: end it, so the first record of this run is whole.
            self._file.write(b"\n")
            self._size += 1

    def _rotate(self) -> None:
        self._file.close()
        try:
            self._shift()
        except OSError as exc:
            self._failed(exc, 0)
        # Whatever failed, the log goes on in a file (or tries again at the next append).
        self._open()

    def _shift(self) -> None:
        # The last rotated file is compressed before the files move up one.
        self._wait_compressor()
        backups = self._config.backups
        if backups == 0:
            self._path.unlink(missing_ok=True)
        else:
            for suffix in ("", ".gz"):
                _rotated(self._path, backups, suffix).unlink(missing_ok=True)
            for i in range(backups - 1, 0, -1):
                for suffix in ("", ".gz"):
                    src = _rotated(self._path, i, suffix)
                    if src.exists():
                        src.rename(_rotated(self._path, i + 1, suffix))
            self._path.rename(_rotated(self._path, 1))
            if self._config.compress:
                self._compressor = threading.Thread(
                    target=self._compress, args=(_rotated(self._path, 1),),
                    name="sqlwarden-msglog-gzip", daemon=True)
                self._compressor.start()

    def _compress(self, path: Path) -> None:
        """`path` to `path.gz`; the plain file goes only once the whole .gz is in place
        (readers take the plain one while both exist)."""
        partial = path.with_name(path.name + ".gz" + _PARTIAL)
        try:
            with open(path, "rb") as source, open(partial, "wb") as raw:
                with gzip.open(raw, "wb", compresslevel=6) as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                raw.flush()
                os.fsync(raw.fileno())  # whole on disk before the plain file goes
            os.replace(partial, path.with_name(path.name + ".gz"))
            _fsync_folder(path.parent)
            path.unlink()
        except OSError as exc:  # the plain file stays, and is read as it is
            partial.unlink(missing_ok=True)
            self.write_errors += 1
            self.last_write_error = f"compressing {path.name}: {type(exc).__name__}: {exc}"

    def _wait_compressor(self) -> None:
        if self._compressor is not None:
            self._compressor.join()
            self._compressor = None


class NullMessageLog(MessageLog):
    """Numbers records and drops them: the log is switched off in config."""

    def start(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "enabled": False}

    def record(self, kind: str, sender: str, receiver: str, message_kind: str, payload: Any,
               corr: int, *, duration_ms: float | None = None,
               error: BaseException | None = None) -> int:
        return next(self._seq)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _rotated(path: Path, index: int, suffix: str = "") -> Path:
    return path.with_name(f"{path.name}.{index}{suffix}")


#: A rotated file of a log: `<base>.<n>`, or `<base>.<n>.gz` when compressed.
ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)(?P<gz>\.gz)?$")


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log's rotated files (plain or .gz), oldest first, then the current file."""
    base = Path(path)
    rotated: dict[int, Path] = {}
    if base.parent.is_dir():
        for candidate in base.parent.iterdir():
            match = ROTATED.match(candidate.name)
            if match and match["base"] == base.name:
                n = int(match["n"])
                # Both: the .gz is being written (or was, before a crash); the plain one
                # is whole.
                if n not in rotated or not match["gz"]:
                    rotated[n] = candidate
    files = [rotated[n] for n in sorted(rotated, reverse=True)]
    if base.is_file():
        files.append(base)
    return files


def _last_seq(path: Path) -> int:
    """The sequence number of the last complete record in the log at `path`, or 0."""
    for file in reversed(log_files(path)):
        seq = file_last_seq(file)
        if seq is not None:
            return seq
    return 0


def _seq_of(raw: bytes) -> int | None:
    try:
        seq = json.loads(raw)["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if type(seq) is int else None


def file_last_seq(file: Path) -> int | None:
    """The last record's seq, read backwards block by block (a record may be large)."""
    if file.suffix == ".gz":
        last = None
        try:
            with gzip.open(file, "rb") as compressed:
                for raw in compressed:
                    last = _seq_of(raw) or last
        except (OSError, EOFError):  # cut short (a power loss): what was read stands
            pass
        return last
    with open(file, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        #: The line being gathered, its pieces from last to first.
        pieces: list[bytes] = []
        while position > 0:
            step = min(_TAIL_BLOCK, position)
            position -= step
            handle.seek(position)
            block = handle.read(step)
            cut = len(block)
            while (newline := block.rfind(b"\n", 0, cut)) >= 0:
                seq = _seq_of(block[newline + 1:cut] + b"".join(reversed(pieces)))
                if seq is not None:
                    return seq
                pieces, cut = [], newline
            pieces.append(block[:cut])
        return _seq_of(b"".join(reversed(pieces)))  # the file's first line
