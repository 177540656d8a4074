"""Granger causality both ways on the differenced series: VAR lag order by AIC, F tests.

Least squares via normal equations (one Gram matrix per design), so a week of 1 s data takes well
under a second; statsmodels' VAR builds its lag matrix row by row in Python (minutes at that size).
The tests check these numbers against statsmodels (VAR.select_order AIC and grangercausalitytests'
ssr F test), which define the method.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from analysis.stats.series import INSUFFICIENT, is_constant, stationary


def _gram(data: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Z'Z, Z'Y, Y'Y for Z = [1, x(t-1), y(t-1), ..., x(t-order), y(t-order)], Y = data[order:]."""
    n = data.shape[0]
    z = np.ones((n - order, 1 + 2 * order))
    for lag in range(1, order + 1):
        z[:, 2 * lag - 1: 2 * lag + 1] = data[order - lag: n - lag]
    y = data[order:]
    return z.T @ z, z.T @ y, y.T @ y, n - order


def _rss(gram: np.ndarray, zy: np.ndarray, yy: float, cols: np.ndarray) -> float:
    """Residual sum of squares of one equation regressed on the given design columns."""
    g = gram[np.ix_(cols, cols)]
    beta = np.linalg.solve(g, zy[cols])
    return float(yy - zy[cols] @ beta)


def aic_order(data: np.ndarray, max_order: int) -> int:
    """VAR order minimising AIC = log det(Sigma_mle) + 2 (order k^2 + k) / T, all orders on one sample."""
    gram, zy, yy, t = _gram(data, max_order)
    best, best_aic = 1, np.inf
    for order in range(1, max_order + 1):
        cols = np.arange(1 + 2 * order)
        beta = np.linalg.solve(gram[np.ix_(cols, cols)], zy[cols])
        sigma = (yy - zy[cols].T @ beta) / t
        aic = np.linalg.slogdet(sigma)[1] + 2.0 * (order * 4 + 2) / t
        if aic < best_aic:
            best, best_aic = order, aic
    return best


def f_test(data: np.ndarray, order: int, caused: int) -> dict:
    """Does the other column's past help predict column `caused`? (grangercausalitytests' ssr F test)"""
    gram, zy, yy, t = _gram(data, order)
    full = np.arange(1 + 2 * order)
    causing_cols = 1 + 2 * np.arange(order) + (1 - caused)
    own = np.setdiff1d(full, causing_cols)
    rss_u = _rss(gram, zy[:, caused], yy[caused, caused], full)
    rss_r = _rss(gram, zy[:, caused], yy[caused, caused], own)
    df_resid = t - full.size
    f = ((rss_r - rss_u) / order) / (rss_u / df_resid)
    return {"F": float(f), "p": float(stats.f.sf(f, order, df_resid)), "p_adjusted": None, "df": [order, df_resid]}


def granger_both_ways(x: np.ndarray, y: np.ndarray, max_order: int) -> dict:
    dx, dy = stationary(x), stationary(y)
    keep = np.isfinite(dx) & np.isfinite(dy)
    out: dict = {"order": None, "x_to_y": None, "y_to_x": None, "n": int(keep.sum()),
                 "method": "VAR(order by AIC) on linearly detrended first differences; F test of the other series' lags"}
    if keep.sum() < 10 * max_order + 30 or is_constant(dx[keep]) or is_constant(dy[keep]):
        out["status"] = INSUFFICIENT
        return out
    data = np.column_stack([dx[keep], dy[keep]])
    data = (data - data.mean(axis=0)) / data.std(axis=0)
    order = aic_order(data, max_order)
    out.update(order=order, x_to_y=f_test(data, order, caused=1), y_to_x=f_test(data, order, caused=0),
               status="ok")
    return out
