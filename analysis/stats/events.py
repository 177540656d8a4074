"""Grad-norm spikes against collapse onsets: event coincidence analysis and point-biserial r."""

from __future__ import annotations

import numpy as np

from thermograd.analysis.stats import lagged
from thermograd.analysis.stats.preprocess import (
    INSUFFICIENT,
    first_difference,
    highpass_level,
    onsets,
    robust_z,
    state_onsets,
)


def spike_indices(grad_norm: np.ndarray, z_threshold: float) -> np.ndarray:
    """Onsets of upward spikes: robust z of the first differences above the threshold.

    Parameters
    ----------
    grad_norm : the series on the grid (NaN: missing; a difference that involves a missing value is never a
        spike).
    z_threshold : the robust z (series.robust_z over all the finite differences) a difference must exceed.

    Returns
    -------
    ndarray of int : the rows where the difference into the row first exceeds the threshold (a run of
        consecutive rows above it counts once, at its first row).
    """
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


def randomised_p(null: np.ndarray, observed: float, rng: np.random.Generator) -> float:
    """Rank p-value with ties broken at random: exactly uniform under the null even for a statistic that
    takes few values (a rate over three spikes), where the plain (1 + #>=) / (1 + N) is conservative.

    Parameters
    ----------
    null : the statistic at the N surrogates; observed: its observed value (larger: more extreme).
    rng : draws the tie-breaking uniform U.

    Returns
    -------
    float : (#{null > observed} + U (#{null == observed} + 1)) / (1 + N), U uniform on [0, 1): in [0, 1).
    """
    greater = int(np.sum(null > observed))
    ties = int(np.sum(null == observed))
    return float((greater + rng.uniform(0.0, 1.0) * (ties + 1)) / (1 + null.size))


SURROGATE_BLOCK = 64  # surrogate rows built and scored at a time: memory O(block x events), not O(surrogates x events)


def surrogate_shifts(m: int, margin: int, n_surrogates: int, rng: np.random.Generator) -> np.ndarray:
    """The circular shifts (in valid rows) of the surrogates: all when there are at most n_surrogates;
    shifts within `margin` rows of zero are left out.

    Parameters
    ----------
    m : the valid rows (the circle's length); margin: the shifts s with s <= margin or s >= m - margin are
        left out (margin 0: every shift but 0).
    n_surrogates : the most shifts returned; rng: draws them, without replacement, where there are more.

    Returns
    -------
    ndarray of int : the shifts, in valid rows (ascending unless drawn).
    """
    shifts = np.arange(margin + 1, m - margin)
    if shifts.size > n_surrogates:
        shifts = rng.choice(shifts, size=n_surrogates, replace=False)
    return shifts


def shift_events(pos: np.ndarray, valid: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Events at valid-row positions `pos` moved by each shift (one sorted row per shift).

    Returns
    -------
    ndarray (shifts, events) : the grid rows (elements of `valid`) the events land on, shifted around the
        circle of the valid rows.
    """
    return np.sort(valid[(pos[None, :] + shifts[:, None]) % valid.size], axis=1)


def shifted_events(events: np.ndarray, valid: np.ndarray, margin: int, n_surrogates: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The events moved together by circular shifts along the valid rows (rows are sorted), one shift
    per surrogate row: their spacing and clustering are kept, only their timing against the other
    series changes. All shifts when there are at most n_surrogates; shifts within `margin` valid rows
    of zero are left out.

    Parameters
    ----------
    events : the events' grid rows, each one of `valid`; valid: the grid rows the circle runs over, ascending.
    margin, n_surrogates, rng : as for `surrogate_shifts`.

    Returns
    -------
    ndarray (shifts, events) : each surrogate's grid rows, sorted.
    """
    shifts = surrogate_shifts(valid.size, margin, n_surrogates, rng)
    return shift_events(np.searchsorted(valid, events), valid, shifts)


def coincidence(spikes: np.ndarray, collapses: np.ndarray, valid: np.ndarray, window: int,
                n_surrogates: int, rng: np.random.Generator) -> dict:
    """Event coincidence analysis (Donges et al. 2016); null: the spike train circularly shifted.

    Parameters
    ----------
    spikes : the spikes' grid rows, each one of `valid`; collapses: the collapse onsets' grid rows.
    valid : the grid rows where both series are known, ascending: the circle the spike train is shifted along.
    window : the coincidence window in rows (both ends included).
    n_surrogates : the most shifts (every nonzero shift where there are no more); rng: draws them and breaks
        ties (`randomised_p`).

    Returns
    -------
    dict
        n_spikes, n_collapses, window_steps : the inputs' sizes and the window in rows.
        precursor_rate, precursor_p : the fraction of collapse onsets with a spike at most `window` rows
            before them (or at them), and its `randomised_p` among the shifts.
        trigger_rate, trigger_p : the fraction of spikes with a collapse onset at them or at most `window`
            rows after, and its p.
        null_trigger_rate_mean : the trigger rate's mean over the shifts.
        n_surrogates : the shifts used; null: the null in words.
        status : "ok", or INSUFFICIENT with a reason (no spikes, no collapse onsets, or at most
            2 window + 22 valid rows); then the rates and p-values are None and null_trigger_rate_mean is
            absent.

    References
    ----------
    Donges et al. (2016), Eur. Phys. J. Spec. Top. 225, 471-487 (event coincidence analysis).
    Lancaster et al. (2018), Phys. Rep. 748, 1-60 (surrogate data, rotations).
    """
    out: dict = {"n_spikes": int(spikes.size), "n_collapses": int(collapses.size), "window_steps": window,
                 "precursor_rate": None, "precursor_p": None, "trigger_rate": None, "trigger_p": None,
                 "n_surrogates": 0, "null": "the spike train circularly shifted along the valid rows "
                 "(keeps its clustering); ties broken at random"}
    if spikes.size == 0 or collapses.size == 0 or valid.size <= 2 * window + 2 + 20:
        out["status"] = INSUFFICIENT
        out["reason"] = ("no grad-norm spikes" if spikes.size == 0 else
                         "no collapse onsets" if collapses.size == 0 else "too few rows")
        return out
    b = np.sort(collapses)
    obs_prec = float(_precursor_rate(np.sort(spikes)[None, :], b, window)[0])
    obs_trig = float(_trigger_rate(spikes, b, window))
    # Every rotation of the spike train, none left out: the test is exact when the collapse process's law does
    # not depend on where the circle starts. Leaving out the shifts near zero (the ones that still line a
    # spike up with the collapse it happens to precede) took the ties away from exactly the runs with a
    # chance coincidence: in a 3-minute run with a few spikes, or a periodic train (learning-rate bursts
    # make spikes on a schedule), the p of a chance coincidence came out too small (6-9 % at 5 %).
    pos, shifts = np.searchsorted(valid, spikes), surrogate_shifts(valid.size, 0, n_surrogates, rng)
    null_prec, null_trig = np.empty(shifts.size), np.empty(shifts.size)
    for lo in range(0, shifts.size, SURROGATE_BLOCK):  # a month of 1 s data has ~30k spikes
        surr = shift_events(pos, valid, shifts[lo:lo + SURROGATE_BLOCK])
        null_prec[lo:lo + surr.shape[0]] = _precursor_rate(surr, b, window)
        null_trig[lo:lo + surr.shape[0]] = _trigger_rate(surr, b, window)
    out.update(
        status="ok",
        precursor_rate=obs_prec,
        precursor_p=randomised_p(null_prec, obs_prec, rng),
        trigger_rate=obs_trig,
        trigger_p=randomised_p(null_trig, obs_trig, rng),
        null_trigger_rate_mean=float(null_trig.mean()),
        n_surrogates=int(shifts.size),
    )
    return out


def point_biserial(state: np.ndarray, values: np.ndarray, n_surrogates: int, rng: np.random.Generator,
                   step_s: float = 1.0) -> dict:
    """r between a 0/1 state and a series' high-passed level, with p from circular shifts of the state
    (lagged.shift_test).

    Both are persistent (a collapse lasts seconds to minutes, the gradient norm drifts): shifts keep
    both autocorrelations. Every shift is a candidate, the small ones too: they share a chance alignment
    of two persistent series with the observed one, and leaving out those within n/20 of zero took exactly
    those ties away (5.4-7.2 % at 5 %). An effect at lag 0 makes the small shifts less extreme than the
    observed alignment, so they cost no power. The level is high-passed (series.highpass_level) because a
    slow trend (the gradient norm decays while the device heats and collapses more) is not what the
    question is about.

    Parameters
    ----------
    state : the 0/1 state on the grid (NaN: unknown).
    values : the series' level on the same grid (NaN: missing), high-passed here at `step_s` (seconds).
    n_surrogates : the most circular shifts of the state (drawn with `rng` where there are more).

    Returns
    -------
    dict
        r : the lag-0 correlation of the state and the high-passed level, each winsorised and standardised
            (lagged.shift_test; the 0/1 state stays two-valued).
        p : (1 + #{shifts with |t| >= the observed |t|}) / (1 + shifts), t being r's HAC-studentised sum.
        ci : the 95 % Fisher-z interval from the HAC variance of r's influence function, widened by the
            shifts' spread where it exceeds 1; surrogates: the null in words.
        n : the rows where both are finite; n_surrogates: the shifts; p_adjusted: None (Holm, later).
        method : the test in words.
        status : "ok", or INSUFFICIENT with a reason (under 30 rows, a constant series, or under 30 shifts);
            then r and p are None and ci and surrogates are absent.

    References
    ----------
    Lancaster et al. (2018), Phys. Rep. 748, 1-60 (surrogate data, rotations).
    Newey & West (1987), Econometrica 55, 703-708; (1994), Rev. Econ. Stud. 61, 631-653 (the HAC CI).
    Fisher (1915), Biometrika 10, 507-521; Fisher (1921), Metron 1, 3-32 (the z transform).
    Wilcox (2012), Introduction to Robust Estimation and Hypothesis Testing, 3rd ed., Academic Press
    (winsorising, MAD).
    """
    level = highpass_level(np.asarray(values, dtype=float), step_s)
    state = np.asarray(state, dtype=float)
    n = int(np.sum(np.isfinite(state) & np.isfinite(level)))
    res = lagged.shift_test(level, state, 1, n_surrogates, rng)
    out: dict = {"r": res["r"], "p": res["p"], "p_adjusted": None, "n": n, "n_surrogates": res["n_surrogates"],
                 "method": "point-biserial r (collapse state vs high-passed grad norm); p: rank of its studentised "
                           "value among circular shifts of the state"}
    if res["status"] != "ok":
        out.update(status=INSUFFICIENT, reason=res["reason"])
        return out
    out.update(status="ok", ci=res["ci"], surrogates=res["surrogates"])
    return out


def spikes_vs_collapses(grad_norm: np.ndarray, collapsed: np.ndarray, z_threshold: float, window: int,
                        n_surrogates: int, rng: np.random.Generator, step_s: float = 1.0) -> dict:
    """Both the coincidence analysis and the point-biserial r (collapse state vs grad norm).

    Parameters
    ----------
    grad_norm : the gradient norm on the grid (NaN: missing).
    collapsed : the 0/1 collapse state on the same grid (NaN: unknown); its onsets are series.state_onsets.
    z_threshold : the spikes' robust-z threshold (`spike_indices`); only spikes at rows where both series are
        known are kept.
    window : the coincidence window in rows; n_surrogates, rng: as for `coincidence` and `point_biserial`.
    step_s : the grid step in seconds (the point-biserial test's high-pass).

    Returns
    -------
    dict
        `coincidence`'s result, with spike_z_threshold, point_biserial (`point_biserial`'s result), and
        spike_steps and collapse_onset_steps: the first 1,000 spike rows and collapse onset rows.

    References
    ----------
    Donges et al. (2016), Eur. Phys. J. Spec. Top. 225, 471-487 (event coincidence analysis).
    Lancaster et al. (2018), Phys. Rep. 748, 1-60 (surrogate data, rotations).
    """
    spikes = spike_indices(grad_norm, z_threshold)
    collapse_onsets = state_onsets(collapsed)  # a NaN inside a collapse is not a new onset
    valid = np.flatnonzero(np.isfinite(grad_norm) & np.isfinite(collapsed))
    spikes = spikes[np.isin(spikes, valid)]
    result = coincidence(spikes, collapse_onsets, valid, window, n_surrogates, rng)
    result["spike_z_threshold"] = z_threshold
    result["point_biserial"] = point_biserial(collapsed, grad_norm, n_surrogates, rng, step_s)
    result["spike_steps"] = [int(i) for i in spikes[:1000]]
    result["collapse_onset_steps"] = [int(i) for i in collapse_onsets[:1000]]
    return result
