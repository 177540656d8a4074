"""Holm's step-down correction across every test in a report."""

from __future__ import annotations

import numpy as np


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values in the input order (monotone, capped at 1).

    Parameters
    ----------
    p_values : the family's raw p-values (a NaN stays NaN in place, but counts in the family's size m).

    Returns
    -------
    list of float : the i-th smallest p times (m - i + 1), made monotone by a running maximum, at most 1.

    References
    ----------
    Holm (1979), Scand. J. Statist. 6, 65-70.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p)
    adjusted_sorted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted_sorted, 1.0)
    return [float(v) for v in out]
