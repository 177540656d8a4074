"""Small transforms shared by the tests: stationarity, standardising, robust z, onsets, bands."""

from __future__ import annotations

import numpy as np

INSUFFICIENT = "insufficient data"


def first_difference(x: np.ndarray) -> np.ndarray:
    """x[t] - x[t-1] on the same grid (first element NaN); a gap on either side stays a gap."""
    out = np.full(x.shape, np.nan)
    out[1:] = np.diff(x)
    return out


HIGHPASS_S = 300.0  # drifts slower than this are trends, not coupling (lags of interest are <= 30 s)
VOLATILITY_S = 60.0  # the local noise scale is measured over this long
LONG_GAP_S = 30.0  # a gap this long ends a segment: no window reaches across it


def segment_bounds(present: np.ndarray, min_gap_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row, the first and last row of its segment: runs of the grid separated by at least
    `min_gap_rows` consecutive missing rows (shorter gaps are just missing values inside a segment).

    Parameters
    ----------
    present : bool, a row per grid row: whether the series has a value there.
    min_gap_rows : the shortest run of missing rows that ends a segment.

    Returns
    -------
    (first, last) : int arrays the length of `present`: the first and last present row of each row's
        segment (a row in a gap takes the segment before it, a row before the first present row the first
        one); every row gets (0, n - 1) where nothing is present.
    """
    n = present.size
    idx = np.flatnonzero(present)
    starts, ends = np.zeros(n, dtype=np.int64), np.full(n, max(n - 1, 0), dtype=np.int64)
    if idx.size == 0:
        return starts, ends
    breaks = np.flatnonzero(np.diff(idx) > min_gap_rows)
    seg_first = np.concatenate(([idx[0]], idx[breaks + 1]))
    seg_last = np.concatenate((idx[breaks], [idx[-1]]))
    which = np.clip(np.searchsorted(seg_first, np.arange(n), side="right") - 1, 0, seg_first.size - 1)
    return seg_first[which], seg_last[which]


CHUNK_ROWS = 1 << 14  # running sums are taken over chunks of this many rows (plus the window's reach)


def _chunks(n: int, reach: int):
    """(first, stop, data_first, data_stop) for each chunk of rows [first, stop): its windows read rows
    [data_first, data_stop) only. Running sums over a chunk, not the whole run: memory O(chunk) instead of a
    dozen temporaries of the run's length (a month of 1 s data), and sums of t^2 that stay small enough for
    the differences below to keep their digits."""
    for first in range(0, n, CHUNK_ROWS):
        stop = min(n, first + CHUNK_ROWS)
        yield first, stop, max(0, first - reach), min(n, stop + reach)


def _windows(first: int, stop: int, data_first: int, half_width: int,
             bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's window [lo, hi) in the chunk's own index: +/-half_width rows clipped to the row's segment."""
    i = np.arange(first, stop)
    lo = np.maximum(i - half_width, bounds[0][first:stop])
    hi = np.maximum(np.minimum(i + half_width, bounds[1][first:stop]) + 1, lo)
    return lo - data_first, hi - data_first


def rolling_mean(x: np.ndarray, half_width: int, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Centred mean of the finite values within +/-half_width rows, clipped to each row's segment
    (O(n) from running sums over chunks); NaN where the window holds nothing.

    Parameters
    ----------
    x : the series (NaN: missing); half_width: in rows; bounds: `segment_bounds` of the series.
    """
    out = np.empty(x.size)
    for first, stop, d0, d1 in _chunks(x.size, half_width):
        seg = x[d0:d1]
        finite = np.isfinite(seg)
        cum = np.concatenate(([0.0], np.cumsum(np.where(finite, seg, 0.0))))
        cnt = np.concatenate(([0], np.cumsum(finite)))
        lo, hi = _windows(first, stop, d0, half_width, bounds)
        count = cnt[hi] - cnt[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[first:stop] = np.where(count > 0, (cum[hi] - cum[lo]) / np.maximum(count, 1), np.nan)
    return out


def rolling_linear_trend(x: np.ndarray, half_width: int, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """At every row, the value at that row of a least-squares line through the finite values within
    +/-half_width rows (clipped to the segment); O(n) from running sums over chunks. Unlike a running mean
    it follows a curve's slope into the window's clipped ends, where a run's transients are steepest.

    Parameters
    ----------
    x : the series (NaN: missing); half_width: in rows; bounds: `segment_bounds` of the series.

    Returns
    -------
    ndarray, the length of `x`: the line's value at each row; the window's mean where its values cannot fix
    a line (one row, say); NaN where the window holds no finite value.
    """
    out = np.empty(x.size)
    for first, stop, d0, d1 in _chunks(x.size, half_width):
        seg = x[d0:d1]
        finite = np.isfinite(seg)
        t = np.arange(d1 - d0, dtype=float) - (d1 - d0) / 2.0  # centred on the chunk: running sums of t^2 stay small
        xv = np.where(finite, seg, 0.0)
        f = finite.astype(float)
        sums = [np.concatenate(([0.0], np.cumsum(v))) for v in (f, f * t, f * t * t, xv, xv * t)]
        lo, hi = _windows(first, stop, d0, half_width, bounds)
        s0, s1, s2, sx, stx = (c[hi] - c[lo] for c in sums)
        # re-centre the window's sums on the row itself: sum (t - t_i)^k ...
        ti = t[first - d0: stop - d0]
        c1 = s1 - ti * s0
        c2 = s2 - 2 * ti * s1 + ti * ti * s0
        cx = stx - ti * sx
        det = s0 * c2 - c1 * c1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[first:stop] = np.where(det > 1e-9 * np.maximum(s0, 1) ** 3, (c2 * sx - c1 * cx) / det,
                                       np.where(s0 > 0, sx / np.maximum(s0, 1), np.nan))
    return out


def rows_for(seconds: float, step_s: float) -> int:
    """`seconds` as a number of rows of a grid with step `step_s` seconds (rounded), at least 2."""
    return max(2, int(round(seconds / step_s)))


def stationary(x: np.ndarray, step_s: float = 1.0) -> np.ndarray:
    """What every coupling test runs on: first differences, high-passed, volatility-standardised.

    Differencing removes a shared linear trend. A run's curves are not lines, though: the gradient norm
    decays and the temperature approaches equilibrium roughly exponentially, so their *differences* still
    drift, and two drifts correlate at every lag (on a two-minute demo run they made the lagged test beat
    all 1,000 surrogates for series that had nothing to do with each other). Subtracting the differences'
    running mean over HIGHPASS_S removes any drift slower than that. Early training and settling clocks
    make every series noisier at once; dividing by the local noise scale (the running mean absolute
    difference over VOLATILITY_S, floored at a quarter of its median so a flat stretch is not blown up)
    keeps such a shared volatile stretch from dominating every sum. A spike stays a spike: one value
    barely moves a minute's mean. Windows never reach across a gap of LONG_GAP_S or more.

    Parameters
    ----------
    x : a level on the grid (NaN: missing).
    step_s : the grid step in seconds: HIGHPASS_S, VOLATILITY_S and LONG_GAP_S are turned into rows with it.

    Returns
    -------
    ndarray, the length of `x`: the differences less their running local-linear trend over HIGHPASS_S, over
    `local_scale`; NaN at the first row and wherever a difference is missing. Under three finite differences,
    the plain differences.
    """
    d = first_difference(np.asarray(x, dtype=float))
    finite = np.isfinite(d)
    if finite.sum() < 3:
        return d
    bounds = segment_bounds(finite, rows_for(LONG_GAP_S, step_s))
    d = d - rolling_linear_trend(d, rows_for(HIGHPASS_S / 2, step_s), bounds)
    return d / local_scale(d, bounds, step_s)


def local_scale(d: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], step_s: float) -> np.ndarray:
    """The local noise scale of differences `d`: their running mean absolute value over VOLATILITY_S within
    each segment, floored at a quarter of its median (a flat stretch is not blown up); the median where the
    window holds nothing.

    Parameters
    ----------
    d : differences on the grid (NaN: missing); bounds: their `segment_bounds`; step_s: the grid step in
        seconds.

    Returns
    -------
    ndarray, the length of `d`, in its units: finite and positive at every row where `d` has any finite value
    (the median is replaced by the mean |d|, or 1, where it is not positive).
    """
    finite = np.isfinite(d)
    scale = rolling_mean(np.abs(d), rows_for(VOLATILITY_S / 2, step_s), bounds)
    typical = np.nanmedian(scale[finite]) if finite.any() else 0.0
    if not typical > 0:
        typical = float(np.nanmean(np.abs(d))) or 1.0
    return np.maximum(np.nan_to_num(scale, nan=typical), 0.25 * typical)


def volatility_standardised(level: np.ndarray, step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A level divided by the local noise scale of its differences (`local_scale`, relative to its median), and
    that relative scale: a stretch where every series is noisier at once (early training, a settling device)
    counts like any other.

    Parameters
    ----------
    level : a (high-passed) level on the grid (NaN: missing); step_s: the grid step in seconds.

    Returns
    -------
    (standardised, relative) : the level over the relative scale, and that scale (the local scale over its
        median on the rows with a finite difference); under three finite differences, the level unchanged and
        ones.
    """
    d = first_difference(level)
    finite = np.isfinite(d)
    if finite.sum() < 3:
        return level, np.ones(level.shape)
    scale = local_scale(d, segment_bounds(finite, rows_for(LONG_GAP_S, step_s)), step_s)
    relative = scale / float(np.median(scale[finite]))
    return level / relative, relative


def highpass_level(x: np.ndarray, step_s: float = 1.0, width_s: float = HIGHPASS_S) -> np.ndarray:
    """A level minus its running local-linear trend over `width_s`: what is left when slow trends are
    taken out. A running mean leaves a curve's slope in where its window is clipped (a run's start, a
    restart's re-warming): the point-biserial r read the gradient norm's decay against collapses that a
    cold start makes rarer (8 % false positives at 5 %), and the perturbation test the re-warming after a
    restart as an effect of the learning-rate bursts there (8 %).

    Parameters
    ----------
    x : a float level on the grid (NaN: missing).
    step_s : the grid step in seconds; width_s: the trend's full window in seconds (a row's window is
        +/- width_s / 2, clipped to its segment: gaps of LONG_GAP_S or more end one).

    Returns
    -------
    ndarray, the length of `x`, in its units: NaN where `x` is.
    """
    bounds = segment_bounds(np.isfinite(x), rows_for(LONG_GAP_S, step_s))
    return x - rolling_linear_trend(x, rows_for(width_s / 2, step_s), bounds)


def is_constant(x: np.ndarray) -> bool:
    """True where `x` has fewer than two finite values or all of them are equal."""
    finite = x[np.isfinite(x)]
    return finite.size < 2 or float(np.ptp(finite)) == 0.0


def standardise_fill(x: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance; gaps become 0 (the mean) so FFTs can run over them."""
    finite = np.isfinite(x)
    out = np.zeros(x.shape)
    vals = x[finite]
    sd = vals.std() if vals.size else 0.0
    if sd > 0:
        out[finite] = (vals - vals.mean()) / sd
    return out


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD): a spike cannot inflate its own yardstick.

    Parameters
    ----------
    x : values (NaN: missing; the median and MAD are over the finite ones).

    Returns
    -------
    ndarray, the shape of `x`: NaN where `x` is (all NaN where nothing is finite); where the MAD is 0, the
    scale is the sd instead (1 where that is 0 too).

    References
    ----------
    Wilcox (2012), Introduction to Robust Estimation and Hypothesis Testing, 3rd ed., Academic Press
    (the MAD as a scale).
    """
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full(x.shape, np.nan)
    med = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - med))
    if mad == 0:
        mad = finite.std() or 1.0
    return (x - med) / mad


def onsets(mask: np.ndarray) -> np.ndarray:
    """Indices where a boolean series turns on (0 -> 1); a series that starts on counts at 0."""
    m = np.asarray(mask, dtype=bool)
    prev = np.concatenate(([False], m[:-1]))
    return np.flatnonzero(m & ~prev)


def state_onsets(state: np.ndarray) -> np.ndarray:
    """Rows where a 0/1 state (NaN = unknown) is seen to turn on: on now, *known* off one row before.
    A state that reappears on after a gap, or is on at the first row, was not seen to start.

    Parameters
    ----------
    state : the state on the grid; on means > 0.5, off <= 0.5.

    Returns
    -------
    ndarray of int : the onset rows, ascending.
    """
    s = np.asarray(state, dtype=float)
    on = np.where(np.isfinite(s), s > 0.5, False)
    known_off = np.where(np.isfinite(s), s <= 0.5, False)
    return np.flatnonzero(on[1:] & known_off[:-1]) + 1
