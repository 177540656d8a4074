"""One render per sample: both /metrics endpoints build their body once per version of what it shows and hand
it to every scrape of that version (gzipped once too); a burst past the connection cap is queued and all
answered. Real sockets, in-process servers. The latency goals are bench/bench_burst.py's."""

from __future__ import annotations

import gzip
import http.client
import threading
from dataclasses import replace

from thermograd.exporter.sampler import Snapshot
from thermograd.exporter.server import make_server, serve_in_thread


def scrape(port: int, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def burst(port: int, n: int) -> list[bytes]:
    bodies: list[bytes] = []
    barrier = threading.Barrier(n)

    def client() -> None:
        barrier.wait()
        bodies.append(scrape(port)[2])

    workers = [threading.Thread(target=client) for _ in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return bodies


def test_the_exporter_renders_once_per_snapshot_for_a_burst_past_the_connection_cap():
    current = [Snapshot(samples_total=1)]
    server = make_server("127.0.0.1", 0, lambda: current[0], lambda: (True, "ok"))
    serve_in_thread(server)
    port = server.server_address[1]
    try:
        bodies = burst(port, 100)  # more than the 64 connections served at once: the rest queue
        # One snapshot: a render per change of the endpoint's own counters only (`busy`, each time
        # connections start waiting for a slot), not per scrape.
        renders = server.body_cache.renders
        assert len(bodies) == 100 and len(set(bodies)) <= renders <= 1 + server.stats.version < 100
        assert len(set(burst(port, 20))) == 1  # fewer than the cap: nothing waits, nothing changes
        renders = server.body_cache.renders
        current[0] = replace(current[0], samples_total=2)  # a new sample
        status, headers, body = scrape(port, {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert server.body_cache.renders == renders + 1
        assert b"rle_exporter_samples_total 2.0" in gzip.decompress(body)
        assert scrape(port)[2] == gzip.decompress(body)  # the same version, plain
    finally:
        server.shutdown()
        server.server_close()


def test_the_trainer_renders_once_per_step():
    from thermograd.trainer.metrics import TrainingMetrics

    with TrainingMetrics(port=0, run_id="render-once") as metrics:
        metrics.observe_step(1, 2.0, 0.5, 1e-3, tokens=8)
        first = burst(metrics.port, 30)
        assert len(set(first)) == 1 and b"train_steps_total" in first[0]
        assert metrics._server.body_cache.renders == 1
        metrics.observe_step(2, 1.9, 0.4, 1e-3, tokens=8)
        second = burst(metrics.port, 10)
        assert len(set(second)) == 1 and second[0] != first[0] and metrics._server.body_cache.renders == 2
