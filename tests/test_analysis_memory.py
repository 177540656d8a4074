"""Memory of the statistics on long runs: surrogate nulls are built in blocks, never as one
surrogates x events matrix (a month of 1 s data has ~30k gradient-norm spikes)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from thermograd.analysis.stats import events


def _case(n: int, n_spikes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    spikes = np.sort(rng.choice(n, n_spikes, replace=False))
    collapses = np.sort(np.clip(spikes[rng.random(n_spikes) < 0.3] + 2, 0, n - 1))
    return spikes, collapses, np.arange(n)


def test_blocked_null_equals_the_whole_matrix():
    spikes, collapses, valid = _case(50_000, 600, 1)
    got = events.coincidence(spikes, collapses, valid, 5, 1000, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    b = np.sort(collapses)
    # the same draws (every rotation is eligible), all rows at once
    surr = events.shifted_events(spikes, valid, 0, 1000, rng)
    obs_prec = float(events._precursor_rate(spikes[None, :], b, 5)[0])
    obs_trig = float(events._trigger_rate(spikes, b, 5))
    assert got["precursor_p"] == events.randomised_p(events._precursor_rate(surr, b, 5), obs_prec, rng)
    null_trig = events._trigger_rate(surr, b, 5)
    assert got["trigger_p"] == events.randomised_p(null_trig, obs_trig, rng)
    assert got["null_trigger_rate_mean"] == float(null_trig.mean()) and got["n_surrogates"] == 1000


def test_coincidence_memory_does_not_grow_with_surrogates_times_spikes():
    spikes, collapses, valid = _case(2_000_000, 30_000, 2)  # a month's spikes
    tracemalloc.start()
    try:
        events.coincidence(spikes, collapses, valid, 5, 1000, np.random.default_rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    whole_matrix = 1000 * spikes.size * 8  # one surrogates x spikes int64 matrix: 240 MB
    assert peak < whole_matrix / 2, f"{peak / 1e6:.0f} MB"
