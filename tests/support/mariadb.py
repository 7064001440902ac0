"""A private MariaDB server for tests and benchmarks.

Everything lives under one directory (datadir, socket, pid file, error log); the
server listens on 127.0.0.1 at a port picked when the object is made and kept
across restarts, and on a unix socket where root logs in without a password::

    with MariaDB(tmp_path / "mariadb") as server:
        server.create_database("sw_x", "sw_x", "secret")
        dsn = server.dsn("sw_x", "sw_x")   # mysql://sw_x:${SW_MYSQL_PASSWORD}@127.0.0.1:PORT/sw_x

Imports no pytest, so the benchmarks can use it too
(`from tests.support.mariadb import MariaDB`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

#: Where the binaries are looked for when they are not on PATH (Debian puts mariadbd
#: in /usr/sbin, which a non-root PATH often lacks).
_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
#: Database and user names are put into SQL text, so they are kept to these.
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
#: Longest unix socket path that fits in sockaddr_un (108 bytes with the NUL), with room.
_MAX_SOCKET_PATH = 100


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def available() -> str | None:
    """None when a private server can be run here, otherwise a one-line reason."""
    missing = [name for name in ("mariadbd", "mariadb-install-db") if _find(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not found on PATH or in {', '.join(_DIRS)} "
                "(install the mariadb-server package)")
    return None


def _connector() -> Any:
    """The mysql.connector module, through the project's own loader when it exists."""
    try:
        from sqlwarden.mirror.driver import load_driver
    except ImportError:
        import mysql.connector
        return mysql.connector
    driver = load_driver()
    if not hasattr(driver, "connect"):  # a loader that returns something else
        import mysql.connector
        return mysql.connector
    return driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _checked_name(what: str, name: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"{what} {name!r}: use 1 to 64 letters, digits and underscores")
    return name


@dataclass(frozen=True)
class MirrorDb:
    """A fresh database on the test server with its own user (the `mirror_db` fixture)."""

    server: MariaDB
    database: str
    user: str
    password: str
    #: `server.dsn(user, database)`: the password as `${SW_MYSQL_PASSWORD}`.
    dsn: str


#: Servers that are running, stopped when the interpreter exits normally.
_RUNNING: weakref.WeakSet[MariaDB] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


class MariaDB:
    """A private mariadbd under `root`; see the module's docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.datadir = self.root / "data"
        self.pid_file = self.root / "mysqld.pid"
        self.error_log = self.root / "error.log"
        self.host = "127.0.0.1"
        self.port = _free_port()
        socket_path = self.root / "mysqld.sock"
        self._socket_dir: Path | None = None
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            # Too long for a unix socket: a short directory named after `root` instead.
            digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
            self._socket_dir = Path(tempfile.gettempdir()) / f"swmdb-{digest}"
            socket_path = self._socket_dir / "mysqld.sock"
        self.socket = socket_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MariaDB({str(self.root)!r}, port={self.port}, {state})"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process this object started is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self, timeout: float = 60) -> None:
        """Initialise the datadir if it is new, start the server, and wait until root can
        connect through the socket. Does nothing if it is already running.

        Raises RuntimeError (with the error log's tail) if the server exits or does not
        answer within `timeout` seconds.
        """
        if self.running:
            return
        reason = available()
        if reason:
            raise RuntimeError(f"cannot run MariaDB: {reason}")
        connector = _connector()
        self._close_log()
        self.root.mkdir(parents=True, exist_ok=True)
        if self._socket_dir is not None:
            self._socket_dir.mkdir(mode=0o700, exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            self._install(timeout)
        self._log = open(self.error_log, "ab")  # noqa: SIM115 - kept open while it runs
        self._proc = subprocess.Popen(self._server_args(), stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=self._log, cwd=self.root,
                                      env=self._server_env(), start_new_session=True)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                raise RuntimeError(f"mariadbd exited with code {code} while starting; "
                                   f"{self.error_log}:\n{self.log_tail()}")
            try:
                conn = connector.connect(unix_socket=str(self.socket), user="root",
                                         connection_timeout=2)
            except Exception:  # not listening yet
                pass
            else:
                conn.close()
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mariadbd did not accept connections within {timeout}s; "
                                   f"{self.error_log}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM, then SIGKILL after 30 s). Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        self._stopped()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait for it to be gone."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGKILL)
            proc.wait()
        self._stopped()

    def __enter__(self) -> MariaDB:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the error log (for failure messages)."""
        try:
            data = self.error_log.read_bytes()[-16384:]
        except OSError as exc:
            return f"(no error log: {exc})"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    # -- using it --------------------------------------------------------------------------

    def admin(self, database: str | None = None) -> Any:
        """A new mysql.connector connection as root through the unix socket, autocommit on."""
        kwargs: dict[str, Any] = {"database": database} if database else {}
        return _connector().connect(unix_socket=str(self.socket), user="root",
                                    autocommit=True, connection_timeout=10, **kwargs)

    def query(self, sql: str, params: Sequence[Any] = (), database: str | None = None,
              ) -> list[tuple[Any, ...]]:
        """Run one statement as root; its rows, or [] when it has no result set."""
        conn = self.admin(database)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, tuple(params) if params else None)
                return [tuple(row) for row in cursor.fetchall()] if cursor.with_rows else []
            finally:
                cursor.close()
        finally:
            conn.close()

    def create_database(self, name: str, user: str, password: str) -> None:
        """A utf8mb4_bin database, and `user`@127.0.0.1 and @localhost with all rights on it."""
        db = _checked_name("database name", name)
        account = _checked_name("user name", user)
        conn = self.admin()
        try:
            cursor = conn.cursor()
            cursor.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            for host in ("127.0.0.1", "localhost"):
                cursor.execute(f"CREATE USER '{account}'@'{host}' IDENTIFIED BY %s", (password,))
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{account}'@'{host}'")
            cursor.close()
        finally:
            conn.close()

    def drop_database(self, name: str, user: str | None = None) -> None:
        """Drop a database made by `create_database` (and its user), if they exist."""
        conn = self.admin()
        try:
            cursor = conn.cursor()
            cursor.execute(f"DROP DATABASE IF EXISTS `{_checked_name('database name', name)}`")
            if user is not None:
                account = _checked_name("user name", user)
                cursor.execute(f"DROP USER IF EXISTS '{account}'@'127.0.0.1', "
                               f"'{account}'@'localhost'")
            cursor.close()
        finally:
            conn.close()

    def dsn(self, user: str, database: str, password_ref: str = "${SW_MYSQL_PASSWORD}") -> str:
        """The project's DSN for `user` over TCP; the password as an environment reference."""
        return f"mysql://{user}:{password_ref}@{self.host}:{self.port}/{database}"

    # -- internals -------------------------------------------------------------------------

    def _as_root_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self, timeout: float) -> None:
        """mariadb-install-db into a scratch directory, renamed into place when complete,
        so an interrupted run never leaves a half-made datadir that looks initialised."""
        scratch = self.root / "data.init"
        shutil.rmtree(scratch, ignore_errors=True)
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        install_db = _find("mariadb-install-db")
        assert install_db is not None
        args = [install_db, "--no-defaults", f"--datadir={scratch}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
                "--skip-name-resolve", *self._as_root_args()]
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, cwd=self.root,
                                  timeout=max(timeout, 60))
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"mariadb-install-db took longer than {exc.timeout}s") from None
        if done.returncode != 0:
            tail = "\n".join(done.stdout.decode(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"mariadb-install-db failed with code {done.returncode}:\n{tail}")
        scratch.rename(self.datadir)

    def _server_env(self) -> dict[str, str] | None:
        """The server's environment; None: this process's own (a subclass may add to it)."""
        return None

    def _server_args(self) -> list[str]:
        mariadbd = _find("mariadbd")
        assert mariadbd is not None
        return [
            mariadbd, "--no-defaults",
            f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", f"--bind-address={self.host}",
            f"--pid-file={self.pid_file}", f"--log-error={self.error_log}",
            # After a kill() the old port may still be held for a moment.
            "--port-open-timeout=10",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=256M",
            # The log is written at each commit and flushed once a second: a killed server
            # loses nothing committed (only a machine crash would).
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-log-bin",
            "--max-connections=200",
            "--max-allowed-packet=256M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
            *self._as_root_args(),
        ]

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # its own session: the group id is its pid
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def _stopped(self) -> None:
        self._proc = None
        _RUNNING.discard(self)
        self._close_log()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
