"""Naive and primary (stationary, HAC-studentised, circular-shift) lag-0 correlation."""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.stats import lagged
from thermograd.analysis.stats.series import INSUFFICIENT, is_constant, stationary


def _finite_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def naive(x: np.ndarray, y: np.ndarray) -> dict:
    """Textbook Pearson and Spearman on the levels, as if samples were independent (labelled naive)."""
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
    """The primary lag-0 test of two series' levels (see lagged.scan for the method)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    res = lagged.scan(stationary(x, step_s), stationary(y, step_s), 0, n_surrogates, rng)["lag0"]
    res["method"] = PRIMARY_METHOD
    return res
