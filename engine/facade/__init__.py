"""The top floor: the `Engine` a service embeds and the CLI drives.

- `engine`: `Engine`, which builds the actors from a validated config, starts
  them in dependency order, stops them in reverse, and asks them on the
  caller's behalf
- `parts`: `engine.tasks`, `.fts`, `.sync` and `.mirror`
- `rows`: rows as callers give them (tuples or dicts), shaped into messages
- `status`: what `status()` and `health()` report

Only this package and the CLI import `sqlwarden.actors`.
"""

from sqlwarden.facade.engine import Engine, stop_on_signals
from sqlwarden.facade.parts import RunHandle
from sqlwarden.facade.status import fts_view_dict, reconcile_view_dict

__all__ = ["Engine", "RunHandle", "fts_view_dict", "reconcile_view_dict", "stop_on_signals"]
