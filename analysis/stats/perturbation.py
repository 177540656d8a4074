"""Event-triggered averages around learning-rate perturbation onsets against surrogate onsets."""

from __future__ import annotations

import numpy as np

from analysis.stats.series import INSUFFICIENT, onsets


def _window_means(cum: np.ndarray, cnt: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of finite values in [lo, hi) for many windows at once, from running sums."""
    total = cum[hi] - cum[lo]
    count = cnt[hi] - cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def default_window(active: np.ndarray) -> int:
    """Twice the median burst length (>= 5 steps): long enough for a delayed response, short enough
    that the burst is not diluted by unperturbed time."""
    state = np.where(np.isfinite(active), active > 0.5, False)
    starts = onsets(state)
    ends = onsets(~state)
    lengths = [int(ends[ends > s][0] - s) for s in starts if (ends > s).any()]
    return max(5, 2 * int(np.median(lengths))) if lengths else 30


def triggered_average(metric: np.ndarray, active: np.ndarray, window: int, n_surrogates: int,
                      rng: np.random.Generator) -> dict:
    """Effect = mean over onsets of (mean of the window after - mean of the window before).

    Null: the same number of onsets drawn at random from times outside bursts; two-sided p.
    """
    n = metric.size
    state = np.where(np.isfinite(active), active > 0.5, False)
    all_onsets = onsets(state)
    usable = all_onsets[(all_onsets >= window) & (all_onsets + window <= n)]
    out: dict = {"n_onsets": int(usable.size), "window_steps": window, "effect": None, "effect_sd_units": None,
                 "p": None, "p_adjusted": None, "n_surrogates": n_surrogates, "eta": None}
    candidates = np.arange(window, n - window + 1)
    candidates = candidates[~state[candidates - 1]]
    finite = np.isfinite(metric)
    if usable.size < 2 or candidates.size <= usable.size or finite.sum() < 4 * window:
        out["status"] = INSUFFICIENT
        return out
    cum = np.concatenate(([0.0], np.cumsum(np.where(finite, metric, 0.0))))
    cnt = np.concatenate(([0], np.cumsum(finite)))

    def effect(starts: np.ndarray) -> np.ndarray:
        after = _window_means(cum, cnt, starts, starts + window)
        before = _window_means(cum, cnt, starts - window, starts)
        return np.nanmean(after - before, axis=-1)

    observed = float(effect(usable))
    null = effect(rng.choice(candidates, size=(n_surrogates, usable.size)))
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size < 10:
        out["status"] = INSUFFICIENT
        return out
    centre, spread = float(null.mean()), float(null.std())
    offsets = np.arange(-window, window)
    segs = metric[usable[:, None] + offsets[None, :]]
    baseline = _window_means(cum, cnt, usable - window, usable)[:, None]
    with np.errstate(invalid="ignore"):
        eta = np.nanmean(segs - baseline, axis=0)
    out.update(
        status="ok",
        effect=observed,
        effect_sd_units=(observed - centre) / spread if spread > 0 else None,
        p=float((1 + np.sum(np.abs(null - centre) >= abs(observed - centre))) / (1 + null.size)),
        eta=[float(v) if np.isfinite(v) else None for v in eta],
        eta_offsets_steps=[int(o) for o in offsets],
    )
    return out
