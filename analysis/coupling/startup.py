"""Which rows are a run's start-up (and a resume's): left out of every test, found from the series themselves.

A run's start is one regime change, not coupling: in the same second or two the gradient norm plunges and the
device leaves idle, and on a two-minute demo run that alone made Pearson on differences read r = -0.77 (grad
norm vs power) between series that were uncorrelated for the other 100 s. A fixed 30 s (at most a tenth of the
stretch) covers a start-up that lasts seconds; a run that starts from an idle device takes longer: power and
temperature still rise, and the gradient norm still falls, a minute in, faster than the tests' 5-minute
high-pass can follow, and in a 3-minute run that leaked into lag-0 hits. So the start-up also lasts while the
series have not settled (`settled_rows`), at most a third of the stretch and SETTLE_MAX_S.
"""

from __future__ import annotations

import numpy as np

from thermograd.analysis import table as T
from thermograd.analysis.stats.preprocess import (
    LONG_GAP_S,
    first_difference,
    rolling_mean,
    rows_for,
    segment_bounds,
)

SETTLE_SERIES = (T.GRAD_NORM, T.LOSS, T.POWER, T.UTILIZATION)
DEVICE_SETTLE_SERIES = (T.POWER, T.UTILIZATION)  # with a spike train's own series: its responses' start-up
SETTLE_WINDOW_S = 5.0   # the level and the noise scale "now": a running mean over +/- this
SETTLE_AHEAD_S = 30.0   # the level's bend: running means now, this and twice this later
SETTLE_RATIO = 1.5      # noise scale above this times the later part's: not settled
SETTLE_Z = 3.0          # a bend this many of its later-part spreads from its typical value: not settled
SETTLE_MAX_FRACTION = 1 / 3
SETTLE_MAX_S = 120.0    # slower than this is a trend, the high-pass's job
WIND_DOWN_S = 5.0
# The job is away where its training series is missing this long (and for ABSENT_STEPS of its own steps): a
# restart's or checkpoint's seconds with the device idling. 10 s: the shortest restart the calibration's
# restart null draws is 20 s.
ABSENT_S = 10.0
ABSENT_STEPS = 5


def _steps(seconds: float, step_s: float) -> int:
    return max(1, int(round(seconds / step_s)))


def _first_quiet(loud: np.ndarray, span: int) -> int:
    """The first row t with loud[t: t + span] all False (len(loud) if none)."""
    count = np.concatenate(([0], np.cumsum(loud)))
    quiet = np.flatnonzero(count[span:] == count[:-span])
    return int(quiet[0]) if quiet.size else loud.size


def settled_rows(x: np.ndarray, step_s: float) -> int:
    """Rows from the start of `x` (one stretch of a run) until it has settled: from there on, for at least a
    settle window, (1) its local noise scale (running mean absolute difference, trend included) is within
    SETTLE_RATIO of the scale typical of the stretch's later part, and (2) its level bends no more than its noise
    lets a bend show: the second difference of its running means now, SETTLE_AHEAD_S and twice that later is
    within SETTLE_Z spreads of that statistic's own over the stretch's later part. (1) sees early training's
    volatility and a device leaving idle in steps; (2) sees a level still curving towards its working value,
    which a line over the tests' 5-minute high-pass cannot follow. A straight trend has no second difference,
    and a slow curve (a device warming over many minutes, a gradient norm decaying over several) almost none.
    0 for a series too short or flat to tell."""
    x = np.asarray(x, dtype=float)
    d = first_difference(x)
    finite = np.isfinite(d)
    half, ahead = rows_for(SETTLE_WINDOW_S, step_s), rows_for(SETTLE_AHEAD_S, step_s)
    if finite.sum() < 8 * half:
        return 0
    bounds = segment_bounds(np.isfinite(x), _steps(LONG_GAP_S, step_s))
    scale = rolling_mean(np.abs(d), half, bounds)
    later = slice(x.size // 3, None)
    reference = float(np.nanmedian(scale[later]))
    loud = np.nan_to_num(scale, nan=0.0) > SETTLE_RATIO * reference if reference > 0 else np.zeros(x.size, bool)
    wide = rolling_mean(x, ahead // 2, bounds)

    def later_by(rows: int) -> np.ndarray:  # the wide mean centred `rows` later
        out = np.full(x.size, np.nan)
        if x.size > rows:
            out[: x.size - rows] = wide[rows:]
        return out

    bend = rolling_mean(x, half, bounds) - 2 * later_by(ahead) + later_by(2 * ahead)
    tail = bend[later][np.isfinite(bend[later])]
    if tail.size >= 2 * half:
        centre = float(np.median(tail))
        spread = 1.4826 * float(np.median(np.abs(tail - centre)))
        if spread > 0:
            loud |= np.nan_to_num(np.abs(bend - centre), nan=0.0) > SETTLE_Z * spread
    return _first_quiet(loud, 2 * half + 1)


def startup_rows(train: np.ndarray, step_s: float, warmup_s: float,
                 settle: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, int]:
    """Rows to leave out of the tests: the run's first `warmup_s` (at most a tenth of its segment) and the same
    after every resume from a gap of LONG_GAP_S or more in the training series; longer where the series in
    `settle` have not settled by then (settled_rows: a run from an idle device, a volatile start), at most a
    third of the segment and SETTLE_MAX_S; and the wind-down before each long gap. Returns (mask, number of
    resumes). The gaps themselves are `absent_rows`, with or without a warm-up."""
    n = train.size
    mask = np.zeros(n, dtype=bool)
    present = np.isfinite(train)
    if warmup_s <= 0 or not present.any():
        return mask, 0
    first, last = segment_bounds(present, _steps(LONG_GAP_S, step_s))
    starts = np.unique(first[present])
    for s in starts:
        length = int(last[s] - s + 1)
        settling = max((settled_rows(x[s: last[s] + 1], step_s) for x in settle), default=0)
        cap = min(int(length * SETTLE_MAX_FRACTION), _steps(SETTLE_MAX_S, step_s))
        mask[s: s + max(min(_steps(warmup_s, step_s), length // 10), min(settling, cap))] = True
    # and the wind-down before each long gap: the job stopping drops power and throughput together
    for e in np.unique(last[present])[:-1]:
        mask[max(0, e - _steps(WIND_DOWN_S, step_s) + 1): e + 1] = True
    mask[: int(np.flatnonzero(present)[0])] = True  # before the first step there is nothing to test
    return mask, int(starts.size - 1)


def absent_rows(present: np.ndarray, step_s: float, step_duration_s: np.ndarray | None = None) -> np.ndarray:
    """Rows in runs of at least ABSENT_S (and ABSENT_STEPS of the series' typical spacing) where the training
    series is missing, after its first row, unless the step that ends the run lasted at least half of it
    (`step_duration_s` on the same grid: a stalled step, the device busy all along): the job is away (a
    restart, a checkpoint, an evaluation, a hang), and the device idles because of it. That is a state of the
    job, not a response to anything it did: a test whose window reaches into the gap from a change just before
    it (a spike-triggered response, a triggered average) would read the device going idle as that change's
    effect. In the calibration's restart runs, three of four spike responses called coupled were loss changes
    in the last half-minute before the restart."""
    present = np.asarray(present, dtype=bool)
    rows = np.flatnonzero(present)
    out = np.zeros(present.size, dtype=bool)
    if rows.size == 0:
        return out
    spacing = float(np.median(np.diff(rows))) if rows.size > 1 else 1.0
    shortest = max(_steps(ABSENT_S, step_s), int(np.ceil(ABSENT_STEPS * spacing)))
    ends = np.append(rows, present.size)  # a missing tail after the last row counts too
    for i in np.flatnonzero(np.diff(ends) - 1 >= shortest):  # few: a month of 1 s rows holds a handful
        lo, hi = ends[i] + 1, ends[i + 1]
        if step_duration_s is not None and hi < present.size and step_duration_s[hi] >= 0.5 * (hi - lo) * step_s:
            continue  # one long step: the job was there, stalled
        out[lo:hi] = True
    return out
