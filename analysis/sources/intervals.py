"""A hardware source that collects less often than Prometheus scrapes it repeats its values between scrapes
(dcgm-exporter collects every 30 s by default, nvidia_gpu_exporter with --collect.interval): how often it
really collects, read from when its raw values change (pure; no I/O)."""

from __future__ import annotations

import math

import numpy as np

from thermograd.analysis.align import sample_interval_s

MIN_CHANGES = 4  # value changes a series needs before its spacing says anything
REPEAT_FACTOR = 1.5  # a collection interval this many scrapes or more is "repeats values between scrapes"


def change_spacing_s(t_s: np.ndarray, values: np.ndarray) -> float | None:
    """Median time between the scrapes at which one raw series' value changed; None with too few changes.

    A value can change only when the source collects, so the spacing of changes is a whole number of
    collection intervals (scrape jitter moves each change by up to one scrape): the median of a series that
    changes at every collection (power, an energy counter) is the interval itself."""
    keep = np.isfinite(values)
    t_s, values = t_s[keep], values[keep]
    changed = np.flatnonzero(np.diff(values) != 0) + 1  # the first scrape showing each new value
    if changed.size < MIN_CHANGES:
        return None
    return sample_interval_s(t_s[changed])


def collection_interval_s(series: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The source's collection interval: the shortest change spacing among its series (one that changes
    rarely, such as an integer temperature, only ever overstates it); None when none changes enough."""
    spacings = [s for s in (change_spacing_s(t, v) for t, v in series) if s is not None]
    return min(spacings) if spacings else None


def grid_step_s(interval_s: float | None, scrape_s: float) -> float | None:
    """The grid step for a source that repeats values: its collection interval in whole scrapes; None when it
    does not repeat (its interval is under REPEAT_FACTOR scrapes, or unknown)."""
    if interval_s is None or interval_s < REPEAT_FACTOR * scrape_s:
        return None
    # Rounded up (within a quarter scrape of a whole one, as measured spacings jitter): a step shorter than the
    # interval (2 s for a 2.5-s collector) would hold one reading twice now and then, which the grid is there
    # to avoid; a longer one only skips a reading now and then.
    return max(1, math.ceil(interval_s / scrape_s - 0.25)) * scrape_s
