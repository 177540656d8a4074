"""The exporter's endpoint: /metrics renders the snapshot collector, /healthz reports whether sampling is current.

The serving itself (backlog, connection cap, timeouts, limits, TLS and basic auth) is thermograd.endpoint.server,
shared with the trainer. /metrics is rendered once per snapshot (and per change of the endpoint's own
counters, which it also shows) and that body handed to every scrape until the next one.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from thermograd.endpoint.bodycache import RenderCache
from thermograd.endpoint.server import TEXT, BoundedHTTPServer, serve_in_thread
from thermograd.endpoint.webconfig import WebConfig
from thermograd.exporter.collector import SnapshotCollector
from thermograd.exporter.exposition import render
from thermograd.exporter.sampler import Snapshot

__all__ = ["make_server", "serve_in_thread"]


def make_server(bind: str, port: int, snapshot: Callable[[], Snapshot],
                health: Callable[[], tuple[bool, str]], *, web: WebConfig | None = None) -> BoundedHTTPServer:
    """Binds now (so a port in use fails at start with OSError); serve with serve_in_thread."""

    def healthz() -> tuple[int, bytes, str]:
        ok, why = health()
        return 200 if ok else 503, (why + "\n").encode(), TEXT

    registry = CollectorRegistry()
    routes = {
        "/healthz": healthz,
        "/": lambda: (200, b"thermograd exporter: /metrics /healthz\n", TEXT),
    }
    server = BoundedHTTPServer((bind, port), routes, name="exporter", web=web)
    registry.register(SnapshotCollector(snapshot, server.stats.snapshot))
    # samples_total grows by one with every snapshot the sampler publishes: it names the snapshot.
    body = RenderCache(lambda: (snapshot().samples_total, server.stats.version),
                       lambda: render(registry.collect()))
    server.routes["/metrics"] = lambda: (200, body.get(), CONTENT_TYPE_LATEST)
    server.body_cache = body
    return server
