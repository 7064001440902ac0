"""A private MariaDB Galera cluster on loopback for tests and benchmarks.

Each node is a private mariadbd (tests/support/mariadb.py) under `root/nodeN` with its
own datadir, unix socket, MySQL port, gcomm port, IST port and SST port, all on
127.0.0.1. Node 0 bootstraps the cluster; the others join it one after another and
get their data by an rsync SST::

    with GaleraCluster(tmp_path / "galera") as cluster:
        cluster.create_database("sw_x", "sw_x", "secret")
        cluster.nodes[1].kill()                       # SIGKILL, as a crash would
        cluster.wait_synced(2)
        cluster.nodes[1].start()                      # rejoins (IST), waits until Synced
        dsn = cluster.dsn("sw_x", "sw_x")             # node 0's port; cluster.hosts for all

Imports no pytest, so the benchmarks can use it too
(`from tests.support.galera import GaleraCluster`).

For tests only: run as root, a joining node's SST rsync daemon runs as root too
(the stock script's daemon would switch to `nobody` and could not write the
datadir), with no password and a writable module, on 127.0.0.1 and only while
a transfer runs. Any local user could write into that node's datadir then.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from . import mariadb
from .mariadb import MariaDB

#: Where Debian's galera-4 and other distributions put the wsrep provider.
_PROVIDERS = (
    "/usr/lib/galera/libgalera_smm.so",
    "/usr/lib/libgalera_smm.so",
    "/usr/lib/galera-4/libgalera_smm.so",
    "/usr/lib64/galera-4/libgalera_smm.so",
    "/usr/lib64/galera/libgalera_smm.so",
    "/usr/lib/x86_64-linux-gnu/galera/libgalera_smm.so",
)

#: Server settings sized for a 2-core machine shared with the engines under test: three
#: nodes must fit beside them, so buffers are a few MB. Any can be overridden through
#: `GaleraCluster(options=...)` (a benchmark may want a bigger pool).
DEFAULT_OPTIONS: dict[str, str] = {
    "innodb_buffer_pool_size": "8M",
    "innodb_log_file_size": "16M",
    # Durability comes from the other nodes holding every commit; a killed node recovers
    # what it misses by IST. Flushing the log once a second keeps the disk quiet.
    "innodb_flush_log_at_trx_commit": "2",
    # The server's defaults allocate these (16M, 128M, 128M) and touch much of them at
    # start: about 40 MB of resident memory per node, for caches the tests never fill.
    "innodb_log_buffer_size": "2M",
    "aria_pagecache_buffer_size": "1M",
    "key_buffer_size": "1M",
    "max_connections": "100",
    "max_allowed_packet": "256M",
    "performance_schema": "OFF",
    "wsrep_slave_threads": "2",
}

#: Galera's own settings. gcache holds the write sets a rejoining node gets by IST.
#: Failure detection is quicker than the WAN-minded defaults (PT5S/PT15S): on loopback a
#: silent peer is gone, and the tests and the failover bench wait on it.
_PROVIDER_OPTIONS: dict[str, str] = {
    "gcache.size": "32M",
    "gcache.page_size": "16M",
    "evs.keepalive_period": "PT0.5S",
    "evs.inactive_check_period": "PT0.5S",
    "evs.suspect_timeout": "PT2S",
    "evs.inactive_timeout": "PT4S",
    "evs.install_timeout": "PT4S",
    "pc.wait_prim_timeout": "PT10S",
}

#: The SST method: Galera's rsync SST through the wrapper below (`wsrep_sst_` + this name is
#: what mariadbd runs, found on its PATH).
_SST_METHOD = "sw_rsync"

#: rsync's daemon (the joiner's end of an rsync SST) switches to the user "nobody" when
#: started by root, and then cannot write the datadir; wsrep_sst_rsync has no setting for
#: that. So the SST runs through a wrapper that puts an rsync shim first on PATH, which
#: keeps the daemon as the user it was started as.
_SST_WRAPPER = """#!/bin/sh
# Written by tests/support/galera.py: Galera's rsync SST with the rsync shim beside it.
PATH='{bin}':"$PATH"
export PATH
exec '{sst}' "$@"
"""
_RSYNC_SHIM = """#!/bin/sh
# Written by tests/support/galera.py: an rsync daemon started by root stays root.
if [ "$1" = --daemon ] && [ "$(id -u)" = 0 ]; then
  shift
  exec '{rsync}' --daemon --dparam=uid=root --dparam=gid=root "$@"
fi
exec '{rsync}' "$@"
"""

#: "WSREP: Recovered position: <uuid>:<seqno>" as mariadbd --wsrep-recover logs it.
_RECOVERED = re.compile(rb"Recovered position:\s+([0-9a-f-]{36}:-?\d+)")


def provider() -> str | None:
    """The path of the Galera wsrep provider library, or None when it is not installed."""
    for path in _PROVIDERS:
        if os.path.isfile(path):
            return path
    return None


def available() -> str | None:
    """None when a private cluster can be run here, otherwise a one-line reason."""
    reason = mariadb.available()
    if reason:
        return reason
    if provider() is None:
        return f"libgalera_smm.so not found in {', '.join(_PROVIDERS)} (install galera-4)"
    missing = [name for name in ("wsrep_sst_rsync", "rsync") if mariadb._find(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not found (install the rsync package; "
                "wsrep_sst_rsync comes with mariadb-server)")
    if mariadb._find("ss") is None and mariadb._find("lsof") is None:
        return "neither ss nor lsof found; the rsync SST needs one (install iproute2)"
    return None


def _pick_ports(count: int) -> list[int]:
    """`count` distinct free ports below the kernel's ephemeral range, so no client
    connection can take a node's port while the node is down between kill and start."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    upper = max(low, 12000)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 200):
            if len(ports) == count:
                break
            port = random.randrange(10000, upper)
            if port in ports:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            ports.append(port)
        # A crowded range: let the kernel choose the rest.
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in held:
            s.close()
    return ports


class GaleraNode(MariaDB):
    """One mariadbd of a `GaleraCluster`, under `cluster.root / f"node{index}"`."""

    def __init__(self, cluster: GaleraCluster, index: int, ports: Sequence[int]) -> None:
        super().__init__(cluster.root / f"node{index}")
        self._cluster = weakref.ref(cluster)
        self.index = index
        self.port, self.gcomm_port, self.ist_port, self.sst_port = ports
        self.config_file = self.root / "my.cnf"
        #: True during a start() that founds a new cluster (no other node was running).
        self._bootstrap = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"GaleraNode({self.index}, port={self.port}, {state})"

    @property
    def cluster(self) -> GaleraCluster:
        cluster = self._cluster()
        if cluster is None:
            raise RuntimeError("the GaleraCluster of this node is gone")
        return cluster

    @property
    def host_port(self) -> str:
        """The node's MySQL address, "127.0.0.1:PORT"."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 120) -> None:
        """Start the node and wait until it is Synced in a cluster of every running node.

        With another node of the cluster running it joins that cluster (IST when the
        others' gcache still holds what it missed, else SST) and never founds a new one,
        even if it is node 0. With none running it bootstraps a new cluster from its data.
        Does nothing if it is already running.
        """
        if self.running:
            return
        cluster = self.cluster
        others = [node for node in cluster.nodes if node is not self and node.running]
        self._bootstrap = not others
        deadline = time.monotonic() + timeout
        try:
            super().start(timeout)
        finally:
            self._bootstrap = False
        self.wait_synced(len(others) + 1, timeout=max(deadline - time.monotonic(), 1))

    def wait_synced(self, size: int, timeout: float = 60) -> None:
        """Wait until this node says Synced, ready, and a cluster of `size` nodes."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while True:
            if not self.running:
                raise RuntimeError(f"galera node {self.index} exited; {self.error_log}:\n"
                                   f"{self.log_tail()}")
            try:
                last = self.wsrep_status()
            except Exception as exc:  # starting, or busy with an SST
                last = {"error": str(exc)}
            if (last.get("wsrep_local_state_comment") == "Synced"
                    and last.get("wsrep_ready") == "ON"
                    and last.get("wsrep_cluster_size") == str(size)):
                return
            if time.monotonic() > deadline:
                shown = {k: v for k, v in last.items()
                         if k in ("error", "wsrep_local_state_comment", "wsrep_ready",
                                  "wsrep_cluster_size", "wsrep_cluster_status")}
                raise RuntimeError(f"galera node {self.index} not Synced in a cluster of "
                                   f"{size} within {timeout}s ({shown}); {self.error_log}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def wsrep_status(self) -> dict[str, str]:
        """The node's `SHOW GLOBAL STATUS LIKE 'wsrep%'`, names to values."""
        return {str(name): str(value)
                for name, value in self.query("SHOW GLOBAL STATUS LIKE 'wsrep%'")}

    # -- what MariaDB.start() calls --------------------------------------------------------

    def _install(self, timeout: float) -> None:
        if self._bootstrap:
            super()._install(timeout)
        else:
            # A joiner gets everything by SST; installing a datadir first would be wasted.
            self.datadir.mkdir(parents=True, exist_ok=True)

    def _server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.cluster.bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def _server_args(self) -> list[str]:
        mariadbd = mariadb._find("mariadbd")
        assert mariadbd is not None
        self.cluster._write_sst_wrapper()
        self._write_config()
        args = [mariadbd, f"--defaults-file={self.config_file}"]
        if self._bootstrap:
            self._allow_bootstrap()
            args.append("--wsrep-new-cluster")
        else:
            position = self._recovered_position()
            if position is not None:
                args.append(f"--wsrep-start-position={position}")
        return args

    # -- internals -------------------------------------------------------------------------

    def _write_config(self) -> None:
        """The node's whole configuration as a defaults file, which the SST script reads
        too (it finds the datadir and its own address there)."""
        cluster = self.cluster
        provider_path = provider()
        if provider_path is None:
            raise RuntimeError(f"cannot run Galera: {available()}")
        provider_options = {
            **_PROVIDER_OPTIONS,
            "gmcast.listen_addr": f"tcp://{self.host}:{self.gcomm_port}",
            "ist.recv_addr": f"{self.host}:{self.ist_port}",
        }
        settings: dict[str, str] = {
            "datadir": str(self.datadir),
            "socket": str(self.socket),
            "port": str(self.port),
            "bind-address": self.host,
            "pid-file": str(self.pid_file),
            "log-error": str(self.error_log),
            # After a kill() the old port may still be held for a moment.
            "port-open-timeout": "10",
            "skip-name-resolve": "ON",
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_bin",
            # What Galera requires of the server.
            "binlog_format": "ROW",
            "default_storage_engine": "InnoDB",
            "innodb_autoinc_lock_mode": "2",
            **DEFAULT_OPTIONS,
            **cluster.options,
            "wsrep_on": "ON",
            "wsrep_provider": provider_path,
            "wsrep_cluster_name": cluster.name,
            "wsrep_cluster_address": "gcomm://" + ",".join(
                f"{node.host}:{node.gcomm_port}" for node in cluster.nodes),
            "wsrep_node_name": f"node{self.index}",
            "wsrep_node_address": f"{self.host}:{self.gcomm_port}",
            "wsrep_sst_method": _SST_METHOD,
            "wsrep_sst_receive_address": f"{self.host}:{self.sst_port}",
            "wsrep_provider_options": "; ".join(f"{k}={v}"
                                                for k, v in provider_options.items()),
        }
        if os.geteuid() == 0:
            settings["user"] = "root"
        lines = ["[mysqld]"] + [f'{key}="{value}"' if " " in value else f"{key}={value}"
                                for key, value in settings.items()]
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text("\n".join(lines) + "\n")

    def _allow_bootstrap(self) -> None:
        """Mark the node's state safe to found a cluster from. Galera refuses to bootstrap
        from a node that did not leave last; with no other node running there is nothing
        newer to lose in a test cluster."""
        grastate = self.datadir / "grastate.dat"
        with contextlib.suppress(FileNotFoundError):
            text = grastate.read_text()
            grastate.write_text(re.sub(r"(?m)^safe_to_bootstrap:\s*0", "safe_to_bootstrap: 1",
                                       text))

    def _recovered_position(self) -> str | None:
        """After a crash grastate.dat has no seqno; read it back from InnoDB (as
        galera_recovery does), so the node asks for an IST of what it missed, not a whole
        SST."""
        grastate = self.datadir / "grastate.dat"
        try:
            text = grastate.read_text()
        except FileNotFoundError:
            return None
        if not re.search(r"(?m)^seqno:\s*-1\s*$", text) or not (self.datadir / "mysql").is_dir():
            return None
        mariadbd = mariadb._find("mariadbd")
        assert mariadbd is not None
        log = self.root / "recover.log"
        log.unlink(missing_ok=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([mariadbd, f"--defaults-file={self.config_file}", "--wsrep-recover",
                            f"--log-error={log}"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=self.root, timeout=60)
        try:
            found = _RECOVERED.findall(log.read_bytes())
        except OSError:
            return None
        if not found:
            return None
        position = found[-1].decode()
        return None if position.endswith(":-1") else position


@dataclass(frozen=True)
class GaleraDb:
    """A fresh database and user on the test cluster (the `galera_db` fixture)."""

    cluster: GaleraCluster
    database: str
    user: str
    password: str
    #: `cluster.dsn(user, database)`: node 0's port, the password as `${SW_MYSQL_PASSWORD}`.
    dsn: str
    #: `cluster.hosts`: "127.0.0.1:PORT" of every node, in order.
    hosts: list[str]


#: Clusters that are running, stopped when the interpreter exits normally (before the
#: single servers' own handler, which atexit runs after this one).
_RUNNING: weakref.WeakSet[GaleraCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_RUNNING):
        with contextlib.suppress(Exception):
            cluster.stop()


class GaleraCluster:
    """`size` Galera nodes under `root`; see the module's docstring."""

    def __init__(self, root: Path, size: int = 3, *,
                 options: Mapping[str, str] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size {size}: a cluster has at least one node")
        self.root = Path(root).resolve()
        self.size = size
        #: Server settings over DEFAULT_OPTIONS, e.g. {"innodb_buffer_pool_size": "64M"}.
        self.options = dict(options or {})
        #: Unique, so a node never joins another session's cluster on a reused port.
        self.name = f"sw-test-{secrets.token_hex(4)}"
        #: The SST wrapper and its rsync shim, put first on the nodes' PATH.
        self.bin_dir = self.root / "bin"
        ports = _pick_ports(4 * size)
        self.nodes: list[GaleraNode] = [GaleraNode(self, i, ports[4 * i:4 * i + 4])
                                        for i in range(size)]

    def __repr__(self) -> str:
        running = sum(node.running for node in self.nodes)
        return f"GaleraCluster({str(self.root)!r}, {running}/{self.size} running)"

    @property
    def hosts(self) -> list[str]:
        """The MySQL address of every node, "127.0.0.1:PORT", in order."""
        return [node.host_port for node in self.nodes]

    @property
    def running(self) -> list[GaleraNode]:
        """The nodes whose process is alive."""
        return [node for node in self.nodes if node.running]

    def start(self, timeout: float = 180) -> None:
        """Bootstrap node 0 (or, if some nodes run, join the rest to them) and start the
        others one at a time; returns when every node is Synced in a cluster of `size`."""
        deadline = time.monotonic() + timeout
        _RUNNING.add(self)
        try:
            for node in self.nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1))
            self.wait_synced(self.size, timeout=max(deadline - time.monotonic(), 1))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Shut every node down cleanly, all at once. Idempotent."""
        running = self.running
        for node in running:
            proc = node._proc
            if proc is not None:
                proc.terminate()
        for node in running:
            proc = node._proc
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node._signal_group(proc, signal.SIGKILL)
                    proc.wait()
            node._stopped()
        _RUNNING.discard(self)

    def __enter__(self) -> GaleraCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait_synced(self, size: int | None = None, timeout: float = 60) -> None:
        """Wait until every running node is Synced in a cluster of `size` (default: the
        number of running nodes), e.g. `wait_synced(2)` after killing one of three."""
        expected = len(self.running) if size is None else size
        deadline = time.monotonic() + timeout
        for node in self.running:
            node.wait_synced(expected, timeout=max(deadline - time.monotonic(), 1))

    def node(self) -> GaleraNode:
        """A running node (the first), for statements that replicate to all."""
        running = self.running
        if not running:
            raise RuntimeError("no node of the galera cluster is running")
        return running[0]

    def query(self, sql: str, params: Sequence[Any] = (), database: str | None = None,
              ) -> list[tuple[Any, ...]]:
        """Run one statement as root on a running node."""
        return self.node().query(sql, params, database)

    def create_database(self, name: str, user: str, password: str) -> None:
        """A database and its user (as MariaDB.create_database) on a running node; Galera
        replicates the DDL, the user and the grants to every node before it returns."""
        self.node().create_database(name, user, password)

    def drop_database(self, name: str, user: str | None = None) -> None:
        """Drop a database made by `create_database` (and its user), if they exist."""
        self.node().drop_database(name, user)

    def dsn(self, user: str, database: str, password_ref: str = "${SW_MYSQL_PASSWORD}") -> str:
        """The project's DSN for `user` at node 0 over TCP; the password as a reference."""
        return self.nodes[0].dsn(user, database, password_ref)

    def _write_sst_wrapper(self) -> None:
        sst, rsync = mariadb._find("wsrep_sst_rsync"), mariadb._find("rsync")
        if sst is None or rsync is None:
            raise RuntimeError(f"cannot run Galera: {available()}")
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for name, text in ((f"wsrep_sst_{_SST_METHOD}",
                            _SST_WRAPPER.format(bin=self.bin_dir, sst=sst)),
                           ("rsync", _RSYNC_SHIM.format(rsync=rsync))):
            path = self.bin_dir / name
            path.write_text(text)
            path.chmod(0o755)
