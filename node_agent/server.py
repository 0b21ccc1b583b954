"""HTTP endpoints: /metrics, /healthz, /readyz."""
from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(host: str, port: int, metrics: Callable[[], bytes],
          ready: Callable[[], tuple[bool, str]]) -> ThreadingHTTPServer:
    """Start serving in a thread; returns the server (call .shutdown() to stop).

    `metrics` returns one scrape's body in text format 0.0.4."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body, status, ctype = metrics(), 200, CONTENT_TYPE_LATEST
                except Exception as e:
                    log.exception("scrape failed")
                    body, status, ctype = f"scrape failed: {e}\n".encode(), 500, "text/plain"
            elif path == "/healthz":
                body, status, ctype = b"ok\n", 200, "text/plain"
            elif path == "/readyz":
                ok, why = ready()
                body, status, ctype = (why + "\n").encode(), 200 if ok else 503, "text/plain"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):   # access logs only at debug
            log.debug("http", extra={"kv": {"client": self.client_address[0], "request": fmt % args}})

    server_class = _Server
    if ":" in host:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_class((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
