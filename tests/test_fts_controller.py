"""The FTS deferral policy as a plain state machine: begin, end, maximum age, retries.

No actor, no thread, no database: the Writer's answers are values fed back
by hand, as the FtsController actor would feed them.
"""

from __future__ import annotations

from typing import Any

from sqlwarden.config import FtsDeferralConfig
from sqlwarden.effects import After, Cancel, Effect, Fail, Reply, Report, Request
from sqlwarden.errors import EngineStopped
from sqlwarden.fts.controller import TICK, FtsController
from sqlwarden.protocol import (
    BeginCatchUp,
    DeferFts,
    EndCatchUp,
    FtsTick,
    InspectFts,
    RestoreFts,
    UpdateFtsDeferral,
)
from sqlwarden.views import (
    FtsDeferralView,
    FtsInspection,
    FtsLease,
    FtsRestored,
    FtsRestoreResult,
    FtsTableView,
    FtsView,
)

SETTINGS = FtsDeferralConfig(threshold_rows=1000, max_age_s=600, retry_initial_s=1,
                             retry_max_s=4)
RECORD = FtsDeferralView(sources=(("a", 1),), started_at=1e9, tables=("docs_fts",),
                         hwm=(("docs", 0),))
RESTORED = FtsRestoreResult(tables=(FtsRestored(fts="docs_fts", mode="incremental",
                                                changed_rows=10, table_rows=10),),
                            duration_ms=1.0)


def requests(effects: list[Effect]) -> list[Request]:
    return [e for e in effects if isinstance(e, Request)]


def replies(effects: list[Effect]) -> dict[Any, Any]:
    return {e.waiter: e.result for e in effects if isinstance(e, Reply)}


def boot(deferral: FtsDeferralView | None = None) -> tuple[FtsController, list[Effect]]:
    """A controller past its boot inspection, which found `deferral` left by a gone run."""
    fts = FtsController(SETTINGS, wall=lambda: 1e9)
    (inspect,) = requests(fts.handle(FtsTick(), "boot", now=0.0))
    assert isinstance(inspect.message, InspectFts)
    return fts, fts.answered(inspect.context, FtsInspection(tables=(), deferral=deferral),
                             None, now=0.0)


def booted() -> FtsController:
    fts, effects = boot()
    assert replies(effects) == {"boot": None} and fts.state == "live"
    return fts


def defer(fts: FtsController, source: str, now: float) -> list[Effect]:
    (ask,) = requests(fts.handle(BeginCatchUp(source=source, backlog_rows=50_000), source, now))
    assert isinstance(ask.message, DeferFts)
    return fts.answered(ask.context, RECORD, None, now)


def test_a_small_backlog_keeps_the_triggers_live_and_asks_the_writer_nothing() -> None:
    fts = booted()
    effects = fts.handle(BeginCatchUp(source="a", backlog_rows=999), "a", now=1.0)
    assert requests(effects) == []
    lease = replies(effects)["a"]
    assert isinstance(lease, FtsLease) and not lease.deferred
    assert "below threshold_rows (1,000)" in lease.reason


def test_the_first_large_backlog_defers_others_join_and_the_last_end_restores() -> None:
    fts = booted()
    effects = defer(fts, "a", now=10.0)
    lease = replies(effects)["a"]
    assert lease.deferred and lease.tables == ("docs_fts",)
    assert After(600, FtsTick(), TICK) in effects  # the maximum age is armed
    assert fts.state == "deferred"

    # A second source joins the same deferral: the record's sources are saved.
    (save,) = requests(fts.handle(BeginCatchUp(source="b", backlog_rows=10), "b", now=20.0))
    assert isinstance(save.message, UpdateFtsDeferral)
    assert save.message.sources == (("a", 1), ("b", 1))
    joined = replies(fts.answered(save.context, RECORD, None, now=20.0))["b"]
    assert joined.deferred and joined.reason == "joined the deferral of a"

    # The first to end only saves; the last to end restores, and is answered after.
    (save,) = requests(fts.handle(EndCatchUp(source="a"), "end a", now=30.0))
    assert isinstance(save.message, UpdateFtsDeferral)
    assert replies(fts.answered(save.context, None, None, now=30.0))["end a"].state == "deferred"
    (restore,) = requests(fts.handle(EndCatchUp(source="b"), "end b", now=40.0))
    assert isinstance(restore.message, RestoreFts) and fts.state == "restoring"
    effects = fts.answered(restore.context, RESTORED, None, now=41.0)
    view = replies(effects)["end b"]
    assert isinstance(view, FtsView) and view.state == "live" and view.last_restore == RESTORED
    assert Cancel(TICK) in effects


def test_what_arrives_while_the_writer_is_busy_waits_its_turn() -> None:
    fts = booted()
    (ask,) = requests(fts.handle(BeginCatchUp(source="a", backlog_rows=50_000), "a", now=0.0))
    # Queued behind the deferral, not acted on a state the database does not have yet.
    assert fts.handle(EndCatchUp(source="a"), "end a", now=1.0) == []
    effects = fts.answered(ask.context, RECORD, None, now=2.0)
    assert replies(effects)["a"].deferred
    (restore,) = requests(effects)  # the queued end now restores
    assert isinstance(restore.message, RestoreFts)


def test_a_deferral_past_its_maximum_age_is_restored_whoever_still_catches_up() -> None:
    fts = booted()
    defer(fts, "stuck", now=100.0)
    # A tick before the age re-arms for what is left.
    assert fts.handle(FtsTick(), None, now=699.0) == [After(1.0, FtsTick(), TICK),
                                                       Reply(None, None)]
    (restore,) = requests(fts.handle(FtsTick(), None, now=700.0))
    assert isinstance(restore.message, RestoreFts)
    fts.answered(restore.context, RESTORED, None, now=701.0)
    assert fts.view(701.0).sources == () and fts.state == "live"
    # The stuck source's own end comes later and changes nothing.
    assert replies(fts.handle(EndCatchUp(source="stuck"), "late", now=800.0))["late"].state == \
        "live"


def test_a_deferral_left_by_a_gone_run_is_restored_at_boot_and_retried_until_it_works(
        ) -> None:
    fts, effects = boot(deferral=RECORD)
    (pending,) = requests(effects)
    assert isinstance(pending.message, RestoreFts) and fts.state == "restoring"
    assert replies(effects) == {}  # the boot's tick is answered once the restore ends
    waits = []
    now = 0.0
    for _ in range(3):
        effects = fts.answered(pending.context, None, RuntimeError("no such column"), now)
        assert any(isinstance(e, Report) for e in effects) and fts.state == "restore_failed"
        (arm,) = [e for e in effects if isinstance(e, After)]
        waits.append(arm.delay_s)
        (save,) = requests(effects)  # the error is kept in the record too
        assert isinstance(save.message, UpdateFtsDeferral)
        effects = fts.answered(save.context, None, None, now)
        now += arm.delay_s
        (pending,) = requests(effects + fts.handle(FtsTick(), None, now))
    assert waits == [1, 2, 4]
    view = fts.view(now)
    assert view.attempts == 3 and "no such column" in (view.error or "")
    effects = fts.answered(pending.context, RESTORED, None, now)
    assert fts.state == "live" and fts.view(now).error is None and Cancel(TICK) in effects


def test_stopping_answers_everyone_still_waiting() -> None:
    fts, _ = boot(deferral=RECORD)  # busy restoring; the boot's tick waits
    assert fts.handle(EndCatchUp(source="x"), "later", now=1.0) == []
    effects = fts.stop()
    assert {e.waiter for e in effects if isinstance(e, Fail)} == {"boot", "later"}
    assert all(isinstance(e.error, EngineStopped) for e in effects if isinstance(e, Fail))


# --- which tables a source defers -------------------------------------------------------

DOCS_FTS = FtsTableView(name="docs_fts", kind="external", source="docs", triggers=(),
                        problem=None)
NOTES_FTS = FtsTableView(name="notes_fts", kind="external", source="notes", triggers=(),
                         problem=None)


def record(*tables: str, sources: tuple[tuple[str, int], ...]) -> FtsDeferralView:
    return FtsDeferralView(sources=sources, started_at=1e9, tables=tables,
                           hwm=tuple((t, 0) for t in tables))


def booted_with_tables() -> FtsController:
    fts = FtsController(SETTINGS, wall=lambda: 1e9,
                        writes={"docs_feed": ("docs",), "notes_feed": ("notes",),
                                "items_feed": ("items",)})
    (inspect,) = requests(fts.handle(FtsTick(), "boot", now=0.0))
    fts.answered(inspect.context, FtsInspection(tables=(DOCS_FTS, NOTES_FTS), deferral=None),
                 None, now=0.0)
    return fts


def test_a_source_writing_a_table_without_fts_defers_nothing_and_asks_the_writer_nothing(
        ) -> None:
    fts = booted_with_tables()
    effects = fts.handle(BeginCatchUp(source="items_feed", backlog_rows=50_000), "i", now=1.0)
    assert requests(effects) == []
    lease = replies(effects)["i"]
    assert not lease.deferred and lease.reason == (
        "no FTS table that can be deferred indexes items")
    # Tables named in the message win over the config.
    (ask,) = requests(fts.handle(BeginCatchUp(source="items_feed", backlog_rows=50_000,
                                              tables=("docs",)), "d", now=2.0))
    assert isinstance(ask.message, DeferFts) and ask.message.tables == ("docs",)


def test_each_source_defers_its_own_fts_tables_and_they_come_back_as_their_sources_end(
        ) -> None:
    fts = booted_with_tables()
    (ask,) = requests(fts.handle(BeginCatchUp(source="docs_feed", backlog_rows=50_000), "d",
                                 now=1.0))
    assert isinstance(ask.message, DeferFts) and ask.message.tables == ("docs",)
    lease = replies(fts.answered(ask.context, record("docs_fts", sources=(("docs_feed", 1),)),
                                 None, now=1.0))["d"]
    assert lease.deferred and lease.tables == ("docs_fts",)

    # Another table's source adds its own FTS table to the deferral in place.
    (ask,) = requests(fts.handle(BeginCatchUp(source="notes_feed", backlog_rows=50_000), "n",
                                 now=2.0))
    assert isinstance(ask.message, DeferFts) and ask.message.tables == ("notes",)
    assert ask.message.sources == (("docs_feed", 1), ("notes_feed", 1))
    both = record("docs_fts", "notes_fts", sources=(("docs_feed", 1), ("notes_feed", 1)))
    lease = replies(fts.answered(ask.context, both, None, now=2.0))["n"]
    assert lease.deferred and lease.tables == ("notes_fts",)
    assert fts.view(2.0).tables == ("docs_fts", "notes_fts")

    # docs ends: docs_fts alone is restored; notes_fts stays deferred for notes_feed.
    (restore,) = requests(fts.handle(EndCatchUp(source="docs_feed"), "end d", now=3.0))
    assert isinstance(restore.message, RestoreFts)
    assert restore.message.tables == ("docs_fts",)
    assert restore.message.sources == (("notes_feed", 1),)
    left = record("notes_fts", sources=(("notes_feed", 1),))
    partial = FtsRestoreResult(tables=RESTORED.tables, duration_ms=1.0, remaining=left)
    effects = fts.answered(restore.context, partial, None, now=4.0)
    view = replies(effects)["end d"]
    assert (view.state, view.tables, view.sources) == ("deferred", ("notes_fts",),
                                                        (("notes_feed", 1),))
    assert Cancel(TICK) not in effects  # the maximum age still guards notes_fts

    (restore,) = requests(fts.handle(EndCatchUp(source="notes_feed"), "end n", now=5.0))
    assert isinstance(restore.message, RestoreFts) and restore.message.tables == ()
    view = replies(fts.answered(restore.context, RESTORED, None, now=6.0))["end n"]
    assert view.state == "live" and view.tables == ()
