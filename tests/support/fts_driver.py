"""A catch-up in its own process, for the crash tests in test_fts.py, and the
documents both use.

    python -m tests.support.fts_driver CONFIG FIRST_ID ROWS

It defers FTS upkeep, says so and waits for a line on stdin (so a test can
kill it right after the drop), changes some old rows, inserts ROWS new ones
in batches (a line per batch), then ends the catch-up, which restores.
"""

from __future__ import annotations

import random
import sys
from typing import Any

COMMON = ("pump", "valve", "station", "north", "south", "sensor", "meter", "river", "tank",
          "pipe", "flow", "pressure", "alpha", "beta", "gamma", "delta", "ridge", "harbor",
          "canal", "well")
# Rare made-up words: zuaa, zuab, ... so some queries hit only a few rows.
WORDS = COMMON + tuple(f"zu{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(120))


def doc(i: int, *, words: int = 12, marker: str = "") -> tuple[Any, ...]:
    """Row `i` of the docs table: the same text for the same id, in every process."""
    rng = random.Random(i)
    title = " ".join(rng.choices(COMMON, k=3))
    body = " ".join(rng.choices(WORDS, k=words))
    return (i, title, f"{marker} {body}".strip())


def main(argv: list[str]) -> int:
    from sqlwarden.facade import Engine

    path, first, rows = argv[0], int(argv[1]), int(argv[2])
    with Engine.from_yaml(path, start_tasks=False) as engine:
        lease = engine.fts.begin_catch_up("driver", rows)
        print("deferred", lease.deferred, flush=True)
        sys.stdin.readline()
        # Rows that were indexed before the deferral: changed text, gone, moved.
        engine.write("UPDATE docs SET body = replace(body, 'obsolete', 'kaleidoscope') "
                     "WHERE id <= 100")
        engine.write("DELETE FROM docs WHERE id BETWEEN 151 AND 200")
        engine.write("UPDATE docs SET id = 900000 WHERE id = 211")
        batch = 2000
        for n, start in enumerate(range(first, first + rows, batch)):
            engine.write_many("docs", [doc(i, words=40) for i in
                                       range(start, min(start + batch, first + rows))])
            print("batch", n, flush=True)
        print("ending", flush=True)
        view = engine.fts.end_catch_up("driver")
        print("restored", view.state, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
