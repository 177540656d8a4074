"""Grad-norm spikes against collapse onsets: event coincidence analysis and point-biserial r."""

from __future__ import annotations

import numpy as np

from analysis.stats.series import INSUFFICIENT, first_difference, is_constant, onsets, robust_z


def spike_indices(grad_norm: np.ndarray, z_threshold: float) -> np.ndarray:
    """Onsets of upward spikes: robust z of the first differences above the threshold."""
    z = robust_z(first_difference(grad_norm))
    return onsets(np.nan_to_num(z, nan=-np.inf) > z_threshold)


def _trigger_rate(a: np.ndarray, b_sorted: np.ndarray, window: int) -> np.ndarray:
    """Fraction of A events (last axis) followed by a B event within [a, a + window]."""
    hits = np.searchsorted(b_sorted, a + window, side="right") > np.searchsorted(b_sorted, a, side="left")
    return hits.mean(axis=-1)


def _precursor_rate(a_rows: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """Fraction of B events preceded by an A event within [b - window, b], for each row of A.

    Rows are searched together by offsetting row r by r * span, so one sorted array serves them all.
    """
    rows = a_rows.shape[0]
    span = int(max(a_rows.max(initial=0), b.max(initial=0))) + 2 * window + 2
    offsets = (np.arange(rows) * span)[:, None]
    flat = np.sort((a_rows + offsets).ravel())
    q = b[None, :] + offsets
    hits = np.searchsorted(flat, q, side="right") > np.searchsorted(flat, q - window, side="left")
    return hits.mean(axis=1)


def coincidence(spikes: np.ndarray, collapses: np.ndarray, valid: np.ndarray, window: int,
                n_surrogates: int, rng: np.random.Generator) -> dict:
    """Event coincidence analysis (Donges et al. 2016) with spike times redrawn uniformly as the null."""
    out: dict = {"n_spikes": int(spikes.size), "n_collapses": int(collapses.size), "window_steps": window,
                 "precursor_rate": None, "precursor_p": None, "trigger_rate": None, "trigger_p": None,
                 "n_surrogates": n_surrogates}
    if spikes.size == 0 or collapses.size == 0 or valid.size <= spikes.size:
        out["status"] = INSUFFICIENT
        out["reason"] = "no grad-norm spikes" if spikes.size == 0 else "no collapse onsets"
        return out
    b = np.sort(collapses)
    obs_prec = float(_precursor_rate(np.sort(spikes)[None, :], b, window)[0])
    obs_trig = float(_trigger_rate(spikes, b, window))
    surr = np.sort(rng.choice(valid, size=(n_surrogates, spikes.size)), axis=1)
    null_prec = _precursor_rate(surr, b, window)
    null_trig = _trigger_rate(surr, b, window)
    out.update(
        status="ok",
        precursor_rate=obs_prec,
        precursor_p=float((1 + np.sum(null_prec >= obs_prec)) / (1 + n_surrogates)),
        trigger_rate=obs_trig,
        trigger_p=float((1 + np.sum(null_trig >= obs_trig)) / (1 + n_surrogates)),
        null_trigger_rate_mean=float(null_trig.mean()),
    )
    return out


def point_biserial(state: np.ndarray, values: np.ndarray, n_surrogates: int, rng: np.random.Generator) -> dict:
    """r between a 0/1 state and a series, with p from circular shifts of the state.

    Both are persistent levels (a collapse lasts seconds to minutes, the gradient norm drifts), which an
    effective-n correction truncated for differenced series under-counts. Shifting the state keeps both
    autocorrelations; one FFT gives r at every shift. Shifts within n/20 of zero are left out.
    """
    keep = np.isfinite(state) & np.isfinite(values)
    b, g = state[keep], values[keep]
    n = int(b.size)
    out: dict = {"r": None, "p": None, "p_adjusted": None, "n": n, "n_surrogates": 0,
                 "method": "point-biserial r (collapse state vs grad norm); p from circular shifts of the state"}
    margin = max(1, n // 20)
    if n < 30 or is_constant(b) or is_constant(g):
        out["status"] = INSUFFICIENT
        out["reason"] = "a series is constant or too short"
        return out
    bs, gs = (b - b.mean()) / b.std(), (g - g.mean()) / g.std()
    r_at_shift = np.fft.irfft(np.conj(np.fft.rfft(gs)) * np.fft.rfft(bs), n) / n  # r with the state shifted by s
    shifts = np.arange(margin, n - margin + 1)
    null = np.abs(r_at_shift[rng.choice(shifts, size=min(n_surrogates, shifts.size), replace=False)])
    r = float(r_at_shift[0])
    out.update(status="ok", r=r, n_surrogates=int(null.size),
               p=float((1 + np.sum(null >= abs(r))) / (1 + null.size)))
    return out


def spikes_vs_collapses(grad_norm: np.ndarray, collapsed: np.ndarray, z_threshold: float, window: int,
                        n_surrogates: int, rng: np.random.Generator) -> dict:
    """Both the coincidence analysis and the point-biserial r (collapse state vs grad norm, n_eff-based p)."""
    spikes = spike_indices(grad_norm, z_threshold)
    state = np.where(np.isfinite(collapsed), collapsed > 0.5, False)
    collapse_onsets = onsets(state)
    valid = np.flatnonzero(np.isfinite(grad_norm) & np.isfinite(collapsed))
    result = coincidence(spikes, collapse_onsets, valid, window, n_surrogates, rng)
    result["spike_z_threshold"] = z_threshold
    binary = np.where(np.isfinite(collapsed), state.astype(float), np.nan)
    result["point_biserial"] = point_biserial(binary, grad_norm, n_surrogates, rng)
    result["spike_steps"] = [int(i) for i in spikes[:1000]]
    result["collapse_onset_steps"] = [int(i) for i in collapse_onsets[:1000]]
    return result
