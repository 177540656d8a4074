"""Lagged cross-correlation with an FFT surrogate null and a max-over-lags p-value."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d

from analysis.stats.series import INSUFFICIENT, is_constant, standardise_fill

MIN_OVERLAP = 30  # overlapping pairs required at the largest lag
_BATCH_VALUES = 4_000_000  # phase surrogates are built in batches of at most this many numbers


def _linear_ccf(xs: np.ndarray, ys: np.ndarray, max_lag: int) -> np.ndarray:
    """r(tau) = mean_t x_t y_{t+tau} for tau in [-L, L] (zero-padded: no wrap-around)."""
    n = xs.size
    nfft = 1 << int(np.ceil(np.log2(n + max_lag + 1)))
    cc = np.fft.irfft(np.conj(np.fft.rfft(xs, nfft)) * np.fft.rfft(ys, nfft), nfft)
    taus = np.arange(-max_lag, max_lag + 1)
    return cc[taus % nfft] / (n - np.abs(taus))


def _circular_shift_max(xs: np.ndarray, ys: np.ndarray, max_lag: int, n_surr: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Max |r| over lags for n_surr circular shifts of y, all from one circular CCF.

    Shifting y by s turns r(tau) into c(s + tau); the surrogate's max over tau in [-L, L] is a sliding
    max of |c| over [s - L, s + L]. Shifts within 2L of zero are excluded (they overlap the real lags).
    """
    n = xs.size
    c = np.abs(np.fft.irfft(np.conj(np.fft.rfft(xs)) * np.fft.rfft(ys), n)) / n
    window_max = maximum_filter1d(c, size=2 * max_lag + 1, mode="wrap")
    shifts = np.arange(2 * max_lag + 1, n - 2 * max_lag)
    chosen = rng.choice(shifts, size=n_surr, replace=False)
    return window_max[chosen]


def _phase_surrogate_max(xs: np.ndarray, ys: np.ndarray, max_lag: int, n_surr: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Max |r| over lags for Fourier phase-randomised copies of x (same spectrum, hence same ACF)."""
    n = xs.size
    nfft = 1 << int(np.ceil(np.log2(n + max_lag + 1)))
    amp = np.abs(np.fft.rfft(xs, n))
    yspec = np.fft.rfft(ys, nfft)
    taus = np.arange(-max_lag, max_lag + 1)
    denom = n - np.abs(taus)
    out = np.empty(n_surr)
    batch = max(1, _BATCH_VALUES // n)
    for lo in range(0, n_surr, batch):
        k = min(batch, n_surr - lo)
        phases = rng.uniform(0, 2 * np.pi, size=(k, amp.size))
        phases[:, 0] = 0.0
        if n % 2 == 0:
            phases[:, -1] = 0.0
        surr = np.fft.irfft(amp * np.exp(1j * phases), n, axis=1)
        cc = np.fft.irfft(np.conj(np.fft.rfft(surr, nfft, axis=1)) * yspec, nfft, axis=1)
        out[lo:lo + k] = np.max(np.abs(cc[:, taus % nfft]) / denom, axis=1)
    return out


def lagged_test(x: np.ndarray, y: np.ndarray, max_lag: int, n_surrogates: int,
                rng: np.random.Generator) -> dict:
    """CCF of two stationary series over +/-max_lag steps; positive lag = y follows x (x leads).

    Null: circular shifts of y when the series is long enough for n_surrogates distinct shifts,
    otherwise phase-randomised surrogates of x. p = (1 + #{surrogate max|r| >= observed}) / (1 + N).
    """
    finite = np.isfinite(x) & np.isfinite(y)
    n = int(finite.sum())
    out: dict = {"peak_lag_steps": None, "peak_r": None, "p": None, "p_adjusted": None, "n": n,
                 "n_surrogates": n_surrogates, "max_lag_steps": max_lag}
    needed = 2 * max_lag + MIN_OVERLAP
    if n < needed or is_constant(x[finite]) or is_constant(y[finite]):
        out["status"] = INSUFFICIENT
        out["reason"] = (f"{n} samples; a scan over +/-{max_lag} lags needs at least {needed} (lower --max-lag)"
                         if n < needed else "a series is constant")
        return out
    # Keep the grid (gaps -> 0 after standardising) so a lag of k steps stays k steps of time.
    lo, hi = np.flatnonzero(finite)[[0, -1]]
    xs = standardise_fill(np.where(finite, x, np.nan)[lo:hi + 1])
    ys = standardise_fill(np.where(finite, y, np.nan)[lo:hi + 1])
    ccf = _linear_ccf(xs, ys, max_lag) * (xs.size / n)  # rescale: the zero-filled gaps add nothing
    if xs.size - 4 * max_lag - 2 >= n_surrogates:
        null = _circular_shift_max(xs, ys, max_lag, n_surrogates, rng) * (xs.size / n)
        out["surrogates"] = "circular shifts of y"
    else:
        null = _phase_surrogate_max(xs, ys, max_lag, n_surrogates, rng) * (xs.size / n)
        out["surrogates"] = "phase-randomised x (FFT)"
    peak = int(np.argmax(np.abs(ccf)))
    observed = float(abs(ccf[peak]))
    out.update(
        status="ok",
        peak_lag_steps=peak - max_lag,
        peak_r=float(ccf[peak]),
        p=float((1 + np.sum(null >= observed)) / (1 + null.size)),
        band_95=float(np.quantile(null, 0.95)),
        ccf=[float(v) for v in ccf],
    )
    return out
