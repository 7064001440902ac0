"""`scripts/bench fleet [--devices N] [--rate R] [--seconds S] [--kill-after S]
                       [--json PATH] [--workdir DIR]`

A fleet of devices meeting in the mirror. N engine processes (8 by default),
each on its own SQLite file with its own scope (`device-00`, `device-01`,
...), each ingesting steadily R rows a second (500; one upsert every 100 ms,
a fifth of its rows updates of earlier ids) into table `readings` (id,
sensor, updated_at with microseconds, value, a body of about 100 bytes; an
index on updated_at) for S seconds (60), then waiting until its outbox is
empty and verifying its scope. Each device is the hidden command
`_fleet_device` (fleet_device.py) in a process of its own; all start
ingesting together once every one has finished its boot reconcile.

Two phases, on fresh SQLite files each. `cluster`: a private 3-node MariaDB
Galera cluster on loopback (tests/support/galera.py), started in a temporary
directory; device i lists the nodes' `hosts:` rotated by i, so the writes
spread over the nodes (device 0 starts on node 0, device 1 on node 1, ...).
--kill-after seconds into the ingest (half of S by default) the node the
most devices are on is SIGKILLed; once every device that was on it has
drained on another node it is started again and rejoins. `single`: the same
fleet against one private MariaDB server (tests/support/mariadb.py), no
kill. Every device samples its mirror's view ten times a second (node,
failovers, last_drain_at, lag) into a JSON-lines file the bench reads.

JSON keys: devices; cluster_rows_s and single_rows_s (rows written by all
devices over the time from the common start until every device's outbox was
empty: what the central side took in, which equals devices x rate when it
keeps up); cluster_vs_single (their ratio); cluster_lag_p99_ms and
single_lag_p99_ms (the largest, over devices, of the mirror's own lag p99
over its last 5,000 drained changes, sampled before the kill time, so the
cluster's is its steady state; the whole run's, failover included, is in
details); failover_s (the largest, over the devices that were on the killed
node, of the time from the SIGKILL to the first drain they did on another
node, their `last_drain_at` at most one sample late; null when none was on
it); peak_rss_mb (per engine: the largest VmHWM of any device process); and
everything else under `details`, per device included (scope, nodes,
failovers, transaction retries, rows, verify). Targets:
cluster_lag_p99_ms <= 2000, failover_s <= 10, every device's scope equal to
its SQLite at the end (the device's own verify, range by range over its
whole table, and its row count against the server's).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw

from .common import PACKAGE, ROOT, SCRIPTS, Result, add_output_options, in_workdir, met
from .fleet_device import CASE_COMMAND, FLEET_TABLE, fleet_fail

NAME = "fleet"
HELP = ("a fleet of engine processes, each its own scope, mirroring into a 3-node Galera "
        "cluster (one node killed mid-run) and into one MariaDB server")
DATABASE = "fleet"
USER = "fleet"
LAG_TARGET_MS = 2000.0
FAILOVER_TARGET_S = 10.0
READY_TIMEOUT_S = 240.0
FAILOVER_TIMEOUT_S = 120.0
#: After the ingest: the drain and the verify, at most.
END_TIMEOUT_S = 900.0
SEED = 18


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=8,
                        help="engine processes, each its own scope (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="rows a second each device writes (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the devices ingest, per phase (default: %(default)s)")
    parser.add_argument("--kill-after", type=float, default=None,
                        help="seconds into the cluster phase's ingest when a node is killed "
                        "(default: half of --seconds)")
    add_output_options(parser, NAME, workdir="where the SQLite files, samples and device logs "
                       "go, kept there (default: a temporary directory, removed afterwards; "
                       "the servers' always is)")


def usage_error(args: argparse.Namespace) -> str | None:
    if args.devices < 1 or args.rate <= 0 or args.seconds <= 0:
        return "--devices, --rate and --seconds must be positive"
    if args.kill_after is not None and not 0 < args.kill_after < args.seconds:
        return "--kill-after must be more than 0 and less than --seconds"
    return None


def run(args: argparse.Namespace) -> Result:
    return in_workdir(args, _bench_fleet)


def _bench_fleet(args: argparse.Namespace, workdir: Path) -> Result:
    bench_started = time.perf_counter()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support import galera, mariadb

    for problem in (galera.available(), mariadb.available()):
        if problem:
            raise fleet_fail(f"no private cluster or server can run here: {problem}")
    password = secrets.token_urlsafe(18)
    os.environ["SW_MYSQL_PASSWORD"] = password
    kill_after = args.kill_after if args.kill_after is not None else args.seconds / 2
    with tempfile.TemporaryDirectory(prefix="sqlwarden-bench-galera-") as tmp:
        # The nodes may run as another user (mysql): they must reach their directories.
        os.chmod(tmp, 0o755)
        print(f"  starting a 3-node Galera cluster in {tmp}", file=sys.stderr)
        started = time.perf_counter()
        with galera.GaleraCluster(Path(tmp)) as cluster:
            cluster_start_s = time.perf_counter() - started
            cluster.create_database(DATABASE, USER, password)
            (version,), = cluster.query("SELECT VERSION()")
            hosts = cluster.hosts
            dsn = cluster.dsn(USER, DATABASE)

            def kill_busiest(latest: dict[int, str]) -> tuple[str, Callable[[], float]]:
                """SIGKILL the node most devices are on; returns it and how to restart it."""
                victim = collections.Counter(latest.values()).most_common(1)[0][0]
                node = next(n for n in cluster.nodes if n.host_port == victim)
                node.kill()

                def restart() -> float:
                    began = time.perf_counter()
                    node.start()
                    return time.perf_counter() - began
                return victim, restart

            cluster_phase = run_phase(
                "cluster", workdir / "cluster", dsn, args,
                [hosts[i % len(hosts):] + hosts[:i % len(hosts)] for i in range(args.devices)],
                kill_after=kill_after, kill=kill_busiest)
            cluster_phase["server"] = f"MariaDB {version} Galera, 3 nodes (private, 127.0.0.1)"
            cluster_phase["start_s"] = round(cluster_start_s, 1)
            cluster_phase["nodes_equal"] = _nodes_equal(cluster, args.devices)
            cluster_phase["server_rows"] = _server_counts(cluster.query, args.devices)
    with (tempfile.TemporaryDirectory(prefix="sqlwarden-bench-mariadb-") as tmp,
          mariadb.MariaDB(Path(tmp)) as server):
        server.create_database(DATABASE, USER, password)
        (version,), = server.query("SELECT VERSION()")
        single_phase = run_phase("single", workdir / "single", server.dsn(USER, DATABASE), args,
                                 [[] for _ in range(args.devices)], kill_after=kill_after)
        single_phase["server"] = f"MariaDB {version} (private, 127.0.0.1)"
        single_phase["server_rows"] = _server_counts(server.query, args.devices)
    phases = {"cluster": cluster_phase, "single": single_phase}
    every_equal = cluster_phase["nodes_equal"] and all(
        _device_equal(d, phase["server_rows"]) for phase in phases.values()
        for d in phase["devices"])
    return {
        "devices": args.devices,
        "cluster_rows_s": cluster_phase["rows_s"],
        "single_rows_s": single_phase["rows_s"],
        "cluster_vs_single": round(cluster_phase["rows_s"] / single_phase["rows_s"], 3),
        "cluster_lag_p99_ms": cluster_phase["lag_p99_ms"],
        "single_lag_p99_ms": single_phase["lag_p99_ms"],
        "failover_s": cluster_phase["failover"]["seconds"],
        "peak_rss_mb": max(d["peak_rss_mb"] for p in phases.values() for d in p["devices"]),
        "details": {
            "bench": "fleet",
            "every_scope_equal": every_equal,
            "cluster": cluster_phase,
            "single": single_phase,
            "params": {"devices": args.devices, "rate": args.rate, "seconds": args.seconds,
                       "kill_after_s": kill_after, "table": FLEET_TABLE,
                       "cores": os.cpu_count()},
            "wall_s": round(time.perf_counter() - bench_started, 1),
            "sqlite_version": apsw.sqlite_lib_version(),
        },
    }


# --- one phase ----------------------------------------------------------------------------

class Device:
    """One `_fleet_device` process and its files."""

    def __init__(self, index: int, folder: Path, dsn: str, hosts: Sequence[str],
                 args: argparse.Namespace) -> None:
        self.index = index
        self.scope = f"device-{index:02d}"
        self.hosts = list(hosts)
        self.samples_path = folder / f"{self.scope}.samples.jsonl"
        self.out = folder / f"{self.scope}.result.json"
        self.log = folder / f"{self.scope}.log"
        self._read_at = 0
        self._pending = b""
        #: Every sample read so far, in order.
        self.samples: list[dict[str, Any]] = []
        self.ready = False
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([str(SCRIPTS), str(ROOT), *([path] if path else [])])}
        command = [sys.executable, "-m", PACKAGE, CASE_COMMAND, "--db",
                   str(folder / f"{self.scope}.db"), "--dsn", dsn, "--hosts", ",".join(hosts),
                   "--scope", self.scope, "--rate", str(args.rate), "--seconds",
                   str(args.seconds), "--seed", str(SEED + index), "--go", str(folder / "go"),
                   "--samples", str(self.samples_path), "--out", str(self.out)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def read(self) -> None:
        """Take in the lines written since the last read."""
        try:
            with self.samples_path.open("rb") as f:
                f.seek(self._read_at)
                data = f.read()
        except FileNotFoundError:
            return
        self._read_at += len(data)
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            record = json.loads(line)
            if "ready" in record:
                self.ready = True
            else:
                self.samples.append(record)

    def latest_node(self) -> str | None:
        for sample in reversed(self.samples):
            if sample["node"]:
                return str(sample["node"])
        return None

    def failed(self) -> str | None:
        """Why the process ended without a result, or None while it runs or when it has one."""
        code = self.proc.poll()
        if code is None or (code == 0 and self.out.exists()):
            return None
        tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        return f"{self.scope} exited with status {code}:\n    " + "\n    ".join(tail)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_phase(name: str, folder: Path, dsn: str, args: argparse.Namespace,
              hosts: list[list[str]], *, kill_after: float,
              kill: Callable[[dict[int, str]], tuple[str, Callable[[], float]]] | None = None
              ) -> dict[str, Any]:
    """Start the devices, wait until all are ready, say go, (kill a node), wait for their
    results; the phase's figures."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    print(f"  {name}: starting {args.devices} devices", file=sys.stderr)
    devices = [Device(i, folder, dsn, hosts[i], args) for i in range(args.devices)]
    failover: dict[str, Any] = {"seconds": None}
    restarter: threading.Thread | None = None
    try:
        _until(devices, lambda: all(d.ready for d in devices), READY_TIMEOUT_S,
               "every device's boot reconcile")
        go = time.time()
        (folder / "go").touch()
        print(f"  {name}: ingesting {args.rate:g} rows/s on each device for "
              f"{args.seconds:g} s", file=sys.stderr)
        if kill is not None:
            time.sleep(max(0.0, go + kill_after - time.time()))
            for d in devices:
                d.read()
            latest = {d.index: node for d in devices if (node := d.latest_node())}
            if not latest:
                raise fleet_fail("no device reported the node it uses (MirrorView.node)")
            victim, restart = kill(latest)
            # Taken once the SIGKILL is sent: a drain the victim acknowledged is before it.
            killed_at = time.time()
            on_it = sorted(i for i, node in latest.items() if node == victim)
            print(f"  {name}: killed {victim} ({len(on_it)} devices on it)", file=sys.stderr)
            moved: dict[int, dict[str, Any]] = {}

            def all_moved() -> bool:
                for i in on_it:
                    if i in moved:
                        continue
                    # Drains counted up to the last look at the victim: a later drain
                    # seen on another node is that node's, not one the victim made.
                    before = max((s["drained"] for s in devices[i].samples
                                  if s["node"] == victim), default=0)
                    for s in devices[i].samples:
                        if (s["node"] not in (None, victim) and s["last_drain_at"] is not None
                                and s["last_drain_at"] > killed_at and s["drained"] > before):
                            moved[i] = {"scope": devices[i].scope, "to": s["node"],
                                        "seconds": round(s["last_drain_at"] - killed_at, 3)}
                            break
                return len(moved) == len(on_it)

            _until(devices, all_moved, FAILOVER_TIMEOUT_S,
                   f"the devices on {victim} to drain on another node")
            failover = {"seconds": max((m["seconds"] for m in moved.values()), default=None),
                        "node": victim, "killed_at_s": round(killed_at - go, 3),
                        "devices": [moved[i] for i in on_it]}
            print(f"  {name}: failover {failover['seconds']} s; restarting {victim}",
                  file=sys.stderr)

            def rejoin() -> None:
                try:
                    failover["rejoin_s"] = round(restart(), 1)
                except Exception as exc:  # reported, the phase goes on with two nodes
                    failover["rejoin_error"] = " ".join(str(exc).split())[:300]
            restarter = threading.Thread(target=rejoin, name="bench-fleet-rejoin")
            restarter.start()
        _until(devices, lambda: all(d.proc.poll() is not None for d in devices),
               args.seconds + END_TIMEOUT_S, "every device's drain and verify")
        if restarter is not None:
            restarter.join()
    finally:
        for d in devices:
            d.stop()
    problems = [p for d in devices if (p := d.failed())]
    if problems:
        raise fleet_fail(f"in the {name} phase " + "\n  ".join(problems))
    for d in devices:
        d.read()
    results = [json.loads(d.out.read_text()) for d in devices]
    return _phase_figures(go, kill_after, devices, results, failover)


def _until(devices: list[Device], done: Callable[[], bool], timeout_s: float,
           what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for d in devices:
            d.read()
        problems = [p for d in devices if (p := d.failed())]
        if problems:
            raise fleet_fail("while waiting for " + what + ": " + "\n  ".join(problems))
        if done():
            return
        if time.monotonic() > deadline:
            raise fleet_fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def _phase_figures(go: float, kill_after: float, devices: list[Device],
                   results: list[dict[str, Any]], failover: dict[str, Any]) -> dict[str, Any]:
    rows = sum(r["ingest"]["rows_sent"] for r in results)
    drained = max(r["drained_at"] for r in results) - go
    steady_end = go + kill_after
    per_device = []
    steady: list[float] = []
    whole: list[float] = []
    for d, r in zip(devices, results, strict=True):
        lags = [s["lag_p99_ms"] for s in d.samples if s["lag_p99_ms"] is not None]
        before = [s["lag_p99_ms"] for s in d.samples
                  if s["lag_p99_ms"] is not None and s["t"] <= steady_end]
        steady.extend(before)
        whole.extend(lags)
        nodes = list(dict.fromkeys(s["node"] for s in d.samples if s["node"]))
        per_device.append({
            "scope": d.scope, "hosts": d.hosts, "nodes": nodes, "node_at_end": r["node"],
            "failovers": r["failovers"], "transaction_retries": r.get("transaction_retries"),
            "reconciles": r["reconciles"], "rows": r["rows"],
            "rows_sent": r["ingest"]["rows_sent"], "ingest_rows_s": r["ingest"]["rows_s"],
            "behind_schedule_max_s": r["ingest"]["behind_schedule_max_s"],
            "drain_after_s": round(r["drained_at"] - r["ingest"]["written_at"], 3),
            "lag_p99_ms_steady": max(before, default=None),
            "lag_p99_ms_whole_run": max(lags, default=None),
            "verify": r["verify"], "peak_rss_mb": r["peak_rss_mb"], "driver": r["driver"],
        })
    return {
        "rows": rows, "seconds_to_drained": round(drained, 3),
        "rows_s": round(rows / drained, 1),
        "lag_p99_ms": max(steady, default=None),
        "lag_p99_ms_whole_run": max(whole, default=None),
        "failover": failover, "devices": per_device,
    }


# --- checks ---------------------------------------------------------------------------------

def _server_counts(query: Callable[..., list[tuple[Any, ...]]], devices: int) -> dict[str, int]:
    """Rows per scope on the server, as the README's latest-per-device reader sees them."""
    rows = query(f"SELECT sw_scope, COUNT(*) FROM `{FLEET_TABLE}` GROUP BY sw_scope",
                 database=DATABASE)
    counts = {str(scope): int(count) for scope, count in rows}
    return {f"device-{i:02d}": counts.get(f"device-{i:02d}", 0) for i in range(devices)}


def _nodes_equal(cluster: Any, devices: int, timeout_s: float = 60.0) -> bool:
    """Whether every running node comes to hold the same rows per scope (a node applies
    what the others committed a moment later, so it is asked again until they agree)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = [_server_digests(node.query) for node in cluster.running]
        if all(s == seen[0] for s in seen):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _server_digests(query: Any) -> list[tuple[Any, ...]]:
    """Per scope: rows, and the sum and the xor of the rows' digests (the mirror's
    generated CRC32 of each row's values), so nodes agree on content, not only counts."""
    return [tuple(row) for row in query(
        f"SELECT sw_scope, COUNT(*), SUM(sw_digest), BIT_XOR(sw_digest) FROM `{FLEET_TABLE}` "
        "GROUP BY sw_scope ORDER BY sw_scope", database=DATABASE)]


def _device_equal(device: dict[str, Any], server_rows: dict[str, int]) -> bool:
    verify = device["verify"]
    return bool(verify["in_sync"] and verify["error"] is None
                and verify["sqlite_rows"] == device["rows"] == server_rows[device["scope"]])


# --- the table ------------------------------------------------------------------------------

def report(result: Result) -> None:
    details = result["details"]
    params = details["params"]
    print(f"bench fleet: {result['devices']} engine processes, each its own scope and SQLite "
          f"file, {params['rate']:g} rows/s each for {params['seconds']:g} s into "
          f"`{params['table']}`, on {params['cores']} cores")
    print(f"{'phase':<10} {'rows':>9} {'rows/s':>9} {'drained s':>10} {'lag p99 ms':>11} "
          f"{'whole run':>10} server")
    for name in ("cluster", "single"):
        p = details[name]
        whole = p["lag_p99_ms_whole_run"]
        print(f"{name:<10} {p['rows']:>9,} {p['rows_s']:>9,.0f} {p['seconds_to_drained']:>10.1f} "
              f"{_ms(p['lag_p99_ms']):>11} {_ms(whole):>10} {p['server']}")
    f = details["cluster"]["failover"]
    if f.get("node"):
        moved = ", ".join(f"{m['scope']} -> {m['to']} {m['seconds']:.2f} s"
                          for m in f["devices"])
        rejoin = (f"rejoined in {f['rejoin_s']} s" if "rejoin_s" in f
                  else f"did not rejoin: {f.get('rejoin_error')}")
        print(f"failover: SIGKILL of {f['node']} {f['killed_at_s']:.1f} s into the ingest; "
              f"{moved}; {rejoin}")
    print(f"{'device':<10} {'phase':<8} {'rows':>7} {'nodes':<34} {'fail':>4} {'retry':>5} "
          f"{'rss MB':>6} {'behind s':>8} scope equal")
    for name in ("cluster", "single"):
        p = details[name]
        for d in p["devices"]:
            ok = _device_equal(d, p["server_rows"])
            nodes = ",".join(n.rsplit(":", 1)[-1] for n in d["nodes"]) or "-"
            print(f"{d['scope']:<10} {name:<8} {d['rows']:>7,} {nodes:<34} "
                  f"{_n(d['failovers']):>4} {_n(d['transaction_retries']):>5} "
                  f"{d['peak_rss_mb']:>6.0f} {d['behind_schedule_max_s']:>8.2f} "
                  f"{'yes' if ok else 'NO'}")
    lag, failover = result["cluster_lag_p99_ms"], result["failover_s"]
    print(f"cluster vs single {result['cluster_vs_single']:.3f}   cluster lag p99 {_ms(lag)} ms "
          f"(target <= {LAG_TARGET_MS:.0f}: {met(lag is not None and lag <= LAG_TARGET_MS)})   "
          f"failover {failover} s (target <= {FAILOVER_TARGET_S:.0f}: "
          f"{met(failover is not None and failover <= FAILOVER_TARGET_S)})   every scope equal: "
          f"{met(details['every_scope_equal'])}   nodes equal: "
          f"{details['cluster']['nodes_equal']}   peak RSS per engine "
          f"{result['peak_rss_mb']:.0f} MB; wall {details['wall_s']:.0f} s")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
