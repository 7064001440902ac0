"""Numbers through the Python API follow the rule the sources follow: a non-finite float
or an integer outside signed 64 bits is refused, naming the row and column (or the
parameter), and nothing of that write is stored. Finite floats, NULLs and every other
value are written as they were."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sqlwarden.config import Config
from sqlwarden.errors import BadRowError, WriteError
from sqlwarden.facade import Engine

from .conftest import count_rows, read_only, site_row

INF = float("inf")
NAN = float("nan")


class Celsius(float):
    """A float subclass, as numpy's float64 is one: it binds as a float."""


@pytest.fixture
def with_site(engine: Engine) -> Engine:
    engine.write_many("sites", [site_row(1)])
    return engine


def readings(path: Path) -> list[tuple[object, ...]]:
    conn = read_only(path)
    try:
        return conn.execute("SELECT id, site_id, value, note FROM readings ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("bad", [INF, -INF, NAN, Celsius("inf")], ids=repr)
def test_a_non_finite_float_in_write_many_is_refused_naming_row_and_column_before_it_is_sent(
        with_site: Engine, config: Config, bad: float) -> None:
    sent = with_site.messages_sent("writer")
    rows = [(1, 1, 20.5, "a"), (2, 1, 21.0, "b"), (3, 1, bad, "c"), (4, 1, 22.0, "d")]
    with pytest.raises(BadRowError, match=r"writer\.insert_rows: row 2, column 'value': a "
                       r"non-finite number \(inf or nan\); nothing was written") as caught:
        with_site.write_many("readings", rows)
    assert caught.value.row_index == 2
    assert with_site.messages_sent("writer") == sent
    assert count_rows(config.database.path, "readings") == 0


def test_nan_is_refused_rather_than_stored_as_null(with_site: Engine, config: Config) -> None:
    with pytest.raises(BadRowError, match="row 0, column 'value'"):
        with_site.write_many("readings", [{"id": 1, "site_id": 1, "value": NAN}])
    assert readings(config.database.path) == []


def test_an_upsert_of_dicts_with_a_non_finite_float_writes_nothing(
        with_site: Engine, config: Config) -> None:
    with_site.write_many("readings", [(1, 1, 1.5, "kept")])
    rows = [{"id": 1, "site_id": 1, "value": 2.5}, {"id": 2, "site_id": 1, "value": -INF}]
    with pytest.raises(BadRowError, match=r"writer\.upsert_rows: row 1, column 'value': a "
                       r"non-finite number"):
        with_site.upsert("readings", rows)
    assert readings(config.database.path) == [(1, 1, 1.5, "kept")]


def test_an_integer_past_64_bits_is_refused_naming_row_and_column(
        with_site: Engine, config: Config) -> None:
    rows = [(1, 1, 1.0, "a"), (2, 1, 2**70, "b")]
    with pytest.raises(BadRowError, match=r"writer\.insert_rows: row 1, column 'value': an "
                       r"integer outside signed 64 bits; nothing was written") as caught:
        with_site.write_many("readings", rows)
    assert caught.value.row_index == 1
    with pytest.raises(BadRowError, match=r"row 0, column 'id': an integer outside signed 64"):
        with_site.upsert("readings", [(-(2**63) - 1, 1, 1.0, "a")])
    assert count_rows(config.database.path, "readings") == 0


def test_a_key_the_rowid_cannot_hold_is_named_instead_of_a_datatype_mismatch(
        with_site: Engine, config: Config) -> None:
    with pytest.raises(BadRowError, match=r"writer\.upsert_rows: row 1, column 'id': 1e\+300 "
                       r"is not a whole number within signed 64 bits, which id \(the table's "
                       r"INTEGER PRIMARY KEY\) must be"):
        with_site.upsert("readings", [(1, 1, 1.0, "a"), (1e300, 1, 2.0, "b")])
    assert count_rows(config.database.path, "readings") == 0


def test_text_with_a_lone_surrogate_is_named_too(with_site: Engine, config: Config) -> None:
    with pytest.raises(BadRowError, match=r"row 1, column 'note': text holding a lone "
                       r"surrogate \(U\+D800\)"):
        with_site.write_many("readings", [(1, 1, 1.0, "fine"), (2, 1, 2.0, "\ud800")])
    assert count_rows(config.database.path, "readings") == 0


def test_finite_extremes_nulls_and_mixed_columns_are_written_as_given(
        with_site: Engine, config: Config) -> None:
    # Two of the largest floats overflow a plain sum; each is finite and stored.
    rows = [(1, 1, 1.7976931348623157e308, None), (2, 1, 1.7976931348623157e308, "x"),
            (3, 1, None, "y"), (4, 1, -0.0, None), (5, 1, 5, "ints go to a real column"),
            (6, 1, Celsius(21.5), "a float subclass"), (2**63 - 1, 1, 5e-324, "edges")]
    assert with_site.write_many("readings", rows).changes == len(rows)
    stored = readings(config.database.path)
    assert [r[0] for r in stored] == [1, 2, 3, 4, 5, 6, 2**63 - 1]
    assert stored[0][2] == stored[1][2] == 1.7976931348623157e308
    assert stored[2][2] is None and stored[6][2] == 5e-324
    assert all(v is None or math.isfinite(v) for v in (r[2] for r in stored))


def test_a_non_finite_parameter_of_write_is_refused_naming_its_position(
        with_site: Engine, config: Config) -> None:
    sent = with_site.messages_sent("writer")
    sql = "INSERT INTO readings (id, site_id, value) VALUES (?, ?, ?)"
    with pytest.raises(WriteError, match=r"writer\.execute: parameter \?3: a non-finite number "
                       r"\(inf or nan\); nothing was written"):
        with_site.write(sql, (1, 1, INF))
    with pytest.raises(WriteError, match=r"parameter \?3: a non-finite number"):
        with_site.write(sql, [1, 1, NAN])
    with pytest.raises(WriteError, match=r"parameter \?1: an integer outside signed 64 bits"):
        with_site.write(sql, (2**64, 1, 1.0))
    assert with_site.messages_sent("writer") == sent
    assert count_rows(config.database.path, "readings") == 0


def test_a_batch_with_a_non_finite_parameter_commits_none_of_its_statements(
        with_site: Engine, config: Config) -> None:
    sql = "INSERT INTO readings (id, site_id, value) VALUES (?, ?, ?)"
    with pytest.raises(WriteError, match=r"writer\.batch: statement 1, parameter \?3: a "
                       r"non-finite number"):
        with_site.write_batch([(sql, (1, 1, 1.0)), (sql, (2, 1, -INF))])
    assert count_rows(config.database.path, "readings") == 0
    assert with_site.write_batch([(sql, (1, 1, 1.0)), (sql, (2, 1, 2.0))]).changes == 2
