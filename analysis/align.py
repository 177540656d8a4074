"""Putting samples on one time grid (pure): exact placement for Prometheus, binning for files."""

from __future__ import annotations

import numpy as np


def place_on_grid(t_s: np.ndarray, values: np.ndarray, start_s: float, step_s: float, n: int) -> np.ndarray:
    """Values evaluated by Prometheus at start + k*step go to row k; rows never evaluated stay NaN."""
    out = np.full(n, np.nan)
    if t_s.size:
        idx = np.rint((t_s - start_s) / step_s).astype(np.int64)
        keep = (idx >= 0) & (idx < n)
        out[idx[keep]] = values[keep]
    return out


def bin_to_grid(t_s: np.ndarray, values: np.ndarray, start_s: float, step_s: float, n: int,
                how: str = "last") -> np.ndarray:
    """Row k takes the samples in (t_k - step, t_k]: their last value or their mean; none -> NaN.

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
    else:
        sums = np.bincount(idx, weights=values, minlength=n)
        counts = np.bincount(idx, minlength=n)
        np.divide(sums, counts, out=out, where=counts > 0)
    return out
