"""Throttle cost: training throughput lost while the device is throttled or collapsed (pure numpy)."""

from __future__ import annotations

import numpy as np

from analysis.stats.series import INSUFFICIENT, state_onsets

MIN_ROWS = 10
MIN_EPISODES = 5  # fewer impaired episodes cannot say how much the impaired rate varies
Z_95 = 1.959963984540054


def _unit_means(values: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of `values` over the rows of each label (rows where mask holds), one per label present."""
    keep = mask & (labels >= 0)
    sums = np.bincount(labels[keep], weights=values[keep])
    counts = np.bincount(labels[keep])
    return sums[counts > 0] / counts[counts > 0]


def throttle_cost(throughput: np.ndarray, throttled: np.ndarray, collapsed: np.ndarray, paused: np.ndarray,
                  step_s: float, block_rows: int) -> dict:
    """Tokens (and seconds of training) lost while throttled or collapsed, against the run's own
    unthrottled rate: (rate when unimpaired - rate when impaired) x the impaired seconds of this run.

    Rows where the trainer paused, or whose state is unknown, count on neither side. The 95 % CI is
    that of the rate difference, times the impaired seconds (they are observed, not estimated): the
    impaired rate's standard error comes from its episodes (each one a replicate, so persistence
    within an episode is allowed for), the unimpaired rate's from blocks of `block_rows` rows. With
    fewer than MIN_EPISODES episodes there is no CI.
    """
    out: dict = {"tokens_lost": None, "seconds_lost": None, "ci_tokens_lost": None, "impaired_s": None,
                 "impaired_episodes": None, "unimpaired_tokens_per_s": None, "impaired_tokens_per_s": None,
                 "fraction_lost": None,
                 "method": "(unimpaired - impaired mean tokens/s) x impaired seconds; CI from the standard errors of "
                           f"the two rates (impaired: across episodes; unimpaired: {block_rows * step_s:g} s blocks)"}
    known = np.isfinite(throughput) & ~(np.nan_to_num(paused) > 0.5)
    state_known = np.isfinite(throttled) | np.isfinite(collapsed)
    impaired = (np.nan_to_num(throttled) > 0.5) | (np.nan_to_num(collapsed) > 0.5)
    normal = known & state_known & ~impaired
    bad = known & state_known & impaired
    if normal.sum() < MIN_ROWS:
        out.update(status=INSUFFICIENT, reason="no training-speed series, or too few unthrottled rows"
                   if not np.isfinite(throughput).any() else "too few unthrottled rows with a known state")
        return out
    r0 = float(throughput[normal].mean())
    impaired_s = float(bad.sum() * step_s)
    out.update(status="ok", unimpaired_tokens_per_s=r0, impaired_s=impaired_s)
    if not bad.any():
        out.update(tokens_lost=0.0, seconds_lost=0.0, ci_tokens_lost=[0.0, 0.0], fraction_lost=0.0,
                   impaired_episodes=0, note="never throttled or collapsed while training")
        return out
    r1 = float(throughput[bad].mean())
    lost = (r0 - r1) * impaired_s
    state = np.where(state_known, impaired.astype(float), np.nan)
    episode = np.cumsum(np.isin(np.arange(state.size), state_onsets(state))) - (0 if impaired[0] else 1)
    episodes = _unit_means(throughput, bad, np.where(impaired, episode, -1).astype(int))
    blocks = _unit_means(throughput, normal, np.arange(throughput.size) // max(block_rows, 1))
    out.update(impaired_tokens_per_s=r1, tokens_lost=lost, seconds_lost=lost / r0 if r0 > 0 else None,
               fraction_lost=(r0 - r1) / r0 if r0 > 0 else None, impaired_episodes=int(episodes.size))
    if episodes.size >= MIN_EPISODES and blocks.size >= 2:
        se = np.sqrt(episodes.var(ddof=1) / episodes.size + blocks.var(ddof=1) / blocks.size)
        out["ci_tokens_lost"] = [float((r0 - r1 - Z_95 * se) * impaired_s), float((r0 - r1 + Z_95 * se) * impaired_s)]
    else:
        out["ci_note"] = f"{episodes.size} impaired episode(s): too few for a CI (at least {MIN_EPISODES})"
    return out
