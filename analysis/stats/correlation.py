"""Naive and primary (stationary, effective-n) correlation with effect size, CI, p, n and n_eff."""

from __future__ import annotations

import numpy as np
from scipy import stats

from analysis.stats.series import INSUFFICIENT, MIN_N_EFF, is_constant, stationary

Z_95 = 1.959963984540054


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample ACF at lags 0..max_lag by FFT (x finite)."""
    n = x.size
    xc = x - x.mean()
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(xc, nfft)
    acov = np.fft.irfft(spec * np.conj(spec), nfft)[: max_lag + 1]
    return acov / acov[0] if acov[0] > 0 else np.zeros(max_lag + 1)


def effective_n(x: np.ndarray, y: np.ndarray, max_lag: int | None = None) -> float:
    """Bretherton et al. (1999) eq. 30: n / (1 + 2 sum_k (1 - k/n) rho_x(k) rho_y(k)).

    Truncated at min(n/5, 100) lags: enough for stationary (differenced) series, and truncation
    keeps the noise of the estimated ACF products from dominating. Clamped to [2, n].
    """
    n = x.size
    lag = max_lag if max_lag is not None else min(n // 5, 100)
    if n < 4 or lag < 1:
        return float(n)
    k = np.arange(1, lag + 1)
    rx, ry = autocorrelation(x, lag)[1:], autocorrelation(y, lag)[1:]
    inflation = 1.0 + 2.0 * float(np.sum((1.0 - k / n) * rx * ry))
    return float(np.clip(n / max(inflation, 1e-9), 2.0, n))


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
    rho, p_s = stats.spearmanr(xs, ys)
    out.update(pearson_r=float(r), p=float(p), spearman_rho=float(rho), spearman_p=float(p_s))
    return out


def r_test(r: float, n_eff: float) -> tuple[float, list[float]]:
    """Two-sided t-test p and Fisher-z 95 % CI for r with n_eff degrees of freedom."""
    r = float(np.clip(r, -0.999999, 0.999999))
    df = max(n_eff - 2.0, 1.0)
    t = r * np.sqrt(df / (1.0 - r * r))
    p = float(2.0 * stats.t.sf(abs(t), df))
    half = Z_95 / np.sqrt(max(n_eff - 3.0, 1.0))
    z = np.arctanh(r)
    return p, [float(np.tanh(z - half)), float(np.tanh(z + half))]


def correlation_with_neff(x: np.ndarray, y: np.ndarray, method: str) -> dict:
    """r, CI, p from Bretherton's effective n; 'insufficient data' when n_eff < 30 or constant."""
    xs, ys = _finite_pair(x, y)
    out: dict = {"r": None, "ci": None, "p": None, "p_adjusted": None, "n": int(xs.size),
                 "n_eff": None, "method": method}
    if xs.size < 4 or is_constant(xs) or is_constant(ys):
        out["status"] = INSUFFICIENT
        out["reason"] = "a series is constant or too short"
        return out
    r = float(np.corrcoef(xs, ys)[0, 1])
    n_eff = effective_n(xs, ys)
    out.update(r=r, n_eff=n_eff)
    if n_eff < MIN_N_EFF:
        out["status"] = INSUFFICIENT
        out["reason"] = f"effective sample size {n_eff:.1f} < {MIN_N_EFF:.0f}"
        return out
    out["p"], out["ci"] = r_test(r, n_eff)
    out["status"] = "ok"
    return out


PRIMARY_METHOD = ("pearson on linearly detrended first differences; p and Fisher-z CI from Bretherton (1999) "
                  "effective n")


def primary(x: np.ndarray, y: np.ndarray) -> dict:
    """The primary lag-0 test: differencing (and detrending the differences) removes shared trends, n_eff
    absorbs what autocorrelation is left."""
    return correlation_with_neff(stationary(x), stationary(y), PRIMARY_METHOD)
