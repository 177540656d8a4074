"""Throttle cost: training throughput lost while the device is throttled or collapsed (pure numpy)."""

from __future__ import annotations

import numpy as np

from analysis.stats.series import INSUFFICIENT

MIN_ROWS = 10


def _block_sums(values: np.ndarray, mask: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block of `block` rows: sum of values and count of rows where mask holds."""
    n = values.size // block * block
    v = np.where(mask, values, 0.0)[:n].reshape(-1, block).sum(axis=1)
    c = mask[:n].reshape(-1, block).sum(axis=1).astype(float)
    return v, c


def throttle_cost(throughput: np.ndarray, throttled: np.ndarray, collapsed: np.ndarray, paused: np.ndarray,
                  step_s: float, block_rows: int, n_boot: int, rng: np.random.Generator) -> dict:
    """Tokens (and seconds of training) lost while throttled or collapsed, against the run's own
    unthrottled rate: (rate when unimpaired - rate when impaired) x impaired seconds.

    Rows where the trainer paused, or whose state is unknown, count on neither side. The 95 % CI
    resamples blocks of `block_rows` rows (a moving-block bootstrap: throughput and throttling are both
    persistent), so it holds for autocorrelated rates.
    """
    out: dict = {"tokens_lost": None, "seconds_lost": None, "ci_tokens_lost": None, "impaired_s": None,
                 "unimpaired_tokens_per_s": None, "impaired_tokens_per_s": None, "fraction_lost": None,
                 "method": "unimpaired minus impaired mean tokens/s, times the impaired seconds; CI from a "
                           f"moving-block bootstrap ({block_rows * step_s:g} s blocks)"}
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
                   note="never throttled or collapsed while training")
        return out
    r1 = float(throughput[bad].mean())
    lost = (r0 - r1) * impaired_s
    s0, c0 = _block_sums(throughput, normal, block_rows)
    s1, c1 = _block_sums(throughput, bad, block_rows)
    pick = rng.integers(0, s0.size, size=(n_boot, s0.size)) if s0.size else np.zeros((n_boot, 0), dtype=int)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (s0[pick].sum(1) / c0[pick].sum(1) - s1[pick].sum(1) / c1[pick].sum(1)) * c1[pick].sum(1) * step_s
    boot = boot[np.isfinite(boot)]
    ci = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))] if boot.size >= 20 else None
    out.update(impaired_tokens_per_s=r1, tokens_lost=lost, seconds_lost=lost / r0 if r0 > 0 else None,
               ci_tokens_lost=ci, fraction_lost=(r0 - r1) / r0 if r0 > 0 else None)
    return out
