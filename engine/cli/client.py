"""The one client of a running engine's status endpoint, for every command that talks to it.

A running engine records its status URL and run id in the database's
`_sw_meta` (`db.status.running_engine`). `find_engine` reads them, asks
`GET /status` and checks that the run id answers, so a stale address (the
port taken by something else since) is not taken for the engine. `post`
sends a command and returns the engine's JSON answer; an HTTP error comes
back as `EngineRefused` with the engine's reason and the status code, an
engine that no longer answers as `NoEngine`. Each command decides what a
refusal means for its exit code.

Every POST carries the engine's control token, read from the token file
beside the database (`sqlwarden.endpoint_token`) just before it is sent. A
token file that cannot be read (another user's engine), or a token the engine
refuses (401), is a `TokenError`: one line naming the file, exit 2. The
token itself is never printed.

`urllib` loads OpenSSL, so it is imported only once there is an engine to
ask, and after the mirror's driver: a command that finds none goes on to
start an engine of its own, whose mirror wants the connector's C extension
(see `mirror.driver`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlwarden.cli.output import PROG
from sqlwarden.endpoint_token import TokenError, read_token, token_path
from sqlwarden.errors import EngineError
from sqlwarden.mirror.driver import load_driver

if TYPE_CHECKING:
    from urllib.error import HTTPError

    from sqlwarden.config import Config

#: Seconds to wait for `GET /status`, which the engine answers at once.
STATUS_TIMEOUT_S = 10
#: Seconds to wait for a command's answer: a sync run or a reconcile takes a while.
COMMAND_TIMEOUT_S = 600


class NoEngine(EngineError):
    """No running engine answers for this database."""


class EngineRefused(EngineError):
    """The running engine answered a request with an HTTP error; `message` is its reason."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def request_at_fault(self) -> bool:
        """The request named something unknown or does not fit the current state."""
        return self.code in (400, 404, 409)

    @property
    def unavailable(self) -> bool:
        """The engine cannot do it now: it is stopping, or a server it needs is down."""
        return self.code == 503


@dataclass(frozen=True, slots=True)
class EngineClient:
    """The engine running on a database: its status URL, the status it answered, and
    where its control token is (None: send none)."""

    url: str
    status: dict[str, Any]
    token_file: Path | None = None

    def post(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        """POST to `path` (and `query`) and return the JSON answer.

        Raises `EngineRefused` for an HTTP error, `NoEngine` when nothing answers,
        `TokenError` when the token cannot be read or the engine refuses it.
        """
        import urllib.error
        import urllib.parse
        import urllib.request

        url = f"{self.url}{path}"
        if query:
            url += f"?{urllib.parse.urlencode(query)}"
        headers = {}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {read_token(self.token_file)}"
        request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=COMMAND_TIMEOUT_S) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                exc.close()
                raise TokenError(f"the engine at {self.url} refused the token in "
                                 f"{self.token_file} (the file may belong to another engine "
                                 "run; is it the engine's own database path?)") from None
            raise EngineRefused(_reason(exc), code=exc.code) from None
        except OSError as exc:
            raise NoEngine(_no_answer(self.url, exc)) from None


def find_engine(config: Config, *, needed_for: str | None = None) -> EngineClient:
    """The engine running on `config`'s database, found through the address it recorded.

    Raises `NoEngine` saying why there is none, and, with `needed_for`, what
    needed one.
    """
    from sqlwarden.db.status import running_engine

    def missing(why: str) -> NoEngine:
        return NoEngine(why if needed_for is None else f"{why} ({needed_for})")

    found = running_engine(config)
    if found is None:
        raise missing(f"no running engine with a status endpoint found for "
                      f"{config.database.path}; start one with `{PROG} run CONFIG`")
    url, run_id = found
    if config.mirror is not None and config.mirror.enabled:
        load_driver()
    import urllib.request

    try:
        # The address may be stale, and the port taken by something else since.
        with urllib.request.urlopen(f"{url}/status", timeout=STATUS_TIMEOUT_S) as response:
            status = json.load(response)
    except (OSError, ValueError) as exc:
        raise missing(_no_answer(url, exc)) from None
    if not isinstance(status, dict) or status.get("run_id") != run_id:
        raise missing(f"the engine at {url} is not the one running on "
                      f"{config.database.path}; the last run may have ended without "
                      "cleaning up")
    return EngineClient(url, status, token_path(config.database.path))


def engine_if_running(config: Config) -> EngineClient | None:
    """The engine running on `config`'s database; None when there is none."""
    try:
        return find_engine(config)
    except NoEngine:
        return None


def _reason(exc: HTTPError) -> str:
    """The engine's reason for an HTTP error: its JSON `error`, else the status line's."""
    try:
        body = json.load(exc)
    except ValueError:
        return str(exc.reason)
    return str(body.get("error", exc.reason) if isinstance(body, dict) else exc.reason)


def _no_answer(url: str, exc: BaseException) -> str:
    return (f"no engine answers at {url} ({getattr(exc, 'reason', exc)}); the last run may "
            "have ended without cleaning up")
