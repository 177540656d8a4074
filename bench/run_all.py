"""Runs every bench/bench_*.py in its own process (`python -m bench.bench_NAME`, from the repository root) and
prints one JSON object keyed by benchmark: `python -m bench.run_all [NAME ...]` (`make bench`).

Each benchmark prints a single JSON object on stdout; results are also written to bench/results/.
Names on the command line run only those (e.g. `exporter trainer analysis`): bench_soak.py alone takes
30 minutes at its default, which is what `make bench` reproduces. Each runs with THERMOGRAD_BENCH_ALL=1, which a
bench too large for every run reads to take a small default (bench_fleet_job.py: 64 ranks x 1 h; its full size,
1,024 ranks x 24 h, is run by hand: docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def main(argv: list[str]) -> int:
    only = set(argv)
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    combined: dict[str, object] = {}
    failed = []
    for script in sorted(BENCH_DIR.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"bench: running {script.name}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], capture_output=True, text=True,
                              cwd=REPO_ROOT, env={**os.environ, "THERMOGRAD_BENCH_ALL": "1"})
        if proc.returncode != 0:
            failed.append(name)
            combined[name] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            failed.append(name)
            combined[name] = {"error": "benchmark did not print one JSON object"}
            continue
        (results_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        combined[name] = result
    print(json.dumps(combined, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
