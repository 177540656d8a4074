"""The exporter's endpoint: /metrics renders the snapshot collector, /healthz reports whether sampling is current.

The serving itself (backlog, connection cap, timeouts, limits) is exporter.httpserve, shared with the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from thermograd.exporter.exposition import render
from thermograd.exporter.httpserve import TEXT, BoundedHTTPServer, serve_in_thread

__all__ = ["make_server", "serve_in_thread"]


def make_server(bind: str, port: int, registry: CollectorRegistry,
                health: Callable[[], tuple[bool, str]]) -> BoundedHTTPServer:
    """Binds now (so a port in use fails at start with OSError); serve with serve_in_thread."""

    def healthz() -> tuple[int, bytes, str]:
        ok, why = health()
        return 200 if ok else 503, (why + "\n").encode(), TEXT

    routes = {
        "/metrics": lambda: (200, render(registry.collect()), CONTENT_TYPE_LATEST),
        "/healthz": healthz,
        "/": lambda: (200, b"thermograd exporter: /metrics /healthz\n", TEXT),
    }
    return BoundedHTTPServer((bind, port), routes, name="exporter")
