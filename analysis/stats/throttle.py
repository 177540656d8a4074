"""Throttle cost: training throughput lost while the device is throttled or collapsed (pure numpy)."""

from __future__ import annotations

import numpy as np

from thermograd.analysis.stats.series import INSUFFICIENT, state_onsets

MIN_ROWS = 10
MIN_BLOCKS = 5  # fewer unimpaired blocks cannot say how much the unimpaired rate varies
MIN_BLOCK_S = 10.0  # a short run's blocks are shortened to get MIN_BLOCKS * 2 of them, never below this
Z_95 = 1.959963984540054


def clustered_mean(values: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """Mean of `values` over the rows where `mask` holds, its cluster-robust variance (the row-weighted
    form k / (k - 1) * sum n_i^2 (m_i - m)^2 / N^2) and the number of clusters (`labels`, one per row;
    < 0: none)."""
    keep = mask & (labels >= 0)
    counts = np.bincount(labels[keep])
    sums = np.bincount(labels[keep], weights=values[keep])
    present = counts > 0
    n_i, s_i = counts[present].astype(float), sums[present]
    k, total = int(n_i.size), float(n_i.sum())
    mean = float(s_i.sum() / total) if total else float("nan")
    if k < 2:
        return mean, float("nan"), k
    variance = k / (k - 1) * float(np.sum((s_i - n_i * mean) ** 2)) / total**2
    return mean, variance, k


def throttle_cost(throughput: np.ndarray, throttled: np.ndarray, collapsed: np.ndarray, paused: np.ndarray,
                  step_s: float, block_rows: int) -> dict:
    """Tokens (and seconds of training) lost while throttled or collapsed, against the run's own
    unthrottled rate: (rate when unimpaired - rate when impaired) x the impaired seconds of this run.

    Rows where the trainer paused, or whose state is unknown, count on neither side.

    The loss is this run's: what the impaired rows did is observed; what they would have done unimpaired
    is not. So the 95 % CI is that of the counterfactual: the unimpaired rate's long-run variance (from
    blocks of `block_rows` rows, so autocorrelation is allowed for: clustered_mean) times 1/N0 (the rate
    is estimated from N0 rows) + 1/N1 (the N1 impaired rows would have varied around it). Treating the
    episodes as replicates of the impaired rate instead answers another question (the expected cost of a
    throttled second) and, with one long hot spell among short ones, covered this run's loss in 61 % of
    simulated runs instead of 95 % (tests/test_analysis_stats.py).
    """
    out: dict = {"tokens_lost": None, "seconds_lost": None, "ci_tokens_lost": None, "impaired_s": None,
                 "impaired_episodes": None, "unimpaired_tokens_per_s": None, "impaired_tokens_per_s": None,
                 "fraction_lost": None,
                 "method": "(unimpaired - impaired mean tokens/s) x impaired seconds; CI of the unimpaired "
                           "counterfactual over the impaired rows, from the unimpaired rate's long-run variance "
                           f"({block_rows * step_s:g} s blocks)"}
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
    n_episodes = int(np.unique(episode[bad]).size)
    # A two-minute run has two 60-s blocks: too few for any CI. Shorter blocks (never under MIN_BLOCK_S, still
    # longer than a step time's memory) give it one rather than a bare number.
    block_rows = int(max(min(block_rows, normal.sum() // (2 * MIN_BLOCKS)), round(MIN_BLOCK_S / step_s), 1))
    _, var0, n_blocks = clustered_mean(throughput, normal, np.arange(throughput.size) // block_rows)
    out["block_s"] = block_rows * step_s
    out.update(impaired_tokens_per_s=r1, tokens_lost=lost, seconds_lost=lost / r0 if r0 > 0 else None,
               fraction_lost=(r0 - r1) / r0 if r0 > 0 else None, impaired_episodes=n_episodes)
    if n_blocks >= MIN_BLOCKS:
        n0, n1 = float(normal.sum()), float(bad.sum())
        long_run_variance = var0 * n0
        se = float(np.sqrt(long_run_variance * (1.0 / n0 + 1.0 / n1)))
        out["ci_tokens_lost"] = [float((r0 - r1 - Z_95 * se) * impaired_s), float((r0 - r1 + Z_95 * se) * impaired_s)]
    else:
        out["ci_note"] = (f"{n_blocks} block(s) of {block_rows * step_s:g} s unimpaired: too few to know how the "
                          f"unimpaired rate varies (at least {MIN_BLOCKS})")
    return out
