"""Spike-triggered responses: does a hardware metric move in a window after each training spike?

The seed's hypothesis is event-locked: a gradient-norm spike is followed, seconds later, by a thermal or
power event. A correlation of step-to-step movements cannot see that well: a 5 s power drop after each of
six spikes touches 30 rows of a 600-row run, differencing splits it into a +/- pair, and the robust clip
that keeps a chance coincidence of two spikes from reading as coupling also clips the spikes that carry a
real one. So the response is tested where it happens, as a spike-triggered average (the "reverse
correlation" of de Boer & Kuyper 1968): for every spike, the metric's mean in a window after it minus its
mean in the window just before it, averaged over the spikes, for every window of a scan (starts 0 ..
max_lag rows after the spike, several lengths).

The metric is first high-passed (series.highpass_level: a local line over a few minutes is taken out, so a
warming device's trend is not read as a response) and, for the test only, robust-z clipped
(lagged.winsorised: one chance coincidence of a spike with a power dip or a throttle onset moves the
average by at most 2 c / k). The effect, its CI and the equivalence bound are in the metric's own units.

Null: the spike train shifted circularly against the metric (every shift at once, by one FFT
correlation). A shift keeps the spikes' number, spacing and clustering and the metric's autocorrelation,
spikes and volatility (the rotation surrogates of Lancaster et al. 2018; the event coincidence analysis
of Donges et al. 2016 uses the same null). Shifts within the scan's reach of zero are left out: they see
the observed alignment at another lag. Each window's statistic is studentised by its mean and standard
deviation over the far shifts (the exact circular average of the spike configuration against the metric's
autocovariance), and the maximum of |Z| over the windows is compared with the maximum over Gaussians with
the windows' correlation over the shifts (the max-T of Westfall & Young 1993; as for the lag scan, the
shifts alone cannot give the small p-values a family of tests needs in a short run). The p-value is the rank
of the observed maximum among the far shifts' own maxima (at most n_surrogates of them, each judged like the
observed one); only where it lies beyond all of them, and the average is over five events or more, does the
Gaussian tail say how far (the shifts keep the metric's heavy tails, the Gaussian resolves p below 1 / shifts).
Where a few events meet a rare large swing of the metric, their responses differ far more than the shifts
allow, and the events' own spread replaces the shifts' (`widened`); where the events cluster in a volatile
stretch, each shift's spread is scaled by its events' local noise (`event_noise`).

A run too short for the shifts (under MIN_RANKED_SHIFTS with every window inside the analysed rows), or a train
of a few events with too few shifts for their rank to pass a Holm threshold (MIN_SHIFTS_FEW_EVENTS), is judged
against random placements of the same weighted events instead (`placement_test`: the metric's own segments, each
row's response scaled by its local noise and turned into normal scores per window); `null` says which.

Equivalence (the answer "independent" needs it): two one-sided tests (Schuirmann 1987) at every window,
each window's 90 % interval inside +/- `bound_sd` standard deviations of the high-passed metric; shown for
the run when shown at every window (an intersection-union test, Berger 1982: no correction needed).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.ndimage import percentile_filter

from thermograd.analysis.stats import Z_95
from thermograd.analysis.stats.lagged import CircularCorrelator, dot, gaussian_max, winsorised
from thermograd.analysis.stats.preprocess import (
    INSUFFICIENT,
    first_difference,
    highpass_level,
    is_constant,
    onsets,
    robust_z,
    rows_for,
    volatility_standardised,
)

MIN_SPIKES = 3
MIN_GAUSSIAN_EVENTS = 5  # fewer events: the p-value is the shifts' rank alone
# Shifts with every window defined that the observed maximum is ranked among, at least. In 2-3 minute runs the
# warm-up and the run's ends leave 30-80: too few to be exchangeable with the observed alignment (the start-up's
# end, found from the series, sits next to their first spikes), and the test read 0.11-0.13 at 5 % there.
MIN_RANKED_SHIFTS = 100
# A train of fewer than MIN_GAUSSIAN_EVENTS events is judged by the shifts' rank alone, whose p-value is at least
# 1 / (shifts + 1): under this many shifts it could not pass the smallest Holm threshold of the optimizer ->
# hardware family (0.05 / 15 = 0.0033: ten pair tests and five responses), so such a train (three spikes in a
# 3-5 minute run) is judged by random placements instead (placement_test).
MIN_SHIFTS_FEW_EVENTS = 400
RETURN_ROWS = 2  # a change undone within this many rows is a spike's return, not an event of its own
# An event counts by its size, up to this many times the threshold: a response that grows with the spike (a
# level power follows) is carried by the large ones, not diluted by the many just over the threshold, while no
# single spike outweighs a few others.
MAX_WEIGHT = 3.0
MIN_DRAWS = 20_000  # Gaussian draws for a small max-T p-value: resolves it to 5e-5, below any Holm threshold
MIN_SHIFTS = 60  # far shifts needed to know each window's null spread; a short run narrows the scan instead
BEFORE_S = 5.0  # the baseline: the metric's mean over this long before the spike
WINDOW_LENGTHS = (1, 2, 4, 8, 16)  # rows in a response window
TREND_SPANS = 4  # the high-pass spans this many times the scan's reach (at least TREND_MIN_S)
TREND_MIN_S = 60.0
Z_POWER = 0.8416212335729143  # 80 % power
METHOD = ("spike-triggered average: per spike, the high-passed metric's mean in each window after it minus its "
          "mean in the 5 s before (weighted, signed); max over windows of |mean/sd| (sd over circular shifts of the "
          "spike train far from zero, scaled by the metric's noise around the events, the events' own spread where "
          "far larger); p: its rank among the shifts' maxima, beyond all of them the tail of the max over "
          "Gaussians with the windows' correlation")


@dataclass(frozen=True)
class Windows:
    """The response windows of a scan: window i spans rows [starts[i], starts[i] + lengths[i]) after a spike,
    against the baseline rows [-before, -1]; an edge window (edge[i]) is the change from row starts[i] - 1 to
    row starts[i] (the step of a level the spike moves for good, seen where a persistent metric's wander
    does not drown it)."""

    before: int
    starts: np.ndarray
    lengths: np.ndarray
    edge: np.ndarray

    @property
    def reach(self) -> int:
        """Rows from the first baseline row to the last row of the farthest window."""
        return self.before + int(np.max(self.starts + self.lengths))


def response_windows(max_lag: int, before: int) -> Windows:
    """Starts every row up to 8, every 2 to 16, every 4 beyond (a delay is known to the step near zero and
    to a few steps further out), each with the lengths of WINDOW_LENGTHS that end within `max_lag`, and an
    edge window at each start."""
    starts = sorted({*range(0, min(max_lag, 8) + 1), *range(8, min(max_lag, 16) + 1, 2),
                     *range(16, max_lag + 1, 4)})
    pairs = [(a, length, False) for a in starts for length in WINDOW_LENGTHS if a + length - 1 <= max_lag]
    pairs += [(a, 1, True) for a in starts]
    return Windows(before, *(np.array(col) for col in zip(*pairs, strict=True)))


@dataclass
class ShiftStatistics:
    """Each window's after-minus-before mean at circular shifts of the events (shift 0: as observed)."""

    observed: np.ndarray   # (windows,) at shift 0
    mean: np.ndarray       # (windows,) over the far shifts
    sd: np.ndarray         # (windows,) over the far shifts: the spread the observed value is judged by
    sample: np.ndarray     # (shifts drawn, windows) at a sample of the far shifts
    sample_sd: np.ndarray  # (shifts drawn, windows) the spread each drawn shift is judged by

    @staticmethod
    def joined(parts: list[ShiftStatistics]) -> ShiftStatistics:
        """Several trains' windows side by side (the same shifts): one max-T over all of them."""
        return ShiftStatistics(*(np.concatenate([getattr(p, f) for p in parts], axis=-1)
                                 for f in ("observed", "mean", "sd", "sample", "sample_sd")))


@dataclass
class SpikeResponse:
    """One spike train against one hardware metric (a test of the optimizer -> hardware family)."""

    spikes: str
    metric: str
    status: str = INSUFFICIENT
    reason: str | None = None
    n_spikes: int = 0                    # events of the train whose response is reported
    n_down: int = 0                      # of which downward (their responses count with the sign reversed)
    train: str | None = None             # "spikes" (one-step pulses) or "jumps" (levels that stay)
    window_kind: str | None = None       # "mean" (window mean minus the baseline before) or "step" (edge)
    n_events: dict = field(default_factory=dict)  # events of each train that were tested
    effect: float | None = None          # metric units: the peak window's mean after-minus-before
    ci: list[float] | None = None        # 95 %
    effect_sd_units: float | None = None
    lag_window_s: list[float] | None = None
    z: float | None = None
    p: float | None = None
    p_gaussian: float | None = None
    p_shifts: float | None = None
    p_adjusted: float | None = None
    n_shifts: int = 0                    # shifts (or random placements) the p-value ranks the observed among
    null: str | None = None              # "circular shifts", or "random placements" in a run too short for them
    max_lag_s: float | None = None
    equivalence: dict | None = None
    spikes_to_settle: int | None = None
    run_length_to_settle_s: float | None = None
    method: str = METHOD
    spike_rows: list[int] = field(default_factory=list)


def _circle_fill(values: np.ndarray) -> Callable[[np.ndarray], None]:
    """Writes a NaN-free copy of `values` (gaps 0) into the head of a circle, zeros after it (its pad, so no
    shift within the pad wraps the end onto the start), without a temporary copy of a month's series."""
    def fill(out: np.ndarray) -> None:
        head = out[: values.size]
        np.copyto(head, values)
        np.nan_to_num(head, copy=False, nan=0.0)
        out[values.size:] = 0.0
    return fill


def _events_fill(rows: np.ndarray, weights: np.ndarray) -> Callable[[np.ndarray], None]:
    """Writes `weights` at `rows` of a circle, zeros elsewhere."""
    def fill(out: np.ndarray) -> None:
        out[:] = 0.0
        out[rows] = weights
    return fill


@dataclass(frozen=True)
class Events:
    """A training series' large changes: rows, signs (+1 up, -1 down) and whether each is a one-step spike
    (a pulse: undone within RETURN_ROWS) or a jump (a level that stays)."""

    rows: np.ndarray
    signs: np.ndarray
    pulse: np.ndarray
    weights: np.ndarray  # signed: the change's robust z over the threshold, at most MAX_WEIGHT

    @property
    def size(self) -> int:
        return int(self.rows.size)

    def subset(self, keep: np.ndarray) -> Events:
        return Events(self.rows[keep], self.signs[keep], self.pulse[keep], self.weights[keep])

    @staticmethod
    def none() -> Events:
        return Events(np.array([], dtype=np.int64), np.array([]), np.array([], dtype=bool), np.array([]))

    def trains(self) -> list[tuple[str, Events]]:
        """The spikes and the jumps, each as its own train."""
        return [("spikes", self.subset(self.pulse)), ("jumps", self.subset(~self.pulse))]


def noise_threshold(n: int) -> float:
    """The |z| that n Gaussian values exceed half a time on average: Phi^-1(1 - 0.25 / n) (3.3 at 600 rows, 4.5
    at a day of 1 s rows)."""
    return float(stats.norm.isf(0.25 / max(n, 1)))


def training_events(series: np.ndarray, z_threshold: float) -> Events:
    """The large changes of a training series: onsets of robust z of its first differences beyond
    +/-z_threshold, signed. A change undone within RETURN_ROWS rows by one of the other sign is the return of a
    one-step spike and belongs to it: a spike (a pulse) is one event; a jump (a level that stays: a
    learning-rate burst's edges, a level that power follows) is one event of its own sign at each edge. The
    two are kept apart (`Events.trains`): a learning-rate schedule's edges would otherwise dilute the spikes
    that carry an effect, and the spikes the jumps.

    The threshold is at least `noise_threshold` of the run's length: a change that Gaussian noise makes
    somewhere in a long run (a day of 1 s differences holds five beyond 4 sigma) is no spike."""
    z = robust_z(first_difference(np.asarray(series, dtype=float)))
    z_threshold = max(z_threshold, noise_threshold(int(np.isfinite(z).sum())))
    z = np.nan_to_num(z, nan=0.0)
    up, down = onsets(z > z_threshold), onsets(z < -z_threshold)
    rows = np.concatenate((up, down))
    signs = np.concatenate((np.ones(up.size), -np.ones(down.size)))
    order = np.argsort(rows, kind="stable")
    rows, signs = rows[order], signs[order]
    weights = signs * np.minimum(np.abs(z[rows]) / z_threshold, MAX_WEIGHT)
    keep, pulse = np.ones(rows.size, dtype=bool), np.zeros(rows.size, dtype=bool)
    last = -1
    for j in range(rows.size):  # events are sparse: a month of 1 s data holds a few thousand
        if last >= 0 and rows[j] - rows[last] <= RETURN_ROWS and signs[j] != signs[last]:
            keep[j], pulse[last] = False, True
            last = -1  # a spike returns once
        else:
            last = j
    return Events(rows[keep], signs[keep], pulse[keep], weights[keep])


def lag_profile(events: Events, values: np.ndarray, present: np.ndarray, pad: int) -> np.ndarray:
    """profile[s] = the weighted mean over the events of values[row + s] (weights signed: a downward event
    counts with its sign reversed; rows present only; NaN where under half the events' weight has a value
    there), for every circular shift s of the padded circle: one FFT correlation each for the sums and for the
    weight present."""
    corr = CircularCorrelator(values.size + pad)
    sums = corr.correlate(_events_fill(events.rows, events.weights), _circle_fill(values))
    weight = corr.correlate(_events_fill(events.rows, np.abs(events.weights)), _circle_fill(present))
    total = float(np.abs(events.weights).sum())
    enough = weight >= total / 2  # under half the events' weight present: NaN
    np.maximum(weight, 1e-12, out=weight)
    sums /= weight
    sums[~enough] = np.nan
    return sums


def _window_means(cum: np.ndarray, cnt: np.ndarray, lo: np.ndarray, length: int) -> np.ndarray:
    """Means of the finite values in [lo, lo + length) from running sums (NaN where there are none)."""
    total, count = cum[lo + length] - cum[lo], cnt[lo + length] - cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _consecutive_window_means(cum: np.ndarray, cnt: np.ndarray, first: int, length: int, count: int) -> np.ndarray:
    """_window_means for `count` consecutive starts first, first + 1, ...: slices of the running sums, not
    gathers (the same numbers, several times faster on the hundreds of thousands of shifts of a week)."""
    total = cum[first + length: first + length + count] - cum[first: first + count]
    present = cnt[first + length: first + length + count] - cnt[first: first + count]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present > 0, total / np.maximum(present, 1), np.nan)


def far_shifts(n: int, reach: int) -> np.ndarray:
    """The shifts whose windows never meet the observed alignment's: reach < s < n - reach."""
    return np.arange(reach + 1, n - reach)


SHIFT_CHUNK = 1 << 16  # shifts reduced at a time: memory O(chunk), not O(run x windows)


def window_statistics(profile: np.ndarray, windows: Windows, far: np.ndarray, sample: np.ndarray
                      ) -> ShiftStatistics:
    """Every window's after-minus-before statistic at every shift s (the profile's rows [s + a, s + a + length)
    against rows [s - before, s - 1], or against row s + a - 1 for an edge), reduced chunk by chunk as it is made:
    its value at shift 0, its mean and sd over the far shifts, and its values at the sampled far shifts.

    Each window length's running mean is made once per chunk and every window of that length is a slice of it
    (a week has 600,000 shifts and about a hundred windows); the far shifts are one run of consecutive shifts."""
    n, k = profile.size, windows.starts.size
    reach_after = int(np.max(windows.starts + windows.lengths))
    if far.size and far[-1] - far[0] + 1 != far.size:
        raise ValueError("the far shifts must be consecutive (far_shifts)")
    far_lo, far_hi = (int(far[0]), int(far[-1]) + 1) if far.size else (0, 0)
    where = np.full(n, -1, dtype=np.int64)
    where[sample] = np.arange(sample.size)
    total, square, count = np.zeros(k), np.zeros(k), np.zeros(k)
    observed, drawn = np.full(k, np.nan), np.full((sample.size, k), np.nan)
    lengths = sorted({int(v) for v in windows.lengths} | {1, int(windows.before)})
    for lo in range(0, n, SHIFT_CHUNK):
        chunk = min(n, lo + SHIFT_CHUNK) - lo
        seg = profile[(np.arange(lo - windows.before - 1, lo + chunk - 1 + reach_after + 1)) % n]
        finite = np.isfinite(seg)
        cum = np.concatenate(([0.0], np.cumsum(np.where(finite, seg, 0.0))))
        cnt = np.concatenate(([0], np.cumsum(finite)))
        # means[L][j]: the mean of seg[j, j + L), for every start a window of the chunk reads
        means = {length: _consecutive_window_means(cum, cnt, 0, length, seg.size - length + 1) for length in lengths}
        origin = windows.before + 1  # the chunk's first shift's row 0 in seg; the others follow it
        before = means[int(windows.before)][1: 1 + chunk]
        far_a, far_b = max(far_lo - lo, 0), min(max(far_hi - lo, 0), chunk)
        picked = where[lo: lo + chunk]
        drawn_here = picked >= 0
        drawn_rows = picked[drawn_here]
        for i, (a, length, edge) in enumerate(zip(windows.starts, windows.lengths, windows.edge, strict=True)):
            first = origin + int(a)
            base = means[1][first - 1: first - 1 + chunk] if edge else before
            stat = means[int(length)][first: first + chunk] - base
            values = stat[far_a:far_b]
            values = values[np.isfinite(values)]
            total[i] += values.sum()
            square[i] += dot(values, values)
            count[i] += values.size
            if lo == 0:
                observed[i] = stat[0]
            drawn[drawn_rows, i] = stat[drawn_here]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        sd = np.sqrt(np.maximum(square - count * mean ** 2, 0.0) / np.maximum(count - 1, 1))
    sd = np.where(count > 1, sd, np.nan)
    return ShiftStatistics(observed, mean, sd, drawn, np.broadcast_to(sd, drawn.shape))


def max_t_p(stats_z: ShiftStatistics, reportable: np.ndarray, n_draws: int, rng: np.random.Generator
            ) -> tuple[float, float, float, int, int]:
    """(max |Z| over windows at shift 0, its Gaussian max-T p, its rank p among the drawn far shifts (each
    judged like the observed one), the reportable window with the largest |Z| (a window mean, whose effect and
    lag window say what happens, where an edge's |Z| may be larger at the end of a drop than at its start), and
    the number of drawn shifts ranked)."""
    z = (stats_z.observed - stats_z.mean) / stats_z.sd
    usable = np.isfinite(z) & (stats_z.sd > 0)
    z = np.where(usable, z, 0.0)
    observed = float(np.max(np.abs(z)))
    peak = int(np.argmax(np.where(reportable & usable, np.abs(z), -1.0)))
    centred = stats_z.sample[:, usable] - stats_z.mean[usable]
    with np.errstate(invalid="ignore", divide="ignore"):
        drawn = np.abs(centred / stats_z.sample_sd[:, usable])
    # a shift that moves the events into rows left out (a warm-up, a pause, a gap) has windows with no value:
    # its maximum over the rest would be smaller by construction, so only shifts with every window count
    drawn_max = drawn[np.isfinite(drawn).all(axis=1)].max(axis=1, initial=0.0)
    sample = centred / stats_z.sd[usable]
    sample = sample[np.isfinite(sample).all(axis=1)]
    corr = np.corrcoef(sample, rowvar=False) if sample.shape[0] > 2 else np.eye(int(usable.sum()))
    corr = np.atleast_2d(np.nan_to_num(corr, nan=0.0))
    np.fill_diagonal(corr, 1.0)
    active = np.arange(corr.shape[0])
    draws = gaussian_max(corr, active, n_draws, rng)
    if np.sum(draws >= observed) < 10 and n_draws < MIN_DRAWS:  # a small p: resolve it with more draws
        draws = np.concatenate((draws, gaussian_max(corr, active, MIN_DRAWS - n_draws, rng)))
    p_gauss = float((1 + np.sum(draws >= observed)) / (1 + draws.size))
    p_shifts = float((1 + np.sum(drawn_max >= observed)) / (1 + drawn_max.size))
    return observed, p_gauss, p_shifts, peak, int(drawn_max.size)


def combined_p(p_gauss: float, p_shifts: float, n_shifts: int, k: int) -> float:
    """The shifts' rank p-value; where the observed maximum lies beyond every drawn shift (p_shifts at its floor,
    1 / (shifts + 1)) and the average is over at least MIN_GAUSSIAN_EVENTS events, the Gaussian max-T's tail says
    how far beyond, never more than that floor. (The average of three events meeting a rare swing of the metric
    is no Gaussian: in 3-minute null runs its tail put a throttle episode's coincidence at p < 0.001.)"""
    floor = 1.0 / (n_shifts + 1)
    return min(p_gauss, floor) if p_shifts <= floor and k >= MIN_GAUSSIAN_EVENTS else p_shifts


def equivalence(stats_raw: ShiftStatistics, bound: float, alpha: float) -> dict:
    """TOST at every window: each window's (1 - 2 alpha) interval inside (-bound, bound), in metric units."""
    effect = stats_raw.observed - stats_raw.mean
    se = stats_raw.sd
    ok = np.isfinite(effect) & np.isfinite(se) & (se > 0)
    if not ok.any() or not bound > 0:
        return {"bound": bound, "p": 1.0, "equivalent": False, "max_abs_upper": None}
    z_crit = float(stats.norm.ppf(1 - alpha))
    p = float(np.max(stats.norm.cdf((np.abs(effect[ok]) - bound) / se[ok])))
    return {"bound": bound, "alpha": alpha, "p": p, "equivalent": p < alpha,
            "max_abs_upper": float(np.max(np.abs(effect[ok]) + z_crit * se[ok]))}


HETEROGENEITY_LEVEL = 0.01
NOISE_PERCENTILE = 75
MAX_HETEROGENEOUS = 100  # from this many events on, no few of them can carry the average: the shifts' spread holds


def heterogeneity_limit(k: int) -> float:
    """The HETEROGENEITY_LEVEL tail of chi2(k - 1) / (k - 1): the variance ratio beyond which k responses differ
    more than the shifts allow (Cochran's Q test)."""
    return float(stats.chi2.ppf(1 - HETEROGENEITY_LEVEL, max(k - 1, 1)) / max(k - 1, 1))


def widened(stats_any: ShiftStatistics, noise: np.ndarray, spreads: np.ndarray | None, k: int) -> ShiftStatistics:
    """The same statistics, each shift's spread (shift 0, then the drawn ones) multiplied by its events' relative
    noise (`event_noise`: one value, or one per shift), and replaced by the events' own spread (`event_spreads`,
    rows as the shifts) in the windows where the events' responses are more heterogeneous than the shifts allow
    (heterogeneity_limit). Events that cluster (a spike's baseline in the last one's response) differ more than
    independent ones would, and the shifts, keeping the clustering, already count that; a few events meeting a
    rare swing differ far more."""
    sd = stats_any.sd * noise[0]
    sample_sd = stats_any.sample_sd * (noise[1:, None] if noise.size > 1 else 1.0)
    if spreads is None:
        return ShiftStatistics(stats_any.observed, stats_any.mean, sd, stats_any.sample, sample_sd)
    limit = heterogeneity_limit(k)

    def judged(own: np.ndarray, base: np.ndarray) -> np.ndarray:
        return np.where(np.nan_to_num(own, nan=0.0) ** 2 > limit * base ** 2, own, base)

    sample_sd = judged(spreads[1:], sample_sd) if spreads.shape[0] > 1 else sample_sd
    return ShiftStatistics(stats_any.observed, stats_any.mean, judged(spreads[0], sd), stats_any.sample, sample_sd)


def event_spreads(events: Events, values: np.ndarray, windows: Windows, shifts: np.ndarray) -> np.ndarray:
    """(shifts, windows): each window's standard error of the weighted mean response, from the spread of the
    events' own responses (sqrt(sum w_i^2 (r_i - mean)^2) / sum w_i, with the small-sample factor k / (k - 1)),
    with the events moved by each shift along the padded circle (rows past the data are missing).

    The shifts give the spread of the average when the events fall at random times; when a few events happen
    to meet a rare large swing of the metric (a throttle episode, a collapse), the average is carried by those
    few and the shifts, which mostly miss such swings, understate its spread. The events' own spread does not:
    the test takes it where it is much the larger (`widened`); a response every spike shares keeps its shift
    spread."""
    n, k = values.size, events.size
    offsets = np.arange(-windows.before, int(np.max(windows.starts + windows.lengths)))
    circle = n + windows.reach + 1
    idx = (events.rows[None, :, None] + shifts[:, None, None]) % circle + offsets[None, None, :]
    seg = np.where((idx >= 0) & (idx < n), values[np.clip(idx, 0, n - 1)], np.nan)
    finite = np.isfinite(seg)
    zeros = np.zeros((shifts.size, k, 1))
    cum = np.concatenate((zeros, np.cumsum(np.where(finite, seg, 0.0), axis=2)), axis=2)
    cnt = np.concatenate((zeros, np.cumsum(finite, axis=2)), axis=2)

    def mean(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # (shifts, k, windows): columns [lo, hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (cum[:, :, hi] - cum[:, :, lo]) / (cnt[:, :, hi] - cnt[:, :, lo])

    lo = windows.starts + windows.before
    base = np.where(windows.edge, mean(lo - 1, lo), mean(np.zeros_like(lo), np.full_like(lo, windows.before)))
    r = events.signs[None, :, None] * (mean(lo, lo + windows.lengths) - base)
    w = np.where(np.isfinite(r), np.abs(events.weights)[None, :, None], 0.0)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.nansum(w * r, axis=1) / total
        se = np.sqrt(np.nansum(w * w * (r - d[:, None, :]) ** 2, axis=1)) / total
        used = np.sum(w > 0, axis=1)
        return np.where(used > 1, se * np.sqrt(used / np.maximum(used - 1, 1)), np.nan)


def local_noise(values: np.ndarray, windows: Windows) -> np.ndarray:
    """At each row t, the metric's noise over the rows an event at t reads ([t - before, t + reach)): the running
    upper quartile of its absolute differences (a quartile: a response's own few edges do not count as noise, a
    volatile stretch over a quarter of the rows does)."""
    d = np.abs(first_difference(values))
    typical = float(np.nanmedian(d)) if np.isfinite(d).any() else 1.0
    span = windows.reach
    # the filter centres its window: the origin moves it to [t - before, t - before + span)
    return percentile_filter(np.nan_to_num(d, nan=typical), NOISE_PERCENTILE, size=span, mode="nearest",
                             origin=windows.before - span // 2)


def event_noise(events: Events, noise: np.ndarray, shifts: np.ndarray, circle: int) -> np.ndarray:
    """For each shift, how much noisier the metric is around the events moved by it than around the events at
    a typical far shift (the weighted mean of `local_noise` at them, over its mean across `shifts[1:]`), at
    least 1. Events cluster where training is volatile; where the device is volatile at the same moments (the
    zoo's shared volatile stretches) the shifts, moving them to calm stretches, would understate the spread of
    their average; each shift is judged by its own events' noise, the observed one too."""
    n = noise.size
    magnitude = np.abs(events.weights)
    at = np.empty(shifts.size)
    step = max(1, (1 << 20) // max(events.size, 1))  # shifts at a time: memory O(2^20), whatever the events
    for lo in range(0, shifts.size, step):
        rows = (events.rows[None, :] + shifts[lo: lo + step, None]) % circle  # along the padded circle
        w = np.where(rows < n, magnitude[None, :], 0.0)
        at[lo: lo + step] = (w * noise[np.minimum(rows, n - 1)]).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    baseline = float(np.mean(at[1:])) if at.size > 1 else float(at[0])
    return np.maximum(at / baseline, 1.0) if baseline > 0 else np.ones(shifts.size)


RESPONSE_CLIP = 4.0  # robust z at which a row's response is clipped in the placement test
PLACEMENT_METHOD = ("spike-triggered average (as with shifts), in a run too short for circular shifts or with too few "
                    "events for them: the same weighted events placed at random rows with every window inside the "
                    "analysed rows (the metric's own segments); each row's response scaled by its local noise and "
                    f"clipped at {RESPONSE_CLIP:g} robust z per window; p: the rank of the observed max over windows "
                    "of |mean/sd| "
                    "among the placements' maxima")


def row_responses(values: np.ndarray, windows: Windows) -> np.ndarray:
    """(rows, windows): the after-minus-before response an event at each row would have (means of the finite
    values; NaN where the baseline or the window has none or runs past the data)."""
    n = values.size
    finite = np.isfinite(values)
    cum = np.concatenate(([0.0], np.cumsum(np.where(finite, values, 0.0))))
    cnt = np.concatenate(([0], np.cumsum(finite)))
    rows = np.arange(windows.before, n)
    out = np.full((n, windows.starts.size), np.nan)
    before = _window_means(cum, cnt, rows - windows.before, windows.before)
    for i, (a, length, edge) in enumerate(zip(windows.starts, windows.lengths, windows.edge, strict=True)):
        ok = rows + a + length <= n
        r = rows[ok]
        base = _window_means(cum, cnt, r + a - 1, 1) if edge else before[ok]
        out[r, i] = _window_means(cum, cnt, r + a, int(length)) - base
    return out


def clipped_scores(responses: np.ndarray, clip: float = RESPONSE_CLIP) -> np.ndarray:
    """Each window's responses as robust z (median, 1.4826 MAD; the sd where the MAD is 0, as for a quantised
    metric), clipped at +/-`clip` (NaN where undefined).

    A few events average a few responses, and the metric's heavy tails (a throttle onset, t-distributed noise)
    would make the maximum over windows of such an average heavy-tailed: the placements would then rank a real
    4-sigma response among many chance ones. Clipped, no one row counts more than `clip`, so an average of a
    few has light tails. Ranks (normal scores, van der Waerden 1952) bound a row too, but at the top rank's
    score, about 2.7 at 150 rows: three events that each met the top responses of the run averaged a z of about
    4, and after the max over windows and Holm over 15 tests a 3-spike coupling in a 3-minute run was found in
    20 % of runs where the clip at 4 finds it in 40 %, while independent short runs stay at alpha
    (bench/calibration_effects.py)."""
    out = np.full(responses.shape, np.nan)
    for i in range(responses.shape[1]):
        ok = np.isfinite(responses[:, i])
        if not ok.any():
            continue
        values = responses[ok, i]
        centre = float(np.median(values))
        scale = 1.4826 * float(np.median(np.abs(values - centre)))
        if not scale > 0:
            scale = float(np.std(values))
        out[ok, i] = np.clip((values - centre) / scale, -clip, clip) if scale > 0 else 0.0
    return out


def placed_statistics(events: Events, responses: np.ndarray, candidates: np.ndarray, n_draws: int,
                      rng: np.random.Generator) -> ShiftStatistics:
    """The events' weighted mean response (signed weights, as lag_profile), and its mean, sd and values over
    `n_draws` placements of the same weights at distinct random rows of `candidates`."""
    w = events.weights
    total = float(np.abs(w).sum())

    def mean_response(rows: np.ndarray) -> np.ndarray:  # rows (draws, k) -> (draws, windows)
        r = responses[rows]
        present = np.isfinite(r)
        num = np.where(present, w[None, :, None] * np.nan_to_num(r), 0.0).sum(axis=1)
        den = np.where(present, np.abs(w)[None, :, None], 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den * 2 >= total, num / den, np.nan)

    chunk = max(1, (1 << 22) // max(events.size * responses.shape[1], 1))
    drawn = []
    for lo in range(0, n_draws, chunk):
        size = min(chunk, n_draws - lo)
        pick = np.argsort(rng.random((size, candidates.size)), axis=1)[:, : events.size]
        drawn.append(mean_response(candidates[pick]))
    sample = np.concatenate(drawn)
    with warnings.catch_warnings():  # a window no placement reaches (rows past the run's end) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, sd = np.nanmean(sample, axis=0), np.nanstd(sample, axis=0, ddof=1)
    return ShiftStatistics(mean_response(events.rows[None, :])[0], mean, sd, sample, np.broadcast_to(sd, sample.shape))


def placement_test(trains: list[Events], level: np.ndarray, clipped: np.ndarray, noise: np.ndarray,
                   windows: Windows, reportable: np.ndarray, n_draws: int, rng: np.random.Generator
                   ) -> tuple[ShiftStatistics, float, float, int, int] | None:
    """The spike-triggered test of a run too short for circular shifts: (raw statistics, max |Z| observed, its
    p-value, the reportable window with the largest |Z|, draws), or None under MIN_SHIFTS candidate rows.

    Under independence the events fall at rows exchangeable with any others whose windows lie inside the
    analysed rows; the null places the same weighted events at `n_draws` random sets of such rows (the
    metric's own segments: its autocorrelation, heavy tails and rare swings stay) and ranks the observed
    max-T among the placements' (Westfall & Young 1993), exactly as the shifts do in a longer run; with
    thousands of placements the p-value resolves below any Holm threshold. Placements do not keep the
    events' clustering: each row's response is divided by its local noise relative to the typical (at least
    1), so events clustered in a volatile stretch count no more than elsewhere, the observed ones too."""
    present = np.isfinite(level)
    raw_rows = row_responses(level, windows)
    robust_rows = row_responses(clipped, windows)
    # the rows an event may fall at: as for the observed ones (usable_events), the metric present on at least
    # half of the baseline and of the scan (an event by a gap averages fewer rows, placed ones must too)
    every = np.arange(level.size)
    candidates = usable_events(Events(every, np.ones(every.size), np.zeros(every.size, dtype=bool),
                                      np.ones(every.size)), present, windows).rows
    candidates = candidates[np.isfinite(raw_rows[candidates]).any(axis=1)]
    if candidates.size < max(MIN_SHIFTS, 2 * max(e.size for e in trains)):
        return None
    scale = np.maximum(noise / float(np.mean(noise[candidates])), 1.0)
    robust_rows = clipped_scores(robust_rows / scale[:, None])
    robust = ShiftStatistics.joined([placed_statistics(e, robust_rows, candidates, n_draws, rng) for e in trains])
    # the raw effect's mean and sd are those of the same placements: recomputed on the raw rows
    raw = ShiftStatistics.joined([placed_statistics(e, raw_rows, candidates, min(n_draws, 5000), rng)
                                  for e in trains])
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (robust.observed - robust.mean) / robust.sd
        drawn = np.abs((robust.sample - robust.mean) / robust.sd)
    usable = np.isfinite(z) & (robust.sd > 0)
    observed = float(np.max(np.abs(z[usable]))) if usable.any() else 0.0
    drawn_max = np.max(np.where(usable[None, :], np.nan_to_num(drawn, nan=-np.inf), -np.inf), axis=1)
    drawn_max = drawn_max[np.isfinite(drawn_max)]
    p = float((1 + np.sum(drawn_max >= observed)) / (1 + drawn_max.size))
    peak = int(np.argmax(np.where(reportable & usable, np.abs(np.nan_to_num(z)), -1.0)))
    return raw, observed, p, peak, int(drawn_max.size)


def usable_events(events: Events, present: np.ndarray, windows: Windows) -> Events:
    """Events with the metric present on at least half of their baseline and of their scan."""
    n = present.size
    rows = events.rows
    inside = (rows >= windows.before) & (rows < n)
    rows = np.where(inside, rows, windows.before)
    cnt = np.concatenate(([0], np.cumsum(present)))
    reach_after = int(np.max(windows.starts + windows.lengths))
    hi = np.minimum(rows + reach_after, n)
    before_ok = (cnt[rows] - cnt[rows - windows.before]) * 2 >= windows.before
    after_ok = (cnt[hi] - cnt[rows]) * 2 >= hi - rows
    return events.subset(inside & before_ok & after_ok)


def spike_response(metric: np.ndarray, spikes: Events, names: tuple[str, str], step_s: float, max_lag: int,
                   n_surrogates: int, rng: np.random.Generator, bound_sd: float, alpha: float) -> SpikeResponse:
    """The spike-triggered response of `metric` to the spikes at rows `spikes` (names: (spikes, metric)).

    Parameters
    ----------
    metric : the hardware series on the grid (NaN: missing or left out of the tests).
    spikes : the training series' events (training_events), found on rows the tests use.
    step_s : the grid step; `max_lag` the scan's reach in rows after the spike.
    n_surrogates : Gaussian draws for the max-T p-value, and at most this many shifts for the windows' correlation.
    bound_sd : the smallest effect of interest, in standard deviations of the high-passed metric.
    alpha : the level of the equivalence test (each window's 1 - 2 alpha interval).

    Returns
    -------
    SpikeResponse: the peak window's effect in the metric's units with its 95 % CI and lag window in seconds,
    the number of spikes, p (max-T over windows), and the equivalence test against +/- bound_sd.

    References
    ----------
    de Boer & Kuyper (1968), IEEE Trans. Biomed. Eng. 15, 169-179 (triggered correlation).
    Donges et al. (2016), Eur. Phys. J. Spec. Top. 225, 471-487 (event coincidence, shifted event trains).
    Lancaster et al. (2018), Phys. Rep. 748, 1-60 (surrogate data, rotations).
    Westfall & Young (1993), Resampling-Based Multiple Testing (max-T).
    Schuirmann (1987), J. Pharmacokinet. Biopharm. 15, 657-680; Berger (1982), Technometrics 24, 295-300.
    """
    out = SpikeResponse(spikes=names[0], metric=names[1])
    metric = np.asarray(metric, dtype=float)
    present = np.isfinite(metric)
    n_present = int(present.sum())
    before = rows_for(BEFORE_S, step_s)
    # a short run narrows the scan so that enough far shifts remain to know each window's null spread
    fits = (n_present - MIN_SHIFTS) // 2 - before - 1
    max_lag = min(max_lag, fits)
    if max_lag < 1 or n_present < MIN_SHIFTS or is_constant(metric):
        out.reason = "too few rows of the metric, or it is constant"
        return out
    windows = response_windows(max_lag, before)
    trend_s = max(TREND_MIN_S, TREND_SPANS * windows.reach * step_s)
    level = highpass_level(metric, step_s, trend_s)
    present = np.isfinite(level)
    usable = usable_events(spikes, present, windows)
    trains = [(label, e) for label, e in usable.trains() if e.size >= MIN_SPIKES]
    out.n_events = {label: e.size for label, e in usable.trains()}
    out.max_lag_s = max_lag * step_s
    if not trains:
        out.reason = (f"{usable.size} spikes or jumps with the metric around them (at least {MIN_SPIKES} of "
                      "one kind needed)")
        return out
    pad = windows.reach + 1
    n = metric.size + pad
    far = far_shifts(n, windows.reach)
    sample = far if far.size <= n_surrogates else np.sort(rng.choice(far, size=n_surrogates, replace=False))
    # The test runs on the level over its local noise scale, clipped: events cluster where training is volatile,
    # and when the device is noisy at the same moments (a shared volatile start) the shifts, which move the events
    # to calm stretches, would understate the spread of the observed average; each shift's spread (and the raw
    # effect's) is also scaled by its events' local noise, and by their own spread where that is far larger.
    clipped = winsorised(volatility_standardised(level, step_s)[0])
    noise = local_noise(clipped, windows)
    del metric
    shifts = np.concatenate((np.zeros(1, dtype=np.int64), sample))
    raw, robust = [], []
    for _, e in trains:
        factors = event_noise(e, noise, shifts, n)
        heterogeneity_possible = e.size < MAX_HETEROGENEOUS
        raw.append(widened(window_statistics(lag_profile(e, level, present, pad), windows, far, sample),
                           factors[:1], event_spreads(e, level, windows, shifts[:1]) if heterogeneity_possible
                           else None, e.size))
        robust.append(widened(window_statistics(lag_profile(e, clipped, present, pad), windows, far, sample),
                              factors, event_spreads(e, clipped, windows, shifts) if heterogeneity_possible
                              else None, e.size))
    raw, robust = ShiftStatistics.joined(raw), ShiftStatistics.joined(robust)
    reportable = np.tile(~windows.edge, len(trains))
    z, p_gauss, p_shifts, peak, ranked = max_t_p(robust, reportable, n_surrogates, rng)
    out.null = "circular shifts"
    too_few_for_gaussian = min(e.size for _, e in trains) < MIN_GAUSSIAN_EVENTS  # the design's, not the peak's
    too_short = ranked < MIN_RANKED_SHIFTS
    placed = None
    if too_short or (too_few_for_gaussian and ranked < MIN_SHIFTS_FEW_EVENTS):
        # Too short a run for the shifts to rank the observed alignment among, or too few events for the Gaussian
        # tail and too few shifts for their rank alone to reach a Holm threshold: the events are placed at random
        # rows instead (chosen from the run's design, never from the observed statistic).
        placed = placement_test([e for _, e in trains], level, clipped, noise, windows, reportable,
                                max(n_surrogates, MIN_DRAWS), rng)
    if placed is not None:
        raw, z, p, peak, ranked = placed
        p_gauss = p_shifts = None
        out.null, out.method = "random placements", PLACEMENT_METHOD
    elif too_short:
        out.n_shifts = ranked
        out.reason = (f"only {ranked} shifts of the spikes keep every window inside the analysed rows (at least "
                      f"{MIN_RANKED_SHIFTS}), and under {MIN_SHIFTS} rows have every window: too short a run "
                      "for the spike-triggered test")
        return out
    else:  # shifts enough to rank among (no placement needed, or none possible): their p-value, coarse as it is
        p = combined_p(p_gauss, p_shifts, ranked, trains[peak // windows.starts.size][1].size)
    label, events = trains[peak // windows.starts.size]
    window = peak % windows.starts.size
    spread = float(np.nanstd(level))
    effect, se = float(raw.observed[peak] - raw.mean[peak]), float(raw.sd[peak])
    a, length = int(windows.starts[window]), int(windows.lengths[window])
    out.status, out.reason, out.train = "ok", None, label
    out.n_spikes, out.n_down = events.size, int(np.sum(events.signs < 0))
    out.spike_rows = [int(s) for s in events.rows[:1000]]
    out.effect, out.ci = effect, [effect - Z_95 * se, effect + Z_95 * se]
    out.effect_sd_units = effect / spread if spread > 0 else None
    out.lag_window_s = [a * step_s, (a + length - 1) * step_s]
    out.window_kind = "step" if windows.edge[window] else "mean"
    out.z, out.p_gaussian, out.p_shifts = float(np.sign(effect) * z), p_gauss, p_shifts
    out.p, out.n_shifts = p, ranked
    eq = equivalence(raw, bound_sd * spread, alpha)
    eq.update(bound_sd=bound_sd, method=f"TOST at every window: each window's {100 * (1 - 2 * alpha):g} % interval "
                                         f"inside +/-{bound_sd:g} sd of the high-passed metric")
    out.equivalence = eq
    if not eq["equivalent"] and spread > 0:
        worst = float(np.nanmax(raw.sd))
        factor = ((float(stats.norm.ppf(1 - alpha)) + Z_POWER) * worst / (bound_sd * spread)) ** 2
        # the spikes that would show |effect| < bound with 80 % power if it were 0 (never fewer than one more)
        out.spikes_to_settle = max(int(np.ceil(events.size * factor)), events.size + 1)
        out.run_length_to_settle_s = float(n_present * step_s * out.spikes_to_settle / events.size)
    return out
