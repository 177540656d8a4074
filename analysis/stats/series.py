"""Small transforms shared by the tests: stationarity, standardising, robust z, onsets, bands."""

from __future__ import annotations

import numpy as np

MIN_N_EFF = 30.0
BANDS = ((0.7, "strong"), (0.3, "moderate"), (0.0, "weak"))  # the seed's thresholds on |r|
INSUFFICIENT = "insufficient data"


def first_difference(x: np.ndarray) -> np.ndarray:
    """x[t] - x[t-1] on the same grid (first element NaN); a gap on either side stays a gap."""
    out = np.full(x.shape, np.nan)
    out[1:] = np.diff(x)
    return out


def detrend_linear(x: np.ndarray) -> np.ndarray:
    """x minus its least-squares line over time (gaps stay gaps and do not bend the fit)."""
    out = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    if finite.sum() < 3:
        out[finite] = x[finite] - x[finite].mean() if finite.any() else x[finite]
        return out
    t = np.flatnonzero(finite).astype(float)
    slope, intercept = np.polyfit(t, x[finite], 1)
    out[finite] = x[finite] - (slope * t + intercept)
    return out


def stationary(x: np.ndarray) -> np.ndarray:
    """What every coupling test runs on: first differences, then their linear trend removed.

    Differencing removes a shared linear trend. A run's curves are not lines, though: the gradient
    norm decays and the temperature approaches equilibrium roughly exponentially, so their
    *differences* still drift (a falling heating rate). Two such drifts correlate at every lag, and on
    a two-minute demo run they made the lagged test beat all 1,000 surrogates (p = 0.001) for a grad
    norm and a temperature that had nothing to do with each other; detrended, p = 0.56.
    """
    return detrend_linear(first_difference(x))


def is_constant(x: np.ndarray) -> bool:
    finite = x[np.isfinite(x)]
    return finite.size < 2 or float(np.ptp(finite)) == 0.0


def standardise_fill(x: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance; gaps become 0 (the mean) so FFTs can run over them."""
    finite = np.isfinite(x)
    out = np.zeros(x.shape)
    vals = x[finite]
    sd = vals.std()
    if vals.size and sd > 0:
        out[finite] = (vals - vals.mean()) / sd
    return out


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD): a spike cannot inflate its own yardstick."""
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full(x.shape, np.nan)
    med = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - med))
    if mad == 0:
        mad = finite.std() or 1.0
    return (x - med) / mad


def onsets(mask: np.ndarray) -> np.ndarray:
    """Indices where a boolean series turns on (0 -> 1); a series that starts on counts at 0."""
    m = np.asarray(mask, dtype=bool)
    prev = np.concatenate(([False], m[:-1]))
    return np.flatnonzero(m & ~prev)


def strength_band(abs_r: float) -> str:
    for threshold, name in BANDS:
        if abs_r > threshold:
            return name
    return "weak"
