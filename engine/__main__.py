"""`python -m sqlwarden`: the same as the `sqlwarden` command."""

from sqlwarden.cli import main

raise SystemExit(main())
