"""Soak: the exporter at 10 Hz with 8 simulated GPUs, scraped every second, for 30 min (or --minutes /
--hours). Does it leak? Reports RSS growth (MB/hour, least-squares fit after the warm-up), open fds and
threads at start and end, and the scrape p99 per 5-minute window.

Prints one JSON object on stdout (progress on stderr). Goals: RSS growth < 1 MB/hour, no fd or thread
growth. CPU-light (one scrape a second), so it can run beside other work: `nohup python -m
bench.bench_soak > soak.json &` (from the repository root).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time

import psutil

from bench.bench_exporter import DEVICES, percentile, start_exporter, stop  # the same exporter, helpers

SAMPLE_HZ = 10.0
SCRAPE_INTERVAL_S = 1.0
RESOURCE_EVERY_S = 10.0  # RSS / fds / threads sampled this often
WINDOW_S = 300.0  # p99 reported per window of this length
GOALS = {"rss_growth_mb_per_hour": 1.0, "fd_growth": 0, "thread_growth": 0}


def progress(message: str) -> None:
    print(f"bench_soak: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="soak length (default 30)")
    p.add_argument("--hours", type=float, help="soak length in hours (overrides --minutes)")
    args = p.parse_args(argv)
    args.duration_s = (args.hours * 3600.0) if args.hours is not None else args.minutes * 60.0
    if not args.duration_s >= 60:
        p.error("the soak must last at least one minute")
    # A sixth of the run, at most 5 min: imports, caches and allocator arenas settle first.
    args.warmup_s = min(300.0, args.duration_s / 6)
    return args


class Scraper:
    """One keep-alive connection, like Prometheus; reconnects (and counts) when a scrape fails."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.failures = 0
        self._conn: http.client.HTTPConnection | None = None

    def scrape(self) -> float | None:
        started = time.perf_counter()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self._conn.request("GET", "/metrics")
            response = self._conn.getresponse()
            response.read()
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException):
            self.failures += 1
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None
        return (time.perf_counter() - started) * 1e3


def resources(proc: psutil.Process) -> dict[str, float]:
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "threads": proc.num_threads()}


def growth_per_hour(points: list[tuple[float, float]]) -> float:
    times, values = zip(*points, strict=True)
    return statistics.linear_regression(times, values).slope * 3600.0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    exporter, port = start_exporter(SAMPLE_HZ)
    proc = psutil.Process(exporter.pid)
    scraper = Scraper(port)
    latencies: list[tuple[float, float]] = []  # (seconds since start, ms)
    usage: list[tuple[float, dict[str, float]]] = []
    progress(f"{args.duration_s / 60:g} min soak, {DEVICES} devices at {SAMPLE_HZ:g} Hz, port {port}")
    t0 = time.monotonic()
    next_scrape, next_usage, next_report = t0, t0, t0 + 300
    try:
        while (now := time.monotonic()) - t0 < args.duration_s:
            if exporter.poll() is not None:
                raise RuntimeError(f"the exporter exited with {exporter.returncode}")
            if now >= next_scrape:
                ms = scraper.scrape()
                if ms is not None:
                    latencies.append((now - t0, ms))
                next_scrape += SCRAPE_INTERVAL_S
            if now >= next_usage:
                usage.append((now - t0, resources(proc)))
                next_usage += RESOURCE_EVERY_S
            if now >= next_report:
                progress(f"{(now - t0) / 60:.0f} min: rss {usage[-1][1]['rss_mb']:.1f} MB, "
                         f"fds {usage[-1][1]['fds']}, threads {usage[-1][1]['threads']}")
                next_report += 300
            time.sleep(max(0.0, min(next_scrape, next_usage) - time.monotonic()))
        final = resources(proc)
    finally:
        stop(exporter)
    settled = [(t, u["rss_mb"]) for t, u in usage if t >= args.warmup_s]
    start = next(u for t, u in usage if t >= args.warmup_s)
    window_s = min(WINDOW_S, args.duration_s / 6)
    windows = []
    for lo in range(0, int(args.duration_s), int(window_s)):
        ms = [v for t, v in latencies if lo <= t < lo + window_s]
        if ms:
            windows.append({"from_min": round(lo / 60, 1), "scrapes": len(ms), "p50_ms": round(percentile(ms, 0.5), 2),
                            "p99_ms": round(percentile(ms, 0.99), 2)})
    result = {
        "minutes": round(args.duration_s / 60, 1), "devices": DEVICES, "sample_hz": SAMPLE_HZ,
        "warmup_minutes": round(args.warmup_s / 60, 1),
        "scrapes": len(latencies), "failed_scrapes": scraper.failures,
        "rss_mb_start": round(start["rss_mb"], 2), "rss_mb_end": round(final["rss_mb"], 2),
        "rss_growth_mb_per_hour": round(growth_per_hour(settled), 3),
        "fds_start": start["fds"], "fds_end": final["fds"],
        "threads_start": start["threads"], "threads_end": final["threads"],
        "scrape_p99_ms_by_window": windows,
        "goals": GOALS,
    }
    result["meets_goals"] = (result["rss_growth_mb_per_hour"] < GOALS["rss_growth_mb_per_hour"]
                             and final["fds"] - start["fds"] <= GOALS["fd_growth"]
                             and final["threads"] - start["threads"] <= GOALS["thread_growth"]
                             and scraper.failures == 0)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
