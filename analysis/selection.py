"""Which run, which window, which device: chosen from the backend's own series (PromQL only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.errors import InputError
from analysis.promql import PromClient, matrix_to_arrays
from analysis.timeparse import iso_utc

RUN_POINTS = 1000  # resolution of the run-discovery scan over the look-back period


@dataclass
class Run:
    run_id: str
    start_time_s: float
    first_seen_s: float
    last_seen_s: float


@dataclass
class Selection:
    run_id: str
    rank: str
    start_s: float
    end_s: float
    uuid: str
    device: str
    gpu_uuid: str
    notes: list[str] = field(default_factory=list)


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


def run_identity(client: PromClient, run_id: str, rank: str | None, end_s: float,
                 span_s: float) -> tuple[str, str]:
    """(rank, gpu_uuid) of the run from train_run_info; the lowest rank unless --rank is given."""
    expr = f"last_over_time(train_run_info{{run_id={quote_label(run_id)}}}[{int(np.ceil(span_s))}s])"
    series = client.instant(expr, end_s, "run identity")
    ranks = {s["metric"].get("rank", ""): s["metric"].get("gpu_uuid", "") for s in series}
    if not ranks:
        raise InputError(f"run {run_id!r} has no train_run_info series (PromQL: {expr})")
    if rank is None:
        rank = min(ranks, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))
    elif rank not in ranks:
        raise InputError(f"run {run_id!r} has no rank {rank!r}; ranks present: {', '.join(sorted(ranks))}")
    return rank, ranks[rank]


def choose_device(client: PromClient, run_id: str, rank: str, wanted: str | None, end_s: float,
                  span_s: float) -> tuple[str, str, list[str]]:
    """(uuid, device label, notes): --device, else the PromQL join on gpu_uuid, else the one GPU."""
    rng = f"[{int(np.ceil(span_s))}s]"
    notes: list[str] = []
    if wanted:
        sel = f"last_over_time(rle_device_info{rng}) and on (uuid) (last_over_time(rle_device_info{{uuid={quote_label(wanted)}}}{rng}) or last_over_time(rle_device_info{{device={quote_label(wanted)}}}{rng}))"
        found = client.instant(sel, end_s, "device from --device")
        if not found:
            raise InputError(f"device {wanted!r} not found as a uuid or device label of rle_device_info "
                             f"(PromQL: {sel})")
        notes.append(f"device chosen with --device {wanted}")
    else:
        join = (f"last_over_time(rle_device_info{rng}) * on (uuid) group_left () label_replace("
                f"max by (gpu_uuid) (last_over_time(train_run_info{{run_id={quote_label(run_id)},rank={quote_label(rank)}}}{rng})),"
                f' "uuid", "$1", "gpu_uuid", "(.+)")')
        found = client.instant(join, end_s, "device by gpu_uuid join")
        if not found:
            gpus = client.instant(f'last_over_time(rle_device_info{{kind="gpu"}}{rng})', end_s, "single GPU fallback")
            uuids = {s["metric"].get("uuid", "") for s in gpus}
            if len(uuids) != 1:
                raise InputError(f"cannot tell which device run {run_id!r} used: its gpu_uuid matches no "
                                 f"rle_device_info series and there are {len(uuids)} GPUs; pass --device UUID")
            found = gpus
            notes.append("the run's gpu_uuid is empty or unmatched; using the only GPU device "
                         f"({found[0]['metric'].get('uuid', '')})")
    uuids = sorted({s["metric"].get("uuid", "") for s in found})
    if len(uuids) != 1:
        raise InputError(f"device selection is ambiguous: uuids {', '.join(uuids)}; pass --device UUID")
    device = found[0]["metric"].get("device", "")
    return uuids[0], device, notes
