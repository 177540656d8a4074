"""Event-triggered averages around perturbation (and pause) onsets, tested across the onsets."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from thermograd.analysis.stats.preprocess import (
    INSUFFICIENT,
    LONG_GAP_S,
    highpass_level,
    rows_for,
    segment_bounds,
    state_onsets,
)

MIN_ONSETS = 3
# The trend taken out before the windows are compared: a local line over this many windows (at least
# TREND_MIN_S). An effect lasting a window or two barely moves it, while a re-warming after a restart
# (tau ~ 90 s) is followed: over the 300 s used for the coupling tests a line cannot follow that curve, and
# the after-minus-before differences of the onsets just after a resume read it as an effect (7.5 % false
# positives in simulated restarts against 4 % with twelve 10 s windows, at the same power).
TREND_WINDOWS = 12
TREND_MIN_S = 60.0


def _window_means(cum: np.ndarray, cnt: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of finite values in [lo, hi) for many windows at once, from running sums."""
    total = cum[hi] - cum[lo]
    count = cnt[hi] - cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def burst_lengths(active: np.ndarray) -> list[int]:
    """Lengths in rows of the bursts seen to start and end (NaN = unknown, never a boundary).

    Parameters
    ----------
    active : the 0/1 burst state on the grid (NaN: unknown).

    Returns
    -------
    list of int : for each seen onset (series.state_onsets) with a seen end after it, the rows from the onset
        to that end.
    """
    s = np.asarray(active, dtype=float)
    starts, ends = state_onsets(s), state_onsets(np.where(np.isfinite(s), 1.0 - s, np.nan))
    return [int(ends[ends > b][0] - b) for b in starts if (ends > b).any()]


def default_window(active: np.ndarray, delayed: bool = True, clear_rows: int = 0) -> int:
    """The before/after window of the triggered average, in rows.

    A delayed response (a learning-rate burst acting through the optimizer): twice the median burst length
    (>= 5 steps), long enough for the response to arrive, short enough that the burst is not diluted by
    unperturbed time. An immediate one (a pause: compute stops at once): the median burst length and the row
    after it (the device's sample of the first paused row may precede the pause), >= 3 steps; a window twice a
    3-s pause spent most of its rows after the device had resumed and diluted a drop to 1 sd under the noise of
    four onsets. Either way no longer than the median time between bursts less `clear_rows` (for a pause: the
    settling rows after a burst and the row before the next, where the device is still recovering or already
    slowing), so that a dense schedule's window before an onset does not reach back into the previous burst
    (which would read the burst's own effect as the baseline and shrink it); at least one row.

    Parameters
    ----------
    active : the 0/1 burst (or pause) state on the grid (NaN: unknown).
    delayed : True for a delayed response (twice the median burst), False for an immediate one.
    clear_rows : rows taken off the median time between bursts before it caps the window.

    Returns
    -------
    int : the window in rows; 30 where no burst is seen to start and end.
    """
    lengths = burst_lengths(active)
    if not lengths:
        return 30
    s = np.asarray(active, dtype=float)
    gaps = burst_lengths(np.where(np.isfinite(s), 1.0 - s, np.nan))
    burst = int(np.median(lengths))
    wanted = max(5, 2 * burst) if delayed else max(3, burst + 1)
    return max(1, min(wanted, int(np.median(gaps)) - clear_rows)) if gaps else wanted


def usable_onsets(metric: np.ndarray, active: np.ndarray, window: int, step_s: float) -> np.ndarray:
    """Onsets whose before and after windows lie inside the run, inside one segment of the metric (no gap
    of LONG_GAP_S or more in between), with the state known on every row of both (rows left out of the
    tests, a run's warm-up or a resume's, are unknown) and the metric present on at least half of each.

    An onset next to a restart compares the device before it with the device re-warming after it: one such
    window pair in a run made the test read re-warming as an effect of the bursts.

    Parameters
    ----------
    metric : the metric on the grid (NaN: missing); active: the 0/1 state on the same grid (NaN: unknown).
    window : the before and after windows' length in rows: [onset - window, onset) and
        [onset, onset + window).
    step_s : the grid step in seconds (it turns LONG_GAP_S into rows).

    Returns
    -------
    ndarray of int : the usable onset rows, ascending.
    """
    n = metric.size
    onsets = state_onsets(active)
    onsets = onsets[(onsets >= window) & (onsets + window <= n)]
    present = np.isfinite(metric)
    if onsets.size == 0 or not present.any():
        return onsets
    first, last = segment_bounds(present, rows_for(LONG_GAP_S, step_s))
    known = np.concatenate(([0], np.cumsum(np.isfinite(np.asarray(active, dtype=float)))))
    count = np.concatenate(([0], np.cumsum(present)))
    lo, hi = onsets - window, onsets + window
    inside = (first[onsets] <= lo) & (last[onsets] >= hi - 1)
    state_known = known[hi] - known[lo] == 2 * window
    filled = ((count[onsets] - count[lo]) * 2 >= window) & ((count[hi] - count[onsets]) * 2 >= window)
    return onsets[inside & state_known & filled]


def triggered_average(metric: np.ndarray, active: np.ndarray, window: int, step_s: float = 1.0) -> dict:
    """Effect = mean over onsets of (mean of the window after - mean of the window before), on the metric
    with its slow trend taken out (series.highpass_level), with a t-test and 95 % CI across onsets.

    Bursts come on a schedule (every 20 s in the demo): a null that shifts the onsets would put its
    windows on the other bursts' effects and lose all power, and one that draws onsets at random ignores
    the schedule. The onsets themselves are the replicates: each gives one after-minus-before
    difference, nearly independent of the next when bursts are further apart than the metric's memory.

    Parameters
    ----------
    metric : the metric on the grid (NaN: missing; a window's mean is over its finite rows).
    active : the 0/1 perturbation (or pause) state on the same grid (NaN: unknown); its `usable_onsets` count.
    window : the before and after windows' length in rows (`default_window`).
    step_s : the grid step in seconds; the trend taken out spans max(TREND_MIN_S, TREND_WINDOWS windows).

    Returns
    -------
    dict
        effect : the mean over onsets of the high-passed metric's after-minus-before difference, in the
            metric's units; effect_sd_units: that over the high-passed metric's sd.
        ci, p : the 95 % t interval of the effect and its two-sided t-test p, on onsets - 1 df;
            p_adjusted: None (Holm, later).
        n_onsets : the usable onsets (where ok, those whose difference is defined); window_steps: the window
            in rows.
        eta, eta_offsets_steps : the event-triggered average of the raw metric minus each onset's mean over
            the window before, at rows -window .. window - 1 from the onset (None where no onset has a value).
        method : the test in words.
        status : "ok", or INSUFFICIENT with a reason (under MIN_ONSETS differences, or all equal); then
            effect, ci, p and eta are None and eta_offsets_steps is absent.

    References
    ----------
    Student (1908), Biometrika 6, 1-25 (the t test across onsets).
    """
    usable = usable_onsets(metric, active, window, step_s)
    out: dict = {"n_onsets": int(usable.size), "window_steps": window, "effect": None, "effect_sd_units": None,
                 "ci": None, "p": None, "p_adjusted": None, "eta": None,
                 "method": "after-minus-before window means per onset on the high-passed metric; t test across onsets"}
    level = highpass_level(np.asarray(metric, dtype=float), step_s, max(TREND_MIN_S, TREND_WINDOWS * window * step_s))
    finite = np.isfinite(level)
    cum = np.concatenate(([0.0], np.cumsum(np.where(finite, level, 0.0))))
    cnt = np.concatenate(([0], np.cumsum(finite)))
    diffs = _window_means(cum, cnt, usable, usable + window) - _window_means(cum, cnt, usable - window, usable)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < MIN_ONSETS or np.ptp(diffs) == 0:
        out["status"] = INSUFFICIENT
        out["reason"] = f"{diffs.size} usable onsets (at least {MIN_ONSETS} needed)"
        return out
    k = diffs.size
    effect, se = float(diffs.mean()), float(diffs.std(ddof=1) / np.sqrt(k))
    half = float(stats.t.ppf(0.975, k - 1)) * se
    offsets = np.arange(-window, window)
    raw_cum = np.concatenate(([0.0], np.cumsum(np.where(np.isfinite(metric), metric, 0.0))))
    raw_cnt = np.concatenate(([0], np.cumsum(np.isfinite(metric))))
    segs = metric[usable[:, None] + offsets[None, :]]
    baseline = _window_means(raw_cum, raw_cnt, usable - window, usable)[:, None]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an offset with no finite value is a gap: NaN
        eta = np.nanmean(segs - baseline, axis=0)
    spread = float(np.nanstd(level))
    out.update(
        status="ok", n_onsets=k, effect=effect, ci=[effect - half, effect + half],
        effect_sd_units=effect / spread if spread > 0 else None,
        p=float(2 * stats.t.sf(abs(effect) / se, k - 1)) if se > 0 else 1.0,
        eta=[float(v) if np.isfinite(v) else None for v in eta],
        eta_offsets_steps=[int(o) for o in offsets],
    )
    return out
