"""One source run in its own process, for the crash test in test_sync_ndjson.py.

    python -m tests.support.sync_driver CONFIG SOURCE

It starts the engine from the YAML config, runs SOURCE to its end, prints
how the run ended and exits. A test kills it with SIGKILL while it runs.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from sqlwarden.facade import Engine

    path, source = argv[0], argv[1]
    with Engine.from_yaml(path, start_tasks=False) as engine:
        run = engine.sync.run(source)
        print("ended", run.status, run.rows, flush=True)
    return 0 if run.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
