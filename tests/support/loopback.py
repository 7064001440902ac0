"""An HTTP server on loopback for tests that play an upstream API: every GET is handed
to one function, on a thread per request; `send_json` answers one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the engine hanging up mid-answer is what tests are about, not stderr's


class LoopbackServer:
    """Serves from construction until `close()` on a free port of 127.0.0.1; each GET runs
    `on_get(handler)` on the request's own thread."""

    def __init__(self, on_get: Callable[[BaseHTTPRequestHandler], None], *,
                 http11: bool = False) -> None:

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if http11 else "HTTP/1.0"

            def do_GET(self) -> None:
                on_get(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Quiet(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Stop serving and free the port (requests still answering end on their own)."""
        self._server.shutdown()
        self._server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
              headers: Mapping[str, str] | None = None) -> None:
    """Answer `status` with `body` as JSON of a stated length, plus `headers`."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)
