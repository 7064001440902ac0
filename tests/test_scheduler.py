"""The engine's one scheduler: calls at points on a monotonic clock, stepped in tests."""

from __future__ import annotations

import threading

from sqlwarden.scheduler import ManualScheduler, Scheduler


def test_a_manual_scheduler_runs_what_fell_due_in_deadline_order() -> None:
    time = ManualScheduler(start=100.0)
    ran: list[str] = []
    time.call_later(5, lambda: ran.append("five"))
    time.call_later(1, lambda: ran.append("one"))
    later = time.call_at(103, lambda: ran.append("three"))
    assert time.advance(0.5) == 0 and ran == []
    assert time.advance(2.5) == 2
    assert ran == ["one", "three"]
    later.cancel()  # already ran: cancelling changes nothing
    assert time.advance(10) == 1 and ran == ["one", "three", "five"]
    assert time.now() == 113.0 and time.pending() == 0


def test_a_cancelled_call_never_runs_and_a_stopped_scheduler_takes_no_more() -> None:
    time = ManualScheduler()
    ran: list[int] = []
    timer = time.call_later(1, lambda: ran.append(1))
    timer.cancel()
    time.advance(5)
    time.stop()
    time.call_later(0, lambda: ran.append(2))
    time.advance(5)
    assert ran == []


def test_a_call_that_raises_does_not_stop_the_others() -> None:
    time = ManualScheduler()
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("a bad timer")

    time.call_later(1, broken)
    time.call_later(2, lambda: ran.append(2))
    assert time.advance(3) == 2 and ran == [2]


def test_the_threaded_scheduler_runs_calls_on_its_own_thread() -> None:
    time = Scheduler()
    done = threading.Event()
    where: list[str] = []

    def call() -> None:
        where.append(threading.current_thread().name)
        done.set()

    try:
        time.call_later(0.0, call)
        assert done.wait(10)
        assert where == ["sqlwarden-scheduler"]
    finally:
        time.stop()


def test_the_threaded_scheduler_follows_its_clock_not_the_wall_clock() -> None:
    # Deadlines are points on the clock it was given: a clock that has not
    # reached a deadline runs nothing, whatever the wall clock does.
    now = [0.0]
    time = Scheduler(clock=lambda: now[0])
    early, late = threading.Event(), threading.Event()
    try:
        time.call_at(0.0, early.set)
        time.call_at(1e9, late.set)
        assert early.wait(10)
        assert time.pending() == 1 and not late.is_set()
    finally:
        time.stop()
