"""Benchmark: N days (default a week) of 1 s data in a real Prometheus -> fetch + align + every statistic.

Goals: a week (issue 4) in fetch + align + statistics < 60 s; any length (issue 12, `--days 30`) in peak
RSS < 1 GB, with fetch + align within 1.5x the raw cost of the same query_range requests (fetched and
parsed into the same float arrays, nothing kept), measured side by side in this run. The backfilled TSDB
is cached per length (THERMOGRAD_BENCH_CACHE, default ~/.cache/thermograd/bench_analysis[_Nd]) so reruns
skip promtool; `--build-only` just builds it. Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from stacklib import free_port  # noqa: E402  (one loopback-port helper for demo, tests, benches)

from analysis.backfill import (  # noqa: E402
    BLOCK_S,
    backfill_blockwise,
    device_series,
    serve_prometheus,
    train_series,
)
from analysis.synthetic import planted_run  # noqa: E402

DAY_S = 86400
CACHE_VERSION = 1
RUN_ID = "bench-week"  # the run id of every length (the cache key is the directory)


def log(message: str) -> None:
    print(f"bench_analysis: {message}", file=sys.stderr, flush=True)



def cache_dir(days: int) -> Path:
    root = Path(os.environ.get("THERMOGRAD_BENCH_CACHE", Path.home() / ".cache" / "thermograd" / "bench_analysis"))
    return root if days == 7 else root.with_name(f"{root.name}_{days}d")


def cached_tsdb(cache: Path, days: int) -> tuple[Path, dict, float]:
    """The TSDB with `days` of data (built once); returns (path, metadata, seconds spent building)."""
    meta_path = cache / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == CACHE_VERSION and meta.get("points_per_series") == days * DAY_S:
            return cache / "tsdb", meta, 0.0
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    t0 = time.perf_counter()
    span_s = days * DAY_S
    base = int(time.time()) // 3600 * 3600 - span_s - 2 * 86400  # older than the head block
    log(f"generating {days} days of 1 s data")
    cols = planted_run(span_s, seed=42)
    series = train_series(cols, base, RUN_ID, "sim-0", info_every_s=60) + device_series(cols, base, "sim-0", "0",
                                                                                       info_every_s=60)
    log(f"promtool create-blocks, one 2 h block at a time ({span_s // BLOCK_S + 1} blocks)")
    backfill_blockwise(series, cache / "tsdb", cache)
    meta = {"version": CACHE_VERSION, "base": base, "points_per_series": span_s,
            "series": len(series), "samples": sum(s.t_s.size for s in series)}
    meta_path.write_text(json.dumps(meta))
    return cache / "tsdb", meta, time.perf_counter() - t0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=7, help="length of the run in days (default 7)")
    p.add_argument("--build-only", action="store_true", help="build (or find) the cached TSDB and stop")
    args = p.parse_args(argv)
    if not 1 <= args.days <= 366:
        p.error("--days must be between 1 and 366")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tsdb, meta, build_s = cached_tsdb(cache_dir(args.days), args.days)
    if args.build_only:
        log(f"TSDB ready at {tsdb} (built in {build_s:.0f} s)")
        return 0
    with serve_prometheus(tsdb, free_port(), ready_timeout_s=300) as url, tempfile.TemporaryDirectory() as out:
        log(f"prometheus ready at {url}; running the analysis")
        start, end = meta["base"], meta["base"] + meta["points_per_series"] - 1
        cmd = [sys.executable, "-m", "analysis", "--prometheus", url, "--run", RUN_ID, "--start", str(start),
               "--end", str(end), "--out", out, "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone (not promtool/prometheus)
        wall_s = time.perf_counter() - t0
        stderr = proc.stderr.read() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            log(stderr.strip())
            print(json.dumps({"error": (stderr.strip().splitlines() or ["analysis failed"])[-1]}))
            return 1
        report = json.loads((Path(out) / "report.json").read_text())
    timing = report["timing_s"]
    fetch_stats_s = timing["fetch_align"] + timing["statistics"]
    result = {
        "points_per_series": meta["points_per_series"],
        "analysed_series": 6,
        "backfilled_series": meta["series"],
        "backfilled_samples": meta["samples"],
        "rows_analysed": report["window"]["n_steps"],
        "tsdb_build_s": round(build_s, 1),
        "fetch_align_s": round(timing["fetch_align"], 2),
        "statistics_s": round(timing["statistics"], 2),
        "fetch_align_statistics_s": round(fetch_stats_s, 2),
        "figures_s": round(timing["figures"], 2),
        "process_wall_s": round(wall_s, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "range_queries": sum(q.get("chunks", 1) for q in report["queries"] if q["type"] == "range"),
        "goal_total_s": 60, "goal_rss_mb": 2048,
        "meets_goals": fetch_stats_s < 60 and usage.ru_maxrss / 1024 < 2048,
        "verdict": report["verdict"]["strength"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
