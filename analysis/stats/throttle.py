"""Throttle cost: training throughput lost while the device is throttled or collapsed (pure numpy)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.stats.lagged import dot
from thermograd.analysis.stats.preprocess import INSUFFICIENT, state_onsets

MIN_ROWS = 10
MIN_BLOCKS = 5  # fewer unimpaired blocks cannot say how much the unimpaired rate varies
MIN_BLOCK_S = 10.0  # blocks are never shorter than this (longer than a step time's memory)


def optimal_block_length(x: np.ndarray) -> float:
    """The block length (rows) for a block bootstrap of the mean of `x`, chosen from its autocorrelation.

    Parameters
    ----------
    x : a series without gaps (the rows that take part, in time order).

    Returns
    -------
    The circular block bootstrap's optimal block length, (2 G^2 / D)^(1/3) n^(1/3) with G and the long-run
    variance from a flat-top lag window (Politis & Romano 1995) whose bandwidth is twice the first lag after which
    K_n autocorrelations in a row are insignificant (|rho| < 2 sqrt(log10(n) / n)); at most min(3 sqrt(n), n / 3).
    A series whose speed drifts over minutes gets blocks of minutes; white noise gets blocks of a row or two.

    References
    ----------
    Politis, D. N. & White, H. (2004). Automatic block-length selection for the dependent bootstrap.
    Econometric Reviews 23, 53-70; the correction by Patton, A., Politis, D. N. & White, H. (2009),
    Econometric Reviews 28, 372-375.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 10:
        return 1.0
    e = x - x.mean()
    b_max = np.ceil(min(3 * np.sqrt(n), n / 3))
    k_n = max(5, int(np.log10(n)))
    m_max = int(np.ceil(np.sqrt(n))) + k_n
    threshold = 2 * np.sqrt(np.log10(n) / n)
    acv = np.array([dot(e[k:], e[: n - k]) / n for k in range(m_max + 1)])  # dot: no BLAS threads (lagged.dot)
    if not acv[0] > 0:
        return 1.0
    small = np.abs(acv[1:] / acv[0]) < threshold  # small[i]: lag i + 1
    first = next((m for m in range(m_max - k_n + 1) if small[m: m + k_n].all()), None)
    bandwidth = min(2 * max(first, 1), m_max) if first is not None else m_max
    lags = np.arange(1, bandwidth + 1)
    weight = np.where(lags / bandwidth <= 0.5, 1.0, 2 * (1 - lags / bandwidth))
    g = float(np.sum(2 * weight * lags * acv[lags]))
    long_run = float(acv[0] + np.sum(2 * weight * acv[lags]))
    if not long_run > 0:
        return 1.0
    return float(min(((2 * g * g) / (4 / 3 * long_run ** 2)) ** (1 / 3) * n ** (1 / 3), b_max))


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


def ar1_block_length(x: np.ndarray) -> float:
    """Andrews' AR(1) plug-in bandwidth for the Bartlett kernel (whose batch-means form is a block length),
    1.1447 (a n)^(1/3) with a = 4 rho^2 / ((1 - rho)^2 (1 + rho)^2) from the lag-1 autocorrelation rho.

    Politis-White's search for the correlation's end stops at sqrt(n) lags; a speed that drifts with a time
    constant of minutes is still correlated there, and blocks of its choice (40 s on such runs) left the CI
    covering 81-90 % of simulated runs. The AR(1) fit extrapolates the drift's time constant instead.

    References
    ----------
    Andrews, D. W. K. (1991). Heteroskedasticity and autocorrelation consistent covariance matrix
    estimation. Econometrica 59, 817-858 (eq. 6.4).
    """
    rho = lag1_autocorrelation(x)
    if rho is None:
        return 1.0
    a = 4 * rho ** 2 / ((1 - rho) ** 2 * (1 + rho) ** 2)
    return float(1.1447 * (a * np.size(x)) ** (1 / 3))


def lag1_autocorrelation(x: np.ndarray) -> float | None:
    """The lag-1 autocorrelation of `x` about its mean, clipped to [0, 0.999] (a drift is what matters here; a
    negative value would shrink no variance this module corrects); None for fewer than 3 values or a constant."""
    e = np.asarray(x, dtype=float) - float(np.mean(x))
    denominator = float(e @ e)
    if e.size < 3 or not denominator > 0:
        return None
    return float(np.clip(float(e[1:] @ e[:-1]) / denominator, 0.0, 0.999))


MAX_BATCH_MEANS_CORRECTION = 3.0  # a fitted rho near 1 must not blow the interval up without bound


def batch_means_correction(rho: float | None, block_rows: int) -> float:
    """The factor by which block (batch) means of length `block_rows` understate the long-run variance of an
    AR(1) series with lag-1 autocorrelation `rho`: 1 / (1 - 2 rho (1 - rho^b) / (b (1 - rho) (1 + rho))), at most
    MAX_BATCH_MEANS_CORRECTION.

    A block's mean varies less than the long-run variance over b says, because a drift's correlation within the
    block is cut off at its edges: Var(mean of b) = sigma^2 / b [(1 + rho) / (1 - rho) - 2 rho (1 - rho^b) /
    (b (1 - rho)^2)] against the long-run sigma^2 (1 + rho) / (1 - rho) / b. With a loader drifting on a ~20 s time
    constant and 60 s blocks the variance came out a third too small, and the 95 % CI covered 86-88 % of such
    runs (bench/bench_calibration.py, loader_drift); white noise (rho ~ 0) is left as it is.

    References
    ----------
    Song, W. T. & Schmeiser, B. W. (1995). Optimal mean-squared-error batch sizes. Management Science 41,
    110-123 (the batch-means bias, of order 1 / b).
    """
    if rho is None or rho <= 0 or block_rows < 1:
        return 1.0
    b = float(block_rows)
    bias = 2 * rho * (1 - rho ** b) / (b * (1 - rho) * (1 + rho))
    return float(min(1.0 / max(1.0 - bias, 1.0 / MAX_BATCH_MEANS_CORRECTION), MAX_BATCH_MEANS_CORRECTION))


def throttle_cost(throughput: np.ndarray, throttled: np.ndarray, collapsed: np.ndarray, paused: np.ndarray,
                  step_s: float, block_rows: int) -> dict:
    """Tokens (and seconds of training) lost while throttled or collapsed, against the run's own
    unthrottled rate: (rate when unimpaired - rate when impaired) x the impaired seconds of this run.

    Rows where the trainer paused, or whose state is unknown, count on neither side.

    The loss is this run's: what the impaired rows did is observed; what they would have done unimpaired
    is not. So the 95 % CI is that of the counterfactual: the unimpaired rate's long-run variance (from
    blocks, so autocorrelation is allowed for: clustered_mean) times 1/N0 (the rate is estimated from N0 rows)
    + 1/N1 (the N1 impaired rows would have varied around it), with Student's t over the blocks. The blocks are
    `block_rows` long, or longer where the data need it: a loader whose speed drifts over minutes needs blocks
    of minutes (the longer of optimal_block_length, Politis & White 2004, and ar1_block_length, Andrews 1991, on
    the speed with each state's mean taken out; with
    60 s blocks a drift with a ~80 s time constant made the standardised error's sd 1.2-1.4), down to five
    blocks in a short run. Blocks still cut a drift off at their edges and their means understate its variance;
    an AR(1) fit to the speed says by how much (batch_means_correction). Treating the
    episodes as replicates of the impaired rate instead answers another question (the expected cost of a
    throttled second) and, with one long hot spell among short ones, covered this run's loss in 61 % of
    simulated runs instead of 95 % (tests/test_analysis_stats.py).
    """
    out: dict = {"tokens_lost": None, "seconds_lost": None, "ci_tokens_lost": None, "impaired_s": None,
                 "impaired_episodes": None, "unimpaired_tokens_per_s": None, "impaired_tokens_per_s": None,
                 "fraction_lost": None,
                 "method": "(unimpaired - impaired mean tokens/s) x impaired seconds; CI of the unimpaired "
                           "counterfactual over the impaired rows, from the unimpaired rate's long-run variance "
                           "(blocks of at least the block_s given and of the longer of Politis-White's and Andrews' "
                           "AR(1) choice, their variance corrected for the drift cut off at their edges; Student's t "
                           "over the blocks)"}
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
    residual = np.where(normal, throughput - r0, throughput - r1)[normal | bad]
    chosen = int(np.ceil(max(optimal_block_length(residual), ar1_block_length(residual))))
    block_rows = int(max(min(block_rows, normal.sum() // (2 * MIN_BLOCKS)), min(chosen, normal.sum() // MIN_BLOCKS),
                         round(MIN_BLOCK_S / step_s), 1))
    _, var0, n_blocks = clustered_mean(throughput, normal, np.arange(throughput.size) // block_rows)
    correction = batch_means_correction(lag1_autocorrelation(residual), block_rows)
    var0 *= correction
    out["block_s"], out["block_s_from_data"] = block_rows * step_s, chosen * step_s
    out["block_variance_correction"] = correction
    out.update(impaired_tokens_per_s=r1, tokens_lost=lost, seconds_lost=lost / r0 if r0 > 0 else None,
               fraction_lost=(r0 - r1) / r0 if r0 > 0 else None, impaired_episodes=n_episodes)
    if n_blocks >= MIN_BLOCKS:
        n0, n1 = float(normal.sum()), float(bad.sum())
        long_run_variance = var0 * n0
        half = float(stats.t.ppf(0.975, n_blocks - 1)) * float(np.sqrt(long_run_variance * (1.0 / n0 + 1.0 / n1)))
        out["ci_tokens_lost"] = [float((r0 - r1 - half) * impaired_s), float((r0 - r1 + half) * impaired_s)]
    else:
        out["ci_note"] = (f"{n_blocks} block(s) of {block_rows * step_s:g} s unimpaired: too few to know how the "
                          f"unimpaired rate varies (at least {MIN_BLOCKS})")
    return out
