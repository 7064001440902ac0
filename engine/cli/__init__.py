"""The `sqlwarden` command: one module per command group, one line per error.

Only this package turns errors into exit codes and one-line messages.
"""

from sqlwarden.cli.main import main

__all__ = ["main"]
