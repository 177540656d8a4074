"""Command line: gather a Table (Prometheus or files), run every test, write the report and figures."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from thermograd.analysis import table as T
from thermograd.analysis.arguments import SCRAPE_JOBS, client_from_args, duration_flag, settings_from_args
from thermograd.analysis.catalog import DIRECTIONS
from thermograd.analysis.derived import engine_columns
from thermograd.analysis.devices import Choice
from thermograd.analysis.errors import InputError
from thermograd.analysis.fetch import REQUIRED, fetch_table, series_exprs
from thermograd.analysis.load_files import load_grad_log, load_rle_csv
from thermograd.analysis.multirun import pool_shards, run_all
from thermograd.analysis.offline import files_to_table
from thermograd.analysis.pipeline import analyse
from thermograd.analysis.plots import coupling_png, crosscorr_png
from thermograd.analysis.promql import PromClient, store_note
from thermograd.analysis.provenance import Provenance, no_path_verdict
from thermograd.analysis.repeats import collection_interval_s, grid_step_s
from thermograd.analysis.report import LAG_NOTE, series_summary, versions, window, write_report
from thermograd.analysis.selection import (
    HARDWARE_SOURCES,
    change_series,
    choose_hardware,
    choose_run,
    discover_runs,
    hardware_down,
    last_seen_s,
    no_runs_reason,
    power_limit_w,
    run_identity,
    run_sample_interval_s,
)
from thermograd.analysis.timeparse import get_tz, parse_instant_s
from thermograd.analysis.verdict import QUESTIONS, overall, summary_text
from thermograd.commandline import OneLineParser, UsageError, internal_error
from thermograd.exporter.engine import DEFAULT_GPU_TEMP_LIMIT_C

DEFAULT_STEP_S = 15.0  # Prometheus's own default scrape interval, used when the backend hides its config


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="thermograd-analysis", description=__doc__)
    src = p.add_argument_group("Prometheus (or Thanos, Mimir, VictoriaMetrics)")
    src.add_argument("--prometheus", metavar="URL", help="base URL of a Prometheus-compatible HTTP API")
    src.add_argument("--run", help="run_id (default: the most recent run by train_run_start_time_seconds)")
    src.add_argument("--rank", help="rank of the run to analyse (default: the lowest)")
    src.add_argument("--device", help="device uuid (any case, with or without GPU-) or device label (default: the "
                                      "run's gpu_uuid, or its trainer's pod with dcgm-exporter's pod labels)")
    src.add_argument("--hardware-source", choices=HARDWARE_SOURCES, default="auto",
                     help="where the GPU's series come from: thermograd (this exporter's rle_*), dcgm "
                          "(dcgm-exporter's DCGM_FI_*), nvidia-smi (nvidia_gpu_exporter's nvidia_smi_*) or auto "
                          "(default: the first of these that holds the run's GPU)")
    src.add_argument("--start", help="window start (Unix s or RFC 3339; default: the run's first sample)")
    src.add_argument("--end", help="window end (default: the run's last sample)")
    src.add_argument("--lookback", default="30d", help="how far back to look for runs (default 30d)")
    src.add_argument("--bearer-token", help="Authorization: Bearer TOKEN")
    src.add_argument("--bearer-token-file", help="read the bearer token from this file")
    src.add_argument("--basic-auth", metavar="USER:PASSWORD", help="HTTP basic auth")
    src.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="extra HTTP header, repeatable (e.g. 'X-Scope-OrgID: t1')")
    src.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    src.add_argument("--retries", type=int, default=4, help="retries on connection errors and 5xx (default 4)")
    rle = p.add_argument_group("RLE for dcgm/nvidia-smi sources (computed here by the exporter's engine)")
    rle.add_argument("--rated-power", type=float, metavar="W",
                     help="rated power for A_load (default: the source's power limit, e.g. "
                          "nvidia_smi_enforced_power_limit_watts or DCGM_FI_DEV_POWER_MGMT_LIMIT)")
    rle.add_argument("--temp-limit", type=float, metavar="C",
                     help=f"temperature limit for T_sustain (default {DEFAULT_GPU_TEMP_LIMIT_C:g}, the exporter's)")
    files = p.add_argument_group("offline files")
    files.add_argument("--grad-log", type=Path, help="grad_norm_log.json (seed) or the trainer's JSON Lines log")
    files.add_argument("--rle-csv", type=Path, help="RLE-lab CSV")
    files.add_argument("--tz", help="time zone of naive ISO timestamps (default UTC)")
    stats = p.add_argument_group("statistics")
    stats.add_argument("--step", help="grid step (default: the targets' scrape interval; for files the slower "
                                      "source's own sampling interval)")
    stats.add_argument("--max-rows", type=int, default=T.DEFAULT_MAX_ROWS,
                       help="most grid rows held in memory, about 370 bytes each (default "
                            f"{T.DEFAULT_MAX_ROWS:,}: 30 days and an hour at 1 s, under 1 GB); a longer run from a backend is "
                            "analysed on the smallest whole multiple of the step that fits")
    stats.add_argument("--max-lag", default="30s", help="lagged cross-correlation range +/- (default 30s)")
    stats.add_argument("--warmup", default="30s",
                       help="leave the run's first part (its start-up transient) out of the tests: this long, "
                            "at most a tenth of the run (default 30s; 0 keeps the start-up; stretches without "
                            "training steps are left out either way)")
    stats.add_argument("--surrogates", type=int, default=1000, help="surrogates per test (default 1000)")
    stats.add_argument("--spike-z", type=float, default=3.0, help="robust z of a grad-norm spike (default 3)")
    stats.add_argument("--event-window", default="5s", help="coincidence window for spikes/collapses (default 5s)")
    stats.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default 0.05)")
    stats.add_argument("--min-effect", type=float, default=0.1,
                       help="smallest |r| called coupling; a significant smaller one is 'negligible' (default 0.1)")
    stats.add_argument("--seed", type=int, default=0, help="random seed for surrogates (default 0)")
    job = p.add_argument_group("a job of many ranks (its stragglers, their cause and cost: docs/analysis.md)")
    job.add_argument("--job", nargs="?", const="", metavar="RUN_ID",
                     help="with --prometheus: every rank of the job RUN_ID (default: the most recent)")
    job.add_argument("--job-dir", type=Path, metavar="DIR",
                     help="offline: rank-<k>/steps.jsonl + rank-<k>/hardware.csv for each rank, or the folder "
                     "thermograd run wrote")
    many = p.add_argument_group("many runs")
    many.add_argument("--all-runs", action="store_true",
                      help="every run in --lookback (or --start/--end) or in --runs-dir, a report each, and a "
                           "random-effects meta-analysis of each pair across them")
    many.add_argument("--runs-dir", type=Path, help="with --all-runs: one subfolder per run, each with one "
                                                    "training log (*.jsonl/*.json) and one RLE CSV")
    many.add_argument("--workers", type=int, metavar="N",
                      help="with --all-runs: runs analysed at once, each in its own process holding one run in "
                           "memory (default: the CPUs this process may use; 1: one after another in this process)")
    many.add_argument("--shard", metavar="K/N",
                      help="with --all-runs: only the K-th of N shards of the runs (a run's shard follows from its "
                           "id alone), their reports and DIR/shard-K-of-N.json; combine them with --pool-shards")
    many.add_argument("--pool-shards", nargs="+", type=Path, metavar="DIR",
                      help="combine every shard's results in these folders into runs.csv, meta_analysis.json and "
                           "forest.png under --out, as one --all-runs over all the runs writes them")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no summary on stdout")
    return p


def check_hardware_flags(args: argparse.Namespace) -> None:
    if args.rated_power is not None and not (math.isfinite(args.rated_power) and args.rated_power > 0):
        raise InputError(f"--rated-power {args.rated_power:g}: must be a finite number of watts > 0")
    if args.temp_limit is not None and not (math.isfinite(args.temp_limit) and -50 <= args.temp_limit <= 150):
        raise InputError(f"--temp-limit {args.temp_limit:g}: must be a temperature in -50..150 C")


def within_row_budget(start_s: float, end_s: float, step_s: float, step_source: str, args: argparse.Namespace,
                      notes: list[str]) -> tuple[float, str]:
    """The step, widened to a whole multiple when the window's grid would pass --max-rows (said in a note); a
    --step the user chose is never widened behind their back: too many rows for it is an error."""
    wider_s = T.step_within_rows(start_s, end_s, step_s, args.max_rows)
    if wider_s == step_s:
        return step_s, step_source
    rows = T.grid_rows(T.aligned_start_s(start_s, step_s), end_s, step_s)
    if args.step:
        raise InputError(f"--step {args.step} makes the window {rows:,} rows, more than "
                         f"--max-rows {args.max_rows:,} (about {T.PEAK_BYTES_PER_ROW} bytes of memory each): give a "
                         "coarser --step or a larger --max-rows")
    notes.append(f"the window ({(end_s - start_s) / 86400:.2f} days) is {rows:,} rows of {step_s:g} s, more than "
                 f"--max-rows {args.max_rows:,} (about {T.PEAK_BYTES_PER_ROW} bytes of memory each), so it is analysed "
                 f"on a {wider_s:g} s grid (levels averaged and flags their max over each step; a lag is then a "
                 f"multiple of {wider_s:g} s). A larger --max-rows keeps the finer grid, with the memory it takes.")
    return wider_s, f"{step_source}, widened to {wider_s:g} s by --max-rows"


def from_prometheus(args: argparse.Namespace) -> tuple[T.Table, dict]:
    client = client_from_args(args)
    job_scrape_s = client.job_scrape_interval_s(SCRAPE_JOBS)
    scrape_s = job_scrape_s or client.scrape_interval_s()
    notes: list[str] = []
    if args.step:
        step_s, step_source = duration_flag("--step", args.step), "--step"
    elif job_scrape_s:
        step_s, step_source = job_scrape_s, f"scrape interval of the {'/'.join(SCRAPE_JOBS)} targets (/api/v1/targets)"
    elif scrape_s:
        step_s, step_source = scrape_s, "global scrape_interval from /api/v1/status/config"
    else:  # no config, no targets (VictoriaMetrics, Mimir): the run's own samples tell, once it is known
        step_s, step_source = None, ""
    end_s = parse_instant_s(args.end) if args.end else time.time()
    start_s = parse_instant_s(args.start) if args.start else None
    if start_s is not None and start_s >= end_s:
        raise InputError("--start must be before --end")
    runs = discover_runs(client, start_s if start_s is not None else end_s - duration_flag("--lookback", args.lookback), end_s)
    run = choose_run(runs, args.run, "" if runs else no_runs_reason(client.targets(), client.url))
    run.last_seen_s = last_seen_s(client, run, end_s)
    if step_s is None:
        sampled_s = run_sample_interval_s(client, run)
        step_s, step_source = ((sampled_s, "median spacing of the run's raw samples") if sampled_s
                               else (DEFAULT_STEP_S, "default (no scrape interval served, too few samples)"))
        notes.append("the backend serves no scrape interval (empty or absent /api/v1/targets and "
                     f"/api/v1/status/config): the step is the {step_source}, {step_s:g} s")
    if not scrape_s:  # not Prometheus (VictoriaMetrics, Mimir, Thanos): what its query semantics change, and how met
        notes.append(store_note(client.store_flags(), step_s))
    scrape_s = scrape_s or step_s
    if start_s is None:
        start_s = max(run.first_seen_s, run.start_time_s - step_s)
    if not args.end:
        end_s = min(end_s, run.last_seen_s)
    span_s = end_s - start_s + step_s
    ident = run_identity(client, run.run_id, args.rank, end_s, span_s)
    try:
        choice = choose_hardware(client, ident, args.device, args.hardware_source, end_s, span_s)
    except InputError as exc:  # an exporter that is down is the cause to name first
        down = hardware_down(client.targets())
        raise InputError(f"{down} ({exc})" if down else str(exc)) from None
    notes += choice.notes
    interval_s, repeats, hardware_lines = source_interval(client, choice, args, start_s, end_s, scrape_s, step_s,
                                                          notes)
    if repeats and not args.step and repeats > step_s:
        step_s, step_source = repeats, f"collection interval of hardware source {choice.source.name}"
    # How often the source takes a new reading: measured, else one per step as chosen so far (the user's --step
    # for a source too quiet to measure), so only a step the row budget widens blends several.
    readings_s, chosen_step_s = interval_s or step_s, step_s
    step_s, step_source = within_row_budget(start_s, end_s, step_s, step_source, args, notes)
    if step_s != chosen_step_s:
        hardware_lines = [f"{line}; widened to a {step_s:g} s grid by --max-rows (readings averaged per row)"
                          for line in hardware_lines]
    notes += hardware_lines
    start_s = T.aligned_start_s(start_s, step_s)  # evaluation timestamps on whole steps
    span_s = end_s - start_s + step_s
    exprs = series_exprs(run.run_id, ident.rank, choice.device.uuid, step_s, scrape_s, choice.source,
                         choice.device.uuid_label, source_readings_s=readings_s)
    table, fetch_notes = fetch_table(client, exprs, start_s, end_s, step_s, REQUIRED)
    notes += fetch_notes
    provenance = Provenance(choice.device.backend or choice.source.name, choice.device.heat_source,
                            choice.device.uuid, ident.emulation)
    hardware = {"source": choice.source.name, "requested": args.hardware_source, "joined_by": choice.joined_by,
                "uuid_label": choice.device.uuid_label, "collection_interval_s": interval_s,
                "repeats_between_scrapes": repeats is not None, **provenance.as_report()}
    if choice.source.engine:
        hardware["rle"] = engine_rle(client, args, choice, table, exprs, end_s, span_s, notes)
        hardware_lines.append(notes[-1])
    else:
        hardware["rle"] = {"computed_by": "exporter (its rle_* series)"}
        if args.rated_power is not None or args.temp_limit is not None:
            notes.append("--rated-power/--temp-limit ignored: thermograd's exporter computed the RLE itself")
    meta = {
        "inputs": {"source": "prometheus", "url": client.url, "run_id": run.run_id, "rank": ident.rank,
                   "gpu_uuid": ident.gpu_uuid, "device": {"uuid": choice.device.uuid, "device": choice.device.device},
                   "hardware": hardware, "runs_found": sorted(runs), "extra_headers": sorted(client.headers),
                   "auth": "bearer" if client.bearer_token else ("basic" if client.basic_auth else None)},
        "step": {"seconds": step_s, "source": step_source, "scrape_interval_s": scrape_s},
        "queries": client.queries, "notes": notes, "backend": {"backend": client.build_version()},
        "hardware_lines": hardware_lines, "provenance": provenance,
    }
    return table, meta


def source_interval(client: PromClient, choice: Choice, args: argparse.Namespace, start_s: float, end_s: float,
                    scrape_s: float, step_s: float, notes: list[str]) -> tuple[float | None, float | None, list[str]]:
    """(the source's collection interval, the grid step it needs when it repeats values between scrapes,
    the lines to print, which the caller adds to the notes once the grid is final).

    A source that collects less often than it is scraped (dcgm-exporter: every 30 s by default) repeats each
    value for several scrapes. Those repeats are not observations: on a grid of scrapes they would count one
    reading many times (inflating n and the effective sample size), fake persistence at every lag and put a
    step at each collection. So the grid step becomes the source's real interval: each row holds one real
    reading, the trainer's series are aggregated over the same step (histogram means are exact over it), and
    the RLE engine runs at that interval. --step, when given, is kept as the user's choice, with a note."""
    interval_s = collection_interval_s(change_series(client, choice, start_s, end_s))
    repeat_step_s = grid_step_s(interval_s, scrape_s)
    name = choice.source.name
    if repeat_step_s is None:
        if interval_s is None and choice.source.engine:
            notes.append(f"hardware source {name}: too few value changes in its raw samples to tell how often it "
                         f"collects (its default: every {choice.source.default_interval_s:g} s); if it repeats "
                         "values between scrapes, pass --step with its collection interval")
        return interval_s, None, []
    said = (f"hardware source {name} repeats its values between scrapes: it collects every {interval_s:g} s "
            f"(from when its raw values change), Prometheus scrapes every {scrape_s:g} s")
    if args.step and step_s < repeat_step_s:
        said += f"; --step {step_s:g} s is kept, so its values repeat within the grid"
    elif repeat_step_s > step_s:
        said += f"; the analysis uses its real interval, a {repeat_step_s:g} s grid, one reading per row"
    return interval_s, repeat_step_s, [said]


def engine_rle(client: PromClient, args: argparse.Namespace, choice: Choice, table: T.Table, exprs: dict[str, str],
               end_s: float, span_s: float, notes: list[str]) -> dict:
    """RLE, A_load and collapses for a source that has none: the exporter's engine on the table's temperature,
    power and utilisation (added to the table). Returns what was used, for the report; adds one note.

    Without a rated power (dcgm-exporter's default counters have no power limit) or without utilisation or
    power the RLE cannot be computed; the coupling tests of temperature, power and the training speed do not
    need it, so the analysis goes on without the RLE columns (those pairs are insufficient data) and says so."""
    source, uuid = choice.source.name, choice.device.uuid
    missing = [column for column in (T.UTILIZATION, T.POWER) if not table.has(column)]
    if args.rated_power is not None:
        rated_w, rated_from = args.rated_power, "--rated-power"
    else:
        rated_w, rated_from, limit_notes = power_limit_w(client, choice, end_s, span_s)
        notes += limit_notes
    if missing or not math.isfinite(rated_w):
        offered = " or ".join(choice.source.power_limits) or "no power-limit series in its metric set"
        why = (f"{source} serves no {' or '.join(missing)} for {uuid} in the window (PromQL: "
               f"{'; '.join(exprs[c] for c in missing)})" if missing else
               f"{source} reports no power limit for {uuid} in the window ({offered}); pass --rated-power W")
        notes.append(f"RLE, A_load and collapses not computed: {why}. The other tests run without them.")
        return {"computed_by": None, "reason": why}
    temp_limit_c = DEFAULT_GPU_TEMP_LIMIT_C if args.temp_limit is None else args.temp_limit
    absent = np.full(table.n, np.nan)
    done = engine_columns(table.t_unix_s, table.columns[T.UTILIZATION], table.columns[T.POWER],
                          table.columns.get(T.TEMPERATURE, absent), rated_w, temp_limit_c, table.step_s)
    table.columns.update(done.columns)
    used = {"computed_by": "analysis (exporter.engine.RleEngine, the exporter's engine)", "rated_power_w": rated_w,
            "rated_power_from": rated_from, "temp_limit_c": temp_limit_c,
            "temp_limit_from": "--temp-limit" if args.temp_limit is not None else "the exporter's default",
            "interval_s": table.step_s, "collapse_onsets": done.onsets, "segments": done.segments}
    notes.append(f"RLE, A_load and collapses of {source} computed here with the exporter's engine from its "
                 f"temperature, power and utilisation: rated power {rated_w:g} W ({rated_from}), temperature limit "
                 f"{temp_limit_c:g} C ({used['temp_limit_from']}), one sample every {table.step_s:g} s; "
                 f"{done.onsets} collapse onset(s)")
    return used


def from_files(args: argparse.Namespace) -> tuple[T.Table, dict]:
    if not (args.grad_log and args.rle_csv):
        raise InputError("give --prometheus URL, or both --grad-log FILE and --rle-csv FILE")
    tz = get_tz(args.tz)
    notes: list[str] = []
    grad = load_grad_log(args.grad_log, tz, notes)
    rle, device = load_rle_csv(args.rle_csv, args.device, tz, notes)
    step_s = duration_flag("--step", args.step) if args.step else None
    provenance = Provenance(rle.info.get("backend"), rle.info.get("heat_source", ""), rle.info.get("uuid", device),
                            grad.info.get("emulation", ""))
    if provenance.backend is None:
        notes.append(f"{args.rle_csv} has no backend column, so it does not say what it measured (a real device, "
                     "a simulation or a replay): the verdicts assume a physical device")
    table = files_to_table(grad, rle, step_s, notes)
    meta = {
        "provenance": provenance,
        "inputs": {"source": "files", "grad_log": str(args.grad_log), "rle_csv": str(args.rle_csv),
                   "device": device, "naive_timestamps_tz": args.tz or "UTC",
                   "hardware": {"uuid": rle.info.get("uuid"), "model": rle.info.get("model"),
                                **provenance.as_report()}},
        "step": {"seconds": table.step_s,
                 "source": "--step" if args.step else "the slower source's own sampling interval (median spacing)",
                 "grid_start_unix": table.start_s},
        "queries": [], "notes": notes,
    }
    return table, meta


def run(args: argparse.Namespace) -> int:
    cfg = settings_from_args(args)  # bad flags fail before anything is created or fetched
    check_hardware_flags(args)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {args.out}: {exc}") from None
    t0 = time.perf_counter()
    table, meta = from_prometheus(args) if args.prometheus else from_files(args)
    if not table.has(T.GRAD_NORM):
        where = meta["inputs"].get("grad_log") or f"run {meta['inputs'].get('run_id')} on {meta['inputs'].get('url')}"
        raise InputError(f"{where}: no usable gradient norm (every value is null, NaN or missing)")
    absent = [name for name in (T.POWER, T.RLE, T.TEMPERATURE, T.UTILIZATION, T.LOSS) if not table.has(name)]
    if absent:
        meta["notes"].append(f"no {', '.join(absent)} in the window (a device without a power reading has no RLE "
                             "either): the pairs that need them are insufficient data; the rest is analysed")
    table = table.trimmed([T.GRAD_NORM, T.LOSS])
    t_fetch = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = analyse(table, cfg)
    t_stats = time.perf_counter() - t0
    used_s = (results.get("warmup") or {}).get("seconds")
    if used_s is not None and cfg.warmup_s > 0 and used_s + table.step_s < cfg.warmup_s:
        meta["notes"].append(f"--warmup {args.warmup} was overridden: {used_s:g} s of start-up were left out, not "
                             f"{cfg.warmup_s:g} s, because the start-up left out is at most a tenth of the run "
                             f"({table.n * table.step_s:g} s here)")
    report = {
        "inputs": meta["inputs"], "window": window(table.start_s, table.step_s, table.n), "step": meta["step"],
        "queries": meta["queries"], "versions": {**versions(), **meta.get("backend", {})},
        "notes": [*meta["notes"], *results.pop("notes"), LAG_NOTE],
        "settings": vars(cfg), "series": series_summary(table.columns), **results,
    }
    report["verdicts"] = {d: overall(results["pairs"], table.step_s, d, results["spike_responses"])
                          for d in DIRECTIONS}
    provenance: Provenance = meta["provenance"]
    for direction in DIRECTIONS:  # never a coupling verdict for a path the run did not have
        if (reason := provenance.no_path(direction)) is not None:
            report["verdicts"][direction] = no_path_verdict(direction, QUESTIONS.get(direction, direction), reason)
    if (description := provenance.first_line()) is not None:
        report["inputs"]["hardware"]["description"] = description
    report["verdict"] = report["verdicts"]["optimizer_to_hardware"]
    if results["perturbation"] is None:
        del report["perturbation"]
    t0 = time.perf_counter()
    verdict = report["verdict"]
    title = (f"run {meta['inputs'].get('run_id', args.grad_log)}: optimizer -> hardware {verdict['strength']}; "
             f"hardware -> training {report['verdicts']['hardware_to_training']['strength']}")
    coupling_png(table, args.out / "coupling.png", title,
                 "Prometheus evaluation timestamps" if args.prometheus else f"a {table.step_s:g} s grid")
    crosscorr_png(results["pairs"], args.out / "crosscorr.png")
    # fetch = reading and aligning the input (HTTP + JSON for Prometheus), statistics = every test
    report["timing_s"] = {"fetch_align": t_fetch, "statistics": t_stats, "figures": time.perf_counter() - t0}
    write_report(report, args.out)
    if not args.quiet:
        for line in meta.get("hardware_lines", []):
            print(f"hardware: {line}")
        print(summary_text(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"analysis: error: {exc} (see --help)", file=sys.stderr)
        return 2
    try:
        if args.job is not None or args.job_dir is not None:
            from thermograd.analysis.jobrun import run_job

            return run_job(args)
        if args.pool_shards:
            return pool_shards(args)
        many_runs = args.all_runs or args.runs_dir or args.shard or args.workers is not None
        return run_all(args, run) if many_runs else run(args)
    except InputError as exc:
        print(f"analysis: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): the files are written already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("analysis: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for the user; THERMOGRAD_DEBUG=1 shows it
        return internal_error("analysis", exc)
