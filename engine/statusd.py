"""The status endpoint: `/healthz` and `/status` as JSON, on loopback unless configured."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engine.errors import ServiceError


class StatusServer:
    """Serves the engine's status from a background thread."""

    def __init__(self, host: str, port: int, *, status: Callable[[], dict[str, Any]],
                 health: Callable[[], tuple[bool, list[str]]],
                 control: Callable[[str, str], dict[str, Any]] | None = None) -> None:
        self._status = status
        self._health = health
        self._control = control
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise ServiceError(f"the status endpoint cannot listen on {host}:{port}: "
                               f"{exc.strerror or exc} (change status.port or status.host)"
                               ) from None
        self._started = False
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="sqlwarden-status", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, reasons = server._health()
                    self._send(200 if ok else 503, {"ok": ok, "reasons": reasons})
                elif path == "/status":
                    self._send(200, server._status())
                else:
                    self._send(404, {"error": f"no such path {path}",
                                     "paths": ["/healthz", "/status"]})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not news

        return Handler
