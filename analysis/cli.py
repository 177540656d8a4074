"""thermograd-analysis's command line: the flags (build_parser) turned into a request and handed to one run's
analysis (run.py), many runs' (multirun.py) or a job's (jobrun.py); the results printed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from thermograd.analysis import table as T
from thermograd.analysis.arguments import job_request, run_request
from thermograd.analysis.errors import InputError
from thermograd.analysis.multirun import pool_shards, run_all
from thermograd.analysis.run import analyse_run
from thermograd.analysis.sources.runs import HARDWARE_SOURCES
from thermograd.commandline import OneLineParser, UsageError, internal_error
from thermograd.exporter.engine import DEFAULT_GPU_TEMP_LIMIT_C

DESCRIPTION = "Gather a run's series (Prometheus or files), run every test, write the report and figures."


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="thermograd-analysis", description=DESCRIPTION)
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
                            f"{T.DEFAULT_MAX_ROWS:,}: 30 days and an hour at 1 s, under 1 GB); a longer run from a "
                            "backend is analysed on the smallest whole multiple of the step that fits")
    stats.add_argument("--max-lag", default="30s", help="lagged cross-correlation range +/- (default 30s)")
    stats.add_argument("--warmup", default="30s",
                       help="leave the run's first part (its start-up transient) out of the tests: this long, "
                            "at most a tenth of the run, and longer (up to a third of the run and 2 min) while the "
                            "gradient norm, loss, power and utilisation are still settling (default 30s; 0 keeps "
                            "the start-up; stretches without training steps are left out either way)")
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


def run(args: argparse.Namespace) -> int:
    """One run: the flags into a request, its analysis, the summary printed."""
    report = analyse_run(run_request(args))
    if not args.quiet:
        for line in report.hardware_lines:
            print(f"hardware: {line}")
        print(report.summary())
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

            return run_job(job_request(args), args.quiet)
        if args.pool_shards:
            return pool_shards(args)
        many_runs = args.all_runs or args.runs_dir or args.shard or args.workers is not None
        return run_all(args) if many_runs else run(args)
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
