"""`--job [RUN_ID]` against Prometheus or VictoriaMetrics: a job's ranks and GPUs on one grid, reduced by the
backend. Each query aggregates per rank (or per GPU) over each row (`sum by (rank) (increase(...[row]))`), so a
1,024-rank day comes back as 1,024 series of a few thousand points, never as every sample (fetched in slices of
time of at most a million points, each placed on the grid and dropped); the job's GPUs are selected by a join
with its own train_run_info (their uuids never spelled out in a query)."""

from __future__ import annotations

import math

import numpy as np

from thermograd.analysis.align import place_into
from thermograd.analysis.errors import InputError
from thermograd.analysis.files.job import MAX_JOB_CELLS, JobInputs
from thermograd.analysis.requests import ClientOptions, Window
from thermograd.analysis.sources.client import SCRAPE_JOBS, PromClient, matrix_to_arrays, range_window
from thermograd.analysis.sources.devices import normalise_uuid
from thermograd.analysis.sources.fetch import wait_for_newest_points
from thermograd.analysis.sources.runs import (
    choose_run,
    discover_runs,
    last_seen_s,
    no_runs_reason,
    quote_label,
)
from thermograd.analysis.stats.stragglers import GpuRows, RankRows, all_nan_is_nan
from thermograd.analysis.table import grid_rows

MAX_ROWS = 5000  # rows of a job's grid by default: a day in 18 s rows, a 10-minute job in its scrape interval
SLICE_POINTS = 1_000_000  # points (series x rows) per range query answer: ~250 MB decoded at most
THROTTLE_REASONS = "sw_power_cap|hw_slowdown|sw_thermal|hw_thermal|hw_power_brake"


def _row_step_s(span_s: float, scrape_s: float, wanted_s: float | None, ranks: int) -> float:
    """The grid's row: --step, else the scrape interval, widened to whole seconds until the job fits MAX_ROWS
    rows and MAX_JOB_CELLS cells."""
    if wanted_s:
        return wanted_s
    rows = min(MAX_ROWS, MAX_JOB_CELLS // max(ranks, 1))
    return max(scrape_s, float(math.ceil(span_s / rows)))


def _per_rank(client: PromClient, expr: str, start_s: float, end_s: float, step_s: float, n: int,
              label: str = "rank", series: int = 1) -> dict[str, np.ndarray]:
    """Each series of `expr` (one per `label` value) on the grid, fetched in slices of time of at most
    SLICE_POINTS points in all (`series` of them at once): a 1,024-rank day's answer decoded whole is over 1 GB
    of Python objects, and a long job's query scanning every sample at once can pass the backend's time limit
    (VictoriaMetrics: -search.maxQueryDuration, 30 s). Each slice is placed on the grid and dropped."""
    out: dict[str, np.ndarray] = {}
    rows = max(1, SLICE_POINTS // max(series, 1))
    last = grid_rows(start_s, end_s, step_s) - 1
    for first in range(0, last + 1, rows):
        lo, hi = start_s + first * step_s, start_s + min(first + rows - 1, last) * step_s
        by_key: dict[str, list[dict]] = {}
        for found in client.query_range({"job": expr}, lo, hi, step_s)["job"]:
            by_key.setdefault(found["metric"].get(label, ""), []).append(found)
        for key, parts in by_key.items():
            t_s, values = matrix_to_arrays(parts)
            place_into(out.setdefault(key, np.full(n, np.nan)), t_s, values, start_s, step_s)
    return out


def load_job_prometheus(store: ClientOptions, window: Window, run_id: str | None, step_s: float | None
                        ) -> tuple[JobInputs, dict]:
    """The job `run_id` (None: the most recent in `window`) from a store: every rank's and GPU's series on one
    grid of `step_s` (None: the scrape interval, widened to fit MAX_ROWS), and the report's source section."""
    client = store.client()
    start_s, end_s = window.bounds()
    runs = discover_runs(client, start_s, end_s)
    run = choose_run(runs, run_id, "" if runs else no_runs_reason(client.targets(), client.url))
    run.last_seen_s = last_seen_s(client, run, end_s)
    job_start, job_end = run.start_time_s, run.last_seen_s
    span_s = job_end - job_start
    scrape_s = client.job_scrape_interval_s(SCRAPE_JOBS) or client.scrape_interval_s() or 1.0
    run_sel = f"run_id={quote_label(run.run_id)}"
    infos = client.instant(f"last_over_time(train_run_info{{{run_sel}}}{range_window(span_s + scrape_s)})", job_end,
                           "the job's ranks")
    gpu_of: dict[str, str] = {}
    for labels in (s["metric"] for s in infos):
        if labels.get("gpu_uuid") or labels.get("rank", "") not in gpu_of:
            gpu_of[labels.get("rank", "")] = labels.get("gpu_uuid", "")
    if len(gpu_of) < 2:
        raise InputError(f"run {run.run_id!r} has {len(gpu_of)} rank(s) in train_run_info: a job's analysis compares "
                         "ranks (give --job the run id its ranks share)")
    step_s = _row_step_s(span_s, scrape_s, step_s, len(gpu_of))
    grid_start = math.floor((job_start - step_s) / step_s) * step_s
    n = int(math.floor((job_end - grid_start) / step_s)) + 1
    window = range_window(max(step_s, 2 * scrape_s))

    def mean_per_step(base: str) -> str:
        return (f"sum by (rank) (increase({base}_sum{{{run_sel}}}{window})) / "
                f"sum by (rank) (increase({base}_count{{{run_sel}}}{window}) > 0)")

    held: list[str] = []  # a store that holds back its newest points (VictoriaMetrics's latency offset): waited for
    fetch_end = wait_for_newest_points(client, grid_start, job_end, step_s, held)
    width = len(gpu_of)  # series per answer: one per rank, or per GPU
    compute = _per_rank(client, mean_per_step("train_step_compute_seconds"), grid_start, fetch_end, step_s, n,
                        series=width)
    if not compute:
        raise InputError(f"run {run.run_id!r}: no train_step_compute_seconds (each rank's compute time: "
                         "TrainingMetrics.watch(model), which both callbacks call)")
    tokens = _per_rank(client, f"sum by (rank) (rate(train_tokens_total{{{run_sel}}}{window})) * {step_s:g}",
                       grid_start, fetch_end, step_s, n, series=width)
    step_rows = _per_rank(client, f"quantile(0.5, {mean_per_step('train_step_duration_seconds')})", grid_start,
                          fetch_end, step_s, n, label="")
    # The job's GPUs, joined server-side to its own train_run_info (the uuid as the trainer spells it).
    job_gpus = (f"max by (uuid) (label_replace(train_run_info{{{run_sel},gpu_uuid!=\"\"}}, \"uuid\", \"$1\", "
                f"\"gpu_uuid\", \"(.+)\"))")

    def per_gpu(inner: str) -> str:
        return f"max by (uuid) ({inner}) * on (uuid) group_left () {job_gpus}"

    throttled = _per_rank(client, per_gpu(f"max_over_time(rle_throttle_active{{reason=~\"{THROTTLE_REASONS}\"}}"
                                          f"{range_window(step_s)})"), grid_start, fetch_end, step_s, n, label="uuid",
                          series=width)
    clock = _per_rank(client, per_gpu(f"avg_over_time(rle_sm_clock_hertz{range_window(step_s)})"), grid_start,
                      fetch_end, step_s, n, label="uuid", series=width)
    maximum = {s["metric"].get("uuid", ""): float(s["value"][1]) for s in client.instant(
        f"max by (uuid) (max_over_time(rle_sm_clock_max_hertz{range_window(span_s + scrape_s)}))", job_end,
        "the GPUs' maximum clocks")}
    temperature = _per_rank(client, per_gpu(f"avg_over_time(rle_temperature_celsius{range_window(step_s)})"),
                            grid_start, fetch_end, step_s, n, label="uuid", series=width)
    devices = {normalise_uuid(s["metric"].get("uuid", "")): s["metric"] for s in client.instant(
        f"last_over_time(rle_device_info{range_window(span_s + scrape_s)})", job_end, "the GPUs' exporters")}
    absent = np.full(n, np.nan)
    ranks, gpus, notes = [], {}, held
    provenance: dict[str, str] = {}
    for rank in sorted(gpu_of, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r)):
        uuid = gpu_of[rank]
        labels = devices.get(normalise_uuid(uuid), {})
        node = labels.get("instance", "").rsplit(":", 1)[0]
        ranks.append(RankRows(int(rank) if rank.isdigit() else len(ranks), uuid, node, compute.get(rank, absent),
                              tokens.get(rank, absent)))
        if uuid and uuid in throttled:
            peak = maximum.get(uuid)
            with all_nan_is_nan():
                peak = peak if peak else float(np.nanmax(clock.get(uuid, absent))) if uuid in clock else None
            ratio = clock.get(uuid, absent) / peak if peak else absent
            gpus[uuid] = GpuRows(uuid, throttled[uuid], ratio, temperature.get(uuid, absent))
            for name in ("backend", "heat_source"):
                if labels.get(name):
                    provenance.setdefault(name, labels[name])
                    if provenance[name] != labels[name]:
                        provenance[name] = "each GPU its own (see rle_device_info's heat_source)"
        elif uuid:
            notes.append(f"rank {rank}'s GPU {uuid} has no rle_throttle_active series in the window (is its "
                         "thermograd-exporter scraped?)")
    emulation = {s["metric"].get("emulation", "") for s in infos} - {""}
    if emulation:
        provenance["emulation"] = sorted(emulation)[0]
    step = step_rows.get("", absent)
    inputs = JobInputs(grid_start, step_s, n, ranks, gpus, step, None, notes,
                       {"queries": list(dict.fromkeys(q["query"] for q in client.queries))}, provenance)
    return inputs, {"source": "prometheus", "url": client.url, "run_id": run.run_id}
