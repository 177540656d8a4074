"""`--job-dir DIR`: a job's ranks and GPUs from files, on one grid (the inputs of stats/stragglers.py).

Two layouts are read: one folder per rank, `DIR/rank-<k>/` holding that rank's step log (`steps*.jsonl`, whose
lines carry the rank's `gpu_uuid`) and its GPU's recording (`*.csv`, thermograd-exporter's `--record` format); or
the folder `thermograd run` writes (`steps.jsonl`, `steps.rank<k>.jsonl` and one `hardware.csv` holding every
GPU). Each rank is joined to its GPU by uuid; a recording may hold several GPUs (one per node).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path

import numpy as np

from thermograd.analysis.align import bin_to_grid
from thermograd.analysis.errors import InputError
from thermograd.analysis.files.readers import Samples, load_grad_log, load_hardware_devices
from thermograd.analysis.sources.devices import normalise_uuid
from thermograd.analysis.stats.stragglers import MIXED_STEP, GpuRows, RankRows, StepMatrix, all_nan_is_nan
from thermograd.timestamps import iso_utc

MAX_JOB_CELLS = 50_000_000  # ranks x rows held at once (8 bytes each, a few arrays): a few hundred MB
MAX_STEP_CELLS = 20_000_000  # ranks x steps for the step-by-step cost; past it, the cost is counted on rows


@dataclass
class JobInputs:
    start_s: float
    step_s: float
    n: int
    ranks: list[RankRows]
    gpus: dict[str, GpuRows]
    step: np.ndarray  # the job's wall step time per row: the median over ranks of compute + wait
    steps: StepMatrix | None = None  # the job step by step (the steps every rank logged)
    notes: list[str] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)  # backend, heat_source, emulation of the job


def find_job_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(step logs, hardware recordings) of a job folder, in either layout."""
    if not folder.is_dir():
        raise InputError(f"--job-dir {folder}: not a directory")
    rank_dirs = sorted(p for p in folder.glob("rank-*") if p.is_dir())
    roots = rank_dirs or [folder]
    logs = sorted({f for root in roots for f in root.glob("steps*.jsonl") if f.is_file()})
    csvs = sorted({f for root in roots for f in root.glob("*.csv") if f.is_file()})
    if not logs:
        raise InputError(f"--job-dir {folder}: no step logs (expected rank-<k>/steps.jsonl for each rank, or the "
                         "steps*.jsonl that thermograd run writes)")
    if not csvs:
        raise InputError(f"--job-dir {folder}: no hardware recordings (expected rank-<k>/hardware.csv, recorded "
                         "with thermograd-exporter --record, or hardware.csv)")
    return logs, csvs


def _folder_rank(path: Path) -> int | None:
    """k of the rank-<k>/ folder a step log is in (None in the layout thermograd run writes)."""
    name = path.parent.name
    return int(name[5:]) if name.startswith("rank-") and name[5:].isdigit() else None


def log_rank(path: Path, log: Samples, default: int) -> int:
    """A step log's rank: the `rank` its lines carry, else its rank-<k>/ folder's k, else `default`."""
    named = log.info.get("rank")
    if named is None:
        folder = _folder_rank(path)
        return default if folder is None else folder
    try:
        return int(named)
    except ValueError:
        raise InputError(f"{path}: its steps' rank is {named!r}, not a whole number") from None


def check_ranks(paths: list[Path], logs: list[Samples]) -> None:
    """Each rank once, and in its own folder: a log whose lines name another rank than its rank-<k>/ folder (a
    copied file) would put one rank's steps in two rows and leave another out."""
    seen: dict[int, Path] = {}
    for i, (path, log) in enumerate(zip(paths, logs, strict=True)):
        rank, folder = log_rank(path, log, i), _folder_rank(path)
        if folder is not None and rank != folder:
            raise InputError(f"{path}: its steps say rank {rank}, but it is in folder rank-{folder}: move it to "
                             f"rank-{rank}/ or fix the log")
        if rank in seen:
            raise InputError(f"rank {rank} has two step logs ({seen[rank]} and {path}): keep one per rank")
        seen[rank] = path


def recorded_devices(paths: list[Path], tz: tzinfo, notes: list[str]) -> dict[str, Samples]:
    """Every GPU of the recordings, by normalised uuid. The same GPU in two recordings of the same host is one
    (each rank's folder may hold its node's recording); a uuid recorded on two hosts cannot be joined to a rank
    (the step logs name a GPU by uuid alone): refused, rather than one host's readings silently taken for the
    other's."""
    devices: dict[str, Samples] = {}
    where: dict[str, Path] = {}
    for path in paths:
        for uuid, samples in load_hardware_devices(path, tz, notes).items():
            key = normalise_uuid(uuid)
            if key in devices and devices[key].info.get("host", "") != samples.info.get("host", ""):
                raise InputError(f"GPU {uuid} is recorded on two hosts ({where[key]}: "
                                 f"{devices[key].info.get('host') or 'no host'}; {path}: "
                                 f"{samples.info.get('host') or 'no host'}), and the step logs name a rank's GPU by "
                                 "uuid alone: record each GPU under its own uuid (simulated exporters on several "
                                 "nodes all start at sim-0), or analyse each node's ranks apart")
            if key not in devices:
                devices[key], where[key] = samples, path
    return devices


def check_overlap(paths: list[Path], logs: list[Samples]) -> None:
    """The ranks of one job step together: logs whose times do not overlap at all are not one job (a rank's
    log from another day, a clock off by hours)."""
    spans = [(float(log.t_s.min()), float(log.t_s.max())) for log in logs]
    if min(hi for _, hi in spans) < max(lo for lo, _ in spans):
        ranges = "; ".join(f"{path}: {iso_utc(lo)} to {iso_utc(hi)}" for path, (lo, hi) in zip(paths, spans,
                                                                                                 strict=True))
        raise InputError(f"the ranks' step logs do not overlap in time, so they are not one job's ({ranges}): "
                         "analyse the ranks of one job together (or fix a rank's clock or --tz)")


def choose_step_s(logs: list[Samples]) -> float:
    """Rows long enough that a rank's row usually holds a few steps: twice the median step time, at least 1 s,
    to two significant digits."""
    durations = np.concatenate([s.columns["compute_s"] + np.nan_to_num(s.columns["wait_s"]) for s in logs])
    durations = durations[np.isfinite(durations) & (durations > 0)]
    typical = float(np.median(durations)) if durations.size else 1.0
    return max(1.0, float(f"{2 * typical:.2g}"))


def load_job(folder: Path, tz: tzinfo, step_s: float | None = None) -> JobInputs:
    """Every rank's step log and every GPU's recording under `folder`, on one grid."""
    log_paths, csv_paths = find_job_files(folder)
    notes: list[str] = []
    logs = [load_grad_log(path, tz, notes) for path in log_paths]
    for path, log in zip(log_paths, logs, strict=True):
        if not np.isfinite(log.columns["compute_s"]).any():
            raise InputError(f"{path}: no compute_s in its steps: a job's analysis needs each rank's compute time "
                             "(TrainingMetrics.watch(model), which both callbacks call; thermograd >= this version)")
    check_ranks(log_paths, logs)
    devices = recorded_devices(csv_paths, tz, notes)
    check_overlap(log_paths, logs)
    step_s = step_s or choose_step_s(logs)
    start = min(float(log.t_s.min()) for log in logs)
    end = max(float(log.t_s.max()) for log in logs)
    n = int(math.ceil((end - start) / step_s)) + 1
    if n * len(logs) > MAX_JOB_CELLS:
        raise InputError(f"{len(logs)} ranks x {n:,} rows of {step_s:g} s exceed {MAX_JOB_CELLS:,} cells: give a "
                         "coarser --step")
    start = math.floor(start / step_s) * step_s
    ranks, steps, seen_uuids = [], [], set()
    provenance: dict[str, str] = {}
    for path, log in zip(log_paths, logs, strict=True):
        rank = log_rank(path, log, len(ranks))
        uuid = log.info.get("gpu_uuid", "")
        compute = bin_to_grid(log.t_s, log.columns["compute_s"], start, step_s, n, how="mean")
        tokens = bin_to_grid(log.t_s, np.nan_to_num(log.columns["tokens"]), start, step_s, n, how="sum")
        wall = log.columns["compute_s"] + np.nan_to_num(log.columns["wait_s"])
        steps.append(bin_to_grid(log.t_s, wall, start, step_s, n, how="mean"))
        device = devices.get(normalise_uuid(uuid)) if uuid else None
        node = device.info.get("host", "") if device is not None else ""
        ranks.append(RankRows(rank, uuid, node, compute, tokens))
        seen_uuids.add(normalise_uuid(uuid))
        if log.info.get("emulation"):
            provenance["emulation"] = log.info["emulation"]
        if not uuid:
            notes.append(f"{path}: its steps name no gpu_uuid: rank {rank}'s GPU is unknown")
        elif device is None:
            notes.append(f"rank {rank}'s GPU {uuid} is in no recording under {folder}")
    if devices and not any(r.gpu_uuid and normalise_uuid(r.gpu_uuid) in devices for r in ranks):
        raise InputError(f"--job-dir {folder}: no rank's GPU is in its recordings (the ranks name "
                         f"{', '.join(sorted({r.gpu_uuid or 'none' for r in ranks})[:4])}; the recordings hold "
                         f"{', '.join(sorted(devices)[:4])}): record each rank's GPU (thermograd-exporter --record) "
                         "into its rank-<k>/ folder")
    gpus = {}
    for key, samples in devices.items():
        if key not in seen_uuids:
            continue
        uuid = next(r.gpu_uuid for r in ranks if normalise_uuid(r.gpu_uuid) == key)
        gpus[uuid] = _gpu_rows(uuid, samples, start, step_s, n)
        for name in ("backend", "heat_source"):
            if samples.info.get(name):
                provenance.setdefault(name, samples.info[name])
                if provenance[name] != samples.info[name]:
                    provenance[name] = "each GPU its own (see the recordings' heat_source)"
    with all_nan_is_nan():
        step = np.nanmedian(np.vstack(steps), axis=0)
    order = sorted(range(len(ranks)), key=lambda i: ranks[i].rank)
    by_step = step_matrix([logs[i] for i in order], [devices.get(normalise_uuid(ranks[i].gpu_uuid)) for i in order])
    if by_step is None:
        notes.append("the ranks' steps could not be matched one to one (or are too many): the tokens lost are counted "
                     "on the grid's rows")
    return JobInputs(start, step_s, n, [ranks[i] for i in order], gpus, step, by_step, notes,
                     {"step_logs": [str(p) for p in log_paths], "recordings": [str(p) for p in csv_paths]},
                     provenance)


def step_states(t_s: np.ndarray, flags: np.ndarray, start_s: np.ndarray, end_s: np.ndarray) -> np.ndarray:
    """A GPU's throttle state over each step [start, end]: 1 or 0 where every reading from the last one at or
    before its start to the first one at or after its end says so, 0.5 where they differ (MIXED_STEP: the state
    changed during the step or between readings around it), NaN where no reading says anything.

    A sampler reads the state every second or so while steps take a fraction of that: a state read only at a
    step's end puts the steps around each change of state on the wrong side, which biased the tokens lost low by
    0.01-0.2 % in jobs of 32 and 64 ranks, more than their CI's width (bench/bench_job.py)."""
    order = np.argsort(t_s, kind="stable")
    t, on = t_s[order], np.asarray(flags, dtype=float)[order]
    known = np.isfinite(on)
    t, on = t[known], on[known] > 0.5
    out = np.full(start_s.size, np.nan)
    if t.size == 0:
        return out
    first = np.clip(np.searchsorted(t, start_s, side="right") - 1, 0, t.size - 1)
    last = np.clip(np.searchsorted(t, end_s, side="left"), 0, t.size - 1)
    last = np.maximum(last, first)
    hot = np.concatenate(([0], np.cumsum(on)))
    count, readings = hot[last + 1] - hot[first], last - first + 1
    out = np.where(count == readings, 1.0, np.where(count == 0, 0.0, MIXED_STEP))
    return np.where(np.isfinite(start_s) & np.isfinite(end_s), out, np.nan)


def step_matrix(logs: list[Samples], devices: list[Samples | None]) -> StepMatrix | None:
    """The steps every rank logged (matched by step number), with each rank's GPU's throttle state over the step
    (step_states); None when too few steps match or the matrix would be too large."""
    numbers = [log.columns["step"] for log in logs]
    if any(not np.isfinite(n).all() for n in numbers):
        return None
    common = numbers[0]
    for other in numbers[1:]:
        common = np.intersect1d(common, other)
    if common.size < 10 or common.size * len(logs) > MAX_STEP_CELLS:
        return None
    compute = np.empty((len(logs), common.size))
    wall = np.empty((len(logs), common.size))
    throttled = np.full((len(logs), common.size), np.nan)
    tokens = np.zeros(common.size)
    for r, (log, device) in enumerate(zip(logs, devices, strict=True)):
        _, first = np.unique(log.columns["step"], return_index=True)  # a step logged twice (a restart): the first
        index = first[np.searchsorted(log.columns["step"][first], common)]
        compute[r] = log.columns["compute_s"][index]
        wall[r] = compute[r] + np.nan_to_num(log.columns["wait_s"][index])
        tokens += np.nan_to_num(log.columns["tokens"][index])
        flags = device.columns.get("throttled") if device is not None else None
        if flags is not None and device.t_s.size:
            throttled[r] = step_states(device.t_s, flags, log.t_s[index] - wall[r], log.t_s[index])
    with all_nan_is_nan():
        step_s = np.nanmedian(wall, axis=0)
    return StepMatrix(compute, step_s, tokens, throttled)


def _gpu_rows(uuid: str, samples: Samples, start: float, step_s: float, n: int) -> GpuRows:
    cols = samples.columns
    absent = np.full(samples.t_s.size, np.nan)
    clock, maximum = cols.get("sm_clock", absent), cols.get("sm_clock_max", absent)
    if not np.isfinite(maximum).any() and np.isfinite(clock).any():
        with all_nan_is_nan():
            maximum = np.full_like(clock, np.nanmax(clock))  # the highest clock seen: the deficit from there
    ratio = np.where(maximum > 0, clock / maximum, np.nan)
    return GpuRows(uuid,
                   throttled=bin_to_grid(samples.t_s, cols.get("throttled", absent), start, step_s, n, how="max"),
                   clock_ratio=bin_to_grid(samples.t_s, ratio, start, step_s, n, how="mean"),
                   temperature=bin_to_grid(samples.t_s, cols.get("temperature", absent), start, step_s, n, how="mean"))
