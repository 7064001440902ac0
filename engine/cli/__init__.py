"""The `sqlwarden` command: one module per command group, one line per error.

- `app`: the parser, `main()`, exit codes, errors turned into one line.
- `run`: `run`. `status`: `status`, `check-config`. `tasks`: `task list`,
  `pause`, `resume`, `cancel`. `fts`: `fts status`, `fts restore`. `sync`:
  `sync now`, `sync history`. `mirror`: `mirror reconcile`, `mirror verify`.
  `replay`: `replay`.
- `client`: the one client of a running engine's status endpoint.
- `output`: what the groups print alike (errors, durations, sizes, bars).

Only this package turns errors into exit codes and one-line messages.
"""

from sqlwarden.cli.app import main

__all__ = ["main"]
