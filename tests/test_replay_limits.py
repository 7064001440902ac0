"""`replay` keeps its memory bounded whatever the log holds: an endless line is a damaged
line reported with its place, never read whole."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from .support.hostile import run_bounded

#: Larger than the reader's cap (32 MiB): the case that once peaked at 750 MiB.
HUGE_LINE_BYTES = 256 * 1024 * 1024


def record(seq: int) -> bytes:
    fields = {"seq": seq, "ts": "2026-12-04T10:00:00.000000+00:00", "kind": "tell",
              "sender": "facade", "receiver": "writer", "message": "writer.execute",
              "fields": {}, "corr": seq, "run": "r1"}
    return json.dumps(fields).encode() + b"\n"


def test_a_gzip_log_inflating_to_one_endless_line_is_read_in_bounded_memory(
        tmp_path: Path) -> None:
    log = tmp_path / "messages.jsonl.1.gz"
    piece = b"x" * (1 << 20)
    with gzip.open(log, "wb", compresslevel=1) as out:
        out.write(record(1))
        for _ in range(HUGE_LINE_BYTES // len(piece)):
            out.write(piece)
        out.write(b"\n")
        out.write(record(2))
    assert log.stat().st_size < 2 * 1024 * 1024  # small on disk, as an attacker's would be

    done = run_bounded("replay", log, "--json", timeout_s=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"] == 2
    assert summary["damaged"] == 1
    shown = json.dumps(summary)
    assert "longer than 33,554,432 bytes" in shown and ":2 " in shown
    # Far below the line's own size: it was never held whole.
    assert done.peak_mb < 200, f"replay peaked at {done.peak_mb:.0f} MB"
