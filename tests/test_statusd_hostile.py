"""Hostile requests to the status endpoint, and hostile token files around it.

Every control route (POST) needs the token the engine writes beside the
database; a request without it, or with anything else, is 401 and changes
nothing (the task that runs stays running). Bodies are capped, slow requests
time out, connections are bounded, and the token is found nowhere but its file.
Only 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sqlwarden import statusd
from sqlwarden.config import Config, parse_config
from sqlwarden.endpoint_token import TokenError, read_token, token_path
from sqlwarden.errors import EngineError
from sqlwarden.facade import Engine

from .conftest import sqlwarden_running, wait_until
from .support.hostile import SECRET, assert_no_secret, assert_refused, run_bounded, snapshot

ENDPOINT_YAML = """\
database:
  path: {db}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
      flag: integer
tasks:
  mark:
    table: items
    set: {{flag: "1"}}
    where: "flag IS NULL"
    min_rows: 10
    max_rows: 10
    yield_ms: 60000
message_log:
  path: {log}
status:
  enabled: true
  host: 127.0.0.1
  port: 0
"""

ROWS = [(i, f"item {i}", None) for i in range(1, 101)]
CONTROL = "/tasks/mark/pause"


def write_config(root: Path) -> Path:
    """A config whose one task does a chunk of 10 rows, then waits a minute (running)."""
    path = root / "endpoint.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ENDPOINT_YAML.format(db=root / "data" / "e.db",
                                         log=root / "logs" / "messages.jsonl"))
    return path


def load(path: Path) -> Config:
    return parse_config(path.read_text(), file=str(path), base_dir=path.parent)


def populate(config: Config) -> None:
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("items", ROWS)


@dataclass
class Reply:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_reply(sock: socket.socket) -> Reply:
    """Everything the server sends until it closes; code 0 when it closes without answering."""
    chunks = []
    while True:
        try:
            got = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not got:
            break
        chunks.append(got)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return Reply(code, headers, body)


def exchange(port: int, data: bytes, *, body: bytes = b"") -> Reply:
    """Send `data` then `body` (from a thread, as a client that does not wait for the answer
    would) and read the answer; a server that stops reading makes the send fail, not us."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(data + body)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        reply = read_reply(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=60)
        return reply


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> Reply:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST" and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode(), body=body)


@dataclass
class Served:
    engine: Engine
    config: Config
    port: int
    token: str

    def task_status(self) -> str:
        return self.engine.tasks.list()[0].status

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def serve(config: Config) -> Iterator[Served]:
    with Engine(config) as engine:
        wait_until(lambda: engine.tasks.list()[0].processed == 10, what="the first chunk")
        assert engine.status_url is not None
        port = int(engine.status_url.rsplit(":", 1)[1])
        yield Served(engine, config, port, read_token(token_path(config.database.path)))


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read waits 1 s and a request may take 2 s, so a test sees a timeout soon."""
    monkeypatch.setattr(statusd, "READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(statusd, "REQUEST_DEADLINE_S", 2.0)


@pytest.fixture
def served(tmp_path: Path, short_timeouts: None) -> Iterator[Served]:
    config = load(write_config(tmp_path))
    populate(config)
    yield from serve(config)


def assert_unchanged(served: Served) -> None:
    """The task still runs, and the endpoint still answers."""
    assert served.task_status() == "running"
    assert request(served.port, "GET", "/healthz").code in (200, 503)


# --- the token --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_token(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The token another engine (another database) wrote; valid there, not here."""
    root = tmp_path_factory.mktemp("other")
    config = load(write_config(root))
    with Engine(config, start_tasks=False):
        return read_token(token_path(config.database.path))


def unauthorized_headers(token: str, other: str) -> dict[str, dict[str, str]]:
    return {
        "no token": {},
        "a wrong token": {"Authorization": "Bearer " + "A" * len(token)},
        "another engine's token": {"Authorization": f"Bearer {other}"},
        "an empty bearer": {"Authorization": "Bearer "},
        "a bearer without a space": {"Authorization": f"Bearer{token}"},
        "the token with a byte missing": {"Authorization": f"Bearer {token[:-1]}"},
        "the token with a byte more": {"Authorization": f"Bearer {token}x"},
        "the token as basic credentials": {
            "Authorization": "Basic " + base64.b64encode(f"x:{token}".encode()).decode()},
        "the token as a bare authorization": {"Authorization": token},
        "the token and a wrong one": {"Authorization": f"Bearer {token}",
                                      "X-Sqlwarden-Token": "wrong-" + token},
        "the token in a cookie": {"Cookie": f"token={token}"},
        "an empty token header": {"X-Sqlwarden-Token": ""},
        "a non-ASCII token": {"X-Sqlwarden-Token": "t\u00f6ken-" + token[6:]},
    }


UNAUTHORIZED = list(unauthorized_headers("x" * 43, "y" * 43))


@pytest.mark.parametrize("case", UNAUTHORIZED)
def test_a_control_request_without_the_right_token_is_401_and_changes_nothing(
        served: Served, other_token: str, case: str) -> None:
    headers = unauthorized_headers(served.token, other_token)[case]
    reply = request(served.port, "POST", CONTROL, headers)
    assert reply.code == 401, reply
    assert reply.headers["www-authenticate"].startswith("Bearer")
    error = reply.json()["error"]
    assert "token" in error and "\n" not in error
    assert str(token_path(served.config.database.path)) in error
    assert served.token not in reply.body.decode()
    assert_unchanged(served)


@pytest.mark.parametrize("query", ["token={t}", "access_token={t}", "auth=Bearer%20{t}"])
def test_the_token_in_the_query_string_does_not_count(served: Served, query: str) -> None:
    reply = request(served.port, "POST", f"{CONTROL}?{query.format(t=served.token)}")
    assert reply.code == 401
    assert served.token not in reply.body.decode()
    assert_unchanged(served)


@pytest.mark.parametrize("path", ["/tasks/mark/cancel", "/tasks/mark/resume", "/fts/restore",
                                  "/sync/nosuch?mode=full", "/mirror/reconcile",
                                  "/mirror/retry", "/nothing/here", "/healthz"])
def test_every_post_needs_the_token_whatever_the_path(served: Served, path: str) -> None:
    assert request(served.port, "POST", path).code == 401
    assert_unchanged(served)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_token_pauses_the_task_in_any_case_of_the_scheme(
        served: Served, scheme: str) -> None:
    reply = request(served.port, "POST", CONTROL, {"Authorization": f"{scheme} {served.token}"})
    assert (reply.code, reply.json()["status"]) == (200, "paused")
    assert served.task_status() == "paused"


def test_the_token_header_of_our_own_works_too(served: Served) -> None:
    reply = request(served.port, "POST", CONTROL, {"X-Sqlwarden-Token": served.token})
    assert (reply.code, reply.json()["status"]) == (200, "paused")


@pytest.mark.parametrize("path", ["/healthz", "/status", "/metrics"])
def test_the_reading_routes_stay_open_without_a_token(served: Served, path: str) -> None:
    reply = request(served.port, "GET", path)
    assert reply.code == 200
    assert reply.body
    if path != "/metrics":
        reply.json()


# --- bodies -----------------------------------------------------------------------------


def test_a_100_mib_body_is_413_before_the_client_has_sent_it(served: Served) -> None:
    head = (f"POST {CONTROL} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{served.token}\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(head)  # and not one byte of the body: the answer comes anyway
        reply = read_reply(sock)
    assert reply.code == 413
    assert "too large" in reply.json()["error"]
    assert_unchanged(served)


@pytest.mark.parametrize("length", ["-1", "abc", "1e9", "+5", " 0x10", "9" * 40, "\u00b2"])
def test_a_content_length_that_is_not_a_number_is_400(served: Served, length: str) -> None:
    reply = request(served.port, "POST", CONTROL, {**served.bearer(), "Content-Length": length})
    assert reply.code == 400
    assert_unchanged(served)


def test_two_content_lengths_that_disagree_are_400(served: Served) -> None:
    head = (f"POST {CONTROL} HTTP/1.1\r\nAuthorization: Bearer {served.token}\r\n"
            "Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello").encode()
    assert exchange(served.port, head).code == 400
    assert_unchanged(served)


def test_a_chunked_body_is_refused_unread(served: Served) -> None:
    chunk = b"x" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(100)) + b"0\r\n\r\n"
    reply = request(served.port, "POST", CONTROL,
                    {**served.bearer(), "Transfer-Encoding": "chunked"}, body=body)
    assert reply.code == 411
    assert "chunked" in reply.json()["error"]
    assert_unchanged(served)


def test_a_small_body_is_read_and_ignored(served: Served) -> None:
    reply = request(served.port, "POST", CONTROL, served.bearer(), body=b'{"action": "x"}' * 100)
    assert (reply.code, served.task_status()) == (200, "paused")


# --- slow and half-sent requests, many connections ---------------------------------------


def test_a_half_sent_request_line_is_dropped_and_others_are_answered_meanwhile(
        served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"POST /tasks/mark/pa")
        assert request(served.port, "GET", "/healthz").code in (200, 503)
        # Never finished: the server gives up and closes without an answer.
        assert read_reply(sock).code == 0
    assert_unchanged(served)


def test_headers_dripped_a_byte_at_a_time_are_cut_off_at_the_deadline(served: Served) -> None:
    dripped = 0
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n")
        stop = threading.Event()
        closed = threading.Event()

        def watch() -> None:
            read_reply(sock)
            closed.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # Each byte comes well within the read timeout; only the deadline ends it.
        while not closed.wait(0.2) and not stop.is_set():
            try:
                sock.send(b"X-Drip: a\r\n"[dripped % 11:dripped % 11 + 1])
            except OSError:
                break
            dripped += 1
            assert dripped < 3000, "the server never cut the dripping client off"
        watcher.join(timeout=30)
    assert closed.is_set()
    assert_unchanged(served)


def test_a_half_sent_body_times_out_with_408_and_changes_nothing(served: Served) -> None:
    head = (f"POST {CONTROL} HTTP/1.1\r\nAuthorization: Bearer {served.token}\r\n"
            "Content-Length: 100\r\n\r\n0123456789").encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(head)
        reply = read_reply(sock)
    assert reply.code == 408
    assert_unchanged(served)


def handler_threads() -> int:
    """The endpoint's request threads (socketserver names them after their target); the
    engine's other threads come and go on their own and are not counted."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_many_idle_connections_hold_a_bounded_number_of_threads(served: Served) -> None:
    before = handler_threads()
    socks = [socket.create_connection(("127.0.0.1", served.port), timeout=30)
             for _ in range(100)]
    try:
        # The last ones came when every slot was taken: answered 503 at once, not queued
        # (or, if idle ones had timed out meanwhile, served and timed out in turn).
        turned_away = [read_reply(s) for s in socks[-20:]]
        codes = [r.code for r in turned_away]
        assert 503 in codes and set(codes) <= {0, 503}, codes
        assert "too many connections" in turned_away[codes.index(503)].json()["error"]
        assert 0 < handler_threads() - before <= statusd.MAX_CONNECTIONS
        # The idle ones time out, and the endpoint answers again.
        for sock in socks[:-20]:
            assert read_reply(sock).code in (0, 503)
        assert request(served.port, "GET", "/healthz").code in (200, 503)
    finally:
        for sock in socks:
            sock.close()
    assert_unchanged(served)


# --- headers, paths and methods ---------------------------------------------------------


@pytest.mark.parametrize("case", ["1000 headers", "a 1 MiB header", "a 100 KiB request line",
                                  "a 40 KiB cookie"])
def test_a_header_flood_is_431_and_the_endpoint_goes_on(served: Served, case: str) -> None:
    match case:
        case "1000 headers":
            head = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(1000))
            data = f"GET /status HTTP/1.1\r\n{head}\r\n".encode()
        case "a 1 MiB header":
            data = f"GET /status HTTP/1.1\r\nX-Big: {'a' * (1 << 20)}\r\n\r\n".encode()
        case "a 100 KiB request line":
            data = f"GET /{'a' * 100 * 1024} HTTP/1.1\r\n\r\n".encode()
        case _:
            data = (f"POST {CONTROL} HTTP/1.1\r\nAuthorization: Bearer {served.token}\r\n"
                    f"Cookie: {'c' * 40 * 1024}\r\nContent-Length: 0\r\n\r\n").encode()
    reply = exchange(served.port, data)
    assert reply.code == 431, reply.code
    assert_unchanged(served)


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                                  "//etc/passwd", "/status/../../../etc/passwd",
                                  "/healthz%00.json", "/metrics/..%2f..%2fetc%2fpasswd",
                                  "http://127.0.0.1/../etc/passwd"])
def test_a_path_that_tries_to_leave_the_routes_is_404(served: Served, path: str) -> None:
    reply = request(served.port, "GET", path)
    assert reply.code == 404
    assert b"root:" not in reply.body
    assert_unchanged(served)


@pytest.mark.parametrize("path", ["/tasks/../tasks/mark/pause", "/tasks/mark/../mark/pause",
                                  "/tasks/mark%2F..%2Fmark/pause", "/tasks/%2e%2e/pause",
                                  "/tasks//mark/pause"])
def test_a_traversing_control_path_with_the_token_pauses_nothing(
        served: Served, path: str) -> None:
    reply = request(served.port, "POST", path, served.bearer())
    assert reply.code in (400, 404), reply.code
    assert_unchanged(served)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD"])
def test_methods_other_than_get_and_post_are_405(served: Served, method: str) -> None:
    reply = request(served.port, method, CONTROL, served.bearer())
    assert reply.code == 405
    assert reply.headers["allow"] == "GET, POST"
    assert_unchanged(served)


def test_an_unknown_method_is_501_and_changes_nothing(served: Served) -> None:
    assert request(served.port, "BREW", CONTROL, served.bearer()).code == 501
    assert_unchanged(served)


# --- the token file ---------------------------------------------------------------------


TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}\n")


def test_the_token_file_is_the_owners_only_whatever_the_umask_and_goes_at_stop(
        tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    path = token_path(config.database.path)
    old = os.umask(0)
    try:
        with Engine(config, start_tasks=False):
            info = path.lstat()
            assert stat.S_ISREG(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_uid == os.geteuid()
            assert TOKEN_SHAPE.fullmatch(path.read_text())
    finally:
        os.umask(old)
    assert not path.exists()


def test_a_token_a_killed_run_left_is_replaced_and_no_longer_works(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    path = token_path(config.database.path)
    path.parent.mkdir(parents=True)
    stale = "stale-token-" + "s" * 31
    path.write_text(stale + "\n")
    path.chmod(0o644)
    with Engine(config, start_tasks=False) as engine:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        token = read_token(path)
        assert token != stale
        assert engine.status_url is not None
        port = int(engine.status_url.rsplit(":", 1)[1])
        reply = request(port, "POST", "/fts/restore", {"Authorization": f"Bearer {stale}"})
        assert reply.code == 401


@pytest.mark.parametrize("target", ["precious", "missing"])
def test_a_symlink_at_the_token_path_refuses_the_start_and_is_not_followed(
        tmp_path: Path, target: str) -> None:
    config_file = write_config(tmp_path)
    config = load(config_file)
    data = config.database.path.parent
    data.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    if target == "precious":
        precious.write_text("the user's file\n")
    link = token_path(config.database.path)
    link.symlink_to(precious)
    before, before_outside = snapshot(data), snapshot(outside)
    done = run_bounded("run", config_file, "--once", "--no-progress", timeout_s=120)
    line = assert_refused(done, 2, str(link), "symlink")
    assert "Traceback" not in line
    assert snapshot(data) == before, "nothing created or changed beside the database"
    assert snapshot(outside) == before_outside, "the link's target untouched"
    assert link.is_symlink() and os.readlink(link) == str(precious)


def test_a_folder_at_the_token_path_refuses_the_start(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    folder = token_path(config.database.path)
    folder.mkdir(parents=True)
    with pytest.raises(TokenError, match="not a regular file"):
        Engine(config, start_tasks=False).start()
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
def test_another_users_file_at_the_token_path_refuses_the_start(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    path = token_path(config.database.path)
    path.parent.mkdir(parents=True)
    path.write_text("theirs\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(TokenError, match="another user"):
        Engine(config, start_tasks=False).start()
    assert path.read_text() == "theirs\n" and path.stat().st_uid == 65534


def test_a_token_file_another_user_cannot_read_is_one_line_saying_so(tmp_path: Path) -> None:
    path = tmp_path / "e.db.token"
    path.write_text("t" * 43 + "\n")
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    if os.geteuid() != 0:
        path.chmod(0o000)
        with pytest.raises(TokenError) as info:
            read_token(path)
        message = str(info.value)
    else:
        # Root reads anything: read it as `nobody`, in a child that drops to that user.
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(reader)
            try:
                os.setgid(65534)
                os.setuid(65534)
                read_token(path)
                os.write(writer, b"read it")
            except EngineError as exc:
                os.write(writer, str(exc).encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader) as pipe:
            message = pipe.read()
        os.waitpid(pid, 0)
    assert "permission denied" in message and str(path) in message
    assert "\n" not in message and "t" * 43 not in message


# --- the command line -------------------------------------------------------------------


@pytest.fixture
def cli_served(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    config_file = write_config(tmp_path)
    config = load(config_file)
    populate(config)
    for served in serve(config):
        yield served, config_file


def test_the_cli_sends_the_token_and_pauses_the_task(cli_served: tuple[Served, Path]) -> None:
    served, config_file = cli_served
    done = run_bounded("task", "pause", config_file, "mark")
    assert done.returncode == 0, done.stderr
    assert served.task_status() == "paused"
    assert_no_secret(served.token, texts=[done.stdout, done.stderr])


@pytest.mark.parametrize("case", ["a wrong token", "no token file", "a symlink", "a fifo",
                                  "an empty file", "a huge file"])
def test_the_cli_with_a_bad_token_file_is_one_line_and_exit_2(
        cli_served: tuple[Served, Path], tmp_path: Path, case: str) -> None:
    served, config_file = cli_served
    path = token_path(served.config.database.path)
    path.unlink()
    match case:
        case "a wrong token":
            path.write_text("W" * 43 + "\n")
            words = ["refused the token", str(path)]
        case "no token file":
            words = ["missing", str(path)]
        case "a symlink":
            real = tmp_path / "elsewhere.token"
            real.write_text(served.token + "\n")
            path.symlink_to(real)
            words = ["symlink", str(path)]
        case "a fifo":
            os.mkfifo(path)
            words = ["not a regular file", str(path)]
        case "an empty file":
            path.write_text("")
            words = ["does not hold a token", str(path)]
        case _:
            path.write_bytes(b"x" * 10_000_000)
            words = ["does not hold a token", str(path)]
    done = run_bounded("task", "pause", config_file, "mark", timeout_s=120)
    assert_refused(done, 2, *words)
    assert served.task_status() == "running"
    assert_no_secret(served.token, texts=[done.stdout, done.stderr])


# --- the engine as a command, in its own process ----------------------------------------


def engine_pid_and_port(proc: Any, config: Config) -> tuple[int, int]:
    path = token_path(config.database.path)
    lock = Path(f"{os.path.realpath(config.database.path)}.lock")

    def ready() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        if not path.exists() or not lock.exists():
            return False
        return bool(json.loads(lock.read_text() or "{}").get("endpoint"))

    wait_until(ready, what="the engine's status endpoint")
    endpoint = json.loads(lock.read_text())["endpoint"]
    return proc.pid, int(endpoint.rsplit(":", 1)[1])


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_100_mib_body_sent_whole_leaves_the_engines_memory_as_it_was(tmp_path: Path) -> None:
    config_file = write_config(tmp_path)
    config = load(config_file)
    with sqlwarden_running("run", str(config_file), "--no-progress") as proc:
        pid, port = engine_pid_and_port(proc, config)
        assert request(port, "GET", "/status").code == 200
        before = peak_rss_kib(pid)
        token = read_token(token_path(config.database.path))
        sent = 0
        chunk = b"z" * (1 << 20)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall((f"POST /fts/restore HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
                          f"Content-Length: {100 << 20}\r\n\r\n").encode())
            with contextlib.suppress(OSError):
                for _ in range(100):  # a client that sends it all without listening
                    sock.sendall(chunk)
                    sent += len(chunk)
            reply = read_reply(sock)
        assert sent < 100 << 20, "the server never stopped reading"
        assert reply.code in (0, 413)  # the answer may be lost to the reset of a client
        assert request(port, "GET", "/healthz").code == 200
        assert peak_rss_kib(pid) - before < 32 * 1024
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_no_secret(token, texts=[err], under=[tmp_path], databases=[config.database.path])


def test_idle_connections_to_the_engine_process_are_bounded_in_threads(tmp_path: Path) -> None:
    config_file = write_config(tmp_path)
    config = load(config_file)
    with sqlwarden_running("run", str(config_file), "--no-progress") as proc:
        pid, port = engine_pid_and_port(proc, config)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30)
                 for _ in range(200)]
        try:
            assert read_reply(socks[-1]).code == 503
            assert len(os.listdir(f"/proc/{pid}/task")) - threads <= statusd.MAX_CONNECTIONS
        finally:
            for sock in socks:
                sock.close()
        # The idle clients gone, their threads end and the endpoint answers again.
        wait_until(lambda: request(port, "GET", "/healthz").code == 200, what="/healthz")
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


# --- no token anywhere ------------------------------------------------------------------


def test_the_token_is_in_no_log_status_metrics_answer_or_table(
        tmp_path: Path, short_timeouts: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = load(write_config(tmp_path))
    populate(config)
    texts: list[str] = []
    for served in serve(config):
        token = served.token
        for headers in ({}, {"Authorization": f"Bearer {token}x"},
                        {"Authorization": f"Bearer {token}", "X-Api-Key": SECRET}):
            for path in (CONTROL, f"/sync/nosuch?token={token}", "/tasks/mark/resume",
                         "/tasks/nosuch/pause"):
                texts.append(request(served.port, "POST", path, headers).body.decode())
        for path in ("/healthz", "/status", "/metrics", f"/status?token={token}",
                     f"/nothing?token={token}"):
            texts.append(request(served.port, "GET", path).body.decode())
        # A client quoting the token in a task name gets it back in its own 404 (it sent
        # it); the engine's logs and message log have it redacted.
        quoted = request(served.port, "POST", f"/tasks/{token}/pause",
                         {"Authorization": f"Bearer {token}"})
        assert quoted.code == 404
        texts.append(json.dumps(served.engine.status(), default=str))
    texts.append(caplog.text)
    # Stopped: the token file is gone, so nothing under the test's folder may hold it.
    assert not token_path(config.database.path).exists()
    for secret in (token, SECRET):
        assert_no_secret(secret, texts=texts, under=[tmp_path],
                         databases=[config.database.path])
