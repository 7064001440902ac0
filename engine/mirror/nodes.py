"""Several hosts for the mirror: which one is ready, which server it is, what it holds.

With `hosts:` in the config the mirror tries each "host:port" in turn
(`MirrorSession.open`). A host is used when it answers and is ready
(`readiness`): a Galera node (`wsrep_on`) must report `wsrep_ready` ON, be
`Synced` and in the primary component; any other server is ready as it is
(a plain MariaDB shows `wsrep_ready` OFF too, so `wsrep_on` tells them apart).

After losing a connection, the mirror decides whether the server it reaches
now already holds everything it sent (then a failover costs no reconcile):

- `Identity` names what the mirror is connected to: a Galera cluster by its
  state UUID (every node of one cluster shares it; a commit acknowledged on
  one node is certified on all, so every node holds it), any other server
  by host name, port, server id and the time it started (a restarted server
  may have lost what it acknowledged, a replica may lag: either is another
  identity, and reconciles).
- `PROGRESS_TABLE` holds one row per scope, written in the same transaction
  as every drained batch: the engine run that wrote it and the last outbox
  sequence number of the batch. Read on the new node (on Galera with
  `wsrep_sync_wait`, so it waits for what the cluster committed), a row of
  this run at or past the last batch the mirror saw committed proves every
  acknowledged batch is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlwarden.mirror.dialect import SCOPE_CHARS, mq

#: The mirror's progress per scope, on the server (Galera needs InnoDB and a primary key).
PROGRESS_TABLE = "_sw_mirror_progress"
#: Seconds two readings of a server's start time may differ and still be one start.
_STARTED_SLACK_S = 2.0

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


@dataclass(frozen=True, slots=True)
class Identity:
    """What the mirror is connected to: a Galera cluster, or one server since it started."""

    kind: str  # "galera" or "server"
    name: str  # the cluster's state UUID, or "hostname:port#server_id"
    started: float = 0.0  # a server's start (Unix seconds); 0 for a cluster

    def same_as(self, other: Identity) -> bool:
        """Whether `other` holds what this one acknowledged (one cluster, or one server
        that has not restarted)."""
        if (self.kind, self.name) != (other.kind, other.name):
            return False
        return self.kind == "galera" or abs(self.started - other.started) <= _STARTED_SLACK_S


def readiness(query: Query) -> tuple[str | None, Identity]:
    """(why the server cannot be used now, or None; what it is)."""
    variables = {_text(k).lower(): _text(v) for k, v in query(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('wsrep_on', 'hostname', 'port', "
        "'server_id')", ())}
    if variables.get("wsrep_on", "OFF").upper() == "ON":
        status = {_text(k).lower(): _text(v) for k, v in query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', "
            "'wsrep_local_state_comment', 'wsrep_cluster_status', "
            "'wsrep_cluster_state_uuid')", ())}
        identity = Identity("galera", status.get("wsrep_cluster_state_uuid", ""))
        if status.get("wsrep_ready", "OFF").upper() != "ON":
            return "the cluster node is not ready (wsrep_ready OFF)", identity
        comment = status.get("wsrep_local_state_comment", "")
        if comment != "Synced":
            return f"the cluster node is {comment or 'in no state'}, not Synced", identity
        component = status.get("wsrep_cluster_status", "")
        if component != "Primary":
            return f"the cluster node is outside the primary component ({component})", identity
        return None, identity
    uptime = [_text(row[1]) for row in query("SHOW GLOBAL STATUS LIKE 'Uptime'", ())]
    (now,), = query("SELECT UNIX_TIMESTAMP()", ())
    name = (f"{variables.get('hostname', '')}:{variables.get('port', '')}"
            f"#{variables.get('server_id', '')}")
    return None, Identity("server", name, float(now) - float(uptime[0] if uptime else 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def progress_table_sql() -> str:
    """CREATE TABLE for the progress rows: InnoDB with a primary key, as Galera needs."""
    return (f"CREATE TABLE IF NOT EXISTS {mq(PROGRESS_TABLE)} (\n"
            f"  scope VARCHAR({SCOPE_CHARS}) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin "
            "NOT NULL,\n"
            "  run CHAR(32) CHARACTER SET ascii NOT NULL,\n"
            "  seq BIGINT NOT NULL,\n"
            "  at DOUBLE NOT NULL,\n"
            "  PRIMARY KEY (scope)\n"
            ") ENGINE=InnoDB")


def progress_upsert_sql() -> str:
    """The statement a drain transaction records its batch with (scope, run, seq, at)."""
    return (f"INSERT INTO {mq(PROGRESS_TABLE)} (scope, run, seq, at) VALUES (%s, %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE run = VALUES(run), seq = VALUES(seq), at = VALUES(at)")


def progress_params(scope: str, run: str, seq: int) -> tuple[Any, ...]:
    return (scope, run, seq, time.time())


def holds_progress(query: Query, identity: Identity, *, scope: str, run: str,
                   seq: int) -> bool:
    """Whether the server's progress row says it holds every batch up to `seq` of `run`."""
    if identity.kind == "galera":
        # Wait until this node has applied what the cluster committed before the read.
        query("SET SESSION wsrep_sync_wait = 1", ())
    try:
        rows = query(f"SELECT run, seq FROM {mq(PROGRESS_TABLE)} WHERE scope = %s", (scope,))
    finally:
        if identity.kind == "galera":
            query("SET SESSION wsrep_sync_wait = 0", ())
    return bool(rows) and str(rows[0][0]) == run and int(rows[0][1]) >= seq
