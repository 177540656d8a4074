"""Which run, which window, which device: the run and its window from the backend's own series (PromQL), the
run <-> GPU join over each hardware source's label sets (matched in Python, devices.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermograd.analysis.catalog import SOURCES, Source
from thermograd.analysis.errors import InputError
from thermograd.analysis.sources.client import PromClient
from thermograd.analysis.sources.devices import (
    TRAINER_NAMESPACE_LABELS,
    TRAINER_POD_LABELS,
    Choice,
    Device,
    RunIdentity,
    choose,
    first_label,
    matches,
)
from thermograd.timestamps import iso_utc

LAST_SEEN_PRECISION_S = 1.0  # how close to its last sample a run's window ends (then trimmed to the data)


@dataclass
class Run:
    run_id: str
    start_time_s: float
    first_seen_s: float
    last_seen_s: float | None = None  # found for the run analysed (last_seen_s()), not for every run listed


def quote_label(value: str) -> str:
    """Quote a label value for PromQL."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def window(seconds: float) -> str:
    """A PromQL range of whole seconds covering `seconds`."""
    from thermograd.analysis.sources.client import range_window

    return range_window(float(np.ceil(seconds)))


def discover_runs(client: PromClient, start_s: float, end_s: float) -> dict[str, Run]:
    """Every run with samples in [start, end], with its start time (train_run_start_time_seconds's value).

    One instant query whose window is written out (`max_over_time(...[end - start])` at `end`), not a range query:
    a store that aligns range queries to their step or caches them (VictoriaMetrics with its default flags, the
    query frontends of Thanos and Mimir) can move a coarse step's last point to before a short, recent run, so a
    run that has just ended would not be found. An instant query is not aligned and finds any run however short."""
    expr = f"max by (run_id) (max_over_time(train_run_start_time_seconds{window(end_s - start_s)}))"
    runs = {}
    for series in client.instant(expr, end_s, "runs in the look-back window"):
        try:
            start_time_s = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        run_id = series["metric"].get("run_id", "")
        if np.isfinite(start_time_s):
            runs[run_id] = Run(run_id, start_time_s, start_time_s)
    return runs


def last_seen_s(client: PromClient, run: Run, end_s: float, precision_s: float = LAST_SEEN_PRECISION_S) -> float:
    """The time of the run's last sample at or before `end`, rounded up to a whole multiple of `precision_s` (and
    at most `end`), by bisection over those multiples with instant queries whose windows are written out to the
    millisecond: are there samples in (t, end]? No range query, so no store's alignment or caching of range steps
    can move it, and the answer depends on the samples alone, not on when the analysis runs (a window rounded
    from `end` would end a step later or earlier from one run of the analysis to the next: a store that carries a
    rate past a series' end, as VictoriaMetrics does, would then give another window). About
    log2((end - start) / precision) queries."""
    from thermograd.analysis.sources.client import range_window

    sel = f"train_run_start_time_seconds{{run_id={quote_label(run.run_id)}}}"
    end_s = round(end_s, 3)  # the query's time is sent in milliseconds

    def any_after(k: int) -> bool:
        t_s = k * precision_s
        if t_s >= end_s:
            return False
        return bool(client.instant(f"count_over_time({sel}{range_window(end_s - t_s)})", end_s,
                                   "the run's last sample"))

    low = int(np.floor(min(run.start_time_s, end_s) / precision_s)) - 1  # samples after low; none after high
    high = int(np.ceil(end_s / precision_s))
    if not any_after(low):
        return end_s  # none since its start time (a clock far off): keep the whole window
    while high - low > 1:
        middle = (low + high) // 2
        if any_after(middle):
            low = middle
        else:
            high = middle
    return min(high * precision_s, end_s)


SAMPLE_SPACING_WINDOW_S = 600.0  # the run's first ten minutes show its scrape interval


def run_sample_interval_s(client: PromClient, run: Run) -> float | None:
    """The scrape interval of the run's trainer and of the exporters, from their raw samples' spacing."""
    at_s = min(run.last_seen_s, run.start_time_s + SAMPLE_SPACING_WINDOW_S)
    selectors = (f"train_run_info{{run_id={quote_label(run.run_id)}}}", "rle_device_info")
    return client.sample_interval_s(selectors, at_s, max(at_s - run.first_seen_s, 1.0))


def _target_list(targets: list[dict]) -> str:
    return ", ".join(f"{t['job']} {t['url']} ({t['health'] or 'unknown'}"
                     + (f": {t['last_error']}" if t["last_error"] else "") + ")" for t in targets[:6])


def _is_trainer(target: dict) -> bool:
    return "train" in target["job"].lower()


def no_runs_reason(targets: list[dict] | None, url: str) -> str:
    """Why no run was found, from what Prometheus scrapes (None: the backend does not list its targets)."""
    window = ("no train_run_start_time_seconds series in the look-back window; widen it with --lookback or give "
              "--start/--end")
    if targets is None:
        return f"no training runs found ({window}; is your training job's /metrics scraped?)"
    trainers = [t for t in targets if _is_trainer(t)]
    if not trainers:
        return (f"no training runs found: Prometheus at {url} scrapes no trainer (its targets: "
                f"{_target_list(targets) or 'none'}). Add your job's /metrics endpoint (TrainingMetrics serves "
                "http://127.0.0.1:9843/metrics by default) to a scrape job named trainer, as "
                "prometheus/prometheus-local.yml does, or let `thermograd run --prometheus` do it all")
    if all(t["health"] != "up" for t in trainers):
        return (f"no training runs found: every trainer target is down now ({_target_list(trainers)}) and none "
                f"left a run in the window ({window}): is the job running, and on that port?")
    return f"no training runs found: the trainer targets are up ({_target_list(trainers)}) but {window}"


def hardware_down(targets: list[dict] | None) -> str | None:
    """The hardware exporters' targets that are down, said with their last scrape error (None: none down)."""
    down = [t for t in targets or [] if not _is_trainer(t) and t["job"] != "prometheus" and t["health"] != "up"]
    if not down:
        return None
    return (f"the hardware exporter's target is down ({_target_list(down)}): is thermograd-exporter (or your GPU "
            "exporter) running there?")


def choose_run(runs: dict[str, Run], wanted: str | None, no_runs: str = "") -> Run:
    if not runs:
        raise InputError(no_runs or "no training runs found (no train_run_start_time_seconds series in the "
                         "look-back window; widen it with --lookback or give --start/--end)")
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
                       namespace[1] if namespace else "", labels.get("emulation", ""))


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
