"""One bounded, threaded HTTP server for both /metrics endpoints (the exporter's and the trainer's).

socketserver's defaults are not fit for an endpoint that anyone on the network can reach, inside a
training process too: a listen backlog of 5 (bursts of scrapes time out), a thread per connection
without a cap, no timeout, 100 header lines of 64 KiB each kept in memory per request, an accept loop
that spins at 100 % CPU once the process is out of file descriptors, and a traceback on stderr for
every client that resets mid-scrape. This server:

* listens with a backlog of LISTEN_BACKLOG;
* serves at most `max_connections` connections at once: past that it stops accepting, so new
  connections wait in the kernel's backlog (a burst is served a moment later, nothing is dropped);
* closes a connection idle (or stalled inside a request) for `timeout_s`;
* gives a request head HEAD_DEADLINE_S from its first byte: a client that drips its head a byte at a
  time (each byte resets a socket timeout) is cut off there;
* when a connection waits for a slot, closes the longest-idle keep-alive connection, or one whose head
  has been arriving for over HEAD_GRACE_S, to make room: so a few dozen idle or slow clients cannot hold
  every slot and keep Prometheus's scrapes waiting (an answer in progress is never cut);
* answers 431 to a request head over MAX_HEAD_BYTES or MAX_HEADERS lines, having read no more;
* backs off when accept() fails (out of file descriptors) instead of spinning;
* counts a client that resets or times out mid-request and logs it at debug level only.

Every such event is counted in `HttpStats` (the `*_http_errors_total{reason}` series).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128  # Prometheus replicas + dashboards + curl bursts; the kernel caps it at somaxconn
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 30.0  # Prometheus keeps its connection alive between 1 s scrapes; a stalled one is dropped
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; a scrape sends a few hundred bytes
MAX_HEADERS = 64
ACCEPT_BACKOFF_S = 0.1  # after accept() fails for lack of fds: retry at 10 Hz, not in a busy loop
HEAD_DEADLINE_S = 10.0  # a request head (a few hundred bytes) arrives in milliseconds; a drip does not
HEAD_GRACE_S = 1.0  # a head still arriving after this is slow enough to give up its slot to a waiting client
_SLOT_WAIT_S = 0.5  # how long one accept attempt waits for a free slot (bounds shutdown latency too)
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

# reason label -> meaning (docs/metrics.md lists the same)
REASONS = ("client", "header_limit", "accept", "busy", "evicted")


@dataclass
class HttpStats:
    """Counts by reason: `client` reset/timed out mid-request, `header_limit` answered 431, `accept`
    failed (fd limit), `busy` every connection slot was taken (new connections waited in the backlog),
    `evicted` an idle or slow connection was closed to make room for a waiting one or for taking longer
    than HEAD_DEADLINE_S over its request head."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class _Connection:
    """What the accept side knows of one served connection: its socket and what it is doing since when
    (`idle` between requests, `head` while its request head arrives, `busy` while answered, `cut` once
    the server closed it). State changes happen under the server's lock, so a connection is never cut
    after its answer began."""

    __slots__ = ("sock", "state", "since_s", "_lock")

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self.sock, self.state, self.since_s, self._lock = sock, "idle", time.monotonic(), lock

    def advance(self, expected: str, state: str) -> bool:
        """expected -> state; False (nothing changed) when the server cut the connection meanwhile."""
        with self._lock:
            if self.state != expected:
                return False
            self.state, self.since_s = state, time.monotonic()
            return True

    def cut(self) -> None:
        """Wake the handler's blocked read with end-of-file (it then closes the connection itself)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _HeadBudgetReader:
    """Wraps the connection's rfile: a request head may read at most MAX_HEAD_BYTES in all.

    http.server reads the request line and each header with readline(65537) and keeps up to 100 of
    them, so without this a client holds ~6 MB per connection in memory."""

    def __init__(self, raw: BinaryIO, budget: int) -> None:
        self._raw = raw
        self._budget = budget
        self.left = budget
        self.exceeded = False

    def new_request(self) -> None:
        self.left, self.exceeded = self._budget, False

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            self.exceeded = True
            return b""  # ends http.client's header loop; parse_request then answers 431
        cap = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        line = self._raw.readline(cap)
        self.left -= len(line)
        if self.left < 0:
            self.exceeded = True
        return line

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def close(self) -> None:
        self._raw.close()


Route = Callable[[], tuple[int, bytes, str]]  # () -> (status, body, content type)


class BoundedHTTPServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True  # a scrape in flight never blocks the process from exiting

    def __init__(self, address: tuple[str, int], routes: dict[str, Route], *, name: str,
                 max_connections: int = MAX_CONNECTIONS, timeout_s: float = IDLE_TIMEOUT_S) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.routes = routes
        self.name = name
        self.stats = HttpStats()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._accept_failure_logged = False
        self._waiting = False  # a connection is waiting for a slot (counted once as `busy`)
        self._connections: dict[int, _Connection] = {}  # by the socket's fileno, while served
        self._connections_lock = threading.Lock()
        super().__init__(address, _handler_class(timeout_s))

    # ---- connection bookkeeping (handler threads register; the accept side may cut) --------------
    def register(self, sock: socket.socket) -> _Connection:
        conn = _Connection(sock, self._connections_lock)
        with self._connections_lock:
            self._connections[id(sock)] = conn
        return conn

    def _cut(self, choose: Callable[[list[_Connection], float], list[_Connection]]) -> int:
        """Cut the connections `choose` picks (under the lock, so none of them starts an answer first)."""
        with self._connections_lock:
            victims = choose(list(self._connections.values()), time.monotonic())
            for conn in victims:
                conn.state = "cut"
        for conn in victims:
            self.stats.count("evicted")
            conn.cut()
        return len(victims)

    def _make_room(self) -> bool:
        """Close one connection that holds a slot without using it: the longest-idle keep-alive one, else
        one whose head has been arriving for over HEAD_GRACE_S (the slowest first). False if none."""
        def oldest_unused(conns: list[_Connection], now: float) -> list[_Connection]:
            idle = [c for c in conns if c.state == "idle"]
            slow = [c for c in conns if c.state == "head" and now - c.since_s > HEAD_GRACE_S]
            return [min(idle or slow, key=lambda c: c.since_s)] if idle or slow else []

        return self._cut(oldest_unused) > 0

    def service_actions(self) -> None:
        """Every poll interval (serve_forever calls it): cut the heads older than HEAD_DEADLINE_S."""
        self._cut(lambda conns, now: [c for c in conns if c.state == "head" and now - c.since_s > HEAD_DEADLINE_S])

    # ---- the accept side (runs in the serve_forever thread) --------------------------------------
    def get_request(self) -> tuple[socket.socket, object]:
        if not self._slots.acquire(blocking=False):
            if not self._waiting:
                self._waiting = True
                self.stats.count("busy")
            self._make_room()
            if not self._slots.acquire(timeout=_SLOT_WAIT_S):
                # Not accepted: the connection stays in the backlog. serve_forever calls us again,
                # each call waiting up to _SLOT_WAIT_S, so this never spins and shutdown() still works.
                raise OSError(errno.EAGAIN, "every connection slot is busy")
        self._waiting = False
        try:
            return super().get_request()
        except OSError as exc:
            self._slots.release()
            if exc.errno in _OUT_OF_RESOURCES:
                self.stats.count("accept")
                if not self._accept_failure_logged:
                    self._accept_failure_logged = True
                    log.warning("%s: cannot accept connections: %s (backing off; logged once)", self.name,
                                exc.strerror or exc)
                # The listening socket stays readable while the connection waits: without a pause the
                # select/accept loop would spin at 100 % CPU until an fd frees up.
                threading.Event().wait(ACCEPT_BACKOFF_S)
            raise

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        # Called exactly once per accepted connection, on every path (served, failed, refused).
        try:
            with self._connections_lock:
                self._connections.pop(id(request), None)
            super().shutdown_request(request)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # reset, broken pipe, timeout: the client's doing, not a bug of ours
            self.stats.count("client")
            log.debug("%s: client %s: %s", self.name, client_address, exc)
            return
        log.exception("%s: error serving %s", self.name, client_address)


def _handler_class(timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = timeout_s
        server: BoundedHTTPServer

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without NODELAY, Nagle + the client's delayed ACK
            # add ~40 ms to every keep-alive scrape
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffered = self.rfile
            self.rfile = _HeadBudgetReader(self.rfile, MAX_HEAD_BYTES)  # type: ignore[assignment]
            self._conn = self.server.register(self.connection)

        def handle_one_request(self) -> None:
            # Idle until the next request's first byte (up to `timeout`), then the head is on the clock.
            if not self._conn.advance("busy", "idle") and self._conn.state != "idle":
                self.close_connection = True  # cut by the server
                return
            try:
                first = self._buffered.peek(1)
            except TimeoutError:
                self.close_connection = True
                return
            if not first or not self._conn.advance("idle", "head"):  # the client left, or the server cut it
                self.close_connection = True
                return
            self.rfile.new_request()  # type: ignore[attr-defined]
            super().handle_one_request()

        def parse_request(self) -> bool:
            ok = super().parse_request()  # reads the headers
            if not self._conn.advance("head", "busy"):  # cut while its head was arriving: answer nothing
                self.close_connection = True
                return False
            too_many = ok and len(self.headers) > MAX_HEADERS
            if self.rfile.exceeded or too_many:  # type: ignore[attr-defined]
                self.server.stats.count("header_limit")
                self.close_connection = True
                if ok:  # otherwise http.server already answered (and closes)
                    self.send_error(431, "Request header fields too large")
                return False
            return ok

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            route = self.server.routes.get(self.path.split("?", 1)[0])
            status, body, content_type = route() if route else (404, b"not found\n", TEXT)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base)
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


TEXT = "text/plain; charset=utf-8"


def serve_in_thread(server: BoundedHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name=f"{server.name}-http", daemon=True)
    thread.start()
    return thread
