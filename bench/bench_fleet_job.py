"""A fleet-scale job against VictoriaMetrics (issue 18 item 5): a synthetic job of R ranks (default 1,024) over H
hours (default 24) at 1 s, one GPU throttled in hot spells (>= 20 % of the run) and its rank computing 1.25x slower
while it is (testkit/jobgen.py's model, streamed: `stream_job`), imported into a real VictoriaMetrics started with
its default flags, then `thermograd-analysis --prometheus URL --job RUN_ID` timed as a subprocess.

The series are exactly those `--job` queries (analysis/sources/job.py), with the names and labels the live
stack gives them, every one sampled each second as a 1 s scrape would: per rank, the trainer's
`train_run_info`, `train_run_start_time_seconds`, `train_tokens_total` and the `_sum`/`_count` of
`train_step_compute_seconds` and `train_step_duration_seconds` (their `_bucket`s are not queried, so not
written); per GPU, the exporter's `rle_device_info`, `rle_sm_clock_hertz`, `rle_sm_clock_max_hertz`,
`rle_temperature_celsius` and `rle_throttle_active` for the five thermal and power reasons the query selects.
16 series a rank. The values are jobgen's (70 C, the full clock, no reason active; 87 C, 80 % of the clock and
sw_thermal while hot), but for the temperature, which wanders by whole degrees as a real card's does. They are
streamed as JSON lines (/api/v1/import) one stretch of ~10 minutes and a batch of
ranks at a time, so this process's memory stays bounded; then /internal/force_flush, and the store is left
to finish its background merges before the analysis is timed.

Goals: the analysis answers in < 300 s and < 2 GB peak RSS, naming the planted rank as a thermal or power
straggler. Prints one JSON object on stdout; progress on stderr. Under bench.run_all (THERMOGRAD_BENCH_ALL
set) the default size is 64 ranks x 1 h; give --ranks/--hours for the full size:
`python -m bench.bench_fleet_job --ranks 1024 --hours 24`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from testkit import stack as sl
from testkit.jobgen import MAX_CLOCK_HZ, TOKENS_PER_STEP, stream_job

REPO = Path(__file__).resolve().parents[1]

RUN_ID = "fleet-bench"
REASONS = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")  # the query's five
GPUS_PER_NODE = 8
GOAL_S, GOAL_BYTES = 300.0, 2e9
BATCH_RANKS = 64  # ranks per POST: ~16 MB of JSON lines for a 10-minute stretch
SMALL = (64, 1.0)  # ranks, hours under bench/run_all.py


def log(message: str) -> None:
    print(f"bench_fleet_job: {message}", file=sys.stderr, flush=True)


def _labels(name: str, labels: dict[str, str]) -> str:
    return '{"metric":' + json.dumps({"__name__": name, **labels}, separators=(",", ":")) + ',"values":['


def rank_prefixes(rank: int, seed: int, ranks: int) -> dict[str, str]:
    """Each series of one rank and its GPU, as the opening of its JSON line (name and labels as scraped)."""
    node, device = f"node-{rank // GPUS_PER_NODE:03d}", str(rank % GPUS_PER_NODE)
    uuid = f"GPU-{seed:04d}-{rank:04d}"
    train = {"job": "trainer", "instance": f"{node}:{9843 + rank % GPUS_PER_NODE}", "run_id": RUN_ID,
             "rank": str(rank)}
    gpu = {"job": "exporter", "instance": f"{node}:9842", "device": device, "uuid": uuid}
    out = {"info": _labels("train_run_info", {**train, "model": "bench", "device": "cuda", "gpu_uuid": uuid,
                                              "world_size": str(ranks)}),
           "start": _labels("train_run_start_time_seconds", train),
           "tokens": _labels("train_tokens_total", train),
           "compute_sum": _labels("train_step_compute_seconds_sum", train),
           "compute_count": _labels("train_step_compute_seconds_count", train),
           "duration_sum": _labels("train_step_duration_seconds_sum", train),
           "duration_count": _labels("train_step_duration_seconds_count", train),
           "device_info": _labels("rle_device_info", {**gpu, "model": "NVIDIA H100 80GB HBM3", "backend": "nvml",
                                                      "kind": "gpu"}),
           "clock": _labels("rle_sm_clock_hertz", gpu),
           "clock_max": _labels("rle_sm_clock_max_hertz", gpu),
           "temperature": _labels("rle_temperature_celsius", gpu)}
    out.update({f"throttle_{reason}": _labels("rle_throttle_active", {**gpu, "reason": reason}) for reason in REASONS})
    return out


def _join(values: np.ndarray, decimals: int | None = None) -> str:
    if decimals is None:
        return ",".join(map(str, values.tolist()))
    return ",".join(map(repr, np.round(values, decimals).tolist()))


def _same(value: str, n: int) -> str:
    return ",".join([value] * n)


class Temperatures:
    """Whole-degree readings that wander as real GPUs' do (each card its own level, a slow AR(1) around it), 17 C
    up while hot (testkit/jobgen.py's 70 -> 87 C): so the store holds, compresses and scans a realistic series, not
    a constant. Only the figure shows temperature; no verdict depends on it."""

    def __init__(self, ranks: int, seed: int):
        self.rng = np.random.default_rng(seed + 1)
        self.level = 70 + self.rng.normal(0.0, 3.0, (ranks, 1))
        self.state = self.rng.normal(0.0, 1.5, (ranks, 1)) * 0.98

    def next(self, n: int, hot_gpu: int, hot: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        wander, self.state = lfilter([1.0], [1.0, -0.98], self.rng.normal(0.0, 1.5 * np.sqrt(1 - 0.98**2),
                                                                          (self.level.size, n)), axis=1, zi=self.state)
        out = self.level + wander
        out[hot_gpu] += 17.0 * hot
        return np.rint(out).astype(int)


def import_job(url: str, ranks: int, seconds: int, seed: int, start_unix: int) -> dict:
    """Streams the job into the store; returns what was planted and what was sent."""
    job, hot_gpu, spells, stream = stream_job("thermal", ranks, seconds, seed=seed, start_unix=start_unix,
                                              hot_fraction=0.3)
    temperatures = Temperatures(ranks, seed)
    prefixes = [rank_prefixes(r, seed, ranks) for r in range(ranks)]
    session = requests.Session()
    samples = sent_bytes = hot_seconds = 0
    pending: Future | None = None
    started = time.perf_counter()

    def post(body: bytes) -> None:
        session.post(f"{url}/api/v1/import", data=body, timeout=600).raise_for_status()

    with ThreadPoolExecutor(max_workers=1) as pool:  # one POST in flight while the next batch is written
        for part in stream:
            n = part.t_unix.size
            hot_seconds += int(part.hot.sum())
            tail = '],"timestamps":[' + _join(part.t_unix * 1000) + "]}\n"
            shared = {"info": _same("1", n), "start": _same(str(start_unix), n), "device_info": _same("1", n),
                      "tokens": _join(part.steps * TOKENS_PER_STEP), "compute_count": _join(part.steps),
                      "duration_sum": _join(part.step_s, 6), "duration_count": _join(part.steps),
                      "clock": _same(repr(MAX_CLOCK_HZ), n), "clock_max": _same(repr(MAX_CLOCK_HZ), n),
                      **{f"throttle_{r}": _same("0", n) for r in REASONS}}
            hot = {"clock": _join(np.where(part.hot, 0.8 * MAX_CLOCK_HZ, MAX_CLOCK_HZ), 0),
                   "throttle_sw_thermal": _join(part.hot.astype(int))}
            temperature = temperatures.next(n, hot_gpu, part.hot)
            for lo in range(0, ranks, BATCH_RANKS):
                lines = []
                for r in range(lo, min(lo + BATCH_RANKS, ranks)):
                    values = {**shared, **(hot if r == hot_gpu else {}), "compute_sum": _join(part.compute_s[r], 6),
                              "temperature": _join(temperature[r])}
                    lines += [prefixes[r][key] + values[key] + tail for key in prefixes[r]]
                body = "".join(lines).encode()
                samples += n * len(lines)
                sent_bytes += len(body)
                if pending is not None:
                    pending.result()
                pending = pool.submit(post, body)
            done_s = int(part.t_unix[-1]) + 1 - start_unix
            rate = samples / (time.perf_counter() - started)
            log(f"imported {done_s / 3600:.2f} of {seconds / 3600:g} h ({samples:,} samples, {rate / 1e6:.2f} M/s)")
        if pending is not None:
            pending.result()
    session.get(f"{url}/internal/force_flush", timeout=600).raise_for_status()
    return {"straggler": job.straggler, "hot_gpu": hot_gpu, "hot_fraction": hot_seconds / seconds,
            "spells": len(spells), "tokens_lost": job.tokens_lost, "samples": samples, "bytes_sent": sent_bytes,
            "seconds": time.perf_counter() - started}


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def settle(url: str, timeout_s: float = 1800.0) -> float:
    """Waits until the store has no merges running (it had a day's samples written in minutes); returns seconds."""
    started = time.perf_counter()
    quiet = 0
    while time.perf_counter() - started < timeout_s:
        active = _metric(requests.get(f"{url}/metrics", timeout=30).text, "vm_active_merges")
        quiet = quiet + 1 if active == 0 else 0
        if quiet >= 3:
            break
        time.sleep(2)
    return time.perf_counter() - started


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def analyse(url: str, out: Path) -> dict:
    """`thermograd-analysis --job` as a subprocess: its wall time and peak RSS (its own rusage, by wait4)."""
    argv = [sys.executable, "-m", "thermograd.analysis", "--prometheus", url, "--job", RUN_ID, "--out", str(out),
            "--quiet"]
    stderr = out.with_suffix(".stderr")
    started = time.perf_counter()
    with stderr.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"returncode": proc.returncode, "wall_s": round(wall, 1),
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "argv": argv}
    if proc.returncode != 0:
        result["error"] = stderr.read_text().strip()[-2000:]
        return result
    report = json.loads((out / "report.json").read_text())
    result["report"] = report
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    small = bool(os.environ.get("THERMOGRAD_BENCH_ALL"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=SMALL[0] if small else 1024,
                   help="ranks in the job (default 1024; 64 under bench.run_all)")
    p.add_argument("--hours", type=float, default=SMALL[1] if small else 24.0,
                   help="the job's length in hours at 1 s (default 24; 1 under bench.run_all)")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the store, its log and the analysis's output in DIR (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = sl.find_binary("victoriametrics")
    if binary is None:
        raise SystemExit(f"bench_fleet_job: victoria-metrics not found; {sl.install_hint(['victoriametrics'])}")
    seconds = int(round(args.hours * 3600))
    # Ended an hour and a few minutes before now: the analysis reads a finished job (no waiting for the store's
    # held-back newest points, which the default -search.latencyOffset would cost a job that ended just now)
    start_unix = int(time.time()) - seconds - 3900
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_fleet_job-"))
    root.mkdir(parents=True, exist_ok=True)
    storage = root / "victoria-metrics-data"
    shutil.rmtree(storage, ignore_errors=True)
    shutil.rmtree(root / "analysis", ignore_errors=True)
    port = sl.free_port()
    url = f"http://{sl.LOOPBACK}:{port}"
    try:
        with sl.Supervisor() as supervisor:
            # default flags: nothing but where it stores and listens
            vm = supervisor.start("victoria-metrics", [binary, f"-storageDataPath={storage}",
                                                       f"-httpListenAddr={sl.LOOPBACK}:{port}"], root / "vm.log")
            sl.wait_http_ok(f"{url}/health", 60, supervisor=supervisor)
            log(f"VictoriaMetrics (default flags) at {url}; importing {args.ranks} ranks x {args.hours:g} h at 1 s")
            planted = import_job(url, args.ranks, seconds, args.seed, start_unix)
            log(f"imported {planted['samples']:,} samples in {planted['seconds']:.0f} s; waiting for merges")
            settle_s = settle(url)
            log(f"settled in {settle_s:.0f} s; running the analysis")
            result = analyse(url, root / "analysis")
            vm_rss = peak_rss_mib(vm.pid)
            supervisor.check()
        stored = disk_bytes(storage)  # once stopped: everything it held in memory is on disk
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    report = result.pop("report", None)
    section = report["job"] if report else {}
    straggler = planted["straggler"]
    verdict = next((v for v in section.get("ranks", []) if v.get("rank") == straggler), {})
    lost = section.get("tokens_lost_to_throttling", {}).get(f"GPU-{args.seed:04d}-{straggler:04d}")
    named = section.get("thermal_or_power_stragglers")
    summary = {
        "ranks": args.ranks, "hours": args.hours, "series": 16 * args.ranks, "samples_ingested": planted["samples"],
        "bytes_sent": planted["bytes_sent"], "ingest_s": round(planted["seconds"], 1),
        "ingest_samples_per_s": round(planted["samples"] / planted["seconds"]),
        "settle_s": round(settle_s, 1), "victoriametrics_disk_bytes": stored,
        "victoriametrics_peak_rss_mib": vm_rss,
        "analysis_wall_s": result["wall_s"], "analysis_peak_rss_mib": result["peak_rss_mib"],
        "analysis_returncode": result["returncode"],
        "analysis_timing_s": report.get("timing_s") if report else None,
        "grid": {"step_s": section.get("step_s"), "rows": section.get("rows")} if section else None,
        "planted": {"straggler_rank": straggler, "gpu_throttled_fraction": round(planted["hot_fraction"], 4),
                    "slowdown_while_throttled": 1.25, "tokens_lost": planted["tokens_lost"]},
        "found": {"thermal_or_power_stragglers": named, "other_cause_stragglers": section.get("other_cause_stragglers"),
                  "straggler_cause": verdict.get("cause"),
                  "slowdown_while_throttled": verdict.get("slowdown_while_throttled"),
                  "tokens_lost": lost["tokens"] if lost else None,
                  "tokens_lost_ci_95": lost["ci_95"] if lost else None},
        "straggler_found": bool(named) and straggler in named,
        "right_rank_only": named == [straggler] and verdict.get("cause") == "thermal or power",
        "goals": {"analysis_s_below": GOAL_S, "analysis_bytes_below": GOAL_BYTES,
                  "time_pass": result["returncode"] == 0 and result["wall_s"] < GOAL_S,
                  "memory_pass": result["returncode"] == 0 and result["peak_rss_mib"] * 2**20 < GOAL_BYTES},
        "command": " ".join(result["argv"][1:]),
        "bench_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if "error" in result:
        summary["analysis_error"] = result["error"]
    summary["pass"] = bool(summary["goals"]["time_pass"] and summary["goals"]["memory_pass"]
                           and summary["right_rank_only"])
    print(json.dumps(summary))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
