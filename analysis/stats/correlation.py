"""Naive and primary (stationary, HAC-studentised, circular-shift) lag-0 correlation."""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.stats import lagged
from thermograd.analysis.stats.preprocess import INSUFFICIENT, is_constant, stationary


def _finite_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def naive(x: np.ndarray, y: np.ndarray) -> dict:
    """Textbook Pearson and Spearman on the levels, as if samples were independent (labelled naive).

    Parameters
    ----------
    x, y : the two series' levels on one grid (NaN: missing); only the rows where both are finite are used.

    Returns
    -------
    dict
        label : "naive (assumes independent samples)".
        n : the rows where both are finite.
        pearson_r, p : Pearson's r and scipy's two-sided p (None where insufficient).
        spearman_rho, spearman_p : Spearman's rho (Pearson's r of the ranks) and its p (None where
            insufficient).
        status : INSUFFICIENT under 3 rows or with a constant series; absent otherwise.
    """
    xs, ys = _finite_pair(x, y)
    out: dict = {"label": "naive (assumes independent samples)", "n": int(xs.size),
                 "pearson_r": None, "p": None, "spearman_rho": None, "spearman_p": None}
    if xs.size < 3 or is_constant(xs) or is_constant(ys):
        out["status"] = INSUFFICIENT
        return out
    r, p = stats.pearsonr(xs, ys)
    # Spearman's rho is Pearson's r of the ranks; ranking one series at a time (spearmanr stacks both and
    # ranks the stack) keeps a month of 1 s data to two rank arrays.
    rx = stats.rankdata(xs)
    del xs
    rho, p_s = stats.pearsonr(rx, stats.rankdata(ys))
    out.update(pearson_r=float(r), p=float(p), spearman_rho=float(rho), spearman_p=float(p_s))
    return out


PRIMARY_METHOD = ("pearson on high-passed, volatility-standardised, clipped first differences; t test with a HAC "
                  "standard error under independence (widened for shared volatility and by the circular-shift "
                  "check); Fisher-z CI from the HAC variance of r's influence function")


def primary(x: np.ndarray, y: np.ndarray, step_s: float = 1.0, n_surrogates: int = 1000,
            rng: np.random.Generator | None = None) -> dict:
    """The primary lag-0 test of two series' levels (see lagged.scan for the method).

    Parameters
    ----------
    x, y : the two series' levels on one grid (NaN: missing). Each is made stationary first
        (series.stationary: high-passed, volatility-standardised first differences), then winsorised.
    step_s : the grid step in seconds (the high-pass and volatility windows are set in seconds).
    n_surrogates : at most this many circular shifts of y check the HAC standard error's scale.
    rng : draws the shifts (and lagged.scan's Gaussian draws); default np.random.default_rng(0).

    Returns
    -------
    dict
        lagged.scan's "lag0" entry with max_lag 0, and method (PRIMARY_METHOD):
        status : "ok", or INSUFFICIENT with a reason (under 30 rows where both differences are finite, or a
            constant series); then r, ci, n_eff and p are None.
        n : the rows where both stationary series are finite.
        r : the lag-0 correlation of the winsorised, standardised differences over the rows present in both.
        t : the sum of products over its HAC standard error under independence (Bartlett weights up to
            `bandwidth` rows), widened by `covolatility` where both series are volatile at the same moments.
        p : two-sided, from the t distribution on n - 2 df of |t| / scale; p_adjusted: None (Holm, later).
        scale : the circular shifts' spread of t where it exceeds the alarm level (else 1); n_surrogates: the
            shifts it was judged on; surrogates: that check in words.
        ci, se_z, n_eff : the 95 % Fisher-z CI from the HAC long-run variance of r's influence function
            (times scale), its standard error on the z scale, and the n whose Fisher-z CI is that wide.
        statistic, bandwidth, covolatility : the statistic's name, the HAC bandwidth in rows, the widening.

    References
    ----------
    Bretherton et al. (1999), J. Climate 12, 1990-2009 (effective sample size of autocorrelated series).
    Newey & West (1987), Econometrica 55, 703-708 (HAC variance, Bartlett weights).
    Newey & West (1994), Rev. Econ. Stud. 61, 631-653 (the bandwidth rule).
    Fisher (1915), Biometrika 10, 507-521; Fisher (1921), Metron 1, 3-32 (the z transform).
    Wilcox (2012), Introduction to Robust Estimation and Hypothesis Testing, 3rd ed., Academic Press
    (winsorising, MAD).
    Lancaster et al. (2018), Phys. Rep. 748, 1-60 (surrogate data, rotations).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    res = lagged.scan(stationary(x, step_s), stationary(y, step_s), 0, n_surrogates, rng)["lag0"]
    res["method"] = PRIMARY_METHOD
    return res
