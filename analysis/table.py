"""The aligned table every analysis step works on: one time grid, one float column per series."""

from __future__ import annotations

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
COLLAPSED = "collapsed"
PERTURBATION = "perturbation"
PAUSE = "pause"
STEP_DURATION = "step_duration"
THROUGHPUT = "throughput"
UTILIZATION = "utilization"
SM_CLOCK = "sm_clock"
THROTTLED = "throttled"


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
