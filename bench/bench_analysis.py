"""Benchmark: a week of 1 s data in a real Prometheus -> fetch + align + every statistic.

Goal (issue 4): fetch + align + full statistics < 60 s and peak RSS < 2 GB. The backfilled TSDB is
cached (THERMOGRAD_BENCH_CACHE, default ~/.cache/thermograd/bench_analysis) so reruns skip promtool.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

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
    create_blocks,
    device_series,
    serve_prometheus,
    train_series,
    write_openmetrics,
)
from analysis.synthetic import planted_run  # noqa: E402

WEEK_S = 7 * 86400
CACHE_VERSION = 1
RUN_ID = "bench-week"


def log(message: str) -> None:
    print(f"bench_analysis: {message}", file=sys.stderr, flush=True)



def cached_tsdb(cache: Path) -> tuple[Path, dict, float]:
    """The TSDB with a week of data (built once); returns (path, metadata, seconds spent building)."""
    meta_path = cache / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == CACHE_VERSION:
            return cache / "tsdb", meta, 0.0
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    t0 = time.perf_counter()
    base = int(time.time()) // 3600 * 3600 - WEEK_S - 2 * 86400  # older than the head block
    log("generating a week of 1 s data")
    cols = planted_run(WEEK_S, seed=42)
    series = train_series(cols, base, RUN_ID, "sim-0", info_every_s=60) + device_series(cols, base, "sim-0", "0",
                                                                                       info_every_s=60)
    om = cache / "week.om"
    write_openmetrics(series, om)
    log(f"OpenMetrics written ({om.stat().st_size / 1e6:.0f} MB); promtool create-blocks")
    create_blocks(om, cache / "tsdb")
    om.unlink()
    meta = {"version": CACHE_VERSION, "base": base, "points_per_series": WEEK_S,
            "series": len(series), "samples": sum(s.t_s.size for s in series)}
    meta_path.write_text(json.dumps(meta))
    return cache / "tsdb", meta, time.perf_counter() - t0


def main() -> int:
    cache = Path(os.environ.get("THERMOGRAD_BENCH_CACHE", Path.home() / ".cache" / "thermograd" / "bench_analysis"))
    tsdb, meta, build_s = cached_tsdb(cache)
    with serve_prometheus(tsdb, free_port(), ready_timeout_s=300) as url, tempfile.TemporaryDirectory() as out:
        log(f"prometheus ready at {url}; running the analysis")
        start, end = meta["base"], meta["base"] + WEEK_S - 1
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
