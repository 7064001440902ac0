"""The private MariaDB server the mirror's tests run against (tests/mariadb.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sqlwarden.config import parse_dsn

from .support.mariadb import MariaDB, MirrorDb, _connector


def test_the_server_listens_only_on_loopback_at_its_port(mariadb: MariaDB) -> None:
    assert mariadb.query("SELECT @@bind_address, @@port, @@skip_networking") == [
        ("127.0.0.1", mariadb.port, 0)]
    assert mariadb.query("SELECT @@character_set_server, @@collation_server") == [
        ("utf8mb4", "utf8mb4_bin")]
    with socket.create_connection(("127.0.0.1", mariadb.port), timeout=5):
        pass


def test_a_mirror_db_user_has_its_own_database_and_no_other(
        mirror_db: MirrorDb, mariadb: MariaDB) -> None:
    assert os.environ["SW_MYSQL_PASSWORD"] == mirror_db.password
    dsn = parse_dsn(mirror_db.dsn.replace("${SW_MYSQL_PASSWORD}", mirror_db.password))
    assert (dsn.user, dsn.host, dsn.port, dsn.database) == (
        mirror_db.user, "127.0.0.1", mariadb.port, mirror_db.database)
    other = "sw_tother" + mirror_db.database[4:]
    mariadb.create_database(other, other, "other-password")
    try:
        conn = _connector().connect(host=dsn.host, port=dsn.port, user=dsn.user,
                                    password=dsn.password, database=dsn.database,
                                    autocommit=True)
        try:
            cursor = conn.cursor()
            cursor.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
            cursor.execute("INSERT INTO t VALUES (1, 'one')")
            cursor.execute("SELECT CURRENT_USER(), DATABASE()")
            assert cursor.fetchall() == [(f"{mirror_db.user}@127.0.0.1", mirror_db.database)]
            cursor.execute("SHOW DATABASES")
            assert {row[0] for row in cursor.fetchall()} == {"information_schema",
                                                              mirror_db.database}
            with pytest.raises(_connector().Error, match="denied"):
                cursor.execute(f"CREATE TABLE `{other}`.t (id INT)")
        finally:
            conn.close()
        with pytest.raises(_connector().Error, match="denied"):
            _connector().connect(host=dsn.host, port=dsn.port, user=dsn.user,
                                 password="wrong", database=dsn.database)
    finally:
        mariadb.drop_database(other, other)
    assert mariadb.query("SELECT name FROM t", database=mirror_db.database) == [("one",)]


def test_a_killed_server_starts_again_with_its_data(tmp_path: Path, mariadb: MariaDB) -> None:
    # Its own server (`mariadb` only for its skip-or-fail rule), so the session's is untouched.
    server = MariaDB(tmp_path / "mariadb")
    assert server.port != mariadb.port
    with server:
        port = server.port
        server.create_database("sw_crash", "sw_crash", "pw")
        server.query("CREATE TABLE sw_crash.t (id INT PRIMARY KEY)")
        server.query("INSERT INTO sw_crash.t VALUES (1), (2), (3)")
        pid = server.pid
        server.kill()
        assert not server.running
        with pytest.raises(_connector().Error):
            server.admin()
        server.start()
        assert server.pid != pid
        assert server.port == port
        assert server.query("SELECT @@port") == [(port,)]
        assert server.query("SELECT id FROM sw_crash.t ORDER BY id") == [(1,), (2,), (3,)]
        server.stop()
        server.stop()  # idempotent
        server.start()
        assert server.query("SELECT count(*) FROM sw_crash.t") == [(3,)]
    assert not server.running
    assert "ready for connections" in server.error_log.read_text()
    assert mariadb.running
