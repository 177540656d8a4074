"""Granger causality both ways on the differenced series: a VAR of fixed order, F tests.

Least squares via normal equations (one Gram matrix per design), so a week of 1 s data takes well
under a second; statsmodels' VAR builds its lag matrix row by row in Python (minutes at that size).
The tests check the F test against statsmodels' grangercausalitytests (ssr F test), which defines it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.stats.lagged import winsorised
from thermograd.analysis.stats.series import (
    INSUFFICIENT,
    first_difference,
    highpass_level,
    is_constant,
    stationary,
)

_CHUNK_ROWS = 200_000  # the lag matrix is built and reduced in chunks: memory O(chunk), not O(n * order)


def _gram(data: np.ndarray, order: int, current: tuple[int, ...] = ()
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Z'Z, Z'Y, Y'Y for Z = [1, data(t-1), ..., data(t-order), data(t)[current]], Y = data[t]: with two
    columns x, y the lags come as x(t-1), y(t-1), ..., x(t-order), y(t-order); `current`: columns whose present
    value enters too (a measured state conditioned on).

    Only rows whose present and lagged values are all finite take part: a row whose lags reach back
    across a gap is left out, never joined to the other side of it.
    """
    n, m = data.shape
    k = 1 + m * order + len(current)
    zz, zy, yy, rows = np.zeros((k, k)), np.zeros((k, m)), np.zeros((m, m)), 0
    for lo in range(order, n, _CHUNK_ROWS):
        hi = min(n, lo + _CHUNK_ROWS)
        z = np.ones((hi - lo, k))
        for lag in range(1, order + 1):
            z[:, 1 + m * (lag - 1): 1 + m * lag] = data[lo - lag: hi - lag]
        y = data[lo:hi]
        z[:, 1 + m * order:] = y[:, list(current)]
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


def f_test(data: np.ndarray, order: int, caused: int, causing: int | None = None,
           current: tuple[int, ...] = ()) -> dict:
    """Does column `causing`'s past help predict column `caused`, beyond the past of every column (and the
    present of the `current` ones)? With two columns (causing: the other one) this is grangercausalitytests'
    ssr F test; with a third column it is the conditional test (Geweke 1984)."""
    m = data.shape[1]
    causing = 1 - caused if causing is None else causing
    gram, zy, yy, t = _gram(data, order, current)
    full = np.arange(1 + m * order + len(current))
    causing_cols = 1 + m * np.arange(order) + causing
    own = np.setdiff1d(full, causing_cols)
    rss_u = _rss(gram, zy[:, caused], yy[caused, caused], full)
    rss_r = _rss(gram, zy[:, caused], yy[caused, caused], own)
    df_resid = t - full.size
    if df_resid <= 0 or not rss_u > 1e-12 * max(float(yy[caused, caused]), 1e-300):
        # a perfect fit: a degenerate design (a state that barely changes in a short run), not evidence
        return {"F": None, "p": None, "p_adjusted": None, "df": [order, df_resid], "status": INSUFFICIENT}
    f = ((rss_r - rss_u) / order) / (rss_u / df_resid)
    return {"F": float(f), "p": float(stats.f.sf(f, order, df_resid)), "p_adjusted": None, "df": [order, df_resid]}


PRECEDENCE = ("precedence, not cause: Granger causality says the past of one series helps predict the other; a "
              "common cause that moves one a step before the other reads the same")


def _standardised(columns: list[np.ndarray], step_s: float, plain: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The columns' high-passed, volatility-standardised, winsorised differences side by side (the `plain` ones:
    their differences only), centred and scaled over the rows where all are present; and that mask (gaps stay
    where they are)."""
    data = np.column_stack([first_difference(highpass_level(c, step_s)) if i in plain
                            else winsorised(stationary(c, step_s)) for i, c in enumerate(columns)])
    keep = np.isfinite(data).all(axis=1)
    if keep.sum() > 1:
        sd = np.nanstd(data[keep], axis=0)
        data = (data - np.nanmean(data[keep], axis=0)) / np.where(sd > 0, sd, 1.0)
    return data, keep


def granger_both_ways(x: np.ndarray, y: np.ndarray, max_order: int, step_s: float = 1.0,
                      given: tuple[str, np.ndarray] | None = None) -> dict:
    """F tests both ways at a fixed order: `max_order`, lowered only as far as the run's length needs.

    The order is not chosen from the data: choosing it by the VAR's AIC lets chance cross-lag fits raise
    the order that the F test then finds significant (white noise: 7.7 % false positives at 5 %), and
    choosing it from each series' own AR misses a cause that acts at a longer lag than the series'
    own memory. A fixed order keeps the F test exact (4.6-5.4 % on white noise from 150 to 3,000 rows).

    `given`: (name, series) of a measured state that may drive both (the device's throttling moves the clocks
    and the step time within the same step, and one of the two can then precede the other on the grid). The
    same tests are repeated conditional on it (its past and present in both equations: Geweke 1984); a
    precedence that vanishes then is the common cause's, not one series driving the other.
    """
    data, keep = _standardised([x, y], step_s)
    out: dict = {"order": None, "x_to_y": None, "y_to_x": None, "n": int(keep.sum()), "label": PRECEDENCE,
                 "method": "VAR (fixed order, up to the lag scan's range) on high-passed, volatility-standardised, winsorised first differences (rows "
                           "whose lags cross a gap left out); F test of the other series' lags"}
    order = min(max_order, (int(keep.sum()) - 30) // 10)
    if order < 1 or is_constant(data[keep, 0]) or is_constant(data[keep, 1]):
        out["status"] = INSUFFICIENT
        return out
    out.update(order=order, x_to_y=f_test(data, order, caused=1), y_to_x=f_test(data, order, caused=0),
               status="ok")
    if given is not None:
        out["given"] = conditional(x, y, given, order, step_s)
    return out


def conditional(x: np.ndarray, y: np.ndarray, given: tuple[str, np.ndarray], order: int, step_s: float) -> dict:
    """Both Granger tests of x and y conditional on a measured series (its past and present). The measured
    series enters as its plain differences: a 0/1 state's changes are its information, and the robust clip and the
    volatility scaling that guard the correlations would distort exactly those (a throttle onset is a rare
    extreme change), leaving what the state explains to the other series' lags."""
    name, z = given
    data, keep = _standardised([x, y, z], step_s, plain=(2,))
    out: dict = {"series": name, "x_to_y": None, "y_to_x": None, "n": int(keep.sum())}
    if keep.sum() < 30 + 10 * order or is_constant(data[keep, 2]):
        out.update(status=INSUFFICIENT, reason=f"{name} is constant or too short where both series are present")
        return out
    out.update(status="ok", x_to_y=f_test(data, order, caused=1, causing=0, current=(2,)),
               y_to_x=f_test(data, order, caused=0, causing=1, current=(2,)))
    return out
