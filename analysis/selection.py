"""Which run, which window, which device: the run and its window from the backend's own series (PromQL), the
run <-> GPU join over each hardware source's label sets (matched in Python, devices.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermograd.analysis.catalog import SOURCES, Source
from thermograd.analysis.devices import (
    TRAINER_NAMESPACE_LABELS,
    TRAINER_POD_LABELS,
    Choice,
    Device,
    RunIdentity,
    choose,
    first_label,
    matches,
)
from thermograd.analysis.errors import InputError
from thermograd.analysis.promql import PromClient, matrix_to_arrays
from thermograd.analysis.timeparse import iso_utc

RUN_POINTS = 1000  # resolution of the run-discovery scan over the look-back period


@dataclass
class Run:
    run_id: str
    start_time_s: float
    first_seen_s: float
    last_seen_s: float


def quote_label(value: str) -> str:
    """Quote a label value for PromQL."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def discover_runs(client: PromClient, start_s: float, end_s: float) -> dict[str, Run]:
    """Every run with samples in [start, end]: its start time and where its series were seen.

    One range query of max_over_time over a coarse step finds runs however short they were
    (an instant query would miss anything older than the 5-minute staleness window).
    """
    step = max((end_s - start_s) / RUN_POINTS, 1.0)
    expr = f"max by (run_id) (max_over_time(train_run_start_time_seconds[{int(np.ceil(step))}s]))"
    results = client.query_range({"runs": expr}, start_s, end_s, step)["runs"]
    by_run: dict[str, list[dict]] = {}
    for series in results:
        by_run.setdefault(series["metric"].get("run_id", ""), []).append(series)
    runs = {}
    for run_id, series in by_run.items():
        t_s, vals = matrix_to_arrays(series)
        if t_s.size:
            runs[run_id] = Run(run_id, float(np.nanmin(vals)), float(t_s.min() - step), float(t_s.max()))
    return runs


SAMPLE_SPACING_WINDOW_S = 600.0  # the run's first ten minutes show its scrape interval


def run_sample_interval_s(client: PromClient, run: Run) -> float | None:
    """The scrape interval of the run's trainer and of the exporters, from their raw samples' spacing."""
    at_s = min(run.last_seen_s, run.start_time_s + SAMPLE_SPACING_WINDOW_S)
    selectors = (f"train_run_info{{run_id={quote_label(run.run_id)}}}", "rle_device_info")
    return client.sample_interval_s(selectors, at_s, max(at_s - run.first_seen_s, 1.0))


def choose_run(runs: dict[str, Run], wanted: str | None) -> Run:
    if not runs:
        raise InputError("no training runs found (no train_run_start_time_seconds series in the look-back "
                         "window; widen it with --lookback or give --start/--end)")
    if wanted is None:
        return max(runs.values(), key=lambda r: r.start_time_s)
    if wanted not in runs:
        listing = ", ".join(f"{r.run_id} (started {iso_utc(r.start_time_s)})"
                            for r in sorted(runs.values(), key=lambda r: r.start_time_s))
        raise InputError(f"run {wanted!r} not found; runs present: {listing}")
    return runs[wanted]


def run_identity(client: PromClient, run_id: str, rank: str | None, end_s: float, span_s: float) -> RunIdentity:
    """The run's rank (the lowest unless --rank is given), its gpu_uuid and its trainer's pod/namespace target
    labels, from train_run_info."""
    expr = f"last_over_time(train_run_info{{run_id={quote_label(run_id)}}}[{int(np.ceil(span_s))}s])"
    series = client.instant(expr, end_s, "run identity")
    ranks: dict[str, dict[str, str]] = {}
    for labels in (s["metric"] for s in series):
        # train_run_info's gpu_uuid is empty until the trainer has loaded its model: a non-empty one wins
        seen = ranks.get(labels.get("rank", ""))
        if seen is None or (labels.get("gpu_uuid") and not seen.get("gpu_uuid")):
            ranks[labels.get("rank", "")] = labels
    if not ranks:
        raise InputError(f"run {run_id!r} has no train_run_info series (PromQL: {expr})")
    if rank is None:
        rank = min(ranks, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))
    elif rank not in ranks:
        raise InputError(f"run {run_id!r} has no rank {rank!r}; ranks present: {', '.join(sorted(ranks))}")
    labels = ranks[rank]
    pod, namespace = (first_label(labels, names) for names in (TRAINER_POD_LABELS, TRAINER_NAMESPACE_LABELS))
    return RunIdentity(run_id, rank, labels.get("gpu_uuid", ""), pod[1] if pod else "",
                       namespace[1] if namespace else "")


HARDWARE_SOURCES = ("auto", *SOURCES)  # --hardware-source; auto tries SOURCES in their order


def choose_hardware(client: PromClient, run: RunIdentity, wanted: str | None, source_flag: str, end_s: float,
                    span_s: float) -> Choice:
    """The hardware source and device of the run: each candidate source's identity series over the window
    (one instant query each, in order, stopping at the first that holds the run's GPU), matched in Python."""
    names = list(SOURCES) if source_flag == "auto" else [source_flag]
    candidates: list[tuple[Source, list[dict[str, str]]]] = []
    for name in names:
        source = SOURCES[name]
        purpose = "device by gpu_uuid join" + ("" if name == "thermograd" else f" ({name})")
        found = client.instant(f"last_over_time({source.identity}[{int(np.ceil(span_s))}s])", end_s, purpose)
        candidates.append((source, [series["metric"] for series in found]))
        if matches(source, candidates[-1][1], run, wanted)[0]:
            break
    return choose(candidates, run, wanted)


def device_selector(device: Device) -> str:
    return f"{device.uuid_label}={quote_label(device.uuid)}"


def power_limit_w(client: PromClient, choice: Choice, end_s: float, span_s: float) -> tuple[float, str, list[str]]:
    """The rated power the source reports for the device: its first power-limit metric with data over the
    window (the highest value if it changed), that metric's name and notes; (nan, "", []) when it has none."""
    rng = f"[{int(np.ceil(span_s))}s]"
    for metric in choice.source.power_limits:
        sel = f"{metric}{{{device_selector(choice.device)}}}{rng}"
        values = [float(s["value"][1]) for agg in ("min", "max")
                  for s in client.instant(f"{agg}({agg}_over_time({sel}))", end_s, f"rated power ({metric})")]
        if values and all(np.isfinite(values)) and max(values) > 0:
            notes = ([f"{metric} changed during the window ({min(values):g}-{max(values):g} W): the RLE engine "
                      f"used the highest"] if min(values) != max(values) else [])
            return max(values), metric, notes
    return float("nan"), "", []


INTERVAL_WINDOW_S = 600.0  # a source's collection interval is read from the window's first ten minutes


def change_series(client: PromClient, choice: Choice, start_s: float, end_s: float) -> list[tuple[np.ndarray,
                                                                                                  np.ndarray]]:
    """Raw samples (time, value) of the device's power, energy, utilisation and temperature series over the
    window's first ten minutes: where their values change shows how often the source really collects."""
    at_s = min(end_s, start_s + INTERVAL_WINDOW_S)
    out = []
    for column in ("power", "energy_power", "utilization", "temperature"):
        row = choice.source.row(column)
        if row is None:
            continue
        selector = f"{row.metrics[0]}{{{device_selector(choice.device)}}}"
        out += [(t_s, v) for _, t_s, v in client.raw_samples(selector, at_s, max(at_s - start_s, 1.0),
                                                              f"collection interval ({row.metrics[0]})")]
    return out
