"""HTTP servers side by side: thermograd's BoundedHTTPServer against waitress, on a scrape burst and on every
scenario of the HTTP fault suite (tests/test_faults_http.py) that applies to any server.

Every server runs in its own process and serves the same bytes: the /metrics body of an exporter with 8
simulated GPUs, taken once at start (as bench_burst.py takes it):

* `thermograd`: `BoundedHTTPServer` with its defaults (thermograd.endpoint.server), /metrics handing back
  that body (a fixed `Body`, as its RenderCache hands one body to every scrape of a sample);
* `waitress`: waitress (a maintained WSGI server: one I/O loop, a pool of worker threads) serving a WSGI
  app that returns that body, configured with the same limits: at most 64 client connections (its
  `connection_limit` counts its listening socket and its wake-up pipe too: 66), an idle timeout of 30 s
  (`channel_timeout`, checked every `cleanup_interval` = 1 s, its finest), a listen backlog of 256 (as
  many connections as wait for a slot of ours: 128 in its backlog, 128 accepted into its queue), 431
  past 16 KiB of request head (`max_request_header_size`), its default 4 worker threads (they run the app
  only; the I/O loop reads, parses and writes);
* `waitress_prometheus_client` (burst and single scrapes only): the same waitress serving
  prometheus_client's `make_wsgi_app` over the same metric families (parsed back from the body), so it
  renders every scrape with `generate_latest`: what swapping our server for the stock stack would serve.

Measured, on real loopback sockets:

* burst: 200 scrapes started together on fresh connections, ROUNDS bursts per server alternating
  (bench_burst.run_bursts): the median of the bursts' p99, the pooled p50/p99, failures, backlog overflows
  (system-wide) and how many bursts had a p99 past 1 s (clients dropped from a full backlog: TCP's SYN retry);
* single: 500 scrapes on one keep-alive connection, as Prometheus scrapes, ROUNDS times alternating: the
  medians of the rounds' p50 and p99;
* the fault scenarios, each on freshly started servers, each answering: is a scrape served meanwhile, how
  fast (SCRAPE_TIMEOUT_S per try; `within_1s_scrape_timeout` counts those within the 1 s scrape_timeout of
  prometheus/*.yml), and what became of the bad clients (`open`, `closed` or `reset` by the server, or the
  status line it answered them), plus the server's log lines and tracebacks:
  idle_slots (64 connections that send nothing), dripping_slots (64 heads dripped a byte every 0.3 s),
  timeouts (one idle new connection, one idle keep-alive connection and one head dripped a byte every
  0.5 s: seconds until the server closes each, within --window), huge_heads (40 clients sending ~6 MB
  of header lines without ending the head; and one complete 20 KiB head), resets (80 clients resetting
  mid-scrape), keepalive_idle (100 keep-alive clients scrape once and stay connected), fd_limit (the
  server at RLIMIT_NOFILE 24 with 40 connections: its CPU over 2 s, recovery).

Prints one JSON object on stdout (progress on stderr). `--serve KIND` is the server processes' entry.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.bench_burst import (
    REPO_ROOT,
    Target,
    exporter_argv,
    free_port,
    run_bursts,
    single_scrapes,
    start,
    wait_ready,
)
from bench.bench_exporter import stop
from testkit.faults import closed_within, cpu_s, drip, low_fd_limit, reset, rss_mb, scrape_raw, threads
from thermograd.endpoint.bodycache import Body
from thermograd.endpoint.server import (
    HEAD_DEADLINE_S,
    HEAD_GRACE_S,
    IDLE_TIMEOUT_S,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    PARK_LIMIT,
    BoundedHTTPServer,
)

ROUNDS = 9
SCRAPE_TIMEOUT_S = 5.0  # per scrape try in the fault scenarios (long enough to see a slow answer)
PROMETHEUS_SCRAPE_TIMEOUT_S = 1.0  # prometheus/*.yml: scrape_interval 1s, scrape_timeout 1s
WINDOW_S = IDLE_TIMEOUT_S + 5  # how long the timeouts scenario waits for the server to close a client
WAITRESS = {
    "connection_limit": MAX_CONNECTIONS + 2,  # it counts its listening socket and wake-up pipe too
    "channel_timeout": int(IDLE_TIMEOUT_S), "cleanup_interval": 1,  # closes idle ones within 1 s of it
    # as many connections waiting for a slot as ours lets wait: its backlog plus its accepted queue
    "backlog": LISTEN_BACKLOG + PARK_LIMIT,
    "max_request_header_size": MAX_HEAD_BYTES, "threads": 4,  # its default worker pool
}
SERVERS = ("thermograd", "waitress", "waitress_prometheus_client")
FAULT_SERVERS = SERVERS[:2]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def progress(message: str) -> None:
    print(f"bench_http_servers: {message}", file=sys.stderr, flush=True)


# ---- the server processes ----------------------------------------------------------------------------------
def serve(kind: str, port: int, body_path: Path, waitress_threads: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    body = body_path.read_bytes()
    if kind == "thermograd":
        fixed = Body(body)
        BoundedHTTPServer(("127.0.0.1", port), {"/metrics": lambda: (200, fixed, CONTENT_TYPE)},
                          name="bench").serve_forever(poll_interval=0.5)
        return
    import waitress

    if kind == "waitress":
        def app(environ: dict, start_response: Callable) -> list[bytes]:
            start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
            return [body]
    else:
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.parser import text_string_to_metric_families

        class Families:  # the body's metric families, rendered again by generate_latest on every scrape
            def collect(self) -> list:
                return families

        families = list(text_string_to_metric_families(body.decode()))
        registry = CollectorRegistry()
        registry.register(Families())
        app = make_wsgi_app(registry)
    waitress.serve(app, host="127.0.0.1", port=port, **{**WAITRESS, "threads": waitress_threads})


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_summary(self) -> dict[str, object]:
        text = self.log.read_text(errors="replace")
        lines = text.splitlines()
        return {"log_lines": len(lines), "tracebacks": text.count("Traceback"),
                "first_log_line": lines[0][:160] if lines else None}


@contextlib.contextmanager
def running(kinds: tuple[str, ...], tmp: Path, waitress_threads: int,
            preexec_fn: Callable[[], None] | None = None) -> Iterator[dict[str, Server]]:
    """Fresh server processes of `kinds`, each answering /metrics."""
    servers: dict[str, Server] = {}
    try:
        for kind in kinds:
            port, log = free_port(), tmp / f"{kind}-{time.monotonic_ns()}.log"
            with open(log, "w") as err:
                proc = subprocess.Popen([sys.executable, "-m", "bench.bench_http_servers", "--serve", kind,
                                         "--port", str(port), "--body", str(tmp / "body.prom"),
                                         "--waitress-threads", str(waitress_threads)],
                                        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                        preexec_fn=preexec_fn)
            servers[kind] = Server(kind, proc, port, log)
            wait_ready(Target(port), proc)
        yield servers
    finally:
        for server in servers.values():
            stop(server.proc)


# ---- clients -----------------------------------------------------------------------------------------------
def timed_scrapes(port: int, tries: int) -> dict[str, object]:
    """`tries` scrapes one after the other, each on a fresh connection: served, and in how many ms."""
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        served = scrape_raw(port, timeout=SCRAPE_TIMEOUT_S)
        times.append(round((time.perf_counter() - started) * 1e3, 1) if served else None)
    ok = [t for t in times if t is not None]
    return {"served": len(ok), "of": tries, "ms": times,
            "within_1s_scrape_timeout": sum(t <= PROMETHEUS_SCRAPE_TIMEOUT_S * 1e3 for t in ok)}


def recovery_s(port: int, limit_s: float = 15.0) -> float | None:
    """Seconds until a scrape is served again (None: not within limit_s)."""
    started = time.monotonic()
    while not scrape_raw(port, timeout=2):
        if time.monotonic() - started > limit_s:
            return None
    return round(time.monotonic() - started, 2)


def fate(socks: list[socket.socket]) -> dict[str, int]:
    """What the server did to these clients: left them `open`, `closed` or `reset` them, or answered
    them (the status line)."""
    counts: Counter[str] = Counter()
    for sock in socks:
        try:
            sock.setblocking(False)
            data = sock.recv(256, socket.MSG_PEEK)
        except BlockingIOError:
            counts["open"] += 1
        except OSError:
            counts["reset"] += 1
        else:
            counts[data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"] += 1
    return dict(counts)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def at_once(target: Callable[..., None], each: list[tuple]) -> None:
    """target(*args) for every args in `each`, each in its own thread, all at once; returns when all did."""
    workers = [threading.Thread(target=target, args=args) for args in each]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


# ---- the fault scenarios (one server each) -----------------------------------------------------------------
def slots_held(server: Server, dripping: bool) -> dict[str, object]:
    """test_slots_held_by_idle_or_slow_clients_do_not_block_a_scrape: MAX_CONNECTIONS clients that send
    nothing, or drip their head a byte every 0.3 s; then 3 scrapes."""
    stop_drip = threading.Event()
    held = [drip(server.port, stop_drip, 0.3) if dripping else connect(server.port)
            for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(1.5)
        out = {"server_threads": threads(server.pid), "scrapes": timed_scrapes(server.port, 3),
               "bad_clients": fate(held)}
    finally:
        stop_drip.set()
        close_all(held)
    out["recovery_s_after_they_left"] = recovery_s(server.port)
    return out


def timeouts(server: Server, window_s: float) -> dict[str, float | None]:
    """test_an_idle_connection_is_closed_after_the_timeout and test_a_head_dripped_a_byte_at_a_time_is_cut_
    at_the_deadline: seconds until the server closes each client (None: still open after window_s)."""
    stop_drip = threading.Event()
    keepalive = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    keepalive.request("GET", "/metrics")
    keepalive.getresponse().read()
    clients = {"idle_new_connection": connect(server.port), "idle_keepalive_after_a_scrape": keepalive.sock,
               "head_dripped_every_0.5s": drip(server.port, stop_drip, 0.5)}
    out: dict[str, float | None] = {}

    def watch(name: str, sock: socket.socket) -> None:
        waited = closed_within(sock, window_s)
        out[name + "_closed_after_s"] = None if waited is None else round(waited, 2)

    at_once(watch, list(clients.items()))
    stop_drip.set()
    close_all(list(clients.values()))
    return out


def huge_heads(server: Server) -> dict[str, object]:
    """test_stalled_clients_with_huge_headers_do_not_blow_up_memory: 40 clients send a request line and 95
    header lines of 65 kB (~6 MB), never the blank line; then one complete head of 20 KiB."""
    before = rss_mb(server.pid)
    line = b"X-Pad: " + b"a" * 65_000 + b"\r\n"
    socks: list[socket.socket] = []
    sent: list[int] = []

    def stall() -> None:
        sock = connect(server.port)
        socks.append(sock)
        done = 0
        try:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            for _ in range(95):
                sock.sendall(line)
                done += len(line)
        except OSError:
            pass  # answered and closed
        sent.append(done)

    at_once(stall, [()] * 40)
    time.sleep(1.0)  # let the server read what the kernel buffered
    out = {"rss_grew_mb": round(rss_mb(server.pid) - before, 1), "bad_clients": fate(socks),
           "bad_clients_sent_kb_median_before_cut": round(statistics.median(sent) / 1024)}
    close_all(socks)
    out["scrapes"] = timed_scrapes(server.port, 3)
    with connect(server.port) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20 * 1024 + b"\r\n\r\n")
        answer = sock.recv(256).split(b"\r\n", 1)[0].decode(errors="replace")
        out["complete_20kib_head"] = {"answer": answer, "ms": round((time.perf_counter() - started) * 1e3, 1)}
    return out


def resets(server: Server) -> dict[str, object]:
    """test_a_client_resetting_mid_scrape_prints_no_traceback: 40 clients reset right after their
    request, 40 after the first kB of the answer; then 3 scrapes."""
    for i in range(80):
        sock = connect(server.port)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        if i % 2:
            with contextlib.suppress(OSError):
                sock.recv(1024)
        reset(sock)
    time.sleep(0.5)
    return {"scrapes": timed_scrapes(server.port, 3)}


def keepalive_idle(server: Server, clients: int) -> dict[str, object]:
    """`clients` keep-alive clients (dashboards, several Prometheus) each scrape once and stay connected,
    idle; then 3 scrapes on fresh connections."""
    conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=SCRAPE_TIMEOUT_S)
             for _ in range(clients)]
    first: list[float | None] = [None] * clients

    def scrape_once(i: int) -> None:
        started = time.perf_counter()
        try:
            conns[i].request("GET", "/metrics")
            if conns[i].getresponse().read():
                first[i] = time.perf_counter() - started
        except OSError:
            pass

    at_once(scrape_once, [(i,) for i in range(clients)])
    time.sleep(1.5)
    served = sorted(t for t in first if t is not None)
    out = {"keepalive_first_scrapes_served": len(served), "of": clients,
           "keepalive_first_scrape_p50_ms": round(statistics.median(served) * 1e3, 1) if served else None,
           "server_threads": threads(server.pid), "scrapes": timed_scrapes(server.port, 3)}
    out["keepalive_clients"] = fate([c.sock for c in conns if c.sock is not None])
    for conn in conns:
        conn.close()
    return out


def fd_limit(server: Server) -> dict[str, object]:
    """test_at_the_fd_limit_the_accept_loop_does_not_spin: RLIMIT_NOFILE 24, 40 connections."""
    socks = [connect(server.port) for _ in range(40)]
    time.sleep(0.5)
    started = cpu_s(server.pid)
    time.sleep(2.0)
    out: dict[str, object] = {"cpu_s_in_2s": round(cpu_s(server.pid) - started, 2)}
    close_all(socks)
    out["recovery_s_after_they_left"] = recovery_s(server.port)
    return out


def keepalive_rounds(targets: dict[str, Target], rounds: int) -> dict[str, dict[str, object]]:
    """`rounds` times, alternating the servers: 500 scrapes on one keep-alive connection. Per server: the
    medians of the rounds' p50 and p99 (a disturbance of a shared machine moves one round, not the result)."""
    runs: dict[str, list[dict]] = {kind: [] for kind in targets}
    for i in range(rounds):
        for kind, target in targets.items():
            progress(f"keep-alive scrapes {i + 1}/{rounds}: {kind}")
            runs[kind].append(single_scrapes(target))
    return {kind: {"p50_ms": statistics.median(r["p50_ms"] for r in results),
                   "p99_ms": statistics.median(r["p99_ms"] for r in results),
                   "p99_ms_per_round": [r["p99_ms"] for r in results],
                   "failed": sum(r["failed"] for r in results)} for kind, results in runs.items()}


def side_by_side(name: str, scenario: Callable[[Server], dict], tmp: Path, waitress_threads: int,
                 parallel: bool = False, preexec_fn: Callable[[], None] | None = None) -> dict[str, dict]:
    """`scenario` against fresh servers of each kind (one after the other, or at once when `parallel`),
    with each server's log summary."""
    progress(name)
    with running(FAULT_SERVERS, tmp, waitress_threads, preexec_fn) as servers:
        out: dict[str, dict] = {}

        def run(kind: str) -> None:
            out[kind] = scenario(servers[kind])

        if parallel:
            at_once(run, [(kind,) for kind in servers])
        else:
            for kind in servers:
                run(kind)
        for kind, server in servers.items():
            out[kind].update(server.log_summary())
    return out


def exporter_body() -> bytes:
    port = free_port()
    proc = start(exporter_argv(port))
    try:
        return wait_ready(Target(port), proc)
    finally:
        stop(proc)


def main(args: argparse.Namespace) -> int:
    result: dict[str, object] = {
        "cpu_count": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "thermograd": {"max_connections": MAX_CONNECTIONS, "park_limit": PARK_LIMIT,
                       "timeout_s": IDLE_TIMEOUT_S, "backlog": LISTEN_BACKLOG,
                       "max_head_bytes": MAX_HEAD_BYTES, "head_grace_s": HEAD_GRACE_S,
                       "head_deadline_s": HEAD_DEADLINE_S},
        "waitress": {**WAITRESS, "threads": args.waitress_threads}, "scrape_timeout_s": SCRAPE_TIMEOUT_S,
    }
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        progress("taking the /metrics body of an exporter with 8 simulated GPUs")
        (tmp / "body.prom").write_bytes(exporter_body())
        with running(SERVERS, tmp, args.waitress_threads) as servers:
            targets = {kind: Target(server.port) for kind, server in servers.items()}
            result["body_bytes"] = {kind: len(wait_ready(target, servers[kind].proc))
                                    for kind, target in targets.items()}
            time.sleep(1.0)
            result["burst"] = bursts = run_bursts(targets, args.rounds)
            for one in bursts.values():  # a p99 past 1 s: its clients waited for TCP's SYN retry
                one["bursts_p99_over_1s"] = sum(p is not None and p > 1000 for p in one["p99_ms_per_burst"])
            result["single_keepalive"] = keepalive_rounds(targets, args.rounds)
        scenarios: dict[str, tuple[str, Callable[[Server], dict]]] = {
            "idle_slots": ("64 idle connections", lambda s: slots_held(s, dripping=False)),
            "dripping_slots": ("64 dripping heads", lambda s: slots_held(s, dripping=True)),
            "huge_heads": ("huge heads", huge_heads),
            "resets": ("resets mid-scrape", resets),
            "keepalive_idle": (f"{args.keepalive_clients} idle keep-alive clients",
                               lambda s: keepalive_idle(s, args.keepalive_clients)),
            "fd_limit": ("at the fd limit", fd_limit),
            "timeouts": (f"timeouts (up to {args.window:g} s)", lambda s: timeouts(s, args.window)),
        }
        result["scenarios"] = {
            name: side_by_side(label, scenario, tmp, args.waitress_threads, parallel=name == "timeouts",
                               preexec_fn=low_fd_limit if name == "fd_limit" else None)
            for name, (label, scenario) in scenarios.items()}
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=ROUNDS, help="bursts and keep-alive rounds per server")
    p.add_argument("--window", type=float, default=WINDOW_S,
                   help="seconds the timeouts scenario waits for the servers to close a client")
    p.add_argument("--keepalive-clients", type=int, default=100, help="clients of keepalive_idle")
    p.add_argument("--waitress-threads", type=int, default=WAITRESS["threads"])
    p.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.serve:
        serve(arguments.serve, arguments.port, arguments.body, arguments.waitress_threads)
        sys.exit(0)
    sys.exit(main(arguments))
