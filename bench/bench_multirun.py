"""Benchmark: `thermograd-analysis --all-runs` with worker processes against one run after another (issue 19).

Generates N runs (default 20 runs of 10 minutes, offline: a --runs-dir of training logs and RLE CSVs), then
times the same command with `--workers 1` and `--workers W` (default 2) side by side in this invocation:
runs per minute each, the speed-up, the peak memory of the command's process tree (summed over its
processes) and of its largest process (one run per worker: the tree grows with W, a process does not), and
whether both wrote the same runs.csv and meta_analysis.json bytes.

`--prometheus` backfills the runs into a real Prometheus instead (promtool, one 2 h block at a time, the runs
one after another on their own GPUs) and analyses them through its HTTP API; `--full` is the issue's
benchmark, 200 one-hour runs in a real Prometheus (the generation and backfill alone take minutes). Prints one
JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from testkit.stack import free_port

REPO = Path(__file__).resolve().parents[1]

POLL_S = 0.2  # how often the process tree's memory is sampled
GAP_S = 120  # between two runs in the backfilled store (each run on its own GPU, one after another)


def log(message: str) -> None:
    print(f"bench_multirun: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="number of runs (default 20)")
    p.add_argument("--minutes", type=int, default=10, help="length of each run in minutes (default 10)")
    p.add_argument("--workers", type=int, default=2, help="worker processes compared with 1 (default 2)")
    p.add_argument("--prometheus", action="store_true", help="backfill the runs into a real Prometheus")
    p.add_argument("--full", action="store_true", help="the issue's benchmark: --runs 200 --minutes 60 --prometheus")
    args = p.parse_args(argv)
    if args.full:
        args.runs, args.minutes, args.prometheus = 200, 60, True
    if args.runs < 2 or args.minutes < 3 or args.workers < 2:
        p.error("--runs >= 2, --minutes >= 3 and --workers >= 2")
    return args


def write_runs_dir(folder: Path, n_runs: int, run_s: int) -> None:
    """--runs-dir layout: half the runs coupled (r = 0.5 at lag 0), half not, as a fleet's would differ."""
    from testkit.scenarios import null_run, planted_run, write_files

    for i in range(n_runs):
        rec = planted_run("gaussian", run_s, 0, 0.5, seed=i) if i % 2 == 0 else null_run("ar1", run_s, seed=i)
        write_files(rec, folder / f"run-{i:03d}")


def backfill_runs(work: Path, n_runs: int, run_s: int) -> tuple[Path, int, int]:
    """A TSDB holding the runs one after another, each on its own simulated GPU: (tsdb, start, end) in Unix s."""
    from testkit.backfill import backfill_blockwise, device_series, train_series
    from testkit.synthetic import planted_run

    span_s = n_runs * (run_s + GAP_S)
    base = int(time.time()) // 3600 * 3600 - span_s - 2 * 86400  # older than the head block
    series = []
    for i in range(n_runs):
        cols, start = planted_run(run_s, seed=i), base + i * (run_s + GAP_S)
        series += (train_series(cols, start, f"run-{i:03d}", f"sim-{i}", info_every_s=60)
                   + device_series(cols, start, f"sim-{i}", str(i), info_every_s=60))
    backfill_blockwise(series, work / "tsdb", work)
    return work / "tsdb", base - 60, base + span_s


def measured(cmd: list[str]) -> dict:
    """Run `cmd` to completion: wall seconds and the peak RSS of its process tree (sum) and of its largest
    process, sampled every POLL_S."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
        root, tree_mb, process_mb = psutil.Process(proc.pid), 0.0, 0.0
        while proc.poll() is None:
            try:
                rss = [p.memory_info().rss / 2**20 for p in (root, *root.children(recursive=True))]
            except psutil.Error:  # a process ended between listing and reading
                rss = []
            tree_mb, process_mb = max(tree_mb, sum(rss)), max(process_mb, max(rss, default=0.0))
            time.sleep(POLL_S)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError((err.read().strip().splitlines() or ["failed"])[-1])
    return {"wall_s": round(wall, 2), "peak_tree_rss_mb": round(tree_mb, 1),
            "peak_process_rss_mb": round(process_mb, 1)}


def timed_passes(source: list[str], n_runs: int, workers: int, work: Path) -> dict:
    """The same --all-runs command with --workers 1 and --workers `workers`."""
    result: dict = {}
    outputs = {}
    for w in (1, workers):
        out = work / f"out-{w}"
        log(f"--all-runs --workers {w}")
        figures = measured([sys.executable, "-m", "thermograd.analysis", *source, "--all-runs", "--workers", str(w),
                            "--out", str(out), "--quiet"])
        figures["runs_per_minute"] = round(n_runs / (figures["wall_s"] / 60), 2)
        result[f"workers_{w}"] = figures
        outputs[w] = [(out / name).read_bytes() for name in ("runs.csv", "meta_analysis.json")]
        figures["runs_analysed"] = json.loads(outputs[w][1])["runs_analysed"]
    rates = (result[f"workers_{workers}"]["runs_per_minute"], result["workers_1"]["runs_per_minute"])
    result["speedup"] = round(rates[0] / rates[1], 2)
    result["identical_output"] = outputs[1] == outputs[workers]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_s = args.minutes * 60
    result: dict = {"source": "prometheus" if args.prometheus else "runs-dir", "runs": args.runs,
                    "run_minutes": args.minutes, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench_multirun-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if args.prometheus:
            from testkit.backfill import serve_prometheus

            log(f"backfilling {args.runs} runs of {args.minutes} min into a TSDB")
            tsdb, start, end = backfill_runs(work, args.runs, run_s)
            result["generate_s"] = round(time.perf_counter() - t0, 1)
            with serve_prometheus(tsdb, free_port(), ready_timeout_s=600) as url:
                result.update(timed_passes(["--prometheus", url, "--start", str(start), "--end", str(end)],
                                           args.runs, args.workers, work))
        else:
            log(f"writing {args.runs} runs of {args.minutes} min as files")
            write_runs_dir(work / "runs", args.runs, run_s)
            result["generate_s"] = round(time.perf_counter() - t0, 1)
            result.update(timed_passes(["--runs-dir", str(work / "runs")], args.runs, args.workers, work))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
