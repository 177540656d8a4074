"""Putting samples on one time grid (pure): exact placement for Prometheus, binning for files."""

from __future__ import annotations

import numpy as np


def sample_interval_s(t_s: np.ndarray) -> float | None:
    """A sampler's typical interval: the median spacing of its distinct timestamps (gaps and jitter barely move
    a median); the one interval helper of the analysis (files, raw samples from a store, value changes, rows).
    None with fewer than two distinct times."""
    t = np.unique(t_s[np.isfinite(t_s)])
    if t.size < 2:
        return None
    return float(np.median(np.diff(t)))


def place_on_grid(t_s: np.ndarray, values: np.ndarray, start_s: float, step_s: float, n: int) -> np.ndarray:
    """Values evaluated by Prometheus at start + k*step go to row k; rows never evaluated stay NaN."""
    return place_into(np.full(n, np.nan), t_s, values, start_s, step_s)


def place_into(out: np.ndarray, t_s: np.ndarray, values: np.ndarray, start_s: float, step_s: float) -> np.ndarray:
    """place_on_grid into an existing column `out` (rows outside it ignored); returns `out`."""
    if t_s.size:
        idx = np.rint((t_s - start_s) / step_s).astype(np.int64)
        keep = (idx >= 0) & (idx < out.size)
        out[idx[keep]] = values[keep]
    return out


def bin_to_grid(t_s: np.ndarray, values: np.ndarray, start_s: float, step_s: float, n: int,
                how: str = "last") -> np.ndarray:
    """Row k takes the samples in (t_k - step, t_k]: their last value, mean, sum or max; none -> NaN.

    The same convention as last_over_time(x[step]) in PromQL, so offline and online tables agree.
    """
    out = np.full(n, np.nan)
    finite = np.isfinite(values) & np.isfinite(t_s)
    t_s, values = t_s[finite], values[finite]
    if t_s.size == 0:
        return out
    order = np.argsort(t_s, kind="stable")
    t_s, values = t_s[order], values[order]
    idx = np.ceil((t_s - start_s) / step_s - 1e-9).astype(np.int64)
    keep = (idx >= 0) & (idx < n)
    idx, values = idx[keep], values[keep]
    if idx.size == 0:
        return out
    if how == "last":
        is_last = np.r_[idx[1:] != idx[:-1], True]  # the latest sample of each row
        out[idx[is_last]] = values[is_last]
    elif how == "max":  # a one-step spike stays a spike, whatever the number of steps in the row
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, idx, values)
        out[np.isfinite(peak)] = peak[np.isfinite(peak)]
    else:
        sums = np.bincount(idx, weights=values, minlength=n)
        counts = np.bincount(idx, minlength=n)
        if how == "sum":
            out[counts > 0] = sums[counts > 0]
        else:
            np.divide(sums, counts, out=out, where=counts > 0)
    return out


def intervals_to_grid(intervals: list[tuple[float, float]], start_s: float, step_s: float, n: int,
                      within: np.ndarray) -> np.ndarray:
    """A 0/1 state per row: 1 where the row's span (t - step, t] overlaps an interval, 0 elsewhere inside
    `within` (a row mask where the state is known), NaN outside it."""
    state = np.where(within, 0.0, np.nan)
    for lo, hi in intervals:
        first = max(int(np.ceil((lo - start_s) / step_s - 1e-9)), 0)
        last = min(int(np.ceil((hi - start_s) / step_s - 1e-9)), n - 1)
        if last >= first:
            state[first:last + 1] = 1.0
    return state
