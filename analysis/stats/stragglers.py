"""Stragglers of a job whose ranks wait for each other: which rank computes slower than the others, whether its
GPU's heat or power explains it, and what it cost the job (pure numpy).

Every rank's wall step time is the same under DDP or FSDP2; each rank's *compute* time per step is not
(`train_step_compute_seconds`: the step less the rank's waits on collectives). On a grid of rows, rank r's
log-ratio to the median of the other ranks,

    L_r(t) = log c_r(t) - log median_{r' != r} c_r'(t),

is 0 for a rank in step and log 1.25 for a rank 25 % slower. Everything below is a test on L_r:

* **straggler**: its mean exceeds log(1 + MARGIN) (a rank at least 5 % slower than the others), one-sided, with a
  heteroscedasticity- and autocorrelation-consistent standard error (Newey-West, Bartlett kernel, bandwidth by
  Andrews' AR(1) plug-in: slowly drifting ranks do not pass for stragglers), Holm over the job's ranks;
* **cause**: a straggler is *thermal or power* when its slowness goes with its GPU's state — regressed on the
  GPU's throttle flag (or its clock deficit when the flag does not vary), the slowdown while throttled exceeds
  log(1 + MARGIN) significantly; a straggler whose slowness does not follow its GPU's state has *another cause*
  (data, input pipeline, network); one whose GPU has no hardware series is *unknown*;
* **cost**: the tokens the job lost to each thermal straggler's throttling: in lockstep the slowest rank sets the
  pace, so at each throttled row the job's step would have been shorter by what the rank's compute exceeds its
  compute without the slowdown (its observed compute divided by its estimated slowdown while throttled) — where
  that exceeds the next slowest rank's. The 95 % CI carries the slowdown's (HAC) uncertainty.

References
----------
Newey, W. K. & West, K. D. (1987). A simple, positive semi-definite, heteroskedasticity and autocorrelation
consistent covariance matrix. Econometrica 55, 703-708.
Andrews, D. W. K. (1991). Heteroskedasticity and autocorrelation consistent covariance matrix estimation.
Econometrica 59, 817-858.
Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scand. J. Statist. 6, 65-70.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from thermograd.analysis.stats import Z_95
from thermograd.analysis.stats.lagged import hac_weights
from thermograd.analysis.stats.multiple import holm


@contextlib.contextmanager
def all_nan_is_nan() -> Iterator[None]:
    """numpy's nan-reductions over an all-NaN slice give NaN, as wanted here, and warn; not here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


MARGIN = 0.05  # the smallest slowdown worth naming: a rank 5 % slower than the others
MIN_ROWS = 30  # rows with data a rank needs before it is tested
MIXED_STEP = 0.5  # a step whose GPU's state changed during it, or between the readings around it
MIN_STATE_ROWS = 10  # rows in each throttle state before a slowdown "while throttled" can be estimated


@dataclass(frozen=True)
class RankRows:
    """One rank on the job's grid: mean compute seconds per step, steps and tokens in each row (NaN: no step)."""

    rank: int
    gpu_uuid: str
    node: str
    compute_s: np.ndarray
    tokens: np.ndarray


@dataclass(frozen=True)
class GpuRows:
    """One GPU on the job's grid: its throttle flag (0/1; thermal or power reasons), clock / max clock, °C."""

    uuid: str
    throttled: np.ndarray
    clock_ratio: np.ndarray
    temperature: np.ndarray
    reasons: tuple[str, ...] = ()  # the clock-event reasons seen while throttled


@dataclass(frozen=True)
class StepMatrix:
    """The job step by step (offline, where every rank's step log is at hand): each rank's compute seconds of each
    step the ranks share, the job's step time, its tokens, and whether each rank's GPU was throttled then."""

    compute_s: np.ndarray  # ranks x steps
    step_s: np.ndarray  # steps
    tokens: np.ndarray  # steps (all ranks)
    throttled: np.ndarray  # ranks x steps, 0/1, MIXED_STEP where the readings around the step differ (NaN: unknown)


@dataclass
class RankVerdict:
    rank: int
    gpu_uuid: str
    node: str
    n: int
    ratio: float | None  # exp(mean log-ratio): 1.25 is 25 % slower than the other ranks' median
    ratio_ci: tuple[float, float] | None
    p: float | None
    p_adjusted: float | None = None
    straggler: bool = False
    cause: str | None = None  # "thermal or power", "another cause", "unknown" (stragglers only)
    cause_reason: str = ""
    throttled_fraction: float | None = None
    slowdown_while_throttled: float | None = None  # ratio: 1.25 = 25 % slower while its GPU throttles
    slowdown_ci: tuple[float, float] | None = None
    slowdown_p: float | None = None
    tokens_lost: float | None = None
    tokens_lost_ci: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class JobVerdict:
    ranks: list[RankVerdict]
    step_s: float
    n_rows: int
    alpha: float
    margin: float = MARGIN
    log_ratio: np.ndarray | None = None  # ranks x rows, for the figure

    @property
    def stragglers(self) -> list[RankVerdict]:
        return [r for r in self.ranks if r.straggler]

    @property
    def thermal(self) -> list[RankVerdict]:
        return [r for r in self.stragglers if r.cause == "thermal or power"]


def andrews_bandwidth(x: np.ndarray) -> int:
    """Newey-West's lag truncation from Andrews' AR(1) plug-in for the Bartlett kernel:
    1.1447 (alpha n)^(1/3), alpha = 4 rho^2 / (1 - rho)^4, rho the lag-1 autocorrelation (capped below 1)."""
    n = x.size
    e = x - x.mean()
    denom = float(e @ e)
    rho = float(e[1:] @ e[:-1]) / denom if denom > 0 and n > 2 else 0.0
    rho = min(max(rho, -0.97), 0.97)
    alpha = 4 * rho**2 / (1 - rho) ** 4
    return int(min(max(np.ceil(1.1447 * (alpha * n) ** (1 / 3)), 0), n - 1))


def long_run_variance(x: np.ndarray, lags: int | None = None) -> float:
    """Newey-West long-run variance of a series without gaps (Bartlett weights 1 - k / (lags + 1))."""
    e = x - x.mean()
    n = e.size
    lags = andrews_bandwidth(x) if lags is None else lags
    total = float(e @ e) / n
    for k, w in enumerate(hac_weights(lags)[1:], start=1):
        total += float(w) * float(e[k:] @ e[:-k]) / n
    return max(total, float(e @ e) / n / max(n, 1))  # never below a white-noise floor's share


def hac_mean(x: np.ndarray) -> tuple[float, float]:
    """(mean, its HAC standard error) of the finite values of `x`, gaps closed up (rows in time order)."""
    x = x[np.isfinite(x)]
    return float(x.mean()), float(np.sqrt(long_run_variance(x) / x.size))


def hac_difference(y: np.ndarray, state: np.ndarray) -> tuple[float, float]:
    """(slope, HAC standard error) of y on a 0/1 `state`: the mean of y in state 1 minus in state 0, as the OLS
    slope y = a + b state + e with Newey-West on the score (state - mean) e."""
    ok = np.isfinite(y) & np.isfinite(state)
    y, s = y[ok], state[ok]
    xc = s - s.mean()
    sxx = float(xc @ xc)
    b = float(xc @ (y - y.mean())) / sxx
    resid = y - y.mean() - b * xc
    score = xc * resid
    lags = andrews_bandwidth(resid)
    lrv = float(score @ score)
    for k, w in enumerate(hac_weights(lags)[1:], start=1):
        lrv += float(w) * float(score[k:] @ score[:-k])
    return b, float(np.sqrt(max(lrv, float(score @ score)) / sxx**2))


def log_ratios(compute: np.ndarray) -> np.ndarray:
    """ranks x rows: each rank's log compute time less the log of the other ranks' median in that row.

    Each row is sorted once and every rank's leave-one-out median read from the sorted order: leaving one value
    out shifts the order statistics above it down by one. A nanmedian of the other ranks for each rank cost
    ranks^2 x rows (162 s for 1,024 ranks x 4,802 rows); this costs one sort (about 2 s), with the same values.
    """
    logs = np.log(np.where(compute > 0, compute, np.nan))
    n_ranks = logs.shape[0]
    if n_ranks == 0:
        return logs
    order = np.argsort(logs, axis=0, kind="stable")  # NaN sorts last: the finite values come first
    ordered = np.take_along_axis(logs, order, axis=0)
    position = np.empty_like(order)  # each rank's place in its row's order
    np.put_along_axis(position, order, np.broadcast_to(np.arange(n_ranks)[:, None], order.shape), axis=0)
    finite = np.isfinite(logs)
    n_others = finite.sum(axis=0)[None, :] - finite  # finite values among the other ranks

    def others_at(k: np.ndarray) -> np.ndarray:
        """The k-th smallest of the other ranks' values (a rank's own finite value skipped)."""
        index = k + ((k >= position) & finite)
        return np.take_along_axis(ordered, np.clip(index, 0, n_ranks - 1), axis=0)

    with np.errstate(invalid="ignore"):
        reference = (others_at((n_others - 1) // 2) + others_at(n_others // 2)) / 2
    return logs - np.where(n_others > 0, reference, np.nan)


def _tokens_lost(rank_index: int, compute: np.ndarray, step: np.ndarray, tokens: np.ndarray, throttled: np.ndarray,
                 slowdown: float, slowdown_se: float) -> tuple[float, tuple[float, float]]:
    """Tokens the job lost to rank `rank_index`'s throttling, with a 95 % CI.

    At each throttled row the rank's compute is observed; unthrottled it would have been that divided by its
    slowdown while throttled (exp `slowdown`, estimated with a HAC error against the other ranks). In lockstep
    the slowest rank sets the pace: the job's step is the largest compute of each step plus its communication,
    which on rows of several steps exceeds the largest of the ranks' row means by a premium (measured on the
    unthrottled rows). The job's step would have been the larger of that compute and the next slowest rank's,
    plus the premium; it then does `step / step_then` times the tokens in the same time. The CI carries the
    slowdown's and the premium's uncertainty (the loss grows with the slowdown and falls with the premium)."""
    mine = compute[rank_index]
    on = (throttled > 0.5) & np.isfinite(mine) & np.isfinite(step) & np.isfinite(tokens)
    if not on.any():
        return 0.0, (0.0, 0.0)
    others = np.delete(compute, rank_index, axis=0)
    with all_nan_is_nan():
        next_slowest = np.nanmax(others, axis=0) if others.size else np.zeros(step.size)
        slowest = np.fmax(mine, next_slowest)
    next_slowest = np.where(np.isfinite(next_slowest), next_slowest, 0.0)
    off = (throttled <= 0.5) & np.isfinite(step) & np.isfinite(slowest)
    if off.sum() >= MIN_STATE_ROWS:
        premium, premium_se = hac_mean(step[off] - slowest[off])
    else:  # too few unthrottled rows to measure it: the throttled rows' own (an upper bound: larger loss)
        with all_nan_is_nan():
            premium, premium_se = float(np.nanmedian(step[on] - slowest[on])), 0.0

    def lost(log_slowdown: float, extra_s: float) -> float:
        step_then = np.maximum(mine[on] * np.exp(-log_slowdown), next_slowest[on]) + extra_s
        step_then = np.clip(np.minimum(step_then, step[on]), 1e-9, None)  # never slower than it was
        return float(np.sum(tokens[on] * (step[on] / step_then - 1)))

    low = lost(slowdown - Z_95 * slowdown_se, premium + Z_95 * premium_se)
    high = lost(slowdown + Z_95 * slowdown_se, max(premium - Z_95 * premium_se, 0.0))
    return lost(slowdown, premium), (low, high)


def _tokens_lost_by_step(rank_index: int, steps: StepMatrix, slowdown: float,
                         slowdown_se: float) -> tuple[float, tuple[float, float]]:
    """The same cost step by step, where the steps are known: at each step the rank's GPU was throttled, the job's
    step would have been the largest compute of that step with the rank's divided by its slowdown, plus the same
    communication; exact but for the slowdown, whose uncertainty the CI carries, and for the steps around a change
    of state (MIXED_STEP), which may or may not have been slowed: the estimate counts half of what they would
    have cost, the CI's lower end none of it and its upper end all of it."""
    state = steps.throttled[rank_index]
    usable = np.isfinite(steps.compute_s[rank_index])
    on, mixed = usable & (state > MIXED_STEP), usable & (state == MIXED_STEP)
    if not (on.any() or mixed.any()):
        return 0.0, (0.0, 0.0)

    mine = steps.compute_s[rank_index]
    with all_nan_is_nan():  # each step's other ranks and communication, once for every bound
        others = (np.nanmax(np.delete(steps.compute_s, rank_index, axis=0), axis=0) if steps.compute_s.shape[0] > 1
                  else 0 * mine)
        communication = np.nan_to_num(steps.step_s - np.fmax(mine, others))
    others = np.nan_to_num(others)

    def lost(log_slowdown: float, where: np.ndarray) -> float:
        step_then = np.maximum(mine[where] * np.exp(-log_slowdown), others[where]) + communication[where]
        step_then = np.clip(np.minimum(step_then, steps.step_s[where]), 1e-9, None)
        return float(np.nansum(steps.tokens[where] * (steps.step_s[where] / step_then - 1)))

    low, high = slowdown - Z_95 * slowdown_se, slowdown + Z_95 * slowdown_se
    return (lost(slowdown, on) + 0.5 * lost(slowdown, mixed),
            (lost(low, on), lost(high, on) + lost(high, mixed)))


def _throttle_slowdown(row: np.ndarray, gpu: GpuRows) -> tuple[float, float] | None:
    """(log slowdown while its GPU throttles, its HAC standard error), when the GPU's state varies enough
    over the rows where the rank has data; None otherwise.

    The rows next to a change of state are left out: a row holds several steps and its state is its readings'
    (any of them throttled), so the steps of such a row are partly of the other state, and counting them
    diluted the slowdown towards 1 (by about two standard errors in 64-rank jobs, bench/bench_job.py)."""
    state = np.where(np.isfinite(gpu.throttled), gpu.throttled > 0.5, np.nan)
    edge = np.zeros(state.size, dtype=bool)
    changed = np.isfinite(state[1:]) & np.isfinite(state[:-1]) & (state[1:] != state[:-1])
    edge[1:] |= changed
    edge[:-1] |= changed
    state = np.where(edge, np.nan, state)
    ok = np.isfinite(row) & np.isfinite(state)
    hot = state[ok] > 0.5
    if hot.sum() < MIN_STATE_ROWS or (~hot).sum() < MIN_STATE_ROWS:
        return None
    return hac_difference(np.where(ok, row, np.nan), state)


def analyse_job(ranks: list[RankRows], gpus: dict[str, GpuRows], step: np.ndarray, step_s: float,
                alpha: float = 0.05, steps: StepMatrix | None = None) -> JobVerdict:
    """Every rank of one job on one grid.

    Two families of one-sided tests, each Holm-corrected over the job's ranks:

    * slower **while its GPU throttles**: the difference of the rank's log-ratio between the rows its GPU
      reports a thermal or power clock-event reason and the rows it does not exceeds log(1 + MARGIN) — a rank
      that slows down only while its GPU throttles is a straggler then, however short the hot spells;
    * slower **throughout**: the mean log-ratio over the run exceeds log(1 + MARGIN).

    A rank significant in the first family is a *thermal or power* straggler; one significant only in the second
    is a straggler of *another cause* — unless its GPU throttled throughout the run with its clock down, which
    time cannot separate from its slowness (said so), or it has no hardware series (*unknown*).

    Parameters
    ----------
    ranks : each rank's compute seconds per step and tokens per row.
    gpus : each GPU's throttle flag, clock ratio and temperature per row, by uuid (a rank's `gpu_uuid`).
    step : the job's wall step time per row (the ranks share it in lockstep: their median).
    step_s : the grid's row length, for the report.
    steps : the job step by step, when every rank's steps are at hand (offline): the tokens lost are then
        counted step by step instead of on rows.

    Returns
    -------
    A JobVerdict: every rank's ratio to the others with its CI, its slowdown while throttled, the stragglers,
    each straggler's cause and the tokens its throttling cost the job.
    """
    compute = np.vstack([r.compute_s for r in ranks]) if ranks else np.empty((0, step.size))
    log_ratio = log_ratios(compute) if len(ranks) >= 2 else np.full_like(compute, np.nan)
    margin = float(np.log1p(MARGIN))
    verdicts: list[RankVerdict] = []
    throughout: list[tuple[RankVerdict, float]] = []
    while_throttled: list[tuple[RankVerdict, float]] = []
    for index, rank in enumerate(ranks):
        row = log_ratio[index]
        n = int(np.isfinite(row).sum())
        v = RankVerdict(rank.rank, rank.gpu_uuid, rank.node, n, None, None, None)
        verdicts.append(v)
        if n < MIN_ROWS:
            v.notes.append(f"{n} rows with compute time (at least {MIN_ROWS} needed)")
            continue
        mean, se = hac_mean(row)
        v.ratio = float(np.exp(mean))
        v.ratio_ci = (float(np.exp(mean - Z_95 * se)), float(np.exp(mean + Z_95 * se)))
        v.p = _one_sided_p(mean - margin, se)
        throughout.append((v, v.p))
        gpu = gpus.get(rank.gpu_uuid)
        if gpu is None:
            continue
        known = np.isfinite(gpu.throttled) & np.isfinite(row)
        v.throttled_fraction = float(np.mean(gpu.throttled[known] > 0.5)) if known.any() else None
        slowdown = _throttle_slowdown(row, gpu)
        if slowdown is not None:
            b, b_se = slowdown
            v.slowdown_while_throttled = float(np.exp(b))
            v.slowdown_ci = (float(np.exp(b - Z_95 * b_se)), float(np.exp(b + Z_95 * b_se)))
            v.slowdown_p = _one_sided_p(b - margin, b_se)
            while_throttled.append((v, v.slowdown_p))
    thermal = _holm_significant(while_throttled, alpha)
    slow = _holm_significant(throughout, alpha)
    for (v, _), adjusted in zip(throughout, holm([p for _, p in throughout]), strict=True):
        v.p_adjusted = adjusted
    tokens = np.nansum(np.vstack([r.tokens for r in ranks]), axis=0) if ranks else np.zeros(step.size)
    for index, v in enumerate(verdicts):
        if id(v) in thermal:
            v.straggler, v.cause = True, "thermal or power"
            v.cause_reason = (f"it computes {100 * (v.slowdown_while_throttled - 1):.0f} % slower while its GPU "
                              f"reports a thermal or power clock-event reason [95 % CI "
                              f"{100 * (v.slowdown_ci[0] - 1):.0f}, {100 * (v.slowdown_ci[1] - 1):.0f}], throttled "
                              f"{100 * (v.throttled_fraction or 0):.0f} % of the run")
            b = np.log(v.slowdown_while_throttled)
            b_se = (np.log(v.slowdown_ci[1]) - np.log(v.slowdown_ci[0])) / (2 * Z_95)
            if steps is not None:
                v.tokens_lost, v.tokens_lost_ci = _tokens_lost_by_step(index, steps, b, b_se)
            else:
                v.tokens_lost, v.tokens_lost_ci = _tokens_lost(index, compute, step, tokens,
                                                               gpus[v.gpu_uuid].throttled, b, b_se)
        elif id(v) in slow:
            v.straggler = True
            _other_cause(v, gpus.get(v.gpu_uuid), log_ratio[index])
    return JobVerdict(verdicts, step_s, int(step.size), alpha, log_ratio=log_ratio)


def _one_sided_p(excess: float, se: float) -> float:
    if se > 0:
        return float(stats.norm.sf(excess / se))
    return 0.0 if excess > 0 else 1.0


def _holm_significant(tests: list[tuple[RankVerdict, float]], alpha: float) -> set[int]:
    return {id(v) for (v, _), adjusted in zip(tests, holm([p for _, p in tests]), strict=True) if adjusted < alpha}


def _other_cause(verdict: RankVerdict, gpu: GpuRows | None, row: np.ndarray) -> None:
    """A straggler throughout whose slowness was not shown to follow its GPU's throttling."""
    if gpu is None:
        verdict.cause = "unknown"
        verdict.cause_reason = f"no hardware series for its GPU {verdict.gpu_uuid or '(none)'}"
        return
    ok = np.isfinite(row)
    deficit = -np.log(np.clip(gpu.clock_ratio[ok], 1e-3, None))
    mean_deficit = float(np.nanmean(deficit)) if np.isfinite(deficit).any() else 0.0
    if (verdict.throttled_fraction or 0) > 0.9 and mean_deficit >= np.log1p(MARGIN):
        verdict.cause = "thermal or power"
        verdict.cause_reason = (f"its GPU was throttled throughout ({100 * verdict.throttled_fraction:.0f} % of the "
                                f"rows) at a clock {100 * (1 - np.exp(-mean_deficit)):.0f} % below its maximum: "
                                "time cannot tell its slowness from the throttling apart")
        return
    verdict.cause = "another cause"
    if verdict.slowdown_while_throttled is not None:
        verdict.cause_reason = (f"it is slower throughout, not more so while its GPU throttles (slowdown "
                                f"{100 * (verdict.slowdown_while_throttled - 1):+.0f} %): data, input or network")
    else:
        verdict.cause_reason = "its GPU was not throttled and its clock did not fall: data, input or network"
