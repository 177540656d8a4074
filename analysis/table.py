"""The aligned table every analysis step works on: one time grid, one float column per series."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Column names the pipeline refers to by name (every column is listed in series.csv).
GRAD_NORM = "grad_norm"
LOSS = "loss"
RLE = "rle"
TEMPERATURE = "temperature"
POWER = "power"
A_LOAD = "a_load"
GRAD_NORM_LAST = "grad_norm_last"
GRAD_NORM_MAX = "grad_norm_max"  # the largest step value in each row: a one-step spike is not averaged away
LOSS_MAX = "loss_max"
COLLAPSED = "collapsed"
PERTURBATION = "perturbation"
PAUSE = "pause"
STEP_DURATION = "step_duration"
THROUGHPUT = "throughput"
UTILIZATION = "utilization"
SM_CLOCK = "sm_clock"
THROTTLED = "throttled"

# The row budget. The analysis holds every column of the grid and the statistics' full-length FFTs: about 370
# bytes per row at its peak (bench_analysis --days 30: 2.59 M rows, 914 MiB for the whole command). A month of
# 1 s data fits under 1 GB (with an hour to spare: a run's window starts a step early and ends on a partial
# step); a longer run goes on a coarser grid instead of taking memory without bound.
DEFAULT_MAX_ROWS = 30 * 86400 + 3600
PEAK_BYTES_PER_ROW = 370


def grid_rows(start_s: float, end_s: float, step_s: float) -> int:
    """Rows of Prometheus's range grid: start_s, start_s + step_s, ... up to end_s (a hair of float error
    does not drop the last one)."""
    return int(math.floor((end_s - start_s) / step_s + 1e-9)) + 1


def aligned_start_s(start_s: float, step_s: float) -> float:
    """The grid's first row: `start_s` floored to a whole step, so every row is an evaluation on whole steps."""
    return math.floor(start_s / step_s) * step_s


def step_within_rows(start_s: float, end_s: float, step_s: float, max_rows: int) -> float:
    """The smallest whole multiple of `step_s` whose grid over [start_s, end_s], start aligned to it, has at
    most `max_rows` rows (whole multiples: each row then spans whole scrapes of the finer grid)."""
    multiple = max(1, math.ceil(grid_rows(start_s, end_s, step_s) / max_rows))
    while grid_rows(aligned_start_s(start_s, multiple * step_s), end_s, multiple * step_s) > max_rows:
        multiple += 1  # aligning the start can add a row
    return multiple * step_s


@dataclass
class Table:
    """Columns share the grid t_unix_s = start_s + k * step_s; NaN marks a gap (never filled)."""

    start_s: float
    step_s: float
    n: int
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def t_unix_s(self) -> np.ndarray:
        return self.start_s + self.step_s * np.arange(self.n)

    def has(self, name: str) -> bool:
        col = self.columns.get(name)
        return col is not None and bool(np.isfinite(col).any())

    def rows_from(self, k: int) -> Table:
        """The table without its first k rows."""
        k = min(max(k, 0), self.n)
        return Table(self.start_s + k * self.step_s, self.step_s, self.n - k,
                     {name: col[k:] for name, col in self.columns.items()})

    def trimmed(self, names: list[str]) -> Table:
        """Drop leading/trailing rows where none of `names` has data (a run's window is often padded)."""
        present = np.zeros(self.n, dtype=bool)
        for name in names:
            if name in self.columns:
                present |= np.isfinite(self.columns[name])
        idx = np.flatnonzero(present)
        if idx.size == 0:
            return self
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        cols = {k: v[lo:hi] for k, v in self.columns.items()}
        return Table(self.start_s + lo * self.step_s, self.step_s, hi - lo, cols)
