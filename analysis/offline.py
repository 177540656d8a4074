"""Offline files -> one Table on a common grid (the overlap of the two timelines)."""

from __future__ import annotations

import numpy as np

from analysis import table as T
from analysis.align import bin_to_grid
from analysis.errors import InputError
from analysis.load_files import Samples
from analysis.timeparse import iso_utc


def _fmt(rng: tuple[float, float]) -> str:
    return f"{iso_utc(rng[0])} .. {iso_utc(rng[1])}"


def files_to_table(grad: Samples, rle: Samples, step_s: float) -> T.Table:
    """Grad norm per row is the mean of the steps in (t - step, t] (like the histogram's mean),
    with the last value alongside; hardware columns take the last sample in the row."""
    g_lo, g_hi = grad.range_s
    r_lo, r_hi = rle.range_s
    lo, hi = max(g_lo, r_lo), min(g_hi, r_hi)
    if hi <= lo:
        raise InputError(f"the timelines do not overlap: training log {_fmt((g_lo, g_hi))}, "
                         f"RLE CSV {_fmt((r_lo, r_hi))}")
    start = np.floor(lo / step_s) * step_s
    n = int(np.ceil((hi - start) / step_s)) + 1
    table = T.Table(float(start), step_s, n)
    cols = table.columns
    cols[T.GRAD_NORM] = bin_to_grid(grad.t_s, grad.columns["grad_norm"], start, step_s, n, how="mean")
    cols[T.GRAD_NORM_LAST] = bin_to_grid(grad.t_s, grad.columns["grad_norm"], start, step_s, n)
    cols[T.LOSS] = bin_to_grid(grad.t_s, grad.columns["loss"], start, step_s, n)
    if np.isfinite(grad.columns["perturbation"]).any():
        cols[T.PERTURBATION] = bin_to_grid(grad.t_s, grad.columns["perturbation"], start, step_s, n)
    for name in (T.RLE, T.TEMPERATURE, T.POWER, T.A_LOAD, T.COLLAPSED):
        cols[name] = bin_to_grid(rle.t_s, rle.columns[name], start, step_s, n)
    return table
