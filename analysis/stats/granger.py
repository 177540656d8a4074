"""Granger causality both ways on the differenced series: a VAR of fixed order, F tests.

Least squares via normal equations (one Gram matrix per design, from the columns' lagged products: O(n p)),
so a week of 1 s data takes a fraction of a second; statsmodels' VAR builds its lag matrix row by row in
Python (minutes at that size).
The tests check the F test against statsmodels' grangercausalitytests (ssr F test), which defines it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.stats.lagged import winsorised
from thermograd.analysis.stats.preprocess import (
    INSUFFICIENT,
    first_difference,
    highpass_level,
    is_constant,
    stationary,
)

_CHUNK_ROWS = 200_000  # the left-out rows' lag matrix is built and reduced in chunks: memory O(chunk)


def _gram(data: np.ndarray, order: int, current: tuple[int, ...] = ()
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Z'Z, Z'Y, Y'Y for Z = [1, data(t-1), ..., data(t-order), data(t)[current]], Y = data[t]: with two
    columns x, y the lags come as x(t-1), y(t-1), ..., x(t-order), y(t-order); `current`: columns whose present
    value enters too (a measured state conditioned on).

    Only rows whose present and lagged values are all finite take part: a row whose lags reach back
    across a gap is left out, never joined to the other side of it.

    Every entry is a lagged cross-product, sum_t data[t - l1, a] data[t - l2, b] over those rows, so the whole
    matrix comes from the order + 1 lagged products of the columns over every row (gaps as 0), one small
    matrix product each: O(n m^2 order), where building the lag matrix and multiplying it out is
    O(n m^2 order^2). The rows left out are then taken off: only those with a finite value somewhere in their
    window can add anything (a few rows at each gap's edges), and their lag matrix is built and multiplied out
    in chunks (memory O(chunk)).
    """
    n, m = data.shape
    lags = order + 1
    if n <= order:  # no row has a full window
        k = 1 + m * order + len(current)
        return np.zeros((k, k)), np.zeros((k, m)), np.zeros((m, m)), 0
    finite = np.isfinite(data)
    gaps = np.concatenate(([0], np.cumsum(~finite.all(axis=1))))
    # rows t = 0 .. n - 1 + order: the lagged products reach that far; a row is used when t >= order and its
    # window [t - order, t] is all finite
    used = np.zeros(n + order, dtype=bool)
    t = np.arange(order, n)
    used[order:n] = gaps[t + 1] == gaps[t - order]
    seen = np.concatenate(([0], np.cumsum(finite.any(axis=1))))
    t = np.arange(n + order)
    adds = seen[np.minimum(t, n - 1) + 1] > seen[np.maximum(t - order, 0)]
    left_out = np.flatnonzero(~used & adds)
    values = np.where(finite, data, 0.0)
    # products[l1 * m + a, l2 * m + b] = sum_t values[t - l1, a] values[t - l2, b] over every t where both exist
    products = np.empty((lags * m, lags * m))
    for shift in range(lags):
        block = values[: n - shift].T @ values[shift:]  # [b, a] = sum_u values[u, b] values[u + shift, a]
        for l1 in range(lags - shift):
            l2 = l1 + shift
            products[l1 * m: l1 * m + m, l2 * m: l2 * m + m] = block.T
            products[l2 * m: l2 * m + m, l1 * m: l1 * m + m] = block
    sums = np.tile(values.sum(axis=0), lags)
    padded = np.zeros((n + 2 * order, m))
    padded[order: order + n] = values
    for lo in range(0, left_out.size, _CHUNK_ROWS):
        rows = left_out[lo: lo + _CHUNK_ROWS]
        window = np.empty((rows.size, lags * m))
        for lag in range(lags):
            window[:, lag * m: lag * m + m] = padded[rows - lag + order]
        products -= window.T @ window
        sums -= window.sum(axis=0)
    design = [lag * m + c for lag in range(1, lags) for c in range(m)] + list(current)
    present = list(range(m))
    rows_used = int(used.sum())
    zz = np.empty((1 + len(design), 1 + len(design)))
    zz[0, 0] = rows_used
    zz[0, 1:] = zz[1:, 0] = sums[design]
    zz[1:, 1:] = products[np.ix_(design, design)]
    zy = np.vstack((sums[present], products[np.ix_(design, present)]))
    return zz, zy, products[np.ix_(present, present)], rows_used


def _rss(gram: np.ndarray, zy: np.ndarray, yy: float, cols: np.ndarray) -> float:
    """Residual sum of squares of one equation regressed on the given design columns."""
    g = gram[np.ix_(cols, cols)]
    # least squares, not solve: a 0/1 state's differences can leave a lag column all zero in a short run
    beta = np.linalg.lstsq(g, zy[cols], rcond=None)[0]
    return float(yy - zy[cols] @ beta)


def f_test(data: np.ndarray, order: int, caused: int, causing: int | None = None,
           current: tuple[int, ...] = (), gram: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None) -> dict:
    """Does column `causing`'s past help predict column `caused`, beyond the past of every column (and the
    present of the `current` ones)? With two columns (causing: the other one) this is grangercausalitytests'
    ssr F test; with a third column it is the conditional test (Geweke 1984).

    `gram`: `_gram(data, order, current)` when the caller has it: both directions of a pair regress on the
    same design, and its Gram matrix is the test's whole cost on a long run.

    Parameters
    ----------
    data : (rows, columns) on the grid, NaN where missing; a row takes part only where its present and its
        `order` lagged values are all finite.
    order : the lags of every column in both regressions, in rows; both regressions have a constant.
    caused : the column regressed; causing: the column whose lags the restricted regression leaves out
        (default: the other one of two columns).
    current : the columns whose present value enters both regressions too.
    gram : `_gram(data, order, current)`, computed once for both directions.

    Returns
    -------
    dict
        F : ((RSS_restricted - RSS_full) / order) / (RSS_full / df_resid); p: its upper tail under
            F(order, df_resid); p_adjusted: None (Holm, later); df: [order, df_resid], df_resid being the rows
            used less the full regression's coefficients.
        status : INSUFFICIENT (F and p None) where df_resid <= 0 or the full regression fits perfectly (a
            degenerate design); absent otherwise.

    References
    ----------
    Granger (1969), Econometrica 37, 424-438 (the test).
    Geweke (1984), J. Amer. Statist. Assoc. 79, 907-915 (conditional on a third series).
    """
    m = data.shape[1]
    causing = 1 - caused if causing is None else causing
    gram, zy, yy, t = _gram(data, order, current) if gram is None else gram
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


def transformed(series: np.ndarray, step_s: float, plain: bool = False) -> np.ndarray:
    """A series' high-passed, volatility-standardised, winsorised differences (`plain`: its high-passed
    differences only).

    Parameters
    ----------
    series : a level on the grid (NaN: missing); step_s: the grid step in seconds.
    plain : first differences of series.highpass_level only (no volatility scaling, no clip).

    Returns
    -------
    ndarray, the length of `series`: NaN at the first row and wherever a difference is undefined.
    """
    return first_difference(highpass_level(series, step_s)) if plain else winsorised(stationary(series, step_s))


class Transforms:
    """`transformed` of each series, by name, made once for all the pairs and conditional tests that use it:
    recomputed per pair, it was most of a day's Granger time (1.8 of 3.2 s). Keyed by name, not by the array: the
    pipeline's masked columns are new arrays at every access. `forget` drops a series no test needs any more.

    Parameters
    ----------
    step_s : the grid step in seconds that every memoised series was transformed at.
    """

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self._made: dict[tuple[str, bool], np.ndarray] = {}

    def of(self, name: str, series: np.ndarray, plain: bool = False) -> np.ndarray:
        """`transformed(series, step_s, plain)`, made at the first call for (`name`, `plain`), then reused."""
        key = (name, plain)
        if key not in self._made:
            self._made[key] = transformed(series, self.step_s, plain)
        return self._made[key]

    def forget(self, name: str) -> None:
        """Drops both transforms (plain or not) of the series `name`."""
        for plain in (False, True):
            self._made.pop((name, plain), None)


def _standardised(columns: list[np.ndarray], step_s: float, plain: tuple[int, ...] = (),
                  transforms: Transforms | None = None, names: tuple[str, ...] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The columns' high-passed, volatility-standardised, winsorised differences side by side (the `plain` ones:
    their differences only), centred and scaled over the rows where all are present; and that mask (gaps stay
    where they are). `transforms` with the columns' `names`: a memo of the per-series part, shared by a run's
    tests."""
    memo = transforms is not None and names is not None and transforms.step_s == step_s
    data = np.column_stack([transforms.of(names[i], c, i in plain) if memo else transformed(c, step_s, i in plain)
                            for i, c in enumerate(columns)])
    keep = np.isfinite(data).all(axis=1)
    if keep.sum() > 1:
        sd = np.nanstd(data[keep], axis=0)
        data = (data - np.nanmean(data[keep], axis=0)) / np.where(sd > 0, sd, 1.0)
    return data, keep


def granger_both_ways(x: np.ndarray, y: np.ndarray, max_order: int, step_s: float = 1.0,
                      given: tuple[str, np.ndarray] | None = None, state: tuple[str, int] | None = None,
                      transforms: Transforms | None = None, names: tuple[str, str] | None = None) -> dict:
    """F tests both ways at a fixed order: `max_order`, lowered only as far as the run's length needs.

    The order is not chosen from the data: choosing it by the VAR's AIC lets chance cross-lag fits raise
    the order that the F test then finds significant (white noise: 7.7 % false positives at 5 %), and
    choosing it from each series' own AR misses a cause that acts at a longer lag than the series'
    own memory. A fixed order keeps the F test exact (4.6-5.4 % on white noise from 150 to 3,000 rows).

    `given`: (name, series) of a measured state that may drive both (the device's throttling moves the clocks
    and the step time within the same step, and one of the two can then precede the other on the grid). The
    same tests are repeated conditional on it (its past and present in both equations: Geweke 1984); a
    precedence that vanishes then is the common cause's, not one series driving the other.

    `state`: (name, column: 0 for x, 1 for y) where one of the pair is that measured state itself. Nothing else can
    be conditioned on then, but the state's own level can: see `given_own_level`. `transforms` with the pair's
    `names`: a memo shared by the run's pairs (each series transformed once).

    Parameters
    ----------
    x, y : the two series' levels on one grid (NaN: missing). The VAR runs on their `transformed` differences,
        centred and scaled over the rows where both are finite; a row whose lags cross a gap is left out.
    max_order : the VAR's order in rows; lowered to (rows where both are finite - 30) // 10 where that is
        less.
    step_s : the grid step in seconds (the high-pass and volatility windows are set in seconds).
    given : (name, series) of a measured state to condition on (`conditional`); takes precedence over `state`.
    state : (name, column) where x or y is the measured state (`given_own_level`).
    transforms, names : a `Transforms` memo (used only at the same step_s) and the pair's names as its keys.

    Returns
    -------
    dict
        order : the order used (None where insufficient); n: the rows where both transformed series are
            finite.
        x_to_y, y_to_x : `f_test` results (x's past predicting y, y's past predicting x), None where
            insufficient.
        status : "ok", or INSUFFICIENT where the order falls under 1 or a transformed series is constant.
        label : PRECEDENCE (what a significant test means); method: the test in words.
        given : `conditional`'s or `given_own_level`'s result, present only when `given` or `state` is set and
            the plain tests ran.

    References
    ----------
    Granger (1969), Econometrica 37, 424-438 (the test).
    Geweke (1984), J. Amer. Statist. Assoc. 79, 907-915 (conditional on a third series).
    """
    data, keep = _standardised([x, y], step_s, transforms=transforms, names=names)
    out: dict = {"order": None, "x_to_y": None, "y_to_x": None, "n": int(keep.sum()), "label": PRECEDENCE,
                 "method": "VAR (fixed order, up to the lag scan's range) on high-passed, volatility-standardised, "
                           "winsorised first differences (rows "
                           "whose lags cross a gap left out); F test of the other series' lags"}
    order = min(max_order, (int(keep.sum()) - 30) // 10)
    if order < 1 or is_constant(data[keep, 0]) or is_constant(data[keep, 1]):
        out["status"] = INSUFFICIENT
        return out
    both_ways = _gram(data, order)
    out.update(order=order, x_to_y=f_test(data, order, caused=1, gram=both_ways),
               y_to_x=f_test(data, order, caused=0, gram=both_ways), status="ok")
    del both_ways
    if given is not None:
        out["given"] = conditional(x, y, given, order, step_s, transforms, names)
    elif state is not None:
        out["given"] = given_own_level(data, (x, y)[state[1]], state, order)
    return out


def conditional(x: np.ndarray, y: np.ndarray, given: tuple[str, np.ndarray], order: int, step_s: float,
                transforms: Transforms | None = None, names: tuple[str, str] | None = None) -> dict:
    """Both Granger tests of x and y conditional on a measured series (its past and present). The measured
    series enters as its plain differences: a 0/1 state's changes are its information, and the robust clip and the
    volatility scaling that guard the correlations would distort exactly those (a throttle onset is a rare
    extreme change), leaving what the state explains to the other series' lags.

    Parameters
    ----------
    x, y : the pair's levels on one grid (NaN: missing), transformed as in `granger_both_ways`.
    given : (name, series): the measured series, entered as its high-passed first differences, lagged and at
        the present row, in both equations.
    order : the VAR's order in rows (as `granger_both_ways` chose it); step_s: the grid step in seconds.
    transforms, names : the memo and the pair's names, as for `granger_both_ways`.

    Returns
    -------
    dict
        series : the conditioning series' name; n: the rows where all three transformed series are finite.
        x_to_y, y_to_x : `f_test` results with the third column's past and present in both regressions.
        status : "ok", or INSUFFICIENT with a reason where n < 30 + 10 order or the measured series'
            differences are constant (then x_to_y and y_to_x are None).

    References
    ----------
    Granger (1969), Econometrica 37, 424-438 (the test).
    Geweke (1984), J. Amer. Statist. Assoc. 79, 907-915 (conditional on a third series).
    """
    name, z = given
    data, keep = _standardised([x, y, z], step_s, plain=(2,), transforms=transforms,
                               names=(*names, name) if names is not None else None)
    out: dict = {"series": name, "x_to_y": None, "y_to_x": None, "n": int(keep.sum())}
    if keep.sum() < 30 + 10 * order or is_constant(data[keep, 2]):
        out.update(status=INSUFFICIENT, reason=f"{name} is constant or too short where both series are present")
        return out
    both_ways = _gram(data, order, (2,))
    out.update(status="ok", x_to_y=f_test(data, order, caused=1, causing=0, current=(2,), gram=both_ways),
               y_to_x=f_test(data, order, caused=0, causing=1, current=(2,), gram=both_ways))
    return out


def given_own_level(data: np.ndarray, level: np.ndarray, state: tuple[str, int], order: int) -> dict:
    """The other series' precedence of a measured 0/1 state (column state[1] of `data`), given the state's own
    level in the row before.

    The VAR sees differences: a state's differences say when it changed, not whether it is on. A training series
    slowed by the state carries its level, and so predicts the state's end (an episode of some seconds ends) better
    than the state's own differences do: in runs whose throttle episodes slow the steps, "throughput precedes
    throttled" was significant in most runs, and given the state's level in none (bench/calibration_effects.py).
    The other way (the state preceding the series) is left to the plain test.

    Parameters
    ----------
    data : the pair's standardised, transformed differences, (rows, 2), as `granger_both_ways` made them.
    level : the state's own level on the grid (0/1, NaN: unknown); its value one row before, centred and
        scaled, enters both regressions as a third column (with its lags).
    state : (name, column of `data` that is the state); order: the VAR's order in rows.

    Returns
    -------
    dict
        series : the state's name; conditioned_on: "its own level".
        x_to_y, y_to_x : the `f_test` of the other column's past predicting the state's differences under the
            key for that direction; the other key stays None.
        status : "ok", or INSUFFICIENT with a reason where the state's level is constant (or never known).

    References
    ----------
    Granger (1969), Econometrica 37, 424-438 (the test).
    """
    name, column = state
    other = 1 - column
    previous = np.concatenate(([np.nan], np.asarray(level, dtype=float)[:-1]))
    finite = np.isfinite(previous)
    sd = float(np.std(previous[finite])) if finite.any() else 0.0
    out: dict = {"series": name, "conditioned_on": "its own level", "x_to_y": None, "y_to_x": None}
    if not sd > 0:
        out.update(status=INSUFFICIENT, reason=f"{name} is constant")
        return out
    d3 = np.column_stack((data, (previous - float(np.mean(previous[finite]))) / sd))
    key = "y_to_x" if column == 0 else "x_to_y"
    out.update(status="ok", **{key: f_test(d3, order, caused=column, causing=other, current=(2,))})
    return out
