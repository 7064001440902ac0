"""Readers: read-only connections, each lent to one thread at a time."""

from __future__ import annotations

import threading

import apsw
import pytest

from sqlwarden.db.readers import ReaderPool
from sqlwarden.errors import EngineStopped
from sqlwarden.facade import Engine

from .conftest import site_row


def test_a_lent_connection_is_read_only(engine: Engine) -> None:
    engine.write_many("sites", [site_row(1)])
    with engine.read() as conn:
        assert conn.readonly("main")
        assert conn.execute("SELECT name FROM sites").fetchall() == [("site 1",)]
        with pytest.raises((apsw.ReadOnlyError, apsw.SQLError)):
            conn.execute("DELETE FROM sites")
    with engine.read() as conn:
        assert conn.execute("SELECT count(*) FROM sites").fetchall() == [(1,)]


def test_a_connection_is_never_lent_to_two_threads_at_once(engine: Engine) -> None:
    pool_size = engine.config.database.readers
    threads_n = pool_size * 3
    # Threads pass in rounds of `pool_size`, each round holding every connection.
    together = threading.Barrier(pool_size)
    lock = threading.Lock()
    holders: dict[int, int] = {}
    clashes: list[int] = []
    most = [0]

    def borrow() -> None:
        with engine.read(timeout=60) as conn:
            with lock:
                if id(conn) in holders:
                    clashes.append(id(conn))
                holders[id(conn)] = threading.get_ident()
                most[0] = max(most[0], len(holders))
            conn.execute("SELECT count(*) FROM sites").fetchall()
            together.wait(timeout=60)
            with lock:
                del holders[id(conn)]

    threads = [threading.Thread(target=borrow) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    assert most[0] == pool_size


def test_a_read_transaction_left_open_is_ended_when_the_connection_returns(
        engine: Engine) -> None:
    with engine.read() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sites").fetchall()
        assert conn.in_transaction
    with engine.read() as again:
        assert again is conn
        assert not again.in_transaction


def test_reading_from_a_stopped_engine_is_refused(engine: Engine) -> None:
    engine.stop()
    with pytest.raises(EngineStopped), engine.read():
        pass


def test_a_closed_pool_closes_connections_as_they_come_back(engine: Engine) -> None:
    pool = ReaderPool(engine.config.database, size=2)
    with pool.lend() as conn:
        pool.close()
        conn.execute("SELECT 1").fetchall()
    with pytest.raises(apsw.ConnectionClosedError):
        conn.execute("SELECT 1")
    with pytest.raises(EngineStopped), pool.lend():
        pass


def test_a_reader_waiting_for_a_connection_is_told_when_the_pool_closes(engine: Engine) -> None:
    pool = ReaderPool(engine.config.database, size=1)
    outcome: list[BaseException | None] = []
    with pool.lend():
        waiter = threading.Thread(target=lambda: _try_borrow(pool, outcome))
        waiter.start()
        assert pool.wait_for_waiters(1, timeout=60)
        pool.close()
        waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], EngineStopped)


def test_a_waiter_gets_a_connection_when_a_broken_one_is_discarded(engine: Engine) -> None:
    pool = ReaderPool(engine.config.database, size=1)
    outcome: list[BaseException | None] = []
    with pool.lend() as conn:
        waiter = threading.Thread(target=lambda: _try_borrow(pool, outcome))
        waiter.start()
        assert pool.wait_for_waiters(1, timeout=60)
        conn.execute("BEGIN")
        conn.close()  # the ROLLBACK on return fails: the connection is thrown away
    waiter.join(timeout=60)
    assert outcome == [None]
    pool.close()


def _try_borrow(pool: ReaderPool, outcome: list[BaseException | None]) -> None:
    try:
        with pool.lend(timeout=60) as conn:
            conn.execute("SELECT 1").fetchall()
        outcome.append(None)
    except BaseException as exc:
        outcome.append(exc)
