"""An engine with a mirror in its own process, for the crash test in test_mirror.py, and
the rows both use.

    python -m tests.support.mirror_driver CONFIG ROWS CHUNK

It starts the engine from the YAML config, waits for the mirror's first
reconcile, inserts rows 1..ROWS of `item` in transactions of CHUNK rows (a
line per transaction), says `inserted ROWS` and then runs until it is killed.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

#: Text that has tripped up encodings, escaping and collations.
NAMES = (None, "", "plain", "ünïcödé 😀🎉", "中文字符", "quote ' \" \\ back", "tab\tnew\nline",
         "trailing  ", "ends with backslash \\", "\u00a0nbsp",
         "\U0001d518\U0001d52b\U0001d526 (astral)")
#: Doubles whose printed form is easy to get wrong.
SCORES = (None, 0.1, 1e20, -2.5e-7, 123.0, 0.0, 1 / 3, 2.0 ** 53, 1e15, 1e16, 1.5e-16,
          123456789012345.6, -1e-300, 1.7976931348623157e308, 5e-324)
BLOBS = (None, b"", b"\x00", b"\xff\xfe'\\\"", bytes(range(256)), b"\x80")


def item(i: int) -> tuple[Any, ...]:
    """Row `i` of the items table: the same row for the same id, in every process."""
    rng = random.Random(i)
    name = NAMES[i % len(NAMES)]
    if name:
        name = f"{name} {i}"
    score = SCORES[i % len(SCORES)]
    if i % 7 == 0 and score is not None:
        score = rng.uniform(-1e6, 1e6)
    at = None if i % 11 == 0 else (
        f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}."
        f"{rng.randrange(1_000_000):06d}Z")
    data = BLOBS[i % len(BLOBS)]
    if i % 5 == 0:
        data = rng.randbytes(rng.randrange(1, 64))
    return (i, name, score, at, data)


def main(argv: list[str]) -> int:
    from sqlwarden.facade import Engine

    path, rows, chunk = argv[0], int(argv[1]), int(argv[2])
    with Engine.from_yaml(path) as engine:
        while engine.mirror.view().reconciles < 1:
            time.sleep(0.01)
        print("reconciled", flush=True)
        for start in range(1, rows + 1, chunk):
            engine.write_many("items", [item(i) for i in range(start, min(rows, start + chunk - 1)
                                                             + 1)])
            print("wrote", min(rows, start + chunk - 1), flush=True)
        print("inserted", rows, flush=True)
        engine.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
