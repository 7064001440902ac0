"""`sqlwarden mirror`: the MySQL mirror reconciled with SQLite, or verified against it.

Exit codes beyond the usual: 3 when the mirror's server cannot be reached;
verify exits 1 when something differs, and 4 when the mirror equals SQLite
except for quarantined rows (rows the mirror could not take, listed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlwarden.cli.client import EngineRefused, engine_if_running
from sqlwarden.cli.output import PROG, local_time, one_line, print_error, seconds_within
from sqlwarden.config import Config, load_config

#: `mirror verify`'s exit code when the only difference is quarantined rows.
QUARANTINED_EXIT = 4


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `mirror reconcile`, `mirror verify` and `mirror retry` to the command line."""
    mirror = commands.add_parser(
        "mirror", help="reconcile or verify the MySQL mirror",
        description="The mirror copies the tables listed under `mirror:` to a MySQL-compatible "
                    "server, scoped by this device's `scope` value. Reconcile makes it equal "
                    "SQLite; verify compares and changes nothing.")
    actions = mirror.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    reconcile = actions.add_parser(
        "reconcile", help="make the mirror equal SQLite for this scope, and wait for it",
        description="Compare every mirrored table range by range (row count and checksum on "
                    "both sides), delete rows SQLite no longer has and copy only what differs. "
                    "Asks the running engine when there is one (a reconcile under way is "
                    "joined, never started twice); otherwise starts the engine on CONFIG for "
                    "this. Exits 1 when it fails, 3 when the server cannot be reached; "
                    "SIGINT or SIGTERM stops it at the next range and it exits 0.")
    reconcile.add_argument("config", metavar="CONFIG", help="the YAML config file")
    reconcile.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reconcile.add_argument("--timeout", type=seconds_within(0, 7 * 86400), default=3600.0,
                           metavar="S", help="give up waiting after S seconds (more than 0, "
                           "at most a week; default 3600)")
    reconcile.set_defaults(func=cmd_mirror_reconcile)
    verify = actions.add_parser(
        "verify", help="compare SQLite and the mirror; change nothing",
        description="Read CONFIG's database (read-only) and the mirror, and report per table "
                    "the key ranges whose row count or checksum differ, and the rows in "
                    "quarantine (rows the mirror could not take: they are left out of the "
                    "comparison). Creates and changes nothing on either side. Exits 0 when in "
                    "sync, 1 when something differs, 2 for a config or login problem, 3 when "
                    "the server cannot be reached, 4 when in sync except for quarantined rows.")
    verify.add_argument("config", metavar="CONFIG", help="the YAML config file")
    verify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verify.set_defaults(func=cmd_mirror_verify)
    retry = actions.add_parser(
        "retry", help="send the quarantined rows to the mirror again",
        description="Rows the mirror could not take (a value the server refuses or cannot "
                    "hold) wait in quarantine until they change. This puts every one back in "
                    "the outbox now: each is sent again, leaves the quarantine once it is on "
                    "the server, or stays with the new reason. Asks the running engine when "
                    "there is one; otherwise starts the engine on CONFIG for this.")
    retry.add_argument("config", metavar="CONFIG", help="the YAML config file")
    retry.set_defaults(func=cmd_mirror_retry)


def cmd_mirror_reconcile(args: argparse.Namespace) -> int:
    from sqlwarden.errors import MirrorError
    from sqlwarden.views import ReconcileView, TableCheck

    config = _load_mirrored(args.config)
    engine = engine_if_running(config)
    if engine is not None:
        try:
            out = engine.post("/mirror/reconcile")
        except EngineRefused as exc:
            print_error(exc.message)
            return _refused_exit_code(config, exc)
        print(f"asked the running engine at {engine.url}")
        view = ReconcileView(number=out["number"], verify=False, seconds=out["seconds"],
                             tables=tuple(TableCheck(**{**t, "ranges_shown": tuple(
                                 tuple(r) for r in t["ranges_shown"])}) for t in out["tables"]))
    else:
        try:
            local = _reconcile_here(config, args.timeout)
        except MirrorError as exc:
            print_error(one_line(exc))
            return mirror_exit_code(exc)
        except TimeoutError as exc:
            print_error(one_line(exc))
            return 1
        if local is None:
            return 0  # a signal stopped it, and it said so
        view = local
    if args.json:
        from sqlwarden.facade import reconcile_view_dict

        print(json.dumps(reconcile_view_dict(view), indent=2, default=str))
        return 0
    print(f"reconcile {view.number} of {config.mirror.where if config.mirror else ''} "
          f"took {view.seconds:.2f}s")
    _print_checks(view.tables, verb="reconcile")
    return 0


def _refused_exit_code(config: Config, exc: EngineRefused) -> int:
    """The exit code for a running engine's refusal: 2 when its mirror is failed on the
    login (the config is at fault, as for a command that connects itself), 3 when the
    engine cannot do it now, 1 otherwise."""
    from sqlwarden.mirror.dialect import LOGIN_ERRNOS

    if exc.unavailable:
        now = engine_if_running(config)  # the mirror's state after the refusal
        seen = (now.status.get("mirror") or {}) if now is not None else {}
        if seen.get("state") == "failed" and seen.get("errno") in LOGIN_ERRNOS:
            return 2
        return 3
    return 1


def mirror_exit_code(exc: BaseException) -> int:
    """What a mirror command exits with for `exc`, as the README says: 2 when the login
    or the database name is refused (the config is at fault), 3 when the server cannot
    be reached (or the mirror is away for a reason retrying fixes), 1 otherwise."""
    from sqlwarden.errors import MirrorUnavailable
    from sqlwarden.mirror.dialect import LOGIN_ERRNOS

    errno = getattr(exc, "errno", None)
    if errno in LOGIN_ERRNOS:
        return 2
    if getattr(exc, "retryable", False) or (isinstance(exc, MirrorUnavailable)
                                             and errno is None):
        return 3
    return 1


def _reconcile_here(config: Config, timeout_s: float) -> Any:
    """A reconcile in an engine started for it; None when SIGINT or SIGTERM stopped it
    first (at its next range, what was copied kept: the next reconcile goes on)."""
    from sqlwarden.cli.run import POLL_S, engine_for_command
    from sqlwarden.futures import Timeout
    from sqlwarden.protocol import Reconcile

    # The command says how the reconcile ended in one line; the mirror's own report of
    # the same failure (its state going down or failed) is for -v. Only that logger:
    # what the reconcile meets on the way (rows quarantined, ranges that do not add
    # up) the command does not say, so those warnings stay.
    state_log = logging.getLogger("sqlwarden.mirror.state")
    if logging.getLogger().level >= logging.WARNING and state_log.level == logging.NOTSET:
        state_log.setLevel(logging.ERROR)
    with engine_for_command(config) as started:
        if started is None:
            return None
        local, stop = started
        pending = local.ask_later("mirror", Reconcile())
        deadline = time.monotonic() + timeout_s
        while not pending.done() and not stop.wait(POLL_S):
            if time.monotonic() >= deadline:
                raise Timeout(f"the reconcile has not ended within {timeout_s:g}s")
        if not pending.done():
            print("mirror: stopped before the reconcile ended; the ranges it copied stay, "
                  "and the next reconcile compares again")
            return None
        return pending.get()


def cmd_mirror_verify(args: argparse.Namespace) -> int:
    from sqlwarden.errors import MirrorError
    from sqlwarden.mirror.quarantine import entries
    from sqlwarden.mirror.session import MirrorSession, outbox_depth, table_check

    config = _load_mirrored(args.config)
    assert config.mirror is not None
    session = MirrorSession(config)
    started = time.monotonic()
    try:
        session.open(create=False)
        reports = session.reconcile(apply=False)
        assert session.reader is not None
        depth = outbox_depth(session.reader)[0] if session.has_outbox() else 0
        held, shown = entries(session.reader)
    except MirrorError as exc:
        print_error(one_line(exc))
        return 3 if exc.retryable else 2
    finally:
        session.close()
    checks = [table_check(r) for r in reports]
    differs = any(c.differing for c in checks)
    code = 1 if differs else QUARANTINED_EXIT if held else 0
    if args.json:
        print(json.dumps({"in_sync": not differs, "outbox_depth": depth,
                          "seconds": round(time.monotonic() - started, 3),
                          "tables": [dataclasses.asdict(c) for c in checks],
                          "quarantined": held, "quarantined_rows": shown},
                         indent=2, default=str))
        return code
    print(f"verify of {config.mirror.where} (scope {config.mirror.scope!r}) took "
          f"{time.monotonic() - started:.2f}s")
    _print_checks(checks, verb="verify")
    if depth:
        print(f"  {depth:,} changes are still in the outbox; a running engine sends them "
              "shortly, so some differences may be only those")
    if held:
        print(f"  {held:,} rows are quarantined (not on the mirror; left out of the "
              "comparison):")
        for entry in shown:
            print(f"    {entry['table']} key {entry['key']!r} since {local_time(entry['at'])}: "
                  f"{entry['reason']}")
        if held > len(shown):
            print(f"    ... and {held - len(shown):,} more")
    if differs:
        print("the mirror differs from SQLite; run "
              f"`{PROG} mirror reconcile {args.config}` to repair it")
    elif held:
        print("in sync except for the quarantined rows; they are sent when they change, or "
              f"now with `{PROG} mirror retry {args.config}`")
    else:
        print("in sync")
    return code


def cmd_mirror_retry(args: argparse.Namespace) -> int:
    from sqlwarden.mirror.dialect import LOGIN_ERRNOS

    config = _load_mirrored(args.config)
    engine = engine_if_running(config)
    # Rows queued again for a server that refuses the login would wait for a config
    # fix anyway: say so first (exit 2, as every mirror command), and queue nothing.
    if engine is not None:
        seen = engine.status.get("mirror") or {}
        if seen.get("state") == "failed" and seen.get("errno") in LOGIN_ERRNOS:
            print_error(f"the running engine's mirror is failed: {seen.get('error')}")
            return 2
    else:
        refused = _login_refused(config)
        if refused is not None:
            print_error(one_line(refused))
            return 2
    if engine is not None:
        try:
            out = engine.post("/mirror/retry")
        except EngineRefused as exc:
            print_error(exc.message)
            return _refused_exit_code(config, exc)
        queued = int(out["queued"])
        print(f"asked the running engine at {engine.url}")
    else:
        from sqlwarden.cli.run import engine_for_command

        with engine_for_command(config) as started:  # one short write: a signal waits
            if started is None:
                return 0
            queued = started[0].mirror.retry_quarantined()
    print(f"{queued:,} quarantined rows are queued to be sent again" if queued
          else "no row is quarantined")
    return 0


def _login_refused(config: Config) -> BaseException | None:
    """The server's refusal of the config's login or database, if it refuses them.

    A server that cannot be reached is no answer either way: None (the rows wait
    in the outbox for it as any change does)."""
    from sqlwarden.errors import MirrorError
    from sqlwarden.mirror.dialect import LOGIN_ERRNOS
    from sqlwarden.mirror.session import MirrorSession

    session = MirrorSession(config)
    try:
        session.open(create=False)
    except MirrorError as exc:
        return exc if exc.errno in LOGIN_ERRNOS else None
    finally:
        session.close()
    return None


def _load_mirrored(file: str) -> Config:
    """The config at `file`, which must have an enabled mirror."""
    from sqlwarden.errors import ConfigError

    config = load_config(file)
    if config.mirror is None or not config.mirror.enabled:
        raise ConfigError("there is no enabled `mirror:` section", file=file)
    return config


def _print_checks(tables: Sequence[Any], *, verb: str) -> None:
    for t in tables:
        if t.skipped:
            what = "in sync"
        elif verb == "verify":
            what = f"{t.differing} of {t.ranges} key ranges differ"
        else:
            what = (f"{t.differing} of {t.ranges} key ranges differed: copied {t.copied:,}, "
                    f"deleted {t.deleted:,}")
        print(f"  {t.table}: {t.sqlite_rows:,} rows in SQLite, {t.mirror_rows:,} in the mirror; "
              f"{what} ({t.seconds:.2f}s, {t.sqlite_read:,} rows read from SQLite)")
        for after, upto, mine, theirs in t.ranges_shown:
            low = "start" if after is None else f"after {after!r}"
            high = "end" if upto is None else f"up to {upto!r}"
            print(f"    keys from {low} {high}: {mine:,} rows in SQLite, {theirs:,} in the mirror")
        if t.differing > len(t.ranges_shown):
            print(f"    ... and {t.differing - len(t.ranges_shown)} more ranges")
