"""Synthetic jobs of many ranks in lockstep, written as the files `thermograd-analysis --job-dir` reads: one folder
per rank with its step log (thermograd's JSON Lines, `compute_s`, `wait_s`, `gpu_uuid`) and its GPU's recording
(thermograd-exporter's `--record` CSV). Used by the tests and by bench/bench_job.py; `stream_job` hands out the
same model as per-second counters without holding the job, for bench/bench_fleet_job.py's 1,024-rank day.

Each step every rank computes, then all wait for the slowest (the step's time is the slowest rank's compute plus
a little communication). Ranks share a slowly drifting common pace (data difficulty), keep a small persistent
offset of their own (GPUs are not all equal) and row-to-row noise. Kinds:

* ``thermal``: one GPU is throttled in hot spells covering 20-50 % of the run (clock at 80 %, sw_thermal) and its
  rank computes 1.25x slower while it is — the planted cost is the tokens the job would have done without it;
* ``none``: no straggler (a GPU may still throttle in spells, without slowing its rank: a loader-bound job);
* ``other``: one rank 10 % slower throughout with no clock deficit (data or input), while its GPU throttles in an
  unrelated spell.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("thermal", "none", "other")
TOKENS_PER_STEP = 4096
COMM_S = 0.01
MAX_CLOCK_HZ = 1.98e9


@dataclass
class Job:
    folder: Path
    kind: str
    ranks: int
    straggler: int | None  # the planted straggler's rank
    tokens_lost: float  # planted: tokens the job lost to the thermal straggler's throttling (0 otherwise)


def _ar1(rng: np.random.Generator, n: int, rho: float, sd: float) -> np.ndarray:
    e = rng.normal(0.0, sd * np.sqrt(1 - rho**2), n)
    x = np.empty(n)
    x[0] = rng.normal(0.0, sd)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + e[i]
    return x


def _spells(rng: np.random.Generator, seconds: float, fraction: float) -> list[tuple[float, float]]:
    """Hot spells (start, end) covering about `fraction` of the run, each 30 s - 3 min."""
    spells, covered = [], 0.0
    while covered < fraction * seconds:
        length = float(rng.uniform(30, 180))
        start = float(rng.uniform(30, max(seconds - length, 31)))
        spells.append((start, start + length))
        covered += length
    return spells


def _inside(t: np.ndarray, spells: list[tuple[float, float]]) -> np.ndarray:
    out = np.zeros(t.size, dtype=bool)
    for lo, hi in spells:
        out |= (t >= lo) & (t < hi)
    return out


def write_job(folder: Path, kind: str, ranks: int, seconds: float = 600.0, base_step_s: float = 0.3,
              seed: int = 0, start_unix: float = 1.8e9) -> Job:
    """One job in `folder` (rank-<k>/steps.jsonl and rank-<k>/hardware.csv); returns what was planted."""
    rng = np.random.default_rng(seed)
    n_steps = int(seconds / base_step_s)
    common = _ar1(rng, n_steps, 0.995, 0.05)
    offsets = rng.normal(0.0, 0.02, ranks)
    compute = np.array([base_step_s * np.exp(common + offsets[r] + _ar1(rng, n_steps, 0.7, 0.05))
                        for r in range(ranks)])
    unslowed = compute.copy()
    straggler = int(rng.integers(ranks)) if kind in ("thermal", "other") else None
    throttled_gpu = straggler if kind in ("thermal", "other") else int(rng.integers(ranks))
    spells = _spells(rng, seconds, float(rng.uniform(0.2, 0.5)) if kind == "thermal" else 0.15)
    if kind == "other":
        compute[straggler] *= 1.10
        unslowed[straggler] *= 1.10
    # Step by step in wall time: a step that starts inside a hot spell is slowed (so the spells the recording
    # shows and the steps they slow are the same seconds).
    step = np.empty(n_steps)
    now = 0.0
    for k in range(n_steps):
        if kind == "thermal" and _inside(np.array([now]), spells)[0]:
            compute[straggler, k] *= 1.25
        step[k] = compute[:, k].max() + COMM_S
        now += step[k]
    step_unslowed = unslowed.max(axis=0) + COMM_S
    ends = start_unix + np.cumsum(step)
    # Planted loss: in the time the job took, it would have done step/step_unslowed times the tokens per step.
    tokens_lost = float(np.sum(ranks * TOKENS_PER_STEP * (step / step_unslowed - 1))) if kind == "thermal" else 0.0
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(ranks):
        rank_dir = folder / f"rank-{r}"
        rank_dir.mkdir(exist_ok=True)
        uuid = f"GPU-{seed:04d}-{r:04d}"
        with (rank_dir / "steps.jsonl").open("w") as out:
            for k in range(n_steps):
                out.write(json.dumps({
                    "step": k + 1, "loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-3, "time_unix": round(ends[k], 6),
                    "tokens": TOKENS_PER_STEP, "compute_s": round(compute[r, k], 6),
                    "wait_s": round(step[k] - compute[r, k], 6), "pause_s": 0.0, "pause_start_unix": None,
                    "gpu_uuid": uuid, "run_id": f"job-{seed}", "rank": r}) + "\n")
        seconds_total = int(ends[-1] - start_unix) + 2
        t = start_unix + np.arange(seconds_total, dtype=float)
        gpu_hot = _inside(t - start_unix, spells) if r == throttled_gpu else np.zeros(t.size, dtype=bool)
        with (rank_dir / "hardware.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["time_unix", "host", "device", "uuid", "kind", "backend", "temp_c", "power_w",
                             "rle_smoothed", "a_load", "collapse", "sm_clock_hz", "sm_clock_max_hz", "throttled",
                             "clock_event_reasons"])
            for when, is_hot in zip(t, gpu_hot, strict=True):
                clock = MAX_CLOCK_HZ * (0.8 if is_hot else 1.0)
                writer.writerow([f"{when:.3f}", f"node-{r // 8}", "0", uuid, "gpu", "nvml", 87 if is_hot else 70,
                                 250, 0.5, 0.8, 0, f"{clock:.6g}", f"{MAX_CLOCK_HZ:.6g}", int(is_hot),
                                 "sw_thermal" if is_hot else ""])
    return Job(folder, kind, ranks, straggler, tokens_lost)



@dataclass
class Seconds:
    """One stretch of a streamed job, per second of wall time (a 1 s scrape): what each counter read then."""

    t_unix: np.ndarray  # the seconds (Unix, whole)
    steps: np.ndarray  # steps every rank has finished by then (lockstep: the same for all)
    compute_s: np.ndarray  # ranks x seconds: each rank's compute time summed over those steps
    step_s: np.ndarray  # the steps' wall time summed (every rank's, as they wait for each other)
    hot: np.ndarray  # the throttled GPU in a hot spell (bool per second)


def _union(spells: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(spells):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def stream_job(kind: str, ranks: int, seconds: int, base_step_s: float = 0.3, seed: int = 0,
               start_unix: int = 1_800_000_000, block_steps: int = 2000,
               hot_fraction: float | None = None) -> tuple[Job, int, list[tuple[float, float]], Iterator[Seconds]]:
    """write_job's model as a stream, for jobs too large to hold (1,024 ranks for a day: ~3e8 rank-steps): the
    same common pace, per-rank offsets and noise (AR(1) through lfilter, its state carried from block to block),
    the same kinds, spells and slowdowns, drawn `block_steps` steps at a time and handed out as the per-second
    counters a 1 s scrape reads over the `seconds` of wall time the job runs. Returns what is planted (its
    tokens_lost filled in once the stream is consumed), the throttled GPU's rank, the hot spells (disjoint,
    seconds from the start) and the stream; memory is a few ranks x block_steps arrays."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    straggler = int(rng.integers(ranks)) if kind in ("thermal", "other") else None
    throttled_gpu = straggler if straggler is not None else int(rng.integers(ranks))
    if hot_fraction is None:
        hot_fraction = float(rng.uniform(0.2, 0.5)) if kind == "thermal" else 0.15
    spells = _union(_spells(rng, seconds, hot_fraction))
    offsets = rng.normal(0.0, 0.02, ranks)
    job = Job(Path(), kind, ranks, straggler, 0.0)

    def ar1(rho: float, sd: float, rows: int) -> Callable[[int], np.ndarray]:
        state = rho * rng.normal(0.0, sd, (rows, 1))  # starts stationary

        def draw(n: int) -> np.ndarray:
            nonlocal state
            out, state = lfilter([1.0], [1.0, -rho], rng.normal(0.0, sd * np.sqrt(1 - rho**2), (rows, n)), axis=1,
                                 zi=state)
            return out
        return draw

    common, noise = ar1(0.995, 0.05, 1), ar1(0.7, 0.05, ranks)

    def stream() -> Iterator[Seconds]:
        now, emitted, steps, step_total, spell = 0.0, 0, 0, 0.0, 0
        totals = np.zeros(ranks)
        while emitted < seconds:
            compute = base_step_s * np.exp(common(block_steps) + offsets[:, None] + noise(block_steps))
            if kind == "other":
                compute[straggler] *= 1.10
            began = now
            if kind == "thermal":  # step by step in wall time, as write_job: a step starting in a spell is slowed
                others = np.delete(compute, straggler, axis=0).max(axis=0)
                mine, unslowed, step = compute[straggler].tolist(), compute[straggler].copy(), np.empty(block_steps)
                for k, other in enumerate(others.tolist()):
                    while spell < len(spells) and spells[spell][1] <= now:
                        spell += 1
                    if spell < len(spells) and spells[spell][0] <= now:
                        mine[k] *= 1.25
                    step[k] = max(other, mine[k]) + COMM_S
                    now += step[k]
                compute[straggler] = mine
                ends = began + np.cumsum(step)
                within = ends <= seconds
                job.tokens_lost += float(np.sum(ranks * TOKENS_PER_STEP * (
                    step[within] / (np.maximum(others, unslowed)[within] + COMM_S) - 1)))
            else:
                step = compute.max(axis=0) + COMM_S
                ends = began + np.cumsum(step)
                now = float(ends[-1])
            last = min(seconds, int(np.floor(now)) + 1)  # every second up to the block's last step is known
            t_rel = np.arange(emitted, last)
            done = np.searchsorted(ends, t_rel, side="right")  # this block's steps finished by each second
            cum_compute = np.concatenate((totals[:, None], totals[:, None] + np.cumsum(compute, axis=1)), axis=1)
            cum_step = np.concatenate(([step_total], step_total + np.cumsum(step)))
            if t_rel.size:
                yield Seconds(start_unix + t_rel, steps + done, cum_compute[:, done], cum_step[done],
                              _inside(t_rel.astype(float), spells))
            totals, step_total, steps, emitted = cum_compute[:, -1], float(cum_step[-1]), steps + block_steps, last

    return job, throttled_gpu, spells, stream()
