"""The mirror with several hosts: failover, readiness, and conflicts retried whole.

Against the single private MariaDB server: a host that does not answer is
passed over; two "hosts" reach the one server (one of them through a TCP
forwarder the test kills to play a node that dies); a lock held by another
client makes the mirror's transaction time out, and it is sent again whole
on the same connection. The state machine's failover decisions are checked
without a server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sqlwarden.config import Config, MirrorConfig, parse_config, parse_dsn
from sqlwarden.errors import ConfigError, MirrorError
from sqlwarden.facade import Engine
from sqlwarden.mirror.state import Job, MirrorState
from sqlwarden.protocol import MirrorUp, ReconcileBegun
from sqlwarden.statusd import StatusCollector

from .support.galera import GaleraDb
from .support.mariadb import MirrorDb
from .test_mirror import (
    assert_mirror_equals_sqlite,
    boot_reconciled,
    closed_port,
    config_text,
    mirror_status,
    shown,
    tells,
    wait_caught_up,
    wait_for,
    wait_mid_drain,
    wait_state,
    write_items,
)
from .test_mirror_state import ended, step_of

# --- config -----------------------------------------------------------------------------


def hosts_config(tmp_path: Path, dsn: str, hosts: list[str], **mirror: Any) -> Config:
    listed = ", ".join(f'"{h}"' for h in hosts)
    text = config_text(tmp_path, dsn, **mirror).replace(
        "  scope: dev1\n", f"  scope: dev1\n  hosts: [{listed}]\n")
    return parse_config(text, file="test.yaml", base_dir=tmp_path)


def test_hosts_replace_the_dsn_host_in_the_order_given(tmp_path: Path) -> None:
    config = hosts_config(tmp_path, "mysql://sw:pw@ignored.example:1/fleet",
                          ["db1.example:3306", "[::1]:3307", "10.0.0.5:3308"])
    assert config.mirror is not None
    assert config.mirror.hosts == ("db1.example:3306", "[::1]:3307", "10.0.0.5:3308")
    assert config.mirror.where == "sw@db1.example:3306,[::1]:3307,10.0.0.5:3308/fleet"


def test_without_hosts_the_mirror_is_the_dsn_alone(tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path, "mysql://sw:pw@db.example:3307/fleet"),
                          file="test.yaml", base_dir=tmp_path)
    assert config.mirror is not None
    assert config.mirror.hosts == () and config.mirror.where == "sw@db.example:3307/fleet"


@pytest.mark.parametrize(("hosts", "words"), [
    pytest.param("[]", "mirror.hosts: expected 1 to 16 entries", id="empty"),
    pytest.param("db1:3306", "mirror.hosts: expected a list", id="not-a-list"),
    pytest.param("[db1]", "mirror.hosts[0]: expected host:port", id="no-port"),
    pytest.param("['::1:3306']", "mirror.hosts[0]: expected host:port (an IPv6 address as",
                 id="ipv6-without-brackets"),
    pytest.param("[db1:3306, 'db2:0']", "mirror.hosts[1]: the port of 'db2:0' is not",
                 id="port-zero"),
    pytest.param("[db1:65536]", "mirror.hosts[0]: the port of 'db1:65536' is not",
                 id="port-too-big"),
    pytest.param("[db1:3306, DB1:3306]", "mirror.hosts[1]: host 'DB1:3306' is listed twice",
                 id="duplicate"),
    pytest.param("[" + ", ".join(f"h{i}:3306" for i in range(17)) + "]",
                 "expected 1 to 16 entries of the form host:port, got 17", id="too-many"),
    pytest.param("[db1:3306, 12]", "mirror.hosts[1]: expected text", id="a-number"),
])
def test_a_bad_hosts_list_is_one_line_naming_file_line_and_key(
        tmp_path: Path, hosts: str, words: str) -> None:
    text = config_text(tmp_path, "mysql://sw:${SW_PW}@db:3306/fleet").replace(
        "  scope: dev1\n", f"  scope: dev1\n  hosts: {hosts}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="c.yaml", environ={"SW_PW": "hunter2"}, base_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("c.yaml:") and words in message, message
    assert "\n" not in message and "hunter2" not in message


def test_hosts_and_a_socket_dsn_do_not_go_together(tmp_path: Path) -> None:
    text = config_text(tmp_path, "mysql://sw:pw@localhost/fleet?socket=/run/m.sock").replace(
        "  scope: dev1\n", "  scope: dev1\n  hosts: [db1:3306]\n")
    with pytest.raises(ConfigError, match=r"mirror\.hosts: hosts replace the DSN's host"):
        parse_config(text, file="c.yaml", base_dir=tmp_path)


# --- the state machine's decisions --------------------------------------------------------

TWO = MirrorConfig(dsn=parse_dsn("mysql://u:pw@127.0.0.1:3306/db"), tables=("items",),
                   scope="dev1", backoff_initial_s=1, backoff_max_s=4, poll_ms=200,
                   hosts=("127.0.0.1:3306", "127.0.0.1:3307"))


def up(state: MirrorState, node: str, *, reconcile: bool = True) -> int:
    return step_of(state.up(MirrorUp(driver="C extension", server="10.11", node=node,
                                     reconcile=reconcile)))


def lost(state: MirrorState, errno: int = 2013) -> float | None:
    """The connection in use failed: the delay before the next connect."""
    down = state.failure(MirrorError("lost connection", errno=errno, retryable=True))
    state.down(down)
    return down.retry_in_s


def test_a_lost_node_is_left_at_once_and_a_node_holding_everything_costs_no_reconcile() -> None:
    state = MirrorState(TWO, wall=lambda: 1e9)
    assert state.step(step_of(state.boot())) == Job("connect")
    token = up(state, "127.0.0.1:3306", reconcile=False)
    assert state.step(token) == Job("reconcile", 1)  # the boot connect always reconciles
    state.begun(ReconcileBegun(number=1))
    token = step_of(state.reconciled(ended(1)))
    assert state.step(token) == Job("drain")
    state.applied(entries=1, upserts=1, deletes=0, upto_seq=1, changed_at=[1e9])
    assert lost(state) == 0  # no backoff: the other host is tried now
    assert (state.view.state, state.view.node) == ("down", None)
    token = up(state, "127.0.0.1:3307", reconcile=False)
    assert state.step(token) == Job("drain")  # and no reconcile
    assert (state.view.node, state.view.failovers, state.view.reconciles) == (
        "127.0.0.1:3307", 1, 1)
    # A server that cannot show it holds everything: one reconcile.
    assert lost(state) == 0
    token = up(state, "127.0.0.1:3306", reconcile=True)
    assert state.step(token) == Job("reconcile", 2)
    assert state.view.failovers == 2


def test_a_reconcile_cut_short_by_a_failover_runs_again_on_the_next_node() -> None:
    state = MirrorState(TWO, wall=lambda: 1e9)
    state.step(step_of(state.boot()))
    assert state.step(up(state, "127.0.0.1:3306")) == Job("reconcile", 1)
    assert lost(state) == 0
    state.reconciled(ended(1, error="lost connection"))
    # The new node holds every drained batch, but the reconcile did not finish.
    assert state.step(up(state, "127.0.0.1:3307", reconcile=False)) == Job("reconcile", 2)


def test_after_every_host_failed_a_round_the_backoff_doubles_as_for_one_server() -> None:
    state = MirrorState(TWO, wall=lambda: 1e9)
    state.step(step_of(state.boot()))
    state.step(up(state, "127.0.0.1:3306"))
    state.reconciled(ended(1))
    assert lost(state) == 0
    # The round that follows found no host: that is an outage, retried with backoff.
    delays = [lost(state, errno=2003) for _ in range(4)]
    assert delays == [1, 2, 4, 4]


def test_a_host_that_accepts_and_then_fails_every_time_does_not_spin() -> None:
    state = MirrorState(TWO, wall=lambda: 1e9)
    state.step(step_of(state.boot()))
    delays = []
    for i in range(4):
        up(state, f"127.0.0.1:{3306 + i % 2}")
        delays.append(lost(state))
    # Quick rounds while nothing gets through are bounded by the number of hosts.
    assert delays[:2] == [0, 0] and all(d is not None and d > 0 for d in delays[2:])


def test_without_hosts_a_lost_connection_waits_the_backoff_as_before() -> None:
    one = MirrorConfig(dsn=parse_dsn("mysql://u:pw@127.0.0.1:3306/db"), tables=("items",),
                       scope="dev1", backoff_initial_s=1, backoff_max_s=4)
    state = MirrorState(one, wall=lambda: 1e9)
    state.step(step_of(state.boot()))
    state.step(step_of(state.up(MirrorUp(driver="C extension", server="10.11",
                                         node="127.0.0.1:3306"))))
    state.reconciled(ended(1))
    assert lost(state) == 1


# --- against the private MariaDB ----------------------------------------------------------


class Forwarder:
    """A TCP forwarder on 127.0.0.1 to the server: a second address of the same server,
    which `kill` takes away (every connection through it is cut, new ones refused)."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.dead = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # the listener is closed: killed
            server = socket.create_connection(self.target)
            with self.lock:
                if self.dead.is_set():
                    client.close()
                    server.close()
                    return
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                thread = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def kill(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        for thread in self.threads:
            thread.join(timeout=10)


@pytest.fixture
def forwarder(mirror_db: MirrorDb) -> Iterator[Forwarder]:
    proxy = Forwarder(mirror_db.server.port)
    try:
        yield proxy
    finally:
        if not proxy.dead.is_set():
            proxy.kill()


def server_host(mirror_db: MirrorDb) -> str:
    return f"127.0.0.1:{mirror_db.server.port}"


def test_a_host_that_does_not_answer_is_passed_over_for_the_next(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    real = server_host(mirror_db)
    config = hosts_config(tmp_path, mirror_db.dsn, ["127.0.0.1:1", real])
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 301))
        status = wait_caught_up(engine)
        assert (status["node"], status["failovers"]) == (real, 0)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 300
        assert engine.mirror.verify(timeout=30).in_sync
        assert f'sqlwarden_mirror_node{{node="{real}"}} 1.0' in metrics(engine)


def metrics(engine: Engine) -> str:
    """The engine's /metrics text, as a scrape would read it."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(engine.status))
    return generate_latest(registry).decode()


def test_no_ready_host_is_an_outage_naming_every_host_and_writes_go_on(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    first, second = f"127.0.0.1:{closed_port()}", "127.0.0.1:1"
    config = hosts_config(tmp_path, mirror_db.dsn, [first, second])
    with Engine(config) as engine:
        seen = wait_state(engine, "down")
        assert first in seen["error"] and second in seen["error"]
        assert "\n" not in seen["error"] and seen["node"] is None
        write_items(engine, range(1, 2))
        assert mirror_status(engine)["outbox"]["depth"] == 1


@pytest.mark.slow
def test_a_node_lost_mid_drain_fails_over_at_once_without_a_second_reconcile(
        tmp_path: Path, mirror_db: MirrorDb, forwarder: Forwarder) -> None:
    real = server_host(mirror_db)
    config = hosts_config(tmp_path, mirror_db.dsn, [forwarder.host_port, real],
                          batch_rows=20, backoff_initial_s=30, backoff_max_s=60)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 5001))
        seen = wait_mid_drain(engine)
        assert seen["node"] == forwarder.host_port
        forwarder.kill()
        # A 30 s backoff would time this out: the other host is taken at once.
        status = wait_caught_up(engine, timeout=20)
        assert (status["node"], status["failovers"], status["reconciles"]) == (real, 1, 1)
        assert status["reconciles_failed"] == 0
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 5000
        run = engine.run_id
    ups = tells(config, run, "mirror.up")
    assert [(u["fields"]["node"], u["fields"]["reconcile"]) for u in ups] == [
        (forwarder.host_port, True), (real, False)]
    assert len(tells(config, run, "mirror.reconcile_begun", verify=False)) == 1


@pytest.mark.slow
def test_a_failover_to_a_server_that_cannot_show_it_holds_everything_reconciles_once(
        tmp_path: Path, mirror_db: MirrorDb, forwarder: Forwarder) -> None:
    real = server_host(mirror_db)
    config = hosts_config(tmp_path, mirror_db.dsn, [forwarder.host_port, real])
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 201))
        wait_caught_up(engine)
        # The progress row no longer vouches for what was drained (as on a server that
        # lost its last commits): the failover must reconcile.
        mirror_db.server.query("UPDATE _sw_mirror_progress SET seq = 0",
                               database=mirror_db.database)
        forwarder.kill()
        write_items(engine, range(201, 301))
        seen: dict[str, Any] = {}

        def reconciled_twice() -> bool:
            seen.update(mirror_status(engine))
            return seen["reconciles"] == 2 and seen["outbox"].get("depth") == 0

        wait_for(reconciled_twice, 30, lambda: f"a second reconcile ({shown(seen)})")
        assert (seen["node"], seen["failovers"]) == (real, 1)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 300


@pytest.fixture
def short_lock_waits(mirror_db: MirrorDb) -> Iterator[None]:
    """New sessions give up a row lock wait after 1 s (the server default is 50 s)."""
    (before,), = mirror_db.server.query("SELECT @@GLOBAL.innodb_lock_wait_timeout")
    mirror_db.server.query("SET GLOBAL innodb_lock_wait_timeout = 1")
    try:
        yield
    finally:
        mirror_db.server.query(f"SET GLOBAL innodb_lock_wait_timeout = {int(before)}")


@pytest.mark.slow
def test_a_lock_wait_timeout_sends_the_whole_batch_again_on_the_same_connection(
        tmp_path: Path, mirror_db: MirrorDb, forwarder: Forwarder,
        short_lock_waits: None) -> None:
    config = hosts_config(tmp_path, mirror_db.dsn,
                          [forwarder.host_port, server_host(mirror_db)], batch_rows=50)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 101))
        wait_caught_up(engine)
        holder = mirror_db.server.admin(mirror_db.database)
        try:
            holder.autocommit = False
            cursor = holder.cursor()
            cursor.execute("SELECT name FROM items WHERE sw_scope = 'dev1' AND id = 30 "
                           "FOR UPDATE")
            cursor.fetchall()
            # One batch: rows around the held one, and the held one itself.
            engine.write("UPDATE items SET name = 'changed' WHERE id BETWEEN 20 AND 40")
            seen: dict[str, Any] = {}

            def retried() -> bool:
                seen.update(mirror_status(engine))
                return seen["transaction_retries"] >= 1

            wait_for(retried, 30, lambda: f"a retried transaction ({shown(seen)})")
            # Nothing of the batch is on the server while it waits: never a partial batch.
            rows = mirror_db.server.query(
                "SELECT count(*) FROM items WHERE sw_scope = 'dev1' AND name = 'changed'",
                database=mirror_db.database)
            assert rows == [(0,)]
        finally:
            holder.rollback()
            holder.close()
        status = wait_caught_up(engine)
        assert (status["reconciles"], status["failovers"], status["state"]) == (1, 0, "up")
        assert status["node"] == forwarder.host_port
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 100
        run = engine.run_id
    assert len(tells(config, run, "mirror.up")) == 1
    assert not tells(config, run, "mirror.down")


# --- against the private 3-node Galera cluster ----------------------------------------------


def node_rows(galera_db: GaleraDb, node: int, scope: str = "dev1") -> list[tuple[Any, ...]]:
    return [tuple(row) for row in galera_db.cluster.nodes[node].query(
        "SELECT id, name FROM items WHERE sw_scope = %s ORDER BY id", (scope,),
        database=galera_db.database)]


@pytest.mark.slow
def test_a_cluster_node_killed_mid_drain_is_left_for_another_without_a_reconcile(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    cluster = galera_db.cluster
    config = hosts_config(tmp_path, galera_db.dsn, galera_db.hosts, batch_rows=50,
                          backoff_initial_s=30, backoff_max_s=60)
    with Engine(config) as engine:
        boot_reconciled(engine)
        assert mirror_status(engine)["node"] == galera_db.hosts[0]
        write_items(engine, range(1, 5001))
        wait_mid_drain(engine)
        cluster.nodes[0].kill()
        # A 30 s backoff would time this out: the next node is taken at once.
        status = wait_caught_up(engine, timeout=25)
        assert (status["node"], status["failovers"]) == (galera_db.hosts[1], 1)
        # The synchronous cluster held every batch node 0 acknowledged: no reconcile.
        assert (status["reconciles"], status["reconciles_failed"]) == (1, 0)
        assert assert_mirror_equals_sqlite_on(engine, galera_db, 1) == 5000
        cluster.nodes[0].start()
        assert node_rows(galera_db, 0) == node_rows(galera_db, 1) == node_rows(galera_db, 2)


def assert_mirror_equals_sqlite_on(engine: Engine, galera_db: GaleraDb, node: int) -> int:
    with engine.read() as conn:
        local = [tuple(r) for r in conn.execute("SELECT id, name FROM items ORDER BY id")]
    assert node_rows(galera_db, node) == local
    return len(local)


@pytest.mark.slow
def test_a_node_that_is_not_synced_is_passed_over(tmp_path: Path, galera_db: GaleraDb) -> None:
    cluster = galera_db.cluster
    # Node 0 desynced by hand (as during a backup): it answers but is not 'Synced'.
    cluster.nodes[0].query("SET GLOBAL wsrep_desync = ON")
    try:
        wait_for(lambda: cluster.nodes[0].wsrep_status().get("wsrep_local_state_comment")
                 != "Synced", 30, "node 0 to leave the Synced state")
        config = hosts_config(tmp_path, galera_db.dsn, galera_db.hosts)
        with Engine(config) as engine:
            boot_reconciled(engine)
            write_items(engine, range(1, 101))
            status = wait_caught_up(engine)
            assert (status["node"], status["failovers"]) == (galera_db.hosts[1], 0)
    finally:
        cluster.nodes[0].query("SET GLOBAL wsrep_desync = OFF")


@pytest.mark.slow
def test_a_node_refusing_the_login_is_passed_over_for_one_that_takes_it(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    # As on a node restored without the users: node 0 alone lacks the account (dropped
    # with replication off for the session), so it refuses the login; nodes 1 and 2 take it.
    account = f"'{galera_db.user}'@'127.0.0.1'"
    local = galera_db.cluster.nodes[0].admin()
    try:
        cursor = local.cursor()
        cursor.execute("SET SESSION wsrep_on = OFF")
        cursor.execute(f"DROP USER {account}")
        config = hosts_config(tmp_path, galera_db.dsn, galera_db.hosts)
        with Engine(config) as engine:
            boot_reconciled(engine)
            write_items(engine, range(1, 51))
            status = wait_caught_up(engine)
            assert (status["node"], status["state"]) == (galera_db.hosts[1], "up")
            assert assert_mirror_equals_sqlite_on(engine, galera_db, 1) == 50
    finally:
        cursor.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s",
                       (galera_db.password,))
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{galera_db.database}`.* TO {account}")
        local.close()


def test_every_host_refusing_the_login_is_a_config_problem(
        tmp_path: Path, mirror_db: MirrorDb, forwarder: Forwarder) -> None:
    dsn = mirror_db.dsn.replace("${SW_MYSQL_PASSWORD}", "not-the-password")
    config = hosts_config(tmp_path, dsn, ["127.0.0.1:1", forwarder.host_port,
                                          server_host(mirror_db)])
    with Engine(config) as engine:
        status = wait_state(engine, "failed")
        assert "1045" in status["error"] and "not-the-password" not in status["error"]
