"""The HTTP side: /metrics renders the snapshot collector, /healthz reports whether sampling is current."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from exporter.exposition import render

log = logging.getLogger(__name__)


def make_server(bind: str, port: int, registry: CollectorRegistry,
                health: Callable[[], tuple[bool, str]]) -> ThreadingHTTPServer:
    """Binds now (so a port in use fails at start with OSError); serve with serve_in_thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # an idle keep-alive connection must not hold a thread forever (Prometheus reconnects)

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without NODELAY, Nagle + the client's delayed ACK
            # add ~40 ms to every keep-alive scrape
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, render(registry.collect()), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, why = health()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            elif path == "/":
                self._send(200, b"thermograd exporter: /metrics /healthz\n", "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base)
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="rle-http",
                              daemon=True)
    thread.start()
    return thread
