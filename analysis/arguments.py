"""The command line's flags turned into what the analysis uses: a Prometheus client (URL, auth, headers,
timeouts), checked durations and the statistics' settings. Shared by the single-run, --all-runs and --job
paths; every bad value is one line naming the flag (InputError, exit 2)."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.errors import InputError
from thermograd.analysis.requests import (
    ClientOptions,
    FileRun,
    Grid,
    JobRequest,
    RunRequest,
    StoreRun,
    Window,
)
from thermograd.analysis.timeparse import parse_duration_s, parse_instant_s


def duration_flag(flag: str, text: str, allow_zero: bool = False) -> float:
    """A duration flag's value in seconds: finite and positive (or zero where that means 'off')."""
    value = parse_duration_s(text)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{flag} {text!r}: must be a finite duration {'>= 0' if allow_zero else '> 0'}")
    return value


def _headers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InputError(f"--header {item!r} is not 'NAME: VALUE'")
        out[name.strip()] = value.strip()
    return out


def client_options(args: argparse.Namespace) -> ClientOptions:
    """The backend the flags describe: URL, bearer token (or its file), basic auth, headers, timeout."""
    token = args.bearer_token
    if args.bearer_token_file:
        try:
            token = Path(args.bearer_token_file).read_text().strip()
        except OSError as exc:
            raise InputError(f"--bearer-token-file: {exc}") from None
    basic = None
    if args.basic_auth:
        user, sep, password = args.basic_auth.partition(":")
        if not sep:
            raise InputError("--basic-auth must be USER:PASSWORD")
        basic = (user, password)
    return ClientOptions(args.prometheus, timeout_s=args.timeout, retries=max(args.retries, 0), bearer_token=token,
                         basic_auth=basic, headers=_headers(args.header), progress=sys.stderr.isatty())


def window_from_args(args: argparse.Namespace) -> Window:
    """--start, --end and --lookback, checked (the start before the end, now where no --end is given) before
    anything is fetched: by the same Window.bounds that every query window comes from."""
    window = Window(parse_instant_s(args.start) if args.start else None,
                    parse_instant_s(args.end) if args.end else None, duration_flag("--lookback", args.lookback))
    window.bounds()
    return window


def check_hardware_flags(args: argparse.Namespace) -> None:
    if args.rated_power is not None and not (math.isfinite(args.rated_power) and args.rated_power > 0):
        raise InputError(f"--rated-power {args.rated_power:g}: must be a finite number of watts > 0")
    if args.temp_limit is not None and not (math.isfinite(args.temp_limit) and -50 <= args.temp_limit <= 150):
        raise InputError(f"--temp-limit {args.temp_limit:g}: must be a temperature in -50..150 C")


def run_request(args: argparse.Namespace) -> RunRequest:
    """One run's analysis as the flags ask for it; every bad value fails here, before anything is created or
    fetched."""
    settings = settings_from_args(args)
    check_hardware_flags(args)
    source: StoreRun | FileRun
    if args.prometheus:
        source = store_run(args)
    elif args.grad_log and args.rle_csv:
        source = FileRun(args.grad_log, args.rle_csv, args.device, args.tz)
    else:
        raise InputError("give --prometheus URL, or both --grad-log FILE and --rle-csv FILE")
    return RunRequest(source, settings, args.out, grid_from_args(args), args.warmup)


def store_run(args: argparse.Namespace) -> StoreRun:
    """The run (--run, --rank), GPU (--device, --hardware-source) and window the flags name in a store."""
    return StoreRun(client_options(args), window_from_args(args), args.run, args.rank, args.device,
                    args.hardware_source, args.rated_power, args.temp_limit)


def grid_from_args(args: argparse.Namespace) -> Grid:
    return Grid(duration_flag("--step", args.step) if args.step else None, args.step, args.max_rows)


def job_request(args: argparse.Namespace) -> JobRequest:
    """A job's analysis as the flags ask for it (--job-dir DIR, or --job [RUN_ID] with --prometheus)."""
    step_s = duration_flag("--step", args.step) if args.step else None
    if args.job_dir is not None:
        return JobRequest(args.out, args.alpha, step_s, job_dir=args.job_dir, tz=args.tz)
    if not args.prometheus:
        raise InputError("--job needs --prometheus URL (or analyse files with --job-dir DIR)")
    return JobRequest(args.out, args.alpha, step_s, store=client_options(args), window=window_from_args(args),
                      run_id=args.job or None)


MIN_MAX_ROWS, MAX_MAX_ROWS = 1_000, 1_000_000_000


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Every statistics flag checked (one line naming the flag, exit 2) and gathered."""
    if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
        raise InputError(f"--alpha {args.alpha:g}: must be between 0 and 1 (exclusive)")
    if not (math.isfinite(args.min_effect) and 0 <= args.min_effect < 1):
        raise InputError(f"--min-effect {args.min_effect:g}: must be in [0, 1)")
    if not (math.isfinite(args.spike_z) and args.spike_z > 0):
        raise InputError(f"--spike-z {args.spike_z:g}: must be a finite number > 0")
    if args.surrogates < 100 or args.surrogates > 1_000_000:
        raise InputError(f"--surrogates {args.surrogates}: must be between 100 and 1000000")
    if not MIN_MAX_ROWS <= args.max_rows <= MAX_MAX_ROWS:
        raise InputError(f"--max-rows {args.max_rows}: must be between {MIN_MAX_ROWS} and {MAX_MAX_ROWS}")
    return Settings(max_lag_s=duration_flag("--max-lag", args.max_lag),
                    warmup_s=duration_flag("--warmup", args.warmup, allow_zero=True),
                    n_surrogates=args.surrogates, spike_z=args.spike_z,
                    event_window_s=duration_flag("--event-window", args.event_window),
                    alpha=args.alpha, min_effect=args.min_effect, seed=args.seed)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def workers_flag(value: int | None) -> int:
    """--workers: processes analysing runs at once; when not given, the CPUs this process may run on (its
    affinity: a container's cpuset, taskset), not the host's count."""
    workers = usable_cpus() if value is None else value
    if workers < 1:
        raise InputError(f"--workers {value}: must be 1 or more (1 analyses the runs one after another in this "
                         "process)")
    return workers


def shard_flag(text: str) -> tuple[int, int]:
    """--shard K/N as (K, N): the K-th of N shards, 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text, flags=re.ASCII)
    if match and 1 <= int(match[1]) <= int(match[2]):
        return int(match[1]), int(match[2])
    raise InputError(f"--shard {text!r}: must be K/N with 1 <= K <= N (e.g. --shard 1/4 ... --shard 4/4)")
