"""A job's stragglers, measured on synthetic jobs of 2-64 ranks through the command (`thermograd-analysis
--job-dir`), against what was planted (testkit/jobgen.py):

* ``thermal``: one GPU throttled in hot spells covering 20-50 % of a 10-minute run, its rank 1.25x slower while
  it is: the goal is that rank named, with cause "thermal or power", in >= 95 % of jobs, and the tokens-lost CI
  covering the planted loss in >= 90 %;
* ``none`` (no straggler; a GPU may throttle without slowing its rank) and ``other`` (one rank 10 % slower with no
  clock deficit; its GPU throttles in an unrelated spell): no thermal straggler named in >= 95 %.

Prints one JSON object (rates with Wilson 95 % intervals, per kind and rank count); progress on stderr.
`--jobs N` per kind (default 60).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.jobgen import KINDS, write_job

RANKS = (2, 4, 8, 16, 32, 64)


def wilson(k: int, n: int) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def one(folder: Path, kind: str, ranks: int, seed: int) -> dict:
    job = write_job(folder / "job", kind, ranks, seconds=600, seed=seed)
    out = folder / "out"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "thermograd.analysis", "--job-dir", str(job.folder), "--out",
                           str(out), "--quiet"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench_job: {kind} job of {ranks} ranks failed: {proc.stderr.strip()[-500:]}")
    section = json.loads((out / "report.json").read_text())["job"]
    thermal = section["thermal_or_power_stragglers"]
    result = {"kind": kind, "ranks": ranks, "seconds": seconds, "thermal_named": bool(thermal),
              "right": thermal == [job.straggler] if kind == "thermal" else None, "covered": None}
    if kind == "thermal" and result["right"]:
        lost = next(iter(section["tokens_lost_to_throttling"].values()))
        low, high = lost["ci_95"]
        result["covered"] = low <= job.tokens_lost <= high
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60, help="jobs per kind (default 60)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.jobs):
            for kind in KINDS:
                folder = Path(tmp) / f"{kind}-{i}"
                results.append(one(folder, kind, RANKS[i % len(RANKS)], seed=1000 + i))
                shutil.rmtree(folder)
            print(f"bench_job: {i + 1}/{args.jobs} jobs of each kind", file=sys.stderr, flush=True)
    summary: dict[str, dict] = {}
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        entry: dict = {"jobs": len(mine)}
        if kind == "thermal":
            right = sum(bool(r["right"]) for r in mine)
            covered = sum(bool(r["covered"]) for r in mine)
            entry.update(named_right_rank_thermal=round(right / len(mine), 4), ci95=wilson(right, len(mine)),
                         goal=0.95, tokens_lost_ci_coverage=round(covered / max(right, 1), 4),
                         coverage_ci95=wilson(covered, right), coverage_goal=0.90)
        else:
            named = sum(r["thermal_named"] for r in mine)
            entry.update(thermal_named=round(named / len(mine), 4), ci95=wilson(named, len(mine)), goal_at_most=0.05)
        entry["by_ranks"] = {str(n): sum(bool(r["right"] if kind == "thermal" else not r["thermal_named"])
                                         for r in mine if r["ranks"] == n) for n in RANKS}
        summary[kind] = entry
    summary["seconds_per_job_median"] = sorted(r["seconds"] for r in results)[len(results) // 2]
    summary["seconds_64_ranks_max"] = max((r["seconds"] for r in results if r["ranks"] == 64), default=None)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
