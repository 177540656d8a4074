"""Instrumentation overhead of the trainer, and tokens/s of the reference job.

Paired runs of the same tiny-model job (same seed, same data, same shape), one with TrainingMetrics
+ the JSON Lines log + a scraper process hitting /metrics every second (like the stack's Prometheus), one
with instrumentation off (`instrument=False`: no server, no log; the job's own one host sync per step
for the non-finite check stays in both). Order alternates within pairs to cancel drift. Per pair:
ratio = median step time (on) / median step time (off), warm-up steps dropped — in wall time (what the
goal is about) and in this process's CPU time (all its threads: training, /metrics server, log
writer), which other tenants of a shared machine disturb far less. Also measured directly:
the cost of one `observe_step` call and of rendering one scrape.

Prints ONE JSON object on stdout; progress on stderr. Options: --pairs N --steps N --batch-size N
--seq-len N (defaults: the reference job's shape) --threads N.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from testkit.stack import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prometheus_client import generate_latest

from thermograd.trainer.config import JobConfig
from thermograd.trainer.job import run
from thermograd.trainer.metrics import TrainingMetrics
from thermograd.trainer.steplog import format_record

# Prometheus's part, in its own process so its CPU time is not billed to the trainer.
_SCRAPER = """
import sys, time, urllib.request
while True:
    time.sleep(1.0)
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1).read()
        print(1, flush=True)
    except OSError:
        pass
"""


def _start_scraper(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SCRAPER, url], stdout=subprocess.PIPE, text=True)


def _stop_scraper(proc: subprocess.Popen) -> int:
    proc.kill()
    out, _ = proc.communicate()
    return out.count("1")


def _one_run(instrument: bool, args: argparse.Namespace, workdir: Path, index: int):
    port = free_port()
    cfg = JobConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, seed=0, device="cpu",
        port=port, linger_s=0, quiet=True, instrument=instrument, log_dir=str(workdir / f"run{index}"),
    )
    scraper = _start_scraper(f"http://127.0.0.1:{port}/metrics") if instrument else None
    try:
        result = run(cfg, stream=io.StringIO())
    finally:
        scrapes = _stop_scraper(scraper) if scraper is not None else 0
    return result, scrapes


def _observe_cost_us(n: int = 20000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = TrainingMetrics(start=False, log_dir=tmp, max_grad_norm=1.0)
        start = time.perf_counter()
        for step in range(n):
            metrics.observe_step(step, 2.5, 0.8, 1e-3, tokens=1024, epoch=0.1, perturbation=False)
        observe_us = (time.perf_counter() - start) / n * 1e6
        start = time.perf_counter()
        for _ in range(200):
            generate_latest(metrics.registry)
        render_us = (time.perf_counter() - start) / 200 * 1e6
        metrics.close()
    record = (1, 2.5, 0.8, 1e-3, 0.1, time.time(), 1024, False, False, False, 0.0, None, 0.05, 0.001, "GPU-x")
    start = time.perf_counter()
    for _ in range(n):
        format_record(record, "run", 0)
    log_line_us = (time.perf_counter() - start) / n * 1e6
    return {"observe_step_us": round(observe_us, 2), "log_line_format_us": round(log_line_us, 2),
            "scrape_render_us": round(render_us, 1)}


def _bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n: int = 5000) -> list[float]:
    medians = np.median(rng.choice(values, size=(n, len(values)), replace=True), axis=1)
    return [round(float(q), 4) for q in np.quantile(medians, [0.025, 0.975])]


def _summary(ratios: list[float]) -> dict:
    values = np.array(ratios)
    return {
        "median": round(float(np.median(values)), 4),
        "ci95_bootstrap": _bootstrap_ci(values, np.random.default_rng(0)),
        "iqr": [round(float(q), 4) for q in np.quantile(values, [0.25, 0.75])],
        "min_max": [round(float(values.min()), 4), round(float(values.max()), 4)],
        "per_pair": [round(r, 4) for r in ratios],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4, help="leading steps dropped from each run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default); 1 is steadier on a shared box")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    wall, cpu, on_medians, off_medians, scrapes = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _one_run(False, argparse.Namespace(**{**vars(args), "steps": 3}), workdir, -1)  # warm caches/imports
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            med_wall, med_cpu = {}, {}
            for instrument in order:
                result, n_scrapes = _one_run(instrument, args, workdir, 2 * pair + int(instrument))
                med_wall[instrument] = statistics.median(result.step_durations_s[args.warmup :])
                med_cpu[instrument] = statistics.median(result.step_cpu_s[args.warmup :])
                if instrument:
                    scrapes.append(n_scrapes)
            wall.append(med_wall[True] / med_wall[False])
            cpu.append(med_cpu[True] / med_cpu[False])
            on_medians.append(med_wall[True])
            off_medians.append(med_wall[False])
            print(f"bench_trainer: pair {pair + 1}/{args.pairs}: on {med_wall[True] * 1e3:.1f} ms, "
                  f"off {med_wall[False] * 1e3:.1f} ms, wall ratio {wall[-1]:.4f}, cpu ratio {cpu[-1]:.4f}",
                  file=sys.stderr, flush=True)
    tokens_per_step = args.batch_size * args.seq_len
    result = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "model": "tiny-gpt2 (3.3 M params)",
        "shape": {"batch_size": args.batch_size, "seq_len": args.seq_len, "steps_per_run": args.steps,
                  "warmup_steps_dropped": args.warmup},
        "n_pairs": args.pairs,
        "overhead_ratio_median": _summary(wall)["median"],
        "overhead_ratio_wall": _summary(wall),
        "overhead_ratio_process_cpu": _summary(cpu),
        "goal_ratio": 1.02,
        "step_time_ms_median_on": round(statistics.median(on_medians) * 1e3, 2),
        "step_time_ms_median_off": round(statistics.median(off_medians) * 1e3, 2),
        "tokens_per_s_reference_job": round(tokens_per_step / statistics.median(on_medians), 1),
        "scrapes_per_instrumented_run": scrapes,
    }
    costs = _observe_cost_us()
    step_s = result["step_time_ms_median_off"] / 1e3
    # Work the instrumentation adds per step (training thread + log writer + a 1 s scrape amortised),
    # as a fraction of a step: the resolution the paired runs cannot reach on a noisy machine.
    added_us = costs["observe_step_us"] + costs["log_line_format_us"] + costs["scrape_render_us"] * step_s
    result.update(costs, computed_overhead_fraction=round(added_us * 1e-6 / step_s, 6))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
