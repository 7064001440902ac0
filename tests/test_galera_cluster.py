"""The private 3-node Galera cluster the fleet's tests run against (tests/support/galera.py)."""

from __future__ import annotations

import mysql.connector

from sqlwarden.config import parse_dsn

from .support.galera import GaleraCluster, GaleraDb


def _status(cluster: GaleraCluster, index: int, name: str) -> str:
    return cluster.nodes[index].wsrep_status()[name]


def test_three_nodes_on_loopback_are_synced_in_one_cluster(galera: GaleraCluster) -> None:
    assert galera.hosts == [f"127.0.0.1:{node.port}" for node in galera.nodes]
    assert len(set(galera.hosts)) == 3
    for node in galera.nodes:
        assert node.query("SELECT @@bind_address, @@port, @@wsrep_on") == [
            ("127.0.0.1", node.port, 1)]
        status = node.wsrep_status()
        assert (status["wsrep_cluster_size"], status["wsrep_local_state_comment"],
                status["wsrep_ready"]) == ("3", "Synced", "ON")
    assert len({_status(galera, i, "wsrep_cluster_state_uuid") for i in range(3)}) == 1


def test_a_row_written_on_node_0_is_read_on_nodes_1_and_2(galera_db: GaleraDb) -> None:
    nodes = galera_db.cluster.nodes
    nodes[0].query("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))",
                   database=galera_db.database)
    nodes[0].query("INSERT INTO t VALUES (1, 'one')", database=galera_db.database)
    for node in nodes[1:]:
        # A node applies another's commit a moment later: a causal read (wsrep_sync_wait)
        # waits for what the cluster committed before it, as a reader wanting it would.
        conn = node.admin(galera_db.database)
        try:
            cursor = conn.cursor()
            cursor.execute("SET SESSION wsrep_sync_wait = 1")
            cursor.execute("SELECT id, name FROM t")
            assert [tuple(row) for row in cursor.fetchall()] == [(1, "one")]
        finally:
            conn.close()


def test_a_database_user_logs_in_with_its_password_on_every_node(galera_db: GaleraDb) -> None:
    dsn = parse_dsn(galera_db.dsn.replace("${SW_MYSQL_PASSWORD}", galera_db.password))
    assert (dsn.user, dsn.host, dsn.port, dsn.database) == (
        galera_db.user, "127.0.0.1", galera_db.cluster.nodes[0].port, galera_db.database)
    assert galera_db.hosts == galera_db.cluster.hosts
    for i, host_port in enumerate(galera_db.hosts):
        host, port = host_port.rsplit(":", 1)
        conn = mysql.connector.connect(host=host, port=int(port), user=galera_db.user,
                                       password=galera_db.password,
                                       database=galera_db.database, autocommit=True)
        try:
            cursor = conn.cursor()
            cursor.execute(f"CREATE TABLE t{i} (id INT PRIMARY KEY)")
            cursor.execute("SELECT CURRENT_USER(), DATABASE(), @@port")
            assert cursor.fetchall() == [(f"{galera_db.user}@127.0.0.1", galera_db.database,
                                          int(port))]
        finally:
            conn.close()
    tables = {row[0] for row in galera_db.cluster.nodes[2].query(
        "SHOW TABLES", database=galera_db.database)}
    assert tables == {"t0", "t1", "t2"}


def test_a_killed_node_rejoins_with_the_rows_written_while_it_was_down(
        galera_db: GaleraDb) -> None:
    cluster, db = galera_db.cluster, galera_db.database
    node0, node1 = cluster.nodes[0], cluster.nodes[1]
    node0.query("CREATE TABLE t (id INT PRIMARY KEY)", database=db)
    node0.query("INSERT INTO t VALUES (1)", database=db)

    node1.kill()
    assert not node1.running
    cluster.wait_synced(2)
    assert _status(cluster, 0, "wsrep_cluster_size") == "2"
    node0.query("INSERT INTO t VALUES (2), (3)", database=db)

    node1.start()
    assert node1.query("SELECT id FROM t ORDER BY id", database=db) == [(1,), (2,), (3,)]
    for i in range(3):
        assert _status(cluster, i, "wsrep_cluster_size") == "3"


def test_the_killed_bootstrap_node_rejoins_the_same_cluster(galera_db: GaleraDb) -> None:
    cluster, db = galera_db.cluster, galera_db.database
    node0, node1 = cluster.nodes[0], cluster.nodes[1]
    uuid = _status(cluster, 1, "wsrep_cluster_state_uuid")
    node0.query("CREATE TABLE t (id INT PRIMARY KEY)", database=db)

    node0.kill()
    cluster.wait_synced(2)
    node1.query("INSERT INTO t VALUES (1)", database=db)

    node0.start()
    assert node0.query("SELECT id FROM t", database=db) == [(1,)]
    # A node 0 that founded a new cluster would have a new state UUID and a size of 1.
    for i in range(3):
        status = cluster.nodes[i].wsrep_status()
        assert (status["wsrep_cluster_state_uuid"], status["wsrep_cluster_size"]) == (uuid, "3")
