"""One bounded, threaded HTTP server for both /metrics endpoints (the exporter's and the trainer's).

socketserver's defaults are not fit for an endpoint that anyone on the network can reach, inside a
training process too: a listen backlog of 5 (bursts of scrapes time out), a thread per connection
without a cap, no timeout, 100 header lines of 64 KiB each kept in memory per request, an accept loop
that spins at 100 % CPU once the process is out of file descriptors, and a traceback on stderr for
every client that resets mid-scrape. This server:

* listens with a backlog of LISTEN_BACKLOG;
* serves at most `max_connections` connections at once, each in its own thread: past that a new
  connection is accepted into a queue of up to PARK_LIMIT (no thread, no read) and handed to the first
  thread that finishes its connection, at once; past that it stays in the kernel's backlog. So a burst of
  200 scrapes is answered as fast as slots free, and the backlog seldom overflows (an overflow costs a
  client TCP's 1 s SYN retry; see below);
* closes a connection idle (or stalled inside a request) for `timeout_s`;
* gives a request head HEAD_DEADLINE_S from its first byte: a client that drips its head a byte at a
  time (each byte resets a socket timeout) is cut off there;
* when a connection waits for a slot, closes the longest-idle keep-alive connection, or one that has
  sent nothing (or not its whole head) for over HEAD_GRACE_S, to make room: so a few dozen idle or slow
  clients cannot hold every slot and keep Prometheus's scrapes waiting (an answer in progress is never cut);
* answers 431 to a request head over MAX_HEAD_BYTES or MAX_HEADERS lines, having read no more;
* backs off when accept() fails (out of file descriptors) instead of spinning;
* counts a client that resets or times out mid-request and logs it at debug level only;
* with a web config (thermograd.endpoint.webconfig): TLS, its handshake done in the connection's thread under the
  same head deadline (so a client that stalls it holds no more than a slow head does), client
  certificates, and basic auth on every path but OPEN_PATHS (401 otherwise);
* answers /metrics from a RenderCache Body: the same bytes for every scrape of one version, gzipped
  (once per version) for a client that accepts it.

Every such event is counted in `HttpStats` (the `*_http_errors_total{reason}` series).

Why not a maintained server: measured beside waitress 3.0.2 serving the same 19 kB body (8 simulated GPUs)
with the same limits (64 connections, backlog 256 = our backlog + our queue, 30 s idle timeout, 431 past
16 KiB, its 4 threads): bench/bench_http_servers.py, 2026-12-07, a shared 2-core VM. Where clients behave,
waitress is as good or better: a 200-scrape burst p99 77 ms vs ours 109 ms (median of 9 bursts; p50 43 vs
61 ms; none failed), and across five runs our backlog overflowed in 9 of 41 bursts (p99 ~1.04 s, the SYN
retry), waitress's in 0 of 28; keep-alive scrapes alike (p50 0.27 vs 0.20 ms); 5 threads to our 65 with
64 connections open. Oversized heads (431, RSS +0-2 MB) and resets mid-scrape (no traceback): alike.
Ours is kept for misbehaving clients, which an endpoint on the network and inside a training process must
survive: with 64 idle connections, or 64 heads dripped a byte every 0.3 s, holding every slot, ours served
3 of 3 scrapes in <= 2.3 ms (closing one idle or slow connection per waiting scrape), waitress 0 of 3
within 5 s: it frees a slot only at its 30 s channel_timeout, and never from a drip (each byte counts as
activity; one drip: cut by ours at 10.0 s, still open at waitress after 35 s); after 100 keep-alive
clients scraped once and stayed, ours had served all 100 and served 3 of 3 fresh scrapes, waitress 64 and
0 of 3; at the fd limit waitress's accept loop spun (1.98 s CPU in 2 s; 227,910 log lines, 37,985
tracebacks), ours used 0.00 s and logged one line. prometheus_client's make_wsgi_app under waitress,
rendering every scrape, had a burst p99 of 462 ms: bursts are cheap thanks to the render cache, not the
server.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import logging
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

from thermograd.endpoint.auth import BasicAuth
from thermograd.endpoint.bodycache import Body
from thermograd.endpoint.webconfig import WebConfig, WebConfigSource

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128  # Prometheus replicas + dashboards + curl bursts; the kernel caps it at somaxconn
MAX_CONNECTIONS = 64
PARK_LIMIT = LISTEN_BACKLOG  # accepted connections waiting for a slot (one fd each, no thread)
IDLE_TIMEOUT_S = 30.0  # Prometheus keeps its connection alive between 1 s scrapes; a stalled one is dropped
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; a scrape sends a few hundred bytes
MAX_HEADERS = 64
ACCEPT_BACKOFF_S = 0.1  # after accept() fails for lack of fds: retry at 10 Hz, not in a busy loop
HEAD_DEADLINE_S = 10.0  # a request head (a few hundred bytes) arrives in milliseconds; a drip does not
# A new connection that has sent nothing, or a head still arriving, after this is slow enough to give up its
# slot to a waiting client (a scrape sends its whole request within milliseconds of connecting).
HEAD_GRACE_S = 1.0
_ROOM_WAIT_S = 0.5  # how long one accept attempt waits for room in the full queue (bounds shutdown latency)
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Answered without basic auth: a liveness probe (a kubelet's httpGet) cannot send credentials without
# writing them into the manifest, and /healthz tells only whether sampling is current.
OPEN_PATHS = frozenset({"/healthz"})

# reason label -> meaning (docs/metrics.md lists the same)
REASONS = ("client", "header_limit", "accept", "busy", "evicted", "unauthorized", "tls_handshake")


@dataclass
class HttpStats:
    """Counts by reason: `client` reset/timed out mid-request, `header_limit` answered 431, `accept`
    failed (fd limit), `busy` every connection slot was taken (new connections waited for one),
    `evicted` an idle or slow connection was closed to make room for a waiting one or for taking longer
    than HEAD_DEADLINE_S over its request head, `unauthorized` answered 401 (basic auth missing or wrong),
    `tls_handshake` a TLS handshake failed (no or an unverifiable client certificate, a certificate
    name not in client_allowed_sans, plain HTTP or a refused protocol version). `version` changes with
    every count (the /metrics body cache keys on it)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    version: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1
            self.version += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class _Connection:
    """What the accept side knows of one served connection: its socket and what it is doing since when
    (`idle` between requests, `head` while its TLS handshake or request head arrives, `busy` while
    answered, `cut` once the server closed it) and whether it was answered before (`served`). State
    changes happen under the server's lock, so a connection is never cut after its answer began."""

    __slots__ = ("sock", "state", "since_s", "served", "_lock")

    def __init__(self, sock: socket.socket, lock: threading.Lock, state: str = "idle") -> None:
        self.sock, self.state, self.since_s, self._lock = sock, state, time.monotonic(), lock
        self.served = False

    def advance(self, expected: str, state: str) -> bool:
        """expected -> state; False (nothing changed) when the server cut the connection meanwhile."""
        with self._lock:
            if self.state != expected:
                return False
            self.state, self.since_s = state, time.monotonic()
            self.served = self.served or expected == "busy"
            return True

    def unused_for(self, now: float) -> float | None:
        """How long it has held its slot without using it (None: in use, or a fresh one within its grace).
        A keep-alive connection between requests is unused at once; a new one gets HEAD_GRACE_S to send
        its request (TLS: its handshake), and so does a head that is still arriving."""
        held = now - self.since_s
        if self.state == "idle" and self.served:
            return held
        return held if self.state in ("idle", "head") and held > HEAD_GRACE_S else None

    def cut(self) -> None:
        """Wake the handler's blocked read with end-of-file (it then closes the connection itself). On a
        TLS socket the plain socket's shutdown: SSLSocket's own would drop its state under the reader."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


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


# () -> (status, body, content type); a Body is sent gzipped to a client that accepts it
Route = Callable[[], tuple[int, "bytes | Body", str]]


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header accepts gzip (`gzip`, `gzip;q=0.5`; not `gzip;q=0`)."""
    for part in (header or "").split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() != "gzip":
            continue
        q = params.strip().lower()
        if not q.startswith("q="):
            return True
        try:
            return float(q[2:]) > 0
        except ValueError:
            return False
    return False


def _peer_names(cert: dict) -> set[str]:
    """A verified client certificate's subject alternative names (DNS, IP, e-mail, URI), as given."""
    return {value for _kind, value in cert.get("subjectAltName", ())}


class BoundedHTTPServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True  # a scrape in flight never blocks the process from exiting
    body_cache = None  # the /metrics route's RenderCache, where it has one (tests count its renders)

    def __init__(self, address: tuple[str, int], routes: dict[str, Route], *, name: str,
                 max_connections: int = MAX_CONNECTIONS, timeout_s: float = IDLE_TIMEOUT_S,
                 web: WebConfig | None = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.routes = routes
        self.name = name
        self.stats = HttpStats()
        self.web = WebConfigSource(web) if web is not None else None
        if web is not None and web.tls is None:
            log.warning("%s: basic auth without tls_server_config: passwords cross the network in clear text",
                        name)
        self._auth: tuple[WebConfig, BasicAuth] | None = None
        self._timeout_s = timeout_s
        self._free_slots = max_connections
        self._parked: deque[tuple[socket.socket, object]] = deque()  # accepted, waiting for a slot
        self._accept_failure_logged = False
        self._waiting = False  # connections are waiting for a slot (counted once as `busy`)
        self._connections: dict[int, _Connection] = {}  # by the socket's fileno, while served
        self._lock = threading.Lock()  # slots, the queue and the connections' states
        self._room = threading.Condition(self._lock)  # notified when the queue shrinks
        super().__init__(address, _handler_class(timeout_s))
        self.socket.setblocking(False)  # accept() until the backlog is empty (see _handle_request_noblock)

    @property
    def scheme(self) -> str:
        return self.web.current().scheme if self.web is not None else "http"

    # ---- authentication (handler threads) -----------------------------------------------------------
    def authorized(self, path: str, header: str | None) -> bool:
        if self.web is None or path in OPEN_PATHS:
            return True
        config = self.web.current()
        if not config.users:
            return True
        auth = self._auth
        if auth is None or auth[0] is not config:  # first use, or the file was reloaded
            auth = self._auth = (config, BasicAuth(config.users))
        return auth[1].check(header)

    def extra_headers(self) -> dict[str, str]:
        return dict(self.web.current().headers) if self.web is not None else {}

    # ---- connection bookkeeping (handler threads register; the accept side may cut) ------------------
    def connection(self, sock: socket.socket) -> _Connection:
        return self._connections[sock.fileno()]

    def _cut(self, choose: Callable[[list[_Connection], float], list[_Connection]]) -> int:
        """Cut the connections `choose` picks (under the lock, so none of them starts an answer first)."""
        with self._lock:
            victims = choose(list(self._connections.values()), time.monotonic())
            for conn in victims:
                conn.state = "cut"
        for conn in victims:
            self.stats.count("evicted")
            conn.cut()
        return len(victims)

    def _make_room(self) -> int:
        """Close as many connections as are waiting for a slot, among those that hold one without using
        it (the longest unused first: idle keep-alive ones, then new or slow ones past their grace)."""
        def longest_unused(conns: list[_Connection], now: float) -> list[_Connection]:
            unused = [(held, c) for c in conns if (held := c.unused_for(now)) is not None]
            unused.sort(key=lambda pair: -pair[0])
            return [c for _, c in unused[:len(self._parked)]]

        return self._cut(longest_unused)

    def service_actions(self) -> None:
        """After every accepting round and every poll interval (serve_forever calls it): cut the heads older
        than HEAD_DEADLINE_S, and make room for waiting connections (held slots past their grace)."""
        self._cut(lambda conns, now: [c for c in conns if c.state == "head" and now - c.since_s > HEAD_DEADLINE_S])
        if self._parked:
            self._make_room()

    # ---- the accept side (runs in the serve_forever thread) --------------------------------------
    def get_request(self) -> tuple[socket.socket, object]:
        with self._room:
            if len(self._parked) >= PARK_LIMIT and not self._room.wait(_ROOM_WAIT_S):
                # Not accepted: the connection stays in the backlog. serve_forever calls us again,
                # each call waiting up to _ROOM_WAIT_S, so this never spins and shutdown() still works.
                raise OSError(errno.EAGAIN, "every connection slot is busy and the queue is full")
        try:
            return super().get_request()
        except OSError as exc:
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

    def _handle_request_noblock(self) -> None:
        """serve_forever calls this when the listening socket is readable: accept every connection waiting
        in the backlog, then hand them to slots or the queue. Accepting first keeps a burst out of the
        kernel's queue (it overflows at LISTEN_BACKLOG): the threads that serve them would otherwise start
        competing with this one for the GIL after the first accept."""
        accepted = []
        for _ in range(LISTEN_BACKLOG):
            try:
                accepted.append(self.get_request())
            except OSError:  # BlockingIOError: the backlog is empty
                break
        for request, client_address in accepted:
            self.process_request(request, client_address)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore
        """A free slot: a thread serves the connection now. None: it joins the queue (service_actions, which
        serve_forever calls right after this accepting round, makes room for the queue at once)."""
        with self._lock:
            start = self._free_slots > 0
            if start:
                self._free_slots -= 1
            else:
                self._parked.append((request, client_address))
                first_wait, self._waiting = not self._waiting, True
        if start:
            try:
                # Not threading.Thread: its start() waits until the new thread runs, and under a burst that
                # wait (a GIL hand-off behind dozens of busy threads) is what slowed accepting the most.
                _thread.start_new_thread(self._serve_slot, (request, client_address))
            except RuntimeError as exc:  # can't start new thread (out of memory or threads): refuse this one
                with self._lock:
                    self._free_slots += 1
                self.stats.count("accept")
                log.warning("%s: cannot start a thread for a connection: %s", self.name, exc)
                self.shutdown_request(request)
            return
        if first_wait:
            self.stats.count("busy")

    def _serve_slot(self, request: socket.socket, client_address: object) -> None:
        """One slot's thread: serves its connection, then the longest-waiting queued one, until none waits."""
        while True:
            try:
                self.process_request_thread(request, client_address)
            except Exception:  # never leave the slot taken: its thread is the only one to give it back
                log.exception("%s: error serving %s", self.name, client_address)
            with self._lock:
                if not self._parked:
                    self._free_slots += 1
                    self._waiting = False
                    return
                request, client_address = self._parked.popleft()
                self._room.notify()

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore
        tls = self.web.current().ssl_context if self.web is not None else None
        conn = _Connection(request, self._lock, "head" if tls is not None else "idle")
        key = request.fileno()
        with self._lock:
            self._connections[key] = conn
        try:
            if tls is not None:
                request = self._handshake(tls, request, conn)
            if request is not None:
                self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                self._connections.pop(key, None)
            self.shutdown_request(conn.sock)  # the socket in use: the TLS one once wrapped

    def _handshake(self, context: ssl.SSLContext, sock: socket.socket,
                   conn: _Connection) -> ssl.SSLSocket | None:
        """The TLS handshake in the connection's own thread (a slow client stalls nobody else), under the
        head's grace and deadline. None when it failed: counted, logged at debug level."""
        sock.settimeout(self._timeout_s)
        with self._lock:  # no I/O yet; under the lock so that a cut meanwhile reaches the socket in use
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            conn.sock = tls  # `sock` is detached now: cut and close the TLS socket
        try:
            tls.do_handshake()
            allowed = self.web.current().tls.allowed_sans if self.web is not None else ()
            if allowed and not _peer_names(tls.getpeercert() or {}) & set(allowed):
                raise ssl.SSLError("client certificate names none of client_allowed_sans")
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, TimeoutError, ConnectionError) as exc:
            self._handshake_failed(conn, "client", exc)
            return None
        except ssl.SSLError as exc:
            self._handshake_failed(conn, "tls_handshake", exc)
            return None
        except OSError as exc:
            self._handshake_failed(conn, "client", exc)
            return None
        if not conn.advance("head", "idle"):  # cut while its handshake went on
            return None
        return tls

    def _handshake_failed(self, conn: _Connection, reason: str, exc: Exception) -> None:
        if conn.state != "cut":  # a cut one is counted as evicted already
            self.stats.count(reason)
        log.debug("%s: TLS handshake failed: %s", self.name, exc)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:  # connections still waiting for a slot will not get one
            parked, self._parked = list(self._parked), deque()
        for request, _ in parked:
            self.shutdown_request(request)

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
            self._conn = self.server.connection(self.connection)

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
            path = self.path.split("?", 1)[0]
            headers = self.server.extra_headers()
            if not self.server.authorized(path, self.headers.get("Authorization")):
                self.server.stats.count("unauthorized")
                status, body, content_type = 401, b"Unauthorized\n", TEXT
                headers["WWW-Authenticate"] = 'Basic realm="thermograd"'
            else:
                route = self.server.routes.get(path)
                status, body, content_type = route() if route else (404, b"not found\n", TEXT)
            if isinstance(body, Body):
                headers["Vary"] = "Accept-Encoding"
                if accepts_gzip(self.headers.get("Accept-Encoding")):
                    body, headers["Content-Encoding"] = body.gzipped(), "gzip"
                else:
                    body = body.plain
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
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
