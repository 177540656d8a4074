"""`thermograd run`'s default pause bursts: what they cost a user's job, and whether they give the analysis its
positive control.

Two parts. (1) The schedule over 10,000 run ids (each run id seeds its jitter): pause bursts and idle seconds
in a 10-minute run, min and max. (2) One real run: a user-style PyTorch loop (not the reference trainer) for
--seconds (default 600, a 10-minute run) under `thermograd run` with the default schedule, on this machine's
hardware (here the simulated GPU heated by the loop's own CPU use): the bursts it took, their idle seconds as a
fraction of the job's wall time, and the analysis's positive control (detected or not, on which metric, with its
effect and Holm p). Prints one JSON object; progress on stderr.
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

from thermograd.run import DEFAULT_PAUSES
from thermograd.trainer.environment import RunEnvironment
from thermograd.trainer.metrics import pause_schedule, run_seed
from thermograd.trainer.perturb import PerturbSchedule

LOOP = '''
import sys, time
import torch
from thermograd import TrainingMetrics, clip_and_measure_grad_norm

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
end = time.time() + float(sys.argv[1])
with TrainingMetrics() as metrics:
    step = 0
    while time.time() < end:
        step += 1
        x = torch.randn(128, 256)
        loss = ((model(x) - x) ** 2).mean()
        loss.backward()
        norm = clip_and_measure_grad_norm(model.parameters(), max_norm=1.0)
        loss_value, norm_value = norm.publish_with(loss)
        optimizer.step()
        optimizer.zero_grad()
        metrics.observe_step(step, loss_value, norm_value, 1e-3, tokens=128)
'''


def schedule_over_run_ids(seconds: float, runs: int = 10_000) -> dict:
    spec = pause_schedule(DEFAULT_PAUSES, RunEnvironment())
    counts, idle = [], []
    for k in range(runs):
        starts = [s for s in PerturbSchedule(spec, run_seed(f"run-{k}")).burst_starts_until(seconds) if s < seconds]
        counts.append(len(starts))
        idle.append(sum(min(spec.duration, seconds - s) for s in starts))
    return {"run_ids": runs, "seconds": seconds, "bursts_min": min(counts), "bursts_max": max(counts),
            "idle_s_max": round(max(idle), 3), "idle_fraction_max": round(max(idle) / seconds, 4)}


def real_run(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "train.py").write_text(LOOP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOGRAD_")}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "thermograd", "run", "--out", str(folder / "run"), "--quiet",
                               "--", sys.executable, str(folder / "train.py"), f"{seconds:g}"],
                              cwd=folder, env=env, capture_output=True, text=True)
        command_s = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"bench_run: thermograd run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        run = json.loads((folder / "run" / "run.json").read_text())
        steps = [json.loads(line) for line in (folder / "run" / "steps.jsonl").read_text().splitlines() if line]
        report = json.loads((folder / "run" / "report.json").read_text())
    job_s = run["ended_unix"] - run["started_unix"]
    idle_s = sum(r["pause_s"] for r in steps)
    control = report["positive_control"]
    return {
        "hardware": report["inputs"]["hardware"].get("backend"),
        "simulated": report["inputs"]["hardware"].get("simulated"),
        "job_wall_s": round(job_s, 1), "command_wall_s": round(command_s, 1), "steps": len(steps),
        "pause_bursts": sum(r["pause_s"] > 0 for r in steps), "pause_idle_s": round(idle_s, 2),
        "pause_fraction_of_job": round(idle_s / job_s, 4),
        "positive_control": {k: control.get(k) for k in ("detected", "metric", "effect", "ci", "p_adjusted",
                                                         "n_onsets")},
        "verdicts": {d: v["strength"] for d, v in report["verdicts"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the real run (default 600)")
    args = parser.parse_args(argv)
    print(f"bench_run: a {args.seconds:g} s user loop under thermograd run ...", file=sys.stderr, flush=True)
    result = {"default_pauses": DEFAULT_PAUSES, "goal": {"max_fraction": 0.02, "min_bursts_in_10_min": 3},
              "schedule": schedule_over_run_ids(600.0), "run": real_run(args.seconds),
              "cpu_count": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
