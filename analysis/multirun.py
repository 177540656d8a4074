"""--all-runs: every run in the window (Prometheus) or in --runs-dir (files), one report each, then a
random-effects meta-analysis of each pair across the runs and a forest plot.

Each run is analysed exactly as a single run is (the same command, its report under DIR/runs/<run>/);
this module only gathers the reports, pools each pair's lag-0 primary r and writes the tables.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from thermograd.analysis.arguments import client_from_args, duration_flag, settings_from_args
from thermograd.analysis.errors import InputError
from thermograd.analysis.pipeline import Settings, _equivalence, strength_from_ci
from thermograd.analysis.report import clean
from thermograd.analysis.stats.meta import dersimonian_laird, z_and_se
from thermograd.analysis.stats.multiple import holm
from thermograd.analysis.stats.series import INSUFFICIENT

LOG_PATTERNS = ("*.jsonl", "*.json")
CSV_PATTERN = "*.csv"
ROW_FIELDS = ("run", "direction", "x", "y", "start", "end", "step_s", "n", "n_eff", "r", "ci_low", "ci_high", "p_adjusted",
              "peak_lag_s", "peak_r", "lag_p_adjusted", "coupled", "strength", "run_strength")


# --- which runs ---------------------------------------------------------------------------------------
def run_dirs(runs_dir: Path) -> dict[str, tuple[Path, Path]]:
    """--runs-dir layout: one subfolder per run (its name is the run id) holding one training log
    (*.jsonl or *.json) and one RLE CSV (*.csv). Anything else is refused with the folder named."""
    if not runs_dir.is_dir():
        raise InputError(f"--runs-dir {runs_dir}: not a directory")
    out: dict[str, tuple[Path, Path]] = {}
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        logs = sorted({f for pattern in LOG_PATTERNS for f in sub.glob(pattern) if f.is_file()})
        csvs = sorted(f for f in sub.glob(CSV_PATTERN) if f.is_file())
        if len(logs) != 1 or len(csvs) != 1:
            raise InputError(f"--runs-dir {runs_dir}: folder {sub.name} holds {len(logs)} training logs "
                             f"(*.jsonl/*.json) and {len(csvs)} CSVs; each run folder needs exactly one of each")
        out[sub.name] = (logs[0], csvs[0])
    if not out:
        raise InputError(f"--runs-dir {runs_dir}: no run folders (expected one subfolder per run, each with a "
                         "training log and an RLE CSV)")
    return out


def prometheus_runs(args: argparse.Namespace) -> tuple[list[str], float]:
    """Run ids with samples in the window, oldest first, and the window's start (for each run's lookup)."""
    from thermograd.analysis.selection import discover_runs
    from thermograd.analysis.timeparse import parse_instant_s

    end_s = parse_instant_s(args.end) if args.end else time.time()
    start_s = parse_instant_s(args.start) if args.start else end_s - duration_flag("--lookback", args.lookback)
    if start_s >= end_s:
        raise InputError("--start must be before --end")
    runs = discover_runs(client_from_args(args), start_s, end_s)
    if not runs:
        raise InputError(f"no runs in the window at {args.prometheus} (no train_run_start_time_seconds between "
                         f"{start_s:.0f} and {end_s:.0f}; widen --lookback or --start/--end)")
    return sorted(runs, key=lambda r: (runs[r].start_time_s, r)), start_s


def _safe_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id) or "_"


def run_namespaces(args: argparse.Namespace) -> dict[str, argparse.Namespace]:
    """One single-run command line per run: the same flags, its own --out under DIR/runs/."""
    base = copy.copy(args)
    base.all_runs, base.quiet = False, True
    out: dict[str, argparse.Namespace] = {}
    if args.prometheus:
        ids, start_s = prometheus_runs(args)
        # each run over its own series: the lookup window reaches back to the window's start
        lookback = f"{math.ceil(time.time() - start_s) + 60}s"
        for run_id in ids:
            out[run_id] = argparse.Namespace(**{**vars(base), "run": run_id, "start": None, "end": None,
                                                "lookback": lookback})
    else:
        for run_id, (log, rle) in run_dirs(args.runs_dir).items():
            out[run_id] = argparse.Namespace(**{**vars(base), "grad_log": log, "rle_csv": rle})
    used: set[str] = set()
    for run_id, ns in out.items():
        name = _safe_name(run_id)
        while name in used:
            name += "_"
        used.add(name)
        ns.out = args.out / "runs" / name
    return out


# --- rows and pooling (pure) --------------------------------------------------------------------------
def pair_rows(run_id: str, report: dict) -> list[dict]:
    """One row per pair of one run's report."""
    rows = []
    for pair in report["pairs"]:
        prim, lag = pair["primary"], pair["lag"]
        ci = prim.get("ci") or [None, None]
        rows.append({"run": run_id, "direction": pair.get("direction", ""), "x": pair["x"], "y": pair["y"],
                     "start": report["window"]["start"],
                     "end": report["window"]["end"], "step_s": report["step"]["seconds"], "n": prim.get("n"),
                     "n_eff": prim.get("n_eff"),
                     "r": prim.get("r"), "ci_low": ci[0], "ci_high": ci[1], "p_adjusted": prim.get("p_adjusted"),
                     "peak_lag_s": lag.get("peak_lag_s"), "peak_r": lag.get("peak_r"),
                     "lag_p_adjusted": lag.get("p_adjusted"), "coupled": pair["coupled"],
                     "strength": pair["strength"], "run_strength": report["verdict"]["strength"]})
    return rows


def _usable(row: dict) -> bool:
    values = (row["r"], row["ci_low"], row["ci_high"])
    return (all(isinstance(v, float | int) and math.isfinite(v) and abs(v) < 1 for v in values)
            and row["ci_high"] > row["ci_low"])


def pooled_verdict(pooled: dict, p_adjusted: float, cfg: Settings) -> dict:
    """The single run's bands on the pooled r: coupled (strength from the CI's bound nearest zero) when the
    Holm-corrected pooled test is significant and |r| >= min_effect, negligible when it is significant but
    smaller, none when an equivalence test puts the pooled r inside +/-equivalence_bound, else inconclusive."""
    equiv = _equivalence({"z": [pooled["z"]], "se_z": [pooled["se_z"]]}, cfg)
    equivalence = {k: v for k, v in equiv.items() if not k.startswith("_")}
    equivalence["method"] = (f"TOST on the pooled r: its {100 * (1 - 2 * cfg.alpha):g} % CI inside "
                             f"(-{cfg.equivalence_bound:g}, {cfg.equivalence_bound:g})")
    if p_adjusted < cfg.alpha:
        if abs(pooled["r"]) < cfg.min_effect:
            coupled, strength = False, "negligible"
        else:
            coupled, strength = True, strength_from_ci(pooled["ci"])
    else:
        coupled, strength = False, "none" if equiv["equivalent"] else "inconclusive"
    return {"coupled": coupled, "strength": strength, "equivalence": equivalence}


def meta_analyse(rows: list[dict], cfg: Settings) -> list[dict]:
    """Per pair (in the reports' order): random effects over the runs with a usable lag-0 r and CI, Holm
    across the pairs of each direction (one family per direction, as in a single run's verdict), and the
    pooled verdict; a pair without any usable run is insufficient data."""
    pairs = list(dict.fromkeys((row["direction"], row["x"], row["y"]) for row in rows))
    out = []
    for direction, x, y in pairs:
        mine = [row for row in rows if (row["direction"], row["x"], row["y"]) == (direction, x, y)]
        used = [row for row in mine if _usable(row)]
        entry: dict = {"direction": direction, "x": x, "y": y, "runs": [row["run"] for row in used],
                       "runs_left_out": [row["run"] for row in mine if not _usable(row)]}
        if used:
            z, se = zip(*(z_and_se(row["r"], [row["ci_low"], row["ci_high"]]) for row in used), strict=True)
            entry["pooled"] = dersimonian_laird(np.array(z), np.array(se), cfg.alpha)
        out.append(entry)
    for direction in dict.fromkeys(e["direction"] for e in out):
        tested = [e for e in out if "pooled" in e and e["direction"] == direction]
        for entry, p_adj in zip(tested, holm([e["pooled"]["p"] for e in tested]), strict=True):
            entry["pooled"]["p_adjusted"] = p_adj
            entry.update(pooled_verdict(entry["pooled"], p_adj, cfg))
    for entry in out:
        if "pooled" not in entry:
            entry.update(pooled=None, coupled=False, strength=INSUFFICIENT)
    return out


# --- output -------------------------------------------------------------------------------------------
def write_tables(rows: list[dict], pooled: list[dict], meta: dict, out: Path) -> None:
    cleaned = clean(rows)
    with (out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in cleaned)
    (out / "runs.json").write_text(json.dumps(cleaned, indent=2, allow_nan=False) + "\n")
    (out / "meta_analysis.json").write_text(json.dumps(clean({**meta, "pairs": pooled}), indent=2,
                                                       allow_nan=False) + "\n")


def mixed_steps_note(rows: list[dict]) -> str | None:
    """Runs analysed on different grids (a run past --max-rows is widened; sources collect at their own
    intervals) pool r of differences over different steps: said, since their r need not be the same effect."""
    steps = sorted({row["step_s"] for row in rows})
    if len(steps) < 2:
        return None
    return (f"the runs were analysed on grids of {', '.join(f'{s:g} s' for s in steps)} (runs.csv: step_s): each "
            "r is of step-to-step changes on its own grid, so the pooled r mixes time scales")


def summary(pooled: list[dict], n_runs: int, skipped: dict[str, str], note: str | None = None) -> str:
    lines = [f"{n_runs} run(s) analysed" + (f", {len(skipped)} skipped" if skipped else "")
             + "; random-effects meta-analysis of each pair's lag-0 r:"]
    if note:
        lines.append(f"Note: {note}.")
    for entry in pooled:
        p = entry["pooled"]
        if p is None:
            lines.append(f"- {entry['x']} vs {entry['y']}: insufficient data (no run with a lag-0 r and CI).")
            continue
        i2 = "n/a" if p["i2"] is None else f"{100 * p['i2']:.0f} %"
        lines.append(f"- {entry['x']} vs {entry['y']}: pooled r = {p['r']:+.3f} [95% CI {p['ci'][0]:+.3f}, "
                     f"{p['ci'][1]:+.3f}] over {p['k']} run(s), tau^2 = {p['tau2']:.4f}, I^2 = {i2}, "
                     f"Holm p = {p['p_adjusted']:.2g} -> {entry['strength']}.")
    lines += [f"  skipped {run}: {why}" for run, why in skipped.items()]
    return "\n".join(lines)


def run_all(args: argparse.Namespace, analyse_one: Callable[[argparse.Namespace], int]) -> int:
    """Analyse every run with `analyse_one` (the single-run command), then pool each pair across runs."""
    from thermograd.analysis.forest import forest_png

    cfg = settings_from_args(args)
    if not args.all_runs:
        raise InputError("--runs-dir needs --all-runs")
    if args.prometheus and args.runs_dir:
        raise InputError("--all-runs takes --prometheus URL or --runs-dir DIR, not both")
    if not (args.prometheus or args.runs_dir):
        raise InputError("--all-runs needs --prometheus URL or --runs-dir DIR")
    if args.run or args.grad_log or args.rle_csv:
        raise InputError("--all-runs analyses every run: drop --run/--grad-log/--rle-csv")
    runs = run_namespaces(args)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for i, (run_id, ns) in enumerate(runs.items(), start=1):
        print(f"analysis: run {i}/{len(runs)}: {run_id}", file=sys.stderr, flush=True)
        try:
            analyse_one(ns)
        except InputError as exc:  # one bad run does not sink the others; it is listed
            skipped[run_id] = str(exc)
            continue
        rows += pair_rows(run_id, json.loads((ns.out / "report.json").read_text()))
    if not rows:
        raise InputError(f"none of the {len(runs)} run(s) could be analysed: "
                         + "; ".join(f"{r}: {why}" for r, why in skipped.items()))
    pooled = meta_analyse(rows, cfg)
    meta = {"source": args.prometheus or str(args.runs_dir), "runs_analysed": len(runs) - len(skipped),
            "runs_skipped": skipped, "settings": vars(cfg),
            "method": ("each run's lag-0 primary r and its Fisher-z 95 % CI (HAC / effective-n standard error) "
                       "-> z and se_z = (atanh hi - atanh lo) / (2 * 1.959964); DerSimonian-Laird random effects; "
                       "Holm across pairs; the single run's bands on the pooled r"),
            "mixed_steps": mixed_steps_note(rows)}
    write_tables(rows, pooled, meta, args.out)
    forest_png(rows, pooled, args.out / "forest.png", cfg.equivalence_bound)
    if not args.quiet:
        print(summary(pooled, len(runs) - len(skipped), skipped, meta["mixed_steps"]))
    return 0
