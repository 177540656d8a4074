"""Event-triggered averages around perturbation onsets against circularly shifted onsets."""

from __future__ import annotations

import numpy as np

from analysis.stats.series import INSUFFICIENT, state_onsets


def _window_means(cum: np.ndarray, cnt: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of finite values in [lo, hi) for many windows at once, from running sums."""
    total = cum[hi] - cum[lo]
    count = cnt[hi] - cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def burst_lengths(active: np.ndarray) -> list[int]:
    """Lengths in rows of the bursts seen to start and end (NaN = unknown, never a boundary)."""
    s = np.asarray(active, dtype=float)
    starts, ends = state_onsets(s), state_onsets(np.where(np.isfinite(s), 1.0 - s, np.nan))
    return [int(ends[ends > b][0] - b) for b in starts if (ends > b).any()]


def default_window(active: np.ndarray) -> int:
    """Twice the median burst length (>= 5 steps): long enough for a delayed response, short enough
    that the burst is not diluted by unperturbed time."""
    lengths = burst_lengths(active)
    return max(5, 2 * int(np.median(lengths))) if lengths else 30


def triggered_average(metric: np.ndarray, active: np.ndarray, window: int, n_surrogates: int,
                      rng: np.random.Generator) -> dict:
    """Effect = mean over onsets of (mean of the window after - mean of the window before).

    Null: the whole onset pattern circularly shifted (its spacing kept: bursts come on a schedule), by
    every shift of at least one window when there are at most n_surrogates of them; two-sided p.
    """
    n = metric.size
    all_onsets = state_onsets(active)
    usable = all_onsets[(all_onsets >= window) & (all_onsets + window <= n)]
    out: dict = {"n_onsets": int(usable.size), "window_steps": window, "effect": None, "effect_sd_units": None,
                 "p": None, "p_adjusted": None, "n_surrogates": 0, "eta": None,
                 "null": "the onsets circularly shifted together"}
    finite = np.isfinite(metric)
    span = n - 2 * window  # onsets live in [window, n - window]
    shifts = np.arange(window, span - window + 1)
    if usable.size < 2 or shifts.size < 20 or finite.sum() < 4 * window:
        out["status"] = INSUFFICIENT
        return out
    if shifts.size > n_surrogates:
        shifts = rng.choice(shifts, size=n_surrogates, replace=False)
    cum = np.concatenate(([0.0], np.cumsum(np.where(finite, metric, 0.0))))
    cnt = np.concatenate(([0], np.cumsum(finite)))

    def effect(starts: np.ndarray) -> np.ndarray:
        after = _window_means(cum, cnt, starts, starts + window)
        before = _window_means(cum, cnt, starts - window, starts)
        with np.errstate(invalid="ignore"):
            return np.nanmean(after - before, axis=-1)

    observed = float(effect(usable))
    moved = window + (usable[None, :] - window + shifts[:, None]) % (span + 1)
    with np.errstate(invalid="ignore"):
        null = effect(moved)
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
        # equal-tailed two-sided p: a few onsets give a skewed null, where |effect - mean| is not symmetric
        p=float(min(1.0, 2 * (1 + min(np.sum(null >= observed), np.sum(null <= observed))) / (1 + null.size))),
        n_surrogates=int(null.size),
        eta=[float(v) if np.isfinite(v) else None for v in eta],
        eta_offsets_steps=[int(o) for o in offsets],
    )
    return out
