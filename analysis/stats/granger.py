"""Granger causality both ways on the differenced series: a VAR of fixed order, F tests.

Least squares via normal equations (one Gram matrix per design), so a week of 1 s data takes well
under a second; statsmodels' VAR builds its lag matrix row by row in Python (minutes at that size).
The tests check the F test against statsmodels' grangercausalitytests (ssr F test), which defines it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.stats.lagged import winsorised
from thermograd.analysis.stats.series import INSUFFICIENT, is_constant, stationary

_CHUNK_ROWS = 200_000  # the lag matrix is built and reduced in chunks: memory O(chunk), not O(n * order)


def _gram(data: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Z'Z, Z'Y, Y'Y for Z = [1, x(t-1), y(t-1), ..., x(t-order), y(t-order)], Y = data[t].

    Only rows whose present and lagged values are all finite take part: a row whose lags reach back
    across a gap is left out, never joined to the other side of it.
    """
    n = data.shape[0]
    k = 1 + 2 * order
    zz, zy, yy, rows = np.zeros((k, k)), np.zeros((k, 2)), np.zeros((2, 2)), 0
    for lo in range(order, n, _CHUNK_ROWS):
        hi = min(n, lo + _CHUNK_ROWS)
        z = np.ones((hi - lo, k))
        for lag in range(1, order + 1):
            z[:, 2 * lag - 1: 2 * lag + 1] = data[lo - lag: hi - lag]
        y = data[lo:hi]
        keep = np.isfinite(z).all(axis=1) & np.isfinite(y).all(axis=1)
        z, y = z[keep], y[keep]
        zz += z.T @ z
        zy += z.T @ y
        yy += y.T @ y
        rows += int(keep.sum())
    return zz, zy, yy, rows


def _rss(gram: np.ndarray, zy: np.ndarray, yy: float, cols: np.ndarray) -> float:
    """Residual sum of squares of one equation regressed on the given design columns."""
    g = gram[np.ix_(cols, cols)]
    # least squares, not solve: a 0/1 state's differences can leave a lag column all zero in a short run
    beta = np.linalg.lstsq(g, zy[cols], rcond=None)[0]
    return float(yy - zy[cols] @ beta)


def f_test(data: np.ndarray, order: int, caused: int) -> dict:
    """Does the other column's past help predict column `caused`? (grangercausalitytests' ssr F test)"""
    gram, zy, yy, t = _gram(data, order)
    full = np.arange(1 + 2 * order)
    causing_cols = 1 + 2 * np.arange(order) + (1 - caused)
    own = np.setdiff1d(full, causing_cols)
    rss_u = _rss(gram, zy[:, caused], yy[caused, caused], full)
    rss_r = _rss(gram, zy[:, caused], yy[caused, caused], own)
    df_resid = t - full.size
    if df_resid <= 0 or not rss_u > 1e-12 * max(float(yy[caused, caused]), 1e-300):
        # a perfect fit: a degenerate design (a state that barely changes in a short run), not evidence
        return {"F": None, "p": None, "p_adjusted": None, "df": [order, df_resid], "status": INSUFFICIENT}
    f = ((rss_r - rss_u) / order) / (rss_u / df_resid)
    return {"F": float(f), "p": float(stats.f.sf(f, order, df_resid)), "p_adjusted": None, "df": [order, df_resid]}


def granger_both_ways(x: np.ndarray, y: np.ndarray, max_order: int, step_s: float = 1.0) -> dict:
    """F tests both ways at a fixed order: `max_order`, lowered only as far as the run's length needs.

    The order is not chosen from the data: choosing it by the VAR's AIC lets chance cross-lag fits raise
    the order that the F test then finds significant (white noise: 7.7 % false positives at 5 %), and
    choosing it from each series' own AR misses a cause that acts at a longer lag than the series'
    own memory. A fixed order keeps the F test exact (4.6-5.4 % on white noise from 150 to 3,000 rows).
    """
    dx, dy = winsorised(stationary(x, step_s)), winsorised(stationary(y, step_s))
    keep = np.isfinite(dx) & np.isfinite(dy)
    out: dict = {"order": None, "x_to_y": None, "y_to_x": None, "n": int(keep.sum()),
                 "method": "VAR (fixed order, up to the lag scan's range) on high-passed, volatility-standardised, winsorised first differences (rows "
                           "whose lags cross a gap left out); F test of the other series' lags"}
    order = min(max_order, (int(keep.sum()) - 30) // 10)
    if order < 1 or is_constant(dx[keep]) or is_constant(dy[keep]):
        out["status"] = INSUFFICIENT
        return out
    data = np.column_stack([dx, dy])  # on the grid: gaps stay where they are
    data = (data - np.nanmean(data[keep], axis=0)) / np.nanstd(data[keep], axis=0)
    out.update(order=order, x_to_y=f_test(data, order, caused=1), y_to_x=f_test(data, order, caused=0),
               status="ok")
    return out
