"""What every hostile-input test checks, in one place.

A hostile input (a config, a record, an upstream's answer, a request, an
argument) must end in the documented exit code with one line naming the
problem, no traceback, nothing created, changed or removed, bounded memory and
no secret anywhere. These helpers make each of those one call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import apsw

ROOT = Path(__file__).resolve().parents[2]

#: The password hostile tests put in the environment; it must never be found anywhere.
SECRET = "pw-Hostile-7f3a9c2e"


@dataclass(frozen=True, slots=True)
class Ran:
    """A finished `sqlwarden` subprocess and the most memory it held."""

    returncode: int
    stdout: str
    stderr: str
    peak_mb: float


def run_bounded(*args: str | Path, cwd: Path = ROOT, env: Mapping[str, str] | None = None,
                timeout_s: float = 120, address_space_mb: int | None = None) -> Ran:
    """Run `sqlwarden ARGS` and measure its peak resident memory.

    With `address_space_mb`, the child also runs under `ulimit -v` of that size,
    so a command that tries to hold too much fails instead of swapping the
    machine (use it for commands that start no engine threads, whose stacks and
    malloc arenas take address space they never touch).

    The command is started by a small Python parent of its own: Linux counts the
    memory of the process a child was forked from in the child's peak (up to its
    exec), and the test process is large.
    """
    full_env = {**os.environ, **(env or {})}
    limit = "" if address_space_mb is None else str(address_space_mb * 1024 * 1024)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, limit, str(timeout_s), sys.executable,
             "-m", "sqlwarden", *map(str, args)],
            cwd=cwd, env=full_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            timeout=timeout_s + 30, check=False)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    # The probe's report is the last line on stdout, after everything the command wrote.
    stdout, _, report = stdout.rpartition(_REPORT)
    if probe.returncode != 0 or not report:
        raise AssertionError(f"the probe failed: {stderr[-2000:]}")
    code, peak_kb = (int(x) for x in report.split())
    if code == _TIMED_OUT:
        raise TimeoutError(f"sqlwarden {' '.join(map(str, args))} ran over {timeout_s}s")
    return Ran(code, stdout, stderr, peak_kb / 1024)


_TIMED_OUT = -999
_REPORT = "\x00sqlwarden-probe "

#: Runs argv[3:] (address-space limit argv[1], timeout argv[2]) and writes its exit code
#: and peak RSS in KiB after `_REPORT` on stdout. Small itself, so the peak is the child's.
_PROBE = f"""
import os, resource, sys, time
limit, timeout = sys.argv[1], float(sys.argv[2])
pid = os.fork()
if pid == 0:
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    os.execv(sys.argv[3], sys.argv[3:])
deadline = time.monotonic() + timeout
while True:
    got, status, usage = os.wait4(pid, os.WNOHANG)
    if got == pid:
        code = os.waitstatus_to_exitcode(status)
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        _, status, usage = os.wait4(pid, 0)
        code = {_TIMED_OUT}
        break
    time.sleep(0.01)
sys.stdout.write({_REPORT!r} + "%d %d" % (code, usage.ru_maxrss))
"""


def assert_refused(done: Ran | subprocess.CompletedProcess[str], code: int,
                   *words: str) -> str:
    """`done` exited `code` with one stderr line holding every word, no traceback; the line."""
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-2000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


#: What a path is, without following it: a file's bytes, a link's target, a folder.
Entry = tuple[str, bytes | str | None, int]


def snapshot(root: Path) -> dict[str, Entry]:
    """Everything below `root` (links not followed), to prove nothing was created or changed."""
    seen: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path), info.st_mode)
            elif path.is_dir():
                seen[rel] = ("dir", None, info.st_mode)
            elif path.is_file():
                seen[rel] = ("file", path.read_bytes(), info.st_mode)
            else:
                seen[rel] = ("other", None, info.st_mode)
    return seen


def assert_no_secret(secret: str, *, texts: Iterable[str] = (),
                     under: Iterable[Path] = (), databases: Iterable[Path] = ()) -> None:
    """`secret` appears in none of `texts`, no file below `under`, no row of `databases`."""
    needle = secret.encode()
    for text in texts:
        assert secret not in text, "secret found in output"
    for root in under:
        for path in ([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if path.suffix == ".gz":
                    import gzip

                    data = gzip.decompress(data)
                assert needle not in data, f"secret found in {path}"
    for db in databases:
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            names = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'")]
            for name in names:
                quoted = '"' + name.replace('"', '""') + '"'
                for row in conn.execute(f"SELECT * FROM {quoted}"):
                    for value in row:
                        if isinstance(value, str):
                            assert secret not in value, f"secret found in table {name}"
                        elif isinstance(value, bytes):
                            assert needle not in value, f"secret found in table {name}"
        finally:
            conn.close()
