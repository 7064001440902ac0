"""The status endpoint: `/healthz` and `/status` as JSON, on loopback unless configured."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StatusServer:
    """Serves the engine's status from a background thread."""

    def __init__(self, host: str, port: int, *, status: Callable[[], dict[str, Any]],
                 healthy: Callable[[], bool]) -> None:
        self._status = status
        self._healthy = healthy
        self._server = ThreadingHTTPServer((host, port), self._handler())
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

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok = server._healthy()
                    self._send(200 if ok else 503, {"ok": ok})
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
