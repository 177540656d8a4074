"""Offline files -> one Table on a common grid (the overlap of the two timelines).

The grid follows the data: its step is the slower source's own sampling interval (unless --step), and
its phase puts every hardware sample in the middle of its row, so a sampler's jitter (tens of ms on a
1 s sampler) never pushes two samples into one row and leaves the next one empty.
"""

from __future__ import annotations

import numpy as np

from thermograd.analysis import table as T
from thermograd.analysis.align import bin_to_grid, intervals_to_grid, sample_interval_s
from thermograd.analysis.errors import InputError
from thermograd.analysis.files.readers import Samples
from thermograd.timestamps import iso_utc

# A grid this much larger than the samples it holds is a stray timestamp, not a recording.
MAX_ROWS_PER_SAMPLE = 50
MIN_ROWS_CAP = 1_000_000


def _fmt(rng: tuple[float, float]) -> str:
    return f"{iso_utc(rng[0])} .. {iso_utc(rng[1])}"


def choose_step_s(grad: Samples, rle: Samples) -> float:
    """The slower of the two sources' intervals, to two significant digits (a jittered 1 s sampler's
    median spacing is 0.999 s): on a finer grid the slower source would leave most rows empty and no
    first difference could be formed."""
    intervals = [v for v in (sample_interval_s(grad.t_s), sample_interval_s(rle.t_s)) if v and v > 0]
    step = max(intervals) if intervals else 1.0
    return max(float(f"{step:.2g}"), 0.001)


def grid_phase_s(t_s: np.ndarray, step_s: float) -> float:
    """Grid offset in [0, step) that centres the samples in their rows: circular mean of t mod step,
    plus half a step (rows take samples in (t - step, t])."""
    angle = 2 * np.pi * np.mod(t_s, step_s) / step_s
    mean = float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()))
    return float(np.mod(mean / (2 * np.pi) * step_s + step_s / 2, step_s))


def centred(t_s: np.ndarray, start_s: float, step_s: float, notes: list[str]) -> np.ndarray:
    """The trainer's timestamps moved by less than half a step so that, when it logs about once per row,
    its steps sit mid-row like the hardware samples (at a row edge, jitter would put two steps in one row
    and none in the next). Lags are resolved to the step anyway: two targets' samples may be up to one
    interval apart online too."""
    interval = sample_interval_s(t_s)
    if not interval or not 0.5 * step_s <= interval <= 2 * step_s:
        return t_s
    angle = 2 * np.pi * np.mod(t_s - start_s, step_s) / step_s
    resultant = np.hypot(np.sin(angle).mean(), np.cos(angle).mean())
    if resultant < 0.5:  # no common phase to correct
        return t_s
    phase = float(np.mod(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi) * step_s, step_s))
    shift = phase - step_s / 2  # rows take (t - step, t]: their middle sits half a step before t
    if abs(shift) < 0.05 * step_s:
        return t_s
    notes.append(f"training log timestamps moved by {shift:+.3g} s (less than half a {step_s:g} s step) to sit "
                 "mid-row: its steps come about once per row, and at a row edge jitter empties rows.")
    return t_s - shift


def throughput_on_grid(t_s: np.ndarray, tokens: np.ndarray, durations: np.ndarray, start_s: float,
                       step_s: float, n: int) -> np.ndarray:
    """Tokens per second in each row from the cumulative token count, each step's tokens spread over its
    own compute time (from its end back by its duration: a pause before it adds none). A step longer
    than a row still counts in the rows it spans; silences in the log (lost lines, a restart) are NaN,
    not zero."""
    order = np.argsort(t_s, kind="stable")
    t, tok, dur = t_s[order], np.nan_to_num(tokens[order]), durations[order]
    done = np.cumsum(tok)
    typical = float(np.nanmedian(dur)) if np.isfinite(dur).any() else 0.0
    began = t - np.where(np.isfinite(dur), dur, typical)
    knots_t = np.concatenate((began, t))
    knots_c = np.concatenate((done - tok, done))
    by_time = np.argsort(knots_t, kind="stable")
    edges = start_s - step_s + step_s * np.arange(n + 1)
    cum = np.interp(edges, knots_t[by_time], knots_c[by_time], left=np.nan, right=np.nan)
    rate = np.diff(cum) / step_s
    silent = ~np.isfinite(dur)  # the step after a silence: its gap holds no data
    silent[0] = False
    for lo, hi in zip(t[:-1][silent[1:]], began[1:][silent[1:]], strict=True):
        rate[(edges[1:] > lo) & (edges[:-1] < hi)] = np.nan  # a row partly silent is not a rate either
    return rate


def main_cluster(samples: Samples, what: str, notes: list[str]) -> Samples:
    """The samples without strays: a recording split at gaps over max(1 day, 1000 intervals) keeps its
    largest part (a clock reset or a record from another run must not stretch the grid over years)."""
    order = np.argsort(samples.t_s, kind="stable")
    t = samples.t_s[order]
    interval = sample_interval_s(t) or 1.0
    cuts = np.flatnonzero(np.diff(t) > max(86400.0, 1000 * interval)) + 1
    if cuts.size == 0:
        return samples
    bounds = np.concatenate(([0], cuts, [t.size]))
    biggest = int(np.argmax(np.diff(bounds)))
    keep = order[bounds[biggest]: bounds[biggest + 1]]
    dropped = t.size - keep.size
    notes.append(f"{what}: {dropped} record(s) far from the rest of the recording (more than a day away) "
                 f"were left out; analysed {_fmt((t[bounds[biggest]], t[bounds[biggest + 1] - 1]))}.")
    keep = np.sort(keep)
    return Samples(samples.t_s[keep], {k: v[keep] for k, v in samples.columns.items()})


def _zone_hint(gap_s: float) -> str:
    """A gap of whole hours (within 2 minutes, under a day) between two timelines is the signature of naive local
    timestamps read as UTC."""
    hours = round(gap_s / 3600)
    if 1 <= hours < 24 and abs(gap_s - 3600 * hours) < 120:
        return f" (about {hours} h apart: naive local timestamps read as UTC? give their zone with --tz)"
    return ""


def files_to_table(grad: Samples, rle: Samples, step_s: float | None = None,
                   notes: list[str] | None = None) -> T.Table:
    """Grad norm per row is the mean of the steps in (t - step, t] (like the histogram's mean),
    with the last value and the largest alongside (the loss's largest too); hardware columns take the last
    sample in the row."""
    notes = [] if notes is None else notes
    grad, rle = main_cluster(grad, "training log", notes), main_cluster(rle, "RLE CSV", notes)
    step_given = step_s is not None
    step_s = step_s or choose_step_s(grad, rle)
    g_lo, g_hi = grad.range_s
    r_lo, r_hi = rle.range_s
    lo, hi = max(g_lo, r_lo), min(g_hi, r_hi)
    if hi <= lo:
        raise InputError(f"the timelines do not overlap: training log {_fmt((g_lo, g_hi))}, "
                         f"RLE CSV {_fmt((r_lo, r_hi))}{_zone_hint(lo - hi)}")
    outside = int(np.count_nonzero((grad.t_s < lo) | (grad.t_s > hi)))
    if outside:
        notes.append(f"{outside} of the training log's {grad.t_s.size} steps fall outside the hardware recording "
                     f"({_fmt((r_lo, r_hi))}) and are not analysed: only the {hi - lo:.0f} s both cover are"
                     + _zone_hint(max(r_lo - g_lo, g_hi - r_hi)))
    for what, t in (("training log", grad.t_s), ("hardware recording", rle.t_s)):
        repeated = int(t.size - np.unique(t).size)
        if repeated:
            notes.append(f"the {what} repeats {repeated} timestamp(s) (a file appended twice, or a restarted writer?): "
                         "each row of the grid takes "
                         + ("the mean of its steps" if what == "training log" else "the last sample in it"))
    in_overlap = rle.t_s[(rle.t_s >= lo) & (rle.t_s <= hi)]
    phase = grid_phase_s(in_overlap if in_overlap.size else rle.t_s, step_s)
    start = np.floor((lo - phase) / step_s) * step_s + phase
    n = int(np.ceil((hi - start) / step_s)) + 1
    samples = grad.t_s.size + rle.t_s.size
    if n > max(MIN_ROWS_CAP, MAX_ROWS_PER_SAMPLE * samples) and step_given:
        raise InputError(f"--step {step_s:g} s makes the overlap {_fmt((lo, hi))} {n:,} rows for {samples:,} "
                         "samples: give a coarser --step (or leave it out: the slower file's own interval)")
    if n > max(MIN_ROWS_CAP, MAX_ROWS_PER_SAMPLE * samples):
        raise InputError(f"the overlap {_fmt((lo, hi))} would need {n:,} rows of {step_s:g} s for {samples:,} "
                         "samples: a stray timestamp far from the rest? (check the first and last records)")
    table = T.Table(float(start), step_s, n)
    cols = table.columns
    t_train = centred(grad.t_s, start, step_s, notes)
    cols[T.GRAD_NORM] = bin_to_grid(t_train, grad.columns["grad_norm"], start, step_s, n, how="mean")
    cols[T.GRAD_NORM_LAST] = bin_to_grid(t_train, grad.columns["grad_norm"], start, step_s, n)
    # every step's value is in the log: the spikes of the event-locked tests are found per step, not in row means
    cols[T.GRAD_NORM_MAX] = bin_to_grid(t_train, grad.columns["grad_norm"], start, step_s, n, how="max")
    cols[T.LOSS] = bin_to_grid(t_train, grad.columns["loss"], start, step_s, n)
    cols[T.LOSS_MAX] = bin_to_grid(t_train, grad.columns["loss"], start, step_s, n, how="max")
    if np.isfinite(grad.columns["perturbation"]).any():
        cols[T.PERTURBATION] = bin_to_grid(t_train, grad.columns["perturbation"], start, step_s, n)
    if "step_duration" in grad.columns:
        cols[T.STEP_DURATION] = bin_to_grid(t_train, grad.columns["step_duration"], start, step_s, n, how="mean")
    if np.isfinite(grad.columns.get("tokens", np.array([]))).any() and "step_duration" in grad.columns:
        cols[T.THROUGHPUT] = throughput_on_grid(grad.t_s, grad.columns["tokens"], grad.columns["step_duration"],
                                                start, step_s, n)
    if grad.intervals.get("pause"):
        t = start + step_s * np.arange(n)
        training = (t >= t_train.min()) & (t <= t_train.max())
        cols[T.PAUSE] = intervals_to_grid(grad.intervals["pause"], start, step_s, n, training)
        # no step completes inside a pause: those rows carry no training speed (not zero tokens/s)
        if T.THROUGHPUT in cols:
            cols[T.THROUGHPUT] = np.where(cols[T.PAUSE] == 1, np.nan, cols[T.THROUGHPUT])
    for name in (T.RLE, T.TEMPERATURE, T.POWER, T.A_LOAD, T.COLLAPSED):
        cols[name] = bin_to_grid(rle.t_s, rle.columns[name], start, step_s, n)
    for name in (T.UTILIZATION, T.SM_CLOCK, T.THROTTLED):
        if name in rle.columns:
            cols[name] = bin_to_grid(rle.t_s, rle.columns[name], start, step_s, n)
    return table
