"""Benchmark: calibration and power of the whole analysis on a zoo of realistic runs.

For every null kind in testkit/scenarios.py (independent training and hardware series shaped like real
runs), `--runs` runs of lengths cycling through `--lengths` (90 s to 1 h) and `--long-runs` more of 4 h
and a day go through the offline alignment and the
whole `analyse()`; the false-positive rate of every test (raw p < alpha where the test ran) and of the
verdict (`coupled` true) is reported with a Wilson 95 % interval. Goal (issue 8): every test's FPR within
0.02-0.07 and the verdict's <= 0.07, for every kind. Power: planted coupling r ~ 0.3 on the differences,
lags 0-5 s, Gaussian and spiky innovations, 600 s runs; goal >= 80 % detected with the right sign and
the lag within +/-1 step. Issue 16 (bench/calibration_effects.py): spike-triggered drops and rises of power,
spike-carried lagged couplings in 3-minute runs (goal >= 90 % detected with the right sign and lag window, never
`none`), throughput leading power (the hardware -> training verdict never coupled), throttling that slows the
steps (found at lag 0 in >= 90 %), and the throttle cost's coverage on loaders whose speed drifts (>= 93 %).

Prints one JSON object on stdout (progress on stderr). `--quick` is a smaller run for a smoke check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench import calibration_effects as effects
from testkit.scenarios import NULL_KINDS, PLANTED_KINDS, null_run, planted_run
from thermograd.analysis.coupling.analyse import analyse
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.verdict import verdicts
from thermograd.analysis.files.grid import files_to_table

LENGTHS_S = (90, 180, 300, 600, 900, 1800, 3600)
LONG_LENGTHS_S = (4 * 3600, 86400)  # a day of 1 s data costs seconds per run: fewer of these
KIND_LENGTHS_S = {"idle_start": (120, 180, 180, 240, 300, 600)}  # runs from idle: the short ones are the risk
ALPHA = 0.05
FPR_GOAL = (0.02, 0.07)
VERDICT_GOAL = 0.07
POWER_GOAL = 0.8
MIN_TESTS_JUDGED = 100  # 100 tests: a Wilson interval of about +/-0.045 around 0.05


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def test_pvalues(result: dict) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Raw p-value of every test that ran, grouped by test (pairs pooled), and the reason each test that
    did not run gives (a test that never runs must read "not run", not 0.000)."""
    out: dict[str, list[float]] = {}
    skipped: dict[str, list[str]] = {}

    def add(name: str, test: dict | None, reason: str = "absent") -> None:
        if test and test.get("p") is not None:
            out.setdefault(name, []).append(float(test["p"]))
        else:
            skipped.setdefault(name, []).append(str((test or {}).get("reason") or reason))

    for pair in result["pairs"]:
        add("lag0", pair["primary"])
        add("lagged", pair["lag"])
    for g in result["granger"]:
        add("granger", g.get("x_to_y"), g.get("reason") or "too few rows or a constant series")
        add("granger", g.get("y_to_x"), g.get("reason") or "too few rows or a constant series")
    ev = result.get("events") or {}
    for key in ("trigger", "precursor"):
        add(f"event_{key}", ev.get(key) if ev.get("status") == "ok" else None, ev.get("reason", "no collapse series"))
    add("point_biserial", ev.get("point_biserial"), ev.get("reason", "no collapse series"))
    for res in result.get("spike_responses", []):
        add("spike_response", res)
    pert = result.get("perturbation")
    if pert is None:
        skipped.setdefault("perturbation", []).append("no learning-rate bursts in the run")
    for res in ((pert or {}).get("metrics") or {}).values():
        add("perturbation", res)
    return out, skipped


def _analyse(rec, cfg: Settings) -> tuple[dict, dict]:
    table = files_to_table(rec.train, rec.hardware).trimmed(["grad_norm", "loss"])
    result = analyse(table, cfg)
    return result, verdicts(result, table.step_s)


def null_job(args: tuple[str, int, int, int]) -> dict:
    kind, length, seed, n_surr = args
    rec = null_run(kind, length, seed)
    result, both = _analyse(rec, Settings(n_surrogates=n_surr, seed=seed))
    v, hw = both["optimizer_to_hardware"], both["hardware_to_training"]
    p_values, skipped = test_pvalues(result)
    covered, z = effects.cost_coverage(result) if rec.loader_tau_s else (None, None)
    return {"kind": kind, "length_s": length, "p": p_values, "skipped": skipped, "coupled": bool(v["coupled"]),
            "strength": v["strength"], "coupled_hw": bool(hw["coupled"]), "strength_hw": hw["strength"],
            "control": result["positive_control"].get("detected"), "tau_s": rec.loader_tau_s,
            "cost_covered": covered, "cost_z": z}


def power_job(args: tuple[str, int, int, int, int]) -> dict:
    kind, lag, length, seed, n_surr = args
    rec = planted_run(kind, length, lag, 0.3, seed)
    result, _ = _analyse(rec, Settings(n_surrogates=n_surr, seed=seed))
    pair = next(p for p in result["pairs"] if (p["x"], p["y"]) == ("grad_norm", "power"))
    lag_found = pair["lag"].get("peak_lag_s")
    r_found = pair["lag"].get("peak_r")
    right = (pair["coupled"] and lag_found is not None and abs(lag_found - lag) <= 1.0 and r_found is not None
             and r_found > 0)
    return {"kind": kind, "lag_s": lag, "detected": bool(pair["coupled"]), "right_sign_and_lag": bool(right)}


def by_length(rows: list[dict], test: str) -> dict[str, list[int]]:
    """[rejections, tests] of one test per run length (a rate pooled over lengths can hide a length
    where it is off)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        ps = np.asarray(r["p"].get(test, []))
        cell = out.setdefault(str(r["length_s"]), [0, 0])
        cell[0] += int(np.sum(ps < ALPHA))
        cell[1] += int(ps.size)
    return out


def summarise_null(rows: list[dict]) -> dict:
    out: dict = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        tests: dict[str, list[float]] = {}
        for r in mine:
            for name, ps in r["p"].items():
                tests.setdefault(name, []).extend(ps)
        fpr = {}
        for name in TEST_COLUMNS:
            ps = tests.get(name, [])
            k, n = int(np.sum(np.asarray(ps) < ALPHA)), len(ps)
            reasons: dict[str, int] = {}
            for r in mine:
                for reason in r.get("skipped", {}).get(name, []):
                    reasons[reason] = reasons.get(reason, 0) + 1
            # fewer tests than this cannot tell 0.02 from 0.07: judged only with its interval
            judged = n >= MIN_TESTS_JUDGED
            fpr[name] = {"fpr": round(k / n, 4) if n else None, "n_tests": n, "ci95": wilson(k, n),
                         "within_goal": (FPR_GOAL[0] <= k / n <= FPR_GOAL[1]) if judged else None,
                         "not_run": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
                         "by_length": by_length(mine, name)}
        k = sum(r["coupled"] for r in mine)
        strengths: dict[str, int] = {}
        for r in mine:
            strengths[r["strength"]] = strengths.get(r["strength"], 0) + 1
        k_hw = sum(r["coupled_hw"] for r in mine)
        controls = [r["control"] for r in mine if r["control"] is not None and kind == "paused"]
        lengths: dict[str, list[int]] = {}
        for r in mine:
            cell = lengths.setdefault(str(r["length_s"]), [0, 0, 0])
            cell[0] += int(r["coupled"])
            cell[1] += int(r["coupled_hw"])
            cell[2] += 1
        out[kind] = {"runs": len(mine), "lengths_s": sorted({r["length_s"] for r in mine}),
                     "verdict_fpr": round(k / len(mine), 4), "verdict_ci95": wilson(k, len(mine)),
                     "verdict_hardware_to_training_fpr": round(k_hw / len(mine), 4),
                     "verdict_hardware_to_training_ci95": wilson(k_hw, len(mine)),
                     "verdict_by_length": lengths,  # [coupled opt->hw, coupled hw->train, runs]
                     "verdict_within_goal": max(k, k_hw) / len(mine) <= VERDICT_GOAL, "tests": fpr,
                     "verdicts": strengths}
        if controls:
            out[kind]["positive_control_detected"] = round(sum(controls) / len(controls), 3)
    return out


def summarise_power(rows: list[dict]) -> dict:
    out: dict = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        out[kind] = {}
        for lag in sorted({r["lag_s"] for r in rows if r["kind"] == kind}):
            mine = [r for r in rows if r["kind"] == kind and r["lag_s"] == lag]
            det = sum(r["detected"] for r in mine) / len(mine)
            right = sum(r["right_sign_and_lag"] for r in mine) / len(mine)
            out[kind][f"lag_{lag}s"] = {"runs": len(mine), "detected": round(det, 3),
                                        "right_sign_and_lag": round(right, 3),
                                        "within_goal": right >= POWER_GOAL}
    return out


TEST_COLUMNS = ("lag0", "lagged", "spike_response", "granger", "event_trigger", "event_precursor", "point_biserial",
                "perturbation")


def _cell(test: dict | None) -> str:
    """FPR and the number of tests behind it; "–" for a test that never ran."""
    if not test or not test["n_tests"]:
        return "–"
    return f"{test['fpr']:.3f} ({test['n_tests']})"


def markdown(result: dict) -> str:
    """docs/method.md's calibration and power tables from one run's JSON."""
    lines = [f"*Null kinds* ({result['runs_per_kind']} runs per kind; share of raw p < {result['alpha']:g}, tests in "
             "brackets; verdict: share of runs called coupled):", "",
             "| null kind | runs | verdict coupled (opt→hw, hw→train) | " + " | ".join(TEST_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(TEST_COLUMNS)]
    for kind, v in result["null"].items():
        cells = [_cell(v["tests"].get(t)) for t in TEST_COLUMNS]
        lines.append(f"| {kind} | {v['runs']} | {v['verdict_fpr']:.3f}, {v['verdict_hardware_to_training_fpr']:.3f} | "
                     + " | ".join(cells) + " |")
    lags = sorted({lag for k in result["power"].values() for lag in k}, key=lambda s: int(s[4:-1]))
    lines += ["", "*Power* (planted r ≈ 0.3, 600 s runs; share detected with the right sign and lag):", "",
              "| planted | " + " | ".join(lag.replace("lag_", "lag ") for lag in lags) + " |",
              "|---|" + "---|" * len(lags)]
    for kind, v in result["power"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{v[lag]['right_sign_and_lag']:.2f}" for lag in lags) + " |")
    return "\n".join(lines + effects_markdown(result))


def effects_markdown(result: dict) -> list[str]:
    """docs/method.md's issue-16 tables: spike effects, directions, the throttle cost's coverage."""
    lines = ["", "*Spike-triggered effects and spike-carried couplings* (share of runs coupled with the right sign and "
             "lag window, through the spike response or the pair; share called `none`):", "",
             "| planted effect | runs | right sign and lag | by the spike response | by the pair | called none |",
             "|---|---|---|---|---|---|"]
    for name, v in (result.get("spike_effects") or {}).items():
        lines.append(f"| {name} | {v['runs']} | {v['right_sign_and_lag']:.2f} | {v['by_spike_response']:.2f} | "
                     f"{v['by_pair']:.2f} | {v['called_none']:.2f} |")
    lines += ["", "*Which way an effect runs* (share of runs; Granger: precedences of a training series before a "
              "device series, summed over runs):", "",
              "| direction kind | runs | hardware slows training | throttling found at lag 0 | training-side "
              "coupling reported | Granger training -> device (explained by throttled, no caveat) |",
              "|---|---|---|---|---|---|"]
    for name, v in (result.get("directions") or {}).items():
        lines.append(f"| {name} | {v['runs']} | {v['hardware_slows_training']:.2f} | "
                     f"{v['throttle_found_at_lag_0']:.2f} | {v['training_leads_or_same_step_reported']:.2f} | "
                     f"{v['granger_training_precedes_device']} ({v['of_which_explained_by_throttled']}, "
                     f"{v['of_which_without_caveat']}) |")
    lines += ["", "*Throttle cost on drifting-loader nulls* (nothing is lost: the 95 % CI should cover 0):", "",
              "| loader drift time constant | runs | CI covers the true cost | sd of the standardised error |",
              "|---|---|---|---|"]
    for band, v in (result.get("throttle_cost_coverage") or {}).items():
        sd = v.get("sd_standardised_error")
        lines.append(f"| {band} | {v['runs']} | {v['coverage']:.3f} | {'–' if sd is None else f'{sd:.2f}'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200, help="null runs per kind (default 200)")
    p.add_argument("--power-runs", type=int, default=50, help="planted runs per kind and lag (default 50)")
    p.add_argument("--effect-runs", type=int, default=50,
                   help="runs per spike effect and per direction kind (issue 16; default 50)")
    p.add_argument("--kinds", default=",".join(NULL_KINDS), help="comma-separated null kinds")
    p.add_argument("--lengths", default=",".join(str(v) for v in LENGTHS_S), help="run lengths in seconds")
    p.add_argument("--long-runs", type=int, default=10, help="extra runs per kind of the long lengths (default 10)")
    p.add_argument("--long-lengths", default=",".join(str(v) for v in LONG_LENGTHS_S),
                   help="long run lengths in seconds (default 4 h and 1 day)")
    p.add_argument("--surrogates", type=int, default=1000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="40 runs per kind, lengths up to 1 h, 20 power runs")
    p.add_argument("--markdown", type=Path, metavar="RESULT_JSON",
                   help="print the tables of docs/method.md for a result and exit")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    lengths = [int(v) for v in args.lengths.split(",")]
    runs, power_runs = args.runs, args.power_runs
    if args.quick:
        runs, power_runs, lengths = 40, 20, [v for v in lengths if v <= 3600]
    kinds = [k for k in args.kinds.split(",") if k]
    long_lengths = [int(v) for v in args.long_lengths.split(",") if v] if not args.quick else []
    def length_of(kind: str, i: int) -> int:
        own = KIND_LENGTHS_S.get(kind, lengths)
        return own[i % len(own)]

    jobs = [(kind, length_of(kind, i), 1000 * j + i, args.surrogates)
            for j, kind in enumerate(kinds) for i in range(runs)]
    jobs += [(kind, long_lengths[i % len(long_lengths)], 1000 * j + 900 + i, args.surrogates)
             for j, kind in enumerate(kinds) for i in range(args.long_runs if long_lengths else 0)]
    pjobs = [(kind, lag, 600, 500_000 + 1000 * lag + 100 * j + i, args.surrogates)
             for j, kind in enumerate(PLANTED_KINDS) for lag in range(6) for i in range(power_runs)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        # the longest runs first, so the pool does not finish on one straggler
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1])
        null_rows = [None] * len(jobs)
        for done, (i, row) in enumerate(zip(order, pool.map(null_job, [jobs[i] for i in order], chunksize=4),
                                            strict=True), start=1):
            null_rows[i] = row
            if done % 100 == 0:
                print(f"bench_calibration: {done}/{len(jobs)} null runs", file=sys.stderr, flush=True)
        power_rows = list(pool.map(power_job, pjobs, chunksize=4))
        effect_runs = 20 if args.quick else args.effect_runs
        ejobs = [(name, 700_000 + 1000 * j + i, args.surrogates) for j, name in enumerate(effects.SPIKE_EFFECTS)
                 for i in range(effect_runs)]
        djobs = [(name, 800_000 + 1000 * j + i, args.surrogates) for j, name in enumerate(effects.DIRECTION_KINDS)
                 for i in range(effect_runs)]
        effect_rows = list(pool.map(effects.effect_job, ejobs, chunksize=2))
        direction_rows = list(pool.map(effects.direction_job, djobs, chunksize=2))
    null = summarise_null(null_rows)
    power = summarise_power(power_rows)
    spike_effects = effects.summarise_effects(effect_rows)
    directions = effects.summarise_directions(direction_rows)
    coverage = effects.summarise_coverage(null_rows)
    out = {
        "alpha": ALPHA, "goal": {"test_fpr": FPR_GOAL, "verdict_fpr_max": VERDICT_GOAL,
                                 "power_right_sign_and_lag_min": POWER_GOAL},
        "runs_per_kind": runs + (args.long_runs if long_lengths else 0), "lengths_s": lengths + long_lengths,
        "surrogates": args.surrogates,
        "null": null, "power": power, "spike_effects": spike_effects, "directions": directions,
        "throttle_cost_coverage": coverage,
        "all_within_goal": (all(k["verdict_within_goal"] and all(t["within_goal"] for t in k["tests"].values()
                                                                  if t["within_goal"] is not None)
                                for k in null.values())
                            and all(v["within_goal"] for lags in power.values() for v in lags.values())
                            and all(v["within_goal"] for v in [*spike_effects.values(), *directions.values()])
                            and (coverage["all"]["runs"] == 0 or coverage["all"]["coverage"] >= 0.93)),
        "wall_s": round(time.perf_counter() - t0, 1), "workers": args.workers,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
