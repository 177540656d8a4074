"""--all-runs: every run in the window (Prometheus) or in --runs-dir (files), one report each, then a
random-effects meta-analysis of each pair across the runs and a forest plot.

Each run is analysed exactly as a single run is (run.analyse_run on its own RunRequest, its report under
DIR/runs/<run>/); this module gathers each run's pairs (the rows a worker hands back), pools each pair's lag-0
primary r and writes the tables.

Past one process: --workers N analyses N runs at once, each in its own worker process; --shard K/N analyses
only the runs whose id hashes to shard K (on another machine, say) and writes DIR/shard-K-of-N.json instead
of the tables; --pool-shards reads every shard's manifest and reports and writes the tables one process
would have written. Every path gathers the runs in the same order, so the tables are the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from thermograd.analysis.arguments import (
    check_hardware_flags,
    grid_from_args,
    settings_from_args,
    shard_flag,
    store_run,
    workers_flag,
)
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.verdict import pooled_verdict
from thermograd.analysis.errors import InputError
from thermograd.analysis.output.outdir import output_folder, prepare_out
from thermograd.analysis.output.report import clean, versions
from thermograd.analysis.requests import ClientOptions, FileRun, Grid, RunRequest, StoreRun, Window
from thermograd.analysis.run import analyse_run
from thermograd.analysis.stats.meta import dersimonian_laird, z_and_se
from thermograd.analysis.stats.multiple import holm
from thermograd.analysis.stats.preprocess import INSUFFICIENT

LOG_PATTERNS = ("*.jsonl", "*.json")
CSV_PATTERN = "*.csv"
ROW_FIELDS = ("run", "direction", "x", "y", "start", "end", "step_s", "n", "n_eff", "r", "ci_low", "ci_high",
              "p_adjusted", "peak_lag_s", "peak_r", "lag_p_adjusted", "coupled", "strength", "run_strength")


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


def prometheus_runs(store: ClientOptions, window: Window) -> tuple[list[str], float]:
    """Run ids with samples in the window, oldest first, and the window's start (for each run's lookup)."""
    from thermograd.analysis.sources.runs import discover_runs

    start_s, end_s = window.bounds()
    runs = discover_runs(store.client(), start_s, end_s)
    if not runs:
        raise InputError(f"no runs in the window at {store.url} (no train_run_start_time_seconds between "
                         f"{start_s:.0f} and {end_s:.0f}; widen --lookback or --start/--end)")
    return sorted(runs, key=lambda r: (runs[r].start_time_s, r)), start_s


def _safe_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id) or "_"


def run_requests(source: StoreRun | Path, settings: Settings, grid: Grid, warmup_flag: str, out: Path,
                 device: str | None = None, tz: str | None = None) -> dict[str, RunRequest]:
    """One single-run request per run, in the runs' order, each writing under out/runs/: every run in `source`'s
    window of a store (each looked up over its own series), or every run folder of a --runs-dir."""
    found: dict[str, StoreRun | FileRun] = {}
    if isinstance(source, StoreRun):
        ids, start_s = prometheus_runs(source.client, source.window)
        # each run over its own series: the lookup window reaches back to the window's start
        window = Window(lookback_s=math.ceil(time.time() - start_s) + 60.0)
        found = {run_id: replace(source, run_id=run_id, window=window) for run_id in ids}
    else:
        found = {run_id: FileRun(log, rle, device, tz) for run_id, (log, rle) in run_dirs(source).items()}
    requests: dict[str, RunRequest] = {}
    used: set[str] = set()
    for run_id, where in found.items():
        name = _safe_name(run_id)
        while name in used:
            name += "_"
        used.add(name)
        requests[run_id] = RunRequest(where, settings, out / "runs" / name, grid, warmup_flag)
    return requests


# --- analysing the runs: here, or in worker processes -----------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """What became of one run: its pairs' rows (analysed: its report.json written), or why it was skipped."""

    rows: list[dict] | None = None
    skipped: str | None = None


def _progress(i: int, n: int, run_id: str) -> None:
    print(f"analysis: run {i}/{n}: {run_id}", file=sys.stderr, flush=True)


AnalyseOne = Callable[[str, RunRequest], list[dict]]


def run_rows(run_id: str, request: RunRequest) -> list[dict]:
    """One run's analysis (run.analyse_run), its report written; its pairs' rows for the pooling, not the whole
    report, are what a worker hands back."""
    return pair_rows(run_id, analyse_run(request).document)


def analyse_or_skip(analyse_one: AnalyseOne, run_id: str, request: RunRequest) -> RunOutcome:
    """One run through `analyse_one`; an InputError skips it (one bad run does not sink the others; it is
    listed). Module level, so a worker process can be handed it."""
    try:
        return RunOutcome(rows=analyse_one(run_id, request))
    except InputError as exc:
        return RunOutcome(skipped=str(exc))


def _ignore_sigint() -> None:
    """A worker leaves Ctrl-C to the parent, which ends it: otherwise every idle worker prints its own
    KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _worker_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one, else spawn: never fork, which copies the parent's threads' locks and
    matplotlib's state into the child mid-use."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C or a failed run: the pending runs cancelled and the running ones ended now (shutdown alone
    lets them finish first, however long they take). The pool has no public handle on its processes before
    Python 3.14's terminate_workers."""
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


def _in_workers(runs: dict[str, RunRequest], analyse_one: AnalyseOne, workers: int) -> dict[str, RunOutcome]:
    """Each run in a worker process; a run is handed out only when a worker is free, so no more runs are in
    memory at once than there are workers, and each progress line marks a run as it starts."""
    queue = iter(enumerate(runs.items(), start=1))
    in_flight: dict[Future, str] = {}
    outcomes: dict[str, RunOutcome] = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(), initializer=_ignore_sigint)
    # SIGTERM (timeout, kill, a pod's end) would end this process and leave the workers finishing their runs
    # as orphans: while the pool lives it raises SystemExit here, so the workers are ended below as on Ctrl-C.
    in_main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main else None

    def worker_died(running: list[str]) -> InputError:  # which of the running runs took the worker down is not told
        return InputError(f"a worker process died while analysing {', '.join(running)} (killed, e.g. out of "
                          "memory): give --workers fewer processes or the command more memory")

    def hand_out_next() -> None:
        if (item := next(queue, None)) is not None:
            i, (run_id, request) = item
            _progress(i, len(runs), run_id)
            try:
                in_flight[pool.submit(analyse_or_skip, analyse_one, run_id, request)] = run_id
            except BrokenProcessPool:  # a worker died while another's run finished: the pool takes no more
                raise worker_died(list(in_flight.values())) from None

    try:
        for _ in range(workers):
            hand_out_next()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                run_id = in_flight.pop(future)
                try:
                    outcomes[run_id] = future.result()  # a run's unexpected error is raised here
                except BrokenProcessPool:
                    raise worker_died([run_id, *in_flight.values()]) from None
                except Exception as exc:  # a bug met in one run: say which run, the progress lines interleave
                    raise RuntimeError(f"run {run_id}: {type(exc).__name__}: {exc}") from exc
                hand_out_next()
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous_sigterm)
    pool.shutdown()
    return {run_id: outcomes[run_id] for run_id in runs}  # the runs' order, whatever finished first


def analyse_runs(runs: dict[str, RunRequest], analyse_one: AnalyseOne, workers: int) -> dict[str, RunOutcome]:
    """Every run's outcome through `analyse_one` (run_rows), in the runs' order: one after another in this
    process (one worker, or one run), else in `workers` processes."""
    if workers > 1 and len(runs) > 1:
        return _in_workers(runs, analyse_one, min(workers, len(runs)))
    outcomes = {}
    for i, (run_id, request) in enumerate(runs.items(), start=1):
        _progress(i, len(runs), run_id)
        outcomes[run_id] = analyse_or_skip(analyse_one, run_id, request)
    return outcomes


# --- shards: which runs are a shard's, and what it hands the pooling step ---------------------------------
MANIFEST_FORMAT = 1
MANIFEST_GLOB = "shard-*-of-*.json"


def shard_of(run_id: str, n_shards: int) -> int:
    """The shard (1..n_shards) of a run, from its id alone: a run keeps its shard when others are added."""
    return int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % n_shards + 1


def manifest_name(k: int, n: int) -> str:
    return f"shard-{k}-of-{n}.json"


def runs_digest(run_ids: list[str]) -> str:
    """Every run the discovery found, in its order: shards that saw different runs cannot be pooled into what
    one process would write."""
    return hashlib.sha256("\n".join(run_ids).encode()).hexdigest()


def source_of(args: argparse.Namespace) -> dict:
    """What selected the runs: the store's URL and the window's flags as given, or the runs folder."""
    if args.prometheus:
        return {"source": args.prometheus, "window": {"start": args.start, "end": args.end,
                                                       "lookback": args.lookback}}
    return {"source": str(args.runs_dir), "window": None}


# Flags that change one run's report without being statistics settings: every shard must share them. Left out:
# where the runs come from (source_of), where the output goes, how the work is split, and credentials.
REPORT_FLAGS = ("device", "hardware_source", "max_rows", "rank", "rated_power", "step", "temp_limit", "tz",
                "warmup")


def report_flags(args: argparse.Namespace) -> dict:
    return {name: None if getattr(args, name, None) is None else str(getattr(args, name)) for name in REPORT_FLAGS}


def shard_manifest(shard: tuple[int, int], selection: dict, flags: dict, cfg: Settings,
                   runs: dict[str, RunRequest], outcomes: dict[str, RunOutcome], out: Path) -> dict:
    """A shard's record for --pool-shards: its runs with their place in the order of all runs (where the
    pooled tables put them) and, for each analysed one, its report relative to the shard's --out `out`;
    `selection` (source_of) and `flags` (report_flags) as given, for the pooling step to compare."""
    position = {run_id: i for i, run_id in enumerate(runs)}
    analysed = [{"run": run_id, "position": position[run_id],
                 "report": (runs[run_id].out / "report.json").relative_to(out).as_posix()}
                for run_id, outcome in outcomes.items() if outcome.skipped is None]
    skipped = [{"run": run_id, "position": position[run_id], "reason": outcome.skipped}
               for run_id, outcome in outcomes.items() if outcome.skipped is not None]
    return {"format": MANIFEST_FORMAT, "shard": {"k": shard[0], "n": shard[1]}, **selection,
            "settings": vars(cfg), "flags": flags, "runs_total": len(runs), "runs_digest": runs_digest(list(runs)),
            "analysed": analysed, "skipped": skipped}


def write_json_atomically(document: dict, path: Path) -> None:
    """Written whole or not at all: a manifest's presence tells --pool-shards its shard finished."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(clean(document), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


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


def pool_and_write(rows: list[dict], skipped: dict[str, str], n_runs: int, source: str, cfg: Settings, out: Path,
                   quiet: bool) -> None:
    """From every run's rows (in the runs' order) to runs.csv/json, meta_analysis.json, forest.png and the
    summary: the end of --all-runs and of --pool-shards alike, so both write the same bytes."""
    from thermograd.analysis.output.forest import forest_png

    if not rows:
        raise InputError(f"none of the {n_runs} run(s) could be analysed: "
                         + "; ".join(f"{r}: {why}" for r, why in skipped.items()))
    pooled = meta_analyse(rows, cfg)
    meta = {"source": source, "versions": versions(), "runs_analysed": n_runs - len(skipped),
            "runs_skipped": skipped, "settings": vars(cfg),
            "method": ("each run's lag-0 primary r and its Fisher-z 95 % CI (HAC / effective-n standard error) "
                       "-> z and se_z = (atanh hi - atanh lo) / (2 * 1.959964); DerSimonian-Laird random effects; "
                       "Holm across pairs; the single run's bands on the pooled r"),
            "mixed_steps": mixed_steps_note(rows)}
    write_tables(rows, pooled, meta, out)
    forest_png(rows, pooled, out / "forest.png", cfg.equivalence_bound)
    if not quiet:
        print(summary(pooled, n_runs - len(skipped), skipped, meta["mixed_steps"]))


def read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the run's report ({exc}); analyse that run again") from None


def rows_and_skipped(outcomes: dict[str, RunOutcome]) -> tuple[list[dict], dict[str, str]]:
    """The analysed runs' rows and the skipped runs' reasons, both in the order of `outcomes`."""
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for run_id, outcome in outcomes.items():
        if outcome.skipped is None:
            rows += outcome.rows or []
        else:
            skipped[run_id] = outcome.skipped
    return rows, skipped


POOLED_OUTPUTS = ("runs.csv", "runs.json", "meta_analysis.json", "forest.png")


def check_many_runs_flags(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (("--runs-dir", args.runs_dir), ("--shard", args.shard),
                                      ("--workers", args.workers is not None)) if value]
    if not args.all_runs:
        raise InputError(f"{'/'.join(given)} needs --all-runs")
    if args.prometheus and args.runs_dir:
        raise InputError("--all-runs takes --prometheus URL or --runs-dir DIR, not both")
    if not (args.prometheus or args.runs_dir):
        raise InputError("--all-runs needs --prometheus URL or --runs-dir DIR")
    if args.run or args.grad_log or args.rle_csv:
        raise InputError("--all-runs analyses every run: drop --run/--grad-log/--rle-csv")
    if args.shard and args.prometheus and not args.end:
        # without it each shard's window ends when that shard starts, and a run begun in between is in some
        # shards' discovery and not in others'
        raise InputError("--shard with --prometheus needs a fixed window: give every shard the same --end "
                         "(and --start or --lookback)")


def finish_shard(shard: tuple[int, int], manifest: dict, out: Path, quiet: bool) -> int:
    """A shard writes its manifest, not the tables: shards on a shared --out would overwrite each other's."""
    path = out / manifest_name(*shard)
    write_json_atomically(manifest, path)
    if not quiet:
        skipped = {entry["run"]: entry["reason"] for entry in manifest["skipped"]}
        print(f"shard {shard[0]}/{shard[1]}: {len(manifest['analysed'])} of the {manifest['runs_total']} run(s) "
              "analysed"
              + (f", {len(skipped)} skipped" if skipped else "") + f"; wrote {path}. Once every shard has "
              "finished: thermograd-analysis --pool-shards DIR... --out OUT")
        for run_id, why in skipped.items():
            print(f"  skipped {run_id}: {why}")
    return 0


def run_all(args: argparse.Namespace) -> int:
    """--all-runs: analyse every run (or one shard's), then pool each pair across runs (or leave that to
    --pool-shards). The command layer: the flags become requests here, and nothing below sees them."""
    cfg = settings_from_args(args)
    check_many_runs_flags(args)
    check_hardware_flags(args)
    workers = workers_flag(args.workers)
    shard = shard_flag(args.shard) if args.shard else None
    source: StoreRun | Path = store_run(args) if args.prometheus else args.runs_dir
    grid = grid_from_args(args)
    # before any run is analysed, hours of work must not end on a folder that cannot take the tables; and a
    # discovery that finds nothing leaves no empty folder behind
    with output_folder(args.out, POOLED_OUTPUTS if shard is None else (manifest_name(*shard),)):
        runs = run_requests(source, cfg, grid, args.warmup, args.out, args.device, args.tz)
        mine = runs if shard is None else {run_id: request for run_id, request in runs.items()
                                           if shard_of(run_id, shard[1]) == shard[0]}
        outcomes = analyse_runs(mine, run_rows, workers)
        if shard is not None:
            manifest = shard_manifest(shard, source_of(args), report_flags(args), cfg, runs, outcomes, args.out)
            return finish_shard(shard, manifest, args.out, args.quiet)
        rows, skipped = rows_and_skipped(outcomes)
        pool_and_write(rows, skipped, len(runs), source_of(args)["source"], cfg, args.out, args.quiet)
    return 0


# --- pooling the shards -----------------------------------------------------------------------------------
MANIFEST_KEYS = {"format", "shard", "source", "window", "settings", "flags", "runs_total", "runs_digest", "analysed",
                 "skipped"}


def read_manifests(dirs: list[Path]) -> list[tuple[Path, dict]]:
    """Every shard-K-of-N.json in the folders, with its path."""
    found = []
    # the same folder named twice (one shared --out for every shard) is read once
    for folder in {folder.resolve(): folder for folder in dirs}.values():
        if not folder.is_dir():
            raise InputError(f"--pool-shards {folder}: not a directory")
        for path in sorted(folder.glob(MANIFEST_GLOB)):
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: not a readable shard manifest ({exc}); run that shard again") from None
            if not (isinstance(manifest, dict) and manifest.keys() >= MANIFEST_KEYS
                    and manifest["format"] == MANIFEST_FORMAT):
                raise InputError(f"{path}: not a shard manifest of this thermograd (format {MANIFEST_FORMAT}); run "
                                 "that shard again")
            found.append((path, manifest))
    if not found:
        raise InputError(f"--pool-shards {' '.join(map(str, dirs))}: no shard manifests ({MANIFEST_GLOB}); run "
                         "thermograd-analysis --all-runs --shard K/N --out DIR for every K first")
    return found


def _shard_mismatch(manifest: dict, first: dict) -> tuple[str, str] | None:
    """(how, fix) where a shard differs from the first one in what must be the same for one process's tables."""
    if (manifest["source"], manifest["window"]) != (first["source"], first["window"]):
        return (f"source or window ({first['source']} {first['window']} against {manifest['source']} "
                f"{manifest['window']})", "pool the shards of one source and window")
    for part in ("settings", "flags"):
        if manifest[part] != first[part]:
            differ = sorted(k for k in manifest[part].keys() | first[part].keys()
                            if manifest[part].get(k) != first[part].get(k))
            one_sided = manifest[part].keys() ^ first[part].keys()  # a setting only one shard's thermograd has
            return f"{part} ({', '.join(differ)})", ("run every shard with the same thermograd version" if one_sided
                                                     else "run every shard with the same flags")
    if (manifest["runs_total"], manifest["runs_digest"]) != (first["runs_total"], first["runs_digest"]):
        return (f"the runs they found ({first['runs_total']} against {manifest['runs_total']})",
                "run every shard over the same runs (the same --runs-dir contents, or the same --start/--end)")
    return None


def check_shards(manifests: list[tuple[Path, dict]]) -> dict:
    """One split, each shard of it once, all of one source, window, settings and set of runs; returns the first
    manifest (what they share)."""
    first = manifests[0][1]
    sizes = sorted({manifest["shard"]["n"] for _, manifest in manifests})
    if len(sizes) > 1:
        raise InputError(f"shards of different splits (N = {', '.join(map(str, sizes))}) in the folders given: "
                         "remove the other split's shard-K-of-N.json files, or pool another folder")
    n = sizes[0]
    seen: dict[int, Path] = {}
    for path, manifest in manifests:
        k = manifest["shard"]["k"]
        if k in seen:
            raise InputError(f"shard {k}/{n} found twice ({seen[k]} and {path}): keep one of them")
        seen[k] = path
        if (mismatch := _shard_mismatch(manifest, first)) is not None:
            how, fix = mismatch
            raise InputError(f"shards {first['shard']['k']}/{n} and {k}/{n} differ in {how}: {fix}")
    missing = [k for k in range(1, n + 1) if k not in seen]
    if missing:
        raise InputError(f"shard {', '.join(f'{k}/{n}' for k in missing)} missing (no "
                         f"{', '.join(manifest_name(k, n) for k in missing)} in the folders given): run "
                         f"{', '.join(f'--shard {k}/{n}' for k in missing)} or let it finish, then pool again")
    return first


def pooled_outcomes(manifests: list[tuple[Path, dict]], runs_total: int) -> dict[str, RunOutcome]:
    """Every shard's runs in the order one process analyses them, each analysed one's rows read from its report."""
    entries = sorted([(entry["position"], entry["run"], path.parent / entry["report"], None)
                      for path, manifest in manifests for entry in manifest["analysed"]]
                     + [(entry["position"], entry["run"], None, entry["reason"])
                        for _, manifest in manifests for entry in manifest["skipped"]], key=lambda e: e[0])
    if [entry[0] for entry in entries] != list(range(runs_total)):
        raise InputError(f"the shards' runs are not the {runs_total} run(s) each of them found, once each: run "
                         "every shard again")
    return {run_id: RunOutcome(skipped=why) if why is not None
            else RunOutcome(rows=pair_rows(run_id, read_report(report)))
            for _, run_id, report, why in entries}


def pool_shards(args: argparse.Namespace) -> int:
    """--pool-shards DIR...: the tables of one --all-runs over every run, from its shards' manifests and reports
    (the statistics' settings are the shards')."""
    given = [flag for flag, value in (("--all-runs", args.all_runs), ("--prometheus", args.prometheus),
                                      ("--runs-dir", args.runs_dir), ("--shard", args.shard),
                                      ("--workers", args.workers is not None), ("--run", args.run),
                                      ("--grad-log", args.grad_log), ("--rle-csv", args.rle_csv)) if value]
    if given:
        raise InputError(f"--pool-shards combines finished shards' results: drop {'/'.join(given)}")
    manifests = read_manifests(args.pool_shards)
    first = check_shards(manifests)
    rows, skipped = rows_and_skipped(pooled_outcomes(manifests, first["runs_total"]))
    prepare_out(args.out, POOLED_OUTPUTS)
    pool_and_write(rows, skipped, first["runs_total"], first["source"], Settings(**first["settings"]), args.out,
                   args.quiet)
    return 0
